/* SPDX-License-Identifier: MIT */
/* The tokenizer against the kernel's own splitting rules (lib/cmdline.c next_arg). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cmdline.h"

static void expect_arg(const struct cmdline *c, size_t i, const char *key, const char *value)
{
	assert_true(i < c->n);
	assert_string_equal(c->args[i].key, key);
	if (value)
		assert_string_equal(c->args[i].value, value);
	else
		assert_null(c->args[i].value);
}

static void test_plain_words(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("  root=/dev/vda   ro\tquiet\n", &c), 0);
	assert_int_equal(c.n, 3);
	expect_arg(&c, 0, "root", "/dev/vda");
	expect_arg(&c, 1, "ro", NULL);
	expect_arg(&c, 2, "quiet", NULL);
	assert_int_equal(c.n_init, 0);
	cmdline_free(&c);
}

static void test_quoted_value(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("vm.note=\"hello world\" x=\"\" y=", &c), 0);
	assert_int_equal(c.n, 3);
	expect_arg(&c, 0, "vm.note", "hello world");
	expect_arg(&c, 1, "x", "");
	expect_arg(&c, 2, "y", "");
	cmdline_free(&c);
}

static void test_quote_inside_value(void **state)
{
	(void)state;
	struct cmdline c;
	/* A quote that does not open the value stays in it and still groups the space. */
	assert_int_equal(cmdline_parse("vm.note=say\"hi there\" next", &c), 0);
	assert_int_equal(c.n, 2);
	expect_arg(&c, 0, "vm.note", "say\"hi there\"");
	expect_arg(&c, 1, "next", NULL);
	cmdline_free(&c);
}

static void test_whole_word_quoted(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("\"vm.a=b c\" d", &c), 0);
	assert_int_equal(c.n, 2);
	expect_arg(&c, 0, "vm.a", "b c");
	expect_arg(&c, 1, "d", NULL);
	cmdline_free(&c);
}

static void test_unterminated_quote(void **state)
{
	(void)state;
	struct cmdline c;
	/* The kernel runs to the end of the line and keeps what it has. */
	assert_int_equal(cmdline_parse("a=\"b c d", &c), 0);
	assert_int_equal(c.n, 1);
	expect_arg(&c, 0, "a", "b c d");
	cmdline_free(&c);
}

static void test_first_equals_only(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("vm.repo=https://x/y?a=b =lead", &c), 0);
	assert_int_equal(c.n, 2);
	expect_arg(&c, 0, "vm.repo", "https://x/y?a=b");
	/* An '=' in the first position does not split (the kernel ignores index 0). */
	expect_arg(&c, 1, "=lead", NULL);
	cmdline_free(&c);
}

static void test_dashes(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("root=/dev/vda -- single x=\"1 2\"", &c), 0);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.n_init, 2);
	assert_string_equal(c.init_args[0], "single");
	assert_string_equal(c.init_args[1], "x=1 2");
	cmdline_free(&c);
}

static void test_empty_and_too_long(void **state)
{
	(void)state;
	struct cmdline c;
	assert_int_equal(cmdline_parse("", &c), 0);
	assert_int_equal(c.n, 0);
	cmdline_free(&c);
	assert_int_equal(cmdline_parse("   \n", &c), 0);
	assert_int_equal(c.n, 0);
	cmdline_free(&c);
	char *big = malloc(CMDLINE_MAX + 2);
	memset(big, 'a', CMDLINE_MAX + 1);
	big[CMDLINE_MAX + 1] = '\0';
	assert_int_equal(cmdline_parse(big, &c), -E2BIG);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_words),
	    cmocka_unit_test(test_quoted_value),
	    cmocka_unit_test(test_quote_inside_value),
	    cmocka_unit_test(test_whole_word_quoted),
	    cmocka_unit_test(test_unterminated_quote),
	    cmocka_unit_test(test_first_equals_only),
	    cmocka_unit_test(test_dashes),
	    cmocka_unit_test(test_empty_and_too_long),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
