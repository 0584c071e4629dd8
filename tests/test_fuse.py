# SPDX-License-Identifier: MIT OR Apache-2.0
"""cfsctl mount --fuse: the image served in user space by the Rust core, compared entry by entry
with the stock kernel path (EROFS + overlayfs) on the same image; objects checked on open
(a tampered object is EIO, a missing one ENOENT); hostile images refused or served without the
daemon dying; a killed daemon leaves a mount that unmounts cleanly; and a user who is not root
mounts, reads and unmounts with one command each (fusermount3, from Debian's fuse3)."""

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import cfs_images
import treewalk
from cfsrun import REPO

CFSCTL = [sys.executable, "-m", "composefs.cli"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the comparison with the kernel path mounts as root")
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="this kernel has no FUSE (/dev/fuse)")


def run(*args, user=None, timeout=120):
    return subprocess.run([*CFSCTL, *map(str, args)], capture_output=True, timeout=timeout)


def make_tree(root: Path) -> None:
    rng = random.Random(3)
    (root / "d" / "e").mkdir(parents=True)
    (root / "small").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "d" / "big").write_bytes(rng.randbytes(300_000))
    (root / "d" / "e" / "mid").write_bytes(rng.randbytes(5000))
    os.link(root / "d" / "big", root / "hard")
    os.symlink("d/big", root / "link")
    os.mkfifo(root / "fifo")
    os.mknod(root / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(root / "small", "user.k", b"v")
    os.setxattr(root / "d", "user.dir", b"x" * 100)
    os.chmod(root / "d" / "e", 0o711)
    os.chown(root / "d" / "e" / "mid", 1234, 5678)
    os.utime(root / "small", (1_600_000_000, 1_600_000_000))


@pytest.fixture
def image(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    r = run("build", src, tmp_path / "img.cfs", "--digest-store", tmp_path / "objects", "--hardlinks", "--json")
    assert r.returncode == 0, r.stderr
    return tmp_path / "img.cfs", tmp_path / "objects"


def mounted(mnt: Path) -> bool:
    return any(line.split()[4] == str(mnt) for line in open("/proc/self/mountinfo"))


@pytest.fixture
def rich_image(tmp_path):
    """The shared generated tree (every file type, xattrs, hardlinks kept, whiteouts, an opaque
    directory, overlay xattrs to escape), built with our writer."""
    src = tmp_path / "rich"
    cfs_images.make_tree(str(src), large=300_000)
    cfs_images.add_overlay_markings(str(src))
    img, objects = tmp_path / "rich.cfs", tmp_path / "rich-objects"
    r = run("build", src, img, "--digest-store", objects, "--hardlinks")
    assert r.returncode == 0, r.stderr
    return img, objects


@ROOT_ONLY
def test_fuse_presents_what_the_kernel_path_presents(rich_image, tmp_path):
    img, objects = rich_image
    fmnt, kmnt = tmp_path / "fuse", tmp_path / "kernel"
    fmnt.mkdir()
    kmnt.mkdir()
    r = run("mount", img, fmnt, "--basedir", objects, "--fuse")
    assert r.returncode == 0, r.stderr
    try:
        r = run("mount", img, kmnt, "--basedir", objects, "--backend", "overlay")
        assert r.returncode == 0, r.stderr
        try:
            f, k = treewalk.walk_both(fmnt, kmnt)
        finally:
            run("umount", kmnt)
        assert treewalk.differences(treewalk.presented(f), treewalk.presented(k)) == []
        # not vacuous: the escaped markings are there, shown as a mount shows them
        wo = f["entries"][b"/ovl/whiteout"]
        assert stat.S_ISREG(wo["mode"]) and wo["xattrs"]["trusted.overlay.whiteout"] == b""
        assert f["entries"][b"/ovl/marked"]["xattrs"]["trusted.overlay.custom"] == b"escaped"
        assert any(len(group) == 3 for group in f["links"])  # small.txt and its two hardlinks
        assert treewalk.inode_numbers(fmnt) == treewalk.inode_numbers(fmnt, drop=True)
        with pytest.raises(OSError) as e:
            open(fmnt / "small.txt", "wb")
        assert e.value.errno in (errno.EROFS, errno.EACCES)
    finally:
        assert run("umount", fmnt).returncode == 0
    assert not mounted(fmnt)


def _object_of(objects: Path, size: int) -> Path:
    return next(p for p in objects.glob("??/*") if p.stat().st_size == size)


def test_tampered_object_is_eio_missing_is_enoent(image, tmp_path):
    img, objects = image
    victim = _object_of(objects, 5000)
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    _object_of(objects, 300_000).unlink()
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert run("mount", img, mnt, "--basedir", objects, "--fuse").returncode == 0
    try:
        with pytest.raises(OSError) as e:
            (mnt / "d" / "e" / "mid").read_bytes()
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (mnt / "d" / "big").read_bytes()
        assert e.value.errno == errno.ENOENT
        assert (mnt / "small").read_bytes() == b"hello\n"  # the rest reads on
    finally:
        run("umount", mnt)
    # With --verity-check 0 nothing is checked.
    assert run("mount", img, mnt, "--basedir", objects, "--fuse", "--verity-check", "0").returncode == 0
    try:
        assert (mnt / "d" / "e" / "mid").read_bytes() == bytes(data)
    finally:
        run("umount", mnt)


def test_object_replaced_after_a_check_is_checked_again(image, tmp_path):
    """The check is of an object file, not of a name: an object read once, then replaced under its
    name by other content (anyone who can write the store could), or changed in place, is EIO at
    the next open, as on the module, which checks at every open."""
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    want = (tmp_path / "src" / "d" / "e" / "mid").read_bytes()
    assert run("mount", img, mnt, "--basedir", objects, "--fuse").returncode == 0
    try:
        assert (mnt / "d" / "e" / "mid").read_bytes() == want
        victim = _object_of(objects, 5000)
        victim.unlink()
        victim.write_bytes(want[:100] + bytes([want[100] ^ 1]) + want[101:])
        with pytest.raises(OSError) as e:
            (mnt / "d" / "e" / "mid").read_bytes()
        assert e.value.errno == errno.EIO
        victim.write_bytes(want)  # put back in place: the same file, changed, is checked again
        assert (mnt / "d" / "e" / "mid").read_bytes() == want
    finally:
        run("umount", mnt)


def test_digest_checked_before_mounting(image, tmp_path):
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--digest", "0" * 64)
    assert r.returncode == 1 and b"digest mismatch" in r.stderr and not mounted(mnt), r.stderr


# `cfsctl umount` as users run it: the native front (which hands FUSE mounts to the Python CLI)
# and the Python CLI itself.
BIN = Path(sys.executable).parent
UMOUNT_PROGRAMS = {"front": BIN / "cfsctl", "cfsctl-py": BIN / "cfsctl-py"}
needs_programs = pytest.mark.skipif(not all(p.is_file() for p in UMOUNT_PROGRAMS.values()),
                                    reason="cfsctl and cfsctl-py are not installed in this environment (make setup)")


def umount_with(program: str, *args, timeout=30):
    """Run `cfsctl umount ARGS` through `program`: (CompletedProcess, seconds taken)."""
    t0 = time.monotonic()
    r = subprocess.run([UMOUNT_PROGRAMS[program], "umount", *map(str, args)], capture_output=True,
                       timeout=timeout)
    return r, time.monotonic() - t0


@needs_programs
@pytest.mark.parametrize("program", UMOUNT_PROGRAMS)
def test_killed_daemon_leaves_enotconn_and_unmounts(image, tmp_path, program):
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr

    os.kill(json.loads(r.stdout)["pid"], signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    r, _ = umount_with(program, mnt)
    assert r.returncode == 0, r.stderr
    assert not mounted(mnt)


def _stop(pid: int) -> None:
    """SIGSTOP `pid` and wait until every thread of it has stopped (none can still answer)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [(Path(f"/proc/{pid}/task") / t / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")]
        if all(st in "tT" for st in states):
            return
        time.sleep(0.02)
    raise AssertionError(f"daemon {pid} did not stop")


def _wait_ended(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not _ended(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return _ended(pid)


def test_mount_points_are_found_without_looking_at_them(tmp_path, monkeypatch):
    """umount's path to mountinfo: the parent resolved (symlinks, `..`), the last component taken
    as written (a stat of it would wait on a stopped FUSE daemon); `.`/`..` at the end resolved."""
    from composefs.mount import _listed_path

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(real)
    cases = [
        (f"{tmp_path}/link/mnt", f"{real}/mnt"),
        (f"{tmp_path}/link/mnt/", f"{real}/mnt"),
        (f"{tmp_path}/link/sub/../mnt", f"{real}/mnt"),
        ("mnt", f"{real}/mnt"),
        ("./mnt//", f"{real}/mnt"),
        (f"{tmp_path}/link/sub/..", str(real)),
        (".", str(real)),
        ("/", "/"),
    ]
    assert [(p, _listed_path(p)) for p, _ in cases] == cases


@needs_programs
@pytest.mark.parametrize("program", UMOUNT_PROGRAMS)
@pytest.mark.parametrize("flags", [[], ["--lazy", "--json"]], ids=["plain", "lazy"])
def test_stopped_daemon_unmounts_at_once_and_is_ended(image, tmp_path, program, flags):
    """The daemon stopped (SIGSTOP) before anything looked at the mount, so not even the root's
    attributes are cached: `cfsctl umount` finds the mount without asking it anything, unmounts it
    at once and ends the daemon (SIGKILL: a stopped daemon can neither answer nor exit)."""
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        _stop(pid)
        r, took = umount_with(program, *flags, mnt)
        assert r.returncode == 0 and r.stderr == b"", r.stderr
        assert took < 5, f"umount took {took:.1f} s"
        assert not mounted(mnt)
        if flags:
            assert json.loads(r.stdout) == {"mountpoint": str(mnt), "fstype": "fuse", "backend": "fuse", "lazy": True}
        assert _wait_ended(pid, 2), "the stopped daemon was left behind"
    finally:
        if not _ended(pid):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@needs_programs
def test_running_daemon_exits_by_itself_and_busy_lazy_mount_keeps_its_daemon(image, tmp_path):
    """A daemon that answers exits on its own when its mount goes, well before umount would kill
    it. A busy mount is refused without --lazy, its stopped daemon untouched; with --lazy it is
    detached and its daemon, stopped or not, left to serve the process still inside, exiting by
    itself once that process is gone."""
    from composefs import fusemount

    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    r, took = umount_with("front", mnt)
    assert r.returncode == 0, r.stderr
    assert _wait_ended(pid, fusemount.DAEMON_EXIT_TIMEOUT / 2), "the daemon did not exit by itself"

    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    # Busy by a working directory, not an open file: closing a file (as every child process does
    # with the fds it inherits) waits for a stopped daemon's answer to FLUSH.
    inside = subprocess.Popen(["sleep", "120"], cwd=mnt / "d")
    try:
        _stop(pid)
        r, took = umount_with("front", mnt)
        assert r.returncode == 1 and b"busy" in r.stderr and took < 5, r.stderr
        assert mounted(mnt) and not _ended(pid)
        r, took = umount_with("cfsctl-py", "--lazy", mnt)
        assert r.returncode == 0 and took < 5, r.stderr
        assert not mounted(mnt)
        time.sleep(0.5)
        assert not _ended(pid), "the daemon of a detached busy mount was ended"
        os.kill(pid, signal.SIGCONT)
        got = (Path(f"/proc/{inside.pid}/cwd") / "e" / "mid").read_bytes()
        assert got == (tmp_path / "src" / "d" / "e" / "mid").read_bytes()
        inside.kill()
        inside.wait()
        assert _wait_ended(pid), "the daemon did not exit once the mount was no longer busy"
    finally:
        inside.kill()
        if not _ended(pid):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_ending_daemon_leaves_a_new_mount_at_its_place_alone(image, tmp_path):
    """An unmount, then at once a new mount at the same place: the first daemon, ending after
    the new mount is made (held stopped here until then), must not unmount it (fuser unmounts its
    mount point by path when its session ends; our daemon exits first)."""
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr
    old = json.loads(r.stdout)["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        # Not `cfsctl umount`, which ends the stopped daemon (tested above): fusermount3 leaves it.
        assert subprocess.run(["fusermount3", "-u", mnt], timeout=30).returncode == 0
        r = run("mount", img, mnt, "--basedir", objects, "--fuse", timeout=30)
        assert r.returncode == 0, r.stderr
    finally:
        os.kill(old, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 20
        while not _ended(old) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ended(old), "the first daemon did not end once its mount was gone"
        time.sleep(0.2)
        assert mounted(mnt)
        assert (mnt / "small").read_bytes() == b"hello\n"
    finally:
        assert run("umount", mnt).returncode == 0


def _read_while_stopped(pid: int, fd: int, size: int) -> bytes | None:
    """pread `size` bytes of `fd` while the daemon `pid` is stopped: what comes back without the
    daemon's help (None if the read waited for it)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(os.pread(fd, size, 0)), daemon=True)
    try:
        _stop(pid)
        reader.start()
        reader.join(10)
        return got[0] if got else None
    finally:
        os.kill(pid, signal.SIGCONT)
        if reader.ident is not None:  # started (the stop took)
            reader.join(30)


@ROOT_ONLY
def test_root_daemon_reads_through_passthrough_on_several_threads(image, tmp_path):
    """Started by root, the daemon hands object reads to the kernel (FUSE passthrough): a file
    opened before the daemon is stopped still reads, byte for byte; inline data (no object) still
    needs the daemon. Requests are served by several threads."""
    img, objects = image
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = run("mount", img, mnt, "--basedir", objects, "--fuse", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        deadline = time.monotonic() + 10  # the serving threads start just after the mount
        while True:
            names = [(Path(f"/proc/{pid}/task") / t / "comm").read_text().strip()
                     for t in os.listdir(f"/proc/{pid}/task")]
            if sum(n.startswith("fuser") for n in names) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(n.startswith("fuser") for n in names) >= 2, names
        want = (tmp_path / "src" / "d" / "big").read_bytes()
        fd = os.open(mnt / "d" / "big", os.O_RDONLY)
        try:
            assert _read_while_stopped(pid, fd, len(want)) == want
        finally:
            os.close(fd)
        fd = os.open(mnt / "small", os.O_RDONLY)  # inline in the image: served by the daemon
        try:
            assert _read_while_stopped(pid, fd, 100) is None
        finally:
            os.close(fd)
    finally:
        assert run("umount", mnt).returncode == 0


def _mutations(good: bytes, rng: random.Random, count: int):
    """Images near `good`: a few bytes changed anywhere (superblock and inode table included),
    runs of bytes overwritten, or the image cut short."""
    for _ in range(count):
        data = bytearray(good)
        how = rng.random()
        if how < 0.6:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how < 0.85:
            at = rng.randrange(len(data))
            n = rng.randint(2, 64)
            data[at:at + n] = bytes(rng.randrange(256) for _ in range(n))[: len(data) - at]
        else:
            del data[rng.randrange(1, len(data)):]
        yield bytes(data)


def test_hostile_images_never_kill_the_daemon(image, tmp_path):
    """A few hundred mutated images: each is refused with one line by the reader the daemon uses,
    or mounted, walked and read in full with the daemon answering to the end, never hanging."""
    from composefs import _native

    img, objects = image
    good = img.read_bytes()
    rng = random.Random(int(os.environ.get("CFS_FUSE_FUZZ_SEED", "11")))
    mnt = tmp_path / "m"
    mnt.mkdir()
    refused: list[Path] = []
    served = 0
    for i, data in enumerate(_mutations(good, rng, int(os.environ.get("CFS_FUSE_FUZZ_COUNT", "300")))):
        bad = tmp_path / f"bad{i}.cfs"
        bad.write_bytes(data)
        try:
            _native.fuse_check(str(bad))  # what the daemon loads before it mounts
        except _native.FormatError:
            refused.append(bad)
            continue
        served += 1
        r = run("mount", bad, mnt, "--basedir", objects, "--fuse", "--verity-check", "0", timeout=60)
        assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
        try:
            for dirpath, dirnames, filenames in os.walk(mnt):
                for n in filenames:
                    p = os.path.join(dirpath, n)
                    try:
                        os.listxattr(p, follow_symlinks=False)
                        if stat.S_ISREG(os.lstat(p).st_mode):  # a FIFO would wait for a writer
                            with open(p, "rb") as f:
                                f.read()
                    except OSError:
                        pass
            os.listdir(mnt)  # the daemon still answers
        finally:
            assert run("umount", mnt).returncode == 0
        bad.unlink()
    # Refused images are refused by the CLI too, in one line (a sample: each costs a process).
    for bad in rng.sample(refused, min(8, len(refused))):
        r = run("mount", bad, mnt, "--basedir", objects, "--fuse", timeout=60)
        assert r.returncode == 1 and r.stderr.startswith(b"cfsctl: error: ") and r.stderr.count(b"\n") == 1, r.stderr
        assert not mounted(mnt)
    print(f"hostile images: {len(refused)} refused, {served} served")
    assert refused and served


NOBODY_PY = "/usr/bin/python3"
AS_NOBODY = pytest.mark.skipif(os.geteuid() != 0, reason="switching to user nobody needs root")


@pytest.fixture
def nobody_world(image):
    """The image and its objects where user nobody reads them, a mount point of theirs, and a
    `cfsctl` run as nobody by Debian's python3 (the project's own lives under root's home) with
    the checkout's sources and extension on the path."""
    probe = subprocess.run(["runuser", "-u", "nobody", "--", NOBODY_PY, "-c", "import click"], capture_output=True)
    assert probe.returncode == 0, "python3-click is missing (APT_PACKAGES has it)"
    assert os.access("/dev/fuse", os.R_OK | os.W_OK) and os.stat("/dev/fuse").st_mode & 0o006 == 0o006, \
        "/dev/fuse is not open to users (make setup does what fuse3's udev rule does)"
    img, objects = image
    pub = Path(tempfile_dir())
    try:
        shutil.copy(img, pub / "img.cfs")
        shutil.copytree(objects, pub / "objects")
        (pub / "mnt").mkdir()
        for p in [pub, *pub.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        os.chown(pub / "mnt", 65534, 65534)
        code = ("import sys; sys.path.insert(0, %r); sys.argv[0] = 'cfsctl'; from composefs.cli import main; main()"
                % str(REPO / "python"))

        def user(*args, timeout=120):
            return subprocess.run(["runuser", "-u", "nobody", "--", NOBODY_PY, "-c", code, *map(str, args)],
                                  capture_output=True, timeout=timeout)

        yield pub, user
    finally:
        subprocess.run(["umount", "-l", str(pub / "mnt")], capture_output=True)
        shutil.rmtree(pub, ignore_errors=True)


@AS_NOBODY
def test_unprivileged_user_mounts_reads_unmounts(nobody_world):
    """User nobody: mount (FUSE chosen for a user), read, unmount."""
    pub, user = nobody_world
    r = user("mount", pub / "img.cfs", pub / "mnt", "--basedir", pub / "objects")
    assert r.returncode == 0, r.stderr
    try:
        r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(pub / "mnt" / "d" / "big")],
                           capture_output=True)
        assert r.returncode == 0 and r.stdout == (pub / "objects").joinpath(
            *_object_of(pub / "objects", 300_000).parts[-2:]).read_bytes()
    finally:
        r = user("umount", pub / "mnt")
    assert r.returncode == 0, r.stderr
    assert not mounted(pub / "mnt")


@AS_NOBODY
def test_unprivileged_user_unmounts_a_stopped_daemons_mount(nobody_world):
    """User nobody's daemon stopped before anything looked at the mount: nobody's `cfsctl umount`
    (fusermount3 -u, which asks the daemon nothing) returns at once, and ends the daemon."""
    pub, user = nobody_world
    r = user("mount", pub / "img.cfs", pub / "mnt", "--basedir", pub / "objects", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(r.stdout)["pid"]
    try:
        uids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65534"] * 4, uids  # nobody's own daemon
        _stop(pid)
        t0 = time.monotonic()
        r = user("umount", pub / "mnt", timeout=30)
        took = time.monotonic() - t0
        assert r.returncode == 0 and r.stderr == b"", r.stderr
        assert took < 5, f"umount took {took:.1f} s"
        assert not mounted(pub / "mnt")
        assert _wait_ended(pid, 2), "the stopped daemon was left behind"
    finally:
        if not _ended(pid):
            os.kill(pid, signal.SIGKILL)


def tempfile_dir() -> str:
    import tempfile

    d = tempfile.mkdtemp(prefix="cfs-fuse-", dir="/var/tmp")
    os.chmod(d, 0o755)
    return d


def test_remote_objects_fetched_on_first_open(tmp_path):
    """--fuse --remote: an image whose objects are absent locally reads in full, each object
    fetched once from the web server (eight readers of one missing object make one request),
    checked and kept in the first basedir; a tampered object is EIO for that file only and never
    stored; with the server gone a missing object is an error, not a hang."""
    from webrepo import Nginx, make_tree

    src = tmp_path / "src"
    make_tree(src, files=20, big=2 << 20)
    remote = tmp_path / "www" / "repo"
    assert run("init", "--repo", remote).returncode == 0
    r = run("import", src, "--name", "app", "--repo", remote, "--json")
    assert r.returncode == 0, r.stderr
    digest = json.loads(r.stdout)["digest"]
    img = tmp_path / "app.cfs"
    shutil.copyfile(remote / "images" / digest, img)
    objs = sorted((remote / "objects").glob("??/*"), key=lambda p: p.stat().st_size)
    victim = objs[0]  # the smallest object: tampered on the server
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    local = tmp_path / "local"
    assert run("init", "--repo", local).returncode == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    srv = Nginx(tmp_path, remote.parent)
    try:
        r = run("mount", img, mnt, "--basedir", local / "objects", "--fuse", "--remote", f"{srv.url}/repo")
        assert r.returncode == 0, r.stderr
        try:
            got: list[bytes] = []
            readers = [threading.Thread(target=lambda: got.append((mnt / "big").read_bytes())) for _ in range(8)]
            for t in readers:
                t.start()
            for t in readers:
                t.join(120)
            assert got == [(src / "big").read_bytes()] * 8
            big = next(p for p in objs if p.stat().st_size == 2 << 20)
            assert srv.requests(f"GET /repo/objects/{big.parent.name}/{big.name} ") == 1
            eio = []
            for p in sorted(src.rglob("*")):
                rel = p.relative_to(src)
                if p.is_symlink() or not p.is_file():
                    continue
                try:
                    assert (mnt / rel).read_bytes() == p.read_bytes(), rel
                except OSError as e:
                    assert e.errno == errno.EIO, rel
                    eio.append(rel)
            assert len(eio) == 1  # the tampered object's file, and only it
            stored = {f"{p.parent.name}/{p.name}" for p in (local / "objects").glob("??/*")}
            assert stored == {f"{p.parent.name}/{p.name}" for p in objs} - {f"{victim.parent.name}/{victim.name}"}
            for p in objs:  # each fetched once, however often it was opened
                assert srv.requests(f"GET /repo/objects/{p.parent.name}/{p.name} ") <= (1 if p != victim else 6)
        finally:
            assert run("umount", mnt).returncode == 0
    finally:
        srv.stop()
    # The server gone: what is stored still reads; what is not fails, the mount stays usable.
    (local / "objects" / big.parent.name / big.name).unlink()
    r = run("mount", img, mnt, "--basedir", local / "objects", "--fuse", "--remote", "http://127.0.0.1:9/repo")
    assert r.returncode == 0, r.stderr
    try:
        with pytest.raises(OSError) as e:
            (mnt / "big").read_bytes()
        assert e.value.errno in (errno.EIO, errno.ENOENT)
        assert (mnt / "f2").read_bytes() == (src / "f2").read_bytes()  # f0 is the tampered one
    finally:
        assert run("umount", mnt).returncode == 0
