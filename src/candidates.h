/* SPDX-License-Identifier: MIT */
/*
 * Which device is the factory root, and which may become /persist: pure decisions over probe
 * results, so that every case is a unit test (test_devices.c).
 */
#ifndef FACTORY_INIT_CANDIDATES_H
#define FACTORY_INIT_CANDIDATES_H

#include "plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The LUKS2 label of a disk factory-init is still provisioning (blank.h): no other tool writes it,
 * and "persist" replaces it only once the disk is complete. A disk with it is ours, unfinished. */
#define PROVISIONAL_LABEL "factory-init-unfinished"

struct blockdev {
	char devname[64];    /* /dev/vdb */
	char type[32];	     /* blkid TYPE: crypto_LUKS, btrfs, ext4, ... ("" if none) */
	char label[128];     /* LABEL (LUKS2 and Btrfs both have one) */
	char uuid[64];	     /* UUID */
	char partuuid[64];   /* PART_ENTRY_UUID */
	char partlabel[128]; /* PART_ENTRY_NAME */
	char holder[32];     /* a device built on it (/sys/.../holders: "dm-0"), "" if none */
};

struct dev_spec {
	enum persist_kind kind;
	const char *spec; /* "/dev/vdb", "LABEL=persist", or NULL for PERSIST_AUTO */
	dev_t skip;	  /* a device not to probe (and, if a partition, its disk): the root's; 0 */
};

/*
 * Pure: picks the device that spec names among devs[0..n). For PERSIST_AUTO: the first (by name)
 * LUKS or Btrfs volume labelled "persist", else /dev/vdb. Returns its index, or -ENOENT.
 */
int devices_choose(const struct dev_spec *spec, const struct blockdev *devs, size_t n);

/* What became of a device the data-disk spec names. */
enum cand_verdict {
	CAND_TRY,     /* to be tried, in list order */
	CAND_REFUSED, /* cannot or must not hold /persist (detail says why); never written to */
	CAND_USED,    /* opened and mounted: /persist */
	CAND_FAILED,  /* tried: no key opened it, or it would not mount (detail says why) */
	CAND_SKIPPED, /* not tried: an earlier candidate won */
};

struct persist_candidate {
	struct blockdev dev;
	enum cand_verdict verdict;
	char detail[192];
};

#define MAX_CANDIDATES 8

struct persist_candidates {
	struct persist_candidate c[MAX_CANDIDATES];
	size_t n;
};

const char *cand_verdict_name(enum cand_verdict v);

/*
 * Pure: every device among devs[0..n) that spec names, in the order the executor tries them:
 * LUKS volumes by device name, then (unless require_luks) plain Btrfs volumes by device name,
 * then the refused ones (plain Btrfs when require_luks, anything else that is neither) with the
 * reason. spec names: PERSIST_PATH that device; PERSIST_TAG every device with that tag;
 * PERSIST_AUTO every LUKS or Btrfs volume labelled "persist", else /dev/vdb. Returns how many
 * are to be tried (CAND_TRY, at the front of out).
 */
size_t devices_candidates(const struct dev_spec *spec, bool require_luks,
			  const struct blockdev *devs, size_t n, struct persist_candidates *out);

/* Pure: does d carry the tag spec names (LABEL=, UUID=, PARTUUID=, PARTLABEL=; UUIDs in any
 * case)? */
bool blockdev_tag_matches(const char *spec, const struct blockdev *d);

/* Pure: does the spec need partition entry details? */
bool devices_spec_needs_partitions(const struct dev_spec *spec);

#endif
