#!/usr/bin/env python3
"""QEMU boot harness for the factory-init tests.

One call to :func:`boot` starts ``qemu-system-x86_64 -accel tcg`` with a
kernel, an initrd and virtio disks, follows the serial console as it
arrives, and returns a :class:`BootResult` as soon as the stage-2 reporter
(``/sbin/init`` on factory.img, see stage2-reporter.sh) printed ``@@DONE``
and QEMU exited -- or when the timeout killed QEMU.  The full console log is
saved to ``OUTDIR/NAME.log`` and the QEMU command line to
``OUTDIR/NAME.cmd``.

Disks are given as :class:`Disk` objects (or ``(path, format, snapshot)``
tuples).  ``snapshot=True`` boots through a fresh qcow2 overlay created for
this boot (``OUTDIR/NAME.vdX.qcow2``), so the base image stays pristine.
``snapshot=False`` writes to the given file itself; to keep state across
several boots without touching a pristine image, make a persistent overlay
once with :func:`overlay` and boot it with ``snapshot=False`` each time::

    import harness
    st = harness.overlay("build/qemu/luks.img", "build/qemu/t1-vdb.qcow2")
    disks = [harness.Disk("build/qemu/factory.img", snapshot=True),
             harness.Disk(st, "qcow2", snapshot=False)]
    r1 = harness.boot(kernel, initrd, "console=ttyS0 panic=-1", disks,
                      "build/qemu", "t1-boot1")
    r2 = harness.boot(kernel, initrd, "console=ttyS0 panic=-1", disks,
                      "build/qemu", "t1-boot2")
    assert r1.marker_found is None and r2.marker_found == r1.marker_written

Only the Python standard library is used.  Also usable from the shell::

    python3 qemu-tests/harness.py --kernel K --initrd I --disk factory.img \\
        --append "console=ttyS0 panic=-1" --outdir build/qemu --name try
"""

import json
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
MARK = "@@"
#: Seconds to wait for QEMU to exit after @@DONE before killing it.
EXIT_GRACE = 15.0


@dataclass
class Disk:
    """A virtio disk for :func:`boot`.

    path:     image file.
    format:   "raw" or "qcow2" (QEMU's format name).
    snapshot: True  -> boot through a throw-away qcow2 overlay on top of
                       ``path`` (``path`` is never written);
              False -> attach ``path`` itself, writes persist.
    readonly: attach read-only (the guest sees a read-only disk).
    serial:   optional virtio serial (shows up in /dev/disk/by-id).
    """
    path: str
    format: str = "raw"
    snapshot: bool = True
    readonly: bool = False
    serial: Optional[str] = None


DiskSpec = Union[Disk, str, Sequence]


def as_disk(spec: DiskSpec) -> Disk:
    """Turn a Disk, a path, or a (path, format[, snapshot]) tuple into a Disk."""
    if isinstance(spec, Disk):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return Disk(os.fspath(spec))
    return Disk(*spec)


def overlay(base: str, path: str, base_format: str = "raw") -> str:
    """Create (replacing any old one) a qcow2 overlay PATH on top of BASE.

    Writes go to the overlay; BASE is only read.  Boot the overlay with
    ``Disk(path, "qcow2", snapshot=False)`` to keep state across boots.
    Returns PATH.
    """
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_format,
                    "-b", os.path.abspath(base), path], check=True)
    return path


@dataclass
class Mount:
    """One line of the guest's /proc/mounts."""
    device: str
    mountpoint: str
    fstype: str
    options: List[str]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


@dataclass
class BootResult:
    """What one boot produced.  Fields filled from the ``@@`` lines.

    raw:            the whole console output (str, \\r removed).
    timed_out:      QEMU was killed: at the timeout, or because it did not
                    exit within EXIT_GRACE seconds after ``@@DONE``.
    exit_status:    QEMU's exit code (negative: killed by that signal).
    wall_time:      seconds from starting QEMU until it exited.
    done:           ``@@DONE`` was seen (the reporter ran to the end).
    stage2:         ``@@STAGE2`` was seen (stage 2 started).
    uptime:         guest /proc/uptime at stage-2 start (float) or None.
    mounts:         list of Mount, in /proc/mounts order.
    files:          {path: content} for each ``@@FILE`` block (lines joined
                    with "\\n"); paths reported ``@@NOFILE`` are in nofiles.
    marker_found:   content of the marker from a previous boot, or None
                    when ``@@MARKER absent``.
    marker_written: what was written this boot, or None on write-failed.
    marker_write_failed: True when ``@@MARKER write-failed``.
    kmsg:           dmesg lines (``@@KMSG``).
    log_path:       the saved console log.
    cmd:            the QEMU argv.
    """
    name: str
    raw: str = ""
    timed_out: bool = False
    exit_status: Optional[int] = None
    wall_time: float = 0.0
    done: bool = False
    stage2: bool = False
    uptime: Optional[float] = None
    mounts: List[Mount] = field(default_factory=list)
    files: Dict[str, str] = field(default_factory=dict)
    nofiles: List[str] = field(default_factory=list)
    marker_found: Optional[str] = None
    marker_written: Optional[str] = None
    marker_write_failed: bool = False
    kmsg: List[str] = field(default_factory=list)
    log_path: str = ""
    cmd: List[str] = field(default_factory=list)
    stderr: str = ""

    # -- helpers for assertions -------------------------------------------
    @property
    def ok(self) -> bool:
        """The reporter finished and QEMU exited on its own."""
        return self.done and not self.timed_out

    def mount_at(self, mountpoint: str) -> Optional[Mount]:
        """The last mount on MOUNTPOINT (the visible one), or None."""
        hits = [m for m in self.mounts if m.mountpoint == mountpoint]
        return hits[-1] if hits else None

    def json(self, path: str):
        """Parse the reported file PATH as JSON (KeyError if not reported)."""
        return json.loads(self.files[path])

    def console_before_stage2(self) -> str:
        """Console text printed before ``@@STAGE2`` (kernel + initrd)."""
        i = self.raw.find(MARK + "STAGE2")
        return self.raw if i < 0 else self.raw[:i]

    def contains(self, text: str) -> bool:
        """True if TEXT occurs anywhere in the console log or in dmesg."""
        return text in self.raw or any(text in k for k in self.kmsg)

    def tail(self, n: int = 30) -> str:
        """Last N lines of the console, for failure diagnostics."""
        return "\n".join(self.raw.splitlines()[-n:])

    def summary(self) -> str:
        return (f"{self.name}: done={self.done} timed_out={self.timed_out} "
                f"exit={self.exit_status} wall={self.wall_time:.2f}s "
                f"uptime={self.uptime}")


def parse_console(text: str, result: BootResult) -> BootResult:
    """Fill RESULT's parsed fields from console TEXT.

    A marker line may be preceded by kernel output on the same line (printk
    and userspace share the serial port), so everything from the first
    ``@@`` on a line is taken as the record.
    """
    current = None
    lines: List[str] = []
    for raw in text.splitlines():
        i = raw.find(MARK)
        if i < 0:
            continue
        rec = raw[i + len(MARK):]
        tag, _, rest = rec.partition(" ")
        if current is not None:
            if tag == "|":
                lines.append(rest)
                continue
            if tag == "END":
                result.files[current] = "\n".join(lines)
                current, lines = None, []
                continue
        if tag.startswith("STAGE2"):
            result.stage2 = True
            m = re.search(r"uptime=([0-9.]+)", rec)
            if m:
                result.uptime = float(m.group(1))
        elif tag == "MOUNT":
            f = rest.split()
            if len(f) >= 4:
                result.mounts.append(Mount(f[0], f[1], f[2], f[3].split(",")))
        elif tag == "FILE":
            current, lines = rest, []
        elif tag == "NOFILE":
            result.nofiles.append(rest)
        elif tag == "MARKER":
            kind, _, val = rest.partition(" ")
            if kind == "found":
                result.marker_found = val
            elif kind == "written":
                result.marker_written = val
            elif kind == "write-failed":
                result.marker_write_failed = True
        elif tag == "KMSG":
            result.kmsg.append(rest)
        elif tag == "DONE":
            result.done = True
    if current is not None:      # truncated block: keep what arrived
        result.files[current] = "\n".join(lines)
    return result


def qemu_command(kernel: str, initrd: str, append: str, drives: List[Disk],
                 icount: bool = False, memory: int = 512,
                 extra_args: Sequence[str] = ()) -> List[str]:
    """The QEMU argv used by :func:`boot` (drives already resolved)."""
    cmd = [QEMU, "-accel", "tcg", "-m", str(memory),
           "-nodefaults", "-no-user-config", "-display", "none",
           "-no-reboot", "-monitor", "none",
           "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
           "-kernel", kernel, "-initrd", initrd, "-append", append,
           "-device", "virtio-rng-pci"]
    if icount:
        cmd += ["-icount", "shift=0,sleep=off"]
    for n, d in enumerate(drives):
        opts = [f"file={d.path}", f"format={d.format}", "if=none",
                f"id=disk{n}", "cache=unsafe" if d.snapshot else "cache=writeback"]
        if d.readonly:
            opts.append("readonly=on")
        cmd += ["-drive", ",".join(opts)]
        dev = f"virtio-blk-pci,drive=disk{n}"
        if d.serial:
            dev += f",serial={d.serial}"
        cmd += ["-device", dev]
    cmd += list(extra_args)
    return cmd


def boot(kernel: str, initrd: str, append: str, disks: Sequence[DiskSpec] = (),
         outdir: str = "build/qemu", name: str = "boot", timeout: float = 120,
         icount: bool = False, extra_args: Sequence[str] = (),
         memory: int = 512, echo: bool = False) -> BootResult:
    """Boot KERNEL + INITRD under TCG and return the parsed :class:`BootResult`.

    append:     kernel command line (include ``console=ttyS0``; ``panic=-1``
                makes a panic end the run at once, QEMU runs -no-reboot).
    disks:      Disk / path / (path, format, snapshot) per virtio disk, in
                order: the first is vda, the second vdb, ...
    outdir:     where NAME.log, NAME.cmd and per-boot overlays go.
    timeout:    seconds (wall clock) before QEMU is killed.
    icount:     add ``-icount shift=0,sleep=off``: guest time counts
                instructions, so the reported uptime repeats across runs.
    extra_args: appended to the QEMU command line (e.g. fw_cfg, TPM).
    echo:       copy the console to stderr while it runs.
    Never sleeps for a fixed time: returns when QEMU exits (normally right
    after ``@@DONE`` and ``poweroff -f``) or is killed at the timeout.
    """
    os.makedirs(outdir, exist_ok=True)
    result = BootResult(name=name)
    drives = []
    for n, spec in enumerate(disks):
        d = as_disk(spec)
        if not os.path.exists(d.path):
            raise FileNotFoundError(d.path)
        if d.snapshot:
            ov = os.path.join(outdir, f"{name}.vd{chr(ord('a') + n)}.qcow2")
            overlay(d.path, ov, d.format)
            d = Disk(ov, "qcow2", snapshot=True, readonly=d.readonly,
                     serial=d.serial)
        drives.append(d)
    cmd = qemu_command(kernel, initrd, append, drives, icount=icount,
                       memory=memory, extra_args=extra_args)
    result.cmd = cmd
    result.log_path = os.path.join(outdir, f"{name}.log")
    with open(os.path.join(outdir, f"{name}.cmd"), "w") as f:
        f.write(" ".join(shlex.quote(c) for c in cmd) + "\n")

    chunks: List[bytes] = []
    err_chunks: List[bytes] = []
    start = time.monotonic()
    deadline = start + timeout
    seen_done = False
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, chunks)
    sel.register(proc.stderr, selectors.EVENT_READ, err_chunks)
    tail = b""
    with open(result.log_path, "wb") as log:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                result.timed_out = True
                break
            for key, _ in sel.select(timeout=min(1.0, deadline - now)):
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                key.data.append(data)
                if key.data is chunks:
                    log.write(data)
                    log.flush()
                    if echo:
                        sys.stderr.buffer.write(data)
                        sys.stderr.flush()
                    if not seen_done:
                        tail = (tail + data)[-4096:]
                        if b"@@DONE" in tail:
                            seen_done = True
                            # Give QEMU a bounded time to power off.
                            deadline = min(deadline, time.monotonic() + EXIT_GRACE)
    sel.close()
    if result.timed_out:
        _kill(proc)
    try:
        result.exit_status = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill(proc)
        result.exit_status = proc.wait()
    result.wall_time = time.monotonic() - start
    proc.stdout.close()
    proc.stderr.close()
    result.raw = b"".join(chunks).decode("utf-8", "replace").replace("\r", "")
    result.stderr = b"".join(err_chunks).decode("utf-8", "replace")
    return parse_console(result.raw, result)


def _kill(proc: subprocess.Popen) -> None:
    """Kill QEMU (its own process group, started by us)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv=None) -> int:
    """CLI: one boot, print a JSON summary (for make bench and debugging)."""
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--append", default="console=ttyS0 panic=-1")
    ap.add_argument("--disk", action="append", default=[],
                    help="PATH[,format=raw|qcow2][,persist] (repeatable; "
                    "without persist a throw-away overlay is used)")
    ap.add_argument("--outdir", default="build/qemu")
    ap.add_argument("--name", default="boot")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--icount", action="store_true")
    ap.add_argument("--echo", action="store_true", help="show the console")
    ap.add_argument("extra", nargs="*", help="extra QEMU arguments (after --)")
    a = ap.parse_args(argv)
    disks = []
    for spec in a.disk:
        path, *opts = spec.split(",")
        d = Disk(path)
        for o in opts:
            if o.startswith("format="):
                d.format = o.split("=", 1)[1]
            elif o == "persist":
                d.snapshot = False
            else:
                ap.error(f"bad disk option {o!r}")
        disks.append(d)
    r = boot(a.kernel, a.initrd, a.append, disks, a.outdir, a.name,
             timeout=a.timeout, icount=a.icount, extra_args=a.extra,
             echo=a.echo)
    print(json.dumps({"name": r.name, "done": r.done, "timed_out": r.timed_out,
                      "exit_status": r.exit_status, "stage2": r.stage2,
                      "uptime": r.uptime, "wall_time": round(r.wall_time, 3),
                      "marker_found": r.marker_found,
                      "marker_written": r.marker_written,
                      "log": r.log_path}))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
