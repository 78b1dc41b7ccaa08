/* SPDX-License-Identifier: MIT */
/* agekey.c: Bech32 against BIP 173's vectors, and age identities against pairs that Debian's
 * age-keygen 1.1.1 wrote (the identity and `age-keygen -y`'s recipient), both ways, and every
 * kind of malformed identity refused. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "agekey.h"

static const struct {
	const char *secret, *recipient;
} PAIRS[] = {
    {"AGE-SECRET-KEY-1UYUJ88ZF24L90JY92YEEP6GXFNTCLPHJQRDJWF9EKERKGDE8596QET9JY9",
     "age1ct9h07ux0v00r7tc9ry856nta8zx8lmnarswg95zlgqxa8snvcyq4c8q0l"},
    {"AGE-SECRET-KEY-14P95VLCR4YF6MU0GJF52WYKSVDQLH3833WDU39699MQYW9KJZW7SY8YJT6",
     "age1wr85a7ta937hkf74ycj3esllrvk7v4hhzh3rc6y5sxwer77sdqlqufltr5"},
};

static void test_bech32_vectors(void **state)
{
	(void)state;
	/* BIP 173: the 32 characters as data under "abcdef" */
	static const uint8_t data[20] = {0x00, 0x44, 0x32, 0x14, 0xc7, 0x42, 0x54,
					 0xb6, 0x35, 0xcf, 0x84, 0x65, 0x3a, 0x56,
					 0xd7, 0xc6, 0x75, 0xbe, 0x77, 0xdf};
	const char *v = "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw";
	char out[128];
	assert_int_equal(bech32_encode("abcdef", data, sizeof(data), out, sizeof(out)),
			 (int)strlen(v));
	assert_string_equal(out, v);
	uint8_t back[32];
	assert_int_equal(bech32_decode("abcdef", v, strlen(v), back, sizeof(back)), 20);
	assert_memory_equal(back, data, 20);
	/* empty data; upper case is valid, mixed case is not; one wrong character breaks the sum */
	assert_int_equal(bech32_encode("a", NULL, 0, out, sizeof(out)), 8);
	assert_string_equal(out, "a12uel5l");
	assert_int_equal(bech32_decode("a", "A12UEL5L", 8, back, sizeof(back)), 0);
	assert_int_equal(bech32_decode("a", "A12uEL5L", 8, back, sizeof(back)), -EINVAL);
	assert_int_equal(bech32_decode("a", "a12uel5m", 8, back, sizeof(back)), -EINVAL);
	assert_int_equal(bech32_decode("b", "a12uel5l", 8, back, sizeof(back)), -EINVAL);
	assert_int_equal(bech32_decode("a", "a1", 2, back, sizeof(back)), -EINVAL);
	assert_int_equal(bech32_encode("abcdef", data, sizeof(data), out, strlen(v)), -ENOBUFS);
	/* data that does not fit is refused, never truncated */
	assert_int_equal(bech32_decode("abcdef", v, strlen(v), back, 19), -EINVAL);
}

static void test_pairs(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(PAIRS) / sizeof(PAIRS[0]); i++) {
		uint8_t scalar[AGEKEY_SIZE];
		char rcpt[AGEKEY_RECIPIENT_LEN], secret[AGEKEY_SECRET_LEN];
		assert_int_equal(
		    agekey_parse_secret(PAIRS[i].secret, strlen(PAIRS[i].secret), scalar), 0);
		assert_int_equal(agekey_recipient(scalar, rcpt), 0);
		assert_string_equal(rcpt, PAIRS[i].recipient);
		agekey_secret(scalar, secret);
		assert_string_equal(secret, PAIRS[i].secret);
		assert_int_equal(strlen(secret), AGEKEY_SECRET_LEN - 1);
		assert_int_equal(strlen(rcpt), AGEKEY_RECIPIENT_LEN - 1);
	}
}

static void test_bad_secrets(void **state)
{
	(void)state;
	const char *good = PAIRS[0].secret;
	size_t n = strlen(good);
	uint8_t scalar[AGEKEY_SIZE];
	char buf[128];

	/* the lower-case form is the same key */
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)(good[i] >= 'A' && good[i] <= 'Z' ? good[i] + 32 : good[i]);
	assert_int_equal(agekey_parse_secret(buf, n, scalar), 0);

	memcpy(buf, good, n);
	buf[n - 1] = buf[n - 1] == 'Q' ? 'P' : 'Q'; /* checksum */
	assert_int_equal(agekey_parse_secret(buf, n, scalar), -EINVAL);
	memcpy(buf, good, n);
	buf[20] = 'b'; /* mixed case */
	assert_int_equal(agekey_parse_secret(buf, n, scalar), -EINVAL);
	memcpy(buf, good, n);
	buf[20] = 'B'; /* not in the alphabet */
	assert_int_equal(agekey_parse_secret(buf, n, scalar), -EINVAL);
	assert_int_equal(agekey_parse_secret(good, n - 1, scalar), -EINVAL); /* truncated */
	assert_int_equal(
	    agekey_parse_secret(PAIRS[0].recipient, strlen(PAIRS[0].recipient), scalar),
	    -EINVAL); /* a recipient is not an identity */
	memcpy(buf, good, n);
	buf[n] = ' ';
	assert_int_equal(agekey_parse_secret(buf, n + 1, scalar), -EINVAL);
	assert_int_equal(agekey_parse_secret("", 0, scalar), -EINVAL);
	/* a valid Bech32 string of the right prefix but 31 bytes */
	static const uint8_t short_key[31] = {1};
	char text[128];
	int len =
	    bech32_encode("age-secret-key-", short_key, sizeof(short_key), text, sizeof(text));
	assert_true(len > 0);
	assert_int_equal(agekey_parse_secret(text, (size_t)len, scalar), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bech32_vectors),
	    cmocka_unit_test(test_pairs),
	    cmocka_unit_test(test_bad_secrets),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
