/* SPDX-License-Identifier: MIT */
/*
 * Zero-touch provisioning (vm.persist.provision): a blank data disk becomes the LUKS2 + Btrfs
 * /persist on the first boot. The decisions are blank.h's; this carries them out.
 *
 * The order, and why a power cut at any point is harmless:
 *   1. the blankness test (read only), and a new secret sealed to the TPM2 (a TPM that fails
 *      with no vm.luks.key to fall back on leaves the disk untouched);
 *   2. LUKS2 formatted with the label PROVISIONAL_LABEL; its magic and label share the header's
 *      first 4 KiB sector, so the disk reads either as blank or as ours, unfinished;
 *   3. key slots: the sealed secret's, with a systemd-tpm2 token (vm.persist.provision.pcrs), and
 * the vm.luks.key credential (or vm.luks.key=) when given, so the fleet manager can always unlock
 * it;
 *   4. mkfs.btrfs -L persist inside, mounted with vm.persist.options;
 *   5. the layout of create-data-disk: nix/, keys/ (0700) with a new age X25519 identity
 *      (keys/host.agekey 0600, keys/host.agekey.pub), config.json ({}, 0600 as stage 1 keeps it);
 * syncfs;
 *   6. the label becomes "persist" (libcryptsetup rewrites both header copies, with a higher
 *      sequence number): only now is the disk complete.
 * A disk stopped before 6 is refused as a data disk (candidates.c) and made anew by the next
 * boot that provisions; nothing but this code writes that label.
 */
#ifndef FACTORY_INIT_PROVISION_H
#define FACTORY_INIT_PROVISION_H

#include "candidates.h"

#include <stddef.h>

struct plan;
struct status;
struct credentials;

/* Where the initrd may carry mkfs.btrfs, in the order looked at: dracut-like/mkinitrd
 * --provision puts it in /sbin, NixOS's systemd stage 1 (extraBin) in /bin. */
#define PROVISION_MKFS_DIRS "/sbin", "/bin", "/usr/sbin", "/usr/bin"

/*
 * Provisions the one disk among devs[0..n) that spec allows (blank.h: blank_choose) if it is
 * blank, and mounts it on persist_dir. Returns 0 with /persist mounted; otherwise a negative
 * errno with st->provision, st->provision_detail and the reason set (the disk untouched unless
 * the detail says otherwise).
 */
int provision_run(const struct plan *p, struct status *st, const struct dev_spec *spec,
		  const struct blockdev *devs, size_t n, const struct credentials *creds,
		  const char *persist_dir);

#endif
