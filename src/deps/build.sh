#!/usr/bin/env bash
# Build the static libraries factory-init links against, from pinned Debian
# source packages, into a per-recipe prefix in a cache outside the repository.
#
#   src/deps/build.sh            -> builds if needed; last stdout line = prefix
#
# Environment:
#   FACTORY_INIT_CACHE  cache root (default: $HOME/.cache/factory-init)
#   JOBS                parallel make jobs (default: nproc)
#
# Result ($PREFIX = $CACHE/deps/<tag>):
#   include/                  headers (blkid, libmount, uuid, libcryptsetup,
#                             libdevmapper, libkmod, tss2/)
#   lib/*.a                   static archives built here
#   lib/pkgconfig/*.pc        pkg-config files (use with --static)
#   bin/mkfs.btrfs            static, stripped mkfs.btrfs (btrfs-progs, linked
#                             against this prefix's libblkid/libuuid)
#   static-ldflags            link flags in a working order (for -static)
#   static-cflags             matching compile flags
#   versions                  what went into this prefix
#   .complete                 present once the prefix is usable
#
# Libraries taken from Debian's own -dev packages (not rebuilt): json-c,
# argon2, mbedcrypto (tss2), nettle (libcryptsetup's hashes and PBKDF2; its ciphers go
# through the kernel's AF_ALG), zstd, lzma, z.
#
# <tag> is a hash of this file plus the versions of the compiler and the
# Debian -dev packages compiled against, so any change rebuilds into a new
# prefix and never touches an old one.

# The whole script is one { ... } block: bash parses it completely before
# running anything, so editing this file during a build cannot derail it.
{
set -euo pipefail

# ---- pinned sources --------------------------------------------------------
# name=version as in the Debian archive. A pin that vanished from the archive
# (superseded by a point release) makes the build fail with a clear message;
# sources already in the cache keep working offline.
PINS=(
    "util-linux=2.38.1-5+deb12u3"
    "lvm2=2.03.16-2"
    "cryptsetup=2:2.6.1-4~deb12u2"
    "kmod=30+20221128-1"
    "tpm2-tss=4.1.3-1.2"          # from trixie: bookworm's 3.2.1 tarballs 404
    "btrfs-progs=6.2-1+deb12u2"   # only mkfs.btrfs
)
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_SECURITY=http://deb.debian.org/debian-security
ARCHIVE_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Debian packages this recipe needs on the build machine.
BUILD_DEPS=(
    gcc make pkg-config autoconf automake libtool autopoint gettext
    autoconf-archive libltdl-dev dpkg-dev apt debian-archive-keyring
    libjson-c-dev libargon2-dev libmbedtls-dev libpopt-dev
    libzstd-dev liblzma-dev zlib1g-dev nettle-dev
)

# pkg-config modules factory-init uses (static-ldflags/static-cflags).
PC_MODULES=(mount blkid uuid libcryptsetup devmapper libkmod
            tss2-esys tss2-tcti-device tss2-sys tss2-mu tss2-rc json-c)

# ---- helpers ---------------------------------------------------------------
say() { printf '[deps] %s\n' "$*" >&2; }
die() { printf '[deps] ERROR: %s\n' "$*" >&2; exit 1; }

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

missing=()
for p in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed \
        || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || die "missing Debian packages: apt-get install ${missing[*]}"

# Tag: this recipe + the compiler + the Debian -dev packages whose headers the
# libraries are compiled against. (Autotools, apt etc. are left out on purpose:
# their updates do not change the result enough to warrant a rebuild.)
TAG_PKGS=(libjson-c-dev libargon2-dev libmbedtls-dev libpopt-dev
          libzstd-dev liblzma-dev zlib1g-dev nettle-dev)
TAG=$( {
    cat "$SELF"
    gcc -dumpfullversion -dumpmachine
    dpkg-query -W -f='${Package}=${Version}\n' "${TAG_PKGS[@]}"
} | sha256sum | cut -c1-12 )
DEPS=$CACHE/deps
PREFIX=$DEPS/$TAG

if [ -e "$PREFIX/.complete" ]; then
    echo "$PREFIX"
    exit 0
fi

mkdir -p "$DEPS" "$CACHE/logs"
exec 9>"$DEPS/.lock"
if ! flock -n 9; then
    say "another build holds $DEPS/.lock; waiting"
    flock 9
fi
if [ -e "$PREFIX/.complete" ]; then      # someone else built it meanwhile
    echo "$PREFIX"
    exit 0
fi
# Leftovers of interrupted runs (we hold the lock, so nobody is using them).
rm -rf "$DEPS"/.work-* "$DEPS"/.prefix-*
[ -e "$PREFIX" ] && rm -rf "$PREFIX"

LOGDIR=$CACHE/logs/$TAG
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
LOG=$LOGDIR/build.log
: >"$LOG"

WORK=$(mktemp -d "$DEPS/.work-$TAG.XXXXXX")
STAGE=$(mktemp -d "$DEPS/.prefix-$TAG.XXXXXX")   # same filesystem: rename works
chmod 755 "$STAGE"

# Jobs run in the background, one log each. Configure scripts are serial, so
# independent packages overlap well on 2 cores; the critical path
# (util-linux -> cryptsetup, and tpm2-tss) runs at normal priority, the rest
# niced.
declare -A JOB_PID=()
start() {  # start <name> <niceness> <function>
    local name=$1 prio=$2 fn=$3
    (
        trap 'echo $? >"$WORK/.status-$name"' EXIT
        set -eEuo pipefail
        trap 'echo "### FAILED: $name (line $LINENO)"' ERR
        renice -n "$prio" -p "$BASHPID" >/dev/null 2>&1 || true
        SECONDS=0; PS4='+ [${SECONDS}s] '; set -x
        "$fn"
        echo "### OK: $name"
    ) >"$LOGDIR/$name.log" 2>&1 </dev/null &
    JOB_PID[$name]=$!
    say "building $name (log: $LOGDIR/$name.log)"
}
finish_job() {  # finish_job <name>...: wait for the jobs; stop at the first failure
    local want=("$@") left name rc state
    while [ ${#want[@]} -gt 0 ]; do
        left=()
        for name in "${want[@]}"; do
            if [ ! -s "$WORK/.status-$name" ]; then
                # killed by a signal: no status written, but the job is gone
                state=$(awk '{ print $3 }' "/proc/${JOB_PID[$name]}/stat" 2>/dev/null || true)
                if [ "${state:-Z}" != Z ]; then left+=("$name"); continue; fi
                rc=0; wait "${JOB_PID[$name]}" 2>/dev/null || rc=$?
                [ -s "$WORK/.status-$name" ] || echo "$rc" >"$WORK/.status-$name"
            fi
            wait "${JOB_PID[$name]}" 2>/dev/null || true
            unset "JOB_PID[$name]"
            rc=$(cat "$WORK/.status-$name")
            if [ "$rc" != 0 ]; then
                grep -q '^### FAILED' "$LOGDIR/$name.log" \
                    || echo "### FAILED: $name (exit $rc)" >>"$LOGDIR/$name.log"
                die "$name failed: see the log tail below"
            fi
            say "done $name ($(( $(date +%s) - T0 ))s)"
        done
        want=("${left[@]}")
        [ ${#want[@]} -eq 0 ] || sleep 1
    done
}
kill_jobs() {   # stop our own still-running jobs and everything they started
    local pid todo=() all=() kids
    for pid in "${JOB_PID[@]}"; do todo+=("$pid"); done
    while [ ${#todo[@]} -gt 0 ]; do
        pid=${todo[0]}; todo=("${todo[@]:1}")
        all+=("$pid")
        kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
        for pid in $kids; do todo+=("$pid"); done
    done
    [ ${#all[@]} -eq 0 ] || kill "${all[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}

on_exit() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        kill_jobs
        local f shown=
        for f in "$LOGDIR"/*.log; do
            if grep -q '^### FAILED' "$f" 2>/dev/null; then
                printf '\n[deps] ---- last lines of %s ----\n' "$f" >&2
                tail -n 40 "$f" >&2
                shown=1
            fi
        done
        if [ -z "$shown" ] && [ -s "$LOG" ]; then
            printf '\n[deps] ---- last lines of %s ----\n' "$LOG" >&2
            tail -n 40 "$LOG" >&2
        fi
        printf '[deps] build FAILED (rc=%s); logs in %s\n' "$rc" "$LOGDIR" >&2
    fi
    rm -rf "$WORK" "$STAGE"
    exit $rc
}
trap on_exit EXIT

T0=$(date +%s)

# ---- fetch sources with a private apt configuration -------------------------
SRCDIR=$CACHE/sources
APTDIR=$CACHE/apt
mkdir -p "$SRCDIR" "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
cat >"$APTDIR/sources.sources" <<EOF
Types: deb-src
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates trixie
Components: main
Signed-By: $ARCHIVE_KEYRING

Types: deb-src
URIs: $DEBIAN_SECURITY
Suites: bookworm-security
Components: main
Signed-By: $ARCHIVE_KEYRING
EOF
APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/sources.sources"
    -o Dir::Etc::sourceparts=/nonexistent
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Sandbox::User=$(id -un)"
    -o Acquire::Languages=none
    -o APT::Get::Only-Source=true
)

dsc_of() {  # name=version -> path of the .dsc (epoch is not in file names)
    local name=${1%%=*} ver=${1#*=}
    echo "$SRCDIR/${name}_${ver#*:}.dsc"
}

need_fetch=()
for pin in "${PINS[@]}"; do
    [ -e "$SRCDIR/.fetched-${pin//[:\/]/_}" ] || need_fetch+=("$pin")
done
if [ ${#need_fetch[@]} -gt 0 ]; then
    say "updating private apt source lists in $APTDIR"
    apt-get "${APT_OPTS[@]}" update >>"$LOG" 2>&1 \
        || die "apt-get update (private deb-src lists) failed, see $LOG"
    for pin in "${need_fetch[@]}"; do
        name=${pin%%=*}; ver=${pin#*=}
        avail=$(apt-cache "${APT_OPTS[@]}" showsrc "$name" 2>>"$LOG" \
                | sed -n 's/^Version: //p' | sort -u) || true
        if ! grep -qxF -- "$ver" <<<"$avail"; then
            avail=$(tr '\n' ' ' <<<"$avail")
            die "pinned source $name $ver is not in the Debian archive (any more); available: ${avail:-none}. Update PINS in $SELF."
        fi
    done
    say "downloading sources: ${need_fetch[*]}"
    (cd "$SRCDIR" && apt-get "${APT_OPTS[@]}" source --download-only "${need_fetch[@]}") \
        >>"$LOG" 2>&1 || die "apt-get source failed, see $LOG"
    for pin in "${need_fetch[@]}"; do
        [ -e "$(dsc_of "$pin")" ] || die "no $(dsc_of "$pin") after download"
        touch "$SRCDIR/.fetched-${pin//[:\/]/_}"
    done
fi

unpack() {  # name -> source tree in $WORK/<name>, Debian patches applied
    local pin
    for pin in "${PINS[@]}"; do
        [ "${pin%%=*}" = "$1" ] || continue
        # verifies the checksums listed in the .dsc (apt checked the .dsc
        # itself against the signed archive index when downloading it)
        dpkg-source --no-copy -x "$(dsc_of "$pin")" "$WORK/$1"
        return
    done
    die "no pin for $1"
}

# ---- common flags -----------------------------------------------------------
OPT_CFLAGS="-Os -ffunction-sections -fdata-sections -ffile-prefix-map=$WORK=."
export CFLAGS="$OPT_CFLAGS"
export LC_ALL=C MAKEFLAGS="-j$JOBS"
unset CPPFLAGS LDFLAGS PKG_CONFIG_PATH CONFIG_SITE
# Paths compiled into the libraries must be the initrd's, never the cache's.
DIRS=(--prefix="$STAGE" --sysconfdir=/etc --localstatedir=/var)

# ---- per-package recipes (each runs with its own log) -----------------------
build_util_linux() {
    unpack util-linux; cd "$WORK/util-linux"
    ./configure "${DIRS[@]}" --runstatedir=/run \
        --disable-shared --enable-static \
        --disable-all-programs --enable-libuuid --enable-libblkid --enable-libmount \
        --disable-libsmartcols --disable-libfdisk --disable-pylibmount \
        --disable-nls --disable-asciidoc --disable-poman --disable-bash-completion \
        --disable-makeinstall-chown --disable-makeinstall-setuid \
        --without-udev --without-systemd --without-selinux --without-smack \
        --without-econf --without-python --without-cryptsetup --without-libz \
        --without-readline --without-ncursesw --without-ncurses --without-tinfo \
        --without-user --without-cap-ng --without-audit --without-libmagic \
        --without-btrfs
    make
    make install-usrlib_execLTLIBRARIES install-pkgconfigDATA install-uuidincHEADERS \
         install-nodist_blkidincHEADERS install-nodist_mountincHEADERS
}

build_lvm2() {   # only libdevmapper.a
    unpack lvm2; cd "$WORK/lvm2"
    ./configure "${DIRS[@]}" --enable-static_link --enable-pkgconfig \
        --disable-udev_sync --disable-udev_rules --disable-selinux \
        --disable-dmeventd --disable-systemd-journal --disable-app-machineid \
        --disable-blkid_wiping --disable-readline --disable-nls --disable-fsadm \
        --disable-blkdeactivate --disable-lvmimportvdo --disable-use-lvmlockd \
        --disable-use-lvmpolld --disable-notify-dbus \
        --with-thin=none --with-cache=none --with-vdo=none \
        --with-writecache=none --with-integrity=none
    make -C libdm ioctl/libdevmapper.a libdevmapper.pc
    make -C libdm install_static install_include install_pkgconfig
}

build_kmod() {
    unpack kmod; cd "$WORK/kmod"
    # kmod refuses --enable-static outright; drop that one check. gtk-doc is
    # not installed: an empty gtk-doc.make lets automake pass.
    grep -q -- '--enable-static is not supported' configure.ac \
        || die "kmod: the --enable-static check moved; update the recipe"
    sed -i '/--enable-static is not supported/d' configure.ac
    : >libkmod/docs/gtk-doc.make
    autoreconf -fi
    ./configure "${DIRS[@]}" --enable-static --disable-shared \
        --with-xz --with-zstd --with-zlib --without-openssl \
        --disable-tools --disable-manpages --disable-test-modules \
        --disable-python --disable-dependency-tracking
    make libkmod/libkmod.la
    make install-libLTLIBRARIES install-includeHEADERS install-pkgconfigDATA
}

build_tpm2_tss() {
    unpack tpm2-tss; cd "$WORK/tpm2-tss"
    ./bootstrap     # Debian's: writes VERSION, file lists, runs autoreconf
    ./configure "${DIRS[@]}" --with-runstatedir=/run \
        --enable-static --disable-shared --enable-nodl --with-crypto=mbed \
        --disable-fapi --disable-policy --disable-vendor \
        --disable-tcti-mssim --disable-tcti-swtpm --disable-tcti-pcap \
        --disable-tcti-libtpms --disable-tcti-cmd --disable-tcti-spi-helper \
        --disable-tcti-spi-ltt2go --disable-tcti-spidev --disable-tcti-spi-ftdi \
        --disable-tcti-i2c-helper --disable-tcti-i2c-ftdi \
        --disable-doxygen-doc --disable-log-file --disable-dependency-tracking
    make all-am
    # not "make install": its data hooks want to create a tss user/groups
    make install-libLTLIBRARIES install-tss2HEADERS install-pkgconfigDATA
    # With --enable-nodl, esys calls Tss2_Tcti_Device_Init directly, but its
    # .pc does not say so. The tctildr archive would clash with the device
    # TCTI (both define Tss2_Tcti_Info), and nothing needs it.
    sed -i 's/^Requires.private:.*/& tss2-tcti-device/' "$STAGE/lib/pkgconfig/tss2-esys.pc"
    rm -f "$STAGE/lib/libtss2-tctildr."* "$STAGE/lib/pkgconfig/tss2-tctildr.pc" \
          "$STAGE/include/tss2/tss2_tctildr.h"
}

prep_cryptsetup() {    # independent of the other packages
    unpack cryptsetup; cd "$WORK/cryptsetup"
    autoreconf -fi     # Debian's orig tarball is a git export without configure
}

prep_btrfs_progs() {   # independent of the other packages
    unpack btrfs-progs; cd "$WORK/btrfs-progs"
    ./autogen.sh       # the tarball's configure wants include/config.h.in
}

build_btrfs_progs() {  # needs util-linux in $STAGE; builds only mkfs.btrfs
    cd "$WORK/btrfs-progs"
    # libblkid/libuuid from $STAGE (pkg-config --static); zlib and zstd are
    # Debian's (configure insists on them, mkfs.btrfs does not link them).
    PKG_CONFIG_PATH="$STAGE/lib/pkgconfig" \
    ./configure "${DIRS[@]}" \
        --disable-shared --disable-documentation --disable-convert \
        --disable-zoned --disable-python --disable-libudev --disable-backtrace \
        --disable-lzo --with-crypto=builtin
    make V=1 mkfs.btrfs.static
    install -D -m 755 mkfs.btrfs.static "$STAGE/bin/mkfs.btrfs"
    strip "$STAGE/bin/mkfs.btrfs"
}

build_cryptsetup() {   # needs util-linux and lvm2 in $STAGE
    cd "$WORK/cryptsetup"
    PKG_CONFIG_PATH="$STAGE/lib/pkgconfig" \
    CPPFLAGS="-I$STAGE/include" LDFLAGS="-L$STAGE/lib" \
    ./configure "${DIRS[@]}" --runstatedir=/run \
        --enable-static --disable-shared --with-crypto_backend=nettle \
        --enable-libargon2 --disable-cryptsetup --disable-veritysetup \
        --disable-integritysetup --disable-ssh-token --disable-external-tokens \
        --disable-asciidoc --disable-selinux --disable-udev --disable-nls \
        --disable-rpath --disable-dependency-tracking \
        --with-luks2-external-tokens-path=/usr/lib/cryptsetup
    make libcryptsetup.la
    make install-libLTLIBRARIES install-includeHEADERS install-pkgconfigDATA
}

start util-linux 0 build_util_linux
start lvm2 5 build_lvm2
start cryptsetup-prep 5 prep_cryptsetup
start kmod 10 build_kmod
start tpm2-tss 0 build_tpm2_tss
start btrfs-progs-prep 5 prep_btrfs_progs
finish_job util-linux lvm2 cryptsetup-prep
start cryptsetup 0 build_cryptsetup
finish_job btrfs-progs-prep
start btrfs-progs 5 build_btrfs_progs
finish_job cryptsetup kmod tpm2-tss btrfs-progs

# ---- finish the prefix ------------------------------------------------------
finish_prefix() {
    cd "$STAGE"
    rm -f lib/*.la
    rm -rf sbin share etc var
    # bin/ holds only what we built on purpose
    [ -x bin/mkfs.btrfs ] || { echo "bin/mkfs.btrfs missing"; exit 1; }
    find bin -mindepth 1 -maxdepth 1 ! -name mkfs.btrfs -exec rm -rf {} +
    # no -g was used, but some build systems add it: keep the archives lean
    strip --strip-debug lib/*.a
    # .pc files: point at the final prefix
    sed -i "s|$STAGE|$PREFIX|g" lib/pkgconfig/*.pc
    # no archive may carry the temporary prefix (it would be a path in the initrd)
    if grep -l -F "$STAGE" lib/*.a bin/*; then echo "temporary prefix baked into archives/bin"; exit 1; fi
    if grep -l -F "$WORK" lib/*.a bin/*; then echo "build directory baked into archives/bin"; exit 1; fi
    if readelf -l bin/mkfs.btrfs | grep -q INTERP; then echo "bin/mkfs.btrfs is not static"; exit 1; fi

    pcq() { PKG_CONFIG_PATH="$STAGE/lib/pkgconfig" pkg-config "$@" "${PC_MODULES[@]}"; }
    # Our -L first (so these archives win over Debian's libblkid.a/libuuid.a),
    # then each -l at its LAST position in pkg-config's order: for a
    # dependency-ordered list that keeps every library after its users.
    uniq_last() {
        awk '{ for (i = 1; i <= NF; i++) { n++; w[n] = $i; last[$i] = n } }
             END { s = ""; for (i = 1; i <= n; i++) if (last[w[i]] == i) s = s " " w[i]
                   sub(/^ /, "", s); print s }'
    }
    printf -- '-L%s/lib %s %s %s\n' "$PREFIX" \
        "$(pcq --static --libs-only-L | tr ' ' '\n' | grep -vxF -- "-L$PREFIX/lib" | uniq_last || true)" \
        "$(pcq --static --libs-only-other | uniq_last)" \
        "$(pcq --static --libs-only-l | uniq_last)" | tr -s ' ' >static-ldflags
    printf -- '%s %s\n' "$(pcq --cflags-only-I | uniq_last)" \
        "$(pcq --cflags-only-other | uniq_last)" | tr -s ' ' | sed 's/ $//' >static-cflags
    cat static-ldflags static-cflags

    # prove the flags link a static program touching every library
    cat >"$WORK/linkcheck.c" <<'EOF'
#include <blkid.h>
#include <libmount.h>
#include <uuid.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <libkmod.h>
#include <tss2_esys.h>
#include <tss2_tcti_device.h>
#include <tss2_rc.h>
#include <json.h>
int main(int argc, char **argv)
{
    /* never called: only the references matter */
    if (argc > 99) {
        struct crypt_device *cd;
        ESYS_CONTEXT *e;
        uuid_t u;
        uuid_generate(u);
        return blkid_new_probe_from_filename(argv[0]) != NULL
            && mnt_new_context() != NULL
            && crypt_init(&cd, argv[0]) == 0
            && dm_task_create(0) != NULL
            && kmod_new(NULL, NULL) != NULL
            && Tss2_Tcti_Device_Init(NULL, NULL, NULL) == 0
            && Esys_Initialize(&e, NULL, NULL) == 0
            && Tss2_RC_Decode(0) != NULL
            && json_object_new_object() != NULL;
    }
    return 0;
}
EOF
    # shellcheck disable=SC2046
    gcc -static $OPT_CFLAGS $(sed "s|$PREFIX|$STAGE|g" static-cflags) \
        "$WORK/linkcheck.c" -o "$WORK/linkcheck" -Wl,--gc-sections \
        $(sed "s|$PREFIX|$STAGE|g" static-ldflags)
    "$WORK/linkcheck"

    {
        echo "tag=$TAG"
        printf 'source %s\n' "${PINS[@]}"
        dpkg-query -W -f='system ${Package}=${Version}\n' "${BUILD_DEPS[@]}"
        echo "gcc $(gcc -dumpfullversion)"
        echo "bin/mkfs.btrfs: $(bin/mkfs.btrfs --version) (static; no lzo, zoned, udev)"
    } >versions
}
start finish 0 finish_prefix
finish_job finish

touch "$STAGE/.complete"
mv -T "$STAGE" "$PREFIX"          # atomic: the prefix appears complete or not at all
say "built $PREFIX in $(( $(date +%s) - T0 ))s"
echo "$PREFIX"
exit 0
}
