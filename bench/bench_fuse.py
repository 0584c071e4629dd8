# SPDX-License-Identifier: MIT OR Apache-2.0
"""FUSE benchmark (root, issue #14): our FUSE backend against the stock kernel path (EROFS +
overlayfs, ``--backend overlay``) and the reference C ``composefs-fuse``, on one image in one run.

    .venv/bin/python bench/bench_fuse.py [--entries 100000] [--big-mib 1024] [--rounds 5] [--json]

Rows: ``find MNT -ls`` of the whole image warm and cold (caches dropped and every mount made
again before each cold round), and a sequential read (1 MiB blocks) of one big object cold
(caches dropped) and warm. The mounts take turns round by round (ABC BCA CAB ...), each row is the median
of its rounds, and the load average is recorded (the machine is shared). Each round starts
with the next tool. The kernel path cannot
check objects here without fs-verity, so every mount runs with ``--verity-check 0`` (the reference
checks nothing either).

The reference ``composefs-fuse`` (containers/composefs 1.0.x built with ``-Dfuse=enabled``) is
found through ``$COMPOSEFS_FUSE``; without it its rows are left out. The tree, image and objects
are made once in ``bench/work/fuse/`` (or ``--workdir``) and kept for later runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import cfs_images  # noqa: E402

CFSCTL = [os.path.join(os.path.dirname(sys.executable), "cfsctl")]
TITLE = "FUSE: find -ls walk and 1 GiB sequential read, ours vs EROFS+overlayfs vs reference composefs-fuse"


def log(msg: str) -> None:
    print(f">> bench_fuse: {msg}", file=sys.stderr, flush=True)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def prepare(work: str, entries: int, big_mib: int) -> tuple[str, str, str]:
    """The image (``entries`` small files plus one ``big_mib`` MiB file) and its objects, made once."""
    tag = f"e{entries}-b{big_mib}"
    img, objs = os.path.join(work, f"{tag}.cfs"), os.path.join(work, f"{tag}-objects")
    if os.path.exists(img):
        return img, objs, "big"
    src = os.path.join(work, f"{tag}-src")
    subprocess.run(["rm", "-rf", src, objs], check=True)
    log(f"making a tree of {entries} entries and a {big_mib} MiB file in {src}")
    cfs_images.make_tree(src, many=entries, large=1 << 20)
    with open(os.path.join(src, "big"), "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1 << 20))
    log("building the image")
    subprocess.run(CFSCTL + ["build", src, img + ".tmp", "--digest-store", objs], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", src], check=True)
    os.rename(img + ".tmp", img)
    return img, objs, "big"


def mounters(img: str, objs: str) -> dict[str, tuple[list[str], list[str]]]:
    """label -> (mount command, unmount command), MNT standing for the mount point."""
    out = {
        "EROFS+overlayfs (kernel)": (CFSCTL + ["mount", img, "MNT", "--basedir", objs, "--backend", "overlay"],
                                     CFSCTL + ["umount", "MNT"]),
        "cfsctl --fuse (ours)": (CFSCTL + ["mount", img, "MNT", "--basedir", objs, "--fuse", "--verity-check", "0"],
                                 CFSCTL + ["umount", "MNT"]),
    }
    ref = os.environ.get("COMPOSEFS_FUSE")
    if ref and os.access(ref, os.X_OK):
        out["composefs-fuse (reference C)"] = ([ref, "-o", f"source={img},basedir={objs}", "MNT"],
                                               ["fusermount3", "-u", "MNT"])
    elif ref:
        log(f"COMPOSEFS_FUSE={ref} is not executable: reference rows left out")
    return out


class Mounts:
    """Every tool's mount of the image, each at its own mount point, made again on demand."""

    def __init__(self, base: str, cmds: dict):
        self.cmds = cmds
        self.mnt = {}
        for i, label in enumerate(cmds):
            self.mnt[label] = os.path.join(base, f"mnt{i}")
            os.makedirs(self.mnt[label], exist_ok=True)
        self.up: set[str] = set()

    def _run(self, label: str, which: int) -> None:
        cmd = [self.mnt[label] if a == "MNT" else a for a in self.cmds[label][which]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def mount_all(self) -> None:
        for label in self.cmds:
            if label not in self.up:
                self._run(label, 0)
                self.up.add(label)

    def umount_all(self) -> None:
        for label in list(self.up):
            self._run(label, 1)
            self.up.discard(label)

    def remount_cold(self) -> None:
        """Every mount gone, every cache dropped, every mount made again."""
        self.umount_all()
        drop_caches()
        self.mount_all()


def timed(cmd: list[str]) -> tuple[float, float, bytes]:
    """Wall seconds and the command's own CPU seconds (user + system); its output."""
    r0 = os.times()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, check=True)
    wall = time.perf_counter() - t0
    r1 = os.times()
    return wall, (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system), p.stdout


def measure(entries: int = 100_000, big_mib: int = 1024, rounds: int = 5, workdir: str | None = None) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("bench_fuse needs root (the kernel path mounts; drop_caches)")
    work = workdir or os.path.join(ROOT, "bench", "work", "fuse")
    os.makedirs(work, exist_ok=True)
    img, objs, big = prepare(work, entries, big_mib)
    cmds = mounters(img, objs)
    m = Mounts(work, cmds)
    res: dict = {"image": img, "image_bytes": os.path.getsize(img), "rounds": rounds,
                 "tools": list(cmds), "load_start": os.getloadavg(), "cpu": cpu_model()}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    lines: dict[str, int] = {}

    def record(case: str, label: str, wall: float, cpu: float) -> None:
        times.setdefault((case, label), []).append((wall, cpu))

    try:
        m.mount_all()
        for r in range(rounds):
            # Each round starts with another tool: no tool always runs first (or just after
            # caches were dropped, or on a disk cache the previous tool warmed).
            order = list(cmds)[r % len(cmds):] + list(cmds)[:r % len(cmds)]
            log(f"round {r + 1}/{rounds}: walks (load {os.getloadavg()[0]:.1f})")
            m.remount_cold()
            for label in order:
                wall, cpu, out = timed(["find", m.mnt[label], "-ls"])
                lines[label] = out.count(b"\n")
                record("walk cold", label, wall, cpu)
            for label in order:
                timed(["find", m.mnt[label], "-ls"])  # the first warm walk may still fill caches
            for label in order:
                wall, cpu, _ = timed(["find", m.mnt[label], "-ls"])
                record("walk warm", label, wall, cpu)
            log(f"round {r + 1}/{rounds}: reads (load {os.getloadavg()[0]:.1f})")
            for label in order:
                drop_caches()
                path = os.path.join(m.mnt[label], big)
                wall, cpu, _ = timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"])
                record("read cold", label, wall, cpu)
                wall, cpu, _ = timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"])
                record("read warm", label, wall, cpu)
    finally:
        with contextlib.suppress(Exception):
            m.umount_all()
    res["load_end"] = os.getloadavg()
    res["entries"] = lines
    res["big_bytes"] = big_mib << 20
    res["median"] = {f"{case} | {label}": {"wall": statistics.median(w for w, _ in v),
                                           "cpu": statistics.median(c for _, c in v),
                                           "all_wall": [round(w, 3) for w, _ in v]}
                     for (case, label), v in times.items()}
    return res


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


KERNEL = "EROFS+overlayfs (kernel)"
OURS = "cfsctl --fuse (ours)"
REF = "composefs-fuse (reference C)"


def rows(res: dict) -> list[dict]:
    out = []
    med = res["median"]
    n = res["entries"].get(KERNEL)
    for case in ("walk warm", "walk cold", "read cold", "read warm"):
        k = med[f"{case} | {KERNEL}"]["wall"]
        for label in res["tools"]:
            v = med[f"{case} | {label}"]
            row = {"case": (f"find -ls, {n} entries, {case.split()[1]}" if case.startswith("walk")
                            else f"read {res['big_bytes'] >> 20} MiB, {case.split()[1]}"),
                   "tool": label, "seconds": v["wall"], "cpu": v["cpu"]}
            if case.startswith("read"):
                row["bytes"] = res["big_bytes"]
            notes = []
            if label != KERNEL:
                if case.startswith("walk"):
                    notes.append(f"{v['wall'] / k:.2f}x the kernel path's time")
                else:
                    notes.append(f"{k / v['wall'] * 100:.0f}% of the kernel path's throughput")
            if label == OURS and f"{case} | {REF}" in med:
                notes.append(f"speed-up over the reference {med[f'{case} | {REF}']['wall'] / v['wall']:.2f}x")
            notes.append(f"rounds {min(v['all_wall']):.2f}–{max(v['all_wall']):.2f} s")
            row["note"] = "; ".join(notes)
            out.append(row)
    return out


def run(workdir) -> list[dict]:
    res = measure(workdir=str(workdir))
    log(f"load average {res['load_start']} -> {res['load_end']}; {res['cpu']}")
    return rows(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", help="where the image is made and kept (default: bench/work/fuse)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = measure(a.entries, a.big_mib, a.rounds, a.workdir)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from run import format_table

    print(format_table(rows(res), markdown=True))
    print(f"\nload average {res['load_start']} -> {res['load_end']}; CPU {res['cpu']}; "
          f"medians of {res['rounds']} rounds; entries seen by find: {res['entries']}")


if __name__ == "__main__":
    main()
