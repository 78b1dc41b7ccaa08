#!/usr/bin/env python3
"""ext4links.py - give an ext4 image made by `mkfs.ext4 -d TREE` the hard links TREE has
between symlinks (and fifos, sockets, device nodes).

Usage: ext4links.py IMG TREE

mke2fs -d (e2fsprogs 1.47) keeps hard links between regular files only: a symlink with two names
in TREE comes out as two symlinks.  A Nix store has such links (nix-store --optimise hard-links
symlinks into /nix/store/.links on Linux), and the bind copy must keep them, so the test images
must have them.  For each such inode of TREE this edits IMG offline with debugfs: every name but
the first (in sorted order) has its inode freed and zeroed (kill_file, clri) and its entry
replaced by a link to the first's (unlink, ln), and the first's link count is set.  e2fsck -fn checks the result.
No mount, no loop device.  Prints how many names it linked.
"""

import os
import stat
import subprocess
import sys


def groups(tree):
    """[[rel, ...], ...]: names below TREE (as /rel) sharing a non-regular, non-directory inode."""
    by_ino = {}
    for d, dirs, files in os.walk(tree):
        for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, n)
            st = os.lstat(p)
            if st.st_nlink > 1 and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
                by_ino.setdefault((st.st_dev, st.st_ino), []).append(
                    "/" + os.path.relpath(p, tree))
    return [sorted(v) for v in by_ino.values() if len(v) > 1]


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    img, tree = argv[1], argv[2]
    script, linked = [], 0
    for names in sorted(groups(tree)):
        keep = names[0]
        for other in names[1:]:
            for p in (keep, other):
                if any(c in p for c in ' "\n'):
                    raise SystemExit(f"ext4links.py: cannot quote {p!r} for debugfs")
            script += [f"kill_file {other}", f"clri {other}", f"unlink {other}",
                       f"ln {keep} {other}"]
            linked += 1
        script.append(f"sif {keep} links_count {len(names)}")
    if script:
        r = subprocess.run(["debugfs", "-w", "-f", "-", img], input="\n".join(script) + "\n",
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0 or "rror" in r.stderr:
            raise SystemExit(f"ext4links.py: debugfs failed: {r.stderr.strip()[-500:]}")
        r = subprocess.run(["e2fsck", "-fn", img], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ext4links.py: e2fsck found problems: {r.stdout.strip()[-800:]}")
    print(linked)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
