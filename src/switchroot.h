/* SPDX-License-Identifier: MIT */
/* Leaving the initramfs: move the API mounts, free the initramfs, make newroot the root. */
#ifndef FACTORY_INIT_SWITCHROOT_H
#define FACTORY_INIT_SWITCHROOT_H

/* On success the caller's root and working directory are newroot; it then execs init. */
int switch_root(const char *newroot);

#endif
