#!/bin/sh
# nix-store-check.sh - Nix itself on the /nix layouts factory-init makes, with a store made by
# real Nix.
#
# Usage: qemu-tests/nix-store-check.sh [--mode bind|overlay|overlay-legacy|all] [FACTORY_INIT]
#        (default: all, build/factory-init)
#        qemu-tests/nix-store-check.sh --guest-conf DIR
#        (writes the checks for a guest's stage 2 into DIR and exits: inner.sh MODE CONF PHASE
#        with nix.conf, nix-overlay.conf, register*.sh, store-paths*, registration, added, removed
#        and system2 beside it, all expected at /tmp/conf; mkforkyroot.sh --nix-store puts them
#        in the image)
#
# The factory store is qemu-tests/mknixstore.sh's (forky's Nix 2.34: 40 real paths, optimised,
# symlinks hard-linked through .links, a licence with ~160 names, a sparse file, 255-byte names).
# forky's Nix runs in the cached forky tree (stack.sh tree forky) in a private mount namespace,
# with /nix laid out as stage 1 leaves it; the tree and the cached store are never written to.
#
# bind     `factory-init copy-store` (the engine of vm.store=bind) copies the factory /nix into a
#          temp dir; the two trees are compared name by name (type, mode, owner, mtime, size,
#          contents or link target, xattrs, allocated blocks of sparse files) and by inode
#          sharing, every file type; then, with the copy as /nix and /nix/.ro-store the factory
#          /nix, Nix's default local store is checked (below).
# overlay  the layout of vm.store=overlay (src/mounts.c): an overlay on /nix, the factory /nix
#          below, /persist/nix/upper above (work dir /persist/nix/work), the factory /nix also
#          at /nix/.ro-store; Nix uses the local-overlay-store with the very URL the NixOS
#          module writes (read from nixos/modules/factory-init.nix). Builds must land in
#          /persist/nix/upper only, the factory /nix must come out unchanged, and a "second
#          boot" (the overlay mounted afresh on the same upper) must keep everything. Then a
#          "refresh": the same upper over mknixstore.sh's newer image (6 paths added, 6
#          removed): the new paths are valid, the removed ones are not, the rooted build stays.
# overlay-legacy  the same layout with Nix's default local store (the module's setup for Nix
#          < 2.22): the registration service's script loads the image's registration; at the
#          end the factory system's generation is removed and gc'd: its paths become whiteouts
#          in the upper layer, the factory /nix stays unchanged.
# Every mode first runs the script of the module's factory-init-register-store.service (read
# from factory-init.nix; with the local-overlay-store without its --load-db).
# The checks with Nix, in each mode: `nix-store --verify --check-contents` is clean; the
# database knows exactly the factory closure (--dump-db against the image's registration, in
# bind mode byte for byte); a derivation builds; `nix-store --gc` deletes that unrooted output and
# keeps every factory path and the system profile; `nix-store --optimise` runs; verify is clean
# again. One line per check; exit 0 when all hold.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
PATH=$PATH:/sbin:/usr/sbin
mode=all guest=
if [ "${1:-}" = --mode ]; then mode=$2; shift 2; fi
if [ "${1:-}" = --guest-conf ]; then guest=$2; shift 2; fi
case $mode in bind | overlay | overlay-legacy | all) ;; *) echo "usage: nix-store-check.sh [--mode bind|overlay|overlay-legacy|all] [FACTORY_INIT]" >&2; exit 2 ;; esac
fi=${1:-$repo/build/factory-init}

base=$(sh "$here/mknixstore.sh" -q | tail -n 1)
T=$(sh "$here/stack.sh" -q tree forky | tail -n 1)
[ -x "$T/usr/bin/nix-store" ] || { echo "nix-store-check: no nix-store in $T" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/nix-store-check.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT
mkdir "$tmp/conf"
system=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["system"])' "$base/manifest.json")
busybox=$(grep -m1 -- '-busybox-static' "$base/store-paths")
cp "$base/nix/nix-path-registration" "$tmp/conf/registration"
cp "$base/store-paths" "$tmp/conf/store-paths"
# the refresh: mknixstore.sh's newer image (some paths added, some removed)
base2=$(sh "$here/mknixstore.sh" -q --variant refresh | tail -n 1)
python3 - "$base2/manifest.json" "$tmp/conf" <<'PY'
import json, os, sys
m = json.load(open(sys.argv[1]))
for k in ("added", "removed"):
    with open(os.path.join(sys.argv[2], k), "w") as f:
        f.write("".join(p + "\n" for p in sorted(m[k])))
with open(os.path.join(sys.argv[2], "system2"), "w") as f:
    f.write(m["system"] + "\n")
PY
cp "$base2/store-paths" "$tmp/conf/store-paths2"
# the store URL and the experimental features of the module's localOverlayStore block
overlay_conf=$(python3 - "$repo/nixos/modules/factory-init.nix" <<'PY'
import re, sys
m = open(sys.argv[1]).read()
low = re.search(r'lowerStore = "([^"]+)";', m).group(1)
u = re.search(r'overlayStoreUrl = "([^"]+)"\s*\+\s*"([^"]+)";', m)
block = re.search(r'mkIf cfg.localOverlayStore \{(.*?)\n    \}\)', m, re.S).group(1)
xp = re.findall(r'"([a-z-]+)"', re.search(r'experimental-features = \[([^\]]*)\]', block).group(1))
print("store = " + u.group(1).replace("${lowerStore}", low) + u.group(2))
print("experimental-features = " + " ".join(xp))
PY
)

# digest ROOT: every name under ROOT with what a faithful copy keeps, and the inode groups
digest() {
    python3 - "$@" <<'PY'
import hashlib, json, os, stat, sys
root = sys.argv[1]
names, inodes = {}, {}
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISREG(kind):
            with open(p, "rb") as f:
                body = hashlib.sha256(f.read()).hexdigest()
            body += " sparse" if st.st_blocks * 512 < st.st_size else ""
        elif stat.S_ISLNK(kind):
            body = os.readlink(p)
        else:
            body = ""
        try:
            xa = sorted([a, os.getxattr(p, a, follow_symlinks=False).hex()] for a in os.listxattr(p, follow_symlinks=False))
        except OSError:
            xa = []
        isdir = stat.S_ISDIR(kind)
        names[rel] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                      None if stat.S_ISLNK(kind) else st.st_mtime_ns, 0 if isdir else st.st_size,
                      body, xa, 0 if isdir else st.st_nlink]
        if not isdir:
            inodes.setdefault(st.st_ino, []).append(rel)
json.dump({"names": names, "groups": sorted(sorted(g) for g in inodes.values())}, sys.stdout)
PY
}

# the script of the module's factory-init-register-store.service (bind, and overlay without the
# local-overlay-store), with its registration path
# (register.sh; register-overlay.sh with the local-overlay-store)
python3 - "$repo/nixos/modules/factory-init.nix" "$tmp/conf" <<'PY'
import os, re, sys
m = open(sys.argv[1]).read()
reg = re.search(r'registration = "([^"]+)";', m).group(1)
load = re.search(r'loadDb = if cfg.localOverlayStore\s+then "([^"]+)"\s+else "([^"]+)";', m)
block = m[m.index("mkIf cfg.registerFactoryPaths"):]
body = re.search(r"script = ''\n(.*?)\n\s*'';", block, re.S).group(1)
body = "set -e\n" + "\n".join(l[10:] if l.startswith(" " * 10) else l for l in body.splitlines())
for name, step in (("register.sh", load.group(2)), ("register-overlay.sh", load.group(1))):
    with open(os.path.join(sys.argv[2], name), "w") as f:
        f.write(body.replace("${loadDb}", step).replace("${registration}", reg) + "\n")
PY

cat >"$tmp/conf/nix.conf" <<'CONF'
sandbox = false
build-users-group =
substituters =
keep-derivations = false
CONF
cp "$tmp/conf/nix.conf" "$tmp/conf/nix-overlay.conf"
printf '%s\n' "$overlay_conf" >>"$tmp/conf/nix-overlay.conf"

# The checks with Nix, in the chroot (MODE CONFDIR-NAME).
cat >"$tmp/conf/inner.sh" <<INNER
set -u
mode=\$1 phase=\$3
mkdir -p /tmp/nixconf && cp /tmp/conf/\$2 /tmp/nixconf/nix.conf
export NIX_CONF_DIR=/tmp/nixconf HOME=/tmp
rc=0
say() { echo "\$1 \$mode: \$2"; [ "\$1" = PASS ] || rc=1; }
verify() {
    v=\$(nix-store --verify --check-contents 2>&1); r=\$?
    if [ \$r = 0 ] && ! printf '%s\n' "\$v" | grep -qiE 'error|modified|invalid|corrupt|missing|disappeared'; then
        say PASS "verify --check-contents\$1: clean"
    else say FAIL "verify --check-contents\$1 (rc \$r): \$v"; fi
}
register() {
    script=register.sh; [ "\$mode" != overlay ] || script=register-overlay.sh
    out=\$(sh /tmp/conf/\$script 2>&1); r=\$?
    if [ \$r = 0 ] && printf '%s\n' "\$out" | tail -n 1 | grep -q "\$1"; then
        say PASS "the module's factory-init-register-store script: \$(printf '%s\n' "\$out" | tail -n 1)"
    else say FAIL "the module's factory-init-register-store script (rc \$r): \$out"; fi
}
cut_output() {
    for p in /nix/store/*-cut-\$mode; do
        [ -e "\$p" ] || continue
        if nix-store --check-validity "\$p" 2>/dev/null; then say FAIL "the cut build's \${p#/nix/store/} is valid"
        else say PASS "the cut build's partial output \${p#/nix/store/} is not valid"; fi
    done
}
if [ "\$phase" = cut ]; then
    # (the guest only) a build that has written part of its output when the power goes: the
    # builder says so on the console, where the test kills QEMU
    nix-build --no-out-link -E 'derivation { name = "cut-'\$mode'"; system = "x86_64-linux"; builder = "$busybox/bin/busybox"; args = [ "sh" "-c" "b=$busybox/bin/busybox; \$b mkdir \$out && echo part > \$out/a && \$b sync && echo @@NIXCUT building \$out > /dev/console && \$b sleep 3600" ]; }' >/dev/null 2>&1
    say FAIL "cut: the build ended before the power cut"
    exit \$rc
fi
if [ "\$phase" = gc-factory ]; then
    # the factory system's generation removed (as nix-collect-garbage -d does once another
    # system is current): gc deletes the factory paths from the overlay, which leaves whiteouts
    # in the upper layer and the factory store itself as it was
    system2=\$(cat /tmp/conf/system2)
    rm -f /nix/var/nix/profiles/system /nix/var/nix/profiles/system-*-link
    nix-store --gc >/tmp/gc.log 2>&1
    valid= wh=0
    for p in \$(cat /tmp/conf/store-paths2); do
        nix-store --check-validity "\$p" 2>/dev/null && valid="\$valid \${p#/nix/store/}"
        w=/persist/nix/upper/store/\${p#/nix/store/}
        [ -c "\$w" ] && [ "\$(stat -c %t:%T "\$w")" = 0:0 ] && wh=\$((wh + 1))
    done
    n=\$(wc -l </tmp/conf/store-paths2)
    if [ -z "\$valid" ] && [ \$wh = \$n ] && [ -x /nix/.ro-store/store/\${system2#/nix/store/}/init ] && [ -e "\$(cat /persist/kept)" ]; then
        say PASS "gc of the factory system: its \$n paths invalid, each a whiteout in the upper layer (\$(tail -n 1 /tmp/gc.log)), the factory store untouched, the rooted build kept"
    else say FAIL "gc of the factory system: still valid:\$valid; \$wh of \$n whiteouts"; fi
    verify " after gc of the factory system"
    exit \$rc
fi
if [ "\$phase" = refresh ]; then
    # the boot after a newer factory image replaced the old one
    register "^registered the factory image's store paths"
    cut_output
    kept=\$(cat /persist/kept)
    system2=\$(cat /tmp/conf/system2)
    if nix-store --check-validity \$(cat /tmp/conf/added) && [ -x "\$system2/init" ] &&
       [ "\$(nix-store -qR "\$system2" | sort)" = "\$(sort /tmp/conf/store-paths2)" ]; then
        say PASS "refresh: the new image's \$(wc -l </tmp/conf/added) paths are valid, its system's closure exactly its own"
    else say FAIL "refresh: a new path is not valid, or the new system's closure is not the image's"; fi
    valid= gone=
    for p in \$(cat /tmp/conf/removed); do
        nix-store --check-validity "\$p" 2>/dev/null && valid="\$valid \${p#/nix/store/}"
        [ -e "\$p" ] || gone="\$gone \${p#/nix/store/}"
    done
    profile=\$(readlink -f /nix/var/nix/profiles/system)
    if [ "\$mode" = bind ]; then
        # the copy keeps what it had: the old image's paths stay, valid, and the copy's system
        # profile still names the old system, which holds them until the profile moves on
        if [ -z "\$gone" ] && [ "\$valid" = "\$(for p in \$(cat /tmp/conf/removed); do printf ' %s' "\${p#/nix/store/}"; done)" ] &&
           [ "\$profile" = "$system" ]; then
            say PASS "refresh: the \$(wc -l </tmp/conf/removed) paths the new image lacks stay in the copy, valid, held by the copy's system profile (the old system)"
        else say FAIL "refresh: the old image's paths: valid:\$valid, gone:\$gone; profile \$profile"; fi
    elif [ -z "\$valid" ] && [ "\$profile" = "\$system2" ]; then
        say PASS "refresh: none of the \$(wc -l </tmp/conf/removed) paths the new image lacks is valid, the system profile is the new image's"
    else say FAIL "refresh: paths the new image lacks are still valid:\$valid; profile \$profile"; fi
    if [ -e "\$kept" ] && nix-store --check-validity "\$kept"; then say PASS "refresh: the rooted build of the old image's boot is kept"
    else say FAIL "refresh: the rooted build is gone"; fi
    verify " after the refresh"
    exit \$rc
fi
if [ "\$phase" = second ]; then
    register "^factory store paths already registered"
    kept=\$(cat /persist/kept)
    cut_output
    if [ -e "\$kept" ] && nix-store --check-validity "\$kept" \$(cat /tmp/conf/store-paths) &&
       [ "\$(readlink -f /nix/var/nix/profiles/system)" = "$system" ]; then
        say PASS "second boot (the overlay mounted afresh): the rooted build, every factory path and the profile valid"
    else say FAIL "second boot: the rooted build, a factory path or the profile is gone"; fi
    verify " on the second boot"
    exit \$rc
fi
echo "nix \$mode: \$(nix-store --version), store \$(nix --extra-experimental-features nix-command config show store 2>/dev/null || echo "?")"
register "^registered the factory image's store paths"
verify ""
# which names share an inode, every file type, as groups of names (tab-separated: names hold spaces)
groups() { (cd "\$1" && find . ! -type d -printf '%i\t%P\n') | sort -t "\$(printf '\t')" -k2 |
    awk -F '\t' '{ g[\$1] = g[\$1] "|" \$2 } END { for (i in g) print g[i] }' | sort; }
if [ "\$mode" = bind ]; then
    groups /nix/.ro-store/store >/tmp/groups.factory; groups /nix/store >/tmp/groups.copy
    n=\$(grep -c '|.*|' /tmp/groups.copy)
    if [ "\$n" -gt 0 ] && cmp -s /tmp/groups.factory /tmp/groups.copy; then
        say PASS "the copy shares inodes as the factory store does: \$n inodes with more than one name, \$(wc -l </tmp/groups.copy) in all"
    else say FAIL "inode sharing differs from the factory store (\$n shared; \$(diff /tmp/groups.factory /tmp/groups.copy | grep -c '^[<>]') groups differ)"; fi
fi
nix-store --dump-db \$(cat /tmp/conf/store-paths) >/tmp/dump 2>/tmp/dump.err
if [ "\$mode" = bind ] && cmp -s /tmp/dump /tmp/conf/registration; then
    say PASS "the database dumps the registration of the image (\$(wc -l </tmp/conf/store-paths) paths), byte for byte"
elif [ "\$mode" != bind ] && [ "\$(grep -c '^/nix/store/' /tmp/dump)" -ge "\$(wc -l </tmp/conf/store-paths)" ] &&
     nix-store --check-validity \$(cat /tmp/conf/store-paths) &&
     [ "\$(nix-store -qR $system | sort)" = "\$(sort /tmp/conf/store-paths)" ]; then
    say PASS "every path of the image is valid through the lower store, its closure exactly the image's"
else say FAIL "the database: \$(head -c 300 /tmp/dump.err)"; fi
drv='derivation { name = "NAME"; system = "x86_64-linux"; builder = "$busybox/bin/busybox"; args = [ "sh" "-c" "echo NAME > \$out" ]; }'
out=\$(nix-build --no-out-link -E "\$(echo "\$drv" | sed s/NAME/garbage-\$mode/g)" 2>/tmp/build.err | tail -n 1)
kept=\$(nix-build -o /nix/var/nix/gcroots/kept -E "\$(echo "\$drv" | sed s/NAME/rooted-\$mode/g)" 2>>/tmp/build.err | tail -n 1)
if [ -n "\$out" ] && [ "\$(cat "\$out" 2>/dev/null)" = garbage-\$mode ] && [ -n "\$kept" ]; then
    say PASS "two derivations build (\${out#/nix/store/}, \${kept#/nix/store/})"
else say FAIL "build: \$(tail -n 5 /tmp/build.err)"; fi
if [ "\$mode" != bind ]; then
    if [ -e "/persist/nix/upper/store/\${out#/nix/store/}" ] && [ ! -e "/nix/.ro-store/store/\${out#/nix/store/}" ]; then
        say PASS "the builds land in /persist/nix/upper/store only"
    else say FAIL "the build is not (only) in /persist/nix/upper/store"; fi
fi
nix-store --gc >/tmp/gc.log 2>&1
if [ -n "\$out" ] && [ ! -e "\$out" ] && [ -e "\$kept" ] && nix-store --check-validity \$(cat /tmp/conf/store-paths) "\$kept" &&
   [ "\$(readlink -f /nix/var/nix/profiles/system)" = "$system" ] && [ -x "$system/init" ]; then
    say PASS "gc: the unrooted output is gone (\$(tail -n 1 /tmp/gc.log)), the rooted one, every factory path and the system profile stay"
else say FAIL "gc: \$(tail -n 3 /tmp/gc.log)"; fi
if nix-store --optimise >/tmp/opt.log 2>&1; then
    say PASS "optimise: \$(tail -n 1 /tmp/opt.log | grep . || echo "nothing to link")"
else say FAIL "optimise: \$(tail -n 3 /tmp/opt.log)"; fi
verify " after build, gc and optimise"
echo "\$kept" >/persist/kept
exit \$rc
INNER

# In a private mount namespace: a root of the forky tree's directories bound read-only on a
# tmpfs, with /nix as stage 1 leaves it and /persist.
cat >"$tmp/conf/ns.sh" <<'NS'
set -eu
T=$1 tmp=$2 base=$3 mode=$4 conf=$5 phase=$6
R=$tmp/root
mount --make-rprivate /
mkdir -p "$R" && mount -t tmpfs -o mode=0755 root "$R"
for e in "$T"/*; do
    n=${e##*/}
    case $n in nix | tmp | proc | dev | persist) continue ;; esac
    if [ -L "$e" ]; then cp -P "$e" "$R/$n"
    elif [ -d "$e" ]; then mkdir "$R/$n" && mount --rbind "$e" "$R/$n" && mount -o remount,bind,ro "$R/$n"
    fi
done
mkdir "$R/nix" "$R/tmp" "$R/proc" "$R/dev" "$R/persist"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
mount --bind "$tmp/persist" "$R/persist"
mkdir "$R/tmp/conf" "$R/tmp/lower"
mount --bind "$tmp/conf" "$R/tmp/conf"
mount --bind "$base/nix" "$R/tmp/lower" && mount -o remount,bind,ro "$R/tmp/lower"
if [ "$mode" = bind ]; then
    mount --bind "$tmp/copy/nix" "$R/nix"
else
    mount -t overlay overlay \
        -o "lowerdir=$R/tmp/lower,upperdir=$tmp/persist/nix/upper,workdir=$tmp/persist/nix/work" "$R/nix"
fi
mkdir -p "$R/nix/.ro-store"
mount --bind "$R/tmp/lower" "$R/nix/.ro-store" && mount -o remount,bind,ro "$R/nix/.ro-store"
exec chroot "$R" env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 /bin/sh /tmp/conf/inner.sh "$mode" "$conf" "$phase"
NS

if [ -n "$guest" ]; then
    mkdir -p "$guest" && cp "$tmp"/conf/inner.sh "$tmp"/conf/nix.conf "$tmp"/conf/nix-overlay.conf \
        "$tmp"/conf/store-paths "$tmp"/conf/registration "$tmp"/conf/register.sh "$tmp"/conf/register-overlay.sh \
        "$tmp"/conf/added "$tmp"/conf/removed "$tmp"/conf/system2 "$tmp"/conf/store-paths2 "$guest"/
    exit 0
fi

rc=0
if [ "$mode" = bind ] || [ "$mode" = all ]; then
    mkdir -p "$tmp/copy" "$tmp/persist"
    echo "copy-store: $("$fi" copy-store "$base/nix" "$tmp/copy/nix")"
    digest "$base/nix" >"$tmp/src.json"
    digest "$tmp/copy/nix" >"$tmp/dst.json"
    python3 - "$tmp/src.json" "$tmp/dst.json" <<'PY' || rc=1
import json, stat, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
na, nb = a["names"], b["names"]
bad = [n for n in sorted(set(na) | set(nb)) if na.get(n) != nb.get(n)]
for n in bad[:10]:
    print(f"  differs: {n}\n    src {na.get(n)}\n    dst {nb.get(n)}")
shared = [g for g in a["groups"] if len(g) > 1]
links = sum(1 for g in shared if stat.S_ISLNK(na[g[0]][0]))
if bad or a["groups"] != b["groups"]:
    print(f"FAIL bind: identical: {len(bad)} of {len(na)} names differ, inode groups equal: {a['groups'] == b['groups']}")
    sys.exit(1)
print(f"PASS bind: identical: {len(na)} names, {len(shared)} inodes with more than one name "
      f"({links} of them symlinks, at most {max(len(g) for g in a['groups'])} names); contents, modes, "
      f"owners, times, xattrs and holes alike")
PY
    unshare -m -- sh "$tmp/conf/ns.sh" "$T" "$tmp" "$base" bind nix.conf first || rc=1
fi
# overlay MODE CONF: the first boot, a second one (the overlay mounted afresh on the same upper),
# then one on a newer factory image (the same upper over the refresh store)
overlay() {
    rm -rf "$tmp/persist" && mkdir -p "$tmp/persist/nix/upper" "$tmp/persist/nix/work"
    digest "$base/nix" >"$tmp/lower-before.json"
    unshare -m -- sh "$tmp/conf/ns.sh" "$T" "$tmp" "$base" "$1" "$2" first || rc=1
    digest "$base/nix" >"$tmp/lower-after.json"
    if cmp -s "$tmp/lower-before.json" "$tmp/lower-after.json"; then
        echo "PASS $1: the factory /nix is unchanged, byte for byte and inode for inode"
    else echo "FAIL $1: the factory /nix changed"; rc=1; fi
    unshare -m -- sh "$tmp/conf/ns.sh" "$T" "$tmp" "$base" "$1" "$2" second || rc=1
    unshare -m -- sh "$tmp/conf/ns.sh" "$T" "$tmp" "$base2" "$1" "$2" refresh || rc=1
    if [ "$1" = overlay-legacy ]; then
        digest "$base2/nix" >"$tmp/lower-before.json"
        unshare -m -- sh "$tmp/conf/ns.sh" "$T" "$tmp" "$base2" "$1" "$2" gc-factory || rc=1
        digest "$base2/nix" >"$tmp/lower-after.json"
        if cmp -s "$tmp/lower-before.json" "$tmp/lower-after.json"; then
            echo "PASS $1: the factory /nix is unchanged after its gc, byte for byte and inode for inode"
        else echo "FAIL $1: the gc changed the factory /nix"; rc=1; fi
    fi
}
if [ "$mode" = overlay ] || [ "$mode" = all ]; then
    echo "overlay: the settings of nixos/modules/factory-init.nix:" $overlay_conf
    overlay overlay nix-overlay.conf
fi
if [ "$mode" = overlay-legacy ] || [ "$mode" = all ]; then
    echo "overlay-legacy: Nix's default local store on the overlay, the module's registration script"
    overlay overlay-legacy nix.conf
fi
exit $rc
