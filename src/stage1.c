/* SPDX-License-Identifier: MIT */
/*
 * The executor: carries out a plan step by step. Every step is timed and recorded in the status;
 * every failure after the factory root is mounted ends in a boot on the factory store.
 */
#define _GNU_SOURCE
#include "stage1.h"
#include "config.h"
#include "credentials.h"
#include "devices.h"
#include "log.h"
#include "modules.h"
#include "mounts.h"
#include "plan.h"
#include "seed.h"
#include "status.h"
#include "switchroot.h"
#include "tpm2.h"
#include "unlock.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/stat.h>

#define RUN_CONFIG "/run/vm-config.json"

static void warn_both(struct status *st, const char *msg)
{
	log_warn("%s", msg);
	status_warn(st, msg);
}

static void config_warn(void *ctx, const char *message)
{
	warn_both(ctx, message);
}

static const char *dev_describe(const struct plan *p, char *buf, size_t len)
{
	if (p->persist_kind == PERSIST_AUTO)
		snprintf(buf, len,
			 "a LUKS2 or Btrfs volume labelled \"" DEFAULT_PERSIST_LABEL
			 "\" or " DEFAULT_PERSIST_FALLBACK);
	else
		snprintf(buf, len, "%s", p->persist);
	return buf;
}

/* Unlocks the data disk with the first method that works (see unlock_run). */
static int unlock_step(const struct plan *p, struct status *st, const char *device,
		       const struct credentials *creds)
{
	unlock_setup(p->debug);
	int r = unlock_run(p, st, device, creds);
	if (r == 0 && strcmp(st->unlock, "cmdline-key") == 0)
		warn_both(st, "the key came from the kernel command line: stage 2 can read it in "
			      "/proc/cmdline");
	return r;
}

/* Merges the config layers and writes /persist/config.json and /run/vm-config.json. */
static int config_step(const struct plan *p, struct status *st, const char *root,
		       const struct credentials *creds)
{
	char path[PATH_MAX];
	struct json_object *persisted = NULL;
	int r;

	_cleanup_free_ char *saved = NULL;
	snprintf(path, sizeof(path), "%s/persist/config.json", root);
	if (st->persist) {
		r = read_file(path, 1 << 20, &saved, NULL);
		if (r == 0 && config_layer_from_json(saved, "/persist/config.json", &persisted,
						     NULL, config_warn, st) < 0) {
			/* Keep the damaged file for inspection; never lose what was on /persist. */
			char bad[PATH_MAX];
			snprintf(bad, sizeof(bad), "%s.bad", path);
			if (rename(path, bad) == 0)
				warn_both(st, "moved the unreadable /persist/config.json to "
					      "/persist/config.json.bad");
		} else if (r < 0 && r != -ENOENT) {
			char msg[256];
			snprintf(msg, sizeof(msg), "cannot read /persist/config.json: %s",
				 strerror(-r));
			warn_both(st, msg);
		}
	}
	struct json_object *from_creds = NULL;
	if (credentials_config_layer(creds, &from_creds, NULL, config_warn, st) < 0)
		return -ENOMEM;
	struct json_object *layers[] = {p->config_embedded, persisted, from_creds,
					p->config_cmdline};
	struct json_object *merged = config_merge(layers, ARRAY_SIZE(layers));
	json_object_put(persisted);
	json_object_put(from_creds);
	if (!merged)
		return -ENOMEM;
	_cleanup_free_ char *text = config_to_string(merged);
	json_object_put(merged);
	if (!text)
		return -ENOMEM;

	int result = 0;
	/* Most boots change nothing: then leave the file (and the disk) alone. */
	if (st->persist && !(saved && strcmp(saved, text) == 0)) {
		r = write_file_atomic(path, text, strlen(text), 0644);
		if (r < 0) {
			char msg[256];
			snprintf(msg, sizeof(msg), "cannot write /persist/config.json: %s",
				 strerror(-r));
			warn_both(st, msg);
			result = r;
		}
	}
	r = write_file_atomic(RUN_CONFIG, text, strlen(text), 0644);
	if (r < 0) {
		log_err("cannot write " RUN_CONFIG ": %s", strerror(-r));
		result = r;
	}
	return result;
}

/* Bind mode: a complete copy of the factory /nix on /persist, bound on /nix. */
static bool bind_store(struct status *st, const char *nix_dir, const char *persist_dir)
{
	char why[512] = "";
	struct seed_stats ss;
	bool copied = false, refreshed = false;
	uint64_t t = now_ms();
	int r =
	    seed_bind_store(nix_dir, persist_dir, st->factory_id, &ss, &copied, &refreshed,
			    st->factory_previous, sizeof(st->factory_previous), why, sizeof(why));
	status_step(st, copied ? "store-copy" : "store-check", now_ms() - t, r);
	st->refreshed = refreshed;
	if (copied) {
		st->seeded = true;
		st->seed = ss;
		log_info("copied the factory store to /persist/nix: %llu files, %llu hard links, "
			 "%llu MB in %llu ms%s",
			 (unsigned long long)ss.files, (unsigned long long)ss.hardlinks,
			 (unsigned long long)(ss.bytes / 1000000), (unsigned long long)ss.ms,
			 ss.kept ? " (resumed)" : "");
	}
	if (r >= 0) {
		t = now_ms();
		r = mount_store_bind(nix_dir, persist_dir, why, sizeof(why));
		status_step(st, "store", now_ms() - t, r);
	}
	if (r < 0) {
		status_reason(st, "/nix is not the bound copy of the store: %s", why);
		log_err("bind store not possible: %s; trying the overlay", why);
		return false;
	}
	strcpy(st->store, "bind");
	log_info("/nix is /persist/nix (a complete copy of the factory store), factory store "
		 "also at /nix/.ro-store");
	return true;
}

static void store_step(const struct plan *p, struct status *st, const char *root,
		       const char *nix_dir, const char *persist_dir)
{
	char why[512] = "";
	if (seed_factory_identity(root, st->factory_id, sizeof(st->factory_id)) < 0)
		strcpy(st->factory_id, "unknown");
	if (p->store == STORE_BIND && bind_store(st, nix_dir, persist_dir))
		return;
	uint64_t t = now_ms();
	bool refreshed = false;
	char previous[sizeof(st->factory_previous)];
	int fixed = seed_overlay_refresh(nix_dir, persist_dir, st->factory_id, &refreshed, previous,
					 sizeof(previous));
	if (p->store != STORE_BIND) {
		st->refreshed = refreshed;
		strscpy(st->factory_previous, previous, sizeof(st->factory_previous));
	}
	if (fixed < 0)
		log_warn("cannot check the upper layer against the factory image: %s",
			 strerror(-fixed));
	int r = mount_store_overlay(nix_dir, persist_dir, why, sizeof(why));
	status_step(st, "store", now_ms() - t, r);
	if (r < 0) {
		status_reason(st, "/nix stays the factory store: %s", why);
		log_err("/nix stays the factory store: %s", why);
	} else {
		strcpy(st->store, "overlay");
		log_info("/nix is an overlay: factory store below, /persist/nix/upper "
			 "above, factory store also at /nix/.ro-store");
	}
}

void persist_setup(const struct plan *p, struct status *st, const char *root)
{
	char why[512] = "", persist_dir[PATH_MAX], nix_dir[PATH_MAX], desc[160];
	struct blockdev dev;
	uint64_t t = now_ms();
	int r;

	/* Whatever the disk turns out to be, a key on the command line is readable in stage 2. */
	st->key_in_cmdline = p->key.data != NULL;

	/*
	 * System credentials: the command line's (in the plan), then fw_cfg and SMBIOS; in helper
	 * mode also the directory the outer systemd filled. The values stay in locked memory.
	 */
	struct credentials creds = {0};
	for (size_t i = 0; i < p->creds.n; i++)
		credentials_add(&creds, p->creds.items[i].name, p->creds.items[i].value.data,
				p->creds.items[i].value.len, p->creds.items[i].source, config_warn,
				st);
	if (p->import_credentials) {
		if (strcmp(st->mode, "helper") == 0)
			credentials_read_dir(credentials_default_dir(), &creds, config_warn, st);
		credentials_read_system(NULL, &creds, config_warn, st);
	}
	if (creds.n > 0) {
		char names[256] = "";
		for (size_t i = 0, o = 0; i < creds.n && o < sizeof(names); i++)
			o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s (%s)",
					      i ? ", " : "", creds.items[i].name,
					      credential_source_name(creds.items[i].source));
		log_info("system credentials: %s", names);
	}
	status_step(st, "credentials", now_ms() - t, 0);
	t = now_ms();

	/* The status says which TPM this VM has, whether or not the disk has a TPM2 token. */
	r = tpm2_probe(st->tpm2, sizeof(st->tpm2));
	status_step(st, "tpm2", now_ms() - t, r < 0 ? r : 0);
	if (r > 0)
		log_info("TPM2: %s", st->tpm2);
	t = now_ms();

	snprintf(persist_dir, sizeof(persist_dir), "%s/persist", root);
	snprintf(nix_dir, sizeof(nix_dir), "%s/nix", root);

	/* The root's device (and disk) cannot hold /persist: the scan skips it. */
	struct stat rst;
	struct dev_spec spec = {p->persist_kind, p->persist,
				stat(root, &rst) == 0 ? rst.st_dev : 0};
	r = devices_wait(&spec, p->persist_timeout_s * 1000u, &dev);
	status_step(st, "device", now_ms() - t, r);
	if (r < 0) {
		status_reason(st, "no data disk: %s did not appear within %u s",
			      dev_describe(p, desc, sizeof(desc)), p->persist_timeout_s);
		goto config;
	}
	strscpy(st->device, dev.devname, sizeof(st->device));
	strscpy(st->fstype, dev.type, sizeof(st->fstype));
	log_info("data disk: %s (%s%s%s)", dev.devname, *dev.type ? dev.type : "no signature",
		 *dev.label ? ", label " : "", dev.label);

	const char *fsdev = dev.devname;
	if (strcmp(dev.type, "crypto_LUKS") == 0) {
		st->luks = true;
		t = now_ms();
		r = unlock_step(p, st, dev.devname, &creds);
		status_step(st, "unlock", now_ms() - t, r);
		if (r < 0)
			goto config;
		fsdev = "/dev/mapper/" PERSIST_DM_NAME;
	} else if (strcmp(dev.type, "btrfs") != 0) {
		status_reason(st, "%s holds %s, not LUKS or Btrfs; left untouched", dev.devname,
			      *dev.type ? dev.type : "no recognisable signature");
		goto config;
	}

	t = now_ms();
	r = mount_fs(fsdev, persist_dir, "btrfs", p->persist_options, why, sizeof(why));
	status_step(st, "mount", now_ms() - t, r);
	if (r < 0) {
		status_reason(st, "%s", why);
		if (st->luks)
			unlock_close(PERSIST_DM_NAME);
		goto config;
	}
	st->persist = true;
	log_info("mounted %s on /persist (btrfs, %s)", fsdev, p->persist_options);

	if (p->store == STORE_OFF)
		strcpy(st->store, "off");
	else
		store_step(p, st, root, nix_dir, persist_dir);
config:
	if (!st->persist)
		log_err("booting on the factory store: %s", st->reason);
	t = now_ms();
	r = config_step(p, st, root, &creds);
	credentials_free(&creds);
	status_step(st, "config", now_ms() - t, r);
}

/* Loads the planned modules, the CPU-specific ones only where the CPU has the features. */
static int load_modules(void)
{
	_cleanup_free_ char *cpuinfo = NULL;
	const char *flags = NULL;
	if (read_file("/proc/cpuinfo", 1 << 20, &cpuinfo, NULL) == 0) {
		char *line = strstr(cpuinfo, "\nflags");
		if (line && (line = strchr(line, ':'))) {
			char *end = strchr(line, '\n');
			if (end)
				*end = '\0';
			flags = line + 1;
		}
	}
	const char *mods[PLAN_MAX_MODULES];
	size_t n = plan_modules_for_cpu(flags, mods, ARRAY_SIZE(mods));
	return modules_load(mods, n);
}

static void write_records(const struct plan *p, const struct status *st)
{
	int r = status_write(st, "");
	if (r < 0)
		log_err("cannot write " STATUS_DIR "/status.json: %s", strerror(-r));
	_cleanup_free_ char *text = plan_to_json(p);
	if (text)
		write_file_atomic(STATUS_DIR "/plan.json", text, strlen(text), 0644);
}

static void summarise(const struct status *st)
{
	if (st->persist)
		log_notice("persist: %s%s%s%s on /persist, /nix %s, %llu ms", st->device,
			   st->luks ? " (LUKS, unlocked with " : "", st->luks ? st->unlock : "",
			   st->luks ? ")" : "", st->store, (unsigned long long)st->total_ms);
	else
		log_notice("fallback: %s; /nix is the factory store, %llu ms", st->reason,
			   (unsigned long long)st->total_ms);
}

static void apply_log_levels(const struct plan *p)
{
	log_set_console_level(p->debug ? LOG_DEBUG : p->quiet ? LOG_WARNING : LOG_INFO);
	log_set_kmsg_level(p->debug ? LOG_DEBUG : LOG_INFO);
}

static void read_inputs(const char *cmdline_override, const char *config_path, char **cmdline,
			char **embedded)
{
	*cmdline = NULL;
	*embedded = NULL;
	if (cmdline_override)
		*cmdline = strdup(cmdline_override);
	else if (read_file("/proc/cmdline", CMDLINE_MAX_READ, cmdline, NULL) < 0)
		log_err("cannot read /proc/cmdline; using defaults");
	int r = read_file(config_path, 1 << 20, embedded, NULL);
	if (r < 0 && r != -ENOENT)
		log_warn("cannot read %s: %s", config_path, strerror(-r));
}

static void build_plan(struct plan *p, const char *cmdline_override, const char *config_path)
{
	_cleanup_free_ char *cmdline = NULL;
	_cleanup_free_ char *embedded = NULL;
	read_inputs(cmdline_override, config_path, &cmdline, &embedded);
	if (plan_build(cmdline, embedded, p) < 0) {
		/* Only an absurd command line gets here: carry on with the defaults. */
		log_err("cannot parse the kernel command line; using defaults");
		plan_build(NULL, NULL, p);
	}
	if (cmdline)
		explicit_bzero(cmdline, strlen(cmdline));
}

/* What both modes do first: the plan, log levels, the status, and the plan's warnings. */
static void begin(struct plan *p, struct status *st, const char *mode, uint64_t t0,
		  const char *cmdline_override, const char *config_path)
{
	/* Do not let json-c seed its hash from the entropy pool this early (it would block). */
	json_global_set_string_hash(JSON_C_STR_HASH_PERLLIKE);
	build_plan(p, cmdline_override, config_path);
	apply_log_levels(p);
	status_init(st, mode, t0);
	log_info("factory-init " FACTORY_INIT_VERSION " starting (%s)", mode);
	for (size_t i = 0; i < p->n_warnings; i++)
		warn_both(st, p->warnings[i]);
}

static void modules_step(struct status *st)
{
	uint64_t t = now_ms();
	int failed = load_modules();
	status_step(st, "modules", now_ms() - t, failed < 0 ? failed : 0);
	if (failed < 0)
		warn_both(st, "cannot load kernel modules: no module index here");
}

__attribute__((noreturn)) static void fatal(const struct plan *p, struct status *st,
					    const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_msg(LOG_EMERG, "cannot boot: %s", msg);
	status_reason(st, "cannot boot: %s", msg);
	status_write(st, "");
	sync();
	if (p->panic_s < 0) {
		log_msg(LOG_EMERG, "rebooting now (panic=%d)", p->panic_s);
		reboot(RB_AUTOBOOT);
	} else if (p->panic_s > 0) {
		log_msg(LOG_EMERG, "rebooting in %d s (panic=%d)", p->panic_s, p->panic_s);
		sleep((unsigned)p->panic_s);
		reboot(RB_AUTOBOOT);
	}
	log_msg(LOG_EMERG, "halted; set panic=N on the kernel command line to reboot instead");
	for (;;)
		pause();
}

/* The kernel gives init /dev/console as fds 0-2 when the initramfs has it; make sure. */
static void ensure_console(void)
{
	if (fcntl(STDERR_FILENO, F_GETFD) >= 0)
		return;
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);
	if (fd < 0)
		return;
	for (int i = 0; i < 3; i++)
		if (fcntl(i, F_GETFD) < 0)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
}

__attribute__((noreturn)) void stage1_run(int argc, char **argv)
{
	uint64_t t0 = now_ms(), t;
	struct plan p;
	struct status st;

	mount_api_filesystems();
	ensure_console();
	log_open_kmsg();
	log_kmsg_unlimit();
	begin(&p, &st, "stage1", t0, NULL, EMBEDDED_CONFIG_PATH);
	status_step(&st, "setup", now_ms() - t0, 0);
	modules_step(&st);

	t = now_ms();
	struct dev_spec root_spec = {p.root[0] == '/' ? PERSIST_PATH : PERSIST_TAG, p.root};
	struct blockdev rootdev;
	char why[512] = "", opts[PLAN_STR + 8];
	int r = devices_wait(&root_spec, p.root_timeout_s * 1000u, &rootdev);
	if (r < 0)
		fatal(&p, &st, "the factory root %s did not appear within %u s", p.root,
		      p.root_timeout_s);
	snprintf(opts, sizeof(opts), "%s%s%s", p.root_rw ? "rw" : "ro", *p.rootflags ? "," : "",
		 p.rootflags);
	mkdir("/sysroot", 0755);
	/* The probe already read the type: spare libmount a second probe of the same disk. */
	const char *fstype = *p.rootfstype ? p.rootfstype : rootdev.type;
	r = mount_fs(rootdev.devname, "/sysroot", fstype, opts, why, sizeof(why));
	status_step(&st, "root", now_ms() - t, r);
	if (r < 0)
		fatal(&p, &st, "%s", why);
	log_info("mounted the factory root %s on /sysroot (%s)", rootdev.devname, opts);

	persist_setup(&p, &st, "/sysroot");
	st.total_ms = now_ms() - t0;
	write_records(&p, &st);
	summarise(&st);

	log_kmsg_restore();
	t = now_ms();
	r = switch_root("/sysroot");
	if (r < 0)
		fatal(&p, &st, "switching to /sysroot failed: %s", strerror(-r));
	status_step(&st, "switch-root", now_ms() - t, 0);
	st.total_ms = now_ms() - t0;
	status_write(&st, "");

	char *args[PLAN_MAX_INIT_ARGS + 2];
	size_t n = 0;
	args[n++] = p.init;
	for (int i = 1; i < argc && n < PLAN_MAX_INIT_ARGS + 1; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	execv(p.init, args);
	fatal(&p, &st, "cannot run %s: %s", p.init, strerror(errno));
}

int helper_run(const char *root, const char *cmdline_override, const char *config_path)
{
	uint64_t t0 = now_ms();
	struct plan p;
	struct status st;

	log_open_kmsg();
	begin(&p, &st, "helper", t0, cmdline_override, config_path);
	modules_step(&st);

	persist_setup(&p, &st, root);
	st.total_ms = now_ms() - t0;
	write_records(&p, &st);
	summarise(&st);
	plan_free(&p);
	return 0;
}
