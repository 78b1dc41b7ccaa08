#!/usr/bin/env python3
"""demo.py - the README's main job: boot a factory VM twice, headless, and show the pipeline.

Builds the test kernel, disks and a factory-init initrd (via context.py's Context), gives the VM
a fresh copy-on-write data disk (LUKS2 + Btrfs, key on the kernel command line), boots it twice
under QEMU -accel tcg, and prints what factory-init logged, the status it recorded, the config
handed to stage 2, and the marker that boot 1 wrote under /nix and boot 2 found again.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True   # keep qemu-tests/ free of __pycache__
sys.path.insert(0, HERE)
import harness  # noqa: E402
import context  # noqa: E402
from harness import Disk  # noqa: E402


def show(title, r):
    print(f"\n=== {title}: stage 2 reached after {r.uptime} s of guest time "
          f"({r.wall_time:.1f} s wall)")
    print("--- factory-init's log (from the guest's kmsg):")
    for line in r.kmsg:
        if "factory-init[1]" in line:
            print("   ", line)
    st = r.json(context.STATUS)
    print(f"--- {context.STATUS}: outcome={st['outcome']} device={st['device']} "
          f"unlock={st['unlock']} store={st['store']} total={st['total_ms']} ms")
    print("    steps: " + ", ".join(f"{s['name']} {s['ms']} ms" for s in st["steps"]))
    for path in (context.PERSIST_CONFIG,):
        if path in r.files:
            print(f"--- {path}: {json.dumps(r.json(path))}")
    for m in ("/persist", "/nix", "/nix/.ro-store"):
        mt = r.mount_at(m)
        print(f"--- mount {m}: {mt.device} {mt.fstype} {','.join(mt.options)}" if mt
              else f"--- mount {m}: none")
    print(f"--- marker under /nix: found {r.marker_found!r}, wrote {r.marker_written!r}")


def main():
    ctx = context.Context(os.path.join(context.TOP, "build", "demo"), echo="--echo" in sys.argv)
    d = ctx.disks
    with open(d.key) as f:
        key = f.read()
    initrd = context.fi_initrd(ctx, "demo", config={"hostname": "factory",
                                                     "repo": "https://git.example.org/fleet.git",
                                                     "branch": "main"})
    vdb = harness.overlay(d.luks, ctx.path("demo-vdb.qcow2"))
    disks = [Disk(d.factory), Disk(vdb, "qcow2", snapshot=False)]
    append = f"{context.FI_APPEND} vm.hostname=demo-1 vm.branch=demo vm.luks.key={key}"
    print(f"kernel: {ctx.kernel}\ninitrd: {initrd} ({os.path.getsize(initrd)} bytes)")
    print(f"data disk: {vdb} (copy-on-write over {d.luks})")
    print(f"append: {append.replace(key, '<test key>')}")
    results = []
    for n in (1, 2):
        r = ctx.boot(f"demo-boot{n}", initrd, disks, append)
        if not r.stage2 or context.STATUS not in r.files:
            print(f"boot {n} did not reach stage 2; console log: {r.log_path}\n{r.tail(40)}")
            return 1
        show(f"boot {n}", r)
        results.append(r)
    ok = results[1].marker_found == results[0].marker_written and results[0].marker_written
    print("\n" + ("the marker written in boot 1 was found in boot 2: /nix lives on /persist"
                  if ok else "the marker did not survive the reboot"))
    print(f"console logs: {results[0].log_path}, {results[1].log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
