#!/usr/bin/env bash
# Evaluates the NixOS side (nixos/, flake.nix) against a nixpkgs tree: nothing is built.
#
#   NIXPKGS=/path/to/nixpkgs-24.05 nixos/tests/eval.sh [CASE...]
#
# Each case of nixos/tests/eval.nix is forced to a .drv path with nix-instantiate
# (--readonly-mode: no store writes, no daemon), which runs every NixOS assertion and
# instantiates the initrd; the cases named mistake-* must fail, with the expected message.
# systemd stage 1 is the main case, the scripted stage 1 keeps its cases while NixOS has it.
# unit-render: nixos/render-unit renders nixos/factory-init.service.in to the very text the module
# ships (the test initrd of qemu-tests uses render-unit).
#
# The nixpkgs tree: $NIXPKGS, or else the NixOS 24.05 tarball of ../shared/nixos/ (beside the
# clone), unpacked once into $FACTORY_INIT_CACHE (default ~/.cache/factory-init); with neither it
# prints SKIP and exits 0.
# The evaluator, NIXOS_CHECK_NIX:
#   forky (default)  Debian forky's nix-instantiate (Nix 2.34), run in the cached forky tree of
#                    qemu-tests/stack.sh (built when missing) in a private mount namespace: the
#                    repo and nixpkgs are bound read-only at /tmp/repo and /tmp/nixpkgs, /nix and
#                    /tmp are fresh tmpfs, so the cached tree is never written to. Falls back to
#                    host (with a line saying so) when the tree cannot be had.
#   host             the nix-instantiate on PATH (bookworm: Nix 2.8); SKIP when there is none.
#   DIR              a Debian tree with nix-bin at DIR, as for forky.
# NIXOS_CHECK_JOBS: evaluations run at once (default 2; each takes about 1-2 GB).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${FACTORY_INIT_CACHE:-$HOME/.cache/factory-init}

if [ -z "${NIXPKGS:-}" ]; then
    tarball=$(ls "$repo"/../shared/nixos/nixpkgs-*.tar.zst 2>/dev/null | head -n 1)
    if [ -z "$tarball" ]; then
        echo "SKIP: NIXPKGS not set and no ../shared/nixos/nixpkgs-*.tar.zst (NIXPKGS=/path/to/a NixOS 24.05 nixpkgs tree; see README.md, NixOS)"
        exit 0
    fi
    dir=$cache/$(basename "$tarball" .tar.zst)
    if [ ! -e "$dir/nixpkgs/nixos/lib/eval-config.nix" ]; then
        echo "nixos-check: unpacking $tarball into $dir"
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp" &&
            zstd -q -d --long=27 -c "$tarball" | tar -x -C "$dir.tmp" &&
            rm -rf "$dir" && mv "$dir.tmp" "$dir" || { echo "FAIL: cannot unpack $tarball"; exit 1; }
    fi
    NIXPKGS=$dir/nixpkgs
fi
NIXPKGS=$(cd "$NIXPKGS" && pwd) || exit 1

# nixi ARGS...: nix-instantiate in the chosen evaluator; nix_repo and nix_nixpkgs are the repo's
# and the nixpkgs tree's paths as that evaluator sees them.
nix_root=
case ${NIXOS_CHECK_NIX:-forky} in
    host) ;;
    forky | trixie)
        nix_root=$(sh "$repo/qemu-tests/stack.sh" -q tree "${NIXOS_CHECK_NIX:-forky}" | tail -n 1) ||
            nix_root=
        [ -x "$nix_root/usr/bin/nix-instantiate" ] ||
            { echo "nixos-check: no ${NIXOS_CHECK_NIX:-forky} tree with nix-bin (qemu-tests/stack.sh tree); falling back to the host's nix-instantiate"; nix_root=; } ;;
    *) nix_root=$NIXOS_CHECK_NIX
       [ -x "$nix_root/usr/bin/nix-instantiate" ] ||
           { echo "FAIL: NIXOS_CHECK_NIX=$nix_root has no usr/bin/nix-instantiate"; exit 1; } ;;
esac
if [ -n "$nix_root" ] && ! unshare -m true 2>/dev/null; then
    echo "nixos-check: no private mount namespace here (unshare -m); falling back to the host's nix-instantiate"
    nix_root=
fi
if [ -n "$nix_root" ]; then
    nix_repo=/tmp/repo nix_nixpkgs=/tmp/nixpkgs
    nixi() {
        unshare -m sh -ec '
            root=$1 repo=$2 nixpkgs=$3; shift 3
            mount --make-rprivate /
            mount -t tmpfs -o mode=0755 tmp "$root/tmp"
            mount -t tmpfs -o mode=0755 nix "$root/nix"
            mount -t proc proc "$root/proc"
            mkdir "$root/tmp/repo" "$root/tmp/nixpkgs" "$root/tmp/home"
            mount --bind "$repo" "$root/tmp/repo" && mount -o remount,bind,ro "$root/tmp/repo"
            mount --bind "$nixpkgs" "$root/tmp/nixpkgs" && mount -o remount,bind,ro "$root/tmp/nixpkgs"
            exec chroot "$root" env -i PATH=/usr/bin:/bin HOME=/tmp/home nix-instantiate "$@"
        ' sh "$nix_root" "$repo" "$NIXPKGS" "$@"
    }
else
    if ! command -v nix-instantiate >/dev/null 2>&1; then
        echo "SKIP: nix-instantiate not found (Debian: apt-get install nix-bin)"
        exit 0
    fi
    nix_repo=$repo nix_nixpkgs=$NIXPKGS
    nixi() { nix-instantiate "$@"; }
fi
if [ ! -e "$NIXPKGS/nixos/lib/eval-config.nix" ]; then
    echo "FAIL: $NIXPKGS is not a nixpkgs tree (no nixos/lib/eval-config.nix)"
    exit 1
fi

# case → the text its error must contain (mistake-*: must fail)
declare -A expect_error=(
    [mistake-store-mode]="boot.initrd.factoryInit.storeMode' is not of type"
    [mistake-key-in-config]="embeddedConfig must not hold luks.key"
    [mistake-scripted-hook-with-systemd]="systemd stage 1 does not support 'boot.initrd.postDeviceCommands'"
    [mistake-split-auto]="needs a concrete"
    [mistake-split-scripted]='unlockWith = "systemd-cryptsetup" needs systemd stage 1'
    [mistake-luks-fight]="the two would fight over it"
    [mistake-qemu-vm-store]="qemu-vm's writable store (virtualisation.writableStore)"
    [mistake-scripted-without-options]="boot.initrd.factoryInit needs systemd stage 1 here"
    [mistake-provision-split]="provision.enable needs factory-init to open the data disk"
)
all_cases=(package systemd-overlay metrics provision systemd-bind systemd-keyfile systemd-cryptsetup kernel-modules
           without-scripted-options unit-render qemu-vm-store-off
           scripted-overlay scripted-off local-overlay-store
           sync-config image-qcow2-efi image-qcow2-bios image-raw
           image-hyperv image-vmware image-virtualbox image-openstack image-proxmox flake
           mistake-store-mode mistake-key-in-config mistake-scripted-hook-with-systemd
           mistake-split-auto mistake-split-scripted mistake-luks-fight mistake-qemu-vm-store
           mistake-scripted-without-options mistake-provision-split)
if [ $# -gt 0 ]; then cases=("$@"); else cases=(flake-parse "${all_cases[@]}"); fi

version=$(nixi --eval --expr "(import $nix_nixpkgs/lib).version" 2>/dev/null | tr -d '"')
echo "nixos-check: $(nixi --version)${nix_root:+ in $nix_root}, nixpkgs ${version:-?} at $NIXPKGS"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run_case() {    # case → $out/case.{log,rc,s}
    local c=$1 t0 rc
    t0=$(date +%s%3N)
    if [ "$c" = flake-parse ]; then
        nixi --parse "$nix_repo/flake.nix" >/dev/null 2>"$out/$c.log" &&
            echo "flake.nix parses" >"$out/$c.log"
    elif [ "$c" = plan-modules ]; then
        plan_modules >"$out/$c.log" 2>&1
    elif [ "$c" = unit-render ]; then
        unit_render >"$out/$c.log" 2>&1
    else
        nixi --eval --strict --readonly-mode "$nix_repo/nixos/tests/eval.nix" \
            --arg nixpkgs "$nix_nixpkgs" --argstr case "$c" >"$out/$c.log" 2>&1
    fi
    rc=$?
    echo "$rc" >"$out/$c.rc"
    echo $(($(date +%s%3N) - t0)) >"$out/$c.ms"
}

# The kernel modules factory-init.nix puts in the initrd are those `factory-init --plan` loads
# (checked when a development build is there).
factory_init=$repo/build/factory-init
plan_modules() {
    local nix plan
    nix=$(sed -n '/planModules = \[/,/\];/p' "$here/../modules/factory-init.nix" |
        grep -o '"[a-z0-9_]*"' | tr -d '"' | sort | paste -sd ' ')
    echo '{}' >"$out/empty.json"
    plan=$("$factory_init" --plan --cmdline '' --config "$out/empty.json" |
        python3 -c 'import json, sys; print(" ".join(sorted(json.load(sys.stdin)["modules"])))')
    if [ "$nix" = "$plan" ]; then
        echo "factory-init.nix lists the plan's modules: $plan"
    else
        echo "factory-init.nix lists: $nix"
        echo "factory-init --plan:    $plan"
        return 1
    fi
}
if [ $# -eq 0 ] && [ -x "$factory_init" ]; then cases+=(plan-modules); fi

# The unit the module ships (eval.nix's unit-text: its text and the values it was rendered with)
# against nixos/render-unit's rendering of nixos/factory-init.service.in with the same values.
unit_render() {
    nixi --eval --strict --json --readonly-mode "$nix_repo/nixos/tests/eval.nix" \
        --arg nixpkgs "$nix_nixpkgs" --argstr case unit-text >"$out/unit-text.json" || return 1
    python3 - "$out/unit-text.json" "$here/../render-unit" <<'PY'
import json, subprocess, sys
d = json.load(open(sys.argv[1]))
args = [f"{k}={v}" for k, v in sorted(d["substitutions"].items())]
r = subprocess.run([sys.argv[2], *args], capture_output=True, text=True)
if r.returncode != 0 or r.stdout != d["text"]:
    sys.stderr.write(r.stderr)
    import difflib
    sys.stdout.writelines(difflib.unified_diff(d["text"].splitlines(True), r.stdout.splitlines(True), "module", "render-unit"))
    sys.exit(1)
print(f"render-unit {' '.join(args)} = the module's factory-init.service ({len(r.stdout)} bytes)")
PY
}

jobs_max=${NIXOS_CHECK_JOBS:-2}
t_start=$(date +%s)
for c in "${cases[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
    run_case "$c" &
done
wait

passed=0 failed=0
for c in "${cases[@]}"; do
    rc=$(cat "$out/$c.rc") ms=$(cat "$out/$c.ms")
    s=$((ms / 1000)).$((ms % 1000 / 100))
    if [ -n "${expect_error[$c]:-}" ]; then
        if [ "$rc" != 0 ] && grep -qF -- "${expect_error[$c]}" "$out/$c.log"; then
            echo "PASS $c (${s}s): fails as it must: $(grep -m1 -F -- "${expect_error[$c]}" "$out/$c.log" | sed 's/^ *//; s/^- //')"
            passed=$((passed + 1))
        else
            echo "FAIL $c (${s}s): should fail with \"${expect_error[$c]}\", got:"
            sed 's/^/    /' "$out/$c.log" | tail -n 15
            failed=$((failed + 1))
        fi
    elif [ "$rc" = 0 ]; then
        echo "PASS $c (${s}s) $(tr -d '"' <"$out/$c.log" | tail -n 1)"
        if grep -q "warning" "$out/$c.log"; then grep "warning" "$out/$c.log" | sed 's/^/    /'; fi
        passed=$((passed + 1))
    else
        echo "FAIL $c (${s}s):"
        sed 's/^/    /' "$out/$c.log" | tail -n 20
        failed=$((failed + 1))
    fi
done
total=$(($(date +%s) - t_start))
echo "nixos-check: $passed passed, $failed failed (${total}s, $jobs_max at a time)"
[ "$failed" = 0 ]
