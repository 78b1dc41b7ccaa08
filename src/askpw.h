/* SPDX-License-Identifier: MIT */
/*
 * Asking for a secret through systemd's password agents (https://systemd.io/PASSWORD_AGENTS/),
 * for helper mode in a systemd initrd: there the console belongs to systemd, and its agents
 * (systemd-ask-password-console on every console, the serial one included; plymouth;
 * systemd-tty-ask-password-agent --query run by hand) show the prompt.
 *
 * The protocol: bind a datagram socket with SO_PASSCRED in DIR, write DIR/ask.RANDOM (an ini
 * file: [Ask] PID= Socket= AcceptCached=0 Echo=0 NotAfter=CLOCK_MONOTONIC-usec Silent=0
 * Message= Icon= Id=), atomically; an agent answers "+PASSWORD" (or "-" to cancel) on the
 * socket. Only an answer from root (or our own uid) counts. Both files are removed on every
 * path.
 */
#ifndef FACTORY_INIT_ASKPW_H
#define FACTORY_INIT_ASKPW_H

#include <stdbool.h>

#include "util.h"

#define ASKPW_DIR "/run/systemd/ask-password"

/* True when systemd manages this boot (/run/systemd/system exists) and we are not PID 1. */
bool askpw_under_systemd(void);

/*
 * Asks through the agents watching dir (ASKPW_DIR). message is shown as it is (control
 * characters become '?'); id names the request for agents ("cryptsetup:/dev/vdb" style).
 * timeout_s 0: no limit. Returns 0 with the secret in out (locked; free with secret_free),
 * -ETIMEDOUT, -ECANCELED (an agent said "-"), -E2BIG (longer than PASSPHRASE_MAX) or another
 * negative errno (the directory cannot be written).
 */
int askpw_ask(const char *dir, const char *message, const char *id, unsigned timeout_s,
	      struct secret *out);

#endif
