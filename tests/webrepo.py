# SPDX-License-Identifier: MIT OR Apache-2.0
"""Test infrastructure for remote repositories (`cfsctl pull`): a real nginx serving a repository
directory as plain files, and the trees and repositories the tests serve.

- ``Nginx`` runs Debian's nginx-light in the foreground with a temporary config: every path it
  writes (pid, logs, temporaries) lives under its own directory, so it runs from a read-only root
  (the QEMU guest's) as well. It listens on 127.0.0.1 or, with ``prefix`` (NetPair.server_cmd),
  on an address inside a network namespace the test made; no other address.
- ``make_tree`` writes a seeded tree (many small files, one big one); ``served_repo`` imports it
  into a repository under a web root.
Every process started here is stopped by the object that started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ocireg import free_port, wait_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
needs_nginx = pytest.mark.skipif(not os.access(NGINX, os.X_OK),
                                 reason="nginx is not installed (APT_PACKAGES has nginx-light)")
CFSCTL = [sys.executable, "-m", "composefs.cli"]


class Nginx:
    """nginx serving ROOT on HOST:PORT; ``limit_rate`` slows every response down; ``prefix`` runs
    it through a command that enters a network namespace; ``locations`` adds nginx ``location``
    blocks to the server (redirects, a proxy)."""

    def __init__(self, tmp: Path, root: Path, limit_rate: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, prefix: list[str] | None = None, locations: str = ""):
        self.dir = tmp / "nginx"
        self.dir.mkdir(exist_ok=True)
        self.host, self.prefix = host, prefix or []
        self.port = port or (free_port() if host == "127.0.0.1" else 8080)
        self.conf = self.dir / "nginx.conf"
        rate = f"limit_rate {limit_rate};" if limit_rate else ""
        # The test's files are root's alone (tmp_path is 0700): the worker serves as their owner.
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    keepalive_requests 100000;
    server {{
        listen {self.host}:{self.port};
        root {root};
        autoindex off;
        {rate}
        {locations}
    }}
}}
""")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> "Nginx":
        assert self.proc is None
        # -e: the error log from the first line on (the compiled-in one may sit on a read-only root)
        self.proc = subprocess.Popen([*self.prefix, NGINX, "-c", str(self.conf), "-p", str(self.dir),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            wait_port(self.host, self.port, 120, self.prefix, self.proc)  # slow to start under TCG
        except (RuntimeError, TimeoutError) as e:
            self.kill()
            raise RuntimeError(f"nginx did not start ({e}): {self.error_log()[-2000:]}") from None
        return self

    def error_log(self) -> str:
        p = self.dir / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self, part: str) -> int:
        log = self.dir / "access.log"
        return sum(1 for line in log.read_text().splitlines() if part in line) if log.exists() else 0

    def kill(self) -> None:
        """SIGKILL of the master; its worker exits once it sees the master gone, its connections
        are reset."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self, graceful: bool = True) -> None:
        """SIGQUIT lets responses in flight finish; SIGTERM (``graceful=False``) drops them at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if graceful else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def make_tree(root: Path, files: int = 60, big: int = 3 << 20, seed: int = 7) -> None:
    rng = __import__("random").Random(seed)
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / ("sub" if i % 2 else "") / f"f{i}").write_bytes(rng.randbytes(200 + 97 * i))
    (root / "big").write_bytes(rng.randbytes(big))  # over 1 MiB: streamed through a store temporary
    (root / "tiny").write_bytes(b"inline")
    os.symlink("big", root / "link")


def served_repo(tmp: Path, **tree) -> tuple[Path, str]:
    """A repository at TMP/www/repo holding image 'app' made from ``make_tree(**tree)``; returns
    it and the image digest (the web root is its parent). Made in this process: the pull is what
    is tested, and a cfsctl process costs seconds in the QEMU guest."""
    from composefs.repository import Repository

    src = tmp / "src"
    make_tree(src, **tree)
    remote = tmp / "www" / "repo"
    repo = Repository.init(remote)
    with repo.locked():
        return remote, repo.import_directory(str(src), "app")["digest"]


def pull(url, name, local, *extra, timeout=120, prefix: list[str] | None = None):
    return subprocess.run([*(prefix or []), *CFSCTL, "pull", url, name, "--repo", str(local), "--json",
                           *map(str, extra)], capture_output=True, timeout=timeout)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pull(url, name, local, *extra, prefix: list[str] | None = None) -> subprocess.Popen:
    """A pull in the background (its own process group), for tests that interrupt it. SIGINT is
    reset to its default in the child: a test run started in the background (`cmd &` in a script,
    as CI runners do) inherits SIGINT ignored, and a program that starts with SIGINT ignored —
    Python included — rightly keeps ignoring it, so Ctrl-C would never reach the pull."""
    return subprocess.Popen([*(prefix or []), *CFSCTL, "pull", url, name, "--repo", str(local), "--json",
                             *map(str, extra)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_sigint_default)


def local_objects(local: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (local / "objects").glob("??/*")}


remote_objects = local_objects
