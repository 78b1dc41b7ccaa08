/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

static void test_fallback_status(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "stage1", 0);
	status_reason(&st, "no data disk: %s did not appear", "/dev/vdb");
	status_reason(&st, "a later, derived failure");
	status_warn(&st, "w1");
	status_step(&st, "device", 10001, -ETIMEDOUT);
	status_step(&st, "config", 2, 0);
	st.total_ms = 10100;
	char *text = status_to_json(&st);
	struct json_object *o = json_tokener_parse(text);
	assert_non_null(o);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "outcome")),
			    "fallback");
	assert_string_equal(json_object_get_string(json_object_object_get(o, "reason")),
			    "no data disk: /dev/vdb did not appear");
	assert_string_equal(json_object_get_string(json_object_object_get(o, "store")), "factory");
	assert_null(json_object_object_get(o, "device"));
	struct json_object *steps = json_object_object_get(o, "steps");
	assert_int_equal(json_object_array_length(steps), 2);
	struct json_object *s0 = json_object_array_get_idx(steps, 0);
	assert_int_equal(json_object_get_int(json_object_object_get(s0, "ms")), 10001);
	assert_int_equal(json_object_get_int(json_object_object_get(s0, "result")), -ETIMEDOUT);
	assert_non_null(json_object_object_get(s0, "error"));
	json_object_put(o);
	free(text);
}

static void test_persist_status(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "helper", 0);
	st.persist = true;
	st.luks = true;
	strcpy(st.unlock, "keyfile");
	strcpy(st.device, "/dev/vdb");
	strcpy(st.store, "overlay");
	char *text = status_to_json(&st);
	struct json_object *o = json_tokener_parse(text);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "outcome")),
			    "persist");
	assert_null(json_object_object_get(o, "reason"));
	assert_string_equal(json_object_get_string(json_object_object_get(o, "unlock")), "keyfile");
	assert_true(json_object_get_boolean(json_object_object_get(o, "luks")));
	json_object_put(o);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fallback_status),
	    cmocka_unit_test(test_persist_status),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
