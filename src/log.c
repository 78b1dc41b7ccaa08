/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "log.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static int kmsg_fd = -1;
static int kernel_console_level = 0; /* kmsg lines below this level the kernel prints itself */
static int console_level = LOG_INFO;
static int kmsg_level = LOG_INFO;
static const char *ident = "factory-init";

void log_open_kmsg(void)
{
	if (kmsg_fd < 0)
		kmsg_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC | O_NOCTTY);
	FILE *f = fopen("/proc/sys/kernel/printk", "re");
	if (f) {
		if (fscanf(f, "%d", &kernel_console_level) != 1)
			kernel_console_level = 0;
		fclose(f);
	}
}

#define DEVKMSG_SYSCTL "/proc/sys/kernel/printk_devkmsg"
static char devkmsg_saved[16];

void log_kmsg_unlimit(void)
{
	char buf[sizeof(devkmsg_saved)];
	int fd = open(DEVKMSG_SYSCTL, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	/* A string sysctl takes a write only at offset 0: open it again to write. */
	fd = open(DEVKMSG_SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "on\n", 3) == 3)
		memcpy(devkmsg_saved, buf, (size_t)n + 1);
	close(fd);
}

void log_kmsg_restore(void)
{
	if (!devkmsg_saved[0] || strncmp(devkmsg_saved, "on", 2) == 0)
		return;
	int fd = open(DEVKMSG_SYSCTL, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, devkmsg_saved, strlen(devkmsg_saved)) < 0)
		log_debug("cannot restore " DEVKMSG_SYSCTL ": %s", strerror(errno));
	close(fd);
}

void log_set_console_level(int level)
{
	console_level = level;
}

void log_set_kmsg_level(int level)
{
	kmsg_level = level;
}

void log_set_ident(const char *id)
{
	ident = id;
}

static const char *prefix(int prio)
{
	switch (prio) {
	case LOG_EMERG:
	case LOG_ALERT:
	case LOG_CRIT:
	case LOG_ERR:
		return "error: ";
	case LOG_WARNING:
		return "warning: ";
	default:
		return "";
	}
}

size_t log_split_len(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	if (max == 0)
		return 0;
	/* Back up to the start of the character at max (a UTF-8 sequence has at most 3
	 * continuation bytes; past that the text is not UTF-8, and any cut will do). */
	size_t cut = max;
	for (int i = 0; i < 3 && cut > 0 && ((unsigned char)s[cut] & 0xc0) == 0x80; i++)
		cut--;
	if (cut == 0 || ((unsigned char)s[cut] & 0xc0) == 0x80)
		cut = max;
	/* A space near the end makes the nicer cut: just after it. */
	size_t lo = cut > LOG_SPLIT_SPACE_WINDOW ? cut - LOG_SPLIT_SPACE_WINDOW : 0;
	for (size_t i = cut; i > lo && i > 1; i--)
		if (s[i - 1] == ' ')
			return i;
	return cut;
}

/* Drops an incomplete UTF-8 sequence that vsnprintf's truncation left at the end of s. */
static size_t utf8_trim_partial(const char *s, size_t len)
{
	size_t lead = len;
	for (int i = 0; i < 3 && lead > 0 && ((unsigned char)s[lead - 1] & 0xc0) == 0x80; i++)
		lead--;
	if (lead == 0)
		return len;
	unsigned char c = (unsigned char)s[lead - 1];
	size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
	return len - (lead - 1) < need ? lead - 1 : len;
}

/* The marker that starts a continuation record (U+2026, then a space). */
#define KMSG_CONT "\xe2\x80\xa6 "

/* Writes msg to /dev/kmsg as one record, or as several when it is too long for one; true when
 * every record was written. */
static bool write_kmsg(int prio, const char *msg, size_t len)
{
	char head[160];
	int h = snprintf(head, sizeof(head), "<%d>%s[%d]: %s", LOG_DAEMON | prio, ident,
			 (int)getpid(), prefix(prio));
	if (h < 0)
		return false;
	size_t head_len = (size_t)h < sizeof(head) ? (size_t)h : sizeof(head) - 1;
	size_t cont_len = strlen(KMSG_CONT);
	size_t max = LOG_KMSG_TEXT_MAX;
	if (head_len + cont_len + max + 1 > LOG_KMSG_RECORD_MAX)
		max = LOG_KMSG_RECORD_MAX - head_len - cont_len - 1;
	bool ok = true;
	size_t off = 0;
	do {
		size_t n = log_split_len(msg + off, len - off, max);
		size_t text = n;
		/* A cut after a space: the record need not end in it. */
		if (off + n < len && text > 1 && msg[off + text - 1] == ' ')
			text--;
		/* One write(2) per record: /dev/kmsg takes each write as one message (and
		 * dprintf's stdio stream gives up on it, since kmsg refuses the lseek stdio
		 * tries first). */
		struct iovec iov[] = {
		    {head, head_len},
		    {(void *)KMSG_CONT, off > 0 ? cont_len : 0},
		    {(void *)(msg + off), text},
		    {(void *)"\n", 1},
		};
		size_t total = head_len + iov[1].iov_len + text + 1;
		if (writev(kmsg_fd, iov, ARRAY_SIZE(iov)) != (ssize_t)total)
			ok = false;
		off += n;
	} while (off < len);
	return ok;
}

static void log_vmsg(int prio, bool always_console, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

void log_msg(int prio, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(prio, false, fmt, ap);
	va_end(ap);
}

void log_announce(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(LOG_NOTICE, true, fmt, ap);
	va_end(ap);
}

static void log_vmsg(int prio, bool always_console, const char *fmt, va_list ap)
{
	int saved = errno;
	char msg[LOG_MSG_MAX];
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t len = n < 0 ? 0 : strlen(msg);
	if (n >= (int)sizeof(msg)) /* cut off: not in the middle of a character */
		len = utf8_trim_partial(msg, len);
	msg[len] = '\0';
	/* One message is one line: fold any newline a library message carried. */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';

	bool echoed = false;
	if (kmsg_fd >= 0 && prio <= kmsg_level && write_kmsg(prio, msg, len))
		echoed = prio < kernel_console_level; /* the kernel prints it on the console */
	if ((prio <= console_level || always_console) && !echoed) {
		/* The console takes the whole line, in one write. */
		const char *pre = prefix(prio);
		struct iovec iov[] = {
		    {(void *)ident, strlen(ident)},
		    {(void *)": ", 2},
		    {(void *)pre, strlen(pre)},
		    {msg, len},
		    {(void *)"\n", 1},
		};
		ssize_t w = writev(STDERR_FILENO, iov, ARRAY_SIZE(iov));
		(void)w; /* nowhere else to report it */
	}
	errno = saved;
}
