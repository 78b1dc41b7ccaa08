"""scenarios_unlock.py - unlocking without a TPM2 token: credentials, a typed passphrase.

credential-smbios, credential-fw_cfg, passphrase, and unlock-all-fail (every method, the TPM2
one included, fails).  Registered in this order, after scenarios_tpm2.
"""

import harness
from harness import Disk
from context import (FI_APPEND, RUN_CONFIG, attempts, check_no_secret, enroll_ours, fi_initrd,
                     fresh_dir, luks_copy, read_key, same_disk, scenario, status_of, unlock_ms)


@scenario("credential-smbios")
def credential_smbios(ctx):
    """The key as an SMBIOS type 11 credential (io.systemd.credential:vm.luks.key=...), and a
    vm.hostname credential feeding the config."""
    key = read_key(ctx)
    args = (harness.smbios_credential("vm.luks.key", key)
            + harness.smbios_credential("vm.hostname", "from-smbios"))
    r = ctx.boot("credential-smbios", fi_initrd(ctx, "fi-plain"),
                 [Disk(ctx.disks.factory), Disk(ctx.disks.luks)], FI_APPEND, extra_args=args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("credential", True)], f"attempts {attempts(st)}")
    src = (st.get("unlock_attempts") or [{}])[0].get("source")
    ctx.check(src == "smbios", f"source {src}")
    ctx.check(r.json(RUN_CONFIG).get("hostname") == "from-smbios",
              f"{RUN_CONFIG}: {r.files.get(RUN_CONFIG)}")
    check_no_secret(ctx, r, key)


@scenario("credential-fw_cfg")
def credential_fw_cfg(ctx):
    """The key as a QEMU fw_cfg credential (opt/io.systemd.credentials/vm.luks.key)."""
    key = read_key(ctx)
    args = harness.fwcfg_credential("vm.luks.key", key, ctx.build)
    r = ctx.boot("credential-fw_cfg", fi_initrd(ctx, "fi-plain"),
                 [Disk(ctx.disks.factory), Disk(ctx.disks.luks)], FI_APPEND, extra_args=args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("credential", True)], f"attempts {attempts(st)}")
    src = (st.get("unlock_attempts") or [{}])[0].get("source")
    ctx.check(src == "fw_cfg", f"source {src}")
    check_no_secret(ctx, r, key)


@scenario("passphrase")
def passphrase(ctx):
    """Typed on the serial console: a wrong passphrase, then the right one."""
    key = read_key(ctx)
    wrong = "wrong-passphrase-1"
    r = ctx.boot("passphrase", fi_initrd(ctx, "fi-plain"),
                 [Disk(ctx.disks.factory), Disk(ctx.disks.luks)], FI_APPEND,
                 interact=[("(try 1 of 3): ", wrong + "\r"), ("(try 2 of 3): ", key + "\r")])
    st = status_of(ctx, r)
    ctx.check(len(r.interactions) == 2, f"{len(r.interactions)} prompts answered")
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("passphrase", False), ("passphrase", True)],
              f"attempts {attempts(st)}")
    ctx.check(st["unlock"] == "passphrase", f"unlock {st['unlock']}")
    ctx.diag(f"passphrase unlock, prompt to open (typed at once): "
             f"{unlock_ms(st, 'passphrase')} ms")
    check_no_secret(ctx, r, key)
    check_no_secret(ctx, r, wrong)


@scenario("unlock-all-fail")
def unlock_all_fail(ctx):
    """Every method fails (PCR mismatch, wrong credential, wrong cmdline key, wrong key file,
    three wrong passphrases): the factory store boots, the reason names each attempt, the data
    disk is untouched and no key used appears anywhere."""
    state = fresh_dir(ctx.path("all-fail.tpm"))
    img = luks_copy(ctx, "all-fail")
    enroll_ours(ctx, img, state, "7")
    bad_file = ctx.path("all-fail.badkey")
    with open(bad_file, "w") as f:
        f.write("wrong-key-file-4")
    vdb = harness.overlay(img, ctx.path("all-fail.vdb.qcow2"))
    wrong = ["wrong-cred-2", "wrong-cmdline-3", "wrong-typed-5", "wrong-typed-6",
             "wrong-typed-7"]
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("unlock-all-fail", fi_initrd(ctx, "fi-badkey", keyfile=bad_file),
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                     f"{FI_APPEND} vm.luks.key={wrong[1]}",
                     extra_args=tpm.qemu_args + harness.smbios_credential("vm.luks.key",
                                                                          wrong[0]),
                     interact=[(f"(try {i} of 3): ", w + "\r")
                               for i, w in enumerate(wrong[2:], 1)])
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    want = [("tpm2", False), ("credential", False), ("cmdline-key", False),
            ("keyfile", False)] + [("passphrase", False)] * 3
    ctx.check(attempts(st) == want, f"attempts {attempts(st)}")
    reason = st["reason"] or ""
    for m in ("tpm2", "credential", "cmdline-key", "keyfile", "passphrase"):
        ctx.check(m in reason, f"reason does not name {m}: {reason!r}")
    ctx.diag(f"reason: {reason}")
    ctx.check(r.mount_at("/persist") is None, "/persist is mounted")
    ctx.check(same_disk(img, vdb), "the data disk changed")
    for w in wrong + ["wrong-key-file-4", read_key(ctx)]:
        check_no_secret(ctx, r, w)
