/* SPDX-License-Identifier: MIT */
/*
 * Zero-touch provisioning's decisions, pure so that every case is a unit test (test_blank.c):
 * which disk may be provisioned, which blocks the blankness test reads, and whether what the
 * probes found makes a disk blank. provision.c reads the disk and carries the decision out.
 */
#ifndef FACTORY_INIT_BLANK_H
#define FACTORY_INIT_BLANK_H

#include "candidates.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLANK_EDGE (1u << 20)	      /* the first and the last MiB are read whole */
#define BLANK_BLOCK 4096u	      /* the size of each sampled block */
#define BLANK_SAMPLES 256	      /* blocks sampled evenly between the two edges */
#define BLANK_MIN_SIZE (256ull << 20) /* the smallest disk worth a LUKS2 + Btrfs /persist */

/* Is dev a LUKS volume labelled PROVISIONAL_LABEL (ours, unfinished)? */
bool blank_is_provisional(const struct blockdev *dev);

/*
 * The disk to provision among devs[0..n) (the scan, less the root's disk): the one spec names
 * (PERSIST_PATH, PERSIST_TAG), or under PERSIST_AUTO the one whole virtio disk (/dev/vdX). Returns
 * its index; -ENOENT when there is none, -EEXIST when several could be meant, -EBUSY when it is in
 * use (a holder: opened by another program), with why.
 */
int blank_choose(const struct dev_spec *spec, const struct blockdev *devs, size_t n, char *why,
		 size_t why_len);

/*
 * The offsets of the sampled blocks of a disk of size bytes: BLANK_BLOCK-aligned, evenly spread
 * strictly between the first and the last BLANK_EDGE. Returns how many were written (at most max;
 * 0 for a disk too small to have a middle).
 */
size_t blank_sample_offsets(uint64_t size, uint64_t *out, size_t max);

/* What the blankness probes found (provision.c fills it in). */
struct blank_facts {
	uint64_t size;	     /* bytes (BLKGETSIZE64) */
	int probe_result;    /* libblkid's low-level probe: 0 ran to the end, <0 errno */
	char signature[64];  /* the first signature it found, "" none: "ext4", "gpt", "dos"... */
	uint64_t sig_offset; /* where (when libblkid says) */
	int read_result;     /* 0 every block read, <0 the errno of the first that failed */
	uint64_t read_at;    /* its offset */
	bool nonzero;	     /* a byte that is not zero was read */
	uint64_t nonzero_at; /* the offset of the first such byte */
	bool provisional;    /* the one signature is our own PROVISIONAL_LABEL LUKS2 header */
};

/*
 * Is the disk blank (or ours, unfinished)? 0 when it may be provisioned; otherwise -ENOTEMPTY
 * (something is on it), -EIO (it could not be read whole), -ENOSPC (too small), with the test that
 * refused it in why.
 */
int blank_verdict(const struct blank_facts *f, char *why, size_t why_len);

#endif
