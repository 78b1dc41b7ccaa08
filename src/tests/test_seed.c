/* SPDX-License-Identifier: MIT */
/* The pure parts of seed.c: progress text and the store identity; and the copy engine on a
 * small tree in a temporary directory (hard links, symlinks, modes, mtimes, xattrs, resume). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
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
	assert_int_equal(seed_copy_tree(src, dst, &st, why, sizeof(why)), 0);
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
	assert_int_equal(seed_copy_tree(src, dst, &st, why, sizeof(why)), 0);
	assert_int_equal(st.kept, 1);
	assert_int_equal(st.bytes, 0);

	/* A missing source is an error with a reason, not a crash. */
	snprintf(q, sizeof(q), "%s/none", top);
	snprintf(lnk, sizeof(lnk), "%s/dst2", top);
	assert_true(seed_copy_tree(q, lnk, &st, why, sizeof(why)) < 0);
	assert_non_null(strstr(why, "none"));

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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
