# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl pull` from nginx against `wget -i` and `xargs -P 16 curl` of the same objects, and the
lazy mount's first read against pull-then-read (issue #13, point 4). Root;
`.venv/bin/python bench/run.py remote` (BENCH_REMOTE_PARTS=host,guest; BENCH_REMOTE_REPEAT, default 1;
BENCH_REMOTE_SCRATCH=DIR: where the host clients write, e.g. a tmpfs, default bench/work/remote/scratch).

The tree: qemu/boot.py's cached debootstrap'd Debian root (bookworm minbase + systemd, a kernel
and initramfs-tools; about 10,600 files, 316 MB), imported once into a repository served as
plain files. bench/guest/remote_netem.py does the timing, in two places:
  host   the whole root; nginx and the clients in two network namespaces joined by a veth pair,
         a tbf of 1 Gbit/s on what nginx sends, no delay (the host has no sch_netem): the
         >= 90%-of-1-Gbit/s figure;
  guest  one QEMU boot (TCG), the root's /usr/share files of at most 32 KiB (about 3,400: the
         object count, not the bytes, is what separates one connection from many, and under TCG
         on a shared host the whole root's 10,000 made one run longer than an hour), netem 10 ms each way
         (20 ms RTT) and a tbf at half the rate the emulated client pulls unshaped; then the
         lazy mount against pull-then-read, through our module, on the fs-verity disk.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_build import loadavg, log
from bench_guest import boot_job

ROOT = Path(__file__).resolve().parent.parent
TITLE = "remote pull from nginx: cfsctl pull vs wget -i vs xargs -P 16 curl; lazy mount vs pull+read"
PARTS = os.environ.get("BENCH_REMOTE_PARTS", "host,guest").split(",")
REPEAT = int(os.environ.get("BENCH_REMOTE_REPEAT", "1"))
TIMEOUT = int(os.environ.get("BENCH_GUEST_TIMEOUT", "3600"))
NAME = "debian"
SMALL = 32 << 10
SPEC = "v2 boot-root"
GUEST_SUBDIR = "usr/share"
# BENCH_REMOTE_GUEST=lazy with BENCH_REMOTE_GUEST_MBIT=N: only the lazy mount against pull+read
GUEST_PARTS = os.environ.get("BENCH_REMOTE_GUEST", "clients,lazy").split(",")
GUEST_MBIT = os.environ.get("BENCH_REMOTE_GUEST_MBIT", "auto")


def source_root() -> Path:
    sys.path.insert(0, str(ROOT / "qemu"))
    sys.path.insert(0, str(ROOT / "tests"))
    import boot

    return boot.debian_root()


def served(data: Path, src: Path, max_size: int | None, subdir: str | None = None) -> Path:
    """DATA/www/repo holding image NAME of SRC (only SUBDIR and its files of at most MAX_SIZE
    bytes, when given) and DATA/urls.txt, its objects' paths; made once per spec."""
    from composefs.repository import Repository

    from composefs import _native

    stamp = data / "spec"
    spec = f"{SPEC} {src} {max_size} {subdir}"
    if stamp.exists() and stamp.read_text() == spec:
        return data
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    tree = src
    if max_size is not None:
        tree = data.parent / f"{data.name}-tree"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        subprocess.run(["cp", "-a", str(src / (subdir or "")), str(tree)], check=True)
        subprocess.run(["find", str(tree), "-type", "f", "-size", f"+{max_size}c", "-delete"], check=True)
    log(f"importing {tree} into {data / 'www' / 'repo'}")
    repo = Repository.init(data / "www" / "repo")
    with repo.locked():
        digest = repo.import_directory(str(tree), NAME)["digest"]
    if tree != src:
        shutil.rmtree(tree)
    objs = _native.image_objects_sized(str(data / "www" / "repo" / "images" / digest))
    (data / "urls.txt").write_text("".join(f"{o.name}\n" for o in objs))
    stamp.write_text(spec)
    return data


def host_run(workdir: Path) -> dict:
    data = served(workdir / "host", source_root(), None)
    scratch = Path(os.environ.get("BENCH_REMOTE_SCRATCH") or workdir / "scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    out = workdir / "host.json"
    load0 = loadavg()
    cmd = [sys.executable, str(ROOT / "bench" / "guest" / "remote_netem.py"), "--data", str(data), "--scratch",
           str(scratch), "--out", str(out), "--name", NAME, "--mbit", "1000", "--repeat", str(REPEAT)]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, timeout=TIMEOUT)
    shutil.rmtree(scratch, ignore_errors=True)
    res = json.loads(out.read_text())
    res["load"] = [load0, loadavg()]
    return res


def guest_run(workdir: Path) -> dict:
    disk = served(workdir / "guest", source_root(), SMALL, GUEST_SUBDIR)
    args = ["--name", NAME, "--delay", "10ms", "--mbit", GUEST_MBIT, "--repeat", str(REPEAT), "--lazy"]
    if "clients" not in GUEST_PARTS:
        args.append("--no-clients")
    try:
        return boot_job(workdir, "remote_netem.py", disk, args, "remote.json",
                        timeout=TIMEOUT)
    except RuntimeError as e:
        # the job writes its results after every run: a boot cut short still reports those
        partial = workdir / "qemu" / "run" / "remote.json"
        if not partial.exists():
            raise
        log(f"{e}; reporting the runs that finished")
        return {**json.loads(partial.read_text()), "partial": True}


def rows_of(where: str, res: dict) -> list[dict]:
    rows = []
    link = (f"netem {res['delay_each_way']} each way + " if res["delay_each_way"] else "") + f"tbf {res['mbit']:g} Mbit/s"
    case = f"{where}: {res['objects']:,} objects, {link}"
    by = {}
    for r in res["runs"]:
        by.setdefault((r["tool"], r.get("readers")), []).append(r)
    med = {k: statistics.median(r["wall"] for r in v) for k, v in by.items()}
    for tool, label in (("pull", "cfsctl pull"), ("wget", "wget -i (sequential)"), ("curl", "xargs -P 16 curl")):
        runs = by.get((tool, None))
        if not runs:
            continue
        nbytes = runs[0]["bytes"]
        note = f"median of {len(runs)}"
        if tool == "pull":
            secs = statistics.median(r["seconds"] for r in runs)
            share = nbytes * 8 / secs / (res["mbit"] * 1e6)
            note += f"; {share * 100:.0f}% of the link over its transfer ({secs:.1f} s)"
            if ("wget", None) in med:
                note += f"; {med[('wget', None)] / med[('pull', None)]:.1f}x faster than wget (target >= 3x)"
            if ("curl", None) in med:
                note += f"; {med[('curl', None)] / med[('pull', None)]:.2f}x the speed of parallel curl (target >= 1)"
        rows.append({"case": case, "tool": label, "seconds": med[(tool, None)],
                     "cpu": statistics.median(r["cpu"] for r in runs), "bytes": nbytes, "note": note})
    for readers in (1, 16):
        pr = by.get(("pull+read", readers))
        if not pr:
            continue
        c = f"{where}: first read of every file, {readers} reader(s), {link}"
        for tool, label in (("lazy", "lazy mount (cfsctl mount --remote --readahead 0) + cat"),
                            ("lazy+readahead", "lazy mount (cfsctl mount --remote, read-ahead 64) + cat")):
            lz = by.get((tool, readers))
            if not lz:
                continue
            ratio = med[(tool, readers)] / med[("pull+read", readers)]
            rows.append({"case": c, "tool": label, "seconds": med[(tool, readers)],
                         "note": f"{ratio:.2f}x pull+read (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'}); "
                                 f"read {lz[0]['read']:.1f} s; {lz[0]['objects']} objects fetched"})
        rows.append({"case": c, "tool": "cfsctl pull, mount, cat", "seconds": med[("pull+read", readers)],
                     "note": f"pull {pr[0]['pull']:.1f} s + read {pr[0]['read']:.1f} s"})
    return rows


def run(workdir: Path) -> list[dict]:
    if os.geteuid() != 0:
        raise SystemExit("bench_remote needs root (network namespaces, QEMU)")
    workdir = Path(workdir)
    rows = []
    for part, fn in (("host", host_run), ("guest", guest_run)):
        if part in PARTS:
            res = fn(workdir)
            (workdir / f"{part}-result.json").write_text(json.dumps(res, indent=1))
            rows += rows_of(part, res)
    return rows
