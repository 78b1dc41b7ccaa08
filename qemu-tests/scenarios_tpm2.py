"""scenarios_tpm2.py - TPM2 unlocking: our enroll-tpm2 token and systemd-cryptenroll's.

tpm2-ours, tpm2-systemd-enrolled, tpm2-pin, tpm2-pcr-mismatch, tpm2-absent, tpm2-lock (PCR 15
extended before stage 2).  Registered in this order, after scenarios_boot.
"""

import json
import os
import subprocess

import harness
from harness import Disk
from context import (FACTORY_INIT, FACTORY_INIT_DEV, FI_APPEND, HERE, attempts, boot_pcrs,
                     check_fi_logged, check_no_secret, enroll_ours, fi_initrd, fresh_dir, luks_copy,
                     pcrs_of, read_key, scenario, status_of, unlock_ms)


SYSTEMD_UNLOCK = os.path.join(HERE, "systemd-unlock.sh")


def token_json(img, token=0):
    out = subprocess.run(["cryptsetup", "token", "export", "--token-id", str(token), img],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


#: The firmware (SeaBIOS) measures one separator event into PCR 7: SHA-256 of 0xffffffff.
SEPARATOR_DIGEST = "ad95131bc0b799c0b1af477fb14fcf26a6a9f76079e48bf090acb7e8367bfd0e"


@scenario("tpm2-ours")
def tpm2_ours(ctx):
    """enroll-tpm2 seals to the PCR 7 value the VM will measure; stage 1 unlocks unattended
    with the TPM; systemd's own token plugin unseals a token we enrolled as well."""
    state = fresh_dir(ctx.path("tpm2-ours.tpm"))
    pcr7 = boot_pcrs(ctx, "tpm2-ours-pcrs", state)[7]
    img = luks_copy(ctx, "tpm2-ours")
    enroll_ours(ctx, img, state, f"7:sha256={pcr7}")
    tok = token_json(img)
    ctx.check(tok["type"] == "systemd-tpm2" and tok["tpm2-pcrs"] == [7]
              and tok["tpm2-pcr-bank"] == "sha256" and tok["tpm2-primary-alg"] == "ecc",
              f"token {tok}")
    vdb = harness.overlay(img, ctx.path("tpm2-ours.vdb.qcow2"))
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("tpm2-ours", fi_initrd(ctx, "fi-plain"),
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                     f"{FI_APPEND} vm.debug", extra_args=tpm.qemu_args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["unlock"] == "tpm2", f"unlock {st['unlock']}, attempts {attempts(st)}")
    ctx.check(attempts(st) == [("tpm2", True)], f"attempts {attempts(st)}")
    ctx.check(st["key_in_cmdline"] is False, "key_in_cmdline set")
    ctx.check(r.mount_at("/persist") is not None, "/persist not mounted")
    ctx.diag(f"TPM2 unlock: {unlock_ms(st, 'tpm2')} ms")
    check_no_secret(ctx, r, read_key(ctx))

    # The other direction: systemd 252's token plugin (what systemd-cryptsetup runs) opens a
    # token we enrolled. It talks to /dev/tpmrm0, so the script bridges one to a swtpm.
    state2 = fresh_dir(ctx.path("tpm2-ours.host.tpm"))
    img2 = luks_copy(ctx, "tpm2-ours-host")
    enroll_ours(ctx, img2, state2, "7")
    check_systemd_unseals(ctx, img2, state2, "our token")


def check_systemd_unseals(ctx, img, state, what):
    """systemd 252's token plugin (systemd-unlock.sh) unseals IMG's token with the swtpm STATE
    after a fresh power-on."""
    s = subprocess.run([SYSTEMD_UNLOCK, img, state], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    ctx.diag(s.stdout.strip().splitlines()[-1] if s.stdout.strip() else "no output")
    ctx.check(s.returncode == 0, f"systemd's plugin did not unseal {what}: {s.stdout[-400:]}")


@scenario("tpm2-systemd-enrolled")
def tpm2_systemd_enrolled(ctx):
    """A disk enrolled by Debian's systemd-cryptenroll (252) unlocks in the VM with its TPM."""
    state = fresh_dir(ctx.path("tpm2-systemd.tpm"))
    pcr7 = boot_pcrs(ctx, "tpm2-systemd-pcrs", state)[7]
    # systemd-cryptenroll seals to the current PCR values: replay the firmware's PCR 7 event
    # on the host TPM first (and check it gives what the VM measured).
    img = luks_copy(ctx, "tpm2-systemd")
    with harness.swtpm_tcp(state) as tpm:
        tcti, env = tpm.tcti, tpm.env
        subprocess.run(["tpm2_pcrextend", f"7:sha256={SEPARATOR_DIGEST}"], env=env, check=True)
        now = subprocess.run(["tpm2_pcrread", "sha256:7"], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        ctx.require(pcr7 in now.lower().replace("0x", ""),
                    f"replayed PCR 7 {now.strip()} is not the VM's {pcr7}")
        with open(ctx.disks.key) as f:
            key = f.read()
        e = subprocess.run(["systemd-cryptenroll", f"--tpm2-device={tcti}", "--tpm2-pcrs=7",
                            img], env=dict(os.environ, PASSWORD=key),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.require(e.returncode == 0, f"systemd-cryptenroll failed: {e.stdout}")
    tok = token_json(img)
    ctx.check("factory-init-pcr-values" not in tok, "not a token systemd wrote")
    vdb = harness.overlay(img, ctx.path("tpm2-systemd.vdb.qcow2"))
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("tpm2-systemd", fi_initrd(ctx, "fi-plain"),
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                     FI_APPEND, extra_args=tpm.qemu_args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("tpm2", True)], f"attempts {attempts(st)}: {st['reason']}")
    ctx.diag(f"TPM2 unlock (systemd-cryptenroll token): {unlock_ms(st, 'tpm2')} ms")


@scenario("tpm2-pin")
def tpm2_pin(ctx):
    """A systemd-cryptenroll token with a PIN (--tpm2-with-pin): the PIN is asked on the
    console and the TPM checks it (a wrong PIN, then the right one, on the next try); without a way to ask (vm.luks= lacks passphrase) the token
    is skipped with that reason and the key file takes over."""
    state = fresh_dir(ctx.path("tpm2-pin.tpm"))
    img = luks_copy(ctx, "tpm2-pin")
    pin, wrong = "pin-4711", "pin-4712"
    with harness.swtpm_tcp(state) as tpm:
        e = subprocess.run(["systemd-cryptenroll", f"--tpm2-device={tpm.tcti}",
                            "--tpm2-pcrs=", "--tpm2-with-pin=yes", img],
                           env=dict(os.environ, PASSWORD=read_key(ctx), NEWPIN=pin),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.require(e.returncode == 0, f"systemd-cryptenroll failed: {e.stdout}")
    ctx.check(token_json(img).get("tpm2-pin") is True, "the token has no PIN")
    vdb = harness.overlay(img, ctx.path("tpm2-pin.vdb.qcow2"))
    disks = [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)]
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("tpm2-pin", fi_initrd(ctx, "fi-plain"), disks, FI_APPEND,
                     extra_args=tpm.qemu_args, interact=[
                         ("TPM2 PIN for /dev/vdb (try 1 of 3): ", wrong + "\r"),
                         ("TPM2 PIN for /dev/vdb (try 2 of 3): ", pin + "\r")])
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 2, f"PIN prompts answered: {len(r.interactions)} of 2")
    ctx.check(attempts(st) == [("tpm2", False), ("tpm2", True)],
              f"attempts {attempts(st)}: {st['reason']}")
    detail = (st.get("unlock_attempts") or [{}])[0].get("detail") or ""
    ctx.check("PIN is wrong" in detail, f"first tpm2 detail {detail!r}")
    check_no_secret(ctx, r, pin)
    check_no_secret(ctx, r, wrong)
    check_no_secret(ctx, r, read_key(ctx))

    with harness.Swtpm(state) as tpm:
        r2 = ctx.boot("tpm2-pin-noprompt", fi_initrd(ctx, "fi-keyfile", keyfile=ctx.disks.key),
                      disks, f"{FI_APPEND} vm.luks=tpm2,keyfile", extra_args=tpm.qemu_args)
    st2 = status_of(ctx, r2)
    ctx.check(attempts(st2) == [("tpm2", False), ("keyfile", True)], f"attempts {attempts(st2)}")
    detail = (st2.get("unlock_attempts") or [{}])[0].get("detail") or ""
    ctx.check("needs a TPM2 PIN" in detail, f"tpm2 detail {detail!r}")


@scenario("tpm2-pcr-mismatch")
def tpm2_pcr_mismatch(ctx):
    """Sealed to PCR 7 as it was on the host (zero); the firmware changes it at boot: the TPM2
    attempt fails naming PCR 7 with both values, and the key file takes over."""
    state = fresh_dir(ctx.path("tpm2-mismatch.tpm"))
    img = luks_copy(ctx, "tpm2-mismatch")
    enroll_ours(ctx, img, state, "7")
    vdb = harness.overlay(img, ctx.path("tpm2-mismatch.vdb.qcow2"))
    initrd = fi_initrd(ctx, "fi-keyfile", keyfile=ctx.disks.key)
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("tpm2-pcr-mismatch", initrd,
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                     FI_APPEND, extra_args=tpm.qemu_args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("tpm2", False), ("keyfile", True)], f"attempts {attempts(st)}")
    detail = (st.get("unlock_attempts") or [{}])[0].get("detail") or ""
    ctx.check("PCR 7 expected 0000000000000000" in detail and "now " in detail,
              f"tpm2 detail {detail!r}")
    ctx.diag(f"tpm2: {detail}")
    check_fi_logged(ctx, r, "PCR 7 expected")


@scenario("tpm2-absent")
def tpm2_absent(ctx):
    """A disk with a TPM2 token in a VM without a TPM: the wait is bounded, the reason logged,
    and the key file takes over."""
    state = fresh_dir(ctx.path("tpm2-absent.tpm"))
    img = luks_copy(ctx, "tpm2-absent")
    enroll_ours(ctx, img, state, "7")
    vdb = harness.overlay(img, ctx.path("tpm2-absent.vdb.qcow2"))
    r = ctx.boot("tpm2-absent", fi_initrd(ctx, "fi-keyfile", keyfile=ctx.disks.key),
                 [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                 f"{FI_APPEND} vm.luks.tpm2.timeout=1")
    st = status_of(ctx, r)
    ctx.check(st["tpm2"] == "none", f"tpm2 {st['tpm2']}")
    ctx.check(attempts(st) == [("tpm2", False), ("keyfile", True)], f"attempts {attempts(st)}")
    detail = (st.get("unlock_attempts") or [{}])[0].get("detail") or ""
    ctx.check("no TPM2 device" in detail, f"tpm2 detail {detail!r}")


#: What factory-init measures into PCR 15 before stage 2 (src/tpm2.h: TPM2_LOCK_EVENT).
LOCK_EVENT = b"factory-init:leave-initrd"
ZERO_PCR = "0" * 64


def locked_pcr15():
    """PCR 15 after one extend with the lock event, from zero at power-on."""
    import hashlib
    event = hashlib.sha256(LOCK_EVENT).digest()
    return hashlib.sha256(b"\0" * 32 + event).hexdigest()


def host_tpm2_check(img, tpm):
    """factory-init tpm2-check on the host against a swtpm: (exit status, output)."""
    r = subprocess.run([FACTORY_INIT_DEV, "tpm2-check", img, tpm.tcti],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout.strip()


def boot_locked(ctx, name, img, state):
    """Boots IMG with the TPM alone (vm.luks=tpm2); stage 2 runs tpm2-check on it."""
    vdb = harness.overlay(img, ctx.path(f"{name}.vdb.qcow2"))
    hook = harness.stage2_hook("exec \"$FI_BIN\" tpm2-check /dev/vdb\n", ctx.build, name,
                               binary=FACTORY_INIT)
    with harness.Swtpm(state) as tpm:
        r = ctx.boot(name, fi_initrd(ctx, "fi-plain"),
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                     f"{FI_APPEND} vm.luks=tpm2", extra_args=tpm.qemu_args + hook)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist" and st["unlock"] == "tpm2",
              f"{name}: outcome {st['outcome']}, unlock {st['unlock']}: {st['reason']}")
    lock = st.get("tpm2_lock") or {}
    ctx.check(lock.get("extended") is True and lock.get("pcr") == 15, f"{name}: tpm2_lock {lock}")
    ctx.check(pcrs_of(r).get(15) == locked_pcr15(),
              f"{name}: stage 2's PCR 15 {pcrs_of(r).get(15)}, expected {locked_pcr15()}")
    ctx.check(r.hook_rc == 1, f"{name}: tpm2-check in stage 2 exited {r.hook_rc}: "
              f"{r.hook_output}")
    ctx.check(any("token 0: sealed" in line for line in r.hook_output),
              f"{name}: tpm2-check said {r.hook_output}")
    ctx.check(not any("accepts the key" in line for line in r.hook_output),
              f"{name}: stage 2 unsealed the key: {r.hook_output}")
    check_no_secret(ctx, r, read_key(ctx))
    return r


@scenario("tpm2-lock")
def tpm2_lock(ctx):
    """Stage 1 extends PCR 15 before stage 2: a token bound to 7+15 (ours, and one
    systemd-cryptenroll wrote) unlocks in stage 1 and no longer unseals in stage 2
    (factory-init tpm2-check, run there). On the host, the same tokens unseal with PCR 15 at
    zero and stop once it is extended with the lock event: the check can tell the two apart."""
    state = fresh_dir(ctx.path("tpm2-lock.tpm"))
    pcrs = boot_pcrs(ctx, "tpm2-lock-pcrs", state)
    ctx.check(pcrs.get(15) == locked_pcr15(), f"PCR 15 in stage 2: {pcrs.get(15)}")
    ours = luks_copy(ctx, "tpm2-lock-ours")
    enroll_ours(ctx, ours, state, f"7:sha256={pcrs[7]}+15:sha256={ZERO_PCR}")
    ctx.check(token_json(ours)["tpm2-pcrs"] == [7, 15], f"token {token_json(ours)}")
    sd = luks_copy(ctx, "tpm2-lock-systemd")
    with harness.swtpm_tcp(state) as tpm:
        subprocess.run(["tpm2_pcrextend", f"7:sha256={SEPARATOR_DIGEST}"], env=tpm.env,
                       check=True)
        with open(ctx.disks.key) as f:
            key = f.read()
        e = subprocess.run(["systemd-cryptenroll", f"--tpm2-device={tpm.tcti}",
                            "--tpm2-pcrs=7+15", sd], env=dict(tpm.env, PASSWORD=key),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ctx.require(e.returncode == 0, f"systemd-cryptenroll failed: {e.stdout}")
        # The controls: with PCR 15 at zero both unseal; after the lock event neither does.
        for img in (ours, sd):
            rc, out = host_tpm2_check(img, tpm)
            ctx.check(rc == 0 and "accepts the key" in out, f"host, PCR 15 zero: {rc} {out}")
        import hashlib
        subprocess.run(["tpm2_pcrextend",
                        f"15:sha256={hashlib.sha256(LOCK_EVENT).hexdigest()}"],
                       env=tpm.env, check=True)
        for img in (ours, sd):
            rc, out = host_tpm2_check(img, tpm)
            ctx.check(rc == 1 and "sealed" in out, f"host, PCR 15 locked: {rc} {out}")
    ctx.check("factory-init-pcr-values" not in token_json(sd), "not a token systemd wrote")
    boot_locked(ctx, "tpm2-lock-ours", ours, state)
    boot_locked(ctx, "tpm2-lock-systemd", sd, state)
