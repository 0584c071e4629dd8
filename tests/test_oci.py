# SPDX-License-Identifier: MIT OR Apache-2.0
"""cfsctl oci import: OCI layouts (directory and tar) and docker-save archives made by hand with
tarfile, exercising whiteouts, opaque directories, hardlinks across layers, replaced files,
xattrs and gzip/zstd layers."""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from cfsrun import cfsctl

BIG = {name: os.urandom(5000 + i) for i, name in enumerate(["tool", "other", "tool2", "gone-a", "keep", "opq-new"])}


def entry(tf, name, data=None, *, type=tarfile.REGTYPE, mode=0o644, linkname="", xattrs=None, mtime=1700000000,
          uid=0, gid=0, dev=(0, 0)):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.linkname = type, mode, mtime, uid, gid, linkname
    ti.devmajor, ti.devminor = dev
    if xattrs:
        ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def layer_bytes(build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


def layer1(tf):
    D = tarfile.DIRTYPE
    for d in ("etc", "usr", "usr/bin", "gone", "opq", "opq/sub"):
        entry(tf, d, type=D, mode=0o755)
    entry(tf, "etc/conf", b"old config\n")
    entry(tf, "usr/bin/tool", BIG["tool"], mode=0o755, uid=1000, gid=100)
    entry(tf, "usr/bin/other", BIG["other"], mode=0o755)
    entry(tf, "to-delete", b"x" * 100)
    entry(tf, "gone/a", BIG["gone-a"])
    entry(tf, "opq/old", b"lower file")
    entry(tf, "opq/sub/deep", b"lower deep file")
    entry(tf, "keep", BIG["keep"], xattrs={"user.k": "v1"})


def layer2(tf):
    D = tarfile.DIRTYPE
    entry(tf, ".wh.to-delete", b"")
    entry(tf, "gone", type=D, mode=0o700)
    entry(tf, "gone/.wh..wh..opq", b"")
    entry(tf, "opq/new", BIG["opq-new"])  # before the opaque marker in the same layer: stays
    entry(tf, "opq/.wh..wh..opq", b"")
    entry(tf, "usr/bin/link", type=tarfile.LNKTYPE, linkname="usr/bin/tool")  # to a lower-layer file
    entry(tf, "usr/bin/link2", type=tarfile.LNKTYPE, linkname="usr/bin/tool")
    entry(tf, "etc/conf", b"new config\n")
    entry(tf, "etc/sym", type=tarfile.SYMTYPE, linkname="../usr/bin/tool")
    entry(tf, "dev-null", type=tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    entry(tf, "fifo", type=tarfile.FIFOTYPE, mode=0o600)


def layer3(tf):
    entry(tf, "usr/bin/tool", BIG["tool2"], mode=0o755)  # replaces one name only; link keeps old
    entry(tf, "usr/bin/.wh.other", b"")
    entry(tf, "empty", b"")
    entry(tf, "usr/../dotdot", b"resolved")


def expected_files():
    """path -> (kind, content or target)"""
    return {
        "/etc/conf": ("f", b"new config\n"),
        "/etc/sym": ("l", b"../usr/bin/tool"),
        "/usr/bin/tool": ("f", BIG["tool2"]),
        "/usr/bin/link": ("f", BIG["tool"]),
        "/usr/bin/link2": ("f", BIG["tool"]),
        "/keep": ("f", BIG["keep"]),
        "/opq/new": ("f", BIG["opq-new"]),
        "/empty": ("f", b""),
        "/dotdot": ("f", b"resolved"),
    }


ABSENT = ["/evil", "/to-delete", "/gone/a", "/opq/old", "/opq/sub", "/usr/bin/other"]


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    return data


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


LAYERS = [(layer1, "none"), (layer2, "gzip"), (layer3, "zstd")]
MT = {"none": "application/vnd.oci.image.layer.v1.tar", "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
      "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def make_oci_layout(root: Path, LAYERS=LAYERS) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(b: bytes) -> str:
        d = sha(b)
        (blobs / d.split(":")[1]).write_bytes(b)
        return d

    layers = [(compress(layer_bytes(build), how), how) for build, how in LAYERS]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer_bytes(b)) for b, _ in LAYERS]},
                         "config": {"Cmd": ["/usr/bin/tool"]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": [{"mediaType": MT[how], "digest": put(b), "size": len(b)}
                                      for b, how in layers]}).encode()
    md = put(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(manifest)}]}))
    return root


def make_docker_save(path: Path, tmp: Path) -> Path:
    with tarfile.open(path, "w") as out:
        def add(name, b):
            ti = tarfile.TarInfo(name)
            ti.size = len(b)
            out.addfile(ti, io.BytesIO(b))
        names = []
        for i, (build, how) in enumerate(LAYERS):
            n = f"layer{i}/layer.tar"
            add(n, compress(layer_bytes(build), how))
            names.append(n)
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [sha(layer_bytes(b)) for b, _ in LAYERS]}}).encode()
        add("config.json", config)
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["x:latest"], "Layers": names}]).encode())
    return path


def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest


def unescape(b: bytes) -> bytes:
    return re.sub(rb"\\x([0-9a-fA-F]{2})|\\(.)",
                  lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else
                  {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\"}[m.group(2)], b)


def parse_dump(text: bytes) -> dict:
    out = {}
    for line in text.splitlines():
        f = line.split(b" ")
        out[f[0].decode()] = f
    return out


@pytest.fixture
def repo(tmp_path):
    r = cfsctl("init", "--repo", tmp_path / "repo")
    assert r.returncode == 0
    return tmp_path / "repo"


@pytest.fixture(params=["oci-dir", "oci-tar", "docker"])
def archive(request, tmp_path):
    if request.param == "oci-dir":
        return make_oci_layout(tmp_path / "layout")
    if request.param == "oci-tar":
        return tar_dir(make_oci_layout(tmp_path / "layout"), tmp_path / "layout.tar")
    return make_docker_save(tmp_path / "docker.tar", tmp_path)


def import_ok(repo, archive, name="img"):
    r = cfsctl("oci", "import", archive, "--name", name, "--repo", repo, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_oci_import_merged_tree(repo, archive):
    r = import_ok(repo, archive)
    assert r["layers"] == 3 and r["missing_objects"] == 0
    img = repo / "images" / r["digest"]
    dump = parse_dump(cfsctl("info", "dump", img).stdout)
    for p in ABSENT:
        assert p not in dump, p
    # the hardlink across layers keeps the lower content; the replaced name got the new one
    objects = repo / "objects"

    def content(path):
        f = dump[path]
        if f[2].startswith(b"@"):  # hardlink line: the target holds the data
            f = dump[f[8].decode()]
        if f[8] != b"-" and stat.S_ISREG(int(f[2], 8)):
            return (objects / f[8].decode()).read_bytes()
        if f[9] != b"-":
            return unescape(f[9])
        return b""

    for path, (kind, data) in expected_files().items():
        if kind == "f":
            assert content(path) == data, path
        else:
            assert dump[path][8] == data
    # link, link2 and the lower layer's /usr/bin/tool were one inode; tool was replaced, the
    # two links remain one inode with two names
    link, link2 = dump["/usr/bin/link"], dump["/usr/bin/link2"]
    assert sorted([link[2][:1] == b"@", link2[2][:1] == b"@"]) == [False, True]
    full = link if link2[2][:1] == b"@" else link2
    assert full[3] == b"2"
    assert dump["/gone"][2] == b"40700"
    assert dump["/dev-null"][2] == b"20666" and int(dump["/dev-null"][6]) == os.makedev(1, 3)
    assert dump["/fifo"][2] == b"10600"
    assert b"user.k=v1" in dump["/keep"]
    # manifest and config beside the image
    side = repo / "images" / (r["digest"] + ".oci")
    assert json.loads((side / "config.json").read_bytes())["architecture"] == "amd64"
    assert (side / "manifest.json").exists()
    assert cfsctl("fsck", "--repo", repo).returncode == 0


def test_oci_import_reproducible_and_shared(repo, tmp_path):
    a = make_oci_layout(tmp_path / "l1")
    r1 = import_ok(repo, a, "one")
    r2 = import_ok(repo, tar_dir(a, tmp_path / "l.tar"), "two")
    assert r1["digest"] == r2["digest"]
    imgs = {i["name"]: i for i in json.loads(cfsctl("images", "--repo", repo, "--json").stdout)}
    # two names of one image: its objects are its own
    assert imgs["one"] == {**imgs["two"], "name": "one"} and imgs["one"]["shared_bytes"] == 0
    # an image of the first layer only shares what survives of it in the full image
    import_ok(repo, make_oci_layout(tmp_path / "l2", LAYERS[:1]), "base")
    imgs = {i["name"]: i for i in json.loads(cfsctl("images", "--repo", repo, "--json").stdout)}
    shared = len(BIG["tool"]) + len(BIG["keep"])  # tool survives as usr/bin/link
    assert imgs["base"]["shared_bytes"] == imgs["one"]["shared_bytes"] == shared
    assert imgs["base"]["unique_bytes"] == len(BIG["other"]) + len(BIG["gone-a"]) + 100  # + to-delete


def test_oci_bad_archives(repo, tmp_path):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing.tar"):
        r = cfsctl("oci", "import", bad, "--name", "x", "--repo", repo)
        assert r.returncode != 0 and b"Traceback" not in r.stderr, r.stderr
    (tmp_path / "junk.tar").write_bytes(os.urandom(3000))
    r = cfsctl("oci", "import", tmp_path / "junk.tar", "--name", "x", "--repo", repo)
    assert r.returncode != 0 and b"Traceback" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_oci_mount(repo, tmp_path):
    import_ok(repo, make_oci_layout(tmp_path / "l"), "app")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = cfsctl("mount", "app", mnt, "--repo", repo)
    assert r.returncode == 0, r.stderr
    try:
        for path, (kind, data) in expected_files().items():
            p = mnt / path.lstrip("/")
            if kind == "f":
                assert p.read_bytes() == data, path
            else:
                assert os.fsencode(os.readlink(p)) == data
        for path in ABSENT:
            assert not os.path.lexists(mnt / path.lstrip("/")), path
        a, b = (mnt / "usr/bin/link").stat(), (mnt / "usr/bin/link2").stat()
        assert a.st_nlink == 2 and a.st_ino == b.st_ino
        assert (mnt / "usr/bin/tool").stat().st_nlink == 1
        assert os.getxattr(mnt / "keep", "user.k") == b"v1"
        assert stat.S_ISFIFO((mnt / "fifo").lstat().st_mode)
    finally:
        cfsctl("umount", mnt)


def _tree_of(root: Path) -> dict:
    out = {"/": ("d", 0o755)}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            rel = "/" + str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.fsencode(os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def _tree_of_image(repo: Path, digest: str) -> dict:
    dump = parse_dump(cfsctl("info", "dump", repo / "images" / digest).stdout)
    out = {}
    for path, f in dump.items():
        full = dump[unescape(f[8]).decode()] if f[2].startswith(b"@") else f
        mode = int(full[2].lstrip(b"@"), 8)
        if stat.S_ISLNK(mode):
            out[unescape(path.encode()).decode()] = ("l", unescape(full[8]))
        elif stat.S_ISDIR(mode):
            out[path] = ("d", stat.S_IMODE(mode))
        else:
            if full[8] != b"-":
                data = (repo / "objects" / full[8].decode()).read_bytes()
            else:
                data = unescape(full[9]) if full[9] != b"-" else b""
            out[path] = ("f", stat.S_IMODE(mode), data)
    return out


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (APT_PACKAGES has it)")
def test_oci_import_of_an_umoci_image(repo, tmp_path):
    """A layout written by a real tool: two layers, the second deleting a file and a directory
    (umoci writes whiteouts) and adding files; the image must equal the final tree."""
    lay, bundle = tmp_path / "lay", tmp_path / "bundle"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]

    def umoci(*args):
        r = subprocess.run(["umoci", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (args, r.stderr)

    umoci("init", "--layout", lay)
    umoci("new", "--image", f"{lay}:t")
    umoci("unpack", *rootless, "--image", f"{lay}:t", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "etc" / "old").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "prog").write_bytes(os.urandom(20000))
    os.chmod(rootfs / "usr" / "bin" / "prog", 0o755)
    os.link(rootfs / "usr" / "bin" / "prog", rootfs / "usr" / "bin" / "prog-link")
    (rootfs / "etc" / "old" / "x").write_bytes(os.urandom(3000))
    (rootfs / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (rootfs / "usr" / "bin" / "sh").symlink_to("prog")
    umoci("repack", "--image", f"{lay}:t", bundle)
    bundle = tmp_path / "bundle2"  # repack diffs against what was unpacked: unpack again
    umoci("unpack", *rootless, "--image", f"{lay}:t", bundle)
    rootfs = bundle / "rootfs"
    shutil.rmtree(rootfs / "etc" / "old")
    (rootfs / "usr" / "bin" / "sh").unlink()
    (rootfs / "etc" / "hosts").write_bytes(b"changed\n")
    (rootfs / "new").write_bytes(os.urandom(5000))
    umoci("repack", "--image", f"{lay}:t", bundle)
    r = import_ok(repo, lay, "u")
    assert r["layers"] == 2
    assert _tree_of_image(repo, r["digest"]) == _tree_of(rootfs)
    assert cfsctl("fsck", "--repo", repo).returncode == 0


def test_objects_named_by_their_digest(repo, tmp_path):
    """Every content over 64 bytes is in the store once, under its fs-verity digest, and a
    second import of the same layers reads nothing again (the layer records are reused)."""
    from composefs.fsverity import digest_file

    r1 = import_ok(repo, make_oci_layout(tmp_path / "l"), "one")
    objs = sorted(p for p in (repo / "objects").rglob("*") if p.is_file())
    assert len(objs) == len(BIG) + 1  # every content over 64 bytes, once (+ to-delete)
    for o in objs:
        assert digest_file(o).hex() == o.parent.name + o.name
    assert r1["layers_fetched"] == 3
    r2 = import_ok(repo, make_oci_layout(tmp_path / "l2"), "two")
    assert (r2["layers_fetched"], r2["layers_reused"], r2["digest"]) == (0, 3, r1["digest"])


def test_entry_leaving_the_root_is_refused(repo, tmp_path):
    """A tar entry whose path climbs out of the root is refused, as docker refuses it (a
    "breakout"), and the import leaves no image behind."""
    def evil(tf):
        entry(tf, "../../evil", b"outside the root")
    r = cfsctl("oci", "import", make_oci_layout(tmp_path / "l", LAYERS=[(evil, "none")]), "--name", "x", "--repo", repo)
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1, r.stderr
    assert b"leaves the image's root" in r.stderr
    assert not list((repo / "images").iterdir())
