/* SPDX-License-Identifier: MIT */
/* Loading kernel modules (with dependencies, softdeps and command-line options) via libkmod. */
#ifndef FACTORY_INIT_MODULES_H
#define FACTORY_INIT_MODULES_H

#include <stddef.h>

/*
 * Loads each named module (a name or alias). A module that is built in or already loaded counts
 * as loaded. Returns the number that could not be loaded (each logged), or a negative errno when
 * libkmod itself cannot start (no module directory).
 */
int modules_load(const char *const *names, size_t n);

#endif
