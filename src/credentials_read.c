/* SPDX-License-Identifier: MIT */
/*
 * Reading system credentials where systemd's conventions put them: a credentials directory,
 * QEMU's fw_cfg and the SMBIOS type 11 entries in sysfs. The parsing and the set are in
 * credentials.c (pure); this file only reads.
 */
#define _GNU_SOURCE
#include "credentials.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FW_CFG_DIR "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
#define DMI_DIR "/sys/firmware/dmi/entries"
#define SMBIOS_TYPE_OEM_STRINGS 11
#define SMBIOS_RAW_MAX (CRED_TOTAL_MAX + 4096u) /* one structure: its strings and a header */

/*
 * Reads fd to its end into a locked buffer, at most max bytes (-EFBIG beyond). The caller releases
 * *out with credentials_locked_free(*out, *cap).
 */
static int read_fd_locked(int fd, size_t max, char **out, size_t *out_len, size_t *out_cap)
{
	size_t cap = 4096 < max + 1 ? 4096 : max + 1, len = 0;
	char *buf = credentials_locked_alloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (len == cap) {
			if (cap >= max + 1) {
				credentials_locked_free(buf, cap);
				return -EFBIG;
			}
			size_t ncap = cap * 2 < max + 1 ? cap * 2 : max + 1;
			char *nbuf = credentials_locked_alloc(ncap);
			if (!nbuf) {
				credentials_locked_free(buf, cap);
				return -ENOMEM;
			}
			memcpy(nbuf, buf, len);
			credentials_locked_free(buf, cap);
			buf = nbuf;
			cap = ncap;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			credentials_locked_free(buf, cap);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*out = buf; /* len < cap <= max + 1: a full buffer was refused above */
	*out_len = len;
	*out_cap = cap;
	return 0;
}

/* Adds the content of the regular file name in dfd (symbolic links not followed). */
static int add_file_at(struct credentials *set, int dfd, const char *name,
		       enum credential_source source, config_warn_fn warn, void *ctx)
{
	const char *src = credential_source_name(source);
	char nm[300];
	credentials_shown(name, strlen(name), nm, sizeof(nm));
	_cleanup_close_ int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		config_warnf(warn, ctx, "credential %s from %s: cannot open it (%s); ignored", nm,
			     src, strerror(errno));
		return 0;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		config_warnf(warn, ctx, "credential %s from %s: not a regular file; ignored", nm,
			     src);
		return 0;
	}
	char *buf;
	size_t len, cap;
	int r = read_fd_locked(fd, CRED_VALUE_MAX, &buf, &len, &cap);
	if (r == -ENOMEM)
		return r;
	if (r == -EFBIG) {
		config_warnf(warn, ctx, "credential %s from %s: value is over %u bytes; ignored",
			     nm, src, CRED_VALUE_MAX);
		return 0;
	}
	if (r < 0) {
		config_warnf(warn, ctx, "credential %s from %s: cannot read it (%s); ignored", nm,
			     src, strerror(-r));
		return 0;
	}
	r = credentials_add(set, name, buf, len, source, warn, ctx);
	credentials_locked_free(buf, cap);
	return r == -ENOMEM ? r : 0;
}

static int skip_dots(const struct dirent *d)
{
	return strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0;
}

/*
 * scandirat(3) for a directory fd, which musl lacks: the entries filter accepts, sorted by
 * compar. Returns the count (the caller frees with free_names) or -1 with errno.
 */
static int scan_at(int dfd, struct dirent ***out, int (*filter)(const struct dirent *),
		   int (*compar)(const struct dirent **, const struct dirent **))
{
	int fd = dup(dfd);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rewinddir(d);
	struct dirent **v = NULL, *e;
	size_t n = 0, cap = 0;
	int err = 0;
	while ((e = readdir(d))) {
		if (filter && !filter(e))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct dirent **g = realloc(v, cap * sizeof(*v));
			if (!g) {
				err = ENOMEM;
				break;
			}
			v = g;
		}
		if (!(v[n] = malloc(sizeof(**v)))) {
			err = ENOMEM;
			break;
		}
		memcpy(v[n++], e, sizeof(**v));
	}
	closedir(d);
	if (err || n > INT_MAX) {
		for (size_t i = 0; i < n; i++)
			free(v[i]);
		free(v);
		errno = err ? err : EOVERFLOW;
		return -1;
	}
	if (compar && n > 1)
		qsort(v, n, sizeof(*v), (int (*)(const void *, const void *))compar);
	*out = v;
	return (int)n;
}

static void free_names(struct dirent **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int credentials_read_dir(const char *path, struct credentials *out, config_warn_fn warn, void *ctx)
{
	_cleanup_close_ int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		if (errno == ENOENT)
			return 0;
		int r = -errno;
		config_warnf(warn, ctx, "credentials directory %s: %s", path, strerror(errno));
		return r;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, skip_dots, alphasort);
	if (n < 0) {
		int r = -errno;
		config_warnf(warn, ctx, "credentials directory %s: %s", path, strerror(errno));
		return r;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		const char *name = names[i]->d_name;
		if (!credential_name_valid(name)) {
			credentials_warn_bad_name(name, strlen(name), CRED_SOURCE_DIRECTORY, warn,
						  ctx);
			continue;
		}
		r = add_file_at(out, dfd, name, CRED_SOURCE_DIRECTORY, warn, ctx);
	}
	free_names(names, n);
	return r;
}

const char *credentials_default_dir(void)
{
	const char *e = secure_getenv("CREDENTIALS_DIRECTORY");
	return e && e[0] == '/' ? e : CRED_SYSTEM_DIR;
}

/* Reads a small decimal file (fw_cfg's size); -EINVAL when it is not a number. */
static int read_size_at(int dfd, const char *name, unsigned long long *out)
{
	_cleanup_close_ int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char text[32];
	ssize_t n = read(fd, text, sizeof(text) - 1);
	if (n < 0)
		return -errno;
	text[n] = '\0';
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text || text[0] == '-' || (*end && strcmp(end, "\n") != 0))
		return -EINVAL;
	*out = v;
	return 0;
}

static int read_fw_cfg(const char *dir, struct credentials *out, config_warn_fn warn, void *ctx)
{
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		if (errno != ENOENT && errno != ENOTDIR)
			config_warnf(warn, ctx, "fw_cfg credentials %s: %s", dir, strerror(errno));
		return 0;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, skip_dots, alphasort);
	if (n < 0) {
		config_warnf(warn, ctx, "fw_cfg credentials %s: %s", dir, strerror(errno));
		return 0;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		const char *name = names[i]->d_name;
		char nm[300];
		credentials_shown(name, strlen(name), nm, sizeof(nm));
		if (!credential_name_valid(name)) {
			credentials_warn_bad_name(name, strlen(name), CRED_SOURCE_FW_CFG, warn,
						  ctx);
			continue;
		}
		_cleanup_close_ int vfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (vfd < 0) {
			config_warnf(warn, ctx,
				     "credential %s from fw_cfg: cannot open it (%s); ignored", nm,
				     strerror(errno));
			continue;
		}
		/* The raw file's st_size is 0 in sysfs: size says how much to expect. */
		unsigned long long size = 0;
		int s = read_size_at(vfd, "size", &size);
		if (s == 0 && size > CRED_VALUE_MAX) {
			config_warnf(
			    warn, ctx,
			    "credential %s from fw_cfg: value of %llu bytes is over %u; ignored",
			    nm, size, CRED_VALUE_MAX);
			continue;
		}
		_cleanup_close_ int fd = openat(vfd, "raw", O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			config_warnf(warn, ctx,
				     "credential %s from fw_cfg: no raw file (%s); ignored", nm,
				     strerror(errno));
			continue;
		}
		char *buf;
		size_t len, cap;
		int q = read_fd_locked(fd, CRED_VALUE_MAX, &buf, &len, &cap);
		if (q == -ENOMEM) {
			r = q;
			break;
		}
		if (q < 0) {
			config_warnf(warn, ctx,
				     "credential %s from fw_cfg: cannot read it (%s); ignored", nm,
				     strerror(-q));
			continue;
		}
		if (s == 0 && len != size)
			config_warnf(
			    warn, ctx,
			    "credential %s from fw_cfg: read %zu bytes, size says %llu; ignored",
			    nm, len, size);
		else
			r = credentials_add(out, name, buf, len, CRED_SOURCE_FW_CFG, warn, ctx);
		r = r == -ENOMEM ? r : 0;
		credentials_locked_free(buf, cap);
	}
	free_names(names, n);
	return r;
}

/* "11-N" with N a decimal number. */
static int is_oem_strings_entry(const struct dirent *d)
{
	const char *s = d->d_name;
	if (strncmp(s, "11-", 3) != 0 || !s[3])
		return 0;
	for (s += 3; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

static int by_instance(const struct dirent **a, const struct dirent **b)
{
	unsigned long x = strtoul((*a)->d_name + 3, NULL, 10);
	unsigned long y = strtoul((*b)->d_name + 3, NULL, 10);
	return x < y ? -1 : x > y;
}

static int read_smbios(const char *dir, struct credentials *out, config_warn_fn warn, void *ctx)
{
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		if (errno != ENOENT && errno != ENOTDIR)
			config_warnf(warn, ctx, "SMBIOS entries %s: %s", dir, strerror(errno));
		return 0;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, is_oem_strings_entry, by_instance);
	if (n < 0) {
		config_warnf(warn, ctx, "SMBIOS entries %s: %s", dir, strerror(errno));
		return 0;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		char rel[300];
		snprintf(rel, sizeof(rel), "%s/raw", names[i]->d_name);
		_cleanup_close_ int fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			config_warnf(warn, ctx, "SMBIOS entry %s: %s; ignored", rel,
				     strerror(errno));
			continue;
		}
		char *buf;
		size_t len, cap;
		int q = read_fd_locked(fd, SMBIOS_RAW_MAX, &buf, &len, &cap);
		if (q == -ENOMEM) {
			r = q;
			break;
		}
		if (q < 0) {
			config_warnf(warn, ctx, "SMBIOS entry %s: %s; ignored", rel, strerror(-q));
			continue;
		}
		q = credentials_parse_smbios_raw((const uint8_t *)buf, len, out, warn, ctx);
		r = q == -ENOMEM ? q : 0;
		credentials_locked_free(buf, cap);
	}
	free_names(names, n);
	return r;
}

int credentials_read_system(const char *root, struct credentials *out, config_warn_fn warn,
			    void *ctx)
{
	char base[PATH_MAX], path[PATH_MAX];
	if (strscpy(base, root ? root : "", sizeof(base)) < 0)
		return -ENAMETOOLONG;
	size_t bl = strlen(base);
	while (bl > 0 && base[bl - 1] == '/')
		base[--bl] = '\0';
	snprintf(path, sizeof(path), "%s%s", base, FW_CFG_DIR);
	int r = read_fw_cfg(path, out, warn, ctx);
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "%s%s", base, DMI_DIR);
	return read_smbios(path, out, warn, ctx);
}
