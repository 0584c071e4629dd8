#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Profile the metadata walk of bench/guest/walk_read.py in the guest (perf, kernel symbols).

    qemu/run.py --work DIR --disk-dir bench/work/guest/disk \\
        --job bench/guest/profile_walk.py -- [--mounts module,overlay] [--temps cold,warm]

Same mounts as walk_read.py. For each mount and temperature: `perf record -a -g -e cpu-clock`
around `find MNT -ls >/dev/null` (cold: drop_caches first), then `perf report --no-children`
by symbol into $CFS_OUT_DIR/perf-MOUNT-TEMP.txt, plus the CPU-state split of the walk (user,
system, idle, iowait from /proc/stat, both vCPUs) in $CFS_OUT_DIR/perf-summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from walk_read import DATA, OUT, drop_caches, mount_both, umount_both, walker_cmd


def cpu_states() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq (ticks, all CPUs)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mounts", default="module,overlay")
    ap.add_argument("--temps", default="cold,warm")
    ap.add_argument("--walker", default="find", choices=("find", "ls"))
    ap.add_argument("--freq", default="400")
    ap.add_argument("--tz", default="UTC", help="TZ for the walker ('' = unset, as before)")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.tz:
        env["TZ"] = a.tz

    image = DATA / "img.cfs"
    mnts = mount_both(image, DATA / "objects")
    Path("/proc/sys/kernel/kptr_restrict").write_text("0\n")
    Path("/proc/sys/kernel/perf_event_paranoid").write_text("-1\n")
    syms = OUT / "kallsyms"
    syms.write_text(Path("/proc/kallsyms").read_text())
    summary = {}
    try:
        image.read_bytes()  # into the host's page cache
        for k in a.mounts.split(","):
            for temp in a.temps.split(","):
                walker = walker_cmd(mnts[k], {"find": "walk", "ls": "lswalk"}[a.walker])
                if temp == "cold":
                    drop_caches()
                else:
                    subprocess.run(walker, stdout=subprocess.DEVNULL, check=True, env=env)
                data = OUT / f"perf-{k}-{temp}.data"
                s0, t0 = cpu_states(), time.perf_counter()
                subprocess.run(["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock", "-F", a.freq,
                                "-o", str(data), "--", *walker], stdout=subprocess.DEVNULL, check=True,
                               env=env)
                wall = time.perf_counter() - t0
                d = [y - x for x, y in zip(s0, cpu_states())]
                summary[f"{k}-{temp}"] = {"wall": round(wall, 2), "ticks": dict(zip(
                    ("user", "nice", "system", "idle", "iowait", "irq", "softirq"), d))}
                print(f"profile: {k} {temp}: {summary[f'{k}-{temp}']}", flush=True)
                # the walking process only (not the idle vCPU); kernel symbols from kallsyms
                rep = ["perf", "report", "-i", str(data), "--stdio", "--kallsyms", str(syms),
                       "--comms", walker[0], "-g", "none"]
                with open(OUT / f"perf-{k}-{temp}.txt", "w") as f:
                    subprocess.run([*rep, "--no-children", "--sort", "dso,sym", "--percent-limit",
                                    "0.25"], stdout=f, stderr=subprocess.DEVNULL, check=False)
                with open(OUT / f"perf-{k}-{temp}-callers.txt", "w") as f:
                    subprocess.run([*rep, "--children", "--sort", "sym", "--percent-limit", "0.3"],
                                   stdout=f, stderr=subprocess.DEVNULL, check=False)
                with open(OUT / f"perf-{k}-{temp}-comm.txt", "w") as f:
                    subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--kallsyms",
                                    str(syms), "--sort", "comm,dso", "-g", "none"],
                                   stdout=f, stderr=subprocess.DEVNULL, check=False)
    finally:
        umount_both(mnts)
    (OUT / "perf-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
