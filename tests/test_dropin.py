# SPDX-License-Identifier: MIT OR Apache-2.0
"""The drop-in names: ``mkcomposefs`` and ``composefs-info`` take composefs 1.0.8's command lines
and give its outputs.

Always run: the byte-exact reference data (tests/data/conformance) through ``mkcomposefs``, and
the command-line rules (usage messages, exit statuses). Option by option against the reference
tools themselves when they are found: ``MKCOMPOSEFS`` and ``COMPOSEFS_INFO`` in the environment
(paths to composefs 1.0.8's binaries, as the build benchmark takes them); skipped otherwise."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfsrun import conformance_rows, unpack_conformance_dumps
from scan_helpers import Spec, materialize

BIN = Path(sys.executable).parent
OURS = {"mkcomposefs": BIN / "mkcomposefs", "composefs-info": BIN / "composefs-info"}
REF = {"mkcomposefs": os.environ.get("MKCOMPOSEFS"), "composefs-info": os.environ.get("COMPOSEFS_INFO")}


ROWS = conformance_rows()


def run(tool: str, args, *, ref: bool = False, input: bytes | None = None, cwd=None):
    exe = REF[tool] if ref else OURS[tool]
    return subprocess.run([os.fspath(exe), *map(os.fspath, args)], input=input, capture_output=True, cwd=cwd,
                          timeout=300)


def need_ref(tool: str) -> None:
    var = "MKCOMPOSEFS" if tool == "mkcomposefs" else "COMPOSEFS_INFO"
    if not REF[tool] or not os.access(REF[tool], os.X_OK):
        pytest.skip(f"{var} is not set to the reference {tool} (composefs 1.0.8)")


def test_entry_points_are_installed():
    for tool, path in OURS.items():
        assert os.access(path, os.X_OK), f"{tool} is not installed beside {sys.executable}"


# ---- always: the conformance data -------------------------------------------------------------


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    return unpack_conformance_dumps(tmp_path_factory.mktemp("dumps"))


@pytest.mark.parametrize("row", ROWS, ids=[r["dump"] for r in ROWS])
def test_mkcomposefs_writes_the_reference_bytes(row, dumps, tmp_path):
    img = tmp_path / "out.img"
    r = run("mkcomposefs", ["--from-file", "--print-digest", dumps[row["dump"]], img])
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(img.read_bytes()).hexdigest() == row["image_sha256"]
    assert r.stdout.decode() == row["image_fsverity_sha256"] + "\n"
    # The dump composefs-info prints builds the same image again.
    dumped = run("composefs-info", ["dump", img])
    assert dumped.returncode == 0, dumped.stderr
    again = run("mkcomposefs", ["--from-file", "-", "-"], input=dumped.stdout)
    assert again.returncode == 0, again.stderr
    assert hashlib.sha256(again.stdout).hexdigest() == row["image_sha256"]


def test_print_digest_only_and_option_spellings(dumps, tmp_path):
    row = ROWS[0]
    dump = dumps[row["dump"]]
    want = row["image_fsverity_sha256"].encode() + b"\n"
    # GNU getopt_long: --opt value, --opt=value, unambiguous prefixes, options after operands.
    for args in (["--from-file", "--print-digest-only", dump], [dump, "--print-digest-only", "--from-file"],
                 ["--from-f", "--print-digest-o", dump], ["--from-file", "--threads", "1", "--print-digest-only", dump],
                 ["--from-file", "--threads=2", "--min-version=0", "--max-version", "1", "--print-digest-only", dump]):
        r = run("mkcomposefs", args)
        assert (r.returncode, r.stdout) == (0, want), (args, r.stderr)


USAGE_ERRORS = [
    ([], b"No source path specified\n"),
    (["a", "b", "c"], b"Too many arguments\n"),
    (["src"], b"No destination path specified\n"),
    (["--print-digest-only", "src", "img"], b"Cannot specify destination path with --print-digest-only\n"),
    (["--threads=0", "src", "img"], b"Invalid threads count 0\n"),
    (["--threads=x", "src", "img"], b"Invalid threads count x\n"),
    (["--min-version=", "src", "img"], b"Invalid min version \n"),
    (["--max-version=1x", "src", "img"], b"Invalid max version 1x\n"),
    (["--digest-store"], b"option needs a value\n"),
]


@pytest.mark.parametrize("args,first", USAGE_ERRORS, ids=[" ".join(a) or "none" for a, _ in USAGE_ERRORS])
def test_mkcomposefs_usage_errors(args, first, tmp_path):
    r = run("mkcomposefs", args, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.startswith(first), r.stderr


def test_composefs_info_commands(dumps, tmp_path):
    img = tmp_path / "img"
    assert run("mkcomposefs", ["--from-file", dumps["sample-2-0.dump"], img]).returncode == 0
    objs = run("composefs-info", ["objects", img]).stdout.splitlines()
    assert objs == sorted(set(objs)) and objs
    assert run("composefs-info", ["missing-objects", img]).stdout.splitlines() == objs  # no basedir: all
    store = tmp_path / "store"
    (store / objs[0][:2].decode()).mkdir(parents=True)
    (store / objs[0].decode()).write_bytes(b"")
    assert run("composefs-info", ["--basedir", store, "missing-objects", img]).stdout.splitlines() == objs[1:]
    ls = run("composefs-info", ["ls", img]).stdout
    top = sorted({line.split(b"\t")[0].split(b"/")[1] for line in ls.splitlines()})
    one = top[0].decode()
    filtered = run("composefs-info", ["dump", img, f"--filter={one}"]).stdout.splitlines()
    assert filtered[0].startswith(b"/ ") and all(line.split(b" ")[0].split(b"/")[1] == top[0]
                                                 for line in filtered[1:])
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    m = run("composefs-info", ["measure-file", f])
    want = subprocess.run([sys.executable, "-m", "composefs.cli", "digest", "--compact", f], capture_output=True)
    assert m.returncode == 0 and m.stdout == want.stdout
    for args, code in (([], 1), (["frob", img], 1), (["ls"], 1), (["measure-file"], 1),
                       (["--filter=a/b", "ls", img], 1), (["ls", tmp_path / "nothing"], 1)):
        r = run("composefs-info", args)
        assert r.returncode == code, (args, r.stderr)


# ---- option by option against the reference tools ---------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A source tree: every file type when root (devices, whiteouts, trusted.* xattrs), else what a
    user can make."""
    root = os.fsencode(tmp_path_factory.mktemp("tree") / "src")
    os.mkdir(root)
    if os.geteuid() == 0:
        from test_scan import every_kind

        materialize(root, every_kind())
    else:
        materialize(root, [Spec(b"d", "dir"), Spec(b"d/big", "file", size=100_000, seed=1),
                           Spec(b"small", "file", size=10, seed=2, xattrs=[(b"user.x", b"1")]),
                           Spec(b"d/hard", "hardlink", target=b"d/big"), Spec(b"sym", "symlink", target=b"d")])
    return Path(os.fsdecode(root))


MK_CASES = [
    [],
    ["--use-epoch"],
    ["--skip-devices"],
    ["--skip-xattrs"],
    ["--user-xattrs"],
    ["--min-version=1"],
    ["--max-version=0"],
    ["--min-version", "1", "--max-version", "0"],
    ["--threads=1"],
    ["--print-digest"],
    ["--digest-store={store}"],
    ["--digest-store", "{store}", "--print-digest", "--use-epoch"],
]


def _listing(d: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(d)), p.read_bytes()) for p in d.rglob("*") if p.is_file()) if d.exists() else []


@pytest.mark.parametrize("opts", MK_CASES, ids=[" ".join(o) or "default" for o in MK_CASES])
def test_mkcomposefs_matches_the_reference(tree, tmp_path, opts):
    need_ref("mkcomposefs")
    out = {}
    for side in ("ref", "ours"):
        work = tmp_path / side
        work.mkdir()
        args = [a.format(store=work / "store") for a in opts] + [tree, work / "img"]
        r = run("mkcomposefs", args, ref=side == "ref")
        out[side] = (r.returncode, r.stdout, (work / "img").read_bytes() if (work / "img").exists() else None,
                     _listing(work / "store"))
        assert r.returncode == 0, (side, r.stderr)
    assert out["ours"] == out["ref"]


@pytest.mark.parametrize("args", [["--print-digest-only", "{tree}"], ["--print-digest-only", "--user-xattrs", "{tree}"],
                                  ["{tree}", "-"]])
def test_mkcomposefs_stdout_matches_the_reference(tree, args):
    need_ref("mkcomposefs")
    args = [a.format(tree=tree) for a in args]
    ref, ours = run("mkcomposefs", args, ref=True), run("mkcomposefs", args)
    assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout)


@pytest.mark.parametrize("args", [a for a, _ in USAGE_ERRORS] + [["--bogus", "a", "b"], ["--use-epoch=1", "a", "b"],
                                                                 ["", "img"]],
                         ids=lambda a: " ".join(a) or "none")
def test_mkcomposefs_errors_match_the_reference(tmp_path, args):
    need_ref("mkcomposefs")
    ref, ours = run("mkcomposefs", args, ref=True, cwd=tmp_path), run("mkcomposefs", args, cwd=tmp_path)
    assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout)
    if ref.stderr.startswith(b"Usage") or b"\nUsage" in ref.stderr or not ref.stderr.startswith(b"mkcomposefs:"):
        # Usage messages are the same bytes, but for the thread count the CPUs decide.
        assert ours.stderr.split(b"(default=")[:3] == ref.stderr.split(b"(default=")[:3]


INFO_CASES = [["ls"], ["dump"], ["objects"], ["missing-objects"], ["--basedir={store}", "missing-objects"],
              ["--filter=d", "dump"], ["--filter", "d", "--filter=sym", "ls"], ["--filter=nothing", "objects"]]


@pytest.mark.parametrize("opts", INFO_CASES, ids=[" ".join(o) for o in INFO_CASES])
def test_composefs_info_matches_the_reference(tree, tmp_path, dumps, opts):
    need_ref("composefs-info")
    store = tmp_path / "store"
    images = []
    for name in ("sample-1-0.dump", "sample-2-1.dump"):  # whiteouts (format 1), and format 0
        img = tmp_path / (name + ".img")
        assert run("mkcomposefs", ["--from-file", dumps[name], img]).returncode == 0
        images.append(img)
    img = tmp_path / "tree.img"
    assert run("mkcomposefs", ["--digest-store", store, tree, img]).returncode == 0
    images.append(img)
    args = [a.format(store=store) for a in opts]
    for i in images:
        ref, ours = run("composefs-info", [*args, i], ref=True), run("composefs-info", [*args, i])
        assert ours.returncode == ref.returncode == 0, ours.stderr
        assert ours.stdout == ref.stdout, (i, opts)


def test_measure_file_matches_the_reference(tmp_path):
    need_ref("composefs-info")
    files = []
    for n in (1, 4096, 4097, 300_000):  # 0: composefs 1.0.8 prints a digest that is not fs-verity's
        f = tmp_path / f"f{n}"
        f.write_bytes(os.urandom(n))
        files.append(f)
    args = ["measure-file", *files]
    ref, ours = run("composefs-info", args, ref=True), run("composefs-info", args)
    assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout) == (0, ref.stdout)


@pytest.mark.parametrize("args", [["--bogus", "ls", "x"], ["--basedir"], ["--filter=a", "frob", "x"], [],
                                  ["--basedir=/nonexistent", "missing-objects", "x"], ["--filter=a/b", "ls", "x"]],
                         ids=lambda a: " ".join(a) or "none")
def test_composefs_info_errors_match_the_reference(tmp_path, args):
    need_ref("composefs-info")
    ref, ours = run("composefs-info", args, ref=True, cwd=tmp_path), run("composefs-info", args, cwd=tmp_path)
    assert (ours.returncode, ours.stdout) == (ref.returncode, ref.stdout)
    # The same words (argv[0] as given is part of the usage and getopt messages).
    assert ours.stderr.replace(os.fsencode(OURS["composefs-info"]), b"TOOL") == \
        ref.stderr.replace(os.fsencode(REF["composefs-info"]), b"TOOL")
