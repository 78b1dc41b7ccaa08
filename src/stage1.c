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
#include "metrics.h"
#include "modules.h"
#include "mounts.h"
#include "network.h"
#include "beneath.h"
#include "persist.h"
#include "plan.h"
#include "provision.h"
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
#include <sys/sysmacros.h>

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

/* Mounts fsdev as Btrfs on /persist, as the "mount" step; a failure is logged and is the reason. */
static int mount_persist(const struct plan *p, struct status *st, const char *fsdev,
			 const char *persist_dir, char *why, size_t why_len)
{
	uint64_t t = now_ms();
	int r = mount_fs(fsdev, persist_dir, "btrfs", p->persist_options, why, why_len);
	status_step(st, "mount", now_ms() - t, r);
	if (r < 0) {
		log_err("%s", why);
		status_reason(st, STATUS_REASON_MOUNT, "%s", why);
	}
	return r;
}

/* Mounts a candidate (its opened mapping when LUKS) on /persist; on failure closes the mapping. */
static int mount_candidate(const struct plan *p, struct status *st, struct persist_candidate *c,
			   bool luks, const char *persist_dir)
{
	char why[512] = "";
	const char *fsdev = luks ? "/dev/mapper/" PERSIST_DM_NAME : c->dev.devname;
	int r = mount_persist(p, st, fsdev, persist_dir, why, sizeof(why));
	if (r < 0) {
		c->verdict = CAND_FAILED;
		strscpy(c->detail, why, sizeof(c->detail));
		if (luks)
			unlock_close(PERSIST_DM_NAME);
		return r;
	}
	c->verdict = CAND_USED;
	strscpy(st->device, c->dev.devname, sizeof(st->device));
	strscpy(st->fstype, c->dev.type, sizeof(st->fstype));
	st->luks = luks;
	log_info("mounted %s on /persist (btrfs, %s)", fsdev, p->persist_options);
	return 0;
}

static bool is_luks(const struct persist_candidate *c)
{
	return strcmp(c->dev.type, "crypto_LUKS") == 0;
}

/* The reason when no candidate could be used at all: each refused one, with why. */
static void refused_reason(struct status *st, const struct persist_candidates *cands)
{
	char all[sizeof(st->reason)] = "";
	for (size_t i = 0, o = 0; i < cands->n && o < sizeof(all); i++)
		o += (size_t)snprintf(all + o, sizeof(all) - o, "%s%s %s", i ? "; " : "",
				      cands->c[i].dev.devname, cands->c[i].detail);
	status_reason(st, STATUS_REASON_REFUSED, "%s", all);
}

/*
 * Opens and mounts the first candidate that works, in the documented order: every LUKS candidate
 * with the methods that need no one at the console, then every LUKS candidate with the prompts,
 * then (where allowed) the plain Btrfs ones. Sets each tried candidate's verdict; returns the
 * index of the one mounted on /persist, or a negative errno with the reason in the status.
 */
static int open_candidates(const struct plan *p, struct status *st,
			   struct persist_candidates *cands, size_t n_try,
			   const struct credentials *creds, const char *persist_dir)
{
	if (n_try == 0) {
		strscpy(st->device, cands->c[0].dev.devname, sizeof(st->device));
		strscpy(st->fstype, cands->c[0].dev.type, sizeof(st->fstype));
		refused_reason(st, cands);
		return -ENOENT;
	}
	bool tried = false, mount_failed = false;
	char why[MAX_CANDIDATES][384] = {{0}};
	bool failed[MAX_CANDIDATES] = {false}; /* some attempt (or the header) failed */
	uint64_t t = now_ms();
	int r = -ENOENT, won = -1;
	bool any_luks = false;
	unlock_setup(p->debug);
	for (int round = UNLOCK_ROUND_QUIET; round <= UNLOCK_ROUND_PROMPT && won < 0; round++)
		for (size_t i = 0; i < n_try && won < 0; i++) {
			struct persist_candidate *c = &cands->c[i];
			if (c->verdict != CAND_TRY || !is_luks(c))
				continue;
			if (!any_luks) {
				/* The status names the first LUKS candidate until one is used. */
				any_luks = st->luks = true;
				strscpy(st->device, c->dev.devname, sizeof(st->device));
				strscpy(st->fstype, c->dev.type, sizeof(st->fstype));
			}
			char last[sizeof(why[0])] = "";
			r = unlock_run(p, st, c->dev.devname, creds, (enum unlock_round)round,
				       &tried, last, sizeof(last));
			if (*last)
				strscpy(why[i], last, sizeof(why[i]));
			if (r < 0) {
				failed[i] = failed[i] || *last;
				continue;
			}
			status_step(st, "unlock", now_ms() - t, 0);
			if (mount_candidate(p, st, c, true, persist_dir) == 0)
				won = (int)i;
			else
				mount_failed = true;
		}
	if (won < 0 && any_luks)
		status_step(st, "unlock", now_ms() - t, r < 0 ? r : -ENOKEY);
	for (size_t i = 0; i < n_try; i++)
		if (cands->c[i].verdict == CAND_TRY && is_luks(&cands->c[i])) {
			bool tried_it = won < 0 || failed[i];
			cands->c[i].verdict = tried_it ? CAND_FAILED : CAND_SKIPPED;
			if (tried_it)
				strscpy(cands->c[i].detail, why[i], sizeof(cands->c[i].detail));
		}
	for (size_t i = 0; i < n_try && won < 0; i++)
		if (cands->c[i].verdict == CAND_TRY) {
			if (mount_candidate(p, st, &cands->c[i], false, persist_dir) == 0)
				won = (int)i;
			else
				mount_failed = true;
		}
	for (size_t i = 0; i < n_try; i++)
		if (cands->c[i].verdict == CAND_TRY)
			cands->c[i].verdict = CAND_SKIPPED;
	if (won >= 0) {
		st->reason[0] = st->reason_code[0] = '\0';
		return won;
	}
	if (!mount_failed) {
		char reason[sizeof(st->reason)], devices[160] = "";
		for (size_t i = 0, o = 0, k = 0; i < n_try && o < sizeof(devices); i++)
			if (is_luks(&cands->c[i]))
				o += (size_t)snprintf(devices + o, sizeof(devices) - o, "%s%s",
						      k++ ? ", " : "", cands->c[i].dev.devname);
		if (tried) {
			unlock_reason(p, st, devices, tried, reason, sizeof(reason));
		} else {
			/* Nothing had a key: say so, or why the headers could not be read. */
			size_t o = 0;
			reason[0] = '\0';
			for (size_t i = 0; i < n_try && o < sizeof(reason); i++)
				if (*why[i])
					o += (size_t)snprintf(reason + o, sizeof(reason) - o,
							      "%s%s", o ? "; " : "", why[i]);
			if (!o)
				unlock_reason(p, st, devices, false, reason, sizeof(reason));
		}
		status_reason(st, tried ? STATUS_REASON_UNLOCK : STATUS_REASON_NO_KEY, "%s",
			      reason);
	}
	return r < 0 ? r : -EIO;
}

/*
 * vm.network_static in the merged config: the networkd file for stage 2, and the host name its
 * ip= form names where vm.hostname is not set (as the kernel's ip= sets it).
 */
static void network_step(struct status *st, struct json_object *merged)
{
	struct json_object *v;
	if (!json_object_object_get_ex(merged, "network_static", &v))
		return;
	char why[256], text[2048], shown[256];
	/* Every layer's value was checked as it was read: this cannot fail, but say so if it does.
	 */
	if (network_static_parse(json_object_get_string(v), &st->network, why, sizeof(why)) < 0) {
		log_err("vm.network_static %s; not used", why);
		return;
	}
	st->network_static = true;
	if (*st->network.hostname && !json_object_object_get_ex(merged, "hostname", NULL))
		json_object_object_add(merged, "hostname",
				       json_object_new_string(st->network.hostname));
	int r = network_render_networkd(&st->network, text, sizeof(text));
	if (r >= 0)
		r = make_dirs(NETWORK_FILE_DIR, 0755);
	if (r >= 0)
		r = write_file_atomic(NETWORK_FILE_DIR "/" NETWORK_FILE_NAME, text, strlen(text),
				      0644);
	st->network_result = r < 0 ? r : 0;
	network_static_format(&st->network, shown, sizeof(shown));
	if (r < 0) {
		snprintf(why, sizeof(why),
			 "cannot write " NETWORK_FILE_DIR "/" NETWORK_FILE_NAME
			 " (vm.network_static): %s; stage 2 keeps its default network",
			 strerror(-r));
		warn_both(st, why);
	} else {
		log_info("static network for stage 2: %s (" NETWORK_FILE_DIR "/" NETWORK_FILE_NAME
			 ")",
			 shown);
	}
}

/* Merges the config layers and writes /persist/config.json and /run/vm-config.json; persist_fd
 * is /persist when it is mounted, else -1. */
static int config_step(const struct plan *p, struct status *st, int persist_fd,
		       struct json_object *from_creds)
{
	struct json_object *persisted = NULL;
	int r;

	_cleanup_free_ char *saved = NULL;
	if (persist_fd >= 0) {
		/* Untrusted: read beneath /persist without following a link, a regular file only,
		 * bounded; then every key and value is validated (config.c). */
		r = beneath_read(persist_fd, "config.json", PERSIST_CONFIG_MAX, &saved, NULL);
		bool bad = r == 0 && config_layer_from_json(saved, "/persist/config.json",
							    &persisted, NULL, config_warn, st) < 0;
		if (r < 0 && r != -ENOENT) {
			char msg[256];
			snprintf(msg, sizeof(msg), "cannot read /persist/config.json: %s",
				 r == -ELOOP	? "it is a symlink"
				 : r == -EBADFD ? "it is not a regular file"
				 : r == -EFBIG	? "it is larger than 64 KiB"
						: strerror(-r));
			warn_both(st, msg);
			bad = r == -ELOOP || r == -EBADFD || r == -EFBIG || r == -EXDEV;
		}
		if (bad) {
			/* Keep it for inspection; never lose what was on /persist. */
			char moved[PATH_MAX], msg[PATH_MAX + 64];
			free(saved);
			saved = NULL;
			if (persist_move_aside(persist_fd, "config.json", moved, sizeof(moved)) ==
			    0) {
				snprintf(msg, sizeof(msg),
					 "moved the unreadable /persist/config.json to /persist/%s",
					 moved);
				warn_both(st, msg);
			}
		}
	}
	struct json_object *layers[] = {p->config_embedded, persisted, from_creds,
					p->config_cmdline};
	struct json_object *merged = config_merge(layers, ARRAY_SIZE(layers));
	json_object_put(persisted);
	if (!merged)
		return -ENOMEM;
	network_step(st, merged);
	_cleanup_free_ char *text = config_to_string(merged);
	json_object_put(merged);
	if (!text)
		return -ENOMEM;

	int result = 0;
	/* Most boots change nothing: then leave the file (and the disk) alone. */
	if (persist_fd >= 0 && !(saved && strcmp(saved, text) == 0)) {
		/* Root-only: credentials feed it (config is still no place for secrets). */
		r = write_file_atomic_at(persist_fd, "config.json", text, strlen(text), 0600);
		if (r < 0) {
			char msg[256];
			snprintf(msg, sizeof(msg), "cannot write /persist/config.json: %s",
				 strerror(-r));
			warn_both(st, msg);
			result = r;
		}
	}
	r = write_file_atomic(RUN_CONFIG, text, strlen(text), 0600);
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
		/* Recorded even when the copy failed (or was not tried again): its figures say
		 * how far it got. */
		st->seeded = true;
		st->seed = ss;
		st->seed_result = r;
	}
	if (copied && r >= 0) {
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
		status_reason(st, STATUS_REASON_STORE,
			      "/nix is not the bound copy of the store: %s", why);
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
		status_reason(st, STATUS_REASON_STORE, "/nix stays the factory store: %s", why);
		log_err("/nix stays the factory store: %s", why);
	} else {
		strcpy(st->store, "overlay");
		log_info("/nix is an overlay: factory store below, /persist/nix/upper "
			 "above, factory store also at /nix/.ro-store");
	}
}

/*
 * Whatever the outcome, no TPM2 token bound to the boot value of TPM2_LOCK_PCR may unseal once
 * stage 2 runs: extend it now. Tokens enrolled with factory-init's default policy (and
 * systemd-cryptenroll --tpm2-pcrs=...+15:sha256=0...) then stay sealed until the next boot.
 */
static void tpm2_lock_step(struct status *st)
{
	uint64_t t = now_ms();
	st->tpm2_lock_pcr = TPM2_LOCK_PCR;
	int r = tpm2_extend_pcr(NULL, TPM2_LOCK_PCR, TPM2_LOCK_EVENT, st->tpm2_lock_detail,
				sizeof(st->tpm2_lock_detail));
	st->tpm2_lock_result = r;
	if (r == 0)
		strscpy(st->tpm2_lock_detail, "no TPM2", sizeof(st->tpm2_lock_detail));
	status_step(st, "tpm2-lock", now_ms() - t, r < 0 ? r : 0);
	if (r > 0)
		log_info("TPM2 locked for stage 2: %s", st->tpm2_lock_detail);
	else if (r < 0) {
		char msg[256];
		snprintf(msg, sizeof(msg),
			 "cannot extend the TPM2's PCR %u (%s): stage 2 could unseal this boot's "
			 "TPM2 tokens",
			 TPM2_LOCK_PCR, st->tpm2_lock_detail);
		warn_both(st, msg);
	}
}

/* The device-mapper UUID of a mapping ("CRYPT-LUKS2-<uuid>-<name>" for dm-crypt on LUKS2). */
static int dm_uuid(const char *path, char *out, size_t size)
{
	struct stat sb;
	if (stat(path, &sb) < 0)
		return -errno;
	if (!S_ISBLK(sb.st_mode))
		return -ENOTBLK;
	char sys[64];
	snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/dm/uuid", major(sb.st_rdev),
		 minor(sb.st_rdev));
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = read_file(sys, 256, &text, &len);
	if (r < 0)
		return r;
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
		text[--len] = '\0';
	return strscpy(out, text, size) < 0 ? -ENAMETOOLONG : 0;
}

/*
 * vm.persist.opened: another program (systemd-cryptsetup, from crypttab) unlocked the volume;
 * its mapping is /persist's device. Nothing is unlocked here. It must be a LUKS mapping unless
 * vm.persist.encrypted=no.
 */
static int use_opened(const struct plan *p, struct status *st, const char *persist_dir)
{
	uint64_t t = now_ms();
	struct dev_spec spec = {PERSIST_PATH, p->persist_opened, 0};
	struct blockdev dev;
	strscpy(st->device, p->persist_opened, sizeof(st->device));
	int r = devices_wait(&spec, p->persist_timeout_s * 1000u, &dev);
	status_step(st, "device", now_ms() - t, r);
	if (r < 0) {
		status_reason(st, STATUS_REASON_NO_DISK,
			      "%s (vm.persist.opened) did not appear within %u s: the program that "
			      "should open it (systemd-cryptsetup?) did not",
			      p->persist_opened, p->persist_timeout_s);
		return r;
	}
	strscpy(st->fstype, dev.type, sizeof(st->fstype));
	char uuid[160] = "";
	r = dm_uuid(p->persist_opened, uuid, sizeof(uuid));
	st->luks = r == 0 && strncmp(uuid, "CRYPT-LUKS", 10) == 0;
	if (p->persist_require_luks && !st->luks) {
		status_reason(st, STATUS_REASON_REFUSED,
			      "%s (vm.persist.opened) is not a LUKS mapping (%s%s%s); refused: "
			      "vm.persist.encrypted=no allows it",
			      p->persist_opened, r < 0 ? "not a device-mapper device: " : "UUID \"",
			      r < 0 ? strerror(-r) : uuid, r < 0 ? "" : "\"");
		return -EMEDIUMTYPE;
	}
	strscpy(st->unlock, "opened", sizeof(st->unlock));
	char why[512] = "";
	r = mount_persist(p, st, p->persist_opened, persist_dir, why, sizeof(why));
	if (r < 0)
		return r;
	log_info("mounted %s on /persist (opened by another program, %s; btrfs, %s)",
		 p->persist_opened, st->luks ? uuid : "not LUKS", p->persist_options);
	return 0;
}

void persist_setup(struct plan *p, struct status *st, const char *root)
{
	char persist_dir[PATH_MAX], nix_dir[PATH_MAX], desc[160];
	_cleanup_close_ int persist_fd = -1;
	uint64_t t = now_ms();
	int r;

	/* Whatever the disk turns out to be, a key on the command line is readable in stage 2. */
	st->key_in_cmdline = p->key_in_cmdline;
	if (p->key_in_cmdline)
		warn_both(st, "a LUKS key is on the kernel command line (vm.luks.key= or a "
			      "vm.luks.key credential): stage 2 can read it in /proc/cmdline");

	/*
	 * System credentials: the command line's (moved out of the plan: the lowest source, so
	 * the base), then fw_cfg and SMBIOS; in helper mode also the directory the outer systemd
	 * filled. The values stay in locked memory.
	 */
	struct credentials creds = p->creds;
	p->creds = (struct credentials){0};
	if (p->import_credentials) {
		if (p->read_credentials_dir)
			credentials_read_dir(credentials_default_dir(), &creds, config_warn, st);
		/* systemd read SMBIOS and fw_cfg already and passed what ImportCredential= names:
		 * reading them again would only give "already set" warnings. */
		if (p->read_credentials_dir && secure_getenv("CREDENTIALS_DIRECTORY"))
			log_debug("system credentials: only those systemd passed in "
				  "$CREDENTIALS_DIRECTORY");
		else
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
	/* Parsed once: the config layer waits for the merge, the control keys go into the plan. */
	struct json_object *from_creds = NULL, *control = NULL;
	if (credentials_config_layer(&creds, &from_creds, &control, config_warn, st) < 0)
		log_err("system credentials: out of memory; none taken");
	char applied[512], overridden[256];
	plan_apply_credentials(p, control, applied, sizeof(applied), overridden,
			       sizeof(overridden));
	json_object_put(control);
	if (*applied)
		log_info("from system credentials: %s", applied);
	if (*overridden)
		log_info("the command line overrides the credentials' %s", overridden);
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

	if (p->persist_opened[0]) {
		if (use_opened(p, st, persist_dir) < 0)
			goto config;
		goto mounted;
	}

	/* The root's device (and disk) cannot hold /persist: the scan skips it. */
	struct stat rst;
	struct dev_spec spec = {p->persist_kind, p->persist,
				stat(root, &rst) == 0 ? rst.st_dev : 0};
	struct blockdev devs[32];
	size_t n_devs = 0;
	r = devices_wait_all(&spec, p->persist_timeout_s * 1000u, devs, ARRAY_SIZE(devs), &n_devs);
	status_step(st, "device", now_ms() - t, r);
	if (r < 0) {
		status_reason(st, STATUS_REASON_NO_DISK,
			      "no data disk: %s did not appear within %u s",
			      dev_describe(p, desc, sizeof(desc)), p->persist_timeout_s);
		goto config;
	}
	struct persist_candidates cands;
	size_t n_try = devices_candidates(&spec, p->persist_require_luks, devs, n_devs, &cands);
	for (size_t i = 0; i < cands.n; i++) {
		const struct blockdev *d = &cands.c[i].dev;
		log_info("data disk candidate: %s (%s%s%s)%s%s", d->devname,
			 *d->type ? d->type : "no signature", *d->label ? ", label " : "", d->label,
			 cands.c[i].verdict == CAND_REFUSED ? ": refused, " : "",
			 cands.c[i].verdict == CAND_REFUSED ? cands.c[i].detail : "");
	}
	int used = open_candidates(p, st, &cands, n_try, &creds, persist_dir);
	for (size_t i = 0; i < cands.n; i++)
		status_candidate(st, cands.c[i].dev.devname, cands.c[i].dev.type,
				 cands.c[i].dev.label, cand_verdict_name(cands.c[i].verdict),
				 cands.c[i].detail);
	/* Nothing to unlock or mount: a blank disk may become /persist (never one that was tried).
	 */
	if (used < 0 && n_try == 0 && p->provision)
		used = provision_run(p, st, &spec, devs, n_devs, &creds, persist_dir);
	if (used < 0)
		goto config;
mounted:
	st->persist = true;

	persist_fd = open(persist_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (persist_fd < 0)
		log_err("cannot open /persist: %s", strerror(errno));
	int checked = persist_fd < 0 ? -errno : persist_check_tree(persist_fd, config_warn, st);
	if (p->store == STORE_OFF) {
		strcpy(st->store, "off");
	} else if (checked < 0) {
		status_reason(st, STATUS_REASON_UNTRUSTED,
			      "/nix stays the factory store: /persist holds a path stage 1 "
			      "cannot trust or move aside (see the warnings)");
		log_err("%s", st->reason);
	} else {
		store_step(p, st, root, nix_dir, persist_dir);
	}
config:
	if (!st->persist)
		log_err("booting on the factory store: %s", st->reason);
	t = now_ms();
	r = config_step(p, st, persist_fd, from_creds);
	json_object_put(from_creds);
	credentials_free(&creds);
	status_step(st, "config", now_ms() - t, r);
	tpm2_lock_step(st);
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

/* Writes STATUS_DIR/status.json and METRICS_FILE (under root, "" for /) atomically. */
static int status_write(const struct status *st, const char *root)
{
	char dir[PATH_MAX], path[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s%s", root, STATUS_DIR);
	snprintf(path, sizeof(path), "%s/status.json", dir);
	int r = make_dirs(dir, 0755);
	if (r < 0)
		return r;
	_cleanup_free_ char *text = status_to_json(st);
	if (!text)
		return -ENOMEM;
	r = write_file_atomic(path, text, strlen(text), 0644);
	if (r < 0)
		return r;
	/* The same record for node-exporter's textfile collector, in a directory of its own. */
	snprintf(dir, sizeof(dir), "%s%s", root, METRICS_DIR);
	snprintf(path, sizeof(path), "%s%s", root, METRICS_FILE);
	_cleanup_free_ char *metrics = metrics_render(st, FACTORY_INIT_VERSION);
	if (!metrics)
		return -ENOMEM;
	if ((r = make_dirs(dir, 0755)) < 0)
		return r;
	return write_file_atomic(path, metrics, strlen(metrics), 0644);
}

static void write_records(const struct plan *p, const struct status *st)
{
	int r = status_write(st, "");
	if (r < 0)
		log_err("cannot write " STATUS_DIR "/status.json or " METRICS_FILE ": %s",
			strerror(-r));
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

int inputs_read(const char *cmdline_override, const char *config_path, char **cmdline,
		char **embedded, char *why, size_t why_len)
{
	*cmdline = NULL;
	*embedded = NULL;
	int r = 0, e;
	if (cmdline_override) {
		if (!(*cmdline = strdup(cmdline_override)))
			return -ENOMEM;
	} else if ((e = read_file("/proc/cmdline", CMDLINE_MAX_READ, cmdline, NULL)) < 0) {
		snprintf(why, why_len, "cannot read /proc/cmdline: %s", strerror(-e));
		r = e;
	}
	e = read_file(config_path, 1 << 20, embedded, NULL);
	if (e < 0 && e != -ENOENT && r == 0) {
		snprintf(why, why_len, "cannot read %s: %s", config_path, strerror(-e));
		r = e;
	}
	return r;
}

static void build_plan(struct plan *p, const char *cmdline_override, const char *config_path)
{
	_cleanup_free_ char *cmdline = NULL;
	_cleanup_free_ char *embedded = NULL;
	char why[PATH_MAX + 64];
	/* As PID 1 nothing is fatal here: what cannot be read leaves its defaults. */
	if (inputs_read(cmdline_override, config_path, &cmdline, &embedded, why, sizeof(why)) < 0)
		log_err("%s; using defaults for it", why);
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
	plan_set_mode(p, strcmp(mode, "helper") == 0);
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
	status_reason(st, STATUS_REASON_FATAL, "cannot boot: %s", msg);
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
	struct dev_spec root_spec = {p.root_kind, p.root, 0};
	struct blockdev rootdev;
	char why[512] = "";
	int r = devices_wait(&root_spec, p.root_timeout_s * 1000u, &rootdev);
	if (r < 0)
		fatal(&p, &st, "the factory root %s did not appear within %u s", p.root,
		      p.root_timeout_s);
	mkdir("/sysroot", 0755);
	/* The probe already read the type: spare libmount a second probe of the same disk. */
	const char *fstype = *p.rootfstype ? p.rootfstype : rootdev.type;
	r = mount_fs(rootdev.devname, "/sysroot", fstype, p.root_options, why, sizeof(why));
	status_step(&st, "root", now_ms() - t, r);
	if (r < 0)
		fatal(&p, &st, "%s", why);
	log_info("mounted the factory root %s on /sysroot (%s)", rootdev.devname, p.root_options);

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
