/* SPDX-License-Identifier: MIT */
/* metrics.c: the Prometheus text for a persist boot and a fallback, one sample per label set
 * (steps of one name add up), label values escaped, every family with HELP and TYPE. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "status.h"

static void has(const char *text, const char *line)
{
	char want[512];
	snprintf(want, sizeof(want), "\n%s\n", line);
	if (!strstr(text, want))
		fail_msg("no line \"%s\" in:\n%s", line, text);
}

/* Every sample's family has HELP and TYPE before it, and no sample appears twice. */
static void well_formed(const char *text)
{
	char *copy = strdup(text), *save = NULL;
	char seen[128][160];
	size_t n = 0;
	char typed[64][80];
	size_t nt = 0;
	for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (strncmp(l, "# TYPE ", 7) == 0) {
			sscanf(l + 7, "%79s", typed[nt++]);
			continue;
		}
		if (l[0] == '#')
			continue;
		char name[80];
		sscanf(l, "%79[a-z0-9_]", name);
		assert_true(nt > 0);
		assert_string_equal(name, typed[nt - 1]);
		char *sp = strrchr(l, ' ');
		assert_non_null(sp);
		*sp = '\0';
		for (size_t i = 0; i < n; i++)
			if (strcmp(seen[i], l) == 0)
				fail_msg("sample twice: %s", l);
		assert_true(n < 128);
		snprintf(seen[n++], sizeof(seen[0]), "%s", l);
	}
	free(copy);
}

static void test_persist(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "stage1", 0);
	st.persist = true;
	strcpy(st.unlock, "tpm2");
	strcpy(st.store, "bind");
	strcpy(st.factory_id, "img \"7\"\\x\nnext");
	strcpy(st.factory_previous, "img-6");
	st.refreshed = true;
	st.seeded = true;
	st.seed.files = 112000;
	st.seed.hardlinks = 7;
	st.seed.bytes = 1310000000;
	st.seed.ms = 14480;
	strcpy(st.tpm2, "/dev/tpmrm0");
	st.tpm2_lock_result = 1;
	status_attempt(&st, "/dev/vdb", "passphrase", "console", -EPERM, 10, "wrong");
	status_attempt(&st, "/dev/vdb", "tpm2", "token 0", 1, 800, NULL);
	status_step(&st, "modules", 1668, 0);
	status_step(&st, "unlock", 90, 0);
	status_step(&st, "unlock", 5, 0);
	status_step(&st, "store-copy", 14480, 0);
	st.total_ms = 16250;
	char *t = metrics_render(&st, "0.1.0");
	assert_non_null(t);
	well_formed(t);
	has(t, "factory_init_info{version=\"0.1.0\",mode=\"stage1\"} 1");
	has(t, "factory_init_persist 1");
	has(t, "factory_init_reason{code=\"none\"} 1");
	has(t, "factory_init_reason{code=\"no-disk\"} 0");
	has(t, "factory_init_unlock_method{method=\"tpm2\"} 1");
	has(t, "factory_init_unlock_method{method=\"passphrase\"} 0");
	has(t, "factory_init_unlock_attempts{result=\"ok\"} 1");
	has(t, "factory_init_unlock_attempts{result=\"failed\"} 1");
	has(t, "factory_init_store_mode{mode=\"bind\"} 1");
	has(t, "factory_init_store_mode{mode=\"overlay\"} 0");
	has(t, "factory_init_step_duration_seconds{step=\"modules\"} 1.668");
	has(t, "factory_init_step_duration_seconds{step=\"unlock\"} 0.095");
	has(t, "factory_init_duration_seconds 16.250");
	has(t, "factory_init_image_info{id=\"img \\\"7\\\"\\\\x\\nnext\",previous=\"img-6\"} 1");
	has(t, "factory_init_image_refreshed 1");
	has(t, "factory_init_store_copied 1");
	has(t, "factory_init_store_copy_complete 1");
	has(t, "factory_init_store_copy_entries{kind=\"file\"} 112000");
	has(t, "factory_init_store_copy_bytes 1310000000");
	has(t, "factory_init_store_copy_duration_seconds 14.480");
	has(t, "factory_init_tpm2_present 1");
	has(t, "factory_init_tpm2_locked 1");
	has(t, "factory_init_network_static 0");
	free(t);
}

static void test_fallback(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "helper", 0);
	status_reason(&st, STATUS_REASON_UNLOCK, "no key opened /dev/vdb");
	strcpy(st.tpm2, "none");
	st.key_in_cmdline = true;
	st.network_static = true;
	status_warn(&st, "w");
	st.total_ms = 3;
	char *t = metrics_render(&st, "0.1.0");
	well_formed(t);
	has(t, "factory_init_persist 0");
	has(t, "factory_init_reason{code=\"unlock-failed\"} 1");
	has(t, "factory_init_reason{code=\"none\"} 0");
	has(t, "factory_init_unlock_method{method=\"none\"} 1");
	has(t, "factory_init_store_mode{mode=\"factory\"} 1");
	has(t, "factory_init_duration_seconds 0.003");
	has(t, "factory_init_store_copied 0");
	assert_null(strstr(t, "factory_init_store_copy_bytes"));
	has(t, "factory_init_tpm2_present 0");
	has(t, "factory_init_provisioned 0");
	has(t, "factory_init_key_on_cmdline 1");
	has(t, "factory_init_network_static 1");
	has(t, "factory_init_warnings 1");
	free(t);
}

/* A boot that provisioned the disk, and one whose provisioning found no blank disk. */
static void test_provision(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "stage1", 0);
	st.persist = st.provisioned = true;
	strcpy(st.unlock, "provision");
	char *t = metrics_render(&st, "0.1.0");
	well_formed(t);
	has(t, "factory_init_provisioned 1");
	has(t, "factory_init_unlock_method{method=\"provision\"} 1");
	free(t);
	status_init(&st, "stage1", 0);
	status_reason(&st, STATUS_REASON_NOT_BLANK, "provisioning: /dev/vdb is not blank");
	t = metrics_render(&st, "0.1.0");
	well_formed(t);
	has(t, "factory_init_provisioned 0");
	has(t, "factory_init_reason{code=\"not-blank\"} 1");
	has(t, "factory_init_reason{code=\"provision-failed\"} 0");
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_persist),
	    cmocka_unit_test(test_fallback),
	    cmocka_unit_test(test_provision),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
