/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "metrics.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Seconds, not milliseconds: Prometheus wants base units (promtool's lint says so), and
 * every duration here is a gauge of this one boot (the textfile collector exports what the
 * file says; there is nothing to count up across boots).
 */

static void family(FILE *f, const char *name, const char *help)
{
	fprintf(f, "# HELP factory_init_%s %s\n# TYPE factory_init_%s gauge\n", name, help, name);
}

/* A label value as the text format wants it: backslash, double quote and newline escaped. */
static void label_value(FILE *f, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			fprintf(f, "\\%c", *v);
		else if (*v == '\n')
			fputs("\\n", f);
		else
			fputc(*v, f);
	}
}

static void one_of(FILE *f, const char *name, const char *label, const char *const *values,
		   size_t n, const char *current)
{
	for (size_t i = 0; i < n; i++)
		fprintf(f, "factory_init_%s{%s=\"%s\"} %d\n", name, label, values[i],
			strcmp(values[i], current) == 0);
}

static void seconds(FILE *f, uint64_t ms)
{
	fprintf(f, "%llu.%03llu\n", (unsigned long long)(ms / 1000),
		(unsigned long long)(ms % 1000));
}

char *metrics_render(const struct status *st, const char *version)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;

	family(f, "info", "The factory-init that ran stage 1, and how (always 1).");
	fputs("factory_init_info{version=\"", f);
	label_value(f, version);
	fputs("\",mode=\"", f);
	label_value(f, st->mode ? st->mode : "");
	fputs("\"} 1\n", f);

	family(f, "persist",
	       "1 when /persist is the data disk, 0 when the VM booted on the factory store.");
	fprintf(f, "factory_init_persist %d\n", st->persist);

	static const char *const codes[] = {
	    "none",
	    STATUS_REASON_NO_DISK,
	    STATUS_REASON_REFUSED,
	    STATUS_REASON_NO_KEY,
	    STATUS_REASON_UNLOCK,
	    STATUS_REASON_MOUNT,
	    STATUS_REASON_UNTRUSTED,
	    STATUS_REASON_STORE,
	    STATUS_REASON_FATAL,
	    STATUS_REASON_NOT_BLANK,
	    STATUS_REASON_PROVISION,
	};
	family(
	    f, "reason",
	    "Why the VM fell back to the factory store or /nix is not as planned "
	    "(status.json reason_code; none: all went as planned): 1 for the code that applies.");
	one_of(f, "reason", "code", codes, ARRAY_SIZE(codes),
	       *st->reason_code ? st->reason_code : "none");

	static const char *const methods[] = {"tpm2",	    "credential", "cmdline-key", "keyfile",
					      "passphrase", "opened",	  "provision",	 "none"};
	family(f, "unlock_method",
	       "What opened the data disk (opened: another program; none: not LUKS or not "
	       "opened): 1 for the method that did.");
	one_of(f, "unlock_method", "method", methods, ARRAY_SIZE(methods),
	       *st->unlock ? st->unlock : "none");

	size_t ok = 0;
	for (size_t i = 0; i < st->n_attempts; i++)
		ok += st->attempts[i].result >= 0;
	family(f, "unlock_attempts", "Unlock attempts this boot, by result.");
	fprintf(f, "factory_init_unlock_attempts{result=\"ok\"} %zu\n", ok);
	fprintf(f, "factory_init_unlock_attempts{result=\"failed\"} %zu\n", st->n_attempts - ok);

	static const char *const stores[] = {"overlay", "bind", "off", "factory"};
	family(f, "store_mode",
	       "What /nix is (factory: the factory store alone): 1 for the mode in effect.");
	one_of(f, "store_mode", "mode", stores, ARRAY_SIZE(stores), st->store);

	family(f, "step_duration_seconds", "How long each step of stage 1 took, in seconds.");
	for (size_t i = 0; i < st->n_steps; i++) {
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++)
			seen = strcmp(st->steps[j].name, st->steps[i].name) == 0;
		if (seen)
			continue; /* added to the first of its name */
		uint64_t ms = 0;
		for (size_t j = i; j < st->n_steps; j++)
			if (strcmp(st->steps[j].name, st->steps[i].name) == 0)
				ms += st->steps[j].ms;
		fputs("factory_init_step_duration_seconds{step=\"", f);
		label_value(f, st->steps[i].name);
		fputs("\"} ", f);
		seconds(f, ms);
	}
	family(f, "duration_seconds", "Stage 1 from its start to the hand-over, in seconds.");
	fputs("factory_init_duration_seconds ", f);
	seconds(f, st->total_ms);

	family(f, "image_info",
	       "The factory image this boot ran, and the one /persist last saw (always 1).");
	fputs("factory_init_image_info{id=\"", f);
	label_value(f, st->factory_id);
	fputs("\",previous=\"", f);
	label_value(f, st->factory_previous);
	fputs("\"} 1\n", f);
	family(f, "image_refreshed", "1 when the factory image changed since the last boot.");
	fprintf(f, "factory_init_image_refreshed %d\n", st->refreshed);

	family(f, "store_copied", "1 when this boot copied factory store data to /persist/nix.");
	fprintf(f, "factory_init_store_copied %d\n", st->seeded);
	if (st->seeded) {
		family(f, "store_copy_complete", "1 when that copy finished.");
		fprintf(f, "factory_init_store_copy_complete %d\n", st->seed_result >= 0);
		family(f, "store_copy_entries", "What the copy made, by kind.");
		fprintf(f, "factory_init_store_copy_entries{kind=\"file\"} %llu\n",
			(unsigned long long)st->seed.files);
		fprintf(f, "factory_init_store_copy_entries{kind=\"dir\"} %llu\n",
			(unsigned long long)st->seed.dirs);
		fprintf(f, "factory_init_store_copy_entries{kind=\"symlink\"} %llu\n",
			(unsigned long long)st->seed.symlinks);
		fprintf(f, "factory_init_store_copy_entries{kind=\"hardlink\"} %llu\n",
			(unsigned long long)st->seed.hardlinks);
		fprintf(f, "factory_init_store_copy_entries{kind=\"kept\"} %llu\n",
			(unsigned long long)st->seed.kept);
		family(f, "store_copy_bytes", "Bytes the copy wrote.");
		fprintf(f, "factory_init_store_copy_bytes %llu\n",
			(unsigned long long)st->seed.bytes);
		family(f, "store_copy_duration_seconds", "How long the copy took, in seconds.");
		fputs("factory_init_store_copy_duration_seconds ", f);
		seconds(f, st->seed.ms);
	}

	family(f, "provisioned",
	       "1 when this boot made the data disk (vm.persist.provision: it was blank).");
	fprintf(f, "factory_init_provisioned %d\n", st->provisioned);

	family(f, "tpm2_present", "1 when the VM has a TPM2.");
	fprintf(f, "factory_init_tpm2_present %d\n", status_tpm2_present(st));
	family(f, "tpm2_locked",
	       "1 when stage 1 extended its lock PCR before stage 2 (tokens bound to it stay "
	       "sealed).");
	fprintf(f, "factory_init_tpm2_locked %d\n", st->tpm2_lock_result > 0);
	family(f, "key_on_cmdline",
	       "1 when a LUKS key sat on the kernel command line (stage 2 can read it).");
	fprintf(f, "factory_init_key_on_cmdline %d\n", st->key_in_cmdline);
	family(f, "network_static",
	       "1 when vm.network_static gave stage 2 a static address (written for networkd).");
	fprintf(f, "factory_init_network_static %d\n",
		st->network_static && st->network_result >= 0);
	family(f, "warnings", "Warnings stage 1 recorded (status.json lists them).");
	fprintf(f, "factory_init_warnings %zu\n", st->n_warnings);

	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}
