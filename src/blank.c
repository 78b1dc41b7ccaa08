// SPDX-License-Identifier: MIT
/* Zero-touch provisioning's pure decisions: see blank.h. */
#include "blank.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

bool blank_is_provisional(const struct blockdev *dev)
{
	return strcmp(dev->type, "crypto_LUKS") == 0 && strcmp(dev->label, PROVISIONAL_LABEL) == 0;
}

/* /dev/vd followed by letters only: a whole virtio disk, not a partition. */
static bool whole_virtio_disk(const char *name)
{
	static const char prefix[] = "/dev/vd";
	if (strncmp(name, prefix, sizeof(prefix) - 1) != 0 || !name[sizeof(prefix) - 1])
		return false;
	for (const char *p = name + sizeof(prefix) - 1; *p; p++)
		if (*p < 'a' || *p > 'z')
			return false;
	return true;
}

static bool names(const struct dev_spec *spec, const struct blockdev *d)
{
	if (spec->kind == PERSIST_PATH)
		return strcmp(spec->spec, d->devname) == 0;
	if (spec->kind == PERSIST_AUTO)
		return whole_virtio_disk(d->devname);
	return blockdev_tag_matches(spec->spec, d);
}

int blank_choose(const struct dev_spec *spec, const struct blockdev *devs, size_t n, char *why,
		 size_t why_len)
{
	int found = -1;
	size_t count = 0, o = 0;
	char list[192] = "";
	for (size_t i = 0; i < n; i++)
		if (names(spec, &devs[i])) {
			if (found < 0)
				found = (int)i;
			count++;
			if (o < sizeof(list))
				o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
						      count > 1 ? ", " : "", devs[i].devname);
		}
	if (count == 0) {
		snprintf(why, why_len, "no disk to provision: %s",
			 spec->kind == PERSIST_AUTO ? "no virtio disk besides the root's"
						    : "no device matches vm.persist");
		return -ENOENT;
	}
	if (count > 1) {
		snprintf(why, why_len,
			 "%zu disks could be meant (%s): provisioning needs exactly one "
			 "(vm.persist=/dev/... names it); all left untouched",
			 count, list);
		return -EEXIST;
	}
	if (*devs[found].holder) {
		snprintf(why, why_len, "%s is in use (by %s); left untouched", devs[found].devname,
			 devs[found].holder);
		return -EBUSY;
	}
	return found;
}

size_t blank_sample_offsets(uint64_t size, uint64_t *out, size_t max)
{
	size = size / BLANK_BLOCK * BLANK_BLOCK;
	if (size <= 2ull * BLANK_EDGE + BLANK_BLOCK)
		return 0;
	uint64_t first = BLANK_EDGE / BLANK_BLOCK, last = (size - BLANK_EDGE) / BLANK_BLOCK;
	uint64_t blocks = last - first; /* the middle's blocks: [first, last) */
	size_t n = max < BLANK_SAMPLES ? max : BLANK_SAMPLES;
	if (n > blocks)
		n = (size_t)blocks;
	for (size_t i = 0; i < n; i++)
		/* the middle of each of n equal parts: never an edge block, never twice the same */
		out[i] = (first + (blocks * (2 * i + 1)) / (2 * n)) * BLANK_BLOCK;
	return n;
}

int blank_verdict(const struct blank_facts *f, char *why, size_t why_len)
{
	if (f->size < BLANK_MIN_SIZE) {
		snprintf(why, why_len,
			 "is %" PRIu64
			 " MiB, less than the %llu MiB a /persist needs; left untouched",
			 f->size >> 20, BLANK_MIN_SIZE >> 20);
		return -ENOSPC;
	}
	if (f->probe_result < 0) {
		snprintf(why, why_len, "could not be probed for signatures (%s); left untouched",
			 strerror(-f->probe_result));
		return -EIO;
	}
	if (f->provisional)
		return 0;
	if (*f->signature) {
		snprintf(why, why_len,
			 "is not blank: libblkid finds %s (its signature at byte %" PRIu64
			 "); left untouched",
			 f->signature, f->sig_offset);
		return -ENOTEMPTY;
	}
	if (f->read_result < 0) {
		snprintf(why, why_len, "could not be read at byte %" PRIu64 " (%s); left untouched",
			 f->read_at, strerror(-f->read_result));
		return -EIO;
	}
	if (f->nonzero) {
		snprintf(why, why_len,
			 "is not blank: byte %" PRIu64 " is not zero (the first and last MiB and "
			 "%d sampled blocks must be); left untouched",
			 f->nonzero_at, BLANK_SAMPLES);
		return -ENOTEMPTY;
	}
	return 0;
}
