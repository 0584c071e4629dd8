# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl oci import` against hostile archives: every input of issue #12's list and more, made by
code, each refused with exit 1 and one line `cfsctl: error: ...` (no traceback), leaving no ref, no
image file and no temporary behind, within 60 s and 1 GiB of address space. Beside them, inputs
that look odd but are valid and must still import under the same bounds.

The exact wording of most errors is the importer's to choose; where the issue fixes a phrase
(`digest mismatch`) the test asserts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from cfsrun import cfsctl
from ocireg import (
    LAYER_MT,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    E,
    Layout,
    RepoState,
    assert_refused,
    build_image,
    cfsctl_bounded,
    compress,
    d,
    digest,
    docker_save,
    hard,
    layer_tar,
    sym,
    tag,
    tar_layout,
    tar_members,
    unescape_dump,
)

SECRET = b"cfs-test-secret: this file lies outside every archive\n"


# ---- streams too large to hold: deflate made by repetition ------------------------------------


def _tar_header(name: bytes, size: int, typeflag: bytes = b"0", mode: int = 0o644) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"%07o\0" % 0
    h[116:124] = b"%07o\0" % 0
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1700000000
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _gf2_times(mat: list[int], vec: int) -> int:
    s, i = 0, 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, m) for m in mat]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A||B from crc(A), crc(B) and len(B): appending len2 zero bytes to A is a linear
    map over GF(2), applied here by squaring (the gzip trailer of a stream never materialised)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


class Deflated:
    """A gzip stream assembled from independently deflated pieces: each piece is compressed once
    with a full flush (no back-references across it), so a piece repeated a thousand times costs
    a thousand copies of its compressed bytes, not a thousand compressions, and its CRC comes from
    crc32_combine. The uncompressed stream is never held nor hashed: these layers are for
    importers that must give up long before the end (their diff_id is left wrong on purpose)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.crc = 0
        self.size = 0

    def add(self, data: bytes, times: int = 1) -> None:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.parts.append((c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)) * times)
        rep_crc, rep_len, pw_crc, pw_len = 0, 0, zlib.crc32(data), len(data)
        while times:
            if times & 1:
                rep_crc, rep_len = crc32_combine(rep_crc, pw_crc, pw_len), rep_len + pw_len
            pw_crc, pw_len = crc32_combine(pw_crc, pw_crc, pw_len), pw_len * 2
            times >>= 1
        self.crc = crc32_combine(self.crc, rep_crc, rep_len)
        self.size += rep_len

    def gzip(self) -> bytes:
        end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
        head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
        return head + b"".join(self.parts) + end + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)


NOT_THE_DIFF_ID = "sha256:" + hashlib.sha256(b"not the uncompressed stream").hexdigest()


MiB = 1 << 20


def huge_pax_layer(declared: int, present: int) -> tuple[bytes, str]:
    """One PAX extended header whose size field says ``declared`` bytes (a single `path=` record
    of that length), of which ``present`` follow before the stream ends; gzip, a few MiB."""
    z = Deflated()
    z.add(_tar_header(b"PaxHeaders/huge", declared, b"x"))
    prefix = b"%d path=" % declared
    z.add(prefix)
    z.add(b"a" * MiB, (present - len(prefix)) // MiB)
    if present >= declared:
        rest = declared - len(prefix) - ((present - len(prefix)) // MiB) * MiB
        z.add(b"a" * (rest - 1) + b"\n" + b"\0" * (-declared % 512))
        z.add(_tar_header(b"file", 0) + b"\0" * 1024)
    return z.gzip(), NOT_THE_DIFF_ID


def gzip_bomb_layer(size: int) -> tuple[bytes, str]:
    """A tar holding one file of ``size`` zero bytes (a multiple of 1 MiB), gzip, about 1000:1."""
    z = Deflated()
    z.add(_tar_header(b"bomb", size))
    z.add(bytes(MiB), size // MiB)
    z.add(bytes(1024))
    return z.gzip(), NOT_THE_DIFF_ID


# ---- building blocks ---------------------------------------------------------------------------

L1 = [d("etc"), E("etc/hostname", b"hostile-test\n"), E("etc/big", os.urandom(9000))]
L2 = [d("usr"), E("usr/data", os.urandom(7000), mode=0o600)]


def good(lay: Layout, layers=None, **kw):
    img = build_image(lay, layers or [(L1, "gzip"), (L2, "none")], **kw)
    tag(lay, [img])
    return img


def rewrite_manifest(lay: Layout, img, mutate: Callable[[dict], object]) -> None:
    """Replace the manifest by ``mutate(copy)`` (a dict, or raw bytes), re-stored under its own
    digest and named by index.json, so only the change is wrong."""
    m = json.loads(json.dumps(img.manifest_obj))
    new = mutate(m)
    new = m if new is None else new
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    desc = lay.put(raw, OCI_MANIFEST)
    lay.index([desc])


def rewrite_config(lay: Layout, img, mutate: Callable[[dict], object]) -> None:
    c = json.loads(json.dumps(img.config_obj))
    new = mutate(c)
    new = c if new is None else new
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    cdesc = lay.put(raw, OCI_CONFIG)
    rewrite_manifest(lay, img, lambda m: {**m, "config": cdesc})


def sentinel(tmp: Path) -> Path:
    p = tmp / "secret"
    p.write_bytes(SECRET)
    return p


# ---- the hostile cases -------------------------------------------------------------------------
# Each builder gets an empty tmp directory and returns the path to import.


def layer_bytes_swapped(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    lay.blob_path(img.layers[0]["digest"]).write_bytes(compress(layer_tar(L2), "gzip"))
    return lay.root


def _flip_layer_byte(tmp, where: str):
    """Flip one bit of the plain-tar layer: in a file's content (the tar still parses, only the
    digest can tell) or in a header (the tar parser may notice first)."""
    lay = Layout(tmp / "lay")
    img = good(lay)
    p = lay.blob_path(img.layers[1]["digest"])
    b = bytearray(p.read_bytes())
    with tarfile.open(p) as tf:
        member = tf.getmember("usr/data")
    b[member.offset_data + 100 if where == "content" else member.offset + 10] ^= 1
    p.write_bytes(bytes(b))
    return lay.root


def config_bytes_swapped(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    lay.blob_path(img.config["digest"]).write_bytes(json.dumps({**img.config_obj, "architecture": "arm64"}).encode())
    return lay.root


def manifest_bytes_swapped(tmp):
    """Other bytes of the same size under the manifest's digest: only the digest can tell."""
    lay = Layout(tmp / "lay")
    img = good(lay)
    p = lay.blob_path(img.manifest["digest"])
    raw = p.read_bytes()
    swapped = raw.replace(img.layers[0]["digest"].encode(), img.layers[1]["digest"].encode())
    assert len(swapped) == len(raw) and swapped != raw
    p.write_bytes(swapped)
    return lay.root


def layer_swapped_in_tar(tmp):
    return tar_layout(layer_bytes_swapped(tmp), tmp / "lay.tar")


def config_swapped_in_tar(tmp):
    return tar_layout(config_bytes_swapped(tmp), tmp / "lay.tar")


def size_too_large(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 1))
    return lay.root


def size_too_small(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["layers"][1].update(size=m["layers"][1]["size"] - 1))
    return lay.root


def config_size_wrong(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["config"].update(size=m["config"]["size"] - 10))
    return lay.root


def diff_id_mismatch(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_config(lay, img, lambda c: c["rootfs"]["diff_ids"].__setitem__(1, digest(b"another layer")))
    return lay.root


def diff_ids_too_few(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_config(lay, img, lambda c: c["rootfs"]["diff_ids"].pop())
    return lay.root


def config_path_traversal(tmp):
    """Issue #12: `sha256:../../../../etc/shadow` as the config digest. Aimed at a file of the
    test's own, three levels up from blobs/sha256/."""
    sentinel(tmp)
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["config"].update(digest="sha256:../../../secret", size=len(SECRET)))
    return lay.root


def layer_path_traversal(tmp):
    sentinel(tmp)
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["layers"][0].update(digest="sha256:../../../secret", size=len(SECRET)))
    return lay.root


def manifest_path_traversal(tmp):
    sentinel(tmp)
    lay = Layout(tmp / "lay")
    good(lay)
    lay.index([{"mediaType": OCI_MANIFEST, "digest": "sha256:../../../secret", "size": len(SECRET)}])
    return lay.root


def config_path_absolute(tmp):
    s = sentinel(tmp)
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["config"].update(digest=f"sha256:{s}", size=len(SECRET)))
    return lay.root


def blob_symlink_outside(tmp):
    """A blob that is a symlink to a file outside the layout, with the right digest: reads must
    stay inside the layout."""
    lay = Layout(tmp / "lay")
    img = good(lay)
    p = lay.blob_path(img.config["digest"])
    outside = tmp / "outside-config"
    outside.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(outside)
    return lay.root


def blob_symlink_loop_dir(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    p = lay.blob_path(img.layers[0]["digest"])
    p.unlink()
    p.symlink_to(p.name)
    return lay.root


def blob_symlink_loop_tar(tmp):
    """Issue #12: a blob that is a symlink loop inside the archive (spun forever)."""
    lay = Layout(tmp / "lay")
    img = good(lay)
    hexd = img.layers[0]["digest"].split(":")[1]
    lay.blob_path(img.layers[0]["digest"]).unlink()
    out = tar_layout(lay.root, tmp / "lay.tar")
    with tarfile.open(out, "a") as tf:
        ti = tarfile.TarInfo(f"blobs/sha256/{hexd}")
        ti.type, ti.linkname = tarfile.SYMTYPE, f"../sha256/{hexd}"
        tf.addfile(ti)
    return out


def blob_symlink_pair_tar(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    hexd = img.config["digest"].split(":")[1]
    lay.blob_path(img.config["digest"]).unlink()
    out = tar_layout(lay.root, tmp / "lay.tar")
    with tarfile.open(out, "a") as tf:
        for a, b in ((hexd, "other"), ("other", hexd)):
            ti = tarfile.TarInfo(f"blobs/sha256/{a}")
            ti.type, ti.linkname = tarfile.SYMTYPE, b
            tf.addfile(ti)
    return out


def blob_hardlink_loop_tar(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    hexd = img.config["digest"].split(":")[1]
    lay.blob_path(img.config["digest"]).unlink()
    out = tar_layout(lay.root, tmp / "lay.tar")
    with tarfile.open(out, "a") as tf:
        ti = tarfile.TarInfo(f"blobs/sha256/{hexd}")
        ti.type, ti.linkname = tarfile.LNKTYPE, f"blobs/sha256/{hexd}"
        tf.addfile(ti)
    return out


def blob_symlink_outside_tar(tmp):
    sentinel(tmp)
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m["config"].update(digest=digest(SECRET), size=len(SECRET)))
    out = tar_layout(lay.root, tmp / "lay.tar")
    with tarfile.open(out, "a") as tf:
        ti = tarfile.TarInfo(f"blobs/sha256/{digest(SECRET).split(':')[1]}")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(tmp / "secret")
        tf.addfile(ti)
    return out


def _pax(declared, present):
    def build(tmp):
        raw, diff_id = huge_pax_layer(declared, present)
        lay = Layout(tmp / "lay")
        desc = lay.put(raw, LAYER_MT["gzip"])
        cfg = lay.put_json({"architecture": "amd64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, OCI_CONFIG)
        lay.index([lay.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [desc]},
                                OCI_MANIFEST)])
        return lay.root
    return build


def _one_layer(raw_layer: bytes, how: str, media_type: str | None = None, diff_id: str | None = None):
    def build(tmp):
        lay = Layout(tmp / "lay")
        desc = lay.put(raw_layer, media_type or LAYER_MT[how])
        cfg = lay.put_json({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [diff_id or digest(raw_layer)]}}, OCI_CONFIG)
        lay.index([lay.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [desc]},
                                OCI_MANIFEST)])
        return lay.root
    return build


def gzip_bomb(tmp):
    raw, diff_id = gzip_bomb_layer((8 << 30) - MiB)  # the largest a ustar size field holds
    return _one_layer(raw, "gzip", diff_id=diff_id)(tmp)


RANDOM = os.urandom(3000)
TAR_OK = layer_tar(L1)
TRUNC = TAR_OK[: len(TAR_OK) // 2 + 100]  # cut inside etc/big's content


def _claims(typeflag: bytes) -> bytes:
    """What an oci_layer fuzz run found (the Rust tar reader once allocated the 2 GiB a header's
    size field claims before reading it): one header saying 2 GiB, then 9 bytes."""
    return _tar_header(b"d/", 2 << 30, typeflag, 0o755) + b"\x5a" * 9


def _claims_layer(typeflag: bytes, how: str):
    raw = _claims(typeflag)
    return _one_layer(compress(raw, how), how, diff_id=digest(raw))


def _layer_entries(entries, how="none"):
    raw = layer_tar(entries)
    return _one_layer(compress(raw, how), how, diff_id=digest(raw))


def truncated_layout_tar(tmp):
    lay = Layout(tmp / "lay")
    good(lay)
    full = tar_layout(lay.root, tmp / "full.tar").read_bytes()
    out = tmp / "lay.tar"
    out.write_bytes(full[: len(full) * 2 // 3])
    return out


def truncated_gzip(tmp):
    gz = compress(TAR_OK, "gzip")
    return _one_layer(gz[: len(gz) - 20], "gzip", diff_id=digest(TAR_OK))(tmp)


def truncated_zstd(tmp):
    zs = compress(TAR_OK, "zstd")
    return _one_layer(zs[: len(zs) // 2], "zstd", diff_id=digest(TAR_OK))(tmp)


def bad_json_index(tmp):
    lay = Layout(tmp / "lay")
    good(lay)
    lay.write_index(b'{"schemaVersion": 2, "manifests": [')
    return lay.root


def bad_json_manifest(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: b'{"schemaVersion": 2, "config": ')
    return lay.root


def bad_json_config(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_config(lay, img, lambda c: b"\xff\xfe not json")
    return lay.root


def manifest_is_a_list(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: [m])
    return lay.root


def index_manifests_not_list(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    lay.write_index({"schemaVersion": 2, "manifests": img.manifest})
    return lay.root


def index_empty(tmp):
    lay = Layout(tmp / "lay")
    good(lay)
    lay.write_index({"schemaVersion": 2, "manifests": []})
    return lay.root


def manifest_without_config(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m.pop("config"))
    return lay.root


def config_not_a_config(tmp):
    """The config descriptor names a layer blob (a tar, not JSON)."""
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m.update(config={**m["layers"][1], "mediaType": OCI_CONFIG}))
    return lay.root


def _manifest_mutation(fn):
    def build(tmp):
        lay = Layout(tmp / "lay")
        img = good(lay)
        rewrite_manifest(lay, img, fn)
        return lay.root
    return build


def _config_mutation(fn):
    def build(tmp):
        lay = Layout(tmp / "lay")
        img = good(lay)
        rewrite_config(lay, img, fn)
        return lay.root
    return build


def _with_digest(where: str, dg: str):
    """Name a blob by a malformed digest string, and store the blob at the path that string
    would give, so only the check of the string itself can refuse it."""
    def build(tmp):
        lay = Layout(tmp / "lay")
        img = good(lay)
        src = img.layers[0] if where == "layer" else img.config
        data = lay.blob_path(src["digest"]).read_bytes()
        try:
            lay.put(data, src["mediaType"], as_digest=dg)
        except OSError:
            pass
        if where == "layer":
            rewrite_manifest(lay, img, lambda m: m["layers"][0].update(digest=dg))
        else:
            rewrite_manifest(lay, img, lambda m: m["config"].update(digest=dg))
        return lay.root
    return build


def nested_indexes(depth: int):
    def build(tmp):
        lay = Layout(tmp / "lay")
        img = good(lay)
        desc = img.manifest
        for _ in range(depth):
            desc = lay.put_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]}, OCI_INDEX)
        lay.index([desc])
        return lay.root
    return build


def index_names_index_json(tmp):
    """index.json whose entry is an image index with index.json's own bytes (stored as a blob
    too): following it by digest leads back to the same list, one level down each time."""
    lay = Layout(tmp / "lay")
    good(lay)
    inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    for _ in range(50):
        d_ = lay.put_json(inner, OCI_INDEX)
        inner = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d_, d_]}
    lay.write_index(inner)
    return lay.root


def many_layers(n: int):
    def build(tmp):
        lay = Layout(tmp / "lay")
        empty = layer_tar([])
        desc = lay.put(empty, LAYER_MT["none"])
        cfg = lay.put_json({"architecture": "amd64", "os": "linux",
                            "rootfs": {"type": "layers", "diff_ids": [digest(empty)] * n}}, OCI_CONFIG)
        lay.index([lay.put_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [desc] * n},
                                OCI_MANIFEST)])
        return lay.root
    return build


def huge_index_json(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    lay.index([{**img.manifest, "annotations": {"pad": "x" * (16 * MiB)}}])
    return lay.root


def huge_manifest(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_manifest(lay, img, lambda m: m.update(annotations={"pad": " " * (16 * MiB)}))
    return lay.root


def huge_config(tmp):
    lay = Layout(tmp / "lay")
    img = good(lay)
    rewrite_config(lay, img, lambda c: c.update(history=[{"comment": "x" * 1024}] * (128 * 1024)))
    return lay.root


def docker_config_traversal(tmp):
    sentinel(tmp)
    return docker_save(tmp / "d.tar", [(L1, "none")], manifest=[{"Config": "../../../secret", "Layers": []}])


def docker_layer_absolute(tmp):
    return docker_save(tmp / "d.tar", [(L1, "none")],
                       manifest=[{"Config": "x.json", "Layers": [str(tmp / "secret")]}],
                       extra=[("x.json", json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
                           "type": "layers", "diff_ids": [digest(SECRET)]}}).encode(), {})])


def docker_layer_symlink_loop(tmp):
    return docker_save(tmp / "d.tar", [(L1, "none")],
                       manifest=[{"Config": "x.json", "Layers": ["loop/layer.tar"]}],
                       extra=[("x.json", json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
                           "type": "layers", "diff_ids": [digest(TAR_OK)]}}).encode(), {}),
                           ("loop/layer.tar", None, {"type": tarfile.SYMTYPE, "linkname": "layer.tar"})])


def docker_diff_id_mismatch(tmp):
    return docker_save(tmp / "d.tar", [(L1, "none"), (L2, "gzip")], config={
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar(L1)), digest(b"not L2")]}})


def docker_bad_manifest_json(tmp):
    return tar_members(tmp / "d.tar", [("manifest.json", b"[{", {})])


def docker_manifest_empty(tmp):
    return tar_members(tmp / "d.tar", [("manifest.json", b"[]", {})])


def docker_missing_layer(tmp):
    return docker_save(tmp / "d.tar", [(L1, "none")],
                       manifest=[{"Config": "x.json", "Layers": ["nothere/layer.tar"]}],
                       extra=[("x.json", b'{"architecture":"amd64","os":"linux"}', {})])


def not_an_archive(tmp):
    p = tmp / "junk.tar"
    p.write_bytes(RANDOM)
    return p


MANIFEST_TYPE_CASES = {
    "layers-is-object": lambda m: m.update(layers={"a": m["layers"][0]}),
    "layers-is-string": lambda m: m.update(layers="sha256:abc"),
    "layer-is-string": lambda m: m["layers"].__setitem__(0, m["layers"][0]["digest"]),
    "layer-config-mediatype": lambda m: m["layers"][0].update(mediaType=OCI_CONFIG),
    "layer-unknown-mediatype": lambda m: m["layers"][0].update(mediaType="text/plain"),
    "layer-digest-int": lambda m: m["layers"][0].update(digest=12345),
    "layer-digest-missing": lambda m: m["layers"][0].pop("digest"),
    "layer-size-negative": lambda m: m["layers"][0].update(size=-1),
    "layer-size-string": lambda m: m["layers"][0].update(size=str(m["layers"][0]["size"])),
    "layer-size-float": lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 0.5),
    "layer-size-huge": lambda m: m["layers"][0].update(size=1 << 70),
    "config-is-list": lambda m: m.update(config=[m["config"]]),
    "schema-version-1": lambda m: m.update(schemaVersion=1),
}

CONFIG_CASES = {
    "config-rootfs-missing": lambda c: c.pop("rootfs"),
    "config-diff-ids-not-list": lambda c: c["rootfs"].update(diff_ids="sha256:x"),
    "config-diff-id-malformed": lambda c: c["rootfs"]["diff_ids"].__setitem__(0, "sha256:xyz"),
    "config-is-string": lambda c: "just a string",
}

HEX64 = "a" * 64
DIGEST_CASES = {
    "uppercase-hex": lambda real: real.split(":")[0] + ":" + real.split(":")[1].upper(),
    "short-hex": lambda real: real[:-1],
    "long-hex": lambda real: real + "0",
    "md5": lambda real: "md5:" + "0" * 32,
    "sha1": lambda real: "sha1:" + "0" * 40,
    "unknown-algorithm-64": lambda real: "blake3:" + real.split(":")[1],
    "no-algorithm": lambda real: real.split(":")[1],
    "empty-hex": lambda real: "sha256:",
    "sha512-with-256-hex": lambda real: "sha512:" + real.split(":")[1],
    "trailing-newline": lambda real: real + "\n",
    "slash-in-hex": lambda real: "sha256:" + HEX64[:32] + "/" + HEX64[:31],
}


def _digest_case(where, fn):
    def build(tmp):
        lay = Layout(tmp / "probe")
        img = good(lay)
        real = img.layers[0]["digest"] if where == "layer" else img.config["digest"]
        shutil.rmtree(lay.root)
        return _with_digest(where, fn(real))(tmp)
    return build


def escaping_layers():
    return {
        "entry-dotdot": [E("../../evil", b"outside the root")],
        "entry-dotdot-inside": [d("a"), E("a/../../evil", b"outside the root")],
        "entry-absolute-dotdot": [E("/../../evil", b"outside the root")],
        "hardlink-missing": [hard("link", "does/not/exist")],
        "hardlink-dotdot": [hard("link", "../../etc/passwd")],
        "hardlink-to-dir": [d("dir"), hard("link", "dir")],
        "pax-path-1mib": [E("p" * MiB, b"long name")],
        "xattr-value-1mib": [E("x", b"data", xattrs={"user.big": "v" * MiB})],
    }


@dataclass
class Case:
    id: str
    build: Callable[[Path], Path]
    phrase: str | None = None


MISMATCH = "digest mismatch"
CASES = [
    # the list, one by one
    Case("layer-bytes-swapped", layer_bytes_swapped, MISMATCH),
    Case("layer-content-bit-flipped", lambda tmp: _flip_layer_byte(tmp, "content"), MISMATCH),
    Case("layer-header-bit-flipped", lambda tmp: _flip_layer_byte(tmp, "header")),
    Case("config-bytes-swapped", config_bytes_swapped, MISMATCH),
    Case("manifest-bytes-swapped", manifest_bytes_swapped, MISMATCH),
    Case("layer-swapped-in-tar", layer_swapped_in_tar, MISMATCH),
    Case("config-swapped-in-tar", config_swapped_in_tar, MISMATCH),
    Case("config-digest-path-traversal", config_path_traversal),
    Case("layer-digest-path-traversal", layer_path_traversal),
    Case("manifest-digest-path-traversal", manifest_path_traversal),
    Case("config-digest-absolute-path", config_path_absolute),
    Case("blob-symlink-loop-in-tar", blob_symlink_loop_tar),
    Case("blob-symlink-pair-in-tar", blob_symlink_pair_tar),
    Case("blob-hardlink-to-itself-in-tar", blob_hardlink_loop_tar),
    Case("blob-symlink-loop-in-dir", blob_symlink_loop_dir),
    Case("blob-symlink-outside-dir", blob_symlink_outside),
    Case("blob-symlink-outside-tar", blob_symlink_outside_tar),
    Case("pax-header-2gib-truncated", _pax(2 << 30, 64 * MiB)),
    Case("pax-header-1.5gib", _pax(3 << 29, 3 << 29)),
    Case("non-tar-layer", _one_layer(RANDOM, "none")),
    Case("truncated-layer-tar", _one_layer(TRUNC, "none")),
    Case("layer-dir-claims-2gib", _claims_layer(b"5", "none")),
    Case("layer-dir-claims-2gib-gzip", _claims_layer(b"5", "gzip")),
    Case("layer-file-claims-2gib", _claims_layer(b"0", "none")),
    Case("layer-oldfile-claims-2gib-zstd", _claims_layer(b"\0", "zstd")),
    Case("truncated-layout-tar", truncated_layout_tar),
    Case("truncated-gzip", truncated_gzip),
    Case("truncated-zstd", truncated_zstd),
    Case("bad-json-index", bad_json_index),
    Case("bad-json-manifest", bad_json_manifest),
    Case("bad-json-config", bad_json_config),
    Case("manifest-is-a-list", manifest_is_a_list),
    Case("index-manifests-not-a-list", index_manifests_not_list),
    Case("index-without-manifests", index_empty),
    Case("manifest-without-config", manifest_without_config),
    Case("config-is-a-tar", config_not_a_config),
    *[Case(f"manifest-{k}", _manifest_mutation(f)) for k, f in MANIFEST_TYPE_CASES.items()],
    *[Case(k, _config_mutation(f)) for k, f in CONFIG_CASES.items()],
    # more
    Case("diff-id-mismatch", diff_id_mismatch),
    Case("diff-ids-too-few", diff_ids_too_few),
    Case("size-too-large", size_too_large),
    Case("size-too-small", size_too_small),
    Case("config-size-wrong", config_size_wrong),
    *[Case(f"layer-{k}", _layer_entries(v)) for k, v in escaping_layers().items()],
    Case("gzip-bomb-8gib", gzip_bomb),
    Case("index-nested-1000", nested_indexes(1000)),
    Case("index-doubling-50", index_names_index_json),
    Case("manifest-100000-layers", many_layers(100_000)),
    Case("index-json-16mib", huge_index_json),
    Case("manifest-16mib", huge_manifest),
    Case("config-128mib", huge_config),
    *[Case(f"layer-digest-{k}", _digest_case("layer", f)) for k, f in DIGEST_CASES.items()],
    *[Case(f"config-digest-{k}", _digest_case("config", f)) for k, f in list(DIGEST_CASES.items())[:4]],
    Case("docker-config-path-traversal", docker_config_traversal),
    Case("docker-layer-absolute-path", docker_layer_absolute),
    Case("docker-layer-symlink-loop", docker_layer_symlink_loop),
    Case("docker-diff-id-mismatch", docker_diff_id_mismatch),
    Case("docker-bad-manifest-json", docker_bad_manifest_json),
    Case("docker-manifest-empty", docker_manifest_empty),
    Case("docker-missing-layer", docker_missing_layer),
    Case("not-an-archive", not_an_archive),
]


@pytest.fixture
def repo(tmp_path):
    r = cfsctl("init", "--repo", tmp_path / "repo")
    assert r.returncode == 0, r.stderr
    return tmp_path / "repo"


def _no_secret_in(repo: Path) -> None:
    for p in repo.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 64 * MiB:
            assert SECRET not in p.read_bytes(), f"{p} holds the file from outside the archive"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_archive_refused(case, repo, tmp_path):
    work = tmp_path / "case"
    work.mkdir()
    archive = case.build(work)
    before = RepoState.of(repo)
    r = cfsctl_bounded("oci", "import", archive, "--name", "hostile", "--repo", repo, timeout=60)
    assert_refused(r, repo, before, case.phrase, what=case.id)
    _no_secret_in(repo)
    assert not Path("/tmp/cfs-evil").exists()


# ---- valid inputs that must still import, under the same bounds --------------------------------


def _import_ok(repo, archive, name="ok"):
    r = cfsctl_bounded("oci", "import", archive, "--name", name, "--repo", repo, "--json", timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in r.stderr
    return json.loads(r.stdout)


def _tree(repo: Path, dgst: str) -> dict[str, list[bytes]]:
    out = cfsctl("info", "dump", repo / "images" / dgst)
    assert out.returncode == 0, out.stderr
    return {line.split(b" ")[0].decode(): line.split(b" ") for line in out.stdout.splitlines()}


def _content(repo: Path, tree, path: str) -> bytes:
    f = tree[path]
    if f[2].startswith(b"@"):
        f = tree[f[8].decode()]
    if f[8] != b"-" and int(f[2].lstrip(b"@"), 8) & 0o170000 == 0o100000:
        return (repo / "objects" / f[8].decode()).read_bytes()
    return b"" if f[9] == b"-" else unescape_dump(f[9])



BIGA, BIGB = os.urandom(6000), os.urandom(6500)
VALID_LAYERS = [
    ([d("usr"), d("usr/lib"), sym("lib", "usr/lib"), sym("abs", "/usr/lib"), d("etc"), E("etc/a", BIGA),
      d("gone"), E("gone/f", b"x" * 100), d("opq"), E("opq/old", b"old"), E("del", b"d")], "gzip"),
    ([E("lib/via-relative", BIGB), E("abs/via-absolute", b"abs" * 30), hard("etc/a-link", "etc/a"),
      E(".wh.del", b""), E("gone/.wh..wh..opq", b""), E("opq/.wh..wh..opq", b""), E("opq/new", b"new" * 30)], "zstd"),
    ([hard("etc/a-link2", "etc/a-link"), E("gone/.wh.f", b"")], "none"),
]


@pytest.mark.parametrize("algo", ["sha256", "sha512"])
@pytest.mark.parametrize("form", ["dir", "tar"])
def test_valid_odd_archives_import(repo, tmp_path, algo, form):
    """Symlinked parent directories resolve inside the root as container engines do; whiteouts,
    opaque directories and hardlinks across layers apply; sha512 digests are valid digests."""
    lay = Layout(tmp_path / "lay")
    img = build_image(lay, VALID_LAYERS, algo=algo)
    tag(lay, [img])
    archive = lay.root if form == "dir" else tar_layout(lay.root, tmp_path / "lay.tar")
    r = _import_ok(repo, archive)
    t = _tree(repo, r["digest"])
    assert _content(repo, t, "/usr/lib/via-relative") == BIGB
    assert _content(repo, t, "/usr/lib/via-absolute") == b"abs" * 30
    assert t["/lib"][8] == b"usr/lib" and t["/abs"][8] == b"/usr/lib"
    assert "/del" not in t and "/opq/old" not in t and "/gone/f" not in t
    assert _content(repo, t, "/opq/new") == b"new" * 30
    assert _content(repo, t, "/etc/a-link") == _content(repo, t, "/etc/a-link2") == _content(repo, t, "/etc/a") == BIGA
    full = [t[p] for p in ("/etc/a", "/etc/a-link", "/etc/a-link2") if not t[p][2].startswith(b"@")]
    assert len(full) == 1 and full[0][3] == b"3"  # one inode, three names
    assert not any(k.startswith("/.wh") or "/.wh." in k for k in t)


def test_docker_save_imports(repo, tmp_path):
    r = _import_ok(repo, docker_save(tmp_path / "d.tar", VALID_LAYERS))
    assert r["layers"] == 3


def test_long_but_legal_names_import(repo, tmp_path):
    """Names at the limits Linux itself has (255-byte components, 4095-byte paths) are valid."""
    comp = "c" * 255
    deep = "/".join(["d" * 200] * 20)  # 4019 bytes
    lay = Layout(tmp_path / "lay")
    tag(lay, [build_image(lay, [([E(comp, b"x"), d(deep.split("/")[0]),
                                  *[d("/".join(deep.split("/")[:i])) for i in range(2, 20)],
                                  E(deep + "/f", b"deep")], "gzip")])])
    t = _tree(repo, _import_ok(repo, lay.root)["digest"])
    assert "/" + comp in t and "/" + deep + "/f" in t


@pytest.mark.parametrize("target", ["../../../../../tmp", "/../../../../tmp", "/tmp"])
def test_symlinked_parent_pointing_outside_stays_inside(repo, tmp_path, target):
    """A parent directory that is a symlink leading out of the root is resolved inside the root,
    as container engines resolve it (scoped): the file lands in the image's /tmp, never in the
    host's."""
    lay = Layout(tmp_path / "lay")
    tag(lay, [build_image(lay, [([d("tmp", 0o1777), sym("up", target)], "gzip"),
                                ([E("up/cfs-evil", b"through a symlink")], "none")])])
    t = _tree(repo, _import_ok(repo, lay.root)["digest"])
    assert _content(repo, t, "/tmp/cfs-evil") == b"through a symlink"
    assert t["/up"][8] == target.encode()
    assert not Path("/tmp/cfs-evil").exists()
