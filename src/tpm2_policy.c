/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "tpm2_policy.h"
#include "token.h"
#include "util.h"

#include <errno.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <string.h>

#define TPM2_CC_POLICY_PCR 0x0000017fu
#define TPM2_ALG_SHA256_ID 0x000bu

int pcr_spec_parse(const char *text, struct pcr_spec *out, char *why, size_t why_len)
{
	memset(out, 0, sizeof(*out));
	const char *p = text;
	while (*p) {
		size_t n = strcspn(p, "+,");
		char item[160];
		if (n >= sizeof(item)) {
			snprintf(why, why_len, "a PCR item is too long");
			return -EINVAL;
		}
		memcpy(item, p, n);
		item[n] = '\0';
		char *colon = strchr(item, ':');
		if (colon)
			*colon = '\0';
		uint32_t bit = 0;
		if (n > 0) {
			int r = tpm2_token_pcr_mask_parse(item, &bit, why, why_len);
			if (r < 0)
				return r;
			if (__builtin_popcount(bit) != 1) {
				snprintf(why, why_len, "\"%s\" is not one PCR", item);
				return -EINVAL;
			}
		}
		if (colon) {
			const char *v = colon + 1;
			if (!str_has_prefix(v, "sha256=")) {
				snprintf(why, why_len,
					 "PCR %s: only sha256=HEX values are supported", item);
				return -EINVAL;
			}
			v += 7;
			if (strlen(v) != 2 * TPM2_SHA256_LEN) {
				snprintf(why, why_len, "PCR %s: a sha256 value has 64 hex digits",
					 item);
				return -EINVAL;
			}
			int idx = __builtin_ctz(bit);
			if (hex_decode(v, 2 * TPM2_SHA256_LEN, out->values[idx], TPM2_SHA256_LEN) <
			    0) {
				snprintf(why, why_len, "PCR %s: the value is not hex", item);
				return -EINVAL;
			}
			out->values_mask |= bit;
		}
		out->mask |= bit;
		p += n;
		if (*p)
			p++;
	}
	return 0;
}

void tpm2_policy_pcr_sha256(uint32_t mask, const uint8_t values[TPM2_PCRS][TPM2_SHA256_LEN],
			    uint8_t out[TPM2_SHA256_LEN])
{
	struct sha256_ctx h;
	uint8_t pcr_digest[TPM2_SHA256_LEN];
	sha256_init(&h);
	for (int i = 0; i < TPM2_PCRS; i++)
		if (mask & (1u << i))
			sha256_update(&h, TPM2_SHA256_LEN, values[i]);
	sha256_digest(&h, TPM2_SHA256_LEN, pcr_digest);

	/* The command code and a TPML_PCR_SELECTION of one bank, all big-endian. */
	uint8_t zero[TPM2_SHA256_LEN] = {0};
	const uint8_t sel[] = {
	    0x00,
	    0x00,
	    0x01,
	    0x7f, /* TPM2_CC_PolicyPCR */
	    0x00,
	    0x00,
	    0x00,
	    0x01, /* count */
	    0x00,
	    TPM2_ALG_SHA256_ID, /* hash */
	    3,			/* sizeofSelect */
	    (uint8_t)mask,
	    (uint8_t)(mask >> 8),
	    (uint8_t)(mask >> 16),
	};
	sha256_init(&h);
	sha256_update(&h, sizeof(zero), zero);
	sha256_update(&h, sizeof(sel), sel);
	sha256_update(&h, sizeof(pcr_digest), pcr_digest);
	sha256_digest(&h, TPM2_SHA256_LEN, out);
}

void pcr_mask_text(uint32_t mask, char *out, size_t out_len)
{
	size_t o = 0;
	if (out_len)
		out[0] = '\0';
	for (int i = 0; i < TPM2_PCRS && o < out_len; i++)
		if (mask & (1u << i))
			o += (size_t)snprintf(out + o, out_len - o, "%s%d", o ? "+" : "", i);
}
