/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "status.h"
#include "config.h"
#include "util.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void status_init(struct status *st, const char *mode, uint64_t started_ms)
{
	memset(st, 0, sizeof(*st));
	st->mode = mode;
	st->started_ms = started_ms;
	strcpy(st->store, "factory");
}

#define STATUS_WARN_MORE "\xe2\x80\xa6 and %zu more warnings (see the kernel log)"

void status_warn(struct status *st, const char *msg)
{
	if (st->n_warnings < STATUS_MAX_WARNINGS) {
		strscpy(st->warnings[st->n_warnings++], msg, sizeof(st->warnings[0]));
		return;
	}
	/*
	 * Full: the last slot stands for every warning from it on, and says how many (the caller
	 * logs each one). The count lives in that text: it already says "... and N more" when it
	 * reads exactly so, else it held one warning, which now counts with this one.
	 */
	char *last = st->warnings[STATUS_MAX_WARNINGS - 1];
	size_t more = 2;
	const char *digits = strstr(last, " and ");
	if (digits) {
		char *end;
		unsigned long long n = strtoull(digits + 5, &end, 10);
		char again[sizeof(st->warnings[0])];
		snprintf(again, sizeof(again), STATUS_WARN_MORE, (size_t)n);
		if (end != digits + 5 && strcmp(again, last) == 0)
			more = (size_t)n + 1;
	}
	snprintf(last, sizeof(st->warnings[0]), STATUS_WARN_MORE, more);
}

void status_reason(struct status *st, const char *code, const char *fmt, ...)
{
	/* The first reason is the root cause; later failures only follow from it. */
	if (*st->reason)
		return;
	strscpy(st->reason_code, code, sizeof(st->reason_code));
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(st->reason, sizeof(st->reason), fmt, ap);
	va_end(ap);
}

bool status_tpm2_present(const struct status *st)
{
	return *st->tpm2 && strcmp(st->tpm2, "none") != 0;
}

void status_step(struct status *st, const char *name, uint64_t ms, int result)
{
	if (st->n_steps >= STATUS_MAX_STEPS)
		return;
	struct status_step *s = &st->steps[st->n_steps++];
	strscpy(s->name, name, sizeof(s->name));
	s->ms = ms;
	s->result = result;
}

void status_candidate(struct status *st, const char *device, const char *type, const char *label,
		      const char *verdict, const char *detail)
{
	if (st->n_candidates >= STATUS_MAX_CANDIDATES)
		return;
	struct status_candidate *c = &st->candidates[st->n_candidates++];
	strscpy(c->device, device, sizeof(c->device));
	strscpy(c->type, type ? type : "", sizeof(c->type));
	strscpy(c->label, label ? label : "", sizeof(c->label));
	strscpy(c->verdict, verdict, sizeof(c->verdict));
	strscpy(c->detail, detail ? detail : "", sizeof(c->detail));
}

void status_attempt(struct status *st, const char *device, const char *method, const char *source,
		    int result, uint64_t ms, const char *detail)
{
	if (st->n_attempts >= STATUS_MAX_ATTEMPTS)
		return;
	struct status_attempt *a = &st->attempts[st->n_attempts++];
	strscpy(a->device, device ? device : "", sizeof(a->device));
	strscpy(a->method, method, sizeof(a->method));
	strscpy(a->source, source ? source : "", sizeof(a->source));
	a->result = result;
	a->ms = ms;
	strscpy(a->detail, detail ? detail : "", sizeof(a->detail));
}

static struct json_object *str_or_null(const char *s)
{
	return *s ? json_object_new_string(s) : NULL;
}

char *status_to_json(const struct status *st)
{
	struct json_object *o = json_object_new_object();
	if (!o)
		return NULL;
	json_object_object_add(o, "version", json_object_new_int(1));
	json_object_object_add(o, "mode", json_object_new_string(st->mode));
	json_object_object_add(o, "outcome",
			       json_object_new_string(st->persist ? "persist" : "fallback"));
	json_object_object_add(o, "reason", str_or_null(st->reason));
	json_object_object_add(o, "reason_code", str_or_null(st->reason_code));
	json_object_object_add(o, "device", str_or_null(st->device));
	json_object_object_add(o, "fstype", str_or_null(st->fstype));
	json_object_object_add(o, "luks", json_object_new_boolean(st->luks));
	json_object_object_add(o, "unlock", str_or_null(st->unlock));
	struct json_object *cands = json_object_new_array();
	for (size_t i = 0; i < st->n_candidates; i++) {
		const struct status_candidate *c = &st->candidates[i];
		struct json_object *j = json_object_new_object();
		json_object_object_add(j, "device", json_object_new_string(c->device));
		json_object_object_add(j, "type", str_or_null(c->type));
		json_object_object_add(j, "label", str_or_null(c->label));
		json_object_object_add(j, "verdict", json_object_new_string(c->verdict));
		json_object_object_add(j, "detail", str_or_null(c->detail));
		json_object_array_add(cands, j);
	}
	json_object_object_add(o, "candidates", cands);
	struct json_object *att = json_object_new_array();
	for (size_t i = 0; i < st->n_attempts; i++) {
		const struct status_attempt *a = &st->attempts[i];
		struct json_object *j = json_object_new_object();
		json_object_object_add(j, "device", str_or_null(a->device));
		json_object_object_add(j, "method", json_object_new_string(a->method));
		json_object_object_add(j, "source", str_or_null(a->source));
		json_object_object_add(j, "ok", json_object_new_boolean(a->result >= 0));
		if (a->result >= 0)
			json_object_object_add(j, "keyslot", json_object_new_int(a->result));
		else
			json_object_object_add(j, "error",
					       json_object_new_string(strerror(-a->result)));
		json_object_object_add(j, "ms", json_object_new_int64((int64_t)a->ms));
		json_object_object_add(j, "detail", str_or_null(a->detail));
		json_object_array_add(att, j);
	}
	json_object_object_add(o, "unlock_attempts", att);
	json_object_object_add(o, "provisioned", json_object_new_boolean(st->provisioned));
	if (st->provision[0]) {
		json_object *pv = json_object_new_object();
		json_object_object_add(pv, "result", json_object_new_string(st->provision));
		json_object_object_add(pv, "detail", str_or_null(st->provision_detail));
		json_object_object_add(o, "provision", pv);
	} else {
		json_object_object_add(o, "provision", NULL);
	}
	json_object_object_add(o, "luks_uuid", str_or_null(st->luks_uuid));
	json_object_object_add(o, "age_recipient", str_or_null(st->age_recipient));
	json_object_object_add(o, "key_in_cmdline", json_object_new_boolean(st->key_in_cmdline));
	json_object_object_add(o, "store", json_object_new_string(st->store));
	json_object_object_add(o, "tpm2", str_or_null(st->tpm2));
	struct json_object *lock = json_object_new_object();
	json_object_object_add(lock, "pcr", json_object_new_int((int)st->tpm2_lock_pcr));
	json_object_object_add(lock, "extended", json_object_new_boolean(st->tpm2_lock_result > 0));
	json_object_object_add(lock, "detail", str_or_null(st->tpm2_lock_detail));
	json_object_object_add(o, "tpm2_lock", lock);
	struct json_object *img = json_object_new_object();
	json_object_object_add(img, "id", str_or_null(st->factory_id));
	json_object_object_add(img, "previous", str_or_null(st->factory_previous));
	json_object_object_add(img, "refreshed", json_object_new_boolean(st->refreshed));
	json_object_object_add(o, "factory_image", img);
	if (st->seeded) {
		struct json_object *sd = json_object_new_object();
		json_object_object_add(sd, "files", json_object_new_int64((int64_t)st->seed.files));
		json_object_object_add(sd, "dirs", json_object_new_int64((int64_t)st->seed.dirs));
		json_object_object_add(sd, "symlinks",
				       json_object_new_int64((int64_t)st->seed.symlinks));
		json_object_object_add(sd, "hardlinks",
				       json_object_new_int64((int64_t)st->seed.hardlinks));
		json_object_object_add(sd, "kept", json_object_new_int64((int64_t)st->seed.kept));
		json_object_object_add(sd, "bytes", json_object_new_int64((int64_t)st->seed.bytes));
		json_object_object_add(sd, "ms", json_object_new_int64((int64_t)st->seed.ms));
		json_object_object_add(sd, "total_bytes",
				       json_object_new_int64((int64_t)st->seed.total_bytes));
		json_object_object_add(sd, "complete",
				       json_object_new_boolean(st->seed_result >= 0));
		if (st->seed_result < 0)
			json_object_object_add(sd, "error",
					       json_object_new_string(strerror(-st->seed_result)));
		json_object_object_add(o, "store_copy", sd);
	}
	if (st->network_static) {
		const struct net_static *n = &st->network;
		struct json_object *net = json_object_new_object();
		char addr[NET_ADDR_MAX + 8];
		snprintf(addr, sizeof(addr), "%s/%u", n->address, n->prefix);
		json_object_object_add(net, "address", json_object_new_string(addr));
		json_object_object_add(net, "gateway", str_or_null(n->gateway));
		struct json_object *dns = json_object_new_array();
		for (size_t i = 0; i < n->n_dns; i++)
			json_object_array_add(dns, json_object_new_string(n->dns[i]));
		json_object_object_add(net, "dns", dns);
		json_object_object_add(net, "ntp", str_or_null(n->ntp));
		json_object_object_add(net, "interface", str_or_null(n->interface));
		json_object_object_add(net, "syntax",
				       json_object_new_string(n->kernel_syntax ? "ip=" : "short"));
		json_object_object_add(
		    net, "file", json_object_new_string(NETWORK_FILE_DIR "/" NETWORK_FILE_NAME));
		json_object_object_add(net, "written",
				       json_object_new_boolean(st->network_result >= 0));
		if (st->network_result < 0)
			json_object_object_add(
			    net, "error", json_object_new_string(strerror(-st->network_result)));
		json_object_object_add(o, "network_static", net);
	} else {
		json_object_object_add(o, "network_static", NULL);
	}
	struct json_object *w = json_object_new_array();
	for (size_t i = 0; i < st->n_warnings; i++)
		json_object_array_add(w, json_object_new_string(st->warnings[i]));
	json_object_object_add(o, "warnings", w);
	struct json_object *steps = json_object_new_array();
	for (size_t i = 0; i < st->n_steps; i++) {
		struct json_object *s = json_object_new_object();
		json_object_object_add(s, "name", json_object_new_string(st->steps[i].name));
		json_object_object_add(s, "ms", json_object_new_int64((int64_t)st->steps[i].ms));
		json_object_object_add(s, "result", json_object_new_int(st->steps[i].result));
		if (st->steps[i].result < 0)
			json_object_object_add(
			    s, "error", json_object_new_string(strerror(-st->steps[i].result)));
		json_object_array_add(steps, s);
	}
	json_object_object_add(o, "steps", steps);
	json_object_object_add(o, "total_ms", json_object_new_int64((int64_t)st->total_ms));
	char *text = config_to_string(o);
	json_object_put(o);
	return text;
}
