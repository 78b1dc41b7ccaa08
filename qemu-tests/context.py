"""context.py - what the QEMU scenarios share.

The per-run :class:`Context` handed to every scenario, :class:`Abort`, the registry
(``SCENARIOS``, filled by the ``@scenario("name")`` decorator in registration order), and the
constants and helpers that more than one group of scenarios (scenarios_*.py) uses.  A helper
used by one group only lives in that group's module; when a second group needs it, it moves
here.  bench.py and demo.py use Context, fi_initrd and the constants as well.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.dont_write_bytecode = True   # keep qemu-tests/ free of __pycache__
import harness  # noqa: E402
from harness import Disk  # noqa: E402

MKINITRD = os.path.join(TOP, "dracut-like", "mkinitrd")
#: Fetches and unpacks the kernels (and trees) of the Debian suites.
STACK_SH = os.path.join(HERE, "stack.sh")
#: The suites whose cloud kernel a run can boot (Context(kernel=...), run.py --kernel):
#: bookworm 6.1 (the host's; the default), trixie 6.12 LTS, forky 7.2.
KERNEL_SUITES = ("bookworm", "trixie", "forky")
#: Kernel command line used by ctx.boot unless a scenario passes its own.
DEFAULT_APPEND = "console=ttyS0 panic=-1 quiet"

SCENARIOS = {}


def scenario(name):
    """Register the decorated function as scenario NAME.

    Scenarios run in registration order: file order within a module, the modules in the
    order run.py imports them."""
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

    Attributes: build (output dir), icount (bool), echo (bool), suite (the Debian suite whose
    cloud kernel the guests boot: one of KERNEL_SUITES; the ``kernel`` argument).
    Expensive pieces (kernel, disks, floor initrd) are built on first use
    and shared by all scenarios of the run.

    Initrds carry the kernel's modules, so a build directory belongs to one suite: the first
    use of the kernel records it in BUILD/kernel, and a Context for another suite refuses that
    directory (use one build directory per kernel, as run.py's default and the Makefile do).
    """

    def __init__(self, build, icount=False, echo=False, kernel="bookworm"):
        if kernel not in KERNEL_SUITES:
            raise ValueError(f"kernel must be one of {', '.join(KERNEL_SUITES)}, not {kernel!r}")
        self.build = os.path.abspath(build)
        self.icount = icount
        self.echo = echo
        self.suite = kernel
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
        """Unpacked Debian cloud kernel of this run's suite (qemu-tests/stack.sh kernel SUITE)."""
        if self._kernel_dir is None:
            d = _run_out([STACK_SH, "-q", "kernel", self.suite])
            self._claim_build_dir(d)
            self._kernel_dir = d
        return self._kernel_dir

    def _claim_build_dir(self, kdir):
        """Record this run's kernel in BUILD/kernel ("SUITE KVER"); refuse a build directory
        that holds another suite's initrds.  A new kernel version of the same suite is fine
        (initrds are rebuilt by every run; floor.sh keys its cache by kernel version)."""
        with open(os.path.join(kdir, "kver")) as f:
            kver = f.read().strip()
        os.makedirs(self.build, exist_ok=True)
        stamp = os.path.join(self.build, "kernel")
        if os.path.exists(stamp):
            with open(stamp) as f:
                had = f.read().split()
            if had and had[0] != self.suite:
                raise RuntimeError(f"{self.build} holds initrds for the {had[0]} kernel "
                                   f"({' '.join(had[1:])}); use another build directory "
                                   f"for {self.suite} (run.py -b DIR)")
        with open(stamp + ".tmp", "w") as f:
            f.write(f"{self.suite} {kver}\n")
        os.replace(stamp + ".tmp", stamp)

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
            self.kernel_dir   # claims the build dir; floor.sh asks kernel.sh for the same suite
            env = dict(os.environ, FACTORY_KERNEL_SUITE=self.suite)
            self._floor = _run_out([os.path.join(HERE, "floor.sh"), self.build], env=env)
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


def _run_out(cmd, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                           f"{r.stderr.strip()}")
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""


# ===========================================================================
# The factory-init scenarios: the static binary as /init of a dracut-like initrd.

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
METRICS = "/run/factory-init/metrics/factory-init.prom"
NETWORK_FILE = "/run/systemd/network/10-factory-init-static.network"


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


def promtool():
    """Debian's promtool (package prometheus): the host's, else unpacked once into the cache
    (apt-get download and dpkg-deb -x: installing the package would start a Prometheus)."""
    import shutil
    found = shutil.which("promtool")
    if found:
        return found
    cache = os.environ.get("FACTORY_INIT_CACHE") or os.path.expanduser("~/.cache/factory-init")
    exe = os.path.join(cache, "promtool", "usr", "bin", "promtool")
    if not os.path.exists(exe):
        os.makedirs(cache, exist_ok=True)
        tmp = subprocess.run(["mktemp", "-d", os.path.join(cache, ".promtool.XXXXXX")],
                             check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["apt-get", "download", "-q", "prometheus"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deb = [f for f in os.listdir(tmp) if f.endswith(".deb")][0]
        subprocess.run(["dpkg-deb", "-x", os.path.join(tmp, deb), os.path.join(tmp, "x")],
                       check=True)
        subprocess.run(["rm", "-rf", os.path.join(cache, "promtool")], check=True)
        os.rename(os.path.join(tmp, "x"), os.path.join(cache, "promtool"))
        subprocess.run(["rm", "-rf", tmp], check=True)
    return exe


def check_metrics(ctx, r):
    """The metrics file the guest wrote passes `promtool check metrics` (format and lint);
    returns its samples as {"name{labels}": value}."""
    ctx.require(METRICS in r.files, f"{METRICS} not reported")
    text = r.files[METRICS] + "\n"
    p = subprocess.run([promtool(), "check", "metrics"], input=text, text=True,
                       capture_output=True)
    ctx.check(p.returncode == 0, f"promtool check metrics: {p.stdout}{p.stderr}")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            ctx.check(key not in samples, f"sample twice: {key}")
            samples[key] = float(value)
    return samples


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


def check_no_disk_fallback(ctx, st, r):
    """What every stage 2 must see after "no data disk": the factory store, nothing mounted."""
    ctx.check(st["outcome"] == "fallback", f"outcome {st['outcome']}")
    ctx.check(st["reason"] and "no data disk" in st["reason"], f"reason {st['reason']!r}")
    ctx.check(st["store"] == "factory", f"store {st['store']}")
    ctx.check(r.mount_at("/persist") is None, "/persist is mounted")
    ctx.check(r.mount_at("/nix") is None, "/nix is a mount of its own")


def same_disk(base, image):
    """True when IMAGE (a qcow2 overlay) reads exactly as BASE (raw)."""
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2",
                           base, image]).returncode == 0


# ===========================================================================
# Unlocking: TPM2 enrolment on the host, the PCRs the VM measured, unlock attempts.

FACTORY_INIT_DEV = os.path.join(TOP, "build", "factory-init")   # links the swtpm TCTI


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


# ===========================================================================
# The store (bind mode on plain Btrfs data disks), and the reporter's output.

#: Plain (unencrypted) Btrfs data disks are refused under vm.persist=auto unless allowed; the store
#: scenarios use them (fresh_btrfs) because the host cannot fill a LUKS image's Btrfs in place.
PLAIN = "vm.persist.encrypted=no"
STORE_APPEND = f"{FI_APPEND} {PLAIN} vm.store=bind"


def store_images(ctx):
    d = ctx.disks   # builds factory-store.img and factory-store2.img too
    return ctx.path("factory-store.img"), ctx.path("factory-store2.img")


def fresh_btrfs(ctx, name, size="256M", rootdir=None):
    img = ctx.path(f"{name}.img")
    subprocess.run(["rm", "-f", img], check=True)
    subprocess.run(["truncate", "-s", size, img], check=True)
    cmd = ["mkfs.btrfs", "-q", "-f", "-L", "persist"]
    if rootdir:
        cmd += ["--rootdir", rootdir]
    subprocess.run(cmd + [img], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return img


def reporter_lines(r, tag):
    """The reporter's ``@@TAG ...`` lines (what follows the tag, split on white space)."""
    out = []
    for line in r.raw.splitlines():
        i = line.find("@@" + tag + " ")
        if i >= 0:
            out.append(line[i + len(tag) + 3:].split())
    return out


def reporter_stats(r):
    """{path: (octal mode, uid, gid)} from the reporter's ``@@STAT`` lines."""
    return {f[-1]: tuple(f[:-1]) for f in reporter_lines(r, "STAT") if len(f) == 4}


def reporter_sha256(r):
    """{path: hex digest} from the reporter's ``@@SHA256`` lines."""
    return {f[1]: f[0] for f in reporter_lines(r, "SHA256") if len(f) == 2}
