/* SPDX-License-Identifier: MIT */
#include "base64.h"

#include <errno.h>
#include <nettle/base64.h>

static int value_of(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
	uint32_t acc = 0;
	unsigned bits = 0, pad = 0;
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
			continue;
		if (c == '=') {
			pad++;
			continue;
		}
		int v = value_of(c);
		if (v < 0 || pad)
			return -EINVAL; /* a foreign byte, or data after padding */
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -ENOBUFS;
			out[n++] = (uint8_t)(acc >> bits);
		}
	}
	/* Leftover bits must be zero padding of a 2- or 3-character tail: 4 or 2 bits. */
	if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0 || pad > 2)
		return -EINVAL;
	if (pad && (bits == 0 || pad != (bits == 4 ? 2u : 1u)))
		return -EINVAL;
	acc = 0;
	return (ssize_t)n;
}

size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
	base64_encode_raw(out, n, in);
	out[BASE64_ENCODED_LEN(n)] = '\0';
	return BASE64_ENCODED_LEN(n);
}
