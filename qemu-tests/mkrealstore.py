#!/usr/bin/env python3
"""mkrealstore.py - fill NIXDIR with a Nix store made of real Debian bookworm packages.

Usage: mkrealstore.py NIXDIR [--cache DIR] [--min-bytes N]

The shapes mkstore.py imitates, from real software: a fixed list of about 250 bookworm
amd64 packages (libraries, compilers, interpreters with their modules, headers, Go and Boost
sources, docs, man pages, locales, time zones, icon themes), each unpacked (its data only,
no control files) into one store path /nix/store/<32 base32 chars>-<name>-<version>, the hash
derived from sha256("name-version").  Then canonicalised as Nix does: owner root:root, files
0444 (0555 if any x bit was set), directories 0555, every mtime and atime 1, no setuid or
setgid bits, no device nodes or fifos; and optimised as nix-store --optimise does on Linux:
every regular file and every symlink is hard-linked to /nix/store/.links/<52 base32 chars
of sha256("file:" + content), ("executable:" + content) for files with x bits, or
("symlink:" + target)>, one entry per distinct content.
NIXDIR/store is mode 1775; NIXDIR/var/nix/db holds a placeholder db.sqlite and packages.txt
(name=version of every package: what this build was made of).

The .debs come from DIR (default ~/.cache/factory-init/debs); `apt-get download` fetches the
current bookworm version of those it lacks (apt's lists must be there: apt-get update).
The same .debs always give the same tree.  Fails if the store's bytes (each inode once) are
fewer than --min-bytes (1.1e9): the list no longer makes the store the benchmark is about.
Prints the totals.
"""

import argparse
import errno
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

B32 = "0123456789abcdfghijklmnpqrsvwxyz"   # Nix's base32 alphabet
STORE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._?=-")

# About 1.35 GB and 112,000 entries unpacked (bookworm, 2025).  Left out for their size:
# golang-1.19-go, llvm-14-dev, clang, emacs, scipy, mathjax; papirus-icon-theme would bring
# 116,000 entries on its own.
PACKAGES = """
    coreutils bash dash util-linux findutils grep sed gawk tar gzip bzip2 xz-utils zstd
    diffutils patch less file libmagic1 libmagic-mgc procps strace tmux nano rsync
    libc6 libc-bin libc6-dev libc-dev-bin linux-libc-dev locales tzdata iso-codes
    libstdc++6 libgcc-s1 libstdc++-12-dev
    python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libpython3.11
    python3-pkg-resources python3-setuptools python3-pip python3-wheel python3-yaml
    python3-six python3-urllib3 python3-requests python3-chardet python3-idna python3-certifi
    python3-jinja2 python3-markupsafe python3-pygments python3-docutils python3-babel
    python3-numpy python3-lib2to3 python3-distutils python3-gi python3-cryptography
    python3-cffi-backend python3-pyasn1 python3-dbus python3-setuptools-whl python3-pip-whl
    python3-sphinx sphinx-doc python3-django
    perl perl-base perl-modules-5.36 libperl5.36 perl-doc
    gcc-12 cpp-12 libgcc-12-dev binutils binutils-x86-64-linux-gnu libbinutils libctf0
    libgprofng0 libasan8 libtsan2 libubsan1 liblsan0 libitm1 libquadmath0 libgomp1
    libatomic1 libcc1-0 libisl23 libmpc3 libmpfr6 libgmp10 make autoconf automake libtool m4
    pkgconf bison flex gdb gettext libllvm14 libboost1.74-dev golang-1.19-src
    ruby3.1 libruby3.1 lua5.4 liblua5.4-0
    git git-man libcurl3-gnutls libcurl4 curl wget openssh-client
    vim vim-runtime vim-common
    openssl libssl3 libssl-dev ca-certificates libgnutls30 libnettle8 libhogweed6
    libp11-kit0 libtasn1-6 libgcrypt20 libgpg-error0 gnupg gpg gpgv gpg-agent dirmngr
    systemd udev libsystemd0 libsystemd-shared libudev1 dbus libdbus-1-3 systemd-timesyncd
    hicolor-icon-theme adwaita-icon-theme breeze-icon-theme oxygen-icon-theme
    tango-icon-theme gtk-update-icon-cache libgtk-3-0 libgtk-3-common libglib2.0-0
    libglib2.0-data libglib2.0-bin libcairo2 libpango-1.0-0 libpangocairo-1.0-0
    libpangoft2-1.0-0 libharfbuzz0b libfreetype6 libfontconfig1 fontconfig-config
    fonts-dejavu-core fonts-dejavu-extra libpixman-1-0 libpng16-16 libjpeg62-turbo libtiff6
    libwebp7 libx11-6 libx11-data libxcb1 libxext6 libxrender1 libgdk-pixbuf-2.0-0
    libgdk-pixbuf2.0-common shared-mime-info libicu72
    libxml2 libxslt1.1 libsqlite3-0 sqlite3 zlib1g libbz2-1.0 liblzma5 libzstd1 liblz4-1
    libreadline8 libncursesw6 libtinfo6 ncurses-base ncurses-term libedit2 libffi8 libexpat1
    libyaml-0-2 libpcre2-8-0 libselinux1 libacl1 libattr1 libcap2 libaudit1 libpam0g
    libpam-modules libkmod2 kmod libcryptsetup12 cryptsetup-bin libdevmapper1.02.1
    libargon2-1 libjson-c5 libblkid1 libmount1 libuuid1 libfdisk1 libsmartcols1 e2fsprogs
    libext2fs2 btrfs-progs dosfstools
    man-db manpages manpages-dev manpages-fr manpages-de groff-base info install-info texinfo
    libkrb5-3 libgssapi-krb5-2 libk5crypto3 libkrb5support0 libldap-2.5-0 libsasl2-2
    libnghttp2-14 librtmp1 libssh2-1 libpsl5 libbrotli1 libidn2-0 libunistring2
    iproute2 iptables nftables iputils-ping
""".split()


def b32(h):
    """Nix's base32 of the bytes h (printHash32: least significant bits last)."""
    out = []
    for n in range((len(h) * 8 - 1) // 5, -1, -1):
        i, j = divmod(n * 5, 8)
        c = h[i] >> j
        if i + 1 < len(h):
            c |= h[i + 1] << (8 - j)
        out.append(B32[c & 0x1f])
    return "".join(out)


def store_name(name, version):
    """<32 chars>-name-version: sha256("name-version") folded to 20 bytes, as Nix does."""
    h = hashlib.sha256(f"{name}-{version}".encode()).digest()
    folded = bytearray(20)
    for i, x in enumerate(h):
        folded[i % 20] ^= x
    tail = "".join(c if c in STORE_CHARS else "_" for c in f"{name}-{version}")
    return f"{b32(folded)}-{tail}"


def apt_show(names):
    """{name: {field: value}} of the candidate versions apt-get download fetches."""
    r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + names,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = {}
    for stanza in r.stdout.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] not in ("", " ") and ":" in line:
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        if "Package" in fields:
            info.setdefault(fields["Package"], fields)
    missing = [n for n in names if n not in info]
    if missing:
        raise SystemExit(f"mkrealstore.py: apt knows no {' '.join(missing)} "
                         f"(apt-get update?): {r.stderr.strip()[-300:]}")
    return info


def sha256_file(path, prefix=b""):
    h = hashlib.sha256(prefix)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return h.digest()
            h.update(chunk)


def fetch(cache, info):
    """{name: path of the .deb}; downloads what the cache lacks (or holds damaged)."""
    debs, lacking = {}, []
    for name in sorted(info):
        f = info[name]
        deb = os.path.join(cache, f"{name}_{f['Version'].replace(':', '%3a')}_"
                                  f"{f['Architecture']}.deb")
        debs[name] = deb
        if not (os.path.exists(deb) and os.path.getsize(deb) == int(f["Size"])
                and sha256_file(deb).hex() == f["SHA256"]):
            lacking.append(name)
    t0 = time.monotonic()
    if lacking:
        for name in lacking:
            if os.path.exists(debs[name]):
                os.unlink(debs[name])
        r = subprocess.run(["apt-get", "download", "-q"] + lacking, cwd=cache,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise SystemExit(f"mkrealstore.py: apt-get download failed: {r.stdout[-800:]}")
        for name in lacking:
            f = info[name]
            if sha256_file(debs[name]).hex() != f["SHA256"]:
                raise SystemExit(f"mkrealstore.py: {debs[name]}: not the SHA256 apt expects")
    got = sum(int(info[n]["Size"]) for n in lacking)
    total = sum(int(info[n]["Size"]) for n in info)
    print(f"debs: {len(info)} packages, {total / 1e6:.0f} MB in {cache}; downloaded "
          f"{len(lacking)} ({got / 1e6:.0f} MB) in {time.monotonic() - t0:.1f} s")
    return debs


def unpack(deb, top):
    """The package's data (not its control files) into top, symlinks and all."""
    os.makedirs(top)
    p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    p2 = subprocess.run(["tar", "-x", "-f", "-", "-C", top, "--no-same-owner"],
                        stdin=p1.stdout, stderr=subprocess.PIPE, text=True)
    p1.stdout.close()
    if p1.wait() != 0 or p2.returncode != 0:
        raise SystemExit(f"mkrealstore.py: unpacking {deb} failed: {p2.stderr.strip()[-300:]}")


class Optimiser:
    """Canonicalises the inodes below the store and links them into .links."""

    def __init__(self, store):
        self.store = store
        self.links = os.path.join(store, ".links")
        self.tmp = os.path.join(store, ".tmp-link")
        self.root = os.geteuid() == 0
        self.dirs = []            # post-order: deepest first
        self.dropped = []         # device nodes, fifos, sockets
        self.unlinked = []        # more names than the file system allows on one inode
        self.seen = {}            # (st_dev, st_ino) of an inode with several names: digest
        os.makedirs(self.links, exist_ok=True)

    def own(self, path):
        if self.root:
            os.lchown(path, 0, 0)

    def canonicalise(self, path, st, is_link):
        """root:root, 0444 or 0555 (no setuid, no setgid), mtime and atime 1."""
        self.own(path)
        if not is_link:
            os.chmod(path, 0o555 if st.st_mode & 0o111 else 0o444)
        os.utime(path, (1, 1), follow_symlinks=False)

    def link(self, path, st, digest, is_link):
        """path's inode becomes the .links entry of its content (or path is linked to it)."""
        dot = os.path.join(self.links, b32(digest))
        try:
            dst = os.lstat(dot)
        except FileNotFoundError:
            dst = None
        if dst is None:
            self.canonicalise(path, st, is_link)
            os.link(path, dot, follow_symlinks=False)   # not its target: a symlink is linked
        elif (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino):
            # As Nix does: a new name beside it, renamed over path.
            try:
                os.link(dot, self.tmp, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                self.unlinked.append(path)     # Nix too leaves it as it is
                self.canonicalise(path, st, is_link)
                return
            os.replace(self.tmp, path)

    def walk(self, d):
        for e in sorted(os.scandir(d), key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self.walk(e.path)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                # A name of an inode seen before (a hard link in the .deb): no second read
                # (reads set the atime).
                digest = self.seen.get((st.st_dev, st.st_ino))
                if digest is None and stat.S_ISLNK(st.st_mode):
                    target = os.fsencode(os.readlink(e.path))
                    digest = hashlib.sha256(b"symlink:" + target).digest()
                elif digest is None:
                    # The content and whether it is a program: one inode has one mode, so a
                    # program and a data file with the same bytes are two entries (as the
                    # NAR hashes nix-store --optimise uses make them).
                    x = b"executable:" if st.st_mode & 0o111 else b"file:"
                    digest = sha256_file(e.path, x)
                if st.st_nlink > 1:
                    self.seen[(st.st_dev, st.st_ino)] = digest
                self.link(e.path, st, digest, stat.S_ISLNK(st.st_mode))
            else:
                os.unlink(e.path)
                self.dropped.append(e.path)
        self.dirs.append(d)

    def finish(self):
        """Directories read-only and mtime 1, deepest first, once nothing writes in them."""
        for d in self.dirs:
            self.own(d)
            os.chmod(d, 0o555)
            os.utime(d, (1, 1))
        os.utime(self.links, (1, 1))
        os.chmod(self.store, 0o1775)
        os.utime(self.store, (1, 1))


def stats(store):
    """Totals over the names below the store (.links not counted), by lstat only: following
    a symlink or listing a directory sets its atime."""
    s = dict(paths=0, entries=0, dirs=0, files=0, symlinks=0, files_linked=0,
             files_shared=0, symlinks_linked=0, symlinks_shared=0, bytes=0, names_bytes=0)
    inodes = set()

    def count(e):
        st = e.stat(follow_symlinks=False)
        s["entries"] += 1
        if stat.S_ISDIR(st.st_mode):
            s["dirs"] += 1
            for sub in os.scandir(e.path):
                count(sub)
            return
        kind = "files" if stat.S_ISREG(st.st_mode) else "symlinks"
        s[kind] += 1
        s[kind + "_linked"] += st.st_nlink > 1
        s[kind + "_shared"] += st.st_nlink > 2     # a name in .links and two in the store
        if kind == "files":
            s["names_bytes"] += st.st_size
            if (st.st_dev, st.st_ino) not in inodes:
                s["bytes"] += st.st_size
        inodes.add((st.st_dev, st.st_ino))

    for e in os.scandir(store):
        if e.name != ".links":
            s["paths"] += 1
            count(e)
    s["inodes"] = len(inodes) + s["dirs"]
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nixdir")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/factory-init/debs"))
    ap.add_argument("--min-bytes", type=float, default=1.1e9)
    a = ap.parse_args()
    store = os.path.join(a.nixdir, "store")
    if os.path.exists(store) and os.listdir(store):
        raise SystemExit(f"mkrealstore.py: {store} is not empty")
    if len(set(PACKAGES)) != len(PACKAGES):
        raise SystemExit("mkrealstore.py: a package twice in PACKAGES")
    os.makedirs(a.cache, exist_ok=True)
    info = apt_show(sorted(PACKAGES))
    debs = fetch(a.cache, info)

    t0 = time.monotonic()
    db = os.path.join(a.nixdir, "var", "nix", "db")
    os.makedirs(db, exist_ok=True)
    os.makedirs(store, exist_ok=True)
    tops = {n: os.path.join(store, store_name(n, info[n]["Version"])) for n in sorted(info)}
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for _ in pool.map(lambda n: unpack(debs[n], tops[n]), sorted(info)):
            pass
    t1 = time.monotonic()
    opt = Optimiser(store)
    for n in sorted(tops.values()):
        opt.walk(n)
    s = stats(store)             # before finish(): it sets the atimes that listings set
    nlinks = len(os.listdir(opt.links))
    opt.finish()
    t2 = time.monotonic()

    versions = [f"{n}={info[n]['Version']}" for n in sorted(info)]
    with open(os.path.join(db, "packages.txt"), "w") as f:
        f.write("".join(v + "\n" for v in versions))
    with open(os.path.join(db, "db.sqlite"), "wb") as f:
        f.write(b"factory test store, %d paths from Debian bookworm packages\n" % len(tops))
    for p in (os.path.join(db, "db.sqlite"), os.path.join(db, "packages.txt"), db,
              os.path.dirname(db), os.path.dirname(os.path.dirname(db)), a.nixdir):
        os.utime(p, (1, 1))      # the same files give the same tree, outside the store too
    print(textwrap.fill("packages: " + " ".join(versions), 100, subsequent_indent="  ",
                        break_on_hyphens=False))
    for p in opt.dropped:
        print(f"dropped (not a file, directory or symlink): {p}")
    for p in opt.unlinked:
        print(f"not linked (too many links): {p}")
    print(f"built in {t2 - t0:.1f} s (unpack {t1 - t0:.1f} s, canonicalise and optimise "
          f"{t2 - t1:.1f} s); {s['dirs']} directories, {s['files']} files, {s['symlinks']} "
          f"symlinks, {nlinks} .links entries; {s['files_shared']} files and "
          f"{s['symlinks_shared']} symlinks share their inode with another store name; "
          f"{s['names_bytes']} bytes before linking")
    print(f"{s['paths']} store paths, {s['entries']} entries, {s['inodes']} unique inodes, "
          f"{s['files_linked']} files with nlink > 1, {s['symlinks_linked']} symlinks with "
          f"nlink > 1, {s['bytes']} bytes apparent ({s['bytes'] / 1e9:.2f} GB)")
    if s["bytes"] < a.min_bytes:
        raise SystemExit(f"mkrealstore.py: {s['bytes']} bytes, fewer than --min-bytes "
                         f"{a.min_bytes:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
