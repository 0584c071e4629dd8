#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Benchmark runner (`make bench`).

Usage:
    python bench/run.py [--list] [--markdown] [--json FILE] [NAME ...]

NAME selects benchmarks by module name without the `bench_` prefix (`digest` runs
`bench/bench_digest.py`); without names, every `bench/bench_*.py` runs, in name order.

Interface of a benchmark module `bench/bench_<name>.py`:

    TITLE = "one line saying what is measured"        # optional
    def run(workdir: pathlib.Path) -> list[dict]: ...

`workdir` is `bench/work/<name>/` (gitignored), created before the call and kept between runs so
generated data can be reused. `run` returns one dict per measurement, with the keys
    case     what was measured, e.g. "1 GiB file"                       (str, required)
    tool     who did the work, e.g. "cfsctl digest"                     (str, required)
    seconds  wall time of the best run, or None for a computed row      (float | None)
    cpu      CPU time (user + system, all threads and child processes) of that run (float, optional)
    bytes    bytes processed, to show throughput (bytes / seconds)      (int | None)
    rate     throughput in bytes/s, when not derived from bytes/seconds (float, optional)
    note     comparison or remark shown in the last column              (str, optional)
Progress and set-up messages go to stderr; the table (one per module) to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / "work"


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def rate_of(row: dict) -> float | None:
    if row.get("rate") is not None:
        return row["rate"]
    if row.get("bytes") and row.get("seconds"):
        return row["bytes"] / row["seconds"]
    return None


def format_table(rows: list[dict], markdown: bool) -> str:
    header = ["case", "tool", "wall s", "cpu s", "MB/s", "MB/cpu-s", "note"]
    body = []
    for r in rows:
        rate = rate_of(r)
        body.append(
            [
                r["case"],
                r["tool"],
                f"{r['seconds']:.3f}" if r.get("seconds") is not None else "",
                f"{r['cpu']:.3f}" if r.get("cpu") is not None else "",
                f"{rate / 1e6:,.0f}" if rate is not None else "",
                f"{r['bytes'] / r['cpu'] / 1e6:,.0f}" if r.get("cpu") and r.get("bytes") else "",
                r.get("note", ""),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---", "---:", "---:", "---:", "---:", "---"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = {2, 3, 4, 5}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the benchmarks in bench/bench_*.py.")
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--json", metavar="FILE", help="also write all rows as JSON to FILE")
    args = ap.parse_args(argv)

    found = discover()
    if args.list:
        for name, path in found.items():
            print(name)
        return 0
    unknown = [n for n in args.names if n not in found]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(found)})")
    selected = args.names or list(found)

    sys.path.insert(0, str(BENCH_DIR))
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, {machine()}")
    all_rows = {}
    for name in selected:
        module = importlib.import_module(f"bench_{name}")
        workdir = WORK_DIR / name
        workdir.mkdir(parents=True, exist_ok=True)
        title = getattr(module, "TITLE", name)
        print(f"\n## {name}: {title}", flush=True)
        start = time.monotonic()
        rows = module.run(workdir)
        print(format_table(rows, args.markdown))
        print(f"({time.monotonic() - start:.0f} s)", flush=True)
        all_rows[name] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(all_rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
