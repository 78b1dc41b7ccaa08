/* SPDX-License-Identifier: MIT */
/* Asks for a passphrase on the console: echo off, one line, a total timeout. */
#ifndef FACTORY_INIT_PASSPHRASE_H
#define FACTORY_INIT_PASSPHRASE_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* The longest passphrase accepted, in bytes (cryptsetup's limit for interactive input). */
#define PASSPHRASE_MAX 512

/*
 * The line editor, a pure function of the bytes fed to it (no I/O), so that it can be tested
 * byte by byte:
 *   CR or LF            ends the line (PP_DONE). If the previous line ended with CR, a first
 *                       byte LF is the rest of that CR LF pair and is ignored.
 *   DEL (0x7f), BS (0x08)  erases the last character: one byte, or a whole UTF-8 sequence.
 *   Ctrl-U              erases the whole line.
 *   Ctrl-C, Ctrl-D      abort (PP_ABORTED).
 *   TAB, bytes >= 0x20  stored as they are (UTF-8 passes through untouched);
 *   other control bytes (NUL, ESC, ...) are ignored.
 * Beyond PASSPHRASE_MAX bytes input is counted but not stored, and the line ends in
 * PP_TOO_LONG (erasing back below the limit makes it acceptable again).
 * Once the state is not PP_EDITING, further bytes change nothing.
 */
enum pp_state {
	PP_EDITING,
	PP_DONE,
	PP_ABORTED,
	PP_TOO_LONG,
};

struct pp_editor {
	char buf[PASSPHRASE_MAX];
	size_t len;
	size_t dropped;	    /* bytes typed beyond PASSPHRASE_MAX, not stored */
	bool skip_lf;	    /* ignore a first LF (the previous line ended with CR) */
	bool ended_with_cr; /* this line ended with CR: pass as skip_lf to the next one */
	enum pp_state state;
};

void pp_editor_init(struct pp_editor *e, bool skip_lf);
enum pp_state pp_editor_feed(struct pp_editor *e, unsigned char c);
/* Wipes the buffer (explicit_bzero) and resets the editor. */
void pp_editor_wipe(struct pp_editor *e);

/*
 * Prints PROMPT on the console, reads one line with echo off and stores it in OUT (locked,
 * NUL-terminated; free with secret_free). Uses /dev/console, or stdin and stderr if it cannot be
 * opened. TIMEOUT_S bounds the whole prompt (0: wait for ever). Echo is restored and a newline
 * printed on every path. Returns 0, -ETIMEDOUT, -ECANCELED (Ctrl-C, Ctrl-D), -E2BIG (the line
 * was longer than PASSPHRASE_MAX: nothing stored, count it as a failed try), -EIO (no console,
 * a read error or end of input) or -ENOMEM.
 */
int passphrase_ask(const char *prompt, unsigned timeout_s, struct secret *out);

/*
 * The same on given descriptors (for tests). IN may be a terminal (then echo is turned off) or
 * anything else readable (a pipe: no echo control, the line is read as it comes).
 */
int passphrase_ask_fd(int in, int outfd, const char *prompt, unsigned timeout_s,
		      struct secret *out);

#endif
