# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl fetchd`` on the host: its side of the module's fetch protocol (kernel/fetch.h), with a
SOCK_SEQPACKET socket pair carrying the records the module would (the module itself is tested in
the guest, tests/guest/test_lazy.py), against a file:// repository. And ``mount --remote`` on a
path that cannot fetch is a one-line error."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cfsrun import cfsctl
from composefs import fetchd
from webrepo import make_tree


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "src"
    make_tree(src, files=6, big=1 << 16)
    remote = tmp_path / "repo"
    assert cfsctl("init", "--repo", remote).returncode == 0
    r = cfsctl("import", src, "--name", "app", "--repo", remote, "--json")
    assert r.returncode == 0, r.stderr
    return remote, remote / "images" / json.loads(r.stdout)["digest"]


def request(req_id: int, hexd: str, version: int = fetchd.VERSION) -> bytes:
    return fetchd.REQUEST.pack(version, fetchd.REQUEST.size, req_id, fetchd.ALG_SHA256, bytes(7),
                               bytes.fromhex(hexd))


def test_fetchd_answers_requests_and_exits_at_end_of_file(repo, tmp_path):
    remote, image = repo
    objects = sorted(p.parent.name + p.name for p in (remote / "objects").glob("??/*"))
    tampered = objects[0]
    www = tmp_path / "www"
    subprocess.run(["cp", "-a", str(remote), str(www)], check=True)
    victim = www / "objects" / tampered[:2] / tampered[2:]
    victim.chmod(0o644)
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    local = tmp_path / "local"
    local.mkdir()
    kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    t = threading.Thread(target=fetchd.serve, args=(daemon.fileno(), f"file://{www}", str(local), str(image)),
                         kwargs={"jobs": 3})
    t.start()
    try:
        want = {1: 0, 2: 0, 3: errno.EIO, 4: errno.ENOENT, 5: errno.EIO}
        kernel.send(request(1, objects[1]))
        kernel.send(request(2, objects[2]))
        kernel.send(request(3, tampered))
        kernel.send(request(4, "ab" * 32))  # not an object of the image: the server is not asked
        kernel.send(request(5, objects[1], version=2))
        got = {}
        for _ in want:
            rec = kernel.recv(64)
            version, size, req_id, error, reserved = fetchd.REPLY.unpack(rec)
            assert (version, size, reserved) == (fetchd.VERSION, fetchd.REPLY.size, 0)
            got[req_id] = error
        assert got == want
        stored = {p.parent.name + p.name for p in local.glob("??/*")}
        assert stored == {objects[1], objects[2]}  # the tampered copy was never stored
        for o in stored:
            assert (local / o[:2] / o[2:]).read_bytes() == (remote / "objects" / o[:2] / o[2:]).read_bytes()
    finally:
        kernel.shutdown(socket.SHUT_WR)  # end of file: the mount went
        t.join(timeout=30)
        kernel.close()
    assert not t.is_alive()
    daemon.close()


def test_mount_remote_needs_the_module(repo, tmp_path):
    _remote, image = repo
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([sys.executable, "-m", "composefs.cli", "mount", str(image), str(mnt), "--basedir",
                        str(tmp_path), "--backend", "overlay", "--remote", "http://127.0.0.1:9/repo"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.startswith("cfsctl: error: ") and "kernel module" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(mnt)
