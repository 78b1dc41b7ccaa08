/* SPDX-License-Identifier: MIT */
/* Finding block devices: libblkid probes and a bounded, event-driven wait (the choice among
 * them: candidates.h). */
#ifndef FACTORY_INIT_DEVICES_H
#define FACTORY_INIT_DEVICES_H

#include "candidates.h"
#include "plan.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Probes one device node with libblkid; partition entry details (PARTUUID, PARTLABEL) only when
 * asked for, since they cost extra reads. */
int devices_probe(const char *devname, bool partitions, struct blockdev *out);

/*
 * Waits at most timeout_ms for the device spec names to appear: scans /sys/class/block (less
 * spec->skip and its disk), then rescans on every kernel uevent. On success fills *out and returns
 * 0; -ETIMEDOUT otherwise.
 */
int devices_wait(const struct dev_spec *spec, unsigned timeout_ms, struct blockdev *out);

/* As devices_wait, but returns every device probed in the last scan (at most max, in devs[]
 * with the count in *n) once one of them matches; -ETIMEDOUT otherwise. */
int devices_wait_all(const struct dev_spec *spec, unsigned timeout_ms, struct blockdev *devs,
		     size_t max, size_t *n);

#endif
