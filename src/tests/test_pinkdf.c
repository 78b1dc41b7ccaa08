/* SPDX-License-Identifier: MIT */
/*
 * pinkdf: the PIN's way to the TPM and the secret's way to the passphrase, as systemd 253-262
 * derive them. The expected values were computed outside this code: Argon2id with Debian's
 * argon2 command (`printf 1234 | argon2 "$SALT" -id -t 2 -k 64 -p 2 -l 64 -r`), PBKDF2, SHA-256
 * and HKDF with Python's hashlib and hmac.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "pinkdf.h"
#include "token.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SALT "factory-init-test-salt-32-bytes!"

static void unhex(const char *hex, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sscanf(hex + 2 * i, "%2hhx", &out[i]);
}

static struct tpm2_token token(bool salt, uint64_t memcost)
{
	struct tpm2_token t = {.pin = true};
	if (salt) {
		memcpy(t.salt, SALT, 32);
		t.salt_len = 32;
	}
	if (memcost) {
		t.argon2id_memcost = memcost;
		t.argon2id_iterations = 2;
		t.argon2id_lanes = 2;
	}
	return t;
}

static void expect_auth(const struct pin_derived *d, const char *hex)
{
	uint8_t auth[32], want[32];
	pinkdf_auth(d, auth);
	unhex(hex, want, 32);
	assert_memory_equal(auth, want, 32);
}

static void test_argon2id(void **state)
{
	(void)state;
	struct tpm2_token t = token(true, 64 * 1024);
	struct secret pin = {.data = "1234", .len = 4};
	struct pin_derived d;
	assert_int_equal(pinkdf_derive(&t, &pin, &d), 0);
	assert_true(d.argon2id);
	assert_int_equal(d.tpm_pin_len, 44);
	assert_memory_equal(d.tpm_pin, "8CRQdlmXJgz9JLtwuP0MNso2Qi26v20Im9Wduygs8yk=", 44);
	uint8_t key1[32];
	unhex("4b7036e80243672ee60315b842f97da1c3525295a52a3afb5b6fb4a6be67f6c8", key1, 32);
	assert_memory_equal(d.key1, key1, 32);
	expect_auth(&d, "85b6eaa7d7ad0bdeb5d018357b38977547e4be27a27c93db9dac6eae627f4926");

	uint8_t unsealed[32], out[64], want[32];
	for (int i = 0; i < 32; i++)
		unsealed[i] = (uint8_t)i;
	assert_int_equal(pinkdf_secret(&d, unsealed, 32, out, sizeof(out)), 32);
	unhex("c3f594997e124e05554971cb0ca01c98fc6f444645bb0573a50d2f0b99100b60", want, 32);
	assert_memory_equal(out, want, 32);
	pinkdf_wipe(&d);
	assert_int_equal(d.tpm_pin_len, 0);

	/* systemd refuses an empty PIN for Argon2id; so do we, before the TPM sees it. */
	struct secret empty = {.data = "", .len = 0};
	assert_int_equal(pinkdf_derive(&t, &empty, &d), -EINVAL);
}

static void test_salted_and_plain(void **state)
{
	(void)state;
	struct secret pin = {.data = "1234", .len = 4};
	struct pin_derived d;
	struct tpm2_token t = token(true, 0);
	assert_int_equal(pinkdf_derive(&t, &pin, &d), 0);
	assert_false(d.argon2id);
	assert_int_equal(d.tpm_pin_len, 44);
	assert_memory_equal(d.tpm_pin, "mwCVHY4kB5gf67AWDp9rdHYnsUN5j/a3uTEys0FCl/I=", 44);
	/* Without Argon2id the unsealed bytes are the secret. */
	uint8_t out[8];
	assert_int_equal(pinkdf_secret(&d, (const uint8_t *)"abcd", 4, out, sizeof(out)), 4);
	assert_memory_equal(out, "abcd", 4);

	t = token(false, 0);
	assert_int_equal(pinkdf_derive(&t, &pin, &d), 0);
	assert_int_equal(d.tpm_pin_len, 4);
	/* sha256("1234") */
	expect_auth(&d, "03ac674216f3e15c761ee1a5e255f067953623c8b388b4459e13f978d7c846f4");
}

static void test_limits(void **state)
{
	(void)state;
	char why[256];
	/* 512 MB guest, ~430 MiB available: the limit is half of that. */
	uint64_t limit = pinkdf_argon2id_mem_limit(UINT64_C(430) << 20);
	assert_int_equal(limit, UINT64_C(215) << 20);
	assert_int_equal(pinkdf_argon2id_mem_limit(UINT64_C(64) << 30), PINKDF_ARGON2ID_MEM_MAX);

	struct tpm2_token t = token(true, UINT64_C(64) << 20);
	assert_null(pinkdf_argon2id_refusal(&t, limit, why, sizeof(why)));
	/* What systemd 262's benchmark chose on the enrolling host (seen: 442 MiB). */
	t.argon2id_memcost = UINT64_C(463470592);
	assert_non_null(pinkdf_argon2id_refusal(&t, limit, why, sizeof(why)));
	assert_non_null(strstr(why, "tpm2_argon2id_memcost 442 MiB"));
	assert_non_null(strstr(why, "215 MiB"));
	t.argon2id_memcost = UINT64_C(64) << 20;
	t.argon2id_iterations = PINKDF_ARGON2ID_ITERATIONS_MAX + 1;
	assert_non_null(pinkdf_argon2id_refusal(&t, limit, why, sizeof(why)));
	assert_non_null(strstr(why, "iterations"));
	t.argon2id_iterations = 2;
	t.argon2id_lanes = PINKDF_ARGON2ID_LANES_MAX + 1;
	assert_non_null(pinkdf_argon2id_refusal(&t, limit, why, sizeof(why)));
	t.argon2id_lanes = 16;
	t.argon2id_memcost = 64 * 1024; /* 64 KiB < 8 KiB x 16 lanes */
	assert_non_null(pinkdf_argon2id_refusal(&t, limit, why, sizeof(why)));
	/* No Argon2id: nothing to refuse. */
	t = token(true, 0);
	assert_null(pinkdf_argon2id_refusal(&t, 0, why, sizeof(why)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_argon2id),
	    cmocka_unit_test(test_salted_and_plain),
	    cmocka_unit_test(test_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
