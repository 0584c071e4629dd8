"""``cfsctl oci import``: container images into the repository."""

from __future__ import annotations

import click

from .cmd_repo import open_repo, repo_option, report_import


@click.group("oci")
def oci_group():
    """Container images (OCI image layouts, docker/podman save archives)."""


@oci_group.command("import")
@click.argument("archive", type=click.Path())
@click.option("--name", required=True, help="Name (ref) for the image in the repository.")
@repo_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def oci_import(archive, name, repo_path, as_json):
    """Import the container image in ARCHIVE as NAME.

    ARCHIVE is an OCI image layout (a directory, or a tar of one) or a 'docker save' /
    'podman save' archive. Layers (tar, gzip or zstd) are applied in order with OCI whiteouts,
    streamed: file contents go straight into the object store. The manifest and config are kept
    beside the image (images/<digest>.oci/).
    """
    from .oci import import_archive

    repo = open_repo(repo_path)
    with repo.locked():
        r = import_archive(repo, archive, name)
    report_import(r, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(oci_group)
