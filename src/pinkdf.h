/* SPDX-License-Identifier: MIT */
/*
 * From a typed PIN to what the TPM sees, and from the unsealed secret to the LUKS passphrase,
 * exactly as systemd-cryptsetup does for systemd-tpm2 tokens (read from systemd 262's
 * src/shared/cryptsetup-tpm2.c and tpm2-util.c):
 *
 *   no tpm2_salt (252):  TPM PIN = the PIN
 *   tpm2_salt (253+):    TPM PIN = base64(PBKDF2-HMAC-SHA256(PIN, salt, 10000 rounds, 32 bytes))
 *   Argon2id (262, --tpm2-with-pin=yes): D = Argon2id v1.3(PIN, salt, t = iterations,
 *                        m = memcost / 1024 KiB, p = lanes, 64 bytes); TPM PIN = base64(D[32..64]);
 *                        after the unseal, secret = HKDF-SHA256(key = D[0..32], salt = the
 *                        unsealed bytes, info = "systemd-tpm2-argon2id-lock", 32 bytes)
 *   auth value (all):    SHA-256 of the TPM PIN's bytes
 *   passphrase (all):    base64 of the secret
 *
 * No system calls except the memory and threads Argon2id itself needs (libargon2). A token's
 * Argon2id cost is checked against a limit first (pinkdf_argon2id_refusal), so a token cannot
 * make stage 1 run out of memory or spin for minutes.
 */
#ifndef FACTORY_INIT_PINKDF_H
#define FACTORY_INIT_PINKDF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tpm2_token;
struct secret;

/* Most Argon2id memory a token may ask for, whatever the machine has: 1 GiB. */
#define PINKDF_ARGON2ID_MEM_MAX (UINT64_C(1) << 30)
/* Most passes and lanes (systemd's defaults: 8 passes, 4 lanes; its benchmark picks memory). */
#define PINKDF_ARGON2ID_ITERATIONS_MAX 64
#define PINKDF_ARGON2ID_LANES_MAX 16
/* Threads Argon2id runs on (lanes beyond this run on the same threads; same result). */
#define PINKDF_ARGON2ID_THREADS_MAX 4

/* What a typed PIN became: the TPM's PIN text and, for Argon2id, the key the unseal needs. */
struct pin_derived {
	char tpm_pin[512 + 1]; /* tpm_pin_len bytes (a typed PIN is at most PASSPHRASE_MAX) */
	size_t tpm_pin_len;
	uint8_t key1[32];
	bool argon2id;
};

/*
 * The memory limit for this machine: half of the available memory (MemAvailable, in bytes),
 * at most PINKDF_ARGON2ID_MEM_MAX.
 */
uint64_t pinkdf_argon2id_mem_limit(uint64_t mem_available);

/*
 * NULL when the token's Argon2id parameters (if any) are within the limits; else writes why
 * into buf (naming the field and both numbers) and returns buf.
 */
const char *pinkdf_argon2id_refusal(const struct tpm2_token *t, uint64_t mem_limit, char *buf,
				    size_t len);

/*
 * Derives the TPM PIN from a typed PIN for this token. Returns 0, -EINVAL (an empty PIN for
 * an Argon2id token, as systemd refuses it too) or -ENOMEM/-EIO from Argon2id.
 * Wipe out with pinkdf_wipe.
 */
int pinkdf_derive(const struct tpm2_token *t, const struct secret *pin, struct pin_derived *out);

/* SHA-256 of the TPM PIN: the auth value of the sealed object. */
void pinkdf_auth(const struct pin_derived *d, uint8_t auth[32]);

/*
 * The secret that becomes the passphrase: the unsealed bytes themselves, or for Argon2id the
 * HKDF of them with key1. out must hold 32 bytes or n; returns the length written.
 */
size_t pinkdf_secret(const struct pin_derived *d, const uint8_t *unsealed, size_t n, uint8_t *out,
		     size_t out_len);

void pinkdf_wipe(struct pin_derived *d);

#endif
