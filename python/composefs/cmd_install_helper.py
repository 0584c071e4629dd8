# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl install-helper``: make ``mount -t composefs`` work through mount(8)."""

from __future__ import annotations

import json
import os

import click

from .errors import CfsError
from .mount import native_binary

HELPER = "mount.composefs"


def helper_script() -> str:
    """The installed ``mount.composefs`` (the native helper, next to this Python's cfsctl)."""
    return native_binary(HELPER)


def install_helper(prefix: str, force: bool = False) -> dict:
    src = helper_script()
    if not os.path.isdir(prefix):
        raise CfsError("not a directory", prefix)
    dest = os.path.join(prefix, HELPER)
    if os.path.islink(dest) or os.path.exists(dest):
        if os.path.islink(dest) and os.readlink(dest) == src:
            return {"helper": dest, "target": src, "changed": False}
        if not force:
            raise CfsError("already exists (use --force to replace it)", dest)
        os.unlink(dest)
    os.symlink(src, dest)
    return {"helper": dest, "target": src, "changed": True}


@click.command("install-helper")
@click.option("--prefix", default="/sbin", show_default=True, metavar="DIR",
              help="Directory mount(8) searches for mount.<type> helpers.")
@click.option("--force", is_flag=True, help="Replace an existing mount.composefs.")
@click.option("--json", "as_json", is_flag=True)
def install_helper_cmd(prefix, force, as_json):
    """Symlink the mount.composefs helper into PREFIX so that
    `mount -t composefs IMAGE MNT -o basedir=DIR` and fstab entries work."""
    info = install_helper(prefix, force)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    elif info["changed"]:
        click.echo(f"{info['helper']} -> {info['target']}")


def register(cli: click.Group) -> None:
    cli.add_command(install_helper_cmd)
