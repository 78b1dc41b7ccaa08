"""scenarios_sdinitrd.py - factory-init inside a real systemd initrd, as the NixOS unit.

The initrd is Debian forky's systemd 262 built by its dracut 112 (qemu-tests/mksdinitrd.sh);
factory-init runs there as /etc/systemd/system/factory-init.service, the very text
nixos/render-unit renders for the NixOS module (sdinitrd-contents checks the bytes), enabled
through initrd-fs.target.wants.  systemd mounts /sysroot from root=/dev/vda (factory.img, ro),
factory-init does /persist, /nix and the config, systemd switches root into factory.img, whose
/sbin/init is the reporter.  These scenarios always boot the forky 7.2 kernel (the initrd
carries its modules), whatever run.py's --kernel says.

sdinitrd-contents, sdinitrd-overlay, sdinitrd-bind, sdinitrd-fallback, sdinitrd-credentials,
sdinitrd-tpm2, sdinitrd-tpm2-pin, sdinitrd-passphrase, sdinitrd-cryptsetup-split.  Registered
after scenarios_hostile and scenarios_systemd262 (sdinitrd-tpm2-pin uses its Argon2id token).
"""

import hashlib
import json
import os
import re
import subprocess

import harness
from harness import Disk
from context import (HERE, RUN_CONFIG, STACK_SH, STATUS, TOP, attempts, check_no_disk_fallback,
                     check_no_secret, enroll_ours, fresh_dir, luks_copy, read_key, scenario)
from scenarios_systemd262 import PIN, WRONG_PIN, argon2id_image, lockout_of

MKSDINITRD = os.path.join(HERE, "mksdinitrd.sh")
RENDER_UNIT = os.path.join(TOP, "nixos", "render-unit")
UNIT_PATH = "etc/systemd/system/factory-init.service"
WANTS_PATH = "etc/systemd/system/initrd-fs.target.wants/factory-init.service"
#: systemd's initrd: status lines on the console, PID 1's log in kmsg (the reporter dumps it),
#: kernel messages off the console (serial output is slow under TCG).
SD_APPEND = ("console=ttyS0 panic=-1 loglevel=4 root=/dev/vda ro systemd.show_status=1 "
             "systemd.log_level=info systemd.log_target=kmsg printk.devkmsg=on "
             "systemd.default_device_timeout_sec=600")
SD_MEMORY = 1024
SD_TIMEOUT = 900
#: The firmware (SeaBIOS) extends PCR 7 once, with SHA-256 of 0xffffffff (a separator); the
#: value the VM has in PCR 7 is therefore computable on the host (tpm2-systemd-enrolled checks
#: the replay against a VM).
SEPARATOR_DIGEST = "ad95131bc0b799c0b1af477fb14fcf26a6a9f76079e48bf090acb7e8367bfd0e"
#: systemd's initrd gave up: without emergency.service nothing more happens; stop at once.
HOPELESS = (b"emergency.service not found", b"Kernel panic")

_forky = {}


def forky_kernel():
    """(vmlinuz, kmoddir) of the forky 7.2 cloud kernel (stack.sh kernel forky)."""
    if "dir" not in _forky:
        out = subprocess.run([STACK_SH, "-q", "kernel", "forky"], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        _forky["dir"] = out.strip().splitlines()[-1]
    d = _forky["dir"]
    with open(os.path.join(d, "kver")) as f:
        kver = f.read().strip()
    return os.path.join(d, "boot", f"vmlinuz-{kver}"), os.path.join(d, "lib", "modules", kver)


def sd_initrd(ctx, name="sdinitrd", config=None, files=(), crypttab=None, dropins=()):
    """mksdinitrd.sh into the build dir (cached by its inputs); returns the initrd's path.
    CONFIG: a dict (the embedded /etc/vm-config.json); FILES: "SRC:DST[:MODE]"; CRYPTTAB: its
    text; DROPINS: {name: text} for factory-init.service.d/."""
    cmd = [MKSDINITRD, "-q", "--name", name]
    if config is not None:
        p = ctx.path(f"{name}.vm-config.json")
        with open(p, "w") as f:
            json.dump(config, f)
        cmd += ["--config", p]
    for spec in files:
        cmd += ["--file", spec]
    if crypttab is not None:
        p = ctx.path(f"{name}.crypttab")
        with open(p, "w") as f:
            f.write(crypttab)
        cmd += ["--crypttab", p]
    for dname, text in dict(dropins).items():
        p = ctx.path(f"{name}.{dname}.conf")
        with open(p, "w") as f:
            f.write(text)
        cmd += ["--dropin", f"{dname}:{p}"]
    r = subprocess.run(cmd + [ctx.build], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    ctx.require(r.returncode == 0, f"mksdinitrd.sh failed: {r.stderr.strip()[-1500:]}")
    path = r.stdout.strip().splitlines()[-1]
    with open(ctx.path(f"{name}.sdinitrd-info")) as f:
        ctx.diag(f"{name}.initrd: {f.read().strip()} (seconds: of the build that made it)")
    return path


def sd_boot(ctx, name, initrd, disks, append="", **kw):
    """harness.boot of the forky kernel with the systemd initrd (remembered in ctx.boots)."""
    kernel, _ = forky_kernel()
    kw.setdefault("memory", SD_MEMORY)
    kw.setdefault("timeout", SD_TIMEOUT)
    kw.setdefault("echo", ctx.echo)
    kw.setdefault("kill_when", lambda tail: any(h in tail for h in HOPELESS))
    r = harness.boot(kernel, initrd, f"{SD_APPEND} {append}".strip(), disks, ctx.build, name,
                     **kw)
    ctx.boots.append(r)
    ctx.diag(f"{name}: wall {r.wall_time:.0f} s, stage-2 uptime {r.uptime} s")
    return r


# ---- the initrd's contents --------------------------------------------------------------------

def _newc(buf, pos):
    """{name: (mode, data)} of one newc archive at POS, and the position after its trailer."""
    out = {}
    while True:
        if buf[pos:pos + 6] != b"070701":
            raise ValueError(f"no newc header at offset {pos}")
        f = [int(buf[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, nsize = f[1], f[6], f[11]
        name = buf[pos + 110:pos + 110 + nsize - 1].decode()
        p = (pos + 110 + nsize + 3) & ~3
        data = buf[p:p + size]
        pos = (p + size + 3) & ~3
        if name == "TRAILER!!!":
            return out, pos
        out[name] = (mode, data)


def initrd_members(path):
    """Every member of an initrd: dracut 112 writes an uncompressed cpio (the already
    compressed .ko.xz modules) followed by the zstd-compressed main cpio; both are read
    (the compressed part through `zstd -dc`)."""
    with open(path, "rb") as f:
        buf = f.read()
    members, pos = {}, 0
    while pos < len(buf):
        while pos < len(buf) and buf[pos] == 0:
            pos += 1
        if pos >= len(buf):
            break
        if buf[pos:pos + 6] == b"070701":
            m, pos = _newc(buf, pos)
            members.update(m)
            continue
        raw = subprocess.run(["zstd", "-dcq"], input=buf[pos:], stdout=subprocess.PIPE,
                             check=True).stdout
        while raw:
            m, p = _newc(raw, 0)
            members.update(m)
            raw = raw[p:].lstrip(b"\0")
        break
    return members


def rendered_unit():
    return subprocess.run([RENDER_UNIT, "factoryInit=/bin/factory-init",
                           "configFile=/etc/vm-config.json"], check=True,
                          stdout=subprocess.PIPE).stdout


def check_contents(ctx, initrd, want_files=()):
    m = initrd_members(initrd)
    unit = m.get(UNIT_PATH, (0, None))[1]
    want = rendered_unit()
    ctx.check(unit == want, f"{UNIT_PATH} differs from nixos/render-unit's output "
              f"(sha256 {hashlib.sha256(unit or b'').hexdigest()[:16]} vs "
              f"{hashlib.sha256(want).hexdigest()[:16]})")
    mode, target = m.get(WANTS_PATH, (0, b""))
    ctx.check(mode & 0o170000 == 0o120000 and target == b"/etc/systemd/system/factory-init.service",
              f"{WANTS_PATH}: mode {oct(mode)} -> {target!r}")
    mode, target = m.get("init", (0, b""))
    ctx.check(mode & 0o170000 == 0o120000 and target.endswith(b"lib/systemd/systemd"),
              f"/init is not systemd: {target!r}")
    ctx.check("etc/initrd-release" in m, "no /etc/initrd-release")
    with open(os.environ.get("FACTORY_INIT_BIN",
                             os.path.join(TOP, "build", "factory-init.static")), "rb") as f:
        fi = f.read()
    got = m.get("usr/bin/factory-init", m.get("bin/factory-init", (0, None)))[1]
    ctx.check(got == fi, "/bin/factory-init is not the binary under test")
    for u in ("systemd-ask-password-console.path", "systemd-ask-password-console.service",
              "sysinit.target.wants/systemd-ask-password-console.path"):
        ctx.check(f"usr/lib/systemd/system/{u}" in m, f"{u} missing")
    ctx.check("usr/bin/systemd-tty-ask-password-agent" in m, "no ask-password agent")
    _, kmoddir = forky_kernel()
    plan = subprocess.run([os.environ.get("FACTORY_INIT_BIN",
                                          os.path.join(TOP, "build", "factory-init.static")),
                           "--plan", "--cmdline", "", "--kmoddir", kmoddir],
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    kos = {os.path.basename(n).split(".ko")[0].replace("-", "_") for n in m if ".ko" in n}
    for mod in json.loads(plan)["modules"]:
        ctx.check(mod in kos, f"module {mod} missing from the initrd")
    for f in want_files:
        ctx.check(f in m, f"{f} missing from the initrd")
    return m


# ---- what the guest showed --------------------------------------------------------------------

def sd_status(ctx, r):
    ctx.require(r.stage2, "stage 2 never started (no switch-root into factory.img?)")
    ctx.require(STATUS in r.files, f"{STATUS} not reported: /run did not move to /sysroot/run?")
    return r.json(STATUS)


def _first(lines, pattern):
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    return None


def check_order(ctx, r, need_finished=True):
    """From PID 1's log in kmsg: factory-init.service finished before initrd-fs.target was
    reached and before the switch-root; returns the observed sequence for the report."""
    k = [l for l in r.kmsg if "systemd[1]:" in l]
    ev = {
        "sysroot.mount": _first(k, r"Mounted sysroot\.mount"),
        "fi-start": _first(k, r"Starting factory-init\.service"),
        "fi-finished": _first(k, r"Finished factory-init\.service"),
        "initrd-fs.target": _first(k, r"Reached target initrd-fs\.target"),
        "switch-root.service": _first(k, r"Starting initrd-switch-root\.service"),
        "switching": _first(k, r"Switching root"),
    }
    seq = " < ".join(n for n, i in sorted(ev.items(), key=lambda x: (x[1] is None, x[1] or 0))
                     if i is not None)
    ctx.diag(f"systemd order (kmsg): {seq}")
    if need_finished:
        f = ev["fi-finished"]
        ctx.check(f is not None, "no 'Finished factory-init.service' in PID 1's log")
        for later in ("initrd-fs.target", "switch-root.service", "switching"):
            ctx.check(f is None or ev[later] is None or f < ev[later],
                      f"factory-init.service finished after {later}")
        ctx.check(ev["sysroot.mount"] is not None and ev["fi-start"] is not None
                  and ev["sysroot.mount"] < ev["fi-start"],
                  "factory-init.service did not start after sysroot.mount")
        ctx.check(ev["switching"] is not None or ev["switch-root.service"] is not None,
                  "no switch-root in PID 1's log")
    return ev


def check_persist(ctx, r, st, store="overlay", device="/dev/mapper/persist"):
    ctx.check(st["mode"] == "helper", f"mode {st['mode']}")
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["store"] == store, f"store {st['store']}")
    p = r.mount_at("/persist")
    ctx.require(p is not None, "/persist not mounted")
    ctx.check(p.device == device and p.fstype == "btrfs", f"/persist: {p}")
    ctx.check(any(o.startswith("compress=zstd") for o in p.options), f"/persist: {p.options}")
    n = r.mount_at("/nix")
    want = "overlay" if store == "overlay" else "btrfs"
    ctx.check(n is not None and n.fstype == want, f"/nix is not {want}: {n}")
    ctx.check(r.marker_written, "no marker written under /nix")
    ctx.check(RUN_CONFIG in r.files, f"{RUN_CONFIG} not reported")
    root = r.mount_at("/")
    ctx.check(root is not None and root.device == "/dev/vda" and root.readonly,
              f"/ is not /dev/vda read-only: {root}")


# ---- the scenarios ----------------------------------------------------------------------------

@scenario("sdinitrd-contents")
def sdinitrd_contents(ctx):
    """The systemd initrd holds the unit byte for byte as nixos/render-unit renders it, enabled
    by initrd-fs.target.wants, systemd as /init, the ask-password console agent, and every
    module `factory-init --plan` names for the 7.2 kernel."""
    initrd = sd_initrd(ctx)
    m = check_contents(ctx, initrd)
    ctx.diag(f"{len(m)} members, {os.path.getsize(initrd)} bytes; unit sha256 "
             f"{hashlib.sha256(rendered_unit()).hexdigest()}")


@scenario("sdinitrd-overlay")
def sdinitrd_overlay(ctx):
    """The LUKS2 key in vm.luks.key=: factory-init.service unlocks, mounts /persist and lays
    the overlay on /sysroot/nix before initrd-fs.target; status and config survive the
    switch-root in the moved /run."""
    key = read_key(ctx)
    r = sd_boot(ctx, "sdinitrd-overlay", sd_initrd(ctx),
                [Disk(ctx.disks.factory), Disk(ctx.disks.luks)],
                f"vm.luks.key={key} vm.persist.timeout=120 vm.hostname=sd-1")
    st = sd_status(ctx, r)
    check_persist(ctx, r, st)
    ctx.check(st["unlock"] == "cmdline-key", f"unlock {st['unlock']}: {attempts(st)}")
    ctx.check(r.json(RUN_CONFIG).get("hostname") == "sd-1", f"{RUN_CONFIG}: "
              f"{r.files.get(RUN_CONFIG)}")
    check_order(ctx, r)
    check_no_secret(ctx, r, key)


@scenario("sdinitrd-bind")
def sdinitrd_bind(ctx):
    """vm.store=bind in the systemd initrd: a copy of the factory store on /persist, bound on
    /nix."""
    key = read_key(ctx)
    r = sd_boot(ctx, "sdinitrd-bind", sd_initrd(ctx),
                [Disk(ctx.disks.factory), Disk(ctx.disks.luks)],
                f"vm.luks.key={key} vm.persist.timeout=120 vm.store=bind")
    st = sd_status(ctx, r)
    check_persist(ctx, r, st, store="bind")
    ro = r.mount_at("/nix/.ro-store")
    ctx.check(ro is not None and ro.readonly, f"/nix/.ro-store: {ro}")
    check_order(ctx, r)


@scenario("sdinitrd-fallback")
def sdinitrd_fallback(ctx):
    """No data disk: factory-init.service still finishes (a fallback is no unit failure), the
    boot goes on on the factory store, the status says why."""
    r = sd_boot(ctx, "sdinitrd-fallback", sd_initrd(ctx), [Disk(ctx.disks.factory)],
                "vm.persist.timeout=5")
    st = sd_status(ctx, r)
    ctx.check(st["mode"] == "helper", f"mode {st['mode']}")
    check_no_disk_fallback(ctx, st, r)
    ctx.check(RUN_CONFIG in r.files, f"{RUN_CONFIG} missing in fallback")
    ctx.diag(f"reason: {st['reason']}")
    check_order(ctx, r)


@scenario("sdinitrd-credentials")
def sdinitrd_credentials(ctx):
    """The key as an SMBIOS credential vm.luks.key (and vm.hostname): systemd imports both, the
    unit's ImportCredential=vm.* hands them over in $CREDENTIALS_DIRECTORY, factory-init unlocks
    with the credential method."""
    key = read_key(ctx)
    args = (harness.smbios_credential("vm.luks.key", key)
            + harness.smbios_credential("vm.hostname", "from-smbios"))
    r = sd_boot(ctx, "sdinitrd-credentials", sd_initrd(ctx),
                [Disk(ctx.disks.factory), Disk(ctx.disks.luks)],
                "vm.persist.timeout=120", extra_args=args)
    st = sd_status(ctx, r)
    check_persist(ctx, r, st)
    ctx.check(attempts(st) == [("credential", True)], f"attempts {attempts(st)}")
    src = (st.get("unlock_attempts") or [{}])[0].get("source")
    ctx.diag(f"credential source: {src}")
    ctx.check(src == "directory", f"source {src} (want the directory systemd filled)")
    ctx.check(r.json(RUN_CONFIG).get("hostname") == "from-smbios",
              f"{RUN_CONFIG}: {r.files.get(RUN_CONFIG)}")
    check_order(ctx, r)
    check_no_secret(ctx, r, key)


@scenario("sdinitrd-tpm2")
def sdinitrd_tpm2(ctx):
    """A token of factory-init enroll-tpm2, sealed to the PCR 7 value SeaBIOS leaves, unlocks in
    the systemd initrd (swtpm)."""
    state = fresh_dir(ctx.path("sdinitrd-tpm2.tpm"))
    pcr7 = hashlib.sha256(b"\0" * 32 + bytes.fromhex(SEPARATOR_DIGEST)).hexdigest()
    img = luks_copy(ctx, "sdinitrd-tpm2")
    enroll_ours(ctx, img, state, f"7:sha256={pcr7}")
    vdb = harness.overlay(img, ctx.path("sdinitrd-tpm2.vdb.qcow2"))
    with harness.Swtpm(state) as tpm:
        r = sd_boot(ctx, "sdinitrd-tpm2", sd_initrd(ctx),
                    [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                    "vm.persist.timeout=120", extra_args=tpm.qemu_args)
    st = sd_status(ctx, r)
    check_persist(ctx, r, st)
    ctx.check(attempts(st) == [("tpm2", True)], f"attempts {attempts(st)}: {st['reason']}")
    ctx.diag(f"tpm2: {st.get('tpm2')}; lock: {st.get('tpm2_lock')}")
    check_order(ctx, r)


@scenario("sdinitrd-passphrase")
def sdinitrd_passphrase(ctx):
    """vm.luks=passphrase under systemd: factory-init asks through systemd's ask-password
    protocol, systemd-tty-ask-password-agent shows "Passphrase for /dev/vdb" on ttyS0, the
    passphrase typed there unlocks."""
    key = read_key(ctx)
    r = sd_boot(ctx, "sdinitrd-passphrase", sd_initrd(ctx),
                [Disk(ctx.disks.factory), Disk(ctx.disks.luks)],
                "vm.luks=passphrase vm.luks.timeout=300 vm.persist.timeout=120",
                # systemd's agent prints its prompt before it turns echo off; a TAB first is
                # answered with "(no echo)" only once it reads in raw mode: type after that.
                interact=[(AGENT_PROMPT, "\t"), ("(no echo)", key + "\r")])
    ctx.diag(f"prompts answered: {len(r.interactions)}")
    ctx.check(len(r.interactions) == 2, "no 'Passphrase for' prompt (or no '(no echo)') on "
              "the console")
    st = sd_status(ctx, r)
    ctx.diag(f"outcome {st['outcome']}, attempts {attempts(st)}, reason {st['reason']!r}")
    check_persist(ctx, r, st)
    ctx.check(attempts(st) == [("passphrase", True)], f"attempts {attempts(st)}")
    check_order(ctx, r)
    check_no_secret(ctx, r, key)


def agent_prompt(text):
    """systemd-tty-ask-password-agent's prompt TEXT (a regex) on the console."""
    return re.compile(text.encode() + rb"[^\r\n]*press TAB for no echo")


@scenario("sdinitrd-tpm2-pin")
def sdinitrd_tpm2_pin(ctx):
    """A TPM2 PIN token of systemd 262's systemd-cryptenroll (--tpm2-with-pin=yes: Argon2id of
    the PIN) in the systemd initrd: the PIN is asked through systemd's ask-password protocol and
    typed into systemd-tty-ask-password-agent on ttyS0.  A wrong PIN first (one failure the TPM
    counts, then a second prompt "try 2 of 3" through the agent), then the right one unlocks."""
    img, state = argon2id_image(ctx)
    vdb = harness.overlay(img, ctx.path("sdinitrd-tpm2-pin.vdb.qcow2"))
    before = lockout_of(state)
    with harness.Swtpm(state) as tpm:
        r = sd_boot(ctx, "sdinitrd-tpm2-pin", sd_initrd(ctx),
                    [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)],
                    "vm.persist.timeout=120 vm.luks.timeout=300", extra_args=tpm.qemu_args,
                    interact=[(agent_prompt("TPM2 PIN for /dev/vdb \\(try 1 of 3\\)"), "\t"),
                              ("(no echo)", WRONG_PIN + "\r"),
                              (agent_prompt("TPM2 PIN for /dev/vdb \\(try 2 of 3\\)"), "\t"),
                              ("(no echo)", PIN + "\r")])
    after = lockout_of(state)
    ctx.diag(f"prompts answered: {len(r.interactions)} of 4; lockout counter {before} -> {after}")
    ctx.check(len(r.interactions) == 4, "the agent did not show both PIN prompts (try 1, try 2)")
    ctx.check(any("asking through systemd's password agents: TPM2 PIN for /dev/vdb" in l
                  for l in r.kmsg), "factory-init did not ask through systemd's agents")
    st = sd_status(ctx, r)
    ctx.diag(f"outcome {st['outcome']}, attempts {attempts(st)}, reason {st['reason']!r}")
    check_persist(ctx, r, st)
    ctx.check(attempts(st) == [("tpm2", False), ("tpm2", True)], f"attempts {attempts(st)}")
    ctx.check(after == before + 1, f"lockout counter {before} -> {after} (want one failure)")
    check_order(ctx, r)
    check_no_secret(ctx, r, PIN)
    check_no_secret(ctx, r, WRONG_PIN)


#: The prompt of systemd-tty-ask-password-agent on the console (not factory-init's log line that
#: announces it: typed before the agent holds the terminal, the tty would echo the passphrase).
AGENT_PROMPT = agent_prompt("Passphrase for")

SPLIT_DROPIN = """[Unit]
After=systemd-cryptsetup@persist.service
Requires=systemd-cryptsetup@persist.service
"""


@scenario("sdinitrd-cryptsetup-split")
def sdinitrd_cryptsetup_split(ctx):
    """systemd-cryptsetup opens the volume (/etc/crypttab, a key file in the initrd), and
    factory-init, told by the embedded persist.opened=/dev/mapper/persist, only mounts it (a
    drop-in orders it after systemd-cryptsetup@persist.service): no unlock of its own."""
    d = ctx.disks
    initrd = sd_initrd(ctx, "sdinitrd-split", config={"persist.opened": "/dev/mapper/persist"},
                       files=[f"{d.key}:/etc/persist.key:0600"],
                       crypttab="persist /dev/vdb /etc/persist.key luks\n",
                       dropins={"cryptsetup": SPLIT_DROPIN})
    m = check_contents(ctx, initrd, ["etc/crypttab", "etc/persist.key", "etc/vm-config.json",
                                     "etc/systemd/system/factory-init.service.d/cryptsetup.conf"])
    ctx.check(any(n.endswith("systemd-cryptsetup") for n in m), "no systemd-cryptsetup")
    vdb = harness.overlay(d.luks, ctx.path("sdinitrd-split.vdb.qcow2"))
    r = sd_boot(ctx, "sdinitrd-cryptsetup-split", initrd,
                [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)], "vm.persist.timeout=120")
    k = [l for l in r.kmsg if "systemd[1]:" in l]
    cs = _first(k, r"Finished systemd-cryptsetup@persist\.service")
    fi = _first(k, r"Starting factory-init\.service")
    ctx.diag(f"systemd-cryptsetup@persist finished at kmsg line {cs}, factory-init started at {fi}")
    ctx.check(cs is not None and fi is not None and cs < fi,
              "factory-init.service did not start after systemd-cryptsetup@persist.service")
    st = sd_status(ctx, r)
    ctx.diag(f"outcome {st['outcome']}, device {st.get('device')}, unlock {st.get('unlock')}, "
             f"attempts {attempts(st)}, persist_opened {st.get('persist_opened')}, "
             f"reason {st['reason']!r}, warnings {st.get('warnings')}")
    check_persist(ctx, r, st)
    ctx.check(st.get("device") == "/dev/mapper/persist",
              f"status device {st.get('device')} (want the opened /dev/mapper/persist)")
    ctx.check(not st.get("unlock_attempts"), f"factory-init tried to unlock: {attempts(st)}")
    ctx.check(st.get("unlock") in (None, "opened", "systemd-cryptsetup"),
              f"unlock {st.get('unlock')}")
    check_order(ctx, r)
    check_no_secret(ctx, r, read_key(ctx))
