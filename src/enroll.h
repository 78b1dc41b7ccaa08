/* SPDX-License-Identifier: MIT */
/* factory-init enroll-tpm2: seal a new key to the TPM and add it as a systemd-tpm2 token. */
#ifndef FACTORY_INIT_ENROLL_H
#define FACTORY_INIT_ENROLL_H

/* The subcommand's main: argv[0] is "enroll-tpm2". Returns the process exit code. */
int enroll_tpm2_main(int argc, char **argv);

#endif
