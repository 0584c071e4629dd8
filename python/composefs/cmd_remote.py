# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl pull``: an image and its objects from a repository served as plain files."""

from __future__ import annotations

import json
import sys

import click

from .cmd_repo import open_repo, repo_option


@click.command("pull")
@click.argument("url")
@click.argument("name")
@click.option("--as", "as_name", metavar="NAME", help="Name the image NAME here (default: its remote name).")
@click.option("--objects-only", is_flag=True, help="Fetch the objects the image needs without naming it.")
@click.option("--jobs", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Objects fetched at once.")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="Check HTTPS certificates (--tls-verify=false does not).")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pull_cmd(url, name, as_name, objects_only, jobs, tls_verify, repo_path, as_json):
    """Fetch image NAME from the repository at URL into this repository.

    URL is a repository directory served as plain files over http:// or https:// (any static
    web server), or a file:// path. Fetched: refs/NAME, images/DIGEST (checked against the
    digest the ref names) and every object the image needs that the local store lacks
    (objects/XX/<62 hex>), each hashed and stored only if it matches its name. A re-run after
    an interruption fetches only what is still missing.
    """
    from .remote import pull

    repo = open_repo(repo_path)
    with repo.locked():
        r = pull(repo, url, name, as_name=as_name, objects_only=objects_only, tls_verify=tls_verify, jobs=jobs,
                 progress=sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    what = "objects of" if objects_only else "image"
    click.echo(f"{r['name']} sha256:{r['digest']}: {what} pulled, {r['objects_fetched']} of {r['objects']} "
               f"objects fetched ({r['bytes_fetched']} bytes)")


@click.command("fetchd")
@click.argument("url")
@click.option("--fd", "fd", type=click.IntRange(0), required=True,
              help="An open /dev/composefs-fetch that a composefs mount took as fetch_fd.")
@click.option("--basedir", required=True, metavar="DIR",
              help="The mount's first object directory: fetched objects are stored there.")
@click.option("--image", required=True, metavar="FILE", help="The mounted image: only its objects are fetched.")
@click.option("--jobs", type=click.IntRange(1, 256), default=8, show_default=True, help="Objects fetched at once.")
@click.option("--ready-fd", type=click.IntRange(0), default=None, hidden=True,
              help="Write one byte to this descriptor, then close it, once serving.")
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="Check HTTPS certificates (--tls-verify=false does not).")
@click.option("--readahead", type=click.IntRange(0, 4096), default=64, show_default=True, metavar="N",
              help="After a miss, also fetch up to the next N objects of the image in the order 'find' "
                   "meets its files (at most 16 MiB ahead, 16 at a time; a miss never waits behind them); 0: none.")
def fetchd_cmd(url, fd, basedir, image, jobs, ready_fd, tls_verify, readahead):
    """Fetch the objects a composefs module mount misses from the repository at URL.

    Normally started by 'cfsctl mount NAME MNT --remote URL'. Serves the module's requests on
    descriptor --fd until the mount goes; each object is checked against its digest before it is
    stored in --basedir, and checked again by the kernel's fs-verity when it is opened.
    """
    from .fetchd import serve

    serve(fd, url, basedir, image, jobs=jobs, tls_verify=tls_verify, ready_fd=ready_fd, readahead=readahead)
