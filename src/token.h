/* SPDX-License-Identifier: MIT */
/*
 * LUKS2 tokens of type "systemd-tpm2", parsed and built exactly as systemd-cryptenroll writes
 * them (the shapes of systemd 252 to 257). Pure: no system calls, no TPM.
 *
 * What the versions write (each still reads all the older shapes):
 *   252  type, keyslots, tpm2-blob, tpm2-pcrs, tpm2-pcr-bank, tpm2-primary-alg, tpm2-policy-hash,
 *        tpm2-pin (always, true or false); tpm2_pubkey + tpm2_pubkey_pcrs for a signed policy
 *   253  + tpm2_salt (with a PIN)
 *   254  + tpm2_srk (the SRK at 0x81000001, serialized by Esys_TR_Serialize)
 *   255  + tpm2_pcrlock (always, true or false); tpm2-blob may carry a third part, the encrypted
 *        seed of an object sealed offline (--tpm2-device-key), to be imported first
 *   256  + tpm2_pcrlock_nv; tpm2-pin and tpm2_pcrlock only when true
 *   257  tpm2-blob and tpm2-policy-hash may be arrays ("shards": pcrlock and a signed policy)
 *   262  + tpm2_argon2id_memcost (bytes), tpm2_argon2id_iterations, tpm2_argon2id_lanes with
 *        --tpm2-with-pin=yes: the PIN goes through Argon2id (salt tpm2_salt, 64 bytes out); the
 *        second half, base64, is the PIN the TPM sees, and the unsealed secret is mixed with the
 *        first half by HKDF-SHA256 before it becomes the passphrase (see pinkdf.h).
 *        --tpm2-with-pin=direct keeps the 253 form.
 * A member named tpm2* that none of these versions writes may change how the secret is derived:
 * such a token parses, but tpm2_token_unsupported names the member, so it is skipped before a
 * PIN is asked and before the TPM sees an auth value.
 * With no PCR selected, 252 writes no tpm2-pcr-bank (seen here with Debian 12).
 *
 * Our extension: "factory-init-pcr-values": {"7": "<hex digest>", ...}, the bank's PCR values at
 * enrollment, so that a failed unseal can name the PCR that changed. Neither libcryptsetup (which
 * only requires "type" and "keyslots") nor systemd (which looks its fields up by name) rejects an
 * unknown member.
 */
#ifndef FACTORY_INIT_TOKEN_H
#define FACTORY_INIT_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TPM2_TOKEN_TYPE "systemd-tpm2"
#define TPM2_TOKEN_PCR_VALUES_KEY "factory-init-pcr-values"
#define TPM2_TOKEN_MAX_KEYSLOTS 8
#define TPM2_PCRS 24

struct tpm2_token {
	int keyslots[TPM2_TOKEN_MAX_KEYSLOTS]; /* 0..31 */
	size_t n_keyslots;		       /* at least 1 */

	/* tpm2-blob, split: each part whole, with its 2-byte big-endian size in front. */
	uint8_t *blob_private; /* TPM2B_PRIVATE */
	size_t blob_private_len;
	uint8_t *blob_public; /* TPM2B_PUBLIC */
	size_t blob_public_len;
	uint8_t *blob_seed; /* TPM2B_ENCRYPTED_SECRET of an offline seal (255+), or NULL */
	size_t blob_seed_len;
	size_t n_blobs; /* entries of tpm2-blob: 1, or the shards of 257 (only the first is kept) */

	uint32_t pcr_mask; /* tpm2-pcrs: bit i = PCR i */
	char pcr_bank[8];  /* "sha1", "sha256", "sha384", "sha512"; "" = not given, caller picks */
	char primary_alg[4];	 /* "ecc" or "rsa" (absent: "ecc"); unused when srk is set */
	uint8_t policy_hash[64]; /* tpm2-policy-hash (of the first shard): SHA-256, 32 bytes */
	size_t policy_hash_len;

	bool pin;	  /* tpm2-pin: PolicyAuthValue */
	uint8_t salt[64]; /* tpm2_salt (253+): the PIN is PBKDF2-salted, 32 bytes */
	size_t salt_len;  /* 0: none */
	uint8_t *srk;	  /* tpm2_srk (254+): serialized ESYS_TR of the parent, or NULL */
	size_t srk_len;

	/* tpm2_argon2id_* (262+), all three or none; memcost 0 = the PIN is not put through it. */
	uint64_t argon2id_memcost; /* bytes */
	uint32_t argon2id_iterations;
	uint32_t argon2id_lanes;

	/* Features we do not support (tpm2_token_unsupported names them). */
	bool pcrlock;		  /* tpm2_pcrlock: true */
	bool pcrlock_nv;	  /* tpm2_pcrlock_nv present */
	bool pubkey;		  /* tpm2_pubkey present: signed PCR policy (PolicyAuthorize) */
	uint32_t pubkey_pcr_mask; /* tpm2_pubkey_pcrs */
	char unknown[48];	  /* "member tpm2_x": the first tpm2* member we do not know */

	/* Our extension: the PCR values at enrollment (pcr_value_len bytes each). */
	uint8_t pcr_values[TPM2_PCRS][64];
	size_t pcr_value_len;	  /* 20, 32, 48 or 64; 0 when none */
	uint32_t pcr_values_mask; /* which entries are set: a subset of pcr_mask */
};

/*
 * Parses a token's JSON text into out (overwritten; free it with tpm2_token_free, which is also
 * harmless after a failure). Returns 0; -EMEDIUMTYPE when "type" is not "systemd-tpm2" (another
 * kind of token); -EINVAL for anything malformed, with why naming the field; -ENOMEM.
 * A token of a shape we cannot run still parses: ask tpm2_token_unsupported.
 */
int tpm2_token_parse(const char *json_text, struct tpm2_token *out, char *why, size_t why_len);

/*
 * NULL when factory-init can unseal this token; else a short name of the feature it cannot:
 * "tpm2_pcrlock", "tpm2_pubkey", "sharded tpm2-blob", "tpm2-blob import seed", or
 * "member tpm2_x" for a tpm2* member no systemd up to 262 writes.
 */
const char *tpm2_token_unsupported(const struct tpm2_token *t);

/* Frees what parse allocated and clears the structure. */
void tpm2_token_free(struct tpm2_token *t);

/*
 * The token as JSON text for crypt_token_json_set(), in systemd's member order and systemd 252's
 * shape (readable by 252 and every later version), plus our PCR values when pcr_values_mask is
 * set. Caller frees. NULL with errno EINVAL for an incomplete or inconsistent token, EOPNOTSUPP
 * for one tpm2_token_unsupported rejects, ENOMEM.
 */
char *tpm2_token_build(const struct tpm2_token *t);

/*
 * Parses a PCR list in systemd's --tpm2-pcrs= syntax: indexes 0..23 or systemd's names for them
 * ("secure-boot-policy" = 7, 254+), separated by '+' or ','; "" is the empty set. Value or bank
 * assignments ("7:sha256=...", 255+) are refused. Returns 0 or -EINVAL with why.
 */
int tpm2_token_pcr_mask_parse(const char *list, uint32_t *mask, char *why, size_t why_len);

#endif
