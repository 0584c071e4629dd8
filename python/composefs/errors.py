"""Exceptions shown to users by the CLI as ``cfsctl: error: <path>: <what>``."""

from __future__ import annotations

import os


class CfsError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits non-zero."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def describe_oserror(err: OSError) -> CfsError:
    """Turn an OSError (from Python or from the Rust core) into a CfsError naming its path."""
    what = err.strerror or str(err)
    return CfsError(what, err.filename)
