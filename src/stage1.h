/* SPDX-License-Identifier: MIT */
/* Stage 1 as PID 1, and the helper mode that does only the persist part inside another stage 1. */
#ifndef FACTORY_INIT_STAGE1_H
#define FACTORY_INIT_STAGE1_H

#include <stddef.h>

#define CMDLINE_MAX_READ 65536

struct plan;
struct status;

/* PID 1: never returns (execs init, or halts/reboots as panic= says). */
__attribute__((noreturn)) void stage1_run(int argc, char **argv);

/* Finds, unlocks and mounts /persist under root, sets up /nix and the config. Always returns 0:
 * a fallback is an outcome, recorded in /run/factory-init/status.json. */
int helper_run(const char *root, const char *cmdline_override, const char *config_path);

/* The shared part: data disk, unlock, mount, store, config, all under root. */
/*
 * The two inputs of the plan: the command line (cmdline_override, else /proc/cmdline) and the
 * embedded config at config_path (absent is fine: NULL). Returns 0, or the first failure as a
 * negative errno with why; what could be read is returned either way.
 */
int inputs_read(const char *cmdline_override, const char *config_path, char **cmdline,
		char **embedded, char *why, size_t why_len);

void persist_setup(struct plan *p, struct status *st, const char *root);

#endif
