/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

/* Writes a record snprintf made (n: its return value), cut to what fit in size; true when
 * written. */
static bool write_record(int fd, const char *line, size_t size, int n)
{
	size_t len = n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
	return len > 0 && write(fd, line, len) > 0;
}

void log_msg(int prio, const char *fmt, ...)
{
	int saved = errno;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* One message is one line: fold any newline a library message carried. */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';

	/* One write(2) per record: /dev/kmsg takes each write as one message (and dprintf's
	 * stdio stream gives up on it, since kmsg refuses the lseek stdio tries first). */
	char line[1200];
	bool echoed = false;
	if (kmsg_fd >= 0 && prio <= kmsg_level &&
	    write_record(kmsg_fd, line, sizeof(line),
			 snprintf(line, sizeof(line), "<%d>%s[%d]: %s%s\n", LOG_DAEMON | prio,
				  ident, (int)getpid(), prefix(prio), msg)))
		echoed = prio < kernel_console_level; /* the kernel prints it on the console */
	if (prio <= console_level && !echoed)
		write_record(STDERR_FILENO, line, sizeof(line),
			     snprintf(line, sizeof(line), "%s: %s%s\n", ident, prefix(prio), msg));
	errno = saved;
}
