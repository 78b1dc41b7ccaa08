/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>

#include "tpm2_policy.h"

static void hex(const uint8_t *b, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

/* The policy hash systemd-cryptenroll 252 wrote for --tpm2-pcrs=7 with PCR 7 all zero (a real
 * token, see the notes), and the one a TPM computed in a trial session for the same. */
static void test_policy_matches_systemd(void **state)
{
	(void)state;
	uint8_t values[TPM2_PCRS][TPM2_SHA256_LEN] = {{0}};
	uint8_t out[TPM2_SHA256_LEN];
	char h[65];
	tpm2_policy_pcr_sha256(1u << 7, values, out);
	hex(out, sizeof(out), h);
	assert_string_equal(h, "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b");
	/* A different value or selection must change the digest. */
	values[7][0] = 1;
	tpm2_policy_pcr_sha256(1u << 7, values, out);
	hex(out, sizeof(out), h);
	assert_string_not_equal(h,
				"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b");
	values[7][0] = 0;
	tpm2_policy_pcr_sha256((1u << 7) | 1u, values, out);
	hex(out, sizeof(out), h);
	assert_string_not_equal(h,
				"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b");
}

static void test_spec_parse(void **state)
{
	(void)state;
	struct pcr_spec s;
	char why[160];
	assert_int_equal(pcr_spec_parse("7", &s, why, sizeof(why)), 0);
	assert_int_equal(s.mask, 1u << 7);
	assert_int_equal(s.values_mask, 0);
	assert_int_equal(pcr_spec_parse("", &s, why, sizeof(why)), 0);
	assert_int_equal(s.mask, 0);
	assert_int_equal(
	    pcr_spec_parse("0+7:sha256="
			   "E21B703EE69C77476BCCB43EC0336A9A1B2914B378944F7B00A10214CA8FEA0F",
			   &s, why, sizeof(why)),
	    0);
	assert_int_equal(s.mask, (1u << 7) | 1u);
	assert_int_equal(s.values_mask, 1u << 7);
	assert_int_equal(s.values[7][0], 0xe2);
	assert_int_equal(s.values[7][31], 0x0f);
	assert_int_equal(pcr_spec_parse("7:sha1=00", &s, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "sha256"));
	assert_int_equal(pcr_spec_parse("7:sha256=abc", &s, why, sizeof(why)), -EINVAL);
	assert_int_equal(
	    pcr_spec_parse("7:sha256=zz1b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00"
			   "a10214ca8fea0f",
			   &s, why, sizeof(why)),
	    -EINVAL);
	assert_int_equal(pcr_spec_parse("24", &s, why, sizeof(why)), -EINVAL);
	assert_int_equal(pcr_spec_parse("x", &s, why, sizeof(why)), -EINVAL);
}

static void test_mask_text(void **state)
{
	(void)state;
	char t[80];
	pcr_mask_text(0, t, sizeof(t));
	assert_string_equal(t, "");
	pcr_mask_text(1u << 7, t, sizeof(t));
	assert_string_equal(t, "7");
	pcr_mask_text((1u << 0) | (1u << 7) | (1u << 23), t, sizeof(t));
	assert_string_equal(t, "0+7+23");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_policy_matches_systemd),
	    cmocka_unit_test(test_spec_parse),
	    cmocka_unit_test(test_mask_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
