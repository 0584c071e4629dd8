# SPDX-License-Identifier: MIT OR Apache-2.0
"""Repository commands: init, import (directory and dump), images, rm, gc, fsck, mount by name or
digest; locking (concurrent imports, gc during an import), kill -9 during import, corruption."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfsrun import cfsctl

from composefs.fsverity import digest_file
from composefs.repository import Repository, default_path


def run_ok(*args, env_repo=None):
    r = cfsctl(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def make_tree(root: Path, seed: int, shared: bytes) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "shared.bin").write_bytes(shared)
    (root / "sub" / f"own-{seed}.bin").write_bytes(os.urandom(10000 + seed))
    (root / "small").write_bytes(b"tiny %d" % seed)
    (root / "link").symlink_to("sub")
    os.link(root / "shared.bin", root / "sub" / "hardlink")


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    run_ok("init", "--repo", path)
    return path


@pytest.fixture
def trees(tmp_path):
    shared = os.urandom(200000)
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a, 1, shared)
    make_tree(b, 2, shared)
    return a, b


def images(repo):
    return {i["name"]: i for i in json.loads(run_ok("images", "--repo", repo, "--json").stdout)}


def test_init_layout_and_idempotent(repo):
    for d in ("objects", "images", "refs"):
        assert (repo / d).is_dir()
    meta = json.loads((repo / "meta.json").read_text())
    assert meta == {"format": "composefs-repository", "version": 1}
    run_ok("init", "--repo", repo)
    r = cfsctl("images", "--repo", repo.parent / "nothing")
    assert r.returncode != 0 and b"not a composefs repository" in r.stderr and b"Traceback" not in r.stderr


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("CFS_REPO", str(tmp_path / "x"))
    assert default_path() == str(tmp_path / "x")
    monkeypatch.delenv("CFS_REPO")
    expected = "/var/lib/composefs" if os.geteuid() == 0 else os.path.expanduser("~/.local/share/composefs")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_path() == expected


def test_import_images_sharing(repo, trees):
    a, b = trees
    run_ok("import", a, "--name", "a", "--repo", repo)
    out = run_ok("import", b, "--name", "b", "--repo", repo, "--json").stdout
    rb = json.loads(out)
    assert rb["missing_objects"] == 0
    imgs = images(repo)
    # the image file is named by its digest, and refs point at it
    for name in ("a", "b"):
        d = imgs[name]["digest"]
        assert (repo / "refs" / name).read_text().strip() == d
        assert digest_file(repo / "images" / d).hex() == d
        assert imgs[name]["entries"] == 7  # /, sub, shared.bin, own, small, link, hardlink
    shared_size = 200000
    for name, own in (("a", 10001), ("b", 10002)):
        assert imgs[name]["object_bytes"] == shared_size + own
        assert imgs[name]["shared_bytes"] == shared_size
        assert imgs[name]["unique_bytes"] == own
    # objects stored once
    objs = [p for p in (repo / "objects").rglob("*") if p.is_file()]
    assert len(objs) == 3
    text = run_ok("images", "--repo", repo).stdout.decode()
    assert "a " in text and imgs["b"]["digest"][:12] in text


def test_import_no_hardlinks_matches_build(repo, trees):
    a, _ = trees
    keep = json.loads(run_ok("import", a, "--name", "keep", "--hardlinks", "--repo", repo, "--json").stdout)
    split = json.loads(run_ok("import", a, "--name", "split", "--repo", repo, "--json").stdout)
    assert keep["digest"] != split["digest"]
    for r, flags in ((keep, ["--hardlinks"]), (split, ["--no-hardlinks"]), (split, [])):
        built = run_ok("build", *flags, "--print-digest-only", a).stdout.decode().split()[-1]
        assert built.removeprefix("sha256:") == r["digest"]
    dumps = {n: run_ok("info", "dump", repo / "images" / r["digest"]).stdout for n, r in
             (("keep", keep), ("split", split))}
    assert b" @" in dumps["keep"] and b" @" not in dumps["split"]
    r = cfsctl("import", a, "--name", "x", "--from-dump", "--no-hardlinks", "--repo", repo)
    assert r.returncode != 0 and b"--no-hardlinks" in r.stderr and b"Traceback" not in r.stderr


def test_import_dump_reports_missing_objects(repo, trees, tmp_path):
    a, _ = trees
    run_ok("import", a, "--name", "a", "--repo", repo)
    dump = run_ok("info", "dump", repo / "images" / images(repo)["a"]["digest"]).stdout
    (tmp_path / "a.dump").write_bytes(dump)
    r = json.loads(run_ok("import", "--from-dump", tmp_path / "a.dump", "--name", "d", "--repo", repo, "--json").stdout)
    assert r["missing_objects"] == 0 and r["digest"] == images(repo)["a"]["digest"]
    # a dump whose object is not in the store
    extra = b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 5000 100644 1 0 0 0 0.0 ab/" + b"c" * 62 + b" - ab" + b"c" * 62 + b"\n"
    r = cfsctl("import", "--from-dump", "-", "--name", "m", "--repo", repo, input=extra)
    assert r.returncode == 0, r.stderr
    assert b"1 of 1 objects are not in the repository" in r.stderr
    r = cfsctl("import", "--from-dump", "-", "--name", "bad", "--repo", repo, input=b"garbage\n")
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    # fsck reports the image with a missing object
    r = cfsctl("fsck", "--repo", repo, "--json")
    assert r.returncode == 1
    kinds = [p["kind"] for p in json.loads(r.stdout)["problems"]]
    assert kinds == ["objects-missing"]


def test_bad_names_and_missing(repo, trees):
    a, _ = trees
    for bad in (".hidden", "a/b", "", "x" * 300):
        r = cfsctl("import", a, "--name", bad, "--repo", repo)
        assert r.returncode != 0 and b"invalid image name" in r.stderr
    r = cfsctl("rm", "nope", "--repo", repo)
    assert r.returncode != 0 and b"no image named" in r.stderr
    r = cfsctl("import", a / "nope", "--name", "x", "--repo", repo)
    assert r.returncode != 0 and b"Traceback" not in r.stderr


def test_rm_gc(repo, trees):
    a, b = trees
    run_ok("import", a, "--name", "a", "--repo", repo)
    run_ok("import", b, "--name", "b", "--repo", repo)
    da = images(repo)["a"]["digest"]
    run_ok("rm", "a", "--repo", repo)
    assert set(images(repo)) == {"b"}
    dry = json.loads(run_ok("gc", "--dry-run", "--repo", repo, "--json").stdout)
    assert dry["images_removed"] == [da] and dry["objects_removed"] == 1
    assert (repo / "images" / da).exists()
    r = json.loads(run_ok("gc", "--repo", repo, "--json").stdout)
    assert r["images_removed"] == [da] and r["objects_removed"] == 1
    assert not (repo / "images" / da).exists() and not (repo / "images" / (da + ".json")).exists()
    assert len([p for p in (repo / "objects").rglob("*") if p.is_file()]) == 2
    assert images(repo)["b"]["unique_bytes"] == 210002
    run_ok("fsck", "--repo", repo)
    # nothing left to collect
    assert json.loads(run_ok("gc", "--repo", repo, "--json").stdout)["objects_removed"] == 0


def test_fsck_finds_corruption(repo, trees):
    a, _ = trees
    run_ok("import", a, "--name", "a", "--repo", repo)
    assert b"0 problems" in run_ok("fsck", "--repo", repo).stdout
    obj = max((p for p in (repo / "objects").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(obj.read_bytes())
    data[12345] ^= 1
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))
    d = images(repo)["a"]["digest"]
    img = repo / "images" / d
    os.chmod(img, 0o644)
    with open(img, "ab") as f:
        f.write(b"\0")
    r = cfsctl("fsck", "--repo", repo, "--json")
    assert r.returncode == 1
    probs = json.loads(r.stdout)["problems"]
    assert {(p["kind"], Path(p["path"]).name) for p in probs} == {("object-corrupt", obj.name), ("image-corrupt", d)}
    r = cfsctl("fsck", "--repo", repo)
    assert r.returncode == 1 and b"object-corrupt" in r.stderr and b"2 problems" in r.stdout
    # a removed object is reported as missing for the image
    obj.unlink()
    img.write_bytes(img.read_bytes()[:-1])
    probs = json.loads(cfsctl("fsck", "--repo", repo, "--json").stdout)["problems"]
    assert [p["kind"] for p in probs] == ["objects-missing"]


def _big_tree(root: Path, files: int, size: int, seed: int) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"f{i}").write_bytes(os.urandom(size))


def test_two_imports_at_once(repo, tmp_path):
    _big_tree(tmp_path / "x", 40, 200000, 1)
    _big_tree(tmp_path / "y", 40, 200000, 2)
    shutil.copy(tmp_path / "x" / "f0", tmp_path / "y" / "same")
    procs = [subprocess.Popen([sys.executable, "-m", "composefs.cli", "import", tmp_path / n, "--name", n,
                               "--repo", repo], stderr=subprocess.PIPE) for n in ("x", "y")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert set(images(repo)) == {"x", "y"}
    run_ok("fsck", "--repo", repo)


def test_gc_during_import_keeps_what_import_needs(repo, tmp_path):
    _big_tree(tmp_path / "x", 60, 300000, 1)
    imp = subprocess.Popen([sys.executable, "-m", "composefs.cli", "import", tmp_path / "x", "--name", "x",
                            "--repo", repo], stderr=subprocess.PIPE)
    # start gc as soon as the import holds the lock and has begun storing objects
    deadline = time.time() + 60
    while time.time() < deadline and imp.poll() is None and not any(
            p.is_file() for p in (repo / "objects").rglob("*")):
        time.sleep(0.002)
    assert imp.poll() is None, "import finished before gc could start; make the tree bigger"
    gc = subprocess.run([sys.executable, "-m", "composefs.cli", "gc", "--repo", repo, "--json"],
                        capture_output=True, timeout=300)
    assert imp.wait(timeout=300) == 0, imp.stderr.read()
    assert gc.returncode == 0, gc.stderr
    assert images(repo)["x"]["objects"] == 60
    run_ok("fsck", "--repo", repo)


def test_gc_waits_for_lock_holders(repo, tmp_path):
    """An import (shared lock) has put an object in the store that no ref reaches yet: gc waits."""
    from composefs import _native

    r = Repository.open(repo)
    f = tmp_path / "content"
    f.write_bytes(os.urandom(100000))
    with r.locked():
        digest = _native.store_insert(r.objects, f).digest
        obj = repo / "objects" / digest[:2] / digest[2:]
        gc = subprocess.Popen([sys.executable, "-m", "composefs.cli", "gc", "--repo", repo, "--json"],
                              stdout=subprocess.PIPE)
        time.sleep(1.5)
        assert gc.poll() is None and obj.exists()
    out, _ = gc.communicate(timeout=60)
    assert gc.returncode == 0 and json.loads(out)["objects_removed"] == 1
    assert not obj.exists()


def test_kill_during_import_then_fsck(repo, tmp_path):
    _big_tree(tmp_path / "x", 80, 500000, 3)
    for delay in (0.2, 0.5, 1.0):
        p = subprocess.Popen([sys.executable, "-m", "composefs.cli", "import", tmp_path / "x", "--name", "x",
                              "--repo", repo], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = cfsctl("fsck", "--repo", repo, "--json")
        assert r.returncode == 0, r.stdout
        # leftovers of the killed process are gone after that command
        assert list((repo / "tmp").iterdir()) == []
        assert not [e for e in os.listdir(repo / "images") if ".tmp" in e]
    run_ok("import", tmp_path / "x", "--name", "x", "--repo", repo)
    run_ok("gc", "--repo", repo)
    run_ok("fsck", "--repo", repo)
    assert images(repo)["x"]["objects"] == 80


def test_kill_during_gc_then_fsck(repo, tmp_path):
    _big_tree(tmp_path / "keep", 20, 50000, 4)
    run_ok("import", tmp_path / "keep", "--name", "keep", "--repo", repo)
    for delay in (0.05, 0.15, 0.3):
        src = tmp_path / f"junk{delay}"
        _big_tree(src, 1500, 100, 5)
        run_ok("import", src, "--name", "junk", "--repo", repo)
        run_ok("rm", "junk", "--repo", repo)
        p = subprocess.Popen([sys.executable, "-m", "composefs.cli", "gc", "--repo", repo],
                             stdout=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = cfsctl("fsck", "--repo", repo, "--json")
        assert r.returncode == 0, r.stdout
    run_ok("gc", "--repo", repo)
    assert images(repo)["keep"]["objects"] == 20
    assert len([p for p in (repo / "objects").rglob("*") if p.is_file()]) == 20
    run_ok("fsck", "--repo", repo)


def test_api_resolve(repo, trees):
    a, _ = trees
    run_ok("import", a, "--name", "a", "--repo", repo)
    r = Repository.open(repo)
    d = r.refs()["a"]
    assert r.resolve("a") == d == r.resolve(d) == r.resolve(d[:10]) == r.resolve("sha256:" + d)
    with pytest.raises(Exception, match="no image named"):
        r.resolve("zzz")


root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@root
def test_mount_by_name_and_digest(repo, trees, tmp_path):
    a, _ = trees
    run_ok("import", a, "--name", "a", "--hardlinks", "--repo", repo)
    d = images(repo)["a"]["digest"]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for ref in ("a", d, d[:12]):
        run_ok("mount", ref, mnt, "--repo", repo)
        try:
            assert (mnt / "shared.bin").read_bytes() == (a / "shared.bin").read_bytes()
            assert (mnt / "sub" / "own-1.bin").read_bytes() == (a / "sub" / "own-1.bin").read_bytes()
            assert os.readlink(mnt / "link") == "sub"
            assert (mnt / "shared.bin").stat().st_ino == (mnt / "sub" / "hardlink").stat().st_ino
        finally:
            run_ok("umount", mnt)
    # a file path still works as before, with --basedir
    run_ok("mount", repo / "images" / d, mnt, "--basedir", repo / "objects")
    run_ok("umount", mnt)
    r = cfsctl("mount", repo / "images" / d, mnt)
    assert r.returncode != 0 and b"--basedir" in r.stderr
    # a corrupted image file is refused when mounted by name
    img = repo / "images" / d
    os.chmod(img, 0o644)
    data = bytearray(img.read_bytes())
    data[-1] ^= 1
    img.write_bytes(bytes(data))
    r = cfsctl("mount", "a", mnt, "--repo", repo)
    assert r.returncode != 0 and b"digest mismatch" in r.stderr
    assert not os.path.ismount(mnt)
    r = cfsctl("mount", "nope", mnt, "--repo", repo)
    assert r.returncode != 0 and b"no image named" in r.stderr


# The name rule as the module comment documents it; the Rust core (native/base/src/repo.rs)
# implements it, and the Python Repository and the native cfsctl front both call that.
_NAME_DOC = __import__("re").compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+=-]*")
_DIGESTISH_DOC = __import__("re").compile(r"(sha256:)?[0-9a-f]{6,64}", __import__("re").IGNORECASE)


def _documented_name_ok(name: str) -> bool:
    return bool(_NAME_DOC.fullmatch(name)) and len(name) <= 200 and ".tmp" not in name \
        and not _DIGESTISH_DOC.fullmatch(name) and not name.lower().startswith("sha256:")


def test_name_rule_and_lookup_wording_follow_the_documented_rule(tmp_path):
    """Hypothesis: the core's name rule is the documented one (names near every edge: digits
    and hex, the sha256: prefix, '.tmp', a trailing newline, lengths around 200, any text), and
    a name that is not found is quoted in the error as Python's repr() quotes it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from composefs import _native
    from composefs.errors import CfsError

    r = Repository.init(tmp_path / "r")
    pieces = st.sampled_from(["a", "Z", "_", "0", "f", "sha256:", ".tmp", ".", "-", ":", "@", "\n", " ", "'",
                              '"', "\\", "é", "\xa0", "\x1b", "\u2028", "/", "abcdef", "x" * 60])
    names = st.one_of(st.lists(pieces, max_size=8).map("".join),
                      st.text(st.characters(max_codepoint=0x24f, exclude_categories=["Cs"]), max_size=12),
                      st.integers(190, 210).map(lambda n: "n" * n))

    @settings(max_examples=400, deadline=None)
    @given(names)
    def check(name):
        assert (_native.repo_name_problem(name) is None) == _documented_name_ok(name), name
        if "/" in name or not name or name in (".", ".."):
            return
        with pytest.raises(CfsError) as e:
            r.resolve(name)
        assert str(e.value) in (f"no image named {name!r} in repository {r.path}",
                                f"digest prefix {name!r} is ambiguous")

    check()
