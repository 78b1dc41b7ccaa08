#!/usr/bin/env python3
"""bench-store.py - the bind mode's store copy against rsync -aH, cp -a and a raw copy.

Usage: qemu-tests/bench-store.py [-b BUILD] [--store real|synthetic] [--cache DIR] [--paths N]
                                 [--runs R] [--factory-init BIN] [--tmpfs]

On the host, as root (loop devices, no device-mapper needed): a Nix store on an ext4 image,
as the factory disk holds it, copied onto a fresh Btrfs image mounted with compress=zstd, as
/persist is.  The store is

  real (the default)  mkrealstore.py's: about 250 Debian bookworm packages (libraries,
                      compilers, Python, Perl, Go and Boost sources, docs, man pages, locales,
                      icon themes), one store path each, canonicalised and optimised as Nix
                      does (every file and symlink hard-linked through .links): about 1.3 GB
                      in 112,000 names.  The .debs are downloaded once into --cache DIR
                      (default ~/.cache/factory-init/debs, apt-get download).
  synthetic           mkstore.py's: N store paths (--paths, 400) of 60 files each, hard links
                      through .links, 4 MiB files in the first 20 paths, mtime 1, read-only
                      directories.

The tools, each copying it:

  factory-init copy-store SRC DST    the copy engine of vm.store=bind
  rsync -aHX SRC/ DST/               (-X: xattrs too, which the store copy keeps)
  cp -a SRC DST
  dd of the source image             the raw bandwidth of the same bytes, device to device

Every run starts with cold caches (drop_caches) and ends with the copy on disk (syncfs
and umount are inside the timing); the tools take turns. Prints the median of R runs (5) per
tool and the ratios.

What bounds a copy: the CPU. Each run also records the tool's own CPU time (user + system, its
threads included) and the CPU time the whole machine was busy (/proc/stat: the tool, Btrfs's
compression and metadata kworkers, the loop devices), and the time the hypervisor took the vCPUs
away (steal; a run with much steal says more about the host than about the tool). The "floor" is
the least busy CPU time any tool needed, spread over every CPU: no tool that asks the kernel for
the same work can finish before it, however well it overlaps. --tmpfs puts both images in
/dev/shm, so that the host's disk (shared, and noisy here) is out of the measurement and the CPU
bound shows alone; dd's bound is then memory bandwidth.
"""

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw).stdout


def cpu_now():
    """(busy, steal) CPU seconds of the whole machine so far (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, stolen = v
    return (user + nice + system + irq + softirq) / hz, stolen / hz


def run_timed(cmd):
    """Runs cmd (its output discarded, failure fatal); returns its user + system CPU seconds."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), cmd)
    return ru.ru_utime + ru.ru_stime


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass   # not allowed here: the numbers then include warm caches for every tool alike


class Loop:
    def __init__(self, img, mnt, opts):
        self.img, self.mnt, self.opts = img, mnt, opts

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        sh("mount", "-o", "loop," + self.opts, self.img, self.mnt)
        return self.mnt

    def __exit__(self, *exc):
        subprocess.run(["umount", self.mnt], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-b", "--build", default=os.path.join(TOP, "build", "bench-store"))
    ap.add_argument("--store", choices=("real", "synthetic"), default="real")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/factory-init/debs"))
    ap.add_argument("--paths", type=int, default=400, help="store paths (synthetic store)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--factory-init", default=os.path.join(TOP, "build", "factory-init"))
    ap.add_argument("--tmpfs", action="store_true", help="the images in /dev/shm (CPU bound alone)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench-store.py: needs root (loop mounts)", file=sys.stderr)
        return 2
    b = os.path.abspath(a.build)
    os.makedirs(b, exist_ok=True)
    # One source image per store, cached.
    kind = "real" if a.store == "real" else f"synthetic.{a.paths}"
    src_img, dst_img = os.path.join(b, f"src.{kind}.ext4"), os.path.join(b, "dst.btrfs")
    shm = os.path.join("/dev/shm", "factory-init-bench")
    src_mnt, dst_mnt = os.path.join(b, "src"), os.path.join(b, "dst")

    # The source image, once.
    stamp = os.path.join(b, f"src.{kind}.v3.done")   # v3: filled by cp -a
    if not os.path.exists(stamp):
        tree = os.path.join(b, "tree")
        if os.path.exists(tree):
            subprocess.run(["chmod", "-R", "u+w", tree])
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(tree)
        if a.store == "real":
            out = sh("python3", os.path.join(HERE, "mkrealstore.py"), os.path.join(tree, "nix"),
                     "--cache", a.cache)
            print("mkrealstore.py: " + out.strip().splitlines()[-1])
        else:
            sh("python3", os.path.join(HERE, "mkstore.py"), os.path.join(tree, "nix"),
               "--paths", str(a.paths), "--files", "60", "--large", "20")
        size = int(sh("du", "-sb", tree).split()[0])
        entries = int(sh("sh", "-c", f"find {tree} | wc -l"))
        subprocess.run(["rm", "-f", src_img], check=True)
        # Room for the 4 KiB blocks of small files, and inodes for every name (.links ones too).
        sh("truncate", "-s", str(int(size * 1.3) + (256 << 20)), src_img)
        sh("mkfs.ext4", "-q", "-F", "-I", "256", "-N", str(int(entries * 1.3) + 10000),
           src_img)
        # Filled through a loop mount by cp -a, which keeps every hard link (symlinks' too):
        # mkfs.ext4 -d takes minutes on a directory as large as .links, and drops the links
        # between symlinks.
        with Loop(src_img, src_mnt, "rw"):
            sh("cp", "-a", os.path.join(tree, "nix"), os.path.join(src_mnt, "nix"))
        subprocess.run(["chmod", "-R", "u+w", tree])
        shutil.rmtree(tree)
        open(stamp, "w").close()

    if a.tmpfs:
        os.makedirs(shm, exist_ok=True)
        atexit.register(shutil.rmtree, shm, True)   # also when a run fails: it holds RAM
        subprocess.run(["cp", "--sparse=always", src_img, os.path.join(shm, "src.ext4")],
                       check=True)
        src_img, dst_img = os.path.join(shm, "src.ext4"), os.path.join(shm, "dst.btrfs")
    with Loop(src_img, src_mnt, "ro"):
        nix = os.path.join(src_mnt, "nix")
        paths = len([n for n in os.listdir(os.path.join(nix, "store")) if n != ".links"])
        files = int(sh("sh", "-c", f"find {nix} -type f | wc -l"))
        links = int(sh("sh", "-c", f"find {nix} -type f -links +1 | wc -l"))
        data = int(sh("du", "-sb", "--apparent-size", nix).split()[0])
    what = "real store (Debian bookworm packages)" if a.store == "real" else "synthetic store"
    ncpu = os.cpu_count() or 1
    where = "in /dev/shm" if a.tmpfs else "on " + b
    print(f"tree: {what}, {paths} store paths, {files} file names ({links} with more than one "
          f"link), {data / 1e6:.0f} MB apparent; ext4 -> btrfs compress=zstd (loop images "
          f"{where}), {ncpu} CPUs")

    tools = {
        "factory-init": lambda s, d: [a.factory_init, "copy-store", s, d],
        "rsync -aHX": lambda s, d: ["rsync", "-aHX", s + "/", d + "/"],
        "cp -a": lambda s, d: ["cp", "-a", s, d],
    }
    def raw_copy():
        # The raw bandwidth: the same number of bytes, image to image, through the page cache
        # and synced, as the copies are.
        raw = os.path.join(os.path.dirname(dst_img), "raw.out")
        drop_caches()
        c0, t0 = cpu_now(), time.monotonic()
        own = run_timed(["dd", f"if={src_img}", f"of={raw}", "bs=4M",
                         f"count={data // (4 << 20) + 1}", "conv=fsync", "status=none"])
        t, c1 = time.monotonic() - t0, cpu_now()
        os.unlink(raw)
        return t, own, c1[0] - c0[0], c1[1] - c0[1]

    # Round robin (one run of each tool, then dd, in turn), so that drifts of the host hit all
    # alike; the ratios are also printed per repetition.
    times = {name: [] for name in list(tools) + ["raw (dd)"]}
    own_cpu = {name: [] for name in times}    # the tool's user + system seconds
    busy_cpu = {name: [] for name in times}   # the whole machine's busy CPU seconds
    steal = {name: [] for name in times}      # fraction of the run's CPU time stolen

    def record(name, t, own, busy, stolen):
        times[name].append(t)
        own_cpu[name].append(own)
        busy_cpu[name].append(busy)
        steal[name].append(stolen / (t * ncpu))
    for rep in range(a.runs):
        for name, cmd in tools.items():
            subprocess.run(["rm", "-f", dst_img], check=True)
            sh("truncate", "-s", str(data * 3 + (512 << 20)), dst_img)
            sh("mkfs.btrfs", "-q", "-f", dst_img)
            with Loop(src_img, src_mnt, "ro"):
                with Loop(dst_img, dst_mnt, "compress=zstd"):
                    drop_caches()
                    c0, t0 = cpu_now(), time.monotonic()
                    own = run_timed(cmd(os.path.join(src_mnt, "nix"),
                                        os.path.join(dst_mnt, "nix")))
                    sh("sync", "-f", dst_mnt)
                # umount (the final writeback) counts too
                t, c1 = time.monotonic() - t0, cpu_now()
                record(name, t, own, c1[0] - c0[0], c1[1] - c0[1])
        record("raw (dd)", *raw_copy())
        ours = times["factory-init"][-1]
        print(f"run {rep + 1}/{a.runs}: factory-init {ours:.2f} s; "
              + ", ".join(f"{n} {t[-1]:.2f} s ({t[-1] / ours:.2f}x)"
                          for n, t in times.items() if n != "factory-init"), flush=True)
    results = {name: statistics.median(t) for name, t in times.items()}
    med = lambda d, n: statistics.median(d[n])

    base = results["factory-init"]
    print(f"{'tool':<14} {'median s':>9} {'MB/s':>7} {'vs factory-init':>16} {'own CPU s':>10} "
          f"{'busy CPU s':>11} {'steal':>6}")
    for name, t in results.items():
        print(f"{name:<14} {t:9.2f} {data / 1e6 / t:7.0f} {t / base:15.2f}x "
              f"{med(own_cpu, name):10.2f} {med(busy_cpu, name):11.2f} "
              f"{med(steal, name) * 100:5.0f}%")
    print(f"factory-init copy-store reaches {results['raw (dd)'] / base * 100:.0f}% of the raw "
          f"bandwidth; rsync -aHX takes {results['rsync -aHX'] / base:.2f}x and cp -a "
          f"{results['cp -a'] / base:.2f}x its time")
    # The CPU floor: the least busy CPU any copying tool needed, over every CPU.
    copiers = list(tools)
    least = min(copiers, key=lambda n: med(busy_cpu, n))
    # What the hypervisor left of the CPUs: the median share not stolen over the copies' runs.
    left = 1 - statistics.median([x for n in copiers for x in steal[n]])
    floor = med(busy_cpu, least) / (ncpu * left)
    outside = med(busy_cpu, least) - med(own_cpu, least)
    print(f"CPU floor: {least} kept the machine busy for {med(busy_cpu, least):.2f} CPU s "
          f"({outside:.2f} of them outside the tool: compression, Btrfs metadata, loop "
          f"devices); on {ncpu} CPUs ({left * 100:.0f}% of them left by the hypervisor) no "
          f"copy asking for the same work ends before {floor:.2f} s, "
          f"where rsync -aHX would take {results['rsync -aHX'] / floor:.2f}x and cp -a "
          f"{results['cp -a'] / floor:.2f}x its time; factory-init is at "
          f"{base / floor:.2f}x the floor")
    worst = max(max(v) for v in steal.values())
    if worst > 0.10:
        print(f"warning: the hypervisor took up to {worst * 100:.0f}% of the CPU time of a run "
              f"(steal): these times measure the host as much as the tools")
    return 0


if __name__ == "__main__":
    sys.exit(main())
