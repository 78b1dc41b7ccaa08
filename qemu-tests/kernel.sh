#!/bin/sh
# kernel.sh - fetch and unpack Debian bookworm's cloud kernel for the QEMU tests.
#
# Usage: qemu-tests/kernel.sh [-q]
#
# A wrapper for `qemu-tests/stack.sh [-q] kernel bookworm` (see stack.sh for
# trixie's and forky's kernels).  It resolves the linux-image-cloud-amd64 meta
# package against the host's package lists to the concrete linux-image-<kver>
# package, downloads it with `apt-get download` (nothing is installed),
# unpacks it with `dpkg-deb -x` into $CACHE/kernel/<kver>/, runs `depmod -b`
# on the unpacked tree (the .deb ships no modules.dep) and prints that
# directory.  The directory contains:
#   boot/vmlinuz-<kver>, boot/config-<kver>, lib/modules/<kver>/, kver, suite
# CACHE is ${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}.
# A finished unpack is marked by a .complete stamp; later calls print the
# directory without touching the network.  Offline (no apt metadata) the
# newest complete bookworm unpack in the cache is used.  Set FACTORY_KERNEL_PKG
# to pin a concrete package (e.g. linux-image-6.1.0-56-cloud-amd64).
# FACTORY_KERNEL_SUITE=trixie|forky makes it print that suite's kernel instead
# (context.py sets it for floor.sh, which asks kernel.sh for its kernel).
set -eu
q=
[ "${1:-}" = "-q" ] && q=-q
exec sh "$(dirname "$0")/stack.sh" $q kernel "${FACTORY_KERNEL_SUITE:-bookworm}"
