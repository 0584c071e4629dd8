#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Power cuts in QEMU: boot, work, kill QEMU at a random moment, boot again on the same disk, check.

    qemu/powercut.py --cuts 50 --lanes 3                  # `make powercut-test CUTS=50`
    qemu/powercut.py --cuts 3 --lanes 3 --max-delay 8     # the short run in `make test`

Each boot runs tests/guest/powercut_job.py through qemu/run.py on one ext4 disk (-O verity) that
lives across boots (--disk). The job first checks what the previous cut left (fsck, refs,
objects, the digest store; see its docstring), prints CFS-PC-ARMED, then imports and gc's or runs
`cfsctl build --digest-store` (the boots of a lane alternate) until run.py SIGKILLs QEMU a random
delay after that line. A last boot of each lane only checks. --lanes VMs run at once, each on a
disk of its own, sharing out the cuts (under TCG a boot is slow and CPU-bound; lanes shorten the
run). Exit status 0 only when every boot checked clean, every cut happened, and no kernel log
line was bad. Each boot's console and run.py log: WORK/laneK/boots/.

The disk is `-drive cache=none` (O_DIRECT on the host file). What a SIGKILL of QEMU loses is what
a power cut loses from the guest's side: its page cache and every write not yet handed to the
virtual disk. A write QEMU completed is in the host file whatever the cache mode (the host keeps
running), so the guest's flushes and write ordering are what is tested: with cache=none the guest
sees a disk with a volatile cache and must flush (QEMU turns a flush into fdatasync), as on real
hardware. cache=unsafe, run.py's default, would do the same under a QEMU kill, but it acknowledges
flushes without doing them, which makes a passing result say less; cache=none never lies to the
guest. Not modelled: a disk that loses writes it acknowledged before a flush, or tears a sector.

Results: WORK/powercut.json (one record per boot) and a summary on stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = REPO / "tests" / "guest" / "powercut_job.py"
STATE = "/run/cfs/verity/pc"


def log(msg: str) -> None:
    print(f">> powercut: {msg}", flush=True)


def boot(work: Path, disk: Path, n: int, mode: str, seed: int, delay: float | None, timeout: float) -> dict:
    # loglevel=5: the kernel's info lines cost boot time on the emulated serial console; warnings
    # and worse (what run.py looks for) still show, the job reports the disk's ext4 lines itself.
    # no_timer_check: on a loaded host the emulated CPU is too slow for the early IO-APIC timer
    # check, which then panics ("IO-APIC + timer doesn't work").
    cmd = [sys.executable, str(HERE / "run.py"), "-q", "--no-build-module", "--work", str(work),
           "--append", "loglevel=5 no_timer_check", "--disk", str(disk), "--drive-cache", "none", "--timeout", str(timeout),
           "--job", str(JOB)]
    if delay is not None:
        cmd += ["--kill-after", r"^CFS-PC-ARMED", "--kill-delay", f"{delay:.2f}"]
    cmd += ["--", "--state", STATE, "--mode", mode, "--seed", str(seed)]
    if delay is None:
        cmd.append("--final")
    t0 = time.monotonic()
    retries = []
    while True:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        console_src = work / "run" / "console.log"
        console = console_src.read_text("utf-8", "replace").replace("\r\n", "\n") if console_src.exists() else ""
        # A kernel that died before our /init ran never saw the disk: boot again (at most twice).
        if r.returncode == 0 or "cfs-guest: init" in console or len(retries) == 2:
            break
        panic = re.search(r"Kernel panic - not syncing: (.*)", console)
        retries.append(panic[1][:200] if panic else "no /init")
        log(f"boot {n}: the kernel failed before /init ({retries[-1]}); booting again")
    (work / "boots").mkdir(exist_ok=True)  # WORK/laneK/boots
    (work / "boots" / f"{n:03d}-console.log").write_text(console)
    (work / "boots" / f"{n:03d}-run.log").write_text(r.stdout)
    check = re.search(r"^CFS-PC-CHECK problems=(\d+)(.*)$", console, re.M)
    steps = re.findall(r"^CFS-PC-STEP (\w+) (\d+)", console, re.M)
    rec = {
        "boot": n, "mode": mode, "seed": seed, "delay": delay, "run_py": r.returncode,
        "seconds": round(time.monotonic() - t0, 1), "early_boot_retries": retries,
        "check": dict(kv.split("=") for kv in check[2].split()) if check else None,
        "problems": re.findall(r"^CFS-PC-PROBLEM (.*)$", console, re.M),
        "steps_done": len(steps),
        "cut_in": f"{steps[-1][0]}" if steps else "before-first-step",
        "journal_recovery": bool(re.search(r"EXT4-fs \(vda\): recovery complete", console)),
        "kernel": re.findall(r"^CFS-PC-KMSG (.*)$", console, re.M),
    }
    if not check:
        rec["problems"].append("no CFS-PC-CHECK line (the job failed before checking; see the run log)")
    if r.returncode != 0:
        tail = "\n".join(r.stdout.splitlines()[-15:])
        rec["problems"].append(f"qemu/run.py exited {r.returncode}: {tail}")
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuts", type=int, default=50)
    ap.add_argument("--max-delay", type=float, default=20.0,
                    help="cut a uniformly random 0..SECONDS after the workload starts")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=1200.0, help="per boot")
    ap.add_argument("--stop-after", type=float, default=0, metavar="SECONDS",
                    help="start no cut after this long (each lane still ends with its check boot)")
    ap.add_argument("--lanes", type=int, default=1,
                    help="VMs at once, each on a disk of its own (the cuts are shared out)")
    ap.add_argument("--work", type=Path, default=HERE / "work-powercut")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    work = a.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log(f"{a.cuts} cuts, delays 0..{a.max_delay:g}s, seed {seed}, work {work}")
    records: list[dict] = []
    mu = threading.Lock()
    t0 = time.monotonic()
    plan = [(n, rng.uniform(0, a.max_delay), rng.randrange(1 << 31)) for n in range(a.cuts)]

    def lane(k: int) -> None:
        lwork = work / f"lane{k}"
        lwork.mkdir()
        mine = plan[k::a.lanes]
        for i, (n, delay, bseed) in enumerate(mine + [(a.cuts + k, None, 0)]):
            if delay is not None and a.stop_after and time.monotonic() - t0 > a.stop_after:
                continue  # out of time: no more cuts, only the final check of this lane
            final = delay is None
            mode = "repo" if (i + k) % 2 == 0 else "build"  # lanes start with different modes
            rec = boot(lwork, lwork / "disk.img", n, mode, bseed, delay, a.timeout)
            rec["lane"] = k
            with mu:
                records.append(rec)
                (work / "powercut.json").write_text(json.dumps({"seed": seed, "boots": records}, indent=1) + "\n")
                what = "final check" if final else f"{mode}, cut {delay:.1f}s after start in {rec['cut_in']}"
                log(f"lane {k} boot {n}: {what}; check {rec['check']}; {len(rec['problems'])} problems; "
                    f"{rec['seconds']}s")
                for p in rec["problems"]:
                    log(f"  PROBLEM: {p}")

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(a.lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records.sort(key=lambda r: r["boot"])
    cuts = [r for r in records if r["delay"] is not None]
    where = collections.Counter(f"{r['mode']}:{r['cut_in']}" for r in cuts)
    problems = sum(len(r["problems"]) for r in records)
    log(f"summary: {len(cuts)} cuts ({sum(r['mode'] == 'repo' for r in cuts)} import/gc, "
        f"{sum(r['mode'] == 'build' for r in cuts)} build --digest-store), "
        f"{sum(r['journal_recovery'] for r in records)} ext4 journal recoveries, {problems} problems, "
        f"{time.monotonic() - t0:.0f}s")
    log("cuts landed in: " + ", ".join(f"{k} {v}" for k, v in sorted(where.items())))
    log(f"records: {work / 'powercut.json'}")
    log("PASS" if problems == 0 else "FAIL")
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
