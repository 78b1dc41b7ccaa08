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

/*
 * What the kernel whose lib/modules/KVER directory is kmoddir has of every module of
 * plan_initrd_modules (its modules.dep, modules.alias and modules.builtin, through libkmod;
 * nothing is loaded). Fills res (res->kver points into kmoddir). Returns 0, or a negative
 * errno when kmoddir has no module indexes (run depmod).
 */
struct module_resolution;
int modules_resolve(const char *kmoddir, struct module_resolution *res);

#endif
