/* SPDX-License-Identifier: MIT */
/* Which block device is which: pure functions over libblkid's probe results (devices.c). */
#define _GNU_SOURCE
#include "candidates.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool is_persist_type(const char *type)
{
	return strcmp(type, "crypto_LUKS") == 0 || strcmp(type, "btrfs") == 0;
}

bool blockdev_tag_matches(const char *spec, const struct blockdev *d)
{
	static const struct {
		const char *tag;
		size_t off;
	} tags[] = {
	    {"LABEL=", offsetof(struct blockdev, label)},
	    {"UUID=", offsetof(struct blockdev, uuid)},
	    {"PARTUUID=", offsetof(struct blockdev, partuuid)},
	    {"PARTLABEL=", offsetof(struct blockdev, partlabel)},
	};
	for (size_t i = 0; i < ARRAY_SIZE(tags); i++)
		if (str_has_prefix(spec, tags[i].tag)) {
			const char *field = (const char *)d + tags[i].off;
			const char *want = spec + strlen(tags[i].tag);
			/* UUIDs compare without regard to case, as blkid and udev do. */
			if (strstr(tags[i].tag, "UUID"))
				return *field && strcasecmp(field, want) == 0;
			return *field && strcmp(field, want) == 0;
		}
	return false;
}

int devices_choose(const struct dev_spec *spec, const struct blockdev *devs, size_t n)
{
	int best = -ENOENT;
	for (size_t i = 0; i < n; i++) {
		const struct blockdev *d = &devs[i];
		bool hit = false;
		switch (spec->kind) {
		case PERSIST_PATH:
			hit = strcmp(d->devname, spec->spec) == 0;
			break;
		case PERSIST_TAG:
			hit = blockdev_tag_matches(spec->spec, d);
			break;
		case PERSIST_AUTO:
			hit = is_persist_type(d->type) &&
			      strcmp(d->label, DEFAULT_PERSIST_LABEL) == 0;
			break;
		}
		if (hit && (best < 0 || strcmp(d->devname, devs[best].devname) < 0))
			best = (int)i;
	}
	if (best >= 0 || spec->kind != PERSIST_AUTO)
		return best;
	for (size_t i = 0; i < n; i++)
		if (strcmp(devs[i].devname, DEFAULT_PERSIST_FALLBACK) == 0)
			return (int)i;
	return -ENOENT;
}

const char *cand_verdict_name(enum cand_verdict v)
{
	static const char *const names[] = {"try", "refused", "used", "failed", "skipped"};
	return (size_t)v < ARRAY_SIZE(names) ? names[v] : "?";
}

static bool spec_names(const struct dev_spec *spec, const struct blockdev *d)
{
	switch (spec->kind) {
	case PERSIST_PATH:
		return strcmp(d->devname, spec->spec) == 0;
	case PERSIST_TAG:
		return blockdev_tag_matches(spec->spec, d);
	case PERSIST_AUTO:
		return is_persist_type(d->type) && strcmp(d->label, DEFAULT_PERSIST_LABEL) == 0;
	}
	return false;
}

/* The order of trial: LUKS, then plain Btrfs, then the refused; by device name within each. */
static int rank(const struct persist_candidate *c)
{
	if (c->verdict != CAND_TRY)
		return 2;
	return strcmp(c->dev.type, "crypto_LUKS") == 0 ? 0 : 1;
}

static int cmp_candidate(const void *a, const void *b)
{
	const struct persist_candidate *x = a, *y = b;
	int d = rank(x) - rank(y);
	return d ? d : strcmp(x->dev.devname, y->dev.devname);
}

size_t devices_candidates(const struct dev_spec *spec, bool require_luks,
			  const struct blockdev *devs, size_t n, struct persist_candidates *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < n && out->n < MAX_CANDIDATES; i++)
		if (spec_names(spec, &devs[i]))
			out->c[out->n++].dev = devs[i];
	if (out->n == 0 && spec->kind == PERSIST_AUTO)
		for (size_t i = 0; i < n; i++)
			if (strcmp(devs[i].devname, DEFAULT_PERSIST_FALLBACK) == 0) {
				out->c[out->n++].dev = devs[i];
				break;
			}
	size_t tries = 0;
	for (size_t i = 0; i < out->n; i++) {
		struct persist_candidate *c = &out->c[i];
		if (c->dev.holder[0]) {
			/* Someone opened (or mounted a mapping of) it already: unlocking it too
			 * would fight them over it. */
			c->verdict = CAND_REFUSED;
			snprintf(c->detail, sizeof(c->detail),
				 "is in use (by %s: opened by another program, e.g. "
				 "systemd-cryptsetup; vm.persist.opened=/dev/mapper/NAME uses that "
				 "mapping); left untouched",
				 c->dev.holder);
		} else if (strcmp(c->dev.type, "crypto_LUKS") == 0 &&
			   strcmp(c->dev.label, PROVISIONAL_LABEL) == 0) {
			/* Half made by us: no file system worth mounting, no data to lose. */
			c->verdict = CAND_REFUSED;
			snprintf(c->detail, sizeof(c->detail),
				 "is a disk factory-init began to provision and did not finish "
				 "(LUKS2 label " PROVISIONAL_LABEL
				 "): vm.persist.provision makes it anew; left untouched");
		} else if (strcmp(c->dev.type, "crypto_LUKS") == 0 ||
			   (strcmp(c->dev.type, "btrfs") == 0 && !require_luks)) {
			c->verdict = CAND_TRY;
			tries++;
		} else if (strcmp(c->dev.type, "btrfs") == 0) {
			c->verdict = CAND_REFUSED;
			snprintf(c->detail, sizeof(c->detail),
				 "is an unencrypted Btrfs, and %s takes only LUKS2 volumes "
				 "(vm.persist.encrypted=no allows it); left untouched",
				 spec->kind == PERSIST_AUTO ? "vm.persist=auto"
							    : "vm.persist.encrypted=yes");
		} else {
			c->verdict = CAND_REFUSED;
			snprintf(c->detail, sizeof(c->detail),
				 "holds %s, not LUKS or Btrfs; left untouched",
				 *c->dev.type ? c->dev.type : "no recognisable signature");
		}
	}
	qsort(out->c, out->n, sizeof(out->c[0]), cmp_candidate);
	return tries;
}

bool devices_spec_needs_partitions(const struct dev_spec *spec)
{
	return spec->kind == PERSIST_TAG && spec->spec && str_has_prefix(spec->spec, "PART");
}
