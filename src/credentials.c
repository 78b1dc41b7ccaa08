/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "credentials.h"
#include "base64.h"
#include "cmdline.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define SMBIOS_PREFIX_TEXT "io.systemd.credential:"
#define SMBIOS_PREFIX_BINARY "io.systemd.credential.binary:"
#define FW_CFG_DIR "/sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials"
#define DMI_DIR "/sys/firmware/dmi/entries"
#define SMBIOS_TYPE_OEM_STRINGS 11
#define SMBIOS_HEADER_LEN 5			/* type, length, handle (2), string count */
#define SMBIOS_RAW_MAX (CRED_TOTAL_MAX + 4096u) /* one structure: its strings and a header */

/* A printable rendering of a name for messages: bytes outside 0x20-0x7e (and '\') escaped. */
const char *credentials_shown(const char *s, size_t n, char *out, size_t out_len)
{
	const size_t limit = 64;
	size_t o = 0, i = 0;
	for (; i < n && i < limit; i++) {
		unsigned char c = (unsigned char)s[i];
		bool plain = c >= 0x20 && c < 0x7f && c != '\\';
		if (o + (plain ? 1 : 4) + 4 >= out_len)
			break;
		if (plain)
			out[o++] = (char)c;
		else
			o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
	}
	if (i < n && o + 4 <= out_len) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

/* Buffers that held (or may hold) a value: locked where possible, wiped before release. */
void *credentials_locked_alloc(size_t n)
{
	void *p = calloc(1, n);
	if (p)
		(void)mlock(p, n);
	return p;
}

void credentials_locked_free(void *p, size_t n)
{
	if (!p)
		return;
	explicit_bzero(p, n);
	munlock(p, n);
	free(p);
}

const char *credential_source_name(enum credential_source source)
{
	switch (source) {
	case CRED_SOURCE_DIRECTORY:
		return "directory";
	case CRED_SOURCE_FW_CFG:
		return "fw_cfg";
	case CRED_SOURCE_SMBIOS:
		return "smbios";
	case CRED_SOURCE_CMDLINE:
		return "cmdline";
	}
	return "unknown";
}

bool credential_name_valid(const char *name)
{
	size_t n = strnlen(name, CRED_NAME_MAX);
	if (n == 0 || n >= CRED_NAME_MAX)
		return false;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return false;
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '/' || *p == ':')
			return false;
	return true;
}

const struct credential *credentials_find(const struct credentials *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (strcmp(set->items[i].name, name) == 0)
			return &set->items[i];
	return NULL;
}

/* The one warning for a name credential_name_valid refuses (name: len bytes, maybe no NUL). */
void credentials_warn_bad_name(const char *name, size_t len, enum credential_source source,
			       config_warn_fn warn, void *ctx)
{
	char nm[300];
	config_warnf(warn, ctx,
		     "credential \"%s\" from %s: invalid name (1-255 printable ASCII characters, "
		     "no '/' or ':', not . or ..); ignored",
		     credentials_shown(name, len, nm, sizeof(nm)), credential_source_name(source));
}

int credentials_add(struct credentials *set, const char *name, const void *value, size_t len,
		    enum credential_source source, config_warn_fn warn, void *ctx)
{
	const char *src = credential_source_name(source);
	char nm[300];
	credentials_shown(name, strnlen(name, CRED_NAME_MAX + 1), nm, sizeof(nm));
	if (!credential_name_valid(name)) {
		credentials_warn_bad_name(name, strnlen(name, CRED_NAME_MAX + 1), source, warn,
					  ctx);
		return -EINVAL;
	}
	if (len > CRED_VALUE_MAX) {
		config_warnf(warn, ctx,
			     "credential %s from %s: value of %zu bytes is over %u; ignored", nm,
			     src, len, CRED_VALUE_MAX);
		return -EFBIG;
	}
	if (!value)
		value = "";
	struct credential *old = (struct credential *)credentials_find(set, name);
	if (old) {
		if (old->source <= source) {
			config_warnf(warn, ctx,
				     "credential %s from %s ignored: already set from %s", nm, src,
				     credential_source_name(old->source));
			return 0;
		}
		if (set->total - old->value.len + len > CRED_TOTAL_MAX) {
			config_warnf(
			    warn, ctx,
			    "credential %s from %s: all credentials together would be over %u "
			    "bytes; ignored",
			    nm, src, CRED_TOTAL_MAX);
			return -EFBIG;
		}
		struct secret fresh = {0};
		if (secret_set(&fresh, value, len) < 0)
			return -ENOMEM;
		config_warnf(warn, ctx, "credential %s from %s overrides the one from %s", nm, src,
			     credential_source_name(old->source));
		set->total = set->total - old->value.len + len;
		secret_free(&old->value);
		old->value = fresh;
		old->source = source;
		return 1;
	}
	if (set->n >= CRED_COUNT_MAX) {
		config_warnf(warn, ctx, "credential %s from %s: more than %d credentials; ignored",
			     nm, src, CRED_COUNT_MAX);
		return -E2BIG;
	}
	if (set->total + len > CRED_TOTAL_MAX) {
		config_warnf(
		    warn, ctx,
		    "credential %s from %s: all credentials together would be over %u bytes; "
		    "ignored",
		    nm, src, CRED_TOTAL_MAX);
		return -EFBIG;
	}
	struct credential *items = realloc(set->items, (set->n + 1) * sizeof(*items));
	if (!items)
		return -ENOMEM;
	set->items = items;
	struct credential *c = &items[set->n];
	memset(c, 0, sizeof(*c));
	if (secret_set(&c->value, value, len) < 0)
		return -ENOMEM;
	memcpy(c->name, name, strlen(name) + 1);
	c->source = source;
	set->n++;
	set->total += len;
	return 1;
}

void credentials_free(struct credentials *set)
{
	for (size_t i = 0; i < set->n; i++)
		secret_free(&set->items[i].value);
	free(set->items);
	memset(set, 0, sizeof(*set));
}

/* Adds name (n bytes, not NUL-terminated) with a text or Base64 value. -ENOMEM only is fatal. */
static int add_counted(struct credentials *set, const char *name, size_t name_len,
		       const char *value, size_t value_len, bool binary,
		       enum credential_source source, config_warn_fn warn, void *ctx)
{
	const char *src = credential_source_name(source);
	char nm[300];
	if (name_len == 0 || name_len >= CRED_NAME_MAX || memchr(name, '\0', name_len)) {
		credentials_warn_bad_name(name, name_len, source, warn, ctx);
		return 0;
	}
	char cname[CRED_NAME_MAX];
	memcpy(cname, name, name_len);
	cname[name_len] = '\0';
	int r;
	if (!binary) {
		r = credentials_add(set, cname, value, value_len, source, warn, ctx);
		return r == -ENOMEM ? r : 0;
	}
	if (!credential_name_valid(cname)) {
		credentials_warn_bad_name(name, name_len, source, warn, ctx);
		return 0;
	}
	size_t cap = value_len / 4 * 3 + 3;
	uint8_t *buf = credentials_locked_alloc(cap);
	if (!buf)
		return -ENOMEM;
	ssize_t n = base64_decode(value, value_len, buf, cap);
	if (n < 0) {
		config_warnf(warn, ctx, "credential %s from %s: value is not valid Base64; ignored",
			     credentials_shown(cname, name_len, nm, sizeof(nm)), src);
		r = 0;
	} else {
		r = credentials_add(set, cname, buf, (size_t)n, source, warn, ctx);
		r = r == -ENOMEM ? r : 0;
	}
	credentials_locked_free(buf, cap);
	return r;
}

static int parse_smbios_string(const char *s, size_t len, unsigned index, struct credentials *out,
			       config_warn_fn warn, void *ctx)
{
	bool binary;
	size_t plen;
	/* s is NUL-terminated at s[len]. */
	if (str_has_prefix(s, SMBIOS_PREFIX_TEXT)) {
		binary = false;
		plen = strlen(SMBIOS_PREFIX_TEXT);
	} else if (str_has_prefix(s, SMBIOS_PREFIX_BINARY)) {
		binary = true;
		plen = strlen(SMBIOS_PREFIX_BINARY);
	} else {
		return 0; /* some other OEM string */
	}
	const char *rest = s + plen;
	size_t rlen = len - plen;
	const char *eq = memchr(rest, '=', rlen);
	if (!eq) {
		config_warnf(warn, ctx,
			     "SMBIOS OEM string %u: credential lacks '=' after its name; ignored",
			     index);
		return 0;
	}
	size_t nlen = (size_t)(eq - rest);
	return add_counted(out, rest, nlen, eq + 1, rlen - nlen - 1, binary, CRED_SOURCE_SMBIOS,
			   warn, ctx);
}

int credentials_parse_smbios_raw(const uint8_t *buf, size_t len, struct credentials *out,
				 config_warn_fn warn, void *ctx)
{
	if (!buf || len < SMBIOS_HEADER_LEN) {
		config_warnf(warn, ctx, "SMBIOS structure of %zu bytes is too short; ignored", len);
		return -EBADMSG;
	}
	if (buf[0] != SMBIOS_TYPE_OEM_STRINGS) {
		config_warnf(warn, ctx,
			     "SMBIOS structure has type %u, not 11 (OEM strings); ignored", buf[0]);
		return -EBADMSG;
	}
	size_t hdr = buf[1];
	if (hdr < SMBIOS_HEADER_LEN || hdr > len) {
		config_warnf(
		    warn, ctx,
		    "SMBIOS type 11 structure has a formatted area of %zu bytes in %zu; ignored",
		    hdr, len);
		return -EBADMSG;
	}
	const char *base = (const char *)buf;
	size_t p = hdr;
	unsigned index = 1; /* SMBIOS numbers strings from 1 */
	while (p < len) {
		const char *s = base + p;
		const char *nul = memchr(s, '\0', len - p);
		if (!nul) {
			config_warnf(
			    warn, ctx,
			    "SMBIOS OEM string %u is cut off (no terminating NUL); ignored", index);
			break;
		}
		size_t slen = (size_t)(nul - s);
		if (slen == 0)
			break; /* the empty string that ends the string set */
		int r = parse_smbios_string(s, slen, index, out, warn, ctx);
		if (r < 0)
			return r;
		p += slen + 1;
		index++;
	}
	return 0;
}

/* The kernel command line key a equals b, '-' and '_' counting as the same (systemd's rule). */
static bool cmdline_key_eq(const char *a, const char *b)
{
	for (;; a++, b++) {
		char x = *a == '-' ? '_' : *a, y = *b == '-' ? '_' : *b;
		if (x != y)
			return false;
		if (!x)
			return true;
	}
}

int credentials_parse_cmdline(const struct cmdline *c, struct credentials *out, config_warn_fn warn,
			      void *ctx)
{
	int r = 0;
	for (size_t i = 0; i < c->n && r >= 0; i++) {
		const struct cmdline_arg *a = &c->args[i];
		bool binary;
		if (cmdline_key_eq(a->key, "systemd.set_credential"))
			binary = false;
		else if (cmdline_key_eq(a->key, "systemd.set_credential_binary"))
			binary = true;
		else
			continue;
		const char *colon = a->value ? strchr(a->value, ':') : NULL;
		if (!colon) {
			config_warnf(warn, ctx, "%s= lacks the ':' between name and value; ignored",
				     a->key);
			continue;
		}
		r = add_counted(out, a->value, (size_t)(colon - a->value), colon + 1,
				strlen(colon + 1), binary, CRED_SOURCE_CMDLINE, warn, ctx);
	}
	return r;
}

static int parse_bool(const char *v)
{
	static const char *const yes[] = {"1", "yes", "y", "true", "t", "on"};
	static const char *const no[] = {"0", "no", "n", "false", "f", "off"};
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++)
		if (strcasecmp(v, yes[i]) == 0)
			return 1;
	for (size_t i = 0; i < ARRAY_SIZE(no); i++)
		if (strcasecmp(v, no[i]) == 0)
			return 0;
	return -EINVAL;
}

bool credentials_import_enabled(const struct cmdline *c)
{
	bool enabled = true;
	for (size_t i = 0; i < c->n; i++) {
		if (!cmdline_key_eq(c->args[i].key, "systemd.import_credentials"))
			continue;
		/* A bare word means true; an unparsable value leaves the setting as it was. */
		int b = c->args[i].value ? parse_bool(c->args[i].value) : 1;
		if (b >= 0)
			enabled = b;
	}
	return enabled;
}

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i - 1 < k)
			return false;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += k + 1;
	}
	return true;
}

int credentials_config_layer(const struct credentials *set, struct json_object **out,
			     struct json_object **control, config_warn_fn warn, void *ctx)
{
	*out = NULL;
	if (control)
		*control = NULL;
	struct json_object *layer = json_object_new_object();
	struct json_object *ctl = control ? json_object_new_object() : NULL;
	if (!layer || (control && !ctl)) {
		json_object_put(layer);
		json_object_put(ctl);
		return -ENOMEM;
	}
	for (size_t i = 0; i < set->n; i++) {
		const struct credential *c = &set->items[i];
		if (!str_has_prefix(c->name, "vm."))
			continue; /* for stage 2's systemd */
		const char *key = c->name + 3;
		const char *src = credential_source_name(c->source);
		char nm[300], why[256];
		credentials_shown(c->name, strlen(c->name), nm, sizeof(nm));
		enum vm_key_kind kind;
		if (vm_key_kind(key, &kind, why, sizeof(why)) < 0) {
			config_warnf(warn, ctx, "credential %s from %s: %s; ignored", nm, src, why);
			continue;
		}
		if (kind == VM_KEY_SECRET)
			continue; /* the caller takes it with credentials_find */
		if ((kind == VM_KEY_CONTROL || kind == VM_KEY_FLAG) &&
		    (!ctl || !vm_key_from_credential(key))) {
			config_warnf(
			    warn, ctx,
			    "credential %s from %s: credentials cannot set this key; ignored", nm,
			    src);
			continue;
		}
		size_t len = c->value.len;
		if (memchr(c->value.data, '\0', len)) {
			config_warnf(warn, ctx,
				     "credential %s from %s: value is binary, not text; ignored",
				     nm, src);
			continue;
		}
		if (len > 0 && c->value.data[len - 1] == '\n')
			len--;
		if (len > 0 && c->value.data[len - 1] == '\r' && len < c->value.len)
			len--;
		if (len > VM_VALUE_MAX) {
			config_warnf(
			    warn, ctx,
			    "credential %s from %s: value is longer than %d bytes; ignored", nm,
			    src, VM_VALUE_MAX);
			continue;
		}
		char text[VM_VALUE_MAX + 1];
		memcpy(text, c->value.data, len);
		text[len] = '\0';
		if (!utf8_valid((const unsigned char *)text, len)) {
			config_warnf(warn, ctx,
				     "credential %s from %s: value is not valid UTF-8; ignored", nm,
				     src);
		} else if (has_control_chars(text)) {
			config_warnf(
			    warn, ctx,
			    "credential %s from %s: value contains control characters; ignored", nm,
			    src);
		} else if (vm_key_check(key, text, why, sizeof(why)) < 0) {
			config_warnf(warn, ctx, "credential %s from %s: value %s; ignored", nm, src,
				     why);
		} else {
			struct json_object *v = json_object_new_string(text);
			struct json_object *dst = kind == VM_KEY_CONFIG ? layer : ctl;
			if (!v || json_object_object_add(dst, key, v) < 0) {
				json_object_put(v);
				explicit_bzero(text, sizeof(text));
				json_object_put(layer);
				json_object_put(ctl);
				return -ENOMEM;
			}
		}
		explicit_bzero(text, sizeof(text));
	}
	*out = layer;
	if (control)
		*control = ctl;
	return 0;
}
