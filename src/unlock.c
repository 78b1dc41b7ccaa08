/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "unlock.h"
#include "log.h"

#include <errno.h>
#include <libcryptsetup.h>
#include <stdio.h>
#include <string.h>

static void crypt_log_cb(int level, const char *msg, void *usrptr)
{
	(void)usrptr;
	int prio = level == CRYPT_LOG_ERROR	? LOG_ERR
		   : level == CRYPT_LOG_VERBOSE ? LOG_INFO
		   : level == CRYPT_LOG_DEBUG	? LOG_DEBUG
						: LOG_NOTICE;
	/* libcryptsetup never logs key material; its debug output may be long, so keep it there. */
	log_msg(prio, "cryptsetup: %s", msg);
}

void unlock_setup(bool debug)
{
	crypt_set_log_callback(NULL, crypt_log_cb, NULL);
	crypt_set_debug_level(debug ? CRYPT_DEBUG_ALL : CRYPT_DEBUG_NONE);
	crypt_metadata_locking(NULL, 0);
}

int unlock_luks(const char *device, const char *name, const struct secret *key, char *why,
		size_t why_len)
{
	struct crypt_device *cd = NULL;
	int r = crypt_init(&cd, device);
	if (r < 0) {
		snprintf(why, why_len, "cannot open %s: %s", device, strerror(-r));
		return r;
	}
	r = crypt_load(cd, CRYPT_LUKS, NULL);
	if (r < 0) {
		snprintf(why, why_len, "%s has no readable LUKS header: %s", device, strerror(-r));
		crypt_free(cd);
		return r;
	}
	r = crypt_activate_by_passphrase(cd, name, CRYPT_ANY_SLOT, key->data, key->len, 0);
	if (r == -EPERM)
		snprintf(why, why_len, "no key slot of %s accepts the key", device);
	else if (r < 0)
		snprintf(why, why_len, "activating %s failed: %s", device, strerror(-r));
	crypt_free(cd);
	return r;
}

int unlock_close(const char *name)
{
	return crypt_deactivate(NULL, name);
}
