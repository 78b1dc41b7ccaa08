/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "unlock.h"
#include "askpw.h"
#include "credentials.h"
#include "log.h"
#include "passphrase.h"
#include "pinkdf.h"
#include "plan.h"
#include "status.h"
#include "token.h"
#include "tpm2.h"

#include <errno.h>
#include <inttypes.h>
#include <libcryptsetup.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void crypt_log_cb(int level, const char *msg, void *usrptr)
{
	(void)usrptr;
	int prio = level == CRYPT_LOG_ERROR	? LOG_ERR
		   : level == CRYPT_LOG_VERBOSE ? LOG_INFO
		   : level == CRYPT_LOG_DEBUG	? LOG_DEBUG
						: LOG_NOTICE;
	/* libcryptsetup never logs key material; its debug output may be long, so keep it there. */
	log_msg(prio, "cryptsetup: %s", msg);
}

void unlock_setup(bool debug)
{
	crypt_set_log_callback(NULL, crypt_log_cb, NULL);
	crypt_set_debug_level(debug ? CRYPT_DEBUG_ALL : CRYPT_DEBUG_NONE);
	crypt_metadata_locking(NULL, 0);
}

int unlock_load(const char *device, struct crypt_device **cd, char *why, size_t why_len)
{
	int r = crypt_init(cd, device);
	if (r < 0) {
		snprintf(why, why_len, "cannot open %s: %s", device, strerror(-r));
		*cd = NULL;
		return r;
	}
	r = crypt_load(*cd, CRYPT_LUKS, NULL);
	if (r < 0) {
		snprintf(why, why_len, "%s has no readable LUKS header: %s", device, strerror(-r));
		unlock_free(cd);
		return r;
	}
	return 0;
}

void unlock_free(struct crypt_device **cd)
{
	if (*cd)
		crypt_free(*cd);
	*cd = NULL;
}

int unlock_with_key(struct crypt_device *cd, const char *name, int keyslot,
		    const struct secret *key, char *why, size_t why_len)
{
	int r = crypt_activate_by_passphrase(cd, name, keyslot < 0 ? CRYPT_ANY_SLOT : keyslot,
					     key->data, key->len, 0);
	if (r == -EPERM)
		snprintf(why, why_len, "no key slot of %s accepts the key",
			 crypt_get_device_name(cd));
	else if (r < 0)
		snprintf(why, why_len, "activating %s failed: %s", crypt_get_device_name(cd),
			 strerror(-r));
	return r;
}

int unlock_next_token(struct crypt_device *cd, const char *type, int *id, const char **json)
{
	for (int i = *id < 0 ? 0 : *id; i < LUKS2_MAX_TOKENS; i++) {
		const char *t = NULL;
		crypt_token_info info = crypt_token_status(cd, i, &t);
		if (info == CRYPT_TOKEN_INVALID || info == CRYPT_TOKEN_INACTIVE || !t ||
		    strcmp(t, type) != 0)
			continue;
		if (crypt_token_json_get(cd, i, json) < 0)
			continue;
		*id = i;
		return 0;
	}
	return -ENOENT;
}

int unlock_use_tpm2_slot_pbkdf(struct crypt_device *cd)
{
	struct crypt_pbkdf_type pbkdf = {
	    .type = CRYPT_KDF_PBKDF2,
	    .hash = "sha512",
	    .iterations = 1000,
	    .flags = CRYPT_PBKDF_NO_BENCHMARK,
	};
	return crypt_set_pbkdf_type(cd, &pbkdf);
}

int unlock_add_tpm2_token(struct crypt_device *cd, struct tpm2_token *tok, int slot)
{
	tok->keyslots[0] = slot;
	tok->n_keyslots = 1;
	_cleanup_free_ char *json = tpm2_token_build(tok);
	int r = json ? crypt_token_json_set(cd, CRYPT_ANY_TOKEN, json) : -ENOMEM;
	if (r < 0)
		crypt_keyslot_destroy(cd, slot);
	return r;
}

int unlock_close(const char *name)
{
	return crypt_deactivate(NULL, name);
}

/* ---- the chain of attempts ---------------------------------------------------------------- */

struct chain {
	const struct plan *p;
	struct status *st;
	const char *device;
	struct crypt_device *cd;
	const struct credentials *creds;
	enum unlock_round round;
	bool tried;	 /* some method had a key to try */
	char why[384];	 /* the last failure, for the fallback reason */
	const char *won; /* the method that opened the volume */
};

/* Records and logs one attempt; returns r. */
static int attempt_done(struct chain *c, const char *method, const char *source, int r, uint64_t t0)
{
	uint64_t ms = now_ms() - t0;
	c->tried = true;
	if (r >= 0) {
		log_info("unlocked %s with %s%s%s (key slot %d, %llu ms)", c->device, method,
			 *source ? " from " : "", source, r, (unsigned long long)ms);
		c->won = method;
	} else {
		log_warn("%s%s%s did not unlock %s: %s", method, *source ? " from " : "", source,
			 c->device, c->why);
	}
	status_attempt(c->st, c->device, method, source, r, ms, r >= 0 ? NULL : c->why);
	return r;
}

static int try_key(struct chain *c, const char *method, const char *source, int keyslot,
		   const struct secret *key, uint64_t t0)
{
	int r = unlock_with_key(c->cd, PERSIST_DM_NAME, keyslot, key, c->why, sizeof(c->why));
	return attempt_done(c, method, source, r, t0);
}

/*
 * Asks for a passphrase or PIN: through systemd's password agents in helper mode under systemd
 * (its console agents, serial included, and plymouth show it; the console is systemd's), else on
 * the console ourselves.
 */
static int ask_secret(const struct chain *c, const char *prompt, struct secret *out)
{
	if (c->p->helper && askpw_under_systemd()) {
		char msg[320], id[300];
		snprintf(msg, sizeof(msg), "%s", prompt);
		size_t n = strlen(msg);
		while (n > 0 && msg[n - 1] == ' ')
			msg[--n] = '\0';
		snprintf(id, sizeof(id), "factory-init:%s", c->device);
		log_info("asking through systemd's password agents: %s", msg);
		return askpw_ask(ASKPW_DIR, msg, id, c->p->luks_timeout_s, out);
	}
	return passphrase_ask(prompt, c->p->luks_timeout_s, out);
}

/* MemAvailable from /proc/meminfo in bytes; 0 when it cannot be read (then no Argon2id). */
static uint64_t mem_available(void)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	if (read_file("/proc/meminfo", 64 * 1024, &text, &len) < 0)
		return 0;
	const char *p = strstr(text, "MemAvailable:");
	uint64_t kib = 0;
	if (!p || sscanf(p, "MemAvailable: %" SCNu64, &kib) != 1)
		return 0;
	return kib * 1024;
}

static int try_tpm2(struct chain *c)
{
	int id = 0, r = -ENOENT;
	const char *json;
	bool waited = false;
	for (; unlock_next_token(c->cd, TPM2_TOKEN_TYPE, &id, &json) == 0; id++) {
		uint64_t t0 = now_ms();
		char source[32];
		snprintf(source, sizeof(source), "token %d", id);
		struct tpm2_token tok;
		if ((r = tpm2_token_parse(json, &tok, c->why, sizeof(c->why))) < 0) {
			if (c->round == UNLOCK_ROUND_QUIET)
				attempt_done(c, "tpm2", source, r, t0);
			continue;
		}
		/* An Argon2id cost beyond what this machine can give is refused before any PIN is
		 * asked (in the quiet round, so it is said once). */
		char refusal[256];
		if (tok.argon2id_memcost &&
		    pinkdf_argon2id_refusal(&tok, pinkdf_argon2id_mem_limit(mem_available()),
					    refusal, sizeof(refusal))) {
			tpm2_token_free(&tok);
			r = -EOPNOTSUPP;
			if (c->round == UNLOCK_ROUND_QUIET) {
				snprintf(c->why, sizeof(c->why), "%s", refusal);
				attempt_done(c, "tpm2", source, r, t0);
			}
			continue;
		}
		/* A PIN token gets vm.luks.tries PIN prompts (the TPM counts each wrong PIN towards
		 * its dictionary-attack lockout, as with systemd-cryptsetup's tries=); none for a
		 * token tpm2_unseal will refuse anyway. */
		bool ask = tok.pin && c->p->may_prompt && !tpm2_token_unsupported(&tok);
		/* A token that needs typing waits for the prompt round; the others are tried in
		 * the quiet round, so no one is asked while a key that needs no one would do. */
		if (ask != (c->round == UNLOCK_ROUND_PROMPT)) {
			tpm2_token_free(&tok);
			r = -ENOENT;
			continue;
		}
		if (!waited) {
			waited = true;
			if (tpm2_wait_device(c->p->tpm2_timeout_s * 1000u) < 0) {
				tpm2_token_free(&tok);
				snprintf(
				    c->why, sizeof(c->why),
				    "no TPM2 device appeared within %u s (vm.luks.tpm2.timeout)",
				    c->p->tpm2_timeout_s);
				return attempt_done(c, "tpm2", source, -ENODEV, t0);
			}
		}
		unsigned tries = ask ? c->p->luks_tries : 1;
		for (unsigned i = 1; i <= tries; i++) {
			_cleanup_secret_ struct secret pin = {0};
			_cleanup_secret_ struct secret pass = {0};
			char src[48];
			if (ask && tries > 1)
				snprintf(src, sizeof(src), "%s, PIN try %u", source, i);
			else
				snprintf(src, sizeof(src), "%s", source);
			if (ask) {
				char prompt[320];
				if (tries > 1)
					snprintf(prompt, sizeof(prompt),
						 "TPM2 PIN for %s (try %u of %u): ", c->device, i,
						 tries);
				else
					snprintf(prompt, sizeof(prompt),
						 "TPM2 PIN for %s: ", c->device);
				r = ask_secret(c, prompt, &pin);
				if (r < 0) {
					log_warn("no TPM2 PIN typed: %s", strerror(-r));
					tries = i; /* no one at the console: no further prompt */
				}
			}
			r = tpm2_unseal(NULL, &tok, pin.data ? &pin : NULL, &pass, c->why,
					sizeof(c->why));
			log_debug("TPM2: token %d unsealed after %llu ms", id,
				  (unsigned long long)(now_ms() - t0));
			if (r >= 0) {
				int slot = tok.n_keyslots > 0 ? tok.keyslots[0] : -1;
				r = try_key(c, "tpm2", src, slot, &pass, t0);
			} else {
				attempt_done(c, "tpm2", src, r, t0);
			}
			if (r != -EACCES || !pin.data)
				break; /* only a wrong PIN is worth asking again */
			t0 = now_ms();
		}
		tpm2_token_free(&tok);
		if (r >= 0)
			return r;
	}
	if (id == 0 && r == -ENOENT)
		log_debug("%s has no systemd-tpm2 token", c->device);
	return r;
}

static int try_credential(struct chain *c)
{
	const struct credential *cred = c->creds ? credentials_find(c->creds, "vm.luks.key") : NULL;
	if (!cred)
		return -ENOENT;
	return try_key(c, "credential", credential_source_name(cred->source), -1, &cred->value,
		       now_ms());
}

static int try_cmdline_key(struct chain *c)
{
	if (!c->p->key.data)
		return -ENOENT;
	return try_key(c, "cmdline-key", "", -1, &c->p->key, now_ms());
}

static int try_keyfile(struct chain *c)
{
	struct stat kst;
	if (!c->p->keyfile_explicit && stat(c->p->keyfile, &kst) < 0)
		return -ENOENT;
	uint64_t t0 = now_ms();
	_cleanup_secret_ struct secret key = {0};
	int r = secret_read_file(&key, c->p->keyfile, 8192);
	if (r < 0) {
		snprintf(c->why, sizeof(c->why), "cannot read key file %s: %s", c->p->keyfile,
			 strerror(-r));
		return attempt_done(c, "keyfile", c->p->keyfile, r, t0);
	}
	return try_key(c, "keyfile", c->p->keyfile, -1, &key, t0);
}

static int try_passphrase(struct chain *c)
{
	int r = -ENOENT;
	for (unsigned i = 1; i <= c->p->luks_tries; i++) {
		char prompt[320], source[32];
		snprintf(prompt, sizeof(prompt), "Passphrase for %s (try %u of %u): ", c->device, i,
			 c->p->luks_tries);
		snprintf(source, sizeof(source), "console, try %u", i);
		uint64_t t0 = now_ms();
		_cleanup_secret_ struct secret pass = {0};
		r = ask_secret(c, prompt, &pass);
		if (r < 0 && r != -E2BIG) {
			snprintf(c->why, sizeof(c->why), "%s",
				 r == -ETIMEDOUT
				     ? "nobody typed a passphrase in time (vm.luks.timeout)"
				 : r == -ECANCELED ? "the passphrase prompt was cancelled"
						   : "no console to ask for a passphrase on");
			return attempt_done(c, "passphrase", source, r, t0);
		}
		if (r == -E2BIG) {
			snprintf(c->why, sizeof(c->why), "the passphrase typed was too long");
			attempt_done(c, "passphrase", source, r, t0);
			continue;
		}
		r = try_key(c, "passphrase", source, -1, &pass, t0);
		if (r != -EPERM)
			return r;
	}
	return r;
}

int unlock_run(const struct plan *p, struct status *st, const char *device,
	       const struct credentials *creds, enum unlock_round round, bool *tried, char *why,
	       size_t why_len)
{
	struct chain c = {.p = p, .st = st, .device = device, .creds = creds, .round = round};
	int r = unlock_load(device, &c.cd, c.why, sizeof(c.why));
	if (r < 0) {
		snprintf(why, why_len, "%s", c.why);
		return r;
	}
	for (size_t i = 0; i < p->n_methods && !c.won; i++) {
		enum unlock_method m = p->methods[i];
		/* The quiet round runs what needs no one at the console; the prompt round what
		 * does (the passphrase, and TPM2 tokens with a PIN, picked in try_tpm2). */
		if ((m == UNLOCK_PASSPHRASE) != (round == UNLOCK_ROUND_PROMPT) && m != UNLOCK_TPM2)
			continue;
		switch (m) {
		case UNLOCK_TPM2:
			r = try_tpm2(&c);
			break;
		case UNLOCK_CREDENTIAL:
			r = try_credential(&c);
			break;
		case UNLOCK_KEY:
			r = try_cmdline_key(&c);
			break;
		case UNLOCK_KEYFILE:
			r = try_keyfile(&c);
			break;
		case UNLOCK_PASSPHRASE:
			r = try_passphrase(&c);
			break;
		default:
			break;
		}
		/* A volume that is already open, or a device error, will not get better. */
		if (r == -EBUSY || r == -EEXIST)
			break;
	}
	unlock_free(&c.cd);
	*tried = *tried || c.tried;
	if (c.won) {
		strscpy(st->unlock, c.won, sizeof(st->unlock));
		return 0;
	}
	snprintf(why, why_len, "%s", c.why);
	return r < 0 ? r : -ENOKEY;
}

void unlock_reason(const struct plan *p, const struct status *st, const char *devices, bool tried,
		   char *out, size_t out_len)
{
	char methods[96] = "";
	for (size_t i = 0, o = 0; i < p->n_methods && o < sizeof(methods); i++)
		o += (size_t)snprintf(methods + o, sizeof(methods) - o, "%s%s", i ? "," : "",
				      unlock_method_name(p->methods[i]));
	if (!tried) {
		snprintf(out, out_len,
			 "%s is LUKS-encrypted and none of the unlock methods (%s) had a key",
			 devices, methods);
		return;
	}
	/* Every attempt's reason, so the one line says exactly why. */
	size_t o = (size_t)snprintf(out, out_len, "could not unlock %s (%s):", devices, methods);
	bool several = strchr(devices, ',') != NULL;
	for (size_t i = 0; i < st->n_attempts && o < out_len; i++) {
		const struct status_attempt *a = &st->attempts[i];
		o += (size_t)snprintf(out + o, out_len - o, "%s %s%s%s%s%s%s: %s", i ? ";" : "",
				      several ? a->device : "", several ? " " : "", a->method,
				      *a->source ? " (" : "", a->source, *a->source ? ")" : "",
				      a->detail);
	}
}
