#!/bin/sh
# Stage-2 reporter: installed as /sbin/init on the factory test image.
#
# Runs as PID 1 after the initrd switched root.  Reports what it sees on
# the console, one item per line, each starting with "@@" so that
# qemu-tests/harness.py can pick them out of the kernel's console noise:
#   @@STAGE2 uptime=<s>     first thing printed
#   @@MOUNT <line>          each line of /proc/mounts
#   @@FILE <p> / @@| <line> / @@END <p>   contents of a file, or @@NOFILE <p>
#   @@MARKER found <c> | @@MARKER absent
#   @@MARKER written <c> | @@MARKER write-failed
#   @@PCR <n> <hex>         each SHA-256 PCR of the TPM, when the VM has one
#   @@KMSG <line>           each line of dmesg
#   @@DONE                  then the machine powers off
PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

# factory-init moves /dev /proc /sys /run into the new root; mount them
# only when they are missing.
[ -e /proc/self/stat ] || mount -t proc proc /proc 2>/dev/null
[ -e /dev/console ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
if [ -c /dev/console ]; then
    exec </dev/null >/dev/console 2>&1
fi

read -r up _ </proc/uptime
echo "@@STAGE2 uptime=$up"

[ -d /sys/kernel ] || mount -t sysfs sysfs /sys 2>/dev/null

while IFS= read -r line || [ -n "$line" ]; do
    echo "@@MOUNT $line"
done </proc/mounts

for f in /run/factory-init/status.json /run/vm-config.json /persist/config.json; do
    if [ -f "$f" ] && [ -r "$f" ]; then
        echo "@@FILE $f"
        while IFS= read -r line || [ -n "$line" ]; do
            echo "@@| $line"
        done <"$f"
        echo "@@END $f"
    else
        echo "@@NOFILE $f"
    fi
done

marker=/nix/var/factory-test/marker
if [ -f "$marker" ]; then
    echo "@@MARKER found $(cat "$marker" 2>/dev/null)"
else
    echo "@@MARKER absent"
fi
if mkdir -p "${marker%/*}" 2>/dev/null &&
   cat /proc/sys/kernel/random/boot_id >"$marker" 2>/dev/null; then
    sync
    echo "@@MARKER written $(cat "$marker" 2>/dev/null)"
else
    echo "@@MARKER write-failed"
fi

for f in /sys/class/tpm/tpm0/pcr-sha256/*; do
    [ -r "$f" ] && echo "@@PCR ${f##*/} $(cat "$f" 2>/dev/null)"
done

dmesg 2>/dev/null | while IFS= read -r line || [ -n "$line" ]; do
    echo "@@KMSG $line"
done

sync
echo "@@DONE"
poweroff -f
# poweroff should not return; if it does, make the kernel stop anyway
# (PID 1 exiting panics, and QEMU runs with -no-reboot).
exit 1
