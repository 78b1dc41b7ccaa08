/* SPDX-License-Identifier: MIT */
/*
 * Enrollment, the way systemd-cryptenroll --tpm2-device does it, so each side opens what the other
 * enrolled: a fresh 32-byte secret sealed under the legacy primary key, a new key slot whose
 * passphrase is base64(secret) with PBKDF2 at minimal cost (the secret has full entropy; argon2
 * would only slow every boot down), and a systemd-tpm2 token naming that slot.
 */
#define _GNU_SOURCE
#include "enroll.h"
#include "log.h"
#include "passphrase.h"
#include "token.h"
#include "tpm2.h"
#include "tpm2_policy.h"
#include "unlock.h"
#include "util.h"

#include <errno.h>
#include <getopt.h>
#include <libcryptsetup.h>
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
	fputs("Usage: factory-init enroll-tpm2 DEVICE [--pcrs=LIST] [--tpm2-device=SPEC]\n"
	      "                                 [--unlock-key-file=FILE]\n"
	      "\n"
	      "Seals a new random key to the TPM2, adds a LUKS2 key slot for it and writes a\n"
	      "systemd-tpm2 token, as systemd-cryptenroll does: either tool unlocks what the\n"
	      "other enrolled. DEVICE is a LUKS2 block device or image file.\n"
	      "\n"
	      "  --pcrs=LIST             PCRs of the SHA-256 bank to bind to, e.g. 7 or 0+7,\n"
	      "                          each bound to its current value or to the one\n"
	      "                          given as 7:sha256=HEX (the value it will have at\n"
	      "                          boot); an empty list binds to nothing. Default:\n"
	      "                          7 and 15 at zero, its value until factory-init\n"
	      "                          extends it before stage 2 (so stage 2 cannot\n"
	      "                          unseal the key)\n"
	      "  --tpm2-device=SPEC      /dev/tpmrm0 (default, else /dev/tpm0), a device\n"
	      "                          path, or swtpm:host=H,port=P where built in\n"
	      "  --unlock-key-file=FILE  an existing key of DEVICE; else $PASSWORD, else\n"
	      "                          a passphrase asked on the terminal\n",
	      f);
}

static int existing_key(const char *file, struct secret *key)
{
	if (file) {
		int r = secret_read_file(key, file, 8192);
		if (r < 0)
			fprintf(stderr, "factory-init: cannot read %s: %s\n", file, strerror(-r));
		return r;
	}
	const char *env = getenv("PASSWORD");
	if (env)
		return secret_set(key, env, strlen(env));
	int r = passphrase_ask("Current passphrase of the volume: ", 0, key);
	if (r < 0)
		fprintf(stderr, "factory-init: no passphrase: %s\n", strerror(-r));
	return r;
}

int enroll_tpm2_main(int argc, char **argv)
{
	enum { OPT_PCRS = 256, OPT_DEVICE, OPT_KEYFILE };
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"pcrs", required_argument, NULL, OPT_PCRS},
	    {"tpm2-pcrs", required_argument, NULL, OPT_PCRS},
	    {"tpm2-device", required_argument, NULL, OPT_DEVICE},
	    {"unlock-key-file", required_argument, NULL, OPT_KEYFILE},
	    {0},
	};
	const char *pcrs = ENROLL_DEFAULT_PCRS, *tcti = NULL, *keyfile = NULL;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return 0;
		case OPT_PCRS:
			pcrs = optarg;
			break;
		case OPT_DEVICE:
			tcti = optarg;
			break;
		case OPT_KEYFILE:
			keyfile = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind + 1 != argc) {
		usage(stderr);
		return 2;
	}
	const char *device = argv[optind];
	char why[512];
	struct pcr_spec spec;
	if (pcr_spec_parse(pcrs, &spec, why, sizeof(why)) < 0) {
		fprintf(stderr, "factory-init: --pcrs=%s: %s\n", pcrs, why);
		return 2;
	}
	uint32_t mask = spec.mask;
	if (mask == 0)
		fprintf(stderr,
			"factory-init: WARNING: enrolling with no PCRs: anyone who can run "
			"code with this TPM can unseal the key. This protects nothing against "
			"a stolen disk image together with its TPM state.\n");

	log_set_console_level(LOG_WARNING);
	unlock_setup(false);
	struct crypt_device *cd = NULL;
	int r = unlock_load(device, &cd, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "factory-init: %s\n", why);
		return 1;
	}
	int status = 1;
	struct tpm2_token tok;
	memset(&tok, 0, sizeof(tok));
	_cleanup_secret_ struct secret old = {0};
	_cleanup_secret_ struct secret pass = {0};
	if (strcmp(crypt_get_type(cd), CRYPT_LUKS2) != 0) {
		fprintf(stderr, "factory-init: %s is not LUKS2: tokens need LUKS2\n", device);
		goto out;
	}
	if (existing_key(keyfile, &old) < 0)
		goto out;
	/* Check the old key first: no TPM work for a key that would be refused anyway. */
	r = crypt_activate_by_passphrase(cd, NULL, CRYPT_ANY_SLOT, old.data, old.len, 0);
	if (r < 0) {
		fprintf(stderr, "factory-init: the given key does not open %s\n", device);
		goto out;
	}
	r = tpm2_seal(tcti, &spec, &tok, &pass, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "factory-init: sealing to the TPM2 failed: %s\n", why);
		goto out;
	}
	r = unlock_use_tpm2_slot_pbkdf(cd);
	if (r >= 0)
		r = crypt_keyslot_add_by_passphrase(cd, CRYPT_ANY_SLOT, old.data, old.len,
						    pass.data, pass.len);
	if (r < 0) {
		fprintf(stderr, "factory-init: adding a key slot to %s failed: %s\n", device,
			strerror(-r));
		goto out;
	}
	int slot = r;
	r = unlock_add_tpm2_token(cd, &tok, slot);
	if (r < 0) {
		fprintf(stderr, "factory-init: writing the token failed: %s; key slot %d removed\n",
			strerror(-r), slot);
		goto out;
	}
	char list[80];
	pcr_mask_text(mask, list, sizeof(list));
	printf("enrolled TPM2 token %d for key slot %d on %s (PCRs %s, sha256 bank, %s primary)\n",
	       r, slot, device, *list ? list : "none", tok.primary_alg);
	status = 0;
out:
	tpm2_token_free(&tok);
	unlock_free(&cd);
	return status;
}

/* factory-init tpm2-check DEVICE: can the TPM, as it is now, unseal a token of DEVICE? */
int tpm2_check_main(int argc, char **argv)
{
	if (argc < 2 || argc > 3 || argv[1][0] == '-') {
		fputs(
		    "Usage: factory-init tpm2-check DEVICE [TPM2-DEVICE]\n"
		    "Tries to unseal every systemd-tpm2 token of the LUKS2 DEVICE with the TPM2 "
		    "as\n"
		    "it is now (no PIN is asked: PIN tokens are reported as such) and checks the\n"
		    "key against its key slot without activating anything. In stage 2 every token\n"
		    "bound to PCR 15 must stay sealed: factory-init extended it. Exit status 0 "
		    "when\n"
		    "a token unsealed and opened its key slot, 1 when none did.\n",
		    argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
		return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
	}
	const char *tcti = argc == 3 ? argv[2] : NULL;
	char why[512];
	struct crypt_device *cd = NULL;
	unlock_setup(false);
	if (unlock_load(argv[1], &cd, why, sizeof(why)) < 0) {
		fprintf(stderr, "factory-init: %s\n", why);
		return 2;
	}
	int opened = 0, id = 0;
	const char *json;
	for (; unlock_next_token(cd, TPM2_TOKEN_TYPE, &id, &json) == 0; id++) {
		struct tpm2_token tok;
		if (tpm2_token_parse(json, &tok, why, sizeof(why)) < 0) {
			printf("token %d: cannot be read: %s\n", id, why);
			continue;
		}
		_cleanup_secret_ struct secret pass = {0};
		int r = tpm2_unseal(tcti, &tok, NULL, &pass, why, sizeof(why));
		int slot = tok.n_keyslots > 0 ? tok.keyslots[0] : -1;
		if (r >= 0)
			r = unlock_with_key(cd, NULL, slot, &pass, why, sizeof(why));
		if (r >= 0) {
			printf("token %d: unsealed; key slot %d accepts the key\n", id, r);
			opened++;
		} else {
			printf("token %d: sealed: %s\n", id, why);
		}
		tpm2_token_free(&tok);
	}
	if (id == 0)
		printf("%s has no systemd-tpm2 token\n", argv[1]);
	unlock_free(&cd);
	return opened ? 0 : 1;
}
