#!/bin/sh
# validate.sh - checks the libvirt examples against libvirt's schemas (make examples-check).
# Fails when virt-xml-validate (Debian: libvirt-clients) is missing rather than skipping.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
command -v virt-xml-validate >/dev/null 2>&1 || {
    echo "validate.sh: virt-xml-validate missing (apt-get install libvirt-clients," \
         "or src/deps/packages.sh test)" >&2
    exit 1
}
fail=0
for f in "$HERE"/*.xml; do
    virt-xml-validate "$f" domain || fail=1
done
exit $fail
