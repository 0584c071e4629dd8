#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Guest half of bench/bench_oci_guest.py: `cfsctl oci pull` over a link with 50 ms RTT and a
rate limit, inside one QEMU boot (the host kernel has no sch_netem; Debian's guest kernel loads
sch_netem, sch_tbf and veth).

Run by `qemu/run.py --job bench/guest/oci_netem.py -- --ref-path REPO:TAG [--rates MBIT,...]
[--repeat N]`, the disk ($CFS_VERITY_DIR) preloaded with `registry/storage/`: a docker-registry
filesystem store holding the image.

The network: tests/ocireg.py's NetPair (two network namespaces joined by a veth pair, 192.0.2.1
the server, 192.0.2.2 the client); its Registry runs docker-registry in the server namespace on
192.0.2.1:5000. Shaping by NetPair.link: `netem delay 25ms` each way (50 ms RTT), and on the
server's end (what the registry sends) a `tbf` child of that netem at the given rate.

Timed, alternated, each REPEAT times, in the client namespace:
  pull  `cfsctl oci pull` into an empty repository on tmpfs (/tmp): the process's wall time, its
        CPU time, and the `seconds` its --json reports (from the first layer request to the
        image committed: the part the link can limit; Python start-up under TCG is not);
  curl  `curl -Z` (parallel) of the image's layer blobs to /dev/null: what one plain HTTP client
        gets over the same link, verifying and storing nothing.
First unshaped (how fast the emulated client is), then for each rate with the delay.
Results go to $CFS_OUT_DIR/oci_netem.json; progress to stdout.
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

from ocireg import NetPair, Registry  # noqa: E402

DATA = Path(os.environ.get("CFS_VERITY_DIR", "/run/cfs/verity"))
OUT = Path(os.environ.get("CFS_OUT_DIR", "/run/cfs/out"))
CFSCTL = str(ROOT / ".venv" / "bin" / "cfsctl")
DELAY = "25ms"


def log(msg: str) -> None:
    print(f"oci_netem: {msg}", flush=True)


def timed(args: list[str]) -> tuple[float, bytes]:
    """(wall s, stdout) of a child that must succeed."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {err.decode(errors='replace')[-2000:]}")
    return wall, out


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref-path", required=True, help="REPO:TAG in the preloaded registry")
    ap.add_argument("--blobs", required=True, help="comma-separated layer digests (for curl)")
    ap.add_argument("--rates", default="auto", help="Mbit/s, comma-separated, or auto (half the unshaped pull rate)")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    res: dict = {"kernel": platform.release(), "repeat": a.repeat, "delay_each_way": DELAY, "runs": []}
    ns = NetPair()
    reg = Registry(DATA / "registry", host=NetPair.SERVER, port=5000, prefix=ns.server_cmd)
    try:
        reg.start(timeout=300)  # Go's start-up under TCG on a busy host
        ref = f"docker://{reg.addr}/{a.ref_path}"
        repo_name = a.ref_path.split(":")[0]
        urls = [f"http://{reg.addr}/v2/{repo_name}/blobs/{d}" for d in a.blobs.split(",")]
        n = 0

        def pull(mbit) -> None:
            nonlocal n
            n += 1
            repo = Path(f"/tmp/pull-{n}")
            subprocess.run([CFSCTL, "init", "--repo", str(repo)], check=True, capture_output=True)
            c0 = cpu_children()
            wall, out = timed([*ns.client_cmd, CFSCTL, "oci", "pull", ref, "--name", "d", "--tls-verify=false",
                                  "--repo", str(repo), "--json"])
            cpu = cpu_children() - c0
            j = json.loads(out)
            shutil.rmtree(repo)
            r = {"tool": "pull", "mbit": mbit, "wall": wall, "cpu": cpu, "seconds": j["seconds"],
                 "bytes": j["bytes_fetched"], "digest": j["digest"]}
            log(json.dumps(r))
            res["runs"].append(r)

        def curl(mbit) -> None:
            args = ["curl", "-sS", "--fail", "-Z"]
            for u in urls:
                args += ["-o", "/dev/null", u]
            c0 = cpu_children()
            wall, _ = timed([*ns.client_cmd, *args])
            r = {"tool": "curl", "mbit": mbit, "wall": wall, "cpu": cpu_children() - c0}
            log(json.dumps(r))
            res["runs"].append(r)

        ns.link(None, None)
        pull(None)  # warms the guest's page cache (registry store, cfsctl's Python files over 9p)
        res["runs"].clear()
        for i in range(a.repeat):
            for f in ((pull, curl) if i % 2 == 0 else (curl, pull)):
                f(None)
        if a.rates == "auto":
            pulls = [r for r in res["runs"] if r["tool"] == "pull"]
            best = max(r["bytes"] / r["seconds"] for r in pulls)
            rates = [max(1, int(best * 8 / 1e6 / 2))]
        else:
            rates = [float(x) for x in a.rates.split(",")]
        res["rates"] = rates
        for mbit in rates:
            ns.link(DELAY, mbit)
            for i in range(a.repeat):
                for f in ((pull, curl) if i % 2 == 0 else (curl, pull)):
                    f(mbit)
        ns.link(None, None)
    finally:
        reg.stop()
        ns.close()
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "oci_netem.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
