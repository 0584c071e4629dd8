"""The ``cfsctl`` command line."""

from __future__ import annotations

import importlib
import os
import sys

import click

from . import __version__
from .errors import CfsError, describe_oserror, printable


def fail(err: CfsError, code: int = 1) -> None:
    # Names and paths may hold any bytes, escape sequences and newlines included: the message
    # reaches the terminal escaped, on one line.
    text = f"cfsctl: error: {printable(str(err))}"
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is None:
        click.echo(text, err=True)
    else:
        sys.stderr.flush()
        buffer.write(text.encode("utf-8", "backslashreplace") + b"\n")
        buffer.flush()
    sys.exit(code)


class CfsGroup(click.Group):
    """Turns expected errors into one-line messages instead of tracebacks, and imports a
    sub-command's module only when that command is looked up (start-up stays small)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, tuple[str, str]] = {}

    def add_lazy(self, name: str, module: str, attr: str) -> None:
        """Register command ``name`` as ``composefs.<module>.<attr>``, imported on first use."""
        self.lazy[name] = (module, attr)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is None and name in self.lazy:
            module, attr = self.lazy[name]
            cmd = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
            self.add_command(cmd, name)
        return cmd

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


# Sub-commands live in their own modules (one room per concern) and register here, one line
# each: name, module, attribute. A module is imported only when its command runs.
def _register_commands() -> None:
    cli.add_lazy("digest", "cmd_digest", "digest")
    cli.add_lazy("build", "cmd_build", "build")
    cli.add_lazy("info", "cmd_info", "info")
    cli.add_lazy("mount", "cmd_mount", "mount_cmd")
    cli.add_lazy("umount", "cmd_mount", "umount_cmd")
    cli.add_lazy("install-helper", "cmd_install_helper", "install_helper_cmd")
    cli.add_lazy("init", "cmd_repo", "init_cmd")  # the repository commands
    cli.add_lazy("import", "cmd_repo", "import_cmd")
    cli.add_lazy("images", "cmd_repo", "images_cmd")
    cli.add_lazy("rm", "cmd_repo", "rm_cmd")
    cli.add_lazy("gc", "cmd_repo", "gc_cmd")
    cli.add_lazy("fsck", "cmd_repo", "fsck_cmd")
    cli.add_lazy("pull", "cmd_remote", "pull_cmd")
    cli.add_lazy("fetchd", "cmd_remote", "fetchd_cmd")
    cli.add_lazy("oci", "cmd_oci", "oci_group")  # oci import, oci pull


_register_commands()


def main() -> None:
    """Run the command, then leave without the interpreter's teardown: once the command is done
    (its clean-ups ran inside it) only freeing is left, which after a big build takes longer than
    the exit itself. Output is flushed first; a bug's traceback still goes the usual way."""
    try:
        cli(prog_name="cfsctl")
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    code = code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    main()
