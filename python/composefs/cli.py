"""The ``cfsctl`` command line."""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import CfsError, describe_oserror


def fail(err: CfsError, code: int = 1) -> None:
    click.echo(f"cfsctl: error: {err}", err=True)
    sys.exit(code)


class CfsGroup(click.Group):
    """Turns expected errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CfsError as e:
            fail(e)
        except OSError as e:
            fail(describe_oserror(e))


@click.group(cls=CfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cfsctl")
def cli() -> None:
    """Build, inspect and mount composefs images.

    A composefs image holds a directory tree's structure and metadata; file contents live in a
    content-addressed object store named by fs-verity digests, shared between images.
    """


# Sub-commands live in their own modules (one room per concern) and register here.
def _register_commands() -> None:
    from .cmd_digest import digest

    cli.add_command(digest)
    from .cmd_build import build
    from .cmd_info import info

    cli.add_command(build)
    cli.add_command(info)
    from . import cmd_install_helper, cmd_mount

    cmd_mount.register(cli)  # mount, umount
    cmd_install_helper.register(cli)
    from . import cmd_repo

    cmd_repo.register(cli)  # init, import, images, rm, gc, fsck
    from . import cmd_oci

    cmd_oci.register(cli)  # oci import


_register_commands()


def main() -> None:
    cli(prog_name="cfsctl")


if __name__ == "__main__":
    main()
