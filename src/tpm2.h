/* SPDX-License-Identifier: MIT */
/*
 * TPM2 through tss2-esys with the device TCTI linked in directly (no dlopen in an initrd): the
 * presence probe, unsealing a systemd-tpm2 token's secret, and sealing a new one (enroll-tpm2).
 */
#ifndef FACTORY_INIT_TPM2_H
#define FACTORY_INIT_TPM2_H

#include "util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tpm2_token;
struct pcr_spec;

/*
 * Looks for a TPM2 (/dev/tpmrm0, else /dev/tpm0) and asks it for its manufacturer. Returns 1 with
 * a description ("/dev/tpmrm0, manufacturer IBM") in desc, 0 when there is none, or a negative
 * errno when a device exists but does not answer.
 */
int tpm2_probe(char *desc, size_t desc_len);

/*
 * Waits up to wait_ms for /dev/tpmrm0 or /dev/tpm0 to appear. Returns 0 when one is there,
 * -ENODEV when none appeared.
 */
int tpm2_wait_device(unsigned wait_ms);

/*
 * Unseals the secret of a systemd-tpm2 token with the policy it demands (PCRs, PIN) and returns
 * the LUKS passphrase systemd derives from it: base64(secret), in out. tcti is NULL (the device
 * TPM) or a spec as for tpm2_seal. pin is NULL when none can be asked for.
 * Returns 0, or with a one-line reason in why:
 *   -ENODEV      no TPM;
 *   -EKEYREJECTED the PCRs no longer match the policy (why says which differ, where known);
 *   -ENOKEY      the token needs a PIN and pin is NULL;
 *   -EACCES      the PIN is wrong (the TPM counts this against its dictionary-attack lockout);
 *   -EOPNOTSUPP  a token shape we cannot run (why names it);
 *   -EIO         any other TPM failure (why carries the TSS's error text).
 */
int tpm2_unseal(const char *tcti, const struct tpm2_token *t, const struct secret *pin,
		struct secret *out, char *why, size_t why_len);

/* The PCR stage 1 extends before stage 2 runs (systemd-cryptsetup's tpm2-measure-pcr= default):
 * zero at power-on, so a token bound to "15:sha256=0..." unseals in stage 1 and never after. */
#define TPM2_LOCK_PCR 15
/* What is measured there: a constant, so a verifier can predict the PCR's value in stage 2. */
#define TPM2_LOCK_EVENT "factory-init:leave-initrd"

/*
 * Extends pcr in every allocated bank with the digest of the text event (no secret: it is
 * readable in the event). Returns 1 with what was done in why, 0 when there is no TPM, or a
 * negative errno with why.
 */
int tpm2_extend_pcr(const char *tcti, unsigned pcr, const char *event, char *why, size_t why_len);

/*
 * Seals a fresh random 32-byte secret to the TPM, bound to the PCRs of pcrs in the SHA-256 bank
 * (the values given there, else the current ones; the policy digest is computed in software), under
 * the primary key systemd-cryptenroll 252 and later derive for tokens without tpm2_srk. Fills the
 * token's TPM fields (blob, pcrs, bank, primary algorithm, policy hash, and our record of the PCR
 * values) and returns base64(secret) in passphrase: what the new keyslot must accept. tcti: NULL
 * for /dev/tpmrm0 (else /dev/tpm0), a device path, or "swtpm:host=H,port=P" / "mssim:..." where
 * this build links those TCTIs.
 */
int tpm2_seal(const char *tcti, const struct pcr_spec *pcrs, struct tpm2_token *t,
	      struct secret *passphrase, char *why, size_t why_len);

#endif
