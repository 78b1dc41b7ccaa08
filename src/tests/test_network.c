/* SPDX-License-Identifier: MIT */
/* network.c: vm.network_static in both syntaxes (short and the kernel's ip=), each refusal with
 * its reason, the canonical form's round trip, and the networkd file rendered from it. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <json-c/json.h>
#include <sys/socket.h>

#include "config.h"
#include "network.h"
#include "plan.h"

struct good {
	const char *value;
	const char *address; /* ADDR/PREFIX */
	const char *gateway;
	const char *dns; /* space-separated */
	const char *iface, *hostname, *ntp;
};

static const struct good goods[] = {
    {"10.0.2.50/24,10.0.2.2,10.0.2.3", "10.0.2.50/24", "10.0.2.2", "10.0.2.3", "", "", ""},
    {"10.0.2.50/24,10.0.2.2,10.0.2.3,1.1.1.1,9.9.9.9,eth0", "10.0.2.50/24", "10.0.2.2",
     "10.0.2.3 1.1.1.1 9.9.9.9", "eth0", "", ""},
    {"10.0.2.50/24", "10.0.2.50/24", "", "", "", "", ""},
    {"10.0.2.50/24,,enp1s0", "10.0.2.50/24", "", "", "enp1s0", "", ""},
    {"10.0.2.50/24,eth0", "10.0.2.50/24", "", "", "eth0", "", ""},
    {"192.168.7.1/32", "192.168.7.1/32", "", "", "", "", ""},
    {"10.0.0.1/31,10.0.0.0", "10.0.0.1/31", "10.0.0.0", "", "", "", ""},
    {"2001:db8::5/64,fe80::1,2001:db8::53,eth0", "2001:db8::5/64", "fe80::1", "2001:db8::53",
     "eth0", "", ""},
    {"2001:0db8:0000::0005/64,2001:db8::1", "2001:db8::5/64", "2001:db8::1", "", "", "", ""},
    {"10.0.2.50/24,10.0.2.2,[2001:db8::53]", "10.0.2.50/24", "10.0.2.2", "2001:db8::53", "", "",
     ""},
    /* the kernel's ip= syntax */
    {"10.0.2.50::10.0.2.2:255.255.255.0:web-1:eth0:none:10.0.2.3:1.1.1.1:10.0.2.4", "10.0.2.50/24",
     "10.0.2.2", "10.0.2.3 1.1.1.1", "eth0", "web-1", "10.0.2.4"},
    {"10.0.2.50:10.0.2.9:10.0.2.2:24::ens3:off", "10.0.2.50/24", "10.0.2.2", "", "ens3", "", ""},
    {"10.0.2.50", "10.0.2.50/8", "", "", "", "", ""},			       /* classful: A */
    {"172.16.3.4::172.16.0.1", "172.16.3.4/16", "172.16.0.1", "", "", "", ""}, /* B */
    {"192.168.1.9:::::eth1", "192.168.1.9/24", "", "", "eth1", "", ""},	       /* C */
    {"10.1.2.3::10.1.0.1:255.255.0.0", "10.1.2.3/16", "10.1.0.1", "", "", "", ""},
    {"[2001:db8::5]::[2001:db8::1]:64::ens3:off:[2001:db8::53]", "2001:db8::5/64", "2001:db8::1",
     "2001:db8::53", "ens3", "", ""},
    {"[2001:db8::5]", "2001:db8::5/64", "", "", "", "", ""},
    {"10.0.2.50::10.0.2.2:24:::", "10.0.2.50/24", "10.0.2.2", "", "", "", ""},
};

struct bad {
	const char *value;
	const char *why; /* a part of the reason */
};

static const struct bad bads[] = {
    {"", "is empty"},
    {"10.0.2.50/24, 10.0.2.2", "white space"},
    {"10.0.2.50/24,10.0.2.2\t", "white space"},
    {"10.0.2.50/", "not ADDRESS/PREFIX"},
    {"10.0.2.50/x", "not ADDRESS/PREFIX"},
    {"10.0.2.500/24", "not ADDRESS/PREFIX"},
    {"host/24", "not ADDRESS/PREFIX"},
    {"[2001:db8::5]/64", "not ADDRESS/PREFIX"},
    {"10.0.2.50/0", "must be 1-32"},
    {"10.0.2.50/33", "must be 1-32"},
    {"2001:db8::5/129", "not ADDRESS/PREFIX"},
    {"2001:db8::5/0", "must be 1-128"},
    {"10.0.2.0/24", "network's own address"},
    {"10.0.2.255/24", "broadcast address"},
    {"127.0.0.1/8", "loopback"},
    {"0.0.0.0/8", "0.0.0.0/8"},
    {"224.0.0.5/24", "multicast"},
    {"255.255.255.255/32", "reserved"},
    {"::/64", "unspecified"},
    {"::1/128", "loopback"},
    {"ff02::1/64", "multicast"},
    {"10.0.2.50/24,10.0.3.1", "not inside the address's subnet"},
    {"10.0.2.50/24,10.0.2.50", "the address itself"},
    {"10.0.2.50/24,2001:db8::1", "not of the address's family"},
    {"2001:db8::5/64,10.0.2.2", "not of the address's family"},
    {"10.0.2.50/24,10.0.2.2,1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4", "more than 3 DNS servers"},
    {"10.0.2.50/24,10.0.2.2,1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,eth0", "too many items"},
    {"10.0.2.50/24,10.0.2.2,1.1.1.1,2.2.2.2,3.3.3.3,eth0,x", "too many items"},
    {"10.0.2.50/24,10.0.2.2,1.1.1.1,,eth0", "empty item"},
    {"10.0.2.50/24,10.0.2.2,", "empty item"},
    {"10.0.2.50/24,10.0.2.2,224.0.0.1", "DNS server 224.0.0.1 is a multicast"},
    {"10.0.2.50/24,10.0.2.2,eth*", "not an interface name"},
    {"10.0.2.50/24,10.0.2.2,a-very-long-interface", "not an interface name"},
    {"10.0.2.50/24,10.0.2.2,..", "not an interface name"},
    {"10.0.2.50/24,10.0.2.2,eth/0", "not an interface name"},
    {"10.0.2.50/24,10.0.2.x", "not an interface name"},
    {"10.0.2.50/24,gw,1.1.1.1", "gateway \"gw\" is not"},
    /* the kernel's syntax */
    {"dhcp", "autoconfiguration (dhcp)"},
    {"on", "autoconfiguration (on)"},
    {":::::eth0:dhcp", "autoconfiguration (dhcp)"},
    {"10.0.2.50::10.0.2.2:24::eth0:dhcp6", "autoconfiguration (dhcp6)"},
    {"10.0.2.50::10.0.2.2:24::eth0:static", "must be empty, off or none"},
    {"eth0", "client address \"eth0\""},
    {":10.0.2.1", "client address \"\""},
    {"10.0.2.50::10.0.2.2:255.0.255.0", "not contiguous"},
    {"10.0.2.50::10.0.2.2:255.255.255.0.1", "neither a dotted IPv4 mask"},
    {"10.0.2.50::10.0.2.2:33", "must be 1-32"},
    {"10.0.2.50:nfs:10.0.2.2:24", "server address"},
    {"10.0.2.50::10.0.2.2:24:-bad-:eth0", "host name field"},
    {"10.0.2.50::10.0.2.2:24::eth 0", "white space"},
    {"10.0.2.50::10.0.2.2:24::e*:none", "not an interface name"},
    {"10.0.2.50::10.0.2.2:24::eth0:none:dns", "DNS server \"dns\""},
    {"10.0.2.50::10.0.2.2:24::eth0:none:1.1.1.1:2.2.2.2:ntp", "NTP server \"ntp\""},
    {"10.0.2.50::10.0.2.2:24::eth0:none:1.1.1.1:2.2.2.2:3.3.3.3:x", "more than the 10 fields"},
    {"[2001:db8::5::2001:db8::1", "without its ']'"},
    {"[2001:db8::5]x::", "text after a bracketed address"},
    {"[10.0.2.50]", "client address"},
    {"240.0.0.1", "reserved address"},
};

static void test_good(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(goods) / sizeof(*goods); i++) {
		const struct good *g = &goods[i];
		struct net_static n;
		char why[256] = "", addr[64], dns[256] = "";
		int r = network_static_parse(g->value, &n, why, sizeof(why));
		if (r != 0)
			fail_msg("%s: %s", g->value, why);
		snprintf(addr, sizeof(addr), "%s/%u", n.address, n.prefix);
		for (size_t d = 0, o = 0; d < n.n_dns; d++)
			o += (size_t)snprintf(dns + o, sizeof(dns) - o, "%s%s", d ? " " : "",
					      n.dns[d]);
		assert_string_equal(addr, g->address);
		assert_string_equal(n.gateway, g->gateway);
		assert_string_equal(dns, g->dns);
		assert_string_equal(n.interface, g->iface);
		assert_string_equal(n.hostname, g->hostname);
		assert_string_equal(n.ntp, g->ntp);
		assert_int_equal(n.kernel_syntax, strchr(g->value, '/') == NULL);
		/* The canonical short form parses back to the same fields (but the ip= extras). */
		char canon[256];
		struct net_static again;
		network_static_format(&n, canon, sizeof(canon));
		assert_int_equal(network_static_parse(canon, &again, why, sizeof(why)), 0);
		assert_string_equal(again.address, n.address);
		assert_int_equal(again.prefix, n.prefix);
		assert_string_equal(again.gateway, n.gateway);
		assert_int_equal(again.n_dns, n.n_dns);
		assert_string_equal(again.interface, n.interface);
		/* The planner takes it as a config value, and warns about nothing. */
		char cmd[512];
		struct plan p;
		snprintf(cmd, sizeof(cmd), "vm.network_static=%s", g->value);
		assert_int_equal(plan_build(cmd, NULL, &p), 0);
		assert_int_equal(p.n_warnings, 0);
		plan_free(&p);
	}
}

static void test_bad(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(bads) / sizeof(*bads); i++) {
		struct net_static n;
		char why[256] = "";
		memset(&n, 0x55, sizeof(n));
		if (network_static_parse(bads[i].value, &n, why, sizeof(why)) != -EINVAL)
			fail_msg("accepted: %s", bads[i].value);
		if (!strstr(why, bads[i].why))
			fail_msg("%s: reason \"%s\" lacks \"%s\"", bads[i].value, why, bads[i].why);
		/* Nothing half-parsed is left. */
		assert_int_equal(n.family, 0);
		assert_string_equal(n.address, "");
		/* The planner names it in one warning and keeps DHCP (no config value). */
		if (strpbrk(bads[i].value, " \t") || !*bads[i].value)
			continue; /* white space splits the command line word */
		char cmd[512];
		struct plan p;
		snprintf(cmd, sizeof(cmd), "vm.network_static=%s", bads[i].value);
		assert_int_equal(plan_build(cmd, NULL, &p), 0);
		assert_int_equal(p.n_warnings, 1);
		assert_non_null(strstr(p.warnings[0], "vm.network_static="));
		assert_non_null(strstr(p.warnings[0], "; ignored"));
		assert_false(json_object_object_get_ex(p.config_cmdline, "network_static", NULL));
		plan_free(&p);
	}
}

/* The embedded config is checked the same way. */
static void test_embedded(void **state)
{
	(void)state;
	struct plan p;
	assert_int_equal(plan_build(NULL, "{\"network_static\": \"10.0.2.50/24,10.0.3.1\"}", &p),
			 0);
	assert_int_equal(p.n_warnings, 1);
	assert_non_null(strstr(p.warnings[0], "not inside the address's subnet"));
	plan_free(&p);
	assert_int_equal(plan_build(NULL, "{\"network_static\": \"10.0.2.50/24,10.0.2.2\"}", &p),
			 0);
	assert_int_equal(p.n_warnings, 0);
	plan_free(&p);
}

static void test_render(void **state)
{
	(void)state;
	struct net_static n;
	char why[256], text[2048];
	assert_int_equal(network_static_parse("10.0.2.50/24,10.0.2.2,10.0.2.3,1.1.1.1,eth0", &n,
					      why, sizeof(why)),
			 0);
	int len = network_render_networkd(&n, text, sizeof(text));
	assert_true(len > 0);
	assert_int_equal((size_t)len, strlen(text));
	assert_string_equal(
	    text, "# Written by factory-init from vm.network_static "
		  "(10.0.2.50/24,10.0.2.2,10.0.2.3,1.1.1.1,eth0).\n"
		  "# A file of this name in /etc/systemd/network masks it (see factory-init(8)).\n"
		  "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.50/24\nGateway=10.0.2.2\n"
		  "DNS=10.0.2.3\nDNS=1.1.1.1\nDHCP=no\n");

	/* No interface: every physical Ethernet one; NTP from the ip= form; no gateway. */
	assert_int_equal(
	    network_static_parse("[2001:db8::5]:::64::::::[2001:db8::123]", &n, why, sizeof(why)),
	    0);
	assert_true(network_render_networkd(&n, text, sizeof(text)) > 0);
	assert_non_null(strstr(text, "[Match]\n# every physical Ethernet interface"));
	assert_non_null(strstr(text, "Type=ether\nKind=!*\n"));
	assert_non_null(strstr(text, "Address=2001:db8::5/64\nNTP=2001:db8::123\nDHCP=no\n"));
	assert_null(strstr(text, "Gateway="));

	/* Too small a buffer says so and never overruns. */
	char small[64];
	memset(small, 'x', sizeof(small));
	assert_int_equal(network_render_networkd(&n, small, 40), -ENOBUFS);
	assert_int_equal(small[40], 'x');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_good),
	    cmocka_unit_test(test_bad),
	    cmocka_unit_test(test_embedded),
	    cmocka_unit_test(test_render),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
