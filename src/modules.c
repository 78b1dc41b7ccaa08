/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "modules.h"
#include "log.h"
#include "plan.h"

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

/* A libkmod context on dir (NULL: the running kernel's) with its indexes loaded. */
static int kmod_open(const char *dir, struct kmod_ctx **out)
{
	struct kmod_ctx *ctx = kmod_new(dir, NULL);
	if (!ctx)
		return -ENOENT;
	kmod_set_log_fn(ctx, kmod_log_fn, NULL);
	int r = kmod_load_resources(ctx);
	if (r < 0) {
		kmod_unref(ctx);
		return r;
	}
	*out = ctx;
	return 0;
}

int modules_load(const char *const *names, size_t n)
{
	struct kmod_ctx *ctx;
	int r = kmod_open(NULL, &ctx);
	if (r < 0)
		return r;
	int failed = 0;
	for (size_t i = 0; i < n; i++) {
		r = load_one(ctx, names[i]);
		if (r < 0) {
			if (r == -ENOENT && !plan_module_required(names[i])) {
				/* e.g. sha256_ssse3 on 7.x, where the sha256 library took it over
				 */
				log_info(
				    "module %s: not in this kernel or initrd; skipped (optional)",
				    names[i]);
				continue;
			}
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

int modules_resolve(const char *kmoddir, struct module_resolution *res)
{
	memset(res, 0, sizeof(*res));
	const char *slash = strrchr(kmoddir, '/');
	res->kver = slash && slash[1] ? slash + 1 : kmoddir;
	struct kmod_ctx *ctx;
	int r = kmod_open(kmoddir, &ctx);
	if (r < 0)
		return r;
	res->n = plan_initrd_modules(res->names, ARRAY_SIZE(res->names));
	for (size_t i = 0; i < res->n; i++) {
		struct kmod_list *list = NULL, *it;
		res->kinds[i] = MODULE_ABSENT;
		if (kmod_module_new_from_lookup(ctx, res->names[i], &list) < 0 || !list)
			continue;
		/* Looked up in modules.builtin, a module has no path. */
		res->kinds[i] = MODULE_BUILTIN;
		kmod_list_foreach(it, list)
		{
			struct kmod_module *mod = kmod_module_get_module(it);
			if (kmod_module_get_path(mod))
				res->kinds[i] = MODULE_LOADABLE;
			kmod_module_unref(mod);
		}
		kmod_module_unref_list(list);
	}
	kmod_unref(ctx);
	return 0;
}
