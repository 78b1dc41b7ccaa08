/* SPDX-License-Identifier: MIT */
/*
 * Opening paths on an untrusted tree (/persist: everything stage 2 can write) beneath a directory
 * fd, never following a symlink, a magic link, "..", or a mount crossing. openat2(2) with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV where the kernel
 * has it (5.6 and later), else a component-by-component O_NOFOLLOW walk with the same rules.
 * Nothing stage 2 runs while stage 1 does, so a path checked here stays as it was checked.
 */
#ifndef FACTORY_INIT_BENEATH_H
#define FACTORY_INIT_BENEATH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/*
 * Opens rel (relative, no "..", no empty components) beneath dirfd with flags (O_CLOEXEC and
 * O_NOFOLLOW are added). Returns an fd, or -ELOOP when a component is a symlink, -EXDEV when the
 * walk would leave dirfd's mount, -EINVAL for a malformed rel, or another negative errno.
 */
int beneath_open(int dirfd, const char *rel, int flags, mode_t mode);

/*
 * Reads the regular file rel beneath dirfd (at most max bytes, NUL-terminated) without opening
 * anything that is not a regular file (a FIFO would block, a device could act on open): the
 * file is first reached with O_PATH and checked. Returns 0, -ENOENT, -ELOOP (a symlink),
 * -EBADFD (not a regular file), -EFBIG (larger than max), or another negative errno.
 */
int beneath_read(int dirfd, const char *rel, size_t max, char **out, size_t *out_len);

/*
 * Makes sure rel beneath dirfd is a real directory (made with mode where missing, each
 * component checked), and returns an O_DIRECTORY fd on it, or a negative errno: -ELOOP (a
 * component is a symlink), -ENOTDIR (a component is something else).
 */
int beneath_mkdirs(int dirfd, const char *rel, mode_t mode);

/*
 * Splits rel into its last component (copied to last) and its parent, opened beneath dirfd as a
 * readable directory (a duplicate of dirfd when rel has no '/'). Returns the fd or a negative
 * errno.
 */
int beneath_open_parent(int dirfd, const char *rel, char *last, size_t last_len);

/* What lstat says rel beneath dirfd is, reached without links: 0 with *st, or a negative errno. */
int beneath_lstat(int dirfd, const char *rel, struct stat *st);

/* Tests: resolve with the fallback walk even where openat2 works. */
void beneath_force_walk(bool on);

/* A short description of a file type for messages: "a symlink", "a FIFO", "a directory"... */
const char *beneath_type_name(mode_t mode);

#endif
