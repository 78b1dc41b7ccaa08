/* SPDX-License-Identifier: MIT */
/* libFuzzer target: any raw SMBIOS structure is parsed or refused, never a crash; warnings never
 * quote a credential's value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "credentials.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void warn(void *ctx, const char *msg)
{
	(void)ctx;
	if (strstr(msg, "FUZZSECRET"))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct credentials set = {0};
	credentials_parse_smbios_raw(data, size, &set, warn, NULL);
	for (size_t i = 0; i < set.n; i++)
		if (!credential_name_valid(set.items[i].name))
			abort();
	credentials_free(&set);
	return 0;
}
