/* SPDX-License-Identifier: MIT */
/* age X25519 identities and their Bech32 text forms: see agekey.h. */
#include "agekey.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <mbedtls/ecp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char CHARSET[] = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";

static uint32_t polymod_step(uint32_t c, uint8_t v)
{
	static const uint32_t gen[5] = {0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3};
	uint8_t top = (uint8_t)(c >> 25);
	c = ((c & 0x1ffffff) << 5) ^ v;
	for (int i = 0; i < 5; i++)
		if ((top >> i) & 1)
			c ^= gen[i];
	return c;
}

/* The checksum state after the hrp's expansion (high bits, a zero, low bits). */
static uint32_t polymod_hrp(const char *hrp)
{
	uint32_t c = 1;
	size_t n = strlen(hrp);
	for (size_t i = 0; i < n; i++)
		c = polymod_step(c, (uint8_t)(hrp[i] >> 5));
	c = polymod_step(c, 0);
	for (size_t i = 0; i < n; i++)
		c = polymod_step(c, (uint8_t)(hrp[i] & 31));
	return c;
}

int bech32_encode(const char *hrp, const uint8_t *data, size_t len, char *out, size_t cap)
{
	size_t hlen = strlen(hrp), groups = (len * 8 + 4) / 5;
	if (cap < hlen + 1 + groups + 6 + 1)
		return -ENOBUFS;
	memcpy(out, hrp, hlen);
	char *p = out + hlen;
	*p++ = '1';
	uint32_t c = polymod_hrp(hrp), acc = 0;
	unsigned bits = 0;
	for (size_t i = 0; i < len; i++) {
		acc = (acc << 8) | data[i];
		bits += 8;
		while (bits >= 5) {
			bits -= 5;
			uint8_t v = (acc >> bits) & 31;
			c = polymod_step(c, v);
			*p++ = CHARSET[v];
		}
	}
	if (bits > 0) {
		uint8_t v = (acc << (5 - bits)) & 31;
		c = polymod_step(c, v);
		*p++ = CHARSET[v];
	}
	for (int i = 0; i < 6; i++)
		c = polymod_step(c, 0);
	c ^= 1;
	for (int i = 0; i < 6; i++)
		*p++ = CHARSET[(c >> (5 * (5 - i))) & 31];
	*p = '\0';
	return (int)(p - out);
}

int bech32_decode(const char *hrp, const char *text, size_t len, uint8_t *data, size_t cap)
{
	size_t hlen = strlen(hrp);
	if (len < hlen + 1 + 6 || text[hlen] != '1')
		return -EINVAL;
	bool upper = false, lower = false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)text[i];
		if (ch < 33 || ch > 126)
			return -EINVAL;
		upper |= isupper(ch) != 0;
		lower |= islower(ch) != 0;
	}
	if (upper && lower)
		return -EINVAL;
	for (size_t i = 0; i < hlen; i++)
		if (tolower((unsigned char)text[i]) != hrp[i])
			return -EINVAL;
	uint32_t c = polymod_hrp(hrp), acc = 0;
	unsigned bits = 0;
	size_t n = 0, ndata = len - hlen - 1 - 6;
	for (size_t i = hlen + 1; i < len; i++) {
		const char *f = strchr(CHARSET, tolower((unsigned char)text[i]));
		if (f == NULL || *f == '\0')
			return -EINVAL;
		uint8_t v = (uint8_t)(f - CHARSET);
		c = polymod_step(c, v);
		if (i - hlen - 1 >= ndata)
			continue; /* checksum characters */
		acc = (acc << 5) | v;
		bits += 5;
		if (bits >= 8) {
			bits -= 8;
			if (n == cap)
				return -EINVAL;
			data[n++] = (uint8_t)(acc >> bits);
		}
	}
	return (c == 1 && bits < 5 && (acc & ((1u << bits) - 1)) == 0) ? (int)n : -EINVAL;
}

int agekey_recipient(const uint8_t scalar[AGEKEY_SIZE], char out[AGEKEY_RECIPIENT_LEN])
{
	mbedtls_ecp_group grp;
	mbedtls_ecp_point q;
	mbedtls_mpi d;
	uint8_t pub[32];
	mbedtls_ecp_group_init(&grp);
	mbedtls_ecp_point_init(&q);
	mbedtls_mpi_init(&d);
	/* X25519 (RFC 7748): the scalar little-endian, clamped, times the base point; u of the
	 * product, little-endian. mbedTLS's Montgomery ladder with its own blinding RNG. */
	int r = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_CURVE25519) ||
			mbedtls_mpi_read_binary_le(&d, scalar, AGEKEY_SIZE) ||
			mbedtls_mpi_set_bit(&d, 0, 0) || mbedtls_mpi_set_bit(&d, 1, 0) ||
			mbedtls_mpi_set_bit(&d, 2, 0) || mbedtls_mpi_set_bit(&d, 255, 0) ||
			mbedtls_mpi_set_bit(&d, 254, 1) ||
			mbedtls_ecp_mul(&grp, &q, &d, &grp.G, NULL, NULL) ||
			mbedtls_mpi_write_binary_le(&q.X, pub, sizeof(pub))
		    ? -EIO
		    : 0;
	mbedtls_mpi_free(&d); /* zeroises */
	mbedtls_ecp_point_free(&q);
	mbedtls_ecp_group_free(&grp);
	if (r == 0)
		(void)bech32_encode("age", pub, sizeof(pub), out, AGEKEY_RECIPIENT_LEN);
	return r;
}

void agekey_secret(const uint8_t scalar[AGEKEY_SIZE], char out[AGEKEY_SECRET_LEN])
{
	(void)bech32_encode("age-secret-key-", scalar, AGEKEY_SIZE, out, AGEKEY_SECRET_LEN);
	for (char *p = out; *p; p++)
		*p = (char)toupper((unsigned char)*p);
}

int agekey_parse_secret(const char *text, size_t len, uint8_t scalar[AGEKEY_SIZE])
{
	uint8_t buf[AGEKEY_SIZE + 1];
	int n = bech32_decode("age-secret-key-", text, len, buf, sizeof(buf));
	int r = n == AGEKEY_SIZE ? 0 : -EINVAL;
	if (r == 0)
		memcpy(scalar, buf, AGEKEY_SIZE);
	explicit_bzero(buf, sizeof(buf));
	return r;
}

int agekey_identity_file(const uint8_t scalar[AGEKEY_SIZE], long long created_unix,
			 struct secret *out, char rcpt[AGEKEY_RECIPIENT_LEN])
{
	if (agekey_recipient(scalar, rcpt) < 0)
		return -EIO;
	char skey[AGEKEY_SECRET_LEN], buf[256], created[32];
	time_t t = (time_t)created_unix;
	struct tm tm;
	if (!gmtime_r(&t, &tm) || !strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm))
		strcpy(created, "1970-01-01T00:00:00Z");
	agekey_secret(scalar, skey);
	int n = snprintf(buf, sizeof(buf), "# created: %s\n# public key: %s\n%s\n", created, rcpt,
			 skey);
	explicit_bzero(skey, sizeof(skey));
	int r = secret_set(out, buf, (size_t)n);
	explicit_bzero(buf, sizeof(buf));
	return r;
}
