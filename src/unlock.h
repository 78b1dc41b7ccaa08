/* SPDX-License-Identifier: MIT */
/* Opening a LUKS volume with libcryptsetup. */
#ifndef FACTORY_INIT_UNLOCK_H
#define FACTORY_INIT_UNLOCK_H

#include "util.h"

#include <stdbool.h>
#include <stddef.h>

#define PERSIST_DM_NAME "persist"

/* Routes libcryptsetup's messages into our log and turns off its lock files (none in an initrd). */
void unlock_setup(bool debug);

/*
 * Opens the LUKS device as /dev/mapper/<name> with key. Returns the key slot used (>= 0),
 * -EPERM when no key slot accepts the key, or another negative errno (header unreadable, ...),
 * with a one-line explanation in why.
 */
int unlock_luks(const char *device, const char *name, const struct secret *key, char *why,
		size_t why_len);

/* Closes /dev/mapper/<name> again (after a failed mount). */
int unlock_close(const char *name);

#endif
