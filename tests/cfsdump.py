# SPDX-License-Identifier: MIT OR Apache-2.0
"""Test helpers: a small independent reader of composefs-dump(5) text, for comparing trees."""

from __future__ import annotations

import re

_ESC = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")


def unescape(s: bytes) -> bytes:
    def sub(m):
        e = m.group(1)
        return {b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}.get(e) or bytes([int(e[1:], 16)])

    return _ESC.sub(sub, s)


def escape(b: bytes, *, equal: bool = False, lone_dash: bool = False) -> bytes:
    if lone_dash and b == b"-":
        return b"\\x2d"
    out = bytearray()
    for c in b:
        if c == 0x5C:
            out += b"\\\\"
        elif c == 0x0A:
            out += b"\\n"
        elif c == 0x0D:
            out += b"\\r"
        elif c == 0x09:
            out += b"\\t"
        elif equal and c == 0x3D:
            out += b"\\x3d"
        elif 0x21 <= c <= 0x7E:
            out.append(c)
        else:
            out += b"\\x%02x" % c
    return bytes(out)


def canonical(text: bytes) -> dict:
    """Map each path to what an image preserves about it. Directory sizes and link counts are
    derived by the writer, so they are left out; hardlinks become groups of paths."""
    entries = {}
    links = {}
    for line in text.splitlines():
        f = line.split(b" ")
        path = unescape(f[0])
        mode = f[2]
        if mode.startswith(b"@"):
            links[path] = unescape(f[8])
            continue
        m = int(mode, 8)
        is_dir = m & 0o170000 == 0o040000
        xattrs = tuple(sorted((unescape(k), unescape(v)) for k, v in (x.split(b"=", 1) for x in f[11:] if x)))
        entries[path] = dict(
            mode=m,
            size=None if is_dir else int(f[1]),
            nlink=None if is_dir else int(f[3]),
            uid=int(f[4]),
            gid=int(f[5]),
            rdev=int(f[6]),
            mtime=f[7],
            payload=None if f[8] == b"-" else unescape(f[8]),
            content=None if f[9] == b"-" else unescape(f[9]),
            digest=None if f[10] == b"-" else f[10],
            xattrs=xattrs,
        )
    # Group hardlinks: each group is the set of names of one inode.
    groups = {}
    for p in entries:
        groups[p] = {p}
    for p, t in links.items():
        while t in links:
            t = links[t]
        groups[t].add(p)
    result = {}
    for p, e in entries.items():
        names = frozenset(groups[p])
        result[names] = e
    return result
