/* SPDX-License-Identifier: MIT */
/* TPM2 through tss2-esys with the device TCTI linked in directly (no dlopen in an initrd). */
#ifndef FACTORY_INIT_TPM2_H
#define FACTORY_INIT_TPM2_H

#include <stddef.h>

/*
 * Looks for a TPM2 (/dev/tpmrm0, else /dev/tpm0) and asks it for its manufacturer. Returns 1 with
 * a description ("/dev/tpmrm0, manufacturer IBM") in desc, 0 when there is none, or a negative
 * errno when a device exists but does not answer. Unlocking with it comes with the TPM2 token.
 */
int tpm2_probe(char *desc, size_t desc_len);

#endif
