#!/bin/sh
# mkforkyroot.sh - a factory root whose stage 2 is systemd (Debian forky, systemd 262).
#
# Usage: qemu-tests/mkforkyroot.sh [--force] [--kernel KDIR] [--factory-init BIN]
#        [--nix-store|--nix-refresh] OUTDIR
#
# Writes OUTDIR/forky-root.img: an ext4 image (label "factory", mkfs.ext4 -d: no root mounts,
# no loop devices) built from a COPY of the cached forky tree (qemu-tests/stack.sh tree forky;
# the cache is only read), laid out like mkdisks.sh's factory.img for factory-init:
#   /nix/store/<NIX_HASH>-hello-1.0/bin/hello (the same fake store as factory.img), /nix/store
#   mode 1775, an empty /nix/.ro-store and /persist, /nix/var/nix (the tree's, for nix-daemon);
#   /sbin/init -> systemd (the tree's own link).
# Read-only root: factory-init mounts /dev/vda read-only and systemd keeps it so (no "/" in
# fstab, no "rw" on the command line).  /etc/fstab puts a tmpfs on /var (the tree's /var is not
# copied; systemd-tmpfiles fills the tmpfs at boot); /tmp is systemd's tmp.mount; the journal is
# volatile (/run/log/journal).  /etc/.updated carries the /usr timestamp so that
# ConditionNeedsUpdate=/etc units (ldconfig.service) do not try to write /etc.
# No logins: getty@, serial-getty@, console-getty and autovt@ are masked; e2scrub_reap.service
# (nothing to reap on a read-only root, and slow under TCG) is not enabled.  Left out of the copy:
# /usr/share/{doc,man,info,locale}, /var/*, /run/*, /tmp/*.
# --kernel KDIR (a kernel of qemu-tests/kernel.sh: KDIR/lib/modules/KVER): virtio_net and its
# dependencies go into /lib/modules/KVER with their own depmod, so stage 2's udev loads the
# NIC driver (the tree has no kernel).  systemd-networkd is not enabled: a scenario that wants it
# boots with systemd.wants=systemd-networkd.service; /etc/systemd/network/99-factory-dhcp.network
# is the factory base's DHCP fallback (every physical Ethernet interface).
# --factory-init BIN: the static binary at /usr/local/bin/factory-init, so that stage 2 can run
# `factory-init status` (the reporter prints it: @@STATUSVIEW| <line>, @@STATUSVIEW rc=<n>).
# --nix-store: OUTDIR/forky-nix-root.img instead, whose /nix is the real store of
# mknixstore.sh (40 paths, its db.sqlite, profiles, gcroots, .links, nix-path-registration;
# hard links between symlinks restored by ext4links.py) and which carries nix-store-check.sh's
# Nix checks in /usr/lib/factory-test/nix (--guest-conf): with factory.test.nix=MODE:PHASE on
# the command line (MODE bind or overlay, PHASE first or second) the reporter runs them with
# forky's Nix on the /nix factory-init made and prints @@NIX| <line> and @@NIX rc=<n>.
# --nix-refresh: the same, OUTDIR/forky-nix-root-refresh.img, with mknixstore.sh's refresh
# variant (a newer factory image: 6 paths added, 6 removed).
# Two units of ours (in /etc/systemd/system, enabled in multi-user.target):
#   factory-test-reporter.service  Type=exec, After=multi-user.target: runs
#       /usr/lib/factory-test/reporter.sh (systemctl is-system-running --wait, then the @@
#       lines below on /dev/console, then sync and systemctl poweroff -ff).  Not oneshot: a
#       oneshot unit's start job would be part of the boot transaction it waits for.
#   factory-test-cryptsetup.service  Type=oneshot, ConditionKernelCommandLine=
#       factory.test.cryptsetup (=DEVICE, default /dev/vdc): systemd-cryptsetup attach ours
#       DEVICE - tpm2-device=auto,headless=true; prints @@CRYPTSETUP lines; detaches.
# Reporter lines (harness.parse_console understands the first group):
#   @@STAGE2 uptime=<s>  @@MOUNT <line>  @@FILE <p> / @@| <line> / @@END <p> | @@NOFILE <p>
#   @@MARKER found|absent|written|write-failed (as stage2-reporter.sh)  @@KMSG <dmesg line>
#   @@DONE
#   @@SYSTEMD state=<is-system-running>   @@SYSTEMD failed=<units>   @@SYSTEMD jobs=<n>
#   @@SYSTEMD userspace_us=<n> finish_us=<n> (monotonic: systemd started, boot finished)
#   @@SYSTEMD analyze=<systemd-analyze time>  @@SYSTEMD blame <line> (the 12 slowest units)
#   @@SYSTEMD unit <name> <ActiveState> <Result>
#   @@JOURNAL prio=<PRIORITY> <json>  each journal entry of this boot that mentions factory-init
#       (journalctl -b -o json with a few fields)
#   @@PCR <n> <hex>  the SHA-256 PCRs, with a TPM
#   @@CRYPTSETUP| <line> / @@CRYPTSETUP rc=<n> mapper=yes|no detach=<n> (the cryptsetup unit)
#   @@NET wait=<rc>  @@NET addr <ip -o addr line>  @@NET route <ip route line>
#   @@NET dns <networkctl status line>  (when systemd-networkd runs: after
#       systemd-networkd-wait-online --timeout=60 -4 returned rc)
# Rebuilt only when its inputs (this script, the tree's package list and completion stamp)
# changed or the image was modified (stamp in OUTDIR/.stamps/, as mkdisks.sh does).  Prints
# the image path as the last line of stdout.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PATH=$PATH:/sbin:/usr/sbin
force=0
kdir=
fibin=
nixstore=0
while [ $# -gt 0 ]; do
    case $1 in
        --force) force=1; shift ;;
        --kernel) kdir=$2; shift 2 ;;
        --factory-init) fibin=$2; shift 2 ;;
        --nix-store) nixstore=1; shift ;;
        --nix-refresh) nixstore=refresh; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "mkforkyroot.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || { echo "usage: mkforkyroot.sh [--force] [--kernel KDIR] OUTDIR" >&2; exit 2; }
kver=
if [ -n "$kdir" ]; then
    kver=$(ls "$kdir/lib/modules" | head -n 1)
    [ -n "$kver" ] || { echo "mkforkyroot.sh: no lib/modules in $kdir" >&2; exit 1; }
fi
out=$1
mkdir -p "$out/.stamps"
out=$(cd "$out" && pwd)
img=forky-root.img
nixbase=
if [ "$nixstore" != 0 ]; then
    img=forky-nix-root.img variant=base
    [ "$nixstore" = 1 ] || img=forky-nix-root-refresh.img variant=refresh
    nixbase=$(sh "$HERE/mknixstore.sh" -q --variant $variant | tail -n 1)
    [ -f "$nixbase/.complete" ] || { echo "mkforkyroot.sh: no store from mknixstore.sh" >&2; exit 1; }
fi

EPOCH=${SOURCE_DATE_EPOCH:-0}
# Fixed identifiers (another UUID than factory.img's); NIX_HASH is mkdisks.sh's fake store path.
ROOT_UUID=6f6b1c52-3d1e-4a8e-9c61-0f2d7e5a1c62
ROOT_HASH_SEED=1b0e6a0d-7c3f-4f59-8d0e-5a9b2c4e6f62
NIX_HASH=9m2kfvq0n6x1b8l4s7ahy3jw5gcdpzr0

say() { echo "mkforkyroot.sh: $*" >&2; }

tree=$("$HERE/stack.sh" -q tree forky | tail -n 1)
[ -x "$tree/usr/lib/systemd/systemd" ] && [ -f "$tree/.complete" ] ||
    { say "no complete forky tree at $tree"; exit 1; }

h=$({ echo "epoch=$EPOCH kver=$kver"; cat "$0" "$tree/.versions"; stat -c '%Y' "$tree/.complete"
      [ -z "$fibin" ] || sha256sum <"$fibin"
      [ -z "$nixbase" ] || cat "$nixbase/manifest.json" "$HERE/nix-store-check.sh" "$HERE/ext4links.py"; } |
    sha256sum | cut -d' ' -f1)
if [ "$force" = 0 ] && [ -f "$out/$img" ] && [ -f "$out/.stamps/$img" ] &&
   [ "$(cat "$out/.stamps/$img")" = "$h $(stat -c '%s %Y' "$out/$img")" ]; then
    say "$img up to date"
    echo "$out/$img"
    exit 0
fi
say "building $img from $tree"
start=$(date +%s)

tmp=$(mktemp -d "$out/.forky.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir "$root"
# The copy (the cached tree is never written).
tar -C "$tree" --xattrs --numeric-owner \
    --exclude=./.complete --exclude=./.versions --exclude=./.debootstrap.log \
    --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
    --exclude='./usr/share/info/*' --exclude='./usr/share/locale/*' \
    --exclude='./var/*' --exclude='./run/*' --exclude='./tmp/*' \
    -cf - . | tar -C "$root" --xattrs --numeric-owner -xpf -

# ---- the factory layout (as factory.img)
mkdir -p "$root/persist" "$root/nix/.ro-store" "$root/nix/var/nix" \
    "$root/nix/store/$NIX_HASH-hello-1.0/bin"
cat > "$root/nix/store/$NIX_HASH-hello-1.0/bin/hello" <<'HELLO'
#!/bin/sh
echo "Hello, world!"
HELLO
chmod 0755 "$root/nix/store/$NIX_HASH-hello-1.0/bin/hello"
chmod 0555 "$root/nix/store/$NIX_HASH-hello-1.0/bin" "$root/nix/store/$NIX_HASH-hello-1.0"
chmod 1775 "$root/nix/store"
echo factory > "$root/etc/hostname"

# ---- factory-init itself, for `factory-init status` in stage 2
if [ -n "$fibin" ]; then
    install -D -m 0755 "$fibin" "$root/usr/local/bin/factory-init"
fi

# ---- the NIC driver for stage 2 (the tree has no kernel), and the DHCP fallback
if [ -n "$kver" ]; then
    src=$kdir/lib/modules/$kver
    dst=$root/lib/modules/$kver
    mkdir -p "$dst"
    for m in virtio_net net_failover failover; do
        f=$(find "$src/kernel" -name "$m.ko*" | head -n 1)
        [ -n "$f" ] || continue          # built in
        mkdir -p "$dst/$(dirname "${f#$src/}")"
        cp "$f" "$dst/${f#$src/}"
    done
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ ! -f "$src/$f" ] || cp "$src/$f" "$dst/"
    done
    depmod -b "$root" "$kver"
fi
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/99-factory-dhcp.network" <<'EOF'
# The factory base's fallback (nixos/factory-base.nix): DHCP on every physical Ethernet
# interface that no earlier file (factory-init's 10-factory-init-static.network) takes.
[Match]
Type=ether
Kind=!*

[Network]
DHCP=yes
EOF

# ---- read-only root
cat > "$root/etc/fstab" <<'EOF'
# factory root (forky-root.img): / is mounted read-only by factory-init and stays so.
tmpfs /var tmpfs mode=0755,nosuid,nodev 0 0
EOF

# ---- no logins
for u in getty@.service serial-getty@.service console-getty.service autovt@.service; do
    rm -f "$root/etc/systemd/system/$u"
    ln -s /dev/null "$root/etc/systemd/system/$u"
done
rm -rf "$root/etc/systemd/system/getty.target.wants"
# Nothing to reap on a read-only root (e2scrub's LVM snapshots), and it is slow under TCG.
rm -f "$root/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service"

# ---- the test units
mkdir -p "$root/usr/lib/factory-test" "$root/etc/systemd/system/multi-user.target.wants"
cat > "$root/usr/lib/factory-test/reporter.sh" <<'EOF'
#!/bin/sh
# factory-test-reporter.service: waits for the boot to finish, reports on /dev/console in
# the @@ lines of qemu-tests (see mkforkyroot.sh), powers off.
exec </dev/null >/dev/console 2>&1
read -r up _ </proc/uptime
echo "@@STAGE2 uptime=$up systemd"
state=$(timeout 600 systemctl is-system-running --wait 2>/dev/null)
echo "@@SYSTEMD state=$state"
echo "@@SYSTEMD failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null |
    cut -d' ' -f1 | tr '\n' ' ')"
echo "@@SYSTEMD jobs=$(systemctl list-jobs --no-legend 2>/dev/null | grep -c .)"
echo "@@SYSTEMD userspace_us=$(systemctl show -P UserspaceTimestampMonotonic)" \
    "finish_us=$(systemctl show -P FinishTimestampMonotonic)"
echo "@@SYSTEMD analyze=$(systemd-analyze time 2>&1 | head -n 1)"
systemd-analyze blame --no-pager 2>/dev/null | head -n 12 | while IFS= read -r line; do
    echo "@@SYSTEMD blame $line"
done
for u in nix-daemon.socket nix-daemon.service systemd-journald.service var.mount tmp.mount \
         factory-test-cryptsetup.service; do
    echo "@@SYSTEMD unit $u $(systemctl show -P ActiveState "$u") $(systemctl show -P Result "$u")"
done
while IFS= read -r line || [ -n "$line" ]; do
    echo "@@MOUNT $line"
done </proc/mounts
for f in /run/factory-init/status.json /run/vm-config.json /persist/config.json \
         /run/factory-init/metrics/factory-init.prom; do
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
# factory.test.nix=MODE:PHASE (--nix-store): nix-store-check.sh's Nix checks on this /nix.
nixt=
for w in $(cat /proc/cmdline); do
    case $w in factory.test.nix=?*:?*) nixt=${w#*=} ;; esac
done
if [ -n "$nixt" ] && [ -d /usr/lib/factory-test/nix ]; then
    nmode=${nixt%%:*} nconf=nix.conf
    [ "$nmode" != overlay ] || nconf=nix-overlay.conf
    mkdir -p /tmp/conf && cp /usr/lib/factory-test/nix/* /tmp/conf/
    env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 sh /tmp/conf/inner.sh "$nmode" "$nconf" "${nixt#*:}" \
        >/run/fi-nix.out 2>&1
    rc=$?
    sed 's/^/@@NIX| /' /run/fi-nix.out
    echo "@@NIX rc=$rc"
fi
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
# factory-init's records as the journal keeps them (read from /dev/kmsg by journald).
journalctl -b -o json --no-pager \
    --output-fields=PRIORITY,SYSLOG_FACILITY,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_TRANSPORT,_SOURCE_MONOTONIC_TIMESTAMP,MESSAGE \
    2>/dev/null | grep -F factory-init | while IFS= read -r j; do
    p=$(printf '%s\n' "$j" | sed -n 's/.*"PRIORITY":"\([0-9]*\)".*/\1/p')
    echo "@@JOURNAL prio=${p:-?} $j"
done
for f in /sys/class/tpm/tpm0/pcr-sha256/*; do
    [ -r "$f" ] && echo "@@PCR ${f##*/} $(cat "$f" 2>/dev/null)"
done
if [ -x /usr/local/bin/factory-init ]; then
    /usr/local/bin/factory-init status >/run/fi-status.out 2>&1
    rc=$?
    sed 's/^/@@STATUSVIEW| /' /run/fi-status.out
    echo "@@STATUSVIEW rc=$rc"
fi
if [ "$(systemctl show -P ActiveState systemd-networkd.service)" = active ]; then
    /usr/lib/systemd/systemd-networkd-wait-online --timeout=60 -4 >/dev/null 2>&1
    echo "@@NET wait=$?"
    ip -o addr show 2>&1 | while IFS= read -r line; do echo "@@NET addr $line"; done
    ip route show 2>&1 | while IFS= read -r line; do echo "@@NET route $line"; done
    networkctl status --no-pager 2>&1 | grep -i dns | while IFS= read -r line; do
        echo "@@NET dns $line"
    done
fi
dmesg 2>/dev/null | while IFS= read -r line || [ -n "$line" ]; do
    echo "@@KMSG $line"
done
sync
echo "@@DONE"
systemctl poweroff -ff
EOF
cat > "$root/usr/lib/factory-test/cryptsetup.sh" <<'EOF'
#!/bin/sh
# factory-test-cryptsetup.service: systemd-cryptsetup opens DEVICE (factory.test.cryptsetup=
# on the kernel command line, default /dev/vdc) with its TPM2 token, headless.
exec </dev/null >/dev/console 2>&1
dev=/dev/vdc
for w in $(cat /proc/cmdline); do
    case $w in factory.test.cryptsetup=?*) dev=${w#*=} ;; esac
done
i=0
while [ ! -b "$dev" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
/usr/lib/systemd/systemd-cryptsetup attach ours "$dev" - tpm2-device=auto,headless=true \
    >/run/fi-cryptsetup.out 2>&1
rc=$?
sed 's/^/@@CRYPTSETUP| /' /run/fi-cryptsetup.out
if [ -e /dev/mapper/ours ]; then m=yes; else m=no; fi
d=-
if [ $m = yes ]; then
    /usr/lib/systemd/systemd-cryptsetup detach ours >/run/fi-cryptsetup.out 2>&1
    d=$?
    sed 's/^/@@CRYPTSETUP| /' /run/fi-cryptsetup.out
fi
echo "@@CRYPTSETUP rc=$rc mapper=$m detach=$d device=$dev"
exit 0
EOF
chmod 0755 "$root/usr/lib/factory-test/reporter.sh" "$root/usr/lib/factory-test/cryptsetup.sh"
cat > "$root/etc/systemd/system/factory-test-reporter.service" <<'EOF'
[Unit]
Description=factory test reporter (@@ lines on the console, then power off)
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/lib/factory-test/reporter.sh
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
EOF
cat > "$root/etc/systemd/system/factory-test-cryptsetup.service" <<'EOF'
[Unit]
Description=factory test: systemd-cryptsetup opens a disk with our TPM2 token
ConditionKernelCommandLine=factory.test.cryptsetup
After=systemd-udevd.service tpm2.target
Before=multi-user.target factory-test-reporter.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/factory-test/cryptsetup.sh
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
EOF
for u in factory-test-reporter.service factory-test-cryptsetup.service; do
    ln -sf "../$u" "$root/etc/systemd/system/multi-user.target.wants/$u"
done

# ---- fixed times; ConditionNeedsUpdate=/etc sees /etc as up to date with /usr
find "$root" -exec touch -h -d "@$EPOCH" {} +
printf 'TIMESTAMP_NSEC=%s000000000\n' "$EPOCH" > "$root/etc/.updated"
touch -d "@$EPOCH" "$root/etc/.updated" "$root/etc"

# ---- the real store (after the times were fixed: it keeps Nix's own), and the Nix checks
if [ -n "$nixbase" ]; then
    rm -rf "$root/nix/store" "$root/nix/var"
    cp -a "$nixbase/nix/." "$root/nix/"
    sh "$HERE/nix-store-check.sh" --guest-conf "$root/usr/lib/factory-test/nix"
fi

# ---- the image: the tree's size plus a margin
kib=$(du -sk --apparent-size "$root" | cut -f1)
files=$(find "$root" | wc -l)
# ext4 with 1 KiB blocks (mke2fs's "small" type): ~3% metadata, 8 MiB journal; ~40 MiB free.
size_mib=$(( (kib * 105 / 100 + files * 2) / 1024 + 32 ))
truncate -s "${size_mib}M" "$tmp/$img"
mkfs.ext4 -q -F -L factory -U "$ROOT_UUID" -N $((files + 4096)) \
    -E "hash_seed=$ROOT_HASH_SEED,root_owner=0:0" -d "$root" "$tmp/$img"
[ -z "$nixbase" ] || say "$img: $(python3 "$HERE/ext4links.py" "$tmp/$img" "$root") symlink names re-linked"
rm -f "$out/$img"
mv "$tmp/$img" "$out/$img"
echo "$h $(stat -c '%s %Y' "$out/$img")" > "$out/.stamps/$img"
say "$img: ${size_mib} MiB ($kib KiB in $files files), $(( $(date +%s) - start )) s"
echo "$out/$img"
