/* SPDX-License-Identifier: MIT */
/* What stage 1 did and how long each step took: /run/factory-init/status.json. Pure: the record
 * only; stage1.c writes it. */
#ifndef FACTORY_INIT_STATUS_H
#define FACTORY_INIT_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "network.h"
#include "seed.h"

#define STATUS_DIR "/run/factory-init"
#define STATUS_MAX_STEPS 32
#define STATUS_MAX_WARNINGS 48

/* The reason codes (status.json "reason_code", the metrics' reason label). */
#define STATUS_REASON_NO_DISK "no-disk"	     /* no data disk appeared in time */
#define STATUS_REASON_REFUSED "refused"	     /* every candidate was refused (not LUKS, ...) */
#define STATUS_REASON_NO_KEY "no-key"	     /* no unlock method had a key to try */
#define STATUS_REASON_UNLOCK "unlock-failed" /* keys were tried and none opened it */
#define STATUS_REASON_MOUNT "mount-failed"   /* unlocked, but Btrfs did not mount */
#define STATUS_REASON_UNTRUSTED "persist-untrusted" /* /persist holds a path stage 1 refuses */
#define STATUS_REASON_STORE "store-failed"	   /* /persist is mounted; /nix is not as planned */
#define STATUS_REASON_FATAL "fatal"		   /* stage 1 could not boot at all */
#define STATUS_REASON_NOT_BLANK "not-blank"	   /* provisioning asked for; no disk was blank */
#define STATUS_REASON_PROVISION "provision-failed" /* provisioning a blank disk failed */

struct status_step {
	char name[32];
	uint64_t ms;
	int result; /* 0 or a negative errno */
};

#define STATUS_MAX_ATTEMPTS 16

/* One unlock attempt: which method, how it ended and why. */
struct status_attempt {
	char device[64]; /* the candidate it was tried on */
	char method[16]; /* "tpm2", "credential", "cmdline-key", "keyfile", "passphrase" */
	char source[64]; /* which token, credential origin, file... ("token 0", "smbios") */
	int result;	 /* the key slot opened (>= 0) or a negative errno */
	uint64_t ms;
	char detail[256]; /* the reason it failed, or "" */
};

#define STATUS_MAX_CANDIDATES 8

/* A device the data-disk spec named, and what became of it (devices.h: cand_verdict). */
struct status_candidate {
	char device[64], type[32], label[128];
	char verdict[16];
	char detail[192];
};

struct status {
	const char *mode;     /* "stage1" or "helper" */
	bool persist;	      /* outcome: /persist mounted */
	char reason[1024];    /* why we fell back (or why the store is not as planned) */
	char reason_code[24]; /* its STATUS_REASON_* word, "" with no reason */
	char device[256];     /* the data disk we used or tried */
	char fstype[32];      /* what blkid found on it */
	bool luks;	      /* it was LUKS-encrypted */
	char unlock[32];      /* the method that unlocked (as in status_attempt), "" if none */
	struct status_candidate candidates[STATUS_MAX_CANDIDATES];
	size_t n_candidates;
	struct status_attempt attempts[STATUS_MAX_ATTEMPTS];
	size_t n_attempts;
	bool key_in_cmdline; /* the key sat in /proc/cmdline, readable by stage 2 */
	char store[16]; /* "overlay", "bind", "off" or "factory" (planned store not possible) */
	char factory_id[128];	    /* the factory image's identity (see seed.h) */
	char factory_previous[128]; /* the identity recorded on /persist, "" on a first boot */
	bool refreshed;		    /* the image changed since the last boot */
	bool seeded;		    /* bind mode copied store data this boot */
	struct seed_stats seed;	    /* what that copy did, when seeded */
	int seed_result;	    /* 0, or why it failed (-ENOSPC: /persist too small) */
	char tpm2[128];		    /* "none", or the TPM found ("/dev/tpmrm0, manufacturer IBM") */
	/* The TPM locked before stage 2: PCR tpm2_lock_pcr extended (no token bound to its boot
	 * value unseals until reboot). tpm2_lock_result: 1 done, 0 no TPM, <0 an errno. */
	int tpm2_lock_result;
	unsigned tpm2_lock_pcr;
	char tpm2_lock_detail[160];
	/* vm.persist.provision (provision.h): "" not asked for, else "done", "refused" (the disk
	 * was left untouched, detail says which test refused it) or "failed" (detail says why). */
	char provision[16];
	char provision_detail[320];
	bool provisioned;	/* this boot made the data disk */
	char luks_uuid[40];	/* the LUKS volume it made */
	char age_recipient[64]; /* the public half of /persist/keys/host.agekey (age1...) */
	/* vm.network_static, when the config has it: what stage 2's networkd was given. */
	bool network_static;
	struct net_static network;
	int network_result; /* 0: NETWORK_FILE_NAME written; <0: why not */
	char warnings[STATUS_MAX_WARNINGS][256];
	size_t n_warnings;
	struct status_step steps[STATUS_MAX_STEPS];
	size_t n_steps;
	uint64_t started_ms, total_ms;
};

void status_init(struct status *st, const char *mode, uint64_t started_ms);
void status_warn(struct status *st, const char *msg);
/*
 * Records why the boot fell back (or the store is not as planned): the first call wins, later
 * failures only follow from it. code is one of the STATUS_REASON_* words (a metric label and a
 * stable key for scripts); the text says it in full.
 */
void status_reason(struct status *st, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Records an unlock attempt (dropped past STATUS_MAX_ATTEMPTS). */
void status_attempt(struct status *st, const char *device, const char *method, const char *source,
		    int result, uint64_t ms, const char *detail);
/* Records a data-disk candidate (dropped past STATUS_MAX_CANDIDATES). */
void status_candidate(struct status *st, const char *device, const char *type, const char *label,
		      const char *verdict, const char *detail);
void status_step(struct status *st, const char *name, uint64_t ms, int result);
/* Did the probe find a TPM2 (st->tpm2 neither "" nor "none")? */
bool status_tpm2_present(const struct status *st);
/* The status as JSON text; the caller frees it. (Written by the executor: stage1.c.) */
char *status_to_json(const struct status *st);

#endif
