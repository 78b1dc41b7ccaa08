#!/usr/bin/env python3
"""mkstore.py - fill NIXDIR with a deterministic, Nix-store-shaped tree.

Usage: mkstore.py NIXDIR [--paths N] [--files F] [--large L] [--extra E] [--seed S]

What a real /nix holds and a copy must keep: store paths named
<32 base32 chars>-name-version, read-only directories (0555) and files (0444,
0555 for programs), every mtime 1 (Nix canonicalises them), symlinks inside and
across paths, identical files hard-linked through /nix/store/.links (as
auto-optimise-store does: symlinks too, and a licence and an empty file in every
path, so some inodes have a name in every path), a few large files, an extended
attribute here and there, a 255-byte name and a sparse file in the first path,
and /nix/var/nix/db.  N paths of about F files each; L large (4 MiB)
files (one each in the first L paths); --extra E adds E more paths (a newer factory image with a superset of
the store).  The same arguments always give the same tree.
"""

import argparse
import hashlib
import os
import random

B32 = "0123456789abcdfghijklmnpqrsvwxyz"   # Nix's base32 alphabet
NAMES = ["glibc", "bash", "coreutils", "openssl", "systemd", "python3", "perl",
         "zlib", "util-linux", "git", "nix", "curl", "sqlite", "ncurses", "xz"]


def store_name(rng, i):
    h = "".join(rng.choice(B32) for _ in range(32))
    return f"{h}-{NAMES[i % len(NAMES)]}-{1 + i // len(NAMES)}.{rng.randrange(10)}"


def content(rng, size, shared):
    """File bytes; about a fifth come from a small shared pool (hard-link candidates)."""
    if shared and rng.random() < 0.2:
        k = rng.randrange(len(shared))
        return shared[k]
    return rng.randbytes(size)


LICENCE = b"Permission is hereby granted, free of charge, to any person obtaining a copy\n" * 12


def write_file(path, data, mode):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def linked_file(links, path, data, mode):
    """PATH holding DATA as one inode with LINKS/<sha256 of DATA>: made (with MODE) by the first
    path with these bytes, linked by the others, as auto-optimise-store does."""
    dot = os.path.join(links, hashlib.sha256(data).hexdigest()[:52])
    if os.path.exists(dot):
        os.link(dot, path)
    else:
        write_file(path, data, mode)
        os.link(path, dot)


def make_path(root, links, rng, name, files, large, shared, odd=False):
    top = os.path.join(root, "store", name)
    made = []
    for sub in ("bin", "lib", "share/doc"):
        os.makedirs(os.path.join(top, sub), exist_ok=True)
    for j in range(files):
        sub = ("bin", "lib", "share/doc")[j % 3]
        size = rng.choice([64, 300, 1200, 4000, 9000, 20000, 70000])
        data = content(rng, size, shared)
        path = os.path.join(top, sub, f"f{j:04d}")
        mode = 0o555 if sub == "bin" else 0o444
        if data in shared:
            linked_file(links, path, data, mode)
        else:
            write_file(path, data, mode)
        made.append(path)
    for j in range(large):
        path = os.path.join(top, "lib", f"large{j}.so")
        with open(path, "wb") as f:
            f.write(rng.randbytes(4 << 20))
        os.chmod(path, 0o444)
        made.append(path)
    # Symlinks, hard-linked into .links as nix-store --optimise does on Linux (Nix builds with
    # CAN_LINK_SYMLINK): "../lib" is the same in every path, so one inode has a name in each.
    for target, link in (("../lib", "bin/lib-link"),
                         (f"/nix/store/{name}/bin/f0000", "share/abs-link")):
        path = os.path.join(top, link)
        os.symlink(target, path)
        dot = os.path.join(links, "l" + hashlib.sha256(b"symlink:" + target.encode())
                           .hexdigest()[:51])
        if os.path.lexists(dot):
            os.unlink(path)
            os.link(dot, path, follow_symlinks=False)
        else:
            os.link(path, dot, follow_symlinks=False)
    # The same licence text and an empty file in every path: one inode each with a name per
    # path (link counts in the hundreds on a store of hundreds of paths).
    for rel, data in (("share/doc/COPYING", LICENCE), ("share/doc/.empty", b"")):
        linked_file(links, os.path.join(top, rel), data, 0o444)
    if odd:
        # A name of 255 bytes (the longest a file system takes), and a sparse file: 1 MiB
        # with 4 KiB of data in the middle.
        with open(os.path.join(top, "share", "n" * 255), "wb") as f:
            f.write(b"long name\n")
        path = os.path.join(top, "lib", "sparse.img")
        with open(path, "wb") as f:
            f.seek(512 << 10)
            f.write(rng.randbytes(4096))
            f.truncate(1 << 20)
        os.chmod(path, 0o444)
    if made:
        # user.* attributes survive mkfs.ext4 -d and must survive the copy too.
        os.setxattr(made[0], "user.factory-test", name[:8].encode())
    return top


def canonicalise(top):
    """Every mtime 1 and every directory read-only, deepest first, like Nix."""
    for d, dirs, files in os.walk(top, topdown=False):
        for n in files + dirs:
            os.utime(os.path.join(d, n), (1, 1), follow_symlinks=False)
        os.chmod(d, 0o555)
        os.utime(d, (1, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("nixdir")
    ap.add_argument("--paths", type=int, default=40)
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--extra", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    store = os.path.join(a.nixdir, "store")
    links = os.path.join(store, ".links")
    os.makedirs(links, exist_ok=True)
    os.makedirs(os.path.join(a.nixdir, "var", "nix", "db"), exist_ok=True)
    shared = [rng.randbytes(rng.choice([200, 3000, 15000])) for _ in range(30)]
    tops = []
    total = a.paths + a.extra
    for i in range(total):
        name = store_name(rng, i)
        # The extra paths draw from a separate stream: the first N stay the same.
        prng = random.Random(f"{a.seed}-{name}")
        tops.append(make_path(a.nixdir, links, prng, name, a.files,
                              1 if i < a.large else 0, shared, odd=i == 0))
    with open(os.path.join(a.nixdir, "var", "nix", "db", "db.sqlite"), "wb") as f:
        f.write(b"factory test store, %d paths\n" % total)
    for top in tops:
        canonicalise(top)
    for n in os.listdir(links):
        os.utime(os.path.join(links, n), (1, 1), follow_symlinks=False)
    os.chmod(store, 0o1775)


if __name__ == "__main__":
    main()
