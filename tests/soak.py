#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Concurrency soak of one repository on the host: 8 importers, gc and mounts at once.

    .venv/bin/python tests/soak.py --seconds 600      # `make soak SOAK_SECONDS=600`
    (tests/test_soak.py runs a short one in the host suite)

Every actor is a loop of real `cfsctl` processes on one repository:
- IMPORTERS importers: each re-imports changing trees (files shared by all trees, files repeated
  from earlier steps, new files) under three names of its own, so images keep being replaced and
  objects keep becoming garbage while other imports reuse them;
- one gc loop: `cfsctl rm` of a random importer's name, then `cfsctl gc`;
- one mount loop (as root): imports a tree under a name only it uses, mounts it with `cfsctl
  mount` (stock EROFS + overlayfs, or the module where loaded), compares every file with its
  source while the others run, unmounts; every third round it removes its name.
At the end: `cfsctl fsck` (every image's objects present and named by their content), every name
an importer holds is still there, and those names (or --final-mounts of them) are mounted and
compared with the tree last imported under them. Any failed command, traceback, difference or fsck problem is a
problem; exit status 1 if there is one.

Lock waits come from the repository's instrumentation point (CFS_LOCK_LOG, see
composefs.repository._log_lock): count, p50, p99 and max per lock mode. The report is printed
and written as JSON to --report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = [(f"shared/{i}", random.Random(i).randbytes(n)) for i, n in enumerate((1, 100, 4096, 70000, 1 << 20))]


def make_tree(root: Path, rng: random.Random, step: int) -> None:
    if root.exists():
        shutil.rmtree(root)
    files = list(SHARED)
    files += [(f"again/{i}", random.Random(f"{step // 4}/{i}").randbytes(5000 * (i + 1))) for i in range(4)]
    files += [(f"new/{i}", rng.randbytes(rng.choice((0, 7, 4096, 30000, 300000)))) for i in range(rng.randint(3, 10))]
    for rel, data in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.symlink("shared/1", root / "link")


def compare(src: Path, mnt: Path) -> list[str]:
    """Differences between a source tree and a mounted image of it (names, types, contents)."""
    diffs = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for d in dirnames + filenames:
            a, b = src / rel / d, mnt / rel / d
            try:
                if a.is_symlink():
                    if not b.is_symlink() or os.readlink(a) != os.readlink(b):
                        diffs.append(f"{rel / d}: symlink differs")
                elif a.is_file() and a.read_bytes() != b.read_bytes():
                    diffs.append(f"{rel / d}: content differs")
            except OSError as e:
                diffs.append(f"{rel / d}: {e}")
        listed = sorted(os.listdir(mnt / rel)) if (mnt / rel).is_dir() else None
        if listed != sorted(dirnames + filenames):
            diffs.append(f"{rel}: entries differ")
    return diffs


class Soak:
    def __init__(self, repo: Path, work: Path, seconds: float, importers: int, seed: int, mounts: bool,
                 final_mounts: int):
        self.repo, self.work, self.importers, self.mounts = repo, work, importers, mounts
        self.final_mounts = final_mounts
        self.deadline = time.monotonic() + seconds
        self.seed = seed
        self.lock_log = work / "locks.jsonl"
        self.env = dict(os.environ, CFS_LOCK_LOG=str(self.lock_log), PYTHONDONTWRITEBYTECODE="1")
        self.problems: list[str] = []
        self.counts = {"imports": 0, "gc": 0, "rm": 0, "mounts": 0, "files_compared": 0}
        self.sources: dict[str, Path] = {}  # name -> the tree last imported under it (successfully)
        self.mu = threading.Lock()
        # One per name: an import under a name and gc's removal of it record their outcome in
        # self.sources in the order they happened in the repository.
        self.name_locks = {f"w{w}-{k}": threading.Lock() for w in range(importers) for k in range(3)}

    def cfsctl(self, *args) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "composefs.cli", *map(str, args)], env=self.env,
                           capture_output=True, text=True, timeout=600)
        if "Traceback" in r.stderr:
            self.problem(f"traceback from cfsctl {' '.join(map(str, args))}: {r.stderr[-2000:]}")
        return r

    def problem(self, what: str) -> None:
        with self.mu:
            self.problems.append(what)
        print(f"soak: PROBLEM: {what}", file=sys.stderr, flush=True)

    def count(self, key: str, n: int = 1) -> None:
        with self.mu:
            self.counts[key] += n

    def importer(self, w: int) -> None:
        rng = random.Random(self.seed * 1000 + w)
        step = 0
        while time.monotonic() < self.deadline:
            step += 1
            slot = step % 3
            name = f"w{w}-{slot}"
            src = self.work / "src" / name / str(step % 2)  # the other copy may be the one imported
            make_tree(src, rng, step)
            with self.name_locks[name]:
                r = self.cfsctl("import", src, "--name", name, "--repo", self.repo)
                if r.returncode != 0:
                    self.problem(f"import {name} failed: {r.stderr.strip()}")
                    continue
                self.count("imports")
                with self.mu:
                    self.sources[name] = src

    def gc(self) -> None:
        rng = random.Random(self.seed)
        while time.monotonic() < self.deadline:
            time.sleep(rng.uniform(0.5, 3))
            name = f"w{rng.randrange(self.importers)}-{rng.randrange(3)}"
            with self.name_locks[name]:
                with self.mu:
                    had = self.sources.pop(name, None)
                r = self.cfsctl("rm", name, "--repo", self.repo)
                if r.returncode == 0:
                    self.count("rm")
                elif had is not None:
                    self.problem(f"rm {name} failed: {r.stderr.strip()}")
            r = self.cfsctl("gc", "--repo", self.repo)
            if r.returncode != 0 or r.stderr.strip():
                self.problem(f"gc failed or warned ({r.returncode}): {r.stderr.strip()}")
            else:
                self.count("gc")

    def mount_check(self, name: str, src: Path) -> None:
        mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=self.work))
        r = self.cfsctl("mount", name, mnt, "--repo", self.repo)
        if r.returncode != 0:
            self.problem(f"mount {name} failed: {r.stderr.strip()}")
            mnt.rmdir()
            return
        try:
            diffs = compare(src, mnt)
            if diffs:
                self.problem(f"mounted {name} differs from its source: {diffs[:5]}")
            self.count("files_compared", sum(len(f) for _, _, f in os.walk(src)))
            self.count("mounts")
        finally:
            r = self.cfsctl("umount", mnt)
            if r.returncode != 0:
                self.problem(f"umount {mnt} failed: {r.stderr.strip()}")
            else:
                mnt.rmdir()

    def mounter(self) -> None:
        rng = random.Random(self.seed + 7)
        step = 0
        while time.monotonic() < self.deadline:
            step += 1
            name = f"m-{step % 2}"
            src = self.work / "src" / name
            make_tree(src, rng, step)
            r = self.cfsctl("import", src, "--name", name, "--repo", self.repo)
            if r.returncode != 0:
                self.problem(f"import {name} failed: {r.stderr.strip()}")
                continue
            self.count("imports")
            # Mounted while imports replace images and gc removes what they no longer use.
            for _ in range(2):
                self.mount_check(name, src)
            if step % 3 == 0:
                self.cfsctl("rm", name, "--repo", self.repo)

    def final_check(self) -> None:
        r = self.cfsctl("fsck", "--repo", self.repo)
        if r.returncode != 0:
            self.problem(f"fsck: {r.stdout.strip()} {r.stderr.strip()}")
        self.fsck = r.stdout.strip()
        r = self.cfsctl("images", "--json", "--repo", self.repo)
        names = {i["name"] for i in json.loads(r.stdout)} if r.returncode == 0 else set()
        if r.returncode != 0:
            self.problem(f"images failed: {r.stderr.strip()}")
        left = sorted(self.sources.items())
        for name, src in left:
            if name not in names:
                self.problem(f"{name} was imported and not removed, but is gone")
        # fsck has checked every image's objects; mounting shows the contents are the sources'.
        if self.mounts:
            for name, src in random.Random(self.seed).sample(left, min(self.final_mounts, len(left))):
                self.mount_check(name, src)

    def run(self) -> None:
        r = self.cfsctl("init", "--repo", self.repo)
        if r.returncode != 0:
            raise SystemExit(f"soak: cfsctl init: {r.stderr}")
        threads = [threading.Thread(target=self.importer, args=(w,)) for w in range(self.importers)]
        threads.append(threading.Thread(target=self.gc))
        if self.mounts:
            threads.append(threading.Thread(target=self.mounter))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.t_workers_done = time.monotonic()
        self.final_check()

    def lock_report(self) -> dict:
        waits: dict[str, list[float]] = {"shared": [], "exclusive": []}
        held: dict[str, list[float]] = {"shared": [], "exclusive": []}
        if self.lock_log.exists():
            for line in self.lock_log.read_text().splitlines():
                rec = json.loads(line)
                waits[rec["mode"]].append(rec["wait"])
                held[rec["mode"]].append(rec["held"])

        def stats(xs: list[float]) -> dict:
            xs = sorted(xs)
            if not xs:
                return {"count": 0}
            q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
            return {"count": len(xs), "p50_ms": round(q(0.5) * 1e3, 1), "p99_ms": round(q(0.99) * 1e3, 1),
                    "max_ms": round(xs[-1] * 1e3, 1),
                    "waited_over_1s": sum(x > 1 for x in xs)}

        return {m: {"wait": stats(waits[m]), "held": stats(held[m])} for m in waits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--importers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new one in /tmp)")
    ap.add_argument("--no-mounts", action="store_true", help="skip the mount loop (needs root)")
    ap.add_argument("--final-mounts", type=int, default=1000,
                    help="at the end, mount and compare at most this many of the names left (default: all)")
    ap.add_argument("--report", type=Path, help="write the report as JSON here")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = a.work or Path(tempfile.mkdtemp(prefix="cfs-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    mounts = not a.no_mounts and os.geteuid() == 0
    s = Soak(work / "repo", work, a.seconds, a.importers, seed, mounts, a.final_mounts)
    t0 = time.monotonic()
    s.run()
    report = {"seconds": round(time.monotonic() - t0, 1), "workers_seconds": round(s.t_workers_done - t0, 1),
              "importers": a.importers, "seed": seed,
              "mounts": mounts, "counts": s.counts, "fsck": s.fsck, "problems": s.problems, "locks": s.lock_report()}
    text = json.dumps(report, indent=1)
    print(text)
    if a.report:
        a.report.write_text(text + "\n")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if s.problems else 0


if __name__ == "__main__":
    sys.exit(main())
