/* SPDX-License-Identifier: MIT */
/* systemd's password agent protocol, the asking side; see askpw.h. */
#define _GNU_SOURCE
#include "askpw.h"
#include "log.h"
#include "passphrase.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

bool askpw_under_systemd(void)
{
	struct stat st;
	return getpid() != 1 && stat("/run/systemd/system", &st) == 0 && S_ISDIR(st.st_mode);
}

static uint64_t monotonic_usec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* A copy of s fit for one "Key=value" line: control characters become '?'. */
static void one_line(char *dst, size_t size, const char *s)
{
	snprintf(dst, size, "%s", s);
	for (char *p = dst; *p; p++)
		if (is_control_char(*p))
			*p = '?';
}

/* Waits for one acceptable answer; returns 0 (secret in out) or a negative errno. */
static int await_answer(int fd, uint64_t until_usec, struct secret *out)
{
	for (;;) {
		int timeout_ms = -1;
		if (until_usec) {
			uint64_t now = monotonic_usec();
			if (now >= until_usec)
				return -ETIMEDOUT;
			timeout_ms = (int)((until_usec - now + 999) / 1000);
		}
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;

		char buf[PASSPHRASE_MAX + 3];
		union {
			struct cmsghdr h;
			char space[CMSG_SPACE(sizeof(struct ucred))];
		} control;
		struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
		struct msghdr msg = {.msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = &control,
				     .msg_controllen = sizeof(control)};
		ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0)
			return -errno;
		struct ucred *cred = NULL;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
			    c->cmsg_len == CMSG_LEN(sizeof(struct ucred)))
				cred = (struct ucred *)CMSG_DATA(c);
		if (n == 0 || !cred || (cred->uid != 0 && cred->uid != getuid())) {
			explicit_bzero(buf, sizeof(buf));
			log_debug("ask-password: ignored an answer that is empty or not from root");
			continue;
		}
		if (buf[0] == '-') {
			explicit_bzero(buf, sizeof(buf));
			return -ECANCELED;
		}
		if (buf[0] != '+') {
			explicit_bzero(buf, sizeof(buf));
			continue;
		}
		/* "+PASSWORD", maybe NUL-terminated, maybe several NUL-separated: the first. */
		size_t len = strnlen(buf + 1, (size_t)n - 1);
		r = (msg.msg_flags & MSG_TRUNC) || len > PASSPHRASE_MAX
			? -E2BIG
			: secret_set(out, buf + 1, len);
		explicit_bzero(buf, sizeof(buf));
		return r;
	}
}

int askpw_ask(const char *dir, const char *message, const char *id, unsigned timeout_s,
	      struct secret *out)
{
	uint64_t rnd;
	if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
		return -EIO;
	(void)mkdir(dir, 0755);
	_cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;

	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int len = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sck.%016" PRIx64, dir, rnd);
	if (len < 0 || (size_t)len >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	mode_t old = umask(0177); /* only root may answer */
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0)
		return -errno;
	int on = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) < 0) {
		r = -errno;
		unlink(sa.sun_path);
		return r;
	}

	uint64_t until = timeout_s ? monotonic_usec() + (uint64_t)timeout_s * 1000000u : 0;
	char msg_line[512], id_line[256], text[2048], name[32];
	one_line(msg_line, sizeof(msg_line), message);
	one_line(id_line, sizeof(id_line), id ? id : "factory-init");
	int n = snprintf(text, sizeof(text),
			 "[Ask]\nPID=%d\nSocket=%s\nAcceptCached=0\nEcho=0\nNotAfter=%" PRIu64
			 "\nSilent=0\nMessage=%s\nIcon=drive-harddisk\nId=%s\n",
			 (int)getpid(), sa.sun_path, until, msg_line, id_line);
	snprintf(name, sizeof(name), "ask.%016" PRIx64, rnd);
	r = n > 0 && (size_t)n < sizeof(text)
		? write_file_atomic_at(dfd, name, text, (size_t)n, 0644)
		: -E2BIG;
	if (r >= 0) {
		r = await_answer(fd, until, out);
		unlinkat(dfd, name, 0);
	}
	unlink(sa.sun_path);
	return r;
}
