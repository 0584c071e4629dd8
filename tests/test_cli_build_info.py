# SPDX-License-Identifier: MIT OR Apache-2.0
"""cfsctl build / cfsctl info: options, exit statuses, messages and output formats."""

import json
import os
import struct
import subprocess
import sys

import pytest
from cfsrun import cfsctl

from composefs import _native

DIGEST = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
TINY = (
    b"/ 4096 40755 2 0 0 0 0.0 - - -\n"
    b"/a 5 100644 1 0 0 0 0.0 - hello -\n"
    b"/b 4096 100644 1 0 0 0 0.0 3d/248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95 - " + DIGEST.encode() + b"\n"
)
RICH = (
    b"/ 4096 40755 3 0 0 0 10.0 - - - security.selinux=ctx user.r=1\n"
    b"/d 4096 40700 2 1 2 0 12.5 - - - trusted.overlay.opaque=y user.d=2\n"
    b"/d/wh 0 20000 1 0 0 0 11.0 - - -\n"
    b"/d/dev 0 20644 1 0 0 259 11.0 - - -\n"
    b"/d/blk 0 60644 1 0 0 2049 11.0 - - -\n"
    b"/d/l 4 120777 1 0 0 0 11.0 /tgt - -\n"
    b"/f 4096 100644 2 0 0 0 13.0 3d/248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95 - " + DIGEST.encode() + b" user.f=3\n"
    b"/g 0 @100644 2 0 0 0 13.0 /f - -\n"
    b"/sp\\x20ace 3 100644 1 0 0 0 13.0 - abc -\n"
)
TINY_DIGEST = "88ee521bf76e54e142195840ee3d640156974d7f3e622c3a662e6ab2ba30aff3"


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.dump"
    p.write_bytes(TINY)
    return p


@pytest.fixture
def rich(tmp_path):
    p = tmp_path / "rich.dump"
    p.write_bytes(RICH)
    return p


def version_of(path):
    return struct.unpack_from("<I", open(path, "rb").read(16), 12)[0]


def test_build_and_print_digest(tiny, tmp_path):
    r = cfsctl("build", "--from-dump", "--print-digest", tiny, tmp_path / "x.img")
    assert r.returncode == 0
    assert r.stdout.decode() == TINY_DIGEST + "\n"
    assert r.stderr == b""


def test_from_file_alias_and_stdin(tmp_path):
    r = cfsctl("build", "--from-file", "--print-digest-only", "-", input=TINY)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == TINY_DIGEST + "\n"


def test_image_to_stdout(tiny, tmp_path):
    r = cfsctl("build", "--from-dump", tiny, "-")
    assert r.returncode == 0
    (tmp_path / "y.img").write_bytes(r.stdout)
    assert cfsctl("info", "header", "--json", tmp_path / "y.img").returncode == 0
    info = json.loads(cfsctl("info", "header", "--json", tmp_path / "y.img").stdout)
    assert info[0]["digest"] == TINY_DIGEST


def test_json_summary(rich, tmp_path):
    r = cfsctl("build", "--from-dump", "--json", rich, tmp_path / "r.img")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["image"] == str(tmp_path / "r.img")
    assert s["version"] == 1  # a whiteout
    e = s["counts"]
    assert s["entries"] == 9  # eight paths and the root
    assert (e["directories"], e["symlinks"], e["whiteouts"], e["hardlinks"], e["devices"]) == (2, 1, 1, 1, 2)
    assert e["object_files"] == 1 and e["inline_files"] == 1
    # A dump build stores nothing: its object bytes are counted, none are stored.
    assert s["objects"] == 1 and s["object_bytes"] == 4096
    assert s["bytes_stored"] == 0 and s["bytes_deduplicated"] == 0
    assert s["image_bytes"] == os.path.getsize(tmp_path / "r.img")


def test_json_summary_of_a_dump_with_a_shared_object_finds_nothing(tmp_path):
    """Two files naming one object: one object counted, and nothing "found in the store"
    (there is none) — the same as a directory build without --digest-store."""
    obj = b"3d/248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
    dump = b"/ 4096 40755 2 0 0 0 10.0 - - -\n" + b"".join(
        b"/%s 4096 100644 1 0 0 0 13.0 %s - %s\n" % (n, obj, DIGEST.encode()) for n in (b"a", b"b"))
    r = cfsctl("build", "--from-dump", "--json", "-", tmp_path / "s.img", input=dump)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["objects"], s["object_bytes"], s["bytes_stored"], s["bytes_deduplicated"]) == (1, 4096, 0, 0)


@pytest.mark.parametrize(
    "args,version",
    [([], 1), (["--max-version", "0"], 0), (["--min-version", "1"], 1), (["--min-version", "0", "--max-version", "1"], 1)],
)
def test_version_selection_with_whiteout(rich, tmp_path, args, version):
    img = tmp_path / "v.img"
    r = cfsctl("build", "--from-dump", *args, rich, img)
    assert r.returncode == 0, r.stderr
    assert version_of(img) == version


def test_version_one_only_when_asked_without_whiteouts(tiny, tmp_path):
    assert cfsctl("build", "--from-dump", tiny, tmp_path / "a").returncode == 0
    assert version_of(tmp_path / "a") == 0
    assert cfsctl("build", "--from-dump", "--min-version", "1", tiny, tmp_path / "b").returncode == 0
    assert version_of(tmp_path / "b") == 1


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["--from-dump", "TINY"], 2, "No destination path"),
        (["--from-dump", "--print-digest-only", "TINY", "out"], 2, "Cannot specify destination"),
        (["--from-dump", "--max-version", "2", "TINY", "out"], 2, "supported versions"),
        (["--from-dump", "--min-version", "-1", "TINY", "out"], 2, "supported versions"),
        (["--from-dump", "--threads", "0", "TINY", "out"], 2, "--threads"),
        (["--from-dump", "--skip-xattrs", "--user-xattrs", "TINY", "out"], 2, "cannot be used together"),
        (["--from-dump", "missing.dump", "out"], 1, "missing.dump: No such file or directory"),
        (["missing-dir", "out"], 1, "missing-dir: No such file or directory"),
        (["TINY", "out"], 1, "not a directory (use --from-dump"),
    ],
)
def test_build_usage_errors(tiny, tmp_path, args, code, fragment):
    args = [str(tiny) if a == "TINY" else str(tmp_path) if a == "DIR" else a for a in args]
    r = cfsctl("build", *args, cwd=tmp_path)
    assert r.returncode == code
    err = r.stderr.decode()
    assert fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_malformed_dump_message_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.dump"
    bad.write_bytes(TINY + b"/a/x 0 100644 1 0 0 0 0.0 - - -\n")
    r = cfsctl("build", "--from-dump", bad, tmp_path / "out.img")
    assert r.returncode == 1
    assert r.stderr.decode() == f"cfsctl: error: {bad}: line 4: parent must be a directory for /a/x\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.dump"]


def test_overwrites_existing_image_atomically(tiny, tmp_path):
    img = tmp_path / "img"
    img.write_bytes(b"old")
    assert cfsctl("build", "--from-dump", tiny, img).returncode == 0
    assert img.read_bytes()[:4] == struct.pack("<I", 0xD078629A)
    assert sorted(os.listdir(tmp_path)) == ["img", "tiny.dump"]


def dump_of(path, *flags):
    r = cfsctl("info", "dump", *flags, path)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_filters(rich, tmp_path):
    img = tmp_path / "f.img"
    assert cfsctl("build", "--from-dump", "--use-epoch", rich, img).returncode == 0
    lines = dump_of(img).splitlines()
    assert all(line.split(b" ")[7] == b"0.0" for line in lines)
    assert cfsctl("build", "--from-dump", "--skip-devices", rich, img).returncode == 0
    d = dump_of(img)
    assert b"/d/dev " not in d and b"/d/blk " not in d and b"/d/wh " not in d and b"/d/l " in d
    assert cfsctl("build", "--from-dump", "--skip-xattrs", rich, img).returncode == 0
    # The opaque=x marks format 1 adds to a directory holding a whiteout are the writer's, not the source's.
    assert b"=" not in cfsctl("info", "dump", "--no-opaque", img).stdout.replace(b"\\x3d", b"")
    assert cfsctl("build", "--from-dump", "--user-xattrs", rich, img).returncode == 0
    d = dump_of(img)
    assert b"user.r=1" in d and b"user.f=3" in d and b"security.selinux" not in d
    assert b"trusted." not in dump_of(img, "--no-opaque")


def test_info_dump_matches_reference_format(rich, tmp_path):
    img = tmp_path / "r.img"
    assert cfsctl("build", "--from-dump", rich, img).returncode == 0
    d = dump_of(img)
    # Inline xattrs first, then shared ones (security.selinux is shared with the root's
    # synthetic whiteouts), as composefs-info prints them.
    assert d.splitlines()[0] == b"/ 4096 40755 3 0 0 0 10.0 - - - user.r=1 security.selinux=ctx"
    assert b"/d/wh 0 20000 1 0 0 0 11.0 - - -\n" in d
    assert b"/g 4096 @100644 2 0 0 0 13.0 /f - " + DIGEST.encode() + b" user.f=3\n" in d
    # The format-1 whiteout marking overrides the directory's own trusted.overlay.opaque (as in
    # mkcomposefs); composefs-info shows the marking, and so does info dump unless --no-opaque.
    assert b"/d 84 40700 2 1 2 0 12.5 - - - trusted.overlay.opaque=x user.d=2 user.overlay.opaque=x\n" in d
    plain = cfsctl("info", "dump", "--no-opaque", img).stdout
    assert b"/d 84 40700 2 1 2 0 12.5 - - - user.d=2\n" in plain
    assert b"/sp\\x20ace 3 100644 1 0 0 0 13.0 - abc -\n" in d


def test_info_dump_pipe_gives_same_bytes(rich, tmp_path):
    img, img2 = tmp_path / "1.img", tmp_path / "2.img"
    assert cfsctl("build", "--from-dump", rich, img).returncode == 0
    cmd = f"{sys.executable} -m composefs.cli info dump {img} | {sys.executable} -m composefs.cli build --from-dump - {img2}"
    r = subprocess.run(cmd, shell=True, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert img.read_bytes() == img2.read_bytes()


def test_info_ls(rich, tmp_path):
    img = tmp_path / "r.img"
    assert cfsctl("build", "--from-dump", rich, img).returncode == 0
    r = cfsctl("info", "ls", img)
    assert r.returncode == 0
    assert r.stdout.decode() == (
        "/d/\t\n/d/blk\n/d/dev\n/d/l\t-> /tgt\n/d/wh\n"
        f"/f\t@ 3d/{DIGEST[2:]}\n/g\n/sp ace\n"
    )


def test_info_objects_and_missing(rich, tiny, tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert cfsctl("build", "--from-dump", rich, a).returncode == 0
    other = TINY.replace(b"3d/248c", b"3e/248c").replace(b"- 3d248c", b"- 3e248c")
    assert cfsctl("build", "--from-dump", "-", b, input=other).returncode == 0
    r = cfsctl("info", "objects", a, b)
    want = [f"3d/{DIGEST[2:]}", f"3e/{DIGEST[2:]}"]
    assert r.stdout.decode().splitlines() == want
    base = tmp_path / "objs"
    (base / "3d").mkdir(parents=True)
    (base / "3d" / DIGEST[2:]).write_bytes(b"x")
    r = cfsctl("info", "missing-objects", "--basedir", base, a, b)
    assert r.returncode == 0
    assert r.stdout.decode().splitlines() == want[1:]
    r = cfsctl("info", "missing-objects", "--json", a, b)
    assert json.loads(r.stdout) == want


@pytest.mark.parametrize("content", [b"", b"not an image" * 1000, b"\x9a\x62\x78\xd0" + b"\0" * 5000])
def test_info_refuses_garbage(tmp_path, content):
    p = tmp_path / "junk.img"
    p.write_bytes(content)
    for sub in ("ls", "dump", "objects"):
        r = cfsctl("info", sub, p)
        assert r.returncode == 1
        assert r.stderr.decode().startswith(f"cfsctl: error: {p}: ")
        assert "Traceback" not in r.stderr.decode()


def test_info_missing_file(tmp_path):
    r = cfsctl("info", "dump", tmp_path / "nope.img")
    assert r.returncode == 1
    assert "No such file or directory" in r.stderr.decode()


def test_reader_never_panics_on_corruption(rich, tmp_path):
    """Flip bytes all over a valid image: the reader returns or raises FormatError, nothing else."""
    img = tmp_path / "r.img"
    _native.build_from_dump(RICH, str(img))
    data = bytearray(img.read_bytes())
    import random

    rng = random.Random(1234)
    bad = tmp_path / "bad.img"
    for i in range(300):
        d = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(1024, len(d)) if rng.random() < 0.9 else rng.randrange(len(d))
            d[pos] = rng.randrange(256)
        if rng.random() < 0.1:
            d = d[: rng.randrange(len(d))]
        bad.write_bytes(bytes(d))
        try:
            _native.image_to_dump(str(bad))
        except _native.FormatError:
            pass
