/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "config.h"
#include "tpm2_policy.h"
#include "network.h"
#include "util.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

typedef int (*check_fn)(const char *value, char *why, size_t why_len);

struct vm_key {
	const char *name;
	enum vm_key_kind kind;
	check_fn check;
	bool credential; /* a control or flag key that a system credential may set */
};

static int fail(char *why, size_t why_len, const char *reason)
{
	snprintf(why, why_len, "%s", reason);
	return -EINVAL;
}

bool hostname_is_valid(const char *s)
{
	size_t total = strlen(s);
	if (total == 0 || total > 253)
		return false;
	size_t label = 0;
	char prev = '.';
	for (const char *p = s; *p; p++) {
		if (*p == '.') {
			if (label == 0 || prev == '-')
				return false;
			label = 0;
		} else if (isalnum((unsigned char)*p) || *p == '-') {
			if (label == 0 && *p == '-')
				return false;
			if (++label > 63)
				return false;
		} else {
			return false;
		}
		prev = *p;
	}
	return label > 0 && prev != '-';
}

static int check_hostname(const char *v, char *why, size_t why_len)
{
	if (!hostname_is_valid(v))
		return fail(why, why_len,
			    "is not a valid RFC 1123 host name (letters, digits, inner hyphens, "
			    "labels of 1-63 characters, 253 at most)");
	return 0;
}

static int check_repo(const char *v, char *why, size_t why_len)
{
	if (!*v)
		return fail(why, why_len, "is empty");
	if (*v == '-')
		return fail(why, why_len, "must not start with '-'");
	for (const char *p = v; *p; p++)
		if (isspace((unsigned char)*p))
			return fail(why, why_len, "must not contain white space");
	return 0;
}

static int check_branch(const char *v, char *why, size_t why_len)
{
	size_t n = strlen(v);
	if (n == 0 || n > 255)
		return fail(why, why_len, "must be 1-255 characters");
	if (v[0] == '-' || v[0] == '/' || v[n - 1] == '/' || v[n - 1] == '.' || strstr(v, "..") ||
	    strstr(v, "@{") || strstr(v, "//") || (n >= 5 && strcmp(v + n - 5, ".lock") == 0))
		return fail(why, why_len, "is not a valid git branch name");
	if (strpbrk(v, " ~^:?*[\\"))
		return fail(why, why_len, "is not a valid git branch name");
	return 0;
}

static int check_abs_path(const char *v, char *why, size_t why_len)
{
	if (v[0] != '/')
		return fail(why, why_len, "must be an absolute path");
	if (strlen(v) > 255)
		return fail(why, why_len, "is longer than 255 characters");
	if (strstr(v, "/../") || (strlen(v) >= 3 && strcmp(v + strlen(v) - 3, "/..") == 0))
		return fail(why, why_len, "must not contain '..'");
	return 0;
}

static const char *const device_tags[] = {"LABEL=", "UUID=", "PARTUUID=", "PARTLABEL="};

static int check_device(const char *v, char *why, size_t why_len)
{
	if (strcmp(v, "auto") == 0)
		return 0;
	if (v[0] == '/')
		return check_abs_path(v, why, why_len);
	for (size_t i = 0; i < ARRAY_SIZE(device_tags); i++)
		if (str_has_prefix(v, device_tags[i])) {
			if (!v[strlen(device_tags[i])])
				return fail(why, why_len, "has an empty tag value");
			if (strlen(v) > 255)
				return fail(why, why_len, "is longer than 255 characters");
			return 0;
		}
	return fail(why, why_len,
		    "must be auto, a /dev path, LABEL=, UUID=, PARTUUID= or PARTLABEL=");
}

static int check_timeout(const char *v, char *why, size_t why_len)
{
	if (!*v || strlen(v) > 4)
		return fail(why, why_len, "must be a whole number of seconds from 0 to 3600");
	for (const char *p = v; *p; p++)
		if (!isdigit((unsigned char)*p))
			return fail(why, why_len,
				    "must be a whole number of seconds from 0 to 3600");
	if (atoi(v) > 3600)
		return fail(why, why_len, "must be a whole number of seconds from 0 to 3600");
	return 0;
}

static int check_mount_options(const char *v, char *why, size_t why_len)
{
	if (strlen(v) > 512)
		return fail(why, why_len, "is longer than 512 characters");
	for (const char *p = v; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("=,._:/+-", *p))
			return fail(why, why_len,
				    "may hold only letters, digits and =,._:/+- characters");
	return 0;
}

static int check_store(const char *v, char *why, size_t why_len)
{
	if (strcmp(v, "overlay") == 0 || strcmp(v, "bind") == 0 || strcmp(v, "off") == 0)
		return 0;
	return fail(why, why_len, "must be overlay, bind or off");
}

static const char *const method_names[UNLOCK_N_METHODS] = {
    [UNLOCK_TPM2] = "tpm2",	  [UNLOCK_CREDENTIAL] = "credential", [UNLOCK_KEY] = "key",
    [UNLOCK_KEYFILE] = "keyfile", [UNLOCK_PASSPHRASE] = "passphrase",
};

const char *unlock_method_name(enum unlock_method m)
{
	return (unsigned)m < UNLOCK_N_METHODS ? method_names[m] : "?";
}

int unlock_methods_parse(const char *v, enum unlock_method *out, char *why, size_t why_len)
{
	int n = 0;
	bool seen[UNLOCK_N_METHODS] = {false};
	const char *p = v;
	for (;;) {
		size_t len = strcspn(p, ",+");
		int found = -1;
		for (int m = 0; m < UNLOCK_N_METHODS; m++)
			if (strlen(method_names[m]) == len && strncmp(p, method_names[m], len) == 0)
				found = m;
		if (found < 0)
			return fail(why, why_len,
				    "must list methods from tpm2, credential, key, keyfile and "
				    "passphrase, separated by commas");
		if (seen[found])
			return fail(why, why_len, "names a method twice");
		seen[found] = true;
		out[n++] = (enum unlock_method)found;
		if (!p[len])
			return n;
		p += len + 1;
	}
}

static int check_methods(const char *v, char *why, size_t why_len)
{
	enum unlock_method m[UNLOCK_N_METHODS];
	int r = unlock_methods_parse(v, m, why, why_len);
	return r < 0 ? r : 0;
}

static int check_tries(const char *v, char *why, size_t why_len)
{
	if (strlen(v) > 2 || !isdigit((unsigned char)v[0]) ||
	    (v[1] && !isdigit((unsigned char)v[1])) || atoi(v) < 1 || atoi(v) > 10)
		return fail(why, why_len, "must be a whole number from 1 to 10");
	return 0;
}

static int check_key(const char *v, char *why, size_t why_len)
{
	if (!*v)
		return fail(why, why_len, "is empty");
	if (strlen(v) > 512)
		return fail(why, why_len, "is longer than 512 bytes");
	return 0;
}

static int check_flag(const char *v, char *why, size_t why_len)
{
	static const char *const ok[] = {"1", "0", "yes", "no", "true", "false", "on", "off"};
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++)
		if (strcmp(v, ok[i]) == 0)
			return 0;
	return fail(why, why_len, "must be 1, 0, yes, no, true, false, on or off");
}

static int check_encrypted(const char *v, char *why, size_t why_len)
{
	if (strcmp(v, "auto") == 0 || check_flag(v, why, why_len) == 0)
		return 0;
	return fail(why, why_len, "must be auto, yes or no");
}

/* /dev/mapper/NAME, NAME as device-mapper allows it here: 1-127 of [A-Za-z0-9._-], not . or .. */
static int check_opened(const char *v, char *why, size_t why_len)
{
	static const char prefix[] = "/dev/mapper/";
	const char *name = v + sizeof(prefix) - 1;
	if (strncmp(v, prefix, sizeof(prefix) - 1) != 0 || !*name || strlen(name) > 127 ||
	    strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
	    strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
		strlen(name))
		return fail(
		    why, why_len,
		    "must be /dev/mapper/NAME (NAME: 1-127 letters, digits, '.', '_', '-')");
	return 0;
}

/* A PCR list as enroll-tpm2 --pcrs takes it ("7+15:sha256=HEX", "" for none). */
static int check_pcrs(const char *v, char *why, size_t why_len)
{
	struct pcr_spec spec;
	return pcr_spec_parse(v, &spec, why, why_len);
}

static int check_network(const char *v, char *why, size_t why_len)
{
	struct net_static n;
	return network_static_parse(v, &n, why, why_len);
}

static const struct vm_key known_keys[] = {
    {"hostname", VM_KEY_CONFIG, check_hostname},
    {"repo", VM_KEY_CONFIG, check_repo},
    {"branch", VM_KEY_CONFIG, check_branch},
    {"network_static", VM_KEY_CONFIG, check_network},
    {"persist", VM_KEY_CONTROL, check_device},
    {"persist.timeout", VM_KEY_CONTROL, check_timeout},
    {"persist.options", VM_KEY_CONTROL, check_mount_options},
    {"persist.encrypted", VM_KEY_CONTROL, check_encrypted},
    {"persist.opened", VM_KEY_CONTROL, check_opened},
    {"persist.provision", VM_KEY_FLAG, check_flag, true},
    {"persist.provision.pcrs", VM_KEY_CONTROL, check_pcrs, true},
    {"store", VM_KEY_CONTROL, check_store},
    {"luks.key", VM_KEY_SECRET, check_key},
    {"luks.keyfile", VM_KEY_CONTROL, check_abs_path},
    {"luks", VM_KEY_CONTROL, check_methods},
    {"luks.tries", VM_KEY_CONTROL, check_tries},
    {"luks.timeout", VM_KEY_CONTROL, check_timeout},
    {"luks.tpm2.timeout", VM_KEY_CONTROL, check_timeout},
    {"debug", VM_KEY_FLAG, check_flag},
};

/* Namespaces that belong to factory-init: an unknown key there is a typo, not stage-2 config. */
static const char *const reserved_prefixes[] = {"persist.", "luks.", "store."};

static const struct vm_key *find_key(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(known_keys); i++)
		if (strcmp(known_keys[i].name, name) == 0)
			return &known_keys[i];
	return NULL;
}

bool vm_key_from_credential(const char *name)
{
	const struct vm_key *k = find_key(name);
	return k && k->credential;
}

int vm_key_kind(const char *name, enum vm_key_kind *kind, char *why, size_t why_len)
{
	size_t n = strlen(name);
	if (n == 0 || n > VM_NAME_MAX)
		return fail(why, why_len, "key name must be 1-64 characters");
	for (const char *p = name; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
			return fail(why, why_len,
				    "key name may hold only letters, digits, '.', '_' and '-'");
	if (!isalnum((unsigned char)name[0]) || name[n - 1] == '.')
		return fail(why, why_len, "key name must start with a letter or digit");
	const struct vm_key *k = find_key(name);
	if (k) {
		*kind = k->kind;
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(reserved_prefixes); i++)
		if (str_has_prefix(name, reserved_prefixes[i]))
			return fail(why, why_len, "is not a key this version knows");
	*kind = VM_KEY_CONFIG;
	return 0;
}

int vm_key_check(const char *name, const char *value, char *why, size_t why_len)
{
	enum vm_key_kind kind;
	int r = vm_key_kind(name, &kind, why, why_len);
	if (r < 0)
		return r;
	if (strlen(value) > VM_VALUE_MAX)
		return fail(why, why_len, "value is longer than 1024 bytes");
	if (has_control_chars(value))
		return fail(why, why_len, "value contains control characters");
	const struct vm_key *k = find_key(name);
	return k && k->check ? k->check(value, why, why_len) : 0;
}

void value_preview(const char *value, char *out, size_t out_len)
{
	const size_t limit = 40;
	size_t o = 0, i = 0;
	if (out_len == 0)
		return;
	for (; value[i] && i < limit; i++) {
		unsigned char c = (unsigned char)value[i];
		char tmp[8];
		int w = (c < 0x20 || c == 0x7f || c == '\\')
			    ? snprintf(tmp, sizeof(tmp), "\\x%02x", c)
			    : snprintf(tmp, sizeof(tmp), "%c", c);
		if (o + (size_t)w + 4 >= out_len)
			break;
		memcpy(out + o, tmp, (size_t)w);
		o += (size_t)w;
	}
	if (value[i] && o + 4 < out_len) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

void config_warnf(config_warn_fn warn, void *ctx, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (warn)
		warn(ctx, msg);
}

int config_layer_from_json(const char *text, const char *origin, struct json_object **out,
			   struct json_object **control, config_warn_fn warn, void *ctx)
{
	*out = NULL;
	if (control)
		*control = NULL;
	enum json_tokener_error jerr;
	struct json_object *root = json_tokener_parse_verbose(text, &jerr);
	if (!root) {
		config_warnf(warn, ctx, "%s: not valid JSON (%s); ignoring it", origin,
			     json_tokener_error_desc(jerr));
		return -EBADMSG;
	}
	if (!json_object_is_type(root, json_type_object)) {
		config_warnf(warn, ctx, "%s: not a JSON object; ignoring it", origin);
		json_object_put(root);
		return -EBADMSG;
	}
	struct json_object *layer = json_object_new_object();
	struct json_object *ctl = control ? json_object_new_object() : NULL;
	if (!layer || (control && !ctl)) {
		json_object_put(root);
		json_object_put(layer);
		json_object_put(ctl);
		return -ENOMEM;
	}
	json_object_object_foreach(root, key, val)
	{
		char why[256], shown[96];
		const char *name = str_has_prefix(key, "vm.") ? key + 3 : key;
		enum vm_key_kind kind;
		value_preview(name, shown, sizeof(shown));
		if (vm_key_kind(name, &kind, why, sizeof(why)) < 0) {
			config_warnf(warn, ctx, "%s: vm.%s %s; ignored", origin, shown, why);
			continue;
		}
		if (kind == VM_KEY_SECRET) {
			config_warnf(
			    warn, ctx,
			    "%s: vm.%s holds key material, which does not belong in a config file "
			    "(use vm.luks.keyfile); ignored",
			    origin, name);
			continue;
		}
		if ((kind == VM_KEY_CONTROL || kind == VM_KEY_FLAG) && !ctl) {
			config_warnf(warn, ctx, "%s: vm.%s cannot be set here; ignored", origin,
				     name);
			continue;
		}
		enum json_type t = json_object_get_type(val);
		if (t != json_type_string && t != json_type_int && t != json_type_boolean) {
			config_warnf(warn, ctx,
				     "%s: vm.%s must be a string, number or boolean; ignored",
				     origin, name);
			continue;
		}
		const char *sval = json_object_get_string(val);
		if (t == json_type_boolean)
			sval = json_object_get_boolean(val) ? "1" : "0";
		if (vm_key_check(name, sval, why, sizeof(why)) < 0) {
			char vshown[96];
			value_preview(sval, vshown, sizeof(vshown));
			config_warnf(warn, ctx, "%s: vm.%s=\"%s\" %s; ignored", origin, name,
				     vshown, why);
			continue;
		}
		struct json_object *dst = kind == VM_KEY_CONFIG ? layer : ctl;
		json_object_object_add(dst, name, json_object_new_string(sval));
	}
	json_object_put(root);
	*out = layer;
	if (control)
		*control = ctl;
	return 0;
}

struct json_object *config_merge(struct json_object *const *layers, size_t n)
{
	struct json_object *merged = json_object_new_object();
	if (!merged)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (!layers[i])
			continue;
		json_object_object_foreach(layers[i], key, val)
		{
			json_object_object_add(merged, key, json_object_get(val));
		}
	}
	return merged;
}

char *config_to_string(struct json_object *obj)
{
	const char *s =
	    json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
						    JSON_C_TO_STRING_NOSLASHESCAPE);
	char *out;
	if (!s || asprintf(&out, "%s\n", s) < 0)
		return NULL;
	return out;
}
