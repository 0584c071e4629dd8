"""Building from a real directory: scan policy (options -> native calls) and progress display.

The scan itself is native (``composefs._native.scan_directory``): a parallel walk that lstats
every entry and reads its xattrs, then reads every regular file once on all cores — files of
1..64 bytes are inlined (as mkcomposefs does), larger ones are fs-verity hashed and, with a
digest store, inserted into it atomically.

Hardlinks: by default several names of one source inode (same ``st_dev``/``st_ino``) stay one
inode in the image. ``no_hardlinks=True`` gives every name its own inode, which is what
mkcomposefs 1.0 produces (its output can then be reproduced bit for bit).

Mount points below the source are descended into, like mkcomposefs does (there is no
"one file system" mode); symlinks are never followed except for the source path itself.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from . import _native
from .errors import CfsError

INLINE_MAX = _native.INLINE_MAX


@dataclass(frozen=True)
class ScanOptions:
    """What to take from the source tree (mkcomposefs options of the same names)."""

    no_hardlinks: bool = False
    skip_devices: bool = False
    skip_xattrs: bool = False
    user_xattrs: bool = False
    use_epoch: bool = False
    threads: int = 0  # 0: one per core

    def check(self) -> None:
        if self.skip_xattrs and self.user_xattrs:
            raise CfsError("--skip-xattrs and --user-xattrs cannot be used together")
        if self.threads < 0:
            raise CfsError(f"--threads must be 0 or more, not {self.threads}")

    def native_kwargs(self) -> dict[str, Any]:
        return {
            "no_hardlinks": self.no_hardlinks,
            "skip_devices": self.skip_devices,
            "skip_xattrs": self.skip_xattrs,
            "user_xattrs": self.user_xattrs,
            "use_epoch": self.use_epoch,
            "threads": self.threads,
        }


def scan_directory(
    source: str | os.PathLike,
    options: ScanOptions = ScanOptions(),
    *,
    store: str | os.PathLike | None = None,
    progress: bool | TextIO = False,
    entries: bool = False,
) -> dict[str, Any]:
    """Scan ``source``; with ``store``, fill that object store (and ``syncfs`` it).

    Returns ``{"stats": {...}, "store": {...} | None, "entries": [...] | None}``; ``entries``
    (for tests and inspection) lists every entry as plain values. ``progress`` draws a progress
    line on the given stream (``True``: stderr) while the scan runs.
    """
    options.check()
    if not os.path.isdir(source):
        if not os.path.lexists(source):
            raise CfsError("No such file or directory", source)
        raise CfsError("not a directory", source)
    kwargs = options.native_kwargs()
    if store is not None:
        kwargs["store"] = os.fspath(store)
    stream = sys.stderr if progress is True else (progress or None)
    counter = _native.ScanProgress() if stream is not None else None
    with ProgressLine(counter, stream):
        return _native.scan_directory(os.fspath(source), progress=counter, entries=entries, **kwargs)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class ProgressLine:
    """Polls a ``ScanProgress`` from a background thread (the scan runs without the GIL) and
    redraws one status line; does nothing without a counter."""

    def __init__(self, counter, stream: TextIO | None, interval: float = 0.2):
        self.counter = counter
        self.stream = stream
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    def render(self, s: dict[str, int | str]) -> str:
        if s["phase"] == "contents" or s["phase"] == "done":
            total = s["bytes_total"] or 1
            frac = min(1.0, s["bytes_done"] / total)
            bar = "#" * int(frac * 30)
            return (
                f"reading [{bar:<30}] {frac * 100:5.1f}%  {s['files_done']}/{s['files_total']} files  "
                f"{_human(s['bytes_done'])}/{_human(s['bytes_total'])}"
            )
        return f"scanning: {s['entries']} entries"

    def _draw(self) -> None:
        line = self.render(self.counter.snapshot())
        pad = max(0, self._width - len(line))
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self):
        if self.counter is not None and self.stream is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if exc[0] is None:
                self._draw()
            self.stream.write("\n")
            self.stream.flush()
        return False
