/* SPDX-License-Identifier: MIT */
/*
 * Base64 (RFC 4648, standard alphabet, padded), for LUKS2 token fields and binary system
 * credentials. Encoding is nettle's. The decoder is written by hand because nettle's (the only
 * one our libraries export; libcryptsetup's and json-c's are internal) refuses input without its
 * padding, which systemd's own decoder accepts, and it is forty lines. Pure.
 */
#ifndef FACTORY_INIT_BASE64_H
#define FACTORY_INIT_BASE64_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Bytes needed to encode n bytes, without the terminating NUL. */
#define BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/*
 * Decodes in[0..len) into out (at most cap bytes). White space (space, tab, CR, LF) is skipped;
 * padding is optional at the very end. Returns the decoded length, -EINVAL for a malformed input,
 * -ENOBUFS when out is too small. out may hold key material: the caller wipes it.
 */
ssize_t base64_decode(const char *in, size_t len, uint8_t *out, size_t cap);

/* Encodes n bytes into out (BASE64_ENCODED_LEN(n) + 1 bytes, NUL-terminated). Returns the length.
 */
size_t base64_encode(const uint8_t *in, size_t n, char *out);

#endif
