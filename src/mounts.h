/* SPDX-License-Identifier: MIT */
/* Mounting through libmount, and the few plain mount(2) moves that need no option parsing. */
#ifndef FACTORY_INIT_MOUNTS_H
#define FACTORY_INIT_MOUNTS_H

#include <stdbool.h>
#include <stddef.h>

/* Mounts source on target; fstype NULL lets libmount probe. why gets libmount's explanation. */
int mount_fs(const char *source, const char *target, const char *fstype, const char *options,
	     char *why, size_t why_len);
/* Bind-mounts source on target, read-only when ro. */
int mount_bind(const char *source, const char *target, bool ro);
int mount_move(const char *source, const char *target);
/* PID 1 only, with nothing mounted yet: mounts /proc, /sys, /dev (devtmpfs) and /run (tmpfs). */
int mount_api_filesystems(void);

/*
 * The overlay store layout (see README): lower = the factory /nix, upper and work under
 * <persist>/nix, and the factory /nix kept reachable, read-only, at <nix>/.ro-store.
 */
int mount_store_overlay(const char *nix, const char *persist, char *why, size_t why_len);

/*
 * The bind store layout: <persist>/nix (a complete copy of the factory /nix) bound on nix, and
 * the factory /nix kept reachable, read-only, at <nix>/.ro-store as in overlay mode.
 */
int mount_store_bind(const char *nix, const char *persist, char *why, size_t why_len);

#endif
