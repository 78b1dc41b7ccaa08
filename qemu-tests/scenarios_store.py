"""scenarios_store.py - the store: bind mode (first-boot copy, power cuts, disk full) and
factory refresh.

bind-store, bind-power-cut, bind-disk-full, refresh-bind, refresh-overlay.  Registered in this
order, after scenarios_unlock.
"""

import os
import subprocess

import harness
from harness import Disk
from context import (FI_APPEND, PLAIN, STORE_APPEND, check_fi_logged, fi_initrd, fresh_btrfs,
                     fresh_dir, scenario, status_of, store_images)


#: The digests of a @@TREE line (stage2-reporter.sh's tree_digest): everything with link counts,
#: the file contents, the store paths alone, and which names share an inode (every file type).
TREE_FIELDS = ("all", "data", "paths", "inodes")


def trees(r):
    """{dir: {field: digest}} from the reporter's @@TREE lines (fields: TREE_FIELDS)."""
    out = {}
    for line in r.raw.splitlines():
        if line.startswith("@@TREE "):
            f = line.split()
            if len(f) >= 2 + len(TREE_FIELDS):
                out[f[1]] = dict(zip(TREE_FIELDS, f[2:]))
    return out


def same(t, a, b, fields=TREE_FIELDS):
    """Stores A and B of trees() agree on FIELDS (False when either is missing)."""
    return a in t and b in t and all(t[a][k] == t[b][k] for k in fields)


def persist_ls(r):
    for line in r.raw.splitlines():
        if line.startswith("@@LS /persist"):
            return line.split()[2:]
    return None


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
    ctx.check(same(t, "/nix/store", "/nix/.ro-store/store"),
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
    # Contents and store paths; not the inode sharing: the new paths are copied one by one and
    # not linked into the copy's .links (nix-store --optimise does that later).
    ctx.check(same(t, "/nix/store", "/nix/.ro-store/store", ("data", "paths")),
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
    ctx.check(same(t, "/nix/store", "/nix/.ro-store/store", ("data", "paths")),
              f"new store paths hidden by the upper layer: {t}")
    check_fi_logged(ctx, r, "removed 2 upper-layer entries")
