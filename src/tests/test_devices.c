/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "devices.h"

static struct blockdev dev(const char *name, const char *type, const char *label, const char *uuid)
{
	struct blockdev d;
	memset(&d, 0, sizeof(d));
	strcpy(d.devname, name);
	strcpy(d.type, type);
	strcpy(d.label, label);
	strcpy(d.uuid, uuid);
	return d;
}

static void test_auto(void **state)
{
	(void)state;
	struct dev_spec auto_spec = {PERSIST_AUTO, NULL};
	struct blockdev devs[] = {
	    dev("/dev/vda", "ext4", "factory", "u1"),
	    dev("/dev/vdc", "crypto_LUKS", "persist", "u3"),
	    dev("/dev/vdb", "btrfs", "other", "u2"),
	};
	/* The labelled LUKS/Btrfs volume beats /dev/vdb. */
	assert_int_equal(devices_choose(&auto_spec, devs, 3), 1);
	/* Without one, /dev/vdb whatever it holds (the executor then says what it found). */
	strcpy(devs[1].label, "nope");
	assert_int_equal(devices_choose(&auto_spec, devs, 3), 2);
	/* A label on something that is neither LUKS nor Btrfs does not count. */
	struct blockdev ext[] = {dev("/dev/vdc", "ext4", "persist", "u")};
	assert_int_equal(devices_choose(&auto_spec, ext, 1), -ENOENT);
	assert_int_equal(devices_choose(&auto_spec, devs, 0), -ENOENT);
	/* Two labelled volumes: the first by name, whatever the scan order. */
	struct blockdev two[] = {dev("/dev/vdd", "btrfs", "persist", "a"),
				 dev("/dev/vdc", "crypto_LUKS", "persist", "b")};
	assert_int_equal(devices_choose(&auto_spec, two, 2), 1);
}

static void test_path_and_tags(void **state)
{
	(void)state;
	struct blockdev devs[] = {
	    dev("/dev/vda", "ext4", "factory", "AAAA-bbbb"),
	    dev("/dev/vdb", "crypto_LUKS", "persist", "1111-2222"),
	};
	strcpy(devs[1].partuuid, "p-uuid");
	strcpy(devs[1].partlabel, "data");
	struct dev_spec s = {PERSIST_PATH, "/dev/vdb"};
	assert_int_equal(devices_choose(&s, devs, 2), 1);
	s.spec = "/dev/vdz";
	assert_int_equal(devices_choose(&s, devs, 2), -ENOENT);
	s.kind = PERSIST_TAG;
	s.spec = "LABEL=factory";
	assert_int_equal(devices_choose(&s, devs, 2), 0);
	s.spec = "UUID=aaaa-BBBB";
	assert_int_equal(devices_choose(&s, devs, 2), 0);
	s.spec = "PARTUUID=P-UUID";
	assert_int_equal(devices_choose(&s, devs, 2), 1);
	s.spec = "PARTLABEL=data";
	assert_int_equal(devices_choose(&s, devs, 2), 1);
	s.spec = "PARTLABEL=Data";
	assert_int_equal(devices_choose(&s, devs, 2), -ENOENT);
	s.spec = "LABEL=";
	assert_int_equal(devices_choose(&s, devs, 2), -ENOENT);
}

/* Partition entry details cost reads: only PARTUUID= and PARTLABEL= specs ask for them. */
static void test_needs_partitions(void **state)
{
	(void)state;
	struct dev_spec s = {PERSIST_TAG, "PARTUUID=P-UUID", 0};
	assert_true(devices_spec_needs_partitions(&s));
	s.spec = "PARTLABEL=data";
	assert_true(devices_spec_needs_partitions(&s));
	s.spec = "LABEL=persist";
	assert_false(devices_spec_needs_partitions(&s));
	s.spec = "UUID=1234";
	assert_false(devices_spec_needs_partitions(&s));
	s = (struct dev_spec){PERSIST_AUTO, NULL, 0};
	assert_false(devices_spec_needs_partitions(&s));
	s = (struct dev_spec){PERSIST_PATH, "/dev/vdb", 0};
	assert_false(devices_spec_needs_partitions(&s));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_auto),
	    cmocka_unit_test(test_path_and_tags),
	    cmocka_unit_test(test_needs_partitions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
