#!/usr/bin/env python3
"""run.py - run the QEMU test scenarios and report in TAP.

Usage:
    qemu-tests/run.py [-b BUILDDIR] [--icount] [--echo] [--list] [NAME...]

NAME selects scenarios (shell-style patterns allowed, e.g. 'luks-*');
without names every scenario runs.  Output is TAP: a plan line, then
``ok N - name`` / ``not ok N - name`` with ``# `` diagnostics, and a last
line ``P passed, F failed``.  The exit status is 1 if anything failed.

Adding a scenario: write a function taking a :class:`Context` and
decorate it with ``@scenario("name")``.  Use ``ctx.check(cond, msg)`` for
checks that should all be reported, ``ctx.require(cond, msg)`` (or plain
``assert``) to stop the scenario, and ``ctx.diag(msg)`` for extra
output.  ``ctx.boot(...)`` boots the test kernel (see harness.boot), and
``ctx.disks``, ``ctx.kmoddir``, ``ctx.mkinitrd(...)`` give the pieces.
"""

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
import traceback
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.dont_write_bytecode = True   # keep qemu-tests/ free of __pycache__
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import Disk  # noqa: E402,F401  (re-exported for scenarios)

DEFAULT_BUILD = os.path.join(TOP, "build", "qemu")
MKINITRD = os.path.join(TOP, "dracut-like", "mkinitrd")
#: Kernel command line used by ctx.boot unless a scenario passes its own.
DEFAULT_APPEND = "console=ttyS0 panic=-1 quiet"

SCENARIOS = {}


def scenario(name):
    """Register the decorated function as scenario NAME (run in file order)."""
    def deco(fn):
        if name in SCENARIOS:
            raise ValueError(f"duplicate scenario {name}")
        SCENARIOS[name] = fn
        return fn
    return deco


class Abort(Exception):
    """Raised by Context.require to end a scenario."""


class Context:
    """Per-run helpers handed to every scenario.

    Attributes: build (output dir), icount (bool), echo (bool).
    Expensive pieces (kernel, disks, floor initrd) are built on first use
    and shared by all scenarios of the run.
    """

    def __init__(self, build, icount=False, echo=False):
        self.build = os.path.abspath(build)
        self.icount = icount
        self.echo = echo
        self._kernel_dir = None
        self._disks = None
        self._floor = None
        self.reset()

    # -- bookkeeping (per scenario) ----------------------------------------
    def reset(self):
        self.failures = []
        self.diags = []
        self.boots = []

    def check(self, cond, msg):
        """Record a failure if COND is false; the scenario goes on."""
        if not cond:
            self.failures.append(msg)
        return bool(cond)

    def require(self, cond, msg):
        """Like check, but end the scenario at once if COND is false."""
        if not cond:
            self.failures.append(msg)
            raise Abort(msg)

    def diag(self, msg):
        """Print MSG as a TAP diagnostic under this scenario's result."""
        self.diags.append(str(msg))

    # -- build products ----------------------------------------------------
    @property
    def kernel_dir(self):
        """Unpacked Debian cloud kernel (qemu-tests/kernel.sh)."""
        if self._kernel_dir is None:
            self._kernel_dir = _run_out([os.path.join(HERE, "kernel.sh"), "-q"])
        return self._kernel_dir

    @property
    def kver(self):
        with open(os.path.join(self.kernel_dir, "kver")) as f:
            return f.read().strip()

    @property
    def kernel(self):
        """Path of the kernel image (vmlinuz)."""
        return os.path.join(self.kernel_dir, "boot", f"vmlinuz-{self.kver}")

    @property
    def kmoddir(self):
        """DIR/lib/modules/KVER, as mkinitrd --kmoddir wants it."""
        return os.path.join(self.kernel_dir, "lib", "modules", self.kver)

    @property
    def disks(self):
        """Pristine images from mkdisks.sh: .factory .luks .btrfs .key paths, and strangers'
        disks: .luks_other (LUKS2 "persist" opened by .other_key) and .attacker (plain Btrfs
        "persist" with an evil config.json).

        Never boot these with snapshot=False; use Disk(path) (throw-away
        overlay) or harness.overlay() for state that must survive a reboot.
        """
        if self._disks is None:
            _run_out([os.path.join(HERE, "mkdisks.sh"), self.build])
            j = lambda n: os.path.join(self.build, n)  # noqa: E731
            self._disks = SimpleNamespace(factory=j("factory.img"),
                                          luks=j("luks.img"),
                                          btrfs=j("btrfs.img"),
                                          key=j("test.key"),
                                          luks_other=j("luks-other.img"),
                                          other_key=j("other.key"),
                                          attacker=j("attacker.img"))
        return self._disks

    def floor_initrd(self):
        """The busybox baseline initrd (qemu-tests/floor.sh)."""
        if self._floor is None:
            self._floor = _run_out([os.path.join(HERE, "floor.sh"), self.build])
        return self._floor

    def mkinitrd(self, out, init, modules="", args=()):
        """Run dracut-like/mkinitrd; returns OUT.  ARGS are extra options."""
        cmd = [MKINITRD, "-q", "-o", out, "--init", init]
        if modules:
            cmd += ["--kmoddir", self.kmoddir, "--modules", modules]
        _run_out(cmd + list(args))
        return out

    def path(self, name):
        """NAME inside the build directory."""
        return os.path.join(self.build, name)

    # -- booting -----------------------------------------------------------
    def boot(self, name, initrd, disks=(), append=DEFAULT_APPEND, **kw):
        """harness.boot with this run's kernel, build dir and --icount.

        Keyword arguments go to harness.boot (timeout, extra_args, ...).
        The result is remembered so a failing scenario shows its log.
        """
        kw.setdefault("icount", self.icount)
        kw.setdefault("echo", self.echo)
        r = harness.boot(self.kernel, initrd, append, disks, self.build,
                         name, **kw)
        self.boots.append(r)
        return r


def _run_out(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                           f"{r.stderr.strip()}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


# ===========================================================================
# Scenarios

@scenario("floor")
def floor(ctx):
    """Busybox-only initrd boots factory.img; the stage-2 reporter runs."""
    d = ctx.disks
    r = ctx.boot("floor", ctx.floor_initrd(), [Disk(d.factory)])
    ctx.diag(f"wall {r.wall_time:.2f} s, stage-2 uptime {r.uptime} s"
             f"{' (icount)' if ctx.icount else ''}")
    ctx.require(r.stage2, "@@STAGE2 not seen")
    ctx.check(not r.timed_out, "QEMU timed out")
    ctx.check(r.done, "@@DONE not seen")
    ctx.check(r.exit_status == 0, f"QEMU exit status {r.exit_status}")
    ctx.check(r.uptime is not None and r.uptime > 0, "no uptime reported")
    root = r.mount_at("/")
    ctx.check(root is not None and root.device == "/dev/vda",
              f"/ not mounted from /dev/vda: {root}")
    ctx.check(root is not None and root.fstype == "ext4" and root.readonly,
              f"/ not read-only ext4: {root}")
    for mp in ("/proc", "/sys", "/dev"):
        ctx.check(r.mount_at(mp) is not None, f"{mp} not mounted")
    ctx.check(r.marker_found is None, f"marker unexpectedly found: {r.marker_found}")
    ctx.check(r.marker_write_failed, "marker write on the read-only root did not fail")
    ctx.check(sorted(r.nofiles) == sorted(["/run/factory-init/status.json",
                                            "/run/vm-config.json",
                                            "/persist/config.json"]),
              f"unexpected files: {r.files}")
    ctx.check(any("EXT4-fs (vda)" in k for k in r.kmsg),
              "dmesg has no EXT4-fs (vda) line")


# ===========================================================================
# factory-init scenarios: the static binary as /init of a dracut-like initrd.

#: The binary under test; FACTORY_INIT_BIN picks another one (e.g. an older build, to show
#: that a scenario can fail).
FACTORY_INIT = os.environ.get("FACTORY_INIT_BIN",
                              os.path.join(TOP, "build", "factory-init.static"))
#: Command line shared by the factory-init scenarios (quiet: the console then shows only
#: factory-init's warnings; everything else is in the @@KMSG dump).
FI_APPEND = "console=ttyS0 panic=-1 quiet root=/dev/vda"
STATUS = "/run/factory-init/status.json"
RUN_CONFIG = "/run/vm-config.json"
PERSIST_CONFIG = "/persist/config.json"


def fi_modules():
    """The module list the binary itself plans to load (one source of truth)."""
    out = subprocess.run([FACTORY_INIT, "--plan", "--cmdline", ""], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True).stdout
    return " ".join(json.loads(out)["modules"])


def fi_initrd(ctx, name, config=None, keyfile=None):
    """An initrd with factory-init as /init, optionally an embedded config (a dict) and key file."""
    args = []
    if config is not None:
        path = ctx.path(f"{name}.vm-config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        args += ["--config", path]
    if keyfile:
        args += ["--keyfile", keyfile]
    return ctx.mkinitrd(ctx.path(f"{name}.initrd"), FACTORY_INIT, fi_modules(), args)


def read_key(ctx):
    with open(ctx.disks.key) as f:
        return f.read()


def status_of(ctx, r):
    """The status JSON the guest reported (the scenario stops if there is none)."""
    ctx.require(r.stage2, "stage 2 never started")
    ctx.require(STATUS in r.files, f"{STATUS} not reported")
    return r.json(STATUS)


def check_no_secret(ctx, r, secret):
    """The key may appear in the kernel's own echo of its command line ("Command line:",
    "Kernel command line:"), and nowhere else: not in any other console or kmsg line, not in a
    reported file."""
    leaks = [line for line in r.raw.splitlines() + r.kmsg
             if secret in line and "Command line:" not in line
             and "command line:" not in line]
    ctx.check(not leaks, f"key material in console/kmsg: {leaks[:3]}")
    for path, text in r.files.items():
        ctx.check(secret not in text, f"key material in {path}")


def check_fi_logged(ctx, r, text):
    ctx.check(any("factory-init[1]" in k and text in k for k in r.kmsg),
              f"no factory-init kmsg line containing {text!r}")


def same_disk(base, image):
    """True when IMAGE (a qcow2 overlay) reads exactly as BASE (raw)."""
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2",
                           base, image]).returncode == 0


@scenario("luks-cmdline-key")
def luks_cmdline_key(ctx):
    """LUKS2 key on the command line: /persist (zstd), /nix overlay, marker survives a reboot."""
    d = ctx.disks
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-plain")
    vdb = harness.overlay(d.luks, ctx.path("luks-cmdline-key.vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    append = f"{FI_APPEND} vm.luks.key={key}"
    r1 = ctx.boot("luks-cmdline-key-1", initrd, disks, append)
    st = status_of(ctx, r1)
    ctx.diag(f"boot 1: stage-2 uptime {r1.uptime} s, steps "
             + ", ".join(f"{s['name']} {s['ms']} ms" for s in st["steps"]))
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["luks"] and st["unlock"] == "cmdline-key", f"unlock {st['unlock']}")
    ctx.check(st["key_in_cmdline"] is True, "key_in_cmdline not flagged")
    ctx.check(st["device"] == "/dev/vdb", f"device {st['device']}")
    ctx.check(st["store"] == "overlay", f"store {st['store']}")
    p = r1.mount_at("/persist")
    ctx.require(p is not None, "/persist not mounted")
    ctx.check(p.device == "/dev/mapper/persist" and p.fstype == "btrfs", f"/persist: {p}")
    ctx.check(any(o.startswith("compress=zstd") for o in p.options),
              f"/persist without compress=zstd: {p.options}")
    n = r1.mount_at("/nix")
    ctx.require(n is not None and n.fstype == "overlay", f"/nix is not an overlay: {n}")
    # Mount options keep the paths as stage 1 saw them (under /sysroot).
    ctx.check(any(o.startswith("upperdir=") and o.endswith("/persist/nix/upper")
                  for o in n.options), f"/nix options {n.options}")
    ro = r1.mount_at("/nix/.ro-store")
    ctx.check(ro is not None and ro.readonly, f"/nix/.ro-store not a read-only mount: {ro}")
    ctx.check(r1.marker_found is None, f"marker before the first boot: {r1.marker_found}")
    ctx.require(r1.marker_written, "boot 1 could not write its marker under /nix")
    check_fi_logged(ctx, r1, "unlocked /dev/vdb with cmdline-key")
    check_no_secret(ctx, r1, key)

    r2 = ctx.boot("luks-cmdline-key-2", initrd, disks, append)
    status_of(ctx, r2)
    ctx.check(r2.marker_found == r1.marker_written,
              f"boot 2 found marker {r2.marker_found!r}, boot 1 wrote {r1.marker_written!r}")
    ctx.check(r2.marker_written and r2.marker_written != r1.marker_written,
              "boot 2 did not write a fresh marker")
    check_no_secret(ctx, r2, key)


@scenario("no-data-disk")
def no_data_disk(ctx):
    """Only the factory disk: fallback to the factory store, with the reason."""
    d = ctx.disks
    r = ctx.boot("no-data-disk", fi_initrd(ctx, "fi-plain"), [Disk(d.factory)],
                 f"{FI_APPEND} vm.persist.timeout=2")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    ctx.check(st["reason"] and "no data disk" in st["reason"], f"reason {st['reason']!r}")
    ctx.check(st["store"] == "factory", f"store {st['store']}")
    ctx.check(r.mount_at("/persist") is None, "/persist is mounted")
    ctx.check(r.mount_at("/nix") is None, "/nix is a mount of its own")
    ctx.check(r.marker_write_failed, "the factory /nix was writable")
    ctx.check(RUN_CONFIG in r.files, f"{RUN_CONFIG} missing in fallback")
    ctx.check(PERSIST_CONFIG in r.nofiles, f"{PERSIST_CONFIG} exists")
    check_fi_logged(ctx, r, "booting on the factory store: no data disk")


@scenario("wrong-key")
def wrong_key(ctx):
    """A wrong key: fallback with the reason; the data disk reads exactly as before."""
    d = ctx.disks
    vdb = harness.overlay(d.luks, ctx.path("wrong-key.vdb.qcow2"))
    r = ctx.boot("wrong-key", fi_initrd(ctx, "fi-plain"),
                 [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)],
                 f"{FI_APPEND} vm.luks=key vm.luks.key=not-the-key-at-all")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    ctx.check(st["reason"] and "could not unlock /dev/vdb" in st["reason"]
              and "no key slot" in st["reason"], f"reason {st['reason']!r}")
    ctx.check(st["luks"] is True and st["unlock"] is None, f"unlock {st['unlock']}")
    ctx.check(r.mount_at("/persist") is None, "/persist is mounted")
    ctx.check(same_disk(d.luks, vdb), "the data disk changed")
    check_no_secret(ctx, r, "not-the-key-at-all")


@scenario("corrupt-header")
def corrupt_header(ctx):
    """A LUKS2 disk whose headers are damaged: fallback with the reason, disk left as it was."""
    d = ctx.disks
    bad = ctx.path("corrupt-header.img")
    subprocess.run(["cp", "--sparse=always", d.luks, bad], check=True)
    with open(bad, "r+b") as f:
        # Keep the magic and version (so it still looks like LUKS2) but wreck both JSON areas.
        for off in (0x200, 0x4200):
            f.seek(off)
            f.write(b"\xa5" * 0x3c00)
    vdb = harness.overlay(bad, ctx.path("corrupt-header.vdb.qcow2"))
    r = ctx.boot("corrupt-header", fi_initrd(ctx, "fi-plain"),
                 [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)],
                 f"{FI_APPEND} vm.luks.key={read_key(ctx)}")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    ctx.check(st["reason"] is not None and "/dev/vdb" in st["reason"], f"reason {st['reason']!r}")
    ctx.diag(f"reason: {st['reason']}")
    ctx.check(same_disk(bad, vdb), "the data disk changed")


@scenario("blank-disk")
def blank_disk(ctx):
    """A data disk with no signature at all is left untouched (never formatted)."""
    d = ctx.disks
    blank = ctx.path("blank.img")
    with open(blank, "wb") as f:
        f.truncate(64 << 20)
    vdb = harness.overlay(blank, ctx.path("blank-disk.vdb.qcow2"))
    r = ctx.boot("blank-disk", fi_initrd(ctx, "fi-plain"),
                 [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)], FI_APPEND)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    ctx.check(st["reason"] and "not LUKS or Btrfs" in st["reason"], f"reason {st['reason']!r}")
    ctx.check(same_disk(blank, vdb), "the blank disk was written to")


@scenario("plain-btrfs")
def plain_btrfs(ctx):
    """An unencrypted Btrfs data disk: mounted with zstd, /nix overlay, no unlock. Root and data
    disk are named by label here, so the tag matching is exercised too."""
    d = ctx.disks
    r = ctx.boot("plain-btrfs", fi_initrd(ctx, "fi-plain"), [Disk(d.factory), Disk(d.btrfs)],
                 "console=ttyS0 panic=-1 quiet root=LABEL=factory vm.persist=LABEL=persist")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["luks"] is False and st["unlock"] is None, f"luks {st['luks']} {st['unlock']}")
    ctx.check(st["fstype"] == "btrfs", f"fstype {st['fstype']}")
    p = r.mount_at("/persist")
    ctx.require(p is not None, "/persist not mounted")
    ctx.check(p.device == "/dev/vdb" and p.fstype == "btrfs", f"/persist: {p}")
    ctx.check(any(o.startswith("compress=zstd") for o in p.options), f"{p.options}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "overlay", f"/nix: {n}")
    ctx.check(r.marker_written, "no marker written under /nix")


@scenario("config")
def config(ctx):
    """vm.* config: image < persisted < command line, malformed values named, quotes round-trip;
    the key comes from a key file embedded in the initrd."""
    d = ctx.disks
    embedded = {"hostname": "factory", "repo": "https://git.example.org/fleet.git",
                "branch": "main", "motd": "from the image"}
    initrd = fi_initrd(ctx, "fi-config", config=embedded, keyfile=d.key)
    vdb = harness.overlay(d.luks, ctx.path("config.vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    r1 = ctx.boot("config-1", initrd, disks,
                  f'{FI_APPEND} vm.hostname=web-1 vm.branch=dev vm.note=say"hi there" '
                  "vm.hostname=bad_host! vm.persist.timeout=abc")
    st = status_of(ctx, r1)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["unlock"] == "keyfile", f"unlock {st['unlock']}")
    ctx.check(st["key_in_cmdline"] is False, "key_in_cmdline set for a key file")
    want = {"hostname": "web-1", "repo": "https://git.example.org/fleet.git",
            "branch": "dev", "motd": "from the image", "note": 'say"hi there"'}
    for path in (RUN_CONFIG, PERSIST_CONFIG):
        ctx.require(path in r1.files, f"{path} not reported")
        ctx.check(r1.json(path) == want, f"{path}: {r1.json(path)} != {want}")
    for k in ("vm.hostname", "vm.persist.timeout"):
        ctx.check(any(k in w for w in st["warnings"]), f"no warning naming {k}: {st['warnings']}")
        check_fi_logged(ctx, r1, k)
    check_no_secret(ctx, r1, read_key(ctx))

    # Boot 2 without vm.branch: the value saved on /persist beats the image's default.
    r2 = ctx.boot("config-2", initrd, disks, f"{FI_APPEND} vm.hostname=web-2")
    status_of(ctx, r2)
    want.update(hostname="web-2")
    ctx.check(r2.json(PERSIST_CONFIG) == want, f"boot 2: {r2.json(PERSIST_CONFIG)} != {want}")

HELPER_INIT = """#!/bin/busybox sh
# Stands in for another stage 1 (NixOS's scripted initrd): mounts the root itself, then calls
# factory-init in helper mode for /persist, /nix and the config, then switches root.
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mount -t tmpfs tmpfs /run
$B modprobe virtio_pci
$B modprobe virtio_blk
$B mount -o ro /dev/vda /sysroot
/bin/factory-init --root=/sysroot
echo "helper-init: factory-init --root exited with $?"
for m in dev proc sys run; do $B mount --move /$m /sysroot/$m; done
exec $B switch_root /sysroot /sbin/init
"""


@scenario("helper-mode")
def helper_mode(ctx):
    """factory-init --root=/sysroot inside another stage 1 sets up /persist, /nix and config."""
    d = ctx.disks
    script = ctx.path("helper-init.sh")
    with open(script, "w") as f:
        f.write(HELPER_INIT)
    os.chmod(script, 0o755)
    initrd = ctx.mkinitrd(ctx.path("helper.initrd"), script, fi_modules(),
                          ["--file", f"{FACTORY_INIT}:/bin/factory-init:0755",
                           "--file", "/bin/busybox:/bin/busybox:0755"])
    r = ctx.boot("helper-mode", initrd, [Disk(d.factory), Disk(d.btrfs)],
                 "console=ttyS0 panic=-1 quiet vm.persist.encrypted=no vm.hostname=helper-1")
    ctx.check("factory-init --root exited with 0" in r.raw, "helper mode did not exit 0")
    st = status_of(ctx, r)
    ctx.check(st["mode"] == "helper", f"mode {st['mode']}")
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["store"] == "overlay", f"store {st['store']}")
    p = r.mount_at("/persist")
    ctx.check(p is not None and p.fstype == "btrfs", f"/persist: {p}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "overlay", f"/nix: {n}")
    ctx.check(r.marker_written, "no marker written under /nix")
    for path in (RUN_CONFIG, PERSIST_CONFIG):
        ctx.check(path in r.files and r.json(path).get("hostname") == "helper-1",
                  f"{path}: {r.files.get(path)}")

@scenario("no-root-panic")
def no_root_panic(ctx):
    """No factory root: a clear, logged halt that honours panic= (here: reboot at once)."""
    d = ctx.disks
    r = ctx.boot("no-root-panic", fi_initrd(ctx, "fi-plain"), [Disk(d.factory)],
                 "console=ttyS0 panic=-1 quiet root=/dev/vdz rootwait=2", timeout=90)
    ctx.check(not r.stage2, "stage 2 started without a root")
    ctx.check(not r.timed_out and r.exit_status == 0,
              f"QEMU did not end by the guest's reboot: exit {r.exit_status}")
    ctx.check("cannot boot: the factory root /dev/vdz did not appear within 2 s" in r.raw,
              "the reason is not on the console")
    ctx.check("rebooting now (panic=-1)" in r.raw, "panic=-1 not honoured")
    ctx.check("Attempted to kill init" not in r.raw, "PID 1 exited")


@scenario("initrd-reproducible")
def initrd_reproducible(ctx):
    """dracut-like/mkinitrd: the same inputs give the same bytes; the contents are as asked."""
    a = ctx.mkinitrd(ctx.path("repro-a.initrd"), FACTORY_INIT, fi_modules(),
                     ["--keyfile", ctx.disks.key])
    b = ctx.mkinitrd(ctx.path("repro-b.initrd"), FACTORY_INIT, fi_modules(),
                     ["--keyfile", ctx.disks.key])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ctx.check(fa.read() == fb.read(), "two builds differ")
    size = os.path.getsize(a)
    ctx.diag(f"initrd with factory-init and its modules: {size} bytes")
    ctx.check(size <= 4_000_000, f"initrd is {size} bytes (target <= 4 MB)")
    out = subprocess.run(["sh", "-c", f"zstd -dc {a} | cpio -t --quiet"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout.split()
    for want in ("init", "dev/console", "etc/factory-init/keyfile"):
        ctx.check(want in out, f"{want} missing from the initrd")
    ctx.check(any(p.endswith("/btrfs.ko") for p in out), "btrfs.ko missing")
    ctx.check(any(p.endswith("modules.dep.bin") for p in out), "module index missing")

@scenario("corrupt-config")
def corrupt_config(ctx):
    """An unreadable /persist/config.json is moved aside (never lost) and replaced by the merge."""
    root = ctx.path("corrupt-config.root")
    subprocess.run(["rm", "-rf", root], check=True)
    os.makedirs(root)
    with open(os.path.join(root, "config.json"), "w") as f:
        f.write('{"hostname": "old", oops')
    img = ctx.path("corrupt-config.img")
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-L", "persist", "--rootdir", root, img],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = ctx.boot("corrupt-config", fi_initrd(ctx, "fi-plain"),
                 [Disk(ctx.disks.factory), Disk(img)], f"{FI_APPEND} {PLAIN} vm.hostname=new-1")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(any("not valid JSON" in w for w in st["warnings"]), f"warnings {st['warnings']}")
    ctx.check(any("config.json.bad" in w for w in st["warnings"]), f"warnings {st['warnings']}")
    ctx.check(PERSIST_CONFIG in r.files and r.json(PERSIST_CONFIG) == {"hostname": "new-1"},
              f"{PERSIST_CONFIG}: {r.files.get(PERSIST_CONFIG)}")

# ===========================================================================
# Unlocking: TPM2 (ours and systemd-cryptenroll's tokens), credentials, typed passphrase.

FACTORY_INIT_DEV = os.path.join(TOP, "build", "factory-init")   # links the swtpm TCTI
SYSTEMD_UNLOCK = os.path.join(HERE, "systemd-unlock.sh")


def fresh_dir(path):
    subprocess.run(["rm", "-rf", path], check=True)
    os.makedirs(path)
    return path


def luks_copy(ctx, name):
    """A private raw copy of the LUKS2 test disk, to enroll tokens into."""
    img = ctx.path(f"{name}.img")
    subprocess.run(["cp", "--sparse=always", ctx.disks.luks, img], check=True)
    return img


def pcrs_of(r):
    """{index: lowercase hex} from the reporter's @@PCR lines."""
    out = {}
    for line in r.raw.splitlines():
        if line.startswith("@@PCR "):
            _, n, v = line.split()[:3]
            out[int(n)] = v.lower()
    return out


def enroll_ours(ctx, img, state, pcrs):
    """factory-init enroll-tpm2 on the host against a swtpm on STATE (the TPM the VM gets)."""
    with harness.swtpm_tcp(state) as tpm:
        r = subprocess.run([FACTORY_INIT_DEV, "enroll-tpm2", img, f"--pcrs={pcrs}",
                            f"--tpm2-device={tpm.tcti}", f"--unlock-key-file={ctx.disks.key}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.diag(r.stdout.strip())
    ctx.require(r.returncode == 0, f"enroll-tpm2 failed: {r.stdout.strip()}")


def token_json(img, token=0):
    out = subprocess.run(["cryptsetup", "token", "export", "--token-id", str(token), img],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def attempts(st):
    return [(a["method"], a["ok"]) for a in st.get("unlock_attempts", [])]


def unlock_ms(st, method):
    return [a["ms"] for a in st.get("unlock_attempts", []) if a["method"] == method and a["ok"]]


def boot_pcrs(ctx, name, state):
    """Boots once with the TPM on STATE and no data disk; returns the PCRs the VM measured."""
    with harness.Swtpm(state) as tpm:
        r = ctx.boot(name, fi_initrd(ctx, "fi-plain"), [Disk(ctx.disks.factory)],
                     f"{FI_APPEND} vm.persist.timeout=1", extra_args=tpm.qemu_args)
    pcrs = pcrs_of(r)
    ctx.require(7 in pcrs, f"the VM reported no PCR 7 (TPM missing?): {r.tail()}")
    return pcrs


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
    s = subprocess.run([SYSTEMD_UNLOCK, img2, state2], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    ctx.diag(s.stdout.strip().splitlines()[-1] if s.stdout.strip() else "no output")
    ctx.check(s.returncode == 0, f"systemd's plugin did not unseal our token: {s.stdout[-400:]}")


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


# ===========================================================================
# The store: bind mode (first-boot copy, power cuts, disk full) and factory refresh.

#: Plain (unencrypted) Btrfs data disks are refused under vm.persist=auto unless allowed; the store
#: scenarios use them (fresh_btrfs) because the host cannot fill a LUKS image's Btrfs in place.
PLAIN = "vm.persist.encrypted=no"
STORE_APPEND = f"{FI_APPEND} {PLAIN} vm.store=bind"


def store_images(ctx):
    d = ctx.disks   # builds factory-store.img and factory-store2.img too
    return ctx.path("factory-store.img"), ctx.path("factory-store2.img")


def trees(r):
    """{dir: (all, data, paths)} from the reporter's @@TREE lines."""
    out = {}
    for line in r.raw.splitlines():
        if line.startswith("@@TREE "):
            f = line.split()
            if len(f) >= 5:
                out[f[1]] = tuple(f[2:5])
    return out


def persist_ls(r):
    for line in r.raw.splitlines():
        if line.startswith("@@LS /persist"):
            return line.split()[2:]
    return None


def fresh_btrfs(ctx, name, size="256M", rootdir=None):
    img = ctx.path(f"{name}.img")
    subprocess.run(["rm", "-f", img], check=True)
    subprocess.run(["truncate", "-s", size, img], check=True)
    cmd = ["mkfs.btrfs", "-q", "-f", "-L", "persist"]
    if rootdir:
        cmd += ["--rootdir", rootdir]
    subprocess.run(cmd + [img], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return img


def check_copy_whole(ctx, r, label):
    """/nix is the bound copy and equals the factory store, hard links and mtimes included."""
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist" and st["store"] == "bind",
              f"{label}: outcome {st['outcome']}, store {st['store']}: {st['reason']}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "btrfs" and not n.readonly,
              f"{label}: /nix is not the bound copy: {n}")
    ro = r.mount_at("/nix/.ro-store")
    ctx.check(ro is not None and ro.readonly, f"{label}: /nix/.ro-store: {ro}")
    t = trees(r)
    ctx.require("/nix/store" in t and "/nix/.ro-store/store" in t, f"{label}: no @@TREE lines")
    ctx.check(t["/nix/store"] == t["/nix/.ro-store/store"],
              f"{label}: the copy differs from the factory store: {t}")
    return st


def steps_named(st):
    return {s["name"]: s["ms"] for s in st["steps"]}


@scenario("bind-store")
def bind_store(ctx):
    """vm.store=bind: boot 1 copies the factory store to /persist/nix (hard links, modes, mtimes
    of 1 and contents equal) and binds it; boot 2 only binds; a marker survives."""
    fs1, _ = store_images(ctx)
    vdb = harness.overlay(fresh_btrfs(ctx, "bind-store"), ctx.path("bind-store.vdb.qcow2"))
    disks = [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)]
    initrd = fi_initrd(ctx, "fi-plain")
    r1 = ctx.boot("bind-store-1", initrd, disks, STORE_APPEND)
    st1 = check_copy_whole(ctx, r1, "boot 1")
    ctx.check("store-copy" in steps_named(st1), f"boot 1 did not copy: {st1['steps']}")
    c = st1.get("store_copy") or {}
    ctx.check(c.get("files", 0) > 1500 and c.get("hardlinks", 0) > 100,
              f"copy stats {c}")
    ctx.diag(f"boot 1: copied {c.get('files')} files, {c.get('hardlinks')} hard links, "
             f"{c.get('symlinks')} symlinks, {c.get('bytes', 0) // 1000000} MB in "
             f"{c.get('ms')} ms")
    ctx.require(r1.marker_written, "boot 1 wrote no marker under /nix")
    r2 = ctx.boot("bind-store-2", initrd, disks, STORE_APPEND)
    st2 = check_copy_whole(ctx, r2, "boot 2")
    steps = steps_named(st2)
    ctx.check("store-copy" not in steps and "store-check" in steps and "store_copy" not in st2,
              f"boot 2 copied again: {st2['steps']}")
    ctx.diag(f"boot 2: store-check {steps.get('store-check')} ms, bind {steps.get('store')} ms")
    ctx.check(r2.marker_found == r1.marker_written, "the marker of boot 1 is gone")
    ctx.check(st2["factory_image"]["refreshed"] is False, "boot 2 saw a refresh")


@scenario("bind-power-cut")
def bind_power_cut(ctx):
    """Power cuts during the first copy (at rising progress, and after the data is in but before
    the copy is renamed into place): every next boot resumes and ends with a whole store; a half
    copy is never bound."""
    fs1, _ = store_images(ctx)
    initrd = fi_initrd(ctx, "fi-plain")
    append = STORE_APPEND.replace(" quiet", "")
    import re as _re
    pct = _re.compile(rb"copying the factory store: (\d+)%")

    def at_least(k):
        def when(tail):
            m = pct.findall(tail)
            return bool(m) and int(m[-1]) >= k
        return when

    plans = {"a": [10, 40, 70, 100], "b": [60]}
    for disk, cuts in plans.items():
        vdb = harness.overlay(fresh_btrfs(ctx, f"power-cut-{disk}"),
                              ctx.path(f"power-cut-{disk}.vdb.qcow2"))
        disks = [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)]
        fired = []
        for k in cuts:
            r = ctx.boot(f"power-cut-{disk}-{k}", initrd, disks, append, kill_when=at_least(k))
            if r.killed:
                fired.append(k)
            else:
                # The copy outran the cut (it finished first): the boot must still be whole.
                check_copy_whole(ctx, r, f"disk {disk}, uncut at {k}%")
        ctx.check(fired, f"disk {disk}: no power cut happened (copy too fast?)")
        r = ctx.boot(f"power-cut-{disk}-final", initrd, disks, append)
        st = check_copy_whole(ctx, r, f"disk {disk} after cuts at {fired}")
        c = st.get("store_copy") or {}
        ctx.diag(f"disk {disk}: cut at {fired}%, then resumed: kept {c.get('kept')} files, "
                 f"copied {c.get('bytes', 0) // 1000000} MB")
        ls = persist_ls(r) or []
        ctx.check(".nix-staging" not in ls, f"staging left behind: {ls}")


@scenario("bind-disk-full")
def bind_disk_full(ctx):
    """A data disk too small for the copy: the partial copy is removed, /nix is the overlay,
    the reason says why, and what was on /persist is still there."""
    fs1, _ = store_images(ctx)
    root = fresh_dir(ctx.path("disk-full.root"))
    with open(os.path.join(root, "keep.bin"), "wb") as f:
        f.write(os.urandom(1 << 20) * 80)       # 80 MiB of the 128 MiB
    vdb = harness.overlay(fresh_btrfs(ctx, "disk-full", "128M", root),
                          ctx.path("disk-full.vdb.qcow2"))
    r = ctx.boot("bind-disk-full", fi_initrd(ctx, "fi-plain"),
                 [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)], STORE_APPEND)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["store"] == "overlay", f"store {st['store']}")
    ctx.check("too small" in (st["reason"] or ""), f"reason {st['reason']!r}")
    ls = persist_ls(r) or []
    ctx.check(".nix-staging" not in ls and "keep.bin" in ls, f"/persist holds {ls}")
    ctx.diag(f"reason: {st['reason']}")
    c = st.get("store_copy") or {}
    ctx.check("store-copy" in steps_named(st) and c.get("complete") is False
              and c.get("error") and c.get("bytes", 0) > 0 and c.get("total_bytes", 0) > 0,
              f"the failed copy has no figures: steps {st['steps']}, store_copy {c}")
    # The next boot, with no more room, does not copy again (nor leave a staging copy).
    r2 = ctx.boot("bind-disk-full-2", fi_initrd(ctx, "fi-plain"),
                  [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)], STORE_APPEND)
    st2 = status_of(ctx, r2)
    c2 = st2.get("store_copy") or {}
    ctx.check(st2["outcome"] == "persist" and st2["store"] == "overlay",
              f"boot 2: outcome {st2['outcome']}, store {st2['store']}")
    ctx.check("not copying again" in (st2["reason"] or "") and c2.get("bytes") == 0,
              f"boot 2 copied again: reason {st2['reason']!r}, store_copy {c2}")
    ls2 = persist_ls(r2) or []
    ctx.check(".nix-staging" not in ls2 and "keep.bin" in ls2, f"boot 2: /persist holds {ls2}")
    ctx.diag(f"boot 2: store-copy step {steps_named(st2).get('store-copy')} ms "
             f"(boot 1: {steps_named(st).get('store-copy')} ms)")


def store_names(img):
    out = subprocess.run(["debugfs", "-R", "ls -p /nix/store", img], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    names = [l.split("/")[5] for l in out.splitlines() if l.count("/") >= 6]
    return sorted(n for n in names if n not in (".", ".."))


def identity(names):
    import hashlib
    h = hashlib.sha256(b"".join(n.encode() + b"\0" for n in sorted(names))).hexdigest()
    return "store:" + h[:16]


@scenario("refresh-bind")
def refresh_bind(ctx):
    """A newer factory image (8 more store paths) replaces vda: bind mode copies only the new
    paths, records the refresh, and /persist keeps its data."""
    fs1, fs2 = store_images(ctx)
    vdb = harness.overlay(fresh_btrfs(ctx, "refresh-bind"), ctx.path("refresh-bind.vdb.qcow2"))
    initrd = fi_initrd(ctx, "fi-plain")
    r1 = ctx.boot("refresh-bind-1", initrd, [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)],
                  STORE_APPEND)
    st1 = check_copy_whole(ctx, r1, "boot 1")
    r2 = ctx.boot("refresh-bind-2", initrd, [Disk(fs2), Disk(vdb, "qcow2", snapshot=False)],
                  STORE_APPEND)
    st2 = status_of(ctx, r2)
    img = st2["factory_image"]
    ctx.check(img["refreshed"] is True and img["previous"] == st1["factory_image"]["id"]
              and img["id"] == identity(store_names(fs2)), f"factory_image {img}")
    c = st2.get("store_copy") or {}
    new = len(store_names(fs2)) - len(store_names(fs1))
    ctx.check(0 < c.get("files", 0) <= new * 70, f"refresh copied {c} for {new} new paths")
    t = trees(r2)
    ctx.check(t.get("/nix/store", (0, 1, 2))[1:] == t.get("/nix/.ro-store/store", (3, 4, 5))[1:],
              f"the refreshed copy differs from the new factory store: {t}")
    ctx.check(r2.marker_found == r1.marker_written, "the marker of boot 1 is gone")
    ctx.diag(f"refresh: {c.get('files')} files of {new} new paths in {c.get('ms')} ms")


@scenario("refresh-overlay")
def refresh_overlay(ctx):
    """Overlay mode after a newer image: a whiteout of a new store path and an opaque upper
    store (left by the old image's stage 2) would hide the new paths: both are cleared."""
    fs1, fs2 = store_images(ctx)
    n1, n2 = store_names(fs1), store_names(fs2)
    extra = sorted(set(n2) - set(n1))
    ctx.require(extra, "the newer image has no new store paths")
    root = fresh_dir(ctx.path("refresh-overlay.root"))
    store = os.path.join(root, "nix", "upper", "store")
    os.makedirs(store)
    os.makedirs(os.path.join(root, "nix", "work"))
    with open(os.path.join(root, "nix", ".factory-image"), "w") as f:
        f.write(identity(n1) + "\n")
    os.mknod(os.path.join(store, extra[0]), 0o600 | 0o020000, os.makedev(0, 0))
    os.setxattr(store, "trusted.overlay.opaque", b"y")
    vdb = harness.overlay(fresh_btrfs(ctx, "refresh-overlay", rootdir=root),
                          ctx.path("refresh-overlay.vdb.qcow2"))
    r = ctx.boot("refresh-overlay", fi_initrd(ctx, "fi-plain"),
                 [Disk(fs2), Disk(vdb, "qcow2", snapshot=False)], f"{FI_APPEND} {PLAIN}")
    st = status_of(ctx, r)
    ctx.check(st["store"] == "overlay", f"store {st['store']}: {st['reason']}")
    img = st["factory_image"]
    ctx.check(img["refreshed"] is True and img["previous"] == identity(n1), f"{img}")
    t = trees(r)
    ctx.check("/nix/store" in t and t["/nix/store"][1:] == t.get("/nix/.ro-store/store",
                                                                 (0, 1, 2))[1:],
              f"new store paths hidden by the upper layer: {t}")
    check_fi_logged(ctx, r, "removed 2 upper-layer entries")


# ===========================================================================
# Fleet tooling: nixos/create-data-disk.

import hashlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

CREATE_DATA_DISK = os.path.join(TOP, "nixos", "create-data-disk")


def reporter_lines(r, tag):
    """The reporter's ``@@TAG ...`` lines (what follows the tag, split on white space)."""
    out = []
    for line in r.raw.splitlines():
        i = line.find("@@" + tag + " ")
        if i >= 0:
            out.append(line[i + len(tag) + 3:].split())
    return out


def extract_data_disk(ctx, img, key, name):
    """Reads IMAGE's file system on the host without device-mapper: decrypts a copy offline
    (cryptsetup reencrypt --decrypt), checks it (btrfs check) and copies its files out with their
    owners and modes (btrfs restore -m). Returns the directory."""
    work = fresh_dir(ctx.path(name))
    plain = os.path.join(work, "plain.img")
    subprocess.run(["cp", "--sparse=always", img, plain], check=True)
    for cmd in (["cryptsetup", "reencrypt", "--batch-mode", "--decrypt", "--force-offline-reencrypt",
                 "--header", os.path.join(work, "header"), "--key-file", key, plain],
                ["btrfs", "check", "--readonly", plain],
                ["btrfs", "restore", "-m", plain, os.path.join(work, "files")]):
        if cmd[1] == "restore":
            os.makedirs(cmd[-1])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ctx.require(p.returncode == 0, f"{' '.join(cmd[:2])} failed: {p.stdout[-600:]}")
    os.unlink(plain)
    return os.path.join(work, "files")


@scenario("data-disk-tool")
def data_disk_tool(ctx):
    """nixos/create-data-disk makes a data disk offline (LUKS2 + Btrfs, /persist layout, config,
    age host key): on the host its age key decrypts what is encrypted to the printed recipient;
    in the VM stage 1 unlocks and mounts it, merges its config, and sees the same key, root-owned
    with the modes asked for."""
    key = ctx.path("data-disk-tool.key")
    with open(key, "w") as f:
        f.write("disk-tool-" + os.urandom(12).hex())
    with open(key) as f:
        secret = f.read()
    img = ctx.path("data-disk-tool.img")
    size = 1 << 30
    cfg = {"hostname": "disk-tool-1", "repo": "https://git.example.org/fleet.git",
           "branch": "main"}
    t = subprocess.run([CREATE_DATA_DISK, "--force", "--pbkdf", "pbkdf2", "--pbkdf-iterations",
                        "1000", "--key-file", key, "--hostname", cfg["hostname"], "--repo",
                        cfg["repo"], "--branch", cfg["branch"], img, "1G"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.require(t.returncode == 0, f"create-data-disk failed: {t.stderr.strip()}")
    ctx.check(secret not in t.stdout + t.stderr, "the tool printed the key")
    recipient = t.stdout.strip().splitlines()[-1] if t.stdout.strip() else ""
    ctx.require(re.fullmatch(r"age1[0-9a-z]{58}", recipient), f"no recipient: {t.stdout!r}")
    st = os.stat(img)
    ctx.check(st.st_size == size, f"image is {st.st_size} bytes")
    ctx.check(st.st_blocks * 512 < size // 4, f"image not sparse: {st.st_blocks * 512} bytes")
    ctx.diag(f"1 GiB image, {st.st_blocks * 512 >> 20} MiB allocated; recipient {recipient}")
    meta = json.loads(subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", img],
                                     check=True, stdout=subprocess.PIPE, text=True).stdout)
    label = subprocess.run(["blkid", "-p", "-s", "LABEL", "-o", "value", img],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    ctx.check(label == "persist", f"LUKS2 label {label!r}")
    ctx.check([s["kdf"]["type"] for s in meta["keyslots"].values()] == ["pbkdf2"],
              f"key slots {meta['keyslots']}")

    # Host: the age round trip with the key read back out of the image (no copy kept by the tool).
    files = extract_data_disk(ctx, img, key, "data-disk-tool.extract")
    agekey = os.path.join(files, "keys", "host.agekey")
    ctx.require(os.path.isfile(agekey), "keys/host.agekey missing from the image")
    for tool in ("age", "age-keygen"):
        ctx.require(shutil.which(tool), f"{tool} missing (apt-get install age)")
    msg = "sops says hello " + os.urandom(8).hex()
    enc = subprocess.run(["age", "-r", recipient, "-a"], input=msg, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    dec = subprocess.run(["age", "-d", "-i", agekey], input=enc, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    ctx.check(dec.returncode == 0 and dec.stdout == msg,
              f"age -d with the image's key failed: {dec.stderr.strip()}")
    pub = subprocess.run(["age-keygen", "-y", agekey], check=True, stdout=subprocess.PIPE,
                         text=True).stdout.strip()
    ctx.check(pub == recipient, f"age-keygen -y gives {pub}, the tool printed {recipient}")
    with open(agekey, "rb") as f:
        key_sha = hashlib.sha256(f.read()).hexdigest()
    with open(agekey) as f:
        age_secret = [l.strip() for l in f if l.startswith("AGE-SECRET-KEY-")][0]
    ctx.check(age_secret not in t.stdout + t.stderr, "the tool printed the age key")
    with open(os.path.join(files, "config.json")) as f:
        ctx.check(json.load(f) == cfg, "config.json in the image differs")
    want = {"": (0o755, 0, 0), "config.json": (0o644, 0, 0), "keys": (0o700, 0, 0),
            "keys/host.agekey": (0o600, 0, 0), "keys/host.agekey.pub": (0o644, 0, 0),
            "nix": (0o755, 0, 0), "nix/upper": (0o755, 0, 0), "nix/work": (0o755, 0, 0)}
    for rel, (mode, uid, gid) in want.items():
        if rel == "":
            continue        # btrfs restore does not set the top directory's mode
        s = os.lstat(os.path.join(files, rel))
        ctx.check((s.st_mode & 0o7777, s.st_uid, s.st_gid) == (mode, uid, gid),
                  f"{rel} in the image: {oct(s.st_mode & 0o7777)} {s.st_uid}:{s.st_gid}")
    subprocess.run(["rm", "-rf", os.path.dirname(files)], check=True)

    # Guest: stage 1 unlocks it with the same key file (embedded in the initrd) and mounts it;
    # a second boot finds what the first wrote.
    initrd = fi_initrd(ctx, "fi-data-disk-tool", keyfile=key)
    vdb = harness.overlay(img, ctx.path("data-disk-tool.vdb.qcow2"))
    disks = [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)]
    r = ctx.boot("data-disk-tool-1", initrd, disks, FI_APPEND)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["unlock"] == "keyfile", f"unlock {st['unlock']}")
    p = r.mount_at("/persist")
    ctx.require(p is not None, "/persist not mounted")
    ctx.check(p.device == "/dev/mapper/persist" and p.fstype == "btrfs", f"/persist: {p}")
    for path in (PERSIST_CONFIG, RUN_CONFIG):
        ctx.check(path in r.files and r.json(path) == cfg, f"{path}: {r.files.get(path)}")
    ctx.check(r.marker_written, "no marker written under /nix (overlay on the new disk)")
    stats = {f[-1]: tuple(f[:-1]) for f in reporter_lines(r, "STAT") if len(f) == 4}
    for rel, (mode, uid, gid) in want.items():
        path = "/persist" + ("/" + rel if rel else "")
        if path in ("/persist/nix/upper", "/persist/nix/work"):
            continue        # not in the reporter's list
        ctx.check(stats.get(path) == (f"{mode:o}", str(uid), str(gid)),
                  f"{path} in the VM: {stats.get(path)}")
    shas = {f[1]: f[0] for f in reporter_lines(r, "SHA256") if len(f) == 2}
    ctx.check(shas.get("/persist/keys/host.agekey") == key_sha,
              f"the VM's host.agekey differs from the image's: {shas}")
    check_no_secret(ctx, r, secret)
    check_no_secret(ctx, r, age_secret)
    r2 = ctx.boot("data-disk-tool-2", initrd, disks, FI_APPEND)
    ctx.check(status_of(ctx, r2)["outcome"] == "persist", "boot 2 did not reach /persist")
    ctx.check(r2.marker_found and r2.marker_found == r.marker_written,
              f"boot 2 found marker {r2.marker_found!r}, boot 1 wrote {r.marker_written!r}")


@scenario("data-disk-tool-tpm2")
def data_disk_tool_tpm2(ctx):
    """create-data-disk --tpm2-device enrolls a TPM2 token (factory-init enroll-tpm2, sealed to
    the PCR 7 value the VM measures): stage 1 unlocks the new disk unattended."""
    state = fresh_dir(ctx.path("data-disk-tool-tpm2.tpm"))
    pcr7 = boot_pcrs(ctx, "data-disk-tool-tpm2-pcrs", state)[7]
    img = ctx.path("data-disk-tool-tpm2.img")
    with harness.swtpm_tcp(state) as tpm:
        t = subprocess.run([CREATE_DATA_DISK, "--force", "--pbkdf", "pbkdf2",
                            "--pbkdf-iterations", "1000", "--key-file", ctx.disks.key,
                            "--hostname", "disk-tool-2", f"--tpm2-device={tpm.tcti}",
                            f"--tpm2-pcrs=7:sha256={pcr7}", "--factory-init", FACTORY_INIT_DEV,
                            "--format", "qcow2", img, "512M"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.require(t.returncode == 0, f"create-data-disk failed: {t.stderr.strip()}")
    ctx.diag(t.stderr.strip().splitlines()[0])
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("data-disk-tool-tpm2", fi_initrd(ctx, "fi-plain"),
                     [Disk(ctx.disks.factory), Disk(img, "qcow2")], FI_APPEND,
                     extra_args=tpm.qemu_args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("tpm2", True)], f"attempts {attempts(st)}")
    ctx.check(r.json(PERSIST_CONFIG).get("hostname") == "disk-tool-2",
              f"{PERSIST_CONFIG}: {r.files.get(PERSIST_CONFIG)}")
    check_no_secret(ctx, r, read_key(ctx))


# ===========================================================================
# Hostile input: "trust nothing stage 2 or a stranger's disk can write". Stage 2 runs as root
# and owns /persist, so anything there (symlinks, FIFOs, device links, huge markers) is an
# attacker's input to the next boot's stage 1, which holds the LUKS key. A disk that merely
# carries our label is a stranger's. Boot 1 plants through the stage-2 hook
# (harness.stage2_hook), boot 2 shows what stage 1 made of it.

#: A boot stage 1 hangs in (a FIFO or the console opened as a "file") is killed after this;
#: bind-mode boots may copy the store again, and get longer.
HOSTILE_TIMEOUT = 90
HOSTILE_BIND_TIMEOUT = 180
EVIL = "evil.example.org"
KEEP_ME = "kept across hostile boots\n"


def hook(ctx, name, script):
    """QEMU args running SCRIPT (sh, set -u) as the stage-2 hook of boot NAME."""
    return harness.stage2_hook("set -u\n" + script, ctx.build, name)


def hook_ran(ctx, r):
    """The hook ran to the end with status 0 (else the scenario stops: nothing was planted)."""
    ctx.require(r.stage2, f"{r.name}: stage 2 never started")
    ctx.require(r.hook_started, f"{r.name}: the stage-2 hook did not run (fw_cfg missing?)")
    ctx.require(r.hook_rc == 0, f"{r.name}: the stage-2 hook failed (rc {r.hook_rc}): "
                f"{r.hook_output[-6:]}")


def finished(ctx, r):
    """Stage 1 did not hang (the scenario stops if it did: there is nothing to look at)."""
    ctx.require(not r.timed_out and r.stage2,
                f"{r.name}: stage 1 hung: no stage 2 within {r.wall_time:.0f} s "
                f"(QEMU killed), last console line: {r.tail(1)!r}")


def check_no_key_bytes(ctx, r, key, n=12):
    """check_no_secret, and no run of N consecutive characters of KEY either (a truncated or
    embedded copy), outside the kernel's echo of its command line."""
    check_no_secret(ctx, r, key)
    grams = {key[i:i + n] for i in range(0, max(1, len(key) - n + 1))}
    texts = [("console", l) for l in r.raw.splitlines() + r.kmsg
             if "Command line:" not in l and "command line:" not in l]
    texts += [(path, text) for path, text in r.files.items()]
    hits = sorted({where for where, text in texts for g in grams if g in text})
    ctx.check(not hits, f"{r.name}: part of the key ({n}+ characters) in: {hits}")


def check_warned(ctx, st, path, label=""):
    ws = st.get("warnings") or []
    ctx.check(any(path in w for w in ws), f"{label}no warning names {path}: {ws}")


def check_type(ctx, r, path, kind, mode=None):
    got = r.types.get(path)
    ok = got is not None and got[0] == kind and (mode is None or got[1] == mode)
    ctx.check(ok, f"{r.name}: {path} is {got and got[:2]}, want {kind}"
              f"{' ' + mode if mode else ''}")


def check_not_symlink(ctx, r, path):
    got = r.types.get(path)
    ctx.check(got is None or got[0] != "symlink", f"{r.name}: {path} is still a symlink")


def check_private_configs(ctx, r):
    """/persist/config.json and /run/vm-config.json: regular files, mode 0600."""
    check_type(ctx, r, PERSIST_CONFIG, "file", "600")
    check_type(ctx, r, RUN_CONFIG, "file", "600")


def check_kept(ctx, r):
    """What boot 1's hook wrote to /persist/keep-me is still there, unchanged."""
    shas = {f[1]: f[0] for f in reporter_lines(r, "SHA256") if len(f) == 2}
    want = hashlib.sha256(KEEP_ME.encode()).hexdigest()
    ctx.check(shas.get("/persist/keep-me") == want,
              f"{r.name}: /persist/keep-me lost or changed: {shas.get('/persist/keep-me')}")


def check_no_previous(ctx, st, label=""):
    img = st.get("factory_image") or {}
    prev = img.get("previous")
    ctx.check(not prev, f"{label}factory_image.previous is {prev[:48] if prev else prev!r}"
              f"{'...' if prev and len(prev) > 48 else ''} ({len(prev or '')} characters of a "
              "marker stage 1 should have ignored)")


def candidate(st, device):
    for c in st.get("candidates") or []:
        if c.get("device") == device:
            return c
    return None


def check_candidate(ctx, st, device, verdict):
    c = candidate(st, device)
    ctx.check(c is not None and c.get("verdict") == verdict,
              f"candidate {device}: {c}, want verdict {verdict!r} "
              f"(candidates: {st.get('candidates')})")


def no_evil(ctx, r):
    for path in (RUN_CONFIG, PERSIST_CONFIG):
        text = r.files.get(path, "")
        ctx.check(EVIL not in text and "pwned" not in text, f"{path} took a stranger's config: "
                  f"{' '.join(text.split())}")


#: Run on boot 2 in the overlay scenarios: which files visible to stage 2 hold the key (names
#: only, never the key itself); the key is the script's $K.
KEY_SCAN = ('find /nix /persist -xdev -type f -exec grep -lsF -- "$K" {} + 2>/dev/null | '
            'sed "s/^/key-found: /"\nls -la /persist /persist/nix 2>&1 | sed "s/^/ls: /"\n'
            'true\n')


def key_scan(ctx, r):
    found = [l for l in r.hook_output if l.startswith("key-found:")]
    ctx.check(not found, f"{r.name}: stage 2 can read the key in {found}")


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def plant_boot1(ctx, name, initrd, disks, plant, append=FI_APPEND):
    """Boot 1 of a hostile scenario: a normal boot whose stage-2 hook writes /persist/keep-me
    and runs PLANT."""
    r1 = ctx.boot(f"{name}-1", initrd, disks, append,
                  extra_args=hook(ctx, f"{name}-1",
                                  f"printf %s {sh_quote(KEEP_ME)} > /persist/keep-me\n" + plant))
    st1 = status_of(ctx, r1)
    ctx.require(st1["outcome"] == "persist", f"boot 1: outcome {st1['outcome']}: {st1['reason']}")
    hook_ran(ctx, r1)
    for l in r1.hook_output:
        ctx.diag(f"boot 1 hook: {l}")
    return r1, st1


@scenario("hostile-symlinks-overlay")
def hostile_symlinks_overlay(ctx):
    """Stage 2 plants symlinks into the initrd (the key file) at the paths stage 1 opens on
    /persist in overlay mode: the marker, config.json, nix/upper and a nix/work loop. Stage 1
    reads none of them, moves them aside with warnings, keeps all data, and the key shows
    nowhere."""
    d = ctx.disks
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-keyfile", keyfile=d.key)
    vdb = harness.overlay(d.luks, ctx.path("hostile-symlinks-overlay.vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    r1, _ = plant_boot1(ctx, "hostile-symlinks-overlay", initrd, disks, """
cd /persist/nix
rm -f .factory-image && ln -s /etc/factory-init/keyfile .factory-image
rm -f /persist/config.json && ln -s /etc/factory-init/keyfile /persist/config.json
mv upper upper.moved && ln -s /etc/factory-init upper
mv work work.moved && ln -s work work
ls -la /persist /persist/nix
""")
    # Boot 2's hook scans for the key, then plants upper and work links into the initrd without
    # the loop (which makes any overlay mount fail, hiding what an upper layer there would do).
    r = ctx.boot("hostile-symlinks-overlay-2", initrd, disks, FI_APPEND, timeout=HOSTILE_TIMEOUT,
                 extra_args=hook(ctx, "hostile-symlinks-overlay-2",
                                 f"K={sh_quote(key)}\n" + KEY_SCAN + """
cd /persist/nix
mv work work.moved2 && ln -s /lib work
mv upper upper.moved2 && ln -s /etc/factory-init upper
"""))
    r3 = ctx.boot("hostile-symlinks-overlay-3", initrd, disks, FI_APPEND,
                  timeout=HOSTILE_TIMEOUT,
                  extra_args=hook(ctx, "hostile-symlinks-overlay-3",
                                  f"K={sh_quote(key)}\n" + KEY_SCAN +
                                  "ls -la /nix | sed 's/^/nix: /'\n"))
    finished(ctx, r)
    st = status_of(ctx, r)
    check_no_key_bytes(ctx, r, key)
    key_scan(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["store"] == "overlay", f"store {st['store']}: {st['reason']}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "overlay", f"/nix is not an overlay: {n}")
    ctx.check(r.marker_written, "/nix is not writable (no overlay on a fresh upper layer)")
    for path in ("/persist/nix/.factory-image", PERSIST_CONFIG, "/persist/nix/upper",
                 "/persist/nix/work"):
        check_warned(ctx, st, path)
    check_no_previous(ctx, st)
    check_private_configs(ctx, r)
    check_type(ctx, r, "/persist/nix/.factory-image", "file")
    check_type(ctx, r, "/persist/nix/upper", "dir")
    check_type(ctx, r, "/persist/nix/work", "dir")
    check_kept(ctx, r)
    ls = r.listings.get("/persist/nix") or []
    for kept in ("upper.moved", "work.moved"):
        ctx.check(kept in ls, f"/persist/nix/{kept} is gone: /persist/nix holds {ls}")
    # Moved aside under a name of its own (like config.json.bad), never deleted.
    for name in ("upper", "work"):
        ctx.check(len([e for e in ls if e.startswith(name)]) >= 3,
                  f"the planted {name} symlink was not kept under a name starting with "
                  f"{name!r}: /persist/nix holds {ls}")
    ctx.diag(f"warnings: {st.get('warnings')}")
    ctx.diag(f"/persist: {r.listings.get('/persist')}; /persist/nix: {ls}")

    # Boot 3: nix/upper -> /etc/factory-init, nix/work -> /lib (one file system, the initrd's).
    # Taken as the upper layer, the initrd's directory (key file included) would be in /nix.
    hook_ran(ctx, r)
    finished(ctx, r3)
    st3 = status_of(ctx, r3)
    check_no_key_bytes(ctx, r3, key)
    key_scan(ctx, r3)
    ctx.check(st3["outcome"] == "persist" and st3["store"] == "overlay",
              f"boot 3: outcome {st3['outcome']}, store {st3['store']}: {st3['reason']}")
    for path in ("/persist/nix/upper", "/persist/nix/work"):
        check_warned(ctx, st3, path, "boot 3: ")
        check_type(ctx, r3, path, "dir")
    ctx.check(r3.marker_written, "boot 3: /nix is not writable")
    in_nix = [l for l in r3.hook_output if l.startswith("nix: ") and "keyfile" in l]
    ctx.check(not in_nix, f"boot 3: the initrd's key file is in /nix: {in_nix}")
    ls3 = r3.listings.get("/persist/nix") or []
    for kept in ("upper.moved2", "work.moved2"):
        ctx.check(kept in ls3, f"boot 3: /persist/nix/{kept} is gone: {ls3}")
    ctx.diag(f"boot 3: /nix {r3.mount_at('/nix')}; warnings {st3.get('warnings')}")


@scenario("hostile-symlinks-bind")
def hostile_symlinks_bind(ctx):
    """Bind mode: the copy's marker a symlink to the initrd's key file and .nix-staging one to
    /etc (boot 2), then config.json a FIFO (boot 3). Stage 1 neither follows nor opens them
    (no hang), keeps the data, binds a store, and the key shows nowhere."""
    fs1, _ = store_images(ctx)
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-keyfile", keyfile=ctx.disks.key)
    vdb = harness.overlay(fresh_btrfs(ctx, "hostile-bind"),
                          ctx.path("hostile-symlinks-bind.vdb.qcow2"))
    disks = [Disk(fs1), Disk(vdb, "qcow2", snapshot=False)]
    append = STORE_APPEND      # bind mode on a plain Btrfs: carries vm.persist.encrypted=no
    r1, st1 = plant_boot1(ctx, "hostile-symlinks-bind", initrd, disks, """
rm -f /persist/nix/.factory-init-store
ln -s /etc/factory-init/keyfile /persist/nix/.factory-init-store
rm -rf /persist/.nix-staging && ln -s /etc /persist/.nix-staging
ls -la /persist
""", append)
    ctx.require(st1["store"] == "bind", f"boot 1: store {st1['store']}: {st1['reason']}")
    # The FIFO comes in a boot of its own: a stage 1 that hangs on it would hide the rest.
    r = ctx.boot("hostile-symlinks-bind-2", initrd, disks, append, timeout=HOSTILE_BIND_TIMEOUT,
                 extra_args=hook(ctx, "hostile-symlinks-bind-2",
                                 "rm -f /persist/config.json && mkfifo /persist/config.json\n"))
    r3 = ctx.boot("hostile-symlinks-bind-3", initrd, disks, append, timeout=HOSTILE_BIND_TIMEOUT)
    finished(ctx, r)
    st = status_of(ctx, r)
    check_no_key_bytes(ctx, r, key)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["store"] == "bind", f"store {st['store']}: {st['reason']}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "btrfs", f"/nix is not the bound copy: {n}")
    for path in ("/persist/nix/.factory-init-store", "/persist/.nix-staging"):
        check_warned(ctx, st, path)
    check_no_previous(ctx, st)
    check_private_configs(ctx, r)
    check_not_symlink(ctx, r, "/persist/.nix-staging")
    check_type(ctx, r, "/persist/nix/.factory-init-store", "file")
    check_kept(ctx, r)
    ls = r.listings.get("/persist") or []
    ctx.check(r.marker_found == r1.marker_written
              or any(e.startswith("nix") and e != "nix" for e in ls),
              f"boot 1's store copy is gone (neither bound nor moved aside): /persist holds {ls}")
    ctx.diag(f"boot 2: warnings {st.get('warnings')}")
    ctx.diag(f"boot 2: /persist {ls}")

    hook_ran(ctx, r)
    finished(ctx, r3)
    st3 = status_of(ctx, r3)
    check_no_key_bytes(ctx, r3, key)
    ctx.check(st3["outcome"] == "persist" and st3["store"] == "bind",
              f"boot 3: outcome {st3['outcome']}, store {st3['store']}: {st3['reason']}")
    check_warned(ctx, st3, PERSIST_CONFIG, "boot 3: ")
    check_private_configs(ctx, r3)
    check_type(ctx, r3, PERSIST_CONFIG + ".bad", "fifo")
    check_kept(ctx, r3)
    ctx.diag(f"boot 3 (FIFO): warnings {st3.get('warnings')}")


@scenario("hostile-marker-garbage")
def hostile_marker_garbage(ctx):
    """The overlay marker (/persist/nix/.factory-image) replaced by 64 KiB of garbage starting
    with the key, then by a short line of it: neither is taken as an image identity (previous
    stays empty, a warning names the marker) and no byte of it reaches the records."""
    d = ctx.disks
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-keyfile", keyfile=d.key)
    vdb = harness.overlay(d.luks, ctx.path("hostile-marker-garbage.vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    m = "/persist/nix/.factory-image"
    plant_boot1(ctx, "hostile-marker-garbage", initrd, disks, f"""
rm -f {m}
printf %s {sh_quote(key)} > {m}
head -c {65536 - len(key)} /dev/urandom >> {m}
echo "marker: $(wc -c < {m}) bytes"
""")
    # Boot 2 checks the big one and plants a short one (what an old reader would take whole):
    # the key, then bytes no identity has (quotes, control characters, high bytes), one line.
    short = f"""
rm -f {m}
printf '%s\\042<\\001\\033[2J\\377\\376 $(reboot) ' {sh_quote(key)} > {m}
head -c 600 /dev/urandom | tr -d '\\n\\000' >> {m}
echo "marker: $(wc -c < {m}) bytes"
"""
    r2 = ctx.boot("hostile-marker-garbage-2", initrd, disks, FI_APPEND, timeout=HOSTILE_TIMEOUT,
                  extra_args=hook(ctx, "hostile-marker-garbage-2", short))
    r3 = ctx.boot("hostile-marker-garbage-3", initrd, disks, FI_APPEND, timeout=HOSTILE_TIMEOUT)
    for r, what in ((r2, "64 KiB"), (r3, "short")):
        finished(ctx, r)
        st = status_of(ctx, r)
        label = f"{what} marker: "
        check_no_key_bytes(ctx, r, key)
        ctx.check(st["outcome"] == "persist" and st["store"] == "overlay",
                  f"{label}outcome {st['outcome']}, store {st['store']}: {st['reason']}")
        check_no_previous(ctx, st, label)
        check_warned(ctx, st, m, label)
        ctx.check(st["factory_image"]["refreshed"] is False,
                  f"{label}garbage counted as a previous image (refreshed is true)")
        check_type(ctx, r, m, "file")
        ctx.diag(f"{label}warnings {st.get('warnings')}")
    hook_ran(ctx, r2)


@scenario("hostile-dev-targets")
def hostile_dev_targets(ctx):
    """config.json a symlink to the factory disk (/dev/vda), the overlay marker one to
    /dev/console: stage 1 opens neither (no hang on the console), vda stays as it was, the
    boot reaches /persist."""
    d = ctx.disks
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-keyfile", keyfile=d.key)
    vdb = harness.overlay(d.luks, ctx.path("hostile-dev-targets.vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    plant_boot1(ctx, "hostile-dev-targets", initrd, disks, """
rm -f /persist/config.json && ln -s /dev/vda /persist/config.json
rm -f /persist/nix/.factory-image && ln -s /dev/console /persist/nix/.factory-image
ls -la /persist /persist/nix
""")
    control = same_disk(d.factory, ctx.path("hostile-dev-targets-1.vda.qcow2"))
    r = ctx.boot("hostile-dev-targets-2", initrd, disks, FI_APPEND, timeout=HOSTILE_TIMEOUT,
                 extra_args=hook(ctx, "hostile-dev-targets-2", f"K={sh_quote(key)}\n" + KEY_SCAN))
    vda = ctx.path("hostile-dev-targets-2.vda.qcow2")
    if control:
        ctx.check(same_disk(d.factory, vda), "the factory disk (vda) was written to")
    else:
        ctx.diag("control: a normal boot changed vda too; the vda comparison says nothing")
    finished(ctx, r)
    st = status_of(ctx, r)
    check_no_key_bytes(ctx, r, key)
    key_scan(ctx, r)
    ctx.check(st["outcome"] == "persist" and st["store"] == "overlay",
              f"outcome {st['outcome']}, store {st['store']}: {st['reason']}")
    for path in (PERSIST_CONFIG, "/persist/nix/.factory-image"):
        check_warned(ctx, st, path)
    check_no_previous(ctx, st)
    check_private_configs(ctx, r)
    check_type(ctx, r, "/persist/nix/.factory-image", "file")
    check_kept(ctx, r)
    ctx.diag(f"warnings: {st.get('warnings')}")


@scenario("stranger-plain-disk")
def stranger_plain_disk(ctx):
    """vdb: a stranger's plain Btrfs labelled "persist" (evil config.json, a planted store
    path); vdc: our LUKS2 disk. Under vm.persist=auto an unencrypted disk is refused: /persist
    is vdc, the stranger's config and store never reach stage 2, and vdb is not written."""
    d = ctx.disks
    key = read_key(ctx)
    vdb = harness.overlay(d.attacker, ctx.path("stranger-plain-disk.vdb.qcow2"))
    vdc = harness.overlay(d.luks, ctx.path("stranger-plain-disk.vdc.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False),
             Disk(vdc, "qcow2", snapshot=False)]
    r = ctx.boot("stranger-plain-disk", fi_initrd(ctx, "fi-plain"), disks,
                 f"{FI_APPEND} vm.luks.key={key}", timeout=HOSTILE_TIMEOUT,
                 extra_args=hook(ctx, "stranger-plain-disk",
                                 "ls /nix/store | sed 's/^/store: /'\n"
                                 "[ ! -e /nix/store/evil-marker ] || echo 'EVIL: store path'\n"))
    finished(ctx, r)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["device"] == "/dev/vdc", f"device {st['device']} (want /dev/vdc)")
    ctx.check(st["luks"] is True, f"luks {st['luks']}")
    p = r.mount_at("/persist")
    ctx.check(p is not None and p.device == "/dev/mapper/persist", f"/persist: {p}")
    check_candidate(ctx, st, "/dev/vdb", "refused")
    check_candidate(ctx, st, "/dev/vdc", "used")
    no_evil(ctx, r)
    ctx.check(not any("EVIL" in l for l in r.hook_output),
              "the stranger's store path is in /nix/store")
    ctx.check(same_disk(d.attacker, vdb), "the stranger's disk (vdb) was written to")
    check_no_secret(ctx, r, key)
    ctx.diag(f"candidates: {st.get('candidates')}")


@scenario("two-luks-disks")
def two_luks_disks(ctx):
    """vdb: a stranger's LUKS2 "persist" (another key, an evil config inside); vdc: ours. The
    key opens no slot on vdb, so vdc is tried too (before any prompt) and wins; vdb is left as
    it was."""
    d = ctx.disks
    key = read_key(ctx)
    vdb = harness.overlay(d.luks_other, ctx.path("two-luks-disks.vdb.qcow2"))
    vdc = harness.overlay(d.luks, ctx.path("two-luks-disks.vdc.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False),
             Disk(vdc, "qcow2", snapshot=False)]
    # vm.luks.timeout bounds a (wrong) passphrase prompt; the right behaviour never prompts.
    r = ctx.boot("two-luks-disks", fi_initrd(ctx, "fi-plain"), disks,
                 f"{FI_APPEND} vm.luks.key={key} vm.luks.timeout=3", timeout=HOSTILE_TIMEOUT)
    finished(ctx, r)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["device"] == "/dev/vdc", f"device {st['device']} (want /dev/vdc)")
    p = r.mount_at("/persist")
    ctx.check(p is not None and p.device == "/dev/mapper/persist", f"/persist: {p}")
    att = st.get("unlock_attempts") or []
    ctx.check(any(a.get("device") == "/dev/vdb" and not a.get("ok") for a in att),
              f"no failed attempt on /dev/vdb: {att}")
    ctx.check(any(a.get("device") == "/dev/vdc" and a.get("ok") for a in att),
              f"no attempt on /dev/vdc that opened it: {att}")
    ctx.check("Passphrase for" not in r.raw,
              "a passphrase prompt came before the key was tried on every disk")
    check_candidate(ctx, st, "/dev/vdb", "failed")
    check_candidate(ctx, st, "/dev/vdc", "used")
    no_evil(ctx, r)
    ctx.check(same_disk(d.luks_other, vdb), "the stranger's disk (vdb) was written to")
    check_no_secret(ctx, r, key)
    with open(d.other_key) as f:
        check_no_secret(ctx, r, f.read())
    ctx.diag(f"attempts: {[(a.get('device'), a['method'], a['ok']) for a in att]}")
    ctx.diag(f"candidates: {st.get('candidates')}")


# ===========================================================================

def main(argv=None):
    ap = argparse.ArgumentParser(description="Run QEMU scenarios, print TAP.")
    ap.add_argument("names", nargs="*", help="scenario names or patterns")
    ap.add_argument("-b", "--build", default=os.environ.get("QEMU_BUILD", DEFAULT_BUILD),
                    help="build/output dir (default %(default)s)")
    ap.add_argument("--icount", action="store_true",
                    help="run guests with -icount shift=0,sleep=off")
    ap.add_argument("--echo", action="store_true",
                    help="copy guest consoles to stderr")
    ap.add_argument("--list", action="store_true", help="list scenarios")
    a = ap.parse_args(argv)

    if a.list:
        for name, fn in SCENARIOS.items():
            print(f"{name:24} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    selected = list(SCENARIOS)
    if a.names:
        selected = []
        for pat in a.names:
            hits = [n for n in SCENARIOS if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                print(f"run.py: no scenario matches {pat!r} "
                      f"(have: {', '.join(SCENARIOS)})", file=sys.stderr)
                return 2
            selected += [h for h in hits if h not in selected]

    ctx = Context(a.build, icount=a.icount, echo=a.echo)
    passed = failed = 0
    print(f"1..{len(selected)}", flush=True)
    for n, name in enumerate(selected, 1):
        ctx.reset()
        t0 = time.monotonic()
        try:
            SCENARIOS[name](ctx)
        except Abort:
            pass
        except AssertionError as e:
            ctx.failures.append(f"assertion failed: {e}" if str(e) else
                                "assertion failed:\n" + traceback.format_exc().rstrip())
        except Exception:
            ctx.failures.append("exception:\n" + traceback.format_exc().rstrip())
        dt = time.monotonic() - t0
        if ctx.failures:
            failed += 1
            print(f"not ok {n} - {name}")
            lines = [f"FAIL: {f}" for f in ctx.failures] + ctx.diags
            for r in ctx.boots:
                lines.append(r.summary())
                lines.append(f"log: {r.log_path}")
            if ctx.boots:
                lines.append("console tail:")
                lines += ["  " + l for l in ctx.boots[-1].tail(25).splitlines()]
        else:
            passed += 1
            print(f"ok {n} - {name}")
            lines = list(ctx.diags)
        lines.append(f"{name}: {dt:.1f} s")
        for block in lines:
            for line in block.splitlines():
                print(f"# {line}")
        sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
