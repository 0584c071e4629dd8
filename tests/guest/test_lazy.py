# SPDX-License-Identifier: MIT OR Apache-2.0
"""Objects fetched on first open through the composefs module (`cfsctl mount --remote URL`).

A real nginx in the guest serves a repository; the module mounts its image with an empty local
object directory on the fs-verity disk and asks `cfsctl fetchd` (over /dev/composefs-fetch) for
each object on first open. Checked: a walk and full read equal the source, fetched objects have
fs-verity with their name as digest, a tampered object is EIO for that file only, a stopped
server is EIO within the timeout and unmounts cleanly, a killed fetcher (or reader) returns at
once, and eight readers of one missing object cause one request to the server; with read-ahead
(the default) and without, each object is asked for once (a refused one at most once more), and
one reader walking the tree in `find` order gets it right, most objects read ahead.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cfsimage as ci
import composefs
import guestutil
from ocireg import NetPair
from webrepo import Nginx, make_tree

pytestmark = pytest.mark.skipif(os.environ.get("CFS_GUEST") == "1" and not ci.module_loaded(),
                                reason="the composefs module is not loaded in this guest")

CFSCTL = [sys.executable, "-m", "composefs.cli"]


def cfsctl(*args, timeout=300):
    """``cfsctl ARGS``, or ``PREFIX... cfsctl ARGS`` when ARGS begins with a command prefix (nsenter)."""
    args = [str(a) for a in args]
    pre = args[:args.index("--") + 1] if args and args[0] == "nsenter" else []
    return subprocess.run([*pre, *CFSCTL, *args[len(pre):]], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A repository (on tmpfs, the web root's repo/) holding image 'app' of a generated tree."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tmp = tmp_path_factory.mktemp("lazy")
    src = tmp / "src"
    make_tree(src, files=24, big=2 << 20)
    remote = tmp / "www" / "repo"
    # through the API: an interpreter start costs seconds under TCG
    digest = composefs.Repository.create(str(remote)).import_directory(str(src), "app").digest
    return src, remote, remote / "images" / digest


def objects_of(d: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in d.glob("??/*")}


def rel_of(src_file: Path) -> str:
    """The object name (XX/<62 hex>) of a source file."""
    h = composefs.digest_file(src_file).hex()
    return f"{h[:2]}/{h[2:]}"


class LazyMount:
    def __init__(self, image: Path, mnt: Path, objects: Path, url: str, timeout: int = 60, prefix=(),
                 readahead: int | None = None):
        mnt.mkdir()
        objects.mkdir()
        self.mnt = mnt
        self.log = mnt.parent / "fetchd.log"
        os.environ["CFS_FETCHD_LOG"] = str(self.log)
        try:
            r = cfsctl(*prefix, "mount", image, mnt, "--basedir", objects, "--backend", "kernel", "--verity-check", "1",
                       "--remote", url, "--fetch-timeout", timeout, "--json",
                       *(("--readahead", readahead) if readahead is not None else ()))
        finally:
            del os.environ["CFS_FETCHD_LOG"]
        assert r.returncode == 0, r.stderr
        self.info = json.loads(r.stdout)
        self.pid = self.info["fetchd_pid"]

    def fetchd_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie (not reaped yet) counts as gone
            return Path(f"/proc/{self.pid}/stat").read_text().split(")")[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def umount(self) -> None:
        if self.log.exists():
            print("cfsctl fetchd said:", self.log.read_text(), sep="\n")  # shown when the test fails
        composefs.unmount(str(self.mnt))
        deadline = time.monotonic() + 20
        while self.fetchd_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.fetchd_alive(), "cfsctl fetchd did not exit when the mount went"


def read_errno(path: Path) -> int:
    try:
        path.read_bytes()
    except OSError as e:
        return e.errno
    return 0


@pytest.mark.parametrize("readahead", [0, None], ids=["no-readahead", "readahead"])
def test_lazy_mount_reads_the_source_fetching_each_object_once(served, tmp_path, verity_tmp, readahead):
    """One server (1 MiB/s, so readers meet while an object comes) with one tampered object, in a
    network namespace behind a veth with netem's 5 ms each way; the fetcher in another. Without
    read-ahead every object is asked for once; with it, the tampered one may be asked for twice
    (read ahead and refused, then by its reader, refused again), every other one once."""
    src, remote, image = served
    www = tmp_path / "www"
    www.mkdir()
    subprocess.run(["cp", "-a", str(remote), str(www)], check=True)
    tampered = rel_of(src / "f2")
    victim = www / "repo" / "objects" / tampered
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    net = NetPair()
    try:
        net.shape(delay=5000)
        srv = Nginx(tmp_path, www, limit_rate="1m", host=net.SERVER, prefix=net.server_cmd)
    except BaseException:
        net.close()
        raise
    objects = verity_tmp / "objects"
    try:
        m = LazyMount(image, tmp_path / "mnt", objects, f"{srv.url}/repo", prefix=net.client_cmd,
                      readahead=readahead)
    except BaseException:
        srv.stop()
        net.close()
        raise
    try:
        assert objects_of(objects) == set()
        assert ",fetch_timeout=60" in Path("/proc/self/mountinfo").read_text()
        # eight readers of one missing object (2 MiB: it takes the server 2 s): one request
        want = (src / "big").read_bytes()
        results: list[bytes | Exception] = []
        start = threading.Barrier(8)

        def reader():
            start.wait()
            try:
                results.append((m.mnt / "big").read_bytes())
            except OSError as e:
                results.append(e)

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert len(results) == 8 and all(r == want for r in results), [type(r) for r in results]
        assert srv.requests(f"GET /repo/objects/{rel_of(src / 'big')} ") == 1
        # a walk and full read equal the source, but for the tampered object's file: EIO
        for d, dirs, files in os.walk(src):
            for f in files:
                s = Path(d) / f
                rel = s.relative_to(src)
                if s.is_symlink():
                    assert os.readlink(m.mnt / rel) == os.readlink(s)
                elif rel == Path("f2"):
                    assert read_errno(m.mnt / rel) == errno.EIO
                else:
                    assert (m.mnt / rel).read_bytes() == s.read_bytes(), rel
            for sub in dirs:
                assert (m.mnt / Path(d).relative_to(src) / sub).is_dir()
        assert objects_of(objects) == objects_of(remote / "objects") - {tampered}
        for o in objects_of(objects):
            assert guestutil.fsverity_measure(objects / o) == "sha256:" + o.replace("/", "")
        # each object asked for once (the tampered one too: the failed reader's request; with
        # read-ahead possibly a refused read-ahead before it)
        bad = srv.requests(f"GET /repo/objects/{tampered} ")
        assert bad == 1 if readahead == 0 else bad in (1, 2)
        for o in objects_of(remote / "objects") - {tampered}:
            assert srv.requests(f"GET /repo/objects/{o} ") == 1, o
        asked = srv.requests("GET /repo/objects/")
        assert asked == len(objects_of(remote / "objects")) - 1 + bad
        # in the basedir now: after dropping the caches a read asks for nothing
        guestutil.drop_caches()
        assert (m.mnt / "big").read_bytes() == want
        assert srv.requests("GET /repo/objects/") == asked
    finally:
        m.umount()
        srv.stop()
        net.close()


def test_one_reader_in_find_order_with_readahead(served, tmp_path, verity_tmp):
    """One reader reading every file in `find` order (as `find | xargs cat`) over netem's 5 ms each
    way, with read-ahead: the tree is the source's, every object is fetched once, with fs-verity,
    and read-ahead brought some of them before their reader asked."""
    src, remote, image = served
    net = NetPair()
    try:
        net.shape(delay=5000)
        srv = Nginx(tmp_path, remote.parent, host=net.SERVER, prefix=net.server_cmd)
    except BaseException:
        net.close()
        raise
    objects = verity_tmp / "objects"
    try:
        m = LazyMount(image, tmp_path / "mnt", objects, f"{srv.url}/repo", prefix=net.client_cmd)
    except BaseException:
        srv.stop()
        net.close()
        raise
    try:
        found = subprocess.run(["find", str(m.mnt), "-type", "f"], capture_output=True, text=True, check=True)
        files = [Path(p) for p in found.stdout.splitlines()]
        want = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        assert sorted(str(p.relative_to(m.mnt)) for p in files) == want
        for f in files:  # one reader, one file after another
            assert f.read_bytes() == (src / f.relative_to(m.mnt)).read_bytes(), f
        assert objects_of(objects) == objects_of(remote / "objects")
        for o in objects_of(objects):
            assert srv.requests(f"GET /repo/objects/{o} ") == 1, o
            assert guestutil.fsverity_measure(objects / o) == "sha256:" + o.replace("/", "")
    finally:
        m.umount()
        srv.stop()
        net.close()
    said = m.log.read_text()
    gone = [line for line in said.splitlines() if "mount gone:" in line]
    assert gone, said
    ahead = int(gone[-1].split(" read ahead")[0].rsplit(" ", 1)[1])
    assert ahead > 0, said


def test_server_down_is_eio_within_the_timeout(served, tmp_path, verity_tmp):
    """The link to the server cut (packets vanish: the fetcher hears nothing), then the server
    stopped (connections refused): EIO after the 3 s timeout, and a clean unmount."""
    src, remote, image = served
    net = NetPair()
    srv = None
    try:
        srv = Nginx(tmp_path, remote.parent, host=net.SERVER, prefix=net.server_cmd)
        m = LazyMount(image, tmp_path / "mnt", verity_tmp / "objects", f"{srv.url}/repo", timeout=3,
                      prefix=net.client_cmd)
        try:
            net.cut()
            t = time.monotonic()
            assert read_errno(m.mnt / "f2") == errno.EIO
            assert time.monotonic() - t < 3 + 5
            srv.stop()
            net.restore()
            t = time.monotonic()
            assert read_errno(m.mnt / "f4") == errno.EIO
            assert time.monotonic() - t < 3 + 5
        finally:
            m.umount()  # clean: no EBUSY, the fetcher exits
    finally:
        if srv:
            srv.stop()
        net.close()


def test_killed_reader_and_killed_fetcher_return_at_once(served, tmp_path, verity_tmp):
    src, remote, image = served
    srv = Nginx(tmp_path, remote.parent, limit_rate="20k")  # "big" takes minutes
    # no read-ahead: f6 below must still be missing when the fetcher dies
    m = LazyMount(image, tmp_path / "mnt", verity_tmp / "objects", f"{srv.url}/repo", timeout=600, readahead=0)
    try:
        # a reader killed while it waits for its object returns
        cat = subprocess.Popen(["cat", str(m.mnt / "big")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)
        assert cat.poll() is None, "the object should still be on its way"
        cat.kill()
        cat.wait(timeout=5)
        # a reader waiting when the fetcher dies gets EIO at once, and so does every later miss
        waiting = subprocess.Popen(["cat", str(m.mnt / "big")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiting.poll() is None
        os.kill(m.pid, signal.SIGKILL)
        t = time.monotonic()
        assert waiting.wait(timeout=10) != 0
        assert "Input/output error" in waiting.stderr.read()
        assert time.monotonic() - t < 5
        t = time.monotonic()
        assert read_errno(m.mnt / "f6") == errno.EIO
        assert time.monotonic() - t < 2
    finally:
        m.umount()
        srv.stop()
