# SPDX-License-Identifier: MIT OR Apache-2.0
"""Every command's --json output against the one documented schema (docs/json.md), and errors as
JSON under --json: the tables in that file are the schema, read here, so the documentation and the
output cannot drift apart."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from cfsrun import REPO, cfsctl

DOC = REPO / "docs" / "json.md"

TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "list of objects": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
}


def parse_doc(text: str) -> dict[str, tuple[str, dict[str, tuple[list[str], bool]]]]:
    """{command: (shape, {field path: (type names, optional)})} from the sections of docs/json.md."""
    schema: dict = {}
    for sec in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = sec.partition("\n")
        m = re.fullmatch(r"`cfsctl ([a-z -]+)`", head.strip())
        if not m:
            continue
        shape = re.search(r"^Shape: (.+)$", body, re.M)
        if not shape:
            continue
        same = re.search(r"^The same fields as `cfsctl ([a-z -]+)`", body, re.M)
        fields = dict(schema[same.group(1)][1]) if same else {}
        for row in re.finditer(r"^\| `([^`]+)` \| ([^|]+) \|", body, re.M):
            t = row.group(2).strip()
            optional = t.endswith(", optional")
            names = t.removesuffix(", optional").split(" or ")
            assert all(n in TYPES for n in names), (head, row.group(0))
            fields[row.group(1)] = (names, optional)
        schema[m.group(1)] = (shape.group(1).strip(), fields)
    return schema


SCHEMA = parse_doc(DOC.read_text())


def check_object(obj: dict, fields: dict, prefix: str = "") -> None:
    for key, value in obj.items():
        path = prefix + key
        assert path in fields, f"{path}: printed but not documented in docs/json.md"
        names, _ = fields[path]
        assert any(TYPES[n](value) for n in names), f"{path}: {value!r} is not {' or '.join(names)}"
        if isinstance(value, dict):
            check_object(value, fields, path + ".")
        elif isinstance(value, list) and "list of objects" in names:
            for item in value:
                check_object(item, fields, path + "[].")
    for path, (_, optional) in fields.items():
        rest = path[len(prefix):] if path.startswith(prefix) else None
        if rest is None or "." in rest or optional:
            continue
        assert rest in obj, f"{path}: documented as always present, missing"


def check(command: str, stdout: bytes) -> None:
    shape, fields = SCHEMA[command]
    doc = json.loads(stdout)
    if shape == "object":
        assert isinstance(doc, dict)
        check_object(doc, fields)
    elif shape == "list of objects":
        assert isinstance(doc, list) and doc, "an empty list checks nothing"
        for item in doc:
            check_object(item, fields)
    elif shape == "list of strings":
        assert isinstance(doc, list) and all(isinstance(x, str) for x in doc)
    else:
        raise AssertionError(f"unknown shape {shape!r}")


def test_doc_parses_and_names_every_command():
    assert {"build", "digest", "info header", "info objects", "info missing-objects", "info measure-file",
            "init", "import", "oci import", "oci pull", "images", "rm", "gc", "fsck", "pull", "mount", "umount",
            "install-helper", "info ls", "info dump", "boot deploy", "boot karg", "boot install-initramfs"} <= set(SCHEMA)
    # One fact, one name: the shared vocabulary never has two types for one field name.
    seen: dict[str, set] = {}
    for _, fields in SCHEMA.values():
        for path, (names, _) in fields.items():
            seen.setdefault(path.rsplit(".", 1)[-1], set()).add(tuple(n for n in names if n != "null"))
    assert seen["entries"] == {("integer",)} and seen["digest"] == {("string",)}


def _leaf_commands():
    import click

    from composefs.cli import cli

    ctx = click.Context(cli, info_name="cfsctl")
    todo = [((), cli)]
    while todo:
        path, cmd = todo.pop()
        if isinstance(cmd, click.Group):
            todo.extend((path + (n,), cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx))
        else:
            yield " ".join(path), cmd


def test_every_command_has_json_and_a_documented_schema():
    """Walks the command tree: a command added without --json, or without its section in
    docs/json.md, fails here (fetchd, the daemon of --remote, prints no result)."""
    leaves = dict(_leaf_commands())
    assert len(leaves) > 20
    for name, cmd in leaves.items():
        if name == "fetchd":
            continue
        assert any("--json" in p.opts for p in cmd.params), f"cfsctl {name} has no --json"
        assert name in SCHEMA, f"cfsctl {name}: no schema in docs/json.md"


def test_checker_catches_drift():
    """The checker fails on an undocumented field, a wrong type and a missing field."""
    fields = SCHEMA["init"][1]
    check_object({"repo": "/r"}, fields)
    for bad in ({"repo": "/r", "extra": 1}, {"repo": 1}, {}):
        with pytest.raises(AssertionError):
            check_object(bad, fields)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A source tree, an image of it with its objects, and a repository holding it."""
    t = tmp_path_factory.mktemp("json")
    src = t / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big").write_bytes(os.urandom(100_000))
    (src / "small").write_bytes(b"hi\n")
    os.symlink("d/big", src / "link")
    os.link(src / "d" / "big", src / "hard")
    r = cfsctl("build", src, t / "img.cfs", "--digest-store", t / "objects")
    assert r.returncode == 0, r.stderr
    (t / "img.dump").write_bytes(cfsctl("info", "dump", t / "img.cfs").stdout)
    assert cfsctl("init", "--repo", t / "repo").returncode == 0
    assert cfsctl("import", src, "--name", "app", "--repo", t / "repo").returncode == 0
    # A root partition for the boot commands: its repository is ROOT/composefs.
    assert cfsctl("init", "--repo", t / "bootroot" / "composefs").returncode == 0
    assert cfsctl("import", src, "--name", "os", "--repo", t / "bootroot" / "composefs").returncode == 0
    (t / "bootroot" / "etc" / "initramfs-tools").mkdir(parents=True)
    return t


def run_json(*args, ok=(0,)):
    r = cfsctl(*args, "--json")
    assert r.returncode in ok, r.stderr
    assert b"Traceback" not in r.stderr
    return r.stdout


# (documented command, arguments; "{t}" is the fixture's directory)
CASES = [
    ("build", ["build", "{t}/src", "{t}/b1.cfs", "--digest-store", "{t}/objects2"]),
    ("build", ["build", "--from-dump", "{t}/img.dump", "{t}/b2.cfs"]),
    ("build", ["build", "{t}/src", "--print-digest-only", "--hardlinks"]),
    ("info header", ["info", "header", "{t}/img.cfs"]),
    ("info objects", ["info", "objects", "{t}/img.cfs"]),
    ("info missing-objects", ["info", "missing-objects", "{t}/img.cfs"]),
    ("info measure-file", ["info", "measure-file", "{t}/img.cfs", "{t}/src/small"]),
    ("info ls", ["info", "ls", "{t}/img.cfs", "{t}/img.cfs"]),
    ("info ls", ["info", "ls", "{t}/img.cfs", "--filter", "d"]),
    ("info dump", ["info", "dump", "{t}/img.cfs"]),
    ("info dump", ["info", "dump", "--no-opaque", "--filter", "link", "{t}/img.cfs"]),
    ("boot deploy", ["boot", "deploy", "os", "--root", "{t}/bootroot"]),
    ("boot karg", ["boot", "karg", "os", "--root", "{t}/bootroot"]),
    ("boot install-initramfs", ["boot", "install-initramfs", "--root", "{t}/bootroot"]),
    ("init", ["init", "--repo", "{t}/repo2"]),
    ("import", ["import", "{t}/src", "--name", "again", "--repo", "{t}/repo"]),
    ("import", ["import", "--from-dump", "{t}/img.dump", "--name", "dumped", "--repo", "{t}/repo"]),
    ("images", ["images", "--repo", "{t}/repo"]),
    ("fsck", ["fsck", "--repo", "{t}/repo"]),
    ("pull", ["pull", "file://{t}/repo", "app", "--repo", "{t}/repo2"]),
    ("rm", ["rm", "again", "--repo", "{t}/repo"]),
    ("gc", ["gc", "--dry-run", "--repo", "{t}/repo"]),
    ("gc", ["gc", "--repo", "{t}/repo"]),
    ("install-helper", ["install-helper", "--prefix", "{t}"]),
]


@pytest.mark.parametrize("command,args", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_command_output_matches_the_schema(world, command, args):
    check(command, run_json(*(a.format(t=world) for a in args)))


@pytest.mark.parametrize("hardlinks", [False, True])
def test_info_ls_and_dump_json_say_what_the_text_says(world, tmp_path, hardlinks):
    """The JSON lists the paths of the text, in its order, with its facts: a symlink's target, a
    file's object, a hardlink's extra name (the dump's `@` line), the dump's numbers."""
    img = world / "img.cfs"
    if hardlinks:
        img = tmp_path / "hl.cfs"
        assert cfsctl("build", world / "src", img, "--hardlinks").returncode == 0
    ls_text = cfsctl("info", "ls", img).stdout.decode().splitlines()
    ls = json.loads(run_json("info", "ls", img))
    assert [r["path"] for r in ls] == [line.split("\t")[0].rstrip("/") for line in ls_text]
    by_path = {r["path"]: r for r in ls}
    assert by_path["/link"]["type"] == "symlink" and by_path["/link"]["target"] == "d/big"
    assert by_path["/d"]["type"] == "directory" and by_path["/small"]["type"] == "file"
    (obj,) = json.loads(run_json("info", "objects", img))
    assert by_path["/d/big"]["object"].lstrip("/") == obj
    links = [(r["path"], r["hardlink_to"]) for r in ls if "hardlink_to" in r]
    assert [set(pair) for pair in links] == ([{"/hard", "/d/big"}] if hardlinks else [])
    dump_text = cfsctl("info", "dump", img).stdout.decode().splitlines()
    dump = json.loads(run_json("info", "dump", img))
    assert len(dump) == len(dump_text) and dump[0]["path"] == "/"
    for row, line in zip(dump, dump_text):
        f = line.split(" ")
        assert [row["path"], str(row["size"]), oct(row["mode"])[2:], str(row["nlink"]), str(row["uid"]),
                str(row["gid"])] == [f[0], f[1], f[2].lstrip("@"), f[3], f[4], f[5]]
        assert f"{row['mtime']}.{row['mtime_nsec']}" == f[7]
        assert (row.get("digest") or "-") == f[10]
        assert f[2].startswith("@") == ("hardlink_to" in row)


def test_digest_output_with_an_unreadable_file(world):
    r = cfsctl("digest", "--json", world / "src" / "small", world / "missing")
    assert r.returncode == 1
    check("digest", r.stdout)
    rows = json.loads(r.stdout)
    assert rows[1]["digest"] is None and "No such file" in rows[1]["error"]
    assert json.loads(r.stderr) == {"error": f"{world / 'missing'}: No such file or directory"}


def test_oci_import_matches_the_schema(world, tmp_path):
    from test_oci import make_oci_layout

    layout = make_oci_layout(tmp_path / "layout")
    check("oci import", run_json("oci", "import", layout, "--name", "oci", "--repo", world / "repo"))


def test_oci_pull_matches_the_schema(world, tmp_path):
    from ocireg import Registry, have
    from test_oci_pull import make_layout

    if not have("docker-registry") or not have("skopeo"):
        pytest.skip("docker-registry and skopeo are needed for a registry to pull from")
    lay, _ = make_layout(tmp_path / "lay")
    reg = Registry(tmp_path / "registry").start()
    try:
        ref = reg.push(lay.root, "t", "cfs/json")
        check("oci pull", run_json("oci", "pull", ref, "--name", "pulled", "--tls-verify=false",
                                   "--repo", world / "repo"))
    finally:
        reg.stop()


def _can_mount(name: str) -> bool:
    with open("/proc/filesystems") as f:
        return os.geteuid() == 0 and any(line.split()[-1:] == [name] for line in f)


@pytest.mark.parametrize("backend", ["overlay", "fuse"])
def test_mount_and_umount_match_the_schema(world, tmp_path, backend):
    if backend == "overlay" and not (_can_mount("erofs") and _can_mount("overlay")):
        pytest.skip("an overlay mount needs root and erofs + overlay in /proc/filesystems")
    if backend == "fuse" and not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
        pytest.skip("a FUSE mount needs /dev/fuse and fusermount3 (fuse3)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    check("mount", run_json("mount", world / "img.cfs", mnt, "--basedir", world / "objects", "--backend", backend))
    try:
        assert (mnt / "small").read_bytes() == b"hi\n"
    finally:
        check("umount", run_json("umount", mnt))


# A failing command under --json: one line {"error": TEXT} on stderr, TEXT what the plain
# one-line error says after "cfsctl: error: ", and the same exit status.
ERRORS = [
    (["build", "{t}/nothing", "{t}/x.cfs"], 1),
    (["build", "{t}/src"], 2),
    (["info", "header", "{t}/nothing"], 1),
    (["info", "dump", "{t}/src/small"], 1),
    (["info", "ls", "{t}/nothing"], 1),
    (["boot", "karg", "nothing", "--root", "{t}/bootroot"], 1),
    (["info", "measure-file", "{t}/nothing"], 1),
    (["import", "{t}/src", "--name", ".bad", "--repo", "{t}/repo"], 1),
    (["images", "--repo", "{t}/nothing"], 1),
    (["mount", "{t}/img.cfs", "{t}/nothing", "--basedir", "{t}/objects"], 1),
    (["umount", "{t}/nothing"], 1),
    (["digest", "--block-size", "3", "{t}/img.cfs"], 2),
    (["pull", "file://{t}/nothing", "app", "--repo", "{t}/repo"], 1),
    (["oci", "import", "{t}/nothing", "--name", "x", "--repo", "{t}/repo"], 1),
]


@pytest.mark.parametrize("args,code", ERRORS, ids=[" ".join(a[:2]) for a, _ in ERRORS])
def test_errors_are_json_under_json(world, args, code):
    args = [a.format(t=world) for a in args]
    plain = cfsctl(*args)
    as_json = cfsctl(*args, "--json")
    assert plain.returncode == as_json.returncode == code, (plain.stderr, as_json.stderr)
    assert as_json.stdout == b""
    line = plain.stderr.decode().strip().splitlines()[-1]
    text = line.split("rror: ", 1)[1]
    assert as_json.stderr.decode().count("\n") == 1
    assert json.loads(as_json.stderr) == {"error": text}
