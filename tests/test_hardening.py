# SPDX-License-Identifier: MIT OR Apache-2.0
"""Regression tests for the cases an outside review reproduced (issue #17, point 1): names that
lose data, world-writable repositories and planted entries, tracebacks on a corrupt repository,
unbounded memory and inputs, leftover temporaries, terminal-unsafe bytes in messages.

Each test does what the review did, as a user would: through the CLI, as root and (where the
point is what another user can do) as user nobody."""

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cfsrun import cfsctl

from composefs.repository import NAME_MAX, Repository

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user and runuser need root")


def run_ok(*args, umask=None):
    r = cfsctl(*args) if umask is None else _cfsctl_umask(umask, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def _cfsctl_umask(umask, *args):
    return subprocess.run([sys.executable, "-m", "composefs.cli", *map(os.fspath, args)], capture_output=True,
                          timeout=300, preexec_fn=lambda: os.umask(umask))


def no_traceback(r):
    assert b"Traceback" not in r.stderr and b"Traceback" not in r.stdout, r.stderr


def images(repo):
    return {i["name"]: i for i in json.loads(run_ok("images", "--repo", repo, "--json").stdout)}


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    run_ok("init", "--repo", path)
    return path


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(20000))
    (src / "d" / "other").write_bytes(os.urandom(30000))
    (src / "small").write_bytes(b"inline")
    return src


def objects_of(repo):
    return sorted(p for p in (repo / "objects").rglob("*") if p.is_file())


# --- 1. names --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, why", [
    ("keep.tmp-1-1", "'.tmp' is reserved"),
    ("keep.tmp", "'.tmp' is reserved"),
    ("a.tmp123-4-5", "'.tmp' is reserved"),
    ("x" * (NAME_MAX + 1), f"at most {NAME_MAX}"),
    ("x" * 255, f"at most {NAME_MAX}"),
    ("deadbeef", "shaped like an image digest"),
    ("ABCDEF012345", "shaped like an image digest"),
    ("a" * 64, "shaped like an image digest"),
    ("sha256:abc", "shaped like an image digest"),
    ("-x", "not starting with"),
    (".x", "not starting with"),
    ("a/b", "letters, digits"),
])
def test_names_that_would_lose_data_are_refused_before_anything_is_stored(repo, tree, name, why):
    r = cfsctl("import", tree, "--name", name, "--repo", repo)
    no_traceback(r)
    assert r.returncode == 1 and b"invalid image name" in r.stderr and why.encode() in r.stderr
    assert os.listdir(repo / "images") == [] and os.listdir(repo / "refs") == [] and objects_of(repo) == []


def test_longest_name_survives_import_images_and_gc(repo, tree):
    name = "n" * NAME_MAX
    run_ok("import", tree, "--name", name, "--repo", repo)
    run_ok("import", tree, "--name", "cafe", "--repo", repo)  # hex, but too short for a digest prefix
    assert set(images(repo)) == {name, "cafe"}
    run_ok("rm", "cafe", "--repo", repo)
    before = objects_of(repo)
    gc = json.loads(run_ok("gc", "--repo", repo, "--json").stdout)
    assert gc["images_removed"] == [] and objects_of(repo) == before
    assert b"0 problems" in run_ok("fsck", "--repo", repo).stdout


def test_a_ref_named_like_a_digest_never_shadows_that_image(repo, tree, tmp_path):
    run_ok("import", tree, "--name", "a", "--repo", repo)
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_bytes(b"different")
    run_ok("import", other, "--name", "b", "--repo", repo)
    da, db = images(repo)["a"]["digest"], images(repo)["b"]["digest"]
    # A ref written by an older cfsctl (or by hand) under a's digest, pointing at b.
    for shadow in (da, da[:12]):
        (repo / "refs" / shadow).write_text(db + "\n")
    r = Repository.open(repo)
    for lookup in (da, da[:12], "sha256:" + da, da.upper()):
        assert r.resolve(lookup) == da
    assert r.resolve("b") == db
    # fsck names the refs whose names the rule no longer allows
    probs = json.loads(cfsctl("fsck", "--repo", repo, "--json").stdout)["problems"]
    assert sorted((p["kind"], Path(p["path"]).name) for p in probs) == sorted([("ref-name", da), ("ref-name", da[:12])])


# --- 2. modes and trust ----------------------------------------------------------------------


def _modes(repo):
    out = {}
    for dirpath, dirs, files in os.walk(repo):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, repo)] = stat.S_IMODE(os.lstat(p).st_mode)
    out["."] = stat.S_IMODE(os.lstat(repo).st_mode)
    return out


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o077])
def test_fixed_modes_whatever_the_umask(tmp_path, tree, umask):
    repo = tmp_path / "repo"
    run_ok("init", "--repo", repo, umask=umask)
    run_ok("import", tree, "--name", "a", "--repo", repo, umask=umask)
    modes = _modes(repo)
    assert any(k.startswith("objects/") and len(k) > 12 for k in modes)
    for path, mode in modes.items():
        isdir = os.path.isdir(repo / path)
        want = 0o755 if isdir else (0o700 if path.startswith("tmp/") else 0o644)
        # fs-verity (where the filesystem has it) makes files read-only: 0444 is as good
        assert mode == want or (not isdir and mode == 0o444), (path, oct(mode), oct(umask))


@pytest.fixture
def reachable(tmp_path):
    """A directory user nobody can reach (pytest's tmp_path is 0700), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="cfs-harden-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@needs_root
@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_another_user_cannot_write_into_a_repository(reachable, tree, umask):
    """What the review did as an unprivileged user in a repository made under umask 000: plant
    an object, rewrite refs/, replace objects/XX. With fixed modes every attempt fails."""
    repo = reachable / "repo"
    run_ok("init", "--repo", repo, umask=umask)
    run_ok("import", tree, "--name", "a", "--repo", repo, umask=umask)
    obj = objects_of(repo)[0]
    attempts = [
        f"echo x > {repo}/objects/{obj.parent.name}/{'0' * 62}",
        f"echo x > {repo}/objects/ff",
        f"mkdir {repo}/objects/fe",
        f"echo x > {repo}/refs/a",
        f"echo x > {repo}/refs/new",
        f"echo x > {repo}/images/x",
        f"mv {repo}/objects/{obj.parent.name} {repo}/objects/gone",
        f"echo x >> {obj}",
    ]
    for cmd in attempts:
        r = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", cmd], capture_output=True, timeout=30)
        assert r.returncode != 0, cmd
    assert b"0 problems" in run_ok("fsck", "--repo", repo).stdout


def test_fsck_reports_directories_others_can_write(repo, tree):
    run_ok("import", tree, "--name", "a", "--repo", repo)
    assert b"0 problems" in run_ok("fsck", "--repo", repo).stdout
    _open_up(repo)
    r = cfsctl("fsck", "--repo", repo, "--json")
    assert r.returncode == 1
    got = {(p["kind"], os.path.relpath(p["path"], repo)) for p in json.loads(r.stdout)["problems"]}
    xx = {("mode", os.path.relpath(o.parent, repo)) for o in objects_of(repo)}
    assert got == {("mode", d) for d in (".", "objects", "images", "refs", "tmp")} | xx


def _open_up(repo):
    """A repository as an older cfsctl left it under umask 000: every directory 0777."""
    for dirpath, dirs, _ in os.walk(repo):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o777)
    os.chmod(repo, 0o777)


@needs_root
def test_object_planted_by_another_user_is_refused_not_reused(repo, tree, tmp_path):
    from composefs.fsverity import digest_file

    _open_up(repo)
    digest = digest_file(tree / "big").hex()
    sub = repo / "objects" / digest[:2]
    sub.mkdir(mode=0o777)
    os.chmod(sub, 0o777)
    planted = sub / digest[2:]
    nobody = pwd.getpwnam("nobody")
    planted.write_bytes(b"wrong content")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    r = cfsctl("import", tree, "--name", "a", "--repo", repo)
    no_traceback(r)
    assert r.returncode == 1 and b"refused" in r.stderr and str(planted).encode() in r.stderr
    assert not (repo / "refs" / "a").exists()
    probs = json.loads(cfsctl("fsck", "--repo", repo, "--json").stdout)["problems"]
    assert [(p["kind"], p["path"]) for p in probs if p["kind"] != "mode"] == [("object-refused", str(planted))]


@needs_root
def test_symlinked_object_directory_is_refused_never_written_through(repo, tree, tmp_path):
    from composefs.fsverity import digest_file

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    digest = digest_file(tree / "big").hex()
    (repo / "objects" / digest[:2]).symlink_to(outside)
    r = cfsctl("import", tree, "--name", "a", "--repo", repo)
    no_traceback(r)
    assert r.returncode == 1 and b"refused" in r.stderr and b"symlink" in r.stderr
    assert os.listdir(outside) == ["precious"]
    # gc never enters it either, fsck reports it
    run_ok("gc", "--repo", repo)
    assert os.listdir(outside) == ["precious"]
    probs = json.loads(cfsctl("fsck", "--repo", repo, "--json").stdout)["problems"]
    assert [(p["kind"], Path(p["path"]).name) for p in probs] == [("object-dir-refused", digest[:2])]


def test_fsck_refuses_symlinks_and_reports_strays(repo, tree):
    run_ok("import", tree, "--name", "a", "--repo", repo)
    obj = objects_of(repo)[0]
    obj.unlink()
    obj.symlink_to("/etc/passwd")
    (repo / "objects" / "junk").write_bytes(b"")
    (repo / "objects" / obj.parent.name / "not-a-digest").write_bytes(b"")
    (repo / "images" / "junk").write_bytes(b"")
    (repo / "stray").mkdir()
    (repo / "refs" / "b").symlink_to(repo / "refs" / "a")
    r = cfsctl("fsck", "--repo", repo, "--json")
    assert r.returncode == 1
    got = sorted((p["kind"], os.path.relpath(p["path"], repo)) for p in json.loads(r.stdout)["problems"])
    assert got == sorted([
        ("object-refused", os.path.relpath(obj, repo)),
        ("objects-missing", os.path.relpath(repo / "images" / images(repo)["a"]["digest"], repo)),
        ("stray", "objects/junk"),
        ("stray", f"objects/{obj.parent.name}/not-a-digest"),
        ("stray", "images/junk"),
        ("stray", "stray"),
        ("ref-refused", "refs/b"),
    ])
    # a symlinked ref names nothing: not listed, not resolved
    assert set(images(repo)) == {"a"}
    r = cfsctl("mount", "b", "/mnt", "--repo", repo)
    no_traceback(r)
    assert r.returncode != 0 and b"no image named 'b'" in r.stderr
    # and it can be removed (the symlink, not what it points at)
    run_ok("rm", "b", "--repo", repo)
    assert not os.path.lexists(repo / "refs" / "b") and (repo / "refs" / "a").is_file()


def test_symlinked_image_is_refused(repo, tree, tmp_path):
    run_ok("import", tree, "--name", "a", "--repo", repo)
    d = images(repo)["a"]["digest"]
    img = repo / "images" / d
    copy = tmp_path / "copy"
    shutil.copy(img, copy)
    img.unlink()
    img.symlink_to(copy)
    i = images(repo)["a"]
    assert "refused" in i["unreadable"] and "symlink" in i["unreadable"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for ref in ("a", d, d[:10]):
        r = cfsctl("mount", ref, mnt, "--repo", repo)
        no_traceback(r)
        assert r.returncode == 1 and b"refused: image is a symlink" in r.stderr and not os.path.ismount(mnt)
    kinds = [p["kind"] for p in json.loads(cfsctl("fsck", "--repo", repo, "--json").stdout)["problems"]]
    assert kinds == ["image-refused", "ref-dangling"]


# --- 3. no tracebacks on a corrupt repository -------------------------------------------------


def test_corrupt_image_images_and_gc_skip_it_and_say_so(repo, tree, tmp_path):
    run_ok("import", tree, "--name", "good", "--repo", repo)
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_bytes(os.urandom(9000))
    run_ok("import", other, "--name", "bad", "--repo", repo)
    run_ok("import", other / ".." / "src" / "d", "--name", "gone", "--repo", repo)
    run_ok("rm", "gone", "--repo", repo)
    bad = repo / "images" / images(repo)["bad"]["digest"]
    os.chmod(bad, 0o644)
    bad.write_bytes(b"\0" * 4096)
    r = cfsctl("images", "--repo", repo)
    no_traceback(r)
    assert r.returncode == 0 and b"unreadable" in r.stdout
    got = images(repo)
    assert "entries" in got["good"] and "bad magic" in got["bad"]["unreadable"]
    before = objects_of(repo)
    r = cfsctl("gc", "--repo", repo)
    no_traceback(r)
    assert r.returncode == 0
    assert b"skipped" in r.stderr and str(bad).encode() in r.stderr and b"no object removed" in r.stderr
    assert objects_of(repo) == before  # what the unreadable image needs is unknown: all kept
    assert len(os.listdir(repo / "images")) == 4  # the unnamed image went (with its .json)
    r = json.loads(run_ok("gc", "--repo", repo, "--json").stdout)
    assert r["objects_kept"] and r["skipped"][0]["kind"] == "image-unreadable"


@pytest.mark.parametrize("meta", [b"[]", b"[1, 2]", b"42", b'"x"', b"{", b"\xff\xfe"])
def test_meta_json_that_is_not_an_object(repo, meta):
    (repo / "meta.json").write_bytes(meta)
    for cmd in ("images", "gc", "fsck"):
        r = cfsctl(cmd, "--repo", repo)
        no_traceback(r)
        assert r.returncode == 1 and r.stderr.startswith(b"cfsctl: error: ") and b"meta.json" in r.stderr


# --- 4. resources ----------------------------------------------------------------------------


def _deep_tree(root: Path, depth: int) -> None:
    """depth nested directories with 255-byte names (paths far beyond PATH_MAX)."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        for i in range(depth):
            name = f"{i:04d}" + "n" * 251
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def _peak_rss_and_output(*args):
    """Run cfsctl writing to a file; (peak RSS in bytes, output size). Measured by GNU time, whose
    child starts small: a child forked (or vforked) from pytest itself would report pytest's own
    RSS, which the kernel carries into the child's high-water mark across exec."""
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as rss:
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-m", "composefs.cli",
                            *map(os.fspath, args)], stdout=out, stderr=subprocess.PIPE, timeout=300)
        assert r.returncode == 0, r.stderr
        return int(rss.read().split()[-1]) * 1024, out.seek(0, os.SEEK_END)


@pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="measures peak memory with GNU time (apt: time)")
def test_info_ls_and_dump_memory_does_not_grow_with_depth(tmp_path):
    src = tmp_path / "deep"
    _deep_tree(src, 800)
    img = tmp_path / "deep.cfs"
    run_ok("build", src, img)
    assert img.stat().st_size < 512 * 1024
    for sub in ("ls", "dump"):
        rss, size = _peak_rss_and_output("info", sub, img)
        # ~82 MB of output (the sum of 800 ever longer paths); the walk holds one path
        assert size > 80_000_000
        assert rss < 48 * 1024 * 1024, (sub, rss)


def test_info_refuses_what_is_not_a_regular_file_of_bounded_size(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse
    for path, why in ((fifo, b"not a regular file"), ("/dev/zero", b"not a regular file"),
                      (big, b"image too large")):
        for sub in ("ls", "dump", "objects", "header"):
            r = subprocess.run([sys.executable, "-m", "composefs.cli", "info", sub, path], capture_output=True,
                               timeout=30)
            no_traceback(r)
            assert r.returncode == 1 and why in r.stderr, (path, sub, r.stderr)


def test_build_sweeps_temporaries_of_killed_builds(tmp_path, tree):
    img = tmp_path / "out.cfs"
    dead = _dead_pid()
    stale = [tmp_path / f".out.cfs.tmp{dead}-123-0", tmp_path / f".cfs.tmp{dead}-5-1"]
    live = tmp_path / f".out.cfs.tmp{os.getpid()}-1-0"  # a running build's: kept
    other = tmp_path / f".other.cfs.tmp{dead}-1-0"  # another image's: left to its own builds
    for p in stale + [live, other]:
        p.write_bytes(b"partial")
    run_ok("build", tree, img)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "out.cfs", "src"])


def test_killed_build_leftover_is_swept_by_the_next_build(tmp_path):
    """The reproduction itself: kill -9 a build while it writes IMAGE, then build again."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(20000):
        (src / f"f{i:05d}").write_bytes(b"x" * (i % 60 + 1))
    img = tmp_path / "img.cfs"
    p = subprocess.Popen([sys.executable, "-m", "composefs.cli", "build", src, img])
    while not [e for e in os.listdir(tmp_path) if e.startswith(".img.cfs.tmp")]:
        if p.poll() is not None:
            pytest.skip("the build finished before a temporary was seen")
    p.kill()
    p.wait()
    if not [e for e in os.listdir(tmp_path) if e.startswith(".img.cfs.tmp")]:
        pytest.skip("the build finished its rename before the kill")
    run_ok("build", src, img)
    assert not [e for e in os.listdir(tmp_path) if ".tmp" in e]


def _dead_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


# --- 5. messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("info", "ls", "x\x1b[2J\nfake: all good\x07"),
    ("import", "x\x1b]0;title\x07\ny", "--name", "ok"),
    ("import", ".", "--name", "a\x1b[31m\nb"),
    ("mount", "n\x1b[31m\nx", "/mnt"),
])
def test_terminal_unsafe_bytes_are_escaped_in_messages(repo, tmp_path, args):
    r = subprocess.run([sys.executable, "-m", "composefs.cli", *args, "--repo", os.fspath(repo)]
                       if args[0] in ("import", "mount") else [sys.executable, "-m", "composefs.cli", *args],
                       capture_output=True, timeout=60, cwd=tmp_path)
    no_traceback(r)
    assert r.returncode != 0
    assert r.stderr.startswith(b"cfsctl: error: ") and r.stderr.count(b"\n") == 1, r.stderr
    assert not any(c < 0x20 and c != 0x0A or c == 0x7F for c in r.stderr), r.stderr
    assert b"\\x1b" in r.stderr or b"\\x1b" in r.stderr.replace(b"\\\\", b"\\")


def test_undecodable_path_bytes_are_escaped(tmp_path):
    bad = os.fsencode(tmp_path) + b"/caf\xe9\x1b.img"
    r = subprocess.run([os.fsencode(sys.executable), b"-m", b"composefs.cli", b"info", b"ls", bad],
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and b"caf\\xe9\\x1b.img" in r.stderr and b"No such file" in r.stderr
    r.stderr.decode("utf-8")  # valid UTF-8 whatever the name held


def test_gc_keeps_what_it_cannot_know_to_be_unused(repo, tree, tmp_path):
    run_ok("import", tree, "--name", "a", "--repo", repo)
    run_ok("import", tree / "d", "--name", "b", "--repo", repo)
    db = images(repo)["b"]["digest"]
    run_ok("rm", "b", "--repo", repo)
    # an unreadable ref might name b: nothing named is removed, and gc says why
    os.mkfifo(repo / "refs" / "odd")
    r = cfsctl("gc", "--repo", repo)
    no_traceback(r)
    assert r.returncode == 0 and b"no image removed" in r.stderr and b"refs/odd" in r.stderr
    assert (repo / "images" / db).exists()
    os.unlink(repo / "refs" / "odd")
    # directories where an unused image or object would be are not ours: left alone, reported
    obj = objects_of(repo)[0]
    stray_obj = obj.parent / ("0" * 62)
    stray_obj.mkdir()
    stray_img = repo / "images" / ("1" * 64)
    stray_img.mkdir()
    r = cfsctl("gc", "--repo", repo, "--json")
    no_traceback(r)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["images_removed"] == [db]
    assert sorted(p["path"] for p in out["skipped"]) == sorted([str(stray_obj), str(stray_img)])
    assert stray_obj.is_dir() and stray_img.is_dir() and not (repo / "images" / db).exists()


def _as_nobody(*args, umask=0o022):
    """cfsctl run by user nobody, with Debian's Python (the virtualenv's interpreter lives under
    /root, which nobody cannot enter) and this checkout's modules."""
    site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__import__("composefs").__file__)))
    return subprocess.run(["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={pkg}:{site}", "/usr/bin/python3",
                           "-m", "composefs.cli", *map(os.fspath, args)], capture_output=True, timeout=300,
                          preexec_fn=lambda: os.umask(umask))


@needs_root
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs Debian's /usr/bin/python3 for nobody")
def test_repository_of_an_unprivileged_user_trusts_its_owner_and_root(reachable):
    src = reachable / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(10000))
    os.chmod(src / "d" / "f", 0o644)
    for p in (src, src / "d"):
        os.chmod(p, 0o755)
    home = reachable / "home"
    home.mkdir()
    os.chown(home, pwd.getpwnam("nobody").pw_uid, -1)
    repo = home / "repo"
    for args in (("init", "--repo", repo), ("import", src, "--name", "mine", "--repo", repo)):
        r = _as_nobody(*args, umask=0o000)
        assert r.returncode == 0, r.stderr
    nobody = pwd.getpwnam("nobody").pw_uid
    for path, mode in _modes(repo).items():
        assert os.lstat(repo / path).st_uid == nobody
        assert mode in ((0o755,) if os.path.isdir(repo / path) else (0o644, 0o444)), (path, oct(mode))
    # root works in nobody's repository; each trusts what the other made
    (src / "more").write_bytes(os.urandom(7000))
    run_ok("import", src, "--name", "roots", "--repo", repo)
    assert b"0 problems" in run_ok("fsck", "--repo", repo).stdout
    r = _as_nobody("fsck", "--repo", repo)
    assert r.returncode == 0 and b"0 problems" in r.stdout, r.stderr
    assert json.loads(_as_nobody("images", "--repo", repo, "--json").stdout)[0]["name"] == "mine"
    # nobody in root's repository: refused by the modes, with a message, not a traceback
    rootrepo = reachable / "rootrepo"
    run_ok("init", "--repo", rootrepo, umask=0o000)
    r = _as_nobody("import", src, "--name", "x", "--repo", rootrepo, umask=0o000)
    no_traceback(r)
    assert r.returncode == 1 and b"Permission denied" in r.stderr
