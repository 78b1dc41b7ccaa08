/* SPDX-License-Identifier: MIT */
/* Logging to /dev/kmsg (with syslog priorities, so journalctl -b shows it) and to the console. */
#ifndef FACTORY_INIT_LOG_H
#define FACTORY_INIT_LOG_H

#include <stddef.h>
#include <syslog.h>

/* The longest message text log_msg formats; the rest is cut off. */
#define LOG_MSG_MAX 4096
/*
 * /dev/kmsg refuses a record longer than about 1 KiB (the kernel's LOG_LINE_MAX), so a longer
 * message goes to it as several records of at most LOG_KMSG_TEXT_MAX bytes of text each, all
 * with the same "<prio>ident[pid]: " header, the later ones starting with "… " (an ellipsis).
 * The console gets the whole message in one line.
 */
#define LOG_KMSG_TEXT_MAX 900
#define LOG_KMSG_RECORD_MAX 976 /* a whole record: header, marker, text and newline */
#define LOG_SPLIT_SPACE_WINDOW 80

/*
 * Pure: how many bytes of s (len bytes) go into a record that holds at most max: len when it
 * fits, else a cut at a UTF-8 character boundary, just after the last space when one lies in
 * the last LOG_SPLIT_SPACE_WINDOW bytes before the cut. Never 0 when len and max are not.
 */
size_t log_split_len(const char *s, size_t len, size_t max);

/* Opens /dev/kmsg when it can; until then messages go to the console (stderr) only. */
void log_open_kmsg(void);
/*
 * PID 1 only: lifts the kernel's rate limit on /dev/kmsg writers (10 lines per 5 s by default)
 * for stage 1, and puts the previous setting back before stage 2 starts. A printk.devkmsg= on
 * the command line locks the setting; then both are no-ops.
 */
void log_kmsg_unlimit(void);
void log_kmsg_restore(void);
/* Console threshold: LOG_WARNING with quiet, LOG_DEBUG with vm.debug, LOG_INFO otherwise. */
void log_set_console_level(int level);
/* kmsg threshold: LOG_INFO unless vm.debug. */
void log_set_kmsg_level(int level);
/* Adds an identifier prefix (default "factory-init"). */
void log_set_ident(const char *ident);

void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A notice the operator must see (what provisioning made): on the console even with quiet. */
void log_announce(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
