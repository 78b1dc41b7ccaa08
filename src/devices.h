/* SPDX-License-Identifier: MIT */
/* Finding block devices: a pure matcher over probe results, and a bounded, event-driven wait. */
#ifndef FACTORY_INIT_DEVICES_H
#define FACTORY_INIT_DEVICES_H

#include "plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct blockdev {
	char devname[64];    /* /dev/vdb */
	char type[32];	     /* blkid TYPE: crypto_LUKS, btrfs, ext4, ... ("" if none) */
	char label[128];     /* LABEL (LUKS2 and Btrfs both have one) */
	char uuid[64];	     /* UUID */
	char partuuid[64];   /* PART_ENTRY_UUID */
	char partlabel[128]; /* PART_ENTRY_NAME */
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

/* Probes one device node with libblkid; partition entry details (PARTUUID, PARTLABEL) only when
 * asked for, since they cost extra reads. */
int devices_probe(const char *devname, bool partitions, struct blockdev *out);

/* Pure: does the spec need partition entry details? */
bool devices_spec_needs_partitions(const struct dev_spec *spec);

/*
 * Waits at most timeout_ms for the device spec names to appear: scans /sys/class/block (less
 * spec->skip and its disk), then rescans on every kernel uevent. On success fills *out and returns
 * 0; -ETIMEDOUT otherwise.
 */
int devices_wait(const struct dev_spec *spec, unsigned timeout_ms, struct blockdev *out);

#endif
