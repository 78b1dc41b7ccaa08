#!/bin/sh
# mksdinitrd.sh - a real systemd initrd (Debian forky: systemd 262, dracut 112, kernel 7.2) that
# runs factory-init in helper mode as the very unit text the NixOS module ships.
#
# Usage: qemu-tests/mksdinitrd.sh [options] OUTDIR
#   --name NAME          output OUTDIR/NAME.initrd (default: sdinitrd)
#   --binary FILE        the factory-init to install as /bin/factory-init
#                        (default $FACTORY_INIT_BIN, else build/factory-init.static)
#   --config FILE        embedded config, installed as /etc/vm-config.json
#   --file SRC:DST[:MODE]  one more file in the initrd (repeatable), e.g. a key file
#   --crypttab FILE      /etc/crypttab of the initrd (systemd-cryptsetup unlocks what it lists)
#   --dropin NAME:FILE   FILE as /etc/systemd/system/factory-init.service.d/NAME.conf
#   --force              rebuild even when the stamp says the initrd is current
#   -q                   only errors on stderr
#
# How: dracut 112 of the forky tree (qemu-tests/stack.sh tree forky) runs in a chroot of a
# throw-away overlayfs whose lower layer is that tree, read-only (the cached tree is never
# written); the 7.2 kernel's lib/modules/KVER is bound read-only into it.  The forky tree lacks
# cpio and zstd, which dracut needs: their forky packages are downloaded once (apt-get download
# with stack.sh's private forky lists, kept in $CACHE/sdinitrd-debs) and unpacked into the
# overlay.  A dracut module written into the overlay (99factory-init) installs:
#   /bin/factory-init                       the static binary
#   /etc/systemd/system/factory-init.service   nixos/render-unit factoryInit=/bin/factory-init
#                                           configFile=/etc/vm-config.json (byte for byte)
#   /etc/systemd/system/initrd-fs.target.wants/factory-init.service   (systemctl enable)
#   the kernel modules `factory-init --plan --kmoddir` lists (with dracut's dependencies)
#   and the optional config, files, crypttab and drop-ins.
# dracut modules: systemd systemd-initrd systemd-ask-password base factory-init (their
# dependencies: systemd-udevd, journald, tmpfiles, sysusers, udev-rules, shell), plus
# systemd-cryptsetup when --crypttab is given.  systemd is /init; /etc/initrd-release exists;
# the root comes from root= (systemd-fstab-generator's sysroot.mount).
#
# The initrd is cached: OUTDIR/.stamps/NAME.sdinitrd holds the hash of every input (this
# script, the binary, the rendered unit, the tree's package versions, the kernel, the module
# list and the optional files); a current stamp means no rebuild.  Prints the initrd's path as
# the last line of stdout; OUTDIR/NAME.sdinitrd-info has its size and build time ("size=N
# seconds=N cached=0|1"), OUTDIR/NAME.dracut.log dracut's output.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
PATH=$PATH:/sbin:/usr/sbin
CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

name=sdinitrd
binary=${FACTORY_INIT_BIN:-$TOP/build/factory-init.static}
config= crypttab= force=0 quiet=0
files= dropins=
nl='
'
die() { echo "mksdinitrd.sh: error: $*" >&2; exit 1; }
log() { [ "$quiet" = 1 ] || echo "mksdinitrd.sh: $*" >&2; }
while [ $# -gt 0 ]; do
    case $1 in
        --name) name=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --file) files="$files$2$nl"; shift 2 ;;
        --crypttab) crypttab=$2; shift 2 ;;
        --dropin) dropins="$dropins$2$nl"; shift 2 ;;
        --force) force=1; shift ;;
        -q) quiet=1; shift ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: mksdinitrd.sh [options] OUTDIR"
mkdir -p "$1/.stamps"
out=$(cd "$1" && pwd)
[ -x "$binary" ] || die "$binary missing"
binary=$(readlink -f "$binary")
case $name in */*|"") die "bad --name $name" ;; esac

tree=$("$HERE/stack.sh" -q tree forky | tail -n 1)
kdir=$("$HERE/stack.sh" -q kernel forky | tail -n 1)
kver=$(cat "$kdir/kver")
kmoddir=$kdir/lib/modules/$kver
[ -x "$tree/usr/bin/dracut" ] || die "no dracut in $tree"

# The modules factory-init loads, resolved against this kernel (built-in ones are left out).
modules=$("$binary" --plan --cmdline "" --kmoddir "$kmoddir" 2>/dev/null |
          python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["modules"]))')
[ -n "$modules" ] || die "factory-init --plan listed no modules"
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
"$TOP/nixos/render-unit" -o "$unit" factoryInit=/bin/factory-init configFile=/etc/vm-config.json

# ---- the stamp --------------------------------------------------------------------------------
sum() { sha256sum "$@" | cut -d' ' -f1; }
inputs() {
    echo "kver=$kver kdir=$kdir tree=$tree modules=$modules"
    sum "$0" "$binary" "$unit" "$tree/.versions" "$kmoddir/modules.dep"
    [ -z "$config" ] || { echo "config"; sum "$config"; }
    [ -z "$crypttab" ] || { echo "crypttab"; sum "$crypttab"; }
    printf '%s' "$files" | while IFS= read -r f; do
        [ -n "$f" ] && { echo "file ${f#*:}"; sum "${f%%:*}"; }
    done
    printf '%s' "$dropins" | while IFS= read -r f; do
        [ -n "$f" ] && { echo "dropin ${f%%:*}"; sum "${f#*:}"; }
    done
}
h=$(inputs | sha256sum | cut -d' ' -f1)
initrd=$out/$name.initrd
info=$out/$name.sdinitrd-info
st=$out/.stamps/$name.sdinitrd
if [ "$force" = 0 ] && [ -f "$initrd" ] && [ -f "$st" ] &&
   [ "$(cat "$st")" = "$h $(stat -c '%s %Y' "$initrd")" ]; then
    log "$name.initrd up to date ($(cat "$info" 2>/dev/null))"
    echo "$initrd"
    exit 0
fi

# ---- cpio and zstd for the chroot (forky packages, downloaded once) ---------------------------
debs=$CACHE/sdinitrd-debs
need_debs() {
    for p in cpio zstd; do
        ls "$debs"/${p}_*.deb >/dev/null 2>&1 || return 0
    done
    return 1
}
if need_debs; then
    A=$CACHE/apt-forky          # stack.sh's private forky lists (filled by `stack.sh kernel forky`)
    [ -f "$A/sources.list" ] || die "$A/sources.list missing (run qemu-tests/stack.sh kernel forky)"
    mkdir -p "$debs" "$A/empty.d"
    chmod 0777 "$debs"
    log "downloading forky's cpio and zstd into $debs"
    (cd "$debs" && apt-get -q -o Dir::Etc::sourcelist="$A/sources.list" \
        -o Dir::Etc::sourceparts="$A/empty.d" -o Dir::Etc::preferences=/dev/null \
        -o Dir::Etc::preferencesparts="$A/empty.d" -o Dir::State::Lists="$A/lists" \
        -o Dir::Cache="$A/cache" -o Dir::State::status=/dev/null -o Acquire::Languages=none \
        -o APT::Sandbox::User=root download cpio zstd >&2) || die "apt-get download cpio zstd failed"
fi

# ---- the throw-away overlay and the chroot ----------------------------------------------------
t0=$(date +%s.%N)
W=$(mktemp -d "$out/.sdinitrd-$name.XXXXXX")
M=$W/merged
cleanup() {
    rc=$?
    rm -f "$unit"
    if [ -d "$W" ]; then
        d=$(readlink -f "$W")
        awk -v d="$d" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
        rm -rf --one-file-system "$W"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$W/upper" "$W/work" "$M"
mount -t overlay overlay -o "lowerdir=$tree,upperdir=$W/upper,workdir=$W/work" "$M"
for deb in "$debs"/cpio_*.deb "$debs"/zstd_*.deb; do dpkg-deb -x "$deb" "$M"; done
mkdir -p "$M/usr/lib/modules/$kver"
mount --bind "$kmoddir" "$M/usr/lib/modules/$kver"
mount -o remount,bind,ro "$M/usr/lib/modules/$kver"
mount -t proc proc "$M/proc"
mount --bind /dev "$M/dev"

# Inputs, staged where the dracut module finds them.
S=$M/fi-inputs
mkdir -p "$S/files" "$S/dropins"
install -m 0755 "$binary" "$S/factory-init"
install -m 0644 "$unit" "$S/factory-init.service"
[ -z "$config" ] || install -m 0644 "$config" "$S/vm-config.json"
[ -z "$crypttab" ] || install -m 0644 "$crypttab" "$S/crypttab"
n=0
printf '%s' "$files" | while IFS= read -r f; do
    [ -n "$f" ] || continue
    n=$((n + 1))
    src=${f%%:*} rest=${f#*:}
    dst=${rest%%:*} mode=0644
    [ "$rest" = "$dst" ] || mode=${rest#*:}
    install -m "$mode" "$src" "$S/files/$n"
    echo "$n $mode $dst" >> "$S/files.list"
done
printf '%s' "$dropins" | while IFS= read -r f; do
    [ -n "$f" ] || continue
    install -m 0644 "${f#*:}" "$S/dropins/${f%%:*}.conf"
done
echo "$modules" > "$S/modules"

mkdir -p "$M/usr/lib/dracut/modules.d/99factory-init"
cat > "$M/usr/lib/dracut/modules.d/99factory-init/module-setup.sh" <<'EOF'
#!/bin/bash
# factory-init in helper mode, as the unit nixos/render-unit renders (written by mksdinitrd.sh).
check() { return 0; }
depends() { echo systemd systemd-initrd; }
installkernel() {
    hostonly='' instmods $(cat /fi-inputs/modules)
}
install() {
    inst_simple /fi-inputs/factory-init /bin/factory-init
    inst_simple /fi-inputs/factory-init.service /etc/systemd/system/factory-init.service
    $SYSTEMCTL -q --root "$initdir" enable factory-init.service
    [[ -f /fi-inputs/vm-config.json ]] && inst_simple /fi-inputs/vm-config.json /etc/vm-config.json
    [[ -f /fi-inputs/crypttab ]] && inst_simple /fi-inputs/crypttab /etc/crypttab
    local d
    for d in /fi-inputs/dropins/*.conf; do
        [[ -f $d ]] || continue
        inst_simple "$d" "/etc/systemd/system/factory-init.service.d/${d##*/}"
    done
    if [[ -f /fi-inputs/files.list ]]; then
        local n mode dst
        while read -r n mode dst; do
            inst_simple "/fi-inputs/files/$n" "$dst"
            chmod "$mode" "$initdir$dst"
        done < /fi-inputs/files.list
    fi
    # mkdir for ExecStartPre (the initrd's own; /sysroot/persist is on the root)
    inst_multiple mkdir
}
EOF
chmod 0755 "$M/usr/lib/dracut/modules.d/99factory-init/module-setup.sh"

dmods="systemd systemd-initrd systemd-ask-password base factory-init"
[ -z "$crypttab" ] || dmods="$dmods systemd-cryptsetup"
mkdir -p "$M/fi-empty.d"
log "dracut ($dmods) for $kver in a chroot of $tree (overlay)"
if ! chroot "$M" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        SOURCE_DATE_EPOCH=0 \
        dracut --force --quiet --no-hostonly --no-hostonly-cmdline --reproducible \
        --conf /dev/null --confdir /fi-empty.d --kver "$kver" \
        --modules "$dmods" --no-early-microcode --nofscks --compress zstd \
        /fi-out.initrd >"$out/$name.dracut.log" 2>&1; then
    tail -n 30 "$out/$name.dracut.log" >&2
    die "dracut failed (log: $out/$name.dracut.log)"
fi
cp "$M/fi-out.initrd" "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
t1=$(date +%s.%N)
secs=$(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }')
size=$(stat -c %s "$initrd")
echo "size=$size seconds=$secs" > "$info"
echo "$h $(stat -c '%s %Y' "$initrd")" > "$st"
log "$name.initrd: $size bytes, built in $secs s"
echo "$initrd"
