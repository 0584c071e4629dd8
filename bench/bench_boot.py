# SPDX-License-Identifier: MIT OR Apache-2.0
"""Boot benchmark (issue #15): a Debian root booted from a composefs image, on both root paths,
against the same tree as a plain ext4 root; and the disk use of two neighbouring versions of the
tree deployed from one repository against two plain copies. Needs root; QEMU/TCG.

    bench/run.py --markdown boot          # or: make bench-boot

Everything is made the way qemu/boot.py makes it (the same cached Debian root, the same initrd
with the composefs hook and module, the same check unit that reports `uptime` once systemd has
reached multi-user.target and powers off), then:
  - version B of the tree: a copy of A in which every regular file of the `systemd` package is
    changed (one byte appended), as a systemd update would change them;
  - the composefs disk: A and B imported into one repository and both deployed, fs-verity enabled
    on every object and image in a guest (ext4 -O verity); the plain disks: A alone (booted), and
    A and B as two plain copies (only measured). Disk use is the ext4 block count in use minus that
    of an empty filesystem of the same size made the same way (journal, inode tables), read with
    dumpe2fs, so the fs-verity Merkle trees of the repository are counted;
  - ROUNDS rounds (BENCH_BOOT_ROUNDS, default 3) of three boots each — module, stock
    (module_blacklist=composefs), plain ext4 — the order rotated each round, every boot with
    -snapshot so each starts from the same disk; same kernel, initrd, command line (but
    composefs=), QEMU settings. Reported: the median uptime at multi-user.target and the median
    wall time of the whole VM run, each path against ext4 both as the ratio of the medians and
    as the median of the rounds' own ratios (paired: a round's three boots share the host's
    state of the moment).
Under TCG the absolute times are those of an emulated CPU on a shared host: only the ratios
within one run mean anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TITLE = "boot (QEMU/TCG): Debian to multi-user.target from a composefs image vs plain ext4; disk use"
ROUNDS = int(os.environ.get("BENCH_BOOT_ROUNDS", "3"))
TARGET = 0.10  # each composefs path within 10% of ext4


def log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _qemu_boot():
    spec = importlib.util.spec_from_file_location("qemu_boot", ROOT / "qemu" / "boot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def used_blocks(img: Path) -> int:
    """Bytes in use on an ext4 image (block count minus free blocks, from the superblock)."""
    out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True).stdout
    f = {k.strip(): v.strip() for k, _, v in (l.partition(":") for l in out.splitlines())}
    return (int(f["Block count"]) - int(f["Free blocks"])) * int(f["Block size"])


def mkfs(img: Path, src: Path | None, size: str = "3G") -> Path:
    img.unlink(missing_ok=True)
    cmd = ["mkfs.ext4", "-q", "-b", "4096", "-O", "verity", "-F"] + (["-d", str(src)] if src else []) + [str(img), size]
    subprocess.run(cmd, check=True)
    return img


def make_b(root: Path, dest: Path) -> int:
    """Version B: a copy of A with the systemd package's regular files changed. Returns their count."""
    subprocess.run(["cp", "-a", f"{root}/.", str(dest)], check=True)
    names = subprocess.run(["chroot", str(root), "dpkg", "-L", "systemd"], capture_output=True, text=True,
                           check=True).stdout.split()
    n = 0
    for name in names:
        p = dest / name.lstrip("/")
        if p.is_file() and not p.is_symlink():
            with open(p, "ab") as f:
                f.write(b"\n")
            n += 1
    return n


def run(workdir: Path, rounds: int = ROUNDS) -> list[dict]:
    if os.geteuid() != 0:
        raise SystemExit("bench boot: needs root (debootstrap, chroot, mkfs, QEMU)")
    qb = _qemu_boot()
    kver = qb.qrun.pick_kver(os.environ.get("CFS_QEMU_KVER"))
    modules = qb.qrun.build_modules(kver)
    work = workdir / "run"
    if work.exists():
        subprocess.run(["umount", "-q", str(work / "root")], check=False)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # BENCH_BOOT_APPEND: extra kernel arguments for every boot (e.g. loglevel=7 to see where time goes)
    args = argparse.Namespace(cpu="max", smp=2, mem="1G", append=os.environ.get("BENCH_BOOT_APPEND", ""),
                              verbose=False)
    try:
        root = qb.prepare_root(work, kver, modules)
        initrd = qb.make_initrd(work, root, kver)
        tree_b = work / "tree-b"
        changed = make_b(root, tree_b)
        log(f"version B: {changed} files of the systemd package changed")
        img, digest = qb.make_disk(work, root, more={"debian-b": tree_b})
        plain = work / "plain"
        plain.mkdir()
        subprocess.run(["cp", "-a", f"{root}/.", str(plain)], check=True)
        ext4 = mkfs(work / "ext4.img", plain)
        two = work / "two-plain"
        two.mkdir()
        subprocess.run(["cp", "-a", f"{root}/.", str(two / "a")], check=True)
        subprocess.run(["mv", str(tree_b), str(two / "b")], check=True)
        empty = used_blocks(mkfs(work / "empty.img", None))
        use_cfs = used_blocks(img) - empty
        use_plain1 = used_blocks(ext4) - empty
        use_plain2 = used_blocks(mkfs(work / "two-plain.img", two)) - empty
        for p in (work / "two-plain.img", work / "empty.img"):
            p.unlink()
        shutil.rmtree(two)

        kinds = [("module", img, f"composefs={digest}"),
                 ("stock", img, f"composefs={digest} {qb.STOCK_ARG}"),
                 ("ext4", ext4, "")]
        uptime: dict[str, list[float]] = {k[0]: [] for k in kinds}
        wall: dict[str, list[float]] = {k[0]: [] for k in kinds}
        read_kib: dict[str, list[float]] = {k[0]: [] for k in kinds}
        # seconds from the kernel's start to systemd's on the real root (kernel + initramfs)
        to_systemd: dict[str, list[float]] = {k[0]: [] for k in kinds}
        loads = [os.getloadavg()[0]]
        for r in range(rounds):
            for i in range(len(kinds)):
                name, disk, karg = kinds[(r + i) % len(kinds)]
                facts, text, took = qb.boot(f"{name}-{r}", args, kver, initrd, disk, karg, work / "logs", 900,
                                            snapshot=True)
                if not facts.get("done") or "uptime" not in facts:
                    raise SystemExit(f"bench boot: {name} round {r} did not report (see {work / 'logs'})")
                want = {"module": "composefs", "stock": "overlay", "ext4": "ext4"}[name]
                if facts.get("root_fstype") != want:
                    raise SystemExit(f"bench boot: {name} booted with / on {facts.get('root_fstype')}, not {want}")
                uptime[name].append(float(facts["uptime"]))
                wall[name].append(took)
                if facts.get("disk_read_kib"):
                    read_kib[name].append(float(facts["disk_read_kib"]))
                if facts.get("userspace_us", "").isdigit():
                    to_systemd[name].append(int(facts["userspace_us"]) / 1e6)
                loads.append(os.getloadavg()[0])
                log(f"round {r}: {name} multi-user at uptime {facts['uptime']}s, VM {took:.0f}s, "
                    f"read {facts.get('disk_read_kib', '?')} KiB, systemd started at {facts.get('userspace_us', '?')} us")
    finally:
        subprocess.run(["umount", "-q", str(work / "root")], check=False)

    rows = []
    med = {k: statistics.median(v) for k, v in uptime.items()}
    for name in ("module", "stock", "ext4"):
        ratio = med[name] / med["ext4"]
        note = (f"median of {rounds}: uptime at multi-user.target {med[name]:.1f}s "
                f"(all: {', '.join(f'{x:.1f}' for x in uptime[name])})")
        if read_kib[name]:
            note += f"; read from disk {statistics.median(read_kib[name]) / 1024:.1f} MiB"
        if to_systemd[name]:
            t = statistics.median(to_systemd[name])
            note += f"; kernel + initramfs {t:.1f}s, systemd {med[name] - t:.1f}s"
        if name != "ext4":
            # Each round boots all three back to back, so a round's own ratio cancels what the
            # host did to that round (TCG on a shared host spreads rounds by +-15%).
            paired = [a / b for a, b in zip(uptime[name], uptime["ext4"])]
            pr = statistics.median(paired)
            note += (f"; {ratio:.3f}x ext4 as a ratio of the medians "
                     f"({'within' if ratio <= 1 + TARGET else 'OVER'} the 10% target), {pr:.3f}x as the "
                     f"median of each round's own ratio ({'within' if pr <= 1 + TARGET else 'OVER'}; all: "
                     f"{', '.join(f'{x:.2f}' for x in paired)})")
        rows.append({"case": f"boot to multi-user.target, / {name}", "tool": "QEMU/TCG 2 vCPU 1 GiB",
                     "seconds": statistics.median(wall[name]), "note": note + "; wall s = median VM run"})
    mib = 1 << 20
    rows.append({"case": "disk use: A and B deployed from one repository", "tool": "cfsctl import + boot deploy",
                 "seconds": None,
                 "note": f"{use_cfs / mib:.1f} MiB = {use_cfs / use_plain2:.1%} of two plain copies "
                         f"(fs-verity Merkle trees included; B: {changed} files of systemd changed)"})
    rows.append({"case": "disk use: A and B as two plain copies", "tool": "ext4", "seconds": None,
                 "note": f"{use_plain2 / mib:.1f} MiB; one plain copy {use_plain1 / mib:.1f} MiB"})
    rows.append({"case": "load average (1 min) during the boots", "tool": "", "seconds": None,
                 "note": f"min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f} "
                         "(shared machine)"})
    if not os.environ.get("BENCH_BOOT_KEEP"):
        shutil.rmtree(work, ignore_errors=True)
    return rows
