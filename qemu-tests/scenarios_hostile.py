"""scenarios_hostile.py - hostile input: "trust nothing stage 2 or a stranger's disk can write".

Stage 2 runs as root and owns /persist, so anything there (symlinks, FIFOs, device links, huge
markers) is an attacker's input to the next boot's stage 1, which holds the LUKS key. A disk
that merely carries our label is a stranger's. Boot 1 plants through the stage-2 hook
(harness.stage2_hook), boot 2 shows what stage 1 made of it.

hostile-symlinks-overlay, hostile-symlinks-bind, hostile-marker-garbage, hostile-dev-targets,
stranger-plain-disk, two-luks-disks.  Registered in this order, after scenarios_tools (the last
group).
"""

import hashlib

import harness
from harness import Disk
from context import (FI_APPEND, PERSIST_CONFIG, RUN_CONFIG, STORE_APPEND, check_no_secret,
                     fi_initrd, fresh_btrfs, read_key, reporter_sha256, same_disk, scenario,
                     status_of, store_images)


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
    shas = reporter_sha256(r)
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
