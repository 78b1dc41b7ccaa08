#!/bin/sh
# stack.sh - fetch the Debian "stacks" the QEMU tests run against.
#
# Usage: qemu-tests/stack.sh [-q] tree SUITE     (SUITE: forky | trixie)
#        qemu-tests/stack.sh [-q] kernel SUITE   (SUITE: bookworm | trixie | forky)
#
# tree SUITE
#   A debootstrap --variant=minbase tree of SUITE at $CACHE/trees/SUITE, with
#   systemd, cryptsetup, tpm2-tools, dracut, nix-bin, ... (TREE_PKGS below).
#   bookworm's debootstrap has no forky script; sid's works for both suites.
#   DIR/.versions lists the installed packages ("name version", dpkg-query).
#
# kernel SUITE
#   Debian's cloud kernel of SUITE, unpacked (nothing is installed) into
#   $CACHE/kernel/<kver>/, which contains
#     boot/vmlinuz-<kver>, boot/config-<kver>, lib/modules/<kver>/ (depmod -b
#     has been run), kver, suite
#   bookworm is the host's suite: it uses the host's package lists, exactly as
#   qemu-tests/kernel.sh always did (kernel.sh is now a wrapper for
#   `stack.sh kernel bookworm`).  trixie and forky use private package lists
#   in $CACHE/apt-SUITE/ and never touch the host's apt state.  forky's kernel
#   is split: linux-image-<kver> is nearly empty and depends on the packages
#   that carry the files (linux-binary-<kver>, linux-modules-<kver>, ...);
#   every dependency of the image package whose name contains <kver> is
#   unpacked into the same root (the file debs lists them), and the vmlinuz,
#   config and System.map they put in lib/modules/<kver>/ are hard-linked to
#   the boot/ names above.
#   Offline (no package lists can be fetched or resolved, or the .deb cannot
#   be downloaded) the newest complete unpack recorded for SUITE is used.
#
# Both print the resulting directory as the last line of stdout; -q keeps
# stderr quiet except for errors.  CACHE is
# ${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}.  A finished directory is
# marked by a .complete stamp and built in a temp dir renamed into place, so
# an interrupted run never leaves a half directory that looks finished; later
# calls print it without touching the network (kernel: for trixie/forky the
# package lists are refreshed at most every STACK_APT_MAX_AGE seconds, default
# 6 h, to notice a new kernel version).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# FACTORY_KERNEL_PKG (pin a concrete linux-image-<kver> package),
# FACTORY_KERNEL_META (default linux-image-cloud-amd64).
set -eu

CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
META=${FACTORY_KERNEL_META:-linux-image-cloud-amd64}
APT_MAX_AGE=${STACK_APT_MAX_AGE:-21600}
PATH=$PATH:/sbin:/usr/sbin   # depmod, debootstrap, chroot

quiet=0
if [ "${1:-}" = "-q" ]; then quiet=1; shift; fi
log() { [ "$quiet" = 1 ] || echo "stack.sh: $*" >&2; }
die() { echo "stack.sh: error: $*" >&2; exit 1; }
usage() { die "usage: stack.sh [-q] tree forky|trixie | kernel bookworm|trixie|forky"; }

# ---- cleanup of temp dirs (and of mounts under them) -------------------------
# Only one temp dir per run; on any exit its mounts (a chroot's /proc) are
# unmounted, deepest first, before it is removed; rm stays on this file system
# so a mount that could not be undone is never recursed into.
TMP=
cleanup() {
    rc=$?
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        umount_under "$TMP"
        rm -rf --one-file-system "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

umount_under() {  # DIR: unmount everything mounted at or below DIR
    d=$(readlink -f "$1")
    awk -v d="$d" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts |
        sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
}

# ---- private apt configuration for one suite ---------------------------------
# $CACHE/apt-SUITE/{sources.list,lists,cache}.  Dir::State::status=/dev/null:
# nothing counts as installed, so apt-cache answers about the archive only.
apt_setup() {  # SUITE
    A=$CACHE/apt-$1
    mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/empty.d"
    echo "deb [signed-by=$KEYRING] $MIRROR $1 main" > "$A/sources.list"
}

# apt-get / apt-cache with the lists of the suite apt_setup chose ($A).
sapt() {  # apt-get|apt-cache ARGS...
    cmd=$1; shift
    "$cmd" -o "Dir::Etc::sourcelist=$A/sources.list" \
        -o "Dir::Etc::sourceparts=$A/empty.d" \
        -o Dir::Etc::preferences=/dev/null \
        -o "Dir::Etc::preferencesparts=$A/empty.d" \
        -o "Dir::State::Lists=$A/lists" \
        -o "Dir::Cache=$A/cache" \
        -o Dir::State::status=/dev/null \
        -o Acquire::Languages=none \
        -o APT::Sandbox::User=root "$@"
}
sapt_get() { sapt apt-get "$@"; }
sapt_cache() { sapt apt-cache "$@"; }

# Refresh the suite's lists when missing or older than APT_MAX_AGE.
# Returns non-zero when there are no usable lists at all.
apt_update() {
    stamp=$A/lists/.updated
    if [ ! -f "$stamp" ] ||
       [ $(( $(date +%s) - $(stat -c %Y "$stamp") )) -gt "$APT_MAX_AGE" ]; then
        log "updating private package lists in $A"
        if sapt_get -q update >"$A/update.log" 2>&1 &&
           ! grep -q '^[WE]: Failed to fetch' "$A/update.log"; then
            touch "$stamp"
        else
            log "apt-get update failed (offline?), see $A/update.log"
        fi
    fi
    ls "$A"/lists/*_Packages* >/dev/null 2>&1
}

# Candidate version of package $1 in the suite ("" when it does not exist).
candidate() {
    sapt_cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '^(none)$' || true
}

# =============================================================================
# tree SUITE
# =============================================================================
# nix-bin is the one package installed separately (apt-get in the chroot) when
# debootstrap cannot configure it; see tree_cmd.
TREE_PKGS="systemd systemd-sysv systemd-cryptsetup cryptsetup-bin tpm2-tools
libtss2-tcti-swtpm0 kmod udev dracut iproute2 procps nix-bin"

tree_cmd() {
    suite=$1
    case $suite in forky|trixie) ;; *) die "tree: unsupported suite $suite (forky|trixie)" ;; esac
    dir=$CACHE/trees/$suite
    if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
    # One builder per suite: a second caller waits, then finds .complete.
    mkdir -p "$CACHE/trees"
    exec 9>"$CACHE/trees/.lock-$suite"
    flock 9
    if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi
    # A directory without the stamp is a leftover of a tool other than this
    # one (this script only renames finished trees into place): keep it.
    [ ! -e "$dir" ] || die "$dir exists but is not complete; move it away"

    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap on the host (bookworm package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
            die "apt-get install debootstrap failed"
    fi
    script=/usr/share/debootstrap/scripts/sid
    [ -f "$script" ] || die "$script missing"

    # Map the package names onto the suite: the 64-bit time_t transition
    # renamed some libraries (trixie and forky ship libtss2-tcti-swtpm0t64,
    # no libtss2-tcti-swtpm0).  A name with no such counterpart is dropped
    # with a warning rather than failing the whole tree.  Measured 2026-12:
    # forky and trixie have every package of TREE_PKGS (the swtpm TCTI as
    # libtss2-tcti-swtpm0t64); nothing is dropped.
    apt_setup "$suite"
    apt_update || die "no package lists for $suite (offline?)"
    pkgs=
    for p in $TREE_PKGS; do
        if [ -n "$(candidate "$p")" ]; then pkgs="$pkgs $p"
        elif [ -n "$(candidate "${p}t64")" ]; then pkgs="$pkgs ${p}t64"
        else log "warning: $p does not exist in $suite; left out"
        fi
    done
    base=$(echo $pkgs | sed 's/ *nix-bin//')        # everything but nix-bin
    has_nix=0; case " $pkgs " in *" nix-bin "*) has_nix=1 ;; esac

    TMP=$(mktemp -d "$CACHE/trees/.tmp-$suite.XXXXXX")
    root=$TMP/root
    dlog=$TMP/debootstrap.log
    # Downloaded .debs are kept across attempts (and later rebuilds) here.
    debs=$CACHE/trees/debs-$suite
    mkdir -p "$debs"
    t0=$(date +%s)
    log "debootstrap $suite (minbase) into $TMP"
    if debootstrap --variant=minbase --cache-dir="$debs" --include="$(echo $pkgs | tr ' ' ,)" \
            "$suite" "$root" "$MIRROR" "$script" >"$dlog" 2>&1; then
        :
    elif [ "$has_nix" = 1 ]; then
        # nix-bin cannot be configured by debootstrap (seen on trixie and
        # forky, 2026-12): its dependency libdbd-sqlite3-perl needs the
        # virtual package perl-dbdabi-94, which debootstrap's resolver does not
        # pull in (apt does: libdbi-perl), and its postinst reads
        # /proc/self/exe, which debootstrap does not mount.  Start over without
        # it, then apt-get install it in the chroot with /proc mounted.  Both
        # debootstrap logs are kept for a look.
        log "debootstrap with nix-bin failed ($(tail -n 1 "$dlog")); retrying without," \
            "log in $CACHE/trees/debootstrap-$suite-failed.log"
        { cat "$dlog"; echo "---- $root/debootstrap/debootstrap.log:"
          cat "$root/debootstrap/debootstrap.log" 2>/dev/null || true
        } > "$CACHE/trees/debootstrap-$suite-failed.log"
        umount_under "$root"
        rm -rf --one-file-system "$root"
        debootstrap --variant=minbase --cache-dir="$debs" --include="$(echo $base | tr ' ' ,)" \
            "$suite" "$root" "$MIRROR" "$script" >"$dlog" 2>&1 ||
            die "debootstrap failed: $(tail -n 5 "$dlog")"
        log "installing nix-bin in the chroot with /proc mounted"
        mount -t proc proc "$root/proc"      # the EXIT trap unmounts it on failure
        DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q nix-bin \
            >>"$dlog" 2>&1 || die "apt-get install nix-bin failed: $(tail -n 5 "$dlog")"
        umount "$root/proc"
    else
        die "debootstrap failed: $(tail -n 5 "$dlog")"
    fi
    chroot "$root" apt-get clean >/dev/null 2>&1 || true
    umount_under "$root"     # debootstrap normally unmounts its own; be sure
    chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' | sort > "$root/.versions"
    cp "$dlog" "$root/.debootstrap.log"
    : > "$root/.complete"
    mv -T "$root" "$dir"     # atomic: $dir did not exist (no .complete above)
    log "tree $suite done in $(( $(date +%s) - t0 )) s, $(du -sh "$dir" | cut -f1)"
    echo "$dir"
}

# =============================================================================
# kernel SUITE
# =============================================================================

# Newest complete unpack recorded for SUITE (bookworm: also old unpacks made
# before the suite file existed, which were all bookworm's).
cached_kernel() {  # SUITE
    for c in "$CACHE"/kernel/*/.complete; do
        [ -f "$c" ] || continue
        d=$(dirname "$c")
        s=$(cat "$d/suite" 2>/dev/null || echo bookworm)
        [ "$s" = "$1" ] && echo "$d"
    done | sort -V | tail -n 1
}

# Print the newest cached unpack of $suite as the answer, saying why ($1);
# false when there is none.
use_cached() {
    c=$(cached_kernel "$suite")
    [ -n "$c" ] || return 1
    log "$1; using cached $c"
    echo "$c"
}

# Print the linux-image-<kver> package the meta package depends on.
# apt-cache takes 1-2 s when apt keeps no pkgcache.bin, so the answer is
# remembered in RESOLVED, keyed by the state of the package lists in LISTS.
# bookworm uses the host's lists and $CACHE/kernel/resolved, as the old
# kernel.sh did; the other suites their private lists.
resolve_meta() {  # LISTS RESOLVED
    sig=$( (echo "$META"; stat -c '%n %s %Y' "$1"/*Packages* 2>/dev/null) |
          cksum | cut -d' ' -f1)
    if [ -f "$2" ] && [ "$(cut -d' ' -f1 "$2")" = "$sig" ]; then
        cut -d' ' -f2 "$2"
        return 0
    fi
    p=$(depends_of "$META" | grep '^linux-image-[0-9]' | head -n 1) || true
    if [ -n "$p" ]; then
        mkdir -p "$(dirname "$2")"
        echo "$sig $p" > "$2.tmp" && mv "$2.tmp" "$2"
    fi
    echo "$p"
}

# The (non-virtual) Depends: of package $1, one a line ("|Depends:" lines,
# alternatives, included; "<virtual>" ones and provider lines left out).
depends_of() {
    acache depends "$1" 2>/dev/null |
        sed -n 's/^ *|\{0,1\}Depends: \([^< ][^ ]*\)$/\1/p'
}

kernel_cmd() {
    suite=$1
    case $suite in bookworm|trixie|forky) ;; *) die "kernel: unsupported suite $suite" ;; esac
    # acache / dl: apt-cache and apt-get download with the suite's lists.
    q=-q; [ "$quiet" = 1 ] && q=-qq
    if [ "$suite" = bookworm ]; then
        acache() { apt-cache "$@"; }
        dl() { apt-get download $q -o APT::Sandbox::User=root "$@"; }
    else
        apt_setup "$suite"
        acache() { sapt_cache "$@"; }
        dl() { sapt_get download $q "$@"; }
    fi

    pkg=${FACTORY_KERNEL_PKG:-}
    if [ -z "$pkg" ]; then
        # The meta package depends on exactly one linux-image-<kver>.
        if [ "$suite" = bookworm ]; then
            pkg=$(resolve_meta /var/lib/apt/lists "$CACHE/kernel/resolved")
        elif apt_update; then
            pkg=$(resolve_meta "$A/lists" "$A/resolved")
        fi
    fi
    if [ -z "$pkg" ]; then
        # No package metadata (offline, fresh container): newest cached unpack.
        use_cached "package lists unavailable" ||
            die "cannot resolve $META for $suite (offline? run apt-get update?)"
        return 0
    fi
    kver=${pkg#linux-image-}
    kver=${kver%-unsigned}
    dir=$CACHE/kernel/$kver
    if [ -f "$dir/.complete" ]; then echo "$dir"; return 0; fi

    command -v dpkg-deb >/dev/null || die "dpkg-deb missing"
    command -v depmod >/dev/null || die "depmod missing (apt-get install kmod)"

    # The packages to unpack: the image package and, for split kernels, its
    # dependencies built from the same kernel (names containing <kver>, e.g.
    # linux-binary-<kver>, linux-modules-<kver>).  Tools like initramfs-tools,
    # kmod or linux-base are not part of the kernel and are left out.
    pkgs=$pkg
    if [ "$suite" != bookworm ]; then
        for d in $(depends_of "$pkg"); do
            case $d in *"$kver"*) pkgs="$pkgs $d" ;; esac
        done
    fi

    t0=$(date +%s)
    mkdir -p "$CACHE/kernel/debs"
    TMP=$(mktemp -d "$CACHE/kernel/.tmp.XXXXXX")
    debs=
    for p in $pkgs; do
        deb=$(ls "$CACHE"/kernel/debs/"${p}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -z "$deb" ]; then
            log "downloading $p ($suite)"
            # apt-get download writes into the current directory, which _apt
            # (or root with APT::Sandbox::User=root) must be able to write.
            mkdir -m 0777 "$TMP/dl"
            if ! (cd "$TMP/dl" && dl "$p" >&2); then
                # Lists name a kernel the archive cannot give us now (offline
                # with old lists): the newest cached unpack still serves,
                # unless the package was pinned.
                [ -z "${FACTORY_KERNEL_PKG:-}" ] && use_cached "apt-get download $p failed" ||
                    die "apt-get download $p failed"
                return 0
            fi
            f=$(ls "$TMP"/dl/*.deb | head -n 1)
            mv "$f" "$CACHE/kernel/debs/"
            rmdir "$TMP/dl"
            deb=$CACHE/kernel/debs/$(basename "$f")
        fi
        debs="$debs $deb"
    done

    mkdir -p "$TMP/root"
    for deb in $debs; do
        log "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$TMP/root"
    done
    # usrmerge-style packages put modules under usr/lib (and maybe the image
    # under usr/boot); normalise to lib/ and boot/.
    if [ -d "$TMP/root/usr/lib/modules" ]; then
        mkdir -p "$TMP/root/lib/modules"
        for m in "$TMP"/root/usr/lib/modules/*; do
            [ -e "$m" ] || continue
            if [ -e "$TMP/root/lib/modules/$(basename "$m")" ]; then
                cp -a "$m/." "$TMP/root/lib/modules/$(basename "$m")/"
                rm -rf "$m"
            else
                mv "$m" "$TMP/root/lib/modules/"
            fi
        done
        rmdir "$TMP/root/usr/lib/modules"
    fi
    [ -d "$TMP/root/lib/modules/$kver" ] || die "no lib/modules/$kver in$debs"
    # forky's split packages ship the image, config and System.map inside the
    # module directory (linux-binary-*: vmlinuz; linux-base-*: config,
    # System.map) and leave /boot to the postinst; give them the classic
    # boot/ names every user of this directory expects.
    mkdir -p "$TMP/root/boot"
    for f in vmlinuz config System.map; do
        src=$TMP/root/lib/modules/$kver/$f
        dst=$TMP/root/boot/$f-$kver
        if [ ! -e "$dst" ] && [ -f "$src" ]; then
            ln "$src" "$dst" 2>/dev/null || cp -p "$src" "$dst"
        fi
    done
    [ -f "$TMP/root/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in$debs"

    log "depmod -b"
    depmod -b "$TMP/root" "$kver"
    echo "$kver" > "$TMP/root/kver"
    echo "$suite" > "$TMP/root/suite"
    for deb in $debs; do basename "$deb"; done > "$TMP/root/debs"
    : > "$TMP/root/.complete"

    rm -rf "$dir"
    mv "$TMP/root" "$dir"
    log "kernel $kver ($suite) done in $(( $(date +%s) - t0 )) s, $(du -sh "$dir" | cut -f1)"
    echo "$dir"
}

main() {
    [ $# = 2 ] || usage
    case $1 in
        tree) tree_cmd "$2" ;;
        kernel) kernel_cmd "$2" ;;
        *) usage ;;
    esac
}
# One line: the shell has read all of it before main runs, so replacing this
# file while a (long) tree build runs cannot make it read a changed tail.
main "$@"; exit
