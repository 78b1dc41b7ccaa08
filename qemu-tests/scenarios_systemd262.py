"""scenarios_systemd262.py - systemd 262's tokens: forky's systemd-cryptenroll enrols, factory-init
unlocks in the VM.

sd262-default, sd262-pcr7, sd262-argon2id-pin, sd262-argon2id-too-big, sd262-direct-pin,
sd262-recovery, sd262-argon2id-wrong-pin.  Registered after scenarios_tpm2.

systemd-cryptenroll 262 (and its cryptsetup 2.8.8) runs in a chroot of the Debian forky tree
(qemu-tests/stack.sh tree forky, cached) inside a private mount namespace (unshare -m): /dev, /proc,
/sys and the build directory (at /mnt/build) are mounted there only, /run, /tmp and /mnt are
tmpfs, so the shared tree is never written and nothing outlives the command.  It reaches the
swtpm over TCP (libtss2-tcti-swtpm0 in the tree); the same state directory then backs the VM's
TPM.  Each image gets one TPM2 token: 262 wipes an older TPM2 slot when it enrols a new one.
Each scenario saves the token it made as BUILD/<name>.token.json (src/tests/tokens/systemd262-*.json
were taken from there).
"""

import json
import os
import re
import subprocess

import harness
from harness import Disk
from context import (FI_APPEND, STACK_SH, attempts, check_no_secret,
                     fi_initrd, fresh_dir, luks_copy, pcrs_of, read_key, scenario, status_of,
                     unlock_ms)
from scenarios_tpm2 import SEPARATOR_DIGEST, token_json

#: The guests' memory (MiB): factory-init allows Argon2id up to half of MemAvailable (<= 1 GiB).
GUEST_MB = 512
PIN, WRONG_PIN = "pin-262-4711", "pin-262-4712"
#: Argon2id that the guest can afford, fixed (no benchmark: 262 would pick the iterations for
#: ~2 s on the enrolling host, far more under TCG).
ARGON2ID_OK = ["--tpm2-argon2id-memory=64M", "--tpm2-argon2id-iterations=2",
               "--tpm2-argon2id-parallelism=2"]
#: More than half of a 512 MiB guest's MemAvailable; one pass keeps the host's enrolment short.
ARGON2ID_TOO_BIG = ["--tpm2-argon2id-memory=600M", "--tpm2-argon2id-iterations=1"]
PIN_PROMPT = "TPM2 PIN for /dev/vdb"

#: Runs "$@" chrooted into the tree $1 with the build directory $2 at /mnt/build; meant for
#: `unshare --mount --propagation private`, so these mounts exist in that namespace only.
_CHROOT_SH = r'''
set -eu
T=$1 build=$2; shift 2
cleanup() { umount -R "$T/mnt" "$T/tmp" "$T/run" "$T/sys" "$T/proc" "$T/dev" 2>/dev/null || :; }
trap cleanup EXIT
mount --rbind /dev "$T/dev"
mount -t proc proc "$T/proc"
mount --rbind /sys "$T/sys"
mount -t tmpfs tmpfs "$T/run"
mount -t tmpfs tmpfs "$T/tmp"
mount -t tmpfs tmpfs "$T/mnt"
mkdir "$T/mnt/build"
mount --bind "$build" "$T/mnt/build"
chroot "$T" "$@"
'''

_forky = None


def forky_tree():
    global _forky
    if _forky is None:
        out = subprocess.run([STACK_SH, "-q", "tree", "forky"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        _forky = out.strip().splitlines()[-1]
    return _forky


def in_forky(ctx, argv, env=None, timeout=300):
    """ARGV in the forky chroot (the build directory at /mnt/build): CompletedProcess."""
    cmd = ["timeout", str(timeout), "unshare", "--mount", "--propagation", "private",
           "bash", "-c", _CHROOT_SH, "chroot-forky", forky_tree(), ctx.build] + list(argv)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)


def chroot_path(ctx, path):
    rel = os.path.relpath(os.path.abspath(path), ctx.build)
    if rel.startswith(".."):
        raise ValueError(f"{path} is not in the build directory {ctx.build}")
    return "/mnt/build/" + rel


def cryptenroll(ctx, img, args, tpm=None, pin=None):
    """forky's systemd-cryptenroll ARGS on IMG, unlocking with the test key; with TPM (a tcp
    Swtpm) as --tpm2-device, with PIN as $NEWPIN.  Returns its stdout (stderr goes to a diag)."""
    argv = ["systemd-cryptenroll", f"--unlock-key-file={chroot_path(ctx, ctx.disks.key)}"]
    if tpm is not None:
        argv.append(f"--tpm2-device={tpm.tcti}")
    env = dict(os.environ)
    env.pop("PASSWORD", None)
    if pin is not None:
        env["NEWPIN"] = pin
    e = in_forky(ctx, argv + list(args) + [chroot_path(ctx, img)], env=env)
    opts = " ".join(args) or "(no options)"
    ctx.diag(f"systemd-cryptenroll {opts}: {e.stderr.strip()}".replace("\n", "; "))
    ctx.require(e.returncode == 0, f"systemd-cryptenroll {args} failed ({e.returncode}): "
                f"{e.stdout}{e.stderr}")
    return e.stdout


def save_token(ctx, img, name):
    """The image's token 0, also written to BUILD/NAME.token.json as cryptsetup exported it."""
    out = subprocess.run(["cryptsetup", "token", "export", "--token-id", "0", img],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    with open(ctx.path(f"{name}.token.json"), "w") as f:
        f.write(out if out.endswith("\n") else out + "\n")
    tok = json.loads(out)
    ctx.diag(f"token fields: {', '.join(tok)}")
    return tok


def lockout_counter(tpm):
    """TPM2_PT_LOCKOUT_COUNTER (failed authorizations the dictionary-attack logic counts)."""
    out = subprocess.run(["tpm2_getcap", "properties-variable"], env=tpm.env, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    m = re.search(r"TPM2_PT_LOCKOUT_COUNTER:\s*(0x[0-9a-fA-F]+)", out)
    if not m:
        raise RuntimeError(f"no TPM2_PT_LOCKOUT_COUNTER in tpm2_getcap's output: {out[-300:]}")
    return int(m.group(1), 16)


def lockout_of(state):
    with harness.swtpm_tcp(state) as tpm:
        return lockout_counter(tpm)


def boot_tpm(ctx, name, img, state, initrd=None, append=FI_APPEND, interact=(), timeout=300):
    """IMG (through a throw-away overlay) as vdb, the TPM on STATE, GUEST_MB of memory."""
    with harness.Swtpm(state) as tpm:
        return ctx.boot(name, initrd or fi_initrd(ctx, "fi-plain"),
                        [Disk(ctx.disks.factory), Disk(img)], append,
                        extra_args=tpm.qemu_args, interact=interact, timeout=timeout,
                        memory=GUEST_MB)


def check_tpm2_unlocked(ctx, r, st, want=(("tpm2", True),)):
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["unlock"] == "tpm2", f"unlock {st['unlock']}, attempts {attempts(st)}")
    ctx.check(attempts(st) == list(want), f"attempts {attempts(st)}: {st['reason']}")
    ctx.check(r.mount_at("/persist") is not None, "/persist not mounted")
    ctx.diag(f"TPM2 unlock: {unlock_ms(st, 'tpm2')} ms; boot {r.wall_time:.1f} s")


def logged(r, text):
    return any(text in line for line in r.raw.splitlines() + r.kmsg)


def details(st):
    return [a.get("detail") or "" for a in st.get("unlock_attempts", [])]


# ---------------------------------------------------------------------------------------------

@scenario("sd262-default")
def sd262_default(ctx):
    """262's default --tpm2-device= enrolment (no --tpm2-pcrs): an EMPTY PCR mask, tpm2_srk,
    the all-zero policy; unlocks with the TPM, no prompt."""
    state = fresh_dir(ctx.path("sd262-default.tpm"))
    img = luks_copy(ctx, "sd262-default")
    with harness.swtpm_tcp(state) as tpm:
        cryptenroll(ctx, img, [], tpm)
    tok = save_token(ctx, img, "sd262-default")
    ctx.check(tok["type"] == "systemd-tpm2" and tok["tpm2-pcrs"] == []
              and "tpm2-pcr-bank" not in tok and "tpm2_srk" in tok
              and tok["tpm2-policy-hash"] == "0" * 64 and "tpm2-pin" not in tok,
              f"token {tok}")
    r = boot_tpm(ctx, "sd262-default", img, state, timeout=150)
    st = status_of(ctx, r)
    check_tpm2_unlocked(ctx, r, st)
    ctx.check(not r.interactions and "PIN for" not in r.raw and "Passphrase for" not in r.raw,
              "a prompt appeared")
    check_no_secret(ctx, r, read_key(ctx))


@scenario("sd262-pcr7")
def sd262_pcr7(ctx):
    """--tpm2-pcrs=7 after replaying the firmware's PCR 7 event on the host TPM: unlocks."""
    import hashlib
    want7 = hashlib.sha256(b"\0" * 32 + bytes.fromhex(SEPARATOR_DIGEST)).hexdigest()
    state = fresh_dir(ctx.path("sd262-pcr7.tpm"))
    img = luks_copy(ctx, "sd262-pcr7")
    with harness.swtpm_tcp(state) as tpm:
        subprocess.run(["tpm2_pcrextend", f"7:sha256={SEPARATOR_DIGEST}"], env=tpm.env,
                       check=True)
        now = subprocess.run(["tpm2_pcrread", "sha256:7"], env=tpm.env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        ctx.require(want7 in now.lower().replace("0x", ""), f"replayed PCR 7: {now.strip()}")
        cryptenroll(ctx, img, ["--tpm2-pcrs=7"], tpm)
    tok = save_token(ctx, img, "sd262-pcr7")
    ctx.check(tok["tpm2-pcrs"] == [7] and tok.get("tpm2-pcr-bank") == "sha256"
              and "tpm2_srk" in tok, f"token {tok}")
    r = boot_tpm(ctx, "sd262-pcr7", img, state, timeout=150)
    st = status_of(ctx, r)
    check_tpm2_unlocked(ctx, r, st)
    ctx.check(pcrs_of(r).get(7) == want7, f"the VM's PCR 7 {pcrs_of(r).get(7)}, sealed to {want7}")


def argon2id_image(ctx):
    """One image + TPM state with an Argon2id PIN token (64 MiB, 2 passes, 2 lanes), shared by
    sd262-argon2id-pin and sd262-argon2id-wrong-pin (each boots a throw-away overlay)."""
    cached = getattr(ctx, "_sd262_argon2id", None)
    if cached and all(os.path.exists(p) for p in cached):
        return cached
    state = fresh_dir(ctx.path("sd262-argon2id.tpm"))
    img = luks_copy(ctx, "sd262-argon2id")
    with harness.swtpm_tcp(state) as tpm:
        cryptenroll(ctx, img, ["--tpm2-with-pin=yes"] + ARGON2ID_OK, tpm, pin=PIN)
    tok = save_token(ctx, img, "sd262-argon2id-pin")
    ctx.require(tok.get("tpm2-pin") is True and "tpm2_salt" in tok
                and tok.get("tpm2_argon2id_memcost") == 64 << 20
                and tok.get("tpm2_argon2id_iterations") == 2
                and tok.get("tpm2_argon2id_lanes") == 2, f"token {tok}")
    ctx._sd262_argon2id = (img, state)
    return img, state


@scenario("sd262-argon2id-pin")
def sd262_argon2id_pin(ctx):
    """--tpm2-with-pin=yes (262: Argon2id of the PIN, then the TPM): the PIN prompt shows on the
    console, the right PIN unlocks; the Argon2id line is logged; no DA failure counted."""
    img, state = argon2id_image(ctx)
    before = lockout_of(state)
    r = boot_tpm(ctx, "sd262-argon2id-pin", img, state,
                 interact=[(f"{PIN_PROMPT} (try 1 of 3): ", PIN + "\r")])
    after = lockout_of(state)
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 1, f"PIN prompts answered: {len(r.interactions)} of 1")
    check_tpm2_unlocked(ctx, r, st)
    ctx.check(logged(r, "Argon2id of the PIN"), "no 'Argon2id of the PIN' line")
    ctx.diag(next((k for k in r.kmsg if "Argon2id of the PIN" in k), "-"))
    ctx.check(after == before, f"lockout counter {before} -> {after}")
    ctx.diag(f"lockout counter {before} -> {after}")
    check_no_secret(ctx, r, PIN)
    check_no_secret(ctx, r, read_key(ctx))


@scenario("sd262-argon2id-too-big")
def sd262_argon2id_too_big(ctx):
    """An Argon2id PIN token costing more memory than the guest allows (600 MiB in 512 MiB):
    refused before any PIN prompt, the detail names tpm2_argon2id_memcost, the passphrase
    prompt (the configured fallback) unlocks, and the TPM never saw an authorization."""
    state = fresh_dir(ctx.path("sd262-toobig.tpm"))
    img = luks_copy(ctx, "sd262-toobig")
    with harness.swtpm_tcp(state) as tpm:
        cryptenroll(ctx, img, ["--tpm2-with-pin=yes"] + ARGON2ID_TOO_BIG, tpm, pin=PIN)
        before = lockout_counter(tpm)
    tok = save_token(ctx, img, "sd262-argon2id-too-big")
    ctx.check(tok.get("tpm2_argon2id_memcost") == 600 << 20, f"token {tok}")
    key = read_key(ctx)
    r = boot_tpm(ctx, "sd262-argon2id-too-big", img, state,
                 interact=[("Passphrase for /dev/vdb (try 1 of 3): ", key + "\r")])
    after = lockout_of(state)
    st = status_of(ctx, r)
    ctx.check(PIN_PROMPT not in r.raw, "a TPM2 PIN prompt appeared")
    ctx.check(len(r.interactions) == 1, f"passphrase prompts answered: {len(r.interactions)}")
    ctx.check(st["outcome"] == "persist" and st["unlock"] == "passphrase",
              f"outcome {st['outcome']}, unlock {st['unlock']}: {st['reason']}")
    ctx.check(attempts(st) == [("tpm2", False), ("passphrase", True)],
              f"attempts {attempts(st)}")
    d = details(st)[0] if details(st) else ""
    ctx.check("tpm2_argon2id_memcost" in d, f"tpm2 detail {d!r}")
    ctx.diag(f"tpm2: {d}")
    ctx.check(r.mount_at("/persist") is not None, "/persist not mounted")
    ctx.check(not logged(r, "Argon2id of the PIN"), "Argon2id ran anyway")
    ctx.check(after == before, f"lockout counter {before} -> {after}")
    ctx.diag(f"lockout counter {before} -> {after}")
    check_no_secret(ctx, r, key)


@scenario("sd262-direct-pin")
def sd262_direct_pin(ctx):
    """--tpm2-with-pin=direct: the salted PIN (PBKDF2, no Argon2id); prompt, right PIN unlocks."""
    state = fresh_dir(ctx.path("sd262-direct.tpm"))
    img = luks_copy(ctx, "sd262-direct")
    with harness.swtpm_tcp(state) as tpm:
        cryptenroll(ctx, img, ["--tpm2-with-pin=direct"], tpm, pin=PIN)
    tok = save_token(ctx, img, "sd262-direct-pin")
    ctx.check(tok.get("tpm2-pin") is True and "tpm2_salt" in tok
              and not any(k.startswith("tpm2_argon2id") for k in tok), f"token {tok}")
    r = boot_tpm(ctx, "sd262-direct-pin", img, state,
                 interact=[(f"{PIN_PROMPT} (try 1 of 3): ", PIN + "\r")], timeout=150)
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 1, f"PIN prompts answered: {len(r.interactions)} of 1")
    check_tpm2_unlocked(ctx, r, st)
    ctx.check(not logged(r, "Argon2id of the PIN"), "Argon2id for a direct PIN token")
    check_no_secret(ctx, r, PIN)


#: systemd's recovery key: 8 groups of 8 modhex characters.
RECOVERY_RE = re.compile(r"\b[cbdefghijklnrtuv]{8}(?:-[cbdefghijklnrtuv]{8}){7}\b")


@scenario("sd262-recovery")
def sd262_recovery(ctx):
    """--recovery-key: a systemd-recovery token (not a tpm2 one, so no TPM wait and no PIN);
    the recovery key systemd-cryptenroll printed, typed at the passphrase prompt, unlocks."""
    img = luks_copy(ctx, "sd262-recovery")
    out = cryptenroll(ctx, img, ["--recovery-key"])
    m = RECOVERY_RE.search(out)
    ctx.require(m, f"no recovery key in systemd-cryptenroll's output: {out!r}")
    rkey = m.group(0)
    tok = save_token(ctx, img, "sd262-recovery")
    ctx.check(tok["type"] == "systemd-recovery", f"token {tok}")
    r = ctx.boot("sd262-recovery", fi_initrd(ctx, "fi-plain"),
                 [Disk(ctx.disks.factory), Disk(img)], FI_APPEND, memory=GUEST_MB,
                 interact=[("Passphrase for /dev/vdb (try 1 of 3): ", rkey + "\r")])
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 1, f"passphrase prompts answered: {len(r.interactions)}")
    ctx.check(PIN_PROMPT not in r.raw, "a TPM2 PIN prompt appeared")
    ctx.check(st["outcome"] == "persist" and st["unlock"] == "passphrase",
              f"outcome {st['outcome']}, unlock {st['unlock']}: {st['reason']}")
    ctx.check(attempts(st) == [("passphrase", True)], f"attempts {attempts(st)}")
    ctx.check(r.mount_at("/persist") is not None, "/persist not mounted")
    ctx.diag(f"passphrase (recovery key) unlock: {unlock_ms(st, 'passphrase')} ms")
    check_no_secret(ctx, r, rkey)


@scenario("sd262-argon2id-wrong-pin")
def sd262_argon2id_wrong_pin(ctx):
    """The Argon2id PIN token, a wrong PIN and then the right one (vm.luks.tries 3): unlocks on
    the 2nd try; the TPM's lockout counter rose by exactly one."""
    img, state = argon2id_image(ctx)
    before = lockout_of(state)
    r = boot_tpm(ctx, "sd262-argon2id-wrong-pin", img, state,
                 interact=[(f"{PIN_PROMPT} (try 1 of 3): ", WRONG_PIN + "\r"),
                           (f"{PIN_PROMPT} (try 2 of 3): ", PIN + "\r")])
    after = lockout_of(state)
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 2, f"PIN prompts answered: {len(r.interactions)} of 2")
    check_tpm2_unlocked(ctx, r, st, want=(("tpm2", False), ("tpm2", True)))
    d = details(st)[0] if details(st) else ""
    ctx.check("PIN is wrong" in d, f"first tpm2 detail {d!r}")
    ctx.diag(f"tpm2 try 1: {d}")
    ctx.check(after == before + 1, f"lockout counter {before} -> {after}, expected +1")
    ctx.diag(f"lockout counter {before} -> {after}")
    for s in (PIN, WRONG_PIN, read_key(ctx)):
        check_no_secret(ctx, r, s)
