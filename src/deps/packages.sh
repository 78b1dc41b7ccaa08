#!/usr/bin/env bash
# Makes sure the Debian packages that building and testing factory-init need are installed.
# As root it installs what is missing (apt-get); otherwise it names the command to run.
#   src/deps/packages.sh [build|test|all]     (default: all)
set -euo pipefail

BUILD=(gcc make pkg-config autoconf automake libtool autopoint gettext autoconf-archive
       libltdl-dev dpkg-dev apt debian-archive-keyring
       libjson-c-dev libargon2-dev libmbedtls-dev libpopt-dev libzstd-dev liblzma-dev
       zlib1g-dev nettle-dev
       libblkid-dev libmount-dev libcryptsetup-dev libkmod-dev libtss2-dev file binutils)
TEST=(libcmocka-dev clang python3 qemu-system-x86 qemu-utils busybox-static cryptsetup-bin
      btrfs-progs e2fsprogs zstd xz-utils kmod swtpm swtpm-tools tpm2-tools systemd
      libtss2-tcti-swtpm0 cpio util-linux libvirt-clients age rsync nix-bin debootstrap)

case "${1:-all}" in
build) want=("${BUILD[@]}") ;;
test) want=("${TEST[@]}") ;;
all) want=("${BUILD[@]}" "${TEST[@]}") ;;
*) echo "usage: $0 [build|test|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages; run as root: apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
