"""scenarios_boot.py - the busybox floor and factory-init's basic pipeline.

floor (the busybox baseline), then factory-init as /init of a dracut-like initrd: the LUKS2 key
on the command line, fallbacks (no data disk, wrong key, damaged header, blank disk), plain
Btrfs, the vm.* config, helper mode, the no-root halt, a reproducible initrd, a corrupt
config.json.  Registered in this order when run.py imports the module (the first group).
"""

import os
import subprocess

import harness
from harness import Disk
from context import (FACTORY_INIT, FI_APPEND, METRICS, NETWORK_FILE, PERSIST_CONFIG, PLAIN,
                     RUN_CONFIG, check_fi_logged, check_metrics, check_no_disk_fallback,
                     check_no_secret, fi_initrd, fi_modules, read_key, same_disk, scenario,
                     status_of)


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
                                            "/run/factory-init/plan.json",
                                            "/run/vm-config.json",
                                            "/persist/config.json", METRICS, NETWORK_FILE]),
              f"unexpected files: {r.files}, nofiles {r.nofiles}")
    ctx.check(any("EXT4-fs (vda)" in k for k in r.kmsg),
              "dmesg has no EXT4-fs (vda) line")


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
    check_no_disk_fallback(ctx, st, r)
    ctx.check(r.marker_write_failed, "the factory /nix was writable")
    ctx.check(RUN_CONFIG in r.files, f"{RUN_CONFIG} missing in fallback")
    ctx.check(PERSIST_CONFIG in r.nofiles, f"{PERSIST_CONFIG} exists")
    check_fi_logged(ctx, r, "booting on the factory store: no data disk")


@scenario("network-metrics")
def network_metrics(ctx):
    """vm.network_static in the kernel's ip= syntax becomes stage 2's networkd file (and the
    host name); the metrics file passes promtool on a persist boot and on a fallback, where a
    malformed vm.network_static is named and no file is written (DHCP stays)."""
    d = ctx.disks
    key = read_key(ctx)
    initrd = fi_initrd(ctx, "fi-plain")
    vdb = harness.overlay(d.luks, ctx.path("network-metrics.vdb.qcow2"))
    r1 = ctx.boot("network-metrics-1", initrd, [Disk(d.factory), Disk(vdb, "qcow2")],
                  f"{FI_APPEND} vm.luks.key={key} "
                  "vm.network_static=10.0.2.50::10.0.2.2:255.255.255.0:web-7:eth0:none:10.0.2.3")
    st = status_of(ctx, r1)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    net = st.get("network_static") or {}
    ctx.check(net.get("address") == "10.0.2.50/24" and net.get("gateway") == "10.0.2.2"
              and net.get("dns") == ["10.0.2.3"] and net.get("interface") == "eth0"
              and net.get("syntax") == "ip=" and net.get("written") is True,
              f"status network_static {net}")
    ctx.require(NETWORK_FILE in r1.files, f"{NETWORK_FILE} not written")
    lines = [x for x in r1.files[NETWORK_FILE].splitlines() if x and not x.startswith("#")]
    want = ["[Match]", "Name=eth0", "[Network]", "Address=10.0.2.50/24", "Gateway=10.0.2.2",
            "DNS=10.0.2.3", "DHCP=no"]
    ctx.check(lines == want, f"{NETWORK_FILE}: {lines}")
    ctx.check(r1.json(RUN_CONFIG).get("hostname") == "web-7",
              f"the ip= host name field did not become the host name: {r1.json(RUN_CONFIG)}")
    check_fi_logged(ctx, r1, "static network for stage 2: 10.0.2.50/24,10.0.2.2,10.0.2.3,eth0")
    m = check_metrics(ctx, r1)
    for k, v in {"factory_init_persist": 1, 'factory_init_reason{code="none"}': 1,
                 'factory_init_unlock_method{method="cmdline-key"}': 1,
                 'factory_init_store_mode{mode="overlay"}': 1,
                 "factory_init_network_static": 1, "factory_init_key_on_cmdline": 1}.items():
        ctx.check(m.get(k) == v, f"metric {k} = {m.get(k)}, not {v}")
    steps = {s["name"]: 0 for s in st["steps"]}
    for s in st["steps"]:
        steps[s["name"]] += s["ms"]
    for name, ms in steps.items():
        got = m.get(f'factory_init_step_duration_seconds{{step="{name}"}}')
        ctx.check(got is not None and abs(got - ms / 1000) < 0.0015,
                  f"step {name}: {got} s in the metrics, {ms} ms in the status")
    check_no_secret(ctx, r1, key)

    r2 = ctx.boot("network-metrics-2", initrd, [Disk(d.factory)],
                  f"{FI_APPEND} vm.persist.timeout=1 vm.network_static=10.0.2.50/24,10.0.3.1")
    st = status_of(ctx, r2)
    check_no_disk_fallback(ctx, st, r2)
    ctx.check(st.get("network_static") is None, f"network_static {st.get('network_static')}")
    ctx.check(NETWORK_FILE in r2.nofiles, f"{NETWORK_FILE} written for a malformed value")
    ctx.check(any("vm.network_static" in w and "not inside the address's subnet" in w
                  for w in st["warnings"]), f"no warning for vm.network_static: {st['warnings']}")
    ctx.check("network_static" not in r2.json(RUN_CONFIG), f"config {r2.json(RUN_CONFIG)}")
    m = check_metrics(ctx, r2)
    for k, v in {"factory_init_persist": 0, 'factory_init_reason{code="no-disk"}': 1,
                 'factory_init_unlock_method{method="none"}': 1,
                 'factory_init_store_mode{mode="factory"}': 1,
                 "factory_init_network_static": 0}.items():
        ctx.check(m.get(k) == v, f"metric {k} = {m.get(k)}, not {v}")


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
