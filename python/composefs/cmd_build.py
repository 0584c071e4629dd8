# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl build``: make a composefs image, like ``mkcomposefs``."""

from __future__ import annotations

import os
import sys

import click

from . import _native
from .errors import CfsError

VERSION_MAX = 1
DEFAULT_MIN_VERSION = 0
DEFAULT_MAX_VERSION = 1


def _versions(min_version: int | None, max_version: int | None) -> tuple[int, int]:
    """mkcomposefs' rule: defaults 0..1; once either is given, the other defaults to 0."""
    if min_version is None and max_version is None:
        lo, hi = DEFAULT_MIN_VERSION, DEFAULT_MAX_VERSION
    else:
        lo, hi = min_version or 0, max_version or 0
    for name, v in (("min", lo), ("max", hi)):
        if not 0 <= v <= VERSION_MAX:
            raise click.BadParameter(f"{v}: supported versions are 0..{VERSION_MAX}", param_hint=f"--{name}-version")
    return lo, max(lo, hi)


def build_from_directory(source: str, image: str | None, *, digest_store: str | None, no_hardlinks: bool = False,
                         return_image: bool = False, **options) -> _native.BuildResult:
    """Build from a directory tree: scan, hash, optionally fill a digest store (see build.py)."""
    from .build import ScanOptions, build_image  # only directory builds need it (start-up time)

    scan = ScanOptions(no_hardlinks=no_hardlinks, skip_devices=options["skip_devices"],
                       skip_xattrs=options["skip_xattrs"], user_xattrs=options["user_xattrs"],
                       use_epoch=options["use_epoch"], threads=options["threads"])
    return build_image(source, image, scan, store=digest_store, min_version=options["min_version"],
                       max_version=options["max_version"], progress=sys.stderr.isatty(), return_image=return_image)


def build_from_dump(source: str, image: str | None, *, return_image: bool = False,
                    **options) -> _native.BuildResult:
    """Build from a dump file (``-``: standard input)."""
    if source == "-":
        data: bytes | str = sys.stdin.buffer.read()
        shown = "<stdin>"
    else:
        data = os.fspath(source)
        shown = source
    try:
        return _native.build_from_dump(data, image, return_image=return_image, **options)
    except _native.FormatError as e:
        raise CfsError(str(e), shown) from None
    except ValueError as e:
        raise CfsError(str(e)) from None


COUNTS = ("inodes", "directories", "regular_files", "inline_files", "object_files", "symlinks", "devices",
          "whiteouts", "hardlinks")


def summary(result: _native.BuildResult, image: str | None) -> dict:
    """The ``--json`` summary of a build (docs/json.md: ``cfsctl build``)."""
    counts = {k: getattr(result, k) for k in COUNTS}
    if result.store is not None:  # what a directory build wrote into the store and found there
        stored, deduplicated = result.store.bytes_stored, result.store.bytes_reused
    else:  # no store (a directory build without one, or a dump build): nothing stored or found
        stored, deduplicated = 0, 0
    return {
        "image": image,
        "digest": result.digest,
        "version": result.version,
        "image_bytes": result.image_size,
        "entries": counts["inodes"] + counts["hardlinks"],
        "counts": counts,
        "shared_xattrs": result.shared_xattrs,
        "objects": result.objects,
        "object_bytes": result.object_bytes,
        "bytes_stored": stored,
        "bytes_deduplicated": deduplicated,
    }


@click.command("build")
@click.argument("source")
@click.argument("image", required=False)
@click.option("--from-dump", "--from-file", "from_dump", is_flag=True,
              help="SOURCE is a composefs-dump(5) file ('-' for standard input), not a directory.")
@click.option("--digest-store", metavar="DIR", help="Copy file contents into this object store (directory sources).")
@click.option("--print-digest", is_flag=True, help="Print the image's fs-verity digest (what mount's digest= takes).")
@click.option("--print-digest-only", is_flag=True, help="Print the digest and write no image (no IMAGE argument).")
@click.option("--hardlinks/--no-hardlinks", default=False,
              help="Directory sources: --hardlinks keeps the names of one source inode one inode in the "
                   "image; by default every name gets its own inode, as mkcomposefs 1.0 does (same image bytes).")
@click.option("--min-version", type=int, default=None, metavar="N",
              help=f"Lowest format version to use (default {DEFAULT_MIN_VERSION}).")
@click.option("--max-version", type=int, default=None, metavar="N",
              help=f"Highest format version allowed (default {DEFAULT_MAX_VERSION}); 1 is used only for whiteouts.")
@click.option("--use-epoch", is_flag=True, help="Make all mtimes zero.")
@click.option("--skip-devices", is_flag=True, help="Leave out character and block devices.")
@click.option("--skip-xattrs", is_flag=True, help="Leave out all extended attributes.")
@click.option("--user-xattrs", is_flag=True, help="Keep only user.* extended attributes.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker threads (default: all CPUs). The image bytes never depend on it.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (digest, entry counts, bytes).")
def build(source, image, from_dump, digest_store, print_digest, print_digest_only, min_version, max_version,
          use_epoch, skip_devices, skip_xattrs, user_xattrs, threads, as_json, hardlinks):
    """Build a composefs image IMAGE from SOURCE (a directory, or a dump with --from-dump).

    The image is byte-identical with what mkcomposefs 1.0.8 writes for the same input. IMAGE
    '-' writes to standard output. The file is written atomically: a temporary file next to
    it, renamed into place when complete.

    Directory sources are walked and hashed on all CPUs (a progress line on stderr when it is a
    terminal); files of 1..64 bytes are inlined, larger ones become objects named by their
    fs-verity digest, copied into --digest-store DIR when given (atomically, deduplicated,
    flushed with one syncfs before exit). Like mkcomposefs 1.0, every name gets its own inode
    by default (the same image bytes); --hardlinks keeps the names of one source inode one inode.
    Mount points below SOURCE are descended into, as mkcomposefs does.

    Unlike mkcomposefs 1.0.8, --use-epoch, --skip-devices, --skip-xattrs and --user-xattrs
    also apply to dump sources.
    """
    if not source:
        raise click.UsageError("Empty source path specified")
    if print_digest_only:
        if image is not None:
            raise click.UsageError("Cannot specify destination path with --print-digest-only")
    elif image is None:
        raise click.UsageError("No destination path specified")
    try:
        _native.check_options(skip_xattrs=skip_xattrs, user_xattrs=user_xattrs)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if image == "-" and sys.stdout.isatty():
        raise CfsError("stdout is a tty; refusing to write an image to it")
    lo, hi = _versions(min_version, max_version)
    options = dict(min_version=lo, max_version=hi, threads=threads or 0, use_epoch=use_epoch,
                   skip_devices=skip_devices, skip_xattrs=skip_xattrs, user_xattrs=user_xattrs)
    to_stdout = image == "-"
    target = None if print_digest_only or to_stdout else image
    if from_dump:
        result = build_from_dump(source, target, return_image=to_stdout, **options)
    else:
        if digest_store is None and not os.path.isdir(source) and os.path.exists(source):
            raise CfsError("not a directory (use --from-dump for a dump file)", source)
        result = build_from_directory(source, target, digest_store=digest_store, no_hardlinks=not hardlinks,
                                      return_image=to_stdout, **options)
    if to_stdout:
        assert result.image is not None  # return_image=True
        out = click.get_binary_stream("stdout")
        out.write(result.image)
        out.flush()
    if as_json:
        import json

        shown = None if target is None and not to_stdout else image
        click.echo(json.dumps(summary(result, shown), indent=2), err=to_stdout)
    elif print_digest or print_digest_only:
        click.echo(result.digest, err=to_stdout)
