/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "modules.h"
#include "log.h"

#include <errno.h>
#include <libkmod.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void kmod_log_fn(void *data, int priority, const char *file, int line, const char *fn,
			const char *format, va_list args)
{
	(void)data;
	(void)file;
	(void)line;
	(void)fn;
	char msg[512];
	vsnprintf(msg, sizeof(msg), format, args);
	log_msg(priority < LOG_WARNING ? LOG_WARNING : priority, "kmod: %s", msg);
}

static int load_one(struct kmod_ctx *ctx, const char *name)
{
	struct kmod_list *list = NULL, *it;
	int r = kmod_module_new_from_lookup(ctx, name, &list);
	if (r < 0)
		return r;
	if (!list)
		return -ENOENT;
	int loaded = 0;
	r = 0;
	kmod_list_foreach(it, list)
	{
		struct kmod_module *mod = kmod_module_get_module(it);
		/* Probing applies options from the command line (name.param=value) and softdeps. */
		int e = kmod_module_probe_insert_module(mod, KMOD_PROBE_APPLY_BLACKLIST, NULL, NULL,
							NULL, NULL);
		if (e >= 0)
			loaded++;
		else if (r == 0)
			r = e;
		kmod_module_unref(mod);
	}
	kmod_module_unref_list(list);
	return loaded > 0 ? 0 : r;
}

int modules_load(const char *const *names, size_t n)
{
	struct kmod_ctx *ctx = kmod_new(NULL, NULL);
	if (!ctx)
		return -ENOENT;
	kmod_set_log_fn(ctx, kmod_log_fn, NULL);
	int r = kmod_load_resources(ctx);
	if (r < 0) {
		kmod_unref(ctx);
		return r;
	}
	int failed = 0;
	for (size_t i = 0; i < n; i++) {
		r = load_one(ctx, names[i]);
		if (r < 0) {
			failed++;
			log_warn("module %s: %s", names[i],
				 r == -ENOENT ? "not in this initrd and not built in"
					      : strerror(-r));
		} else {
			log_debug("module %s loaded", names[i]);
		}
	}
	kmod_unref(ctx);
	return failed;
}
