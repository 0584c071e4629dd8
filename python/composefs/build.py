# SPDX-License-Identifier: MIT OR Apache-2.0
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

import itertools
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
        try:
            _native.check_options(skip_xattrs=self.skip_xattrs, user_xattrs=self.user_xattrs)
        except ValueError as e:
            raise CfsError(str(e)) from None
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
) -> _native.ScanResult:
    """Scan ``source``; with ``store``, fill that object store (and ``syncfs`` it).

    Returns the scan's ``stats``, the store's (``store``, None without one) and with
    ``entries`` (for tests and inspection) every entry of the tree. ``progress`` draws a
    progress line on the given stream (``True``: stderr) while the scan runs.
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
    with ProgressLine(counter, stream, source):
        return _native.scan_directory(os.fspath(source), progress=counter, entries=entries, **kwargs)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def count_bytes(root: str | os.PathLike, stop: threading.Event | None = None) -> int:
    """Bytes of the regular files under ``root``, each inode once: what a scan reads. Metadata
    only (no file is opened); symlinks are not followed, mount points are descended into as the
    scan does. Unreadable directories count as empty (the scan reports them)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [os.fspath(root)]
    while stack and not (stop and stop.is_set()):
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        if st.st_nlink > 1:
                            if (st.st_dev, st.st_ino) in seen:
                                continue
                            seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
                except OSError:
                    continue
    return total


class ProgressLine:
    """One progress bar over the whole scan, drawn by click: bytes read of the bytes to read,
    percentage, rate and ETA, on one line as wide as the terminal. Does nothing without a
    counter or when the stream is not a terminal.

    The scan hashes files as its walk finds them, so it knows its total only at the end; the
    total comes from a metadata-only count of ``source`` in a background thread instead, and
    until that is done the bar shows bytes and rate without percentage or ETA. The scan's
    counters are polled (the scan runs without the GIL)."""

    def __init__(self, counter, stream: TextIO | None, source: str | os.PathLike | None = None,
                 interval: float = 0.2):
        self.counter = counter
        self.stream = stream
        self.source = source
        self.interval = interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bar = None
        self._total: int | None = None
        self._started = time.monotonic()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def _info(self, _item) -> str:
        s = self._last
        rate = s.bytes_done / max(time.monotonic() - self._started, 1e-3)
        total = f"/{_human(self._total)}" if self._total is not None else ""
        return f"{_human(s.bytes_done)}{total} {_human(rate)}/s"

    def _draw(self, final: bool = False) -> None:
        s = self._last = self.counter.snapshot()
        bar = self._bar
        if self._total is not None and bar.length is None:
            bar.length = max(self._total, 1)
        if bar.length is not None and s.bytes_done > bar.length:
            bar.length = s.bytes_done  # files grew while being read
        if final:
            bar.length = max(s.bytes_done, 1)
            self._total = s.bytes_done
        bar.make_step(max(0, (bar.length if final else s.bytes_done) - bar.pos))
        # The line fits the terminal the bar is drawn on (click would size it by standard output).
        bar.width = 0
        bar.width = max(0, min(40, self._columns() - len(bar.format_progress_line()) - 3))
        bar.render_progress()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _count(self) -> None:
        self._total = count_bytes(self.source, self._stop)

    def __enter__(self):
        import click

        if self.counter is None or self.stream is None or not self.stream.isatty():
            return self
        self._last = self.counter.snapshot()
        # An endless iterable: the length is unknown until the count is done (never iterated).
        self._bar = click.progressbar(itertools.count(), length=None, label="reading",
                                      file=self.stream, show_eta=True, item_show_func=self._info,
                                      width=1).__enter__()
        if self.source is not None:
            self._threads.append(threading.Thread(target=self._count, daemon=True))
        self._threads.append(threading.Thread(target=self._poll, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._stop.set()
            for t in self._threads:
                t.join()
            if exc[0] is None:
                self._draw(final=True)
            self._bar.__exit__(*exc)
        return False


def build_image(
    source: str | os.PathLike,
    image: str | os.PathLike | None,
    options: ScanOptions = ScanOptions(),
    *,
    store: str | os.PathLike | None = None,
    min_version: int = 0,
    max_version: int = 1,
    progress: bool | TextIO = False,
    return_image: bool = False,
) -> _native.BuildResult:
    """Scan ``source``, fill ``store`` (if given, then ``syncfs`` it) and write the composefs
    image to ``image`` atomically (``None``: compute only). Returns what was built, with the
    scan's counts (``scan``) and the store's (``store``, None without one)."""
    options.check()
    if not os.path.isdir(source):
        if not os.path.lexists(source):
            raise CfsError("No such file or directory", source)
        raise CfsError("not a directory", source)
    stream = sys.stderr if progress is True else (progress or None)
    counter = _native.ScanProgress() if stream is not None else None
    kwargs = options.native_kwargs()
    if store is not None:
        kwargs["store"] = os.fspath(store)
    try:
        with ProgressLine(counter, stream, source):
            return _native.build_from_directory(
                os.fspath(source), None if image is None else os.fspath(image), min_version=min_version,
                max_version=max_version, progress=counter, return_image=return_image, **kwargs)
    except _native.FormatError as e:
        raise CfsError(str(e), source) from None
    except ValueError as e:
        raise CfsError(str(e)) from None
