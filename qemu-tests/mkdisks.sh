#!/bin/sh
# mkdisks.sh - build the disk images for the QEMU tests (no root mounts, no
# device-mapper: mkfs.ext4 -d, mkfs.btrfs and offline cryptsetup reencrypt
# all work on plain image files).
#
# Usage: qemu-tests/mkdisks.sh [--key FILE] [--force] OUTDIR
#
# Writes into OUTDIR:
#   factory.img  64 MiB ext4, label "factory": busybox + applet links, a tiny
#                fake Nix store, empty /persist and /nix/.ro-store, and
#                /sbin/init = stage2-reporter.sh.  Fixed UUID and file
#                mtimes (SOURCE_DATE_EPOCH); mke2fs 1.47.0 still stamps the
#                superblock and inode ctimes with the build time, so the
#                image is not byte-for-byte reproducible.
#   luks.img     256 MiB LUKS2 (label "persist", aes-xts-plain64, PBKDF2 with
#                1000 iterations, one keyslot) holding a Btrfs labelled
#                "persist" (224 MiB, mkfs.btrfs then reencrypt --encrypt).
#   btrfs.img    256 MiB plain Btrfs, label "persist" (sparse).
#   test.key     the LUKS passphrase: 32 random printable characters, no
#                newline (only when --key is not given; kept if present).
#   luks-other.img  a stranger's data disk: built like luks.img (label "persist",
#                Btrfs "persist" inside) but with another key, other.key (made like
#                test.key), and a /config.json pointing at evil.example.org.
#   attacker.img 256 MiB plain Btrfs labelled "persist" (no LUKS) whose root holds a
#                config.json (repo evil.example.org, hostname "pwned") and
#                nix/upper/store/evil-marker: what anyone can plug in.
# Each image is rebuilt only when its inputs (this script, the reporter,
# busybox, the key) or the image itself changed since it was built; the
# record is kept in OUTDIR/.stamps/.  Tests must not write to these images
# directly: boot them through qcow2 overlays (harness.Disk / overlay()).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PATH=$PATH:/sbin:/usr/sbin
key=
force=0
while [ $# -gt 0 ]; do
    case $1 in
        --key) key=$2; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "mkdisks.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || { echo "usage: mkdisks.sh [--key FILE] [--force] OUTDIR" >&2; exit 2; }
out=$1
mkdir -p "$out/.stamps"
out=$(cd "$out" && pwd)

BUSYBOX=${BUSYBOX:-/bin/busybox}
EPOCH=${SOURCE_DATE_EPOCH:-0}
# Fixed identifiers: the same UUID on every build.
FACTORY_UUID=6f6b1c52-3d1e-4a8e-9c61-0f2d7e5a1c01
FACTORY_HASH_SEED=1b0e6a0d-7c3f-4f59-8d0e-5a9b2c4e6f10
NIX_HASH=9m2kfvq0n6x1b8l4s7ahy3jw5gcdpzr0   # nix base32, 32 chars

for tool in mkfs.ext4 mkfs.btrfs cryptsetup sha256sum; do
    command -v $tool >/dev/null || { echo "mkdisks.sh: $tool missing" >&2; exit 1; }
done
[ -x "$BUSYBOX" ] || { echo "mkdisks.sh: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
case $(file -bL "$BUSYBOX" 2>/dev/null) in
    *dynamically*) echo "mkdisks.sh: $BUSYBOX is not static (install busybox-static)" >&2; exit 1 ;;
esac

say() { echo "mkdisks.sh: $*" >&2; }

# inputs_hash FILE... -> one hash over this script and the given files
inputs_hash() {
    { echo "epoch=$EPOCH"; cat "$0" "$@"; } | sha256sum | cut -d' ' -f1
}
# fresh IMG HASH: true when IMG exists and was built from HASH and has not
# been modified since (size and mtime are part of the stamp).
fresh() {
    [ "$force" = 0 ] && [ -f "$out/$1" ] && [ -f "$out/.stamps/$1" ] &&
        [ "$(cat "$out/.stamps/$1")" = "$2 $(stat -c '%s %Y' "$out/$1")" ]
}
stamp() {
    echo "$2 $(stat -c '%s %Y' "$out/$1")" > "$out/.stamps/$1"
}

# ---------------------------------------------------------------- factory
# build_factory [IMG SIZE MKSTORE-ARGS...]: the factory root; with arguments, IMG also gets a
# Nix-store-shaped /nix from mkstore.py (for the bind-mode and refresh scenarios).
build_factory() {
    img=${1:-factory.img} size=${2:-64M}
    if [ $# -ge 2 ]; then shift 2; else set --; fi
    tmp=$(mktemp -d "$out/.factory.XXXXXX")
    root=$tmp/root
    mkdir -p "$root"
    for d in bin sbin usr/bin usr/sbin dev proc sys run tmp etc persist \
             nix/.ro-store nix/var/nix "nix/store/$NIX_HASH-hello-1.0/bin"; do
        mkdir -p "$root/$d"
    done
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    chmod 0755 "$root/bin/busybox"
    "$BUSYBOX" --list-full | while read -r app; do
        case $app in
            sbin/init|linuxrc|bin/busybox|"") continue ;;
        esac
        mkdir -p "$root/$(dirname "$app")"
        ln -sf /bin/busybox "$root/$app"
    done
    install -m 0755 "$HERE/stage2-reporter.sh" "$root/sbin/init"
    cat > "$root/nix/store/$NIX_HASH-hello-1.0/bin/hello" <<'HELLO'
#!/bin/sh
echo "Hello, world!"
HELLO
    chmod 0755 "$root/nix/store/$NIX_HASH-hello-1.0/bin/hello"
    chmod 0555 "$root/nix/store/$NIX_HASH-hello-1.0/bin" "$root/nix/store/$NIX_HASH-hello-1.0"
    chmod 1775 "$root/nix/store"
    printf 'NAME="factory test image"\nID=factory\n' > "$root/etc/os-release"
    echo factory > "$root/etc/hostname"
    printf 'root:x:0:0:root:/:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    find "$root" -exec touch -h -d "@$EPOCH" {} +
    if [ $# -gt 0 ]; then
        # After the touch: the store keeps Nix's mtime of 1.
        chmod u+w "$root/nix/store"
        python3 "$HERE/mkstore.py" "$root/nix" "$@"
    fi

    rm -f "$out/$img"
    truncate -s "$size" "$tmp/$img"
    mkfs.ext4 -q -F -L factory -U "$FACTORY_UUID" \
        -E "hash_seed=$FACTORY_HASH_SEED,root_owner=0:0" \
        -d "$root" "$tmp/$img"
    # mkfs.ext4 -d does not keep hard links between symlinks; a Nix store has them.
    [ $# -eq 0 ] || say "$img: $(python3 "$HERE/ext4links.py" "$tmp/$img" "$root") symlink names re-linked"
    mv "$tmp/$img" "$out/$img"
    chmod -R u+w "$tmp" 2>/dev/null
    rm -rf "$tmp"
}

h=$(inputs_hash "$HERE/stage2-reporter.sh" "$BUSYBOX")
if fresh factory.img "$h"; then
    say "factory.img up to date"
else
    say "building factory.img"
    build_factory
    stamp factory.img "$h"
fi

# Bind mode and factory refresh: a store of 40 paths (~2400 files, hard links, 4 large files),
# and a newer image with 8 more paths.
h=$(inputs_hash "$HERE/stage2-reporter.sh" "$BUSYBOX" "$HERE/mkstore.py" "$HERE/ext4links.py")
for v in "factory-store.img 0" "factory-store2.img 8"; do
    set -- $v
    if fresh "$1" "$h"; then
        say "$1 up to date"
    else
        say "building $1"
        build_factory "$1" 160M --paths 40 --files 60 --large 4 --extra "$2"
        stamp "$1" "$h"
    fi
done

# ---------------------------------------------------------------- btrfs
if fresh btrfs.img "$(inputs_hash)"; then
    say "btrfs.img up to date"
else
    say "building btrfs.img"
    rm -f "$out/btrfs.img" "$out/btrfs.img.tmp"
    truncate -s 256M "$out/btrfs.img.tmp"
    mkfs.btrfs -q -f -L persist "$out/btrfs.img.tmp" >/dev/null 2>&1 ||
        mkfs.btrfs -f -L persist "$out/btrfs.img.tmp"
    mv "$out/btrfs.img.tmp" "$out/btrfs.img"
    stamp btrfs.img "$(inputs_hash)"
fi

# ---------------------------------------------------------------- luks
if [ -z "$key" ]; then
    key=$out/test.key
    if [ ! -s "$key" ]; then
        say "generating $key"
        # 32 printable characters (letters and digits), no trailing newline:
        # cryptsetup --key-file uses the whole file as the passphrase.
        k=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
        (umask 077 && printf '%s' "$k" > "$key.tmp") && mv "$key.tmp" "$key"
    fi
fi
[ -s "$key" ] || { echo "mkdisks.sh: key file $key is empty" >&2; exit 1; }
key=$(cd "$(dirname "$key")" && pwd)/$(basename "$key")

# build_luks IMG KEY [ROOTDIR]: 256 MiB LUKS2 "persist" holding a Btrfs "persist" (with
# ROOTDIR's files when given).
build_luks() {
    tmpimg=$out/$1.tmp
    rm -f "$out/$1" "$tmpimg"
    truncate -s 256M "$tmpimg"
    # The file system must end before the last 32 MiB: reencrypt shifts the
    # data by the LUKS2 header and gives up --reduce-device-size at the end.
    if [ $# -ge 3 ]; then
        mkfs.btrfs -q -f -L persist -b 224M --rootdir "$3" "$tmpimg" >/dev/null 2>&1 ||
            mkfs.btrfs -f -L persist -b 224M --rootdir "$3" "$tmpimg"
    else
        mkfs.btrfs -q -f -L persist -b 224M "$tmpimg" >/dev/null 2>&1 ||
            mkfs.btrfs -f -L persist -b 224M "$tmpimg"
    fi
    cryptsetup reencrypt --batch-mode --encrypt --type luks2 \
        --reduce-device-size 32M --label persist \
        --cipher aes-xts-plain64 --key-size 512 \
        --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256 \
        --key-file "$2" "$tmpimg"
    cryptsetup open --test-passphrase --key-file "$2" "$tmpimg"
    mv "$tmpimg" "$out/$1"
}

h=$(inputs_hash "$key")
if fresh luks.img "$h"; then
    say "luks.img up to date"
else
    say "building luks.img"
    build_luks luks.img "$key"
    stamp luks.img "$h"
fi

# ---------------------------------------------------------------- strangers' disks
# Hostile-input scenarios: disks that look like ours ("persist" labels) but are not.
EVIL_REPO=https://evil.example.org/takeover.git
okey=$out/other.key
if [ ! -s "$okey" ]; then
    say "generating $okey"
    k=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    (umask 077 && printf '%s' "$k" > "$okey.tmp") && mv "$okey.tmp" "$okey"
fi
h=$(inputs_hash "$okey")
if fresh luks-other.img "$h"; then
    say "luks-other.img up to date"
else
    say "building luks-other.img"
    tmp=$(mktemp -d "$out/.other.XXXXXX")
    printf '{"repo":"%s"}\n' "$EVIL_REPO" > "$tmp/config.json"
    build_luks luks-other.img "$okey" "$tmp"
    rm -rf "$tmp"
    stamp luks-other.img "$h"
fi

h=$(inputs_hash)
if fresh attacker.img "$h"; then
    say "attacker.img up to date"
else
    say "building attacker.img"
    tmp=$(mktemp -d "$out/.attacker.XXXXXX")
    mkdir -p "$tmp/root/nix/upper/store" "$tmp/root/nix/work"
    printf '{"repo": "%s", "hostname": "pwned"}\n' "$EVIL_REPO" > "$tmp/root/config.json"
    echo "planted by a stranger's disk" > "$tmp/root/nix/upper/store/evil-marker"
    truncate -s 256M "$tmp/attacker.img"
    mkfs.btrfs -q -f -L persist --rootdir "$tmp/root" "$tmp/attacker.img" >/dev/null 2>&1 ||
        mkfs.btrfs -f -L persist --rootdir "$tmp/root" "$tmp/attacker.img"
    mv "$tmp/attacker.img" "$out/attacker.img"
    rm -rf "$tmp"
    stamp attacker.img "$h"
fi

echo "$out"
