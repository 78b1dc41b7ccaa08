/* SPDX-License-Identifier: MIT */
#include "statusview.h"
#include "util.h"

#include <json-c/json.h>
#include <string.h>

/* The string member KEY of O, or NULL (absent, null or not a string). */
static const char *str(json_object *o, const char *key)
{
	json_object *v;
	if (!o || !json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static json_object *member(json_object *o, const char *key, json_type type)
{
	json_object *v;
	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type))
		return NULL;
	return v;
}

static long long num(json_object *o, const char *key, long long dflt)
{
	json_object *v = member(o, key, json_type_int);
	return v ? (long long)json_object_get_int64(v) : dflt;
}

static int boolean(json_object *o, const char *key)
{
	json_object *v = member(o, key, json_type_boolean);
	return v ? json_object_get_boolean(v) : -1;
}

/* Prints S with control characters (a hostile disk label, say) as '?'; "-" for NULL. */
static void put(FILE *out, const char *s)
{
	if (!s) {
		fputc('-', out);
		return;
	}
	for (; *s; s++)
		fputc(is_control_char(*s) ? '?' : *s, out);
}

/* PREFIX, V and SUFFIX when V is there; nothing otherwise. */
static void opt(FILE *out, const char *prefix, const char *v, const char *suffix)
{
	if (!v)
		return;
	fputs(prefix, out);
	put(out, v);
	fputs(suffix, out);
}

static void line(FILE *out, const char *label, const char *value)
{
	fprintf(out, "%-16s ", label);
	put(out, value);
	fputc('\n', out);
}

/* The array KEY of ROOT, its length, and its heading on OUT when it is not empty. */
static size_t list(FILE *out, json_object *root, const char *key, const char *heading,
		   json_object **a)
{
	*a = member(root, key, json_type_array);
	size_t n = *a ? json_object_array_length(*a) : 0;
	if (n)
		fprintf(out, "%s:\n", heading);
	return n;
}

static void candidates(FILE *out, json_object *root)
{
	json_object *a;
	size_t n = list(out, root, "candidates", "candidates", &a);
	for (size_t i = 0; i < n; i++) {
		json_object *c = json_object_array_get_idx(a, i);
		fputs("  ", out);
		put(out, str(c, "device"));
		fputs(" (", out);
		put(out, str(c, "type"));
		opt(out, ", label ", str(c, "label"), "");
		fputs("): ", out);
		put(out, str(c, "verdict"));
		opt(out, ": ", str(c, "detail"), "");
		fputc('\n', out);
	}
}

static void attempts(FILE *out, json_object *root)
{
	json_object *a;
	size_t n = list(out, root, "unlock_attempts", "unlock attempts", &a);
	for (size_t i = 0; i < n; i++) {
		json_object *t = json_object_array_get_idx(a, i);
		fputs("  ", out);
		put(out, str(t, "method"));
		fprintf(out, " %s", boolean(t, "ok") == 1 ? "ok" : "failed");
		opt(out, " on ", str(t, "device"), "");
		opt(out, " (", str(t, "source"), ")");
		fprintf(out, ", %lld ms", num(t, "ms", 0));
		opt(out, ": ", str(t, "detail"), "");
		fputc('\n', out);
	}
}

static void warnings(FILE *out, json_object *root)
{
	json_object *a;
	size_t n = list(out, root, "warnings", "warnings", &a);
	for (size_t i = 0; i < n; i++) {
		json_object *w = json_object_array_get_idx(a, i);
		fputs("  ", out);
		put(out,
		    json_object_is_type(w, json_type_string) ? json_object_get_string(w) : NULL);
		fputc('\n', out);
	}
}

static void steps(FILE *out, json_object *root)
{
	json_object *a;
	size_t n = list(out, root, "steps", "steps (ms)", &a);
	for (size_t i = 0; i < n; i++) {
		json_object *s = json_object_array_get_idx(a, i);
		fputs("  ", out);
		const char *name = str(s, "name");
		fprintf(out, "%-14.40s %7lld", name ? name : "-", num(s, "ms", 0));
		long long r = num(s, "result", 0);
		if (r != 0)
			fprintf(out, "  (error %lld)", r);
		fputc('\n', out);
	}
	if (n && num(root, "total_ms", -1) >= 0)
		fprintf(out, "  %-14s %7lld\n", "total", num(root, "total_ms", 0));
}

/* vm.network_static: "10.0.2.50/24 via 10.0.2.2, DNS 10.0.2.3, on eth0". */
static void network(FILE *out, json_object *root)
{
	json_object *n = member(root, "network_static", json_type_object);
	if (!n)
		return;
	fprintf(out, "%-16s ", "static network");
	put(out, str(n, "address"));
	opt(out, " via ", str(n, "gateway"), "");
	json_object *dns = member(n, "dns", json_type_array);
	for (size_t i = 0; dns && i < json_object_array_length(dns); i++) {
		json_object *d = json_object_array_get_idx(dns, i);
		fputs(i ? " " : ", DNS ", out);
		put(out,
		    json_object_is_type(d, json_type_string) ? json_object_get_string(d) : NULL);
	}
	opt(out, ", on ", str(n, "interface"), "");
	if (!str(n, "interface"))
		fputs(", on every Ethernet interface", out);
	if (boolean(n, "written") == 0) {
		fputs(" (not written: ", out);
		put(out, str(n, "error"));
		fputc(')', out);
	}
	fputc('\n', out);
}

int statusview_print(const char *text, size_t len, int json, FILE *out, FILE *err)
{
	json_tokener *tok = json_tokener_new();
	if (!tok)
		return STATUSVIEW_BAD;
	json_object *root = json_tokener_parse_ex(tok, text, (int)len);
	enum json_tokener_error e = json_tokener_get_error(tok);
	json_tokener_free(tok);
	const char *outcome = str(root, "outcome");
	if (!root || e != json_tokener_success || !json_object_is_type(root, json_type_object) ||
	    !outcome || (strcmp(outcome, "persist") != 0 && strcmp(outcome, "fallback") != 0)) {
		fprintf(err, "factory-init status: not a status record (%s)\n",
			e != json_tokener_success ? json_tokener_error_desc(e)
			: !outcome		  ? "no outcome"
						  : "unknown outcome");
		json_object_put(root);
		return STATUSVIEW_BAD;
	}
	int rc = strcmp(outcome, "persist") == 0 ? STATUSVIEW_PERSIST : STATUSVIEW_FALLBACK;
	if (json) {
		fprintf(out, "%s\n",
			json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
								 JSON_C_TO_STRING_SPACED |
								 JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(root);
		return rc;
	}
	char head[256];
	if (rc == STATUSVIEW_PERSIST) {
		snprintf(head, sizeof(head), "persist: /persist is %s (%s)",
			 str(root, "device") ? str(root, "device") : "?",
			 str(root, "fstype") ? str(root, "fstype") : "?");
		line(out, "outcome", head);
		if (boolean(root, "luks") == 1 || str(root, "unlock"))
			line(out, "unlocked with", str(root, "unlock"));
	} else {
		line(out, "outcome", "fallback: booted on the factory store");
		line(out, "reason", str(root, "reason"));
	}
	line(out, "reason code", str(root, "reason_code"));
	if (rc == STATUSVIEW_PERSIST && str(root, "reason"))
		line(out, "note", str(root, "reason"));
	line(out, "mode", str(root, "mode"));
	line(out, "store", str(root, "store"));
	json_object *img = member(root, "factory_image", json_type_object);
	if (img) {
		line(out, "factory image", str(img, "id"));
		if (boolean(img, "refreshed") == 1)
			line(out, "refreshed from", str(img, "previous"));
	}
	json_object *copy = member(root, "store_copy", json_type_object);
	if (copy)
		fprintf(out, "%-16s %lld files, %lld hard links, %lld MB in %lld ms%s\n",
			"store copy", num(copy, "files", 0), num(copy, "hardlinks", 0),
			num(copy, "bytes", 0) / 1000000, num(copy, "ms", 0),
			boolean(copy, "complete") == 0 ? " (incomplete)" : "");
	json_object *prov = member(root, "provision", json_type_object);
	if (prov) {
		char pv[400];
		snprintf(pv, sizeof(pv), "%s: %s", str(prov, "result") ? str(prov, "result") : "?",
			 str(prov, "detail") ? str(prov, "detail") : "");
		line(out, "provisioning", pv);
	}
	if (boolean(root, "provisioned") == 1) {
		line(out, "luks uuid", str(root, "luks_uuid"));
		line(out, "age recipient", str(root, "age_recipient"));
	}
	line(out, "tpm2", str(root, "tpm2"));
	network(out, root);
	if (boolean(root, "key_in_cmdline") == 1)
		line(out, "key on cmdline", "yes: stage 2 can read it in /proc/cmdline");
	candidates(out, root);
	attempts(out, root);
	warnings(out, root);
	steps(out, root);
	json_object_put(root);
	return rc;
}
