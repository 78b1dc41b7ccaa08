/* SPDX-License-Identifier: MIT */
/* The untrusted /persist tree: resolution beneath a directory fd, markers, moving aside. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "beneath.h"
#include "persist.h"
#include "seed.h"
#include "util.h"

static char top[64];
static int topfd = -1;

static int setup(void **state)
{
	(void)state;
	strcpy(top, "/tmp/fi-persist-XXXXXX");
	if (!mkdtemp(top))
		return -1;
	topfd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return topfd < 0 ? -1 : 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", top);
	close(topfd);
	return system(cmd) == 0 ? 0 : -1;
}

static void put(const char *rel, const char *text)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", top, rel);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void link_at(const char *target, const char *rel)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", top, rel);
	assert_int_equal(symlink(target, path), 0);
}

static void mk(const char *rel)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", top, rel);
	assert_int_equal(mkdir(path, 0755), 0);
}

static bool exists(const char *rel)
{
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", top, rel);
	return lstat(path, &st) == 0;
}

static void test_identity_valid(void **state)
{
	(void)state;
	assert_true(persist_identity_valid("store:0123456789abcdef"));
	assert_true(persist_identity_valid("nixos-24.05.20240601+build_3@fleet"));
	assert_false(persist_identity_valid(""));
	assert_false(persist_identity_valid("has space"));
	assert_false(persist_identity_valid("new\nline"));
	assert_false(persist_identity_valid("quote\""));
	assert_false(persist_identity_valid("slash/"));
	char long_id[200];
	memset(long_id, 'a', sizeof(long_id));
	long_id[127] = '\0';
	assert_true(persist_identity_valid(long_id));
	long_id[127] = 'a';
	long_id[128] = '\0';
	assert_false(persist_identity_valid(long_id));
}

static void test_beneath_refuses_links(void **state)
{
	(void)state;
	put("secret", "the key\n");
	mk("d");
	put("d/file", "fine\n");
	link_at("/etc/passwd", "abs");
	link_at("secret", "rel");
	link_at("d", "dlink");
	link_at("loop", "loop");
	char *text = NULL;
	assert_int_equal(beneath_read(topfd, "d/file", 100, &text, NULL), 0);
	assert_string_equal(text, "fine\n");
	free(text);
	assert_int_equal(beneath_read(topfd, "abs", 100, &text, NULL), -ELOOP);
	assert_int_equal(beneath_read(topfd, "rel", 100, &text, NULL), -ELOOP);
	assert_int_equal(beneath_read(topfd, "dlink/file", 100, &text, NULL), -ELOOP);
	assert_int_equal(beneath_read(topfd, "loop", 100, &text, NULL), -ELOOP);
	assert_null(text);
	/* No way out through "..", absolute or empty components. */
	assert_int_equal(beneath_read(topfd, "../etc/passwd", 100, &text, NULL), -EINVAL);
	assert_int_equal(beneath_read(topfd, "d/../secret", 100, &text, NULL), -EINVAL);
	assert_int_equal(beneath_read(topfd, "/etc/passwd", 100, &text, NULL), -EINVAL);
	assert_int_equal(beneath_read(topfd, "d//file", 100, &text, NULL), -EINVAL);
	assert_int_equal(beneath_read(topfd, "", 100, &text, NULL), -EINVAL);
	/* Only regular files are opened for reading; nothing larger than asked for. */
	char fifo[256];
	snprintf(fifo, sizeof(fifo), "%s/fifo", top);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(beneath_read(topfd, "fifo", 100, &text, NULL), -EBADFD);
	assert_int_equal(beneath_read(topfd, "d", 100, &text, NULL), -EBADFD);
	assert_int_equal(beneath_read(topfd, "secret", 3, &text, NULL), -EFBIG);
	assert_int_equal(beneath_read(topfd, "absent", 100, &text, NULL), -ENOENT);
}

/* The same rules where openat2 is refused: the component-by-component walk. */
static void test_walk_refuses_links(void **state)
{
	beneath_force_walk(true);
	test_beneath_refuses_links(state);
	beneath_force_walk(false);
}

static void test_beneath_mkdirs(void **state)
{
	(void)state;
	int fd = beneath_mkdirs(topfd, "nix/upper/store", 0755);
	assert_true(fd >= 0);
	close(fd);
	assert_true(exists("nix/upper/store"));
	/* A symlink on the way is refused, never followed (nothing is made at its target). */
	mk("elsewhere");
	link_at("elsewhere", "nix/work");
	assert_int_equal(beneath_mkdirs(topfd, "nix/work/x", 0755), -ELOOP);
	assert_false(exists("elsewhere/x"));
	put("nix/file", "");
	assert_int_equal(beneath_mkdirs(topfd, "nix/file/x", 0755), -ENOTDIR);
	struct stat st;
	assert_int_equal(beneath_lstat(topfd, "nix/work", &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_string_equal(beneath_type_name(st.st_mode), "a symlink");
}

static void test_markers(void **state)
{
	(void)state;
	char id[128];
	mk("nix");
	put("nix/" SEED_OVERLAY_MARKER, "store:0123456789abcdef\n");
	assert_int_equal(persist_read_marker(topfd, "nix/" SEED_OVERLAY_MARKER, id, sizeof(id)), 0);
	assert_string_equal(id, "store:0123456789abcdef");
	put("nix/" SEED_MARKER, "not an id: \x01\x02\n");
	assert_int_equal(persist_read_marker(topfd, "nix/" SEED_MARKER, id, sizeof(id)), -EBADMSG);
	/* 64 KiB of garbage: not read at all. */
	char *big = malloc(65536 + 1);
	memset(big, 'A', 65536);
	big[65536] = '\0';
	put("nix/" SEED_MARKER, big);
	free(big);
	assert_int_equal(persist_read_marker(topfd, "nix/" SEED_MARKER, id, sizeof(id)), -EFBIG);
	unlink("/dev/null/x"); /* keep errno tidy */
}

static int warnings;
static char last_warning[512];
static void count_warning(void *ctx, const char *msg)
{
	(void)ctx;
	warnings++;
	snprintf(last_warning, sizeof(last_warning), "%s", msg);
}

static void test_check_tree(void **state)
{
	(void)state;
	/* What a hostile stage 2 leaves: links at the store's directories and markers. */
	put("keyfile", "the key\n");
	mk("nix");
	mk("nix/upper.moved");
	put("nix/upper.moved/data", "kept\n");
	link_at("../keyfile", "nix/" SEED_OVERLAY_MARKER);
	link_at("/etc", "nix/upper");
	link_at("work", "nix/work");
	link_at("/", SEED_STAGING);
	warnings = 0;
	int r = persist_check_tree(topfd, count_warning, NULL);
	assert_int_equal(r, 4);
	assert_int_equal(warnings, 4);
	/* Moved aside, never followed or deleted. */
	assert_false(exists("nix/upper"));
	assert_true(exists("nix/upper.bad"));
	assert_true(exists("nix/work.bad"));
	assert_true(exists(SEED_STAGING ".bad"));
	assert_true(exists("nix/" SEED_OVERLAY_MARKER ".bad"));
	assert_true(exists("nix/upper.moved/data"));
	assert_true(exists("keyfile"));
	assert_non_null(strstr(last_warning, "/persist/"));
	/* A second pass finds nothing; the next plant gets a fresh name. */
	assert_int_equal(persist_check_tree(topfd, count_warning, NULL), 0);
	link_at("/etc", "nix/upper");
	assert_int_equal(persist_check_tree(topfd, count_warning, NULL), 1);
	assert_true(exists("nix/upper.bad.1"));
	/* A FIFO marker is moved aside without being opened (opening it would block). */
	char fifo[256];
	snprintf(fifo, sizeof(fifo), "%s/nix/%s", top, SEED_MARKER);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(persist_check_tree(topfd, count_warning, NULL), 1);
	assert_non_null(strstr(last_warning, "a FIFO"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_identity_valid),
	    cmocka_unit_test_setup_teardown(test_beneath_refuses_links, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_walk_refuses_links, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_beneath_mkdirs, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_markers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check_tree, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
