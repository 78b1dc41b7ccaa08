/* SPDX-License-Identifier: MIT */
/* Kernel command line tokenizer: pure, splits exactly as the kernel's own parser does. */
#ifndef FACTORY_INIT_CMDLINE_H
#define FACTORY_INIT_CMDLINE_H

#include <stddef.h>

/* The kernel limits the command line to COMMAND_LINE_SIZE (2048 on x86); we accept a bit more. */
#define CMDLINE_MAX 65536

struct cmdline_arg {
	char *key;   /* the parameter name */
	char *value; /* NULL for a bare word ("quiet"); "" for "key=" */
};

struct cmdline {
	struct cmdline_arg *args; /* parameters before "--", in order */
	size_t n;
	char **init_args; /* words after "--": the kernel hands these to init */
	size_t n_init;
};

/*
 * Splits text into parameters as the kernel does: words separated by white space, double quotes
 * group white space, a quote right after '=' is dropped together with a closing quote at the end of
 * the word, and a word that starts with a quote loses it and its closing quote. "--" ends the
 * parameters; what follows it is for init. Returns 0, -ENOMEM, or -E2BIG for an over-long text.
 */
int cmdline_parse(const char *text, struct cmdline *out);
/* Frees c, wiping every word first (the text may hold key material). */
void cmdline_free(struct cmdline *c);

#endif
