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

static void copy_value(blkid_probe pr, const char *name, char *dst, size_t len)
{
	const char *v = NULL;
	if (blkid_probe_lookup_value(pr, name, &v, NULL) == 0 && v)
		strscpy(dst, v, len);
}

/* The first entry of /sys/class/block/NAME/holders (a dm or md device on top), or "". */
static void holder_of(const char *devname, char *out, size_t size)
{
	out[0] = '\0';
	const char *name = strrchr(devname, '/');
	char dir[128];
	snprintf(dir, sizeof(dir), "/sys/class/block/%s/holders", name ? name + 1 : devname);
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.') {
			strscpy(out, e->d_name, size);
			break;
		}
	closedir(d);
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
	holder_of(devname, out->holder, sizeof(out->holder));
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
