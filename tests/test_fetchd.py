# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl fetchd`` on the host: its side of the module's fetch protocol (kernel/fetch.h), with a
SOCK_SEQPACKET socket pair carrying the records the module would (the module itself is tested in
the guest, tests/guest/test_lazy.py), against a file:// repository or a counting HTTP server;
its read-ahead planner as a pure function. And ``mount --remote`` on a path that cannot fetch is
a one-line error."""

from __future__ import annotations

import collections
import errno
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cfsrun import cfsctl
from composefs import _native, fetchd
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
                         kwargs={"jobs": 3, "readahead": 0})  # only what is asked for: read-ahead is below
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


# --- read-ahead ----------------------------------------------------------------------------------

ORDER = [(f"{i:02x}" * 32, 100 * (i + 1)) for i in range(10)]  # o0 .. o9, 100 .. 1000 bytes


def o(*idx: int) -> list[str]:
    return [ORDER[i][0] for i in idx]


@pytest.mark.parametrize("at, window, max_bytes, busy, skip, want", [
    # the next `window` objects after the miss, nearest first
    (0, 3, 1 << 20, (), (), (1, 2, 3)),
    (7, 5, 1 << 20, (), (), (8, 9)),       # the walk ends
    (9, 5, 1 << 20, (), (), ()),
    (0, 0, 1 << 20, (), (), ()),           # 0: no read-ahead
    # objects in the store are skipped and not counted; queued or in-flight ones count, not queued again
    (0, 3, 1 << 20, (), (1, 2), (3, 4, 5)),
    (0, 3, 1 << 20, (2,), (), (1, 3)),
    (0, 3, 1 << 20, (1, 2, 3), (), ()),
    (0, 3, 1 << 20, (), (0,), (1, 2, 3)),  # the missed object itself is not read ahead
    # the byte bound: o1..o3 weigh 200+300+400; o4 would pass 1000
    (0, 9, 1000, (), (), (1, 2, 3)),
    (0, 9, 899, (), (), (1, 2)),
    (0, 9, 100, (), (), ()),               # the next object alone is over: nothing
    (0, 9, 1000, (1,), (), (2, 3)),        # busy bytes count: 200 + 300 + 400
    (0, 9, 1000, (), (1,), (2, 3)),        # skipped bytes do not: 300 + 400 (+ 500 > 1000)
])
def test_plan_readahead(at, window, max_bytes, busy, skip, want):
    got = fetchd.plan_readahead(ORDER, at, window, max_bytes, lambda h: h in o(*busy), lambda h: h in o(*skip))
    assert got == o(*want)


def test_plan_readahead_looks_a_bounded_distance(monkeypatch):
    monkeypatch.setattr(fetchd, "READAHEAD_SCAN", 2)
    looked = []

    def skip(h):
        looked.append(h)
        return True  # everything in the store: nothing to read ahead

    assert fetchd.plan_readahead(ORDER, 0, 3, 1 << 20, lambda h: False, skip) == []
    assert looked == o(1, 2, 3, 4, 5, 6)


def walk_order(image) -> list[tuple[str, int]]:
    """(digest, size) of each object at its first path, in dump order: the order of a walk."""
    seen, out = set(), []
    for e in _native.image_entries(str(image)):
        if e.object is not None and e.hardlink_to is None:
            d = e.digest or e.object.replace("/", "")
            if d not in seen:
                seen.add(d)
                out.append((d, e.size))
    return out


def test_image_objects_walk_is_the_order_of_a_walk(tmp_path):
    src = tmp_path / "src"
    for rel, data in [("b/z", b"z" * 5000), ("b/a", b"a" * 5000), ("a/c/d", b"d" * 5000), ("c", b"c" * 5000),
                      ("a/y", b"z" * 5000), ("a/b", b"b" * 5000), ("small", b"inline")]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    os.link(src / "c", src / "a/hard")
    remote = tmp_path / "repo"
    assert cfsctl("init", "--repo", remote).returncode == 0
    r = cfsctl("import", src, "--name", "app", "--repo", remote, "--json")
    assert r.returncode == 0, r.stderr
    image = remote / "images" / json.loads(r.stdout)["digest"]
    got = [(o.digest, o.size) for o in _native.image_objects_walk(str(image))]
    digest = {name: composefs_digest(src / name) for name in ("a/b", "a/c/d", "a/y", "b/a", "c")}
    # find's order: a/b, a/c/d, a/hard (= c), a/y (= b/z), b/a, b/z (seen), c (seen); small is inline
    assert [d for d, _size in got] == [digest["a/b"], digest["a/c/d"], digest["c"], digest["a/y"], digest["b/a"]]
    assert all(size == 5000 for _d, size in got)
    assert got == walk_order(image)
    assert sorted(got) == sorted((o.digest, o.size) for o in _native.image_objects_sized(str(image)))


def composefs_digest(path: Path) -> str:
    import composefs

    return composefs.digest_file(path).hex()


class CountingServer:
    """A web root over HTTP in a thread of this process: each GET counted by path, each object
    served after ``delay`` seconds."""

    def __init__(self, root: Path, delay: float = 0.0):
        self.gets: collections.Counter[str] = collections.Counter()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.gets[self.path] += 1
                if "/objects/" in self.path:
                    time.sleep(delay)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def object_gets(self, hexd: str | None = None) -> int:
        if hexd is None:
            return sum(n for p, n in self.gets.items() if "/objects/" in p)
        return self.gets[f"/repo/objects/{hexd[:2]}/{hexd[2:]}"]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Daemon:
    """``fetchd.serve`` in a thread, the test holding the module's end of the channel."""

    def __init__(self, url: str, local: Path, image: Path, **kw):
        self.kernel, self.daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.thread = threading.Thread(target=fetchd.serve, args=(self.daemon.fileno(), url, str(local), str(image)),
                                       kwargs=kw)
        self.thread.start()
        self.next_id = 0

    def ask(self, hexd: str) -> int:
        self.next_id += 1
        self.kernel.send(request(self.next_id, hexd))
        return self.next_id

    def answer(self) -> tuple[int, int]:
        _version, _size, req_id, error, _reserved = fetchd.REPLY.unpack(self.kernel.recv(64))
        return req_id, error

    def fetch(self, hexd: str) -> int:
        """Ask for one object and wait for its answer, as one reader does."""
        want = self.ask(hexd)
        req_id, error = self.answer()
        assert req_id == want
        return error

    def close(self):
        self.kernel.shutdown(socket.SHUT_WR)
        self.thread.join(timeout=30)
        self.kernel.close()
        assert not self.thread.is_alive()
        self.daemon.close()


def stored(local: Path) -> set[str]:
    return {p.parent.name + p.name for p in local.glob("??/*")}


def wait_for(cond, timeout=20.0) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def served(tmp_path):
    """A repository of 40 objects under tmp/www/repo, its image, and an empty local store."""
    src = tmp_path / "src"
    make_tree(src, files=39, big=1 << 16)
    remote = tmp_path / "www" / "repo"
    assert cfsctl("init", "--repo", remote).returncode == 0
    r = cfsctl("import", src, "--name", "app", "--repo", remote, "--json")
    assert r.returncode == 0, r.stderr
    image = remote / "images" / json.loads(r.stdout)["digest"]
    local = tmp_path / "local"
    local.mkdir()
    return remote, image, local


def test_readahead_one_reader_fetches_each_object_once(served):
    """One reader in walk order: after its first miss the objects ahead come without being asked;
    every later request is answered from a fetch under way or the store; one GET per object."""
    remote, image, local = served
    order = [o.digest for o in _native.image_objects_walk(str(image))]
    assert len(order) == 40
    srv = CountingServer(remote.parent, delay=0.02)
    d = Daemon(f"{srv.url}/repo", local, image, readahead=16)
    try:
        assert d.fetch(order[0]) == 0
        # the next 16 come by themselves, and no more
        assert wait_for(lambda: stored(local) >= set(order[:17]))
        time.sleep(0.3)
        assert stored(local) == set(order[:17])
        for h in order[1:]:
            assert d.fetch(h) == 0
        assert stored(local) == set(order)
        assert all(srv.object_gets(h) == 1 for h in order), srv.gets
    finally:
        d.close()
        srv.close()


def test_readahead_failure_is_not_an_answer(served, tmp_path):
    """A wrong copy met by read-ahead is not stored and not remembered: the request for it fetches
    it again itself and answers EIO, each time; read-ahead does not try it again."""
    remote, image, local = served
    order = [o.digest for o in _native.image_objects_walk(str(image))]
    bad = order[3]
    victim = remote / "objects" / bad[:2] / bad[2:]
    victim.chmod(0o644)
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    srv = CountingServer(remote.parent)
    d = Daemon(f"{srv.url}/repo", local, image, readahead=8)
    try:
        assert d.fetch(order[0]) == 0
        assert wait_for(lambda: stored(local) >= set(order[:9]) - {bad})
        assert wait_for(lambda: srv.object_gets(bad) == 1)
        assert d.fetch(bad) == errno.EIO
        assert srv.object_gets(bad) == 2
        assert d.fetch(order[2]) == 0  # a plan again: the wrong one is not read ahead again
        assert d.fetch(bad) == errno.EIO
        assert wait_for(lambda: stored(local) >= set(order[:11]) - {bad})
        assert srv.object_gets(bad) == 3
        assert bad not in stored(local)
    finally:
        d.close()
        srv.close()


def test_readahead_never_delays_a_request(served):
    """Read-ahead busy with a slow server (0.6 s an object; 39 queued, 16 at a time: three rounds):
    a request for an object only queued is taken off the queue and fetched at once, one outside
    the window likewise; each object still fetched once."""
    remote, image, local = served
    order = [o.digest for o in _native.image_objects_walk(str(image))]
    srv = CountingServer(remote.parent, delay=0.6)
    d = Daemon(f"{srv.url}/repo", local, image, readahead=64)
    try:
        assert d.fetch(order[0]) == 0
        # now the second round is in flight and order[35] is queued for the third
        t = time.monotonic()
        assert d.fetch(order[35]) == 0
        queued = time.monotonic() - t
        assert queued < 0.6 + 0.35, queued  # not after the second round (1.2 s)
        assert wait_for(lambda: stored(local) == set(order))
        assert all(srv.object_gets(h) == 1 for h in order), srv.gets
    finally:
        d.close()
        srv.close()

    # a request outside the window, right after the miss that queued 30: its own fetch's time
    local2 = local.parent / "local2"
    local2.mkdir()
    srv = CountingServer(remote.parent, delay=0.6)
    d = Daemon(f"{srv.url}/repo", local2, image, readahead=30)
    try:
        t = time.monotonic()
        first = d.ask(order[0])
        far = d.ask(order[39])
        answers = {}
        for _ in range(2):
            req_id, error = d.answer()
            answers[req_id] = (error, time.monotonic() - t)
        assert answers[first][0] == answers[far][0] == 0
        assert answers[far][1] < 0.6 + 0.35, answers
        assert wait_for(lambda: stored(local2) == set(order[:31]) | {order[39]})
        assert all(srv.object_gets(h) == 1 for h in order[:31] + [order[39]]), srv.gets
    finally:
        d.close()
        srv.close()


def test_readahead_over_the_python_transport(served):
    """file:// (as https://) goes through remote.fetch_object: read-ahead works the same."""
    remote, image, local = served
    order = [o.digest for o in _native.image_objects_walk(str(image))]
    d = Daemon(f"file://{remote}", local, image, readahead=8)
    try:
        assert d.fetch(order[5]) == 0
        assert wait_for(lambda: stored(local) == set(order[5:14]))
        for o in stored(local):
            assert (local / o[:2] / o[2:]).read_bytes() == (remote / "objects" / o[:2] / o[2:]).read_bytes()
    finally:
        d.close()
