#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl pull` from nginx against `wget -i` and `xargs -P 16 curl` of the same object URLs, over
a shaped veth link; in the QEMU guest also the lazy mount's first read against pull-then-read
(issue #13, point 4). Driven by bench/bench_remote.py: on the host (tbf only, the host has no
sch_netem) and in one QEMU boot (`qemu/run.py --job bench/guest/remote_netem.py -- ...`).

DATA (--data, in the guest $CFS_VERITY_DIR) holds www/repo/ (a repository holding image NAME)
and urls.txt (the paths of the image's objects below the repository, one a line). The network
is tests/ocireg.py's NetPair: nginx-light (tests/webrepo.py's Nginx) in the server namespace on
192.0.2.1:8080 serving DATA/www, every client in the client namespace. NetPair.link shapes it:
netem DELAY each way (none on the host) and a tbf of MBIT on what nginx sends.

Timed, alternated, each REPEAT times (the order rotates), into SCRATCH (deleted after each run):
  pull  `cfsctl pull URL NAME` into an empty repository: wall, CPU (children), its --json seconds;
  wget  `wget -i` of the object URLs (one connection, keep-alive, sequential: the repository is
        not browsable, objects are fetched by name, so `--recursive` has nothing to follow);
  curl  `xargs -P 16 -n 64 curl --remote-name-all` of the same URLs (16 processes, each reusing
        its connection for its 64 URLs; nothing verified).
With --lazy (guest): `cfsctl mount IMAGE MNT --remote URL` over an empty basedir on the fs-verity
disk and a first `cat` of every regular file (one reader, in `find` order; then 16 readers), with
fetchd's read-ahead off (`--readahead 0`: tool "lazy") and at its default (64 objects:
"lazy+readahead"), against `cfsctl pull` into a repository on the same disk and the same `cat`
through a mount of its objects.
First (`--mbit auto`) one unshaped pull measures how fast the client is; the rate is then half of
it, so that the link, not the (emulated) CPU, is the limit. Results: OUT (JSON); progress: stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ocireg import NetPair  # noqa: E402
from webrepo import Nginx  # noqa: E402

CFSCTL = str(ROOT / ".venv" / "bin" / "cfsctl")


def log(msg: str) -> None:
    print(f"remote_netem: {msg}", flush=True)


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(args: list[str], **kw) -> tuple[float, float, bytes]:
    """(wall s, CPU s of the child, stdout) of a child that must succeed."""
    c0 = cpu_children()
    t = time.perf_counter()
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:300]} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    return wall, cpu_children() - c0, p.stdout


def cat_all(mnt: Path, readers: int) -> list[str]:
    """Read every regular file under MNT once: one `cat` in find order, or READERS at a time."""
    find = f"find {mnt} -type f -print0 | xargs -0 "
    return ["sh", "-c", find + (f"-P {readers} -n 64 " if readers > 1 else "") + "cat > /dev/null"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CFS_VERITY_DIR", "/run/cfs/verity")))
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/remote-bench"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("CFS_OUT_DIR", "/run/cfs/out")) / "remote.json")
    ap.add_argument("--name", required=True)
    ap.add_argument("--delay", default=None, help="netem delay each way (e.g. 10ms); none without")
    ap.add_argument("--mbit", default="auto", help="tbf rate in Mbit/s, or auto (half the unshaped pull rate)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--lazy", action="store_true", help="also time the lazy mount (needs the module)")
    ap.add_argument("--no-clients", action="store_true", help="only the lazy mount (with --lazy and a fixed --mbit)")
    a = ap.parse_args()
    urls_rel = (a.data / "urls.txt").read_text().split()
    res: dict = {"kernel": platform.release(), "repeat": a.repeat, "delay_each_way": a.delay, "objects": len(urls_rel),
                 "runs": []}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    a.scratch.mkdir(parents=True, exist_ok=True)
    net = NetPair()
    nginx = None
    try:
        nginx = Nginx(a.scratch, a.data / "www", host=NetPair.SERVER, port=8080, prefix=net.server_cmd)
        url = f"{nginx.url}/repo"
        urls = a.scratch / "urls"
        urls.write_text("".join(f"{url}/objects/{u}\n" for u in urls_rel))
        ref = (a.data / "www" / "repo" / "refs" / a.name).read_text().strip()
        image = a.data / "www" / "repo" / "images" / ref
        cli = net.client_cmd
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            d = a.scratch / f"run-{n}"
            d.mkdir()
            return d

        def record(r: dict) -> None:
            log(json.dumps(r))
            res["runs"].append(r)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=1) + "\n")  # a run cut short keeps what finished

        def pull(mbit, into: Path | None = None) -> dict:
            d = into or fresh()
            subprocess.run([CFSCTL, "init", "--repo", str(d / "r")], check=True, capture_output=True)
            wall, cpu, out = timed([*cli, CFSCTL, "pull", url, a.name, "--repo", str(d / "r"), "--json"])
            j = json.loads(out)
            r = {"tool": "pull" if into is None else "pull-for-read", "mbit": mbit, "wall": wall, "cpu": cpu, "seconds": j["seconds"],
                 "bytes": j["bytes_fetched"], "objects": j["objects_fetched"]}
            if into is None:
                shutil.rmtree(d)
            record(r)
            return r

        def wget(mbit) -> None:
            d = fresh()
            wall, cpu, _ = timed([*cli, "wget", "-q", "-x", "-nH", "-P", str(d), "-i", str(urls)])
            nbytes = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            shutil.rmtree(d)
            record({"tool": "wget", "mbit": mbit, "wall": wall, "cpu": cpu, "bytes": nbytes})

        def curl(mbit) -> None:
            d = fresh()
            wall, cpu, _ = timed(["sh", "-c", f"{' '.join(cli)} xargs -P 16 -n 64 curl -sS --fail --remote-name-all "
                                              f"< {urls}"], cwd=d)
            nbytes = sum(f.stat().st_size for f in d.iterdir())
            shutil.rmtree(d)
            record({"tool": "curl", "mbit": mbit, "wall": wall, "cpu": cpu, "bytes": nbytes})

        net.link(None, None)
        if a.mbit == "auto":
            first = pull(None)  # also warms the page caches (served objects, cfsctl's Python files)
            res["runs"].clear()
            mbit = max(1, int(first["bytes"] * 8 / first["seconds"] / 1e6 / 2))
            res["unshaped_pull"] = first
        else:
            mbit = float(a.mbit)
        res["mbit"] = mbit
        net.link(a.delay, mbit)
        tools = [pull, wget, curl]
        for i in range(0 if a.no_clients else a.repeat):
            for f in tools[i % 3:] + tools[:i % 3]:
                f(mbit)
        if a.lazy:
            lazy(a, res, net, url, image, mbit, pull, record)
        net.link(None, None)
    finally:
        if nginx is not None:
            nginx.stop()
        net.close()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


def lazy(a, res, net: NetPair, url: str, image: Path, mbit, pull, record) -> None:
    """First read through the lazy mount against pull then read, on the fs-verity disk."""
    base = a.data / "lazy-runs"
    base.mkdir(exist_ok=True)
    for readers in (1, 16):
        kinds = ("lazy", "pull", "lazy+readahead")
        for order in kinds if readers == 1 else kinds[::-1]:
            d = base / f"{order}-{readers}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            mnt = d / "mnt"
            mnt.mkdir()
            if order.startswith("lazy"):
                readahead = "64" if order == "lazy+readahead" else "0"
                (d / "objects").mkdir()
                t = time.perf_counter()
                c0 = cpu_children()
                subprocess.run([*net.client_cmd, CFSCTL, "mount", str(image), str(mnt), "--basedir", str(d / "objects"),
                                "--backend", "kernel", "--verity-check", "1", "--remote", url,
                                "--readahead", readahead], check=True, capture_output=True)
                try:
                    rd, _, _ = timed(cat_all(mnt, readers))
                finally:
                    subprocess.run([CFSCTL, "umount", str(mnt)], check=True)
                wall = time.perf_counter() - t
                fetched = sum(1 for _ in (d / "objects").glob("??/*"))
                record({"tool": order, "readers": readers, "readahead": int(readahead), "mbit": mbit, "wall": wall,
                        "read": rd, "cpu": cpu_children() - c0, "objects": fetched})
            else:
                t = time.perf_counter()
                p = pull(mbit, into=d)
                subprocess.run([CFSCTL, "mount", str(d / "r" / "images" / image.name), str(mnt), "--basedir",
                                str(d / "r" / "objects"), "--backend", "kernel", "--verity-check", "1"], check=True,
                               capture_output=True)
                try:
                    rd, _, _ = timed(cat_all(mnt, readers))
                finally:
                    subprocess.run([CFSCTL, "umount", str(mnt)], check=True)
                record({"tool": "pull+read", "readers": readers, "mbit": mbit, "wall": time.perf_counter() - t,
                        "pull": p["wall"], "read": rd})
            shutil.rmtree(d)


if __name__ == "__main__":
    sys.exit(main())
