/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "devices.h"
#include "log.h"
#include "util.h"

#include <blkid/blkid.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>

static bool is_persist_type(const char *type)
{
	return strcmp(type, "crypto_LUKS") == 0 || strcmp(type, "btrfs") == 0;
}

static bool tag_matches(const char *spec, const struct blockdev *d)
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
			hit = tag_matches(spec->spec, d);
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
		return tag_matches(spec->spec, d);
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
		if (strcmp(c->dev.type, "crypto_LUKS") == 0 ||
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

static void copy_value(blkid_probe pr, const char *name, char *dst, size_t len)
{
	const char *v = NULL;
	if (blkid_probe_lookup_value(pr, name, &v, NULL) == 0 && v)
		strscpy(dst, v, len);
}

bool devices_spec_needs_partitions(const struct dev_spec *spec)
{
	return spec->kind == PERSIST_TAG && spec->spec && str_has_prefix(spec->spec, "PART");
}

int devices_probe(const char *devname, bool partitions, struct blockdev *out)
{
	memset(out, 0, sizeof(*out));
	if (strscpy(out->devname, devname, sizeof(out->devname)) < 0)
		return -ENAMETOOLONG;
	blkid_probe pr = blkid_new_probe_from_filename(devname);
	if (!pr)
		return errno ? -errno : -EIO;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID |
						  BLKID_SUBLKS_TYPE);
	if (partitions) {
		blkid_probe_enable_partitions(pr, 1);
		blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
	}
	int r = blkid_do_safeprobe(pr);
	if (r == 0) {
		copy_value(pr, "TYPE", out->type, sizeof(out->type));
		copy_value(pr, "LABEL", out->label, sizeof(out->label));
		copy_value(pr, "UUID", out->uuid, sizeof(out->uuid));
		copy_value(pr, "PART_ENTRY_UUID", out->partuuid, sizeof(out->partuuid));
		copy_value(pr, "PART_ENTRY_NAME", out->partlabel, sizeof(out->partlabel));
	}
	blkid_free_probe(pr);
	/* 1 means "nothing found", -2 "ambivalent": both leave an empty type, not an error. */
	return r < 0 && r != -2 ? -EIO : 0;
}

/* The kernel names of a device and, when it is a partition, of its disk ("vda2", "vda"), from
 * /sys/dev/block/MAJ:MIN. Empty strings when unknown. */
static void skip_names(dev_t dev, char self[64], char disk[64])
{
	self[0] = disk[0] = '\0';
	if (!dev)
		return;
	char link[64], real[PATH_MAX];
	snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(dev), minor(dev));
	if (!realpath(link, real))
		return;
	char *slash = strrchr(real, '/');
	strscpy(self, slash + 1, 64);
	char part[PATH_MAX + 16];
	snprintf(part, sizeof(part), "%s/partition", real);
	if (access(part, F_OK) != 0)
		return;
	*slash = '\0';
	slash = strrchr(real, '/');
	if (slash)
		strscpy(disk, slash + 1, 64);
}

/* Block devices worth probing: everything in /sys/class/block but RAM and unused loop disks, and
 * the device to skip (the mounted root: probing it would cost reads and cannot find the data
 * disk) with its disk. */
static size_t scan(const struct dev_spec *spec, struct blockdev *devs, size_t max)
{
	char self[64], disk[64];
	skip_names(spec->skip, self, disk);
	bool partitions = devices_spec_needs_partitions(spec);
	DIR *d = opendir("/sys/class/block");
	if (!d)
		return 0;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n < max) {
		if (e->d_name[0] == '.' || str_has_prefix(e->d_name, "ram") ||
		    str_has_prefix(e->d_name, "loop") || strcmp(e->d_name, self) == 0 ||
		    strcmp(e->d_name, disk) == 0)
			continue;
		char path[80];
		if (snprintf(path, sizeof(path), "/dev/%s", e->d_name) >= (int)sizeof(path))
			continue;
		uint64_t t = now_ms();
		if (devices_probe(path, partitions, &devs[n]) == 0) {
			log_debug("probed %s in %llu ms: type %s", path,
				  (unsigned long long)(now_ms() - t), devs[n].type);
			n++;
		}
	}
	closedir(d);
	return n;
}

static int uevent_socket(void)
{
	int fd =
	    socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
	if (fd < 0)
		return -errno;
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1};
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

/* Drains pending uevents: each one is only a cue to rescan. */
static void drain_events(int fd)
{
	char buf[4096];
	while (recv(fd, buf, sizeof(buf), 0) > 0)
		;
}

int devices_wait_all(const struct dev_spec *spec, unsigned timeout_ms, struct blockdev *devs,
		     size_t max, size_t *n_out)
{
	/* Listen before the first scan, so nothing that appears in between is missed. */
	_cleanup_close_ int fd = uevent_socket();
	if (fd < 0)
		log_debug("no uevent socket (%s); polling /sys/class/block", strerror(-fd));
	uint64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		/* A path names one device: probe just that one (every probe costs disk reads). */
		size_t n = spec->kind == PERSIST_PATH
			       ? (access(spec->spec, F_OK) == 0 &&
				  devices_probe(spec->spec, false, devs) == 0)
			       : scan(spec, devs, max);
		if (devices_choose(spec, devs, n) >= 0) {
			*n_out = n;
			return 0;
		}
		uint64_t now = now_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		int wait = (int)(deadline - now);
		if (fd < 0) {
			/* No events to wait for: a short poll interval is the only option left. */
			poll(NULL, 0, wait < 100 ? wait : 100);
			continue;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, wait);
		/* Rescan after any event: a partition table read can complete without a block
		 * uevent naming our device. */
		if (r > 0)
			drain_events(fd);
	}
}

int devices_wait(const struct dev_spec *spec, unsigned timeout_ms, struct blockdev *out)
{
	struct blockdev devs[32];
	size_t n;
	int r = devices_wait_all(spec, timeout_ms, devs, ARRAY_SIZE(devs), &n);
	if (r < 0)
		return r;
	*out = devs[devices_choose(spec, devs, n)];
	return 0;
}
