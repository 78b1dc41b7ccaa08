/* SPDX-License-Identifier: MIT */
/*
 * vm.network_static: a static address for stage 2's first boot, before the VM's own
 * configuration is pulled. Parsed (two syntaxes) and rendered as a systemd-networkd .network
 * file. Pure: inet_pton/inet_ntop and string work only, nothing here touches the system.
 */
#ifndef FACTORY_INIT_NETWORK_H
#define FACTORY_INIT_NETWORK_H

#include <stdbool.h>
#include <stddef.h>

#define NET_ADDR_MAX 46 /* INET6_ADDRSTRLEN */
#define NET_IFNAME_MAX 16
#define NET_MAX_DNS 3 /* as resolv.conf's MAXNS */

/* Where stage 1 writes it: networkd reads /run/systemd/network; a file of the same name in
 * /etc/systemd/network masks it, and a file that sorts before it wins the interface. */
#define NETWORK_FILE_DIR "/run/systemd/network"
#define NETWORK_FILE_NAME "10-factory-init-static.network"

struct net_static {
	int family;		    /* AF_INET or AF_INET6 */
	char address[NET_ADDR_MAX]; /* canonical text (inet_ntop) */
	unsigned prefix;
	char gateway[NET_ADDR_MAX]; /* "" for none (no default route) */
	char dns[NET_MAX_DNS][NET_ADDR_MAX];
	size_t n_dns;
	char ntp[NET_ADDR_MAX];		/* the ip= form's ntp0, "" for none */
	char interface[NET_IFNAME_MAX]; /* "" for every physical Ethernet interface */
	char hostname[254];		/* the ip= form's host name field, "" for none */
	bool kernel_syntax;		/* given in the kernel's ip= syntax */
};

/*
 * Parses a vm.network_static value:
 *   short form  ADDR/PREFIX[,GW[,DNS...][,IFACE]]  (GW may be empty: no default route; the last
 *               item is IFACE when it is not an address; at most 3 DNS servers)
 *   ip= form    CLIENT:[SERVER]:[GW]:[NETMASK]:[HOSTNAME]:[DEVICE]:[AUTOCONF][:DNS0[:DNS1[:NTP0]]]
 *               as the kernel's ip= (Documentation/admin-guide/nfs/nfsroot.rst), IPv6 addresses
 *               in brackets; AUTOCONF must be empty, off or none (a static address); NETMASK is
 *               dotted (IPv4) or a prefix length, and when empty IPv4 takes its classful mask
 *               as the kernel does, IPv6 64; SERVER is read and not used.
 * The form with a '/' is the short one. Returns 0, or -EINVAL with a reason in why (which may
 * quote a part of the value: it is no secret).
 */
int network_static_parse(const char *value, struct net_static *out, char *why, size_t why_len);

/* The short form of a parsed value, canonical (what the status and the file's comment show). */
void network_static_format(const struct net_static *n, char *out, size_t out_len);

/*
 * The systemd-networkd .network file for it, rendered from the parsed fields only (never the
 * text as given). Returns its length, or -ENOBUFS when out is too small.
 */
int network_render_networkd(const struct net_static *n, char *out, size_t out_len);

#endif
