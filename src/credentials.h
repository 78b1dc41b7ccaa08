/* SPDX-License-Identifier: MIT */
/*
 * systemd-style system credentials (https://systemd.io/CREDENTIALS): named values the VM manager
 * hands to the guest, read the way systemd's PID 1 imports them (src/core/import-creds.c):
 *
 *   fw_cfg     /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/NAME/raw
 *              (qemu -fw_cfg name=opt/io.systemd.credentials/NAME,string=VALUE; needs the
 *              qemu_fw_cfg module; a missing directory means no credentials)
 *   smbios     SMBIOS type 11 OEM strings, /sys/firmware/dmi/entries/11-N/raw, each string
 *              "io.systemd.credential:NAME=VALUE" or "io.systemd.credential.binary:NAME=BASE64"
 *              (qemu -smbios type=11,value=io.systemd.credential:NAME=VALUE)
 *   cmdline    systemd.set_credential=NAME:VALUE and systemd.set_credential_binary=NAME:BASE64
 *              (systemd 251; world-readable in /proc/cmdline, so not for secrets)
 *   directory  helper mode: the files of $CREDENTIALS_DIRECTORY, else /run/credentials/@system,
 *              which systemd fills from the three sources above
 *
 * Precedence when a name comes from more than one place, independent of the order the readers
 * run in: directory > fw_cfg > smbios > cmdline, and within one source the first occurrence wins.
 * That is systemd's own rule (it imports fw_cfg, then SMBIOS, then the command line into one
 * directory with O_EXCL, ignoring a name set twice), so stage 2's systemd, which imports the same
 * sources again, sees the same value factory-init used. The directory is systemd's already
 * resolved set, so it wins.
 *
 * Values are held in struct secret (locked, wiped on release): a credential may be key material
 * (vm.luks.key). No message passed to warn ever contains a value. Parsers are pure; the readers
 * only walk the file system.
 */
#ifndef FACTORY_INIT_CREDENTIALS_H
#define FACTORY_INIT_CREDENTIALS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cmdline.h"
#include "config.h"
#include "util.h"

#define CRED_NAME_MAX 256	       /* 255 characters and the NUL, as systemd (FDNAME_MAX) */
#define CRED_VALUE_MAX (64u * 1024u)   /* one value; systemd allows 1 MiB */
#define CRED_COUNT_MAX 64	       /* credentials kept in one set */
#define CRED_TOTAL_MAX (1024u * 1024u) /* all values of one set, systemd's total limit */
#define CRED_SYSTEM_DIR "/run/credentials/@system"

/* Where a credential came from; a lower value wins over a higher one (see above). */
enum credential_source {
	CRED_SOURCE_DIRECTORY,
	CRED_SOURCE_FW_CFG,
	CRED_SOURCE_SMBIOS,
	CRED_SOURCE_CMDLINE,
};

struct credential {
	char name[CRED_NAME_MAX];
	struct secret value; /* value.data is NUL-terminated; a binary value may hold NULs */
	enum credential_source source;
};

struct credentials {
	struct credential *items; /* in the order they were first added */
	size_t n;
	size_t total; /* sum of the value lengths */
};

/* "directory", "fw_cfg", "smbios" or "cmdline". */
const char *credential_source_name(enum credential_source source);

/*
 * systemd's rule (filename_is_valid && fdname_is_valid): 1-255 bytes of printable ASCII
 * (0x20-0x7e), no '/' and no ':', and not "." or "..".
 */
bool credential_name_valid(const char *name);

/*
 * Adds a copy of value[0..len) under name. Returns 1 when it was added or replaced one of lower
 * precedence, 0 when a credential of the same name and higher or equal precedence is kept (then
 * warn says so), -EINVAL for an invalid name, -EFBIG for a value over CRED_VALUE_MAX or one that
 * would take the set over CRED_TOTAL_MAX, -E2BIG when the set already holds CRED_COUNT_MAX, or
 * -ENOMEM. Every refusal but -ENOMEM is also reported through warn (warn may be NULL).
 */
int credentials_add(struct credentials *set, const char *name, const void *value, size_t len,
		    enum credential_source source, config_warn_fn warn, void *ctx);

/* The credential called name, or NULL. */
const struct credential *credentials_find(const struct credentials *set, const char *name);

/* Wipes and frees every value; leaves an empty set. */
void credentials_free(struct credentials *set);

/*
 * Parses one raw SMBIOS structure as /sys/firmware/dmi/entries/11-N/raw holds it: type (must be
 * 11), formatted-area length (at least 5), handle, string count, then the string set from offset
 * `length`: NUL-terminated strings ending with an empty one. Strings without one of the two
 * credential prefixes are skipped silently (they belong to someone else); a malformed credential
 * string, an invalid name, bad Base64 or a string cut off without its NUL is skipped with a
 * warning. Returns 0, -EBADMSG when the structure header is unusable (nothing added), or -ENOMEM.
 */
int credentials_parse_smbios_raw(const uint8_t *buf, size_t len, struct credentials *out,
				 config_warn_fn warn, void *ctx);

/*
 * Adds the systemd.set_credential= and systemd.set_credential_binary= parameters of the kernel
 * command line c (as cmdline_parse split it; like systemd, '-' and '_' are the same in these two
 * names). The value runs from the first ':' to the end of the word, so it may hold ':' and '='.
 * Returns 0 or -ENOMEM.
 */
int credentials_parse_cmdline(const struct cmdline *c, struct credentials *out, config_warn_fn warn,
			      void *ctx);

/*
 * False when the command line holds systemd.import_credentials= with a false value (0, no,
 * false, off), with which systemd imports nothing from fw_cfg, SMBIOS or the command line.
 */
bool credentials_import_enabled(const struct cmdline *c);

/*
 * Reads the fw_cfg and SMBIOS credentials under root ("/" when NULL or "": tests point it at a
 * fake tree). A missing fw_cfg or DMI directory means no credentials from there; an unreadable
 * entry is skipped with a warning. Returns 0 or -ENOMEM.
 */
int credentials_read_system(const char *root, struct credentials *out, config_warn_fn warn,
			    void *ctx);

/*
 * Reads every regular file of the directory path as a credential (file name = name, content =
 * value; symbolic links are not followed). A missing directory is no credentials. Returns 0,
 * -ENOMEM, or a negative errno when the directory exists but cannot be read.
 */
int credentials_read_dir(const char *path, struct credentials *out, config_warn_fn warn, void *ctx);

/* $CREDENTIALS_DIRECTORY when it is set to an absolute path, else CRED_SYSTEM_DIR. */
const char *credentials_default_dir(void);

/*
 * Builds a config layer (see config.h) from the credentials named vm.KEY: KEY -> value as a
 * string. A value must be text: no NUL, valid UTF-8, no control characters, after dropping one
 * trailing newline ("\n" or "\r\n"); then vm_key_check must pass. Credentials not named vm.* are
 * for stage 2's systemd and are left alone silently; secret keys (vm.luks.key) are left alone
 * silently too, for the caller to take with credentials_find. The control and flag keys a
 * credential may set (vm_key_from_credential) go into *control when control is non-NULL; every
 * other control or flag key, and those too when control is NULL, is ignored with a warning. Every
 * other rejection is warned about, naming the credential and its source, never quoting the value.
 * Returns 0 (with *out, and *control when asked, fresh objects) or -ENOMEM.
 */
int credentials_config_layer(const struct credentials *set, struct json_object **out,
			     struct json_object **control, config_warn_fn warn, void *ctx);

/* ---- shared with credentials_read.c (the readers) ------------------------------------------ */

/* A printable rendering of a name for messages: bytes outside 0x20-0x7e (and '\\') escaped. */
const char *credentials_shown(const char *s, size_t n, char *out, size_t out_len);
/* Buffers that held (or may hold) a value: locked where possible, wiped before release. */
void *credentials_locked_alloc(size_t n);
void credentials_locked_free(void *p, size_t n);
/* The warning for a refused credential name. */
void credentials_warn_bad_name(const char *name, size_t len, enum credential_source source,
			       config_warn_fn warn, void *ctx);

#endif
