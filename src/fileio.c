/* SPDX-License-Identifier: MIT */
/* Files: whole reads, durable atomic writes, directories (util.h declares them). */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

int secret_read_file(struct secret *s, const char *path, size_t max)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if ((size_t)st.st_size > max)
		return -EFBIG;
	secret_free(s);
	s->data = malloc((size_t)st.st_size + 1);
	if (!s->data)
		return -ENOMEM;
	(void)mlock(s->data, (size_t)st.st_size + 1);
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, s->data + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int r = n < 0 ? -errno : -EIO;
			s->len = (size_t)st.st_size;
			secret_free(s);
			return r;
		}
		got += (size_t)n;
	}
	s->data[got] = '\0';
	s->len = got;
	return 0;
}

int read_file(const char *path, size_t max, char **out, size_t *out_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return read_fd(fd, max, out, out_len);
}

int read_fd(int fd, size_t max, char **out, size_t *out_len)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (len + 1 >= cap) {
			if (cap > max) {
				free(buf);
				return -EFBIG;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			free(buf);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			free(buf);
			return -EFBIG;
		}
	}
	buf[len] = '\0';
	*out = buf;
	if (out_len)
		*out_len = len;
	return 0;
}

int fsync_dir(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return fsync(fd) < 0 ? -errno : 0;
}

static void random_name_chars(char *out, size_t n)
{
	static const char chars[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	static uint64_t counter;
	uint8_t rnd[16];
	if (n > sizeof(rnd))
		n = sizeof(rnd);
	if (getrandom(rnd, n, GRND_NONBLOCK) != (ssize_t)n) {
		/* Early boot, before the pool is ready: a counter, the clock and the pid, mixed
		 * (splitmix64), still unique per call; O_EXCL keeps it safe anyway. */
		uint64_t c = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
		uint64_t x = (c * 0x9e3779b97f4a7c15ull) ^ (now_ms() << 20) ^ (uint64_t)getpid() ^
			     (uint64_t)(uintptr_t)rnd;
		for (size_t i = 0; i < n; i++) {
			x += 0x9e3779b97f4a7c15ull;
			uint64_t z = x;
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
			z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
			rnd[i] = (uint8_t)(z ^ (z >> 31));
		}
	}
	for (size_t i = 0; i < n; i++)
		out[i] = chars[rnd[i] % (sizeof(chars) - 1)];
}

int fd_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EIO; /* no progress (a console that takes nothing): never spin */
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

#define TMP_RANDOM 8
#define TMP_TRIES 16

int write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, unsigned mode)
{
	if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	/* ".<name>.XXXXXXXX", the name cut short if need be to stay within NAME_MAX. */
	char tmp[NAME_MAX + 1];
	int base = (int)strnlen(name, NAME_MAX - TMP_RANDOM - 2);
	int fd = -1;
	for (int i = 0; i < TMP_TRIES && fd < 0; i++) {
		int n = snprintf(tmp, sizeof(tmp), ".%.*s.", base, name);
		random_name_chars(tmp + n, TMP_RANDOM);
		tmp[n + TMP_RANDOM] = '\0';
		/* O_EXCL: never a file (or a link) someone put there; 0600 until it is complete. */
		fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0 && errno != EEXIST)
			return -errno;
	}
	if (fd < 0)
		return -EEXIST;
	int r = fd_write_all(fd, data, len);
	/* The mode asked for, whatever the umask. */
	if (r == 0 && fchmod(fd, mode & 07777) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	/* rename(2) replaces whatever is at name, a symlink included, and never follows it. */
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	return fsync(dirfd) < 0 ? -errno : 0;
}

int open_parent(const char *path, const char **name)
{
	char dir[PATH_MAX];
	if (strscpy(dir, path, sizeof(dir)) < 0)
		return -ENAMETOOLONG;
	*name = path;
	char *slash = strrchr(dir, '/');
	if (!slash) {
		strcpy(dir, ".");
	} else {
		*name = path + (slash - dir) + 1;
		if (slash == dir)
			dir[1] = '\0';
		else
			*slash = '\0';
	}
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int write_file_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
	const char *name;
	_cleanup_close_ int dir_fd = open_parent(path, &name);
	if (dir_fd < 0)
		return dir_fd;
	return write_file_atomic_at(dir_fd, name, data, len, mode);
}

int make_dirs(const char *path, unsigned mode)
{
	char buf[PATH_MAX];
	if (strscpy(buf, path, sizeof(buf)) < 0)
		return -ENAMETOOLONG;
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(buf, mode) < 0 && errno != EEXIST)
				return -errno;
			*p = c;
			if (c == '\0')
				break;
		}
	}
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}
