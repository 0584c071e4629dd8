# SPDX-License-Identifier: MIT OR Apache-2.0
"""cfsctl pull: a repository served as plain files by a real nginx (Debian's nginx-light, started
here on 127.0.0.1 with a temporary config) or through file://. Every object is checked against
its name before it is stored; a tampered object or image is refused; a pull killed midway
fetches only what is still missing on the next run; a stopped server is a one-line error."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

import ocireg
from cfsrun import cfsctl
from ocireg import NetPair, needs_root
from webrepo import (CFSCTL, Nginx, local_objects, make_tree, needs_nginx, pull, remote_objects, served_repo,
                     start_pull)

pytestmark = needs_nginx


@pytest.fixture
def served(tmp_path):
    """A repository holding image 'app', its directory (the web root), and a fresh local repo."""
    remote, digest = served_repo(tmp_path)
    local = tmp_path / "local"
    assert cfsctl("init", "--repo", local).returncode == 0
    return remote, local, digest


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


def test_redirects_followed_and_bad_ones_refused(served, tmp_path):
    """A server that moved the repository answers with redirects (nginx ``return 30x``): followed
    to an http URL, for the ref and the image (through the Python client) and the objects
    (through the core's); a redirect that leads nowhere this client goes (another scheme, no
    host, a port out of range) is a one-line error, the local repository unchanged."""
    remote, local, digest = served
    moved = tmp_path / "moved"
    moved.mkdir()
    remote.rename(moved / "repo")
    locations = """
        location ~ ^/repo/(.*)$ { return 301 /moved/repo/$1; }
        location ~ ^/ftp/(.*)$ { return 302 ftp://127.0.0.1/$1; }
        location ~ ^/nohost/(.*)$ { return 302 https:///$1; }
        location ~ ^/port/(.*)$ { return 307 http://127.0.0.1:99999/$1; }
        location ~ ^/user/(.*)$ { return 307 http://user@127.0.0.1/$1; }
    """
    srv = Nginx(tmp_path, tmp_path, locations=locations)
    try:
        r = pull(f"{srv.url}/repo", "app", local)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["digest"] == digest
        assert srv.requests("GET /repo/refs/app ") == 1 and srv.requests("GET /moved/repo/refs/app ") == 1
        assert srv.requests("GET /moved/repo/objects/") == len(remote_objects(moved / "repo"))
        for bad in ("ftp", "nohost", "port", "user"):
            r = pull(f"{srv.url}/{bad}/repo", "app", local, "--as", bad)
            err = r.stderr.decode(errors="replace").strip()  # under --json: {"error": TEXT}
            assert r.returncode == 1 and err.count("\n") == 0 and "Traceback" not in err, (bad, r.stderr)
            assert "redirect to" in err and "not an http(s) URL" in err, (bad, err)
        imgs = json.loads(cfsctl("images", "--repo", local, "--json").stdout)
        assert [i["name"] for i in imgs] == ["app"]
    finally:
        srv.stop()


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


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_objects_one_at_a_time_as_fetchd_asks(served, tmp_path, scheme):
    """remote.ObjectSource.fetch, what cfsctl fetchd calls per miss: the same answers over the
    Rust core's fetcher (http://) and the Python one (file://)."""
    from composefs import _native
    from composefs.errors import CfsError
    from composefs.remote import ObjectSource, Remote

    remote, local, _ = served
    objs = sorted((remote / "objects").glob("??/*"), key=lambda p: p.stat().st_size)
    good, bad = objs[0], objs[-1]
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.chmod(0o644)
    bad.write_bytes(bytes(data))
    srv = Nginx(tmp_path, remote.parent) if scheme == "http" else None
    try:
        url = f"{srv.url}/repo" if srv else f"file://{remote}"
        store = _native.ObjectStore(str(local / "objects"))
        src = ObjectSource(Remote(url), store)
        assert (src.native is not None) == (scheme == "http")
        hexd = lambda p: p.parent.name + p.name  # noqa: E731
        assert src.fetch(hexd(good), good.stat().st_size) == "stored"
        assert src.fetch(hexd(good), good.stat().st_size) == "reused"
        with pytest.raises(_native.FormatError):
            src.fetch(hexd(bad), len(data))
        with pytest.raises(CfsError, match="not found|No such file"):
            src.fetch("ab" * 32, 10)
        assert src.bytes >= good.stat().st_size
    finally:
        if srv:
            srv.stop()
    assert local_objects(local) == {f"{good.parent.name}/{good.name}"}


def test_interrupted_pull_stops_at_once_and_names_nothing(tmp_path):
    """Ctrl-C (SIGINT) while 4 objects stream slowly: the fetch threads stop at once (their
    sockets are shut down, not left to time out), every object in the store matches its name,
    no temporary is left and no image is named."""
    remote, _ = served_repo(tmp_path, files=40, big=4 << 20)
    local = tmp_path / "local"
    cfsctl("init", "--repo", local)
    srv = Nginx(tmp_path, remote.parent, limit_rate="100k")
    try:
        p = start_pull(f"{srv.url}/repo", "app", local, "--jobs", "4")
        deadline = time.monotonic() + 60
        while not srv.requests("GET /repo/objects/") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # bodies in flight
        p.send_signal(signal.SIGINT)
        t = time.monotonic()
        try:
            _out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            where = _threads_of(p.pid)  # what each thread of a hung pull waits for
            p.kill()
            p.communicate()
            pytest.fail(f"SIGINT did not end the pull within 30 s:\n{where}")
        assert time.monotonic() - t < 5, "the pull did not stop at once"
        assert p.returncode != 0 and b"Traceback" not in err, err
    finally:
        srv.stop()
    assert len(local_objects(local)) < len(remote_objects(remote))
    assert cfsctl("fsck", "--repo", local).returncode == 0
    assert json.loads(cfsctl("images", "--repo", local, "--json").stdout) == []
    assert not list((local / "tmp").iterdir())


def _threads_of(pid: int) -> str:
    """Each thread of process `pid`: its state and kernel wait channel, then gdb's backtraces
    (when gdb is there): what a hang was waiting for."""
    lines = []
    for t in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda d: int(d.name)):
        try:
            stat = (t / "stat").read_text().rsplit(")", 1)[1].split()[0]
            lines.append(f"thread {t.name} {(t / 'comm').read_text().strip()} state {stat} "
                         f"wchan {(t / 'wchan').read_text().strip()}")
        except OSError:
            continue
    try:
        bt = subprocess.run(["gdb", "-batch", "-p", str(pid), "-ex", "thread apply all bt 12"],
                            capture_output=True, text=True, timeout=60).stdout
        lines.append("\n".join(l for l in bt.splitlines() if l.startswith(("Thread", "#"))))
    except (OSError, subprocess.TimeoutExpired) as e:
        lines.append(f"(no gdb backtraces: {e})")
    return "\n".join(lines)


def test_server_gone_is_an_error(served, tmp_path):
    remote, local, _ = served
    srv = Nginx(tmp_path, remote.parent)
    url = f"{srv.url}/repo"
    srv.stop()
    t = time.monotonic()
    r = pull(url, "app", local)
    assert r.returncode == 1 and b"Connection refused" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    assert time.monotonic() - t < 30


# ---- network faults between two namespaces -----------------------------------------------------
# nginx in one namespace of a NetPair, the pull in the other. The lossy and slow links here need
# no netem (the host kernel may lack it): iptables' statistic match drops, tbf limits the rate.
# tests/guest/test_net_faults.py runs the netem delay and loss cases in the QEMU guest.

CUT_BOUND = 180  # seconds: every fetch in flight times out, is retried with back-off, then gives up


@pytest.fixture
def netpair():
    yield from ocireg.netpair_or(pytest.skip)


@pytest.fixture
def ns_served(netpair, tmp_path):
    """nginx on 192.0.2.1:8080 in the server namespace serving a repository of 121 objects (one of
    4 MiB), and an empty local repository."""
    remote, digest = served_repo(tmp_path, files=120, big=4 << 20)
    srv = Nginx(tmp_path, remote.parent, host=NetPair.SERVER, port=8080, prefix=netpair.server_cmd)
    local = tmp_path / "local"
    assert cfsctl("init", "--repo", local).returncode == 0
    yield srv, remote, local, digest
    srv.stop(graceful=False)


def _url(srv) -> str:
    return f"{srv.url}/repo"


_wait_sent = ocireg.wait_sent
_finish = ocireg.finish_pull


def _assert_failed_cleanly(r: subprocess.CompletedProcess, local: Path, what: str) -> None:
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, f"{what}: exit {r.returncode}; stderr: {err[-1500:]}"
    assert "Traceback" not in err and err.count("\n") == 1, err[-1500:]
    assert json.loads(err)["error"], err  # the pull runs with --json: its one-line error is JSON
    assert json.loads(cfsctl("images", "--repo", local, "--json").stdout) == []
    assert not list((local / "tmp").iterdir())


def _rerun_fetches_only_the_rest(srv, netpair, remote, local, digest) -> None:
    have = local_objects(local)
    total = remote_objects(remote)
    assert have < total, "nothing was missing: the interruption came too late"
    r = pull(_url(srv), "app", local, prefix=netpair.client_cmd, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out = json.loads(r.stdout)
    assert out["digest"] == digest and out["objects_fetched"] == len(total - have)
    assert local_objects(local) == total
    assert cfsctl("fsck", "--repo", local).returncode == 0


@needs_root
def test_pull_through_a_lossy_slow_link(ns_served, netpair):
    """3% of what the server sends dropped (iptables) at 16 Mbit/s (tbf): slower, every object."""
    if not ocireg.have("iptables"):
        pytest.skip("iptables is not installed (make setup installs it)")
    srv, remote, local, digest = ns_served
    netpair.rate(16_000_000)
    netpair.drop(3)
    r = pull(_url(srv), "app", local, prefix=netpair.client_cmd, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert json.loads(r.stdout)["digest"] == digest
    assert local_objects(local) == remote_objects(remote)


@needs_root
def test_link_cut_mid_transfer_fails_in_bounded_time_then_rerun(ns_served, netpair):
    """The link goes down mid-transfer and stays down: one-line error within the bound, nothing
    named; with the link back a re-run fetches exactly the objects still missing."""
    srv, remote, local, digest = ns_served
    netpair.rate(8_000_000)
    base = netpair.sent_bytes()
    proc = start_pull(_url(srv), "app", local, "--jobs", "4", prefix=netpair.client_cmd)
    _wait_sent(netpair, base + (1 << 20), proc)
    netpair.cut()
    t0 = time.monotonic()
    r = _finish(proc, CUT_BOUND)
    assert r.returncode is not None, f"still running {CUT_BOUND} s after the cut"
    assert time.monotonic() - t0 < CUT_BOUND
    _assert_failed_cleanly(r, local, "link cut")
    netpair.restore()
    netpair.unshape()
    _rerun_fetches_only_the_rest(srv, netpair, remote, local, digest)


@needs_root
def test_server_stopped_mid_pull_then_rerun(ns_served, netpair):
    """nginx stops (SIGTERM: connections dropped) mid-transfer: the retries meet a refused
    connection and the pull fails at once with one line; after a restart the re-run fetches
    exactly what is still missing."""
    srv, remote, local, digest = ns_served
    netpair.rate(8_000_000)
    base = netpair.sent_bytes()
    proc = start_pull(_url(srv), "app", local, "--jobs", "4", prefix=netpair.client_cmd)
    _wait_sent(netpair, base + (1 << 20), proc)
    srv.stop(graceful=False)
    t0 = time.monotonic()
    r = _finish(proc, 60)
    assert r.returncode is not None and time.monotonic() - t0 < 60, "the pull did not give up within 60 s"
    _assert_failed_cleanly(r, local, "server stopped")
    srv.start()
    netpair.unshape()
    _rerun_fetches_only_the_rest(srv, netpair, remote, local, digest)
