"""scenarios_tools.py - fleet tooling: nixos/create-data-disk.

data-disk-tool, data-disk-tool-tpm2.  Registered in this order, after scenarios_store.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import harness
from harness import Disk
from context import (FACTORY_INIT_DEV, FI_APPEND, PERSIST_CONFIG, RUN_CONFIG, TOP, attempts,
                     boot_pcrs, check_no_secret, fi_initrd, fresh_dir, read_key, reporter_sha256,
                     reporter_stats, scenario, status_of)


CREATE_DATA_DISK = os.path.join(TOP, "nixos", "create-data-disk")


def extract_data_disk(ctx, img, key, name):
    """Reads IMAGE's file system on the host without device-mapper: decrypts a copy offline
    (cryptsetup reencrypt --decrypt), checks it (btrfs check) and copies its files out with their
    owners and modes (btrfs restore -m). Returns the directory."""
    work = fresh_dir(ctx.path(name))
    plain = os.path.join(work, "plain.img")
    subprocess.run(["cp", "--sparse=always", img, plain], check=True)
    for cmd in (["cryptsetup", "reencrypt", "--batch-mode", "--decrypt", "--force-offline-reencrypt",
                 "--header", os.path.join(work, "header"), "--key-file", key, plain],
                ["btrfs", "check", "--readonly", plain],
                ["btrfs", "restore", "-m", plain, os.path.join(work, "files")]):
        if cmd[1] == "restore":
            os.makedirs(cmd[-1])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ctx.require(p.returncode == 0, f"{' '.join(cmd[:2])} failed: {p.stdout[-600:]}")
    os.unlink(plain)
    return os.path.join(work, "files")


@scenario("data-disk-tool")
def data_disk_tool(ctx):
    """nixos/create-data-disk makes a data disk offline (LUKS2 + Btrfs, /persist layout, config,
    age host key): on the host its age key decrypts what is encrypted to the printed recipient;
    in the VM stage 1 unlocks and mounts it, merges its config, and sees the same key, root-owned
    with the modes asked for."""
    key = ctx.path("data-disk-tool.key")
    with open(key, "w") as f:
        f.write("disk-tool-" + os.urandom(12).hex())
    with open(key) as f:
        secret = f.read()
    img = ctx.path("data-disk-tool.img")
    size = 1 << 30
    cfg = {"hostname": "disk-tool-1", "repo": "https://git.example.org/fleet.git",
           "branch": "main"}
    t = subprocess.run([CREATE_DATA_DISK, "--force", "--pbkdf", "pbkdf2", "--pbkdf-iterations",
                        "1000", "--key-file", key, "--hostname", cfg["hostname"], "--repo",
                        cfg["repo"], "--branch", cfg["branch"], img, "1G"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.require(t.returncode == 0, f"create-data-disk failed: {t.stderr.strip()}")
    ctx.check(secret not in t.stdout + t.stderr, "the tool printed the key")
    recipient = t.stdout.strip().splitlines()[-1] if t.stdout.strip() else ""
    ctx.require(re.fullmatch(r"age1[0-9a-z]{58}", recipient), f"no recipient: {t.stdout!r}")
    st = os.stat(img)
    ctx.check(st.st_size == size, f"image is {st.st_size} bytes")
    ctx.check(st.st_blocks * 512 < size // 4, f"image not sparse: {st.st_blocks * 512} bytes")
    ctx.diag(f"1 GiB image, {st.st_blocks * 512 >> 20} MiB allocated; recipient {recipient}")
    meta = json.loads(subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", img],
                                     check=True, stdout=subprocess.PIPE, text=True).stdout)
    label = subprocess.run(["blkid", "-p", "-s", "LABEL", "-o", "value", img],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    ctx.check(label == "persist", f"LUKS2 label {label!r}")
    ctx.check([s["kdf"]["type"] for s in meta["keyslots"].values()] == ["pbkdf2"],
              f"key slots {meta['keyslots']}")

    # Host: the age round trip with the key read back out of the image (no copy kept by the tool).
    files = extract_data_disk(ctx, img, key, "data-disk-tool.extract")
    agekey = os.path.join(files, "keys", "host.agekey")
    ctx.require(os.path.isfile(agekey), "keys/host.agekey missing from the image")
    for tool in ("age", "age-keygen"):
        ctx.require(shutil.which(tool), f"{tool} missing (apt-get install age)")
    msg = "sops says hello " + os.urandom(8).hex()
    enc = subprocess.run(["age", "-r", recipient, "-a"], input=msg, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    dec = subprocess.run(["age", "-d", "-i", agekey], input=enc, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    ctx.check(dec.returncode == 0 and dec.stdout == msg,
              f"age -d with the image's key failed: {dec.stderr.strip()}")
    pub = subprocess.run(["age-keygen", "-y", agekey], check=True, stdout=subprocess.PIPE,
                         text=True).stdout.strip()
    ctx.check(pub == recipient, f"age-keygen -y gives {pub}, the tool printed {recipient}")
    with open(agekey, "rb") as f:
        key_sha = hashlib.sha256(f.read()).hexdigest()
    with open(agekey) as f:
        age_secret = [l.strip() for l in f if l.startswith("AGE-SECRET-KEY-")][0]
    ctx.check(age_secret not in t.stdout + t.stderr, "the tool printed the age key")
    with open(os.path.join(files, "config.json")) as f:
        ctx.check(json.load(f) == cfg, "config.json in the image differs")
    want = {"": (0o755, 0, 0), "config.json": (0o644, 0, 0), "keys": (0o700, 0, 0),
            "keys/host.agekey": (0o600, 0, 0), "keys/host.agekey.pub": (0o644, 0, 0),
            "nix": (0o755, 0, 0), "nix/upper": (0o755, 0, 0), "nix/work": (0o755, 0, 0)}
    for rel, (mode, uid, gid) in want.items():
        if rel == "":
            continue        # btrfs restore does not set the top directory's mode
        s = os.lstat(os.path.join(files, rel))
        ctx.check((s.st_mode & 0o7777, s.st_uid, s.st_gid) == (mode, uid, gid),
                  f"{rel} in the image: {oct(s.st_mode & 0o7777)} {s.st_uid}:{s.st_gid}")
    subprocess.run(["rm", "-rf", os.path.dirname(files)], check=True)

    # Guest: stage 1 unlocks it with the same key file (embedded in the initrd) and mounts it;
    # a second boot finds what the first wrote.
    initrd = fi_initrd(ctx, "fi-data-disk-tool", keyfile=key)
    vdb = harness.overlay(img, ctx.path("data-disk-tool.vdb.qcow2"))
    disks = [Disk(ctx.disks.factory), Disk(vdb, "qcow2", snapshot=False)]
    r = ctx.boot("data-disk-tool-1", initrd, disks, FI_APPEND)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(st["unlock"] == "keyfile", f"unlock {st['unlock']}")
    p = r.mount_at("/persist")
    ctx.require(p is not None, "/persist not mounted")
    ctx.check(p.device == "/dev/mapper/persist" and p.fstype == "btrfs", f"/persist: {p}")
    for path in (PERSIST_CONFIG, RUN_CONFIG):
        ctx.check(path in r.files and r.json(path) == cfg, f"{path}: {r.files.get(path)}")
    ctx.check(r.marker_written, "no marker written under /nix (overlay on the new disk)")
    stats = reporter_stats(r)
    for rel, (mode, uid, gid) in want.items():
        path = "/persist" + ("/" + rel if rel else "")
        if path in ("/persist/nix/upper", "/persist/nix/work"):
            continue        # not in the reporter's list
        ctx.check(stats.get(path) == (f"{mode:o}", str(uid), str(gid)),
                  f"{path} in the VM: {stats.get(path)}")
    shas = reporter_sha256(r)
    ctx.check(shas.get("/persist/keys/host.agekey") == key_sha,
              f"the VM's host.agekey differs from the image's: {shas}")
    check_no_secret(ctx, r, secret)
    check_no_secret(ctx, r, age_secret)
    r2 = ctx.boot("data-disk-tool-2", initrd, disks, FI_APPEND)
    ctx.check(status_of(ctx, r2)["outcome"] == "persist", "boot 2 did not reach /persist")
    ctx.check(r2.marker_found and r2.marker_found == r.marker_written,
              f"boot 2 found marker {r2.marker_found!r}, boot 1 wrote {r.marker_written!r}")


@scenario("data-disk-tool-tpm2")
def data_disk_tool_tpm2(ctx):
    """create-data-disk --tpm2-device enrolls a TPM2 token (factory-init enroll-tpm2, sealed to
    the PCR 7 value the VM measures): stage 1 unlocks the new disk unattended."""
    state = fresh_dir(ctx.path("data-disk-tool-tpm2.tpm"))
    pcr7 = boot_pcrs(ctx, "data-disk-tool-tpm2-pcrs", state)[7]
    img = ctx.path("data-disk-tool-tpm2.img")
    with harness.swtpm_tcp(state) as tpm:
        t = subprocess.run([CREATE_DATA_DISK, "--force", "--pbkdf", "pbkdf2",
                            "--pbkdf-iterations", "1000", "--key-file", ctx.disks.key,
                            "--hostname", "disk-tool-2", f"--tpm2-device={tpm.tcti}",
                            f"--tpm2-pcrs=7:sha256={pcr7}", "--factory-init", FACTORY_INIT_DEV,
                            "--format", "qcow2", img, "512M"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.require(t.returncode == 0, f"create-data-disk failed: {t.stderr.strip()}")
    ctx.diag(t.stderr.strip().splitlines()[0])
    with harness.Swtpm(state) as tpm:
        r = ctx.boot("data-disk-tool-tpm2", fi_initrd(ctx, "fi-plain"),
                     [Disk(ctx.disks.factory), Disk(img, "qcow2")], FI_APPEND,
                     extra_args=tpm.qemu_args)
    st = status_of(ctx, r)
    ctx.check(st["outcome"] == "persist", f"outcome {st['outcome']}: {st['reason']}")
    ctx.check(attempts(st) == [("tpm2", True)], f"attempts {attempts(st)}")
    ctx.check(r.json(PERSIST_CONFIG).get("hostname") == "disk-tool-2",
              f"{PERSIST_CONFIG}: {r.files.get(PERSIST_CONFIG)}")
    check_no_secret(ctx, r, read_key(ctx))
