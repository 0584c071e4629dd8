# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl oci import`` and ``cfsctl oci pull``: container images into the repository."""

from __future__ import annotations

import sys

import click

from .cmd_repo import open_repo, repo_option, report_import

platform_option = click.option(
    "--platform", metavar="OS/ARCH[/VARIANT]",
    help="Which image of a multi-platform index to take (default: the running machine's, e.g. linux/amd64).")


@click.group("oci")
def oci_group():
    """Container images: OCI image layouts, docker/podman save archives, registries."""


@oci_group.command("import")
@click.argument("archive", type=click.Path())
@click.option("--name", required=True, help="Name (ref) for the image in the repository.")
@platform_option
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def oci_import(archive, name, platform, repo_path, as_json):
    """Import the container image in ARCHIVE as NAME.

    ARCHIVE is an OCI image layout (a directory, or a tar of one) or a 'docker save' /
    'podman save' archive. Every blob is checked against its digest and size, every layer's
    uncompressed tar against the config's diff_id, while it is read; layers (tar, gzip, zstd)
    are applied in order with OCI whiteouts, file contents going straight into the object store.
    Layers imported before (by diff_id) are not read again. The manifest and config are kept
    beside the image (images/<digest>.oci/). A malformed or tampered archive leaves no image.
    """
    from .oci import import_archive

    repo = open_repo(repo_path)
    with repo.locked():
        r = import_archive(repo, archive, name, platform=platform, progress=sys.stderr.isatty())
    report_import(r, as_json)


@oci_group.command("pull")
@click.argument("ref", metavar="REF")
@click.option("--name", required=True, help="Name (ref) for the image in the repository.")
@platform_option
@click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
              help="Require HTTPS with a valid certificate. --tls-verify=false allows plain HTTP "
                   "and unchecked certificates (a local registry).")
@click.option("--authfile", type=click.Path(dir_okay=False),
              help="Credentials file (auth.json). Default: $REGISTRY_AUTH_FILE, "
                   "$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, "
                   "~/.docker/config.json.")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def oci_pull(ref, name, platform, tls_verify, authfile, repo_path, as_json):
    """Pull the container image REF from a registry as NAME.

    REF is docker://HOST[:PORT]/REPO[:TAG] or docker://HOST[:PORT]/REPO@sha256:HEX. Layers are
    fetched concurrently and streamed through verification (blob digest and size, diff_id)
    straight into the object store; nothing unverified is kept. Layers already in the
    repository (by diff_id, also from an interrupted earlier pull) are not fetched again;
    transient network errors are retried with back-off.
    """
    from .registry import pull

    repo = open_repo(repo_path)
    with repo.locked():
        r = pull(repo, ref, name, platform=platform, tls_verify=tls_verify, authfile=authfile,
                 progress=sys.stderr.isatty())
    report_import(r, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(oci_group)
