/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static bool is_continuation(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

static void test_split_ascii(void **state)
{
	(void)state;
	char s[2000];
	memset(s, 'a', sizeof(s));
	/* Short enough: all of it. */
	assert_int_equal(log_split_len(s, 10, 900), 10);
	assert_int_equal(log_split_len(s, 0, 900), 0);
	/* No space anywhere: a hard cut at max. */
	assert_int_equal(log_split_len(s, sizeof(s), 900), 900);
	/* A space in the last 80 bytes: just after it. */
	s[850] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 851);
	/* The last such space wins. */
	s[870] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 871);
	/* A space further back than 80 bytes is not worth the short record. */
	memset(s, 'a', sizeof(s));
	s[700] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 900);
	/* A space right at max (the first byte of the rest) does not count; one just before
	 * does. */
	memset(s, 'a', sizeof(s));
	s[900] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 900);
	s[899] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 900);
	s[899] = 'a';
	s[898] = ' ';
	assert_int_equal(log_split_len(s, sizeof(s), 900), 899);
}

static void test_split_exact_limit(void **state)
{
	(void)state;
	char s[1000];
	memset(s, 'x', sizeof(s));
	assert_int_equal(log_split_len(s, 900, 900), 900);
	assert_int_equal(log_split_len(s, 901, 900), 900);
	assert_int_equal(log_split_len(s, 899, 900), 899);
	/* Progress even with a tiny limit. */
	assert_int_equal(log_split_len(s, sizeof(s), 1), 1);
}

static void test_split_multibyte_at_boundary(void **state)
{
	(void)state;
	char s[32];
	/* "é" (2 bytes) at 9..10: a cut at 10 would split it. */
	memset(s, 'a', sizeof(s));
	memcpy(s + 9, "\xc3\xa9", 2);
	assert_int_equal(log_split_len(s, sizeof(s), 10), 9);
	assert_int_equal(log_split_len(s, sizeof(s), 11), 11);
	/* "€" (3 bytes) at 8..10. */
	memset(s, 'a', sizeof(s));
	memcpy(s + 8, "\xe2\x82\xac", 3);
	assert_int_equal(log_split_len(s, sizeof(s), 9), 8);
	assert_int_equal(log_split_len(s, sizeof(s), 10), 8);
	assert_int_equal(log_split_len(s, sizeof(s), 11), 11);
	/* "😀" (4 bytes) at 7..10. */
	memset(s, 'a', sizeof(s));
	memcpy(s + 7, "\xf0\x9f\x98\x80", 4);
	for (size_t max = 8; max <= 10; max++)
		assert_int_equal(log_split_len(s, sizeof(s), max), 7);
	assert_int_equal(log_split_len(s, sizeof(s), 11), 11);
	/* Not UTF-8 (continuation bytes only): still a cut, at max. */
	memset(s, 0x80, sizeof(s));
	assert_int_equal(log_split_len(s, sizeof(s), 10), 10);
}

static void test_split_no_spaces_multibyte(void **state)
{
	(void)state;
	/* 1000 "ä" (2000 bytes, no space): every piece ends on a character boundary, at most
	 * max long, and the pieces put together are the text. */
	char s[2000];
	for (size_t i = 0; i < sizeof(s); i += 2)
		memcpy(s + i, "\xc3\xa4", 2);
	size_t off = 0, pieces = 0;
	while (off < sizeof(s)) {
		size_t n = log_split_len(s + off, sizeof(s) - off, 901);
		assert_true(n > 0 && n <= 901);
		assert_int_equal(n % 2, 0);
		assert_true(off + n == sizeof(s) || !is_continuation((unsigned char)s[off + n]));
		off += n;
		pieces++;
	}
	assert_int_equal(off, sizeof(s));
	assert_int_equal(pieces, 3);
}

/* The console gets a long message whole, in one line (the kernel log gets it in pieces). */
static void test_console_whole_line(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	int saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
	close(fds[1]);

	char reason[1501];
	memset(reason, 'r', sizeof(reason) - 1);
	reason[sizeof(reason) - 1] = '\0';
	log_set_console_level(LOG_INFO);
	log_warn("fallback: %s", reason);

	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	char buf[4096];
	size_t got = 0;
	ssize_t n;
	while ((n = read(fds[0], buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)n;
	close(fds[0]);
	buf[got] = '\0';
	char want[2048];
	snprintf(want, sizeof(want), "factory-init: warning: fallback: %s\n", reason);
	assert_string_equal(buf, want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split_ascii),
	    cmocka_unit_test(test_split_exact_limit),
	    cmocka_unit_test(test_split_multibyte_at_boundary),
	    cmocka_unit_test(test_split_no_spaces_multibyte),
	    cmocka_unit_test(test_console_whole_line),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
