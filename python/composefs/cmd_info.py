# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl info``: inspect composefs images, like ``composefs-info``."""

from __future__ import annotations

import json
import os

import click

from . import _native
from .errors import CfsError


def _call(fn, path):
    try:
        return fn(path)
    except _native.FormatError as e:
        raise CfsError(str(e), path) from None


def _out(data: bytes) -> None:
    out = click.get_binary_stream("stdout")
    out.write(data)
    out.flush()


def _stream(fn, path, **kwargs) -> None:
    """Have the Rust core write ``fn``'s output for the image straight to standard output as it
    walks the tree (memory independent of the output's size)."""
    out = click.get_binary_stream("stdout")
    out.flush()
    _call(lambda p: fn(p, out.fileno(), **kwargs), path)


def _filter(names: tuple[str, ...]) -> list[bytes] | None:
    for n in names:
        if "/" in n or not n:
            raise click.BadParameter(f"{n!r}: a single name, not a path", param_hint="--filter")
    return [os.fsencode(n) for n in names] or None


def _objects(images, basedir: str | None, missing: bool, names: list[bytes] | None = None) -> list[bytes]:
    objs: set[bytes] = set()
    for img in images:
        objs.update(_call(lambda p: _native.image_objects(p, filter=names), img))
    names = sorted(objs)
    if missing:
        base = os.fsencode(basedir) if basedir is not None else None
        # Like composefs-info: without a basedir every object counts as missing.
        names = [o for o in names if base is None or not os.path.exists(os.path.join(base, o.lstrip(b"/")))]
    return names


def _print_names(names: list[bytes], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([os.fsdecode(n) for n in names]))
    else:
        _out(b"".join(n + b"\n" for n in names))


images_arg = click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
filter_option = click.option(
    "--filter", "names", multiple=True, metavar="NAME",
    help="Only the top-level entries of this name (repeat for several), as composefs-info --filter.")


@click.group("info")
def info():
    """Show what composefs images hold (the output formats of composefs-info)."""


def entry_json(image: str, e: _native.ImageEntry, full: bool) -> dict:
    """One path's object in the JSON of ``info ls`` (and with ``full``, of ``info dump``), with
    docs/json.md's fields in its order; the optional ones only where they apply."""
    row: dict[str, object] = {"image": image, "path": e.path, "type": e.type}
    if e.target is not None:
        row["target"] = e.target
    if e.object is not None:
        row["object"] = e.object
    if e.hardlink_to is not None:
        row["hardlink_to"] = e.hardlink_to
    if full:
        row.update(size=e.size, mode=e.mode, nlink=e.nlink, uid=e.uid, gid=e.gid, rdev=e.rdev, mtime=e.mtime,
                   mtime_nsec=e.mtime_nsec)
        if e.digest is not None:
            row["digest"] = e.digest
        if e.inline is not None:
            row["inline"] = e.inline.hex()
        row["xattrs"] = [{"key": os.fsdecode(x.key), "value": x.value.hex()} for x in e.xattrs]
    return row


def _print_entries(images, names, full: bool, opaque: bool = False) -> None:
    """The paths of the images as one JSON list (docs/json.md: info ls, info dump)."""
    rows = []
    for img in images:
        entries = _call(lambda p: _native.image_entries(p, opaque=opaque, filter=names, full=full), img)
        rows.extend(entry_json(img, e, full) for e in entries)
    click.echo(json.dumps(rows, indent=2))


@info.command("ls")
@images_arg
@filter_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per path.")
def ls(images, names, as_json):
    """List every path; directories end in '/', symlinks show '-> TARGET', files '@ OBJECT'."""
    if as_json:
        _print_entries(images, _filter(names), full=False)
        return
    for img in images:
        _stream(_native.image_ls, img, filter=_filter(names))


@info.command("dump")
@images_arg
@filter_option
@click.option("--no-opaque", is_flag=True,
              help="Leave out the opaque=x marks format 1 adds to directories holding whiteouts "
                   "(building the dump then gives back the same image either way).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per path, with what the dump says.")
def dump(images, names, no_opaque, as_json):
    """Print the tree in composefs-dump(5) format, as composefs-info dump does (feed it to
    'cfsctl build --from-dump')."""
    if as_json:
        _print_entries(images, _filter(names), full=True, opaque=not no_opaque)
        return
    for img in images:
        _stream(_native.image_to_dump, img, opaque=not no_opaque, filter=_filter(names))


@info.command("objects")
@images_arg
@filter_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def objects(images, names, as_json):
    """List the backing objects (XX/<rest>) the images refer to, sorted, each once."""
    _print_names(_objects(images, None, missing=False, names=_filter(names)), as_json)


@info.command("missing-objects")
@images_arg
@filter_option
@click.option("--basedir", metavar="DIR", type=click.Path(file_okay=False),
              help="Object directory to check (without it, every object is listed).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def missing_objects(images, names, basedir, as_json):
    """List the objects the images refer to that are missing from --basedir."""
    if basedir is not None and not os.path.isdir(basedir):
        raise CfsError("can't open basedir", basedir)
    _print_names(_objects(images, basedir, missing=True, names=_filter(names)), as_json)


@info.command("measure-file")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def measure_file_cmd(files, as_json):
    """Print each FILE's fs-verity sha256 digest, as composefs-info measure-file does: the
    kernel's measurement when the file has fs-verity, else computed here."""
    from .dropin import measure_file

    rows = [{"path": f, "digest": measure_file(f)} for f in files]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo("".join(r["digest"] + "\n" for r in rows), nl=False)


@info.command("header")
@images_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def header(images, as_json):
    """Show each image's format version, header flags and fs-verity digest."""
    rows = []
    for img in images:
        h = _call(_native.image_info, img)
        rows.append({"image": img, "version": h.version, "flags": h.flags, "digest": h.digest})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['image']}: version {r['version']} flags {r['flags']:#x} digest {r['digest']}")
