/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmdline.h"
#include "credentials.h"
#include "util.h"

/* Every warning of a test, one per line; and the secret no warning may ever contain. */
static char warnings[32768];
static unsigned n_warnings;
#define SECRET "S3cr3t-Val"

static void collect(void *ctx, const char *msg)
{
	(void)ctx;
	assert_null(strstr(msg, SECRET));
	size_t used = strlen(warnings);
	snprintf(warnings + used, sizeof(warnings) - used, "%s\n", msg);
	n_warnings++;
}

static int reset(void **state)
{
	(void)state;
	warnings[0] = '\0';
	n_warnings = 0;
	return 0;
}

static void assert_warned(const char *needle)
{
	if (!strstr(warnings, needle))
		fail_msg("no warning containing \"%s\" in:\n%s", needle, warnings);
}

static const char *value_of(const struct credentials *set, const char *name)
{
	const struct credential *c = credentials_find(set, name);
	return c ? c->value.data : NULL;
}

/* Builds a type 11 structure: header (type, length 5, handle, count) and the strings. */
static size_t smbios(uint8_t *buf, size_t cap, uint8_t type, const char *const *strings, size_t n)
{
	size_t o = 0;
	buf[o++] = type;
	buf[o++] = 5;
	buf[o++] = 0x0e;
	buf[o++] = 0x00;
	buf[o++] = (uint8_t)n;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(strings[i]) + 1;
		assert_true(o + l < cap);
		memcpy(buf + o, strings[i], l);
		o += l;
	}
	if (n == 0)
		buf[o++] = '\0';
	buf[o++] = '\0';
	return o;
}

/*
 * A real structure, /sys/firmware/dmi/entries/11-0/raw in a guest of
 *   qemu-system-x86_64 -smbios type=11,value=io.systemd.credential:foo=bar,value=hello-other-oem,
 *     value=io.systemd.credential.binary:bin=AAEC
 *     -smbios type=11,value=io.systemd.credential:vm.hostname=web-1
 * (QEMU 7.2; both -smbios options end up in one structure of four strings.)
 */
static const char qemu_blob_hex[] =
    "0b05000e04696f2e73797374656d642e63726564656e7469616c3a666f6f3d6261720068656c6c6f2d6f746865"
    "722d6f656d00696f2e73797374656d642e63726564656e7469616c2e62696e6172793a62696e3d41414543"
    "00696f2e73797374656d642e63726564656e7469616c3a766d2e686f73746e616d653d7765622d310000";

static size_t unhex(const char *hex, uint8_t *out)
{
	size_t n = strlen(hex) / 2;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
	return n;
}

static void test_names(void **state)
{
	(void)state;
	assert_true(credential_name_valid("foo"));
	assert_true(credential_name_valid("vm.luks.key"));
	assert_true(credential_name_valid("firstboot.locale"));
	assert_true(credential_name_valid("with space"));
	assert_true(credential_name_valid("..."));
	assert_false(credential_name_valid(""));
	assert_false(credential_name_valid("."));
	assert_false(credential_name_valid(".."));
	assert_false(credential_name_valid("a/b"));
	assert_false(credential_name_valid("a:b"));
	assert_false(credential_name_valid("tab\there"));
	assert_false(credential_name_valid("del\x7f"));
	assert_false(credential_name_valid("caf\xc3\xa9"));
	char name[300];
	memset(name, 'a', 255);
	name[255] = '\0';
	assert_true(credential_name_valid(name));
	name[255] = 'a';
	name[256] = '\0';
	assert_false(credential_name_valid(name));
}

static void test_smbios_qemu_blob(void **state)
{
	(void)state;
	uint8_t buf[512];
	size_t len = unhex(qemu_blob_hex, buf);
	struct credentials set = {0};
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), 0);
	assert_int_equal(set.n, 3);
	assert_string_equal(set.items[0].name, "foo");
	assert_string_equal(set.items[0].value.data, "bar");
	assert_int_equal(set.items[0].source, CRED_SOURCE_SMBIOS);
	const struct credential *bin = credentials_find(&set, "bin");
	assert_non_null(bin);
	assert_int_equal(bin->value.len, 3);
	assert_memory_equal(bin->value.data, "\x00\x01\x02", 3);
	assert_string_equal(value_of(&set, "vm.hostname"), "web-1");
	assert_int_equal(n_warnings, 0); /* the foreign OEM string is skipped silently */
	credentials_free(&set);
	assert_int_equal(set.n, 0);
	assert_null(set.items);
}

static void test_smbios_strings(void **state)
{
	(void)state;
	uint8_t buf[1024];
	const char *const one[] = {"io.systemd.credential:motd=hello world"};
	size_t len = smbios(buf, sizeof(buf), 11, one, 1);
	struct credentials set = {0};
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), 0);
	assert_int_equal(set.n, 1);
	assert_string_equal(value_of(&set, "motd"), "hello world");

	const char *const several[] = {
	    "io.systemd.credential:eq=a=b=c",		 /* the value keeps its '=' */
	    "io.systemd.credential:empty=",		 /* an empty value is a value */
	    "io.systemd.credential.binary:blob=" SECRET, /* not Base64 ('-'): skipped */
	    "io.systemd.credential.binary:b64=bWFnaWNiaW5hcnlkYXRh",
	    "io.systemd.credential.binary:b64ws=aGVs bG8=", /* white space is skipped */
	    "io.systemd.credential:noequals",
	    "io.systemd.credential:a/b=" SECRET,
	    "io.systemd.credential:..=" SECRET,
	    "io.systemd.credential:=" SECRET,
	    "io.systemd.credential.binary:bad/name=AAEC",
	    "io.systemd.credentialX:foo=bar", /* not our prefix */
	    "io.systemd.stub.kernel-cmdline-extra=quiet",
	};
	len = smbios(buf, sizeof(buf), 11, several, ARRAY_SIZE(several));
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), 0);
	assert_int_equal(set.n, 5);
	assert_string_equal(value_of(&set, "eq"), "a=b=c");
	assert_string_equal(value_of(&set, "empty"), "");
	assert_int_equal(credentials_find(&set, "empty")->value.len, 0);
	assert_null(credentials_find(&set, "blob"));
	assert_string_equal(value_of(&set, "b64"), "magicbinarydata");
	assert_string_equal(value_of(&set, "b64ws"), "hello");
	assert_warned("credential blob from smbios: value is not valid Base64; ignored");
	assert_warned("SMBIOS OEM string 6: credential lacks '='");
	assert_warned("credential \"a/b\" from smbios: invalid name");
	assert_warned("credential \"..\" from smbios: invalid name");
	assert_warned("credential \"\" from smbios: invalid name");
	assert_warned("credential \"bad/name\" from smbios: invalid name");
	assert_int_equal(n_warnings, 6);
	credentials_free(&set);
}

static void test_smbios_malformed(void **state)
{
	(void)state;
	uint8_t buf[256];
	struct credentials set = {0};
	const char *const s[] = {"io.systemd.credential:a=1", "io.systemd.credential:b=" SECRET};
	size_t len = smbios(buf, sizeof(buf), 11, s, 2);

	/* Wrong type: nothing. */
	buf[0] = 1;
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), -EBADMSG);
	assert_warned("type 1, not 11");
	buf[0] = 11;
	/* A header too short, or a formatted area longer than the data. */
	assert_int_equal(credentials_parse_smbios_raw(buf, 4, &set, collect, NULL), -EBADMSG);
	assert_int_equal(credentials_parse_smbios_raw(NULL, 0, &set, collect, NULL), -EBADMSG);
	buf[1] = 4;
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), -EBADMSG);
	buf[1] = 200;
	assert_int_equal(credentials_parse_smbios_raw(buf, 100, &set, collect, NULL), -EBADMSG);
	assert_int_equal(set.n, 0);
	buf[1] = 5;

	/* No strings at all: the formatted area and two NULs. */
	size_t empty = smbios(buf + 128, 128, 11, NULL, 0);
	assert_int_equal(credentials_parse_smbios_raw(buf + 128, empty, &set, collect, NULL), 0);
	/* Only the header. */
	assert_int_equal(credentials_parse_smbios_raw(buf + 128, 5, &set, collect, NULL), 0);
	assert_int_equal(set.n, 0);

	/* Missing the final NUL of the double NUL: both strings still count. */
	assert_int_equal(credentials_parse_smbios_raw(buf, len - 1, &set, collect, NULL), 0);
	assert_int_equal(set.n, 2);
	credentials_free(&set);

	/* Truncated inside the last string: that one is dropped (it could be a cut-off key). */
	reset(NULL);
	assert_int_equal(credentials_parse_smbios_raw(buf, len - 4, &set, collect, NULL), 0);
	assert_int_equal(set.n, 1);
	assert_string_equal(value_of(&set, "a"), "1");
	assert_warned("SMBIOS OEM string 2 is cut off");
	credentials_free(&set);

	/* Whatever follows the double NUL (the next structure) is not ours. */
	const char after[] = "io.systemd.credential:after=x";
	memcpy(buf + len, after, sizeof(after));
	buf[len + sizeof(after)] = '\0';
	assert_int_equal(
	    credentials_parse_smbios_raw(buf, len + sizeof(after) + 1, &set, collect, NULL), 0);
	assert_int_equal(set.n, 2);
	assert_null(credentials_find(&set, "after"));
	credentials_free(&set);

	/* The string count disagreeing with the strings does not matter. */
	buf[4] = 0;
	assert_int_equal(credentials_parse_smbios_raw(buf, len, &set, collect, NULL), 0);
	assert_int_equal(set.n, 2);
	credentials_free(&set);
}

/* Every prefix and many mutations of real structures: no crash, no leak, sane sets. */
static void test_smbios_fuzz(void **state)
{
	(void)state;
	uint8_t orig[512], buf[512];
	size_t len = unhex(qemu_blob_hex, orig);
	for (size_t cut = 0; cut <= len; cut++) {
		struct credentials set = {0};
		uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees any overread */
		memcpy(copy, orig, cut);
		int r = credentials_parse_smbios_raw(copy, cut, &set, NULL, NULL);
		assert_true(r == 0 || r == -EBADMSG);
		assert_true(set.n <= 3);
		credentials_free(&set);
		free(copy);
	}
	srand(1234);
	for (int round = 0; round < 20000; round++) {
		memcpy(buf, orig, len);
		size_t n = len;
		int edits = 1 + rand() % 6;
		for (int e = 0; e < edits; e++) {
			size_t at = (size_t)rand() % n;
			switch (rand() % 4) {
			case 0:
				buf[at] = (uint8_t)rand();
				break;
			case 1:
				buf[at] = 0;
				break;
			case 2:
				buf[at] = "=:/.A+ "[rand() % 7];
				break;
			default:
				n = at + 1;
				break;
			}
		}
		if (round % 3 == 0)
			buf[0] = 11;
		uint8_t *copy = malloc(n);
		memcpy(copy, buf, n);
		struct credentials set = {0};
		int r = credentials_parse_smbios_raw(copy, n, &set, NULL, NULL);
		assert_true(r == 0 || r == -EBADMSG);
		for (size_t i = 0; i < set.n; i++) {
			assert_true(credential_name_valid(set.items[i].name));
			assert_true(set.items[i].value.len <= CRED_VALUE_MAX);
			assert_int_equal(set.items[i].value.data[set.items[i].value.len], '\0');
		}
		credentials_free(&set);
		free(copy);
	}
	/* And random bytes with a type 11 header. */
	for (int round = 0; round < 20000; round++) {
		size_t n = (size_t)rand() % 64;
		uint8_t *copy = malloc(n ? n : 1);
		for (size_t i = 0; i < n; i++)
			copy[i] = (uint8_t)(rand() % 3 ? "io.systemd.credential:=ab"[rand() % 25]
						       : rand());
		if (n > 1) {
			copy[0] = 11;
			copy[1] = (uint8_t)(rand() % 8);
		}
		struct credentials set = {0};
		int r = credentials_parse_smbios_raw(copy, n, &set, NULL, NULL);
		assert_true(r == 0 || r == -EBADMSG);
		credentials_free(&set);
		free(copy);
	}
}

/* The command line as plan_build hands it over: parsed once. */
static int parse_cmdline_creds(const char *text, struct credentials *set)
{
	struct cmdline c;
	int r = cmdline_parse(text, &c);
	if (r < 0)
		return r;
	r = credentials_parse_cmdline(&c, set, collect, NULL);
	cmdline_free(&c);
	return r;
}

static bool import_enabled(const char *text)
{
	struct cmdline c;
	assert_int_equal(cmdline_parse(text, &c), 0);
	bool on = credentials_import_enabled(&c);
	cmdline_free(&c);
	return on;
}

static void test_cmdline(void **state)
{
	(void)state;
	struct credentials set = {0};
	const char *text = "root=/dev/vda systemd.set_credential=a:b:c=d quiet "
			   "systemd.set_credential=\"motd:hello world\" "
			   "systemd.set-credential=dash:ok "
			   "systemd.set_credential_binary=bin:AAEC "
			   "systemd.set_credential_binary=badbin:" SECRET " "
			   "systemd.set_credential=" SECRET " "
			   "systemd.set_credential "
			   "systemd.set_credential=empty: "
			   "systemd.set_credential=a/b:" SECRET " "
			   "systemd.set_credential=:" SECRET " "
			   "rd.systemd.set_credential=rd:x "
			   "xsystemd.set_credential=other:x "
			   "-- systemd.set_credential=init:x";
	assert_int_equal(parse_cmdline_creds(text, &set), 0);
	assert_int_equal(set.n, 5);
	assert_string_equal(value_of(&set, "a"), "b:c=d");
	assert_string_equal(value_of(&set, "motd"), "hello world");
	assert_string_equal(value_of(&set, "dash"), "ok");
	assert_int_equal(credentials_find(&set, "bin")->value.len, 3);
	assert_memory_equal(value_of(&set, "bin"), "\0\1\2", 3);
	assert_string_equal(value_of(&set, "empty"), "");
	assert_int_equal(credentials_find(&set, "motd")->source, CRED_SOURCE_CMDLINE);
	assert_null(credentials_find(&set, "init"));
	assert_null(credentials_find(&set, "rd"));
	assert_warned("credential badbin from cmdline: value is not valid Base64");
	assert_warned("systemd.set_credential= lacks the ':' between name and value; ignored");
	assert_warned("credential \"a/b\" from cmdline: invalid name");
	assert_warned("credential \"\" from cmdline: invalid name");
	assert_int_equal(n_warnings, 5);
	/* A repeated name: the first one stays, as in systemd. */
	assert_int_equal(parse_cmdline_creds("systemd.set_credential=a:second", &set), 0);
	assert_string_equal(value_of(&set, "a"), "b:c=d");
	assert_warned("credential a from cmdline ignored: already set from cmdline");
	credentials_free(&set);
	/* Nothing to do, or too long a text. */
	assert_int_equal(parse_cmdline_creds("", &set), 0);
	assert_int_equal(set.n, 0);
	char *huge = malloc(CMDLINE_MAX + 2);
	memset(huge, 'x', CMDLINE_MAX + 1);
	huge[CMDLINE_MAX + 1] = '\0';
	assert_int_equal(parse_cmdline_creds(huge, &set), -E2BIG);
	free(huge);
}

static void test_import_enabled(void **state)
{
	(void)state;
	assert_true(import_enabled(""));
	assert_true(import_enabled("quiet"));
	assert_false(import_enabled("systemd.import_credentials=0"));
	assert_false(import_enabled("systemd.import-credentials=no"));
	assert_false(import_enabled("systemd.import_credentials=off"));
	assert_true(import_enabled("systemd.import_credentials=false "
				   "systemd.import_credentials"));
	assert_true(import_enabled("systemd.import_credentials=maybe"));
	assert_false(import_enabled("systemd.import_credentials=0 systemd.import_credentials=x"));
}

static void test_precedence_and_limits(void **state)
{
	(void)state;
	struct credentials set = {0};
	/* Added lowest first: each higher source replaces the value. */
	assert_int_equal(credentials_add(&set, "k", "cmd", 3, CRED_SOURCE_CMDLINE, collect, NULL),
			 1);
	assert_int_equal(credentials_add(&set, "k", "smb", 3, CRED_SOURCE_SMBIOS, collect, NULL),
			 1);
	assert_string_equal(value_of(&set, "k"), "smb");
	assert_warned("credential k from smbios overrides the one from cmdline");
	assert_int_equal(credentials_add(&set, "k", "fwc", 3, CRED_SOURCE_FW_CFG, collect, NULL),
			 1);
	assert_int_equal(credentials_add(&set, "k", "dir", 3, CRED_SOURCE_DIRECTORY, collect, NULL),
			 1);
	assert_string_equal(value_of(&set, "k"), "dir");
	assert_int_equal(credentials_find(&set, "k")->source, CRED_SOURCE_DIRECTORY);
	/* Added highest first: the lower ones are ignored. */
	assert_int_equal(credentials_add(&set, "j", "fwc", 3, CRED_SOURCE_FW_CFG, collect, NULL),
			 1);
	assert_int_equal(credentials_add(&set, "j", "smbios", 6, CRED_SOURCE_SMBIOS, collect, NULL),
			 0);
	assert_int_equal(credentials_add(&set, "j", "cmd", 3, CRED_SOURCE_CMDLINE, collect, NULL),
			 0);
	assert_int_equal(credentials_add(&set, "j", "fw2", 3, CRED_SOURCE_FW_CFG, collect, NULL),
			 0);
	assert_string_equal(value_of(&set, "j"), "fwc");
	assert_warned("credential j from cmdline ignored: already set from fw_cfg");
	assert_int_equal(set.n, 2);
	assert_int_equal(set.total, 6);
	assert_null(credentials_find(&set, "nope"));
	assert_int_equal(
	    credentials_add(&set, "bad/name", "x", 1, CRED_SOURCE_SMBIOS, collect, NULL), -EINVAL);
	credentials_free(&set);

	/* One value: at most 64 KiB. */
	char *big = calloc(1, CRED_VALUE_MAX + 1);
	assert_int_equal(credentials_add(&set, "big", big, CRED_VALUE_MAX + 1, CRED_SOURCE_FW_CFG,
					 collect, NULL),
			 -EFBIG);
	assert_warned("credential big from fw_cfg: value of 65537 bytes is over 65536; ignored");
	/* All values: at most 1 MiB (16 full ones). */
	char name[16];
	for (int i = 0; i < 16; i++) {
		snprintf(name, sizeof(name), "v%d", i);
		assert_int_equal(credentials_add(&set, name, big, CRED_VALUE_MAX,
						 CRED_SOURCE_SMBIOS, collect, NULL),
				 1);
	}
	assert_int_equal(set.total, CRED_TOTAL_MAX);
	assert_int_equal(credentials_add(&set, "v16", "x", 1, CRED_SOURCE_SMBIOS, collect, NULL),
			 -EFBIG);
	/* Replacing one by a higher source is measured against the total less the old value. */
	assert_int_equal(credentials_add(&set, "v0", "x", 1, CRED_SOURCE_FW_CFG, collect, NULL), 1);
	assert_int_equal(set.total, CRED_TOTAL_MAX - CRED_VALUE_MAX + 1);
	assert_int_equal(
	    credentials_add(&set, "v1", big, CRED_VALUE_MAX, CRED_SOURCE_FW_CFG, collect, NULL), 1);
	credentials_free(&set);
	free(big);
	/* At most 64 of them. */
	for (int i = 0; i < CRED_COUNT_MAX; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		assert_int_equal(
		    credentials_add(&set, name, "v", 1, CRED_SOURCE_CMDLINE, collect, NULL), 1);
	}
	assert_int_equal(
	    credentials_add(&set, "one-more", "v", 1, CRED_SOURCE_CMDLINE, collect, NULL), -E2BIG);
	assert_warned("credential one-more from cmdline: more than 64 credentials; ignored");
	/* A higher source can still replace an existing one. */
	assert_int_equal(credentials_add(&set, "n3", "w", 1, CRED_SOURCE_SMBIOS, collect, NULL), 1);
	credentials_free(&set);
}

/* ---- a temporary file tree --------------------------------------------------------------- */

static char tree[PATH_MAX];

static void make_tree(void)
{
	snprintf(tree, sizeof(tree), "%s/cred-test-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	assert_non_null(mkdtemp(tree));
}

static void put(const char *rel, const void *data, size_t len)
{
	char path[PATH_MAX], dir[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", tree, rel);
	snprintf(dir, sizeof(dir), "%s", path);
	*strrchr(dir, '/') = '\0';
	assert_int_equal(make_dirs(dir, 0755), 0);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void put_str(const char *rel, const char *s)
{
	put(rel, s, strlen(s));
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void remove_tree(void)
{
	assert_int_equal(nftw(tree, remove_one, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static void test_read_dir(void **state)
{
	(void)state;
	make_tree();
	char dir[PATH_MAX + 16], path[PATH_MAX + 64];
	snprintf(dir, sizeof(dir), "%s/creds", tree);
	put_str("creds/vm.hostname", "web-1\n");
	put("creds/bin", "\0\1\2", 3);
	put_str("creds/vm.luks.key", SECRET);
	put_str("creds/a:b", SECRET);
	put_str("creds/empty", "");
	char *big = calloc(1, CRED_VALUE_MAX + 1);
	put("creds/big", big, CRED_VALUE_MAX + 1);
	put("creds/max", big, CRED_VALUE_MAX);
	free(big);
	snprintf(path, sizeof(path), "%s/sub", dir);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/link", dir);
	assert_int_equal(symlink("vm.luks.key", path), 0);
	snprintf(path, sizeof(path), "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);

	struct credentials set = {0};
	assert_int_equal(credentials_read_dir(dir, &set, collect, NULL), 0);
	assert_int_equal(set.n, 5);
	assert_string_equal(value_of(&set, "vm.hostname"), "web-1\n");
	assert_string_equal(value_of(&set, "vm.luks.key"), SECRET);
	assert_int_equal(credentials_find(&set, "bin")->value.len, 3);
	assert_string_equal(value_of(&set, "empty"), "");
	assert_int_equal(credentials_find(&set, "max")->value.len, CRED_VALUE_MAX);
	assert_int_equal(credentials_find(&set, "max")->source, CRED_SOURCE_DIRECTORY);
	/* In name order, whatever readdir says. */
	assert_string_equal(set.items[0].name, "bin");
	assert_warned("credential \"a:b\" from directory: invalid name");
	assert_warned("credential big from directory: value is over 65536 bytes; ignored");
	assert_warned("credential sub from directory: not a regular file; ignored");
	assert_warned("credential fifo from directory: not a regular file; ignored");
	assert_warned("credential link from directory: cannot open it");
	assert_int_equal(n_warnings, 5);
	credentials_free(&set);

	/* A missing directory is no credentials; a file where the directory should be fails. */
	snprintf(path, sizeof(path), "%s/none", tree);
	assert_int_equal(credentials_read_dir(path, &set, collect, NULL), 0);
	snprintf(path, sizeof(path), "%s/creds/empty", tree);
	assert_int_equal(credentials_read_dir(path, &set, collect, NULL), -ENOTDIR);
	assert_int_equal(set.n, 0);
	remove_tree();
}

static void test_default_dir(void **state)
{
	(void)state;
	unsetenv("CREDENTIALS_DIRECTORY");
	assert_string_equal(credentials_default_dir(), "/run/credentials/@system");
	setenv("CREDENTIALS_DIRECTORY", "/run/credentials/initrd-foo.service", 1);
	assert_string_equal(credentials_default_dir(), "/run/credentials/initrd-foo.service");
	setenv("CREDENTIALS_DIRECTORY", "relative", 1);
	assert_string_equal(credentials_default_dir(), "/run/credentials/@system");
	unsetenv("CREDENTIALS_DIRECTORY");
}

#define FWCFG "sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/"
#define DMI "sys/firmware/dmi/entries/"

static void test_read_system(void **state)
{
	(void)state;
	make_tree();
	struct credentials set = {0};
	/* An empty tree: no fw_cfg (module not loaded), no DMI. */
	assert_int_equal(credentials_read_system(tree, &set, collect, NULL), 0);
	assert_int_equal(set.n, 0);
	assert_int_equal(n_warnings, 0);

	put_str(FWCFG "fwkey/raw", "from-fw_cfg");
	put_str(FWCFG "fwkey/size", "11\n");
	put_str(FWCFG "shared/raw", "fw_cfg wins");
	put_str(FWCFG "shared/size", "11\n");
	put_str(FWCFG "nosize/raw", "no size file");
	put_str(FWCFG "short/raw", SECRET);
	put_str(FWCFG "short/size", "100\n");
	put_str(FWCFG "huge/size", "999999\n");
	put_str(FWCFG "huge/raw", "x");
	put_str(FWCFG "norawdir/sub/raw", "nested");
	uint8_t buf[512];
	const char *const s0[] = {"io.systemd.credential:shared=smbios loses",
				  "io.systemd.credential:smb=0"};
	put(DMI "11-0/raw", buf, smbios(buf, sizeof(buf), 11, s0, 2));
	const char *const s2[] = {"io.systemd.credential:order=from 11-2"};
	put(DMI "11-2/raw", buf, smbios(buf, sizeof(buf), 11, s2, 1));
	const char *const s10[] = {"io.systemd.credential:order=from 11-10",
				   "io.systemd.credential:smb10=10"};
	put(DMI "11-10/raw", buf, smbios(buf, sizeof(buf), 11, s10, 2));
	const char *const s1[] = {"io.systemd.credential:type1=no"};
	put(DMI "1-0/raw", buf, smbios(buf, sizeof(buf), 1, s1, 1));
	put(DMI "11-x/raw", buf, smbios(buf, sizeof(buf), 11, s1, 1));
	put_str(DMI "11-3/raw", "\x0b"); /* broken */

	/* A trailing '/' on the root is fine. */
	char root[PATH_MAX + 2];
	snprintf(root, sizeof(root), "%s/", tree);
	assert_int_equal(credentials_read_system(root, &set, collect, NULL), 0);
	assert_string_equal(value_of(&set, "fwkey"), "from-fw_cfg");
	assert_int_equal(credentials_find(&set, "fwkey")->source, CRED_SOURCE_FW_CFG);
	assert_string_equal(value_of(&set, "shared"), "fw_cfg wins");
	assert_string_equal(value_of(&set, "nosize"), "no size file");
	assert_null(credentials_find(&set, "short"));
	assert_null(credentials_find(&set, "huge"));
	assert_string_equal(value_of(&set, "smb"), "0");
	assert_int_equal(credentials_find(&set, "smb")->source, CRED_SOURCE_SMBIOS);
	/* 11-2 is read before 11-10, and the first one wins. */
	assert_string_equal(value_of(&set, "order"), "from 11-2");
	assert_string_equal(value_of(&set, "smb10"), "10");
	assert_null(credentials_find(&set, "type1"));
	assert_int_equal(set.n, 6);
	assert_warned("credential short from fw_cfg: read 10 bytes, size says 100; ignored");
	assert_warned("credential huge from fw_cfg: value of 999999 bytes is over 65536; ignored");
	assert_warned("credential norawdir from fw_cfg: no raw file");
	assert_warned("credential shared from smbios ignored: already set from fw_cfg");
	assert_warned("credential order from smbios ignored: already set from smbios");
	assert_warned("SMBIOS structure of 1 bytes is too short");
	assert_int_equal(n_warnings, 6);
	credentials_free(&set);
	remove_tree();
}

static void test_config_layer(void **state)
{
	(void)state;
	struct credentials set = {0};
	const struct {
		const char *name, *value;
	} in[] = {
	    {"vm.hostname", "web-1\n"},
	    {"vm.repo", "https://git.example.org/fleet.git\r\n"},
	    {"vm.note", "caf\xc3\xa9 ok"},
	    {"vm.luks.key", SECRET},
	    {"vm.persist", "LABEL=data"},
	    {"vm.debug", "1"},
	    {"vm.persist.provision", "1\n"},
	    {"vm.persist.provision.pcrs", "7+15"},
	    {"vm.branch", "a..b"},
	    {"vm.bad key", "x"},
	    {"vm.persist.bogus", "x"},
	    {"vm.ctl", "two\nlines"},
	    {"vm.utf", "bad \xff byte"},
	    {"vm.trail", "x\n\n"},
	    {"firstboot.locale", "de_DE.UTF-8"},
	    {"vmnot", "x"},
	};
	for (size_t i = 0; i < ARRAY_SIZE(in); i++)
		assert_int_equal(credentials_add(&set, in[i].name, in[i].value, strlen(in[i].value),
						 CRED_SOURCE_SMBIOS, collect, NULL),
				 1);
	assert_int_equal(
	    credentials_add(&set, "vm.bin", "a\0b", 3, CRED_SOURCE_FW_CFG, collect, NULL), 1);
	char *long_value = malloc(VM_VALUE_MAX + 2);
	memset(long_value, 'a', VM_VALUE_MAX + 1);
	long_value[VM_VALUE_MAX + 1] = '\0';
	assert_int_equal(credentials_add(&set, "vm.long", long_value, VM_VALUE_MAX + 1,
					 CRED_SOURCE_CMDLINE, collect, NULL),
			 1);
	free(long_value);
	assert_int_equal(n_warnings, 0);

	struct json_object *layer = NULL, *control = NULL;
	assert_int_equal(credentials_config_layer(&set, &layer, NULL, collect, NULL), 0);
	assert_non_null(layer);
	assert_int_equal(json_object_object_length(layer), 3);
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "hostname")),
			    "web-1");
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "repo")),
			    "https://git.example.org/fleet.git");
	assert_string_equal(json_object_get_string(json_object_object_get(layer, "note")),
			    "caf\xc3\xa9 ok");
	assert_warned(
	    "credential vm.persist from smbios: credentials cannot set this key; ignored");
	assert_warned("credential vm.debug from smbios: credentials cannot set this key; ignored");
	assert_warned("credential vm.persist.provision from smbios: credentials cannot set this "
		      "key; ignored");
	assert_warned("credential vm.persist.provision.pcrs from smbios: credentials cannot set "
		      "this key; ignored");
	assert_warned("credential vm.branch from smbios: value is not a valid git branch name");
	assert_warned("credential vm.bad key from smbios: key name may hold only");
	assert_warned("credential vm.persist.bogus from smbios: is not a key this version knows");
	assert_warned("credential vm.ctl from smbios: value contains control characters; ignored");
	assert_warned("credential vm.utf from smbios: value is not valid UTF-8; ignored");
	assert_warned("credential vm.trail from smbios: value contains control characters");
	assert_warned("credential vm.bin from fw_cfg: value is binary, not text; ignored");
	assert_warned("credential vm.long from cmdline: value is longer than 1024 bytes; ignored");
	/* Nothing about vm.luks.key, firstboot.locale or vmnot. */
	assert_null(strstr(warnings, "luks"));
	assert_null(strstr(warnings, "firstboot"));
	assert_null(strstr(warnings, "vmnot"));
	assert_int_equal(n_warnings, 12);
	json_object_put(layer);

	/* With a control object, the control and flag keys a credential may set go there (the
	 * provisioning keys); vm.persist and vm.debug are still refused. */
	reset(NULL);
	assert_int_equal(credentials_config_layer(&set, &layer, &control, collect, NULL), 0);
	assert_int_equal(json_object_object_length(layer), 3);
	assert_int_equal(json_object_object_length(control), 2);
	assert_string_equal(
	    json_object_get_string(json_object_object_get(control, "persist.provision")), "1");
	assert_string_equal(
	    json_object_get_string(json_object_object_get(control, "persist.provision.pcrs")),
	    "7+15");
	assert_warned(
	    "credential vm.persist from smbios: credentials cannot set this key; ignored");
	assert_warned("credential vm.debug from smbios: credentials cannot set this key; ignored");
	assert_null(strstr(warnings, "provision"));
	assert_int_equal(n_warnings, 10);
	json_object_put(layer);
	json_object_put(control);

	/* An empty set gives an empty layer. */
	credentials_free(&set);
	assert_int_equal(credentials_config_layer(&set, &layer, NULL, collect, NULL), 0);
	assert_int_equal(json_object_object_length(layer), 0);
	json_object_put(layer);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_names, reset),
	    cmocka_unit_test_setup(test_smbios_qemu_blob, reset),
	    cmocka_unit_test_setup(test_smbios_strings, reset),
	    cmocka_unit_test_setup(test_smbios_malformed, reset),
	    cmocka_unit_test_setup(test_smbios_fuzz, reset),
	    cmocka_unit_test_setup(test_cmdline, reset),
	    cmocka_unit_test_setup(test_import_enabled, reset),
	    cmocka_unit_test_setup(test_precedence_and_limits, reset),
	    cmocka_unit_test_setup(test_read_dir, reset),
	    cmocka_unit_test_setup(test_default_dir, reset),
	    cmocka_unit_test_setup(test_read_system, reset),
	    cmocka_unit_test_setup(test_config_layer, reset),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
