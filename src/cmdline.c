/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "cmdline.h"
#include "util.h"

#include <stdio.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* The kernel's isspace(): the C locale's white space. */
static bool kspace(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int push(void **arr, size_t *n, size_t elem)
{
	void *na = realloc(*arr, (*n + 1) * elem);
	if (!na)
		return -ENOMEM;
	*arr = na;
	(*n)++;
	return 0;
}

/*
 * Cuts one word out of the writable buffer at *pos (already past leading space) and returns its
 * key and value in place. Mirrors the kernel's rules (lib/cmdline.c, next_arg) as documented in
 * cmdline.h.
 */
static void next_word(char **pos, char **key, char **value)
{
	char *s = *pos;
	bool in_quote = false, quoted = false;
	size_t i, equals = 0;
	bool has_equals = false;

	if (*s == '"') {
		s++;
		in_quote = quoted = true;
	}
	for (i = 0; s[i]; i++) {
		if (kspace(s[i]) && !in_quote)
			break;
		/* The kernel records the first '=' only at an index above 0. */
		if (!has_equals && s[i] == '=' && i > 0) {
			equals = i;
			has_equals = true;
		}
		if (s[i] == '"')
			in_quote = !in_quote;
	}
	*key = s;
	*value = NULL;
	if (has_equals) {
		s[equals] = '\0';
		*value = s + equals + 1;
		if (**value == '"') {
			(*value)++;
			if (i > 0 && s[i - 1] == '"')
				s[i - 1] = '\0';
		}
	}
	if (quoted && i > 0 && s[i - 1] == '"')
		s[i - 1] = '\0';

	if (s[i]) {
		s[i] = '\0';
		s += i + 1;
	} else {
		s += i;
	}
	while (kspace(*s))
		s++;
	*pos = s;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

int cmdline_parse(const char *text, struct cmdline *out)
{
	memset(out, 0, sizeof(*out));
	size_t len = strnlen(text, CMDLINE_MAX + 1);
	if (len > CMDLINE_MAX)
		return -E2BIG;
	char *buf = strndup(text, len);
	if (!buf)
		return -ENOMEM;

	int r = 0;
	char *pos = buf;
	bool after_dashes = false;
	while (kspace(*pos))
		pos++;
	while (*pos) {
		char *key, *value;
		next_word(&pos, &key, &value);
		if (after_dashes) {
			/* After "--" the kernel passes words verbatim (already split) to init. */
			char *word = value ? NULL : strdup(key);
			if (value && asprintf(&word, "%s=%s", key, value) < 0)
				word = NULL;
			if (!word ||
			    push((void **)&out->init_args, &out->n_init, sizeof(char *)) < 0) {
				free_wiped(word);
				r = -ENOMEM;
				break;
			}
			out->init_args[out->n_init - 1] = word;
			continue;
		}
		if (!value && strcmp(key, "--") == 0) {
			after_dashes = true;
			continue;
		}
		if (push((void **)&out->args, &out->n, sizeof(struct cmdline_arg)) < 0) {
			r = -ENOMEM;
			break;
		}
		struct cmdline_arg *a = &out->args[out->n - 1];
		a->key = strdup(key);
		a->value = dup_or_null(value);
		if (!a->key || (value && !a->value)) {
			r = -ENOMEM;
			break;
		}
	}
	/* The text may hold key material (vm.luks.key=, systemd.set_credential=): wipe all of
	 * it, the words next_word cut out of it included (they end in NULs, so not strlen). */
	explicit_bzero(buf, len);
	free(buf);
	if (r < 0)
		cmdline_free(out);
	return r;
}

void cmdline_free(struct cmdline *c)
{
	/* Any word may be (or quote) key material, vm.luks.key's value most of all: every copy of
	 * the text is wiped before it is freed. */
	for (size_t i = 0; i < c->n; i++) {
		free_wiped(c->args[i].key);
		free_wiped(c->args[i].value);
	}
	free(c->args);
	for (size_t i = 0; i < c->n_init; i++)
		free_wiped(c->init_args[i]);
	free(c->init_args);
	memset(c, 0, sizeof(*c));
}
