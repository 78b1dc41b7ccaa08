/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "plan.h"
#include "cmdline.h"
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/*
 * Loaded in this order. dm_crypt needs xts (AES itself is built into common kernels, and naming
 * "aes" would pull aesni-intel, which fails on CPUs without AES-NI). libcryptsetup hashes in
 * userspace (nettle) but decrypts key slots through the kernel (AF_ALG skcipher). btrfs pulls
 * its dependencies and softdeps. The TPM drivers come early, so the device is there by the
 * time the unlock looks for it (Debian builds them in; NixOS's kernel has them as modules). A
 * module built into the kernel loads as a no-op.
 */
const char *const plan_modules[] = {
    "virtio_pci", "virtio_blk",	    "qemu_fw_cfg", "tpm_tis", "tpm_crb", "ext4",
    "af_alg",	  "algif_skcipher", "dm_crypt",	   "xts",     "btrfs",	 "overlay",
};
const size_t plan_n_modules = ARRAY_SIZE(plan_modules);

/* True when the space-separated word list has word. */
static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);
	for (const char *p = list; (p = strstr(p, word)); p += n)
		if ((p == list || p[-1] == ' ' || p[-1] == '\t') &&
		    (p[n] == '\0' || p[n] == ' ' || p[n] == '\t' || p[n] == '\n'))
			return true;
	return false;
}

/* Loaded first where the CPU can run it (see plan.h); the initrd carries it in any case. */
#define CPU_SHA256_MODULE "sha256_ssse3"

static size_t modules_list(bool with_cpu_module, const char **out, size_t max)
{
	size_t n = 0;
	if (with_cpu_module && max > 0)
		out[n++] = CPU_SHA256_MODULE;
	for (size_t i = 0; i < plan_n_modules && n < max; i++)
		out[n++] = plan_modules[i];
	return n;
}

size_t plan_modules_for_cpu(const char *cpu_flags, const char **out, size_t max)
{
	return modules_list(cpu_flags &&
				(has_word(cpu_flags, "ssse3") || has_word(cpu_flags, "avx") ||
				 has_word(cpu_flags, "avx2") || has_word(cpu_flags, "sha_ni")),
			    out, max);
}

size_t plan_initrd_modules(const char **out, size_t max)
{
	return modules_list(true, out, max);
}

bool plan_module_required(const char *name)
{
	static const char *const required[] = {"virtio_pci", "virtio_blk", "dm_crypt", "btrfs",
					       "overlay"};
	for (size_t i = 0; i < ARRAY_SIZE(required); i++)
		if (strcmp(name, required[i]) == 0)
			return true;
	return false;
}

const char *store_mode_name(enum store_mode m)
{
	return m == STORE_OVERLAY ? "overlay" : m == STORE_BIND ? "bind" : "off";
}

void plan_warn(struct plan *plan, const char *fmt, ...)
{
	if (plan->n_warnings >= PLAN_MAX_WARNINGS) {
		/* Full: the last slot gives up its warning to count it and the rest. */
		plan->n_warnings_dropped =
		    plan->n_warnings_dropped ? plan->n_warnings_dropped + 1 : 2;
		snprintf(plan->warnings[PLAN_MAX_WARNINGS - 1], sizeof(plan->warnings[0]),
			 "\xe2\x80\xa6 and %zu more warnings", plan->n_warnings_dropped);
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(plan->warnings[plan->n_warnings++], sizeof(plan->warnings[0]), fmt, ap);
	va_end(ap);
}

static void warn_cb(void *ctx, const char *message)
{
	plan_warn(ctx, "%s", message);
}

static void set_defaults(struct plan *p)
{
	strcpy(p->root, DEFAULT_ROOT);
	p->root_timeout_s = DEFAULT_ROOT_TIMEOUT_S;
	strcpy(p->init, DEFAULT_INIT);
	p->persist_kind = PERSIST_AUTO;
	strcpy(p->persist, "auto");
	p->persist_timeout_s = DEFAULT_PERSIST_TIMEOUT_S;
	strcpy(p->persist_options, DEFAULT_PERSIST_OPTIONS);
	p->store = STORE_OVERLAY;
	strcpy(p->keyfile, DEFAULT_KEYFILE);
	strcpy(p->provision_pcrs, DEFAULT_PROVISION_PCRS);
	for (int m = 0; m < UNLOCK_N_METHODS; m++)
		p->methods[m] = (enum unlock_method)m;
	p->n_methods = UNLOCK_N_METHODS;
	p->luks_tries = DEFAULT_LUKS_TRIES;
	p->luks_timeout_s = DEFAULT_LUKS_TIMEOUT_S;
	p->tpm2_timeout_s = DEFAULT_TPM2_TIMEOUT_S;
}

static bool flag_value(const char *v)
{
	return !v || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 ||
	       strcmp(v, "on") == 0;
}

/* Applies one validated control key (name without "vm."). */
static void apply_control(struct plan *p, const char *name, const char *value)
{
	if (strcmp(name, "persist") == 0) {
		strscpy(p->persist, value, sizeof(p->persist));
		p->persist_kind = strcmp(value, "auto") == 0 ? PERSIST_AUTO
				  : value[0] == '/'	     ? PERSIST_PATH
							     : PERSIST_TAG;
	} else if (strcmp(name, "persist.timeout") == 0) {
		p->persist_timeout_s = (unsigned)atoi(value);
	} else if (strcmp(name, "persist.encrypted") == 0) {
		p->persist_encrypted = strcmp(value, "auto") == 0 ? ENCRYPTED_AUTO
				       : flag_value(value)	  ? ENCRYPTED_YES
								  : ENCRYPTED_NO;
	} else if (strcmp(name, "persist.opened") == 0) {
		strscpy(p->persist_opened, value, sizeof(p->persist_opened));
	} else if (strcmp(name, "persist.provision") == 0) {
		p->provision = flag_value(value);
	} else if (strcmp(name, "persist.provision.pcrs") == 0) {
		strscpy(p->provision_pcrs, value, sizeof(p->provision_pcrs));
	} else if (strcmp(name, "persist.options") == 0) {
		/* Ours first: a later option wins in Btrfs, so the user can still override. */
		if (*value)
			snprintf(p->persist_options, sizeof(p->persist_options), "%s,%s",
				 DEFAULT_PERSIST_OPTIONS, value);
		else
			strcpy(p->persist_options, DEFAULT_PERSIST_OPTIONS);
	} else if (strcmp(name, "store") == 0) {
		p->store = strcmp(value, "off") == 0	? STORE_OFF
			   : strcmp(value, "bind") == 0 ? STORE_BIND
							: STORE_OVERLAY;
	} else if (strcmp(name, "luks.keyfile") == 0) {
		strscpy(p->keyfile, value, sizeof(p->keyfile));
		p->keyfile_explicit = true;
	} else if (strcmp(name, "luks") == 0) {
		char why[160];
		int n = unlock_methods_parse(value, p->methods, why, sizeof(why));
		p->n_methods = n > 0 ? (size_t)n : p->n_methods;
		explicit_bzero(why, sizeof(why));
	} else if (strcmp(name, "luks.tries") == 0) {
		p->luks_tries = (unsigned)atoi(value);
	} else if (strcmp(name, "luks.timeout") == 0) {
		p->luks_timeout_s = (unsigned)atoi(value);
	} else if (strcmp(name, "luks.tpm2.timeout") == 0) {
		p->tpm2_timeout_s = (unsigned)atoi(value);
	} else if (strcmp(name, "debug") == 0) {
		p->debug = flag_value(value);
	}
}

static void apply_embedded(struct plan *p, const char *text)
{
	struct json_object *control = NULL;
	if (config_layer_from_json(text, EMBEDDED_CONFIG_PATH, &p->config_embedded, &control,
				   warn_cb, p) < 0)
		return;
	json_object_object_foreach(control, key, val)
	{
		apply_control(p, key, json_object_get_string(val));
	}
	json_object_put(control);
}

static bool is_device_spec(const char *v)
{
	char why[128];
	bool ok = vm_key_check("persist", v, why, sizeof(why)) == 0 && strcmp(v, "auto") != 0;
	explicit_bzero(why, sizeof(why));
	return ok;
}

/* Parses the kernel's panic= (a signed whole number of seconds). */
static bool parse_int(const char *v, int *out)
{
	if (!v || !*v)
		return false;
	const char *p = v;
	if (*p == '-')
		p++;
	if (!*p || strlen(p) > 6)
		return false;
	for (; *p; p++)
		if (!isdigit((unsigned char)*p))
			return false;
	*out = atoi(v);
	return true;
}

/* A control key from the command line: applied, and remembered when a credential could set it. */
static void apply_cmdline_control(struct plan *p, const char *name, const char *value)
{
	apply_control(p, name, value);
	if (vm_key_from_credential(name) && p->n_cmdline_controls < ARRAY_SIZE(p->cmdline_controls))
		strscpy(p->cmdline_controls[p->n_cmdline_controls++], name,
			sizeof(p->cmdline_controls[0]));
}

static void apply_vm_key(struct plan *p, const char *name, const char *value)
{
	char why[256], shown[96];
	enum vm_key_kind kind;
	value_preview(name, shown, sizeof(shown));
	if (vm_key_kind(name, &kind, why, sizeof(why)) < 0) {
		plan_warn(p, "vm.%s %s; ignored", shown, why);
		goto wipe;
	}
	if (!value) {
		if (kind == VM_KEY_FLAG) {
			apply_cmdline_control(p, name, NULL);
			goto wipe;
		}
		plan_warn(p, "vm.%s needs a value (vm.%s=...); ignored", name, name);
		goto wipe;
	}
	if (vm_key_check(name, value, why, sizeof(why)) < 0) {
		if (kind == VM_KEY_SECRET) {
			plan_warn(p, "vm.%s (value not shown) %s; ignored", name, why);
			goto wipe;
		}
		value_preview(value, shown, sizeof(shown));
		plan_warn(p, "vm.%s=\"%s\" %s; ignored", name, shown, why);
		goto wipe;
	}
	switch (kind) {
	case VM_KEY_SECRET:
		if (secret_set(&p->key, value, strlen(value)) < 0)
			plan_warn(p, "vm.%s: out of memory; ignored", name);
		break;
	case VM_KEY_CONTROL:
	case VM_KEY_FLAG:
		apply_cmdline_control(p, name, value);
		break;
	case VM_KEY_CONFIG:
		json_object_object_add(p->config_cmdline, name, json_object_new_string(value));
		break;
	}
wipe:
	/* Bits of the command line (a reason may quote the value): wipe them. */
	explicit_bzero(why, sizeof(why));
	explicit_bzero(shown, sizeof(shown));
}

static void apply_arg(struct plan *p, const char *key, const char *value)
{
	if (str_has_prefix(key, "vm.")) {
		apply_vm_key(p, key + 3, value);
		return;
	}
	char shown[96], why[128];
	if (strcmp(key, "root") == 0) {
		if (value && is_device_spec(value))
			strscpy(p->root, value, sizeof(p->root));
		else {
			value_preview(value ? value : "", shown, sizeof(shown));
			plan_warn(p,
				  "root=\"%s\" is not a /dev path or LABEL=/UUID=/PARTUUID=/"
				  "PARTLABEL=; using " DEFAULT_ROOT,
				  shown);
			strcpy(p->root, DEFAULT_ROOT);
		}
	} else if (strcmp(key, "rootfstype") == 0) {
		bool ok = value && *value && strlen(value) < sizeof(p->rootfstype);
		for (const char *c = value; ok && *c; c++)
			ok = isalnum((unsigned char)*c) || *c == '_' || *c == '.';
		if (ok)
			strcpy(p->rootfstype, value);
		else {
			value_preview(value ? value : "", shown, sizeof(shown));
			plan_warn(p, "rootfstype=\"%s\" is not a file system type; probing instead",
				  shown);
			p->rootfstype[0] = '\0';
		}
	} else if (strcmp(key, "rootflags") == 0) {
		if (value && vm_key_check("persist.options", value, why, sizeof(why)) == 0)
			strscpy(p->rootflags, value, sizeof(p->rootflags));
		else {
			value_preview(value ? value : "", shown, sizeof(shown));
			plan_warn(p, "rootflags=\"%s\" %s; ignored", shown,
				  value ? why : "needs a value");
		}
	} else if (strcmp(key, "ro") == 0 && !value) {
		p->root_rw = false;
	} else if (strcmp(key, "rw") == 0 && !value) {
		p->root_rw = true;
	} else if (strcmp(key, "init") == 0) {
		if (value && vm_key_check("luks.keyfile", value, why, sizeof(why)) == 0)
			strscpy(p->init, value, sizeof(p->init));
		else {
			value_preview(value ? value : "", shown, sizeof(shown));
			plan_warn(p, "init=\"%s\" is not an absolute path; using " DEFAULT_INIT,
				  shown);
		}
	} else if (strcmp(key, "panic") == 0) {
		int v;
		if (parse_int(value, &v))
			p->panic_s = v;
		else {
			value_preview(value ? value : "", shown, sizeof(shown));
			plan_warn(p, "panic=\"%s\" is not a whole number; ignored", shown);
		}
	} else if (strcmp(key, "quiet") == 0 && !value) {
		p->quiet = true;
	} else if (strcmp(key, "rootwait") == 0) {
		/* Bare: wait (nearly) for ever, as the kernel does; =N: N seconds (kernel >= 6.5).
		 */
		if (!value)
			p->root_timeout_s = 3600;
		else if (vm_key_check("persist.timeout", value, why, sizeof(why)) == 0)
			p->root_timeout_s = (unsigned)atoi(value);
		else {
			value_preview(value, shown, sizeof(shown));
			plan_warn(p, "rootwait=\"%s\" %s; ignored", shown, why);
		}
	}
	/* Bits of the command line: wipe them. */
	explicit_bzero(shown, sizeof(shown));
	explicit_bzero(why, sizeof(why));
}

int plan_build(const char *cmdline_text, const char *embedded_config, struct plan *p)
{
	memset(p, 0, sizeof(*p));
	set_defaults(p);
	p->config_cmdline = json_object_new_object();
	if (!p->config_cmdline)
		return -ENOMEM;

	if (embedded_config)
		apply_embedded(p, embedded_config);

	struct cmdline c;
	int r = cmdline_parse(cmdline_text ? cmdline_text : "", &c);
	if (r < 0) {
		plan_free(p);
		return r;
	}
	for (size_t i = 0; i < c.n; i++)
		apply_arg(p, c.args[i].key, c.args[i].value);
	p->import_credentials = credentials_import_enabled(&c);
	if (p->import_credentials &&
	    credentials_parse_cmdline(&c, &p->creds, warn_cb, p) == -ENOMEM) {
		cmdline_free(&c);
		plan_free(p);
		return -ENOMEM;
	}
	cmdline_free(&c); /* the one parse of the command line, wiped */
	/* How the root is found and mounted. */
	p->root_kind = p->root[0] == '/' ? PERSIST_PATH : PERSIST_TAG;
	snprintf(p->root_options, sizeof(p->root_options), "%s%s%s", p->root_rw ? "rw" : "ro",
		 *p->rootflags ? "," : "", p->rootflags);
	/* Prompts (passphrase, TPM2 PIN) only where vm.luks= lists the passphrase. */
	p->may_prompt = false;
	for (size_t i = 0; i < p->n_methods; i++)
		p->may_prompt = p->may_prompt || p->methods[i] == UNLOCK_PASSPHRASE;
	/* A label is easy to forge on a stranger's disk; a named device is the user's choice. */
	p->persist_require_luks =
	    p->persist_encrypted == ENCRYPTED_YES ||
	    (p->persist_encrypted == ENCRYPTED_AUTO && p->persist_kind == PERSIST_AUTO);
	if (p->persist_opened[0]) {
		/* Another program unlocked it: it must be a LUKS mapping unless told otherwise,
		 * and nothing is unlocked (or asked) here, so the two never fight over it. */
		p->persist_require_luks = p->persist_encrypted != ENCRYPTED_NO;
		p->may_prompt = false;
		if (p->persist_kind != PERSIST_AUTO)
			plan_warn(p,
				  "vm.persist=%s is ignored: vm.persist.opened=%s names /persist's "
				  "device",
				  p->persist, p->persist_opened);
	}
	/* Whatever unlocks the disk, a key on the command line is readable in stage 2, as a
	 * credential given there is (systemd.set_credential=vm.luks.key:...). */
	p->key_in_cmdline = p->key.data || credentials_find(&p->creds, "vm.luks.key");
	return 0;
}

static bool on_cmdline(const struct plan *p, const char *name)
{
	for (size_t i = 0; i < p->n_cmdline_controls; i++)
		if (strcmp(p->cmdline_controls[i], name) == 0)
			return true;
	return false;
}

void plan_apply_credentials(struct plan *p, struct json_object *control, char *applied,
			    size_t applied_len, char *overridden, size_t overridden_len)
{
	size_t na = 0, no = 0;
	applied[0] = overridden[0] = '\0';
	if (!control)
		return;
	json_object_object_foreach(control, key, val)
	{
		const char *v = json_object_get_string(val);
		/* credentials_config_layer validated both; a key it should have kept is skipped. */
		if (!vm_key_from_credential(key) || !v)
			continue;
		if (on_cmdline(p, key)) {
			if (no < overridden_len)
				no += (size_t)snprintf(overridden + no, overridden_len - no,
						       "%svm.%s", no ? ", " : "", key);
			continue;
		}
		apply_control(p, key, v);
		if (na < applied_len)
			na += (size_t)snprintf(applied + na, applied_len - na, "%svm.%s=%s",
					       na ? ", " : "", key, v);
	}
}

void plan_free(struct plan *p)
{
	secret_free(&p->key);
	credentials_free(&p->creds);
	json_object_put(p->config_embedded);
	json_object_put(p->config_cmdline);
	/* The warnings quote command-line values. */
	explicit_bzero(p, sizeof(*p));
}

static const char *persist_kind_name(enum persist_kind k)
{
	switch (k) {
	case PERSIST_AUTO:
		return "auto";
	case PERSIST_PATH:
		return "path";
	case PERSIST_TAG:
		return "tag";
	}
	return "?";
}

char *plan_to_json(const struct plan *p)
{
	return plan_to_json_for(p, NULL);
}

static struct json_object *module_names(const struct module_resolution *res, enum module_kind kind)
{
	struct json_object *a = json_object_new_array();
	for (size_t i = 0; i < res->n; i++)
		if (res->kinds[i] == kind)
			json_object_array_add(a, json_object_new_string(res->names[i]));
	return a;
}

char *plan_to_json_for(const struct plan *p, const struct module_resolution *res)
{
	struct json_object *o = json_object_new_object();
	if (!o)
		return NULL;
	struct json_object *root = json_object_new_object();
	json_object_object_add(root, "device", json_object_new_string(p->root));
	json_object_object_add(root, "fstype",
			       json_object_new_string(*p->rootfstype ? p->rootfstype : "auto"));
	json_object_object_add(root, "flags", json_object_new_string(p->rootflags));
	json_object_object_add(root, "read_write", json_object_new_boolean(p->root_rw));
	json_object_object_add(root, "options", json_object_new_string(p->root_options));
	json_object_object_add(root, "timeout_s", json_object_new_int((int)p->root_timeout_s));
	json_object_object_add(o, "root", root);
	json_object_object_add(o, "init", json_object_new_string(p->init));
	json_object_object_add(o, "panic_s", json_object_new_int(p->panic_s));
	json_object_object_add(o, "quiet", json_object_new_boolean(p->quiet));
	json_object_object_add(o, "debug", json_object_new_boolean(p->debug));

	struct json_object *persist = json_object_new_object();
	json_object_object_add(persist, "device", json_object_new_string(p->persist));
	json_object_object_add(persist, "match",
			       json_object_new_string(persist_kind_name(p->persist_kind)));
	json_object_object_add(persist, "timeout_s",
			       json_object_new_int((int)p->persist_timeout_s));
	json_object_object_add(persist, "options", json_object_new_string(p->persist_options));
	json_object_object_add(persist, "require_luks",
			       json_object_new_boolean(p->persist_require_luks));
	json_object_object_add(o, "persist", persist);
	json_object_object_add(o, "store", json_object_new_string(store_mode_name(p->store)));

	struct json_object *unlock = json_object_new_array();
	for (size_t i = 0; i < p->n_methods; i++)
		json_object_array_add(unlock,
				      json_object_new_string(unlock_method_name(p->methods[i])));
	json_object_object_add(o, "unlock_methods", unlock);
	json_object_object_add(o, "key_on_cmdline", json_object_new_boolean(p->key_in_cmdline));
	json_object_object_add(o, "keyfile", json_object_new_string(p->keyfile));
	json_object_object_add(o, "luks_tries", json_object_new_int((int)p->luks_tries));
	json_object_object_add(o, "luks_timeout_s", json_object_new_int((int)p->luks_timeout_s));
	json_object_object_add(o, "tpm2_timeout_s", json_object_new_int((int)p->tpm2_timeout_s));
	json_object_object_add(o, "may_prompt", json_object_new_boolean(p->may_prompt));
	json_object_object_add(o, "provision", json_object_new_boolean(p->provision));
	json_object_object_add(o, "provision_pcrs", json_object_new_string(p->provision_pcrs));
	json_object_object_add(o, "persist_opened",
			       p->persist_opened[0] ? json_object_new_string(p->persist_opened)
						    : NULL);
	json_object_object_add(o, "import_credentials",
			       json_object_new_boolean(p->import_credentials));
	json_object_object_add(o, "read_credentials_dir",
			       json_object_new_boolean(p->read_credentials_dir));

	/* Everything the initrd must carry; CPU-specific modules load only where the CPU can. */
	if (res) {
		json_object_object_add(o, "kernel", json_object_new_string(res->kver));
		json_object_object_add(o, "modules", module_names(res, MODULE_LOADABLE));
		json_object_object_add(o, "modules_builtin", module_names(res, MODULE_BUILTIN));
		json_object_object_add(o, "modules_absent", module_names(res, MODULE_ABSENT));
	} else {
		const char *all[PLAN_MAX_MODULES];
		size_t n_all = plan_initrd_modules(all, ARRAY_SIZE(all));
		struct json_object *mods = json_object_new_array();
		for (size_t i = 0; i < n_all; i++)
			json_object_array_add(mods, json_object_new_string(all[i]));
		json_object_object_add(o, "modules", mods);
	}

	struct json_object *layers[] = {p->config_embedded, p->config_cmdline};
	json_object_object_add(o, "config", config_merge(layers, ARRAY_SIZE(layers)));

	struct json_object *warn = json_object_new_array();
	for (size_t i = 0; i < p->n_warnings; i++)
		json_object_array_add(warn, json_object_new_string(p->warnings[i]));
	json_object_object_add(o, "warnings", warn);

	char *s = config_to_string(o);
	json_object_put(o);
	return s;
}

void plan_set_mode(struct plan *p, bool helper)
{
	/* Only inside another stage 1 has a systemd already filled a credentials directory. */
	p->helper = helper;
	p->read_credentials_dir = helper && p->import_credentials;
}
