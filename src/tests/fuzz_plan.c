/* SPDX-License-Identifier: MIT */
/* libFuzzer target: any command line plus any embedded config must yield a plan, never a crash,
 * and the plan's JSON must not depend on the vm.luks.key value (only on whether one was given).
 * The command line's own credentials (systemd.set_credential=) then go through the control layer
 * into the plan as stage 1 applies those of fw_cfg and SMBIOS. */
#include <json-c/json.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void ignore(void *ctx, const char *message)
{
	(void)ctx;
	(void)message;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The input is "cmdline\0embedded-json": both parts are fuzzed. */
	char *buf = malloc(size + 2);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = buf[size + 1] = '\0';
	const char *cmdline = buf;
	size_t n = strlen(buf);
	const char *embedded = n < size ? buf + n + 1 : NULL;
	struct plan p;
	if (plan_build(cmdline, embedded, &p) == 0) {
		char *text = plan_to_json(&p);
		if (text && p.key.data) {
			memset(p.key.data, '#', p.key.len);
			char *again = plan_to_json(&p);
			if (again && strcmp(text, again) != 0)
				abort();
			free(again);
		}
		free(text);
		struct json_object *layer = NULL, *control = NULL;
		if (credentials_config_layer(&p.creds, &layer, &control, ignore, NULL) == 0) {
			char applied[512], overridden[256];
			plan_apply_credentials(&p, control, applied, sizeof(applied), overridden,
					       sizeof(overridden));
			if (strlen(applied) >= sizeof(applied) ||
			    strlen(overridden) >= sizeof(overridden))
				abort();
			free(plan_to_json(&p));
		}
		json_object_put(layer);
		json_object_put(control);
		plan_free(&p);
	}
	free(buf);
	return 0;
}
