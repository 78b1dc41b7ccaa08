/* SPDX-License-Identifier: MIT */
/* PIN derivation of systemd-tpm2 tokens; see pinkdf.h. */
#include "pinkdf.h"
#include "base64.h"
#include "token.h"
#include "util.h"

#include <argon2.h>
#include <errno.h>
#include <nettle/hkdf.h>
#include <nettle/hmac.h>
#include <nettle/pbkdf2.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <string.h>

#define HKDF_INFO "systemd-tpm2-argon2id-lock"
#define PBKDF2_ROUNDS 10000

uint64_t pinkdf_argon2id_mem_limit(uint64_t mem_available)
{
	uint64_t half = mem_available / 2;
	return half < PINKDF_ARGON2ID_MEM_MAX ? half : PINKDF_ARGON2ID_MEM_MAX;
}

const char *pinkdf_argon2id_refusal(const struct tpm2_token *t, uint64_t mem_limit, char *buf,
				    size_t len)
{
	if (!t->argon2id_memcost)
		return NULL;
	if (t->argon2id_memcost > mem_limit)
		snprintf(buf, len,
			 "tpm2_argon2id_memcost %llu MiB is more than the %llu MiB factory-init "
			 "allows here (half the available memory, at most 1 GiB); re-enrol with "
			 "systemd-cryptenroll --tpm2-argon2id-memory=",
			 (unsigned long long)(t->argon2id_memcost >> 20),
			 (unsigned long long)(mem_limit >> 20));
	else if (t->argon2id_iterations > PINKDF_ARGON2ID_ITERATIONS_MAX)
		snprintf(buf, len, "tpm2_argon2id_iterations %u is more than %u",
			 t->argon2id_iterations, PINKDF_ARGON2ID_ITERATIONS_MAX);
	else if (t->argon2id_lanes > PINKDF_ARGON2ID_LANES_MAX)
		snprintf(buf, len, "tpm2_argon2id_lanes %u is more than %u", t->argon2id_lanes,
			 PINKDF_ARGON2ID_LANES_MAX);
	else if (t->argon2id_memcost / 1024 < 8u * t->argon2id_lanes)
		snprintf(buf, len,
			 "tpm2_argon2id_memcost %llu bytes is below Argon2's 8 KiB a lane",
			 (unsigned long long)t->argon2id_memcost);
	else
		return NULL;
	return buf;
}

static int argon2id(const struct tpm2_token *t, const struct secret *pin, uint8_t out[64])
{
	uint32_t threads = t->argon2id_lanes < PINKDF_ARGON2ID_THREADS_MAX
			       ? t->argon2id_lanes
			       : PINKDF_ARGON2ID_THREADS_MAX;
	uint8_t salt[sizeof(t->salt)];
	memcpy(salt, t->salt, t->salt_len);
	argon2_context ctx = {
	    .out = out,
	    .outlen = 64,
	    .pwd = (uint8_t *)pin->data,
	    .pwdlen = (uint32_t)pin->len,
	    .salt = salt,
	    .saltlen = (uint32_t)t->salt_len,
	    .t_cost = t->argon2id_iterations,
	    .m_cost = (uint32_t)(t->argon2id_memcost / 1024),
	    .lanes = t->argon2id_lanes,
	    .threads = threads,
	    .version = ARGON2_VERSION_13,
	    .flags = ARGON2_DEFAULT_FLAGS,
	};
	int r = argon2_ctx(&ctx, Argon2_id);
	if (r == ARGON2_MEMORY_ALLOCATION_ERROR)
		return -ENOMEM;
	return r == ARGON2_OK ? 0 : -EIO;
}

int pinkdf_derive(const struct tpm2_token *t, const struct secret *pin, struct pin_derived *out)
{
	memset(out, 0, sizeof(*out));
	if (t->argon2id_memcost) {
		uint8_t d[64];
		if (!pin->len)
			return -EINVAL;
		int r = argon2id(t, pin, d);
		if (r == 0) {
			memcpy(out->key1, d, 32);
			out->tpm_pin_len = base64_encode(d + 32, 32, out->tpm_pin);
			out->argon2id = true;
		}
		explicit_bzero(d, sizeof(d));
		return r;
	}
	if (t->salt_len) {
		uint8_t d[32];
		pbkdf2_hmac_sha256(pin->len, (const uint8_t *)pin->data, PBKDF2_ROUNDS, t->salt_len,
				   t->salt, sizeof(d), d);
		out->tpm_pin_len = base64_encode(d, sizeof(d), out->tpm_pin);
		explicit_bzero(d, sizeof(d));
		return 0;
	}
	if (pin->len > sizeof(out->tpm_pin))
		return -E2BIG;
	memcpy(out->tpm_pin, pin->data, pin->len);
	out->tpm_pin_len = pin->len;
	return 0;
}

void pinkdf_auth(const struct pin_derived *d, uint8_t auth[32])
{
	struct sha256_ctx h;
	sha256_init(&h);
	sha256_update(&h, d->tpm_pin_len, (const uint8_t *)d->tpm_pin);
	sha256_digest(&h, SHA256_DIGEST_SIZE, auth);
	explicit_bzero(&h, sizeof(h));
}

size_t pinkdf_secret(const struct pin_derived *d, const uint8_t *unsealed, size_t n, uint8_t *out,
		     size_t out_len)
{
	if (!d || !d->argon2id) {
		if (n > out_len)
			return 0;
		memcpy(out, unsealed, n);
		return n;
	}
	if (out_len < SHA256_DIGEST_SIZE)
		return 0;
	/* RFC 5869: PRK = HMAC(salt = unsealed, IKM = key1); OKM = expand(PRK, info, 32). */
	struct hmac_sha256_ctx ctx;
	uint8_t prk[SHA256_DIGEST_SIZE];
	hmac_sha256_set_key(&ctx, n, unsealed);
	hkdf_extract(&ctx, (nettle_hash_update_func *)hmac_sha256_update,
		     (nettle_hash_digest_func *)hmac_sha256_digest, SHA256_DIGEST_SIZE,
		     sizeof(d->key1), d->key1, prk);
	hmac_sha256_set_key(&ctx, sizeof(prk), prk);
	hkdf_expand(&ctx, (nettle_hash_update_func *)hmac_sha256_update,
		    (nettle_hash_digest_func *)hmac_sha256_digest, SHA256_DIGEST_SIZE,
		    sizeof(HKDF_INFO) - 1, (const uint8_t *)HKDF_INFO, SHA256_DIGEST_SIZE, out);
	explicit_bzero(&ctx, sizeof(ctx));
	explicit_bzero(prk, sizeof(prk));
	return SHA256_DIGEST_SIZE;
}

void pinkdf_wipe(struct pin_derived *d)
{
	explicit_bzero(d, sizeof(*d));
}
