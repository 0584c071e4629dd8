# SPDX-License-Identifier: MIT OR Apache-2.0
"""The ``cfsctl`` command line."""

from __future__ import annotations

import importlib
import os
import sys

import click

from . import __version__
from .errors import CfsError, describe_oserror, error_line, printable


def fail(err: CfsError | str, code: int = 1, as_json: bool = False) -> None:
    # Names and paths may hold any bytes, escape sequences and newlines included: the message
    # reaches the terminal escaped, on one line.
    text = error_line(printable(str(err)), as_json)
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

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Whether errors are JSON is known before any sub-command parses its options (and fails).
        if ctx.parent is None:
            ctx.meta["cfs.json"] = "--json" in (args[:args.index("--")] if "--" in args else args)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        # Here rather than in cli()'s callback: shell completion resolves commands too (and runs
        # no callbacks), so a NAME completes from the repository the command would use.
        if ctx.parent is None and cmd is not None:
            _global_options(ctx, name, cmd, repo_path=ctx.params.get("repo_path"),
                            as_json=ctx.params.get("as_json") or None)
        return name, cmd, rest

    def invoke(self, ctx: click.Context):
        as_json = ctx.meta.get("cfs.json", False)
        try:
            return super().invoke(ctx)
        except CfsError as e:
            fail(e, as_json=as_json)
        except OSError as e:
            fail(describe_oserror(e), as_json=as_json)
        except click.ClickException as e:
            if not as_json or ctx.parent is not None:
                raise
            fail(e.format_message(), e.exit_code, as_json=True)


@click.group(cls=CfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cfsctl")
@click.option("--repo", "repo_path", metavar="PATH", default=None,
              help="The repository, for the commands that use one (same as their --repo, which wins "
                   "when both are given).")
@click.option("--json", "as_json", is_flag=True, help="JSON output, for the commands that have it (same as their --json).")
def cli(repo_path: str | None, as_json: bool) -> None:
    """Build, inspect and mount composefs images.

    A composefs image holds a directory tree's structure and metadata; file contents live in a
    content-addressed object store named by fs-verity digests, shared between images.

    --repo and --json may come before the command or after it, with the same meaning; given in
    both places, the one after the command wins. Either place beats $CFS_REPO.
    """
    # The global options reach the command through CfsGroup.resolve_command.


def _global_options(ctx: click.Context, name: str, cmd: click.Command, **given) -> None:
    """Hand the global options given before the command to it as its own option defaults
    (ranked by GlobalOption: its own --repo or --json still wins, and the environment loses);
    an option the command does not have is a usage error (not while completing)."""
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return
    leaves = {n: cmd.get_command(ctx, n) for n in cmd.list_commands(ctx)} if isinstance(cmd, click.Group) else {}
    targets = [c for c in leaves.values() if c is not None] or [cmd]
    flags = {"repo_path": "--repo", "as_json": "--json"}
    for key in given:
        if not ctx.resilient_parsing and not any(any(p.name == key for p in c.params) for c in targets):
            raise click.UsageError(f"{flags[key]} does not apply to '{name}'", ctx)
    if isinstance(cmd, click.Group):
        ctx.default_map = {name: {n: dict(given) for n in leaves}}
    else:
        ctx.default_map = {name: dict(given)}


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
    cli.add_lazy("boot", "cmd_boot", "boot_group")  # boot deploy, karg, install-initramfs


_register_commands()


def main() -> None:
    """Run the command, then leave without the interpreter's teardown: once the command is done
    (its clean-ups ran inside it) only freeing is left, which after a big build takes longer than
    the exit itself. Output is flushed first; a bug's traceback still goes the usual way."""
    from . import _native

    _native.configure_process()  # process-wide policy (open-files limit, heap trim): ours to set here
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
