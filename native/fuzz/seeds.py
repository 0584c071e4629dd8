# SPDX-License-Identifier: MIT OR Apache-2.0
"""Make the seed corpora of the fuzz targets (run by `make fuzz-seeds`; the result is committed).

Seeds are small on purpose: each dump seed is a few dozen entries picked from one conformance dump
(../shared/conformance) so that every kind of entry there is represented (hardlinks, whiteouts,
devices, long symlinks, inline contents, object files over 4 GiB, xattrs to escape), with their
parent directories and hardlink targets; plus a directory wide enough to spill over several
dirent blocks. Image seeds are the images our writer makes of those dumps, in both format
versions. fs-verity seeds choose each algorithm, block size and a salt; HTTP seeds are a server's
replies of each kind. Deterministic: the same conformance data gives the same files.

usage: python seeds.py CONFORMANCE_DUMPS_DIR CORPUS_DIR
"""

import gzip
import hashlib
import io
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from composefs import _native

PER_DUMP = 12
# Longer lines (big xattrs, long contents) are left out unless an entry needs them.
MAX_LINE = 1500


def path_of(line: bytes) -> bytes:
    return line.split(b" ", 1)[0]


def parent(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[0] or b"/"


def unescape_path(p: bytes) -> bytes:
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]), p.replace(b"\\\\", b"\\x5c"))


def kinds(line: bytes) -> set:
    f = line.split(b" ")
    mode, k = f[2], set()
    if mode.startswith(b"@"):
        k.add("hardlink")
        mode = mode[1:]
    t = int(mode, 8) & 0o170000
    k.add({0o040000: "dir", 0o100000: "reg", 0o120000: "symlink", 0o020000: "chr", 0o060000: "blk",
           0o010000: "fifo", 0o140000: "sock"}.get(t, "?"))
    if t == 0o020000 and f[6] == b"0":
        k.add("whiteout")
    if f[9] != b"-":
        k.add("inline")
    if int(f[1]) > 1 << 32:
        k.add("huge")
    if len(f) > 11:
        k.add("xattr")
        if b"overlay" in line:
            k.add("overlay-xattr")
    if int(f[4]) > 65535 or int(f[5]) > 65535:
        k.add("bigid")
    if len(f[8]) > 1000:
        k.add("longlink")
    return k


def subset(lines: list, rng: random.Random) -> bytes:
    """The root, then up to PER_DUMP entries chosen for variety, with what they depend on."""
    by_path = {path_of(l): l for l in lines}
    want, seen_kinds = [], set()
    for line in rng.sample(lines[1:], len(lines) - 1):
        if len(line) > MAX_LINE:
            continue
        k = frozenset(kinds(line))
        if k not in seen_kinds or rng.random() < 0.01:
            seen_kinds.add(k)
            want.append(line)
        if len(want) >= PER_DUMP:
            break
    keep = {path_of(lines[0])}
    todo = [path_of(l) for l in want]
    while todo:
        p = todo.pop()
        if p in keep or p not in by_path:
            continue
        keep.add(p)
        todo.append(parent(p))
        f = by_path[p].split(b" ")
        if f[2].startswith(b"@"):
            todo.append(b"/" + f[8].lstrip(b"/"))
    return b"".join(l + b"\n" for l in lines if path_of(l) in keep)


def wide_dump() -> bytes:
    out = [b"/ 4096 40755 2 0 0 0 1700000000.0 - - - user.root=1"]
    out += [b"/d%03d%s 0 100644 1 0 0 0 1700000000.0 - - -" % (i, b"n" * 40) for i in range(160)]
    out.append(b"/l 5 120777 1 0 0 0 1700000000.0 d000 - -")
    return b"\n".join(out) + b"\n"


def fsverity_seeds() -> dict:
    seeds = {}
    body = bytes(range(256)) * 5
    for alg in (0, 1):
        for bs in range(7):
            # which=0 (fs-verity); flags: alg, stretch when bs is even; then the header fields.
            flags = alg | (2 if bs % 2 == 0 else 0)
            salt = bytes(range(bs * 4 % 33))
            hdr = bytes([flags, bs, len(salt)]) + (300 + 97 * bs).to_bytes(2, "little")
            hdr += (1000 + bs).to_bytes(2, "little") + (5000 * bs).to_bytes(4, "little") + (777).to_bytes(2, "little")
            hdr = (hdr + salt).ljust(48, b"\0")
            seeds[f"fsverity-alg{alg}-bs{bs}"] = b"\0" + hdr + body[: 100 * bs + 1]
    for msg_choice, count in ((0, 16), (2, 17), (63, 2), (111, 31), (7, 1)):
        hdr = bytes([1]) + msg_choice.to_bytes(2, "little") + bytes([count - 1, 0x5a])
        seeds[f"sha256-{msg_choice}-{count}"] = b"\1" + hdr.ljust(48, b"\0") + body[:300]
    return seeds


def layer_tars() -> dict:
    """Small layers in each tar dialect: every entry kind, OCI whiteouts, xattrs, long names."""

    def tar(fmt, members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for m, data in members:
                t.addfile(m, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    def member(name, kind=tarfile.REGTYPE, data=b"", **kw):
        m = tarfile.TarInfo(name)
        m.type, m.mtime, m.mode = kind, 1700000000, kw.pop("mode", 0o644)
        for k, v in kw.items():
            setattr(m, k, v)
        if kind == tarfile.REGTYPE:
            m.size = len(data)
            return m, data
        return m, None

    long = "d/" + "n" * 120
    members = [
        member("d/", tarfile.DIRTYPE, mode=0o755),
        member("d/small", data=b"hello\n"),
        member("d/big", data=bytes(range(256)) * 2, uid=70000, gid=5),
        member("d/empty"),
        member("d/link", tarfile.SYMTYPE, linkname="big"),
        member("d/hard", tarfile.LNKTYPE, linkname="d/big"),
        member("d/chr", tarfile.CHRTYPE, devmajor=1, devminor=3),
        member("d/fifo", tarfile.FIFOTYPE),
        member("d/.wh.gone"),
        member("e/.wh..wh..opq"),
        member("./f/../g", data=b"x" * 70),
        member(long, data=b"long"),
    ]
    pax = list(members)
    pax[1] = member("d/small", data=b"hello\n", pax_headers={"SCHILY.xattr.user.k": "v", "mtime": "1700000000.25"})
    out = {
        "ustar": tar(tarfile.USTAR_FORMAT, [m for m in members if len(m[0].name) <= 100]),
        "gnu": tar(tarfile.GNU_FORMAT, members),
        "pax": tar(tarfile.PAX_FORMAT, pax),
    }
    out["gzip"] = gzip.compress(out["pax"], mtime=0)
    try:
        out["zstd"] = subprocess.run(["zstd", "-q", "-c", "-3"], input=out["gnu"], capture_output=True,
                                     check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def http_seeds() -> dict:
    """What a server sends on one connection (after 3 choice bytes: the server's piece size and
    the caller's read size): lengths, chunks with extensions and trailers, redirects (relative,
    scheme-relative, IPv6), keep-alive runs, HTTP/1.0 bodies to the close, and refusals."""
    replies = {
        "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "chunked-then-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n"
                               b"3\r\nabc\r\n0\r\nTrailer: x\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "redirects": b"HTTP/1.1 301 Moved\r\nLocation: ../other/x?y=1\r\nContent-Length: 0\r\n\r\n"
                     b"HTTP/1.1 302 Found\r\nLocation: http://[::1]:8080/a\r\nContent-Length: 3\r\n\r\nabc"
                     b"HTTP/1.1 307 Temporary\r\nLocation: //mirror.test/b\r\ncontent-length: 0\r\n\r\n",
        "until-close": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nuntil the end of the connection",
        "close": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n0123456789",
        "gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 4\r\n\r\n"
                        b"4\r\nabcd\r\n0\r\n\r\n",
        "cut-short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
    }
    return {name: bytes([i * 37 % 256, i * 911 % 256, i]) + r for i, (name, r) in enumerate(replies.items())}


def main() -> None:
    dumps_dir, corpus = Path(sys.argv[1]), Path(sys.argv[2])
    rng = random.Random(17)
    dumps = {}
    for gz in sorted(dumps_dir.glob("sample-*.dump.gz")):
        lines = gzip.decompress(gz.read_bytes()).splitlines()
        name = gz.name.removesuffix(".dump.gz")
        dumps[name] = subset(lines, rng) if len(lines) > PER_DUMP else b"".join(l + b"\n" for l in lines)
    dumps["wide"] = wide_dump()

    def put(target: str, name: str, data: bytes) -> None:
        d = corpus / target
        d.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256(data).hexdigest()[:12]
        if not any(d.glob(f"*-{h}")):
            (d / f"{name}-{h}").write_bytes(data)

    for name, text in dumps.items():
        put("dump_parse", name, text)
        for v in (0, 1):
            image = _native.build_from_dump(text, None, min_version=v, return_image=True).image
            put("image_reader", f"{name}-v{v}", image)
    for name, data in fsverity_seeds().items():
        put("fsverity", name, data)
    for name, data in http_seeds().items():
        put("http_response", name, data)
    # oci_layer: the first byte picks the path (0 layer blob, 3 the same with its digest
    # expected, 1 a kept layer record, 2 the tar reader alone).
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in layer_tars().items():
            put("oci_layer", f"blob-{name}", b"\0" + data)
            put("oci_layer", f"tar-{name}", b"\2" + data)
            if name == "pax":
                put("oci_layer", f"blob-checked-{name}", b"\3" + data)
            layer = _native.oci_read_layer(io.BytesIO(data), tmp + "/store")
            layer.save(tmp + "/record")
            put("oci_layer", f"record-{name}", b"\1" + Path(tmp + "/record").read_bytes())


if __name__ == "__main__":
    main()
