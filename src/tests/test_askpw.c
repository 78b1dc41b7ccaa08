/* SPDX-License-Identifier: MIT */
/*
 * askpw: the asking side of systemd's password agent protocol, against a fake agent (a child
 * process) that waits for the ask file with inotify, reads it as systemd's agents do and
 * answers on the socket it names.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "askpw.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/askpw-test.XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return rmdir(dir); /* fails (and so the test) if a file was left behind */
}

/* The ask file's name once it appears (the agent's view), waiting with inotify. */
static int wait_ask(int in, char *name, size_t size)
{
	for (;;) {
		DIR *d = opendir(dir);
		struct dirent *e;
		while (d && (e = readdir(d)))
			if (strncmp(e->d_name, "ask.", 4) == 0) {
				snprintf(name, size, "%s/%s", dir, e->d_name);
				closedir(d);
				return 0;
			}
		if (d)
			closedir(d);
		char buf[4096];
		if (read(in, buf, sizeof(buf)) < 0)
			return -1;
	}
}

static char *value(const char *text, const char *key)
{
	static char v[512];
	const char *p = strstr(text, key);
	if (!p)
		return NULL;
	p += strlen(key);
	size_t n = strcspn(p, "\n");
	snprintf(v, sizeof(v), "%.*s", (int)n, p);
	return v;
}

/* Child: answer the first request with reply (n bytes); exit 0 if the file was as expected. */
static pid_t agent(const void *reply, size_t n, const char *want_message)
{
	int in = inotify_init1(IN_CLOEXEC);
	assert_true(in >= 0);
	assert_true(inotify_add_watch(in, dir, IN_MOVED_TO | IN_CLOSE_WRITE) >= 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid > 0) {
		close(in);
		return pid;
	}
	char name[256], text[4096];
	if (wait_ask(in, name, sizeof(name)) < 0)
		_exit(10);
	FILE *f = fopen(name, "r");
	size_t len = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
	if (f)
		fclose(f);
	text[len] = '\0';
	if (strncmp(text, "[Ask]\n", 6) != 0 || !value(text, "\nEcho=0") ||
	    !value(text, "\nAcceptCached=0") || !value(text, "\nNotAfter="))
		_exit(11);
	if (want_message && strcmp(value(text, "\nMessage="), want_message) != 0)
		_exit(12);
	char pidtext[16];
	snprintf(pidtext, sizeof(pidtext), "%d", (int)getppid());
	if (strcmp(value(text, "\nPID="), pidtext) != 0)
		_exit(13);
	if (!reply)
		_exit(0); /* no answer: let it time out */
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", value(text, "\nSocket="));
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || sendto(fd, reply, n, 0, (struct sockaddr *)&sa, sizeof(sa)) != (ssize_t)n)
		_exit(14);
	_exit(0);
}

static void expect_agent_ok(pid_t pid)
{
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_answer(void **state)
{
	(void)state;
	/* systemd's agents send "+" and the password, NUL-terminated. */
	pid_t pid = agent("+hunter2\0", 9, "Passphrase for /dev/vdb (try 1 of 3):");
	struct secret s = {0};
	assert_int_equal(askpw_ask(dir, "Passphrase for /dev/vdb (try 1 of 3):", "id", 30, &s), 0);
	assert_int_equal(s.len, 7);
	assert_memory_equal(s.data, "hunter2", 7);
	secret_free(&s);
	expect_agent_ok(pid);
	/* Without the NUL, and a message with a newline in it (which must not add a key). */
	pid = agent("+pw", 3, "evil?Echo=1");
	assert_int_equal(askpw_ask(dir, "evil\nEcho=1", NULL, 30, &s), 0);
	assert_int_equal(s.len, 2);
	secret_free(&s);
	expect_agent_ok(pid);
}

static void test_cancel_and_timeout(void **state)
{
	(void)state;
	pid_t pid = agent("-", 1, NULL);
	struct secret s = {0};
	assert_int_equal(askpw_ask(dir, "PIN", "id", 30, &s), -ECANCELED);
	assert_null(s.data);
	expect_agent_ok(pid);
	/* Nobody answers: the timeout ends it, and the files are gone (teardown checks). */
	pid = agent(NULL, 0, "PIN");
	assert_int_equal(askpw_ask(dir, "PIN", "id", 1, &s), -ETIMEDOUT);
	expect_agent_ok(pid);
}

static void test_too_long(void **state)
{
	(void)state;
	static char big[600];
	big[0] = '+';
	memset(big + 1, 'x', sizeof(big) - 1);
	pid_t pid = agent(big, sizeof(big), NULL);
	struct secret s = {0};
	assert_int_equal(askpw_ask(dir, "PIN", "id", 30, &s), -E2BIG);
	expect_agent_ok(pid);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_answer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cancel_and_timeout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_too_long, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
