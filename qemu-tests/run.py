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
        """Pristine images from mkdisks.sh: .factory .luks .btrfs .key paths.

        Never boot these with snapshot=False; use Disk(path) (throw-away
        overlay) or harness.overlay() for state that must survive a reboot.
        """
        if self._disks is None:
            _run_out([os.path.join(HERE, "mkdisks.sh"), self.build])
            j = lambda n: os.path.join(self.build, n)  # noqa: E731
            self._disks = SimpleNamespace(factory=j("factory.img"),
                                          luks=j("luks.img"),
                                          btrfs=j("btrfs.img"),
                                          key=j("test.key"))
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

FACTORY_INIT = os.path.join(TOP, "build", "factory-init.static")
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
    check_fi_logged(ctx, r1, "unlocked /dev/vdb with vm.luks.key")
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
                 f"{FI_APPEND} vm.luks.key=not-the-key-at-all")
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
                 "console=ttyS0 panic=-1 quiet vm.hostname=helper-1")
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
                 [Disk(ctx.disks.factory), Disk(img)], f"{FI_APPEND} vm.hostname=new-1")
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(any("not valid JSON" in w for w in st["warnings"]), f"warnings {st['warnings']}")
    ctx.check(any("config.json.bad" in w for w in st["warnings"]), f"warnings {st['warnings']}")
    ctx.check(PERSIST_CONFIG in r.files and r.json(PERSIST_CONFIG) == {"hostname": "new-1"},
              f"{PERSIST_CONFIG}: {r.files.get(PERSIST_CONFIG)}")

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
