/* SPDX-License-Identifier: MIT */
#include "token.h"
#include "util.h"

#include "base64.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Larger than any TPM2B_PRIVATE + TPM2B_PUBLIC + TPM2B_ENCRYPTED_SECRET the TSS marshals. */
#define BLOB_MAX 8192
/* A serialized ESYS_TR (handle, name, public area) or a PEM public key fits easily. */
#define SRK_MAX 4096
#define PUBKEY_MAX 16384
#define POLICY_HASH_LEN 32 /* systemd's policy sessions always use SHA-256 */
#define LUKS2_KEYSLOTS_MAX 32
/* A LUKS2 header's JSON area is at most 4 MiB; one token is far smaller. */
#define TOKEN_TEXT_MAX (1 << 20)

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t why_len, const char *fmt,
						      ...)
{
	if (why && why_len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, why_len, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static const char *const banks[] = {"sha1", "sha256", "sha384", "sha512"};
static const size_t bank_sizes[] = {20, 32, 48, 64};

/* Digest size of a bank name, 0 when unknown. */
static size_t bank_size(const char *name)
{
	for (size_t i = 0; i < sizeof(banks) / sizeof(banks[0]); i++)
		if (strcmp(name, banks[i]) == 0)
			return bank_sizes[i];
	return 0;
}

static bool digest_size_valid(size_t n)
{
	return n == 20 || n == 32 || n == 48 || n == 64;
}

/* Canonical decimal ("0", "17"; no sign, no leading zero) at most max; -1 otherwise. */
static int parse_index(const char *s, size_t len, int max)
{
	if (len == 0 || len > 3 || (len > 1 && s[0] == '0'))
		return -1;
	int v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= max ? v : -1;
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* True when o has the member, even one whose value is null (*v is then NULL, of no type). */
static bool member(json_object *o, const char *key, json_object **v)
{
	*v = NULL;
	return json_object_object_get_ex(o, key, v);
}

/*
 * A base64 string member into a fresh buffer of at most max bytes (not empty). *out is freed by
 * the caller on every path.
 */
static int get_base64(json_object *v, const char *field, size_t max, uint8_t **out, size_t *out_len,
		      char *why, size_t why_len)
{
	if (!json_object_is_type(v, json_type_string))
		return fail(why, why_len, "%s: not a string", field);
	const char *s = json_object_get_string(v);
	size_t len = (size_t)json_object_get_string_len(v);
	if (len > BASE64_ENCODED_LEN(max) + 64) /* a little slack for white space */
		return fail(why, why_len, "%s: longer than %zu bytes", field, max);
	uint8_t *buf = malloc(len / 4 * 3 + 3);
	if (!buf)
		return -ENOMEM;
	ssize_t n = base64_decode(s, len, buf, len / 4 * 3 + 3);
	if (n < 0) {
		free(buf);
		return fail(why, why_len, "%s: not valid base64", field);
	}
	if (n == 0) {
		free(buf);
		return fail(why, why_len, "%s: is empty", field);
	}
	if ((size_t)n > max) {
		free(buf);
		return fail(why, why_len, "%s: longer than %zu bytes", field, max);
	}
	*out = buf;
	*out_len = (size_t)n;
	return 0;
}

/* A PCR index array (tpm2-pcrs, tpm2_pubkey_pcrs) into a mask. */
static int get_pcr_array(json_object *v, const char *field, uint32_t *mask, char *why,
			 size_t why_len)
{
	if (!json_object_is_type(v, json_type_array))
		return fail(why, why_len, "%s: not an array", field);
	uint32_t m = 0;
	size_t n = json_object_array_length(v);
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(v, i);
		if (!json_object_is_type(e, json_type_int))
			return fail(why, why_len, "%s: element %zu is not an integer", field, i);
		int64_t pcr = json_object_get_int64(e);
		if (pcr < 0 || pcr >= TPM2_PCRS)
			return fail(why, why_len, "%s: PCR %lld is out of range 0..23", field,
				    (long long)pcr);
		m |= UINT32_C(1) << pcr;
	}
	*mask = m;
	return 0;
}

/*
 * Splits one tpm2-blob entry: TPM2B_PRIVATE, TPM2B_PUBLIC, then (255+) an optional
 * TPM2B_ENCRYPTED_SECRET. Each is a 2-byte big-endian size and that many bytes.
 */
static int split_blob(struct tpm2_token *t, const uint8_t *b, size_t len, char *why, size_t why_len)
{
	size_t parts[3] = {0, 0, 0}, off = 0, n = 0;
	static const char *const names[] = {"TPM2B_PRIVATE", "TPM2B_PUBLIC",
					    "TPM2B_ENCRYPTED_SECRET"};
	while (off < len) {
		if (n == 3)
			return fail(why, why_len, "tpm2-blob: %zu bytes left after the seed",
				    len - off);
		if (len - off < 2)
			return fail(why, why_len, "tpm2-blob: %s is cut short", names[n]);
		size_t sz = (size_t)b[off] << 8 | b[off + 1];
		if (sz > len - off - 2)
			return fail(why, why_len, "tpm2-blob: %s says %zu bytes, only %zu follow",
				    names[n], sz, len - off - 2);
		if (sz == 0 && n < 2)
			return fail(why, why_len, "tpm2-blob: %s is empty", names[n]);
		parts[n++] = sz + 2;
		off += sz + 2;
	}
	if (n < 2)
		return fail(why, why_len, "tpm2-blob: has no TPM2B_PUBLIC after TPM2B_PRIVATE");
	t->blob_private = malloc(parts[0]);
	t->blob_public = malloc(parts[1]);
	if (!t->blob_private || !t->blob_public)
		return -ENOMEM;
	memcpy(t->blob_private, b, parts[0]);
	t->blob_private_len = parts[0];
	memcpy(t->blob_public, b + parts[0], parts[1]);
	t->blob_public_len = parts[1];
	/* An empty seed (just its size, 0) means an ordinary sealed object, as systemd reads it. */
	if (n == 3 && parts[2] > 2) {
		t->blob_seed = malloc(parts[2]);
		if (!t->blob_seed)
			return -ENOMEM;
		memcpy(t->blob_seed, b + parts[0] + parts[1], parts[2]);
		t->blob_seed_len = parts[2];
	}
	return 0;
}

/* tpm2-blob: one base64 string, or (257) a non-empty array of them, one per shard. */
static int parse_blob(struct tpm2_token *t, json_object *v, char *why, size_t why_len)
{
	size_t n = 1;
	if (json_object_is_type(v, json_type_array)) {
		n = json_object_array_length(v);
		if (n == 0)
			return fail(why, why_len, "tpm2-blob: empty array");
	}
	for (size_t i = 0; i < n; i++) {
		json_object *e =
		    json_object_is_type(v, json_type_array) ? json_object_array_get_idx(v, i) : v;
		uint8_t *b = NULL;
		size_t len = 0;
		int r = get_base64(e, "tpm2-blob", BLOB_MAX, &b, &len, why, why_len);
		if (r == 0) {
			if (i == 0) {
				r = split_blob(t, b, len, why, why_len);
			} else {
				/* Later shards: checked, not kept. */
				struct tpm2_token shard = {0};
				r = split_blob(&shard, b, len, why, why_len);
				tpm2_token_free(&shard);
			}
		}
		free(b);
		if (r < 0)
			return r;
	}
	t->n_blobs = n;
	return 0;
}

static int parse_policy_hash_one(json_object *v, uint8_t *out, size_t *out_len, char *why,
				 size_t why_len)
{
	if (!json_object_is_type(v, json_type_string))
		return fail(why, why_len, "tpm2-policy-hash: not a string");
	const char *s = json_object_get_string(v);
	size_t len = (size_t)json_object_get_string_len(v);
	if (len != 2 * POLICY_HASH_LEN)
		return fail(why, why_len, "tpm2-policy-hash: %zu hex digits, expected %d", len,
			    2 * POLICY_HASH_LEN);
	ssize_t n = hex_decode(s, len, out, POLICY_HASH_LEN);
	if (n < 0)
		return fail(why, why_len, "tpm2-policy-hash: not hex");
	*out_len = (size_t)n;
	return 0;
}

/* tpm2-policy-hash: one hex string, or (257) an array of them as long as tpm2-blob's. */
static int parse_policy_hash(struct tpm2_token *t, json_object *v, char *why, size_t why_len)
{
	if (!json_object_is_type(v, json_type_array))
		return parse_policy_hash_one(v, t->policy_hash, &t->policy_hash_len, why, why_len);
	size_t n = json_object_array_length(v);
	if (n == 0)
		return fail(why, why_len, "tpm2-policy-hash: empty array");
	if (n != t->n_blobs)
		return fail(why, why_len, "tpm2-policy-hash: %zu entries for %zu tpm2-blob shards",
			    n, t->n_blobs);
	for (size_t i = 0; i < n; i++) {
		uint8_t h[POLICY_HASH_LEN];
		size_t hl = 0;
		int r =
		    parse_policy_hash_one(json_object_array_get_idx(v, i), i ? h : t->policy_hash,
					  i ? &hl : &t->policy_hash_len, why, why_len);
		if (r < 0)
			return r;
	}
	return 0;
}

static int get_bool(json_object *v, const char *field, bool *out, char *why, size_t why_len)
{
	if (!json_object_is_type(v, json_type_boolean))
		return fail(why, why_len, "%s: not a boolean", field);
	*out = json_object_get_boolean(v);
	return 0;
}

static int parse_pcr_values(struct tpm2_token *t, json_object *v, char *why, size_t why_len)
{
	const char *field = TPM2_TOKEN_PCR_VALUES_KEY;
	if (!json_object_is_type(v, json_type_object))
		return fail(why, why_len, "%s: not an object", field);
	size_t want = t->pcr_bank[0] ? bank_size(t->pcr_bank) : 0;
	json_object_object_foreach(v, key, val)
	{
		int pcr = parse_index(key, strlen(key), TPM2_PCRS - 1);
		if (pcr < 0)
			return fail(why, why_len, "%s: \"%.8s\" is not a PCR index 0..23", field,
				    key);
		if (!(t->pcr_mask & (UINT32_C(1) << pcr)))
			return fail(why, why_len, "%s: PCR %d is not in tpm2-pcrs", field, pcr);
		if (!json_object_is_type(val, json_type_string))
			return fail(why, why_len, "%s: PCR %d: not a string", field, pcr);
		size_t len = (size_t)json_object_get_string_len(val);
		ssize_t n = hex_decode(json_object_get_string(val), len, t->pcr_values[pcr],
				       sizeof(t->pcr_values[pcr]));
		if (n < 0)
			return fail(why, why_len, "%s: PCR %d: not a hex digest", field, pcr);
		size_t expect = want ? want : t->pcr_value_len;
		if (expect ? (size_t)n != expect : !digest_size_valid((size_t)n))
			return fail(why, why_len, "%s: PCR %d: %zd bytes is not a %s digest", field,
				    pcr, n, t->pcr_bank[0] ? t->pcr_bank : "PCR");
		t->pcr_value_len = (size_t)n;
		t->pcr_values_mask |= UINT32_C(1) << pcr;
	}
	return 0;
}

static int parse_keyslots(struct tpm2_token *t, json_object *v, char *why, size_t why_len)
{
	if (!json_object_is_type(v, json_type_array))
		return fail(why, why_len, "keyslots: not an array");
	size_t n = json_object_array_length(v);
	if (n == 0)
		return fail(why, why_len, "keyslots: empty");
	if (n > TPM2_TOKEN_MAX_KEYSLOTS)
		return fail(why, why_len, "keyslots: more than %d", TPM2_TOKEN_MAX_KEYSLOTS);
	for (size_t i = 0; i < n; i++) {
		json_object *e = json_object_array_get_idx(v, i);
		if (!json_object_is_type(e, json_type_string))
			return fail(why, why_len, "keyslots: element %zu is not a string", i);
		int k = parse_index(json_object_get_string(e),
				    (size_t)json_object_get_string_len(e), LUKS2_KEYSLOTS_MAX - 1);
		if (k < 0)
			return fail(why, why_len,
				    "keyslots: \"%.8s\" is not a keyslot number 0..31",
				    json_object_get_string(e));
		t->keyslots[i] = k;
	}
	t->n_keyslots = n;
	return 0;
}

/* A positive integer member no larger than max; 0 when absent. */
static int get_count(json_object *o, const char *field, uint64_t max, uint64_t *out, char *why,
		     size_t why_len)
{
	json_object *v;
	*out = 0;
	if (!member(o, field, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int))
		return fail(why, why_len, "%s: not an integer", field);
	/* json-c keeps an integer as int64 or, above INT64_MAX, as uint64; a negative one reads
	 * as 0 through get_uint64. */
	uint64_t n = json_object_get_int64(v) < 0 ? 0 : json_object_get_uint64(v);
	if (n == 0 || n > max)
		return fail(why, why_len, "%s: out of range", field);
	*out = n;
	return 0;
}

/* tpm2_argon2id_* (262): all three, non-zero, with a salt and a PIN, or none (as systemd). */
static int parse_argon2id(json_object *o, struct tpm2_token *t, char *why, size_t why_len)
{
	uint64_t mem, it, lanes;
	int r;
	if ((r = get_count(o, "tpm2_argon2id_memcost", UINT64_MAX, &mem, why, why_len)) < 0 ||
	    (r = get_count(o, "tpm2_argon2id_iterations", UINT32_MAX, &it, why, why_len)) < 0 ||
	    (r = get_count(o, "tpm2_argon2id_lanes", UINT32_MAX, &lanes, why, why_len)) < 0)
		return r;
	if (!mem && !it && !lanes)
		return 0;
	if (!mem || !it || !lanes)
		return fail(why, why_len, "tpm2_argon2id_*: incomplete Argon2id parameters");
	if (!t->salt_len)
		return fail(why, why_len, "tpm2_argon2id_*: Argon2id without tpm2_salt");
	if (!t->pin)
		return fail(why, why_len, "tpm2_argon2id_*: Argon2id without tpm2-pin");
	t->argon2id_memcost = mem;
	t->argon2id_iterations = (uint32_t)it;
	t->argon2id_lanes = (uint32_t)lanes;
	return 0;
}

/*
 * Every tpm2* member that systemd 252 to 262 writes (and tpm2_pubkey_ref, which comes with a
 * signed policy). Any other tpm2* member may change how the secret is derived.
 */
static const char *const known_members[] = {
    "tpm2-blob",
    "tpm2-pcrs",
    "tpm2-pcr-bank",
    "tpm2-primary-alg",
    "tpm2-policy-hash",
    "tpm2-pin",
    "tpm2_pcrlock",
    "tpm2_salt",
    "tpm2_pubkey_pcrs",
    "tpm2_pubkey",
    "tpm2_pubkey_ref",
    "tpm2_srk",
    "tpm2_pcrlock_nv",
    "tpm2_argon2id_memcost",
    "tpm2_argon2id_iterations",
    "tpm2_argon2id_lanes",
};

static void find_unknown(json_object *o, struct tpm2_token *t)
{
	json_object_object_foreach(o, key, val)
	{
		(void)val;
		if (strncmp(key, "tpm2", 4) != 0)
			continue; /* type, keyslots, ours; systemd ignores other members too */
		bool known = false;
		for (size_t i = 0; i < ARRAY_SIZE(known_members) && !known; i++)
			known = strcmp(key, known_members[i]) == 0;
		if (!known) {
			snprintf(t->unknown, sizeof(t->unknown), "member %.32s", key);
			return;
		}
	}
}

static int parse_fields(json_object *o, struct tpm2_token *t, char *why, size_t why_len)
{
	json_object *v;
	int r;

	if (!json_object_is_type(o, json_type_object))
		return fail(why, why_len, "token: not a JSON object");
	if (!member(o, "type", &v) || !json_object_is_type(v, json_type_string))
		return fail(why, why_len, "type: missing or not a string");
	if (strcmp(json_object_get_string(v), TPM2_TOKEN_TYPE) != 0) {
		if (why && why_len)
			snprintf(why, why_len, "type: \"%.32s\", not " TPM2_TOKEN_TYPE,
				 json_object_get_string(v));
		return -EMEDIUMTYPE;
	}
	if (!member(o, "keyslots", &v))
		return fail(why, why_len, "keyslots: missing");
	r = parse_keyslots(t, v, why, why_len);
	if (r < 0)
		return r;

	if (!member(o, "tpm2-pcrs", &v))
		return fail(why, why_len, "tpm2-pcrs: missing");
	r = get_pcr_array(v, "tpm2-pcrs", &t->pcr_mask, why, why_len);
	if (r < 0)
		return r;

	if (member(o, "tpm2-pcr-bank", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return fail(why, why_len, "tpm2-pcr-bank: not a string");
		const char *s = json_object_get_string(v);
		if (!bank_size(s))
			return fail(why, why_len, "tpm2-pcr-bank: \"%.16s\" is not a known bank",
				    s);
		snprintf(t->pcr_bank, sizeof(t->pcr_bank), "%s", s);
	}

	snprintf(t->primary_alg, sizeof(t->primary_alg), "ecc"); /* systemd < 250 knew only ECC */
	if (member(o, "tpm2-primary-alg", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return fail(why, why_len, "tpm2-primary-alg: not a string");
		const char *s = json_object_get_string(v);
		if (strcmp(s, "ecc") != 0 && strcmp(s, "rsa") != 0)
			return fail(why, why_len, "tpm2-primary-alg: \"%.16s\" is not ecc or rsa",
				    s);
		snprintf(t->primary_alg, sizeof(t->primary_alg), "%s", s);
	}

	if (!member(o, "tpm2-blob", &v))
		return fail(why, why_len, "tpm2-blob: missing");
	r = parse_blob(t, v, why, why_len);
	if (r < 0)
		return r;

	if (!member(o, "tpm2-policy-hash", &v))
		return fail(why, why_len, "tpm2-policy-hash: missing");
	r = parse_policy_hash(t, v, why, why_len);
	if (r < 0)
		return r;

	if (member(o, "tpm2-pin", &v) && (r = get_bool(v, "tpm2-pin", &t->pin, why, why_len)) < 0)
		return r;
	if (member(o, "tpm2_pcrlock", &v) &&
	    (r = get_bool(v, "tpm2_pcrlock", &t->pcrlock, why, why_len)) < 0)
		return r;

	if (member(o, "tpm2_salt", &v)) {
		uint8_t *salt = NULL;
		r = get_base64(v, "tpm2_salt", sizeof(t->salt), &salt, &t->salt_len, why, why_len);
		if (r < 0)
			return r;
		memcpy(t->salt, salt, t->salt_len);
		free(salt);
	}

	if (member(o, "tpm2_pubkey_pcrs", &v) &&
	    (r = get_pcr_array(v, "tpm2_pubkey_pcrs", &t->pubkey_pcr_mask, why, why_len)) < 0)
		return r;
	if (member(o, "tpm2_pubkey", &v)) {
		uint8_t *pem = NULL;
		size_t pem_len = 0;
		r = get_base64(v, "tpm2_pubkey", PUBKEY_MAX, &pem, &pem_len, why, why_len);
		free(pem);
		if (r < 0)
			return r;
		t->pubkey = true;
	} else if (t->pubkey_pcr_mask) {
		return fail(why, why_len, "tpm2_pubkey_pcrs: given without tpm2_pubkey");
	}

	if (member(o, "tpm2_srk", &v) &&
	    (r = get_base64(v, "tpm2_srk", SRK_MAX, &t->srk, &t->srk_len, why, why_len)) < 0)
		return r;

	if (member(o, "tpm2_pcrlock_nv", &v)) {
		uint8_t *nv = NULL;
		size_t nv_len = 0;
		r = get_base64(v, "tpm2_pcrlock_nv", SRK_MAX, &nv, &nv_len, why, why_len);
		free(nv);
		if (r < 0)
			return r;
		t->pcrlock_nv = true;
	}

	r = parse_argon2id(o, t, why, why_len);
	if (r < 0)
		return r;

	if (member(o, TPM2_TOKEN_PCR_VALUES_KEY, &v) &&
	    (r = parse_pcr_values(t, v, why, why_len)) < 0)
		return r;
	find_unknown(o, t);
	return 0;
}

int tpm2_token_parse(const char *json_text, struct tpm2_token *out, char *why, size_t why_len)
{
	memset(out, 0, sizeof(*out));
	if (!json_text)
		return fail(why, why_len, "token: no JSON text");

	size_t len = strlen(json_text);
	if (len > TOKEN_TEXT_MAX)
		return fail(why, why_len, "token: longer than %d bytes", TOKEN_TEXT_MAX);
	json_tokener *tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_object *o = json_tokener_parse_ex(tok, json_text, (int)len);
	enum json_tokener_error err = json_tokener_get_error(tok);
	size_t end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (!o || err != json_tokener_success) {
		json_object_put(o);
		return fail(why, why_len, "token: not valid JSON (%s)",
			    json_tokener_error_desc(
				err == json_tokener_continue ? json_tokener_error_parse_eof : err));
	}
	for (; end < len; end++)
		if (!strchr(" \t\r\n", json_text[end])) {
			json_object_put(o);
			return fail(why, why_len, "token: text after the JSON object");
		}

	int r = parse_fields(o, out, why, why_len);
	json_object_put(o);
	if (r < 0)
		tpm2_token_free(out);
	return r;
}

const char *tpm2_token_unsupported(const struct tpm2_token *t)
{
	if (t->pcrlock || t->pcrlock_nv)
		return "tpm2_pcrlock";
	if (t->pubkey)
		return "tpm2_pubkey";
	if (t->n_blobs > 1)
		return "sharded tpm2-blob";
	if (t->blob_seed)
		return "tpm2-blob import seed";
	if (t->unknown[0])
		return t->unknown;
	return NULL;
}

void tpm2_token_free(struct tpm2_token *t)
{
	if (!t)
		return;
	free(t->blob_private);
	free(t->blob_public);
	free(t->blob_seed);
	free(t->srk);
	memset(t, 0, sizeof(*t));
}

/* ---- building ----------------------------------------------------------------------------- */

/* A whole TPM2B: its 2-byte size matches its length. */
static bool tpm2b_whole(const uint8_t *b, size_t len)
{
	return b && len > 2 && ((size_t)b[0] << 8 | b[1]) == len - 2;
}

static int check_buildable(const struct tpm2_token *t)
{
	if (tpm2_token_unsupported(t))
		return -EOPNOTSUPP;
	if (t->n_keyslots == 0 || t->n_keyslots > TPM2_TOKEN_MAX_KEYSLOTS)
		return -EINVAL;
	for (size_t i = 0; i < t->n_keyslots; i++)
		if (t->keyslots[i] < 0 || t->keyslots[i] >= LUKS2_KEYSLOTS_MAX)
			return -EINVAL;
	if (!tpm2b_whole(t->blob_private, t->blob_private_len) ||
	    !tpm2b_whole(t->blob_public, t->blob_public_len) ||
	    t->blob_private_len + t->blob_public_len > BLOB_MAX)
		return -EINVAL;
	if (t->pcr_mask >> TPM2_PCRS || t->policy_hash_len != POLICY_HASH_LEN)
		return -EINVAL;
	if (!memchr(t->pcr_bank, '\0', sizeof(t->pcr_bank)) ||
	    !memchr(t->primary_alg, '\0', sizeof(t->primary_alg)))
		return -EINVAL;
	if (t->pcr_bank[0] && !bank_size(t->pcr_bank))
		return -EINVAL;
	if (t->primary_alg[0] && strcmp(t->primary_alg, "ecc") != 0 &&
	    strcmp(t->primary_alg, "rsa") != 0)
		return -EINVAL;
	if (t->salt_len > sizeof(t->salt) || (t->srk && (t->srk_len == 0 || t->srk_len > SRK_MAX)))
		return -EINVAL;
	if (t->argon2id_memcost &&
	    (!t->argon2id_iterations || !t->argon2id_lanes || !t->salt_len || !t->pin))
		return -EINVAL;
	if (t->pcr_values_mask) {
		if (t->pcr_values_mask & ~t->pcr_mask || !digest_size_valid(t->pcr_value_len) ||
		    (t->pcr_bank[0] && bank_size(t->pcr_bank) != t->pcr_value_len))
			return -EINVAL;
	}
	return 0;
}

/* Adds a member; takes the value's reference. Returns false when the value is missing. */
static bool add(json_object *o, const char *key, json_object *v)
{
	if (!v)
		return false;
	if (json_object_object_add(o, key, v) < 0) {
		json_object_put(v);
		return false;
	}
	return true;
}

static json_object *base64_string(const uint8_t *b, size_t n)
{
	char *s = malloc(BASE64_ENCODED_LEN(n) + 1);
	if (!s)
		return NULL;
	size_t len = base64_encode(b, n, s);
	json_object *v = json_object_new_string_len(s, (int)len);
	free(s);
	return v;
}

static json_object *hex_string(const uint8_t *b, size_t n)
{
	char s[2 * 64 + 1];
	hex_encode(b, n, s);
	return json_object_new_string(s);
}

static json_object *pcr_array(uint32_t mask)
{
	json_object *a = json_object_new_array();
	for (int i = 0; a && i < TPM2_PCRS; i++)
		if (mask & (UINT32_C(1) << i)) {
			json_object *e = json_object_new_int(i);
			if (!e || json_object_array_add(a, e) < 0) {
				json_object_put(e);
				json_object_put(a);
				return NULL;
			}
		}
	return a;
}

static bool build_fields(json_object *o, const struct tpm2_token *t)
{
	if (!add(o, "type", json_object_new_string(TPM2_TOKEN_TYPE)))
		return false;
	json_object *slots = json_object_new_array();
	if (!add(o, "keyslots", slots))
		return false;
	for (size_t i = 0; i < t->n_keyslots; i++) {
		char num[12];
		snprintf(num, sizeof(num), "%d", t->keyslots[i]);
		json_object *e = json_object_new_string(num);
		if (!e || json_object_array_add(slots, e) < 0) {
			json_object_put(e);
			return false;
		}
	}

	size_t blob_len = t->blob_private_len + t->blob_public_len;
	uint8_t *blob = malloc(blob_len);
	if (!blob)
		return false;
	memcpy(blob, t->blob_private, t->blob_private_len);
	memcpy(blob + t->blob_private_len, t->blob_public, t->blob_public_len);
	bool ok = add(o, "tpm2-blob", base64_string(blob, blob_len));
	free(blob);
	if (!ok || !add(o, "tpm2-pcrs", pcr_array(t->pcr_mask)))
		return false;
	if (t->pcr_bank[0] && !add(o, "tpm2-pcr-bank", json_object_new_string(t->pcr_bank)))
		return false;
	if (t->primary_alg[0] &&
	    !add(o, "tpm2-primary-alg", json_object_new_string(t->primary_alg)))
		return false;
	if (!add(o, "tpm2-policy-hash", hex_string(t->policy_hash, t->policy_hash_len)) ||
	    !add(o, "tpm2-pin", json_object_new_boolean(t->pin)))
		return false;
	if (t->salt_len && !add(o, "tpm2_salt", base64_string(t->salt, t->salt_len)))
		return false;
	if (t->srk && !add(o, "tpm2_srk", base64_string(t->srk, t->srk_len)))
		return false;
	if (t->argon2id_memcost &&
	    (!add(o, "tpm2_argon2id_memcost", json_object_new_uint64(t->argon2id_memcost)) ||
	     !add(o, "tpm2_argon2id_iterations", json_object_new_int64(t->argon2id_iterations)) ||
	     !add(o, "tpm2_argon2id_lanes", json_object_new_int64(t->argon2id_lanes))))
		return false;

	if (t->pcr_values_mask) {
		json_object *values = json_object_new_object();
		if (!add(o, TPM2_TOKEN_PCR_VALUES_KEY, values))
			return false;
		for (int i = 0; i < TPM2_PCRS; i++)
			if (t->pcr_values_mask & (UINT32_C(1) << i)) {
				char num[4];
				snprintf(num, sizeof(num), "%d", i);
				if (!add(values, num,
					 hex_string(t->pcr_values[i], t->pcr_value_len)))
					return false;
			}
	}
	return true;
}

char *tpm2_token_build(const struct tpm2_token *t)
{
	int r = check_buildable(t);
	if (r < 0) {
		errno = -r;
		return NULL;
	}
	json_object *o = json_object_new_object();
	char *text = NULL;
	if (o && build_fields(o, t)) {
		const char *s = json_object_to_json_string_ext(
		    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
		text = s ? strdup(s) : NULL;
	}
	json_object_put(o);
	if (!text)
		errno = ENOMEM;
	return text;
}

/* ---- PCR lists ---------------------------------------------------------------------------- */

/* systemd's names for PCRs (src/fundamental/tpm2-pcr.h, accepted by --tpm2-pcrs= since 254). */
static const struct {
	const char *name;
	int pcr;
} pcr_names[] = {
    {"platform-code", 0},
    {"platform-config", 1},
    {"external-code", 2},
    {"external-config", 3},
    {"boot-loader-code", 4},
    {"boot-loader-config", 5},
    {"host-platform", 6},
    {"secure-boot-policy", 7},
    {"kernel-initrd", 9},
    {"ima", 10},
    {"kernel-boot", 11},
    {"kernel-config", 12},
    {"sysexts", 13},
    {"shim-policy", 14},
    {"system-identity", 15},
    {"debug", 16},
    {"application-support", 23},
};

int tpm2_token_pcr_mask_parse(const char *list, uint32_t *mask, char *why, size_t why_len)
{
	if (!list)
		return fail(why, why_len, "no PCR list");
	uint32_t m = 0;
	const char *p = list;
	while (*p) {
		size_t n = strcspn(p, "+,");
		if (n > 0) {
			int pcr = -1;
			/* systemd accepts leading zeros here ("07"): strip them, keep one digit. */
			size_t skip = 0;
			while (skip + 1 < n && p[skip] == '0')
				skip++;
			pcr = parse_index(p + skip, n - skip, TPM2_PCRS - 1);
			for (size_t i = 0; pcr < 0 && i < sizeof(pcr_names) / sizeof(pcr_names[0]);
			     i++)
				if (strlen(pcr_names[i].name) == n &&
				    memcmp(pcr_names[i].name, p, n) == 0)
					pcr = pcr_names[i].pcr;
			if (pcr < 0) {
				if (memchr(p, ':', n) || memchr(p, '=', n))
					return fail(
					    why, why_len,
					    "\"%.*s\": PCR bank or value assignments are not "
					    "supported",
					    (int)(n > 40 ? 40 : n), p);
				return fail(why, why_len,
					    "\"%.*s\" is not a PCR index 0..23 or a PCR name",
					    (int)(n > 40 ? 40 : n), p);
			}
			m |= UINT32_C(1) << pcr;
		}
		p += n;
		if (*p)
			p++;
	}
	*mask = m;
	return 0;
}
