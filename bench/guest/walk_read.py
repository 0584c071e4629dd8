#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest half of bench/bench_guest.py: our module against EROFS+overlayfs, inside one QEMU boot.

Run by `qemu/run.py --job bench/guest/walk_read.py -- [--repeat N] [--parts walk,read]`, disk preloaded
(`--disk-dir`) by bench_guest.py with:
    img.cfs       the composefs image of a 100,000-entry tree
    objects/      its object store
    meta.json     {"big_path": path of the 256 MiB file in the image,
                   "big_object": that file's object, relative to the disk}
Both mounts read the same image and objects from the guest's ext4 disk ($CFS_VERITY_DIR):
    module:  mount -t composefs IMG MNT -o basedir=OBJ,verity_check=0
    overlay: cfsctl mount IMG MNT --basedir OBJ --backend overlay --verity-check 0
(the objects have no fs-verity: checking is off for both).

Timings, each REPEAT times, the two mounts alternating so that they see the same load:
  walk  `find MNT -ls >/dev/null` (readdir + lstat of every entry, readlink of symlinks);
        cold = `sync; echo 3 >/proc/sys/vm/drop_caches` right before each run, warm = after a
        walk of the same mount;
  lswalk  the same with `ls -lR MNT >/dev/null` (GNU ls -l also probes each entry's ACL xattrs);
  read  the 256 MiB file read to its end with 1 MiB read()s, through the module, through the
        overlay mount and directly from its object; cold and warm as above.
Each sample is [wall seconds, CPU seconds, system seconds] (user + system and system alone of the
walking child, or of this process for reads). Results go to $CFS_OUT_DIR/guest_bench.json; progress to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("CFS_VERITY_DIR", "/run/cfs/verity"))
OUT = Path(os.environ.get("CFS_OUT_DIR", "/run/cfs/out"))
READ_CHUNK = 1 << 20


def say(msg: str) -> None:
    print(f"guest-bench: {msg}", flush=True)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# the metadata walkers, by part name: find -ls (readdir + lstat + readlink) and ls -lR (also the
# ACL/xattr probes of GNU ls -l)
WALKERS = {"walk": ["find", "{}", "-ls"], "lswalk": ["ls", "-lR", "{}"]}
# TZ set: without it glibc's localtime() stat()s /etc/localtime for every line printed, and in
# this guest that is a symlink on the 9p root, i.e. a readlink round trip to the host per entry
# (9% of a cold walk's samples in a profile), a cost of the harness that both mounts paid alike
WALK_ENV = {**os.environ, "TZ": "UTC"}


def walker_cmd(mnt: Path, part: str = "walk") -> list[str]:
    return [str(mnt) if a == "{}" else a for a in WALKERS[part]]


def mount_both(image: Path, objects: Path) -> dict[str, Path]:
    """`image` mounted by our module and by EROFS+overlayfs (`cfsctl mount`), checking off."""
    mnts = {"module": Path("/run/cfs/mnt-module"), "overlay": Path("/run/cfs/mnt-overlay")}
    for m in mnts.values():
        m.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "composefs", str(image), str(mnts["module"]),
                    "-o", f"basedir={objects},verity_check=0"], check=True)
    subprocess.run(["cfsctl", "mount", str(image), str(mnts["overlay"]), "--basedir", str(objects),
                    "--backend", "overlay", "--verity-check", "0"], check=True)
    return mnts


def umount_both(mnts: dict[str, Path]) -> None:
    subprocess.run(["umount", str(mnts["module"])], check=False)
    subprocess.run(["cfsctl", "umount", str(mnts["overlay"])], check=False)


def walk(mnt: Path, part: str = "walk") -> list[float]:
    cmd = walker_cmd(mnt, part)
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, env=WALK_ENV)
    c1 = os.times()
    wall = time.perf_counter() - t0
    sys_s = c1.children_system - c0.children_system
    return [wall, (c1.children_user - c0.children_user) + sys_s, sys_s]


def read_all(path: Path) -> tuple[list[float], int]:
    buf = bytearray(READ_CHUNK)
    t0, c0 = time.perf_counter(), os.times()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += k
    c1 = os.times()
    wall = time.perf_counter() - t0
    return [wall, (c1.user - c0.user) + (c1.system - c0.system), c1.system - c0.system], n


def count_entries(mnt: Path) -> int:
    out = subprocess.run(["find", str(mnt)], stdout=subprocess.PIPE, check=True).stdout
    return out.count(b"\n")


def files_of(mnts: dict, meta: dict) -> dict:
    return {"module": mnts["module"] / meta["big_path"],
            "overlay": mnts["overlay"] / meta["big_path"],
            "direct": DATA / meta["big_object"]}


def reads_of(files: dict, repeat: int) -> tuple[int, dict]:
    """Cold and warm reads of the big file through each mount and directly."""
    reads: dict = {k: {"cold": [], "warm": []} for k in files}
    size = files["direct"].stat().st_size
    for i in range(repeat):
        order = list(files) if i % 2 == 0 else list(reversed(files))
        for k in order:
            drop_caches()
            sample, n = read_all(files[k])
            if n != size:
                raise SystemExit(f"{files[k]}: read {n} bytes, expected {size}")
            reads[k]["cold"].append(sample)
            say(f"read {k} cold #{i}: {sample}")
    for k in files:
        read_all(files[k])  # warm-up (module and overlay share the object's page cache)
    for i in range(repeat):
        order = list(files) if i % 2 == 0 else list(reversed(files))
        for k in order:
            reads[k]["warm"].append(read_all(files[k])[0])
            say(f"read {k} warm #{i}: {reads[k]['warm'][-1]}")
    return size, reads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT / "guest_bench.json")
    ap.add_argument("--parts", default="walk,lswalk,read",
                    help="comma-separated: walk (find -ls), lswalk (ls -lR), read (default all)")
    a = ap.parse_args()

    meta = json.loads((DATA / "meta.json").read_text())
    image, objects = DATA / "img.cfs", DATA / "objects"
    mnts = mount_both(image, objects)
    res: dict = {"kernel": platform.release(), "repeat": a.repeat, "image_bytes": image.stat().st_size,
                 "mounts": [l for l in Path("/proc/self/mounts").read_text().splitlines()
                            if "/run/cfs/" in l or "composefs" in l]}
    try:
        # Bring the image and the big object into the HOST's page cache (QEMU's cache=unsafe disk
        # reads through it), so that the first cold run in the boot does not also pay the host's
        # disk; the guest's caches are dropped before every cold run anyway.
        for p in (image, DATA / meta["big_object"]):
            read_all(p)
        counts = {k: count_entries(m) for k, m in mnts.items()}
        say(f"entries: {counts}")
        if len(set(counts.values())) != 1:
            raise SystemExit(f"the two mounts show different trees: {counts}")
        res["entries"] = counts["module"]

        parts = set(a.parts.split(","))
        for part in (p for p in WALKERS if p in parts):
            walks: dict = {k: {"cold": [], "warm": []} for k in mnts}
            for i in range(a.repeat):
                order = list(mnts) if i % 2 == 0 else list(reversed(mnts))
                for k in order:
                    drop_caches()
                    walks[k]["cold"].append(walk(mnts[k], part))
                    say(f"{part} {k} cold #{i}: {walks[k]['cold'][-1]}")
            for k in mnts:
                walk(mnts[k], part)  # warm-up
            for i in range(a.repeat):
                order = list(mnts) if i % 2 == 0 else list(reversed(mnts))
                for k in order:
                    walks[k]["warm"].append(walk(mnts[k], part))
                    say(f"{part} {k} warm #{i}: {walks[k]['warm'][-1]}")
            res[part] = walks
        if "read" in parts:
            res["read_bytes"], res["read"] = reads_of(files_of(mnts, meta), a.repeat)
    finally:
        umount_both(mnts)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    say(f"results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
