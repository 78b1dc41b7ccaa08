/* SPDX-License-Identifier: MIT */
/*
 * age X25519 identities (age-encryption.org/v1), as age-keygen writes them: the identity is 32
 * random bytes, its text form Bech32 (BIP 173) with the prefix "AGE-SECRET-KEY-" in upper case;
 * the recipient is X25519(identity, basepoint) with the prefix "age". The scalar multiplication is
 * mbedTLS's (its ECP module with Curve25519, already in the static binary through tpm2-tss's
 * crypto backend): nettle's curve25519 lives in libhogweed, which needs GMP, and costs the
 * static binary 151 KB (measured). Bech32 is written here because none of our libraries has it,
 * and it is sixty lines. Pure: the caller supplies the random bytes and wipes what it is given
 * back.
 */
#ifndef FACTORY_INIT_AGEKEY_H
#define FACTORY_INIT_AGEKEY_H

#include <stddef.h>
#include <stdint.h>

#define AGEKEY_SIZE 32
/* "AGE-SECRET-KEY-1" + 52 data + 6 checksum characters, and a NUL */
#define AGEKEY_SECRET_LEN 75
/* "age1" + 52 + 6, and a NUL */
#define AGEKEY_RECIPIENT_LEN 63

/* The recipient (age1..., lower case) of the identity scalar. Returns 0, or -EIO when mbedTLS
 * fails (out of memory). */
int agekey_recipient(const uint8_t scalar[AGEKEY_SIZE], char out[AGEKEY_RECIPIENT_LEN]);
/* The identity's text form (AGE-SECRET-KEY-1..., upper case). out holds key material. */
void agekey_secret(const uint8_t scalar[AGEKEY_SIZE], char out[AGEKEY_SECRET_LEN]);
/*
 * Parses an identity's text form (len bytes, no line end; either case, not mixed, as Bech32
 * demands) into its scalar. Returns 0, or -EINVAL for anything else (wrong prefix, length,
 * character or checksum). scalar holds key material.
 */
int agekey_parse_secret(const char *text, size_t len, uint8_t scalar[AGEKEY_SIZE]);

struct secret;
/*
 * The identity file as age-keygen writes it ("# created: <UTC>", "# public key: age1...", the
 * identity), into out (key material), and the recipient into rcpt. Returns 0, -EIO (mbedTLS) or
 * -ENOMEM.
 */
int agekey_identity_file(const uint8_t scalar[AGEKEY_SIZE], long long created_unix,
			 struct secret *out, char rcpt[AGEKEY_RECIPIENT_LEN]);

/*
 * Bech32 (BIP 173, checksum constant 1: age uses Bech32, not Bech32m) of data under the
 * human-readable part hrp (lower case), in lower case, without the 90-character limit (age's keys
 * are shorter anyway). Returns the length written, or -ENOBUFS when cap is too small.
 */
int bech32_encode(const char *hrp, const uint8_t *data, size_t len, char *out, size_t cap);
/*
 * Decodes text (len bytes) whose hrp must be hrp (lower case; text may be all upper case) into
 * data (at most cap bytes; trailing bits must be zero). Returns the byte count or -EINVAL.
 */
int bech32_decode(const char *hrp, const char *text, size_t len, uint8_t *data, size_t cap);

#endif
