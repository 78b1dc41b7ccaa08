/* SPDX-License-Identifier: MIT */
/* libFuzzer target: any text is an age identity or refused, never a crash; an identity that
 * parses re-encodes to the same text (in upper case) and its recipient decodes back to 32 bytes;
 * Bech32 decoding of any text under "age" never writes past its buffer and round-trips. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agekey.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	uint8_t scalar[AGEKEY_SIZE];
	if (agekey_parse_secret(text, size, scalar) == 0) {
		char again[AGEKEY_SECRET_LEN], rcpt[AGEKEY_RECIPIENT_LEN];
		agekey_secret(scalar, again);
		if (strlen(again) != size)
			abort();
		for (size_t i = 0; i < size; i++)
			if (toupper((unsigned char)text[i]) != again[i])
				abort();
		if (agekey_recipient(scalar, rcpt) == 0) {
			uint8_t pub[AGEKEY_SIZE + 8];
			if (bech32_decode("age", rcpt, strlen(rcpt), pub, sizeof(pub)) !=
			    AGEKEY_SIZE)
				abort();
		}
	}
	uint8_t out[128];
	int n = bech32_decode("age", text, size, out, sizeof(out));
	if (n >= 0) {
		char enc[256];
		int m = bech32_encode("age", out, (size_t)n, enc, sizeof(enc));
		/* the same text, up to case (Bech32 allows all upper case) */
		if (m != (int)size)
			abort();
		for (size_t i = 0; i < size; i++)
			if (tolower((unsigned char)text[i]) != enc[i])
				abort();
	}
	return 0;
}
