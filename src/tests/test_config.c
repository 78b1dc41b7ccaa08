/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static void test_hostnames(void **state)
{
	(void)state;
	assert_true(hostname_is_valid("web-1"));
	assert_true(hostname_is_valid("a"));
	assert_true(hostname_is_valid("node1.example.org"));
	assert_true(hostname_is_valid("1host")); /* RFC 1123 allows a leading digit */
	assert_false(hostname_is_valid(""));
	assert_false(hostname_is_valid("-web"));
	assert_false(hostname_is_valid("web-"));
	assert_false(hostname_is_valid("bad_host"));
	assert_false(hostname_is_valid("a..b"));
	assert_false(hostname_is_valid(".a"));
	assert_false(hostname_is_valid("a."));
	assert_false(hostname_is_valid("web 1"));
	char label[70];
	memset(label, 'a', 63);
	label[63] = '\0';
	assert_true(hostname_is_valid(label));
	strcat(label, "a");
	assert_false(hostname_is_valid(label));
	char longname[400] = "";
	for (int i = 0; i < 60; i++)
		strcat(longname, "abcd.");
	strcat(longname, "x");
	assert_false(hostname_is_valid(longname)); /* 301 > 253 */
}

static int check(const char *key, const char *value)
{
	char why[256];
	return vm_key_check(key, value, why, sizeof(why));
}

static void test_key_checks(void **state)
{
	(void)state;
	assert_int_equal(check("branch", "main"), 0);
	assert_int_equal(check("branch", "release/2026.11"), 0);
	assert_int_equal(check("branch", "-x"), -EINVAL);
	assert_int_equal(check("branch", "a..b"), -EINVAL);
	assert_int_equal(check("branch", "a b"), -EINVAL);
	assert_int_equal(check("branch", "x.lock"), -EINVAL);
	assert_int_equal(check("repo", "https://git.example.org/fleet.git"), 0);
	assert_int_equal(check("repo", "git@host:fleet.git"), 0);
	assert_int_equal(check("repo", "--upload-pack=evil"), -EINVAL);
	assert_int_equal(check("repo", "a b"), -EINVAL);
	assert_int_equal(check("persist", "auto"), 0);
	assert_int_equal(check("persist", "/dev/vdb"), 0);
	assert_int_equal(check("persist", "LABEL=persist"), 0);
	assert_int_equal(check("persist", "PARTUUID=0fc63daf-8483"), 0);
	assert_int_equal(check("persist", "LABEL="), -EINVAL);
	assert_int_equal(check("persist", "vdb"), -EINVAL);
	assert_int_equal(check("persist", "/dev/../etc"), -EINVAL);
	assert_int_equal(check("persist.timeout", "0"), 0);
	assert_int_equal(check("persist.timeout", "3600"), 0);
	assert_int_equal(check("persist.timeout", "3601"), -EINVAL);
	assert_int_equal(check("persist.timeout", "abc"), -EINVAL);
	assert_int_equal(check("persist.timeout", "-1"), -EINVAL);
	assert_int_equal(check("persist.timeout", ""), -EINVAL);
	assert_int_equal(check("persist.options", "noatime,space_cache=v2"), 0);
	assert_int_equal(check("persist.options", "a b"), -EINVAL);
	assert_int_equal(check("store", "overlay"), 0);
	assert_int_equal(check("store", "off"), 0);
	assert_int_equal(check("store", "bind"), 0);
	assert_int_equal(check("store", "tmpfs"), -EINVAL);
	assert_int_equal(check("luks.keyfile", "/etc/key"), 0);
	assert_int_equal(check("luks.keyfile", "key"), -EINVAL);
	assert_int_equal(check("debug", "1"), 0);
	assert_int_equal(check("debug", "maybe"), -EINVAL);
	/* Unknown keys pass through, bounded and free of control characters. */
	assert_int_equal(check("motd", "say \"hi\""), 0);
	assert_int_equal(check("motd", "tab\there"), -EINVAL);
	assert_int_equal(check("motd", "del\x7f"), -EINVAL);
	char big[VM_VALUE_MAX + 2];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(check("motd", big), -EINVAL);
	big[VM_VALUE_MAX] = '\0';
	assert_int_equal(check("motd", big), 0);
	/* Factory-init's own namespaces reject unknown names (typos, not config). */
	assert_int_equal(check("luks.keyfiel", "/x"), -EINVAL);
	assert_int_equal(check("persist.timout", "3"), -EINVAL);
	assert_int_equal(check("bad name", "x"), -EINVAL);
	assert_int_equal(check(".x", "x"), -EINVAL);
}

static void test_kinds(void **state)
{
	(void)state;
	enum vm_key_kind k;
	char why[128];
	assert_int_equal(vm_key_kind("luks.key", &k, why, sizeof(why)), 0);
	assert_int_equal(k, VM_KEY_SECRET);
	assert_int_equal(vm_key_kind("hostname", &k, why, sizeof(why)), 0);
	assert_int_equal(k, VM_KEY_CONFIG);
	assert_int_equal(vm_key_kind("store", &k, why, sizeof(why)), 0);
	assert_int_equal(k, VM_KEY_CONTROL);
	assert_int_equal(vm_key_kind("something.new", &k, why, sizeof(why)), 0);
	assert_int_equal(k, VM_KEY_CONFIG);
}

static void test_preview(void **state)
{
	(void)state;
	char out[96];
	value_preview("ok", out, sizeof(out));
	assert_string_equal(out, "ok");
	value_preview("a\nb", out, sizeof(out));
	assert_string_equal(out, "a\\x0ab");
	value_preview("0123456789012345678901234567890123456789EXTRA", out, sizeof(out));
	assert_string_equal(out, "0123456789012345678901234567890123456789...");
}

struct warnings {
	int n;
	char last[512];
};

static void collect(void *ctx, const char *msg)
{
	struct warnings *w = ctx;
	w->n++;
	snprintf(w->last, sizeof(w->last), "%s", msg);
}

static void test_layer_from_json(void **state)
{
	(void)state;
	struct warnings w = {0};
	struct json_object *layer, *control;
	const char *text = "{\"hostname\":\"web-1\",\"vm.branch\":\"main\",\"store\":\"off\","
			   "\"luks.key\":\"oops\",\"hostname2\":{\"x\":1},\"count\":3,"
			   "\"flag\":true,\"bad_host\":\"a\\u0001b\"}";
	assert_int_equal(config_layer_from_json(text, "test", &layer, &control, collect, &w), 0);
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "hostname")),
			    "web-1");
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "branch")),
			    "main");
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "count")), "3");
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "flag")), "1");
	assert_string_equal(json_object_get_string(json_object_object_get(control, "store")),
			    "off");
	assert_null(json_object_object_get(layer, "luks.key"));
	assert_null(json_object_object_get(control, "luks.key"));
	assert_null(json_object_object_get(layer, "hostname2"));
	assert_null(json_object_object_get(layer, "bad_host"));
	assert_int_equal(w.n, 3);
	/* The secret's value is never quoted in a warning. */
	json_object_put(layer);
	json_object_put(control);

	/* Without a control object, control keys are refused. */
	w.n = 0;
	assert_int_equal(
	    config_layer_from_json("{\"store\":\"off\"}", "t", &layer, NULL, collect, &w), 0);
	assert_int_equal(w.n, 1);
	assert_null(json_object_object_get(layer, "store"));
	json_object_put(layer);

	w.n = 0;
	assert_int_equal(config_layer_from_json("{not json", "t", &layer, NULL, collect, &w),
			 -EBADMSG);
	assert_null(layer);
	assert_int_equal(w.n, 1);
	assert_int_equal(config_layer_from_json("[1,2]", "t", &layer, NULL, collect, &w), -EBADMSG);
}

static void test_secret_never_in_warning(void **state)
{
	(void)state;
	struct warnings w = {0};
	struct json_object *layer;
	assert_int_equal(
	    config_layer_from_json("{\"luks.key\":\"TOPSECRET\"}", "t", &layer, NULL, collect, &w),
	    0);
	assert_int_equal(w.n, 1);
	assert_null(strstr(w.last, "TOPSECRET"));
	json_object_put(layer);
}

static void test_merge_and_escape(void **state)
{
	(void)state;
	struct json_object *a = json_tokener_parse("{\"hostname\":\"a\",\"repo\":\"r1\"}");
	struct json_object *b = json_tokener_parse("{\"hostname\":\"b\"}");
	struct json_object *c = json_tokener_parse("{\"note\":\"say \\\"hi\\\" /x\"}");
	struct json_object *layers[] = {a, NULL, b, c};
	struct json_object *m = config_merge(layers, 4);
	assert_string_equal(json_object_get_string(json_object_object_get(m, "hostname")), "b");
	assert_string_equal(json_object_get_string(json_object_object_get(m, "repo")), "r1");
	char *text = config_to_string(m);
	assert_non_null(strstr(text, "\"note\": \"say \\\"hi\\\" /x\""));
	assert_int_equal(text[strlen(text) - 1], '\n');
	/* It parses back to the same value. */
	struct json_object *back = json_tokener_parse(text);
	assert_string_equal(json_object_get_string(json_object_object_get(back, "note")),
			    "say \"hi\" /x");
	free(text);
	json_object_put(back);
	json_object_put(m);
	json_object_put(a);
	json_object_put(b);
	json_object_put(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hostnames),
	    cmocka_unit_test(test_key_checks),
	    cmocka_unit_test(test_kinds),
	    cmocka_unit_test(test_preview),
	    cmocka_unit_test(test_layer_from_json),
	    cmocka_unit_test(test_secret_never_in_warning),
	    cmocka_unit_test(test_merge_and_escape),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
