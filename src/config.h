/* SPDX-License-Identifier: MIT */
/*
 * vm.* keys: their validation and the config layers (embedded < persisted < credentials <
 * command line) merged into the JSON handed to stage 2. Pure: nothing here touches the system.
 */
#ifndef FACTORY_INIT_CONFIG_H
#define FACTORY_INIT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;

/* What a vm.* key is for. */
enum vm_key_kind {
	VM_KEY_CONFIG,	/* handed to stage 2 in the config JSON (vm.hostname, unknown keys) */
	VM_KEY_CONTROL, /* steers factory-init itself (vm.persist, vm.store, ...) */
	VM_KEY_SECRET,	/* key material: never logged, never written (vm.luks.key) */
	VM_KEY_FLAG,	/* a switch that may stand bare (vm.debug) */
};

#define VM_VALUE_MAX 1024 /* longest value accepted for any key without a tighter limit */
#define VM_NAME_MAX 64	  /* longest key name after "vm." */

/*
 * Classifies a key name given without its "vm." prefix. Returns -EINVAL (with why filled) for a
 * name that is not a well-formed key.
 */
int vm_key_kind(const char *name, enum vm_key_kind *kind, char *why, size_t why_len);

/*
 * Whether a system credential may set this control or flag key (without "vm."): only
 * persist.provision and persist.provision.pcrs, the fleet manager's first-boot instruction, which
 * can only ever write to a disk that passes every blankness test. The keys that choose or unlock
 * the disk stay with the command line and the image, so that a credential from a less trusted
 * place (in helper mode, systemd-stub's credentials from the ESP) cannot redirect them.
 */
bool vm_key_from_credential(const char *name);

/*
 * Checks a value for the key `name` (without "vm."). Returns 0, or -EINVAL with a reason in why
 * that never quotes the value of a secret key.
 */
int vm_key_check(const char *name, const char *value, char *why, size_t why_len);

/* The ways to unlock the data disk, in the default order of attempts (vm.luks= reorders). */
enum unlock_method {
	UNLOCK_TPM2,	   /* a systemd-tpm2 token in the LUKS2 header */
	UNLOCK_CREDENTIAL, /* a system credential named vm.luks.key */
	UNLOCK_KEY,	   /* vm.luks.key on the kernel command line */
	UNLOCK_KEYFILE,	   /* vm.luks.keyfile (default /etc/factory-init/keyfile in the initrd) */
	UNLOCK_PASSPHRASE, /* typed on the console */
	UNLOCK_N_METHODS,
};
const char *unlock_method_name(enum unlock_method m);
/*
 * Parses a vm.luks= list ("tpm2,passphrase"; '+' also separates) into out (UNLOCK_N_METHODS
 * entries at most). Returns the count, or -EINVAL with why for an unknown or repeated name.
 */
int unlock_methods_parse(const char *v, enum unlock_method *out, char *why, size_t why_len);

/* Checks a host name against RFC 1123 (labels of letters, digits and inner hyphens). */
bool hostname_is_valid(const char *s);

/* Writes a short, printable rendering of value for messages (truncated, control chars escaped). */
void value_preview(const char *value, char *out, size_t out_len);

/*
 * A config layer is a json-c object mapping key names (without "vm.") to string values.
 * config_layer_from_json parses text into a fresh layer, keeping only valid VM_KEY_CONFIG keys and
 * reporting each rejected member through warn(ctx, message). Control keys are stored in *control
 * (a second fresh object) when control is non-NULL, else rejected. Returns 0 or a negative errno
 * when the text is not a JSON object (then *out is NULL).
 */
typedef void (*config_warn_fn)(void *ctx, const char *message);
/* Formats a warning and hands it to warn (when not NULL). */
void config_warnf(config_warn_fn warn, void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int config_layer_from_json(const char *text, const char *origin, struct json_object **out,
			   struct json_object **control, config_warn_fn warn, void *ctx);

/* Returns a new object: every layer's members in order, later layers winning. NULL layers skip. */
struct json_object *config_merge(struct json_object *const *layers, size_t n);

/* Serialises a layer as pretty JSON with a trailing newline; the caller frees the string. */
char *config_to_string(struct json_object *obj);

#endif
