# SPDX-License-Identifier: MIT OR Apache-2.0
"""The native `cfsctl` front (native/mount/src/front.rs) against the Python CLI it stands in for.

Each command line of the table runs twice: through the installed `cfsctl` (the front) and through
`cfsctl-py` (the Python CLI, click and all). Standard output, standard error, the exit status and
the mount left behind must be the same. Each case also says which path the front must take: with
`$CFSCTL_PYTHON_CLI` pointing at a program that only reports that it was called, a case the front
claims to handle must never reach it, and a case it must hand over must reach it with the same
arguments.

Needs root and erofs + overlay (the mounts are real); says why when it skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfsrun import cfsctl

from composefs import mount as cm

BIN = Path(sys.executable).parent
FRONT = BIN / "cfsctl"
PYTHON_CLI = BIN / "cfsctl-py"


def _have_fs(name: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == [name] for line in f)


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
    pytest.mark.skipif(not (_have_fs("erofs") and _have_fs("overlay")),
                       reason="needs erofs + overlay in /proc/filesystems"),
    pytest.mark.skipif(not FRONT.is_file() or FRONT.read_bytes()[:4] != b"\x7fELF",
                       reason="the native cfsctl front is not installed (make setup)"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    t = tmp_path_factory.mktemp("front")
    src = t / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big").write_bytes(b"front " * 5000)
    (src / "small").write_bytes(b"hi\n")
    r = cfsctl("build", src, t / "img.cfs", "--digest-store", t / "objects", "--json")
    assert r.returncode == 0, r.stderr
    digest = cfsctl("info", "header", "--json", t / "img.cfs")
    assert digest.returncode == 0, digest.stderr
    import json

    (t / "digest").write_text(json.loads(digest.stdout)[0]["digest"])
    assert cfsctl("init", "--repo", t / "repo").returncode == 0
    assert cfsctl("import", src, "--name", "app", "--repo", t / "repo").returncode == 0
    refs = t / "repo" / "refs"
    rd = (refs / "app").read_text().strip()
    (t / "repodigest").write_text(rd)
    # Refs that must never be followed or trusted, one that names a missing image, and one that
    # names an image whose bytes are not its name (sharing its first 6 digits with app's, so that
    # prefix is ambiguous).
    (refs / "link").symlink_to(refs / "app")
    (refs / "foreign").write_text(rd + "\n")
    os.chown(refs / "foreign", 12345, 12345)
    (refs / "dangling").write_text("f" * 64 + "\n")
    (refs / "file").write_text(rd + "\n")  # also the name of a file in the directory the tests run in
    wrong = rd[:6] + "0" * 58
    shutil.copyfile(t / "repo" / "images" / rd, t / "repo" / "images" / wrong)
    (refs / "corrupt").write_text(wrong + "\n")
    # Two more repositories whose "app" differs, for which repository a command line picks.
    for other in ("repo-b", "repo-c"):
        (t / f"src-{other}").mkdir()
        (t / f"src-{other}" / "which").write_text(other)
        assert cfsctl("init", "--repo", t / other).returncode == 0
        assert cfsctl("import", t / f"src-{other}", "--name", "app", "--repo", t / other).returncode == 0
    # The same repository with a meta.json cfsctl init would not write (the front leaves it to Python).
    shutil.copytree(t / "repo", t / "repo-meta", symlinks=True)
    (t / "repo-meta" / "meta.json").write_text('{"version": 1, "format": "composefs-repository"}\n')
    for d in ("mnt", "upper", "work", "empty"):
        (t / d).mkdir()
    (t / "file").write_text("not a directory\n")
    # Stands in for the Python CLI: says it was called, with what.
    spy = t / "spy"
    spy.write_text('#!/bin/sh\necho "handed over: $*" >&2\nexit 99\n')
    spy.chmod(0o755)
    return t


def fill(world: Path, args: list[str]) -> list[str]:
    rd = (world / "repodigest").read_text()
    return [a.format(t=world, digest=(world / "digest").read_text(), rd=rd, rd8=rd[:8], rd6=rd[:6]) for a in args]


def mount_state(mnt: Path) -> tuple | None:
    """What is mounted on mnt: filesystem type, source, mount options (None: nothing). The parent
    is resolved, not mnt itself: a stopped FUSE daemon never answers a stat of its mount point."""
    target = os.path.join(os.path.realpath(os.path.dirname(mnt)), os.path.basename(mnt))
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf, rf = left.split(" "), right.split(" ")
            if cm._unescape_field(lf[4]) == target:
                found = (rf[0], rf[1], lf[5])
    return found


def clean(world: Path) -> None:
    mnt = world / "mnt"
    while mount_state(mnt) is not None:
        subprocess.run(["umount", "-l", mnt], check=True)
    for d in ("upper", "work"):
        shutil.rmtree(world / d)
        (world / d).mkdir()


def run(program: Path, args: list[str], world: Path, spy: bool = False, cfs_repo: str | None = None) -> tuple:
    """Run program with args in world; cfs_repo: $CFS_REPO (None: unset)."""
    env = dict(os.environ)
    env.pop("CFSCTL_PYTHON_CLI", None)
    env.pop("CFS_REPO", None)
    if cfs_repo is not None:
        env["CFS_REPO"] = cfs_repo
    if spy:
        env["CFSCTL_PYTHON_CLI"] = str(world / "spy")
    r = subprocess.run([program, *args], capture_output=True, env=env, cwd=world, timeout=120)
    # A FUSE daemon's process id is the one thing two runs cannot share.
    stdout = re.sub(rb'"pid": [0-9]+', b'"pid": N', r.stdout)
    return r.returncode, stdout, r.stderr, mount_state(world / "mnt")


# (command line, True when the front runs it itself); {t} is the fixture's directory.
MOUNTS = [
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects"], True),
    (["--json", "mount", "{t}/img.cfs", "{t}/mnt", "--basedir={t}/objects"], True),
    (["mount", "img.cfs", "mnt", "-o", "basedir={t}/objects", "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "-obasedir={t}/objects,ro,nodev,nosuid", "--backend", "overlay",
      "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--options", "basedir={t}/empty:{t}/objects", "--verity-check", "0",
      "--json"], True),
    (["--repo", "{t}/repo", "mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--repo", "{t}/repo",
      "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--upperdir", "{t}/upper",
      "--workdir", "{t}/work", "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "-o", "basedir={t}/objects,upperdir={t}/upper,workdir={t}/work,rw"], True),
    # Errors from the mount code: same words, exit status 1, JSON under --json.
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--digest", "{digest}", "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--digest", "00" * 32], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--digest", "xyz", "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--verity-check", "1"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "-o", "basedir={t}/objects,verity"], True),
    (["mount", "{t}/img.cfs", "{t}/nothing", "--basedir", "{t}/objects"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/nothing", "--json"], True),
    (["mount", "{t}/nothing.cfs", "{t}/mnt", "--basedir", "{t}/objects"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "-o", "basedir={t}/objects,bogus"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "-o", "basedir={t}/objects,bogus", "--json"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--backend", "kernel"], True),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--upperdir", "{t}/upper"], True),
    # Repository images by name or digest: looked up by the same Rust rules, same words.
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "app", "mnt", "--repo={t}/repo"], True),
    (["--repo", "{t}/repo", "--json", "mount", "app", "{t}/mnt"], True),
    (["--repo", "{t}/nothing", "mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "{rd}", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "sha256:{rd8}", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "{rd6}", "{t}/mnt", "--repo", "{t}/repo"], True),  # ambiguous prefix
    (["mount", "abcdef12", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),  # digest-shaped, no image
    (["mount", "nosuch", "{t}/mnt", "--repo", "{t}/repo"], True),
    (["mount", "file", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),  # a ref, and a file here
    (["mount", "nosuch", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "link", "{t}/mnt", "--repo", "{t}/repo"], True),  # a symlink ref: never followed
    (["mount", "foreign", "{t}/mnt", "--repo", "{t}/repo"], True),  # another user's ref
    (["mount", "dangling", "{t}/mnt", "--repo", "{t}/repo", "--json"], True),
    (["mount", "corrupt", "{t}/mnt", "--repo", "{t}/repo"], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--digest", "00" * 32], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--digest", "xyz", "--json"], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "-o", "ro,nodev", "--backend", "overlay", "--json"], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--upperdir", "{t}/upper", "--workdir", "{t}/work"], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/nothing"], True),
    (["mount", "app", "{t}/mnt", "--repo", "{t}/file", "--json"], True),
    # Handed over: repository names it is unsure of, FUSE, click's own checks, help, other
    # commands, odd text.
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo-meta", "--json"], False),
    (["mount", "img.cfs", "{t}/mnt", "--repo", "{t}/repo"], False),  # not found, a file here: Python's hint
    (["mount", "app", "{t}/mnt", "--repo", "{t}/repo", "--fuse"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--backend", "fuse", "--json"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--verity-check", "3"], False),
    (["mount", "{t}/img.cfs", "{t}/file", "--basedir", "{t}/objects"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--mount-api", "legacy"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects", "--", "x"], False),
    (["mount", "{t}/img.cfs", "{t}/mnt", "--basedir", "{t}/objects\u00e9", "--json"], False),
    (["mount", "--help"], False),
    (["images", "--repo", "{t}/repo", "--json"], False),
    (["--version"], False),
    ([], False),
]


@pytest.mark.parametrize("args,native", MOUNTS, ids=[" ".join(a)[:60] for a, _ in MOUNTS])
def test_mount_front_matches_the_python_cli(world, args, native):
    args = fill(world, args)
    clean(world)
    spied = run(FRONT, args, world, spy=True)
    clean(world)
    handed = spied[2].startswith(b"handed over: ")
    assert handed != native, spied
    if handed:
        assert spied[2] == b"handed over: " + " ".join(args).encode() + b"\n"
    front = run(FRONT, args, world)
    clean(world)
    python = run(PYTHON_CLI, args, world)
    clean(world)
    assert front == python
    assert b"Traceback" not in front[2]


# Where --repo is given: (before the command, after it), repositories of the fixture; None: not given.
REPO_PLACES = {"before": ("repo", None), "after": (None, "repo"), "both": ("repo-c", "repo"), "none": (None, None)}
# The commands that take --repo: one the front serves itself, one it hands over.
REPO_COMMANDS = {"mount": (["mount", "app", "{t}/mnt", "--json"], True), "images": (["images", "--json"], False)}


@pytest.mark.parametrize("command", list(REPO_COMMANDS))
@pytest.mark.parametrize("env", [None, "repo-b"], ids=["env-unset", "env-repo-b"])
@pytest.mark.parametrize("place", list(REPO_PLACES))
def test_repo_on_the_command_line_beats_the_environment(world, command, env, place):
    """Both paths pick the repository by one rule: the command's own --repo, else the one before
    the command, else $CFS_REPO, else the default (the machine's, not looked at here)."""
    before, after = REPO_PLACES[place]
    want = after or before or env
    if want is None:
        pytest.skip("the default repository is the machine's")
    args, native = REPO_COMMANDS[command]
    args = (["--repo", "{t}/" + before] if before else []) + args + (["--repo", "{t}/" + after] if after else [])
    args = fill(world, args)
    cfs_repo = None if env is None else str(world / env)
    results = []
    for program, spy in ((FRONT, True), (FRONT, False), (PYTHON_CLI, False)):
        clean(world)
        results.append(run(program, args, world, spy=spy, cfs_repo=cfs_repo))
    clean(world)
    spied, front, python = results
    assert spied[2].startswith(b"handed over: ") != native, spied
    assert front == python
    assert front[0] == 0, front
    digests = {r: (world / r / "refs" / "app").read_text().strip() for r in ("repo", "repo-b", "repo-c")}
    if command == "mount":
        import json

        assert json.loads(front[1])["image"] == str(world / want / "images" / digests[want])
    else:
        assert [r for r, d in digests.items() if d.encode() in front[1]] == [want]


def _mount(world: Path) -> None:
    r = subprocess.run([PYTHON_CLI, "mount", world / "img.cfs", world / "mnt", "--basedir", world / "objects"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr


UMOUNTS = [
    (["umount", "{t}/mnt"], True, True),
    (["umount", "mnt", "--json"], True, True),
    (["--json", "umount", "-l", "{t}/mnt"], True, True),
    (["umount", "--lazy", "{t}/mnt/", "--json"], True, True),
    (["umount", "{t}/empty"], False, True),  # not a mount point: Python words it
    (["umount", "{t}/nothing", "--json"], False, False),
    (["umount", "{t}/mnt", "--help"], False, True),
    (["--repo", "{t}/repo", "umount", "{t}/mnt"], False, True),
]


@pytest.mark.parametrize("args,native,mounted", UMOUNTS, ids=[" ".join(a) for a, _, _ in UMOUNTS])
def test_umount_front_matches_the_python_cli(world, args, native, mounted):
    args = fill(world, args)
    results = []
    for program, spy in ((FRONT, True), (FRONT, False), (PYTHON_CLI, False)):
        clean(world)
        if mounted:
            _mount(world)
        results.append(run(program, args, world, spy=spy))
    clean(world)
    spied, front, python = results
    assert spied[2].startswith(b"handed over: ") != native, spied
    assert front == python
    if native:
        assert front[0] == 0 and front[3] is None


def test_umount_of_a_busy_mount_and_of_another_filesystem(world):
    """A busy mount: EBUSY worded as the Python CLI words it. A tmpfs: refused by Python's rule
    (the front hands it over and never unmounts it)."""
    out = []
    for program in (FRONT, PYTHON_CLI):
        clean(world)
        _mount(world)
        with open(world / "mnt" / "small"):
            out.append(run(program, ["umount", str(world / "mnt")], world))
    clean(world)
    assert out[0] == out[1] and out[0][0] == 1 and b"mount is busy" in out[0][2], out
    out = []
    for program in (FRONT, PYTHON_CLI):
        subprocess.run(["mount", "-t", "tmpfs", "none", world / "mnt"], check=True)
        try:
            out.append(run(program, ["umount", str(world / "mnt"), "--json"], world))
        finally:
            clean(world)
    assert out[0] == out[1] and out[0][0] == 1 and out[0][3][0] == "tmpfs", out


def test_front_names_a_missing_python_cli(world, tmp_path):
    """Installed without its Python half, the front says what it could not run (no crash)."""
    env = dict(os.environ, CFSCTL_PYTHON_CLI=str(tmp_path / "absent"))
    r = subprocess.run([FRONT, "images"], capture_output=True, env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr == f"cfsctl: error: {tmp_path / 'absent'}: cannot run the Python CLI: No such file or directory\n".encode()


def test_front_by_absolute_path_from_a_venv_not_on_path(world, tmp_path):
    """As the QEMU guest tests call it (tests/guest/cfsimage.py: the cfsctl beside
    sys.executable): by absolute path, the virtualenv not on PATH, from another directory, and
    through a symlink elsewhere (found on PATH by its bare name). The front still finds
    cfsctl-py for what it hands over, and mounts repository images itself."""
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "cfsctl").symlink_to(FRONT)
    env = {k: v for k, v in os.environ.items() if k not in ("CFSCTL_PYTHON_CLI", "VIRTUAL_ENV", "CFS_REPO")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    assert str(BIN) not in env["PATH"]
    cases = [
        (["images", "--repo", str(world / "repo"), "--json"], False),
        (["mount", "app", str(world / "mnt"), "--repo", str(world / "repo"), "--json"], True),
    ]
    # Without /proc (a bare chroot) /proc/self/exe is gone: the front goes by the path it was run by.
    unshare = shutil.which("unshare")
    no_proc = [unshare, "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs none /proc && exec "$@"', "sh"] if unshare else None
    ways = [([str(FRONT)], env["PATH"]), ([str(elsewhere / "cfsctl")], env["PATH"]),
            (["cfsctl"], f"{elsewhere}:{env['PATH']}")]
    if no_proc:
        ways += [(no_proc + argv0, path) for argv0, path in ways]
    for args, mounts in cases:
        want = None
        for argv0, path in ways + [([str(PYTHON_CLI)], env["PATH"])]:
            clean(world)
            if no_proc and argv0[0] == unshare and mounts:
                continue  # a mount made in another mount namespace is not seen here
            r = subprocess.run([*argv0, *args], capture_output=True, cwd=tmp_path, timeout=120,
                               env=dict(env, PATH=path))
            got = (r.returncode, r.stdout, r.stderr, mount_state(world / "mnt"))
            assert r.returncode == 0, (argv0, r.stderr)
            assert (got[3] is not None) == mounts
            assert want is None or got == want, argv0
            want = got
    clean(world)


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="this kernel has no FUSE (/dev/fuse)")
def test_umount_of_a_stopped_fuse_daemons_mount_is_handed_over_at_once(world):
    """A FUSE mount is the Python CLI's, and the front tells so from mountinfo alone: with the
    daemon stopped before anything looked at the mount (its root's attributes not even cached), the
    front hands the command line over at once, and both paths unmount it the same way."""
    import json
    import signal
    import time

    args = ["umount", str(world / "mnt"), "--json"]
    results = []
    for program, spy in ((FRONT, True), (FRONT, False), (PYTHON_CLI, False)):
        clean(world)
        r = subprocess.run([PYTHON_CLI, "mount", world / "img.cfs", world / "mnt", "--basedir", world / "objects",
                            "--fuse", "--json"], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        pid = json.loads(r.stdout)["pid"]
        try:
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            results.append(run(program, args, world, spy=spy))
            assert time.monotonic() - t0 < 10, (program, spy)
        finally:
            os.kill(pid, signal.SIGKILL)
    clean(world)
    spied, front, python = results
    assert spied[2] == b"handed over: " + " ".join(args).encode() + b"\n", spied
    assert front == python and front[0] == 0 and front[3] is None, (front, python)
