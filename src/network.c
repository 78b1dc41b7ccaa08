/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "network.h"
#include "config.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* An address in binary, with its family. */
struct addr {
	int family;
	uint8_t b[16];
};

static int fail(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* text[0..len) as value_preview shows it: short, control characters escaped. */
struct shown {
	char s[96];
};
static struct shown pv(const char *text, size_t len)
{
	struct shown out;
	char buf[64];
	size_t n = len < sizeof(buf) - 1 ? len : sizeof(buf) - 1;
	memcpy(buf, text, n);
	buf[n] = '\0';
	value_preview(buf, out.s, sizeof(out.s));
	return out;
}

/* Parses an address from text[0..len) (brackets around an IPv6 one allowed when bracketed). */
static bool parse_addr(const char *text, size_t len, bool bracketed, struct addr *a)
{
	char buf[NET_ADDR_MAX + 2];
	if (bracketed && len >= 2 && text[0] == '[' && text[len - 1] == ']') {
		text++;
		len -= 2;
		if (!memchr(text, ':', len))
			return false; /* brackets are for IPv6 only */
	}
	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';
	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, buf, a->b) == 1) {
		a->family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, buf, a->b) == 1) {
		a->family = AF_INET6;
		return true;
	}
	return false;
}

static void addr_text(const struct addr *a, char out[NET_ADDR_MAX])
{
	if (!inet_ntop(a->family, a->b, out, NET_ADDR_MAX))
		out[0] = '\0';
}

static size_t addr_bits(const struct addr *a)
{
	return a->family == AF_INET ? 32 : 128;
}

static bool addr_bit(const struct addr *a, size_t i)
{
	return (a->b[i / 8] >> (7 - i % 8)) & 1;
}

/* True when a and b agree on their first prefix bits. */
static bool same_prefix(const struct addr *a, const struct addr *b, unsigned prefix)
{
	for (size_t i = 0; i < prefix; i++)
		if (addr_bit(a, i) != addr_bit(b, i))
			return false;
	return true;
}

/* Why a is no unicast address a host or server can have, or NULL. */
static const char *not_unicast(const struct addr *a)
{
	if (a->family == AF_INET) {
		if (a->b[0] == 0)
			return "is in 0.0.0.0/8 (this network)";
		if (a->b[0] == 127)
			return "is a loopback address";
		if (a->b[0] >= 224)
			return a->b[0] < 240 ? "is a multicast address" : "is a reserved address";
		return NULL;
	}
	static const uint8_t zero[16], loop[16] = {[15] = 1};
	if (memcmp(a->b, zero, 16) == 0)
		return "is the unspecified address";
	if (memcmp(a->b, loop, 16) == 0)
		return "is the loopback address";
	if (a->b[0] == 0xff)
		return "is a multicast address";
	return NULL;
}

static bool is_link_local6(const struct addr *a)
{
	return a->family == AF_INET6 && a->b[0] == 0xfe && (a->b[1] & 0xc0) == 0x80;
}

/* A whole number from text[0..len), at most max; -1 when it is not one. */
static long parse_uint(const char *text, size_t len, long max)
{
	if (len == 0 || len > 5)
		return -1;
	long v = 0;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)text[i]))
			return -1;
		v = v * 10 + (text[i] - '0');
	}
	return v <= max ? v : -1;
}

/*
 * An interface name the kernel allows and networkd's Name= matches literally (no globs), that
 * starts with a letter (as every name udev gives does), so a mistyped address is never taken
 * for one.
 */
static bool iface_valid(const char *s, size_t len)
{
	if (len == 0 || len >= NET_IFNAME_MAX || !isalpha((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
			return false;
	return true;
}

/* Checks the address and the prefix together: a host address inside its subnet. */
static int check_host(const struct addr *a, unsigned prefix, const char *text, char *why,
		      size_t why_len)
{
	const char *bad = not_unicast(a);
	if (bad)
		return fail(why, why_len, "address %s %s", pv(text, strlen(text)).s, bad);
	if (prefix < 1 || prefix > addr_bits(a))
		return fail(why, why_len, "the prefix length of %s must be 1-%zu",
			    pv(text, strlen(text)).s, addr_bits(a));
	if (a->family == AF_INET && prefix <= 30) {
		bool zeros = true, ones = true;
		for (size_t i = prefix; i < 32; i++) {
			zeros = zeros && !addr_bit(a, i);
			ones = ones && addr_bit(a, i);
		}
		if (zeros || ones)
			return fail(why, why_len, "address %s/%u is the network's %s address",
				    pv(text, strlen(text)).s, prefix, zeros ? "own" : "broadcast");
	}
	return 0;
}

/* Parses and checks a gateway for the address a/prefix into out. */
static int take_gateway(const struct addr *a, unsigned prefix, const char *text, size_t len,
			char out[NET_ADDR_MAX], char *why, size_t why_len)
{
	struct addr gw;
	if (!parse_addr(text, len, true, &gw))
		return fail(why, why_len, "gateway \"%s\" is not an IPv4 or IPv6 address",
			    pv(text, len).s);
	if (gw.family != a->family)
		return fail(why, why_len, "gateway %s is not of the address's family",
			    pv(text, len).s);
	const char *bad = not_unicast(&gw);
	if (bad)
		return fail(why, why_len, "gateway %s %s", pv(text, len).s, bad);
	if (memcmp(gw.b, a->b, 16) == 0)
		return fail(why, why_len, "gateway %s is the address itself", pv(text, len).s);
	if (!same_prefix(a, &gw, prefix) && !is_link_local6(&gw))
		return fail(why, why_len,
			    "gateway %s is not inside the address's subnet (nor IPv6 link-local)",
			    pv(text, len).s);
	addr_text(&gw, out);
	return 0;
}

/* Parses and checks a server's address (DNS, NTP) into dst. */
static int take_server(char dst[NET_ADDR_MAX], const char *text, size_t len, const char *what,
		       char *why, size_t why_len)
{
	struct addr s;
	if (!parse_addr(text, len, true, &s))
		return fail(why, why_len, "%s \"%s\" is not an IPv4 or IPv6 address", what,
			    pv(text, len).s);
	const char *bad = not_unicast(&s);
	if (bad)
		return fail(why, why_len, "%s %s %s", what, pv(text, len).s, bad);
	addr_text(&s, dst);
	return 0;
}

static int take_iface(struct net_static *n, const char *text, size_t len, const char *what,
		      char *why, size_t why_len)
{
	if (!iface_valid(text, len))
		return fail(why, why_len,
			    "%s \"%s\" is not an interface name (1-15 letters, digits, '_', '.', "
			    "'-', a letter first)",
			    what, pv(text, len).s);
	memcpy(n->interface, text, len);
	n->interface[len] = '\0';
	return 0;
}

/* ADDR/PREFIX[,GW[,DNS...][,IFACE]] */
static int parse_short(const char *v, struct net_static *n, char *why, size_t why_len)
{
	const char *items[2 + NET_MAX_DNS + 1];
	size_t lens[ARRAY_SIZE(items)], k = 0;
	for (const char *p = v;; p += lens[k++] + 1) {
		if (k == ARRAY_SIZE(items))
			return fail(why, why_len,
				    "has too many items (ADDR/PREFIX, GW, 3 DNS servers, IFACE)");
		items[k] = p;
		lens[k] = strcspn(p, ",");
		if (!p[lens[k]]) {
			k++;
			break;
		}
	}
	/* The last item is the interface when it is not an address. */
	struct addr a;
	int r;
	if (k >= 2 && lens[k - 1] > 0 && !parse_addr(items[k - 1], lens[k - 1], true, &a)) {
		if ((r = take_iface(n, items[k - 1], lens[k - 1],
				    "the last item is neither an address nor an interface:", why,
				    why_len)) < 0)
			return r;
		k--;
	}
	if (k > 2 + NET_MAX_DNS)
		return fail(why, why_len, "names more than %d DNS servers", NET_MAX_DNS);

	const char *slash = memchr(items[0], '/', lens[0]);
	size_t alen = slash ? (size_t)(slash - items[0]) : 0;
	long prefix = slash ? parse_uint(slash + 1, lens[0] - alen - 1, 128) : -1;
	if (prefix < 0 || !parse_addr(items[0], alen, false, &a))
		return fail(why, why_len,
			    "\"%s\" is not ADDRESS/PREFIX (an IPv4 or IPv6 address, a prefix "
			    "length)",
			    pv(items[0], lens[0]).s);
	n->family = a.family;
	n->prefix = (unsigned)prefix;
	if ((r = check_host(&a, n->prefix, pv(items[0], alen).s, why, why_len)) < 0)
		return r;
	addr_text(&a, n->address);
	if (k >= 2 && lens[1] > 0 &&
	    (r = take_gateway(&a, n->prefix, items[1], lens[1], n->gateway, why, why_len)) < 0)
		return r;
	for (size_t i = 2; i < k; i++) {
		if (lens[i] == 0)
			return fail(why, why_len, "has an empty item (only GW may be empty)");
		if ((r = take_server(n->dns[n->n_dns], items[i], lens[i], "DNS server", why,
				     why_len)) < 0)
			return r;
		n->n_dns++;
	}
	return 0;
}

/* A dotted IPv4 netmask as a prefix length, or -1 when its ones are not contiguous. */
static long mask_prefix(const struct addr *m)
{
	long prefix = 0;
	bool seen_zero = false;
	for (size_t i = 0; i < 32; i++) {
		if (!addr_bit(m, i))
			seen_zero = true;
		else if (seen_zero)
			return -1;
		else
			prefix++;
	}
	return prefix;
}

static bool field_is(const char *text, size_t len, const char *word)
{
	return strlen(word) == len && strncmp(text, word, len) == 0;
}

/* CLIENT:[SERVER]:[GW]:[NETMASK]:[HOSTNAME]:[DEVICE]:[AUTOCONF][:DNS0[:DNS1[:NTP0]]] */
static int parse_kernel(const char *v, struct net_static *n, char *why, size_t why_len)
{
	enum { CLIENT, SERVER, GW, NETMASK, HOST, DEVICE, AUTOCONF, DNS0, DNS1, NTP0, N_FIELDS };
	const char *f[N_FIELDS];
	size_t len[N_FIELDS], k = 0;
	int r;
	n->kernel_syntax = true;
	for (const char *p = v;; k++) {
		if (k == N_FIELDS)
			return fail(why, why_len,
				    "has more than the 10 fields of the kernel's ip= syntax");
		const char *end = p + strcspn(p, ":");
		if (*p == '[') {
			if (!(end = strchr(p, ']')))
				return fail(why, why_len, "has a '[' without its ']'");
			end++;
			if (*end && *end != ':')
				return fail(why, why_len,
					    "has text after a bracketed address: \"%s\"",
					    pv(end, strlen(end)).s);
		}
		f[k] = p;
		len[k] = (size_t)(end - p);
		if (!*end) {
			k++;
			break;
		}
		p = end + 1;
	}
	for (size_t i = k; i < N_FIELDS; i++) {
		f[i] = "";
		len[i] = 0;
	}
	static const char *const auto_words[] = {"dhcp",  "on",	  "any",  "dhcp6", "auto6",
						 "bootp", "rarp", "both", "link6", "ibft"};
	for (size_t i = 0; i < ARRAY_SIZE(auto_words); i++)
		if (field_is(f[AUTOCONF], len[AUTOCONF], auto_words[i]) ||
		    (k == 1 && field_is(f[CLIENT], len[CLIENT], auto_words[i])))
			return fail(why, why_len,
				    "asks for autoconfiguration (%s), not a static address; DHCP "
				    "is the default without vm.network_static",
				    auto_words[i]);
	if (len[AUTOCONF] && !field_is(f[AUTOCONF], len[AUTOCONF], "off") &&
	    !field_is(f[AUTOCONF], len[AUTOCONF], "none"))
		return fail(why, why_len,
			    "autoconfiguration field \"%s\" must be empty, off or none for a "
			    "static address",
			    pv(f[AUTOCONF], len[AUTOCONF]).s);
	struct addr a;
	if (!parse_addr(f[CLIENT], len[CLIENT], true, &a))
		return fail(why, why_len,
			    "client address \"%s\" is not an IPv4 or IPv6 address (IPv6 in "
			    "brackets)",
			    pv(f[CLIENT], len[CLIENT]).s);
	n->family = a.family;
	/* The netmask: dotted or a prefix length; empty: classful (IPv4), 64 (IPv6). */
	long prefix;
	struct addr m;
	if (!len[NETMASK])
		prefix = a.family == AF_INET6 ? 64 : a.b[0] < 128 ? 8 : a.b[0] < 192 ? 16 : 24;
	else if ((prefix = parse_uint(f[NETMASK], len[NETMASK], 128)) < 0 && a.family == AF_INET &&
		 parse_addr(f[NETMASK], len[NETMASK], false, &m) && m.family == AF_INET &&
		 (prefix = mask_prefix(&m)) < 0)
		return fail(why, why_len, "netmask %s is not contiguous",
			    pv(f[NETMASK], len[NETMASK]).s);
	if (prefix < 0)
		return fail(why, why_len,
			    "netmask \"%s\" is neither a dotted IPv4 mask nor a prefix length",
			    pv(f[NETMASK], len[NETMASK]).s);
	n->prefix = (unsigned)prefix;
	if ((r = check_host(&a, n->prefix, pv(f[CLIENT], len[CLIENT]).s, why, why_len)) < 0)
		return r;
	addr_text(&a, n->address);
	if (len[GW] &&
	    (r = take_gateway(&a, n->prefix, f[GW], len[GW], n->gateway, why, why_len)) < 0)
		return r;
	if (len[SERVER] && !parse_addr(f[SERVER], len[SERVER], true, &m))
		return fail(why, why_len, "server address \"%s\" is not an IPv4 or IPv6 address",
			    pv(f[SERVER], len[SERVER]).s);
	if (len[HOST]) {
		if (len[HOST] < sizeof(n->hostname)) {
			memcpy(n->hostname, f[HOST], len[HOST]);
			n->hostname[len[HOST]] = '\0';
		}
		if (len[HOST] >= sizeof(n->hostname) || !hostname_is_valid(n->hostname))
			return fail(why, why_len,
				    "host name field \"%s\" is not a valid RFC 1123 host name",
				    pv(f[HOST], len[HOST]).s);
	}
	if (len[DEVICE] && (r = take_iface(n, f[DEVICE], len[DEVICE], "device", why, why_len)) < 0)
		return r;
	for (size_t i = DNS0; i <= DNS1; i++) {
		if (!len[i])
			continue;
		if ((r = take_server(n->dns[n->n_dns], f[i], len[i], "DNS server", why, why_len)) <
		    0)
			return r;
		n->n_dns++;
	}
	if (len[NTP0] &&
	    (r = take_server(n->ntp, f[NTP0], len[NTP0], "NTP server", why, why_len)) < 0)
		return r;
	return 0;
}

int network_static_parse(const char *value, struct net_static *out, char *why, size_t why_len)
{
	memset(out, 0, sizeof(*out));
	if (!*value)
		return fail(why, why_len, "is empty");
	for (const char *p = value; *p; p++)
		if (isspace((unsigned char)*p) || is_control_char(*p))
			return fail(why, why_len, "must not contain white space");
	int r = strchr(value, '/') ? parse_short(value, out, why, why_len)
				   : parse_kernel(value, out, why, why_len);
	if (r < 0)
		memset(out, 0, sizeof(*out));
	return r;
}

void network_static_format(const struct net_static *n, char *out, size_t out_len)
{
	size_t o = (size_t)snprintf(out, out_len, "%s/%u,%s", n->address, n->prefix, n->gateway);
	for (size_t i = 0; i < n->n_dns && o < out_len; i++)
		o += (size_t)snprintf(out + o, out_len - o, ",%s", n->dns[i]);
	if (*n->interface && o < out_len)
		snprintf(out + o, out_len - o, ",%s", n->interface);
}

int network_render_networkd(const struct net_static *n, char *out, size_t out_len)
{
	char shown[256];
	network_static_format(n, shown, sizeof(shown));
	size_t o = 0;
#define PUT(...)                                                                                   \
	do {                                                                                       \
		int w_ = snprintf(out + o, o < out_len ? out_len - o : 0, __VA_ARGS__);            \
		if (w_ < 0)                                                                        \
			return -ENOBUFS;                                                           \
		o += (size_t)w_;                                                                   \
	} while (0)
	PUT("# Written by factory-init from vm.network_static (%s).\n"
	    "# A file of this name in /etc/systemd/network masks it (see factory-init(8)).\n"
	    "[Match]\n",
	    shown);
	if (*n->interface)
		PUT("Name=%s\n", n->interface);
	else
		PUT("# every physical Ethernet interface: name one (IFACE) when the VM has more\n"
		    "Type=ether\nKind=!*\n");
	PUT("\n[Network]\nAddress=%s/%u\n", n->address, n->prefix);
	if (*n->gateway)
		PUT("Gateway=%s\n", n->gateway);
	for (size_t i = 0; i < n->n_dns; i++)
		PUT("DNS=%s\n", n->dns[i]);
	if (*n->ntp)
		PUT("NTP=%s\n", n->ntp);
	PUT("DHCP=no\n");
#undef PUT
	if (o >= out_len)
		return -ENOBUFS;
	return (int)o;
}
