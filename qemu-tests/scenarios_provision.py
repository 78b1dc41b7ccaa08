"""scenarios_provision.py - zero-touch provisioning (vm.persist.provision).

provision-tpm2 (a blank disk becomes /persist, and boot 2 opens it with the TPM2 token alone; the
age identity round-trips with Debian's age), provision-refused (each kind of non-blank disk, two
blank disks, no mkfs.btrfs, nothing to unlock with: left untouched byte for byte),
provision-unfinished (a disk left with our provisional label is made anew; systemd's plugin
unseals its token), provision-power-cut. Both ways to turn it on are used: the command line, and
the SMBIOS credentials a fleet manager sets (provision-tpm2). The default (provisioning off) is blank-disk in scenarios_boot.
"""

import json
import os
import subprocess

import harness
from harness import Disk
from context import (FI_APPEND, attempts, fresh_dir, reporter_sha256, reporter_stats, same_disk,
                     scenario, status_of)
from context import FACTORY_INIT, check_metrics, fi_initrd, fi_modules
from scenarios_tpm2 import check_systemd_unseals

#: A raw disk of this size is blank (a hole) unless a scenario writes to it.
SIZE = 512 << 20
#: The key the fleet manager keeps: a credential, so it never shows in /proc/cmdline.
FLEET_KEY = "fleet-manager-key-0123456789abcdef"
PROVISION = f"{FI_APPEND} vm.persist.provision"
PROVISIONAL_LABEL = "factory-init-unfinished"


def mkfs_btrfs():
    """The static mkfs.btrfs src/deps/build.sh puts in the deps prefix."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(top, "build", "deps-prefix")) as f:
        return os.path.join(f.read().strip(), "bin", "mkfs.btrfs")


def provision_initrd(ctx):
    """The factory-init initrd with mkfs.btrfs (made once per run, from this build)."""
    if not getattr(ctx, "_provision_initrd", None):
        out = ctx.path("fi-provision.initrd")
        ctx._provision_initrd = ctx.mkinitrd(out, FACTORY_INIT, fi_modules(),
                                             ["--provision", mkfs_btrfs()])
    return ctx._provision_initrd


def blank(ctx, name):
    path = ctx.path(f"{name}.img")
    subprocess.run(["rm", "-f", path], check=True)
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


def raw_of(ctx, qcow, name):
    """The overlay as a raw file the host's cryptsetup can read (no device-mapper needed)."""
    out = ctx.path(f"{name}.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", qcow, out], check=True)
    return out


def luks_dump(img):
    """The LUKS2 metadata (JSON) of IMG, with "label" from the binary header; None if none."""
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", img],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    text = subprocess.run(["cryptsetup", "luksDump", img], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if out.returncode != 0 or text.returncode != 0:
        return None
    meta = json.loads(out.stdout)
    for line in text.stdout.splitlines():
        if line.startswith("Label:"):
            meta["label"] = line.split(":", 1)[1].strip()
    return meta


def dos_table(path):
    """A DOS partition table with one Linux partition and nothing else (as fdisk writes it)."""
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") \
        + (8192).to_bytes(4, "little")
    with open(path, "r+b") as f:
        f.seek(440)
        f.write(b"\x12\x34\x56\x78\0\0" + entry + b"\0" * 48 + b"\x55\xaa")


def credential(name, value):
    """A system credential as libvirt's <oemStrings> or -smbios type=11 give it."""
    return ["-smbios", f"type=11,value=io.systemd.credential:{name}={value}"]


def key_credential():
    return credential("vm.luks.key", FLEET_KEY)


def hook_cat_key(ctx, name):
    return harness.stage2_hook("cat /persist/keys/host.agekey\n", ctx.path(""), name)


@scenario("provision-tpm2")
def provision_tpm2(ctx):
    """A blank disk, a TPM, and the fleet manager's two credentials (SMBIOS): the fleet key and
    vm.persist.provision=1. Boot 1 makes the LUKS2 + Btrfs /persist (label persist, a
    systemd-tpm2 token on PCRs 7+15, the key's slot), with the age identity in keys/; boot 2, with
    neither credential, unlocks it with the TPM2 token alone and keeps what boot 1 wrote."""
    state = fresh_dir(ctx.path("provision-tpm2.tpm"))
    base = blank(ctx, "provision-tpm2")
    vdb = harness.overlay(base, ctx.path("provision-tpm2.vdb.qcow2"))
    disks = [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)]
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("provision-tpm2", provision_initrd(ctx), disks, FI_APPEND,
                     extra_args=tpm.qemu_args + key_credential()
                     + credential("vm.persist.provision", "1")
                     + hook_cat_key(ctx, "provision-tpm2"))
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["provisioned"] is True, f"provisioned {st['provisioned']}")
    ctx.check(st["provision"] and st["provision"]["result"] == "done", f"provision {st['provision']}")
    ctx.check(st["unlock"] == "provision", f"unlock {st['unlock']}")
    ctx.check(r.contains("from system credentials: vm.persist.provision=1"),
              "no line naming the credential that turned provisioning on")
    ctx.check(r.json("/run/factory-init/plan.json").get("provision") is True,
              "plan.json: provision is not true")
    rcpt, uuid = st["age_recipient"], st["luks_uuid"]
    ctx.check(rcpt and rcpt.startswith("age1") and len(rcpt) == 62, f"age_recipient {rcpt!r}")
    line = [ln for ln in r.raw.splitlines() if "factory-init: provisioned /dev/vdb:" in ln]
    ctx.check(line and f"luks_uuid={uuid}" in line[0] and f"age_recipient={rcpt}" in line[0],
              f"console line {line}")
    ctx.check(r.mount_at("/persist") is not None, "/persist not mounted")
    m = check_metrics(ctx, r)
    ctx.check(m.get("factory_init_provisioned") == 1, "metric provisioned")
    ctx.check(m.get('factory_init_unlock_method{method="provision"}') == 1,
              "metric unlock_method provision")
    ctx.check(m.get('factory_init_reason{code="none"}') == 1, "metric reason none")
    steps = {s["name"]: s["ms"] for s in st["steps"]}
    for s in ("provision-check", "provision-luks", "provision-tpm2", "provision-key",
              "provision-mkfs", "provision-finish"):
        ctx.check(s in steps, f"no step {s} in {sorted(steps)}")
    ctx.diag("provisioning ms: " + ", ".join(f"{k[10:]} {v}" for k, v in steps.items()
                                              if k.startswith("provision-")))

    # The identity the guest wrote: its recipient is the one reported, and age round-trips.
    ident = "\n".join(r.hook_output) + "\n"
    ctx.check(f"# public key: {rcpt}" in ident, "host.agekey does not name the recipient")
    ctx.check(FLEET_KEY not in r.raw, "the fleet key reached the console")
    secret_lines = [ln for ln in r.hook_output if ln.startswith("AGE-SECRET-KEY-1")]
    ctx.check(len(secret_lines) == 1, f"{len(secret_lines)} identities in host.agekey")
    keyfile = ctx.path("provision-tpm2.agekey")
    with open(keyfile, "w") as f:
        f.write(ident)
    msg = b"sealed for the new VM\n"
    enc = subprocess.run(["age", "-r", rcpt], input=msg, stdout=subprocess.PIPE, check=True).stdout
    dec = subprocess.run(["age", "-d", "-i", keyfile], input=enc, stdout=subprocess.PIPE)
    ctx.check(dec.returncode == 0 and dec.stdout == msg, "age could not decrypt with the key")
    stats = reporter_stats(r)
    for path, mode in (("/persist/keys", "700"), ("/persist/keys/host.agekey", "600"),
                       ("/persist/keys/host.agekey.pub", "644"), ("/persist/config.json", "600"),
                       ("/persist/nix", "755")):
        ctx.check(stats.get(path) == (mode, "0", "0"), f"{path}: {stats.get(path)}")
    ctx.check(r.json("/persist/config.json") == {}, "config.json is not {}")

    # The header as the host's cryptsetup reads it.
    meta = luks_dump(raw_of(ctx, vdb, "provision-tpm2"))
    ctx.require(meta is not None, "the disk has no LUKS2 header the host can read")
    ctx.check(meta.get("label") == "persist", f"LUKS2 label {meta.get('label')!r}")
    toks = list(meta.get("tokens", {}).values())
    ctx.check(len(toks) == 1 and toks[0]["type"] == "systemd-tpm2"
              and toks[0]["tpm2-pcrs"] == [7, 15], f"tokens {toks}")
    ctx.check(len(meta.get("keyslots", {})) == 2, f"{len(meta.get('keyslots', {}))} key slots")

    # Boot 2: the TPM2 token alone (no credential), and boot 1's files are there.
    with harness.Swtpm(state) as tpm:
        r2 = ctx.boot("provision-tpm2-2", provision_initrd(ctx), disks, FI_APPEND,
                      extra_args=tpm.qemu_args)
    st2 = status_of(ctx, r2)
    ctx.check(st2["outcome"] == "persist", f"boot 2: outcome {st2['outcome']}: {st2['reason']}")
    ctx.check(st2["provisioned"] is False, "boot 2 provisioned again")
    ctx.check(attempts(st2) == [("tpm2", True)], f"boot 2: attempts {attempts(st2)}")
    sha = [reporter_sha256(b).get("/persist/keys/host.agekey") for b in (r, r2)]
    ctx.check(sha[0] and sha[0] == sha[1], f"boot 2: host.agekey changed: {sha}")


def refused_boot(ctx, name, images, append=PROVISION, initrd=None, tpm=True, key=True, extra=(),
                 want_result=False):
    """Boots with IMAGES as data disks (raw bases, behind overlays) and provisioning on; checks
    the fallback and that every disk still reads as its base. Returns the status (and the boot's
    result with want_result)."""
    disks = [Disk(ctx.disks.factory)]
    pairs = []
    for i, base in enumerate(images):
        vd = harness.overlay(base, ctx.path(f"{name}.{i}.qcow2"))
        pairs.append((base, vd))
        disks.append(Disk(vd, "qcow2", snapshot=False))
    extra = (key_credential() if key else []) + list(extra)
    initrd = initrd or provision_initrd(ctx)
    if tpm:
        with harness.Swtpm(fresh_dir(ctx.path(f"{name}.tpm"))) as t:
            r = ctx.boot(name, initrd, disks, append, extra_args=t.qemu_args + extra)
    else:
        r = ctx.boot(name, initrd, disks, append, extra_args=extra)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"{name}: outcome {st['outcome']}")
    ctx.check(st["provisioned"] is False, f"{name}: provisioned")
    for base, vd in pairs:
        ctx.check(same_disk(base, vd), f"{name}: {os.path.basename(base)} was written to")
    ctx.diag(f"{name}: {st['reason']}")
    return (st, r) if want_result else st


@scenario("provision-refused")
def provision_refused(ctx):
    """Provisioning on, and disks that are not blank: a partition table only, an ext4, one
    non-zero byte in the first MiB, one byte in the middle that only the samples see, two blank
    disks; and a LUKS1 volume, which is a candidate to unlock and so never provisioned. Each boot
    falls back, names the test that refused, and leaves every disk as it was, byte for byte."""
    cases = []
    table = blank(ctx, "refuse-table")
    dos_table(table)
    cases.append(("refuse-table", [table], "finds dos (its signature at byte 510)"))
    ext4 = blank(ctx, "refuse-ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", ext4], check=True)
    cases.append(("refuse-ext4", [ext4], "finds ext4 (its signature at byte 1080)"))
    byte = blank(ctx, "refuse-byte")
    with open(byte, "r+b") as f:
        f.seek(700 * 1024)
        f.write(b"\x01")
    cases.append(("refuse-byte", [byte], f"byte {700 * 1024} is not zero"))
    luks1 = blank(ctx, "refuse-luks1")
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks1", "--pbkdf-force-iterations",
                    "1000", "--key-file", "-", luks1], input=b"k", check=True)
    cases.append(("refuse-luks1", [luks1], None))
    middle = blank(ctx, "refuse-middle")
    # The middle of the first of the 256 sampled parts (blank.c: blank_sample_offsets).
    first, last = (1 << 20) // 4096, (SIZE - (1 << 20)) // 4096
    off = (first + (last - first) // 512) * 4096 + 123
    with open(middle, "r+b") as f:
        f.seek(off)
        f.write(b"\x80")
    cases.append(("refuse-middle", [middle], f"byte {off} is not zero"))
    cases.append(("refuse-two", [blank(ctx, "refuse-two-a"), blank(ctx, "refuse-two-b")],
                  "2 disks could be meant"))
    for name, images, want in cases:
        st = refused_boot(ctx, name, images, f"{PROVISION} vm.luks.timeout=1")
        if want is None:
            # A LUKS volume is a candidate: tried (no key opens it), so never provisioned.
            ctx.check(st["reason_code"] == "unlock-failed", f"{name}: {st['reason_code']}")
            ctx.check(st["provision"] is None, f"{name}: provision {st['provision']}")
            continue
        ctx.check(st["reason_code"] == "not-blank", f"{name}: reason_code {st['reason_code']}")
        ctx.check(st["reason"] and want in st["reason"], f"{name}: reason {st['reason']!r}")
        ctx.check(st["provision"] and st["provision"]["result"] == "refused",
                  f"{name}: provision {st['provision']}")

    # Blank, but what the new disk needs is missing: nothing is written either.
    for name, kw, want in (
            ("refuse-no-mkfs", {"initrd": fi_initrd(ctx, "fi-plain")}, "has no mkfs.btrfs"),
            ("refuse-no-key", {"tpm": False, "key": False}, "no TPM2 and no vm.luks.key")):
        st = refused_boot(ctx, name, [blank(ctx, name)], **kw)
        ctx.check(st["reason_code"] == "provision-failed", f"{name}: {st['reason_code']}")
        ctx.check(want in (st["reason"] or ""), f"{name}: reason {st['reason']!r}")
        ctx.check(st["provision"] and st["provision"]["result"] == "failed",
                  f"{name}: provision {st['provision']}")


@scenario("provision-unfinished")
def provision_unfinished(ctx):
    """A disk with our provisional LUKS2 label (what a power cut before the last step leaves) is
    refused as a data disk without provisioning (a credential turns provisioning on, the command
    line's vm.persist.provision=0 outranks it), and made anew with it, sealed to PCR 15 alone as
    a credential vm.persist.provision.pcrs asks; systemd 252's own token plugin then unseals the
    token the guest made."""
    base = blank(ctx, "provision-unfinished")
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--label",
                    PROVISIONAL_LABEL, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file", "-", base], input=b"k", check=True)
    st, r = refused_boot(ctx, "provision-unfinished-off", [base], f"{FI_APPEND} vm.persist.provision=0",
                         extra=credential("vm.persist.provision", "1"), want_result=True)
    ctx.check("did not finish" in (st["reason"] or ""), f"reason {st['reason']!r}")
    ctx.check(st["provision"] is None, f"provision {st['provision']}")
    ctx.check(r.contains("the command line overrides the credentials' vm.persist.provision"),
              "no line saying the command line overrode the credential")
    vdb = harness.overlay(base, ctx.path("provision-unfinished.vdb.qcow2"))
    state = fresh_dir(ctx.path("provision-unfinished.tpm"))
    pcrs = "15:sha256=" + "0" * 64
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("provision-unfinished", provision_initrd(ctx),
                     [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)], PROVISION,
                     extra_args=tpm.qemu_args + key_credential()
                     + credential("vm.persist.provision.pcrs", pcrs))
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["provisioned"] is True, "not provisioned")
    ctx.check(r.contains(f"from system credentials: vm.persist.provision.pcrs={pcrs}"),
              "no line naming the PCR credential")
    img = raw_of(ctx, vdb, "provision-unfinished")
    meta = luks_dump(img)
    ctx.check(meta and meta.get("label") == "persist", f"label {meta and meta.get('label')!r}")
    toks = list((meta or {}).get("tokens", {}).values())
    ctx.check(len(toks) == 1 and toks[0]["type"] == "systemd-tpm2" and toks[0]["tpm2-pcrs"] == [15],
              f"tokens {toks}")
    # systemd's plugin on the host, against the VM's swtpm state after a power-on (PCR 15 zero).
    check_systemd_unseals(ctx, img, state, "the token the guest made")


@scenario("provision-power-cut")
def provision_power_cut(ctx):
    """Power cuts (QEMU killed) after the LUKS2 format, after mkfs.btrfs and after the layout is
    synced, one after the other on the same disk: each next boot makes the disk anew, and the
    last one ends with a complete /persist that the next boot opens. The fleet key is given as a
    credential: a TPM reset without TPM2_Shutdown counts against its dictionary-attack lockout
    (swtpm locks out after 3), and a locked-out TPM seals nothing; with the key, provisioning
    still completes (and says why the TPM2 slot is missing)."""
    state = fresh_dir(ctx.path("provision-cut.tpm"))
    base = blank(ctx, "provision-cut")
    vdb = harness.overlay(base, ctx.path("provision-cut.vdb.qcow2"))
    disks = [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)]
    append = PROVISION.replace(" quiet", "")   # the step lines reach the console
    fired = []
    for mark in (b"LUKS2 formatted", b"Btrfs made on", b"layout written and synced"):
        with harness.Swtpm(state) as tpm:
            r = ctx.boot(f"provision-cut-{len(fired)}", provision_initrd(ctx), disks, append,
                         extra_args=tpm.qemu_args + key_credential(),
                         kill_when=lambda tail, m=mark: m in tail)
        if r.killed:
            fired.append(mark.decode())
            meta = luks_dump(raw_of(ctx, vdb, "provision-cut"))
            label = meta and meta.get("label")
            # before the last step the disk is ours, unfinished (the label step may have won
            # the race against the kill after "layout written")
            ctx.check(label == PROVISIONAL_LABEL or (label == "persist" and mark.startswith(b"layout")),
                      f"after a cut at {mark.decode()!r}: label {label!r}")
        else:
            ctx.check(status_of(ctx, r)["outcome"] == "persist", f"uncut at {mark}: not persist")
    ctx.check(len(fired) >= 2, f"the power cuts fired only at {fired}")
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("provision-cut-final", provision_initrd(ctx), disks, append,
                     extra_args=tpm.qemu_args + key_credential())
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"after cuts at {fired}: {st['outcome']}: {st['reason']}")
    stats = reporter_stats(r)
    ctx.check(stats.get("/persist/keys/host.agekey") == ("600", "0", "0"),
              f"host.agekey: {stats.get('/persist/keys/host.agekey')}")
    meta = luks_dump(raw_of(ctx, vdb, "provision-cut"))
    ctx.check(meta and meta.get("label") == "persist", "the label is not persist")
    detail = (st.get("provision") or {}).get("detail") or ""
    ctx.check(meta and len(meta.get("keyslots", {})) == (2 if "TPM2 token" in detail else 1),
              f"key slots {meta and len(meta.get('keyslots', {}))} for {detail!r}")
    with harness.Swtpm(state) as tpm:
        r2 = ctx.boot("provision-cut-again", provision_initrd(ctx), disks, append,
                      extra_args=tpm.qemu_args + key_credential())
    st2 = status_of(ctx, r2)
    ok = [m for m, good in attempts(st2) if good]
    ctx.check(st2["outcome"] == "persist" and not st2["provisioned"] and ok in (["tpm2"], ["credential"]),
              f"the boot after: {attempts(st2)}")
    ctx.diag(f"cut after: {', '.join(fired)}; then provisioned={st['provisioned']} ({detail}); "
             f"the boot after opened it with {ok}")
