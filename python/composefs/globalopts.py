# SPDX-License-Identifier: MIT OR Apache-2.0
"""The class of options ``cfsctl`` takes both before a command and as the command's own.

Apart from cli.py so that the command modules can use it without importing cli.py a second time
when it runs as ``python -m composefs.cli`` (as ``__main__``)."""

from __future__ import annotations

import click
from click.core import ParameterSource


class GlobalOption(click.Option):
    """A command's option that ``cfsctl`` also takes before the command (``--repo``).

    click ranks a command's own command line, then its environment variable, then the default
    map ``_global_options`` fills with what came before the command. That value came from the
    command line too, so here it ranks above the environment: the command's own option, else the
    one before the command, else the environment variable, else the default. Every global option
    with an ``envvar`` must be declared with this class (tests/test_cli_basics.py checks it)."""

    def consume_value(self, ctx: click.Context, opts):
        value, source = super().consume_value(ctx, opts)
        if source == ParameterSource.ENVIRONMENT:
            given = ctx.lookup_default(self.name)  # type: ignore[arg-type]
            if given is not None:
                return given, ParameterSource.DEFAULT_MAP
        return value, source
