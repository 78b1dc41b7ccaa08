/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

void secret_free(struct secret *s)
{
	if (!s->data)
		return;
	explicit_bzero(s->data, s->len + 1);
	munlock(s->data, s->len + 1);
	free(s->data);
	s->data = NULL;
	s->len = 0;
}

int secret_set(struct secret *s, const void *data, size_t len)
{
	secret_free(s);
	s->data = malloc(len + 1);
	if (!s->data)
		return -ENOMEM;
	/* Best effort: an initrd has no swap, but helper mode may run where there is. */
	(void)mlock(s->data, len + 1);
	memcpy(s->data, data, len);
	s->data[len] = '\0';
	s->len = len;
	return 0;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int strscpy(char *dst, const char *src, size_t size)
{
	size_t n = strnlen(src, size);
	if (n == size) {
		if (size)
			dst[0] = '\0';
		return -ENAMETOOLONG;
	}
	memcpy(dst, src, n + 1);
	return 0;
}

bool str_has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool is_control_char(char c)
{
	return (unsigned char)c < 0x20 || c == 0x7f;
}

bool has_control_chars(const char *s)
{
	for (; *s; s++)
		if (is_control_char(*s))
			return true;
	return false;
}

void free_wiped(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

/* Fills out with n characters [A-Za-z0-9] for a temporary name nobody can guess. */
int hex_digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

ssize_t hex_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
	if (len % 2)
		return -EINVAL;
	if (len / 2 > cap)
		return -ENOBUFS;
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_digit_value(s[i]), lo = hex_digit_value(s[i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	return (ssize_t)(len / 2);
}

void hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}
