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

int switch_root(const char *newroot)
{
	static const char *const api[] = {"/dev", "/proc", "/sys", "/run"};
	char target[PATH_MAX];
	for (size_t i = 0; i < ARRAY_SIZE(api); i++) {
		snprintf(target, sizeof(target), "%s%s", newroot, api[i]);
		if (mount_move_or_detach(api[i], target) < 0)
			log_warn("%s has no %s to move it to; detached it", newroot, api[i]);
	}
	if (chdir(newroot) < 0)
		return -errno;

	struct statfs sfs;
	struct stat root_st;
	if (statfs("/", &sfs) == 0 && stat("/", &root_st) == 0 &&
	    (sfs.f_type == RAMFS_MAGIC || sfs.f_type == TMPFS_MAGIC)) {
		int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0)
			delete_tree(fd, root_st.st_dev);
	}
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		return -errno;
	if (chroot(".") < 0)
		return -errno;
	return chdir("/") < 0 ? -errno : 0;
}
