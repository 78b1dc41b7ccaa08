/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
/* Console passphrase prompt: a pure line editor and the terminal I/O around it. */
#include "passphrase.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#define CTRL_KEY(c) ((unsigned char)((c)&0x1f))

void pp_editor_init(struct pp_editor *e, bool skip_lf)
{
	explicit_bzero(e, sizeof(*e));
	e->skip_lf = skip_lf;
	e->state = PP_EDITING;
}

void pp_editor_wipe(struct pp_editor *e)
{
	explicit_bzero(e, sizeof(*e));
	e->state = PP_EDITING;
}

static bool utf8_continuation(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

/* Erases the last character: trailing UTF-8 continuation bytes and the byte before them. */
static void erase_char(struct pp_editor *e)
{
	if (e->dropped > 0) {
		e->dropped--;
		return;
	}
	if (e->len == 0)
		return;
	size_t n = e->len;
	/* At most 3 continuation bytes belong to one character; more are not one character. */
	for (int k = 0; k < 3 && n > 0 && utf8_continuation((unsigned char)e->buf[n - 1]); k++)
		n--;
	if (n > 0 && n < e->len && (unsigned char)e->buf[n - 1] >= 0xc0)
		n--; /* the lead byte of that sequence */
	else
		n = e->len - 1; /* not a UTF-8 sequence: one byte */
	explicit_bzero(e->buf + n, e->len - n);
	e->len = n;
}

enum pp_state pp_editor_feed(struct pp_editor *e, unsigned char c)
{
	if (e->state != PP_EDITING)
		return e->state;
	bool skip_lf = e->skip_lf;
	e->skip_lf = false;
	switch (c) {
	case '\n':
		if (skip_lf)
			return e->state;
		e->state = e->dropped ? PP_TOO_LONG : PP_DONE;
		return e->state;
	case '\r':
		e->ended_with_cr = true;
		e->state = e->dropped ? PP_TOO_LONG : PP_DONE;
		return e->state;
	case 0x7f:
	case 0x08:
		erase_char(e);
		return e->state;
	case CTRL_KEY('U'):
		explicit_bzero(e->buf, sizeof(e->buf));
		e->len = 0;
		e->dropped = 0;
		return e->state;
	case CTRL_KEY('C'):
	case CTRL_KEY('D'):
		e->state = PP_ABORTED;
		return e->state;
	default:
		break;
	}
	if (c < 0x20 && c != '\t')
		return e->state; /* NUL, ESC and the other control bytes */
	if (e->len < sizeof(e->buf))
		e->buf[e->len++] = (char)c;
	else if (e->dropped < SIZE_MAX)
		e->dropped++;
	return e->state;
}

/* The last line ended with CR: its LF (if the terminal sends CR LF) may still come. */
static bool pending_lf;

int passphrase_ask_fd(int in, int outfd, const char *prompt, unsigned timeout_s, struct secret *out)
{
	if (fcntl(in, F_GETFL) < 0)
		return -EIO; /* poll() would ignore a bad descriptor and wait for ever */
	struct termios saved, raw;
	bool restore = false;
	if (tcgetattr(in, &saved) == 0) {
		raw = saved;
		/* No echo, byte by byte, Ctrl-C as a byte rather than SIGINT, CR as CR, 8 bits. */
		raw.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL | ICANON | ISIG | IEXTEN);
		raw.c_iflag &= ~(tcflag_t)(ICRNL | INLCR | IGNCR | ISTRIP);
		raw.c_cc[VMIN] = 1;
		raw.c_cc[VTIME] = 0;
		/* TCSAFLUSH drops what was typed before the prompt: the terminal echoed it. */
		if (tcsetattr(in, TCSAFLUSH, &raw) == 0)
			restore = true;
	}

	(void)fd_write_all(outfd, prompt, strlen(prompt)); /* a console that takes nothing: go on */

	struct pp_editor e;
	pp_editor_init(&e, pending_lf);
	pending_lf = false;
	uint64_t deadline = timeout_s ? now_ms() + (uint64_t)timeout_s * 1000 : 0;
	int r = 0;
	unsigned char c = 0;
	while (e.state == PP_EDITING) {
		int wait = -1;
		if (deadline) {
			uint64_t now = now_ms();
			if (now >= deadline) {
				r = -ETIMEDOUT;
				break;
			}
			uint64_t left = deadline - now;
			wait = left > 60000 ? 60000 : (int)left;
		}
		struct pollfd p = {.fd = in, .events = POLLIN};
		int n = poll(&p, 1, wait);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			r = -EIO;
			break;
		}
		if (n == 0)
			continue; /* the deadline check above decides */
		ssize_t got = read(in, &c, 1);
		if (got < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (got <= 0) {
			r = -EIO; /* a read error, a hang-up or end of input */
			break;
		}
		pp_editor_feed(&e, c);
	}
	explicit_bzero(&c, sizeof(c));

	if (restore)
		(void)tcsetattr(in, TCSAFLUSH, &saved);
	/* The Enter that ended the line was not echoed. */
	(void)fd_write_all(outfd, "\n", 1);

	if (r == 0) {
		switch (e.state) {
		case PP_DONE:
			r = secret_set(out, e.buf, e.len);
			pending_lf = e.ended_with_cr;
			break;
		case PP_TOO_LONG:
			r = -E2BIG;
			pending_lf = e.ended_with_cr;
			break;
		case PP_ABORTED:
			r = -ECANCELED;
			break;
		case PP_EDITING:
			r = -EIO;
			break;
		}
	}
	pp_editor_wipe(&e);
	return r;
}

/* A descriptor we can read a line from: open for reading, and a terminal, pipe or socket. */
static bool usable(int fd, bool for_reading)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return false;
	int acc = fl & O_ACCMODE;
	if (for_reading ? acc == O_WRONLY : acc == O_RDONLY)
		return false;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return false;
	return S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
}

int passphrase_ask(const char *prompt, unsigned timeout_s, struct secret *out)
{
	_cleanup_close_ int con = open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (con >= 0)
		return passphrase_ask_fd(con, con, prompt, timeout_s, out);
	if (!usable(STDIN_FILENO, true))
		return -EIO;
	int outfd = usable(STDERR_FILENO, false)   ? STDERR_FILENO
		    : usable(STDOUT_FILENO, false) ? STDOUT_FILENO
						   : -1;
	if (outfd < 0)
		return -EIO;
	return passphrase_ask_fd(STDIN_FILENO, outfd, prompt, timeout_s, out);
}
