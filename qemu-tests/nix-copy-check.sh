#!/bin/sh
# nix-copy-check.sh - the bind mode's store copy on a store made by real Nix, judged by Nix.
#
# Usage: qemu-tests/nix-copy-check.sh [FACTORY_INIT]     (default: build/factory-init)
#
# The factory store of qemu-tests/mknixstore.sh (forky's Nix 2.34: 40 real paths, optimised,
# symlinks hard-linked through .links, a licence with ~160 names, a sparse file, 255-byte names)
# is copied with `factory-init copy-store` (the engine of vm.store=bind) into a temp dir, then:
#   1. the two trees are compared name by name (type, mode, owner, mtime, size, contents or link
#      target, xattrs, allocated blocks of sparse files) and by inode sharing, every file type;
#   2. forky's Nix, in the cached forky tree with the copy as /nix (a private mount namespace;
#      the tree and the original store are never written to), checks the copy as a store:
#      `nix-store --verify --check-contents` is clean, its database dumps exactly the
#      registration the original was built with, a new derivation builds on it, and
#      `nix-store --gc` deletes that unrooted output but keeps every path of the factory system,
#      whose profile still resolves; a second verify is clean.
# Exit 0 when all holds; prints one line per check.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
fi=${1:-$repo/build/factory-init}
PATH=$PATH:/sbin:/usr/sbin
[ -x "$fi" ] || { echo "nix-copy-check: $fi missing (make build/factory-init)" >&2; exit 1; }

base=$(sh "$here/mknixstore.sh" -q | tail -n 1)
T=$(sh "$here/stack.sh" -q tree forky | tail -n 1)
[ -x "$T/usr/bin/nix-store" ] || { echo "nix-copy-check: no nix-store in $T" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/nix-copy-check.XXXXXX")
trap 'rm -rf --one-file-system "$tmp"' EXIT
mkdir "$tmp/copy" "$tmp/conf"

stats=$("$fi" copy-store "$base/nix" "$tmp/copy/nix")
echo "copy-store: $stats"

python3 - "$base/nix" "$tmp/copy/nix" <<'PY'
import hashlib, os, stat, sys
def walk(root):
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
                sparse = st.st_blocks * 512 < st.st_size
                body += " sparse" if sparse else ""
            elif stat.S_ISLNK(kind):
                body = os.readlink(p)
            else:
                body = ""
            try:
                xa = sorted((a, os.getxattr(p, a, follow_symlinks=False)) for a in os.listxattr(p, follow_symlinks=False))
            except OSError:
                xa = []
            size = st.st_size if not stat.S_ISDIR(kind) else 0
            names[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                          None if stat.S_ISLNK(kind) else st.st_mtime_ns, size, body, tuple(xa),
                          st.st_nlink if not stat.S_ISDIR(kind) else 0)
            if not stat.S_ISDIR(kind):
                inodes.setdefault(st.st_ino, []).append(rel)
    groups = sorted(tuple(sorted(g)) for g in inodes.values())
    return names, groups
a, ga = walk(sys.argv[1])
b, gb = walk(sys.argv[2])
bad = [n for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
for n in bad[:10]:
    print(f"  differs: {n}\n    src {a.get(n)}\n    dst {b.get(n)}")
shared = [g for g in ga if len(g) > 1]
links = sum(1 for g in shared if stat.S_ISLNK(a[g[0]][0]))
if bad or ga != gb:
    print(f"FAIL identical: {len(bad)} of {len(a)} names differ, inode groups equal: {ga == gb}")
    sys.exit(1)
print(f"PASS identical: {len(a)} names, {len(shared)} inodes with more than one name "
      f"({links} of them symlinks, at most {max(len(g) for g in ga)} names), contents, modes, owners, "
      f"times, xattrs and holes alike")
PY

cat >"$tmp/conf/nix.conf" <<'CONF'
sandbox = false
build-users-group =
substituters =
keep-derivations = false
CONF
system=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["system"])' "$base/manifest.json")
busybox=$(grep -m1 -- '-busybox-static' "$base/store-paths")
cp "$base/nix/nix-path-registration" "$tmp/conf/registration"
cp "$base/store-paths" "$tmp/conf/store-paths"

cat >"$tmp/conf/inner.sh" <<INNER
set -u
export NIX_CONF_DIR=/tmp/conf HOME=/tmp
echo "nix: \$(nix-store --version)"
rc=0
say() { echo "\$1 \$2"; [ "\$1" = PASS ] || rc=1; }
v=\$(nix-store --verify --check-contents 2>&1); r=\$?
if [ \$r = 0 ] && ! printf '%s\n' "\$v" | grep -qiE 'error|modified|invalid|corrupt|missing'; then
    say PASS "verify --check-contents: clean"
else say FAIL "verify --check-contents (rc \$r): \$v"; fi
nix-store --dump-db \$(cat /tmp/conf/store-paths) >/tmp/dump 2>/tmp/dump.err
if cmp -s /tmp/dump /tmp/conf/registration; then
    say PASS "the database dumps the registration it was built with (\$(wc -l </tmp/conf/store-paths) paths)"
else say FAIL "the database differs from the registration: \$(cat /tmp/dump.err)"; fi
out=\$(nix-build --no-out-link -E 'derivation { name = "built-on-persist"; system = "x86_64-linux";
    builder = "$busybox/bin/busybox"; args = [ "sh" "-c" "echo built > \$out" ]; }' 2>/tmp/build.err | tail -n 1)
if [ -n "\$out" ] && [ "\$(cat "\$out" 2>/dev/null)" = built ]; then
    say PASS "a derivation builds on the copy: \$out"
else say FAIL "build: \$(tail -n 5 /tmp/build.err)"; fi
nix-store --gc >/tmp/gc.log 2>&1
if [ -n "\$out" ] && [ ! -e "\$out" ] && nix-store --check-validity \$(cat /tmp/conf/store-paths) &&
   [ "\$(readlink -f /nix/var/nix/profiles/system)" = "$system" ]; then
    say PASS "gc: the unrooted output is gone (\$(tail -n 1 /tmp/gc.log)), every factory path valid, the system profile resolves"
else say FAIL "gc: \$(tail -n 3 /tmp/gc.log)"; fi
v=\$(nix-store --verify --check-contents 2>&1); r=\$?
if [ \$r = 0 ] && ! printf '%s\n' "\$v" | grep -qiE 'error|modified|invalid|corrupt|missing'; then
    say PASS "verify after build and gc: clean"
else say FAIL "verify after gc (rc \$r): \$v"; fi
exit \$rc
INNER

unshare -m -- sh -ec '
    T=$1 tmp=$2
    mount --make-rprivate /
    mount --bind "$T" "$T" && mount -o remount,bind,ro "$T"
    mount --bind "$tmp/copy/nix" "$T/nix"
    mount -t proc proc "$T/proc"
    mount --rbind /dev "$T/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$T/tmp"
    mkdir "$T/tmp/conf" && mount --bind "$tmp/conf" "$T/tmp/conf"
    exec chroot "$T" env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 /bin/sh /tmp/conf/inner.sh
' sh "$T" "$tmp"
