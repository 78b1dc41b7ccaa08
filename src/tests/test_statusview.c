/* SPDX-License-Identifier: MIT */
/* statusview.c: the human view of status.json (outcome first, reason in full, steps) and the
 * exit codes; records that are not records; control characters from a hostile label. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "statusview.h"

static int view(const char *text, int json, char **out, char **err)
{
	size_t on = 0, en = 0;
	FILE *o = open_memstream(out, &on), *e = open_memstream(err, &en);
	int rc = statusview_print(text, strlen(text), json, o, e);
	fclose(o);
	fclose(e);
	return rc;
}

static const char PERSIST[] =
    "{\"version\":1,\"mode\":\"stage1\",\"outcome\":\"persist\",\"reason\":null,"
    "\"device\":\"/dev/vdb\",\"fstype\":\"btrfs\",\"luks\":true,\"unlock\":\"tpm2\","
    "\"candidates\":[{\"device\":\"/dev/vdb\",\"type\":\"crypto_LUKS\",\"label\":\"persist\","
    "\"verdict\":\"used\",\"detail\":null},{\"device\":\"/dev/vdc\",\"type\":\"crypto_LUKS\","
    "\"label\":\"pers\\u001b[2Jist\",\"verdict\":\"failed\",\"detail\":\"no key opened it\"}],"
    "\"unlock_attempts\":[{\"device\":\"/dev/vdb\",\"method\":\"tpm2\",\"source\":\"token 0\","
    "\"ok\":true,\"keyslot\":1,\"error\":0,\"ms\":812,\"detail\":null}],"
    "\"key_in_cmdline\":false,\"store\":\"overlay\",\"tpm2\":\"present\","
    "\"factory_image\":{\"id\":\"build-42\",\"previous\":\"build-41\",\"refreshed\":true},"
    "\"warnings\":[\"vm.hostname: not a host name\"],"
    "\"steps\":[{\"name\":\"modules\",\"ms\":1668,\"result\":0},"
    "{\"name\":\"unlock\",\"ms\":812,\"result\":0}],\"total_ms\":2600}";

static void test_persist(void **state)
{
	(void)state;
	char *out, *err;
	assert_int_equal(view(PERSIST, 0, &out, &err), STATUSVIEW_PERSIST);
	/* The outcome is the first line. */
	assert_true(strncmp(out, "outcome          persist: /persist is /dev/vdb (btrfs)\n",
			    strlen("outcome          persist: /persist is /dev/vdb (btrfs)\n")) ==
		    0);
	assert_non_null(strstr(out, "unlocked with    tpm2\n"));
	assert_non_null(strstr(out, "refreshed from   build-41\n"));
	assert_non_null(strstr(out, "  tpm2 ok on /dev/vdb (token 0), 812 ms\n"));
	assert_non_null(strstr(out, "  /dev/vdc (crypto_LUKS, label pers?[2Jist): failed: no key "
				    "opened it\n")); /* the escape is defused */
	assert_null(strchr(out, '\x1b'));
	assert_non_null(strstr(out, "  vm.hostname: not a host name\n"));
	assert_non_null(strstr(out, "  modules           1668\n"));
	assert_non_null(strstr(out, "  total             2600\n"));
	assert_string_equal(err, "");
	free(out);
	free(err);
}

static void test_fallback(void **state)
{
	(void)state;
	char *out, *err;
	const char *t = "{\"outcome\":\"fallback\",\"mode\":\"stage1\",\"reason\":\"no data disk: "
			"nothing labelled persist appeared within 10 s\",\"store\":\"off\","
			"\"steps\":[{\"name\":\"device\",\"ms\":10004,\"result\":-19}],"
			"\"total_ms\":10400}";
	assert_int_equal(view(t, 0, &out, &err), STATUSVIEW_FALLBACK);
	assert_true(strncmp(out,
			    "outcome          fallback: booted on the factory store\n"
			    "reason           no data disk: nothing labelled persist appeared "
			    "within 10 s\n",
			    100) == 0);
	assert_non_null(strstr(out, "  device           10004  (error -19)\n"));
	free(out);
	free(err);
	/* --json: the record itself, still with its exit code. */
	assert_int_equal(view(t, 1, &out, &err), STATUSVIEW_FALLBACK);
	assert_non_null(strstr(out, "\"outcome\": \"fallback\""));
	free(out);
	free(err);
}

static void test_not_a_record(void **state)
{
	(void)state;
	const char *bad[] = {
	    "",	   "{", "[]", "{\"outcome\":1}", "{\"outcome\":\"maybe\"}", "{\"mode\":\"stage1\"}",
	    "null"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		char *out, *err;
		assert_int_equal(view(bad[i], 0, &out, &err), STATUSVIEW_BAD);
		assert_non_null(strstr(err, "not a status record"));
		assert_string_equal(out, "");
		free(out);
		free(err);
	}
}

static void test_network_line(void **state)
{
	(void)state;
	const char rec[] =
	    "{\"outcome\":\"fallback\",\"reason\":\"no data disk\",\"reason_code\":\"no-disk\","
	    "\"network_static\":{\"address\":\"10.0.2.50/24\",\"gateway\":\"10.0.2.2\","
	    "\"dns\":[\"10.0.2.3\",\"1.1.1.1\"],\"interface\":null,\"written\":false,"
	    "\"error\":\"No space left on device\"}}";
	char *out, *err;
	assert_int_equal(view(rec, 0, &out, &err), STATUSVIEW_FALLBACK);
	assert_non_null(strstr(out, "reason code      no-disk\n"));
	assert_non_null(strstr(out, "static network   10.0.2.50/24 via 10.0.2.2, DNS 10.0.2.3 "
				    "1.1.1.1, on every Ethernet interface (not written: No space "
				    "left on device)\n"));
	free(out);
	free(err);
}

static void test_provisioned(void **state)
{
	(void)state;
	char *out, *err;
	assert_int_equal(
	    view("{\"outcome\":\"persist\",\"device\":\"/dev/vdb\",\"fstype\":\"crypto_LUKS\","
		 "\"luks\":true,\"unlock\":\"provision\",\"provisioned\":true,"
		 "\"provision\":{\"result\":\"done\",\"detail\":\"/dev/vdb: LUKS2\"},"
		 "\"luks_uuid\":\"5f1e\",\"age_recipient\":\"age1xyz\"}",
		 0, &out, &err),
	    STATUSVIEW_PERSIST);
	assert_non_null(strstr(out, "provisioning     done: /dev/vdb: LUKS2\n"));
	assert_non_null(strstr(out, "luks uuid        5f1e\n"));
	assert_non_null(strstr(out, "age recipient    age1xyz\n"));
	free(out);
	free(err);
	assert_int_equal(view("{\"outcome\":\"fallback\",\"reason\":\"provisioning: no\","
			      "\"provisioned\":false,\"provision\":{\"result\":\"refused\","
			      "\"detail\":\"/dev/vdb is not blank\"}}",
			      0, &out, &err),
			 STATUSVIEW_FALLBACK);
	assert_non_null(strstr(out, "provisioning     refused: /dev/vdb is not blank\n"));
	assert_null(strstr(out, "age recipient"));
	free(out);
	free(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_persist),	 cmocka_unit_test(test_fallback),
	    cmocka_unit_test(test_not_a_record), cmocka_unit_test(test_network_line),
	    cmocka_unit_test(test_provisioned),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
