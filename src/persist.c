/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "persist.h"
#include "beneath.h"
#include "config.h"
#include "seed.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

bool persist_identity_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 127)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || strchr("._:+@-", *s)))
			return false;
	return true;
}

int persist_read_marker(int dirfd, const char *rel, char *out, size_t out_len)
{
	_cleanup_free_ char *text = NULL;
	int r = beneath_read(dirfd, rel, PERSIST_MARKER_MAX, &text, NULL);
	if (r < 0)
		return r;
	text[strcspn(text, "\n")] = '\0';
	if (!persist_identity_valid(text) || strscpy(out, text, out_len) < 0)
		return -EBADMSG;
	return 0;
}

int persist_move_aside(int dirfd, const char *rel, char *moved_to, size_t moved_len)
{
	char last[256];
	_cleanup_close_ int pfd = beneath_open_parent(dirfd, rel, last, sizeof(last));
	if (pfd < 0)
		return pfd;
	size_t plen = strlen(rel) - strlen(last);
	char name[300];
	for (int i = 0; i < 100; i++) {
		snprintf(name, sizeof(name), "%s.bad%s%.0d", last, i ? "." : "", i);
		/* RENAME_NOREPLACE: never overwrite an earlier one (no data is lost). */
		if (renameat2(pfd, last, pfd, name, RENAME_NOREPLACE) == 0) {
			snprintf(moved_to, moved_len, "%.*s%s", (int)plen, rel, name);
			return fsync(pfd) < 0 ? -errno : 0;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

/* Moves rel aside with a warning saying what it was; returns 1, or a negative errno. */
static int aside(int dirfd, const char *rel, const char *what, config_warn_fn warn, void *ctx)
{
	char moved[4400];
	int r = persist_move_aside(dirfd, rel, moved, sizeof(moved));
	if (r < 0) {
		config_warnf(warn, ctx, "/persist/%s is %s, and it cannot be moved aside: %s", rel,
			     what, strerror(-r));
		return r;
	}
	config_warnf(warn, ctx,
		     "/persist/%s was %s; moved it to /persist/%s (not followed, not read)", rel,
		     what, moved);
	return 1;
}

static int check_dir(int dirfd, const char *rel, config_warn_fn warn, void *ctx)
{
	struct stat st;
	int r = beneath_lstat(dirfd, rel, &st);
	if (r == -ENOENT)
		return 0;
	if (r < 0) {
		config_warnf(warn, ctx, "cannot check /persist/%s: %s", rel, strerror(-r));
		return r;
	}
	if (S_ISDIR(st.st_mode))
		return 0;
	char what[64];
	snprintf(what, sizeof(what), "%s, not a directory", beneath_type_name(st.st_mode));
	return aside(dirfd, rel, what, warn, ctx);
}

static int check_marker(int dirfd, const char *rel, config_warn_fn warn, void *ctx)
{
	char id[128];
	struct stat st;
	int r = persist_read_marker(dirfd, rel, id, sizeof(id));
	if (r == 0 || r == -ENOENT)
		return 0;
	if (r == -EBADMSG)
		return aside(dirfd, rel, "not a valid image identity", warn, ctx);
	if (r == -EFBIG)
		return aside(dirfd, rel, "larger than a marker can be", warn, ctx);
	if (beneath_lstat(dirfd, rel, &st) == 0 && !S_ISREG(st.st_mode)) {
		char what[64];
		snprintf(what, sizeof(what), "%s, not a regular file",
			 beneath_type_name(st.st_mode));
		return aside(dirfd, rel, what, warn, ctx);
	}
	config_warnf(warn, ctx, "cannot read /persist/%s: %s", rel, strerror(-r));
	return r;
}

int persist_check_tree(int persist_fd, config_warn_fn warn, void *ctx)
{
	/* Parents before children: once a parent is a real directory, its children are checked
	 * through it. */
	static const char *const dirs[] = {"nix",	"nix/upper", "nix/work", "nix/upper/store",
					   "nix/store", SEED_STAGING};
	static const char *const markers[] = {"nix/" SEED_OVERLAY_MARKER, "nix/" SEED_MARKER,
					      SEED_STAGING "/" SEED_MARKER};
	int moved = 0, failed = 0;
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		int r = check_dir(persist_fd, dirs[i], warn, ctx);
		if (r < 0)
			failed = r;
		else
			moved += r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(markers); i++) {
		int r = check_marker(persist_fd, markers[i], warn, ctx);
		if (r < 0 && r != -ENOENT && r != -ENOTDIR && r != -ELOOP)
			failed = r;
		else if (r > 0)
			moved += r;
	}
	return failed < 0 ? failed : moved;
}
