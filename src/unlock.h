/* SPDX-License-Identifier: MIT */
/* Opening a LUKS volume with libcryptsetup: the header once, then one key or token at a time. */
#ifndef FACTORY_INIT_UNLOCK_H
#define FACTORY_INIT_UNLOCK_H

#include "util.h"

#include <stdbool.h>
#include <stddef.h>

#define PERSIST_DM_NAME "persist"
#define LUKS2_MAX_TOKENS 32

struct crypt_device;

/* Routes libcryptsetup's messages into our log and turns off its lock files (none in an initrd). */
void unlock_setup(bool debug);

/*
 * Reads the LUKS header of device. Returns 0 with *cd set (free with unlock_free), or a negative
 * errno with a one-line reason in why (-EINVAL: no readable LUKS header).
 */
int unlock_load(const char *device, struct crypt_device **cd, char *why, size_t why_len);
void unlock_free(struct crypt_device **cd);

/*
 * Opens the volume as /dev/mapper/<name> (name NULL: only checks the key) with key, trying
 * keyslot (or every slot when keyslot < 0). Returns the key slot used (>= 0), -EPERM when no key
 * slot accepts the key, or another negative errno, with a one-line explanation in why.
 */
int unlock_with_key(struct crypt_device *cd, const char *name, int keyslot,
		    const struct secret *key, char *why, size_t why_len);

/*
 * Finds the first token at or after *id whose type is type; sets *id and *json (owned by cd) and
 * returns 0, or -ENOENT when there is none left.
 */
int unlock_next_token(struct crypt_device *cd, const char *type, int *id, const char **json);

/* The PBKDF for a TPM2 token's key slot, as systemd-cryptenroll sets it (the slot's passphrase is
 * 256 random bits): PBKDF2-SHA512, 1000 iterations, no benchmark. Returns 0 or a negative errno. */
int unlock_use_tpm2_slot_pbkdf(struct crypt_device *cd);

struct tpm2_token;
/*
 * Writes tok as the systemd-tpm2 token of key slot slot (setting its keyslots to that one); on
 * failure destroys that key slot again. Returns the token id, or a negative errno.
 */
int unlock_add_tpm2_token(struct crypt_device *cd, struct tpm2_token *tok, int slot);

/* Closes /dev/mapper/<name> again (after a failed mount). */
int unlock_close(const char *name);

#endif

/* ---- the chain of attempts ---------------------------------------------------------------- */
struct plan;
struct status;
struct credentials;

/* Which methods a pass of unlock_run runs. */
enum unlock_round {
	UNLOCK_ROUND_QUIET,  /* those that need no one at the console */
	UNLOCK_ROUND_PROMPT, /* the passphrase prompt, and TPM2 tokens with a PIN */
};

/*
 * Tries the plan's unlock methods of this round in order (vm.luks=, default tpm2, credential,
 * key, keyfile, passphrase) until one opens device as /dev/mapper/PERSIST_DM_NAME. Each method
 * that does not apply is skipped; each attempt is logged and recorded in st->attempts; st->unlock
 * names the winner. *tried is set when some method had a key to try. Returns 0, or a negative
 * errno with the last failure in why.
 */
int unlock_run(const struct plan *p, struct status *st, const char *device,
	       const struct credentials *creds, enum unlock_round round, bool *tried, char *why,
	       size_t why_len);

/* The fallback reason when none of devices ("/dev/vdb, /dev/vdc") opened: every attempt's reason
 * in one line. */
void unlock_reason(const struct plan *p, const struct status *st, const char *devices, bool tried,
		   char *out, size_t out_len);
