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

import base64
import fcntl
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Pattern, Sequence, Tuple, Union

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


#: A console pattern to wait for: bytes, str (UTF-8) or a compiled bytes regex.
ConsolePattern = Union[bytes, str, Pattern[bytes]]


@dataclass
class Interaction:
    """One console interaction of :func:`boot` that fired.

    pattern: what was waited for (as given).
    sent:    the bytes written to the guest's serial port.
    at:      seconds after QEMU started.
    offset:  byte offset in the console output (with \\r) where the match ended;
             the next pattern is searched from there.
    """
    pattern: ConsolePattern
    sent: bytes
    at: float
    offset: int


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
    interactions:   the ``interact`` steps that fired, in order (a list of
                    :class:`Interaction`; shorter than ``interact`` if a
                    pattern never showed).
    types:          {path: (kind, mode, uid, gid)} from ``@@TYPE`` (what the
                    path is, links not followed: kind is file, dir, symlink,
                    fifo, char, block, socket or other; mode in octal text).
    listings:       {dir: [names]} from ``@@LS`` (/persist, /persist/nix).
    hook_started:   ``@@HOOK start`` was seen (see :func:`stage2_hook`).
    hook_output:    the hook's output lines (``@@HOOK| ``), in order.
    hook_rc:        the hook's exit status, or None (no hook, or it never
                    finished).
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
    interactions: List[Interaction] = field(default_factory=list)
    killed: bool = False         # kill_when fired: QEMU was killed (a power cut)
    types: Dict[str, Tuple[str, str, str, str]] = field(default_factory=dict)
    listings: Dict[str, List[str]] = field(default_factory=dict)
    hook_started: bool = False
    hook_output: List[str] = field(default_factory=list)
    hook_rc: Optional[int] = None

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
        elif tag == "HOOK|":
            result.hook_output.append(rest)
        elif tag == "HOOK":
            if rest == "start":
                result.hook_started = True
            elif rest.startswith("rc="):
                try:
                    result.hook_rc = int(rest[3:])
                except ValueError:
                    pass
        elif tag == "TYPE":
            f = rest.split()
            if len(f) == 5:
                result.types[f[4]] = tuple(f[:4])
        elif tag == "LS":
            d, _, names = rest.partition(" ")
            if d:
                result.listings[d] = names.split()
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
         memory: int = 512, echo: bool = False,
         interact: Sequence[Tuple[ConsolePattern, Union[bytes, str]]] = (),
         kill_when: Optional[Callable[[bytes], bool]] = None
         ) -> BootResult:
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
    interact:   ``[(pattern, text), ...]``: type on the serial console.  Each
                time the console output (everything so far, \\r included)
                shows the next PATTERN after the place where the previous
                one matched, TEXT is written to QEMU's stdin, which the
                ``-chardev stdio`` hands to the guest's ttyS0.  End lines
                with ``\\r``, as a serial terminal's Enter does.  What fired
                is in ``result.interactions``.  A pattern is bytes, str or a
                compiled bytes regex; TEXT is bytes or str (UTF-8).
    kill_when:  a power cut: called with the last 4 KiB of console output
                after each chunk; when it returns true QEMU is killed at once
                (SIGKILL: what the guest had not written is lost, what QEMU
                wrote to the image files stays) and ``result.killed`` is set.
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

    steps = [(_as_pattern(p), t.encode() if isinstance(t, str) else bytes(t))
             for p, t in interact]
    console = bytearray()        # everything so far, for the interactions
    search_from = 0
    chunks: List[bytes] = []
    err_chunks: List[bytes] = []
    start = time.monotonic()
    deadline = start + timeout
    seen_done = False
    proc = subprocess.Popen(cmd,
                            stdin=subprocess.PIPE if steps else subprocess.DEVNULL,
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
                    if len(result.interactions) < len(steps):
                        search_from = _interact(proc, steps, console, data,
                                                search_from, result, start)
                    if kill_when is not None and not result.killed:
                        if kill_when((tail + data)[-4096:]):
                            result.killed = True
                            _kill(proc)
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
    if proc.stdin:
        try:
            proc.stdin.close()
        except OSError:
            pass
    proc.stdout.close()
    proc.stderr.close()
    result.raw = b"".join(chunks).decode("utf-8", "replace").replace("\r", "")
    result.stderr = b"".join(err_chunks).decode("utf-8", "replace")
    return parse_console(result.raw, result)


def _as_pattern(p: ConsolePattern):
    if isinstance(p, str):
        return p.encode()
    if isinstance(p, (bytes, bytearray)):
        if not p:
            raise ValueError("empty interact pattern")
        return bytes(p)
    if isinstance(p, re.Pattern) and isinstance(p.pattern, bytes):
        return p
    raise TypeError(f"interact pattern must be bytes, str or a bytes regex: {p!r}")


def _interact(proc, steps, console: bytearray, data: bytes, search_from: int,
              result: BootResult, start: float) -> int:
    """Append DATA to CONSOLE; send the text of every next step whose pattern
    now shows after SEARCH_FROM.  Returns the new SEARCH_FROM."""
    old_len = len(console)
    console += data
    while len(result.interactions) < len(steps):
        pat, text = steps[len(result.interactions)]
        if isinstance(pat, bytes):
            # Only the new data, and a pattern's length before it, can hold a new match.
            i = console.find(pat, max(search_from, old_len - len(pat) + 1))
            end = i + len(pat)
        else:
            m = pat.search(console, search_from)
            i, end = (m.start(), m.end()) if m else (-1, -1)
        if i < 0:
            break
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(proc.stdin.fileno(), view):]
        except OSError:          # QEMU is gone
            break
        search_from = old_len = end
        result.interactions.append(Interaction(
            pat, text, round(time.monotonic() - start, 3), end))
    return search_from


def _kill(proc: subprocess.Popen) -> None:
    """Kill QEMU (its own process group, started by us)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- swtpm -------------------------------------------------------------------

SWTPM = os.environ.get("SWTPM", "swtpm")
#: TPM2_Shutdown(TPM_SU_CLEAR): tag NO_SESSIONS, size 12, TPM_CC_Shutdown.
_TPM2_SHUTDOWN_CLEAR = bytes.fromhex("80010000000c000001450000")


class Swtpm:
    """A software TPM 2.0 (swtpm) whose state lives in STATE_DIR.

    Two modes; use either as a context manager (``with Swtpm(d) as tpm:``)
    or call start()/stop():

    * ``Swtpm(state_dir)``: for QEMU.  ``swtpm socket --tpm2 --ctrl
      type=unixio,path=SOCK``; pass ``tpm.qemu_args`` to :func:`boot`'s
      extra_args (a TIS TPM, ``/dev/tpm0`` and ``/dev/tpmrm0`` in the
      guest, also with -kernel).  No ``--flags startup-clear``: QEMU resets
      the TPM (CMD_INIT) at start and SeaBIOS sends TPM2_Startup and measures
      into PCRs 0-7 (1: SMBIOS tables, so type 11 credentials change it;
      2: option ROMs incl. linuxboot; 4: "Calling INT 19h"; 0, 3, 5-7: the
      separator only; the kernel and initrd are not measured).  swtpm exits
      by itself when QEMU does.
    * ``Swtpm(state_dir, tcp=True)`` (or :func:`swtpm_tcp`): for the host's
      tools (enrolment, PCR extends).  ``--server type=tcp,port=P --ctrl
      type=tcp,port=P+1 --flags not-need-init,startup-clear`` on free ports
      of 127.0.0.1; ``tpm.tcti`` is ``swtpm:host=127.0.0.1,port=P`` (for
      TPM2TOOLS_TCTI, ``tpm.env`` has it) and stop() sends TPM2_Shutdown
      first, so the next start is an orderly one.

    A state dir is used by one swtpm at a time (swtpm 0.7 does not check:
    two would overwrite each other's state), enforced with a lock file in
    it; start() raises RuntimeError when it is taken.  Waits (up to
    ``timeout`` s) until swtpm accepts connections, never a fixed time.
    swtpm's log and stderr are appended to STATE_DIR/swtpm.log (or ``log``);
    log_level 20 (the default) dumps every TPM command, ~35 KB per boot.
    """

    def __init__(self, state_dir: str, tcp: bool = False,
                 log: Optional[str] = None, timeout: float = 10.0,
                 log_level: int = 20):
        self.state_dir = os.path.abspath(state_dir)
        self.tcp = tcp
        self.log = log or os.path.join(self.state_dir, "swtpm.log")
        self.timeout = timeout
        self.log_level = log_level
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.sock: Optional[str] = None
        self._lock = None
        self._tmpdir = None

    # -- what the users want -----------------------------------------------
    @property
    def qemu_args(self) -> List[str]:
        """QEMU arguments attaching this TPM (socket mode, started)."""
        if self.tcp or not self.sock:
            raise RuntimeError("qemu_args: start a socket-mode Swtpm first")
        return ["-chardev", f"socket,id=chrtpm,path={self.sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                "-device", "tpm-tis,tpmdev=tpm0"]

    @property
    def tcti(self) -> str:
        """The TSS2 TCTI string (TCP mode, started)."""
        if not self.tcp or self.port is None:
            raise RuntimeError("tcti: start a tcp=True Swtpm first")
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def env(self) -> Dict[str, str]:
        """os.environ plus TPM2TOOLS_TCTI/TSS2_TCTI for tpm2-tools (TCP mode)."""
        return dict(os.environ, TPM2TOOLS_TCTI=self.tcti, TSS2_TCTI=self.tcti)

    def __enter__(self) -> "Swtpm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- life cycle --------------------------------------------------------
    def start(self) -> "Swtpm":
        if self.proc:
            raise RuntimeError("swtpm already started")
        os.makedirs(self.state_dir, exist_ok=True)
        lock = open(os.path.join(self.state_dir, ".harness-swtpm.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"{self.state_dir} is in use by another swtpm")
        self._lock = lock
        try:
            for attempt in range(20):
                if self._spawn():
                    return self
            raise RuntimeError("swtpm: found no free pair of TCP ports")
        except BaseException:
            self.stop()
            raise

    def _spawn(self) -> bool:
        """Start swtpm and wait until it accepts connections.  False: the
        TCP ports were taken meanwhile (try others)."""
        cmd = [SWTPM, "socket", "--tpm2",
               "--tpmstate", f"dir={self.state_dir}",
               "--log", f"file={self.log},level={self.log_level}"]
        if self.tcp:
            self.port = _free_port_pair()
            cmd += ["--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear"]
            addrs = [(socket.AF_INET, ("127.0.0.1", self.port)),
                     (socket.AF_INET, ("127.0.0.1", self.port + 1))]
        else:
            self.sock = os.path.join(self.state_dir, "swtpm.sock")
            if len(self.sock.encode()) >= 100:      # sun_path is 108 bytes
                self._tmpdir = tempfile.mkdtemp(prefix="swtpm-")
                self.sock = os.path.join(self._tmpdir, "swtpm.sock")
            if os.path.exists(self.sock):
                os.unlink(self.sock)        # stale: we hold the lock
            cmd += ["--ctrl", f"type=unixio,path={self.sock}"]
            addrs = [(socket.AF_UNIX, self.sock)]
        self.cmd = cmd
        with open(self.log, "ab") as log:
            start_at = log.tell()
            log.write(f"# {' '.join(shlex.quote(c) for c in cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        pending = list(addrs)
        while pending:
            if self.proc.poll() is not None:
                self.proc = None
                with open(self.log, "rb") as log:
                    log.seek(start_at)
                    err = log.read().decode(errors="replace").strip()
                if self.tcp and "in use" in err:
                    return False        # the ports were taken meanwhile
                raise RuntimeError(f"swtpm exited at start ({self.log}): {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"swtpm did not listen within {self.timeout} s")
            family, addr = pending[0]
            with socket.socket(family, socket.SOCK_STREAM) as c:
                try:
                    c.connect(addr)
                    pending.pop(0)
                    continue
                except (FileNotFoundError, ConnectionRefusedError):
                    pass
            time.sleep(0.005)       # re-check the condition
        return True

    def stop(self) -> None:
        """Stop swtpm (if it still runs) and release the state dir."""
        if self.proc:
            if self.proc.poll() is None:
                if self.tcp and self.port:
                    _tpm2_shutdown(self.port)
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.sock and os.path.exists(self.sock):
            os.unlink(self.sock)
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._lock:
            self._lock.close()          # releases the flock
            self._lock = None

    @property
    def running(self) -> bool:
        return bool(self.proc) and self.proc.poll() is None


def swtpm_tcp(state_dir: str, **kw) -> Swtpm:
    """Swtpm on TCP for the host's tools: ``with swtpm_tcp(d) as t:
    subprocess.run(["tpm2_pcrread"], env=t.env)`` or use ``t.tcti``."""
    return Swtpm(state_dir, tcp=True, **kw)


def _free_port_pair() -> int:
    """A port P of 127.0.0.1 such that P and P+1 are both free right now."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p
    raise RuntimeError("no free pair of TCP ports")


def _tpm2_shutdown(port: int) -> None:
    """Send TPM2_Shutdown(CLEAR) to a TCP swtpm (best effort)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(_TPM2_SHUTDOWN_CLEAR)
            c.recv(64)
    except OSError:
        pass


# ---- systemd credentials -----------------------------------------------------

#: QEMU (FW_CFG_MAX_FILE_PATH) allows fw_cfg names of at most 55 bytes.
FW_CFG_MAX_NAME = 55
FW_CFG_CRED_PREFIX = "opt/io.systemd.credentials/"
_CRED_NAME = re.compile(r"^[A-Za-z0-9_.@:+-]+$")


def _check_cred_name(name: str) -> None:
    if not _CRED_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"bad credential name {name!r}")


def _qemu_opt(value: str) -> str:
    """Escape a value for QEMU's KEY=VALUE,... option syntax (',' -> ',,')."""
    return value.replace(",", ",,")


def smbios_credential(name: str, value: Union[str, bytes],
                      binary: Optional[bool] = None) -> List[str]:
    """QEMU args for a credential in an SMBIOS type 11 (OEM strings) entry.

    ``io.systemd.credential:NAME=VALUE``, or with binary (the default for
    bytes that are not UTF-8 or hold a NUL) the base64 form
    ``io.systemd.credential.binary:NAME=BASE64``.  The guest finds it in
    /sys/firmware/dmi/entries/11-*/raw (CONFIG_DMI_SYSFS), as systemd does.
    """
    _check_cred_name(name)
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if binary is None:
        binary = b"\0" in raw
        try:
            raw.decode()
        except UnicodeDecodeError:
            binary = True
    if binary:
        text = f"io.systemd.credential.binary:{name}=" + \
            base64.b64encode(raw).decode()
    else:
        if b"\0" in raw:
            raise ValueError("an SMBIOS string cannot hold NUL: use binary=True")
        text = f"io.systemd.credential:{name}=" + raw.decode()
    return ["-smbios", "type=11,value=" + _qemu_opt(text)]


def fwcfg_credential(name: str, value: Union[str, bytes], outdir: str,
                     inline: bool = False) -> List[str]:
    """QEMU args for a credential in fw_cfg: ``opt/io.systemd.credentials/NAME``.

    The value is written to OUTDIR/cred.NAME and passed as ``file=``; with
    inline=True (str values without NUL only) as ``string=`` instead.  NAME
    is at most 28 bytes (fw_cfg names are at most 55).  The guest reads
    /sys/firmware/qemu_fw_cfg/by_name/opt/io.systemd.credentials/NAME/raw
    (module qemu_fw_cfg).
    """
    _check_cred_name(name)
    key = FW_CFG_CRED_PREFIX + name
    if len(key.encode()) > FW_CFG_MAX_NAME:
        raise ValueError(f"fw_cfg name {key!r} longer than {FW_CFG_MAX_NAME} bytes")
    if inline:
        if not isinstance(value, str) or "\0" in value:
            raise ValueError("inline fw_cfg credentials must be str without NUL")
        return ["-fw_cfg", f"name={key},string={_qemu_opt(value)}"]
    os.makedirs(outdir, exist_ok=True)
    path = os.path.abspath(os.path.join(outdir, f"cred.{name}"))
    with open(path, "wb") as f:
        f.write(value.encode() if isinstance(value, str) else value)
    return ["-fw_cfg", f"name={key},file={_qemu_opt(path)}"]


# ---- stage-2 hook ------------------------------------------------------------

FW_CFG_HOOK = "opt/factory-test/stage2"
FW_CFG_HOOK_BIN = "opt/factory-test/bin"


def stage2_hook(script: str, outdir: str, name: str,
                binary: Optional[str] = None) -> List[str]:
    """QEMU args handing the stage-2 reporter a shell script to run (as root).

    SCRIPT is written to OUTDIR/NAME.hook.sh and passed in fw_cfg as
    ``opt/factory-test/stage2``.  The reporter (stage2-reporter.sh) runs it
    with ``sh`` after its ``@@LS`` lines (so everything it reports shows the
    state stage 1 left) and before ``@@PCR``, prints ``@@HOOK start``, each
    output line (stdout and stderr) as ``@@HOOK| <line>``, then ``@@HOOK
    rc=<status>``, and syncs: what the hook plants on /persist is what the
    next boot's stage 1 finds.  Parsed into ``result.hook_started``,
    ``result.hook_output`` and ``result.hook_rc``.  With BINARY, that file
    goes in as one more (last, read-only) virtio disk, since reading
    megabytes through fw_cfg takes minutes under TCG, and its size as
    ``opt/factory-test/bin-size``; the reporter copies it from the disk that
    starts with an ELF header and the hook finds it, executable, at
    ``$FI_BIN`` (/run/fi-bin).  Needs the qemu_fw_cfg module, which
    factory-init loads in stage 1.
    """
    os.makedirs(outdir, exist_ok=True)
    path = os.path.abspath(os.path.join(outdir, f"{name}.hook.sh"))
    with open(path, "w") as f:
        f.write(script)
    args = ["-fw_cfg", f"name={FW_CFG_HOOK},file={_qemu_opt(path)}"]
    if binary:
        img = os.path.abspath(os.path.join(outdir, f"{name}.bin.img"))
        with open(binary, "rb") as f:
            data = f.read()
        with open(img, "wb") as f:
            f.write(data + b"\0" * (-len(data) % 512))
        args += ["-fw_cfg", f"name={FW_CFG_HOOK_BIN}-size,string={len(data)}",
                 "-drive", f"file={_qemu_opt(img)},format=raw,if=none,id=hookbin,readonly=on",
                 "-device", "virtio-blk-pci,drive=hookbin"]
    return args


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
    ap.add_argument("--interact", nargs=2, action="append", default=[],
                    metavar=("PATTERN", "TEXT"),
                    help="when PATTERN shows on the console, type TEXT "
                    "(Python escapes: 'secret\\r'; repeatable, in order)")
    ap.add_argument("--swtpm", metavar="STATE_DIR",
                    help="attach a swtpm TPM 2.0 with its state in STATE_DIR")
    ap.add_argument("extra", nargs="*", help="extra QEMU arguments (after --)")
    a = ap.parse_args(argv)
    unescape = lambda t: t.encode().decode("unicode_escape").encode("latin-1")  # noqa: E731
    interact = [(unescape(p), unescape(t)) for p, t in a.interact]
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
    tpm = Swtpm(a.swtpm).start() if a.swtpm else None
    try:
        r = boot(a.kernel, a.initrd, a.append, disks, a.outdir, a.name,
                 timeout=a.timeout, icount=a.icount,
                 extra_args=list(a.extra) + (tpm.qemu_args if tpm else []),
                 echo=a.echo, interact=interact)
    finally:
        if tpm:
            tpm.stop()
    print(json.dumps({"name": r.name, "done": r.done, "timed_out": r.timed_out,
                      "exit_status": r.exit_status, "stage2": r.stage2,
                      "uptime": r.uptime, "wall_time": round(r.wall_time, 3),
                      "marker_found": r.marker_found,
                      "marker_written": r.marker_written,
                      "interactions": len(r.interactions),
                      "log": r.log_path}))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
