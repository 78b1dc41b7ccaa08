/* SPDX-License-Identifier: MIT */
/* factory-init enroll-tpm2: seal a new key to the TPM and add it as a systemd-tpm2 token. */
#ifndef FACTORY_INIT_ENROLL_H
#define FACTORY_INIT_ENROLL_H

/* The subcommand's main: argv[0] is "enroll-tpm2". Returns the process exit code. */
int enroll_tpm2_main(int argc, char **argv);

/* The default --pcrs: PCR 7 as it is now, and PCR 15 at its boot value (zero), which
 * factory-init extends before stage 2 (tpm2.h: TPM2_LOCK_PCR). */
#define ENROLL_DEFAULT_PCRS                                                                        \
	"7+15:sha256=0000000000000000000000000000000000000000000000000000000000000000"

/* factory-init tpm2-check DEVICE [TPM]: argv[0] is "tpm2-check". Exit code 0 when a token of
 * DEVICE unseals and opens its key slot now, 1 when none does, 2 on a usage or device error. */
int tpm2_check_main(int argc, char **argv);

#endif
