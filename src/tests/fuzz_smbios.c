/* SPDX-License-Identifier: MIT */
/* libFuzzer target: any raw SMBIOS structure is parsed or refused, never a crash; warnings never
 * quote a credential's value. The marker FUZZSECRET may legitimately appear in a warning when
 * the input put it in a credential's name (the text before the first '='), so the oracle only
 * fires when no name in the input holds it. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "credentials.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MARKER "FUZZSECRET"

static bool marker_in_a_name;

static void warn(void *ctx, const char *msg)
{
	(void)ctx;
	if (!marker_in_a_name && strstr(msg, MARKER))
		abort();
}

/* Does MARKER occur in the part of any NUL-separated string before its first '='? Strings start
 * after the formatted area, whose length is the structure's second byte, as in the parser. */
static bool marker_before_eq(const uint8_t *data, size_t size)
{
	const size_t m = strlen(MARKER);
	size_t start = size >= 2 ? data[1] : size;
	while (start < size) {
		const uint8_t *nul = memchr(data + start, '\0', size - start);
		size_t end = nul ? (size_t)(nul - data) : size;
		const uint8_t *eq = memchr(data + start, '=', end - start);
		size_t name_end = eq ? (size_t)(eq - data) : end;
		for (size_t i = start; i + m <= name_end; i++)
			if (memcmp(data + i, MARKER, m) == 0)
				return true;
		start = end + 1;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	marker_in_a_name = marker_before_eq(data, size);
	struct credentials set = {0};
	credentials_parse_smbios_raw(data, size, &set, warn, NULL);
	for (size_t i = 0; i < set.n; i++)
		if (!credential_name_valid(set.items[i].name))
			abort();
	credentials_free(&set);
	return 0;
}
