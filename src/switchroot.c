/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "switchroot.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>

/* Deletes everything below dirfd that lives on device dev (never crossing into mounts). */
static void delete_tree(int dirfd, dev_t dev)
{
	DIR *d = fdopendir(dirfd);
	if (!d) {
		close(dirfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub >= 0)
				delete_tree(sub, dev);
			unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
		} else {
			unlinkat(dirfd, e->d_name, 0);
		}
	}
	closedir(d);
}

static int mount_move_or_detach(const char *source, const char *target)
{
	if (mount(source, target, NULL, MS_MOVE, NULL) == 0)
		return 0;
	int r = -errno;
	umount2(source, MNT_DETACH);
	return r;
}

/*
 * An fd on the old root, "/", when it is the initramfs (ramfs or tmpfs), so that its contents can
 * go once we have left it; -1 otherwise. *dev: its device.
 */
static int open_initramfs(dev_t *dev)
{
	int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		log_warn("cannot open the initramfs root: %s; leaving it in memory",
			 strerror(errno));
		return -1;
	}
	struct statfs sfs;
	struct stat st;
	if (fstatfs(fd, &sfs) < 0 || fstat(fd, &st) < 0 ||
	    (sfs.f_type != RAMFS_MAGIC && sfs.f_type != TMPFS_MAGIC)) {
		close(fd);
		return -1;
	}
	*dev = st.st_dev;
	return fd;
}

int switch_root(const char *newroot)
{
	static const char *const api[] = {"/dev", "/proc", "/sys", "/run"};
	char target[PATH_MAX];
	for (size_t i = 0; i < ARRAY_SIZE(api); i++) {
		snprintf(target, sizeof(target), "%s%s", newroot, api[i]);
		if (mount_move_or_detach(api[i], target) < 0)
			log_warn("%s has no %s to move it to; detached it", newroot, api[i]);
	}

	/* As util-linux's switch_root: the initramfs is deleted only once we have left it, so a
	 * failed move or chroot leaves it (and this binary) in place. */
	dev_t old_dev = 0;
	int old_root = open_initramfs(&old_dev);
	int r = 0;
	if (chdir(newroot) < 0 || mount(newroot, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
	    chdir("/") < 0)
		r = -errno;
	if (old_root >= 0) {
		if (r == 0)
			delete_tree(old_root, old_dev); /* closes old_root */
		else
			close(old_root);
	}
	return r;
}
