/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "token.h"
#include "util.h"

/* Real tokens, exported with `cryptsetup token export` (the tests run from the repo root). */
#define FIXTURES "src/tests/tokens/"

static char *load(const char *name)
{
	char path[256], *text = NULL;
	size_t len = 0;
	snprintf(path, sizeof(path), FIXTURES "%s", name);
	assert_int_equal(read_file(path, 65536, &text, &len), 0);
	return text;
}

static void unhex(const char *hex, uint8_t *out, size_t n)
{
	assert_int_equal(strlen(hex), 2 * n);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
}

/* The policy digest is the sealed object's authPolicy: TPM2B_PUBLIC's size (2), type (2), nameAlg
 * (2), objectAttributes (4), then authPolicy's size (2) and bytes. */
static void assert_policy_in_public(const struct tpm2_token *t)
{
	assert_true(t->blob_public_len >= 12 + 32);
	assert_memory_equal(t->blob_public + 2, "\x00\x08\x00\x0b\x00\x00\x00\x12\x00\x20", 10);
	assert_memory_equal(t->blob_public + 12, t->policy_hash, 32);
}

/* The token in /work/shared/notes (systemd 252, --tpm2-pcrs=7). */
static void test_systemd252_pcr7(void **state)
{
	(void)state;
	char *text = load("systemd252-pcr7.json");
	struct tpm2_token t;
	char why[256] = "";
	assert_int_equal(tpm2_token_parse(text, &t, why, sizeof(why)), 0);
	assert_int_equal(t.n_keyslots, 1);
	assert_int_equal(t.keyslots[0], 1);
	assert_int_equal(t.n_blobs, 1);
	assert_int_equal(t.blob_private_len, 160); /* 0x009e + 2 */
	assert_int_equal(t.blob_public_len, 80);   /* 0x004e + 2 */
	assert_memory_equal(t.blob_private, "\x00\x9e\x00\x20\xff\xd8\xe7\x44", 8);
	assert_memory_equal(t.blob_public, "\x00\x4e\x00\x08", 4);
	assert_null(t.blob_seed);
	assert_int_equal(t.pcr_mask, 1u << 7);
	assert_string_equal(t.pcr_bank, "sha256");
	assert_string_equal(t.primary_alg, "ecc");
	uint8_t hash[32];
	unhex("8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b", hash, 32);
	assert_int_equal(t.policy_hash_len, 32);
	assert_memory_equal(t.policy_hash, hash, 32);
	assert_policy_in_public(&t);
	assert_false(t.pin);
	assert_int_equal(t.salt_len, 0);
	assert_null(t.srk);
	assert_false(t.pcrlock || t.pcrlock_nv || t.pubkey);
	assert_int_equal(t.pcr_values_mask, 0);
	assert_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);
}

/* Written here by Debian 12's systemd-cryptenroll 252.39 against swtpm (--tpm2-pcrs=0+7). */
static void test_debian252_pcrs(void **state)
{
	(void)state;
	char *text = load("debian252-pcrs-0-7.json");
	struct tpm2_token t;
	char why[256] = "";
	assert_int_equal(tpm2_token_parse(text, &t, why, sizeof(why)), 0);
	assert_int_equal(t.keyslots[0], 1);
	assert_int_equal(t.blob_private_len, 160);
	assert_int_equal(t.blob_public_len, 80);
	assert_int_equal(t.pcr_mask, (1u << 0) | (1u << 7));
	assert_string_equal(t.pcr_bank, "sha256");
	uint8_t hash[32];
	unhex("02e3642b3e29eeccfffd8031c00a6f0a0febe5ceea2f6ef6b0322fe81598cf31", hash, 32);
	assert_memory_equal(t.policy_hash, hash, 32);
	assert_policy_in_public(&t);
	assert_false(t.pin);
	assert_null(tpm2_token_unsupported(&t));

	/* Built again, it is byte for byte what systemd wrote. */
	char *built = tpm2_token_build(&t);
	assert_non_null(built);
	text[strcspn(text, "\n")] = '\0';
	assert_string_equal(built, text);
	free(built);
	tpm2_token_free(&t);
	free(text);
}

/* Debian 252 with --tpm2-with-pin=yes --tpm2-pcrs= : no PCRs, so no tpm2-pcr-bank at all. */
static void test_debian252_pin_no_pcrs(void **state)
{
	(void)state;
	char *text = load("debian252-pin-nopcrs.json");
	struct tpm2_token t;
	char why[256] = "";
	assert_int_equal(tpm2_token_parse(text, &t, why, sizeof(why)), 0);
	assert_int_equal(t.keyslots[0], 2);
	assert_int_equal(t.pcr_mask, 0);
	assert_string_equal(t.pcr_bank, "");
	assert_true(t.pin);
	assert_int_equal(t.salt_len, 0); /* 252 hashed the PIN unsalted */
	assert_policy_in_public(&t);
	assert_null(tpm2_token_unsupported(&t));
	char *built = tpm2_token_build(&t);
	text[strcspn(text, "\n")] = '\0';
	assert_string_equal(built, text);
	free(built);
	tpm2_token_free(&t);
	free(text);
}

/* The token above with our extension; systemd 252 unsealed it unchanged (systemd-cryptsetup
 * attach, swtpm) and libcryptsetup with systemd's plugin imported it. */
static void test_extension(void **state)
{
	(void)state;
	char *text = load("debian252-pcrs-0-7-with-pcr-values.json");
	struct tpm2_token t;
	char why[256] = "";
	assert_int_equal(tpm2_token_parse(text, &t, why, sizeof(why)), 0);
	assert_int_equal(t.pcr_values_mask, (1u << 0) | (1u << 7));
	assert_int_equal(t.pcr_value_len, 32);
	static const uint8_t zero[32];
	assert_memory_equal(t.pcr_values[0], zero, 32);
	assert_memory_equal(t.pcr_values[7], zero, 32);
	char *built = tpm2_token_build(&t);
	text[strcspn(text, "\n")] = '\0';
	assert_string_equal(built, text);
	free(built);
	tpm2_token_free(&t);
	free(text);
}

/* ---- newer shapes, written as each version's tpm2_make_luks2_json orders its members ------- */

static char blob_b64[1024], seed_blob_b64[1200], hash_hex[65];

static void make_parts(void)
{
	char *text = load("systemd252-pcr7.json");
	json_object *o = json_tokener_parse(text);
	snprintf(blob_b64, sizeof(blob_b64), "%s",
		 json_object_get_string(json_object_object_get(o, "tpm2-blob")));
	snprintf(hash_hex, sizeof(hash_hex), "%s",
		 json_object_get_string(json_object_object_get(o, "tpm2-policy-hash")));
	/* 255+ offline seal: the same two parts, then a TPM2B_ENCRYPTED_SECRET of 4 bytes. */
	uint8_t blob[512];
	ssize_t n = base64_decode(blob_b64, strlen(blob_b64), blob, sizeof(blob));
	assert_int_equal(n, 240);
	memcpy(blob + n, "\x00\x04\xde\xad\xbe\xef", 6);
	base64_encode(blob, (size_t)n + 6, seed_blob_b64);
	json_object_put(o);
	free(text);
}

#define SALT_B64 "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=" /* 32 bytes */
#define SRK_B64 "gQAAAQAiAAuf3a3cqkBtaoSjxIv3qFs0eC0kmXi8hUjkn9A2VtwJXAAAAAEAWgAjAAsAAwByAAA="
#define PEM_B64 "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg=="

/* A token's text from a template: @B is the blob, @S the blob with a seed, @H the policy hash. */
static char *shape(const char *tmpl)
{
	size_t len = strlen(tmpl) + 1;
	for (const char *p = tmpl; *p; p++)
		if (*p == '@')
			len += sizeof(seed_blob_b64);
	char *s = malloc(len), *o = s;
	assert_non_null(s);
	for (const char *p = tmpl; *p; p++) {
		const char *sub = NULL;
		if (p[0] == '@' && p[1] == 'B')
			sub = blob_b64;
		else if (p[0] == '@' && p[1] == 'S')
			sub = seed_blob_b64;
		else if (p[0] == '@' && p[1] == 'H')
			sub = hash_hex;
		if (sub) {
			o = stpcpy(o, sub);
			p++;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return s;
}

static void parse_ok(const char *text, struct tpm2_token *t)
{
	char why[256] = "";
	int r = tpm2_token_parse(text, t, why, sizeof(why));
	if (r != 0)
		fail_msg("parse failed (%d): %s", r, why);
}

static void test_systemd253_pin_salt(void **state)
{
	(void)state;
	make_parts();
	/* systemd 253: tpm2_salt after tpm2-pin when a PIN is used. */
	char *text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"3\"],\"tpm2-blob\":\"@B\","
			   "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":"
			   "\"ecc\",\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":true,"
			   "\"tpm2_salt\":\"" SALT_B64 "\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_true(t.pin);
	assert_int_equal(t.salt_len, 32);
	assert_memory_equal(t.salt, "\xab\xcd\xef\x01\x23\x45\x67\x89", 8);
	assert_null(tpm2_token_unsupported(&t));
	char *built = tpm2_token_build(&t);
	assert_string_equal(built, text);
	free(built);
	tpm2_token_free(&t);
	free(text);
}

static void test_systemd254_srk(void **state)
{
	(void)state;
	make_parts();
	/* systemd 254: tpm2_srk last; tpm2-primary-alg is the SRK's type. */
	char *text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
			   "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":"
			   "\"rsa\",\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":false,"
			   "\"tpm2_srk\":\"" SRK_B64 "\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_string_equal(t.primary_alg, "rsa");
	assert_non_null(t.srk);
	assert_int_equal(t.srk_len, 56);
	assert_memory_equal(t.srk, "\x81\x00\x00\x01", 4);
	assert_null(tpm2_token_unsupported(&t));
	char *built = tpm2_token_build(&t);
	assert_string_equal(built, text);
	free(built);
	tpm2_token_free(&t);
	free(text);
}

static void test_systemd255(void **state)
{
	(void)state;
	make_parts();
	/* systemd 255 always writes tpm2_pcrlock; false is an ordinary token. */
	char *text =
	    shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
		  "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":"
		  "\"ecc\",\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":false,\"tpm2_pcrlock\":"
		  "false,\"tpm2_srk\":\"" SRK_B64 "\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_false(t.pcrlock);
	assert_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);

	/* A pcrlock policy (PolicyAuthorizeNV): no PCRs of its own, so no bank. */
	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
		     "\"tpm2-pcrs\":[],\"tpm2-primary-alg\":\"ecc\",\"tpm2-policy-hash\":\"@H\","
		     "\"tpm2-pin\":false,\"tpm2_pcrlock\":true,\"tpm2_srk\":\"" SRK_B64 "\"}");
	parse_ok(text, &t);
	assert_true(t.pcrlock);
	assert_string_equal(tpm2_token_unsupported(&t), "tpm2_pcrlock");
	errno = 0;
	assert_null(tpm2_token_build(&t));
	assert_int_equal(errno, EOPNOTSUPP);
	tpm2_token_free(&t);
	free(text);

	/* --tpm2-device-key= (offline seal): the blob carries the encrypted seed. */
	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@S\","
		     "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":\"ecc\","
		     "\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":false,\"tpm2_pcrlock\":false,"
		     "\"tpm2_srk\":\"" SRK_B64 "\"}");
	parse_ok(text, &t);
	assert_int_equal(t.blob_private_len, 160);
	assert_int_equal(t.blob_public_len, 80);
	assert_int_equal(t.blob_seed_len, 6);
	assert_memory_equal(t.blob_seed, "\x00\x04\xde\xad\xbe\xef", 6);
	assert_string_equal(tpm2_token_unsupported(&t), "tpm2-blob import seed");
	tpm2_token_free(&t);
	free(text);
}

static void test_systemd256(void **state)
{
	(void)state;
	make_parts();
	/* systemd 256: tpm2-pin and tpm2_pcrlock only when true; tpm2_pcrlock_nv last. */
	char *text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"0\"],\"tpm2-blob\":\"@B\","
			   "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":"
			   "\"ecc\",\"tpm2-policy-hash\":\"@H\",\"tpm2_srk\":\"" SRK_B64 "\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_false(t.pin);
	assert_int_equal(t.keyslots[0], 0);
	assert_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);

	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"0\"],\"tpm2-blob\":\"@B\","
		     "\"tpm2-pcrs\":[],\"tpm2-primary-alg\":\"ecc\",\"tpm2-policy-hash\":\"@H\","
		     "\"tpm2-pin\":true,\"tpm2_pcrlock\":true,\"tpm2_salt\":\"" SALT_B64 "\","
		     "\"tpm2_srk\":\"" SRK_B64 "\",\"tpm2_pcrlock_nv\":\"AAQAAQ==\"}");
	parse_ok(text, &t);
	assert_true(t.pin && t.pcrlock && t.pcrlock_nv);
	assert_string_equal(tpm2_token_unsupported(&t), "tpm2_pcrlock");
	tpm2_token_free(&t);
	free(text);

	/* Signed PCR policy (PolicyAuthorize, 252 and later), as 256 orders it. */
	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"0\"],\"tpm2-blob\":\"@B\","
		     "\"tpm2-pcrs\":[],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":\"ecc\","
		     "\"tpm2-policy-hash\":\"@H\",\"tpm2_pubkey_pcrs\":[11],"
		     "\"tpm2_pubkey\":\"" PEM_B64 "\",\"tpm2_srk\":\"" SRK_B64 "\"}");
	parse_ok(text, &t);
	assert_true(t.pubkey);
	assert_int_equal(t.pubkey_pcr_mask, 1u << 11);
	assert_string_equal(tpm2_token_unsupported(&t), "tpm2_pubkey");
	tpm2_token_free(&t);
	free(text);
}

static void test_systemd257_shards(void **state)
{
	(void)state;
	make_parts();
	/* systemd 257: pcrlock and a signed policy together, one shard each. */
	char *text =
	    shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":[\"@B\",\"@B\"],"
		  "\"tpm2-pcrs\":[],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":\"ecc\","
		  "\"tpm2-policy-hash\":[\"@H\",\"@H\"],\"tpm2_pcrlock\":true,"
		  "\"tpm2_pubkey_pcrs\":[11],\"tpm2_pubkey\":\"" PEM_B64 "\","
		  "\"tpm2_srk\":\"" SRK_B64 "\",\"tpm2_pcrlock_nv\":\"AAQAAQ==\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_int_equal(t.n_blobs, 2);
	assert_int_equal(t.blob_private_len, 160);
	assert_true(t.pcrlock && t.pcrlock_nv && t.pubkey);
	assert_non_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);

	/* Shards without the two features still cannot run here. */
	text =
	    shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":[\"@B\",\"@B\"],"
		  "\"tpm2-pcrs\":[7],\"tpm2-policy-hash\":[\"@H\",\"@H\"]}");
	parse_ok(text, &t);
	assert_string_equal(tpm2_token_unsupported(&t), "sharded tpm2-blob");
	tpm2_token_free(&t);
	free(text);

	/* One shard in array form reads as the plain string. */
	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":[\"@B\"],"
		     "\"tpm2-pcrs\":[7],\"tpm2-policy-hash\":[\"@H\"]}");
	parse_ok(text, &t);
	assert_int_equal(t.n_blobs, 1);
	assert_string_equal(t.primary_alg, "ecc"); /* absent: ECC */
	assert_string_equal(t.pcr_bank, "");
	assert_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);
}

/* ---- malformed tokens ---------------------------------------------------------------------- */

/* The notes' token with one member replaced (value is JSON text) or removed (value NULL). */
static void test_systemd262_argon2id(void **state)
{
	(void)state;
	make_parts();
	/* systemd 262, --tpm2-with-pin=yes: the Argon2id parameters last. */
	char *text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
			   "\"tpm2-pcrs\":[7],\"tpm2-pcr-bank\":\"sha256\",\"tpm2-primary-alg\":"
			   "\"ecc\",\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":true,"
			   "\"tpm2_salt\":\"" SALT_B64 "\",\"tpm2_srk\":\"" SRK_B64 "\","
			   "\"tpm2_argon2id_memcost\":463470592,\"tpm2_argon2id_iterations\":2,"
			   "\"tpm2_argon2id_lanes\":2}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_true(t.pin);
	assert_int_equal(t.argon2id_memcost, 463470592);
	assert_int_equal(t.argon2id_iterations, 2);
	assert_int_equal(t.argon2id_lanes, 2);
	assert_null(tpm2_token_unsupported(&t));
	char *built = tpm2_token_build(&t);
	assert_non_null(built);
	struct tpm2_token again;
	parse_ok(built, &again);
	assert_int_equal(again.argon2id_memcost, 463470592);
	assert_int_equal(again.argon2id_lanes, 2);
	tpm2_token_free(&again);
	free(built);
	tpm2_token_free(&t);
	free(text);

	/* Argon2id with no PIN or no salt is not a token systemd writes or opens. */
	const char *bad[] = {
	    "\"tpm2-pin\":true,\"tpm2_argon2id_memcost\":1048576,\"tpm2_argon2id_iterations\":2,"
	    "\"tpm2_argon2id_lanes\":2",
	    "\"tpm2-pin\":false,\"tpm2_salt\":\"" SALT_B64 "\",\"tpm2_argon2id_memcost\":1048576,"
	    "\"tpm2_argon2id_iterations\":2,\"tpm2_argon2id_lanes\":2",
	};
	const char *whys[] = {"without tpm2_salt", "without tpm2-pin"};
	for (size_t i = 0; i < 2; i++) {
		char tmpl[1024];
		snprintf(tmpl, sizeof(tmpl),
			 "{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
			 "\"tpm2-pcrs\":[7],\"tpm2-policy-hash\":\"@H\",%s}",
			 bad[i]);
		char *tx = shape(tmpl);
		char why[256] = "";
		struct tpm2_token b;
		assert_int_equal(tpm2_token_parse(tx, &b, why, sizeof(why)), -EINVAL);
		assert_non_null(strstr(why, whys[i]));
		tpm2_token_free(&b);
		free(tx);
	}
}

/* Written here by Debian forky's systemd-cryptenroll 262 against swtpm (qemu-tests/
 * scenarios_systemd262.py): the default (no --tpm2-pcrs: an empty mask), --tpm2-pcrs=7,
 * --tpm2-with-pin=yes with --tpm2-argon2id-memory=64M --tpm2-argon2id-iterations=2
 * --tpm2-argon2id-parallelism=2, and --tpm2-with-pin=direct. */
static void test_systemd262_real_tokens(void **state)
{
	(void)state;
	static const struct {
		const char *file;
		uint32_t pcr_mask;
		const char *bank;
		bool pin;
		size_t salt_len;
		uint64_t memcost;
		uint32_t iterations, lanes;
		uint32_t attrs; /* the sealed object's: noDA (0x400) unless a PIN guards it */
	} cases[] = {
	    {"systemd262-default.json", 0, "", false, 0, 0, 0, 0, 0x412},
	    {"systemd262-pcr7.json", 1u << 7, "sha256", false, 0, 0, 0, 0, 0x412},
	    {"systemd262-argon2id-pin.json", 0, "", true, 32, 64u << 20, 2, 2, 0x12},
	    {"systemd262-direct-pin.json", 0, "", true, 32, 0, 0, 0, 0x12},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *text = load(cases[i].file);
		struct tpm2_token t;
		char why[256] = "";
		assert_int_equal(tpm2_token_parse(text, &t, why, sizeof(why)), 0);
		assert_int_equal(t.n_keyslots, 1);
		assert_int_equal(t.keyslots[0], 1);
		assert_int_equal(t.n_blobs, 1);
		assert_int_equal(t.blob_private_len, 160);
		assert_int_equal(t.blob_public_len, 80);
		assert_null(t.blob_seed);
		assert_int_equal(t.pcr_mask, cases[i].pcr_mask);
		assert_string_equal(t.pcr_bank, cases[i].bank);
		assert_string_equal(t.primary_alg, "ecc");
		assert_int_equal(t.policy_hash_len, 32);
		/* TPM2B_PUBLIC: KEYEDHASH, SHA-256, the attributes, authPolicy = tpm2-policy-hash.
		 */
		uint8_t head[12] = {0x00,
				    0x4e,
				    0x00,
				    0x08,
				    0x00,
				    0x0b,
				    0,
				    0,
				    (uint8_t)(cases[i].attrs >> 8),
				    (uint8_t)cases[i].attrs,
				    0x00,
				    0x20};
		assert_memory_equal(t.blob_public, head, sizeof(head));
		assert_memory_equal(t.blob_public + 12, t.policy_hash, 32);
		if (!cases[i].pcr_mask && !cases[i].pin) {
			static const uint8_t zero[32];
			assert_memory_equal(t.policy_hash, zero, 32); /* no policy at all */
		}
		assert_int_equal(t.pin, cases[i].pin);
		assert_int_equal(t.salt_len, cases[i].salt_len);
		assert_non_null(t.srk); /* 262 always persists and records the SRK */
		assert_int_equal(t.srk_len, 136);
		assert_memory_equal(t.srk, "\x81\x00\x00\x01", 4);
		assert_int_equal(t.argon2id_memcost, cases[i].memcost);
		assert_int_equal(t.argon2id_iterations, cases[i].iterations);
		assert_int_equal(t.argon2id_lanes, cases[i].lanes);
		assert_false(t.pcrlock || t.pcrlock_nv || t.pubkey);
		assert_string_equal(t.unknown, "");
		assert_int_equal(t.pcr_values_mask, 0);
		assert_null(tpm2_token_unsupported(&t));
		/* Built again it reads the same (not byte for byte: the builder writes
		 * "tpm2-pin":false, which 256 and later leave out). */
		char *built = tpm2_token_build(&t);
		assert_non_null(built);
		struct tpm2_token again;
		assert_int_equal(tpm2_token_parse(built, &again, why, sizeof(why)), 0);
		assert_int_equal(again.pcr_mask, t.pcr_mask);
		assert_int_equal(again.pin, t.pin);
		assert_int_equal(again.salt_len, t.salt_len);
		assert_int_equal(again.srk_len, t.srk_len);
		assert_int_equal(again.argon2id_memcost, t.argon2id_memcost);
		assert_memory_equal(again.blob_public, t.blob_public, t.blob_public_len);
		tpm2_token_free(&again);
		free(built);
		tpm2_token_free(&t);
		free(text);
	}
}

static void test_unknown_member(void **state)
{
	(void)state;
	make_parts();
	/* A tpm2* member no systemd writes (yet) makes the token one we skip, by name... */
	char *text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
			   "\"tpm2-pcrs\":[7],\"tpm2-policy-hash\":\"@H\",\"tpm2-pin\":true,"
			   "\"tpm2_pin_kdf\":\"scrypt\"}");
	struct tpm2_token t;
	parse_ok(text, &t);
	assert_non_null(tpm2_token_unsupported(&t));
	assert_string_equal(tpm2_token_unsupported(&t), "member tpm2_pin_kdf");
	tpm2_token_free(&t);
	free(text);
	/* ...and a member that is not tpm2* (libcryptsetup's own, another tool's) does not. */
	text = shape("{\"type\":\"systemd-tpm2\",\"keyslots\":[\"1\"],\"tpm2-blob\":\"@B\","
		     "\"tpm2-pcrs\":[7],\"tpm2-policy-hash\":\"@H\",\"x-comment\":\"hi\"}");
	parse_ok(text, &t);
	assert_null(tpm2_token_unsupported(&t));
	tpm2_token_free(&t);
	free(text);
}

static void expect_bad(const char *key, const char *value, int rc, const char *why_has)
{
	char *base = load("systemd252-pcr7.json");
	json_object *o = json_tokener_parse(base);
	free(base);
	assert_non_null(o);
	if (value) {
		json_object *v = json_tokener_parse(value);
		if (!v && strcmp(value, "null") != 0)
			fail_msg("test value is not JSON: %s", value);
		json_object_object_add(o, key, v);
	} else {
		json_object_object_del(o, key);
	}
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	struct tpm2_token t;
	char why[256] = "";
	int r = tpm2_token_parse(text, &t, why, sizeof(why));
	if (r != rc || !strstr(why, why_has))
		fail_msg("%s=%s: got %d \"%s\", expected %d with \"%s\"", key, value ? value : "-",
			 r, why, rc, why_has);
	tpm2_token_free(&t);
	json_object_put(o);
}

static void test_malformed(void **state)
{
	(void)state;
	make_parts();
	expect_bad("type", NULL, -EINVAL, "type");
	expect_bad("tpm2_argon2id_memcost", "1048576", -EINVAL, "incomplete Argon2id");
	expect_bad("tpm2_argon2id_lanes", "0", -EINVAL, "tpm2_argon2id_lanes: out of range");
	expect_bad("tpm2_argon2id_iterations", "-2", -EINVAL, "tpm2_argon2id_iterations: out of");
	expect_bad("tpm2_argon2id_iterations", "4294967296", -EINVAL, "out of range");
	expect_bad("tpm2_argon2id_memcost", "\"64M\"", -EINVAL, "memcost: not an integer");
	expect_bad("tpm2_argon2id_memcost", "1.5", -EINVAL, "memcost: not an integer");
	expect_bad("type", "1", -EINVAL, "type");
	expect_bad("type", "\"luks2-keyring\"", -EMEDIUMTYPE, "type");
	expect_bad("keyslots", NULL, -EINVAL, "keyslots");
	expect_bad("keyslots", "\"1\"", -EINVAL, "keyslots");
	expect_bad("keyslots", "[]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[1]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"x\"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"-1\"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"01\"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"32\"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"1 \"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"\"]", -EINVAL, "keyslots");
	expect_bad("keyslots", "[\"0\",\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\"]", -EINVAL,
		   "keyslots");
	expect_bad("tpm2-pcrs", NULL, -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "7", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[\"7\"]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[24]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[-1]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[7.5]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[true]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcrs", "[99999999999999999999]", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-pcr-bank", "256", -EINVAL, "tpm2-pcr-bank");
	expect_bad("tpm2-pcr-bank", "\"md5\"", -EINVAL, "tpm2-pcr-bank");
	expect_bad("tpm2-pcr-bank", "\"SHA256\"", -EINVAL, "tpm2-pcr-bank");
	expect_bad("tpm2-primary-alg", "\"dsa\"", -EINVAL, "tpm2-primary-alg");
	expect_bad("tpm2-primary-alg", "null", -EINVAL, "tpm2-primary-alg");
	expect_bad("keyslots", "null", -EINVAL, "keyslots");
	expect_bad("tpm2-pcrs", "null", -EINVAL, "tpm2-pcrs");
	expect_bad("tpm2-blob", "null", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-policy-hash", "null", -EINVAL, "tpm2-policy-hash");
	expect_bad("tpm2-pin", "null", -EINVAL, "tpm2-pin");
	expect_bad("tpm2_srk", "null", -EINVAL, "tpm2_srk");
	expect_bad(TPM2_TOKEN_PCR_VALUES_KEY, "null", -EINVAL, TPM2_TOKEN_PCR_VALUES_KEY);
	expect_bad("tpm2-blob", NULL, -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "123", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "\"!!!!\"", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "\"\"", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "[]", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "[1]", -EINVAL, "tpm2-blob");
	expect_bad("tpm2-blob", "\"AAEA\"", -EINVAL, "TPM2B_PUBLIC");	  /* 00 01 00: no public */
	expect_bad("tpm2-blob", "\"AAUA\"", -EINVAL, "TPM2B_PRIVATE");	  /* says 5, has 1 */
	expect_bad("tpm2-blob", "\"AAA=\"", -EINVAL, "TPM2B_PRIVATE");	  /* empty private */
	expect_bad("tpm2-blob", "\"AAEAAAUA\"", -EINVAL, "TPM2B_PUBLIC"); /* public says 5, has 1 */
	expect_bad("tpm2-blob", "\"AAEAAAA=\"", -EINVAL, "TPM2B_PUBLIC"); /* empty public */
	expect_bad("tpm2-blob", "\"AAEAAAEAAA==\"", -EINVAL, "TPM2B_ENCRYPTED_SECRET");
	expect_bad("tpm2-blob", "\"AAEAAAEAAAAAAA==\"", -EINVAL, "left after the seed");
	expect_bad("tpm2-policy-hash", NULL, -EINVAL, "tpm2-policy-hash");
	expect_bad("tpm2-policy-hash", "32", -EINVAL, "tpm2-policy-hash");
	expect_bad("tpm2-policy-hash", "\"\"", -EINVAL, "tpm2-policy-hash");
	expect_bad("tpm2-policy-hash",
		   "\"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a\"", -EINVAL,
		   "tpm2-policy-hash"); /* 31 bytes */
	expect_bad("tpm2-policy-hash",
		   "\"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b00\"",
		   -EINVAL, "tpm2-policy-hash"); /* 33 bytes */
	expect_bad("tpm2-policy-hash",
		   "\"zz5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b\"", -EINVAL,
		   "tpm2-policy-hash");
	expect_bad("tpm2-policy-hash",
		   "\"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8\"", -EINVAL,
		   "tpm2-policy-hash"); /* odd */
	expect_bad("tpm2-policy-hash",
		   "[\"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b\","
		   "\"8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b\"]",
		   -EINVAL, "tpm2-policy-hash"); /* two hashes, one blob */
	expect_bad("tpm2-policy-hash", "[]", -EINVAL, "tpm2-policy-hash");
	expect_bad("tpm2-pin", "\"yes\"", -EINVAL, "tpm2-pin");
	expect_bad("tpm2-pin", "1", -EINVAL, "tpm2-pin");
	expect_bad("tpm2_pcrlock", "1", -EINVAL, "tpm2_pcrlock");
	expect_bad("tpm2_salt", "\"*\"", -EINVAL, "tpm2_salt");
	expect_bad("tpm2_salt", "32", -EINVAL, "tpm2_salt");
	expect_bad("tpm2_salt", "\"\"", -EINVAL, "tpm2_salt");
	expect_bad(
	    "tpm2_salt",
	    "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	    "AAAAAAAA\"",
	    -EINVAL, "tpm2_salt"); /* 66 bytes */
	expect_bad("tpm2_srk", "\"a\"", -EINVAL, "tpm2_srk");
	expect_bad("tpm2_srk", "\"\"", -EINVAL, "tpm2_srk");
	expect_bad("tpm2_srk", "{}", -EINVAL, "tpm2_srk");
	expect_bad("tpm2_pubkey_pcrs", "[11]", -EINVAL, "tpm2_pubkey_pcrs"); /* no tpm2_pubkey */
	expect_bad("tpm2_pubkey_pcrs", "[30]", -EINVAL, "tpm2_pubkey_pcrs");
	expect_bad("tpm2_pubkey", "\"@@\"", -EINVAL, "tpm2_pubkey");
	expect_bad("tpm2_pcrlock_nv", "true", -EINVAL, "tpm2_pcrlock_nv");
	const char *ext = TPM2_TOKEN_PCR_VALUES_KEY;
	char z32[80], z20[50];
	snprintf(z32, sizeof(z32), "\"%064d\"", 0);
	snprintf(z20, sizeof(z20), "\"%040d\"", 0);
	char v[200];
	expect_bad(ext, "[]", -EINVAL, ext);
	snprintf(v, sizeof(v), "{\"x\":%s}", z32);
	expect_bad(ext, v, -EINVAL, ext);
	snprintf(v, sizeof(v), "{\"07\":%s}", z32);
	expect_bad(ext, v, -EINVAL, ext);
	snprintf(v, sizeof(v), "{\"0\":%s}", z32); /* PCR 0 is not sealed to */
	expect_bad(ext, v, -EINVAL, "not in tpm2-pcrs");
	snprintf(v, sizeof(v), "{\"7\":%s}", z20); /* a SHA-1 digest in the sha256 bank */
	expect_bad(ext, v, -EINVAL, ext);
	expect_bad(ext, "{\"7\":\"xyz\"}", -EINVAL, ext);
	expect_bad(ext, "{\"7\":7}", -EINVAL, ext);
	/* Unknown members are ignored, as systemd ignores ours. */
	expect_bad("someone-elses", "{\"a\":[1,2]}", 0, "");
}

static void test_malformed_text(void **state)
{
	(void)state;
	struct tpm2_token t;
	char why[128];
	assert_int_equal(tpm2_token_parse(NULL, &t, why, sizeof(why)), -EINVAL);
	assert_int_equal(tpm2_token_parse("", &t, why, sizeof(why)), -EINVAL);
	assert_int_equal(tpm2_token_parse("{", &t, why, sizeof(why)), -EINVAL);
	assert_int_equal(tpm2_token_parse("[]", &t, why, sizeof(why)), -EINVAL);
	assert_int_equal(tpm2_token_parse("\"systemd-tpm2\"", &t, why, sizeof(why)), -EINVAL);
	assert_int_equal(tpm2_token_parse("{} x", &t, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "after"));
	/* why may be absent. */
	assert_int_equal(tpm2_token_parse("{", &t, NULL, 0), -EINVAL);
	/* White space around the object is fine (the fixtures end in a newline). */
	char *text = load("systemd252-pcr7.json");
	char padded[1024];
	snprintf(padded, sizeof(padded), " \n%s\n\t ", text);
	assert_int_equal(tpm2_token_parse(padded, &t, why, sizeof(why)), 0);
	tpm2_token_free(&t);
	free(text);
	tpm2_token_free(NULL);
}

/* ---- building ------------------------------------------------------------------------------ */

static void test_build_round_trip(void **state)
{
	(void)state;
	struct tpm2_token a = {0}, b;
	uint8_t priv[40] = {0x00, 38}, pub[30] = {0x00, 28};
	for (size_t i = 2; i < sizeof(priv); i++)
		priv[i] = (uint8_t)(i * 7);
	for (size_t i = 2; i < sizeof(pub); i++)
		pub[i] = (uint8_t)(i * 13 + 1); /* includes bytes that base64 to '/' */
	a.keyslots[0] = 31;
	a.keyslots[1] = 4;
	a.n_keyslots = 2;
	a.blob_private = priv;
	a.blob_private_len = sizeof(priv);
	a.blob_public = pub;
	a.blob_public_len = sizeof(pub);
	a.pcr_mask = (1u << 0) | (1u << 7) | (1u << 23);
	strcpy(a.pcr_bank, "sha384");
	strcpy(a.primary_alg, "rsa");
	for (int i = 0; i < 32; i++)
		a.policy_hash[i] = (uint8_t)(0xf0 ^ i);
	a.policy_hash_len = 32;
	a.pin = true;
	memset(a.salt, 0x5a, 32);
	a.salt_len = 32;
	uint8_t srk[10] = {0x81, 0, 0, 1, 9, 8, 7, 6, 5, 4};
	a.srk = srk;
	a.srk_len = sizeof(srk);
	a.pcr_value_len = 48;
	a.pcr_values_mask = (1u << 7) | (1u << 23);
	memset(a.pcr_values[7], 0x77, 48);
	memset(a.pcr_values[23], 0x23, 48);

	char *text = tpm2_token_build(&a);
	assert_non_null(text);
	assert_null(strstr(text, "\\/")); /* base64's '/' is not escaped */
	char why[256] = "";
	assert_int_equal(tpm2_token_parse(text, &b, why, sizeof(why)), 0);
	assert_int_equal(b.n_keyslots, 2);
	assert_int_equal(b.keyslots[0], 31);
	assert_int_equal(b.keyslots[1], 4);
	assert_int_equal(b.blob_private_len, sizeof(priv));
	assert_memory_equal(b.blob_private, priv, sizeof(priv));
	assert_int_equal(b.blob_public_len, sizeof(pub));
	assert_memory_equal(b.blob_public, pub, sizeof(pub));
	assert_int_equal(b.pcr_mask, a.pcr_mask);
	assert_string_equal(b.pcr_bank, "sha384");
	assert_string_equal(b.primary_alg, "rsa");
	assert_memory_equal(b.policy_hash, a.policy_hash, 32);
	assert_true(b.pin);
	assert_int_equal(b.salt_len, 32);
	assert_memory_equal(b.salt, a.salt, 32);
	assert_int_equal(b.srk_len, sizeof(srk));
	assert_memory_equal(b.srk, srk, sizeof(srk));
	assert_int_equal(b.pcr_values_mask, a.pcr_values_mask);
	assert_int_equal(b.pcr_value_len, 48);
	assert_memory_equal(b.pcr_values[7], a.pcr_values[7], 48);
	assert_memory_equal(b.pcr_values[23], a.pcr_values[23], 48);
	/* And again: the same text. */
	char *again = tpm2_token_build(&b);
	assert_string_equal(again, text);
	free(again);
	free(text);
	tpm2_token_free(&b);

	/* What build refuses. */
	struct tpm2_token c = a;
	c.n_keyslots = 0;
	errno = 0;
	assert_null(tpm2_token_build(&c));
	assert_int_equal(errno, EINVAL);
	c = a;
	c.keyslots[0] = 32;
	assert_null(tpm2_token_build(&c));
	c = a;
	c.policy_hash_len = 31;
	assert_null(tpm2_token_build(&c));
	c = a;
	c.blob_public = NULL;
	assert_null(tpm2_token_build(&c));
	c = a;
	c.blob_private_len = 39; /* its size says 38 + 2 */
	assert_null(tpm2_token_build(&c));
	c = a;
	c.pcr_mask = 1u << 24;
	assert_null(tpm2_token_build(&c));
	c = a;
	strcpy(c.pcr_bank, "md5");
	assert_null(tpm2_token_build(&c));
	c = a;
	c.pcr_value_len = 32; /* not a sha384 digest */
	assert_null(tpm2_token_build(&c));
	c = a;
	c.pcr_values_mask |= 1u << 1; /* not sealed to */
	assert_null(tpm2_token_build(&c));
	c = a;
	c.pubkey = true;
	errno = 0;
	assert_null(tpm2_token_build(&c));
	assert_int_equal(errno, EOPNOTSUPP);

	/* Minimal: no bank, no algorithm, no PIN, no values. */
	c = a;
	c.pcr_bank[0] = '\0';
	c.primary_alg[0] = '\0';
	c.pin = false;
	c.salt_len = 0;
	c.srk = NULL;
	c.pcr_values_mask = 0;
	c.n_keyslots = 1;
	text = tpm2_token_build(&c);
	assert_non_null(text);
	assert_null(strstr(text, "tpm2-pcr-bank"));
	assert_null(strstr(text, "tpm2-primary-alg"));
	assert_non_null(strstr(text, "\"tpm2-pin\":false"));
	assert_non_null(strstr(text, "\"tpm2-pcrs\":[0,7,23]"));
	assert_int_equal(tpm2_token_parse(text, &b, why, sizeof(why)), 0);
	assert_string_equal(b.primary_alg, "ecc");
	tpm2_token_free(&b);
	free(text);
}

/* ---- PCR lists ----------------------------------------------------------------------------- */

static uint32_t pcrs(const char *list)
{
	uint32_t m = 0xdeadbeef;
	char why[128] = "";
	int r = tpm2_token_pcr_mask_parse(list, &m, why, sizeof(why));
	if (r < 0)
		fail_msg("\"%s\": %s", list, why);
	return m;
}

static int bad_pcrs(const char *list)
{
	uint32_t m = 0;
	char why[128] = "";
	int r = tpm2_token_pcr_mask_parse(list, &m, why, sizeof(why));
	assert_true(r == 0 || why[0]);
	return r;
}

static void test_pcr_lists(void **state)
{
	(void)state;
	assert_int_equal(pcrs(""), 0);
	assert_int_equal(pcrs("7"), 1u << 7);
	assert_int_equal(pcrs("0+7"), 0x81);
	assert_int_equal(pcrs("0,7"), 0x81);
	assert_int_equal(pcrs("7,0+7"), 0x81);
	assert_int_equal(pcrs("+7,,"), 1u << 7); /* systemd skips empty items */
	assert_int_equal(pcrs("07"), 1u << 7);
	assert_int_equal(pcrs("23"), 1u << 23);
	assert_int_equal(pcrs("0+1+2+3+4+5+6+7+8+9+10+11+12+13+14+15+16+17+18+19+20+21+22+23"),
			 0xffffff);
	assert_int_equal(pcrs("secure-boot-policy"), 1u << 7);
	assert_int_equal(pcrs("platform-code+secure-boot-policy,kernel-boot"),
			 (1u << 0) | (1u << 7) | (1u << 11));
	assert_int_equal(pcrs("application-support"), 1u << 23);
	assert_int_equal(bad_pcrs(NULL), -EINVAL);
	assert_int_equal(bad_pcrs("24"), -EINVAL);
	assert_int_equal(bad_pcrs("-1"), -EINVAL);
	assert_int_equal(bad_pcrs("7 "), -EINVAL);
	assert_int_equal(bad_pcrs("seven"), -EINVAL);
	assert_int_equal(bad_pcrs("Secure-Boot-Policy"), -EINVAL);
	assert_int_equal(bad_pcrs("99999999999"), -EINVAL);
	assert_int_equal(bad_pcrs("7:sha256"), -EINVAL);
	assert_int_equal(bad_pcrs("7:sha256=0000"), -EINVAL);
	assert_int_equal(bad_pcrs("0x7"), -EINVAL);
	uint32_t m = 5;
	char why[128];
	assert_int_equal(tpm2_token_pcr_mask_parse("7:sha1", &m, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "assignment"));
	assert_int_equal(m, 5); /* untouched on failure */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_systemd252_pcr7),
	    cmocka_unit_test(test_debian252_pcrs),
	    cmocka_unit_test(test_debian252_pin_no_pcrs),
	    cmocka_unit_test(test_extension),
	    cmocka_unit_test(test_systemd253_pin_salt),
	    cmocka_unit_test(test_systemd254_srk),
	    cmocka_unit_test(test_systemd255),
	    cmocka_unit_test(test_systemd256),
	    cmocka_unit_test(test_systemd257_shards),
	    cmocka_unit_test(test_systemd262_argon2id),
	    cmocka_unit_test(test_systemd262_real_tokens),
	    cmocka_unit_test(test_unknown_member),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_malformed_text),
	    cmocka_unit_test(test_build_round_trip),
	    cmocka_unit_test(test_pcr_lists),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
