# SPDX-License-Identifier: MIT OR Apache-2.0
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


def printable(text: str) -> str:
    """``text`` made safe for a terminal: every character that is not printable (control
    characters such as ESC and newline, format characters, the surrogate escapes that stand for
    non-UTF-8 path bytes) is written as a backslash escape (``\\x1b``, ``\\n``, ``\\udc80`` becomes
    ``\\x80``). The one escaping used for everything the CLI says about names and paths."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        elif c in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[c])
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out)


def error_line(text: str, as_json: bool = False) -> str:
    """The one-line error a command prints on stderr: ``cfsctl: error: TEXT``, or under
    ``--json`` the object ``{"error": TEXT}`` (docs/json.md), TEXT escaped the same way."""
    if as_json:
        import json

        return json.dumps({"error": text})
    return f"cfsctl: error: {text}"


def describe_oserror(err: OSError) -> CfsError:
    """Turn an OSError (from Python or from the Rust core) into a CfsError naming its path."""
    what = err.strerror or str(err)
    return CfsError(what, err.filename)
