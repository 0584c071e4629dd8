# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl digest``: print fs-verity digests of files, like fsverity-utils' ``fsverity digest``."""

from __future__ import annotations

import json

import click

from . import fsverity
from .errors import describe_oserror, error_line, printable


def _block_size(ctx, param, value: int) -> int:
    try:
        fsverity.check_params("sha256", value, b"")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _salt(ctx, param, value: str | None) -> bytes:
    if value is None:
        return b""
    try:
        salt = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a hex string (example: --salt 0a1b2c)") from None
    try:
        fsverity.check_params("sha256", 4096, salt)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return salt


def _encode(text: str) -> bytes:
    # Paths come from argv as str with undecodable bytes escaped; print the original bytes.
    return text.encode("utf-8", "surrogateescape")


@click.command("digest")
@click.option(
    "--hash-alg",
    type=click.Choice(fsverity.ALGORITHMS),
    default="sha256",
    show_default=True,
    help="Hash algorithm of the Merkle tree.",
)
@click.option(
    "--block-size",
    type=int,
    default=4096,
    show_default=True,
    callback=_block_size,
    help="Merkle tree block size in bytes: a power of two from 1024 to 65536.",
)
@click.option("--salt", metavar="HEX", callback=_salt, help="Salt, as hex (at most 32 bytes).")
@click.option("--compact", is_flag=True, help="Print only the hex digest of each file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results (for scripts).")
@click.option(
    "-j",
    "--threads",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Worker threads [default: one per CPU].",
)
# Plain strings: every check (exists, readable, regular) is reported per file by the digest itself.
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.pass_context
def digest(ctx, hash_alg, block_size, salt, compact, as_json, threads, files):
    """Print the fs-verity digest of each FILE.

    The digest is computed in software (no fs-verity support needed) and is the one the kernel
    reports for the file once fs-verity is enabled on it with the same parameters; composefs names
    objects by it (sha256, 4096-byte blocks, no salt). Output is one line per file,
    `ALG:HEX PATH`, as `fsverity digest` prints it; `--compact` prints only HEX.

    Files are hashed in parallel, large files on all cores. A file that cannot be read (missing,
    a directory, not a regular file) is reported on stderr as `cfsctl: error: PATH: REASON`, the
    other files are still printed, and the exit status is 1.
    """
    if compact and as_json:
        raise click.UsageError("--compact and --json cannot be used together")
    results = fsverity.digest_files(
        files, algorithm=hash_alg, block_size=block_size, salt=salt, threads=threads
    )
    failed = False
    records = []
    # Lines are collected and written in few calls (20,000 separate writes cost more than the
    # hashing of small files); pending output is flushed before each error to keep the order.
    out = click.get_binary_stream("stdout")
    pending: list[bytes] = []

    def flush():
        out.write(b"".join(pending))
        out.flush()
        pending.clear()

    for path, result in zip(files, results):
        if isinstance(result, BaseException):
            failed = True
            if not isinstance(result, OSError):
                raise result
            if result.filename is None:
                result.filename = path
            err = describe_oserror(result)
            flush()
            click.echo(_encode(error_line(printable(str(err)), as_json)) + b"\n", err=True, nl=False)
            if as_json:
                records.append(
                    {"path": path, "algorithm": hash_alg, "block_size": block_size,
                     "salt": salt.hex(), "digest": None, "error": err.message}
                )
            continue
        if as_json:
            records.append(
                {"path": path, "algorithm": hash_alg, "block_size": block_size,
                 "salt": salt.hex(), "digest": result.hex()}
            )
        elif compact:
            pending.append(result.hex().encode() + b"\n")
        else:
            pending.append(f"{hash_alg}:{result.hex()} ".encode() + _encode(path) + b"\n")
    flush()
    if as_json:
        click.echo(json.dumps(records, indent=2))
    if failed:
        ctx.exit(1)

