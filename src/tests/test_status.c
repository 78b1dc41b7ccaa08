/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "status.h"
#include "util.h"

static void test_fallback_status(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "stage1", 0);
	status_reason(&st, STATUS_REASON_NO_DISK, "no data disk: %s did not appear", "/dev/vdb");
	status_reason(&st, STATUS_REASON_MOUNT, "a later, derived failure");
	status_warn(&st, "w1");
	status_step(&st, "device", 10001, -ETIMEDOUT);
	status_step(&st, "config", 2, 0);
	st.total_ms = 10100;
	char *text = status_to_json(&st);
	struct json_object *o = json_tokener_parse(text);
	assert_non_null(o);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "outcome")),
			    "fallback");
	assert_string_equal(json_object_get_string(json_object_object_get(o, "reason")),
			    "no data disk: /dev/vdb did not appear");
	/* The code of the first reason, not the later one's. */
	assert_string_equal(json_object_get_string(json_object_object_get(o, "reason_code")),
			    STATUS_REASON_NO_DISK);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "store")), "factory");
	assert_null(json_object_object_get(o, "device"));
	struct json_object *steps = json_object_object_get(o, "steps");
	assert_int_equal(json_object_array_length(steps), 2);
	struct json_object *s0 = json_object_array_get_idx(steps, 0);
	assert_int_equal(json_object_get_int(json_object_object_get(s0, "ms")), 10001);
	assert_int_equal(json_object_get_int(json_object_object_get(s0, "result")), -ETIMEDOUT);
	assert_non_null(json_object_object_get(s0, "error"));
	json_object_put(o);
	free(text);
}

static void test_persist_status(void **state)
{
	(void)state;
	struct status st;
	status_init(&st, "helper", 0);
	st.persist = true;
	st.luks = true;
	strcpy(st.unlock, "keyfile");
	strcpy(st.device, "/dev/vdb");
	strcpy(st.store, "overlay");
	char *text = status_to_json(&st);
	struct json_object *o = json_tokener_parse(text);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "outcome")),
			    "persist");
	assert_null(json_object_object_get(o, "reason"));
	assert_string_equal(json_object_get_string(json_object_object_get(o, "unlock")), "keyfile");
	assert_true(json_object_get_boolean(json_object_object_get(o, "luks")));
	json_object_put(o);
	free(text);
}

static void test_warnings_capped(void **state)
{
	(void)state;
	struct status st;
	char msg[64];
	status_init(&st, "stage1", 0);
	for (int i = 0; i < 60; i++) {
		snprintf(msg, sizeof(msg), "warning %d", i);
		status_warn(&st, msg);
	}
	/* 47 named, then one line for the other 13 (each one is in the kernel log). */
	assert_int_equal(st.n_warnings, STATUS_MAX_WARNINGS);
	for (int i = 0; i < STATUS_MAX_WARNINGS - 1; i++) {
		snprintf(msg, sizeof(msg), "warning %d", i);
		assert_string_equal(st.warnings[i], msg);
	}
	assert_string_equal(st.warnings[STATUS_MAX_WARNINGS - 1],
			    "… and 13 more warnings (see the kernel log)");
	char *text = status_to_json(&st);
	struct json_object *o = json_tokener_parse(text);
	struct json_object *w = json_object_object_get(o, "warnings");
	assert_int_equal(json_object_array_length(w), STATUS_MAX_WARNINGS);
	assert_string_equal(
	    json_object_get_string(json_object_array_get_idx(w, STATUS_MAX_WARNINGS - 1)),
	    "… and 13 more warnings (see the kernel log)");
	json_object_put(o);
	free(text);

	/* Exactly the cap: all named; one more: the last slot counts two. */
	status_init(&st, "stage1", 0);
	for (int i = 0; i < STATUS_MAX_WARNINGS; i++)
		status_warn(&st, "w");
	assert_string_equal(st.warnings[STATUS_MAX_WARNINGS - 1], "w");
	status_warn(&st, "w");
	assert_string_equal(st.warnings[STATUS_MAX_WARNINGS - 1],
			    "… and 2 more warnings (see the kernel log)");
	status_warn(&st, "w");
	assert_string_equal(st.warnings[STATUS_MAX_WARNINGS - 1],
			    "… and 3 more warnings (see the kernel log)");
	assert_int_equal(st.n_warnings, STATUS_MAX_WARNINGS);
}

/* ---- write_file_atomic ----------------------------------------------------------------- */

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static void expect_content(const char *path, const char *want)
{
	char *got = NULL;
	assert_int_equal(read_file(path, 4096, &got, NULL), 0);
	assert_string_equal(got, want);
	free(got);
}

static size_t count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static void remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			assert_int_equal(unlinkat(dirfd(d), e->d_name, 0), 0);
	closedir(d);
	assert_int_equal(rmdir(dir), 0);
}

static void test_atomic_ignores_planted_temp(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_status.XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[PATH_MAX], victim[PATH_MAX], planted[PATH_MAX];
	snprintf(path, sizeof(path), "%s/status.json", dir);
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	/* The old fixed temporary name, planted as a hard link to someone else's file. */
	snprintf(planted, sizeof(planted), "%s.tmp.%d", path, (int)getpid());
	put(victim, "precious");
	assert_int_equal(link(victim, planted), 0);

	assert_int_equal(write_file_atomic(path, "new", 3, 0644), 0);
	expect_content(path, "new");
	expect_content(victim, "precious");
	expect_content(planted, "precious");
	struct stat a, b;
	assert_int_equal(stat(victim, &a), 0);
	assert_int_equal(stat(planted, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(a.st_nlink, 2);
	/* No temporary file left behind: victim, planted, status.json. */
	assert_int_equal(count_entries(dir), 3);
	remove_tree(dir);
}

static void test_atomic_mode_despite_umask(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_status.XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/f", dir);
	struct stat st;
	mode_t old = umask(077);
	assert_int_equal(write_file_atomic(path, "x", 1, 0644), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	umask(0);
	assert_int_equal(write_file_atomic(path, "y", 1, 0600), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	umask(old);
	expect_content(path, "y");
	assert_int_equal(count_entries(dir), 1);
	remove_tree(dir);
}

static void test_atomic_replaces_symlink(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_status.XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[PATH_MAX], target[PATH_MAX];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	snprintf(target, sizeof(target), "%s/target", dir);
	put(target, "original");
	assert_int_equal(symlink(target, path), 0);

	assert_int_equal(write_file_atomic(path, "{}", 2, 0600), 0);
	struct stat st;
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	expect_content(path, "{}");
	expect_content(target, "original");
	assert_int_equal(count_entries(dir), 2);
	remove_tree(dir);
}

static void test_atomic_at(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_status.XXXXXX";
	assert_non_null(mkdtemp(dir));
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	/* One path component only. */
	assert_int_equal(write_file_atomic_at(fd, "a/b", "x", 1, 0644), -EINVAL);
	assert_int_equal(write_file_atomic_at(fd, "", "x", 1, 0644), -EINVAL);
	assert_int_equal(write_file_atomic_at(fd, "..", "x", 1, 0644), -EINVAL);
	/* A name as long as a name can be: the temporary one still fits. */
	char longname[NAME_MAX + 1];
	memset(longname, 'n', NAME_MAX);
	longname[NAME_MAX] = '\0';
	assert_int_equal(write_file_atomic_at(fd, longname, "long", 4, 0644), 0);
	assert_int_equal(write_file_atomic_at(fd, "config.json", "one", 3, 0600), 0);
	assert_int_equal(write_file_atomic_at(fd, "config.json", "two", 3, 0600), 0);
	close(fd);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/config.json", dir);
	expect_content(path, "two");
	assert_int_equal(count_entries(dir), 2);
	remove_tree(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fallback_status),
	    cmocka_unit_test(test_persist_status),
	    cmocka_unit_test(test_warnings_capped),
	    cmocka_unit_test(test_atomic_ignores_planted_temp),
	    cmocka_unit_test(test_atomic_mode_despite_umask),
	    cmocka_unit_test(test_atomic_replaces_symlink),
	    cmocka_unit_test(test_atomic_at),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
