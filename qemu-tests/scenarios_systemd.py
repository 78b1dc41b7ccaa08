"""scenarios_systemd.py - a systemd stage 2: factory-init switch_root's into Debian forky.

The factory root is forky-root.img (qemu-tests/mkforkyroot.sh: the cached forky tree, systemd
262 as /sbin/init, read-only root with a tmpfs /var, no gettys) instead of factory.img's
busybox reporter; its factory-test-reporter.service waits for `systemctl is-system-running
--wait` and prints the @@ lines harness.parse_console understands plus @@SYSTEMD (state, failed
units, timestamps), @@JOURNAL (factory-init's records in the journal) and, with
factory.test.cryptsetup= on the command line, @@CRYPTSETUP (systemd-cryptsetup opening a disk
with a TPM2 token factory-init enrolled).

systemd-stage2-fallback, systemd-stage2-network
(vm.network_static read by systemd-networkd; a malformed value leaves DHCP),
systemd-stage2-cryptsetup-ours (PCR 7: opens; the default PCR 7+15: locked out),
nix-guest-overlay and nix-guest-bind (forky-nix-root.img: forky's Nix 2.34 in stage 2 on the /nix
factory-init made, with a store made by real Nix: verify, build, gc, optimise; the overlay with
the NixOS module's local-overlay-store URL and a power cut during a build; then, in both, a boot
on a newer factory image, forky-nix-root-refresh.img; they also do what systemd-stage2-overlay
and systemd-stage2-bind did).  Registered after the other modules.
"""

import hashlib
import json
import os
import subprocess

import harness
from harness import Disk
from context import (FACTORY_INIT, FACTORY_INIT_DEV, FI_APPEND, HERE, RUN_CONFIG, STATUS, check_fi_logged,
                     check_metrics, check_no_disk_fallback, check_no_secret, enroll_ours, fi_initrd, fresh_dir,
                     luks_copy, pcrs_of, read_key, scenario)

MKFORKYROOT = os.path.join(HERE, "mkforkyroot.sh")
#: Guest memory (MiB) for a systemd stage 2.
MEMORY = 768
#: Wall-clock limit of one boot: systemd under TCG on a shared host.
TIMEOUT = 600
#: The firmware (SeaBIOS) measures one separator event into PCR 7: SHA-256 of 0xffffffff
#: (scenarios_tpm2.SEPARATOR_DIGEST); PCR 7 of the VM is therefore known in advance.
SEPARATOR_DIGEST = "ad95131bc0b799c0b1af477fb14fcf26a6a9f76079e48bf090acb7e8367bfd0e"
VM_PCR7 = hashlib.sha256(bytes(32) + bytes.fromhex(SEPARATOR_DIGEST)).hexdigest()
#: A malformed vm.* parameter: factory-init warns and ignores it.
BAD_HOSTNAME = "vm.hostname=bad_host!"


def forky_root(ctx, nix_store=None):
    """BUILD/forky-root.img (mkforkyroot.sh, cached by its stamp), built once per run; with
    nix_store "base", BUILD/forky-nix-root.img, whose /nix is mknixstore.sh's real store, with
    "refresh" BUILD/forky-nix-root-refresh.img (its newer image)."""
    attr = f"_forky_nix_root_{nix_store}" if nix_store else "_forky_root"
    img = getattr(ctx, attr, None)
    if img is None:
        opt = {None: [], "base": ["--nix-store"], "refresh": ["--nix-refresh"]}[nix_store]
        r = subprocess.run([MKFORKYROOT, "--kernel", ctx.kernel_dir,
                            "--factory-init", FACTORY_INIT] + opt + [ctx.build],
                           stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"mkforkyroot.sh failed: {r.stderr.strip()}")
        img = r.stdout.strip().splitlines()[-1]
        setattr(ctx, attr, img)
    return img


class Systemd:
    """What the systemd reporter printed: state, failed units, unit states, journal."""

    def __init__(self, r):
        self.state = None
        self.failed = []
        self.units = {}
        self.times = {}
        self.analyze = ""
        self.journal = []            # (priority int or None, dict)
        self.cryptsetup = None       # {"rc": ..., "mapper": ..., ...}
        self.cryptsetup_out = []
        for line in r.raw.splitlines():
            i = line.find("@@")
            if i < 0:
                continue
            tag, _, rest = line[i + 2:].partition(" ")
            if tag == "SYSTEMD":
                if rest.startswith("state="):
                    self.state = rest[6:].strip()
                elif rest.startswith("failed="):
                    self.failed = rest[7:].split()
                elif rest.startswith("analyze="):
                    self.analyze = rest[8:].strip()
                elif rest.startswith("unit "):
                    f = rest.split()
                    self.units[f[1]] = tuple(f[2:])
                elif rest.startswith("userspace_us="):
                    for kv in rest.split():
                        k, _, v = kv.partition("=")
                        self.times[k] = int(v) if v.isdigit() else None
            elif tag == "JOURNAL":
                _, _, js = rest.partition(" ")
                try:
                    j = json.loads(js)
                except ValueError:
                    continue
                p = j.get("PRIORITY")
                self.journal.append((int(p) if p and p.isdigit() else None, j))
            elif tag == "CRYPTSETUP|":
                self.cryptsetup_out.append(rest)
            elif tag == "CRYPTSETUP":
                self.cryptsetup = dict(kv.partition("=")[::2] for kv in rest.split())

    def fi_records(self):
        """(priority, message) of the journal entries factory-init wrote."""
        return [(p, j.get("MESSAGE")) for p, j in self.journal
                if j.get("SYSLOG_IDENTIFIER") == "factory-init"]

    def userspace_s(self):
        """Seconds from systemd's start to the end of the boot (monotonic)."""
        u, f = self.times.get("userspace_us"), self.times.get("finish_us")
        return round((f - u) / 1e6, 2) if u and f else None


def boot_systemd(ctx, name, disks, append, **kw):
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("memory", MEMORY)
    r = ctx.boot(name, fi_initrd(ctx, "fi-plain"), disks, append, **kw)
    sd = Systemd(r)
    ctx.diag(f"{name}: wall {r.wall_time:.1f} s, reporter at uptime {r.uptime} s, systemd "
             f"start {sd.times.get('userspace_us', 0) / 1e6 if sd.times.get('userspace_us') else '?'}"
             f" s -> boot finished after {sd.userspace_s()} s; {sd.analyze}")
    return r, sd


def check_stage2_basics(ctx, r, sd):
    """systemd ran to the end with nothing failed; the root stayed read-only; our files."""
    ctx.require(r.stage2, f"the systemd reporter never started: {r.tail()}")
    ctx.check(r.done, "@@DONE not seen")
    ctx.check(not r.timed_out, "QEMU timed out")
    ctx.check(sd.state == "running", f"systemd state {sd.state!r}, failed units {sd.failed}")
    ctx.check(not sd.failed, f"failed units: {sd.failed}")
    root = r.mount_at("/")
    ctx.check(root is not None and root.device == "/dev/vda" and root.fstype == "ext4"
              and root.readonly, f"/ is not /dev/vda ext4 ro: {root}")
    var = r.mount_at("/var")
    ctx.check(var is not None and var.fstype == "tmpfs", f"/var is not a tmpfs: {var}")
    ctx.require(STATUS in r.files and RUN_CONFIG in r.files,
                f"status/config not in stage 2: files {list(r.files)}, nofiles {r.nofiles}")
    st = r.json(STATUS)
    cfg = r.json(RUN_CONFIG)
    ctx.check(isinstance(cfg, dict), f"{RUN_CONFIG} is not an object: {cfg!r}")
    return st, cfg


def check_journal(ctx, sd, want):
    """WANT: [(priority, text)]: factory-init's journal records hold each TEXT at PRIORITY
    (None: any); the diagnostics show the priority each TEXT had."""
    recs = sd.fi_records()
    ctx.check(recs, f"no journal entry with SYSLOG_IDENTIFIER=factory-init "
                    f"({len(sd.journal)} entries mention factory-init)")
    for prio, text in want:
        ctx.check(any((prio is None or p == prio) and m and text in m for p, m in recs),
                  f"no factory-init journal record at priority {prio} containing {text!r}: "
                  f"{recs[:12]}")
    if recs:
        kinds = {}
        for p, _ in recs:
            kinds[p] = kinds.get(p, 0) + 1
        j = next(j for p, j in sd.journal if j.get("SYSLOG_IDENTIFIER") == "factory-init")
        ctx.diag(f"factory-init in the journal: {len(recs)} records, by priority {kinds}; "
                 f"e.g. {json.dumps(j)}")
        for _, text in want:
            ctx.diag("  " + "; ".join(f"prio {p}: {m}" for p, m in recs if m and text in m))


@scenario("systemd-stage2-fallback")
def systemd_stage2_fallback(ctx):
    """No data disk: factory-init falls back to the factory store, systemd still reaches
    running (nix-daemon is skipped on the read-only store, not failed); the reason is in the
    status and in the journal."""
    r, sd = boot_systemd(ctx, "systemd-stage2-fallback", [Disk(forky_root(ctx))],
                         f"{FI_APPEND} vm.persist.timeout=2")
    st, cfg = check_stage2_basics(ctx, r, sd)
    check_no_disk_fallback(ctx, st, r)
    ctx.check(r.marker_write_failed, "the factory /nix was writable")
    ctx.check(sd.units.get("nix-daemon.socket", ("?",))[0] == "inactive",
              f"nix-daemon.socket on a read-only store: {sd.units.get('nix-daemon.socket')}")
    check_journal(ctx, sd, [(None, "booting on the factory store: no data disk")])


def token_of(img):
    out = subprocess.run(["cryptsetup", "token", "export", "--token-id", "0", img], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def cryptsetup_boot(ctx, name, img, state):
    """factory-init opens /persist (luks.img, key on the command line) and hands over to
    systemd; factory-test-cryptsetup.service runs systemd-cryptsetup on IMG (vdc) with the VM's
    TPM on STATE."""
    key = read_key(ctx)
    disks = [Disk(forky_root(ctx)), Disk(ctx.disks.luks), Disk(img)]
    with harness.Swtpm(state) as tpm:
        r, sd = boot_systemd(ctx, name, disks,
                             f"{FI_APPEND} vm.luks.key={key} vm.persist=/dev/vdb "
                             "factory.test.cryptsetup=/dev/vdc", extra_args=tpm.qemu_args)
    check_stage2_basics(ctx, r, sd)
    ctx.require(r.mount_at("/persist") is not None, "/persist not mounted")
    pcrs = pcrs_of(r)
    ctx.check(pcrs.get(7) == VM_PCR7, f"PCR 7 of the VM {pcrs.get(7)}, expected {VM_PCR7}")
    ctx.check(pcrs.get(15) not in (None, "0" * 64), f"PCR 15 not extended: {pcrs.get(15)}")
    ctx.require(sd.cryptsetup is not None, f"no @@CRYPTSETUP line: {r.tail()}")
    ctx.diag(f"{name}: {sd.cryptsetup}; " + " | ".join(sd.cryptsetup_out[-6:]))
    return r, sd


@scenario("systemd-stage2-cryptsetup-ours")
def systemd_stage2_cryptsetup_ours(ctx):
    """forky's systemd-cryptsetup, in stage 2 inside the VM, opens a disk factory-init
    enroll-tpm2 sealed to PCR 7 (rc 0, /dev/mapper/ours); with enroll-tpm2's default binding
    (PCR 7 and PCR 15 at zero) it cannot: factory-init extended PCR 15 before stage 2."""
    # PCR 7 bound to the value the VM will measure (a plain --pcrs=7 would take the host
    # swtpm's current value, all zeros on a fresh state: a mismatch for another reason).
    state = fresh_dir(ctx.path("systemd-cs-pcr7.tpm"))
    img = luks_copy(ctx, "systemd-cs-pcr7")
    subprocess.run(["cryptsetup", "config", "--label", "ours", img], check=True)
    enroll_ours(ctx, img, state, f"7:sha256={VM_PCR7}")
    tok = token_of(img)
    ctx.check(tok.get("tpm2-pcrs") == [7], f"token {tok}")
    r, sd = cryptsetup_boot(ctx, "systemd-stage2-cryptsetup-pcr7", img, state)
    ctx.check(sd.cryptsetup.get("rc") == "0", f"systemd-cryptsetup attach failed: "
                                             f"{sd.cryptsetup} {sd.cryptsetup_out}")
    ctx.check(sd.cryptsetup.get("mapper") == "yes", "/dev/mapper/ours did not appear")
    ctx.check(sd.cryptsetup.get("detach") == "0", f"detach: {sd.cryptsetup}")

    # The default --pcrs: PCR 7 at its current value (the host swtpm replays the firmware's
    # separator first, so that is the VM's value too) and PCR 15 at zero.
    state2 = fresh_dir(ctx.path("systemd-cs-lock.tpm"))
    img2 = luks_copy(ctx, "systemd-cs-lock")
    subprocess.run(["cryptsetup", "config", "--label", "ours", img2], check=True)
    with harness.swtpm_tcp(state2) as tpm:
        subprocess.run(["tpm2_pcrextend", f"7:sha256={SEPARATOR_DIGEST}"], env=tpm.env,
                       check=True)
        e = subprocess.run([FACTORY_INIT_DEV, "enroll-tpm2", img2, f"--tpm2-device={tpm.tcti}",
                            f"--unlock-key-file={ctx.disks.key}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.diag(e.stdout.strip())
    ctx.require(e.returncode == 0, f"enroll-tpm2 (default PCRs) failed: {e.stdout}")
    tok = token_of(img2)
    ctx.check(tok.get("tpm2-pcrs") == [7, 15], f"default token {tok}")
    r, sd = cryptsetup_boot(ctx, "systemd-stage2-cryptsetup-lock", img2, state2)
    ctx.check(sd.cryptsetup.get("rc") not in (None, "0"),
              f"systemd-cryptsetup opened a PCR 15-locked token in stage 2: {sd.cryptsetup}")
    ctx.check(sd.cryptsetup.get("mapper") == "no", "/dev/mapper/ours exists")


#: User-mode networking: QEMU's slirp serves 10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3, and
#: DHCP hands out 10.0.2.15 first.  net.ifnames=0 names the NIC eth0.
NET_ARGS = ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
NET_APPEND = "net.ifnames=0 systemd.wants=systemd-networkd.service"


def net_lines(r, kind):
    return [line.split(f"@@NET {kind} ", 1)[1].strip() for line in r.raw.splitlines()
            if f"@@NET {kind} " in line]


@scenario("systemd-stage2-network")
def systemd_stage2_network(ctx):
    """vm.network_static=10.0.2.50/24,10.0.2.2,10.0.2.3,eth0 (QEMU's user network): systemd-
    networkd in stage 2 gives eth0 that address, the default route and the DNS server, and no
    DHCP lease; the metrics pass promtool.  Then a malformed value (a gateway outside the subnet):
    named in a warning, no file written, and the factory base's DHCP fallback gets 10.0.2.15."""
    disks = [Disk(forky_root(ctx))]
    r, sd = boot_systemd(ctx, "systemd-stage2-network", disks,
                         f"{FI_APPEND} vm.persist.timeout=1 {NET_APPEND} "
                         "vm.network_static=10.0.2.50/24,10.0.2.2,10.0.2.3,eth0",
                         extra_args=NET_ARGS)
    st, cfg = check_stage2_basics(ctx, r, sd)
    ctx.check(cfg.get("network_static") == "10.0.2.50/24,10.0.2.2,10.0.2.3,eth0", f"config {cfg}")
    ctx.check((st.get("network_static") or {}).get("written") is True, f"status {st.get('network_static')}")
    waits = [line for line in r.raw.splitlines() if "@@NET wait=" in line]
    ctx.check(waits and waits[0].strip().endswith("wait=0"), f"networkd never came online: {waits}")
    addrs = net_lines(r, "addr")
    routes = net_lines(r, "route")
    dns = net_lines(r, "dns")
    ctx.diag(f"addr {addrs}; route {routes}; dns {dns}")
    eth0 = [a for a in addrs if a.split()[1] == "eth0" and " inet " in a]
    ctx.check(len(eth0) == 1 and "inet 10.0.2.50/24 " in eth0[0], f"eth0 IPv4: {eth0}")
    ctx.check(any(x.startswith("default via 10.0.2.2 dev eth0") for x in routes), f"routes {routes}")
    ctx.check(any("10.0.2.3" in x for x in dns), f"DNS: {dns}")
    check_journal(ctx, sd, [(6, "static network for stage 2: 10.0.2.50/24,10.0.2.2,10.0.2.3,eth0")])
    m = check_metrics(ctx, r)
    ctx.check(m.get("factory_init_network_static") == 1, "metric factory_init_network_static")
    # `factory-init status` in stage 2: outcome first, the reason and the network, exit 1.
    view = [line.split("@@STATUSVIEW| ", 1)[1].rstrip() for line in r.raw.splitlines()
            if "@@STATUSVIEW| " in line]
    rcs = [line.strip().rsplit("rc=", 1)[1] for line in r.raw.splitlines()
           if "@@STATUSVIEW rc=" in line]
    ctx.check(rcs == ["1"], f"factory-init status exit codes {rcs} (a fallback is 1)")
    ctx.check(view and view[0].startswith("outcome") and "fallback" in view[0],
              f"status view: {view[:3]}")
    for want in ("reason code      no-disk",
                 "static network   10.0.2.50/24 via 10.0.2.2, DNS 10.0.2.3, on eth0"):
        ctx.check(want in view, f"status view lacks {want!r}: {view}")

    r, sd = boot_systemd(ctx, "systemd-stage2-network-bad", disks,
                         f"{FI_APPEND} vm.persist.timeout=1 {NET_APPEND} "
                         "vm.network_static=10.0.2.50/24,10.0.3.1,10.0.2.3,eth0",
                         extra_args=NET_ARGS)
    st, cfg = check_stage2_basics(ctx, r, sd)
    ctx.check("network_static" not in cfg and st.get("network_static") is None,
              f"a malformed value reached the config: {cfg}")
    check_journal(ctx, sd, [(4, "vm.network_static=")])
    waits = [line for line in r.raw.splitlines() if "@@NET wait=" in line]
    ctx.check(waits and waits[0].strip().endswith("wait=0"), f"DHCP never came online: {waits}")
    addrs = net_lines(r, "addr")
    eth0 = [a for a in addrs if a.split()[1] == "eth0" and " inet " in a]
    ctx.check(len(eth0) == 1 and "inet 10.0.2.15/24 " in eth0[0], f"eth0 by DHCP: {eth0}")
    ctx.check(any(x.startswith("default via 10.0.2.2 dev eth0") for x in net_lines(r, "route")),
              f"routes {net_lines(r, 'route')}")


def nix_checks(ctx, r, name):
    """The @@NIX lines of nix-store-check.sh's checks in the guest: every one must PASS."""
    out = [ln[ln.index("@@NIX| ") + 7:] for ln in r.raw.splitlines() if "@@NIX| " in ln]
    rc = [ln.split("rc=")[1].strip() for ln in r.raw.splitlines() if "@@NIX rc=" in ln]
    ctx.require(rc, f"{name}: the Nix checks did not run: {r.tail()}")
    for ln in out:
        ctx.diag(f"{name}: {ln}")
    fails = [ln for ln in out if ln.startswith("FAIL")]
    ctx.check(rc == ["0"] and not fails, f"{name}: Nix checks rc {rc}: {fails or out[-5:]}")
    return [ln for ln in out if ln.startswith("PASS")]


def nix_disks(ctx, vdb, image="base"):
    return [Disk(forky_root(ctx, nix_store=image)), Disk(vdb, "qcow2", snapshot=False)]


def nix_boot(ctx, name, vdb, key, mode, phase, extra="", image="base"):
    """A boot of forky-nix-root.img (image "refresh": forky-nix-root-refresh.img) with
    vm.store=MODE whose stage 2 runs nix-store-check.sh's Nix checks of MODE for PHASE."""
    r, sd = boot_systemd(ctx, name, nix_disks(ctx, vdb, image),
                         f"{FI_APPEND} vm.luks.key={key} vm.store={mode} "
                         f"factory.test.nix={mode}:{phase} {extra}".strip())
    st, cfg = check_stage2_basics(ctx, r, sd)
    ctx.check(st["outcome"] == "persist" and st["store"] == mode,
              f"{name}: outcome {st['outcome']}, store {st['store']}: {st['reason']}")
    p = r.mount_at("/persist")
    ctx.check(p is not None and p.device == "/dev/mapper/persist" and p.fstype == "btrfs",
              f"{name}: /persist: {p}")
    ctx.check(sd.units.get("nix-daemon.socket", ("?",))[0] == "active",
              f"{name}: nix-daemon.socket: {sd.units.get('nix-daemon.socket')}")
    return r, sd, st, cfg, nix_checks(ctx, r, name)


def want_passed(ctx, name, passed, wants):
    for want in wants:
        ctx.check(any(want in p for p in passed), f"{name}: no PASS line with {want!r}")


def check_refreshed(ctx, name, st):
    fi = st.get("factory_image") or {}
    ctx.check(fi.get("refreshed") is True and fi.get("previous") and fi.get("id") != fi.get("previous"),
              f"{name}: factory_image {fi}")


@scenario("nix-guest-overlay")
def nix_guest_overlay(ctx):
    """vm.store=overlay with a factory /nix made by real Nix (mknixstore.sh), systemd 262 in
    stage 2: running, factory-init's records in the journal at their priorities (info, and the
    warning for a malformed vm.hostname, which stays out of the config). forky's Nix 2.34 with
    the NixOS module's local-overlay-store URL (and its registration script) finds the store
    valid (--verify --check-contents), builds into /persist/nix/upper only, gc keeps every
    factory path and the system profile, optimise runs. Boot 2: the power is cut during a build
    (its output half written on /persist). Boot 3, on a newer factory image (6 paths added, 6
    removed): the new paths are valid, the removed ones are not, the profile is the new system,
    the rooted build of boot 1 is kept, the half-written output is not valid, verify is clean."""
    key = read_key(ctx)
    vdb = harness.overlay(ctx.disks.luks, ctx.path("nix-guest-overlay.vdb.qcow2"))
    r, sd, st, cfg, passed = nix_boot(ctx, "nix-guest-overlay", vdb, key, "overlay", "first",
                                      BAD_HOSTNAME)
    ctx.check(st["unlock"] == "cmdline-key", f"unlock {st['unlock']}")
    ctx.check("hostname" not in cfg, f"the bad host name reached the config: {cfg}")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.fstype == "overlay", f"/nix is not an overlay: {n}")
    ctx.check(r.marker_written, "could not write under /nix")
    check_journal(ctx, sd, [(6, "unlocked /dev/vdb with cmdline-key"),
                            (4, 'vm.hostname="bad_host!"')])
    check_fi_logged(ctx, r, "unlocked /dev/vdb with cmdline-key")
    want_passed(ctx, "boot 1", passed, (
        "factory-init-register-store script: registered", "verify --check-contents: clean",
        "every path of the image is valid through the lower store", "two derivations build",
        "land in /persist/nix/upper/store only", "gc:", "optimise:",
        "after build, gc and optimise: clean"))
    check_no_secret(ctx, r, key)

    # A power cut during a Nix build on /persist: the builder has written part of its output.
    rc, _ = boot_systemd(ctx, "nix-guest-overlay-cut", nix_disks(ctx, vdb),
                         f"{FI_APPEND} vm.luks.key={key} vm.store=overlay "
                         "factory.test.nix=overlay:cut",
                         kill_when=lambda tail: b"@@NIXCUT building" in tail)
    ctx.require(rc.killed, f"the power cut did not happen during the build: {rc.tail()}")
    _, _, st3, _, passed3 = nix_boot(ctx, "nix-guest-overlay-refresh", vdb, key, "overlay",
                                     "refresh", image="refresh")
    check_refreshed(ctx, "boot 3", st3)
    want_passed(ctx, "boot 3", passed3, (
        "factory-init-register-store script: registered", "partial output",
        "the new image's 6 paths are valid", "none of the 6 paths the new image lacks is valid",
        "the rooted build of the old image's boot is kept", "after the refresh: clean"))


@scenario("nix-guest-bind")
def nix_guest_bind(ctx):
    """vm.store=bind with a factory /nix made by real Nix: factory-init copies it to
    /persist/nix and binds it (the factory /nix stays read-only at /nix/.ro-store); the copy
    shares inodes exactly as the factory store does (.links, every file type), the module's
    registration script runs, forky's Nix 2.34 finds it valid (its database dumps the image's
    registration byte for byte, verify is clean), builds, gc and optimise work on it. Boot 2, on
    a newer factory image: factory-init copies the 6 new paths, the registration script makes
    them valid; the 6 the new image lacks stay in the copy, valid, held by the copy's system
    profile (still the old system); the rooted build is kept; verify is clean."""
    key = read_key(ctx)
    vdb = harness.overlay(ctx.disks.luks, ctx.path("nix-guest-bind.vdb.qcow2"))
    r, sd, _, _, passed = nix_boot(ctx, "nix-guest-bind", vdb, key, "bind", "first")
    n = r.mount_at("/nix")
    ctx.check(n is not None and n.device == "/dev/mapper/persist" and n.fstype == "btrfs",
              f"/nix is not the Btrfs copy: {n}")
    ro = r.mount_at("/nix/.ro-store")
    ctx.check(ro is not None and ro.readonly, f"/nix/.ro-store: {ro}")
    ctx.check(r.marker_written, "could not write under /nix")
    check_journal(ctx, sd, [(6, "copied the factory store to /persist/nix")])
    want_passed(ctx, "bind", passed, (
        "factory-init-register-store script: registered", "verify --check-contents: clean",
        "shares inodes as the factory store does", "dumps the registration of the image",
        "two derivations build", "gc:", "optimise:", "after build, gc and optimise: clean"))
    check_no_secret(ctx, r, key)
    _, _, st2, _, passed2 = nix_boot(ctx, "nix-guest-bind-refresh", vdb, key, "bind", "refresh",
                                     image="refresh")
    check_refreshed(ctx, "boot 2", st2)
    want_passed(ctx, "boot 2", passed2, (
        "factory-init-register-store script: registered", "the new image's 6 paths are valid",
        "stay in the copy, valid, held by the copy's system profile",
        "the rooted build of the old image's boot is kept", "after the refresh: clean"))
