/* SPDX-License-Identifier: MIT */
/*
 * Hand-written because no library we link resolves paths this way: libmount and util-linux
 * follow links, and systemd's chase() is not a library. openat2(2) does the work; the fallback
 * walk only exists for kernels or seccomp profiles that refuse it.
 */
#define _GNU_SOURCE
#include "beneath.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RESOLVE_SAFE                                                                               \
	(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)

static bool valid_rel(const char *rel)
{
	if (!rel || !*rel || rel[0] == '/')
		return false;
	for (const char *p = rel; *p;) {
		size_t n = strcspn(p, "/");
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		p += n;
		if (*p == '/')
			p++;
		if (*p == '\0' && p[-1] == '/')
			return false;
	}
	return true;
}

/* The walk openat2 would do: every component opened with O_NOFOLLOW, none on another mount. */
static int walk_open(int dirfd, const char *rel, int flags, mode_t mode)
{
	struct stat top;
	if (fstat(dirfd, &top) < 0)
		return -errno;
	char buf[4096];
	if (strscpy(buf, rel, sizeof(buf)) < 0)
		return -ENAMETOOLONG;
	int cur = dirfd;
	char *name = buf;
	for (;;) {
		char *slash = strchr(name, '/');
		if (slash)
			*slash = '\0';
		/* O_PATH|O_NOFOLLOW opens a symlink itself, so fstat can name it. */
		int f = slash ? O_PATH | O_NOFOLLOW | O_CLOEXEC : flags | O_NOFOLLOW | O_CLOEXEC;
		int fd = openat(cur, name, f, mode);
		int err = errno;
		if (cur != dirfd)
			close(cur);
		if (fd < 0)
			return -err;
		struct stat st;
		int r = fstat(fd, &st) < 0		? -errno
			: S_ISLNK(st.st_mode)		? -ELOOP
			: st.st_dev != top.st_dev	? -EXDEV
			: slash && !S_ISDIR(st.st_mode) ? -ENOTDIR
							: 0;
		if (r < 0) {
			close(fd);
			return r;
		}
		if (!slash)
			return fd;
		cur = fd;
		name = slash + 1;
	}
}

static bool force_walk;

void beneath_force_walk(bool on)
{
	force_walk = on;
}

int beneath_open(int dirfd, const char *rel, int flags, mode_t mode)
{
	if (!valid_rel(rel))
		return -EINVAL;
	if (force_walk)
		return walk_open(dirfd, rel, flags, mode);
	struct open_how how = {
	    .flags = (unsigned long long)(flags | O_NOFOLLOW | O_CLOEXEC),
	    .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
	    .resolve = RESOLVE_SAFE,
	};
	long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
	if (fd >= 0)
		return (int)fd;
	if (errno != ENOSYS && errno != EPERM && errno != E2BIG)
		return -errno;
	return walk_open(dirfd, rel, flags, mode);
}

int beneath_open_parent(int dirfd, const char *rel, char *last, size_t last_len)
{
	if (!valid_rel(rel))
		return -EINVAL;
	const char *slash = strrchr(rel, '/');
	if (strscpy(last, slash ? slash + 1 : rel, last_len) < 0)
		return -ENAMETOOLONG;
	if (!slash) {
		int fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
		return fd < 0 ? -errno : fd;
	}
	char parent[4096];
	size_t n = (size_t)(slash - rel);
	if (n >= sizeof(parent))
		return -ENAMETOOLONG;
	memcpy(parent, rel, n);
	parent[n] = '\0';
	/* Readable, not O_PATH: callers fsync it after a rename. */
	return beneath_open(dirfd, parent, O_RDONLY | O_DIRECTORY, 0);
}

int beneath_lstat(int dirfd, const char *rel, struct stat *st)
{
	char last[256];
	_cleanup_close_ int pfd = beneath_open_parent(dirfd, rel, last, sizeof(last));
	if (pfd < 0)
		return pfd;
	return fstatat(pfd, last, st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

int beneath_read(int dirfd, const char *rel, size_t max, char **out, size_t *out_len)
{
	*out = NULL;
	_cleanup_close_ int pfd = beneath_open(dirfd, rel, O_PATH, 0);
	if (pfd < 0)
		return pfd;
	struct stat st;
	if (fstat(pfd, &st) < 0)
		return -errno;
	/* O_PATH|O_NOFOLLOW opens a final symlink itself rather than failing. */
	if (S_ISLNK(st.st_mode))
		return -ELOOP;
	if (!S_ISREG(st.st_mode))
		return -EBADFD;
	if ((size_t)st.st_size > max)
		return -EFBIG;
	/* Reopen the checked inode itself for reading (never the name again). */
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
	_cleanup_close_ int fd = open(self, O_RDONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0 && (errno == ENOENT || errno == ENOTDIR))
		fd = beneath_open(dirfd, rel, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0); /* no /proc */
	if (fd < 0)
		return fd == -1 ? -errno : fd;
	struct stat again;
	if (fstat(fd, &again) < 0 || again.st_ino != st.st_ino || again.st_dev != st.st_dev)
		return -ESTALE;
	return read_fd(fd, max, out, out_len);
}

int beneath_mkdirs(int dirfd, const char *rel, mode_t mode)
{
	if (!valid_rel(rel))
		return -EINVAL;
	char buf[4096];
	if (strscpy(buf, rel, sizeof(buf)) < 0)
		return -ENAMETOOLONG;
	for (char *p = buf;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		struct stat st;
		int r = beneath_lstat(dirfd, buf, &st);
		if (r == -ENOENT) {
			char last[256];
			_cleanup_close_ int pfd =
			    beneath_open_parent(dirfd, buf, last, sizeof(last));
			if (pfd < 0)
				return pfd;
			if (mkdirat(pfd, last, mode) < 0 && errno != EEXIST)
				return -errno;
			r = beneath_lstat(dirfd, buf, &st);
		}
		if (r < 0)
			return r;
		if (!S_ISDIR(st.st_mode))
			return S_ISLNK(st.st_mode) ? -ELOOP : -ENOTDIR;
		*p = c;
		if (c == '\0')
			break;
	}
	return beneath_open(dirfd, rel, O_RDONLY | O_DIRECTORY, 0);
}

const char *beneath_type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "a regular file";
	case S_IFDIR:
		return "a directory";
	case S_IFLNK:
		return "a symlink";
	case S_IFIFO:
		return "a FIFO";
	case S_IFSOCK:
		return "a socket";
	case S_IFCHR:
		return "a character device";
	case S_IFBLK:
		return "a block device";
	default:
		return "an unknown kind of file";
	}
}
