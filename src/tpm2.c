/* SPDX-License-Identifier: MIT */
/*
 * The TPM2 side of systemd-tpm2 tokens, written against systemd's documented behaviour (see
 * README "TPM2"): a transient primary key from the owner hierarchy with the template
 * systemd-cryptenroll has always used for tokens without tpm2_srk (or the persistent SRK the
 * token names), the sealed object loaded under it, a policy session replaying PolicyPCR (and
 * PolicyAuthValue for a PIN), Unseal, and base64 of the secret as the LUKS passphrase.
 */
#define _GNU_SOURCE
#include "tpm2.h"
#include "base64.h"
#include "pinkdf.h"
#include "log.h"
#include "token.h"
#include "tpm2_policy.h"

#include <ctype.h>
#include <errno.h>
#include <nettle/sha1.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tcti_device.h>
#ifdef HAVE_TCTI_SWTPM
#include <tss2/tss2_tcti_swtpm.h>
#endif
#ifdef HAVE_TCTI_MSSIM
#include <tss2/tss2_tcti_mssim.h>
#endif

static const char *const tpm_devices[] = {"/dev/tpmrm0", "/dev/tpm0"};

/* An open TPM: the TCTI and the ESYS context on it. */
struct tpm {
	TSS2_TCTI_CONTEXT *tcti;
	ESYS_CONTEXT *esys;
	char name[96];
};

static void tpm_close(struct tpm *t)
{
	if (t->esys)
		Esys_Finalize(&t->esys);
	if (t->tcti) {
		Tss2_Tcti_Finalize(t->tcti);
		free(t->tcti);
		t->tcti = NULL;
	}
}

typedef TSS2_RC (*tcti_init_fn)(TSS2_TCTI_CONTEXT *, size_t *, const char *);

static int tcti_init(tcti_init_fn init, const char *conf, struct tpm *t)
{
	size_t size = 0;
	if (init(NULL, &size, NULL) != TSS2_RC_SUCCESS)
		return -EIO;
	t->tcti = calloc(1, size);
	if (!t->tcti)
		return -ENOMEM;
	if (init(t->tcti, &size, conf) != TSS2_RC_SUCCESS) {
		free(t->tcti);
		t->tcti = NULL;
		return -ENODEV;
	}
	return 0;
}

/* Opens the TPM named by spec (NULL: the first device node that exists). */
static int tpm_open(const char *spec, struct tpm *t, char *why, size_t why_len)
{
	int r = -ENODEV;
	memset(t, 0, sizeof(*t));
	if (!spec) {
		bool seen = false;
		for (size_t i = 0; i < ARRAY_SIZE(tpm_devices) && !t->tcti; i++)
			if (access(tpm_devices[i], R_OK | W_OK) == 0) {
				seen = true;
				r = tcti_init(Tss2_Tcti_Device_Init, tpm_devices[i], t);
				snprintf(t->name, sizeof(t->name), "%s", tpm_devices[i]);
			}
		if (!seen) {
			snprintf(why, why_len, "no TPM2 (neither /dev/tpmrm0 nor /dev/tpm0)");
			return -ENODEV;
		}
	} else if (spec[0] == '/' || str_has_prefix(spec, "device:")) {
		const char *path = spec[0] == '/' ? spec : spec + strlen("device:");
		r = tcti_init(Tss2_Tcti_Device_Init, path, t);
		snprintf(t->name, sizeof(t->name), "%s", path);
#ifdef HAVE_TCTI_SWTPM
	} else if (str_has_prefix(spec, "swtpm:")) {
		r = tcti_init(Tss2_Tcti_Swtpm_Init, spec + strlen("swtpm:"), t);
		snprintf(t->name, sizeof(t->name), "%s", spec);
#endif
#ifdef HAVE_TCTI_MSSIM
	} else if (str_has_prefix(spec, "mssim:")) {
		r = tcti_init(Tss2_Tcti_Mssim_Init, spec + strlen("mssim:"), t);
		snprintf(t->name, sizeof(t->name), "%s", spec);
#endif
	} else {
		snprintf(why, why_len, "unsupported TPM2 device \"%s\" in this build", spec);
		return -EINVAL;
	}
	if (r < 0) {
		snprintf(why, why_len, "cannot open the TPM2 %s", t->name);
		return r;
	}
	TSS2_RC rc = Esys_Initialize(&t->esys, t->tcti, NULL);
	if (rc != TSS2_RC_SUCCESS) {
		snprintf(why, why_len, "TPM2 %s: %s", t->name, Tss2_RC_Decode(rc));
		tpm_close(t);
		return -ENODEV;
	}
	return 0;
}

static int probe_device(const char *dev, char *desc, size_t desc_len)
{
	struct tpm t;
	char why[128];
	if (tpm_open(dev, &t, why, sizeof(why)) < 0)
		return -EIO;
	int r = -EIO;
	TPMS_CAPABILITY_DATA *cap = NULL;
	if (Esys_GetCapability(t.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
			       TPM2_CAP_TPM_PROPERTIES, TPM2_PT_MANUFACTURER, 1, NULL,
			       &cap) == TSS2_RC_SUCCESS &&
	    cap->data.tpmProperties.count > 0) {
		/* The manufacturer is four ASCII letters packed big-endian ("IBM ", "MSFT"). */
		uint32_t v = cap->data.tpmProperties.tpmProperty[0].value;
		char id[5];
		for (int i = 0; i < 4; i++) {
			char c = (char)(v >> (24 - 8 * i));
			id[i] = c == 0 ? ' ' : isprint((unsigned char)c) ? c : '?';
		}
		id[4] = '\0';
		for (int i = 3; i >= 0 && id[i] == ' '; i--)
			id[i] = '\0';
		snprintf(desc, desc_len, "%s, manufacturer %s", dev, id);
		r = 1;
	}
	Esys_Free(cap);
	tpm_close(&t);
	return r;
}

int tpm2_probe(char *desc, size_t desc_len)
{
	for (size_t i = 0; i < ARRAY_SIZE(tpm_devices); i++) {
		if (access(tpm_devices[i], R_OK | W_OK) < 0)
			continue;
		int r = probe_device(tpm_devices[i], desc, desc_len);
		if (r < 0)
			snprintf(desc, desc_len, "%s does not answer", tpm_devices[i]);
		return r;
	}
	snprintf(desc, desc_len, "none");
	return 0;
}

int tpm2_wait_device(unsigned wait_ms)
{
	/*
	 * The TIS/CRB drivers are built into the kernels we boot and probe before init runs, so
	 * this normally returns at once; a TPM driver loaded as a module gets the grace period.
	 */
	uint64_t deadline = now_ms() + wait_ms;
	for (;;) {
		for (size_t i = 0; i < ARRAY_SIZE(tpm_devices); i++)
			if (access(tpm_devices[i], F_OK) == 0)
				return 0;
		if (now_ms() >= deadline)
			return -ENODEV;
		usleep(20 * 1000);
	}
}

/* ---- the pieces systemd's tokens are made of ------------------------------------------- */

/*
 * The primary key template systemd-cryptenroll uses for tokens that do not name an SRK: a
 * restricted decryption key in the owner hierarchy, AES-128-CFB for its children, ECC P-256 or
 * RSA-2048, all-zero unique field. A primary is derived from the hierarchy's seed and the
 * template, so the same template yields the same key on every boot.
 */
static void primary_template(bool rsa, TPM2B_PUBLIC *pub)
{
	memset(pub, 0, sizeof(*pub));
	TPMT_PUBLIC *a = &pub->publicArea;
	a->type = rsa ? TPM2_ALG_RSA : TPM2_ALG_ECC;
	a->nameAlg = TPM2_ALG_SHA256;
	a->objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT | TPMA_OBJECT_FIXEDTPM |
			      TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
			      TPMA_OBJECT_USERWITHAUTH;
	if (rsa) {
		a->parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
		a->parameters.rsaDetail.symmetric.keyBits.aes = 128;
		a->parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
		a->parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
		a->parameters.rsaDetail.keyBits = 2048;
	} else {
		a->parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
		a->parameters.eccDetail.symmetric.keyBits.aes = 128;
		a->parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
		a->parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
		a->parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
		a->parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
	}
}

/* The TPM's own response code without the layer, and for format-one codes without the handle,
 * session or parameter number (bits 6 and 8-11), so it compares with TPM2_RC_AUTH_FAIL etc. */
static TSS2_RC tpm_rc_code(TSS2_RC rc)
{
	rc &= 0xfff;
	return (rc & TPM2_RC_FMT1) ? (rc & (TPM2_RC_FMT1 | 0x3f)) : rc;
}

static int tss_fail(TSS2_RC rc, const char *what, char *why, size_t why_len)
{
	snprintf(why, why_len, "TPM2 %s failed: %s", what, Tss2_RC_Decode(rc));
	return -EIO;
}

static int make_primary(struct tpm *t, bool rsa, ESYS_TR *primary, char *why, size_t why_len)
{
	TPM2B_PUBLIC tmpl;
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION creation = {0};
	primary_template(rsa, &tmpl);
	TSS2_RC rc = Esys_CreatePrimary(t->esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
					ESYS_TR_NONE, &sens, &tmpl, &outside, &creation, primary,
					NULL, NULL, NULL, NULL);
	if (rc != TSS2_RC_SUCCESS)
		return tss_fail(rc, rsa ? "CreatePrimary (RSA)" : "CreatePrimary (ECC)", why,
				why_len);
	return 0;
}

static TPMI_ALG_HASH bank_alg(const char *bank)
{
	if (!bank || !*bank || strcmp(bank, "sha256") == 0)
		return TPM2_ALG_SHA256;
	if (strcmp(bank, "sha1") == 0)
		return TPM2_ALG_SHA1;
	if (strcmp(bank, "sha384") == 0)
		return TPM2_ALG_SHA384;
	if (strcmp(bank, "sha512") == 0)
		return TPM2_ALG_SHA512;
	return TPM2_ALG_ERROR;
}

static void pcr_selection(TPMI_ALG_HASH alg, uint32_t mask, TPML_PCR_SELECTION *sel)
{
	memset(sel, 0, sizeof(*sel));
	sel->count = 1;
	sel->pcrSelections[0].hash = alg;
	sel->pcrSelections[0].sizeofSelect = 3;
	for (int i = 0; i < 3; i++)
		sel->pcrSelections[0].pcrSelect[i] = (uint8_t)(mask >> (8 * i));
}

/* Reads the PCRs in mask of the bank into values[pcr] (each len bytes). */
static int read_pcrs(struct tpm *t, TPMI_ALG_HASH alg, uint32_t mask, uint8_t values[TPM2_PCRS][64],
		     size_t *len, char *why, size_t why_len)
{
	uint32_t left = mask;
	*len = 0;
	while (left) {
		TPML_PCR_SELECTION sel, *out_sel = NULL;
		TPML_DIGEST *digests = NULL;
		pcr_selection(alg, left, &sel);
		TSS2_RC rc = Esys_PCR_Read(t->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &sel,
					   NULL, &out_sel, &digests);
		if (rc != TSS2_RC_SUCCESS)
			return tss_fail(rc, "PCR_Read", why, why_len);
		/* The TPM returns the lowest selected PCRs it could fit, in order. */
		uint32_t got = 0;
		for (int i = 0; i < 3 && out_sel->count > 0; i++)
			got |= (uint32_t)out_sel->pcrSelections[0].pcrSelect[i] << (8 * i);
		size_t k = 0;
		for (int pcr = 0; pcr < TPM2_PCRS && k < digests->count; pcr++)
			if (got & (1u << pcr)) {
				size_t n = digests->digests[k].size;
				memcpy(values[pcr], digests->digests[k].buffer, n > 64 ? 64 : n);
				*len = n > 64 ? 64 : n;
				k++;
			}
		Esys_Free(out_sel);
		Esys_Free(digests);
		if (!(got & left)) {
			snprintf(why, why_len, "TPM2 PCR_Read returned none of the PCRs asked for");
			return -EIO;
		}
		left &= ~got;
	}
	return 0;
}

/* Starts a policy session salted by the primary key, AES-128-CFB for parameters. */
static int start_session(struct tpm *t, ESYS_TR salt_key, ESYS_TR *session, char *why,
			 size_t why_len)
{
	TPMT_SYM_DEF sym = {
	    .algorithm = TPM2_ALG_AES, .keyBits = {.aes = 128}, .mode = {.aes = TPM2_ALG_CFB}};
	TSS2_RC rc = Esys_StartAuthSession(t->esys, salt_key, ESYS_TR_NONE, ESYS_TR_NONE,
					   ESYS_TR_NONE, ESYS_TR_NONE, NULL, TPM2_SE_POLICY, &sym,
					   TPM2_ALG_SHA256, session);
	if (rc != TSS2_RC_SUCCESS)
		return tss_fail(rc, "StartAuthSession", why, why_len);
	return 0;
}

/* Runs PolicyPCR (and PolicyAuthValue) in session; returns the session's digest in out. */
static int run_policy(struct tpm *t, ESYS_TR session, TPMI_ALG_HASH alg, uint32_t mask, bool pin,
		      TPM2B_DIGEST **out, char *why, size_t why_len)
{
	TSS2_RC rc;
	if (mask) {
		TPML_PCR_SELECTION sel;
		TPM2B_DIGEST empty = {0};
		pcr_selection(alg, mask, &sel);
		rc = Esys_PolicyPCR(t->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
				    &empty, &sel);
		if (rc != TSS2_RC_SUCCESS)
			return tss_fail(rc, "PolicyPCR", why, why_len);
	}
	if (pin) {
		rc = Esys_PolicyAuthValue(t->esys, session, ESYS_TR_NONE, ESYS_TR_NONE,
					  ESYS_TR_NONE);
		if (rc != TSS2_RC_SUCCESS)
			return tss_fail(rc, "PolicyAuthValue", why, why_len);
	}
	rc = Esys_PolicyGetDigest(t->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, out);
	if (rc != TSS2_RC_SUCCESS)
		return tss_fail(rc, "PolicyGetDigest", why, why_len);
	return 0;
}

/*
 * Explains a policy mismatch: with our record of the values at enrollment, which PCRs differ
 * (expected and current digest); with a token systemd wrote (it keeps only the policy hash),
 * the current values of the PCRs it names.
 */
static void explain_mismatch(struct tpm *t, const struct tpm2_token *tok, TPMI_ALG_HASH alg,
			     char *why, size_t why_len)
{
	uint8_t now[TPM2_PCRS][64];
	size_t len = 0;
	char err[128], list[80];
	pcr_mask_text(tok->pcr_mask, list, sizeof(list));
	if (read_pcrs(t, alg, tok->pcr_mask, now, &len, err, sizeof(err)) < 0) {
		snprintf(why, why_len, "the PCR policy (PCRs %s) no longer matches", list);
		return;
	}
	size_t o = 0;
	if (tok->pcr_values_mask && tok->pcr_value_len == len) {
		o += (size_t)snprintf(why, why_len, "PCRs changed since enrollment:");
		for (int i = 0; i < TPM2_PCRS && o < why_len; i++) {
			if (!(tok->pcr_values_mask & (1u << i)))
				continue;
			if (memcmp(tok->pcr_values[i], now[i], len) == 0)
				continue;
			char a[17], b[17];
			hex_encode(tok->pcr_values[i], 8, a);
			hex_encode(now[i], 8, b);
			o += (size_t)snprintf(why + o, why_len - o, " PCR %d expected %s… now %s…",
					      i, a, b);
		}
		return;
	}
	o += (size_t)snprintf(why, why_len,
			      "the PCR policy (PCRs %s) no longer matches; current values:", list);
	for (int i = 0; i < TPM2_PCRS && o < why_len; i++)
		if (tok->pcr_mask & (1u << i)) {
			char b[17];
			hex_encode(now[i], 8, b);
			o += (size_t)snprintf(why + o, why_len - o, " PCR %d %s…", i, b);
		}
}

static int secret_to_passphrase(const uint8_t *data, size_t n, struct secret *out)
{
	char b64[BASE64_ENCODED_LEN(128) + 1];
	if (n > 128)
		return -E2BIG;
	size_t len = base64_encode(data, n, b64);
	int r = secret_set(out, b64, len);
	explicit_bzero(b64, sizeof(b64));
	return r;
}

static int unseal_once(struct tpm *t, const struct tpm2_token *tok, const struct pin_derived *pin,
		       struct secret *out, char *why, size_t why_len)
{
	ESYS_TR primary = ESYS_TR_NONE, obj = ESYS_TR_NONE, session = ESYS_TR_NONE;
	bool flush_primary = false;
	TPM2B_PRIVATE priv = {0};
	TPM2B_PUBLIC pub = {0};
	TPM2B_DIGEST *digest = NULL;
	TPM2B_SENSITIVE_DATA *data = NULL;
	TSS2_RC rc;
	int r;

	TPMI_ALG_HASH alg = bank_alg(tok->pcr_bank);
	if (alg == TPM2_ALG_ERROR) {
		snprintf(why, why_len, "unsupported PCR bank \"%s\"", tok->pcr_bank);
		return -EOPNOTSUPP;
	}
	size_t off = 0;
	if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(tok->blob_private, tok->blob_private_len, &off,
					    &priv) != TSS2_RC_SUCCESS ||
	    (off = 0, Tss2_MU_TPM2B_PUBLIC_Unmarshal(tok->blob_public, tok->blob_public_len, &off,
						     &pub) != TSS2_RC_SUCCESS)) {
		snprintf(why, why_len, "the token's tpm2-blob is not a sealed TPM2 object");
		return -EINVAL;
	}

	uint64_t t0 = now_ms();
	if (tok->srk) {
		rc = Esys_TR_Deserialize(t->esys, tok->srk, tok->srk_len, &primary);
		if (rc != TSS2_RC_SUCCESS) {
			r = tss_fail(rc, "loading the token's SRK", why, why_len);
			goto out;
		}
	} else {
		r = make_primary(t, strcmp(tok->primary_alg, "rsa") == 0, &primary, why, why_len);
		if (r < 0)
			goto out;
		flush_primary = true;
	}
	log_debug("TPM2: primary key in %llu ms", (unsigned long long)(now_ms() - t0));
	t0 = now_ms();
	rc = Esys_Load(t->esys, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &priv, &pub,
		       &obj);
	if (rc != TSS2_RC_SUCCESS) {
		/* A blob sealed on another TPM (or after a TPM clear) fails here. */
		r = tss_fail(rc, "Load of the sealed object (sealed by another TPM?)", why,
			     why_len);
		goto out;
	}
	log_debug("TPM2: sealed object loaded in %llu ms", (unsigned long long)(now_ms() - t0));
	t0 = now_ms();
	r = start_session(t, primary, &session, why, why_len);
	if (r < 0)
		goto out;
	/* Salting costs an ECDH in mbedTLS: ~1 s under TCG emulation, milliseconds on KVM. */
	log_debug("TPM2: salted policy session in %llu ms", (unsigned long long)(now_ms() - t0));
	t0 = now_ms();
	r = run_policy(t, session, alg, tok->pcr_mask, tok->pin, &digest, why, why_len);
	if (r < 0)
		goto out;
	if (tok->policy_hash_len > 0 && (digest->size != tok->policy_hash_len ||
					 memcmp(digest->buffer, tok->policy_hash, digest->size))) {
		explain_mismatch(t, tok, alg, why, why_len);
		r = -EKEYREJECTED;
		goto out;
	}
	if (tok->pin) {
		TPM2B_AUTH auth = {.size = SHA256_DIGEST_SIZE};
		pinkdf_auth(pin, auth.buffer);
		rc = Esys_TR_SetAuth(t->esys, obj, &auth);
		explicit_bzero(&auth, sizeof(auth));
		if (rc != TSS2_RC_SUCCESS) {
			r = tss_fail(rc, "SetAuth", why, why_len);
			goto out;
		}
	}
	/* Encrypt the response: the secret does not cross the bus in the clear. */
	Esys_TRSess_SetAttributes(t->esys, session, TPMA_SESSION_ENCRYPT, TPMA_SESSION_ENCRYPT);
	rc = Esys_Unseal(t->esys, obj, session, ESYS_TR_NONE, ESYS_TR_NONE, &data);
	TSS2_RC code = tpm_rc_code(rc);
	if (code == TPM2_RC_AUTH_FAIL || code == TPM2_RC_BAD_AUTH) {
		snprintf(why, why_len, "the TPM2 PIN is wrong");
		r = -EACCES;
		goto out;
	}
	if (code == TPM2_RC_LOCKOUT) {
		snprintf(why, why_len,
			 "the TPM2 is in dictionary-attack lockout after too many wrong PINs; it "
			 "recovers with time or tpm2_dictionarylockout --clear-lockout");
		r = -ENOLCK;
		goto out;
	}
	if (code == TPM2_RC_POLICY_FAIL) {
		explain_mismatch(t, tok, alg, why, why_len);
		r = -EKEYREJECTED;
		goto out;
	}
	if (code == TPM2_RC_PCR_CHANGED) {
		snprintf(why, why_len, "PCRs changed while unsealing");
		r = -EAGAIN;
		goto out;
	}
	if (rc != TSS2_RC_SUCCESS) {
		r = tss_fail(rc, "Unseal", why, why_len);
		goto out;
	}
	log_debug("TPM2: policy and unseal in %llu ms", (unsigned long long)(now_ms() - t0));
	uint8_t secret[sizeof(data->buffer)];
	size_t n =
	    pinkdf_secret(tok->pin ? pin : NULL, data->buffer, data->size, secret, sizeof(secret));
	r = n ? secret_to_passphrase(secret, n, out) : -EINVAL;
	explicit_bzero(secret, sizeof(secret));
	explicit_bzero(data->buffer, sizeof(data->buffer));
out:
	Esys_Free(data);
	Esys_Free(digest);
	if (session != ESYS_TR_NONE)
		Esys_FlushContext(t->esys, session);
	if (obj != ESYS_TR_NONE)
		Esys_FlushContext(t->esys, obj);
	if (flush_primary)
		Esys_FlushContext(t->esys, primary);
	else if (primary != ESYS_TR_NONE)
		Esys_TR_Close(t->esys, &primary);
	return r;
}

int tpm2_unseal(const char *tcti, const struct tpm2_token *tok, const struct secret *pin,
		struct secret *out, char *why, size_t why_len)
{
	const char *unsupported = tpm2_token_unsupported(tok);
	if (unsupported) {
		snprintf(why, why_len, "the token uses %s, which factory-init does not support",
			 unsupported);
		return -EOPNOTSUPP;
	}
	if (tok->pin && (!pin || !pin->data)) {
		snprintf(why, why_len, "the token needs a TPM2 PIN and none can be asked for");
		return -ENOKEY;
	}
	/* The PIN's derivation first (Argon2id takes seconds): the TPM session stays short. */
	struct pin_derived d = {0};
	int r = 0;
	if (tok->pin) {
		uint64_t t0 = now_ms();
		r = pinkdf_derive(tok, pin, &d);
		if (r < 0) {
			snprintf(why, why_len, "%s",
				 r == -EINVAL ? "an empty PIN cannot open an Argon2id PIN token"
					      : "Argon2id of the PIN failed");
			pinkdf_wipe(&d);
			return r == -EINVAL ? -EACCES : r;
		}
		if (d.argon2id)
			log_info(
			    "TPM2: Argon2id of the PIN (%llu MiB, %u passes, %u lanes) in %llu ms",
			    (unsigned long long)(tok->argon2id_memcost >> 20),
			    tok->argon2id_iterations, tok->argon2id_lanes,
			    (unsigned long long)(now_ms() - t0));
	}
	struct tpm t;
	r = tpm_open(tcti, &t, why, why_len);
	if (r < 0) {
		pinkdf_wipe(&d);
		return r;
	}
	/* A PCR extended between PolicyPCR and Unseal voids the session: try again, briefly. */
	for (int attempt = 0; attempt < 3; attempt++) {
		r = unseal_once(&t, tok, &d, out, why, why_len);
		if (r != -EAGAIN)
			break;
	}
	tpm_close(&t);
	pinkdf_wipe(&d);
	return r;
}

/* The digest of data in the hash of one PCR bank (0: a bank we cannot compute). */
static size_t bank_digest(TPMI_ALG_HASH alg, const void *data, size_t len, uint8_t *out)
{
	switch (alg) {
	case TPM2_ALG_SHA1: {
		struct sha1_ctx c;
		sha1_init(&c);
		sha1_update(&c, len, data);
		sha1_digest(&c, SHA1_DIGEST_SIZE, out);
		return SHA1_DIGEST_SIZE;
	}
	case TPM2_ALG_SHA256: {
		struct sha256_ctx c;
		sha256_init(&c);
		sha256_update(&c, len, data);
		sha256_digest(&c, SHA256_DIGEST_SIZE, out);
		return SHA256_DIGEST_SIZE;
	}
	case TPM2_ALG_SHA384: {
		struct sha384_ctx c;
		sha384_init(&c);
		sha384_update(&c, len, data);
		sha384_digest(&c, SHA384_DIGEST_SIZE, out);
		return SHA384_DIGEST_SIZE;
	}
	case TPM2_ALG_SHA512: {
		struct sha512_ctx c;
		sha512_init(&c);
		sha512_update(&c, len, data);
		sha512_digest(&c, SHA512_DIGEST_SIZE, out);
		return SHA512_DIGEST_SIZE;
	}
	default:
		return 0;
	}
}

int tpm2_extend_pcr(const char *tcti, unsigned pcr, const char *event, char *why, size_t why_len)
{
	if (pcr >= TPM2_PCRS) {
		snprintf(why, why_len, "PCR %u does not exist", pcr);
		return -EINVAL;
	}
	struct tpm t;
	int r = tpm_open(tcti, &t, why, why_len);
	if (r < 0)
		return r == -ENODEV ? 0 : r;
	/* Every allocated bank that holds this PCR: a bank left alone would still unseal. */
	TPMS_CAPABILITY_DATA *cap = NULL;
	TSS2_RC rc = Esys_GetCapability(t.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
					TPM2_CAP_PCRS, 0, 1, NULL, &cap);
	if (rc != TSS2_RC_SUCCESS) {
		r = tss_fail(rc, "reading the PCR banks", why, why_len);
		goto out;
	}
	TPML_DIGEST_VALUES digests = {0};
	char banks[64] = "";
	const TPML_PCR_SELECTION *sel = &cap->data.assignedPCR;
	for (uint32_t i = 0; i < sel->count && digests.count < TPM2_NUM_PCR_BANKS; i++) {
		const TPMS_PCR_SELECTION *b = &sel->pcrSelections[i];
		if (pcr / 8 >= b->sizeofSelect || !(b->pcrSelect[pcr / 8] & (1u << (pcr % 8))))
			continue;
		TPMT_HA *d = &digests.digests[digests.count];
		if (!bank_digest(b->hash, event, strlen(event), (uint8_t *)&d->digest))
			continue;
		d->hashAlg = b->hash;
		digests.count++;
		size_t o = strlen(banks);
		snprintf(banks + o, sizeof(banks) - o, "%s%s", o ? "+" : "",
			 b->hash == TPM2_ALG_SHA1     ? "sha1"
			 : b->hash == TPM2_ALG_SHA256 ? "sha256"
			 : b->hash == TPM2_ALG_SHA384 ? "sha384"
						      : "sha512");
	}
	if (digests.count == 0) {
		snprintf(why, why_len,
			 "the TPM has no bank with PCR %u that factory-init can extend", pcr);
		r = -EOPNOTSUPP;
		goto out;
	}
	rc = Esys_PCR_Extend(t.esys, ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE,
			     ESYS_TR_NONE, &digests);
	if (rc != TSS2_RC_SUCCESS) {
		r = tss_fail(rc, "extending the PCR", why, why_len);
		goto out;
	}
	snprintf(why, why_len, "extended PCR %u (%s) with \"%s\"", pcr, banks, event);
	r = 1;
out:
	Esys_Free(cap);
	tpm_close(&t);
	return r;
}

int tpm2_seal(const char *tcti, const struct pcr_spec *pcrs, struct tpm2_token *tok,
	      struct secret *passphrase, char *why, size_t why_len)
{
	struct tpm t;
	ESYS_TR primary = ESYS_TR_NONE;
	TPM2B_PRIVATE *priv = NULL;
	TPM2B_PUBLIC *pub = NULL;
	TPM2B_SENSITIVE_CREATE sens = {0};
	TPM2B_DIGEST policy = {.size = TPM2_SHA256_LEN};
	bool rsa = false;
	int r = tpm_open(tcti, &t, why, why_len);
	if (r < 0)
		return r;

	/* Prefer ECC like systemd; fall back to RSA on a TPM without P-256. */
	r = make_primary(&t, false, &primary, why, why_len);
	if (r < 0) {
		rsa = true;
		r = make_primary(&t, true, &primary, why, why_len);
		if (r < 0)
			goto out;
	}
	/* The PCRs without a given value are bound to what they hold now. */
	uint8_t values[TPM2_PCRS][64] = {{0}};
	size_t len = TPM2_SHA256_LEN;
	uint32_t current = pcrs->mask & ~pcrs->values_mask;
	if (current) {
		r = read_pcrs(&t, TPM2_ALG_SHA256, current, values, &len, why, why_len);
		if (r < 0)
			goto out;
	}
	uint8_t chosen[TPM2_PCRS][TPM2_SHA256_LEN];
	for (int i = 0; i < TPM2_PCRS; i++) {
		memcpy(chosen[i], (pcrs->values_mask & (1u << i)) ? pcrs->values[i] : values[i],
		       TPM2_SHA256_LEN);
		memcpy(tok->pcr_values[i], chosen[i], TPM2_SHA256_LEN);
	}
	tok->pcr_value_len = TPM2_SHA256_LEN;
	tok->pcr_values_mask = pcrs->mask;
	if (pcrs->mask) /* else the empty policy, as initialised: all zero */
		tpm2_policy_pcr_sha256(pcrs->mask, chosen, policy.buffer);

	/* The secret: 32 bytes from the kernel's generator (the TPM's would do as well). */
	uint8_t secret[32];
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret)) {
		snprintf(why, why_len, "getrandom failed: %s", strerror(errno));
		r = -EIO;
		goto out;
	}
	sens.sensitive.data.size = sizeof(secret);
	memcpy(sens.sensitive.data.buffer, secret, sizeof(secret));
	TPM2B_PUBLIC tmpl = {0};
	tmpl.publicArea.type = TPM2_ALG_KEYEDHASH;
	tmpl.publicArea.nameAlg = TPM2_ALG_SHA256;
	tmpl.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
	tmpl.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
	tmpl.publicArea.authPolicy = policy;
	TPM2B_DATA outside = {0};
	TPML_PCR_SELECTION creation = {0};
	TSS2_RC rc = Esys_Create(t.esys, primary, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
				 &sens, &tmpl, &outside, &creation, &priv, &pub, NULL, NULL, NULL);
	explicit_bzero(&sens, sizeof(sens));
	if (rc != TSS2_RC_SUCCESS) {
		explicit_bzero(secret, sizeof(secret));
		r = tss_fail(rc, "Create (sealing)", why, why_len);
		goto out;
	}
	r = secret_to_passphrase(secret, sizeof(secret), passphrase);
	explicit_bzero(secret, sizeof(secret));
	if (r < 0)
		goto out;

	uint8_t blob[sizeof(TPM2B_PRIVATE) + sizeof(TPM2B_PUBLIC)];
	size_t priv_len = 0, pub_len = 0;
	if (Tss2_MU_TPM2B_PRIVATE_Marshal(priv, blob, sizeof(blob), &priv_len) != TSS2_RC_SUCCESS ||
	    Tss2_MU_TPM2B_PUBLIC_Marshal(pub, blob + priv_len, sizeof(blob) - priv_len, &pub_len) !=
		TSS2_RC_SUCCESS) {
		snprintf(why, why_len, "cannot marshal the sealed object");
		r = -EIO;
		goto out;
	}
	tok->blob_private = malloc(priv_len);
	tok->blob_public = malloc(pub_len);
	if (!tok->blob_private || !tok->blob_public) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(tok->blob_private, blob, priv_len);
	tok->blob_private_len = priv_len;
	memcpy(tok->blob_public, blob + priv_len, pub_len);
	tok->blob_public_len = pub_len;
	tok->pcr_mask = pcrs->mask;
	snprintf(tok->pcr_bank, sizeof(tok->pcr_bank), "sha256");
	snprintf(tok->primary_alg, sizeof(tok->primary_alg), "%s", rsa ? "rsa" : "ecc");
	memcpy(tok->policy_hash, policy.buffer, policy.size);
	tok->policy_hash_len = policy.size;
	r = 0;
out:
	if (r < 0)
		secret_free(passphrase);
	Esys_Free(priv);
	Esys_Free(pub);
	if (primary != ESYS_TR_NONE)
		Esys_FlushContext(t.esys, primary);
	tpm_close(&t);
	return r;
}
