# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl boot``: deploy an image as an operating system's root and set up early boot."""

from __future__ import annotations

import json

import click

from . import _native, boot


@click.group("boot")
def boot_group():
    """Boot a machine from a composefs image (see README: boot from composefs)."""


@boot_group.command("deploy")
@click.argument("image")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="The target root partition (mounted): its repository is ROOT/composefs.")
@click.option("--karg-file", type=click.Path(dir_okay=False),
              help="Also write the kernel argument (one line) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def deploy_cmd(image, root, karg_file, as_json):
    """Deploy IMAGE (name or digest in ROOT/composefs) and print its kernel argument.

    Makes ROOT/state/deploy/<digest>/{etc,var}/{upper,work} and ROOT/state/var (kept when they
    exist) and prints composefs=<digest>, the argument the initramfs boots that image from.
    """
    r = boot.deploy(root, image)
    if karg_file:
        _native.write_atomic(karg_file, (r["karg"] + "\n").encode())
    click.echo(json.dumps(r, indent=2) if as_json else r["karg"])


@boot_group.command("karg")
@click.argument("image")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="The target root partition: its repository is ROOT/composefs.")
@click.option("--json", "as_json", is_flag=True, help="Print the digest and the argument as JSON.")
def karg_cmd(image, root, as_json):
    """Print the kernel argument (composefs=<digest>) of IMAGE in ROOT/composefs."""
    from .repository import Repository

    repo = Repository.open(boot.repo_path(root))
    with repo.locked():
        digest = repo.resolve(image)
    if as_json:
        click.echo(json.dumps({"digest": digest, "karg": boot.karg(digest)}, indent=2))
    else:
        click.echo(boot.karg(digest))


@boot_group.command("install-initramfs")
@click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
              help="The root whose /etc/initramfs-tools gets the hook and boot script "
              "(and /usr/local/lib/composefs the program the script runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the files written as JSON.")
def install_initramfs_cmd(root, as_json):
    """Install the initramfs-tools hook and boot script, and composefs-setup-root, the program
    the script runs (then run update-initramfs in ROOT)."""
    written = boot.install_initramfs(root)
    if as_json:
        click.echo(json.dumps({"written": written}, indent=2))
        return
    for p in written:
        click.echo(p)
