/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "mounts.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <libmount/libmount.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>

int mount_fs(const char *source, const char *target, const char *fstype, const char *options,
	     char *why, size_t why_len)
{
	struct libmnt_context *cxt = mnt_new_context();
	if (!cxt)
		return -ENOMEM;
	/* No fstab lookups and no /sbin/mount.<type> helpers: an initrd has neither. */
	mnt_context_set_optsmode(cxt, MNT_OMODE_NOTAB);
	mnt_context_disable_helpers(cxt, 1);
	mnt_context_set_source(cxt, source);
	mnt_context_set_target(cxt, target);
	if (fstype && *fstype)
		mnt_context_set_fstype(cxt, fstype);
	if (options && *options)
		mnt_context_set_options(cxt, options);
	int rc = mnt_context_mount(cxt);
	char buf[256] = "";
	int ex = mnt_context_get_excode(cxt, rc, buf, sizeof(buf));
	int r = 0;
	if (ex != MNT_EX_SUCCESS) {
		int err = mnt_context_syscall_called(cxt) ? mnt_context_get_syscall_errno(cxt) : 0;
		r = err > 0 ? -err : (rc < 0 ? rc : -EIO);
		snprintf(why, why_len, "mounting %s on %s failed: %s", source, target,
			 *buf ? buf : strerror(-r));
	}
	mnt_free_context(cxt);
	return r;
}

int mount_bind(const char *source, const char *target, bool ro)
{
	if (mount(source, target, NULL, MS_BIND, NULL) < 0)
		return -errno;
	if (ro && mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0) {
		int r = -errno;
		umount2(target, MNT_DETACH);
		return r;
	}
	return 0;
}

int mount_move(const char *source, const char *target)
{
	return mount(source, target, NULL, MS_MOVE, NULL) < 0 ? -errno : 0;
}

int mount_api_filesystems(void)
{
	static const struct {
		const char *src, *target, *type, *opts;
		unsigned long flags;
	} fs[] = {
	    {"proc", "/proc", "proc", NULL, MS_NOSUID | MS_NODEV | MS_NOEXEC},
	    {"sysfs", "/sys", "sysfs", NULL, MS_NOSUID | MS_NODEV | MS_NOEXEC},
	    {"devtmpfs", "/dev", "devtmpfs", "mode=0755", MS_NOSUID},
	    {"tmpfs", "/run", "tmpfs", "mode=0755", MS_NOSUID | MS_NODEV},
	};
	int r = 0;
	for (size_t i = 0; i < ARRAY_SIZE(fs); i++) {
		mkdir(fs[i].target, 0755);
		if (mount(fs[i].src, fs[i].target, fs[i].type, fs[i].flags, fs[i].opts) < 0 &&
		    errno != EBUSY) {
			r = -errno;
			log_err("mounting %s on %s failed: %s", fs[i].type, fs[i].target,
				strerror(errno));
		}
	}
	return r;
}

/* Both store modes hold the factory /nix here (read-only) while they mount over /nix, then move it
 * to /nix/.ro-store. */
#define FACTORY_LOWER "/run/factory-init/lower"

static int hold_factory_store(const char *nix, char *why, size_t why_len)
{
	int r;
	if ((r = make_dirs(FACTORY_LOWER, 0755)) < 0 ||
	    (r = mount_bind(nix, FACTORY_LOWER, true)) < 0) {
		snprintf(why, why_len, "cannot bind the factory %s: %s", nix, strerror(-r));
		return r;
	}
	/*
	 * Under systemd the root is a shared mount, and a bind of it joins its peer group: the
	 * overlay then mounted on <nix> would propagate onto the hold, and detaching the hold would
	 * propagate back and unmount the overlay. A private hold propagates nothing.
	 */
	if (mount(NULL, FACTORY_LOWER, NULL, MS_PRIVATE, NULL) < 0) {
		r = -errno;
		snprintf(why, why_len, "cannot make the held factory store private: %s",
			 strerror(-r));
		umount2(FACTORY_LOWER, MNT_DETACH);
	}
	return r;
}

/*
 * Moves the held factory store to <nix>/.ro-store; undoes both mounts if it cannot. Under systemd
 * every mount is shared, /run included, and the kernel refuses to move a mount that sits under a
 * shared one (EINVAL): then the held store is bound there read-only and the hold detached, which
 * leaves the same mount at the same place.
 */
static int expose_ro_store(const char *nix, char *why, size_t why_len)
{
	char rostore[PATH_MAX];
	int r;
	snprintf(rostore, sizeof(rostore), "%s/.ro-store", nix);
	if ((r = make_dirs(rostore, 0755)) == 0 &&
	    (r = mount_move(FACTORY_LOWER, rostore)) == -EINVAL &&
	    (r = mount_bind(FACTORY_LOWER, rostore, true)) == 0)
		umount2(FACTORY_LOWER, MNT_DETACH);
	if (r < 0) {
		snprintf(why, why_len, "cannot expose the factory store at %s: %s", rostore,
			 strerror(-r));
		umount2(nix, MNT_DETACH);
		umount2(FACTORY_LOWER, MNT_DETACH);
		return r;
	}
	return 0;
}

int mount_store_overlay(const char *nix, const char *persist, char *why, size_t why_len)
{
	char upper[PATH_MAX], work[PATH_MAX], opts[3 * PATH_MAX + 64];
	struct stat st;
	int r;

	if (stat(nix, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(why, why_len, "the factory root has no %s directory", nix);
		return -ENOENT;
	}
	snprintf(upper, sizeof(upper), "%s/nix/upper", persist);
	snprintf(work, sizeof(work), "%s/nix/work", persist);
	if ((r = make_dirs(upper, 0755)) < 0 || (r = make_dirs(work, 0755)) < 0) {
		snprintf(why, why_len, "cannot create %s/nix/{upper,work}: %s", persist,
			 strerror(-r));
		return r;
	}
	if ((r = hold_factory_store(nix, why, why_len)) < 0)
		return r;
	snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s,workdir=%s", FACTORY_LOWER, upper,
		 work);
	r = mount_fs("overlay", nix, "overlay", opts, why, why_len);
	if (r < 0) {
		umount2(FACTORY_LOWER, MNT_DETACH);
		return r;
	}
	/* Keep the read-only factory store reachable (Nix's local-overlay-store needs it). */
	return expose_ro_store(nix, why, why_len);
}

int mount_store_bind(const char *nix, const char *persist, char *why, size_t why_len)
{
	char copy[PATH_MAX];
	int r;
	snprintf(copy, sizeof(copy), "%s/nix", persist);
	if ((r = hold_factory_store(nix, why, why_len)) < 0)
		return r;
	if ((r = mount_bind(copy, nix, false)) < 0) {
		snprintf(why, why_len, "cannot bind %s on %s: %s", copy, nix, strerror(-r));
		umount2(FACTORY_LOWER, MNT_DETACH);
		return r;
	}
	return expose_ro_store(nix, why, why_len);
}
