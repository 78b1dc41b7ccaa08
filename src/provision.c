// SPDX-License-Identifier: MIT
#define _GNU_SOURCE
/* Zero-touch provisioning: see provision.h for the order of the steps and why it is crash-safe. */
#include "provision.h"

#include "agekey.h"
#include "beneath.h"
#include "blank.h"
#include "credentials.h"
#include "log.h"
#include "mounts.h"
#include "plan.h"
#include "status.h"
#include "token.h"
#include "tpm2.h"
#include "tpm2_policy.h"
#include "unlock.h"
#include "util.h"

#include <blkid/blkid.h>
#include <errno.h>
#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Argon2id for a passphrase slot that a 512 MiB guest opens in stage 1. */
#define PASS_ARGON2_MEMORY_KIB 65536
#define PASS_ARGON2_TIME_MS 1000

static void free_crypt(struct crypt_device **cd)
{
	if (*cd)
		crypt_free(*cd);
}

/* ---- 1. the blankness test ---------------------------------------------------------------- */

/* libblkid's low-level probe, "safe" mode off: every superblock and partition table it knows,
 * bad checksums included; the first one found is recorded. */
static void probe_signatures(int fd, struct blank_facts *f)
{
	blkid_probe pr = blkid_new_probe();
	if (!pr || blkid_probe_set_device(pr, fd, 0, 0) < 0) {
		f->probe_result = -ENOMEM;
		goto out;
	}
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL |
						  BLKID_SUBLKS_MAGIC | BLKID_SUBLKS_BADCSUM);
	blkid_probe_enable_partitions(pr, 1);
	blkid_probe_set_partitions_flags(pr, BLKID_PARTS_MAGIC | BLKID_PARTS_FORCE_GPT);
	int r, found = 0;
	bool ours = false;
	while ((r = blkid_do_probe(pr)) == 0) {
		const char *type = NULL, *label = NULL, *off = NULL;
		if (blkid_probe_lookup_value(pr, "TYPE", &type, NULL) < 0 &&
		    blkid_probe_lookup_value(pr, "PTTYPE", &type, NULL) < 0)
			type = "unknown";
		blkid_probe_lookup_value(pr, "LABEL", &label, NULL);
		if (blkid_probe_lookup_value(pr, "SBMAGIC_OFFSET", &off, NULL) < 0)
			blkid_probe_lookup_value(pr, "PTMAGIC_OFFSET", &off, NULL);
		if (found++ == 0) {
			strscpy(f->signature, type, sizeof(f->signature));
			f->sig_offset = off ? strtoull(off, NULL, 10) : 0;
			ours = strcmp(type, "crypto_LUKS") == 0 && label &&
			       strcmp(label, PROVISIONAL_LABEL) == 0;
		}
	}
	f->probe_result = r < 0 ? -EIO : 0;
	/* Ours, unfinished, and nothing else: made anew without the zero test (it has a header). */
	f->provisional = r == 1 && found == 1 && ours;
out:
	if (pr)
		blkid_free_probe(pr);
}

/* Reads [off, off+len) in BLANK_BLOCK pieces; records the first error or non-zero byte. */
static bool read_zero(int fd, uint64_t off, uint64_t len, struct blank_facts *f)
{
	static uint8_t buf[BLANK_BLOCK];
	for (uint64_t o = off; o < off + len; o += BLANK_BLOCK) {
		ssize_t n = pread(fd, buf, BLANK_BLOCK, (off_t)o);
		if (n != (ssize_t)BLANK_BLOCK) {
			f->read_result = n < 0 ? -errno : -EIO;
			f->read_at = o;
			return false;
		}
		for (size_t i = 0; i < BLANK_BLOCK; i++)
			if (buf[i]) {
				f->nonzero = true;
				f->nonzero_at = o + i;
				return false;
			}
	}
	return true;
}

static int blank_test(const char *devname, struct blank_facts *f, char *why, size_t why_len)
{
	memset(f, 0, sizeof(*f));
	_cleanup_close_ int fd = open(devname, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(why, why_len, "cannot be opened (%s); left untouched", strerror(errno));
		return -errno;
	}
	uint64_t size = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
		snprintf(why, why_len, "has no size (%s); left untouched", strerror(errno));
		return -ENOTBLK;
	}
	f->size = size;
	if (size >= BLANK_MIN_SIZE) {
		probe_signatures(fd, f);
		if (f->probe_result == 0 && !*f->signature) {
			uint64_t offs[BLANK_SAMPLES];
			size_t n = blank_sample_offsets(size, offs, BLANK_SAMPLES);
			uint64_t end = size / BLANK_BLOCK * BLANK_BLOCK;
			bool ok = read_zero(fd, 0, BLANK_EDGE, f) &&
				  read_zero(fd, end - BLANK_EDGE, BLANK_EDGE, f);
			for (size_t i = 0; ok && i < n; i++)
				ok = read_zero(fd, offs[i], BLANK_BLOCK, f);
		}
	}
	return blank_verdict(f, why, why_len);
}

/* ---- 2.-3. LUKS2 and its key slots -------------------------------------------------------- */

static int format_luks(struct crypt_device *cd)
{
	struct crypt_params_luks2 params = {.label = PROVISIONAL_LABEL};
	int r = unlock_use_tpm2_slot_pbkdf(cd);
	if (r >= 0)
		r = crypt_format(cd, CRYPT_LUKS2, "aes", "xts-plain64", NULL, NULL, 64, &params);
	return r;
}

/* Seals a new secret to the TPM2 (before anything is written: a TPM that fails leaves the disk
 * untouched): the token's TPM fields in tok, the key slot's passphrase in pass. */
static int seal_tpm2(const struct plan *p, struct tpm2_token *tok, struct secret *pass, char *why,
		     size_t why_len)
{
	struct pcr_spec spec;
	if (pcr_spec_parse(p->provision_pcrs, &spec, why, why_len) < 0)
		return -EINVAL; /* the planner checked it: not reached */
	return tpm2_seal(NULL, &spec, tok, pass, why, why_len);
}

/* Adds the sealed secret's key slot and its systemd-tpm2 token. Returns the slot. */
static int add_tpm2_slot(struct crypt_device *cd, struct tpm2_token *tok, const struct secret *pass,
			 char *why, size_t why_len)
{
	int r = unlock_use_tpm2_slot_pbkdf(cd);
	if (r >= 0)
		r = crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, NULL, 0, pass->data,
						    pass->len);
	if (r < 0) {
		snprintf(why, why_len, "adding the TPM2 key slot failed: %s", strerror(-r));
		return r;
	}
	int slot = r;
	r = unlock_add_tpm2_token(cd, tok, slot);
	if (r < 0) {
		snprintf(why, why_len, "writing the TPM2 token failed: %s", strerror(-r));
		return r;
	}
	return slot;
}

static int add_key_slot(struct crypt_device *cd, const struct secret *key, char *why,
			size_t why_len)
{
	struct crypt_pbkdf_type slow = {
	    .type = CRYPT_KDF_ARGON2ID,
	    .hash = "sha256",
	    .time_ms = PASS_ARGON2_TIME_MS,
	    .max_memory_kb = PASS_ARGON2_MEMORY_KIB,
	    .parallel_threads = 1,
	};
	int r = crypt_set_pbkdf_type(cd, &slow);
	if (r >= 0)
		r = crypt_keyslot_add_by_volume_key(cd, CRYPT_ANY_SLOT, NULL, 0, key->data,
						    key->len);
	if (r < 0)
		snprintf(why, why_len, "adding the key slot for vm.luks.key failed: %s",
			 strerror(-r));
	return r;
}

/* ---- 4. mkfs.btrfs ----------------------------------------------------------------------------
 */

/* The initrd's mkfs.btrfs (PROVISION_MKFS_DIRS), or NULL. */
static const char *find_mkfs(char *buf, size_t len)
{
	static const char *const dirs[] = {PROVISION_MKFS_DIRS};
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		snprintf(buf, len, "%s/mkfs.btrfs", dirs[i]);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	return NULL;
}

static int run_mkfs(const char *mkfs, const char *fsdev, char *why, size_t why_len)
{
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(why, why_len, "cannot start %s: %s", mkfs, strerror(errno));
		return -errno;
	}
	if (pid == 0) {
		/* Its chatter is not ours to show: only the exit code counts (and is logged). */
		int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (null >= 0) {
			dup2(null, STDOUT_FILENO);
			dup2(null, STDERR_FILENO);
		}
		execl(mkfs, "mkfs.btrfs", "-q", "-L", DEFAULT_PERSIST_LABEL, fsdev, (char *)NULL);
		_exit(127);
	}
	int wst;
	while (waitpid(pid, &wst, 0) < 0)
		if (errno != EINTR) {
			snprintf(why, why_len, "waiting for %s: %s", mkfs, strerror(errno));
			return -errno;
		}
	if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
		snprintf(why, why_len, "%s %s failed (%s %d)", mkfs, fsdev,
			 WIFEXITED(wst) ? "exit code" : "signal",
			 WIFEXITED(wst) ? WEXITSTATUS(wst) : WTERMSIG(wst));
		return -EIO;
	}
	return 0;
}

/* ---- 5. the layout ------------------------------------------------------------------------ */

static int make_layout(const char *persist_dir, char rcpt[AGEKEY_RECIPIENT_LEN], char *why,
		       size_t why_len)
{
	_cleanup_close_ int dfd = open(persist_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		snprintf(why, why_len, "cannot open the new /persist: %s", strerror(errno));
		return -errno;
	}
	int r = beneath_mkdirs(dfd, "nix", 0755);
	if (r >= 0)
		r = beneath_mkdirs(dfd, "keys", 0700);
	if (r < 0) {
		snprintf(why, why_len, "cannot make nix/ and keys/ on the new /persist: %s",
			 strerror(-r));
		return r;
	}
	_cleanup_close_ int kfd = beneath_open(dfd, "keys", O_RDONLY | O_DIRECTORY, 0);
	if (kfd < 0) {
		snprintf(why, why_len, "cannot open keys/ on the new /persist: %s", strerror(-kfd));
		return kfd;
	}
	uint8_t scalar[AGEKEY_SIZE];
	_cleanup_secret_ struct secret text = {0};
	if (getrandom(scalar, sizeof(scalar), 0) != (ssize_t)sizeof(scalar)) {
		snprintf(why, why_len, "getrandom: %s", strerror(errno));
		return -errno;
	}
	r = agekey_identity_file(scalar, (long long)time(NULL), &text, rcpt);
	explicit_bzero(scalar, sizeof(scalar));
	if (r < 0) {
		snprintf(why, why_len, "cannot make the age identity (%s)", strerror(-r));
		return r;
	}
	char pub[AGEKEY_RECIPIENT_LEN + 1];
	snprintf(pub, sizeof(pub), "%s\n", rcpt);
	r = write_file_atomic_at(kfd, "host.agekey", text.data, text.len, 0600);
	if (r >= 0)
		r = write_file_atomic_at(kfd, "host.agekey.pub", pub, strlen(pub), 0644);
	if (r >= 0)
		r = write_file_atomic_at(dfd, "config.json", "{}\n", 3, 0600);
	if (r < 0) {
		snprintf(why, why_len, "cannot write keys/ and config.json on the new /persist: %s",
			 strerror(-r));
		return r;
	}
	if (syncfs(dfd) < 0) {
		snprintf(why, why_len, "syncfs on the new /persist: %s", strerror(errno));
		return -errno;
	}
	return 0;
}

/* ---- the whole ---------------------------------------------------------------------------- */

static int refuse(struct status *st, const char *code, const char *result, int r,
		  const char *devname, const char *why)
{
	strscpy(st->provision, result, sizeof(st->provision));
	if (devname)
		snprintf(st->provision_detail, sizeof(st->provision_detail), "%s %s", devname, why);
	else
		strscpy(st->provision_detail, why, sizeof(st->provision_detail));
	/* Provisioning ran because no candidate could be used: its refusal says more. */
	st->reason[0] = st->reason_code[0] = '\0';
	status_reason(st, code, "provisioning: %s", st->provision_detail);
	log_err("%s", st->reason);
	return r;
}

int provision_run(const struct plan *p, struct status *st, const struct dev_spec *spec,
		  const struct blockdev *devs, size_t n, const struct credentials *creds,
		  const char *persist_dir)
{
	char why[512] = "";
	uint64_t t = now_ms();
	int r = blank_choose(spec, devs, n, why, sizeof(why));
	if (r < 0)
		return refuse(st, STATUS_REASON_NOT_BLANK, "refused", r, NULL, why);
	const struct blockdev *d = &devs[r];
	const char *dev = d->devname;

	/* What the new disk needs, checked before anything is written. */
	char mkfs_buf[64];
	const char *mkfs = find_mkfs(mkfs_buf, sizeof(mkfs_buf));
	if (!mkfs)
		return refuse(st, STATUS_REASON_PROVISION, "failed", -ENOENT, dev,
			      "is left untouched: this initrd has no mkfs.btrfs in /sbin, /bin, "
			      "/usr/sbin or /usr/bin (dracut-like/mkinitrd --provision adds it)");
	const struct credential *cred = creds ? credentials_find(creds, "vm.luks.key") : NULL;
	const struct secret *key = cred ? &cred->value : p->key.data ? &p->key : NULL;
	bool tpm = status_tpm2_present(st);
	if (!tpm && !key)
		return refuse(st, STATUS_REASON_PROVISION, "failed", -ENOKEY, dev,
			      "is left untouched: there is no TPM2 and no vm.luks.key credential, "
			      "so nothing could unlock the new disk");

	struct blank_facts facts;
	r = blank_test(dev, &facts, why, sizeof(why));
	status_step(st, "provision-check", now_ms() - t, r);
	if (r < 0)
		return refuse(st, STATUS_REASON_NOT_BLANK, "refused", r, dev, why);
	log_notice("provisioning %s (%llu MiB, %s) as /persist", dev,
		   (unsigned long long)(facts.size >> 20),
		   facts.provisional ? "an unfinished provisioning, made anew"
				     : "blank: no signature, the first and last MiB and sampled "
				       "blocks all zeros");

	/* The TPM2 secret first: if the TPM fails and there is no key, nothing is written. */
	t = now_ms();
	struct tpm2_token tok;
	memset(&tok, 0, sizeof(tok));
	_cleanup_secret_ struct secret tpm_pass = {0};
	char tpm_why[256] = "";
	bool sealed = false;
	if (tpm) {
		r = seal_tpm2(p, &tok, &tpm_pass, tpm_why, sizeof(tpm_why));
		sealed = r >= 0;
		status_step(st, "provision-tpm2", now_ms() - t, r < 0 ? r : 0);
		if (!sealed) {
			tpm2_token_free(&tok);
			log_warn("provisioning %s: sealing to the TPM2 failed: %s", dev, tpm_why);
			if (!key) {
				snprintf(
				    why, sizeof(why),
				    "is left untouched: sealing to the TPM2 failed (%s) and there "
				    "is no vm.luks.key credential",
				    tpm_why);
				return refuse(st, STATUS_REASON_PROVISION, "failed", r, dev, why);
			}
		}
	}

	t = now_ms();
	__attribute__((cleanup(free_crypt))) struct crypt_device *cd = NULL;
	unlock_setup(p->debug);
	r = crypt_init(&cd, dev);
	if (r >= 0)
		r = format_luks(cd);
	status_step(st, "provision-luks", now_ms() - t, r);
	if (r < 0) {
		if (sealed)
			tpm2_token_free(&tok);
		snprintf(why, sizeof(why), "LUKS2 format failed: %s", strerror(-r));
		return refuse(st, STATUS_REASON_PROVISION, "failed", r, dev, why);
	}
	log_info("provisioning %s: LUKS2 formatted, label " PROVISIONAL_LABEL, dev);

	t = now_ms();
	int slots = 0;
	bool tpm_ok = false, key_ok = false;
	if (sealed) {
		r = add_tpm2_slot(cd, &tok, &tpm_pass, tpm_why, sizeof(tpm_why));
		tpm2_token_free(&tok);
		if (r >= 0)
			slots++, tpm_ok = true;
		else
			log_warn("provisioning %s: no TPM2 key slot: %s", dev, tpm_why);
	}
	if (key) {
		r = add_key_slot(cd, key, why, sizeof(why));
		status_step(st, "provision-key", now_ms() - t, r < 0 ? r : 0);
		if (r >= 0)
			slots++, key_ok = true;
		else
			log_warn("provisioning %s: %s", dev, why);
	}
	if (slots == 0) {
		snprintf(why, sizeof(why), "no key slot could be added (%s); it stays unfinished",
			 *tpm_why ? tpm_why : why);
		return refuse(st, STATUS_REASON_PROVISION, "failed", -ENOKEY, dev, why);
	}

	t = now_ms();
	r = crypt_activate_by_volume_key(cd, PERSIST_DM_NAME, NULL, 0, 0);
	if (r < 0) {
		snprintf(why, sizeof(why),
			 "opening the new LUKS2 volume failed: %s; it stays "
			 "unfinished",
			 strerror(-r));
		return refuse(st, STATUS_REASON_PROVISION, "failed", r, dev, why);
	}
	const char *fsdev = "/dev/mapper/" PERSIST_DM_NAME;
	r = run_mkfs(mkfs, fsdev, why, sizeof(why));
	status_step(st, "provision-mkfs", now_ms() - t, r);
	if (r >= 0)
		log_info("provisioning %s: Btrfs made on %s", dev, fsdev);
	if (r >= 0) {
		t = now_ms();
		r = mount_fs(fsdev, persist_dir, "btrfs", p->persist_options, why, sizeof(why));
		status_step(st, "mount", now_ms() - t, r);
	}
	if (r < 0) {
		unlock_close(PERSIST_DM_NAME);
		strncat(why, "; it stays unfinished", sizeof(why) - strlen(why) - 1);
		return refuse(st, STATUS_REASON_PROVISION, "failed", r, dev, why);
	}

	t = now_ms();
	char rcpt[AGEKEY_RECIPIENT_LEN] = "";
	r = make_layout(persist_dir, rcpt, why, sizeof(why));
	if (r >= 0) {
		log_info("provisioning %s: layout written and synced", dev);
		r = crypt_set_label(cd, DEFAULT_PERSIST_LABEL, NULL);
		if (r < 0)
			snprintf(why, sizeof(why), "renaming the LUKS2 label to persist failed: %s",
				 strerror(-r));
	}
	status_step(st, "provision-finish", now_ms() - t, r);
	if (r < 0) {
		umount2(persist_dir, MNT_DETACH);
		unlock_close(PERSIST_DM_NAME);
		strncat(why, "; it stays unfinished", sizeof(why) - strlen(why) - 1);
		return refuse(st, STATUS_REASON_PROVISION, "failed", r, dev, why);
	}

	strscpy(st->provision, "done", sizeof(st->provision));
	snprintf(st->provision_detail, sizeof(st->provision_detail),
		 "%s: LUKS2 with %s%s%s, Btrfs, keys/host.agekey", dev,
		 tpm_ok ? "a TPM2 token" : "", tpm_ok && key_ok ? " and " : "",
		 key_ok ? "a vm.luks.key slot" : "");
	st->provisioned = st->luks = true;
	strscpy(st->luks_uuid, crypt_get_uuid(cd) ? crypt_get_uuid(cd) : "", sizeof(st->luks_uuid));
	strscpy(st->age_recipient, rcpt, sizeof(st->age_recipient));
	strscpy(st->device, dev, sizeof(st->device));
	strscpy(st->fstype, "crypto_LUKS", sizeof(st->fstype));
	strscpy(st->unlock, "provision", sizeof(st->unlock));
	st->reason[0] = st->reason_code[0] = '\0';
	/* The one line an operator greps for: what to record for this VM. No key material. */
	log_announce("provisioned %s: luks_uuid=%s age_recipient=%s", dev, st->luks_uuid, rcpt);
	return 0;
}
