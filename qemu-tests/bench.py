#!/usr/bin/env python3
"""bench.py - `make bench`: boot time over the floor, per-step durations, sizes.

Boots with QEMU's instruction clock (-icount shift=0,sleep=off), so guest time is repeatable:
  * floor: a busybox initrd that only loads virtio and switches root (qemu-tests/floor.sh);
  * factory-init: scenario luks-cmdline-key (LUKS2 with a PBKDF2-1000 key slot, Btrfs, overlay).
Both boot the same kernel with the same two disks. The data disk is a copy-on-write overlay that
one unmeasured boot has mounted once (a fleet VM's disk has been mounted before; Btrfs's first
mount does one-off work). Each then runs BENCH_RUNS times (default 5); the median uptime at the
stage-2 marker is reported, with the overhead between them, the median of each step's duration
from status.json, and the initrd and binary sizes. Results also go to build/bench/results-<cpu>.json.
BENCH_CPU=max runs the guests on QEMU's "max" CPU (SSSE3, AVX2: closer to a KVM host's CPU).
Targets (README): overhead <= 1.5 s, initrd <= 4 MB, binary <= 3 MB.

Usage: qemu-tests/bench.py [--kernel SUITE ...]   (default: bookworm; `make bench` runs all three)
Each --kernel (bookworm 6.1, trixie 6.12, forky 7.2: qemu-tests/stack.sh kernel SUITE) is
benchmarked in its own build directory (build/bench, build/bench-SUITE); with more than one, a
table of the per-step medians per kernel follows.

Guest time stays repeatable only while the guest computes: when it waits for disk I/O, QEMU
jumps its clock to the next timer, so a loaded host can add tens of milliseconds to a step that
reads the disk. The median absorbs most of that.
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True   # keep qemu-tests/ free of __pycache__
sys.path.insert(0, HERE)
import harness  # noqa: E402
import context  # noqa: E402
from harness import Disk  # noqa: E402


def bench(suite, runs, cpu):
    """Benchmark one kernel; returns the results dict, or None (and says why) on failure."""
    extra = ["-cpu", cpu] if cpu else []
    build = os.path.join(context.TOP, "build", "bench" if suite == "bookworm" else f"bench-{suite}")
    ctx = context.Context(build, icount=True, kernel=suite)
    print(f"# kernel: {suite} {ctx.kver}", flush=True)
    d = ctx.disks
    with open(d.key) as f:
        key = f.read()
    floor = ctx.floor_initrd()
    fi = context.fi_initrd(ctx, "bench")
    vdb = harness.overlay(d.luks, ctx.path("bench-vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    append = f"{context.FI_APPEND} vm.luks.key={key}"
    warm = ctx.boot("bench-warmup", fi, disks, append, timeout=300, extra_args=extra)
    if context.STATUS not in warm.files or warm.json(context.STATUS)["outcome"] != "persist":
        print(f"warm-up boot failed: {warm.log_path}")
        return None
    floor_up, fi_up, steps = [], [], {}
    for i in range(runs):
        r = ctx.boot(f"bench-floor-{i}", floor, disks, "console=ttyS0 panic=-1 quiet",
                     timeout=300, extra_args=extra)
        if r.uptime is None:
            print(f"floor boot {i} failed: {r.log_path}")
            return None
        floor_up.append(r.uptime)
        r = ctx.boot(f"bench-fi-{i}", fi, disks, append, timeout=300, extra_args=extra)
        st = r.json(context.STATUS) if context.STATUS in r.files else None
        if r.uptime is None or not st or st["outcome"] != "persist":
            print(f"factory-init boot {i} failed: {r.log_path}")
            return None
        fi_up.append(r.uptime)
        for s in st["steps"]:
            steps.setdefault(s["name"], []).append(s["ms"])
        steps.setdefault("total", []).append(st["total_ms"])
        print(f"run {i + 1}/{runs}: floor {floor_up[-1]:.2f} s, factory-init {fi_up[-1]:.2f} s",
              flush=True)
    res = {
        "kernel": suite,
        "kver": ctx.kver,
        "runs": runs,
        "clock": "icount shift=0,sleep=off",
        "cpu": cpu or "qemu64",
        "floor_uptimes_s": floor_up,
        "factory_init_uptimes_s": fi_up,
        "floor_uptime_s": statistics.median(floor_up),
        "factory_init_uptime_s": statistics.median(fi_up),
        "overhead_s": statistics.median(fi_up) - statistics.median(floor_up),
        "steps_ms": {k: statistics.median(v) for k, v in steps.items()},
        "initrd_bytes": os.path.getsize(fi),
        "floor_initrd_bytes": os.path.getsize(floor),
        "binary_bytes": os.path.getsize(context.FACTORY_INIT),
    }
    with open(ctx.path(f"results-{res['cpu']}.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(f"\n{suite} {ctx.kver}: median uptime at the stage-2 marker ({runs} runs, "
          f"{res['clock']}, cpu {res['cpu']}):")
    print(f"  floor (busybox, no work)   {res['floor_uptime_s']:.2f} s")
    print(f"  factory-init (LUKS2+Btrfs) {res['factory_init_uptime_s']:.2f} s")
    print(f"  overhead                   {res['overhead_s']:.2f} s   (target <= 1.5 s)")
    print("factory-init steps (median ms): "
          + ", ".join(f"{k} {v:g}" for k, v in res["steps_ms"].items()))
    print(f"initrd: {res['initrd_bytes']} bytes (target <= 4000000); floor initrd "
          f"{res['floor_initrd_bytes']} bytes")
    print(f"binary: {res['binary_bytes']} bytes stripped, static (target <= 3000000)")
    print("results: " + ctx.path(f"results-{res['cpu']}.json"), flush=True)
    return res


def table(results):
    """Per-step medians (ms) with one column per kernel."""
    names = []
    for r in results:
        names += [n for n in r["steps_ms"] if n not in names and n != "total"]
    names.append("total")
    head = ["step"] + [f"{r['kernel']} {r['kver'].split('-')[0]}" for r in results]
    rows = [[n] + [f"{r['steps_ms'][n]:g}" if n in r["steps_ms"] else "-" for r in results]
            for n in names]
    rows.append(["overhead s"] + [f"{r['overhead_s']:.2f}" for r in results])
    rows.append(["initrd bytes"] + [str(r["initrd_bytes"]) for r in results])
    w = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    print("\nper-step medians per kernel (ms, icount):")
    for row in [head] + rows:
        print("  " + "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i])
                               for i, c in enumerate(row)))


def main():
    ap = argparse.ArgumentParser(description="Boot-time and size benchmark (icount).")
    ap.add_argument("--kernel", action="append", choices=context.KERNEL_SUITES,
                    help="kernel suite to benchmark (repeatable; default bookworm)")
    a = ap.parse_args()
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    # BENCH_CPU=max gives the guest SSSE3/AVX2 (as a KVM host CPU would); default: QEMU's qemu64.
    cpu = os.environ.get("BENCH_CPU")
    results = []
    for suite in a.kernel or ["bookworm"]:
        r = bench(suite, runs, cpu)
        if r is None:
            return 1
        results.append(r)
    if len(results) > 1:
        table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
