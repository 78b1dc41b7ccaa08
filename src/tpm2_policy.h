/* SPDX-License-Identifier: MIT */
/*
 * TPM2 policy digests computed in software (pure): what PolicyPCR would leave in a session, for
 * PCR values given in advance. This lets enroll-tpm2 seal to the values a VM will measure at
 * boot ("7:sha256=HEX", systemd 255's syntax), not only to the values of the moment.
 */
#ifndef FACTORY_INIT_TPM2_POLICY_H
#define FACTORY_INIT_TPM2_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "token.h" /* TPM2_PCRS */

#define TPM2_SHA256_LEN 32

/* A PCR selection for the SHA-256 bank with, for some of its PCRs, the expected values. */
struct pcr_spec {
	uint32_t mask;	      /* the PCRs to bind to */
	uint32_t values_mask; /* those whose expected value is given */
	uint8_t values[TPM2_PCRS][TPM2_SHA256_LEN];
};

/*
 * Parses "7", "0+7", "secure-boot-policy", "7:sha256=HEX" (64 hex digits), items separated by '+'
 * or ','. Only the sha256 bank is accepted for values. Returns 0 or -EINVAL with why.
 */
int pcr_spec_parse(const char *text, struct pcr_spec *out, char *why, size_t why_len);

/*
 * The policy digest after PolicyPCR over the PCRs in mask of the SHA-256 bank with the given
 * values (values[i] for each PCR i in mask, in index order), starting from a zero digest:
 * SHA256(0^32 || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || SHA256(values...)).
 */
void tpm2_policy_pcr_sha256(uint32_t mask, const uint8_t values[TPM2_PCRS][TPM2_SHA256_LEN],
			    uint8_t out[TPM2_SHA256_LEN]);

/* Writes the PCRs of mask as systemd writes a PCR list ("0+7"), "" for none. */
void pcr_mask_text(uint32_t mask, char *out, size_t out_len);

#endif
