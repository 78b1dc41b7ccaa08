/* SPDX-License-Identifier: MIT */
/*
 * /persist is untrusted: stage 2 (and whoever made the disk) can put anything at any path on it.
 * Before stage 1 uses the paths it owns there, persist_check_tree makes each one what stage 1
 * expects or moves it aside (renamed, never followed, never deleted), and checks the markers'
 * contents, so that what the store and config steps then open is a real directory or a regular
 * file of the expected form.
 */
#ifndef FACTORY_INIT_PERSIST_H
#define FACTORY_INIT_PERSIST_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Largest /persist/config.json stage 1 reads. */
#define PERSIST_CONFIG_MAX (64 * 1024)
/* Largest marker stage 1 reads (an identity line). */
#define PERSIST_MARKER_MAX 512

/*
 * Checks the paths stage 1 owns beneath persist_fd (the directories nix, nix/upper, nix/work,
 * nix/upper/store, nix/store and .nix-staging; the markers; config.json): a directory path that
 * is something else, or a marker that is not a regular file holding a valid identity, is renamed
 * to NAME.bad (NAME.bad.N when taken), with a warning naming the path as "/persist/REL". Returns
 * how many it moved, or a negative errno when one could not be moved (the caller then must not use
 * that store mode).
 */
int persist_check_tree(int persist_fd, config_warn_fn warn, void *ctx);

/*
 * Renames rel beneath dirfd to rel.bad (rel.bad.1, ... when taken). Fills moved_to (the new
 * relative name) and returns 0, or a negative errno.
 */
int persist_move_aside(int dirfd, const char *rel, char *moved_to, size_t moved_len);

/* Pure: is s a factory image identity as stage 1 records it (1 to 127 characters of
 * [A-Za-z0-9._:+@-])? Markers holding anything else are not believed. */
bool persist_identity_valid(const char *s);

/*
 * Reads a marker (rel beneath dirfd): a regular file whose first line is a valid identity, at
 * most PERSIST_MARKER_MAX bytes. Returns 0 with the identity in out, -ENOENT, or -EBADMSG /
 * -ELOOP / -EBADFD / -EFBIG when it is there but not to be believed.
 */
int persist_read_marker(int dirfd, const char *rel, char *out, size_t out_len);

#endif
