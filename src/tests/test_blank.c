/* SPDX-License-Identifier: MIT */
/* blank.c: which disk provisioning may take, the blocks the blankness test reads, and every way
 * a disk is refused; plus the candidates' refusal of a half-provisioned disk. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "blank.h"
#include "candidates.h"

static struct blockdev dev(const char *name, const char *type, const char *label)
{
	struct blockdev d;
	memset(&d, 0, sizeof(d));
	snprintf(d.devname, sizeof(d.devname), "%s", name);
	snprintf(d.type, sizeof(d.type), "%s", type);
	snprintf(d.label, sizeof(d.label), "%s", label);
	return d;
}

static void test_choose(void **state)
{
	(void)state;
	char why[256];
	struct dev_spec autos = {PERSIST_AUTO, NULL, 0};
	struct blockdev one[] = {dev("/dev/vdb", "", "")};
	assert_int_equal(blank_choose(&autos, one, 1, why, sizeof(why)), 0);

	/* partitions and other kinds of disk are not "the one whole virtio disk" */
	struct blockdev parts[] = {dev("/dev/vdb1", "ext4", ""), dev("/dev/sda", "", ""),
				   dev("/dev/vdc", "", ""), dev("/dev/vd", "", ""),
				   dev("/dev/vdd2", "", "")};
	assert_int_equal(blank_choose(&autos, parts, 5, why, sizeof(why)), 2);

	/* two blank virtio disks: ambiguous, both named */
	struct blockdev two[] = {dev("/dev/vdb", "", ""), dev("/dev/vdc", "", "")};
	assert_int_equal(blank_choose(&autos, two, 2, why, sizeof(why)), -EEXIST);
	assert_non_null(strstr(why, "/dev/vdb, /dev/vdc"));
	assert_non_null(strstr(why, "2 disks"));

	/* a named disk: only that one, whatever else there is */
	struct dev_spec path = {PERSIST_PATH, "/dev/vdc", 0};
	assert_int_equal(blank_choose(&path, two, 2, why, sizeof(why)), 1);
	struct dev_spec gone = {PERSIST_PATH, "/dev/vde", 0};
	assert_int_equal(blank_choose(&gone, two, 2, why, sizeof(why)), -ENOENT);
	assert_non_null(strstr(why, "vm.persist"));

	/* nothing besides the root's disk */
	assert_int_equal(blank_choose(&autos, parts, 2, why, sizeof(why)), -ENOENT);
	assert_non_null(strstr(why, "no virtio disk"));

	/* in use by someone else (a mapping on it): never */
	struct blockdev busy[] = {dev("/dev/vdb", "crypto_LUKS", PROVISIONAL_LABEL)};
	strcpy(busy[0].holder, "dm-0");
	assert_int_equal(blank_choose(&autos, busy, 1, why, sizeof(why)), -EBUSY);
	assert_non_null(strstr(why, "in use (by dm-0)"));

	/* a tag: a blank disk has none, so nothing is taken by LABEL= */
	struct dev_spec tag = {PERSIST_TAG, "LABEL=persist", 0};
	assert_int_equal(blank_choose(&tag, one, 1, why, sizeof(why)), -ENOENT);
}

static void test_offsets(void **state)
{
	(void)state;
	uint64_t offs[BLANK_SAMPLES + 8];
	/* too small to have a middle */
	assert_int_equal(blank_sample_offsets(2ull * BLANK_EDGE, offs, BLANK_SAMPLES), 0);
	assert_int_equal(blank_sample_offsets(0, offs, BLANK_SAMPLES), 0);

	const uint64_t sizes[] = {256ull << 20, (1ull << 30) + 512, 20ull << 30, 3ull << 40,
				  2ull * BLANK_EDGE + 8 * BLANK_BLOCK};
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		uint64_t size = sizes[s], end = size / BLANK_BLOCK * BLANK_BLOCK;
		size_t n = blank_sample_offsets(size, offs, BLANK_SAMPLES + 8);
		uint64_t middle_blocks = (end - 2ull * BLANK_EDGE) / BLANK_BLOCK;
		assert_int_equal(n, middle_blocks < BLANK_SAMPLES ? middle_blocks : BLANK_SAMPLES);
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(offs[i] % BLANK_BLOCK, 0);
			assert_true(offs[i] >= BLANK_EDGE);
			assert_true(offs[i] + BLANK_BLOCK <= end - BLANK_EDGE);
			if (i)
				assert_true(offs[i] > offs[i - 1]); /* distinct, in order */
		}
		/* spread over the whole middle: the last sample is in its last part */
		if (n == BLANK_SAMPLES)
			assert_true(offs[n - 1] > end - BLANK_EDGE - (end - 2 * BLANK_EDGE) / n);
	}
	/* max limits the count */
	assert_int_equal(blank_sample_offsets(1ull << 30, offs, 3), 3);
}

static struct blank_facts blank_facts(void)
{
	struct blank_facts f;
	memset(&f, 0, sizeof(f));
	f.size = 1ull << 30;
	return f;
}

static void test_verdict(void **state)
{
	(void)state;
	char why[256];
	struct blank_facts f = blank_facts();
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), 0);

	f = blank_facts();
	strcpy(f.signature, "gpt");
	f.sig_offset = 512;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -ENOTEMPTY);
	assert_non_null(strstr(why, "finds gpt (its signature at byte 512)"));
	assert_non_null(strstr(why, "left untouched"));

	f = blank_facts();
	f.nonzero = true;
	f.nonzero_at = 524288;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -ENOTEMPTY);
	assert_non_null(strstr(why, "byte 524288 is not zero"));

	f = blank_facts();
	f.read_result = -EIO;
	f.read_at = 4096;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -EIO);
	assert_non_null(strstr(why, "could not be read at byte 4096"));

	f = blank_facts();
	f.probe_result = -ENOMEM;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -EIO);

	f = blank_facts();
	f.size = BLANK_MIN_SIZE - 1;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -ENOSPC);
	assert_non_null(strstr(why, "255 MiB"));

	/* ours, unfinished: its own LUKS2 header is the one signature, and that is allowed */
	f = blank_facts();
	strcpy(f.signature, "crypto_LUKS");
	f.provisional = true;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), 0);
	/* ... but never a small one, nor one that could not be probed */
	f.size = 1 << 20;
	assert_int_equal(blank_verdict(&f, why, sizeof(why)), -ENOSPC);
}

static void test_candidates_refuse_unfinished(void **state)
{
	(void)state;
	struct blockdev devs[] = {dev("/dev/vdb", "crypto_LUKS", PROVISIONAL_LABEL)};
	struct persist_candidates c;
	struct dev_spec autos = {PERSIST_AUTO, NULL, 0};
	/* under auto it is /dev/vdb, the fallback, yet never tried */
	assert_int_equal(devices_candidates(&autos, true, devs, 1, &c), 0);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.c[0].verdict, CAND_REFUSED);
	assert_non_null(strstr(c.c[0].detail, "did not finish"));
	struct dev_spec path = {PERSIST_PATH, "/dev/vdb", 0};
	assert_int_equal(devices_candidates(&path, false, devs, 1, &c), 0);
	assert_true(blank_is_provisional(&devs[0]));
	struct blockdev other = dev("/dev/vdb", "crypto_LUKS", "persist");
	assert_false(blank_is_provisional(&other));
	other = dev("/dev/vdb", "btrfs", PROVISIONAL_LABEL);
	assert_false(blank_is_provisional(&other));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_choose),
	    cmocka_unit_test(test_offsets),
	    cmocka_unit_test(test_verdict),
	    cmocka_unit_test(test_candidates_refuse_unfinished),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
