# SPDX-License-Identifier: MIT OR Apache-2.0
"""The progress bar of directory builds and imports, seen through a real terminal (a pty): one
click bar over the whole job with bytes, percentage, rate and ETA, each frame within the
terminal's width, never going backwards, ending at 100%; nothing at all when not a terminal."""

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios

import pytest

ESC = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_pty(args, columns: int) -> tuple[int, bytes, bytes]:
    """Run cfsctl with its stderr on a pty of ``columns`` columns (stdout a pipe, as when the
    output is redirected); return the exit status, stdout and everything drawn on the terminal."""
    import pty

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    out = p.stdout.read()
    return p.wait(), out, drawn


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress") / "src"
    root.mkdir()
    block = os.urandom(1 << 20)
    for i in range(48):  # 48 MiB: long enough to be drawn several times on a busy machine too
        (root / f"f{i:02}").write_bytes(block[i:] + block[:i])
    os.link(root / "f00", root / "hard")  # read in the second phase of the scan
    (root / "small").write_bytes(b"x" * 10)
    return root


@pytest.mark.parametrize("columns", [60, 120])
def test_one_bar_within_the_terminal_width(tree, tmp_path, columns):
    code, out, drawn = run_on_pty(["build", tree, tmp_path / "img.cfs", "--print-digest"], columns)
    assert code == 0, drawn
    assert re.fullmatch(rb"[0-9a-f]{64}\n", out)
    text = ESC.sub(b"", drawn)
    assert text.endswith(b"\r\n") and text.count(b"\n") == 1, text  # one line, ended once
    frames = [f for f in text.rstrip(b"\r\n").split(b"\r") if f]
    assert frames
    for f in frames:
        assert len(f) <= columns, (len(f), f)
        assert f.startswith(b"reading"), f
    pcts = [int(m) for f in frames for m in re.findall(rb" (\d+)%", f)]
    assert pcts == sorted(pcts), pcts  # never starts over
    assert pcts[-1] == 100
    last = frames[-1].decode()
    assert "48.0 MiB/48.0 MiB" in last and "/s" in last, last


def test_import_draws_the_same_bar(tree, tmp_path):
    from cfsrun import cfsctl

    assert cfsctl("init", "--repo", tmp_path / "repo").returncode == 0
    code, _, drawn = run_on_pty(["import", tree, "--name", "t", "--repo", tmp_path / "repo"], 100)
    assert code == 0, drawn
    frames = [f for f in ESC.sub(b"", drawn).split(b"\r") if f.startswith(b"reading")]
    assert frames and b"100%" in frames[-1]


def test_silent_when_not_a_terminal(tree, tmp_path):
    r = subprocess.run([sys.executable, "-m", "composefs.cli", "build", tree, tmp_path / "img.cfs"],
                       capture_output=True)
    assert r.returncode == 0 and r.stderr == b"" and r.stdout == b""


class SlowScan:
    """Counters of a scan that reads ``total`` bytes evenly over ``seconds``: the bar's own input, stepped by the
    clock (the real scan is too fast here to show an ETA, which click computes after a second)."""

    def __init__(self, total: int, seconds: float):
        import time

        self.total, self.seconds, self.start = total, seconds, time.monotonic()

    def snapshot(self):
        """The fields of a ``_native.ScanSnapshot``."""
        import time
        from types import SimpleNamespace

        done = min(self.total, int(self.total * (time.monotonic() - self.start) / self.seconds))
        return SimpleNamespace(phase="walk", entries=1, files_done=0, files_total=0, bytes_done=done,
                               bytes_total=done)


def test_eta_once_the_total_is_known(tmp_path):
    """With the source's total counted, the bar shows a percentage and an ETA (hh:mm:ss)."""
    import pty
    import time

    from composefs.build import ProgressLine

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"\0" * 5_000_000)  # sparse-free content: count_bytes sees st_size
    (src / "b").write_bytes(b"\0" * 5_000_000)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with open(slave, "w", closefd=True) as stream:
        with ProgressLine(SlowScan(10_000_000, 6.0), stream, src, interval=0.1):
            time.sleep(6.2)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    frames = [f for f in ESC.sub(b"", drawn).split(b"\r") if f.startswith(b"reading")]
    assert any(re.search(rb"%\s+00:00:0\d", f) for f in frames), frames
    assert b"100%" in frames[-1] and b"9.5 MiB/9.5 MiB" in frames[-1]
    assert all(len(f.rstrip(b"\n")) <= 100 for f in frames)
