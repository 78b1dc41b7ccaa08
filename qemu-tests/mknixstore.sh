#!/bin/sh
# mknixstore.sh - build a REAL Nix store (forky's Nix) to be the test factory store.
#
# Usage: qemu-tests/mknixstore.sh [-q] [--variant base|refresh]
#
# Prints the resulting directory as the last line of stdout:
#   $CACHE/nixstore/<key>/          CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
#   <key> = first 12 hex of sha256(this script) + "-nix-" + Nix version (+ "-refresh")
# It holds
#   nix/store/                 40 real store paths (and .links after nix-store --optimise);
#                              the directory itself 1775 root:30000, as on NixOS (nixbld)
#   nix/var/nix/db/db.sqlite   Nix's database of exactly those paths (plus the -wal/-shm,
#                              big-lock, schema and the 8 MiB "reserved" file Nix leaves)
#   nix/var/nix/profiles/system -> system-1-link -> /nix/store/<hash>-factory-system
#   nix/var/nix/gcroots/       as Nix makes them: auto/<hash> -> .../profiles/system-1-link
#   nix/nix-path-registration  `nix-store --dump-db $(nix-store -qR <system>)`: the closure's
#                              registration in --load-db format, what NixOS's closureInfo
#                              'registration' holds and nixos/images.nix puts at
#                              /nix/nix-path-registration (but with the deriver filled in
#                              and narHash in base16 without "sha256:"; --load-db takes both)
#   manifest.json              nix version, system path, every path with narHash, narSize and
#                              references, counts (paths, entries, bytes, ...), GC roots, and
#                              for --variant refresh "added"/"removed" relative to the base
#   store-paths                the closure, one path a line (sorted)
#   .complete                  stamp; the directory is built under .tmp-<key>.* and renamed
#                              into place, so an interrupted run never looks finished
# A second call prints the cached directory at once.  -q: Nix's build output goes to a log
# that is shown only on failure.  MKNIXSTORE_KEEP=1 keeps the temp dir of a failed build.
#
# How: Nix 2.34.8 (nix-bin) from the cached Debian forky tree (`stack.sh -q tree forky`,
# read-only here) runs as root, no daemon, in a chroot in a private mount namespace
# (unshare -m; `mount --make-rprivate /` first, so no mount reaches the host):
#   tree bound read-only onto itself, out/nix bound onto $T/nix (the store is written into
#   the output dir, never into the tree), proc on $T/proc, /dev rbound on $T/dev (Nix wants a
#   pty), tmpfs on $T/tmp with the expression dir and out/ bound below it.
# Builds run with sandbox = false, build-users-group = (empty), no substituters
# (NIX_CONF_DIR points at a private nix.conf; /etc/nix/nix.conf of the tree is not read).
# The only builder is the host's static busybox (Debian: busybox-static), added to the store
# first as a source path (builtins.path, name busybox-static-<version>) and used as
#   derivation { builder = "${busybox}/bin/busybox"; args = [ "sh" "-c" ... ]; ... }
#
# The store (variant base): busybox; 10 libs (no references, or only a self-reference via a
# pkgconfig file); 5 "mid" libs referencing libs; 20 apps referencing libs/mids/apps through
# output paths written into files and absolute symlinks; docs-bundle, shapes and bigdata; the
# top factory-system (sw/bin symlinks into every app, etc/, init) referencing all of them.
# Shapes a store copy must preserve: a LICENSE identical in every path plus 120 copies in
# docs-bundle (one inode, link count ~160 after optimise), identical symlinks in every path
# (share/doc/<name>/COPYING -> LICENSE, libexec/busybox -> <busybox>/bin/busybox in apps),
# which `nix-store --optimise` hard-links too (Nix on Linux links symlinks via .links),
# relative/absolute/dangling/out-of-store symlinks, symlinks to dirs, executables (0555
# after canonicalisation, from 0755 and 0700), 0600 files (-> 0444), empty files and dirs,
# 255-byte names (file, symlink, dir), names with spaces and UTF-8, nested dirs 15 deep, an
# 8 MiB sparse file (three 4 KiB blocks of data; Nix only canonicalises metadata of a built
# output, so its holes survive) and a ~1 MB text file.  All deterministic: same busybox ->
# same store paths and contents (only db.sqlite's registration times differ).
# After the build: profile set (nix-env -p /nix/var/nix/profiles/system --set), nix-store
# --gc (keep-derivations = false: .drv files and the build-time-only paths go, the store is
# exactly the system's closure, as in a NixOS image), nix-store --optimise, nix-store
# --verify --check-contents (must be clean), then the registration is checked by loading it
# (--load-db) into a fresh tmpfs /nix over the same store and verifying again.
#
# --variant refresh: the "factory refresh" image, from the same expression, built into its
# own store (cached separately; builds the base first to compare): fx-zsh and fx-fish and
# the lib only they use (libzstd) removed, fx-gzip bumped 1.0 -> 1.1 (so fx-ruby, which
# references it, is rebuilt: a new path of the same name), fx-jq (with the new libbrotli)
# and fx-htop added, and so a new factory-system; the two closures share all other paths
# (34 of 40).  manifest.json lists "added" and "removed" store paths relative to the base.
#
# Inspecting a result with Nix: use a nix.conf with `build-users-group =` (and sandbox =
# false); as root with the default (nixbld) Nix chgrps nix/store to the running system's
# nixbld group and may touch the db: better on a copy.
#
# Needs: root, util-linux (unshare, mount, flock), coreutils, a static busybox at
# /usr/bin/busybox (apt-get install busybox-static) or $BUSYBOX, and the forky tree
# (debootstrap etc., see stack.sh).  Nothing is installed on the host.
set -eu

CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
BUSYBOX=${BUSYBOX:-/usr/bin/busybox}
PATH=$PATH:/sbin:/usr/sbin   # chroot, unshare

quiet=0
variant=base
log() { [ "$quiet" = 1 ] || echo "mknixstore.sh: $*" >&2; }
die() { echo "mknixstore.sh: error: $*" >&2; exit 1; }
usage() { die "usage: mknixstore.sh [-q] [--variant base|refresh]"; }

while [ $# -gt 0 ]; do
    case $1 in
        -q) quiet=1 ;;
        --variant) [ $# -ge 2 ] || usage; variant=$2; shift ;;
        --variant=*) variant=${1#--variant=} ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) usage ;;
    esac
    shift
done
case $variant in base|refresh) ;; *) usage ;; esac

SELF=$(readlink -f "$0")
HERE=$(dirname "$SELF")

need() {  # TOOL PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "$1 not found (Debian package: $2)"
}
need sha256sum coreutils
need unshare util-linux
need flock util-linux
need mount mount
need chroot coreutils

T=$(sh "$HERE/stack.sh" -q tree forky | tail -n 1)
[ -x "$T/usr/bin/nix-store" ] || die "$T has no /usr/bin/nix-store (nix-bin not in the forky tree?)"
nixver=$(awk '$1 == "nix-bin" { print $2 }' "$T/.versions" 2>/dev/null || true)
[ -n "$nixver" ] ||
    nixver=$(dpkg-query --admindir="$T/var/lib/dpkg" -W -f '${Version}' nix-bin 2>/dev/null || true)
nixver=$(echo "$nixver" | sed 's/^[0-9]*://; s/[+~-].*//')
[ -n "$nixver" ] || die "cannot tell nix-bin's version in $T"

hash=$(sha256sum "$SELF" | cut -c1-12)
key=$hash-nix-$nixver
[ "$variant" = base ] || key=$key-$variant
ROOT=$CACHE/nixstore
OUT=$ROOT/$key
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi

[ "$(id -u)" = 0 ] || die "must run as root (chroot, mount namespace)"
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock-$key"
flock 9
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi

# ---- the base store first, for --variant refresh's added/removed ---------------------------
BASE=
if [ "$variant" = refresh ]; then
    qflag=; [ "$quiet" = 1 ] && qflag=-q
    BASE=$(sh "$SELF" $qflag --variant base | tail -n 1)
    [ -f "$BASE/.complete" ] || die "base store not built"
fi

# ---- busybox: must be static (it runs as the builder inside the store) ---------------------
[ -f "$BUSYBOX" ] || die "$BUSYBOX not found (Debian package: busybox-static)"

TMP=
cleanup() {
    rc=$?
    # the mounts lived in the private namespace, gone with its last process
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$rc" != 0 ] && [ -n "${MKNIXSTORE_KEEP:-}" ]; then
            echo "mknixstore.sh: kept $TMP (MKNIXSTORE_KEEP)" >&2
        else
            rm -rf --one-file-system "$TMP"
        fi
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for d in "$ROOT/.tmp-$key".*; do   # left by a killed run (we hold the lock)
    [ -d "$d" ] && rm -rf --one-file-system "$d"
done
[ -e "$OUT" ] && rm -rf --one-file-system "$OUT"   # no .complete: not finished
TMP=$(mktemp -d "$ROOT/.tmp-$key.XXXXXX")
W=$TMP/work
E=$W/expr
mkdir -p "$TMP/out/nix" "$E/conf" "$E/busybox-static/bin"
cp "$BUSYBOX" "$E/busybox-static/bin/busybox"
chmod 0555 "$E/busybox-static/bin/busybox"
ln -s busybox "$E/busybox-static/bin/sh"
mkdir "$W/bbtest"
cp "$BUSYBOX" "$W/bbtest/busybox"
chroot "$W/bbtest" /busybox true 2>/dev/null ||
    die "$BUSYBOX does not run in an empty chroot: not statically linked? (Debian package: busybox-static)"
bbver=$("$BUSYBOX" 2>&1 | sed -n '1s/^BusyBox v\([0-9][0-9.]*\).*/\1/p')
bbname=busybox-static${bbver:+-$bbver}
bbsha=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
[ -n "$BASE" ] && cp "$BASE/store-paths" "$E/base-paths"

cat >"$E/conf/nix.conf" <<'EOF'
sandbox = false
build-users-group =
substituters =
keep-derivations = false
keep-outputs = false
auto-optimise-store = false
max-jobs = 1
cores = 1
EOF

# ---- the expression --------------------------------------------------------------------------
cat >"$E/default.nix" <<'EOF'
# Test factory store: every builder is the static busybox in the store.
{ variant ? "base", bbdir, bbname ? "busybox-static" }:
let
  inherit (builtins) concatStringsSep genList elemAt filter substring;
  system = builtins.currentSystem;
  refresh = variant == "refresh";
  mod = a: b: a - (a / b) * b;
  cat = f: l: concatStringsSep "" (map f l);
  range = a: b: genList (i: a + i) (b - a + 1);

  busybox = builtins.path { path = /. + bbdir; name = bbname; };
  bb = "${busybox}/bin/busybox";

  licence = concatStringsSep "" (genList (i: "Permission is hereby granted, free of charge, to any person obtaining a copy (clause ${toString i}).\n") 16);

  # Every path: share/doc/NAME/LICENSE (same bytes everywhere), share/doc/NAME/COPYING ->
  # LICENSE (same relative symlink everywhere), share/doc/NAME/NEWS (empty).
  mk = name: body: derivation {
    inherit name system licence;
    builder = bb;
    args = [ "sh" "-c" ''
      set -eu
      ${bb} mkdir -p "$TMPDIR/.bin"
      ${bb} --install -s "$TMPDIR/.bin"
      export PATH="$TMPDIR/.bin"
      umask 022
      d="$out/share/doc/${name}"
      mkdir -p "$d"
      printf '%s' "$licence" > "$d/LICENSE"
      ln -s LICENSE "$d/COPYING"
      : > "$d/NEWS"
      cd "$out"
      ${body}
    '' ];
  };

  # ---- libs: no references (odd), or a self-reference via pkgconfig (even) ----
  libNames = [ "zlib" "ffi" "xml" "ssl" "curses" "readline" "sqlite" "expat" "lzma" "zstd" "brotli" ];
  mkLib = i: n: mk "lib${n}-1.${toString i}" ''
    mkdir -p lib include
    seq 1 ${toString (200 * (i + 1))} | sed 's/^/${n} /' > lib/lib${n}.so.1.${toString i}
    ln -s lib${n}.so.1.${toString i} lib/lib${n}.so.1
    ln -s lib${n}.so.1 lib/lib${n}.so
    printf '#define %s_VERSION "1.%s"\n' ${n} ${toString i} > include/${n}.h
    ${if mod i 2 == 0 then ''
      mkdir -p lib/pkgconfig
      printf 'prefix=%s\nlibdir=%s/lib\nName: %s\n' "$out" "$out" ${n} > lib/pkgconfig/${n}.pc
    '' else ""}
  '';
  libs = genList (i: { short = elemAt libNames i; drv = mkLib i (elemAt libNames i); }) (builtins.length libNames);
  lib = i: elemAt libs i;

  # ---- mids: reference two libs each ----
  midDefs = [ { n = "crypto"; l = [ 3 0 ]; } { n = "text"; l = [ 2 7 ]; } { n = "term"; l = [ 4 5 ]; }
              { n = "db"; l = [ 6 0 ]; } { n = "compress"; l = [ 8 0 ]; } ];
  mkMid = m: mk "libfx${m.n}-2.0" ''
    mkdir -p lib nix-support
    seq 1 500 | sed 's/^/${m.n} /' > lib/libfx${m.n}.so.2
    ${cat (i: ''
      printf '%s\n' ${(lib i).drv} >> nix-support/propagated-build-inputs
      ln -s ${(lib i).drv}/lib lib/dep-${(lib i).short}
    '') m.l}
  '';
  mids = map mkMid midDefs;

  # ---- apps: reference libs (i mod 9; zstd only by 19 and 20, brotli only by 21), mids
  # (even i), and apps (i > 14 -> app i-10) ----
  words = [ "hello" "sed" "awk" "tar" "gzip" "curl" "wget" "git" "vim" "nano" "less" "make"
            "perl" "python" "ruby" "lua" "tcl" "bash" "zsh" "fish" "jq" "htop" ];
  appVersion = i: if refresh && i == 5 then "1.1" else "1.0";
  appLibs = i: [ (lib (mod i 9)) ] ++ (if i == 19 || i == 20 then [ (lib 9) ] else [ ])
               ++ (if i == 21 then [ (lib 10) ] else [ ]);
  appMids = i: if mod i 2 == 0 then [ (elemAt mids (mod (i / 2) 5)) ] else [ ];
  appApps = i: if i > 14 then [ (app (i - 10)) ] else [ ];
  mkApp = i: let w = elemAt words (i - 1); v = appVersion i; in {
    inherit w;
    drv = mk "fx-${w}-${v}" ''
      mkdir -p bin etc lib libexec share/man/man1
      printf '#!%s/bin/sh\nexec %s echo "%s %s"\n' ${busybox} ${bb} ${w} ${v} > bin/${w}
      chmod 0755 bin/${w}
      printf '#!%s/bin/sh\nexit 0\n' ${busybox} > libexec/${w}-helper
      chmod 0700 libexec/${w}-helper
      ln -s ${bb} libexec/busybox
      printf '.TH %s 1\n.SH NAME\n%s \\- a test program\n' ${w} ${w} > share/man/man1/${w}.1
      chmod 0600 share/man/man1/${w}.1
      ${cat (l: ''
        printf 'lib=%s\n' ${l.drv} >> etc/${w}.conf
        ln -s ${l.drv}/lib/lib${l.short}.so lib/lib${l.short}.so
      '') (appLibs i)}
      ${cat (m: ''
        printf 'mid=%s/lib\n' ${m} >> etc/${w}.conf
      '') (appMids i)}
      ${cat (a: ''
        printf 'uses=%s/bin/%s\n' ${a.drv} ${a.w} >> etc/${w}.conf
      '') (appApps i)}
    '';
  };
  appList = genList (i: mkApp (i + 1)) (builtins.length words);
  app = i: elemAt appList (i - 1);
  appIdx = if refresh then range 1 18 ++ [ 21 22 ] else range 1 20;
  apps = map app appIdx;

  # ---- shapes ----
  docs = mk "fx-docs-bundle-1.0" ''
    mkdir -p share/doc/licenses share/doc/deep/a/b/c/d/e/f/g/h/i/j/k/l
    for i in $(seq -w 1 120); do printf '%s' "$licence" > share/doc/licenses/LICENSE-$i; done
    echo deep > share/doc/deep/a/b/c/d/e/f/g/h/i/j/k/l/README
  '';
  longName = concatStringsSep "" (genList (i: substring (mod i 26) 1 "abcdefghijklmnopqrstuvwxyz") 255);
  shapes = mk "fx-shapes-1.0" ''
    mkdir -p share/long share/long-link share/long-dir/${longName} share/empty-dir share/empty/a/b
    printf 'a file with a 255-byte name\n' > share/long/${longName}
    ln -s ../long/${longName} share/long-link/${longName}
    printf 'in a dir with a 255-byte name\n' > share/long-dir/${longName}/file
    : > share/empty-file
    : > share/.hidden-empty
    printf 'no newline at the end' > share/no-newline
    printf 'spaces\n' > "share/with space.txt"
    printf 'utf-8\n' > "share/ünïcödé-✓.txt"
    ln -s long share/current
    ln -s does-not-exist share/dangling
    ln -s /etc/os-release share/out-of-store
    ln -s "$out/share/no-newline" share/self-absolute
    printf '#!/bin/sh\n' > share/script
    chmod 0755 share/script
  '';
  bigdata = mk "fx-bigdata-1.0" ''
    mkdir -p share/data
    truncate -s 8388608 share/data/sparse.img
    for off in 0 1024 2047; do
      seq 1 1200 | head -c 4096 | dd of=share/data/sparse.img bs=4096 seek=$off conv=notrunc 2>/dev/null
    done
    seq 1 150000 > share/data/numbers.txt
  '';

  factorySystem = mk "factory-system" ''
    mkdir -p sw/bin etc share
    ${cat (a: ''
      ln -s ${a.drv}/bin/${a.w} sw/bin/${a.w}
      printf '%s\n' ${a.drv} >> etc/apps
    '') apps}
    ${cat (m: ''
      printf '%s\n' ${m} >> etc/libs
    '') mids}
    ln -s ${docs}/share/doc share/doc-bundle
    ln -s ${shapes} share/shapes
    ln -s ${bigdata}/share/data share/data
    ln -s /etc/zoneinfo/UTC etc/localtime
    printf 'factory-system variant=%s\n' ${variant} > etc/factory-release
    printf '#!%s/bin/sh\nexec %s sh\n' ${busybox} ${bb} > init
    chmod 0555 init
  '';
in {
  system = factorySystem;
  inherit busybox docs shapes bigdata;
}
EOF

# ---- inside the chroot: build, profile, gc, optimise, verify, manifest -------------------
cat >"$E/inner.sh" <<'EOF'
set -eu
variant=$1 bbname=$2 bbsha=$3 nixver=$4 key=$5
log() { [ "${QUIET:-0}" = 1 ] || echo "mknixstore.sh: $*" >&2; }
die() { echo "mknixstore.sh: error: $*" >&2; exit 1; }
export NIX_CONF_DIR=/tmp/expr/conf HOME=/tmp/home
mkdir -p "$HOME"
cd /tmp/expr
nix-store --version >&2
log "building the $variant system (busybox: $bbname)"
sys=$(nix-build --no-out-link --argstr variant "$variant" --argstr bbdir /tmp/expr/busybox-static \
      --argstr bbname "$bbname" default.nix -A system)
case $sys in /nix/store/*-factory-system) ;; *) die "nix-build printed '$sys'" ;; esac
nix-env -p /nix/var/nix/profiles/system --set "$sys"
log "collecting garbage (keeps the closure of $sys only)"
nix-store --gc >gc.log 2>&1 || { cat gc.log >&2; exit 1; }
grep -v "^deleting '" gc.log >&2 || true
log "optimising"
nix-store --optimise 2>opt.log || { cat opt.log >&2; exit 1; }
cat opt.log >&2
optimised=$(grep -i 'freed' opt.log | tail -n 1 || true)
log "verifying"
nix-store --verify --check-contents >verify.log 2>&1 || { cat verify.log >&2; die "nix-store --verify failed"; }
if grep -v -E '^(reading the Nix store|checking [a-z ]+)\.\.\.$' verify.log | grep -q .; then
    cat verify.log >&2; die "nix-store --verify --check-contents is not clean"
fi
nix-store -qR "$sys" | LC_ALL=C sort > /tmp/out/store-paths
# records in a --dump-db listing: path, narHash, narSize, deriver, count, references
nrecords() { awk 'st == 0 { c++; st = 1; next } st < 4 { st++; next } st == 4 { n = $0; st = (n > 0 ? 5 : 0); next } { if (--n == 0) st = 0 } END { print c + 0 }'; }
narbytes() { awk 'st == 0 { st = 1; next } st < 4 { if (st == 2) s += $0; st++; next } st == 4 { n = $0; st = (n > 0 ? 5 : 0); next } { if (--n == 0) st = 0 } END { print s + 0 }'; }
valid=$(nix-store --dump-db | nrecords)
# shellcheck disable=SC2046 # store paths: no blanks
nix-store --dump-db $(cat /tmp/out/store-paths) > /nix/nix-path-registration
chmod 0444 /nix/nix-path-registration

# ---- counts ----
S=/nix/store
npaths=$(wc -l < /tmp/out/store-paths)
[ "$(find $S -mindepth 1 -maxdepth 1 ! -name .links | wc -l)" = "$npaths" ] ||
    die "the store holds more than the closure of $sys"
entries=$(find $S -mindepth 1 -path $S/.links -prune -o -print | wc -l)
bytes=$(find $S -path $S/.links -prune -o -type f -printf '%i %s\n' | LC_ALL=C sort -u -k1,1n |
        awk '{ s += $2 } END { print s + 0 }')
links=$(find $S/.links -mindepth 1 | wc -l)
maxlinks=$(find $S/.links -mindepth 1 -printf '%n\n' | sort -n | tail -n 1)
# names sharing an inode with another store name (link count > 2: .links holds one more)
shfiles=$(find $S -path $S/.links -prune -o -type f -links +2 -print | wc -l)
shsyml=$(find $S -path $S/.links -prune -o -type l -links +2 -print | wc -l)
lnsyml=$(find $S/.links -type l | wc -l)
disk=$(du -sB1 $S | cut -f1)
lic=$(find $S -path '*/share/doc/factory-system/LICENSE')
liclinks=$(stat -c %h "$lic")
sparse=$(find $S -path '*/share/data/sparse.img')
sparse_size=$(stat -c %s "$sparse")
sparse_alloc=$(( $(stat -c '%b * %B' "$sparse") ))
# lines: "/nix/var/nix/profiles/system-1-link" -> /nix/store/...   (runtime roots: {...} or /proc)
gcroots=$(nix-store --gc --print-roots 2>/dev/null | sed -n 's|^"\(/nix/var/[^"]*\)" -> |\1 -> |p' | LC_ALL=C sort)
[ -n "$gcroots" ] || die "no GC root under /nix/var"

# ---- manifest.json (store paths are [A-Za-z0-9+._?=-]: no JSON escaping needed) ----
jlist() { awk 'BEGIN { printf "[" } { printf "%s\"%s\"", (NR > 1 ? ", " : ""), $0 } END { printf "]" }'; }
{
    printf '{\n'
    printf '  "variant": "%s",\n  "key": "%s",\n  "nixVersion": "%s",\n' "$variant" "$key" "$nixver"
    printf '  "nixStoreVersion": "%s",\n' "$(nix-store --version)"
    printf '  "system": "%s",\n' "$sys"
    printf '  "profile": {"/nix/var/nix/profiles/system": "%s", "system-1-link": "%s"},\n' \
        "$(readlink /nix/var/nix/profiles/system)" "$(readlink /nix/var/nix/profiles/system-1-link)"
    printf '  "gcRoot": "%s",\n' "$sys"
    printf '  "gcRoots": {'
    echo "$gcroots" | awk '{ printf "%s\"%s\": \"%s\"", (NR > 1 ? ", " : ""), $1, $3 }'
    printf '},\n'
    printf '  "busybox": {"path": "%s", "hostSha256": "%s"},\n' \
        "$(grep -- "-$bbname\$" /tmp/out/store-paths)" "$bbsha"
    printf '  "registration": "/nix/nix-path-registration",\n'
    printf '  "counts": {"paths": %s, "validPathsInDb": %s, "entries": %s, "bytes": %s, "narBytes": %s, "diskBytes": %s,\n' \
        "$npaths" "$valid" "$entries" "$bytes" \
        "$(narbytes < /nix/nix-path-registration)" \
        "$disk"
    printf '    "linksEntries": %s, "maxLinkCount": %s, "licenceLinkCount": %s,\n' "$links" "$maxlinks" "$liclinks"
    printf '    "emptyFileLinkCount": %s, "sharedFileNames": %s, "sharedSymlinkNames": %s, "symlinksInLinks": %s},\n' \
        "$(stat -c %h "$(dirname "$lic")/NEWS")" "$shfiles" "$shsyml" "$lnsyml"
    printf '  "optimise": "%s",\n' "$optimised"
    printf '  "licence": "%s",\n' "$lic"
    printf '  "sparse": {"path": "%s", "size": %s, "allocatedBytes": %s},\n' "$sparse" "$sparse_size" "$sparse_alloc"
    if [ -f /tmp/expr/base-paths ]; then
        printf '  "base": "%s",\n' "$BASEDIR"
        printf '  "shared": %s,\n' "$(LC_ALL=C comm -12 /tmp/expr/base-paths /tmp/out/store-paths | wc -l)"
        printf '  "added": %s,\n' "$(LC_ALL=C comm -13 /tmp/expr/base-paths /tmp/out/store-paths | jlist)"
        printf '  "removed": %s,\n' "$(LC_ALL=C comm -23 /tmp/expr/base-paths /tmp/out/store-paths | jlist)"
    fi
    # nix-store --dump-db: path, narHash, narSize, deriver, count, references
    printf '  "paths": [\n'
    awk '
        function flush() { if (p != "") printf "%s    {\"path\": \"%s\", \"narHash\": \"%s\", \"narSize\": %s, \"deriver\": \"%s\", \"references\": [%s]}", (np++ ? ",\n" : ""), p, h, s, d, r }
        st == 0 { flush(); p = $0; r = ""; st = 1; next }
        st == 1 { h = $0; st = 2; next }
        st == 2 { s = $0; st = 3; next }
        st == 3 { d = $0; st = 4; next }
        st == 4 { n = $0; st = (n > 0 ? 5 : 0); next }
        st == 5 { r = r (r == "" ? "" : ", ") "\"" $0 "\""; if (--n == 0) st = 0; next }
        END { flush(); printf "\n" }
    ' /nix/nix-path-registration
    printf '  ]\n}\n'
} > /tmp/out/manifest.json
echo "$sys" > /tmp/expr/system
log "$npaths paths, $entries entries, $bytes bytes; licence link count $liclinks"
EOF

# Check in a fresh /nix: load the registration into an empty db over the same store.
cat >"$E/check.sh" <<'EOF'
set -eu
die() { echo "mknixstore.sh: error: $*" >&2; exit 1; }
export NIX_CONF_DIR=/tmp/expr/conf HOME=/tmp/home
[ -z "$(ls -A /nix/var 2>/dev/null)" ] || die "/nix is not fresh"
nix-store --load-db < /tmp/out/nix/nix-path-registration
nix-store --verify --check-contents >/tmp/verify2.log 2>&1 || { cat /tmp/verify2.log >&2; die "verify after --load-db failed"; }
if grep -v -E '^(reading the Nix store|checking [a-z ]+)\.\.\.$' /tmp/verify2.log | grep -q .; then
    cat /tmp/verify2.log >&2; die "verify after --load-db is not clean"
fi
sys=$(cat /tmp/expr/system)
nix-store -qR "$sys" | LC_ALL=C sort | cmp -s - /tmp/out/store-paths || die "closure differs after --load-db"
# shellcheck disable=SC2046 # store paths: no blanks
nix-store --dump-db $(cat /tmp/out/store-paths) | cmp -s - /tmp/out/nix/nix-path-registration ||
    die "--dump-db after --load-db differs from the registration"
EOF

# In the private mount namespace.
cat >"$W/ns.sh" <<'EOF'
set -eu
T=$1 TMP=$2; shift 2
mount --make-rprivate /
mount --bind "$T" "$T"
mount -o remount,bind,ro "$T"
mount --bind "$TMP/out/nix" "$T/nix"
mount -t proc proc "$T/proc"
mount --rbind /dev "$T/dev"
mount -t tmpfs -o mode=1777 tmpfs "$T/tmp"
mkdir "$T/tmp/expr" "$T/tmp/out"
mount --bind "$TMP/work/expr" "$T/tmp/expr"
mount --bind "$TMP/out" "$T/tmp/out"
run() {
    env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin LC_ALL=C.UTF-8 TERM=dumb QUIET="$QUIET" BASEDIR="$BASEDIR" \
        chroot "$T" "$@"
}
run /bin/sh /tmp/expr/inner.sh "$@"
# a fresh /nix over the same store: does the registration load and verify?
mount -t tmpfs tmpfs "$T/nix"
mkdir "$T/nix/store"
mount --bind "$TMP/out/nix/store" "$T/nix/store"
run /bin/sh /tmp/expr/check.sh
[ "$QUIET" = 1 ] || echo "mknixstore.sh: the registration loads into a fresh /nix and verifies" >&2
EOF

log "building $key in $TMP (forky tree $T, Nix $nixver)"
start=$(date +%s)
logf=$W/build.log
if [ "$quiet" = 1 ]; then
    QUIET=1 BASEDIR=$BASE nice -n 10 unshare -m -- sh "$W/ns.sh" "$T" "$TMP" \
        "$variant" "$bbname" "$bbsha" "$nixver" "$key" >"$logf" 2>&1 ||
        { tail -n 60 "$logf" >&2; die "build failed (log above)"; }
else
    QUIET=0 BASEDIR=$BASE nice -n 10 unshare -m -- sh "$W/ns.sh" "$T" "$TMP" \
        "$variant" "$bbname" "$bbsha" "$nixver" "$key" >&2 ||
        die "build failed"
fi
if ! [ -L "$TMP/out/nix/var/nix/profiles/system" ] || ! [ -s "$TMP/out/manifest.json" ] ||
   ! [ -s "$TMP/out/nix/nix-path-registration" ]; then
    die "build left no profile, manifest or registration"
fi
# As NixOS's Nix leaves it (build-users-group = nixbld, gid 30000 there): nix/store 1775
# root:30000.  Built with build-users-group empty, Nix left it 0755 root:root.  Careful:
# any Nix run on this store as root without `build-users-group =` chgrps it to the running
# system's nixbld group.
chown 0:30000 "$TMP/out/nix/store"
chmod 1775 "$TMP/out/nix/store"
touch "$TMP/out/.complete"
mv "$TMP/out" "$OUT"
log "done in $(( $(date +%s) - start ))s: $OUT"
echo "$OUT"
