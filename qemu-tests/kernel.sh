#!/bin/sh
# kernel.sh - fetch and unpack Debian's cloud kernel for the QEMU tests.
#
# Usage: qemu-tests/kernel.sh [-q]
#
# Resolves the linux-image-cloud-amd64 meta package to the concrete
# linux-image-<kver> package, downloads it with `apt-get download` (nothing is
# installed), unpacks it with `dpkg-deb -x` into $CACHE/kernel/<kver>/, runs
# `depmod -b` on the unpacked tree (the .deb ships no modules.dep) and prints
# that directory.  The directory contains:
#   boot/vmlinuz-<kver>, boot/config-<kver>, lib/modules/<kver>/, kver
# CACHE is ${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}.
# A finished unpack is marked by a .complete stamp; later calls print the
# directory without touching the network.  Set FACTORY_KERNEL_PKG to pin a
# concrete package (e.g. linux-image-6.1.0-56-cloud-amd64).
set -eu

CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
META=${FACTORY_KERNEL_META:-linux-image-cloud-amd64}
quiet=0
[ "${1:-}" = "-q" ] && quiet=1
log() { [ "$quiet" = 1 ] || echo "kernel.sh: $*" >&2; }
die() { echo "kernel.sh: error: $*" >&2; exit 1; }

pkg=${FACTORY_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
    # The meta package depends on exactly one linux-image-<kver> package.
    # apt-cache takes ~1 s when apt keeps no pkgcache.bin, so remember the
    # answer keyed by the state of the package lists.
    sig=$( (echo "$META"; stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* 2>/dev/null) |
          cksum | cut -d' ' -f1)
    resolved=$CACHE/kernel/resolved
    if [ -f "$resolved" ] && [ "$(cut -d' ' -f1 "$resolved")" = "$sig" ]; then
        pkg=$(cut -d' ' -f2 "$resolved")
    else
        pkg=$(apt-cache depends "$META" 2>/dev/null |
              sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1) || true
        if [ -n "$pkg" ]; then
            mkdir -p "$CACHE/kernel"
            echo "$sig $pkg" > "$resolved.tmp" && mv "$resolved.tmp" "$resolved"
        fi
    fi
fi
if [ -z "$pkg" ]; then
    # No apt metadata (offline, fresh container): fall back to the newest
    # complete unpack in the cache, if any.
    last=$(ls -d "$CACHE"/kernel/*/.complete 2>/dev/null | sort -V | tail -n 1)
    [ -n "$last" ] || die "cannot resolve $META (run apt-get update?)"
    dir=$(dirname "$last")
    log "apt metadata unavailable; using cached $dir"
    echo "$dir"
    exit 0
fi
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
dir=$CACHE/kernel/$kver

if [ -f "$dir/.complete" ]; then
    echo "$dir"
    exit 0
fi

command -v dpkg-deb >/dev/null || die "dpkg-deb missing"
command -v depmod >/dev/null || PATH=$PATH:/sbin:/usr/sbin
command -v depmod >/dev/null || die "depmod missing (apt-get install kmod)"

mkdir -p "$CACHE/kernel/debs"
tmp=$(mktemp -d "$CACHE/kernel/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

deb=$(ls "$CACHE"/kernel/debs/"${pkg}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$deb" ]; then
    log "downloading $pkg"
    # apt-get download writes into the current directory; _apt needs to be
    # able to write there, so download into a world-writable temp dir.
    chmod 0777 "$tmp"
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
    f=$(ls "$tmp"/*.deb | head -n 1)
    mv "$f" "$CACHE/kernel/debs/"
    deb=$CACHE/kernel/debs/$(basename "$f")
fi

log "unpacking $(basename "$deb")"
mkdir -p "$tmp/root"
dpkg-deb -x "$deb" "$tmp/root"
# usrmerge-style packages put modules under usr/lib; normalise to lib/.
if [ ! -d "$tmp/root/lib/modules" ] && [ -d "$tmp/root/usr/lib/modules" ]; then
    mkdir -p "$tmp/root/lib"
    mv "$tmp/root/usr/lib/modules" "$tmp/root/lib/modules"
fi
[ -d "$tmp/root/lib/modules/$kver" ] || die "no lib/modules/$kver in $deb"
[ -f "$tmp/root/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"

log "depmod -b"
depmod -b "$tmp/root" "$kver"
echo "$kver" > "$tmp/root/kver"
: > "$tmp/root/.complete"

rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$tmp/root" "$dir"
echo "$dir"
