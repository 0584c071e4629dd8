# SPDX-License-Identifier: MIT OR Apache-2.0
"""Image build speed and memory: `cfsctl build` against the reference `mkcomposefs` (issue #3).

Cases, each run by both tools in the same run, interleaved (ours, reference, ours, ...), best
wall time of REPEAT runs (BENCH_REPEAT, default 3; fresh-store builds BENCH_STORE_REPEAT, default 2):
  * corpus: a generated tree of 100,000 regular files, 2 GiB in all (many small files, a long tail
    of large ones; 1..64-byte and empty files; directories with fan-outs from 1 to thousands;
    symlinks; some user xattrs; a few duplicated contents), made once under bench/work/build/;
  * /usr of this machine (BENCH_BUILD_USR=0 leaves it out);
  for each: `--print-digest-only` (scan + hash, no image, no store) and a build into a fresh,
  empty object store (`--digest-store`, the image written too), page cache warm (every file read
  once before the first timing; a fresh store is removed and `sync`ed outside the timing);
  * `--from-dump` of a 100,000-entry dump (the first 100,000 entries of the corpus' dump, made
    with `cfsctl info dump` or, failing that, the reference's `composefs-info dump`).
Peak RSS is each child's own `ru_maxrss` (os.wait4); CPU is its user + system time. The
hardware line is the time two cores need only to SHA-256 the bytes of the fs-verity work of the
tree (`openssl speed -evp sha256 -bytes 4096`, one core, x2), and beside it the same from two
openssl processes hashing at once (`-multi 2 -elapsed`: what both cores deliver together).

The reference is `$MKCOMPOSEFS` or `mkcomposefs` on PATH (with `composefs-info` beside it);
without it only our rows are shown. Ours is `$CFSCTL`, else `cfsctl` of the running Python's
environment, run with `--no-hardlinks` so that both tools write the same image (mkcomposefs 1.0
breaks hardlinks; /usr has some).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TITLE = "image build: cfsctl build vs reference mkcomposefs"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
STORE_REPEAT = int(os.environ.get("BENCH_STORE_REPEAT", "2"))
WITH_USR = os.environ.get("BENCH_BUILD_USR", "1") != "0"
TIMEOUT = 1800

CORPUS_FILES = 100_000
CORPUS_BYTES = 2 << 30
CORPUS_DIRS = 4_000
CORPUS_SYMLINKS = 5_000
CORPUS_SEED = 3
CORPUS_SPEC = f"v2 files={CORPUS_FILES} bytes={CORPUS_BYTES} dirs={CORPUS_DIRS} symlinks={CORPUS_SYMLINKS} seed={CORPUS_SEED}\n"
DUMP_ENTRIES = 100_000


def log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- corpus


def corpus_sizes(rng: random.Random) -> list[int]:
    """File sizes: 4% empty, 20% 1..64 bytes (inlined), 68% lognormal around 3 KiB (up to 1 MiB),
    7.9% log-uniform 16 KiB..256 KiB, 0.1% large files (about 1..40 MiB) that take up the rest
    of the 2 GiB."""
    sizes = []
    n_large = CORPUS_FILES // 1000
    for _ in range(CORPUS_FILES - n_large):
        r = rng.random()
        if r < 0.04:
            sizes.append(0)
        elif r < 0.24:
            sizes.append(rng.randint(1, 64))
        elif r < 0.92:
            sizes.append(min(1 << 20, max(65, int(rng.lognormvariate(8.0, 1.3)))))
        else:
            sizes.append(int(2 ** rng.uniform(14, 18)))
    rest = CORPUS_BYTES - sum(sizes)
    if rest < n_large:
        raise RuntimeError("corpus size mix leaves no room for large files")
    weights = [2 ** rng.uniform(0, 6) for _ in range(n_large)]  # large files from x to 64x
    large = [int(rest * w / sum(weights)) for w in weights]
    large[0] += rest - sum(large)
    sizes += large
    rng.shuffle(sizes)
    return sizes


def corpus_layout(rng: random.Random) -> tuple[list[str], list[str]]:
    """Directories (a random recursive tree: each new directory under an earlier one, so depths
    and sub-directory counts vary) and the directory of each file (Pareto weights: most
    directories hold a few files, some hold thousands)."""
    dirs = [""]
    for i in range(1, CORPUS_DIRS):
        parent = dirs[int(len(dirs) * rng.random() ** 2)]
        dirs.append(f"{parent}/d{i:04d}" if parent else f"d{i:04d}")
    weights = [min(rng.paretovariate(1.3), 300.0) for _ in dirs]
    homes = rng.choices(dirs, weights=weights, k=CORPUS_FILES)
    return dirs, homes


def make_corpus(root: Path) -> None:
    stamp = root.parent / "corpus.done"
    if root.is_dir() and stamp.exists() and stamp.read_text() == CORPUS_SPEC:
        return
    rng = random.Random(CORPUS_SEED)
    sizes = corpus_sizes(rng)
    dirs, homes = corpus_layout(rng)
    log(f"generating {root}: {CORPUS_FILES} files, {sum(sizes) / 2**30:.2f} GiB, {len(dirs)} directories")
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    files = []
    previous: list[tuple[int, bytes]] = []  # a few small contents to duplicate
    for i, (home, size) in enumerate(zip(homes, sizes)):
        rel = f"{home}/f{i:06d}" if home else f"f{i:06d}"
        files.append(rel)
        path = root / rel
        if 64 < size <= 65536 and previous and rng.random() < 0.03:
            size, data = rng.choice(previous)  # same content elsewhere: deduplicated in a store
            sizes[i] = size
            path.write_bytes(data)
        elif size <= 1 << 20:
            data = rng.randbytes(size)
            if 64 < size <= 65536 and len(previous) < 2000:
                previous.append((size, data))
            path.write_bytes(data)
        else:
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 8 << 20)
                    f.write(rng.randbytes(n))
                    left -= n
        mode = 0o755 if rng.random() < 0.08 else 0o644
        os.chmod(path, mode)
        if rng.random() < 0.005:
            os.setxattr(path, b"user.origin", b"bench-%d" % rng.randrange(4))
    for j in range(CORPUS_SYMLINKS):
        home = rng.choice(dirs)
        target = rng.choice(files)
        link = root / home / f"l{j:05d}"
        os.symlink(os.path.relpath(root / target, link.parent), link)
    base = 1_700_000_000
    for rel in files:
        t = base + rng.randrange(0, 86400 * 365)
        os.utime(root / rel, (t, t), follow_symlinks=False)
    for d in reversed(dirs):
        t = base + rng.randrange(0, 86400 * 365)
        os.utime(root / d, (t, t))
    stamp.write_text(CORPUS_SPEC)


# ---------------------------------------------------------------- measuring


def fsverity_work(size: int, block: int = 4096) -> int:
    """Bytes SHA-256 processes for one file's fs-verity digest (counted as openssl speed counts
    4 KiB blocks): the data blocks, every Merkle tree block above them, the descriptor."""
    work, blocks = 320, -(-size // block)
    work += blocks * block
    while blocks > 1:
        blocks = -(-blocks // (block // 32))
        work += blocks * block
    return work


def tree_stats(root: Path) -> tuple[int, int, int]:
    """(entries, content bytes of hashed files, fs-verity SHA-256 work) of a tree; files of
    1..64 bytes are inlined, not hashed."""
    entries = content = work = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += 1
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            entries += 1
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_mode & 0o170000 == 0o100000 and st.st_size > 64:
                content += st.st_size
                work += fsverity_work(st.st_size)
    return entries, content, work


def each_file(root: Path, use) -> None:
    """Call ``use(fd)`` on every file below ``root``, opened read-only without following a
    symlink or blocking on a fifo; a file that cannot be opened or used is passed over."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                use(fd)
            except OSError:
                pass
            finally:
                os.close(fd)


def warm(root: Path) -> None:
    """Read every regular file once, so the page cache holds the tree."""
    buf = bytearray(1 << 20)

    def read(fd: int) -> None:
        if os.fstat(fd).st_mode & 0o170000 == 0o100000:
            while os.readv(fd, [buf]):
                pass

    each_file(root, read)


def run_child(args: list[str], stdout=subprocess.DEVNULL, env=None) -> tuple[float, float, int, bytes]:
    """(wall s, cpu s, peak RSS bytes, stdout) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE if stdout is None else stdout, stderr=subprocess.PIPE,
                         env=env)
    out = p.stdout.read() if p.stdout else b""
    err = p.stderr.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, out


def openssl_sha256(processes: int = 1) -> float:
    """Bytes/s of SHA-256: on one core (openssl divides by its user CPU time: load barely
    matters), or with `processes` > 1 the sum over that many openssl processes hashing at once,
    each divided by wall time (`-multi N -elapsed`): what the cores deliver together, which is
    less than N x one core if they share a physical core or the host is busy."""
    args = ["openssl", "speed"] + (["-multi", str(processes), "-elapsed"] if processes > 1 else [])
    out = subprocess.run(args + ["-evp", "sha256", "-bytes", "4096", "-seconds", "3"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    m = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"cannot parse openssl speed output:\n{out}")
    return float(m.group(1)) * 1000


def settle(limit: int = 64 << 20, wait: float = 60.0) -> None:
    """`sync`, then wait (up to `wait` s) until the kernel has little dirty data left, so one
    fresh-store build does not pay for the writeback of the previous one."""
    subprocess.run(["sync"], check=True, timeout=TIMEOUT)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        if (int(info["Dirty"].split()[0]) + int(info["Writeback"].split()[0])) * 1024 < limit:
            return
        time.sleep(0.5)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def find_tools() -> tuple[str, str | None, str | None]:
    ours = os.environ.get("CFSCTL") or str(Path(sys.executable).with_name("cfsctl"))
    if not os.access(ours, os.X_OK):
        ours = shutil.which("cfsctl") or ours
    ref = os.environ.get("MKCOMPOSEFS") or shutil.which("mkcomposefs")
    info = None
    if ref:
        beside = Path(ref).with_name("composefs-info")
        info = str(beside) if beside.exists() else shutil.which("composefs-info")
    return ours, ref, info


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class Case:
    """One case measured with both tools, interleaved; keeps each tool's best run."""

    def __init__(self, name: str, nbytes: int | None):
        self.name, self.nbytes = name, nbytes
        self.best: dict[str, tuple[float, float, int]] = {}
        self.digest: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def measure(self, tools: dict[str, list[str]], repeat: int, before=None) -> None:
        for i in range(repeat):
            for tool, args in tools.items():
                if tool in self.failed:
                    continue
                if before:
                    before(tool)
                try:
                    wall, cpu, rss, out = run_child(args, stdout=None)
                except RuntimeError as e:
                    log(f"{self.name} / {tool}: {e}")
                    self.failed[tool] = str(e).strip().splitlines()[-1][:200]
                    continue
                digest = out.decode().strip().splitlines()[-1] if out.strip() else ""
                if digest:
                    self.digest[tool] = digest
                log(f"{self.name} / {tool}: {wall:.3f} s wall, {cpu:.3f} s cpu, {mib(rss)} peak RSS (load {loadavg()})")
                if tool not in self.best or wall < self.best[tool][0]:
                    self.best[tool] = (wall, cpu, rss)

    def rows(self, ours: str, ref: str, sha_two_cores: float | None = None,
             sha_both_busy: float | None = None) -> list[dict]:
        rows = [{"case": self.name, "tool": tool, "seconds": None, "note": f"FAILED: {msg}"}
                for tool, msg in self.failed.items()]
        for tool, (wall, cpu, rss) in self.best.items():
            note = [f"peak RSS {mib(rss)}"]
            if tool == ours and ref in self.best:
                rwall, _rcpu, rrss = self.best[ref]
                note.append(f"{rwall / wall:.2f}x the reference's speed")
                note.append(f"RSS {rss / rrss:.2f}x")
                if self.digest.get(ours) and self.digest.get(ref):
                    note.append("same digest" if self.digest[ours] == self.digest[ref] else "DIGESTS DIFFER")
            if tool == ours and sha_two_cores:
                note.append(f"{wall / sha_two_cores:.2f}x the two-core SHA-256 time")
                if sha_both_busy:
                    note.append(f"{wall / sha_both_busy:.2f}x the measured two-process time")
            rows.append({"case": self.name, "tool": tool, "seconds": wall, "cpu": cpu, "bytes": self.nbytes,
                         "note": ", ".join(note)})
        return rows


def run(workdir: Path) -> list[dict]:
    ours, ref, ref_info = find_tools()
    OURS, REF = "cfsctl build", "mkcomposefs"
    log(f"ours: {ours}; reference: {ref or 'not found (set MKCOMPOSEFS=/path/to/mkcomposefs)'}")
    corpus = workdir / "corpus"
    make_corpus(corpus)
    if (workdir / "trash").exists():
        log("removing the stores of the previous run")
        shutil.rmtree(workdir / "trash", ignore_errors=True)
    rate = openssl_sha256()
    rate2 = openssl_sha256(2)
    rows: list[dict] = [{"case": "SHA-256, one core", "tool": "openssl speed", "seconds": None, "rate": rate,
                         "note": f"load {loadavg()} at start"},
                        {"case": "SHA-256, two cores at once", "tool": "openssl speed -multi 2 -elapsed",
                         "seconds": None, "rate": rate2, "note": f"{rate2 / rate:.2f}x one core"}]
    sources = [("corpus", corpus)] + ([("/usr", Path("/usr"))] if WITH_USR else [])
    for label, src in sources:
        entries, content, work = tree_stats(src)
        sha2 = work / (2 * rate)
        rows.append({"case": f"{label}: SHA-256 of the fs-verity work, two cores", "tool": "openssl speed x2",
                     "seconds": sha2, "bytes": content,
                     "note": f"{entries:,} entries, {content / 2**30:.2f} GiB hashed, {work / 2**30:.2f} GiB SHA-256 input"})
        rows.append({"case": f"{label}: SHA-256 of the fs-verity work, two cores at once", "tool": "openssl speed -multi 2",
                     "seconds": work / rate2, "bytes": content, "note": "measured with both cores busy"})
        log(f"warming the page cache: {src}")
        warm(src)
        case = Case(f"{label}: --print-digest-only", content)
        tools = {OURS: [ours, "build", "--no-hardlinks", "--print-digest-only", str(src)]}
        if ref:
            tools[REF] = [ref, "--print-digest-only", str(src)]
        case.measure(tools, REPEAT)
        rows += case.rows(OURS, REF, sha2, work / rate2)

        stores = {OURS: workdir / "store-ours", REF: workdir / "store-ref"}
        images = {OURS: workdir / "image-ours.cfs", REF: workdir / "image-ref.cfs"}

        used: list[Path] = []

        def fresh(tool):
            # A new, empty directory each time: deleting a store of 10^5 files is slow here (ext4
            # `discard` waits on every unlink), so the old ones go at the next run's start.
            stores[tool] = workdir / f"store-{'ours' if tool == OURS else 'ref'}-{len(used)}"
            shutil.rmtree(stores[tool], ignore_errors=True)
            stores[tool].mkdir()
            used.append(stores[tool])
            images[tool].unlink(missing_ok=True)
            tools[tool][tools[tool].index("--digest-store") + 1 if tool == OURS else -3] = (
                str(stores[tool]) if tool == OURS else f"--digest-store={stores[tool]}")
            settle()

        case = Case(f"{label}: into a fresh store", content)
        tools = {OURS: [ours, "build", "--no-hardlinks", "--print-digest", "--digest-store", str(stores[OURS]), str(src),
                             str(images[OURS])]}
        if ref:
            tools[REF] = [ref, "--print-digest", f"--digest-store={stores[REF]}", str(src), str(images[REF])]
        case.measure(tools, STORE_REPEAT, before=fresh)
        rows += case.rows(OURS, REF)
        if label == "corpus":
            dump = make_dump(workdir, ours, images[OURS], ref_info, images[REF])
        trash = workdir / "trash"
        trash.mkdir(exist_ok=True)
        for store in used:  # removed at the start of the next run, before any timing
            store.rename(trash / f"{time.time_ns()}-{store.name}")
        if label == "corpus" and dump is not None:
            case = Case(f"--from-dump, {DUMP_ENTRIES:,} entries", dump.stat().st_size)
            tools = {OURS: [ours, "build", "--from-dump", str(dump), str(workdir / "dump-ours.cfs")]}
            if ref:
                tools[REF] = [ref, "--from-file", str(dump), str(workdir / "dump-ref.cfs")]
            case.measure(tools, REPEAT)
            dump_rows = case.rows(OURS, REF)
            a, b = workdir / "dump-ours.cfs", workdir / "dump-ref.cfs"
            if ref and a.exists() and b.exists():
                for r in dump_rows:
                    if r["tool"] == OURS and r.get("seconds") is not None:
                        r["note"] += ", same image" if a.read_bytes() == b.read_bytes() else ", IMAGES DIFFER"
            rows += dump_rows
    rows.append({"case": "load average at end", "tool": "", "seconds": None, "note": loadavg()})
    return rows


def make_dump(workdir: Path, ours: str, our_image: Path, ref_info: str | None, ref_image: Path) -> Path | None:
    """The first DUMP_ENTRIES entries of the corpus image's dump (a dump lists parents first, so
    every prefix is a whole tree)."""
    dump = workdir / "corpus-100k.dump"
    for args in ([ours, "info", "dump", str(our_image)], [ref_info, "dump", str(ref_image)] if ref_info else None):
        if args is None or not Path(args[-1]).exists():
            continue
        try:
            out = subprocess.run(args, capture_output=True, check=True, timeout=TIMEOUT).stdout
        except (subprocess.CalledProcessError, OSError) as e:
            log(f"cannot dump with {args[0]}: {e}")
            continue
        lines = out.split(b"\n")
        dump.write_bytes(b"\n".join(lines[:DUMP_ENTRIES]) + b"\n")
        log(f"{dump}: {min(len(lines), DUMP_ENTRIES)} entries, from {' '.join(args[:2])}")
        return dump
    log("no dump of the corpus could be made; skipping --from-dump")
    return None
