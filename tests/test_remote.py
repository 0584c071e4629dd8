"""cfsctl pull: a repository served as plain files by a real nginx (Debian's nginx-light, started
here on 127.0.0.1 with a temporary config) or through file://. Every object is checked against
its name before it is stored; a tampered object or image is refused; a pull killed midway
fetches only what is still missing on the next run; a stopped server is a one-line error."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfsrun import cfsctl

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx is not installed (APT_PACKAGES has nginx-light)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving ROOT on 127.0.0.1:PORT; ``limit_rate`` slows every response down. With
    ``prefix`` (e.g. ``NetPair.server_cmd``) it runs in a network namespace a test made, on
    ``host`` there (port 8080: nothing else lives in such a namespace)."""

    def __init__(self, tmp: Path, root: Path, limit_rate: str | None = None, host: str = "127.0.0.1",
                 prefix: list[str] | None = None):
        self.dir = tmp / "nginx"
        self.dir.mkdir(exist_ok=True)
        self.host = host
        self.port = 8080 if prefix else free_port()
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
        listen {host}:{self.port};
        root {root};
        autoindex off;
        {rate}
    }}
}}
""")
        self.proc = subprocess.Popen([*(prefix or []), NGINX, "-c", str(self.conf), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if prefix:  # unreachable from here; nginx writes its pid file once it listens
                if (self.dir / "nginx.pid").exists():
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
                continue
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self, part: str) -> int:
        log = self.dir / "access.log"
        return sum(1 for line in log.read_text().splitlines() if part in line) if log.exists() else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_tree(root: Path, files: int = 60, big: int = 3 << 20) -> None:
    rng = __import__("random").Random(7)
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / ("sub" if i % 2 else "") / f"f{i}").write_bytes(rng.randbytes(200 + 97 * i))
    (root / "big").write_bytes(rng.randbytes(big))  # over 1 MiB: streamed through a store temporary
    (root / "tiny").write_bytes(b"inline")
    os.symlink("big", root / "link")


@pytest.fixture
def served(tmp_path):
    """A repository holding image 'app', its directory (the web root), and a fresh local repo."""
    src = tmp_path / "src"
    make_tree(src)
    remote = tmp_path / "www" / "repo"
    assert cfsctl("init", "--repo", remote).returncode == 0
    r = cfsctl("import", src, "--name", "app", "--repo", remote, "--json")
    assert r.returncode == 0, r.stderr
    local = tmp_path / "local"
    assert cfsctl("init", "--repo", local).returncode == 0
    return remote, local, json.loads(r.stdout)["digest"]


CFSCTL = [sys.executable, "-m", "composefs.cli"]


def pull(url, name, local, *extra, timeout=120):
    return subprocess.run([*CFSCTL, "pull", url, name, "--repo", str(local), "--json", *map(str, extra)],
                          capture_output=True, timeout=timeout)


def local_objects(local: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (local / "objects").glob("??/*")}


def remote_objects(remote: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in (remote / "objects").glob("??/*")}


def test_pull_over_http_and_file(served, tmp_path):
    remote, local, digest = served
    srv = Nginx(tmp_path, remote.parent)
    try:
        r = pull(f"{srv.url}/repo", "app", local)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["digest"] == digest and out["objects_fetched"] == out["objects"] == len(remote_objects(remote))
        assert local_objects(local) == remote_objects(remote)
        assert cfsctl("fsck", "--repo", local).returncode == 0
        imgs = json.loads(cfsctl("images", "--repo", local, "--json").stdout)
        assert [(i["name"], i["digest"]) for i in imgs] == [("app", digest)]
        # Nothing is listed: only refs/NAME, images/DIGEST and objects are asked for.
        assert srv.requests("GET /repo/refs/app ") == 1 and srv.requests(f"GET /repo/images/{digest} ") == 1
        assert srv.requests("GET /repo/objects/") == out["objects"]
        # A second pull under another name fetches nothing.
        r = pull(f"{srv.url}/repo", "app", local, "--as", "again")
        assert r.returncode == 0 and json.loads(r.stdout)["objects_fetched"] == 0
    finally:
        srv.stop()
    other = tmp_path / "other"
    assert cfsctl("init", "--repo", other).returncode == 0
    r = pull(f"file://{remote}", "app", other, "--objects-only")
    assert r.returncode == 0, r.stderr
    assert local_objects(other) == remote_objects(remote)
    assert json.loads(cfsctl("images", "--repo", other, "--json").stdout) == []  # not named


@pytest.mark.parametrize("victim", ["small", "big"])
def test_tampered_object_is_refused(served, tmp_path, victim):
    remote, local, _ = served
    objs = sorted((remote / "objects").glob("??/*"), key=lambda p: p.stat().st_size)
    bad = objs[0] if victim == "small" else objs[-1]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x40
    bad.chmod(0o644)
    bad.write_bytes(bytes(data))
    srv = Nginx(tmp_path, remote.parent)
    try:
        r = pull(f"{srv.url}/repo", "app", local)
    finally:
        srv.stop()
    assert r.returncode == 1 and b"Traceback" not in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    assert b"did not match their digest" in r.stderr
    name = f"{bad.parent.name}/{bad.name}"
    assert name not in local_objects(local)  # never stored, not even under another name
    assert local_objects(local) == remote_objects(remote) - {name}
    assert json.loads(cfsctl("images", "--repo", local, "--json").stdout) == []
    assert cfsctl("fsck", "--repo", local).returncode == 0


def test_tampered_image_and_ref_are_refused(served, tmp_path):
    remote, local, digest = served
    img = remote / "images" / digest
    img.chmod(0o644)
    data = bytearray(img.read_bytes())
    data[2000] ^= 1
    img.write_bytes(bytes(data))
    r = pull(f"file://{remote}", "app", local)
    assert r.returncode == 1 and b"digest mismatch" in r.stderr and b"Traceback" not in r.stderr, r.stderr
    (remote / "refs" / "evil").write_text("../../../etc/passwd\n")
    r = pull(f"file://{remote}", "evil", local)
    assert r.returncode == 1 and b"not an image digest" in r.stderr, r.stderr
    r = pull(f"file://{remote}", "missing", local)
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert not local_objects(local)


def test_killed_pull_resumes_with_what_is_missing(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=300, big=4 << 20)
    remote = tmp_path / "www" / "repo"
    cfsctl("init", "--repo", remote)
    assert cfsctl("import", src, "--name", "app", "--repo", remote).returncode == 0
    local = tmp_path / "local"
    cfsctl("init", "--repo", local)
    total = len(remote_objects(remote))
    srv = Nginx(tmp_path, remote.parent, limit_rate="400k")
    try:
        p = subprocess.Popen([*CFSCTL, "pull", f"{srv.url}/repo", "app", "--repo", str(local), "--jobs", "4"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(local_objects(local)) < total // 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        p.kill()
        p.wait()
        have = len(local_objects(local))
        assert 0 < have < total
        r = pull(f"{srv.url}/repo", "app", local, timeout=300)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["objects_fetched"] == total - have
    finally:
        srv.stop()
    assert local_objects(local) == remote_objects(remote)
    assert cfsctl("fsck", "--repo", local).returncode == 0


def test_server_gone_is_an_error(served, tmp_path):
    remote, local, _ = served
    srv = Nginx(tmp_path, remote.parent)
    url = f"{srv.url}/repo"
    srv.stop()
    t = time.monotonic()
    r = pull(url, "app", local)
    assert r.returncode == 1 and b"Connection refused" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    assert time.monotonic() - t < 30
