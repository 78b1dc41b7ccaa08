/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

static const char *cfg(const struct plan *p, const char *key)
{
	struct json_object *v = json_object_object_get(p->config_cmdline, key);
	return v ? json_object_get_string(v) : NULL;
}

static bool has_warning(const struct plan *p, const char *needle)
{
	for (size_t i = 0; i < p->n_warnings; i++)
		if (strstr(p->warnings[i], needle))
			return true;
	return false;
}

static void test_defaults(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("", NULL, &p), 0);
	assert_string_equal(p.root, DEFAULT_ROOT);
	assert_string_equal(p.init, DEFAULT_INIT);
	assert_int_equal(p.persist_kind, PERSIST_AUTO);
	assert_int_equal(p.persist_timeout_s, DEFAULT_PERSIST_TIMEOUT_S);
	assert_string_equal(p.persist_options, "compress=zstd");
	assert_int_equal(p.store, STORE_OVERLAY);
	assert_false(p.root_rw);
	assert_null(p.key.data);
	assert_string_equal(p.keyfile, DEFAULT_KEYFILE);
	assert_false(p.keyfile_explicit);
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
}

static void test_full_line(void **state)
{
	(void)state;
	struct plan p;
	const char *line = "BOOT_IMAGE=/k root=LABEL=factory rootfstype=ext4 rootflags=noatime rw "
			   "init=/nix/store/abc-nixos/init panic=-1 quiet vm.debug "
			   "vm.persist=UUID=1234-abcd vm.persist.timeout=5 "
			   "vm.persist.options=noatime vm.store=off vm.luks.key=s3cret "
			   "vm.luks.keyfile=/etc/k vm.hostname=web-1 vm.repo=git@h:r.git "
			   "vm.branch=main vm.custom.thing=\"a b\" virtio_blk.foo=1 -- single";
	assert_int_equal(plan_build(line, NULL, &p), 0);
	assert_string_equal(p.root, "LABEL=factory");
	assert_string_equal(p.rootfstype, "ext4");
	assert_string_equal(p.rootflags, "noatime");
	assert_true(p.root_rw);
	assert_string_equal(p.init, "/nix/store/abc-nixos/init");
	assert_int_equal(p.panic_s, -1);
	assert_true(p.quiet);
	assert_true(p.debug);
	assert_int_equal(p.persist_kind, PERSIST_TAG);
	assert_string_equal(p.persist, "UUID=1234-abcd");
	assert_int_equal(p.persist_timeout_s, 5);
	assert_string_equal(p.persist_options, "compress=zstd,noatime");
	assert_int_equal(p.store, STORE_OFF);
	assert_non_null(p.key.data);
	assert_string_equal(p.key.data, "s3cret");
	assert_string_equal(p.keyfile, "/etc/k");
	assert_true(p.keyfile_explicit);
	assert_string_equal(cfg(&p, "hostname"), "web-1");
	assert_string_equal(cfg(&p, "repo"), "git@h:r.git");
	assert_string_equal(cfg(&p, "branch"), "main");
	assert_string_equal(cfg(&p, "custom.thing"), "a b");
	/* Control and secret keys never land in the config handed to stage 2. */
	assert_null(cfg(&p, "luks.key"));
	assert_null(cfg(&p, "store"));
	/* Decisions the executor takes as they are. */
	assert_string_equal(p.root_options, "rw,noatime");
	assert_int_equal(p.root_kind, PERSIST_TAG);
	assert_true(p.may_prompt);
	assert_false(p.read_credentials_dir);
	plan_set_mode(&p, true);
	assert_true(p.read_credentials_dir);
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
}

static void test_malformed_values_fall_back(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("vm.hostname=bad_host! vm.persist.timeout=ten "
				    "vm.store=tmpfs vm.persist=sdb vm.branch=a..b root=vda "
				    "init=sbin/init panic=soon rootfstype=ext4;rm "
				    "vm.luks.keyfile=rel/key vm.repo",
				    NULL, &p),
			 0);
	assert_null(cfg(&p, "hostname"));
	assert_null(cfg(&p, "branch"));
	assert_null(cfg(&p, "repo"));
	assert_int_equal(p.persist_timeout_s, DEFAULT_PERSIST_TIMEOUT_S);
	assert_int_equal(p.store, STORE_OVERLAY);
	assert_int_equal(p.persist_kind, PERSIST_AUTO);
	assert_string_equal(p.root, DEFAULT_ROOT);
	assert_string_equal(p.init, DEFAULT_INIT);
	assert_int_equal(p.panic_s, 0);
	assert_string_equal(p.rootfstype, "");
	assert_string_equal(p.keyfile, DEFAULT_KEYFILE);
	/* Each bad key is named once. */
	assert_true(has_warning(&p, "vm.hostname="));
	assert_true(has_warning(&p, "vm.persist.timeout="));
	assert_true(has_warning(&p, "vm.store="));
	assert_true(has_warning(&p, "vm.persist="));
	assert_true(has_warning(&p, "vm.branch="));
	assert_true(has_warning(&p, "root="));
	assert_true(has_warning(&p, "init="));
	assert_true(has_warning(&p, "panic="));
	assert_true(has_warning(&p, "rootfstype="));
	assert_true(has_warning(&p, "vm.luks.keyfile="));
	assert_true(has_warning(&p, "vm.repo needs a value"));
	assert_int_equal(p.n_warnings, 11);
	plan_free(&p);
}

static void test_modules_for_cpu(void **state)
{
	(void)state;
	const char *mods[PLAN_MAX_MODULES];
	size_t n = plan_modules_for_cpu("fpu vme sse sse2 pni", mods, PLAN_MAX_MODULES);
	assert_int_equal(n, plan_n_modules);
	assert_string_equal(mods[0], plan_modules[0]);
	n = plan_modules_for_cpu(" fpu sse2 ssse3 sse4_1", mods, PLAN_MAX_MODULES);
	assert_int_equal(n, plan_n_modules + 1);
	assert_string_equal(mods[0], "sha256_ssse3");
	assert_string_equal(mods[n - 1], plan_modules[plan_n_modules - 1]);
	n = plan_modules_for_cpu("fpu avx512f", mods, PLAN_MAX_MODULES); /* not "avx" */
	assert_int_equal(n, plan_n_modules);
	n = plan_modules_for_cpu("sha_ni", mods, PLAN_MAX_MODULES);
	assert_string_equal(mods[0], "sha256_ssse3");
	n = plan_modules_for_cpu(NULL, mods, 3);
	assert_int_equal(n, 3);
}

static void test_rootwait(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("rootwait", NULL, &p), 0);
	assert_int_equal(p.root_timeout_s, 3600);
	plan_free(&p);
	assert_int_equal(plan_build("rootwait=7", NULL, &p), 0);
	assert_int_equal(p.root_timeout_s, 7);
	plan_free(&p);
	assert_int_equal(plan_build("rootwait=soon", NULL, &p), 0);
	assert_int_equal(p.root_timeout_s, DEFAULT_ROOT_TIMEOUT_S);
	assert_true(has_warning(&p, "rootwait="));
	plan_free(&p);
}

static void test_later_wins_and_bad_later_ignored(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("vm.hostname=a vm.hostname=b vm.hostname=-bad", NULL, &p), 0);
	assert_string_equal(cfg(&p, "hostname"), "b");
	assert_int_equal(p.n_warnings, 1);
	plan_free(&p);
}

static void test_secret_not_echoed(void **state)
{
	(void)state;
	struct plan p;
	char line[700] = "vm.luks.key=";
	memset(line + strlen(line), 'K', 600);
	assert_int_equal(plan_build(line, NULL, &p), 0);
	assert_null(p.key.data);
	assert_int_equal(p.n_warnings, 1);
	assert_null(strstr(p.warnings[0], "KKKK"));
	plan_free(&p);

	assert_int_equal(plan_build("vm.luks.key=TOPSECRET vm.debug", NULL, &p), 0);
	char *json = plan_to_json(&p);
	assert_null(strstr(json, "TOPSECRET"));
	assert_non_null(strstr(json, "\"key_on_cmdline\": true"));
	free(json);
	plan_free(&p);
}

static void test_embedded_config(void **state)
{
	(void)state;
	struct plan p;
	const char *embedded = "{\"hostname\":\"factory\",\"repo\":\"https://g/r.git\","
			       "\"persist\":\"LABEL=data\",\"persist.timeout\":3,"
			       "\"store\":\"off\",\"luks.key\":\"no\"}";
	assert_int_equal(plan_build("vm.store=overlay vm.hostname=web-2", embedded, &p), 0);
	/* Control defaults from the image, overridden by the command line. */
	assert_int_equal(p.persist_kind, PERSIST_TAG);
	assert_string_equal(p.persist, "LABEL=data");
	assert_int_equal(p.persist_timeout_s, 3);
	assert_int_equal(p.store, STORE_OVERLAY);
	assert_null(p.key.data);
	assert_true(has_warning(&p, "vm.luks.key holds key material"));
	assert_string_equal(
	    json_object_get_string(json_object_object_get(p.config_embedded, "hostname")),
	    "factory");
	assert_string_equal(cfg(&p, "hostname"), "web-2");
	plan_free(&p);

	/* A broken embedded config is reported and ignored. */
	assert_int_equal(plan_build("", "{oops", &p), 0);
	assert_null(p.config_embedded);
	assert_true(has_warning(&p, "/etc/vm-config.json: not valid JSON"));
	plan_free(&p);
}

static void test_unlock_methods(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("", NULL, &p), 0);
	assert_int_equal(p.n_methods, UNLOCK_N_METHODS);
	assert_int_equal(p.methods[0], UNLOCK_TPM2);
	assert_int_equal(p.methods[4], UNLOCK_PASSPHRASE);
	assert_int_equal(p.luks_tries, DEFAULT_LUKS_TRIES);
	assert_int_equal(p.luks_timeout_s, DEFAULT_LUKS_TIMEOUT_S);
	plan_free(&p);

	assert_int_equal(plan_build("vm.luks=passphrase,tpm2 vm.luks.tries=5 vm.luks.timeout=0 "
				    "vm.luks.tpm2.timeout=7",
				    NULL, &p),
			 0);
	assert_int_equal(p.n_methods, 2);
	assert_int_equal(p.methods[0], UNLOCK_PASSPHRASE);
	assert_int_equal(p.methods[1], UNLOCK_TPM2);
	assert_int_equal(p.luks_tries, 5);
	assert_int_equal(p.luks_timeout_s, 0);
	assert_int_equal(p.tpm2_timeout_s, 7);
	assert_int_equal(p.n_warnings, 0);
	char *json = plan_to_json(&p);
	assert_non_null(strstr(json, "\"passphrase\",\n    \"tpm2\""));
	free(json);
	plan_free(&p);

	/* '+' separates too; a bad list, a repeat, a bad count: warned, defaults kept. */
	assert_int_equal(plan_build("vm.luks=key+keyfile", NULL, &p), 0);
	assert_int_equal(p.n_methods, 2);
	assert_int_equal(p.methods[1], UNLOCK_KEYFILE);
	plan_free(&p);
	const char *bad[] = {"vm.luks=tpm3",	  "vm.luks=tpm2,tpm2",	"vm.luks=",
			     "vm.luks=tpm2,,key", "vm.luks.tries=0",	"vm.luks.tries=11",
			     "vm.luks.tries=x",	  "vm.luks.timeout=-1", "vm.luks.tpm2=1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(plan_build(bad[i], NULL, &p), 0);
		assert_int_equal(p.n_methods, UNLOCK_N_METHODS);
		assert_int_equal(p.luks_tries, DEFAULT_LUKS_TRIES);
		assert_int_equal(p.luks_timeout_s, DEFAULT_LUKS_TIMEOUT_S);
		assert_int_equal(p.n_warnings, 1);
		plan_free(&p);
	}
}

static void test_cmdline_credentials(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("systemd.set_credential=vm.hostname:web-1", NULL, &p), 0);
	assert_true(p.import_credentials);
	assert_int_equal(p.creds.n, 1);
	assert_string_equal(p.creds.items[0].name, "vm.hostname");
	assert_string_equal(p.creds.items[0].value.data, "web-1");
	plan_free(&p);
	assert_int_equal(plan_build("systemd.import_credentials=0 "
				    "systemd.set_credential=vm.hostname:web-1",
				    NULL, &p),
			 0);
	assert_false(p.import_credentials);
	assert_int_equal(p.creds.n, 0);
	plan_free(&p);
}

static void test_plan_json(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("vm.hostname=web-1 vm.note=\"x y\"", "{\"repo\":\"r\"}", &p),
			 0);
	char *text = plan_to_json(&p);
	struct json_object *o = json_tokener_parse(text);
	assert_non_null(o);
	struct json_object *c = json_object_object_get(o, "config");
	assert_string_equal(json_object_get_string(json_object_object_get(c, "hostname")), "web-1");
	assert_string_equal(json_object_get_string(json_object_object_get(c, "repo")), "r");
	assert_string_equal(json_object_get_string(json_object_object_get(c, "note")), "x y");
	assert_string_equal(json_object_get_string(json_object_object_get(o, "store")), "overlay");
	json_object_put(o);
	free(text);
	plan_free(&p);
}

/* n malformed keys (vm.bad!0 ... vm.bad!<n-1>), each worth a warning. */
static void build_malformed(size_t n, struct plan *p)
{
	char line[4096];
	size_t o = 0;
	for (size_t i = 0; i < n; i++)
		o += (size_t)snprintf(line + o, sizeof(line) - o, "vm.bad!%zu=1 ", i);
	assert_true(o < sizeof(line));
	assert_int_equal(plan_build(line, NULL, p), 0);
}

static void test_warnings_capped(void **state)
{
	(void)state;
	struct plan p;
	char want[64];
	/* 45 warnings: 31 named, then one line for the other 14. */
	build_malformed(45, &p);
	assert_int_equal(p.n_warnings, PLAN_MAX_WARNINGS);
	assert_int_equal(p.n_warnings_dropped, 14);
	for (size_t i = 0; i < PLAN_MAX_WARNINGS - 1; i++) {
		snprintf(want, sizeof(want), "vm.bad!%zu ", i);
		assert_non_null(strstr(p.warnings[i], want));
	}
	assert_string_equal(p.warnings[PLAN_MAX_WARNINGS - 1], "… and 14 more warnings");
	plan_free(&p);

	/* Exactly the cap: every one named. */
	build_malformed(PLAN_MAX_WARNINGS, &p);
	assert_int_equal(p.n_warnings, PLAN_MAX_WARNINGS);
	assert_int_equal(p.n_warnings_dropped, 0);
	snprintf(want, sizeof(want), "vm.bad!%d ", PLAN_MAX_WARNINGS - 1);
	assert_non_null(strstr(p.warnings[PLAN_MAX_WARNINGS - 1], want));
	plan_free(&p);

	/* One past it: the last slot counts two. */
	build_malformed(PLAN_MAX_WARNINGS + 1, &p);
	assert_int_equal(p.n_warnings_dropped, 2);
	assert_string_equal(p.warnings[PLAN_MAX_WARNINGS - 1], "… and 2 more warnings");
	char *text = plan_to_json(&p);
	struct json_object *o = json_tokener_parse(text);
	struct json_object *w = json_object_object_get(o, "warnings");
	assert_int_equal(json_object_array_length(w), PLAN_MAX_WARNINGS);
	assert_string_equal(
	    json_object_get_string(json_object_array_get_idx(w, PLAN_MAX_WARNINGS - 1)),
	    "… and 2 more warnings");
	json_object_put(o);
	free(text);
	plan_free(&p);
}

/* Must the data disk be LUKS? A decision in the plan, from the spec and vm.persist.encrypted. */
static void test_persist_encrypted(void **state)
{
	(void)state;
	static const struct {
		const char *cmdline;
		bool require;
	} cases[] = {
	    {"", true},
	    {"vm.persist=auto", true},
	    {"vm.persist.encrypted=no", false},
	    {"vm.persist.encrypted=0", false},
	    {"vm.persist=/dev/vdb", false},
	    {"vm.persist=LABEL=persist", false},
	    {"vm.persist=UUID=1234 vm.persist.encrypted=yes", true},
	    {"vm.persist=/dev/vdb vm.persist.encrypted=auto", false},
	    {"vm.persist.encrypted=maybe", true}, /* malformed: warned about, default kept */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct plan p;
		assert_int_equal(plan_build(cases[i].cmdline, NULL, &p), 0);
		if (p.persist_require_luks != cases[i].require)
			fail_msg("%s: require_luks %d", cases[i].cmdline, p.persist_require_luks);
		if (strstr(cases[i].cmdline, "maybe"))
			assert_int_equal(p.n_warnings, 1);
		plan_free(&p);
	}
	/* The embedded config may set it; the command line wins. */
	struct plan p;
	assert_int_equal(plan_build("", "{\"persist.encrypted\": \"no\"}", &p), 0);
	assert_false(p.persist_require_luks);
	plan_free(&p);
	assert_int_equal(
	    plan_build("vm.persist.encrypted=yes", "{\"persist.encrypted\": \"no\"}", &p), 0);
	assert_true(p.persist_require_luks);
	plan_free(&p);

	/* vm.persist.opened: another program unlocked it; LUKS required, no prompt here. */
	assert_int_equal(plan_build("vm.persist.opened=/dev/mapper/persist", NULL, &p), 0);
	assert_string_equal(p.persist_opened, "/dev/mapper/persist");
	assert_true(p.persist_require_luks);
	assert_false(p.may_prompt);
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
	assert_int_equal(plan_build("vm.persist.opened=/dev/mapper/p vm.persist.encrypted=no "
				    "vm.persist=/dev/vdb",
				    NULL, &p),
			 0);
	assert_false(p.persist_require_luks);
	assert_int_equal(p.n_warnings, 1); /* vm.persist= is ignored */
	assert_non_null(strstr(p.warnings[0], "ignored"));
	plan_free(&p);
	const char *bad[] = {"/dev/vdb", "/dev/mapper/", "/dev/mapper/..", "/dev/mapper/a/b",
			     "/dev/mapper/a%b"};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		char line[128];
		snprintf(line, sizeof(line), "vm.persist.opened=%s", bad[i]);
		assert_int_equal(plan_build(line, NULL, &p), 0);
		assert_string_equal(p.persist_opened, "");
		assert_int_equal(p.n_warnings, 1);
		plan_free(&p);
	}
}

/* A key credential given on the command line is as readable there as vm.luks.key=. */
static void test_key_in_cmdline(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("systemd.set_credential=vm.luks.key:SECRET1", NULL, &p), 0);
	assert_true(p.key_in_cmdline);
	char *json = plan_to_json(&p);
	assert_null(strstr(json, "SECRET1"));
	assert_non_null(strstr(json, "\"key_on_cmdline\": true"));
	free(json);
	plan_free(&p);
	assert_int_equal(plan_build("systemd.set_credential=vm.hostname:web-1", NULL, &p), 0);
	assert_false(p.key_in_cmdline);
	plan_free(&p);
	assert_int_equal(plan_build("systemd.import_credentials=0 vm.luks.key=K", NULL, &p), 0);
	assert_true(p.key_in_cmdline);
	plan_free(&p);
}

static void test_modules_for_kernel(void **state)
{
	(void)state;
	assert_true(plan_module_required("btrfs"));
	assert_true(plan_module_required("dm_crypt"));
	assert_false(plan_module_required("sha256_ssse3"));
	assert_false(plan_module_required("xts"));
	/* A 7.2-like kernel: sha256_ssse3 gone, xts and virtio_pci built in. */
	struct plan p;
	assert_int_equal(plan_build("", NULL, &p), 0);
	struct module_resolution res = {.kver = "7.2.12+deb14-cloud-amd64"};
	res.n = plan_initrd_modules(res.names, PLAN_MAX_MODULES);
	for (size_t i = 0; i < res.n; i++)
		res.kinds[i] =
		    strcmp(res.names[i], "sha256_ssse3") == 0 ? MODULE_ABSENT
		    : strcmp(res.names[i], "xts") == 0 || strcmp(res.names[i], "virtio_pci") == 0
			? MODULE_BUILTIN
			: MODULE_LOADABLE;
	char *text = plan_to_json_for(&p, &res);
	assert_non_null(text);
	json_object *o = json_tokener_parse(text);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "kernel")),
			    "7.2.12+deb14-cloud-amd64");
	json_object *mods = json_object_object_get(o, "modules");
	assert_int_equal(json_object_array_length(mods), res.n - 3);
	for (size_t i = 0; i < json_object_array_length(mods); i++) {
		const char *m = json_object_get_string(json_object_array_get_idx(mods, i));
		assert_true(strcmp(m, "xts") && strcmp(m, "sha256_ssse3") &&
			    strcmp(m, "virtio_pci"));
	}
	json_object *absent = json_object_object_get(o, "modules_absent");
	assert_int_equal(json_object_array_length(absent), 1);
	assert_string_equal(json_object_get_string(json_object_array_get_idx(absent, 0)),
			    "sha256_ssse3");
	assert_int_equal(json_object_array_length(json_object_object_get(o, "modules_builtin")), 2);
	json_object_put(o);
	free(text);
	plan_free(&p);
}

/* vm.persist.provision: off by default; a flag, also from the embedded config; its PCR list is
 * checked as enroll-tpm2 --pcrs would check it. */
static void test_provision(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build("", NULL, &p), 0);
	assert_false(p.provision);
	assert_string_equal(p.provision_pcrs, DEFAULT_PROVISION_PCRS);
	plan_free(&p);
	assert_int_equal(plan_build("vm.persist.provision", NULL, &p), 0);
	assert_true(p.provision);
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
	assert_int_equal(plan_build("vm.persist.provision=0", "{\"persist.provision\": \"1\"}", &p),
			 0);
	assert_false(p.provision);
	plan_free(&p);
	assert_int_equal(plan_build("", "{\"persist.provision\": \"yes\"}", &p), 0);
	assert_true(p.provision);
	plan_free(&p);
	assert_int_equal(
	    plan_build("vm.persist.provision=maybe vm.persist.provision.pcrs=7,99", NULL, &p), 0);
	assert_false(p.provision);
	assert_string_equal(p.provision_pcrs, DEFAULT_PROVISION_PCRS);
	assert_int_equal(p.n_warnings, 2);
	plan_free(&p);
	assert_int_equal(
	    plan_build("vm.persist.provision=on vm.persist.provision.pcrs=7", NULL, &p), 0);
	assert_true(p.provision);
	assert_string_equal(p.provision_pcrs, "7");
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
}

#define ZERO64 "0000000000000000000000000000000000000000000000000000000000000000"

/* A credential's control layer as credentials_config_layer makes it. */
static struct json_object *controls(const char *provision, const char *pcrs)
{
	struct json_object *o = json_object_new_object();
	if (provision)
		json_object_object_add(o, "persist.provision", json_object_new_string(provision));
	if (pcrs)
		json_object_object_add(o, "persist.provision.pcrs", json_object_new_string(pcrs));
	/* Never from a credential: skipped even if a layer held it. */
	json_object_object_add(o, "persist", json_object_new_string("/dev/vdc"));
	return o;
}

/* Credentials set the provisioning keys above the embedded config and below the command line. */
static void test_provision_credentials(void **state)
{
	(void)state;
	struct plan p;
	char applied[512], overridden[256];
	struct json_object *c = controls("1", "15:sha256=" ZERO64);

	assert_int_equal(plan_build("", "{\"persist.provision\": \"0\"}", &p), 0);
	plan_apply_credentials(&p, c, applied, sizeof(applied), overridden, sizeof(overridden));
	assert_true(p.provision);
	assert_string_equal(p.provision_pcrs, "15:sha256=" ZERO64);
	assert_string_equal(p.persist, "auto");
	assert_string_equal(applied,
			    "vm.persist.provision=1, vm.persist.provision.pcrs=15:sha256=" ZERO64);
	assert_string_equal(overridden, "");
	plan_free(&p);

	/* The command line wins, key by key; other control keys on it do not count. */
	assert_int_equal(plan_build("vm.persist.provision=0 vm.persist=/dev/vdb", NULL, &p), 0);
	plan_apply_credentials(&p, c, applied, sizeof(applied), overridden, sizeof(overridden));
	assert_false(p.provision);
	assert_string_equal(p.provision_pcrs, "15:sha256=" ZERO64);
	assert_string_equal(p.persist, "/dev/vdb");
	assert_string_equal(applied, "vm.persist.provision.pcrs=15:sha256=" ZERO64);
	assert_string_equal(overridden, "vm.persist.provision");
	plan_free(&p);

	assert_int_equal(plan_build("vm.persist.provision vm.persist.provision.pcrs=7", NULL, &p),
			 0);
	plan_apply_credentials(&p, c, applied, sizeof(applied), overridden, sizeof(overridden));
	assert_true(p.provision);
	assert_string_equal(p.provision_pcrs, "7");
	assert_string_equal(applied, "");
	assert_string_equal(overridden, "vm.persist.provision, vm.persist.provision.pcrs");
	plan_free(&p);
	json_object_put(c);

	/* No layer, or an empty one: nothing changes. */
	assert_int_equal(plan_build("", NULL, &p), 0);
	plan_apply_credentials(&p, NULL, applied, sizeof(applied), overridden, sizeof(overridden));
	assert_false(p.provision);
	assert_string_equal(applied, "");
	c = controls("off", NULL);
	plan_apply_credentials(&p, c, applied, sizeof(applied), overridden, sizeof(overridden));
	assert_false(p.provision);
	assert_string_equal(p.provision_pcrs, DEFAULT_PROVISION_PCRS);
	assert_string_equal(applied, "vm.persist.provision=off");
	json_object_put(c);
	plan_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_modules_for_kernel),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_full_line),
	    cmocka_unit_test(test_malformed_values_fall_back),
	    cmocka_unit_test(test_rootwait),
	    cmocka_unit_test(test_modules_for_cpu),
	    cmocka_unit_test(test_later_wins_and_bad_later_ignored),
	    cmocka_unit_test(test_secret_not_echoed),
	    cmocka_unit_test(test_embedded_config),
	    cmocka_unit_test(test_unlock_methods),
	    cmocka_unit_test(test_cmdline_credentials),
	    cmocka_unit_test(test_plan_json),
	    cmocka_unit_test(test_warnings_capped),
	    cmocka_unit_test(test_persist_encrypted),
	    cmocka_unit_test(test_key_in_cmdline),
	    cmocka_unit_test(test_provision),
	    cmocka_unit_test(test_provision_credentials),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
