#!/usr/bin/env python3
"""run.py - run the QEMU test scenarios and report in TAP.

Usage:
    qemu-tests/run.py [-b BUILDDIR] [--kernel SUITE] [--icount] [--echo] [--list] [NAME...]

NAME selects scenarios (shell-style patterns allowed, e.g. 'luks-*');
without names every scenario runs.  Output is TAP: a plan line, a ``# kernel:`` line (suite,
version and directory of the kernel the guests boot), then ``ok N - name`` / ``not ok N - name``
with ``# `` diagnostics, and a last line ``P passed, F failed``.  The exit status is 1 if
anything failed; 2 (after ``Bail out!``) when the kernel cannot be had.

--kernel SUITE (bookworm, trixie or forky; default $QEMU_KERNEL, else bookworm) picks the Debian
cloud kernel (qemu-tests/stack.sh kernel SUITE: 6.1, 6.12, 7.2).  Initrds contain the kernel's
modules, so each suite gets its own build directory: build/qemu for bookworm, build/qemu-SUITE
otherwise (-b or $QEMU_BUILD override it; context.Context refuses a directory another suite used).

This file is only the command line.  The scenarios live in modules by concern:

    context.py            Context, Abort, the registry (SCENARIOS, @scenario) and the
                          constants and helpers more than one module uses
    scenarios_boot.py     floor, the basic pipeline, fallbacks, config, helper mode
    scenarios_tpm2.py     tpm2-*
    scenarios_unlock.py   credential-*, passphrase, unlock-all-fail
    scenarios_store.py    bind-*, refresh-*
    scenarios_tools.py    data-disk-tool*
    scenarios_hostile.py  hostile-*, stranger-plain-disk, two-luks-disks
    scenarios_provision.py provision-* (vm.persist.provision)

They register when imported below; the order of the imports, then the order in each file, is
the order the scenarios run in and ``--list`` shows.

Adding a scenario: in the module of its concern, write a function taking a
:class:`context.Context` and decorate it with ``@scenario("name")`` (from
context); it runs after the ones above it in that file.  A new module needs an
import below, in the place its scenarios should run.  Use ``ctx.check(cond, msg)`` for
checks that should all be reported, ``ctx.require(cond, msg)`` (or plain
``assert``) to stop the scenario, and ``ctx.diag(msg)`` for extra
output.  ``ctx.boot(...)`` boots the test kernel (see harness.boot), and
``ctx.disks``, ``ctx.kmoddir``, ``ctx.mkinitrd(...)`` give the pieces.  A helper
only one module uses stays in that module; one a second module needs moves to
context.py (import every name a scenario uses: a missing one shows only as a
NameError when that scenario runs).
"""

import argparse
import fnmatch
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True   # keep qemu-tests/ free of __pycache__
sys.path.insert(0, HERE)
from context import KERNEL_SUITES, SCENARIOS, TOP, Abort, Context  # noqa: E402
# Registration order is run order: keep these imports in this order.
import scenarios_boot  # noqa: E402,F401
import scenarios_tpm2  # noqa: E402,F401
import scenarios_systemd262  # noqa: E402,F401
import scenarios_unlock  # noqa: E402,F401
import scenarios_store  # noqa: E402,F401
import scenarios_tools  # noqa: E402,F401
import scenarios_hostile  # noqa: E402,F401
import scenarios_provision  # noqa: E402,F401
import scenarios_systemd  # noqa: E402,F401
import scenarios_sdinitrd  # noqa: E402,F401

DEFAULT_BUILD = os.path.join(TOP, "build", "qemu")


def default_build(suite):
    """build/qemu for bookworm (as always), build/qemu-SUITE for the other kernels."""
    return DEFAULT_BUILD if suite == "bookworm" else f"{DEFAULT_BUILD}-{suite}"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run QEMU scenarios, print TAP.")
    ap.add_argument("names", nargs="*", help="scenario names or patterns")
    ap.add_argument("-b", "--build", default=os.environ.get("QEMU_BUILD"),
                    help="build/output dir (default $QEMU_BUILD, else build/qemu for "
                         "bookworm and build/qemu-SUITE for another kernel)")
    ap.add_argument("--kernel", choices=KERNEL_SUITES,
                    default=os.environ.get("QEMU_KERNEL") or "bookworm",
                    help="Debian suite whose cloud kernel the guests boot "
                         "(default $QEMU_KERNEL, else %(default)s)")
    ap.add_argument("--icount", action="store_true",
                    help="run guests with -icount shift=0,sleep=off")
    ap.add_argument("--echo", action="store_true",
                    help="copy guest consoles to stderr")
    ap.add_argument("--list", action="store_true", help="list scenarios")
    a = ap.parse_args(argv)

    if a.list:
        for name, fn in SCENARIOS.items():
            print(f"{name:24} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    selected = list(SCENARIOS)
    if a.names:
        selected = []
        for pat in a.names:
            hits = [n for n in SCENARIOS if fnmatch.fnmatchcase(n, pat)]
            if not hits:
                print(f"run.py: no scenario matches {pat!r} "
                      f"(have: {', '.join(SCENARIOS)})", file=sys.stderr)
                return 2
            selected += [h for h in hits if h not in selected]

    if a.kernel not in KERNEL_SUITES:   # $QEMU_KERNEL bypasses argparse's choices
        ap.error(f"--kernel: {a.kernel!r} is not one of {', '.join(KERNEL_SUITES)}")
    ctx = Context(a.build or default_build(a.kernel), icount=a.icount, echo=a.echo,
                  kernel=a.kernel)
    passed = failed = 0
    print(f"1..{len(selected)}", flush=True)
    # Fetch the kernel before the first scenario, so its version heads the output (and a
    # kernel that cannot be had stops the run once, not in every scenario).
    try:
        print(f"# kernel: {a.kernel} {ctx.kver} ({ctx.kernel_dir})")
    except Exception as e:   # stack.sh failed, or the build dir belongs to another kernel
        first, *rest = str(e).splitlines() or [""]
        print(f"Bail out! --kernel {a.kernel}: {first}")
        for line in rest:
            print(f"# {line}")
        sys.stdout.flush()
        return 2
    print(f"# build: {ctx.build}", flush=True)
    for n, name in enumerate(selected, 1):
        ctx.reset()
        t0 = time.monotonic()
        try:
            SCENARIOS[name](ctx)
        except Abort:
            pass
        except AssertionError as e:
            ctx.failures.append(f"assertion failed: {e}" if str(e) else
                                "assertion failed:\n" + traceback.format_exc().rstrip())
        except Exception:
            ctx.failures.append("exception:\n" + traceback.format_exc().rstrip())
        dt = time.monotonic() - t0
        if ctx.failures:
            failed += 1
            print(f"not ok {n} - {name}")
            lines = [f"FAIL: {f}" for f in ctx.failures] + ctx.diags
            for r in ctx.boots:
                lines.append(r.summary())
                lines.append(f"log: {r.log_path}")
            if ctx.boots:
                lines.append("console tail:")
                lines += ["  " + l for l in ctx.boots[-1].tail(25).splitlines()]
        else:
            passed += 1
            print(f"ok {n} - {name}")
            lines = list(ctx.diags)
        lines.append(f"{name}: {dt:.1f} s")
        for block in lines:
            for line in block.splitlines():
                print(f"# {line}")
        sys.stdout.flush()
    print(f"# kernel: {a.kernel} {ctx.kver}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
