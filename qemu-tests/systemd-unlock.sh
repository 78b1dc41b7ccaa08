#!/bin/bash
# usage: systemd-unlock.sh IMAGE SWTPM_STATE_DIR
#
# Proves that systemd's own code unseals the systemd-tpm2 LUKS2 token in IMAGE:
# Debian 12's cryptsetup 2.6 loads systemd 252's libcryptsetup-token-systemd-tpm2.so
# for `cryptsetup open --test-passphrase --token-only` (no device-mapper needed).
# That plugin ignores $SYSTEMD_TPM2_DEVICE: it requires /sys/class/tpmrm to exist
# and opens /dev/tpmrm0 via tpm2-tss' tcti-device.  So, in a private mount
# namespace only, /sys/class becomes a tmpfs holding tpmrm/ and /dev becomes a
# tmpfs of symlinks to the real nodes plus /dev/tpmrm0 = a raw pty slave that
# tpm-bridge.py relays to a swtpm on SWTPM_STATE_DIR (PCRs fresh after Startup).
# Exit 0 iff cryptsetup succeeded AND the bridge relayed a successful TPM2_Unseal.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 IMAGE SWTPM_STATE_DIR" >&2; exit 2; }
img=$(realpath -e "$1")     # absolute paths: swtpm and the namespace must not depend on cwd
state=$(realpath -e "$2")
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d /tmp/systemd-unlock.XXXXXX)
swtpm_pid= bridge_pid=
cleanup() {   # every exit path; bridge first: on SIGTERM it sends TPM2_Shutdown to swtpm
  local p
  for p in $bridge_pid $swtpm_pid; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || :; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "systemd-unlock: FAIL: $img: $*"; exit 1; }

# swtpm on a unix socket (no TCP port to pick or race for); it does TPM2_Startup itself.
swtpm socket --tpm2 --tpmstate dir="$state" --server type=unixio,path="$work/swtpm.sock" \
  --flags not-need-init,startup-clear --log file="$work/swtpm.log" &
swtpm_pid=$!
# The bridge polls until swtpm accepts, then prints its pty slave's path.
coproc BRIDGE { exec python3 "$here/tpm-bridge.py" "$work/swtpm.sock" 2>"$work/bridge.log"; }
bridge_pid=$BRIDGE_PID
read -r -t 20 -u "${BRIDGE[0]}" pty || fail "bridge/swtpm did not start: $(cat "$work"/*.log)"

rc=0
timeout 120 unshare --mount --propagation private bash -euc '
  work=$1 pty=$2 img=$3
  mount -t tmpfs none /sys/class && mkdir -p /sys/class/tpmrm/tpmrm0 /sys/class/tpm/tpm0
  mkdir "$work/dev" && mount --rbind /dev "$work/dev"      # keep the real /dev reachable
  mount -t tmpfs -o mode=755 none /dev
  for f in "$work"/dev/*; do ln -s "$f" /dev/; done
  touch /dev/tpmrm0 && mount --bind "$work/dev/${pty#/dev/}" /dev/tpmrm0
  exec cryptsetup open --test-passphrase --token-only --token-type systemd-tpm2 "$img"
' _ "$work" "$pty" "$img" >"$work/cryptsetup.log" 2>&1 || rc=$?

ncmd=$(grep -c '^cc=' "$work/bridge.log" || :)
[ $rc -eq 0 ] || fail "cryptsetup rc=$rc ($ncmd TPM commands): $(tail -n 3 "$work/cryptsetup.log" | tr '\n' ' ')"
grep -q '^cc=0x0000015e rc=0x00000000' "$work/bridge.log" || fail "cryptsetup ok but no successful TPM2_Unseal seen"
echo "systemd-unlock: OK: systemd-tpm2 plugin unsealed and unlocked $img ($ncmd TPM commands via swtpm)"
