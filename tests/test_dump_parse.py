# SPDX-License-Identifier: MIT OR Apache-2.0
"""The dump parser refuses what mkcomposefs refuses, naming the line and the reason."""

import pytest

from composefs import _native

ROOT = b"/ 4096 40755 2 0 0 0 0.0 - - -\n"
FILE = b" 0 100644 1 0 0 0 0.0 - - -\n"


def line(path: bytes, rest: bytes = FILE) -> bytes:
    return path + rest


CASES = [
    # (id, dump, line number, message fragment)
    ("empty-dump", b"", None, "no files in dump"),
    ("root-missing", line(b"/a"), 1, "root node not present"),
    ("root-not-dir", b"/ 0 100644 1 0 0 0 0.0 - - -\n", 1, "root must be a directory"),
    ("two-roots", ROOT + ROOT, 2, "multiple roots"),
    ("empty-path", ROOT + line(b""), 2, "invalid empty path"),
    ("dot", ROOT + line(b"/."), 2, "invalid . or .."),
    ("dotdot", ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n" + line(b"/d/.."), 3, "invalid . or .."),
    ("empty-name", ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n" + line(b"/d/"), 3, "empty name"),
    ("name-too-long", ROOT + line(b"/" + b"n" * 256), 2, "name too long"),
    ("missing-parent", ROOT + line(b"/a/b"), 2, "parent directory missing"),
    ("parent-not-dir", ROOT + line(b"/f") + line(b"/f/x"), 3, "parent must be a directory"),
    ("duplicate", ROOT + line(b"/f") + line(b"/f"), 3, "already exists"),
    ("bad-mode", ROOT + b"/f 0 170644 1 0 0 0 0.0 - - -\n", 2, "unknown file type"),
    ("mode-not-octal", ROOT + b"/f 0 100648 1 0 0 0 0.0 - - -\n", 2, "invalid mode"),
    ("bad-size", ROOT + b"/f x 100644 1 0 0 0 0.0 - - -\n", 2, "invalid size"),
    ("bad-mtime", ROOT + b"/f 0 100644 1 0 0 0 12 - - -\n", 2, "invalid mtime"),
    ("uid-too-big", ROOT + b"/f 0 100644 1 4294967296 0 0 0.0 - - -\n", 2, "invalid uid"),
    ("few-fields", ROOT + b"/f 0 100644 1 0 0 0 0.0 - -\n", 2, "expected at least 11"),
    ("nul-byte", ROOT + b"/f\0 0 100644 1 0 0 0 0.0 - - -\n", 2, "embedded NUL"),
    ("bad-escape", ROOT + line(b"/f\\q"), 2, "unsupported escape"),
    ("short-hex-escape", ROOT + line(b"/f\\x4"), 2, "hex"),
    ("content-size-mismatch", ROOT + b"/f 3 100644 1 0 0 0 0.0 - ab -\n", 2, "must match size 3"),
    ("content-too-long", ROOT + b"/f 5001 100644 1 0 0 0 0.0 - " + b"a" * 5001 + b" -\n", 2, "exceeds maximum 5000"),
    ("symlink-empty", ROOT + b"/l 0 120777 1 0 0 0 0.0 - - -\n", 2, "empty target"),
    ("symlink-too-long", ROOT + b"/l 4096 120777 1 0 0 0 0.0 " + b"t" * 4096 + b" - -\n", 2, "payload too long"),
    ("bad-digest", ROOT + b"/f 10 100644 1 0 0 0 0.0 ab/cd - abcd\n", 2, "64 hex digits"),
    ("xattr-no-equals", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user.a\n", 2, "missing = in xattr"),
    ("xattr-empty-key", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - =v\n", 2, "xattr key length 0"),
    ("xattr-key-too-long", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user." + b"k" * 251 + b"=v\n", 2, "xattr key length 256"),
    ("xattrs-too-large", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user.a=" + b"v" * 40000 + b"\n", 2, "too many xattrs"),
    ("xattr-line-too-long", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user.a=" + b"v" * 70000 + b"\n", 2, "too many xattrs"),
    ("hardlink-dir-mode", ROOT + line(b"/f") + b"/h 0 @40755 1 0 0 0 0.0 /f - -\n", 3, "directories can't be hardlinked"),
    ("hardlink-to-dir", ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n" + b"/h 0 @100644 1 0 0 0 0.0 /d - -\n", 3, "is a directory"),
    ("hardlink-to-self", ROOT + b"/h 0 @100644 1 0 0 0 0.0 /h - -\n", 2, "self-referential"),
    ("hardlink-missing", ROOT + b"/h 0 @100644 1 0 0 0 0.0 /nope - -\n", 2, "no target at /nope"),
    ("hardlink-no-target", ROOT + b"/h 0 @100644 1 0 0 0 0.0 - - -\n", 2, "no target path"),
    ("hardlink-cycle", ROOT + b"/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n", 2, "cycle"),
]


@pytest.mark.parametrize("dump,lineno,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_line_and_reason(dump, lineno, fragment):
    with pytest.raises(_native.FormatError) as exc:
        _native.build_from_dump(dump, None)
    msg = str(exc.value)
    assert fragment in msg
    if lineno is None:
        assert not msg.startswith("line ")
    else:
        assert msg.startswith(f"line {lineno}: ")


ACCEPTED = [
    ("name-255", ROOT + line(b"/" + b"n" * 255)),
    ("symlink-4095", ROOT + b"/l 4095 120777 1 0 0 0 0.0 " + b"t" * 4095 + b" - -\n"),
    ("content-5000", ROOT + b"/f 5000 100644 1 0 0 0 0.0 - " + b"a" * 5000 + b" -\n"),
    ("no-trailing-newline", ROOT + line(b"/f").rstrip(b"\n")),
    ("hardlink-before-target", ROOT + b"/a 0 @100644 1 0 0 0 0.0 /b - -\n" + line(b"/b")),
    ("hardlink-chain", ROOT + line(b"/a") + b"/b 0 @100644 1 0 0 0 0.0 /a - -\n/c 0 @100644 1 0 0 0 0.0 /b - -\n"),
    ("negative-mtime", ROOT + b"/f 0 100644 1 0 0 0 -5.7 - - -\n"),
    ("duplicate-xattr-last-wins", ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2\n"),
    ("escapes", ROOT + b"/a\\x20b\\\\c\\n 0 100644 1 0 0 0 0.0 - - - user.k\\x3d=v\\x3d\\x00\n"),
]


@pytest.mark.parametrize("dump", [a[1] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_accepted(dump, tmp_path):
    img = tmp_path / "img"
    res = _native.build_from_dump(dump, str(img))
    assert img.stat().st_size == res.image_size > 0


def test_duplicate_xattr_last_value_wins(tmp_path):
    img = tmp_path / "img"
    _native.build_from_dump(ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2\n", str(img))
    assert b" user.a=2\n" in _native.image_to_dump(str(img))


def test_hardlinks_share_one_inode(tmp_path):
    img = tmp_path / "img"
    dump = ROOT + b"/a 0 100644 3 0 0 0 0.0 - - - user.x=1\n/b 0 @100644 0 0 0 0 0.0 /a - -\n/c 0 @100644 0 0 0 0 0.0 /b - -\n"
    res = _native.build_from_dump(dump, str(img))
    assert res.hardlinks == 2
    out = _native.image_to_dump(str(img))
    assert out.count(b" @100644 3 ") == 2
    assert b"/b 0 @100644 3 0 0 0 0.0 /a - - user.x=1\n" in out


def test_error_leaves_no_file(tmp_path):
    img = tmp_path / "img"
    with pytest.raises(_native.FormatError):
        _native.build_from_dump(ROOT + line(b"/a/b"), str(img))
    assert list(tmp_path.iterdir()) == []


def test_overlay_xattrs_count_against_the_xattr_budget():
    """Like libcomposefs: the writer's own metacopy/redirect xattrs share the per-inode budget,
    so a file whose xattrs nearly fill it is refused when it needs them (and accepted when not)."""
    big = b"user.a=" + b"v" * 32700
    obj = b"/f 10 100644 1 0 0 0 0.0 3d/" + b"4" * 62 + b" - " + b"3d" + b"4" * 62 + b" " + big + b"\n"
    with pytest.raises(_native.FormatError, match="too many xattrs"):
        _native.build_from_dump(ROOT + obj, None)
    small = b"/f 10 100644 1 0 0 0 0.0 - 0123456789 - " + big + b"\n"
    assert _native.build_from_dump(ROOT + small, None).inline_files == 1


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VALID = (
    ROOT
    + b"/d 0 40755 2 0 0 0 1.5 - - - user.a=b\n"
    + b"/d/f 3 100644 1 0 0 0 0.0 - ab\\x00 - trusted.overlay.x=1\n"
    + b"/d/l 2 120777 1 0 0 0 0.0 ab - -\n"
    + b"/d/o 9 100644 2 0 0 0 0.0 3d/" + b"4" * 62 + b" - 3d" + b"4" * 62 + b"\n"
    + b"/h 0 @100644 0 0 0 0 0.0 /d/o - -\n"
)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.binary(max_size=3)), min_size=1, max_size=6))
def test_mutated_dumps_are_accepted_or_refused_cleanly(edits):
    """Whatever the bytes, the parser either builds an image or raises FormatError."""
    data = bytearray(VALID)
    for pos, new in edits:
        data[pos : pos + 1] = new
    try:
        res = _native.build_from_dump(bytes(data), None, return_image=True)
    except _native.FormatError as e:
        assert str(e)
    else:
        assert len(res.image) == res.image_size
