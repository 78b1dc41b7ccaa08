#!/bin/sh
# Stage-2 reporter: installed as /sbin/init on the factory test image.
#
# Runs as PID 1 after the initrd switched root.  Reports what it sees on
# the console, one item per line, each starting with "@@" so that
# qemu-tests/harness.py can pick them out of the kernel's console noise:
#   @@STAGE2 uptime=<s>     first thing printed
#   @@MOUNT <line>          each line of /proc/mounts
#   @@FILE <p> / @@| <line> / @@END <p>   contents of a file, or @@NOFILE <p>
#   @@STAT <mode> <uid> <gid> <p>         octal mode and owner of each of STAT_PATHS
#   @@SHA256 <hex> <p>      SHA-256 of each of SHA256_PATHS (never their contents)
#   @@MARKER found <c> | @@MARKER absent
#   @@MARKER written <c> | @@MARKER write-failed
#   @@TREE <dir> <all> <data> <paths> <inodes>  digests of a store (see tree_digest)
#   @@TYPE <kind> <mode> <uid> <gid> <p>  what each of TYPE_PATHS is, not following links
#                           (kind: file dir symlink fifo char block socket other)
#   @@LS <dir> <names>      the entries of /persist, then of /persist/nix
#   @@HOOK start / @@HOOK| <line> / @@HOOK rc=<n>   the test's stage-2 hook (see below)
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

for f in /run/factory-init/status.json /run/factory-init/plan.json /run/vm-config.json \
         /persist/config.json \
         /run/factory-init/metrics/factory-init.prom \
         /run/systemd/network/10-factory-init-static.network; do
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

# What the data disk tool (nixos/create-data-disk) puts on /persist.
STAT_PATHS="/persist /persist/config.json /persist/keys /persist/keys/host.agekey
            /persist/keys/host.agekey.pub /persist/nix"
SHA256_PATHS="/persist/keys/host.agekey /persist/keep-me"
# What stage 1 must never follow or open when stage 2 planted something else there.
TYPE_PATHS="/run/vm-config.json /persist/config.json /persist/config.json.bad /persist/nix
            /persist/nix/upper /persist/nix/work /persist/nix/store /persist/nix/.factory-image
            /persist/nix/.factory-init-store /persist/.nix-staging"
for p in $STAT_PATHS; do
    [ -e "$p" ] && echo "@@STAT $(stat -c '%a %u %g' "$p" 2>/dev/null) $p"
done
for p in $TYPE_PATHS; do
    if [ -L "$p" ]; then k=symlink
    elif [ -d "$p" ]; then k=dir
    elif [ -f "$p" ]; then k=file
    elif [ -p "$p" ]; then k=fifo
    elif [ -c "$p" ]; then k=char
    elif [ -b "$p" ]; then k=block
    elif [ -S "$p" ]; then k=socket
    elif [ -e "$p" ]; then k=other
    else continue
    fi
    # stat without -L describes the link itself; never open what is there.
    echo "@@TYPE $k $(stat -c '%a %u %g' "$p" 2>/dev/null) $p"
done
for p in $SHA256_PATHS; do
    if [ -f "$p" ] && h=$(sha256sum "$p" 2>/dev/null); then
        echo "@@SHA256 ${h%% *} $p"
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

tree_digest() {
    ( cd "$1" 2>/dev/null || exit 1
      # 1: everything (.links included) with link counts; 2: file contents; 3: the store
      # paths alone (no .links, no link counts, not the store directory itself), which a
      # refresh must make equal; 4: which names share an inode, for every file type (one
      # line per inode: its names, sorted).
      { find . -type d -exec stat -c '%n d %a %Y' {} +
        find . ! -type d -exec stat -c '%n %F %h %a %s %Y' {} +
        find . -type l | while IFS= read -r l; do echo "$l -> $(readlink "$l")"; done
      } 2>/dev/null | sort > /run/.tree
      md5sum < /run/.tree | cut -c1-32
      find . -path ./.links -prune -o -type f -exec md5sum {} + 2>/dev/null | sort -k2 |
          md5sum | cut -c1-32
      grep -v -e '^\./\.links' -e '^\. ' /run/.tree | sed -E 's/ (file|link|fifo|socket) [0-9]+ / \1 /' |
          md5sum | cut -c1-32
      find . ! -type d -exec stat -c '%i %n' {} + 2>/dev/null | sort -k2 |
          awk '{ g[$1] = g[$1] " " $2 } END { for (i in g) print g[i] }' | sort |
          md5sum | cut -c1-32
      rm -f /run/.tree ) | tr '\n' ' '
}
for d in /nix/store /nix/.ro-store/store; do
    [ -d "$d/.links" ] && echo "@@TREE $d $(tree_digest "$d")"
done
[ -d /persist ] && echo "@@LS /persist $(ls -A /persist 2>/dev/null | tr '\n' ' ')"
[ -d /persist/nix ] && [ ! -L /persist/nix ] &&
    echo "@@LS /persist/nix $(ls -A /persist/nix 2>/dev/null | tr '\n' ' ')"

# The test's stage-2 hook (harness.stage2_hook): a shell script in fw_cfg, run as root with
# everything above already reported, to plant what the next boot's stage 1 must survive. Its
# output (stdout and stderr) goes to the console as "@@HOOK| " lines. When fw_cfg also has
# opt/factory-test/bin-size, a disk starting with that binary is there, and the hook finds a
# copy of it, executable, at $FI_BIN (/run/fi-bin).
FWCFG=/sys/firmware/qemu_fw_cfg/by_name/opt/factory-test
if [ -r "$FWCFG/stage2/raw" ]; then
    echo "@@HOOK start"
    FI_BIN=
    # The binary comes on a disk of its own (fw_cfg reads megabytes too slowly under TCG).
    if [ -r "$FWCFG/bin-size/raw" ]; then
        n=$(cat "$FWCFG/bin-size/raw")
        for d in /dev/vd?; do
            [ "$(head -c 4 "$d" 2>/dev/null | tail -c 3)" = ELF ] || continue
            head -c "$n" "$d" >/run/fi-bin 2>/dev/null && chmod 755 /run/fi-bin &&
                FI_BIN=/run/fi-bin
        done
    fi
    export FI_BIN
    cat "$FWCFG/stage2/raw" >/run/fi-hook.sh 2>/dev/null
    { sh /run/fi-hook.sh </dev/null 2>&1; echo $? >/run/fi-hook.rc; } |
        while IFS= read -r line || [ -n "$line" ]; do
            echo "@@HOOK| $line"
        done
    echo "@@HOOK rc=$(cat /run/fi-hook.rc 2>/dev/null || echo none)"
    sync
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
