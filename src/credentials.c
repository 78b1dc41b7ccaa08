/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "credentials.h"
#include "base64.h"
#include "cmdline.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define SMBIOS_PREFIX_TEXT "io.systemd.credential:"
#define SMBIOS_PREFIX_BINARY "io.systemd.credential.binary:"
#define FW_CFG_DIR "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
#define DMI_DIR "/sys/firmware/dmi/entries"
#define SMBIOS_TYPE_OEM_STRINGS 11
#define SMBIOS_HEADER_LEN 5			/* type, length, handle (2), string count */
#define SMBIOS_RAW_MAX (CRED_TOTAL_MAX + 4096u) /* one structure: its strings and a header */

static void warnf(config_warn_fn warn, void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warnf(config_warn_fn warn, void *ctx, const char *fmt, ...)
{
	if (!warn)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	warn(ctx, msg);
}

/* A printable rendering of a name for messages: bytes outside 0x20-0x7e (and '\') escaped. */
static const char *shown(const char *s, size_t n, char *out, size_t out_len)
{
	const size_t limit = 64;
	size_t o = 0, i = 0;
	for (; i < n && i < limit; i++) {
		unsigned char c = (unsigned char)s[i];
		bool plain = c >= 0x20 && c < 0x7f && c != '\\';
		if (o + (plain ? 1 : 4) + 4 >= out_len)
			break;
		if (plain)
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
	}
	if (i < n && o + 4 <= out_len) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

/* Buffers that held (or may hold) a value: locked where possible, wiped before release. */
static void *locked_alloc(size_t n)
{
	void *p = calloc(1, n);
	if (p)
		(void)mlock(p, n);
	return p;
}

static void locked_free(void *p, size_t n)
{
	if (!p)
		return;
	explicit_bzero(p, n);
	munlock(p, n);
	free(p);
}

const char *credential_source_name(enum credential_source source)
{
	switch (source) {
	case CRED_SOURCE_DIRECTORY:
		return "directory";
	case CRED_SOURCE_FW_CFG:
		return "fw_cfg";
	case CRED_SOURCE_SMBIOS:
		return "smbios";
	case CRED_SOURCE_CMDLINE:
		return "cmdline";
	}
	return "unknown";
}

bool credential_name_valid(const char *name)
{
	size_t n = strnlen(name, CRED_NAME_MAX);
	if (n == 0 || n >= CRED_NAME_MAX)
		return false;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return false;
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '/' || *p == ':')
			return false;
	return true;
}

const struct credential *credentials_find(const struct credentials *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (strcmp(set->items[i].name, name) == 0)
			return &set->items[i];
	return NULL;
}

/* The one warning for a name credential_name_valid refuses (name: len bytes, maybe no NUL). */
static void warn_bad_name(const char *name, size_t len, enum credential_source source,
			  config_warn_fn warn, void *ctx)
{
	char nm[300];
	warnf(warn, ctx,
	      "credential \"%s\" from %s: invalid name (1-255 printable ASCII characters, "
	      "no '/' or ':', not . or ..); ignored",
	      shown(name, len, nm, sizeof(nm)), credential_source_name(source));
}

int credentials_add(struct credentials *set, const char *name, const void *value, size_t len,
		    enum credential_source source, config_warn_fn warn, void *ctx)
{
	const char *src = credential_source_name(source);
	char nm[300];
	shown(name, strnlen(name, CRED_NAME_MAX + 1), nm, sizeof(nm));
	if (!credential_name_valid(name)) {
		warn_bad_name(name, strnlen(name, CRED_NAME_MAX + 1), source, warn, ctx);
		return -EINVAL;
	}
	if (len > CRED_VALUE_MAX) {
		warnf(warn, ctx, "credential %s from %s: value of %zu bytes is over %u; ignored",
		      nm, src, len, CRED_VALUE_MAX);
		return -EFBIG;
	}
	if (!value)
		value = "";
	struct credential *old = (struct credential *)credentials_find(set, name);
	if (old) {
		if (old->source <= source) {
			warnf(warn, ctx, "credential %s from %s ignored: already set from %s", nm,
			      src, credential_source_name(old->source));
			return 0;
		}
		if (set->total - old->value.len + len > CRED_TOTAL_MAX) {
			warnf(warn, ctx,
			      "credential %s from %s: all credentials together would be over %u "
			      "bytes; ignored",
			      nm, src, CRED_TOTAL_MAX);
			return -EFBIG;
		}
		struct secret fresh = {0};
		if (secret_set(&fresh, value, len) < 0)
			return -ENOMEM;
		warnf(warn, ctx, "credential %s from %s overrides the one from %s", nm, src,
		      credential_source_name(old->source));
		set->total = set->total - old->value.len + len;
		secret_free(&old->value);
		old->value = fresh;
		old->source = source;
		return 1;
	}
	if (set->n >= CRED_COUNT_MAX) {
		warnf(warn, ctx, "credential %s from %s: more than %d credentials; ignored", nm,
		      src, CRED_COUNT_MAX);
		return -E2BIG;
	}
	if (set->total + len > CRED_TOTAL_MAX) {
		warnf(warn, ctx,
		      "credential %s from %s: all credentials together would be over %u bytes; "
		      "ignored",
		      nm, src, CRED_TOTAL_MAX);
		return -EFBIG;
	}
	struct credential *items = realloc(set->items, (set->n + 1) * sizeof(*items));
	if (!items)
		return -ENOMEM;
	set->items = items;
	struct credential *c = &items[set->n];
	memset(c, 0, sizeof(*c));
	if (secret_set(&c->value, value, len) < 0)
		return -ENOMEM;
	memcpy(c->name, name, strlen(name) + 1);
	c->source = source;
	set->n++;
	set->total += len;
	return 1;
}

void credentials_free(struct credentials *set)
{
	for (size_t i = 0; i < set->n; i++)
		secret_free(&set->items[i].value);
	free(set->items);
	memset(set, 0, sizeof(*set));
}

/* Adds name (n bytes, not NUL-terminated) with a text or Base64 value. -ENOMEM only is fatal. */
static int add_counted(struct credentials *set, const char *name, size_t name_len,
		       const char *value, size_t value_len, bool binary,
		       enum credential_source source, config_warn_fn warn, void *ctx)
{
	const char *src = credential_source_name(source);
	char nm[300];
	if (name_len == 0 || name_len >= CRED_NAME_MAX || memchr(name, '\0', name_len)) {
		warn_bad_name(name, name_len, source, warn, ctx);
		return 0;
	}
	char cname[CRED_NAME_MAX];
	memcpy(cname, name, name_len);
	cname[name_len] = '\0';
	int r;
	if (!binary) {
		r = credentials_add(set, cname, value, value_len, source, warn, ctx);
		return r == -ENOMEM ? r : 0;
	}
	if (!credential_name_valid(cname)) {
		warn_bad_name(name, name_len, source, warn, ctx);
		return 0;
	}
	size_t cap = value_len / 4 * 3 + 3;
	uint8_t *buf = locked_alloc(cap);
	if (!buf)
		return -ENOMEM;
	ssize_t n = base64_decode(value, value_len, buf, cap);
	if (n < 0) {
		warnf(warn, ctx, "credential %s from %s: value is not valid Base64; ignored",
		      shown(cname, name_len, nm, sizeof(nm)), src);
		r = 0;
	} else {
		r = credentials_add(set, cname, buf, (size_t)n, source, warn, ctx);
		r = r == -ENOMEM ? r : 0;
	}
	locked_free(buf, cap);
	return r;
}

static int parse_smbios_string(const char *s, size_t len, unsigned index, struct credentials *out,
			       config_warn_fn warn, void *ctx)
{
	bool binary;
	size_t plen;
	/* s is NUL-terminated at s[len]. */
	if (str_has_prefix(s, SMBIOS_PREFIX_TEXT)) {
		binary = false;
		plen = strlen(SMBIOS_PREFIX_TEXT);
	} else if (str_has_prefix(s, SMBIOS_PREFIX_BINARY)) {
		binary = true;
		plen = strlen(SMBIOS_PREFIX_BINARY);
	} else {
		return 0; /* some other OEM string */
	}
	const char *rest = s + plen;
	size_t rlen = len - plen;
	const char *eq = memchr(rest, '=', rlen);
	if (!eq) {
		warnf(warn, ctx,
		      "SMBIOS OEM string %u: credential lacks '=' after its name; ignored", index);
		return 0;
	}
	size_t nlen = (size_t)(eq - rest);
	return add_counted(out, rest, nlen, eq + 1, rlen - nlen - 1, binary, CRED_SOURCE_SMBIOS,
			   warn, ctx);
}

int credentials_parse_smbios_raw(const uint8_t *buf, size_t len, struct credentials *out,
				 config_warn_fn warn, void *ctx)
{
	if (!buf || len < SMBIOS_HEADER_LEN) {
		warnf(warn, ctx, "SMBIOS structure of %zu bytes is too short; ignored", len);
		return -EBADMSG;
	}
	if (buf[0] != SMBIOS_TYPE_OEM_STRINGS) {
		warnf(warn, ctx, "SMBIOS structure has type %u, not 11 (OEM strings); ignored",
		      buf[0]);
		return -EBADMSG;
	}
	size_t hdr = buf[1];
	if (hdr < SMBIOS_HEADER_LEN || hdr > len) {
		warnf(warn, ctx,
		      "SMBIOS type 11 structure has a formatted area of %zu bytes in %zu; ignored",
		      hdr, len);
		return -EBADMSG;
	}
	const char *base = (const char *)buf;
	size_t p = hdr;
	unsigned index = 1; /* SMBIOS numbers strings from 1 */
	while (p < len) {
		const char *s = base + p;
		const char *nul = memchr(s, '\0', len - p);
		if (!nul) {
			warnf(warn, ctx,
			      "SMBIOS OEM string %u is cut off (no terminating NUL); ignored",
			      index);
			break;
		}
		size_t slen = (size_t)(nul - s);
		if (slen == 0)
			break; /* the empty string that ends the string set */
		int r = parse_smbios_string(s, slen, index, out, warn, ctx);
		if (r < 0)
			return r;
		p += slen + 1;
		index++;
	}
	return 0;
}

/* The kernel command line key a equals b, '-' and '_' counting as the same (systemd's rule). */
static bool cmdline_key_eq(const char *a, const char *b)
{
	for (;; a++, b++) {
		char x = *a == '-' ? '_' : *a, y = *b == '-' ? '_' : *b;
		if (x != y)
			return false;
		if (!x)
			return true;
	}
}

int credentials_parse_cmdline(const char *cmdline_text, struct credentials *out,
			      config_warn_fn warn, void *ctx)
{
	struct cmdline c = {0};
	int r = cmdline_parse(cmdline_text, &c);
	if (r < 0)
		return r;
	for (size_t i = 0; i < c.n && r >= 0; i++) {
		const struct cmdline_arg *a = &c.args[i];
		bool binary;
		if (cmdline_key_eq(a->key, "systemd.set_credential"))
			binary = false;
		else if (cmdline_key_eq(a->key, "systemd.set_credential_binary"))
			binary = true;
		else
			continue;
		const char *colon = a->value ? strchr(a->value, ':') : NULL;
		if (!colon) {
			warnf(warn, ctx, "%s= lacks the ':' between name and value; ignored",
			      a->key);
			continue;
		}
		r = add_counted(out, a->value, (size_t)(colon - a->value), colon + 1,
				strlen(colon + 1), binary, CRED_SOURCE_CMDLINE, warn, ctx);
	}
	cmdline_free(&c); /* wipes the values */
	return r;
}

static int parse_bool(const char *v)
{
	static const char *const yes[] = {"1", "yes", "y", "true", "t", "on"};
	static const char *const no[] = {"0", "no", "n", "false", "f", "off"};
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++)
		if (strcasecmp(v, yes[i]) == 0)
			return 1;
	for (size_t i = 0; i < ARRAY_SIZE(no); i++)
		if (strcasecmp(v, no[i]) == 0)
			return 0;
	return -EINVAL;
}

bool credentials_import_enabled(const char *cmdline_text)
{
	struct cmdline c = {0};
	if (cmdline_parse(cmdline_text, &c) < 0)
		return true;
	bool enabled = true;
	for (size_t i = 0; i < c.n; i++) {
		if (!cmdline_key_eq(c.args[i].key, "systemd.import_credentials"))
			continue;
		/* A bare word means true; an unparsable value leaves the setting as it was. */
		int b = c.args[i].value ? parse_bool(c.args[i].value) : 1;
		if (b >= 0)
			enabled = b;
	}
	cmdline_free(&c);
	return enabled;
}

/*
 * Reads fd to its end into a locked buffer, at most max bytes (-EFBIG beyond). The caller releases
 * *out with locked_free(*out, *cap).
 */
static int read_fd_locked(int fd, size_t max, char **out, size_t *out_len, size_t *out_cap)
{
	size_t cap = 4096 < max + 1 ? 4096 : max + 1, len = 0;
	char *buf = locked_alloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (len == cap) {
			if (cap >= max + 1) {
				locked_free(buf, cap);
				return -EFBIG;
			}
			size_t ncap = cap * 2 < max + 1 ? cap * 2 : max + 1;
			char *nbuf = locked_alloc(ncap);
			if (!nbuf) {
				locked_free(buf, cap);
				return -ENOMEM;
			}
			memcpy(nbuf, buf, len);
			locked_free(buf, cap);
			buf = nbuf;
			cap = ncap;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			locked_free(buf, cap);
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
	shown(name, strlen(name), nm, sizeof(nm));
	_cleanup_close_ int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		warnf(warn, ctx, "credential %s from %s: cannot open it (%s); ignored", nm, src,
		      strerror(errno));
		return 0;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		warnf(warn, ctx, "credential %s from %s: not a regular file; ignored", nm, src);
		return 0;
	}
	char *buf;
	size_t len, cap;
	int r = read_fd_locked(fd, CRED_VALUE_MAX, &buf, &len, &cap);
	if (r == -ENOMEM)
		return r;
	if (r == -EFBIG) {
		warnf(warn, ctx, "credential %s from %s: value is over %u bytes; ignored", nm, src,
		      CRED_VALUE_MAX);
		return 0;
	}
	if (r < 0) {
		warnf(warn, ctx, "credential %s from %s: cannot read it (%s); ignored", nm, src,
		      strerror(-r));
		return 0;
	}
	r = credentials_add(set, name, buf, len, source, warn, ctx);
	locked_free(buf, cap);
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
		warnf(warn, ctx, "credentials directory %s: %s", path, strerror(errno));
		return r;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, skip_dots, alphasort);
	if (n < 0) {
		int r = -errno;
		warnf(warn, ctx, "credentials directory %s: %s", path, strerror(errno));
		return r;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		const char *name = names[i]->d_name;
		if (!credential_name_valid(name)) {
			warn_bad_name(name, strlen(name), CRED_SOURCE_DIRECTORY, warn, ctx);
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
			warnf(warn, ctx, "fw_cfg credentials %s: %s", dir, strerror(errno));
		return 0;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, skip_dots, alphasort);
	if (n < 0) {
		warnf(warn, ctx, "fw_cfg credentials %s: %s", dir, strerror(errno));
		return 0;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		const char *name = names[i]->d_name;
		char nm[300];
		shown(name, strlen(name), nm, sizeof(nm));
		if (!credential_name_valid(name)) {
			warn_bad_name(name, strlen(name), CRED_SOURCE_FW_CFG, warn, ctx);
			continue;
		}
		_cleanup_close_ int vfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (vfd < 0) {
			warnf(warn, ctx, "credential %s from fw_cfg: cannot open it (%s); ignored",
			      nm, strerror(errno));
			continue;
		}
		/* The raw file's st_size is 0 in sysfs: size says how much to expect. */
		unsigned long long size = 0;
		int s = read_size_at(vfd, "size", &size);
		if (s == 0 && size > CRED_VALUE_MAX) {
			warnf(warn, ctx,
			      "credential %s from fw_cfg: value of %llu bytes is over %u; ignored",
			      nm, size, CRED_VALUE_MAX);
			continue;
		}
		_cleanup_close_ int fd = openat(vfd, "raw", O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			warnf(warn, ctx, "credential %s from fw_cfg: no raw file (%s); ignored", nm,
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
			warnf(warn, ctx, "credential %s from fw_cfg: cannot read it (%s); ignored",
			      nm, strerror(-q));
			continue;
		}
		if (s == 0 && len != size)
			warnf(warn, ctx,
			      "credential %s from fw_cfg: read %zu bytes, size says %llu; ignored",
			      nm, len, size);
		else
			r = credentials_add(out, name, buf, len, CRED_SOURCE_FW_CFG, warn, ctx);
		r = r == -ENOMEM ? r : 0;
		locked_free(buf, cap);
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
			warnf(warn, ctx, "SMBIOS entries %s: %s", dir, strerror(errno));
		return 0;
	}
	struct dirent **names;
	int n = scan_at(dfd, &names, is_oem_strings_entry, by_instance);
	if (n < 0) {
		warnf(warn, ctx, "SMBIOS entries %s: %s", dir, strerror(errno));
		return 0;
	}
	int r = 0;
	for (int i = 0; i < n && r >= 0; i++) {
		char rel[300];
		snprintf(rel, sizeof(rel), "%s/raw", names[i]->d_name);
		_cleanup_close_ int fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			warnf(warn, ctx, "SMBIOS entry %s: %s; ignored", rel, strerror(errno));
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
			warnf(warn, ctx, "SMBIOS entry %s: %s; ignored", rel, strerror(-q));
			continue;
		}
		q = credentials_parse_smbios_raw((const uint8_t *)buf, len, out, warn, ctx);
		r = q == -ENOMEM ? q : 0;
		locked_free(buf, cap);
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

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i - 1 < k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

int credentials_config_layer(const struct credentials *set, struct json_object **out,
			     struct json_object **control, config_warn_fn warn, void *ctx)
{
	*out = NULL;
	if (control)
		*control = NULL;
	struct json_object *layer = json_object_new_object();
	struct json_object *ctl = control ? json_object_new_object() : NULL;
	if (!layer || (control && !ctl)) {
		json_object_put(layer);
		json_object_put(ctl);
		return -ENOMEM;
	}
	for (size_t i = 0; i < set->n; i++) {
		const struct credential *c = &set->items[i];
		if (!str_has_prefix(c->name, "vm."))
			continue; /* for stage 2's systemd */
		const char *key = c->name + 3;
		const char *src = credential_source_name(c->source);
		char nm[300], why[256];
		shown(c->name, strlen(c->name), nm, sizeof(nm));
		enum vm_key_kind kind;
		if (vm_key_kind(key, &kind, why, sizeof(why)) < 0) {
			warnf(warn, ctx, "credential %s from %s: %s; ignored", nm, src, why);
			continue;
		}
		if (kind == VM_KEY_SECRET)
			continue; /* the caller takes it with credentials_find */
		if ((kind == VM_KEY_CONTROL || kind == VM_KEY_FLAG) && !ctl) {
			warnf(warn, ctx,
			      "credential %s from %s: credentials cannot set this key; ignored", nm,
			      src);
			continue;
		}
		size_t len = c->value.len;
		if (memchr(c->value.data, '\0', len)) {
			warnf(warn, ctx,
			      "credential %s from %s: value is binary, not text; ignored", nm, src);
			continue;
		}
		if (len > 0 && c->value.data[len - 1] == '\n')
			len--;
		if (len > 0 && c->value.data[len - 1] == '\r' && len < c->value.len)
			len--;
		if (len > VM_VALUE_MAX) {
			warnf(warn, ctx,
			      "credential %s from %s: value is longer than %d bytes; ignored", nm,
			      src, VM_VALUE_MAX);
			continue;
		}
		char text[VM_VALUE_MAX + 1];
		memcpy(text, c->value.data, len);
		text[len] = '\0';
		if (!utf8_valid((const unsigned char *)text, len)) {
			warnf(warn, ctx, "credential %s from %s: value is not valid UTF-8; ignored",
			      nm, src);
		} else if (has_control_chars(text)) {
			warnf(warn, ctx,
			      "credential %s from %s: value contains control characters; ignored",
			      nm, src);
		} else if (vm_key_check(key, text, why, sizeof(why)) < 0) {
			warnf(warn, ctx, "credential %s from %s: value %s; ignored", nm, src, why);
		} else {
			struct json_object *v = json_object_new_string(text);
			struct json_object *dst = kind == VM_KEY_CONFIG ? layer : ctl;
			if (!v || json_object_object_add(dst, key, v) < 0) {
				json_object_put(v);
				explicit_bzero(text, sizeof(text));
				json_object_put(layer);
				json_object_put(ctl);
				return -ENOMEM;
			}
		}
		explicit_bzero(text, sizeof(text));
	}
	*out = layer;
	if (control)
		*control = ctl;
	return 0;
}
