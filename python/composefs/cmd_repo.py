# SPDX-License-Identifier: MIT OR Apache-2.0
"""Repository commands: ``cfsctl init``, ``import``, ``images``, ``rm``, ``gc``, ``fsck``."""

from __future__ import annotations

import json
import os
import sys

import click

from .globalopts import GlobalOption
from .errors import CfsError, printable
from .repository import Repository, default_path

repo_option = click.option(
    "--repo", "repo_path", cls=GlobalOption, metavar="PATH", envvar="CFS_REPO", default=None,
    help="Repository directory (default: $CFS_REPO, else /var/lib/composefs as root, "
         "~/.local/share/composefs otherwise).")


def open_repo(path: str | None) -> Repository:
    return Repository.open(path or default_path())


def complete_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of image names: the refs of the repository --repo (given before the
    name) or $CFS_REPO or the default names. Nothing when there is no readable repository."""
    from click.shell_completion import CompletionItem

    try:
        refs, _ = open_repo(ctx.params.get("repo_path") or os.environ.get("CFS_REPO")).scan_refs()
    except (CfsError, OSError, ValueError):
        return []
    return [CompletionItem(n) for n in refs if n.startswith(incomplete)]


def _human(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


@click.command("init")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init_cmd(repo_path, as_json):
    """Create a repository (objects/, images/, refs/, meta.json); harmless if it exists."""
    repo = Repository.init(repo_path or default_path())
    if as_json:
        click.echo(json.dumps({"repo": repo.path}, indent=2))
    else:
        click.echo(repo.path)


def report_import(r: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{r['name']} sha256:{r['digest']} {r['entries']} entries, {r['objects']} objects "
               f"({_human(r['object_bytes'])})")
    if r["missing_objects"]:
        click.echo(f"cfsctl: warning: {r['missing_objects']} of {r['objects']} objects are not in the "
                   "repository's object store; the image cannot be read in full until they are added",
                   err=True)


@click.command("import")
@click.argument("source", type=click.Path())
@click.option("--name", required=True, help="Name (ref) for the image.")
@click.option("--from-dump", is_flag=True,
              help="SOURCE is a composefs-dump(5) file ('-' for stdin), not a directory.")
@click.option("--hardlinks/--no-hardlinks", default=None,
              help="--hardlinks keeps the names of one source inode one inode in the image; by default "
                   "every name gets its own inode, as mkcomposefs 1.0 does (the same image digest).")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_cmd(source, name, from_dump, hardlinks, repo_path, as_json):
    """Build SOURCE into the repository as image NAME.

    A directory is scanned and its files are stored in the object store; a dump's objects must
    already be there (the number missing is reported). NAME is replaced if it exists.
    """
    if from_dump and hardlinks is not None:
        raise CfsError(f"--{'' if hardlinks else 'no-'}hardlinks applies to a directory, not to --from-dump")
    repo = open_repo(repo_path)
    with repo.locked():
        if from_dump:
            if source == "-":
                r = repo.import_dump(sys.stdin.buffer.read(), name, "-")
            else:
                if not os.path.isfile(source):
                    raise CfsError("No such file" if not os.path.exists(source) else "not a regular file", source)
                r = repo.import_dump(os.path.abspath(source), name, os.path.abspath(source))
        else:
            r = repo.import_directory(source, name, no_hardlinks=not hardlinks)
    report_import(r, as_json)


@click.command("images")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def images_cmd(repo_path, as_json):
    """List the repository's images: name, digest, entries, object bytes, unique and shared bytes.

    Unique bytes are those of objects no other named image uses; shared bytes the rest.
    """
    repo = open_repo(repo_path)
    with repo.locked():
        imgs = repo.list_images()
    if as_json:
        click.echo(json.dumps(imgs, indent=2))
        return
    click.echo(f"{'NAME':<24} {'DIGEST':<14} {'ENTRIES':>8} {'BYTES':>11} {'UNIQUE':>11} {'SHARED':>11}")
    for i in imgs:
        name = printable(i["name"])
        if i.get("missing"):
            click.echo(f"{name:<24} {printable(i['digest'][:12]):<14} (image file missing)")
            continue
        if "unreadable" in i:
            click.echo(f"{name:<24} {printable(i['digest'][:12]):<14} (unreadable: {printable(i['unreadable'])})")
            continue
        click.echo(f"{name:<24} {i['digest'][:12]:<14} {i['entries']:>8} {_human(i['object_bytes']):>11} "
                   f"{_human(i['unique_bytes']):>11} {_human(i['shared_bytes']):>11}")


@click.command("rm")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_names)
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rm_cmd(names, repo_path, as_json):
    """Remove image names; 'cfsctl gc' then frees what nothing refers to."""
    repo = open_repo(repo_path)
    with repo.locked():
        for n in names:
            repo.remove_ref(n)
    if as_json:
        click.echo(json.dumps({"removed": list(names)}, indent=2))


@click.command("gc")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def gc_cmd(dry_run, repo_path, as_json):
    """Remove images no name refers to and objects no remaining image uses.

    Waits for running imports to finish (it takes the repository's lock exclusively).
    """
    repo = open_repo(repo_path)
    with repo.locked(exclusive=True):
        r = repo.gc(dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    for p in r["skipped"]:
        click.echo(f"cfsctl: warning: skipped {printable(p['path'])}: {printable(p['message'])}", err=True)
    if r["images_kept"]:
        click.echo("cfsctl: warning: no image removed: a ref could not be read, so which images are named is "
                   "unknown (see 'cfsctl fsck')", err=True)
    if r["objects_kept"]:
        click.echo("cfsctl: warning: no object removed: a named image could not be read, so the objects it "
                   "needs are unknown (see 'cfsctl fsck')", err=True)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(r['images_removed'])} images and {r['objects_removed']} objects, "
               f"{_human(r['bytes_freed'])}")


@click.command("fsck")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fsck_cmd(repo_path, as_json):
    """Check the repository: every object's content against its name (in parallel), every image's
    digest against its name and its objects present, every name pointing at an image.

    Exits 1 when a problem is found.
    """
    repo = open_repo(repo_path)
    with repo.locked():
        r = repo.fsck()
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        for p in r["problems"]:
            click.echo(f"cfsctl: {p['kind']}: {printable(p['path'])}: {printable(p['message'])}", err=True)
        click.echo(f"checked {r['objects']} objects and {r['images']} images: "
                   f"{len(r['problems'])} problems")
    if r["problems"]:
        sys.exit(1)


def register(cli: click.Group) -> None:
    for c in (init_cmd, import_cmd, images_cmd, rm_cmd, gc_cmd, fsck_cmd):
        cli.add_command(c)
