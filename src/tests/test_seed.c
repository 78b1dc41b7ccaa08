/* SPDX-License-Identifier: MIT */
/* The pure parts of seed.c: progress text and the store identity; and the copy engine on a
 * small tree in a temporary directory (hard links, symlinks, modes, mtimes, xattrs, resume), and
 * on every shape Nix makes: hard-linked symlinks, hundreds of links, empty files, 255-byte names,
 * sparse files, linked fifos; "identical" includes which names share an inode. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "seed.h"

static void test_progress_text(void **state)
{
	(void)state;
	char t[128];
	seed_progress_text(50000000, 200000000, 1000, t, sizeof(t));
	assert_string_equal(t, "25% (50 MB of 200 MB, 50 MB/s, ETA 3 s)");
	seed_progress_text(200000000, 200000000, 4000, t, sizeof(t));
	assert_string_equal(t, "100% (200 MB of 200 MB)");
	seed_progress_text(0, 0, 0, t, sizeof(t));
	assert_string_equal(t, "100% (0 MB of 0 MB)");
	seed_progress_text(1, 200000000, 0, t, sizeof(t)); /* no rate yet: no ETA */
	assert_string_equal(t, "0% (0 MB of 200 MB)");
}

static void test_identity_is_order_free(void **state)
{
	(void)state;
	char a[64], b[64], c[64];
	char *x[] = {strdup("bbb-2"), strdup("aaa-1"), strdup(".links")};
	char *y[] = {strdup(".links"), strdup("aaa-1"), strdup("bbb-2")};
	char *z[] = {strdup(".links"), strdup("aaa-1"), strdup("bbb-3")};
	seed_store_identity(x, 3, a, sizeof(a));
	seed_store_identity(y, 3, b, sizeof(b));
	seed_store_identity(z, 3, c, sizeof(c));
	assert_string_equal(a, b);
	assert_string_not_equal(a, c);
	assert_int_equal(strlen(a), strlen("store:") + 16);
	for (int i = 0; i < 3; i++) {
		free(x[i]);
		free(y[i]);
		free(z[i]);
	}
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

static void test_copy_tree(void **state)
{
	(void)state;
	char top[] = "/tmp/test-seed.XXXXXX", src[256], dst[256], p[512], q[512];
	assert_non_null(mkdtemp(top));
	snprintf(src, sizeof(src), "%s/src", top);
	snprintf(dst, sizeof(dst), "%s/dst", top);
	snprintf(p, sizeof(p), "%s/store/abc-pkg/bin", src);
	assert_int_equal(mkdir(src, 0755), 0);
	snprintf(q, sizeof(q), "%s/store", src);
	assert_int_equal(mkdir(q, 0755), 0);
	assert_int_equal(chmod(q, 01775), 0); /* past the umask */
	snprintf(q, sizeof(q), "%s/store/.links", src);
	assert_int_equal(mkdir(q, 0755), 0);
	snprintf(q, sizeof(q), "%s/store/abc-pkg", src);
	assert_int_equal(mkdir(q, 0755), 0);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(q, sizeof(q), "%s/hello", p);
	write_file(q, "#!/bin/sh\necho hello\n", 0555);
	(void)setxattr(q, "user.test", "1", 1, 0); /* tmpfs may refuse user.*: then skip it */
	bool have_xattr = getxattr(q, "user.test", NULL, 0) == 1;
	char lnk[512];
	snprintf(lnk, sizeof(lnk), "%s/store/.links/h1", src);
	assert_int_equal(link(q, lnk), 0);
	snprintf(lnk, sizeof(lnk), "%s/sym", p);
	assert_int_equal(symlink("hello", lnk), 0);
	struct timespec one[2] = {{1, 0}, {1, 0}};
	utimensat(AT_FDCWD, q, one, 0);
	utimensat(AT_FDCWD, lnk, one, AT_SYMLINK_NOFOLLOW);
	chmod(p, 0555);
	utimensat(AT_FDCWD, p, one, 0);

	struct seed_stats st;
	char why[256];
	assert_int_equal(seed_copy_tree(src, dst, 0, &st, why, sizeof(why)), 0);
	assert_int_equal(st.files, 1);
	assert_int_equal(st.hardlinks, 1);
	assert_int_equal(st.symlinks, 1);
	assert_int_equal(st.kept, 0);

	struct stat a, b, c;
	snprintf(q, sizeof(q), "%s/store/abc-pkg/bin/hello", dst);
	snprintf(lnk, sizeof(lnk), "%s/store/.links/h1", dst);
	assert_int_equal(stat(q, &a), 0);
	assert_int_equal(stat(lnk, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino); /* still one file with two names */
	assert_int_equal(a.st_nlink, 2);
	assert_int_equal(a.st_mode & 07777, 0555);
	assert_int_equal(a.st_mtim.tv_sec, 1);
	if (have_xattr)
		assert_int_equal(getxattr(q, "user.test", NULL, 0), 1);
	snprintf(q, sizeof(q), "%s/store/abc-pkg/bin", dst);
	assert_int_equal(stat(q, &c), 0);
	assert_int_equal(c.st_mode & 07777, 0555); /* read-only directories did not stop it */
	assert_int_equal(c.st_mtim.tv_sec, 1);
	snprintf(q, sizeof(q), "%s/store", dst);
	assert_int_equal(stat(q, &c), 0);
	assert_int_equal(c.st_mode & 07777, 01775);
	char target[64] = "";
	snprintf(q, sizeof(q), "%s/store/abc-pkg/bin/sym", dst);
	assert_int_equal(readlink(q, target, sizeof(target) - 1), 5);

	/* Again over the finished copy: everything is kept. */
	assert_int_equal(seed_copy_tree(src, dst, 0, &st, why, sizeof(why)), 0);
	assert_int_equal(st.kept, 1);
	assert_int_equal(st.bytes, 0);

	/* More bytes than the room given: -ENOSPC once the walk knows, with the figures. */
	snprintf(lnk, sizeof(lnk), "%s/dst-small", top);
	assert_int_equal(seed_copy_tree(src, lnk, 4, &st, why, sizeof(why)), -ENOSPC);
	assert_non_null(strstr(why, "room for at most"));

	/* A missing source is an error with a reason, not a crash. */
	snprintf(q, sizeof(q), "%s/none", top);
	snprintf(lnk, sizeof(lnk), "%s/dst2", top);
	assert_true(seed_copy_tree(q, lnk, 0, &st, why, sizeof(why)) < 0);
	assert_non_null(strstr(why, "none"));

	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
	assert_int_equal(system(cmd), 0);
}

/* ---- every shape Nix makes, and inode sharing compared name by name ---- */

#define MAX_ENTRIES 1024
static struct {
	char rel[300];
	ino_t ino;
	nlink_t nlink;
	mode_t mode;
} walked[MAX_ENTRIES];
static size_t n_walked;
static size_t walk_top;

static int record(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)flag;
	(void)ftw;
	assert_true(n_walked < MAX_ENTRIES);
	snprintf(walked[n_walked].rel, sizeof(walked[n_walked].rel), "%s", path + walk_top);
	walked[n_walked].ino = sb->st_ino;
	walked[n_walked].nlink = sb->st_nlink;
	walked[n_walked].mode = sb->st_mode;
	n_walked++;
	return 0;
}

/* For every pair of names in SRC: they share an inode in DST exactly when they do in SRC. */
static void assert_same_sharing(const char *src, const char *dst)
{
	static __typeof__(walked) a;
	n_walked = 0;
	walk_top = strlen(src);
	assert_int_equal(nftw(src, record, 16, FTW_PHYS), 0);
	size_t n = n_walked;
	memcpy(a, walked, sizeof(a));
	n_walked = 0;
	walk_top = strlen(dst);
	assert_int_equal(nftw(dst, record, 16, FTW_PHYS), 0);
	assert_int_equal(n_walked, n);
	for (size_t i = 0; i < n; i++) {
		size_t j = 0;
		while (j < n_walked && strcmp(walked[j].rel, a[i].rel) != 0)
			j++;
		assert_true(j < n_walked);
		assert_int_equal(walked[j].mode, a[i].mode);
		if (!S_ISDIR(a[i].mode))
			assert_int_equal(walked[j].nlink, a[i].nlink);
		for (size_t k = 0; k < i; k++) {
			if (S_ISDIR(a[k].mode) || S_ISDIR(a[i].mode))
				continue;
			size_t m = 0;
			while (m < n_walked && strcmp(walked[m].rel, a[k].rel) != 0)
				m++;
			assert_true(m < n_walked);
			if ((a[k].ino == a[i].ino) != (walked[m].ino == walked[j].ino))
				fail_msg("%s and %s: inode shared in one tree only", a[k].rel,
					 a[i].rel);
		}
	}
}

static void test_copy_nix_shapes(void **state)
{
	(void)state;
	char top[] = "/tmp/test-seed.XXXXXX", src[256], dst[256], p[512], q[600];
	assert_non_null(mkdtemp(top));
	snprintf(src, sizeof(src), "%s/src", top);
	snprintf(dst, sizeof(dst), "%s/dst", top);
	assert_int_equal(mkdir(src, 0755), 0);
	snprintf(p, sizeof(p), "%s/.links", src);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/pkg", src);
	assert_int_equal(mkdir(p, 0755), 0);

	/* A symlink hard-linked into .links, as nix-store --optimise does on Linux. */
	snprintf(q, sizeof(q), "%s/pkg/lib-link", src);
	assert_int_equal(symlink("../lib/libfoo.so.1", q), 0);
	char l[600];
	snprintf(l, sizeof(l), "%s/.links/sym1", src);
	assert_int_equal(linkat(AT_FDCWD, q, AT_FDCWD, l, 0), 0);
	/* A file with 300 names, an empty file with two, a 255-byte name, a linked fifo. */
	snprintf(q, sizeof(q), "%s/.links/many", src);
	write_file(q, "LICENSE\n", 0444);
	for (int i = 0; i < 299; i++) {
		snprintf(l, sizeof(l), "%s/pkg/license-%03d", src, i);
		assert_int_equal(link(q, l), 0);
	}
	snprintf(q, sizeof(q), "%s/.links/empty", src);
	write_file(q, "", 0444);
	snprintf(l, sizeof(l), "%s/pkg/empty", src);
	assert_int_equal(link(q, l), 0);
	char longname[256];
	memset(longname, 'n', 255);
	longname[255] = '\0';
	snprintf(q, sizeof(q), "%s/pkg/%s", src, longname);
	write_file(q, "long\n", 0444);
	snprintf(q, sizeof(q), "%s/pkg/fifo", src);
	assert_int_equal(mkfifo(q, 0644), 0);
	snprintf(l, sizeof(l), "%s/pkg/fifo2", src);
	assert_int_equal(link(q, l), 0);
	/* Not root's: owner and mode (setgid too) still come through. */
	snprintf(q, sizeof(q), "%s/pkg/users", src);
	write_file(q, "u\n", 0644);
	assert_int_equal(chown(q, 1000, 1000), 0);
	assert_int_equal(chmod(q, 02755), 0);
	/* Sparse: 1 MiB with 4 KiB of data at 512 KiB. */
	snprintf(q, sizeof(q), "%s/pkg/sparse", src);
	int fd = open(q, O_WRONLY | O_CREAT | O_EXCL, 0444);
	assert_true(fd >= 0);
	char block[4096];
	memset(block, 'x', sizeof(block));
	assert_int_equal(pwrite(fd, block, sizeof(block), 512 << 10), (ssize_t)sizeof(block));
	assert_int_equal(ftruncate(fd, 1 << 20), 0);
	close(fd);
	struct stat ss;
	assert_int_equal(stat(q, &ss), 0);
	bool holes = ss.st_blocks * 512 < ss.st_size; /* the temporary directory's FS keeps holes */

	struct seed_stats st;
	char why[256];
	assert_int_equal(seed_copy_tree(src, dst, 0, &st, why, sizeof(why)), 0);
	assert_same_sharing(src, dst);
	assert_int_equal(st.symlinks, 1);
	assert_int_equal(st.hardlinks, 1 + 299 + 1 + 1);

	struct stat a, b;
	snprintf(q, sizeof(q), "%s/pkg/lib-link", dst);
	snprintf(l, sizeof(l), "%s/.links/sym1", dst);
	assert_int_equal(lstat(q, &a), 0);
	assert_int_equal(lstat(l, &b), 0);
	assert_true(S_ISLNK(a.st_mode));
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(a.st_nlink, 2);
	char target[64] = "";
	assert_int_equal(readlink(q, target, sizeof(target) - 1), 18);
	assert_string_equal(target, "../lib/libfoo.so.1");
	snprintf(q, sizeof(q), "%s/pkg/users", dst);
	assert_int_equal(stat(q, &a), 0);
	assert_int_equal(a.st_uid, 1000);
	assert_int_equal(a.st_gid, 1000);
	assert_int_equal(a.st_mode & 07777, 02755);
	snprintf(q, sizeof(q), "%s/pkg/license-007", dst);
	assert_int_equal(stat(q, &a), 0);
	assert_int_equal(a.st_mode & 07777, 0444); /* created with its mode */
	snprintf(q, sizeof(q), "%s/pkg/%s", dst, longname);
	assert_int_equal(stat(q, &a), 0);
	assert_int_equal(a.st_size, 5);
	snprintf(q, sizeof(q), "%s/pkg/sparse", dst);
	assert_int_equal(stat(q, &a), 0);
	assert_int_equal(a.st_size, 1 << 20);
	if (holes)
		assert_true(a.st_blocks * 512 < a.st_size); /* still sparse */
	fd = open(q, O_RDONLY);
	assert_true(fd >= 0);
	char got[4096];
	assert_int_equal(pread(fd, got, sizeof(got), 512 << 10), (ssize_t)sizeof(got));
	assert_memory_equal(got, block, sizeof(got));
	assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t)sizeof(got));
	for (size_t i = 0; i < sizeof(got); i++)
		assert_int_equal(got[i], 0);
	close(fd);

	/* Resumed over the finished copy: nothing copied, the sharing still the same. */
	assert_int_equal(seed_copy_tree(src, dst, 0, &st, why, sizeof(why)), 0);
	assert_int_equal(st.bytes, 0);
	assert_same_sharing(src, dst);

	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_progress_text),
	    cmocka_unit_test(test_identity_is_order_free),
	    cmocka_unit_test(test_copy_tree),
	    cmocka_unit_test(test_copy_nix_shapes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
