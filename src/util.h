/* SPDX-License-Identifier: MIT */
/* Small helpers shared by every file: cleanup attributes, secrets, string and file utilities. */
#ifndef FACTORY_INIT_UTIL_H
#define FACTORY_INIT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
static inline void freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_close_ __attribute__((cleanup(closep)))
#define _cleanup_free_ __attribute__((cleanup(freep)))

/* A buffer that holds key material: locked in memory where possible, wiped on release. */
struct secret {
	char *data;
	size_t len;
};
void secret_free(struct secret *s);
static inline void secretp(struct secret *s)
{
	secret_free(s);
}
#define _cleanup_secret_ __attribute__((cleanup(secretp)))
/* Copies len bytes into a fresh locked buffer; returns -ENOMEM on failure. */
int secret_set(struct secret *s, const void *data, size_t len);
/* Reads a whole file (at most max bytes) into a secret. */
int secret_read_file(struct secret *s, const char *path, size_t max);

/* Monotonic milliseconds. */
uint64_t now_ms(void);

/* Bounded copy that always terminates; returns -ENAMETOOLONG if src did not fit. */
int strscpy(char *dst, const char *src, size_t size);
bool str_has_prefix(const char *s, const char *prefix);
/* The value of a hexadecimal digit (either case), or -1. */
int hex_digit_value(char c);
/* Strict hex (either case, even length) into out; returns the byte count or -EINVAL/-ENOBUFS. */
ssize_t hex_decode(const char *s, size_t len, uint8_t *out, size_t cap);
/* n bytes as 2n lower-case hex digits and a NUL. */
void hex_encode(const uint8_t *in, size_t n, char *out);
/* True for a control character: a byte < 0x20 or 0x7f. */
bool is_control_char(char c);
/* True when s contains a control character. */
bool has_control_chars(const char *s);

/* Wipes the string s (up to its NUL) and frees it; NULL is fine. For copies of the command
 * line, which may hold key material. */
void free_wiped(char *s);

/* Reads a whole file into a NUL-terminated buffer (at most max bytes). */
int read_file(const char *path, size_t max, char **out, size_t *out_len);
/* The same from an open fd, to its end. */
int read_fd(int fd, size_t max, char **out, size_t *out_len);
/* fsync(2) of a directory, so the entries made or renamed in it are durable. */
int fsync_dir(const char *path);
/*
 * Writes data to name (one path component, no '/') in the directory dirfd atomically: a new
 * temporary file with a random name in that directory (O_EXCL, so never one planted there),
 * given exactly mode (whatever the umask), written, fsynced and renamed over name (replacing a
 * symlink there, never following it); then dirfd is fsynced. The temporary file is removed on
 * failure. Returns 0 or a negative errno (-EINVAL for a bad name).
 */
int write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, unsigned mode);
/* Writes all len bytes of data to fd, through short writes and EINTR. Returns 0 or a negative
 * errno (-EIO when write(2) makes no progress). */
int fd_write_all(int fd, const void *data, size_t len);
/* write_file_atomic_at in the directory of path. */
int write_file_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* Opens the directory that holds path ("." when it has no '/') and points *name at its last
 * component; returns the fd or a negative errno. */
int open_parent(const char *path, const char **name);
/* mkdir -p with the given mode for missing components. */
int make_dirs(const char *path, unsigned mode);

#endif
