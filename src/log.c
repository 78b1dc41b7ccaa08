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

	bool echoed = false;
	if (kmsg_fd >= 0 && prio <= kmsg_level &&
	    dprintf(kmsg_fd, "<%d>%s[%d]: %s%s\n", LOG_DAEMON | prio, ident, (int)getpid(),
		    prefix(prio), msg) > 0)
		echoed = prio < kernel_console_level; /* the kernel prints it on the console */
	if (prio <= console_level && !echoed)
		dprintf(STDERR_FILENO, "%s: %s%s\n", ident, prefix(prio), msg);
	errno = saved;
}
