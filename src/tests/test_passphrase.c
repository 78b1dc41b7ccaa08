/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "passphrase.h"
#include "util.h"

/* ---- the pure line editor --------------------------------------------------------------- */

/* Feeds LEN bytes, stopping once the line is no longer being edited; returns the state. */
static enum pp_state feed(struct pp_editor *e, const void *data, size_t len)
{
	const unsigned char *p = data;
	for (size_t i = 0; i < len && e->state == PP_EDITING; i++)
		pp_editor_feed(e, p[i]);
	return e->state;
}

#define FEED(e, lit) feed((e), (lit), sizeof(lit) - 1)

/* A line typed into a fresh editor must give exactly WANT (WANT_LEN bytes). */
static void expect_line(const char *typed, size_t typed_len, const char *want, size_t want_len)
{
	struct pp_editor e;
	pp_editor_init(&e, false);
	assert_int_equal(feed(&e, typed, typed_len), PP_DONE);
	assert_int_equal(e.len, want_len);
	assert_memory_equal(e.buf, want, want_len);
	pp_editor_wipe(&e);
}
#define EXPECT(typed, want) expect_line((typed), sizeof(typed) - 1, (want), sizeof(want) - 1)

static void test_plain_lines(void **state)
{
	(void)state;
	struct pp_editor e;
	pp_editor_init(&e, false);
	assert_int_equal(e.state, PP_EDITING);
	assert_int_equal(FEED(&e, "hunter2"), PP_EDITING);
	assert_int_equal(pp_editor_feed(&e, '\r'), PP_DONE);
	assert_int_equal(e.len, 7);
	assert_memory_equal(e.buf, "hunter2", 7);
	assert_true(e.ended_with_cr);
	/* Finished: nothing changes any more. */
	assert_int_equal(FEED(&e, "xyz\x7f\x15\x03"), PP_DONE);
	assert_int_equal(e.len, 7);

	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "abc\n"), PP_DONE);
	assert_false(e.ended_with_cr);
	assert_int_equal(e.len, 3);

	EXPECT("\r", "");
	EXPECT("\n", "");
	EXPECT("with space and\ttab\r", "with space and\ttab");
	EXPECT("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\r", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
}

static void test_cr_lf(void **state)
{
	(void)state;
	struct pp_editor e;
	/* CR ends the line; the LF of the pair is left over... */
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "one\r\n"), PP_DONE);
	assert_int_equal(e.len, 3);
	assert_true(e.ended_with_cr);
	/* ...and the next line ignores it when it comes first, */
	pp_editor_init(&e, true);
	assert_int_equal(pp_editor_feed(&e, '\n'), PP_EDITING);
	assert_int_equal(FEED(&e, "two\r"), PP_DONE);
	assert_int_equal(e.len, 3);
	assert_memory_equal(e.buf, "two", 3);
	/* but only then: a later LF ends the line, */
	pp_editor_init(&e, true);
	assert_int_equal(FEED(&e, "\n\n"), PP_DONE);
	assert_int_equal(e.len, 0);
	pp_editor_init(&e, true);
	assert_int_equal(FEED(&e, "a\n"), PP_DONE);
	assert_int_equal(e.len, 1);
	/* and a CR right away is an empty line. */
	pp_editor_init(&e, true);
	assert_int_equal(FEED(&e, "\r"), PP_DONE);
	assert_int_equal(e.len, 0);
	/* A lone LF never asks to skip anything. */
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "x\n"), PP_DONE);
	assert_false(e.ended_with_cr);
	/* LF CR: the LF ends it. */
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "y\n\r"), PP_DONE);
	assert_false(e.ended_with_cr);
}

static void test_backspace(void **state)
{
	(void)state;
	EXPECT("\x7f\r", "");
	EXPECT("\x08\x7f\x08"
	       "abc\r",
	       "abc");
	EXPECT("abx\x7f"
	       "c\r",
	       "abc");
	EXPECT("abx\x08"
	       "c\r",
	       "abc");
	EXPECT("ab\x08\x08\x08\x7f"
	       "cd\r",
	       "cd");
	EXPECT("abc\x7f\x7f\x7f\r", "");
	/* UTF-8: one character at a time, whatever its length. */
	EXPECT("a\xc3\xa9\x7f\r", "a");		      /* é, 2 bytes */
	EXPECT("a\xe2\x82\xac\x7f\r", "a");	      /* €, 3 bytes */
	EXPECT("a\xf0\x9f\x98\x80\x7f\r", "a");	      /* 😀, 4 bytes */
	EXPECT("\xc3\xa9\xc3\xa9\x7f\r", "\xc3\xa9"); /* éé */
	EXPECT("\xc3\xa9\x7f\x7f\r", "");
	/* Not UTF-8 (Latin-1, stray continuation bytes): one byte at a time. */
	EXPECT("a\xe9\x7f\r", "a");
	EXPECT("a\xa9\x7f\r", "a");
	EXPECT("\xa9\xa9\x7f\r", "\xa9");
	EXPECT("\xa9\xa9\xa9\xa9\xa9\x7f\r", "\xa9\xa9\xa9\xa9");
	EXPECT("\xc3\xa9\xa9\xa9\xa9\x7f\r", "\xc3\xa9\xa9\xa9"); /* 4 continuations: too many */
	EXPECT("a\xc3\x7f\r", "a");				  /* a lone lead byte */
}

static void test_kill_line(void **state)
{
	(void)state;
	EXPECT("abc\x15"
	       "def\r",
	       "def");
	EXPECT("\x15\r", "");
	EXPECT("abc\x15\r", "");
	EXPECT("a\x15\x15"
	       "b\x7f"
	       "c\r",
	       "c");
}

static void test_abort(void **state)
{
	(void)state;
	struct pp_editor e;
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "abc\x03"), PP_ABORTED);
	assert_int_equal(FEED(&e, "def\r"), PP_ABORTED);
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "\x04"), PP_ABORTED);
	pp_editor_init(&e, false);
	assert_int_equal(FEED(&e, "x\x04y\r"), PP_ABORTED);
	pp_editor_init(&e, true);
	assert_int_equal(FEED(&e, "\x03"), PP_ABORTED);
	pp_editor_wipe(&e);
	for (size_t i = 0; i < sizeof(e.buf); i++)
		assert_int_equal(e.buf[i], 0);
	assert_int_equal(e.len, 0);
}

static void test_high_bytes_pass_through(void **state)
{
	(void)state;
	unsigned char all[128 + 1];
	for (int i = 0; i < 128; i++)
		all[i] = (unsigned char)(0x80 + i);
	all[128] = '\r';
	struct pp_editor e;
	pp_editor_init(&e, false);
	assert_int_equal(feed(&e, all, sizeof(all)), PP_DONE);
	assert_int_equal(e.len, 128);
	assert_memory_equal(e.buf, all, 128);
	EXPECT("p\xc3\xa4ss w\xc3\xb6rd \xe2\x82\xac\xf0\x9f\x98\x80\r",
	       "p\xc3\xa4ss w\xc3\xb6rd \xe2\x82\xac\xf0\x9f\x98\x80");
}

static void test_control_bytes_ignored(void **state)
{
	(void)state;
	EXPECT("a\0b\0\r", "ab");
	EXPECT("\0\0\0\r", "");
	EXPECT("\x1b[Ax\r", "[Ax"); /* an arrow key: ESC dropped, the rest is text */
	EXPECT("a\x01\x02\x05\x0b\x0c\x17\x1a\x1c\x1f"
	       "b\r",
	       "ab");
}

/* Every byte value between two characters, against a model of the rules. */
static void test_every_byte(void **state)
{
	(void)state;
	for (int c = 0; c < 256; c++) {
		unsigned char in[] = {'a', (unsigned char)c, 'b', '\r'};
		struct pp_editor e;
		pp_editor_init(&e, false);
		enum pp_state st = feed(&e, in, sizeof(in));
		if (c == 0x03 || c == 0x04) {
			assert_int_equal(st, PP_ABORTED);
			continue;
		}
		assert_int_equal(st, PP_DONE);
		if (c == '\r' || c == '\n') {
			assert_int_equal(e.len, 1); /* "a" */
			assert_int_equal(e.ended_with_cr, c == '\r');
		} else if (c == 0x7f || c == 0x08 || c == 0x15) {
			assert_int_equal(e.len, 1);
			assert_int_equal(e.buf[0], 'b');
		} else if (c < 0x20 && c != '\t') {
			assert_int_equal(e.len, 2);
			assert_memory_equal(e.buf, "ab", 2);
		} else {
			assert_int_equal(e.len, 3);
			assert_int_equal((unsigned char)e.buf[1], c);
		}
		pp_editor_wipe(&e);
	}
}

static void test_overflow(void **state)
{
	(void)state;
	static char big[PASSPHRASE_MAX + 100];
	memset(big, 'k', sizeof(big));
	struct pp_editor e;
	/* Exactly the maximum is fine. */
	pp_editor_init(&e, false);
	assert_int_equal(feed(&e, big, PASSPHRASE_MAX), PP_EDITING);
	assert_int_equal(pp_editor_feed(&e, '\r'), PP_DONE);
	assert_int_equal(e.len, PASSPHRASE_MAX);
	/* One more is too long; nothing past the buffer is written. */
	pp_editor_init(&e, false);
	assert_int_equal(feed(&e, big, PASSPHRASE_MAX + 1), PP_EDITING);
	assert_int_equal(e.len, PASSPHRASE_MAX);
	assert_int_equal(e.dropped, 1);
	assert_int_equal(pp_editor_feed(&e, '\n'), PP_TOO_LONG);
	/* Erasing back under the limit makes it acceptable again. */
	pp_editor_init(&e, false);
	feed(&e, big, PASSPHRASE_MAX + 3);
	assert_int_equal(FEED(&e, "\x7f\x7f\x7f"), PP_EDITING);
	assert_int_equal(e.len, PASSPHRASE_MAX);
	assert_int_equal(e.dropped, 0);
	assert_int_equal(FEED(&e, "\x7f\r"), PP_DONE);
	assert_int_equal(e.len, PASSPHRASE_MAX - 1);
	/* Ctrl-U starts over. */
	pp_editor_init(&e, false);
	feed(&e, big, sizeof(big));
	assert_int_equal(e.dropped, 100);
	assert_int_equal(FEED(&e, "\x15ok\r"), PP_DONE);
	assert_int_equal(e.len, 2);
	/* Still too long with CR: and it says the LF may follow. */
	pp_editor_init(&e, false);
	feed(&e, big, sizeof(big));
	assert_int_equal(FEED(&e, "\r"), PP_TOO_LONG);
	assert_true(e.ended_with_cr);
	/* Control bytes do not count. */
	pp_editor_init(&e, false);
	feed(&e, big, PASSPHRASE_MAX);
	assert_int_equal(FEED(&e, "\0\x1b\r"), PP_DONE);
	pp_editor_wipe(&e);
}

/* ---- passphrase_ask_fd over a pipe -------------------------------------------------------- */

struct pipes {
	int in[2];  /* we write [1], the prompt reads [0] */
	int out[2]; /* the prompt writes [1], we read [0] */
};

static void pipes_open(struct pipes *p)
{
	assert_int_equal(pipe2(p->in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(p->out, O_CLOEXEC | O_NONBLOCK), 0);
}

static void pipes_close(struct pipes *p)
{
	for (int i = 0; i < 2; i++) {
		if (p->in[i] >= 0)
			close(p->in[i]);
		if (p->out[i] >= 0)
			close(p->out[i]);
	}
}

static void put(int fd, const void *data, size_t len)
{
	assert_int_equal(write(fd, data, len), (ssize_t)len);
}
#define PUT(fd, lit) put((fd), (lit), sizeof(lit) - 1)

/* Everything written to the output so far, NUL-terminated. */
static size_t drain(int fd, char *buf, size_t size)
{
	size_t got = 0;
	for (;;) {
		ssize_t n = read(fd, buf + got, size - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	buf[got] = '\0';
	return got;
}

static void test_pipe(void **state)
{
	(void)state;
	struct pipes p;
	pipes_open(&p);
	struct secret s = {0};
	char out[256];

	PUT(p.in[1], "s3cr\xc3\xa9t\n");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "Passphrase: ", 5, &s), 0);
	assert_int_equal(s.len, 7);
	assert_string_equal(s.data, "s3cr\xc3\xa9t");
	drain(p.out[0], out, sizeof(out));
	assert_string_equal(out, "Passphrase: \n");

	/* A CR LF pair, then the next line: the LF does not make an empty second line. */
	PUT(p.in[1], "one\r\ntwo\r\n");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "1: ", 5, &s), 0);
	assert_string_equal(s.data, "one");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "2: ", 5, &s), 0);
	assert_string_equal(s.data, "two");
	/* Left over: the LF of "two\r\n", ignored here too; then editing keys. */
	PUT(p.in[1], "x\x7fy\x15z\0z\n");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "3: ", 5, &s), 0);
	assert_string_equal(s.data, "zz");
	/* An empty line is an empty passphrase. */
	PUT(p.in[1], "\n");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "4: ", 5, &s), 0);
	assert_int_equal(s.len, 0);
	assert_string_equal(s.data, "");
	drain(p.out[0], out, sizeof(out));
	assert_string_equal(out, "1: \n2: \n3: \n4: \n");

	/* Ctrl-C and Ctrl-D. */
	PUT(p.in[1], "abc\x03");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), -ECANCELED);
	PUT(p.in[1], "\x04");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), -ECANCELED);

	/* Too long: refused, and the next line is read normally. */
	static char big[PASSPHRASE_MAX + 2];
	memset(big, 'q', sizeof(big));
	big[sizeof(big) - 1] = '\n';
	put(p.in[1], big, sizeof(big));
	PUT(p.in[1], "next\n");
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), -E2BIG);
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), 0);
	assert_string_equal(s.data, "next");
	big[sizeof(big) - 2] = '\n'; /* exactly the maximum, then LF */
	put(p.in[1], big, sizeof(big) - 1);
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), 0);
	assert_int_equal(s.len, PASSPHRASE_MAX);

	/* Timeout: nothing typed. */
	uint64_t t0 = now_ms();
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "T: ", 1, &s), -ETIMEDOUT);
	uint64_t took = now_ms() - t0;
	assert_true(took >= 1000 && took < 3000);
	/* Half a line, then end of input. */
	PUT(p.in[1], "abc");
	close(p.in[1]);
	p.in[1] = -1;
	assert_int_equal(passphrase_ask_fd(p.in[0], p.out[1], "", 5, &s), -EIO);
	/* The earlier secret is still there (failures leave OUT alone). */
	assert_int_equal(s.len, PASSPHRASE_MAX);
	secret_free(&s);
	assert_null(s.data);
	/* A descriptor that cannot be read. */
	assert_int_equal(passphrase_ask_fd(-1, p.out[1], "", 1, &s), -EIO);
	pipes_close(&p);
}

/* ---- passphrase_ask_fd over a pseudo-terminal --------------------------------------------- */

struct pty_peer {
	int master, slave;
	const char *wait_for; /* the prompt to wait for before typing */
	const char *type;     /* what to type (NULL: nothing) */
	size_t type_len;
	tcflag_t lflag_during; /* the slave's c_lflag while the prompt waited */
	tcflag_t iflag_during;
	char seen[1024]; /* what the terminal showed */
	size_t seen_len;
	bool ok;
};

/* Reads the master side until NEEDLE shows (or 5 s pass). */
static bool read_until(struct pty_peer *t, const char *needle)
{
	uint64_t deadline = now_ms() + 5000;
	while (!memmem(t->seen, t->seen_len, needle, strlen(needle))) {
		uint64_t now = now_ms();
		if (now >= deadline)
			return false;
		struct pollfd p = {.fd = t->master, .events = POLLIN};
		if (poll(&p, 1, (int)(deadline - now)) <= 0)
			continue;
		ssize_t n =
		    read(t->master, t->seen + t->seen_len, sizeof(t->seen) - 1 - t->seen_len);
		if (n <= 0)
			return false;
		t->seen_len += (size_t)n;
		t->seen[t->seen_len] = '\0';
	}
	return true;
}

static void *pty_typist(void *arg)
{
	struct pty_peer *t = arg;
	if (!read_until(t, t->wait_for))
		return NULL;
	struct termios tio;
	if (tcgetattr(t->slave, &tio) < 0)
		return NULL;
	t->lflag_during = tio.c_lflag;
	t->iflag_during = tio.c_iflag;
	if (t->type && write(t->master, t->type, t->type_len) != (ssize_t)t->type_len)
		return NULL;
	t->ok = true;
	return NULL;
}

static void pty_session(struct pty_peer *t, const char *prompt, unsigned timeout, int want,
			struct secret *s)
{
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, pty_typist, t), 0);
	int r = passphrase_ask_fd(t->slave, t->slave, prompt, timeout, s);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(t->ok);
	assert_int_equal(r, want);
	/* The newline printed after the line (OPOST|ONLCR makes it CR LF). */
	assert_true(read_until(t, "\r\n"));
}

static void test_pty(void **state)
{
	(void)state;
	struct pty_peer t = {0};
	struct termios before, after;
	assert_int_equal(openpty(&t.master, &t.slave, NULL, NULL, NULL), 0);
	assert_int_equal(tcgetattr(t.slave, &before), 0);
	assert_true(before.c_lflag & ECHO);
	assert_true(before.c_lflag & ICANON);
	assert_true(before.c_iflag & ICRNL);

	/* Typed before the prompt: echoed by the terminal, so dropped. */
	PUT(t.master, "typed-ahead");
	/* Wait for its echo: the line discipline has it (pty input is passed on asynchronously). */
	assert_true(read_until(&t, "typed-ahead"));
	struct secret s = {0};
	static const char typed[] = "pa\xc3\xa4ss\x7f\x7fss w\xc3\xb6rd\r\n";
	t.wait_for = "Passphrase for /dev/vdb (try 1 of 3): ";
	t.type = typed;
	t.type_len = sizeof(typed) - 1;
	pty_session(&t, t.wait_for, 10, 0, &s);
	assert_string_equal(s.data, "pa\xc3\xa4ss w\xc3\xb6rd");
	/* Echo, canonical mode and signals were off while it waited, CR came through as CR. */
	assert_false(t.lflag_during & ECHO);
	assert_false(t.lflag_during & ICANON);
	assert_false(t.lflag_during & ISIG);
	assert_false(t.iflag_during & ICRNL);
	/* All restored. */
	assert_int_equal(tcgetattr(t.slave, &after), 0);
	assert_int_equal(after.c_lflag, before.c_lflag);
	assert_int_equal(after.c_iflag, before.c_iflag);
	assert_int_equal(after.c_oflag, before.c_oflag);
	assert_int_equal(after.c_cc[VMIN], before.c_cc[VMIN]);
	/* The terminal showed the prompt and a newline, and none of the passphrase. */
	assert_null(memmem(t.seen, t.seen_len, "pa", 2));
	assert_null(memmem(t.seen, t.seen_len, "rd", 2));
	assert_non_null(strstr(t.seen, "(try 1 of 3): \r\n"));

	/* Ctrl-C arrives as a byte (ISIG off): cancelled, no signal; echo back on after. */
	memset(t.seen, 0, sizeof(t.seen));
	t.seen_len = 0;
	t.ok = false;
	t.wait_for = "again: ";
	t.type = "abc\x03";
	t.type_len = 4;
	pty_session(&t, "again: ", 10, -ECANCELED, &s);
	assert_int_equal(tcgetattr(t.slave, &after), 0);
	assert_int_equal(after.c_lflag, before.c_lflag);
	assert_string_equal(s.data, "pa\xc3\xa4ss w\xc3\xb6rd"); /* untouched */

	/* Timeout: echo restored too, and the cursor moved to a new line. */
	memset(t.seen, 0, sizeof(t.seen));
	t.seen_len = 0;
	t.ok = false;
	t.wait_for = "slow: ";
	t.type = NULL;
	pty_session(&t, "slow: ", 1, -ETIMEDOUT, &s);
	assert_false(t.lflag_during & ECHO);
	assert_int_equal(tcgetattr(t.slave, &after), 0);
	assert_int_equal(after.c_lflag, before.c_lflag);
	assert_int_equal(after.c_iflag, before.c_iflag);
	assert_non_null(strstr(t.seen, "slow: \r\n"));

	secret_free(&s);
	close(t.master);
	close(t.slave);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_lines),
	    cmocka_unit_test(test_cr_lf),
	    cmocka_unit_test(test_backspace),
	    cmocka_unit_test(test_kill_line),
	    cmocka_unit_test(test_abort),
	    cmocka_unit_test(test_high_bytes_pass_through),
	    cmocka_unit_test(test_control_bytes_ignored),
	    cmocka_unit_test(test_every_byte),
	    cmocka_unit_test(test_overflow),
	    cmocka_unit_test(test_pipe),
	    cmocka_unit_test(test_pty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
