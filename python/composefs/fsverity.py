# SPDX-License-Identifier: MIT OR Apache-2.0
"""fs-verity digests, exactly as the Linux kernel computes them (and as ``fsverity digest`` prints).

The digest is computed in software, so it works on any filesystem, with or without fs-verity
support. The work runs in the Rust core with the GIL released; a large file is hashed on all
cores, and :func:`digest_files` hashes many files in parallel.

Parameters shared by every function (keyword-only):

``algorithm``
    ``"sha256"`` (the default, and what composefs uses) or ``"sha512"``.
``block_size``
    Merkle tree block size in bytes: a power of two from 1024 to 65536 (default 4096).
``salt``
    Up to 32 bytes prepended (zero-padded) to every hashed block (default: none).

Bad parameters raise :class:`ValueError`. A missing, unreadable or non-regular path raises an
:class:`OSError` (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``, or a plain
``OSError`` with ``errno.EINVAL`` for FIFOs, devices and sockets) whose ``filename`` is the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Union

from . import _native

ALGORITHMS = ("sha256", "sha512")
DIGEST_SIZES = {"sha256": 32, "sha512": 64}
MIN_BLOCK_SIZE = 1024
MAX_BLOCK_SIZE = 65536
MAX_SALT_SIZE = 32

PathLike = Union[str, bytes, os.PathLike]


def check_params(algorithm: str, block_size: int, salt: bytes) -> bytes:
    """Validate digest parameters; return the salt as bytes. Raises ValueError."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown hash algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE
        or block_size & (block_size - 1)
    ):
        raise ValueError(
            f"block size {block_size!r} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}"
        )
    if isinstance(salt, str):
        raise ValueError("salt must be bytes, not str (use bytes.fromhex() for a hex salt)")
    salt = bytes(salt)
    if len(salt) > MAX_SALT_SIZE:
        raise ValueError(f"salt is {len(salt)} bytes; at most {MAX_SALT_SIZE} are allowed")
    return salt


def _path(p: PathLike) -> str:
    # str for the Rust side; undecodable bytes survive as surrogate escapes.
    return os.fsdecode(os.fspath(p))


def digest_file(
    path: PathLike, *, algorithm: str = "sha256", block_size: int = 4096, salt: bytes = b""
) -> bytes:
    """Return the fs-verity digest (raw bytes) of the regular file at ``path``."""
    salt = check_params(algorithm, block_size, salt)
    return _native.fsverity_digest_file(_path(path), algorithm, block_size, salt)


def digest_bytes(
    data: bytes, *, algorithm: str = "sha256", block_size: int = 4096, salt: bytes = b""
) -> bytes:
    """Return the fs-verity digest of ``data`` (bytes or any buffer), as if it were a file's content."""
    salt = check_params(algorithm, block_size, salt)
    if not isinstance(data, bytes):
        data = bytes(memoryview(data))
    return _native.fsverity_digest_bytes(data, algorithm, block_size, salt)


def digest_files(
    paths: Iterable[PathLike],
    *,
    algorithm: str = "sha256",
    block_size: int = 4096,
    salt: bytes = b"",
    threads: int | None = None,
) -> list[bytes | OSError]:
    """Digest many files in parallel.

    Returns one item per path, in input order: the digest (``bytes``) or, for a path that could
    not be digested, the ``OSError`` instance that :func:`digest_file` would have raised (not
    raised here, so one bad path does not hide the others' results). ``threads`` is the number of
    worker threads (default: one per CPU).
    """
    salt = check_params(algorithm, block_size, salt)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, not {threads!r}")
    return _native.fsverity_digest_files([_path(p) for p in paths], algorithm, block_size, salt, threads)
