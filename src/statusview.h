/* SPDX-License-Identifier: MIT */
/* `factory-init status`: a human view of /run/factory-init/status.json. Pure: text in, text out. */
#ifndef FACTORY_INIT_STATUSVIEW_H
#define FACTORY_INIT_STATUSVIEW_H

#include <stdio.h>

#define STATUS_FILE "/run/factory-init/status.json"

/* Exit codes of `factory-init status`. */
enum { STATUSVIEW_PERSIST = 0, STATUSVIEW_FALLBACK = 1, STATUSVIEW_USAGE = 2, STATUSVIEW_BAD = 3 };

/*
 * Writes the view of the status record TEXT (LEN bytes) to OUT: the outcome first, the reason in
 * full, the store and factory image, the candidates, the unlock attempts, the warnings and the
 * steps with their times; with json, the record itself, re-printed (so only valid JSON goes out).
 * Control characters in any string become '?'. Returns STATUSVIEW_PERSIST or _FALLBACK from the
 * outcome, or STATUSVIEW_BAD (with a line on ERR) when TEXT is not a status record.
 */
int statusview_print(const char *text, size_t len, int json, FILE *out, FILE *err);

#endif
