# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest benchmark (issue #5): our kernel module against EROFS+overlayfs, in one QEMU boot (root).

    .venv/bin/python bench/bench_guest.py [--repeat 3] [--json]     # or: bench/run.py guest

On the host: a 100,000-entry tree (made once under bench/work/guest/, reused while its spec is
unchanged), built with `cfsctl build SRC IMG --digest-store OBJ`; the image, the objects and
meta.json are preloaded onto the guest's ext4 disk (`qemu/run.py --disk-dir`). In the guest
(bench/guest/walk_read.py, one boot): metadata walks (`find MNT -ls`, and `ls -lR MNT`) of the module mount and of
the `cfsctl mount --backend overlay` mount of the same image and objects, cold (drop_caches before
each run) and warm, and 256 MiB sequential reads through the module, through overlayfs and
directly from the object. Each timing is repeated REPEAT times (BENCH_GUEST_REPEAT, default 3)
and the MEDIAN is reported. Under TCG the absolute times are those of an emulated CPU: only the
ratios within the boot mean anything.

Tree: 100,000 entries = 1 + 4,000 directories (fan-outs 0 to 2,239 entries, median 11; capped Pareto
weights), 8,000 symlinks, 87,999 regular files: 5% empty, 25% 1..64 bytes (inlined in the image),
68% lognormal around 1 KiB (up to 256 KiB), 2% 16..128 KiB, one 256 MiB file; 2% of the files
carry a user.* xattr; random contents (no deduplication).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TITLE = "guest (QEMU/TCG): kernel module vs EROFS+overlayfs, metadata walk and sequential read"
REPEAT = int(os.environ.get("BENCH_GUEST_REPEAT", "3"))
TIMEOUT = int(os.environ.get("BENCH_GUEST_TIMEOUT", "3600"))

ENTRIES = 100_000
DIRS = 4_000
SYMLINKS = 8_000
BIG = 256 << 20
SEED = 5
SPEC = f"v1 entries={ENTRIES} dirs={DIRS} symlinks={SYMLINKS} big={BIG} seed={SEED}\n"
BIG_PATH = "big/large.bin"
WALK_TARGET = 1.5   # module at least 1.5x faster than overlay, cold
READ_TARGET = 0.10  # module read within 10% of the direct read


def log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def file_sizes(rng: random.Random, n: int) -> list[int]:
    sizes = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            sizes.append(0)
        elif r < 0.30:
            sizes.append(rng.randint(1, 64))
        elif r < 0.98:
            sizes.append(min(256 << 10, max(65, int(rng.lognormvariate(7.0, 1.2)))))
        else:
            sizes.append(int(2 ** rng.uniform(14, 17)))
    return sizes


def make_tree(src: Path) -> None:
    """The 100,000-entry tree described at the top (deterministic for SEED)."""
    rng = random.Random(SEED)
    t0 = 1_650_000_000
    dirs = [src]
    src.mkdir(parents=True)
    for i in range(DIRS - 1):  # each new directory under a random earlier one: depths vary
        parent = dirs[int(len(dirs) * rng.random() ** 2)] if i >= 20 else src
        d = parent / f"d{i:04d}"
        d.mkdir()
        dirs.append(d)
    (src / "big").mkdir()
    dirs_all = [*dirs, src / "big"]
    weights = [min(400.0, rng.paretovariate(1.2)) for _ in dirs]
    nfiles = ENTRIES - len(dirs_all) - SYMLINKS - 1  # dirs_all includes the root; 1 = big/large.bin
    targets = rng.choices(dirs, weights=weights, k=nfiles + SYMLINKS)
    files = []
    for i, (d, size) in enumerate(zip(targets[:nfiles], file_sizes(rng, nfiles))):
        p = d / f"f{i:05d}.{rng.choice(('so', 'py', 'txt', 'h', 'conf', 'bin'))}"
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
        os.utime(p, (t0 + i, t0 + i))
        if rng.random() < 0.02:
            os.setxattr(p, "user.tag", f"v{i % 17}".encode())
        files.append(p)
    for i, d in enumerate(targets[nfiles:]):
        tgt = files[rng.randrange(len(files))]
        os.symlink(os.path.relpath(tgt, d), d / f"l{i:05d}")
    with open(src / BIG_PATH, "wb") as f:
        for _ in range(BIG >> 20):
            f.write(rng.randbytes(1 << 20))


def prepare(workdir: Path) -> Path:
    """workdir/disk: img.cfs, objects/, meta.json (rebuilt when the spec changes)."""
    disk, src, spec = workdir / "disk", workdir / "src", workdir / "spec"
    if spec.exists() and spec.read_text() == SPEC and (disk / "meta.json").exists():
        return disk
    for p in (disk, src):
        shutil.rmtree(p, ignore_errors=True)
    spec.unlink(missing_ok=True)
    log(f"making the {ENTRIES}-entry tree in {src}")
    make_tree(src)
    disk.mkdir()
    log("cfsctl build")
    subprocess.run([sys.executable, "-m", "composefs.cli", "build", str(src), str(disk / "img.cfs"),
                    "--digest-store", str(disk / "objects")], check=True, stdout=subprocess.DEVNULL)
    big = [p for p in (disk / "objects").glob("*/*") if p.stat().st_size == BIG]
    if len(big) != 1:
        raise RuntimeError(f"expected one {BIG}-byte object, found {len(big)}")
    (disk / "meta.json").write_text(json.dumps({"big_path": BIG_PATH,
                                                "big_object": str(big[0].relative_to(disk))}) + "\n")
    shutil.rmtree(src)
    spec.write_text(SPEC)
    return disk


def boot_job(workdir: Path, job: str, disk: Path, job_args: list[str], out_name: str,
             timeout: float = TIMEOUT, build_module: bool = True) -> dict:
    """One QEMU boot running bench/guest/JOB with DISK preloaded as its ext4 disk; the JSON the job
    wrote to $CFS_OUT_DIR/OUT_NAME, with the boot's wall time as boot_s. The one guest driver of
    the guest benchmarks."""
    qwork = workdir / "qemu"
    cmd = [sys.executable, str(ROOT / "qemu" / "run.py"), "-q", "--work", str(qwork),
           *([] if build_module else ["--no-build-module"]), "--timeout", str(timeout), "--disk-dir", str(disk),
           "--job", str(ROOT / "bench" / "guest" / job), "--", *job_args]
    log("booting the guest: " + " ".join(cmd))
    t = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = qwork / "run" / out_name
    if r.returncode != 0 or not out.exists():
        sys.stderr.write(r.stdout[-6000:])
        raise RuntimeError(f"guest benchmark failed (exit {r.returncode}); artefacts in {qwork / 'run'}")
    res = json.loads(out.read_text())
    res["boot_s"] = round(time.monotonic() - t, 1)
    return res


def measure(workdir: Path, repeat: int = REPEAT, parts: str = "walk,lswalk,read") -> dict:
    if os.geteuid() != 0:
        raise SystemExit("bench_guest needs root (QEMU harness, mkfs)")
    disk = prepare(workdir)
    return boot_job(workdir, "walk_read.py", disk, ["--repeat", str(repeat), "--parts", parts], "guest_bench.json")


def med(samples: list[list[float]]) -> list[float]:
    """The sample with the median wall time (the lower one for even counts): [wall, cpu, system]."""
    s = sorted(samples)
    return s[(len(s) - 1) // 2]


def kernel_note(sample: list[float]) -> str:
    return f"kernel {sample[2]:.1f} s" if len(sample) > 2 else ""


def rows_of(r: dict) -> list[dict]:
    rows = []
    n = r["entries"]
    walks = [(k, temp, label) for k, label in (("walk", "find -ls"), ("lswalk", "ls -lR")) if k in r
             for temp in ("cold", "warm")]
    for part, temp, label in walks:
        mod = med(r[part]["module"][temp])
        ovl = med(r[part]["overlay"][temp])
        speedup = ovl[0] / mod[0]
        if temp == "cold":
            verdict = f"target >= {WALK_TARGET}x: {'met' if speedup >= WALK_TARGET else 'MISSED'}"
        else:
            verdict = f"target not slower: {'met' if speedup >= 1.0 else 'MISSED'}"
        case = f"{label}, {n:,} entries, {temp}"
        ksp = f"; kernel time {ovl[2] / mod[2]:.2f}x less" if len(mod) > 2 and mod[2] else ""
        rows.append({"case": case, "tool": "composefs module", "seconds": mod[0], "cpu": mod[1],
                     "note": "; ".join(x for x in (kernel_note(mod), f"{speedup:.2f}x faster than "
                                                    f"EROFS+overlayfs{ksp} ({verdict})") if x)})
        rows.append({"case": case, "tool": "EROFS+overlayfs (cfsctl mount --backend overlay)",
                     "seconds": ovl[0], "cpu": ovl[1], "note": kernel_note(ovl)})
    size = r.get("read_bytes")
    for temp in ("cold", "warm") if "read" in r else ():
        direct = med(r["read"]["direct"][temp])
        case = f"read {size >> 20} MiB, {temp}"
        for k, tool in (("module", "composefs module"), ("overlay", "EROFS+overlayfs")):
            m = med(r["read"][k][temp])
            slower = m[0] / direct[0] - 1
            note = f"{slower * 100:+.1f}% vs direct"
            if k == "module":
                note += f" (target within {READ_TARGET * 100:.0f}%: {'met' if slower <= READ_TARGET else 'MISSED'})"
            rows.append({"case": case, "tool": tool, "seconds": m[0], "cpu": m[1], "bytes": size, "note": note})
        rows.append({"case": case, "tool": "object file directly (ext4)", "seconds": direct[0],
                     "cpu": direct[1], "bytes": size})
    rows[0]["note"] = "; ".join(x for x in (rows[0].get("note"), f"median of {r['repeat']}, guest kernel {r['kernel']}, TCG: ratios only") if x)
    return rows


def run(workdir) -> list[dict]:
    return rows_of(measure(Path(workdir)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=REPEAT)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "work" / "guest")
    ap.add_argument("--parts", default="walk,lswalk,read",
                    help="what to time, comma-separated: walk (find -ls), lswalk (ls -lR), read")
    ap.add_argument("--json", action="store_true", help="print the raw guest results")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    r = measure(a.workdir, a.repeat, a.parts)
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from run import format_table

        print(format_table(rows_of(r), markdown=False))


if __name__ == "__main__":
    main()
