# SPDX-License-Identifier: MIT OR Apache-2.0
"""fs-verity digest throughput: cfsctl against fsverity-utils and against the machine's SHA-256 limit.

Cases (page cache warm, every timing the best of REPEAT runs, wall clock):
  * one 1 GiB file: `cfsctl digest FILE` and `fsverity digest FILE` (both whole processes), and
    the Python API `composefs.fsverity.digest_file` in-process;
  * a tree of 20,000 files of mixed sizes (64 B .. 512 KiB, log-uniform, about 1.2 GB):
    `fsverity digest` given all paths through `xargs -0 -P1 -s 1000000` (one process at a time;
    with that command-line size all paths go to a single process), the same for `cfsctl digest`,
    and the Python API `digest_files`;
  * the SHA-256 limit: `openssl speed -evp sha256 -bytes 4096` on one core, and that x2 for two;
  * our SHA-256 per core: the fs-verity digest of a 256 MiB in-memory buffer on one thread, with
    each SHA-256 implementation (the `sha2` crate, one block at a time; SHA-NI, two blocks
    interleaved; AVX-512, sixteen blocks at once), counted in SHA-256 input bytes like openssl's
    figure.
The load average is shown too: the machine may be shared, and wall times suffer first; the
MB/cpu-s column (bytes per CPU-second of user + system time) is less sensitive to it.
Data is generated once under bench/work/digest/ and reused.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TITLE = "fs-verity digest throughput (sha256, 4 KiB blocks)"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
BIG_SIZE = 1 << 30
TREE_FILES = 20_000
TREE_SEED = 2026
XARGS_CHARS = 1_000_000  # command-line size for xargs: all 20,000 paths fit in one process
MEM_SIZE = 256 << 20
SEQUENTIAL = 2**63  # a parallel threshold no input reaches: one thread
TREE_SPEC = f"files={TREE_FILES} seed={TREE_SEED} sizes=2**uniform(6,19) dirs=200\n"


def log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def make_big(path: Path) -> None:
    if path.exists() and path.stat().st_size == BIG_SIZE:
        return
    log(f"generating {path} (1 GiB)")
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE // (16 << 20)):
            f.write(os.urandom(16 << 20))


def make_tree(root: Path) -> tuple[list[str], list[int]]:
    """Create the tree (once); return its relative file paths and their sizes."""
    stamp = root / ".done"
    rng = random.Random(TREE_SEED)
    sizes = [int(2 ** rng.uniform(6, 19)) for _ in range(TREE_FILES)]
    paths = [f"d{i // 100:03d}/f{i:05d}" for i in range(TREE_FILES)]
    if not (stamp.exists() and stamp.read_text() == TREE_SPEC):
        log(f"generating {root} ({TREE_FILES} files, {sum(sizes) / 1e9:.2f} GB)")
        shutil.rmtree(root, ignore_errors=True)
        for i, (rel, size) in enumerate(zip(paths, sizes)):
            if i % 100 == 0:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(rng.randbytes(size))
        stamp.write_text(TREE_SPEC)
    return paths, sizes


def fsverity_work(size: int, block: int = 4096, digest: int = 32) -> int:
    """Bytes SHA-256 must process for one file's fs-verity digest, counted like
    `openssl speed -bytes 4096` counts (a 4 KiB block = 4096): every data block (the last one
    zero-padded), every Merkle tree block above it, and the 256-byte descriptor (5 compressions)."""
    work, blocks = 320, -(-size // block)
    work += blocks * block
    per = block // digest
    while blocks > 1:
        blocks = -(-blocks // per)
        work += blocks * block
    return work


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 << 20):
                pass


def cpu_now() -> float:
    """User + system time of this process (all threads) and of its waited-for descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def best(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest of REPEAT runs."""
    runs = []
    for _ in range(REPEAT):
        c, t = cpu_now(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t, cpu_now() - c))
    return min(runs)


def timed_cmd(args, cwd=None, stdin_data: bytes | None = None) -> tuple[float, float]:
    def once():
        subprocess.run(args, cwd=cwd, input=stdin_data, stdout=subprocess.DEVNULL, check=True)

    return best(once)


def openssl_sha256() -> float:
    """Bytes per second of `openssl speed -evp sha256 -bytes 4096` on one core (openssl's k is
    1000 bytes; without -elapsed it divides by its user CPU time, so other load barely matters)."""
    args = ["openssl", "speed", "-evp", "sha256", "-bytes", "4096", "-seconds", "3"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    m = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return float(m.group(1)) * 1000


def per_core_sha256() -> dict[str, tuple[float, float]]:
    """(wall, cpu) of the fs-verity digest of MEM_SIZE in-memory bytes on one thread, for each
    SHA-256 implementation this CPU has."""
    from composefs import _native

    data = os.urandom(MEM_SIZE)
    timings = {}
    before = _native.fsverity_sha256_backend()
    try:
        for name in ("portable", "sha-ni", "avx512"):
            if _native.fsverity_sha256_backend(name) == name:
                timings[name] = best(lambda: _native.fsverity_digest_bytes(data, "sha256", 4096, b"", SEQUENTIAL))
    finally:
        _native.fsverity_sha256_backend(before)
    return timings


def run(workdir: Path) -> list[dict]:
    from composefs import fsverity

    cfsctl = str(Path(sys.executable).with_name("cfsctl"))
    fsverity_bin = shutil.which("fsverity")
    if fsverity_bin is None:
        raise SystemExit("fsverity (fsverity-utils) is not installed: run `make setup`")

    big = workdir / "big.bin"
    tree = workdir / "tree"
    make_big(big)
    rel_paths, sizes = make_tree(tree)
    tree_bytes = sum(sizes)
    nul_list = b"".join(p.encode() + b"\0" for p in rel_paths)
    log("warming the page cache")
    warm([big, *(tree / p for p in rel_paths)])

    # Agreement first: a fast wrong answer is no answer.
    ours = subprocess.run([cfsctl, "digest", str(big)], capture_output=True, text=True, check=True).stdout
    theirs = subprocess.run([fsverity_bin, "digest", str(big)], capture_output=True, text=True, check=True).stdout
    assert ours == theirs, (ours, theirs)
    sample = rel_paths[:: TREE_FILES // 50]
    ours = subprocess.run([cfsctl, "digest", *sample], cwd=tree, capture_output=True, check=True).stdout
    theirs = subprocess.run([fsverity_bin, "digest", *sample], cwd=tree, capture_output=True, check=True).stdout
    assert ours == theirs

    rows: list[dict] = []
    log("SHA-256 limit (openssl speed)")
    one_core = openssl_sha256()
    load_start = os.getloadavg()[0]
    limit2 = 2 * one_core

    def row(case, tool, timing, nbytes, note):
        wall, cpu = timing
        return {"case": case, "tool": tool, "seconds": wall, "cpu": cpu, "bytes": nbytes, "note": note}

    def vs(ref, timing, nbytes, target=""):
        wall = timing[0]
        return f"{ref[0] / wall:.2f}x fsverity digest; {nbytes / wall / limit2:.0%} of 2-core limit{target}"

    log("1 GiB file")
    fsv = timed_cmd([fsverity_bin, "digest", str(big)])
    cfs = timed_cmd([cfsctl, "digest", str(big)])
    api = best(lambda: fsverity.digest_file(big))
    case = "1 GiB file"
    rows += [
        row(case, "fsverity digest", fsv, BIG_SIZE, f"{BIG_SIZE / fsv[0] / one_core:.0%} of 1-core limit"),
        row(case, "cfsctl digest", cfs, BIG_SIZE, vs(fsv, cfs, BIG_SIZE, " (target: >= 1.6x fsverity)")),
        row(case, "fsverity.digest_file (API)", api, BIG_SIZE, vs(fsv, api, BIG_SIZE)),
    ]

    log(f"tree of {TREE_FILES} files")
    xargs = ["xargs", "-0", "-P1", "-s", str(XARGS_CHARS)]
    fsv = timed_cmd([*xargs, fsverity_bin, "digest"], cwd=tree, stdin_data=nul_list)
    cfs = timed_cmd([*xargs, cfsctl, "digest"], cwd=tree, stdin_data=nul_list)
    abs_paths = [str(tree / p) for p in rel_paths]

    def digest_all():
        results = fsverity.digest_files(abs_paths)
        assert all(isinstance(r, bytes) for r in results)

    api = best(digest_all)
    case = f"{TREE_FILES} files, {tree_bytes / 1e9:.2f} GB"
    work = sum(map(fsverity_work, sizes))
    log(f"fs-verity hashes {work / tree_bytes:.3f}x the tree's bytes (padding, tree blocks, descriptors)")
    rows += [
        row(case, "fsverity digest (xargs -P1)", fsv, tree_bytes, f"{tree_bytes / fsv[0] / one_core:.0%} of 1-core limit"),
        row(case, "cfsctl digest (xargs -P1)", cfs, tree_bytes, vs(fsv, cfs, tree_bytes, " (target: >= 85%)")),
        row(case, "fsverity.digest_files (API)", api, tree_bytes,
            vs(fsv, api, tree_bytes) + f"; per CPU-second {tree_bytes / api[1] / one_core:.0%} of the 1-core limit"),
        {"case": case, "tool": "(SHA-256 work of the above)", "seconds": None, "rate": None,
         "note": f"fs-verity hashes {work / 1e9:.2f} GB for these {tree_bytes / 1e9:.2f} GB: "
                 f"the API ran SHA-256 at {work / api[0] / limit2:.0%} of the 2-core limit"},
    ]

    log("SHA-256 per core (in memory, one thread)")
    mem_work = fsverity_work(MEM_SIZE)
    labels = {"portable": "sha2 crate, one block at a time", "sha-ni": "SHA-NI, two blocks interleaved",
              "avx512": "AVX-512, sixteen blocks at once"}
    per_core = per_core_sha256()
    rows += [
        {"case": "SHA-256 limit", "tool": "openssl speed, 1 core", "seconds": None, "rate": one_core,
         "note": "-evp sha256 -bytes 4096"},
    ]
    for name, timing in per_core.items():
        note = f"{mem_work / timing[1] / one_core:.0%} of openssl per CPU-second"
        if name != "portable" and "portable" in per_core:
            note += f"; {per_core['portable'][1] / timing[1]:.2f}x the sha2 crate"
        rows.append(row("SHA-256, 1 core (fs-verity of 256 MiB in memory)", labels[name], timing, mem_work,
                        note + "; MB = SHA-256 input (data + tree + descriptor)"))
    rows += [
        {"case": "SHA-256 limit", "tool": "openssl speed x2", "seconds": None, "rate": limit2,
         "note": "2-core limit used above (1-core figure x2)"},
        {"case": "machine load", "tool": "1-min load average", "seconds": None, "rate": None,
         "note": f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs)"},
    ]
    return rows
