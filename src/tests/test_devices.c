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

/* The data disk is a decision over every candidate: none is picked by name order alone. */
static void test_candidates(void **state)
{
	(void)state;
	struct dev_spec auto_spec = {PERSIST_AUTO, NULL, 0};
	struct persist_candidates c;
	/* A stranger's plain Btrfs labelled "persist" beside the real LUKS volume. */
	struct blockdev devs[] = {
	    dev("/dev/vdb", "btrfs", "persist", "u2"),
	    dev("/dev/vdc", "crypto_LUKS", "persist", "u3"),
	    dev("/dev/vdd", "ext4", "persist", "u4"),
	};
	assert_int_equal(devices_candidates(&auto_spec, true, devs, 3, &c), 1);
	assert_int_equal(c.n, 2); /* ext4 is not named by auto at all */
	assert_string_equal(c.c[0].dev.devname, "/dev/vdc");
	assert_int_equal(c.c[0].verdict, CAND_TRY);
	assert_string_equal(c.c[1].dev.devname, "/dev/vdb");
	assert_int_equal(c.c[1].verdict, CAND_REFUSED);
	assert_non_null(strstr(c.c[1].detail, "unencrypted"));
	assert_non_null(strstr(c.c[1].detail, "vm.persist.encrypted=no"));
	/* Allowed: LUKS still first, then the plain one. */
	assert_int_equal(devices_candidates(&auto_spec, false, devs, 3, &c), 2);
	assert_string_equal(c.c[0].dev.devname, "/dev/vdc");
	assert_string_equal(c.c[1].dev.devname, "/dev/vdb");
	assert_string_equal(cand_verdict_name(c.c[1].verdict), "try");
	/* Two LUKS volumes: both tried, by device name, whatever the scan order. */
	struct blockdev two[] = {dev("/dev/vdd", "crypto_LUKS", "persist", "a"),
				 dev("/dev/vdc", "crypto_LUKS", "persist", "b")};
	assert_int_equal(devices_candidates(&auto_spec, true, two, 2, &c), 2);
	assert_string_equal(c.c[0].dev.devname, "/dev/vdc");
	assert_string_equal(c.c[1].dev.devname, "/dev/vdd");
	/* No labelled volume: /dev/vdb whatever it holds; refused unless LUKS (or allowed). */
	struct blockdev plain[] = {dev("/dev/vdb", "btrfs", "", "p"), dev("/dev/vdc", "", "", "")};
	assert_int_equal(devices_candidates(&auto_spec, true, plain, 2, &c), 0);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.c[0].verdict, CAND_REFUSED);
	assert_int_equal(devices_candidates(&auto_spec, false, plain, 2, &c), 1);
	/* A LUKS volume someone else opened already (systemd-cryptsetup): never unlocked again. */
	struct blockdev busy[] = {dev("/dev/vdb", "crypto_LUKS", "persist", "a")};
	strcpy(busy[0].holder, "dm-0");
	assert_int_equal(devices_candidates(&auto_spec, true, busy, 1, &c), 0);
	assert_int_equal(c.c[0].verdict, CAND_REFUSED);
	assert_non_null(strstr(c.c[0].detail, "in use (by dm-0"));
	assert_non_null(strstr(c.c[0].detail, "vm.persist.opened="));
	struct blockdev blank[] = {dev("/dev/vdb", "", "", "")};
	assert_int_equal(devices_candidates(&auto_spec, false, blank, 1, &c), 0);
	assert_string_equal(c.c[0].detail,
			    "holds no recognisable signature, not LUKS or Btrfs; left untouched");
	assert_int_equal(devices_candidates(&auto_spec, true, devs, 0, &c), 0);
	assert_int_equal(c.n, 0);
	/* A named plain volume is the user's choice; a label spec names every volume with it. */
	struct dev_spec path = {PERSIST_PATH, "/dev/vdb", 0};
	assert_int_equal(devices_candidates(&path, false, devs, 3, &c), 1);
	assert_int_equal(c.n, 1);
	assert_int_equal(devices_candidates(&path, true, devs, 3, &c), 0);
	assert_non_null(strstr(c.c[0].detail, "vm.persist.encrypted=yes"));
	struct dev_spec label = {PERSIST_TAG, "LABEL=persist", 0};
	assert_int_equal(devices_candidates(&label, false, devs, 3, &c), 2);
	assert_int_equal(c.n, 3);
	assert_string_equal(c.c[2].dev.devname, "/dev/vdd");
	assert_int_equal(c.c[2].verdict, CAND_REFUSED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_auto),
	    cmocka_unit_test(test_candidates),
	    cmocka_unit_test(test_path_and_tags),
	    cmocka_unit_test(test_needs_partitions),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
