/* SPDX-License-Identifier: MIT */
/* libFuzzer target: any LUKS2 token JSON parses or is refused with a reason, never a crash;
 * a token that parses and is supported rebuilds to JSON that parses to the same token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same(const struct tpm2_token *a, const struct tpm2_token *b)
{
	return a->n_keyslots == b->n_keyslots && a->pcr_mask == b->pcr_mask &&
	       a->blob_private_len == b->blob_private_len &&
	       a->blob_public_len == b->blob_public_len &&
	       a->policy_hash_len == b->policy_hash_len &&
	       memcmp(a->policy_hash, b->policy_hash, a->policy_hash_len) == 0 &&
	       memcmp(a->blob_private, b->blob_private, a->blob_private_len) == 0 &&
	       a->pin == b->pin && strcmp(a->pcr_bank, b->pcr_bank) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	struct tpm2_token t;
	char why[256];
	if (tpm2_token_parse(text, &t, why, sizeof(why)) == 0) {
		if (!tpm2_token_unsupported(&t)) {
			char *again = tpm2_token_build(&t);
			if (again) {
				struct tpm2_token u;
				if (tpm2_token_parse(again, &u, why, sizeof(why)) != 0 ||
				    !same(&t, &u))
					abort();
				tpm2_token_free(&u);
				free(again);
			}
		}
		tpm2_token_free(&t);
	} else if (!why[0]) {
		abort(); /* a refusal always says why */
	}
	free(text);
	return 0;
}
