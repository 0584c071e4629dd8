# SPDX-License-Identifier: MIT OR Apache-2.0
"""The public Python API (`import composefs`): every main job through it, checked against the CLI
and the conformance data, plus its error types. Mounting needs root and erofs + overlay."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys

import pytest

import composefs
from cfsrun import CONFORMANCE, CONFORMANCE_DUMPS as DUMPS, cfsctl, conformance_rows

def expected_rows() -> dict[str, dict[str, str]]:
    return {r["dump"]: r for r in conformance_rows()}


def make_tree(root, seed: int = 1) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "small").write_bytes(b"tiny\n")
    (root / "big").write_bytes(hashlib.sha256(bytes([seed])).digest() * 4000)
    (root / "empty").write_bytes(b"")
    os.link(root / "big", root / "sub" / "hard")
    os.symlink("../small", root / "sub" / "link")


def test_the_package_exports_what_it_documents():
    # Loaded on first use: the CLI, which imports the package, does not pay for the API.
    r = subprocess.run([sys.executable, "-c", "import composefs, sys; print('composefs.api' in sys.modules)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
    # Importing every submodule binds it as an attribute of the package: no public name may be
    # one of them, or the submodule would replace it.
    for module in ("api", "build", "cli", "errors", "fsverity", "mount", "mountapi",
                   "repository"):
        __import__(f"composefs.{module}")
    for name in composefs.__all__:
        obj = getattr(composefs, name)
        assert not isinstance(obj, type(os)), f"composefs.{name} is a module"
        assert name == "__version__" or obj.__doc__, f"{name} has no docstring"
    assert os.path.exists(os.path.join(os.path.dirname(composefs.__file__), "py.typed"))
    with pytest.raises(AttributeError):
        composefs.no_such_name  # noqa: B018


def test_digests_match_the_conformance_rows(tmp_path):
    data = b"".join(hashlib.sha256(b"cfs" + i.to_bytes(8, "little")).digest() for i in range(4097 // 32 + 1))[:4097]
    row = next(r for r in (CONFORMANCE / "fsverity.tsv").read_text().splitlines()[1:] if r.split("\t")[0] == "4097")
    want = row.split("\t")[1]
    assert composefs.digest_bytes(data).hex() == want
    (tmp_path / "f").write_bytes(data)
    assert composefs.digest_file(tmp_path / "f").hex() == want
    assert [d.hex() for d in composefs.digest_files([tmp_path / "f"])] == [want]


def test_build_from_directory_is_what_cfsctl_builds(tmp_path):
    make_tree(tmp_path / "src")
    store = tmp_path / "objects"
    r = composefs.build_from_directory(tmp_path / "src", tmp_path / "api.cfs", store=store, hardlinks=True)
    assert isinstance(r, composefs.BuildResult)
    assert (r.regular_files, r.inline_files, r.object_files, r.symlinks, r.hardlinks) == (3, 1, 1, 1, 1)
    assert r.objects == 1 and r.object_bytes == 128000 and r.bytes_stored == 128000 and r.bytes_reused == 0
    assert r.image is None
    c = cfsctl("build", tmp_path / "src", tmp_path / "cli.cfs", "--print-digest", "--hardlinks")
    assert c.returncode == 0, c.stderr
    assert c.stdout.decode().strip() == r.digest
    assert (tmp_path / "api.cfs").read_bytes() == (tmp_path / "cli.cfs").read_bytes()
    assert composefs.image_objects(tmp_path / "api.cfs") == [f"{d[:2]}/{d[2:]}" for d in
                                                              [composefs.digest_file(tmp_path / "src" / "big").hex()]]
    assert all((store / o).is_file() for o in composefs.image_objects(tmp_path / "api.cfs"))
    again = composefs.build_from_directory(tmp_path / "src", store=store, return_image=True)
    assert again.bytes_reused == 128000 and again.hardlinks == 0 and again.image is not None
    assert hashlib.sha256(again.image).hexdigest() != hashlib.sha256((tmp_path / "api.cfs").read_bytes()).hexdigest()


def test_build_from_dump_matches_the_reference(tmp_path):
    rows = expected_rows()
    for name in ("sample-tiny", "sample-1-1"):
        text = gzip.decompress((DUMPS / f"{name}.dump.gz").read_bytes())
        from_bytes = composefs.build_from_dump(text, return_image=True)
        row = rows[f"{name}.dump"]
        assert from_bytes.digest == row["image_fsverity_sha256"]
        assert from_bytes.version == int(row["composefs_version"])
        assert hashlib.sha256(from_bytes.image).hexdigest() == row["image_sha256"]
        (tmp_path / "d").write_bytes(text)
        from_path = composefs.build_from_dump(tmp_path / "d", tmp_path / f"{name}.cfs")
        assert from_path.digest == from_bytes.digest
        info = composefs.inspect_image(tmp_path / f"{name}.cfs")
        assert (info.version, info.digest) == (from_bytes.version, from_bytes.digest)
        # The dump of the image builds the same bytes again.
        assert composefs.build_from_dump(composefs.dump_image(tmp_path / f"{name}.cfs"),
                                         return_image=True).image == from_bytes.image
    listing = composefs.list_image(tmp_path / "sample-1-1.cfs")
    assert listing.count(b"\n") == composefs.dump_image(tmp_path / "sample-1-1.cfs").count(b"\n") - 1  # no "/"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: composefs.build_from_dump(b"/a 0 100644 1 0 0 0 0.0 - - -\n"), "line 1"),
        (lambda p: composefs.build_from_dump(p / "missing.dump"), None),
        (lambda p: composefs.build_from_dump(b"/ 4096 40755 2 0 0 0 0.0 - - -\n", min_version=3), "version"),
        (lambda p: composefs.build_from_directory(p / "missing"), "No such file"),
        (lambda p: composefs.inspect_image(p / "not-an-image"), "bad magic"),
        (lambda p: composefs.Repository(p), "not a composefs repository"),
    ],
    ids=["dump-syntax", "dump-missing", "bad-version", "source-missing", "not-an-image", "not-a-repository"],
)
def test_errors_are_typed(tmp_path, call, message):
    (tmp_path / "not-an-image").write_bytes(b"\0" * 8192)
    with pytest.raises((composefs.CfsError, OSError)) as e:
        call(tmp_path)
    if message is None:
        assert isinstance(e.value, FileNotFoundError)
    else:
        assert isinstance(e.value, composefs.CfsError) and message in str(e.value)


def test_repository_round(tmp_path):
    repo = composefs.Repository.create(tmp_path / "repo")
    assert composefs.Repository.create(tmp_path / "repo").path == repo.path  # opening again is harmless
    make_tree(tmp_path / "a", seed=1)
    make_tree(tmp_path / "b", seed=2)
    ra = repo.import_directory(tmp_path / "a", "a")
    rb = repo.import_directory(tmp_path / "b", "b")
    assert isinstance(ra, composefs.ImportResult) and ra.missing_objects == 0 and ra.entries == 7
    assert repo.resolve("a") == ra.digest == repo.resolve(ra.digest[:10])
    assert composefs.inspect_image(repo.image_path("b")).digest == rb.digest
    # A dump whose objects the store has: none missing; as text naming an absent object: one.
    dump = composefs.dump_image(repo.image_path("a"))
    assert repo.import_dump(dump, "a-again").missing_objects == 0
    (tmp_path / "other").mkdir()
    make_tree(tmp_path / "other", seed=3)
    composefs.build_from_directory(tmp_path / "other", tmp_path / "other.cfs")
    assert repo.import_dump(composefs.dump_image(tmp_path / "other.cfs"), "c").missing_objects == 1
    images = {i.name: i for i in repo.images()}
    assert set(images) == {"a", "a-again", "b", "c"}
    assert images["a"].digest == images["a-again"].digest and images["b"].unique_bytes == 128000
    assert repo.fsck().problems[0].kind == "objects-missing"
    assert repo.remove("c") and repo.remove("b") == rb.digest
    gc = repo.gc()
    assert isinstance(gc, composefs.GcResult) and gc.objects_removed == 1 and rb.digest in gc.images_removed
    assert repo.fsck().ok
    obj = composefs.image_objects(repo.image_path("a"))[0]
    os.chmod(os.path.join(repo.objects, obj), 0o644)
    with open(os.path.join(repo.objects, obj), "r+b") as f:
        f.write(b"X")
    assert [p.kind for p in repo.fsck().problems] == ["object-corrupt"]


def _have_fs(name: str) -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == [name] for line in f)


@pytest.mark.skipif(not (os.geteuid() == 0 and _have_fs("erofs") and _have_fs("overlay")),
                    reason="mounting needs root and erofs + overlay in /proc/filesystems")
def test_mount_and_unmount(tmp_path):
    make_tree(tmp_path / "src")
    composefs.build_from_directory(tmp_path / "src", tmp_path / "img.cfs", store=tmp_path / "objects")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = composefs.mount_image(tmp_path / "img.cfs", mnt, basedirs=tmp_path / "objects", options=["nodev"])
    try:
        assert isinstance(res, composefs.MountResult) and res.verity_check == 0
        assert (res.backend, res.mountpoint, res.image) == ("overlay", str(mnt), str(tmp_path / "img.cfs"))
        assert res.basedirs == [str(tmp_path / "objects")] and res.digest is None and not res.writable
        assert res.erofs_source in ("file", "loop") and res.mount_api and res.layers_by
        assert (mnt / "big").read_bytes() == (tmp_path / "src" / "big").read_bytes()
        assert os.readlink(mnt / "sub" / "link") == "../small"
    finally:
        composefs.unmount(mnt)
    assert not os.path.ismount(mnt)
    with pytest.raises(composefs.MountError, match="not a mount point"):
        composefs.unmount(mnt)
    repo = composefs.Repository.create(tmp_path / "repo")
    repo.import_directory(tmp_path / "src", "src")
    repo.mount("src", mnt)
    try:
        assert (mnt / "small").read_bytes() == b"tiny\n"
    finally:
        composefs.unmount(mnt)
