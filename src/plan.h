/* SPDX-License-Identifier: MIT */
/*
 * The plan: everything stage 1 will do, decided up front from the kernel command line and the
 * embedded config. plan_build is pure; the executor (stage1.c) only carries the plan out.
 */
#ifndef FACTORY_INIT_PLAN_H
#define FACTORY_INIT_PLAN_H

#include "config.h"
#include "credentials.h"
#include "util.h"

#include <stdbool.h>
#include <stddef.h>

struct json_object;

enum store_mode {
	STORE_OVERLAY, /* overlayfs on /nix: factory /nix below, /persist/nix/upper above */
	STORE_OFF,     /* leave the factory /nix as it is */
	STORE_BIND,    /* /persist/nix: a complete copy of the factory /nix, bound on /nix */
};

enum persist_kind {
	PERSIST_AUTO, /* a LUKS2 or Btrfs volume labelled "persist", else /dev/vdb */
	PERSIST_PATH, /* a /dev path */
	PERSIST_TAG,  /* LABEL=, UUID=, PARTUUID=, PARTLABEL= */
};

/* vm.persist.encrypted: must the data disk be LUKS? */
enum persist_encrypted {
	ENCRYPTED_AUTO, /* yes under vm.persist=auto (a label is easy to forge), no for a named disk
			 */
	ENCRYPTED_YES,
	ENCRYPTED_NO,
};

#define PLAN_STR 512
#define PLAN_MAX_WARNINGS 32
#define PLAN_MAX_INIT_ARGS 64 /* what stage 1 passes on to init (the kernel's argv) */

#define DEFAULT_ROOT "/dev/vda"
#define DEFAULT_INIT "/sbin/init"
#define DEFAULT_PERSIST_LABEL "persist"
#define DEFAULT_PERSIST_FALLBACK "/dev/vdb"
#define DEFAULT_PERSIST_TIMEOUT_S 10
#define DEFAULT_PERSIST_OPTIONS "compress=zstd"
#define DEFAULT_ROOT_TIMEOUT_S 30
#define EMBEDDED_CONFIG_PATH "/etc/vm-config.json"
#define DEFAULT_LUKS_TRIES 3
#define DEFAULT_LUKS_TIMEOUT_S 60
#define DEFAULT_TPM2_TIMEOUT_S 2
/* The PCRs a provisioned disk's TPM2 token is sealed to (enroll.h: ENROLL_DEFAULT_PCRS): PCR 7
 * as it is at provisioning, and PCR 15 at its boot value, which stage 1 extends before stage 2 */
#define DEFAULT_PROVISION_PCRS                                                                     \
	"7+15:sha256=0000000000000000000000000000000000000000000000000000000000000000"
#define DEFAULT_KEYFILE "/etc/factory-init/keyfile" /* where dracut-like/ puts an embedded key */

struct plan {
	/* The factory root and what runs after us. */
	char root[PLAN_STR];
	char rootfstype[64]; /* "" lets libmount probe */
	char rootflags[PLAN_STR];
	bool root_rw;
	unsigned root_timeout_s;
	char init[PLAN_STR];
	int panic_s; /* the kernel's panic=: 0 halts for ever, >0 reboots after, <0 at once */
	bool quiet;
	bool debug;

	/* The data disk. */
	enum persist_kind persist_kind;
	char persist[PLAN_STR]; /* as given (or the default), e.g. LABEL=persist or /dev/vdb */
	unsigned persist_timeout_s;
	char persist_options[PLAN_STR];		  /* the whole Btrfs option string */
	enum persist_encrypted persist_encrypted; /* as given */
	bool persist_require_luks; /* the decision: refuse an unencrypted data disk */
	/* vm.persist.opened: a mapping another program (systemd-cryptsetup) opened; "" = none.
	 * Then nothing is unlocked or scanned: that device is /persist's. */
	char persist_opened[PLAN_STR];
	enum store_mode store;
	/* vm.persist.provision: make a blank data disk the LUKS2 + Btrfs /persist (provision.h) */
	bool provision;
	char provision_pcrs[160]; /* vm.persist.provision.pcrs: its TPM2 token's PCRs */

	/* Unlocking: the key itself never leaves this struct except into libcryptsetup. */
	struct secret key;   /* vm.luks.key, from /proc/cmdline (so stage 2 can read it too) */
	bool key_in_cmdline; /* vm.luks.key= or a vm.luks.key credential in /proc/cmdline */
	char keyfile[PLAN_STR];
	bool keyfile_explicit; /* vm.luks.keyfile was given: a missing file is worth a warning */
	enum unlock_method methods[UNLOCK_N_METHODS]; /* vm.luks=: the order of attempts */
	size_t n_methods;
	unsigned luks_tries;	 /* vm.luks.tries: passphrase attempts */
	unsigned luks_timeout_s; /* vm.luks.timeout: how long to wait for typing, 0 = ever */
	unsigned tpm2_timeout_s; /* vm.luks.tpm2.timeout: wait for the TPM device */

	/*
	 * System credentials from the command line (systemd.set_credential=); stage 1 adds those
	 * from fw_cfg and SMBIOS once their drivers are loaded, unless import_credentials is off
	 * (systemd.import_credentials=0).
	 */
	struct credentials creds;
	bool import_credentials;
	/* The credential-settable control keys (vm_key_from_credential) the command line set: it
	 * outranks credentials. */
	char cmdline_controls[4][VM_NAME_MAX + 1];
	size_t n_cmdline_controls;

	/* Config layers (json-c objects, owned) before /persist is seen. */
	struct json_object *config_embedded;
	struct json_object *config_cmdline;

	/* Decisions derived from the above (plan_build), so the executor only carries them out. */
	enum persist_kind root_kind;	 /* PERSIST_PATH or PERSIST_TAG */
	char root_options[PLAN_STR + 8]; /* "ro" or "rw", then rootflags */
	bool may_prompt;		 /* passphrase and TPM2 PIN prompts allowed */
	bool helper;			 /* plan_set_mode: inside another stage 1 */
	bool read_credentials_dir;	 /* read $CREDENTIALS_DIRECTORY (helper mode only) */

	char warnings[PLAN_MAX_WARNINGS][256];
	size_t n_warnings;
	/* Warnings past the cap: the last slot then reads "... and N more warnings" instead of
	 * naming one; this is N (0 while every warning has its own slot). */
	size_t n_warnings_dropped;
};

/*
 * Builds the plan from the command line text and the embedded config text (either may be NULL).
 * Malformed values are reported in plan->warnings and replaced by that key's default; this only
 * fails (-ENOMEM, -E2BIG) when no plan can be made at all.
 */
int plan_build(const char *cmdline, const char *embedded_config, struct plan *plan);
void plan_free(struct plan *plan);
/*
 * Applies the control keys system credentials set (control: credentials_config_layer's control
 * layer, NULL for none) above the embedded config and below the command line. Writes what it
 * applied ("vm.persist.provision=1, ...", "" for nothing) to applied, and what the command line
 * overrode to overridden. Pure.
 */
void plan_apply_credentials(struct plan *plan, struct json_object *control, char *applied,
			    size_t applied_len, char *overridden, size_t overridden_len);
/* Completes the plan for how factory-init runs: as PID 1 (false) or inside another stage 1. */
void plan_set_mode(struct plan *plan, bool helper);

/*
 * Appends a warning (printf-style). Past PLAN_MAX_WARNINGS, the last slot counts the rest: 45
 * warnings give 31 named ones and "... and 14 more warnings".
 */
void plan_warn(struct plan *plan, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The kernel modules stage 1 loads, in order (the initrd must carry them). */
extern const char *const plan_modules[];
extern const size_t plan_n_modules;

#define PLAN_MAX_MODULES 24
/*
 * The modules to load on this CPU, given the "flags" line of /proc/cpuinfo (NULL if unknown):
 * plan_modules, preceded by sha256_ssse3 when the CPU can run it. The kernel hashes every signed
 * module it loads (twice, on Debian) with the best sha256 it has at that moment, so loading the
 * fast one first saves about 0.17 s on btrfs.ko alone; on a CPU without SSSE3, AVX or SHA-NI it
 * would only fail. Returns the count written to out (at most max).
 */
size_t plan_modules_for_cpu(const char *cpu_flags, const char **out, size_t max);

/* Every module the initrd must carry (plan_modules and the CPU-specific one). */
size_t plan_initrd_modules(const char **out, size_t max);

/*
 * True for the modules without which stage 1 cannot do its work on a kernel that lacks them
 * built in: virtio_pci, virtio_blk, dm_crypt, btrfs, overlay. The others only speed it up or
 * serve one method (sha256_ssse3, xts when dm-crypt has it built in, the TPM drivers,
 * qemu_fw_cfg, ext4, AF_ALG): missing from a kernel, they are skipped with an info line.
 */
bool plan_module_required(const char *name);

/* What one kernel has of a module the plan names (modules_resolve finds it out). */
enum module_kind { MODULE_LOADABLE, MODULE_BUILTIN, MODULE_ABSENT };

/* A kernel's answer for every module of plan_initrd_modules, in that order. */
struct module_resolution {
	const char *kver;
	size_t n;
	const char *names[PLAN_MAX_MODULES];
	enum module_kind kinds[PLAN_MAX_MODULES];
};

const char *store_mode_name(enum store_mode m);

/* The plan as pretty JSON (no key material, only whether one was given); caller frees. */
char *plan_to_json(const struct plan *plan);

/*
 * The same, for one kernel: "modules" holds only what that kernel has as modules (what the
 * initrd must carry), "modules_builtin" and "modules_absent" the rest, "kernel" its version.
 * res NULL: as plan_to_json.
 */
char *plan_to_json_for(const struct plan *plan, const struct module_resolution *res);

#endif
