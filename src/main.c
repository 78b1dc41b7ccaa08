/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "agekey.h"
#include "enroll.h"
#include "log.h"
#include "modules.h"
#include "plan.h"
#include "seed.h"
#include "stage1.h"
#include "statusview.h"
#include "beneath.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fputs("Usage: factory-init                     (as /init, PID 1, in an initrd)\n"
	      "       factory-init --plan [--cmdline TEXT] [--config FILE] [--kmoddir DIR]\n"
	      "       factory-init --root=DIR [--cmdline TEXT] [--config FILE]\n"
	      "       factory-init enroll-tpm2 DEVICE [--pcrs=LIST] [--tpm2-device=SPEC]\n"
	      "       factory-init tpm2-check DEVICE [TPM2-DEVICE]\n"
	      "       factory-init status [--json] [FILE]\n"
	      "       factory-init age-keygen [-o FILE] | -y [FILE]\n"
	      "\n"
	      "Stage 1 of a factory VM: finds the data disk, unlocks LUKS2, mounts Btrfs on\n"
	      "/persist, lays an overlay over /nix, writes the vm.* config for stage 2 and\n"
	      "switches root. Any failure to reach /persist boots the factory store instead.\n"
	      "\n"
	      "  --plan          print the plan resolved from the command line and config,\n"
	      "                  as JSON, without touching the system\n"
	      "  --kmoddir DIR   with --plan: the modules for the kernel whose\n"
	      "                  lib/modules/KVER is DIR (built-in and absent ones are\n"
	      "                  skipped, one line each on stderr)\n"
	      "  --root=DIR      helper mode, inside another stage 1: only /persist, /nix and\n"
	      "                  the config, under DIR (which already holds the factory root)\n"
	      "  --cmdline TEXT  a kernel command line to use instead of /proc/cmdline\n"
	      "  --config FILE   the embedded config (default " EMBEDDED_CONFIG_PATH ")\n"
	      "  -h, --help      this text\n"
	      "  --version       print the version\n"
	      "  enroll-tpm2     seal a new key to the TPM2 as a systemd-tpm2 token\n"
	      "  tpm2-check      can the TPM2 unseal DEVICE's tokens now? (0: yes)\n"
	      "  copy-store      copy a store tree as vm.store=bind does (SRC DST)\n"
	      "  status          what stage 1 did this boot (" STATUS_FILE "):\n"
	      "                  exit 0 persist, 1 fallback, 3 no record\n"
	      "  age-keygen      a new age X25519 identity, as age-keygen writes it (-o FILE:\n"
	      "                  0600, never over an existing file); -y: its recipient\n"
	      "                  (factory-init enroll-tpm2 --help)\n"
	      "\n"
	      "Kernel command line: root= rootfstype= rootflags= ro rw rootwait[=N] init= panic= "
	      "quiet\n"
	      "  vm.persist=auto|/dev/X|LABEL=|UUID=|PARTUUID=|PARTLABEL=  (default auto)\n"
	      "  vm.persist.timeout=SECONDS (default 10)  vm.persist.options=BTRFS-OPTIONS\n"
	      "  vm.persist.encrypted=auto|yes|no (auto: LUKS2 required under vm.persist=auto)\n"
	      "  vm.persist.opened=/dev/mapper/NAME (opened by systemd-cryptsetup: mount it)\n"
	      "  vm.persist.provision[=1|0] (make the one blank data disk /persist; off;\n"
	      "    a credential may set it and .pcrs too)\n"
	      "  vm.persist.provision.pcrs=LIST (its TPM2 token's PCRs; 7+15:sha256=0...)\n"
	      "  vm.store=overlay|bind|off  vm.luks.key=KEY  vm.luks.keyfile=PATH  vm.debug\n"
	      "  vm.luks=tpm2,credential,key,keyfile,passphrase (methods, in order)\n"
	      "  vm.luks.tries=N (3)  vm.luks.timeout=SECONDS (60)  vm.luks.tpm2.timeout=S (2)\n"
	      "  systemd.set_credential=NAME:VALUE (also SMBIOS type 11 and fw_cfg credentials)\n"
	      "  vm.hostname= vm.repo= vm.branch= and any other vm.* key: config for stage 2\n"
	      "  vm.network_static=ADDR/PREFIX[,GW[,DNS...][,IFACE]] or the kernel's ip= syntax:\n"
	      "    stage 2's address (/run/systemd/network/10-factory-init-static.network)\n"
	      "Records: /run/factory-init/status.json, plan.json, metrics/factory-init.prom\n"
	      "See factory-init(8) and README.md for the details.\n",
	      f);
}

/* factory-init copy-store SRC DST: the bind mode's copy engine on its own (benchmarks, tests). */
static int copy_store_main(int argc, char **argv)
{
	if (argc != 3 || argv[1][0] == '-') {
		fputs("Usage: factory-init copy-store SRC DST\n"
		      "Copies the tree SRC into DST as vm.store=bind does (hard links, owners, "
		      "modes,\n"
		      "times, xattrs; resumes into an existing DST) and prints what it copied.\n",
		      argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
		return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
	}
	struct seed_stats st;
	char why[512];
	int r = seed_copy_tree(argv[1], argv[2], 0, &st, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "factory-init: %s\n", why);
		return 1;
	}
	printf("{\"files\": %llu, \"dirs\": %llu, \"symlinks\": %llu, \"hardlinks\": %llu, "
	       "\"kept\": %llu, \"bytes\": %llu, \"ms\": %llu}\n",
	       (unsigned long long)st.files, (unsigned long long)st.dirs,
	       (unsigned long long)st.symlinks, (unsigned long long)st.hardlinks,
	       (unsigned long long)st.kept, (unsigned long long)st.bytes,
	       (unsigned long long)st.ms);
	return 0;
}

/* The recipients of the identities in text (one AGE-SECRET-KEY-1 a line; '#' comments). */
static int print_recipients(const char *text, size_t len, const char *from)
{
	int found = 0;
	for (size_t i = 0; i < len;) {
		size_t n = 0;
		while (i + n < len && text[i + n] != '\n')
			n++;
		size_t m = n > 0 && text[i + n - 1] == '\r' ? n - 1 : n;
		if (m > 0 && text[i] != '#') {
			uint8_t scalar[AGEKEY_SIZE];
			char rcpt[AGEKEY_RECIPIENT_LEN];
			int r = agekey_parse_secret(text + i, m, scalar);
			if (r == 0 && agekey_recipient(scalar, rcpt) < 0)
				r = -EIO;
			explicit_bzero(scalar, sizeof(scalar));
			if (r < 0) {
				fprintf(stderr,
					"factory-init age-keygen: %s: not an age identity line\n",
					from);
				return 1;
			}
			puts(rcpt);
			found++;
		}
		i += n + 1;
	}
	if (found == 0) {
		fprintf(stderr, "factory-init age-keygen: %s: no identity\n", from);
		return 1;
	}
	return 0;
}

/*
 * factory-init age-keygen [-o FILE] | -y [FILE]: what age-keygen does, with the code stage 1 will
 * use for a VM's host key. FILE is made 0600 with O_EXCL and never follows a link.
 */
static int age_keygen_main(int argc, char **argv)
{
	const char *out = NULL, *in = NULL;
	bool recipients = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-o") == 0 && i + 1 < argc && out == NULL && !recipients) {
			out = argv[++i];
		} else if (strcmp(argv[i], "-y") == 0 && out == NULL && !recipients) {
			recipients = true;
		} else if (recipients && in == NULL && argv[i][0] != '-') {
			in = argv[i];
		} else {
			bool help = strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
			fputs("Usage: factory-init age-keygen [-o FILE]\n"
			      "       factory-init age-keygen -y [FILE]\n"
			      "Writes a new age X25519 identity (AGE-SECRET-KEY-1..., with its\n"
			      "\"# public key: age1...\" line) to FILE (made 0600; an existing "
			      "FILE is\n"
			      "refused) or standard output; -y prints the recipients of the "
			      "identities\n"
			      "in FILE (or standard input).\n",
			      help ? stdout : stderr);
			return help ? 0 : 2;
		}
	}
	if (recipients) {
		_cleanup_secret_ struct secret text = {0};
		const char *from = in ? in : "standard input";
		int r = secret_read_file(&text, in ? in : "/dev/stdin", 1 << 16);
		if (r < 0) {
			fprintf(stderr, "factory-init age-keygen: cannot read %s: %s\n", from,
				strerror(-r));
			return 1;
		}
		return print_recipients(text.data, text.len, from);
	}

	uint8_t scalar[AGEKEY_SIZE];
	char rcpt[AGEKEY_RECIPIENT_LEN];
	_cleanup_secret_ struct secret text = {0};
	if (getrandom(scalar, sizeof(scalar), 0) != (ssize_t)sizeof(scalar)) {
		fprintf(stderr, "factory-init age-keygen: getrandom: %s\n", strerror(errno));
		return 1;
	}
	int r = agekey_identity_file(scalar, (long long)time(NULL), &text, rcpt);
	explicit_bzero(scalar, sizeof(scalar));
	if (r < 0) {
		fprintf(stderr, "factory-init age-keygen: %s\n",
			r == -EIO ? "X25519 failed" : strerror(-r));
		return 1;
	}

	_cleanup_close_ int fd =
	    out ? open(out, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)
		: dup(STDOUT_FILENO);
	if (fd < 0) {
		fprintf(stderr, "factory-init age-keygen: cannot create %s: %s\n",
			out ? out : "standard output", strerror(errno));
		return 1;
	}
	int w = fd_write_all(fd, text.data, text.len);
	if (w == 0 && out && fsync(fd) < 0)
		w = -errno;
	if (w < 0) {
		fprintf(stderr, "factory-init age-keygen: cannot write %s: %s\n",
			out ? out : "standard output", strerror(-w));
		return 1;
	}
	if (out)
		fprintf(stderr, "Public key: %s\n", rcpt);
	return 0;
}

/* factory-init status [--json] [FILE]: the status record, for people (or machines). */
static int status_main(int argc, char **argv)
{
	int json = 0;
	const char *file = STATUS_FILE;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else if (argv[i][0] != '-' && file == (const char *)STATUS_FILE) {
			file = argv[i];
		} else {
			bool help = strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
			fputs("Usage: factory-init status [--json] [FILE]\n"
			      "What stage 1 did this boot, from " STATUS_FILE " (or FILE):\n"
			      "the outcome first, the reason in full, the store, the candidates, "
			      "the\n"
			      "unlock attempts, the warnings and each step's time; --json prints "
			      "the\n"
			      "record itself. Exit status: 0 persist, 1 fallback (the factory "
			      "store),\n"
			      "2 usage, 3 no readable record.\n",
			      help ? stdout : stderr);
			return help ? 0 : STATUSVIEW_USAGE;
		}
	}
	/* The record's own directory, then the file beneath it: no links followed, no FIFO. */
	const char *name;
	_cleanup_close_ int dfd = open_parent(file, &name);
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	int r = dfd < 0 ? dfd : beneath_read(dfd, name, 1 << 20, &text, &len);
	if (r < 0) {
		fprintf(stderr, "factory-init status: cannot read %s: %s\n", file, strerror(-r));
		return STATUSVIEW_BAD;
	}
	return statusview_print(text, len, json, stdout, stderr);
}

int main(int argc, char **argv)
{
	if (getpid() == 1)
		stage1_run(argc, argv);
	if (argc > 1 && strcmp(argv[1], "enroll-tpm2") == 0)
		return enroll_tpm2_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "tpm2-check") == 0)
		return tpm2_check_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "copy-store") == 0)
		return copy_store_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "status") == 0)
		return status_main(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "age-keygen") == 0)
		return age_keygen_main(argc - 1, argv + 1);

	enum { OPT_VERSION = 256, OPT_CMDLINE, OPT_CONFIG, OPT_PLAN, OPT_ROOT, OPT_KMODDIR };
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, OPT_VERSION},
	    {"plan", no_argument, NULL, OPT_PLAN},
	    {"root", required_argument, NULL, OPT_ROOT},
	    {"cmdline", required_argument, NULL, OPT_CMDLINE},
	    {"config", required_argument, NULL, OPT_CONFIG},
	    {"kmoddir", required_argument, NULL, OPT_KMODDIR},
	    {0},
	};
	const char *cmdline = NULL, *config = EMBEDDED_CONFIG_PATH, *root = NULL, *kmoddir = NULL;
	bool plan_only = false;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return 0;
		case OPT_VERSION:
			puts("factory-init " FACTORY_INIT_VERSION);
			return 0;
		case OPT_PLAN:
			plan_only = true;
			break;
		case OPT_ROOT:
			root = optarg;
			break;
		case OPT_CMDLINE:
			cmdline = optarg;
			break;
		case OPT_CONFIG:
			config = optarg;
			break;
		case OPT_KMODDIR:
			kmoddir = optarg;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || plan_only == (root != NULL) || (kmoddir && !plan_only)) {
		usage(stderr);
		return 2;
	}
	json_global_set_string_hash(JSON_C_STR_HASH_PERLLIKE);
	if (root)
		return helper_run(root, cmdline, config);

	_cleanup_free_ char *proc = NULL;
	_cleanup_free_ char *embedded = NULL;
	char why[PATH_MAX + 64];
	int r = inputs_read(cmdline, config, &proc, &embedded, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "factory-init: %s%s\n", why, cmdline ? "" : " (give --cmdline)");
		return 1;
	}
	struct plan p;
	r = plan_build(proc, embedded, &p);
	if (proc)
		explicit_bzero(proc, strlen(proc)); /* it may hold vm.luks.key= */
	if (r < 0) {
		fprintf(stderr, "factory-init: cannot build a plan: %s\n", strerror(-r));
		return 1;
	}
	struct module_resolution res;
	if (kmoddir && (r = modules_resolve(kmoddir, &res)) < 0) {
		fprintf(stderr, "factory-init: %s: no module indexes (%s); run depmod\n", kmoddir,
			strerror(-r));
		plan_free(&p);
		return 1;
	}
	_cleanup_free_ char *text = plan_to_json_for(&p, kmoddir ? &res : NULL);
	for (size_t i = 0; i < p.n_warnings; i++)
		fprintf(stderr, "factory-init: warning: %s\n", p.warnings[i]);
	for (size_t i = 0; kmoddir && i < res.n; i++)
		if (res.kinds[i] != MODULE_LOADABLE)
			fprintf(stderr, "factory-init: module %s: %s %s; skipped\n", res.names[i],
				res.kinds[i] == MODULE_BUILTIN ? "built into" : "not in", res.kver);
	plan_free(&p);
	if (!text)
		return 1;
	fputs(text, stdout);
	return 0;
}
