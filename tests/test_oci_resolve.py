# SPDX-License-Identifier: MIT OR Apache-2.0
"""An image's documents (index, manifest, config), as a registry or a layout hands them over,
driven with hypothesis: ``oci.resolve`` gives the image for the platform, with every document it
read checked against its descriptor and every digest it returns well-formed, or an ImageError —
never another exception (a traceback at the CLI).

The documents are drawn near the valid ones: a third of them valid (they must resolve), the
others with fields spoiled at a drawn rate (any JSON value, or left out), descriptors pointing at
blobs that are not there or carrying the wrong size, other platforms' entries in the indexes."""

from __future__ import annotations

import hashlib
import io
import json

from hypothesis import event, given, settings
from hypothesis import strategies as st

from composefs import _native, oci
from composefs.oci import ImageError

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PLATFORMS = [{"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"},
             {"os": "windows", "architecture": "amd64"}]
BAD_DIGESTS = ["sha256:../../etc/shadow", "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha256:" + "0" * 63, ""]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemSource(oci.Source):
    """Blobs by digest in memory; the top-level document named by nothing (as a layout's
    index.json, or a registry's manifest fetched by tag)."""

    label = "mem"

    def __init__(self, top: bytes, blobs: dict[str, bytes]):
        self._top, self.blobs = top, blobs

    def top(self):
        return self._top, None

    def open_blob(self, desc):
        if desc.digest not in self.blobs:
            raise ImageError(f"blob {desc.digest}: not in the source")
        return io.BytesIO(self.blobs[desc.digest])


class Faults:
    """How often a field is spoiled in one drawn image: never (the image must resolve), or at a
    drawn rate; ``spoil`` says whether the next field is."""

    def __init__(self, draw):
        self.draw = draw
        self.rate = draw(st.sampled_from([0, 0, 2, 5, 15, 40]))  # percent

    def spoil(self) -> bool:
        return self.rate > 0 and self.draw(st.integers(0, 99)) < self.rate


@st.composite
def descriptor(draw, faults: Faults, data: bytes, media_types: tuple[str, ...]):
    d = {"mediaType": draw(st.sampled_from(media_types)), "digest": sha(data), "size": len(data)}
    if faults.spoil():
        d["digest"] = draw(st.sampled_from([sha(b"nowhere" + data), *BAD_DIGESTS]) | JUNK)
    if faults.spoil():
        d["size"] = draw(st.sampled_from([len(data) + 1, len(data) - 1, -1, 1 << 47, True]) | JUNK)
    if faults.spoil():
        d["mediaType"] = draw(st.sampled_from(["text/plain", ""]) | JUNK)
    if faults.spoil():
        d["platform"] = draw(st.sampled_from(PLATFORMS) | JUNK)
    for key in ("digest", "size", "mediaType"):
        if faults.spoil():
            del d[key]
    return d


def put(draw, faults: Faults, doc: dict, key: str, good) -> None:
    """``doc[key] = good``, or spoiled: any JSON value, or no such key."""
    if not faults.spoil():
        doc[key] = good
    elif draw(st.booleans()):
        doc[key] = draw(JUNK)


def not_json():
    """A document that is not a JSON object: any bytes, or any other JSON value."""
    return st.binary(max_size=30) | JUNK.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())


@st.composite
def image(draw):
    """(faults, top-level bytes, blobs): a config, a manifest, and zero to two index levels
    above it, for linux/amd64."""
    faults = Faults(draw)
    blobs: dict[str, bytes] = {}
    layer_blobs = [draw(st.binary(min_size=1, max_size=8)) for _ in range(draw(st.integers(0, 3)))]
    ids = [sha(b) for b in layer_blobs] + (["sha256:" + "1" * 64] if faults.spoil() else [])
    rootfs: dict = {"type": "layers"}
    put(draw, faults, rootfs, "diff_ids", ids)
    config: dict = {"architecture": "amd64", "os": "linux"}
    put(draw, faults, config, "rootfs", rootfs)
    config_bytes = draw(not_json()) if faults.spoil() else json.dumps(config).encode()
    blobs[sha(config_bytes)] = config_bytes
    man: dict = {}
    put(draw, faults, man, "schemaVersion", 2)
    if draw(st.booleans()):
        put(draw, faults, man, "mediaType", draw(st.sampled_from(oci.MANIFEST_TYPES)))
    put(draw, faults, man, "config",
        draw(descriptor(faults, config_bytes, ("application/vnd.oci.image.config.v1+json",))))
    put(draw, faults, man, "layers", [draw(descriptor(faults, b, oci.LAYER_TYPES)) for b in layer_blobs])
    top = json.dumps(man).encode()
    for _ in range(draw(st.integers(0, 2))):
        blobs[sha(top)] = top
        idx: dict = {}
        put(draw, faults, idx, "schemaVersion", 2)
        if draw(st.booleans()):
            put(draw, faults, idx, "mediaType", draw(st.sampled_from(oci.INDEX_TYPES)))
        entries = []
        for _ in range(draw(st.integers(0, 2))):  # other platforms' images, not in the source
            other = draw(descriptor(faults, b"other" + top, oci.MANIFEST_TYPES))
            other["platform"] = draw(st.sampled_from(PLATFORMS[1:]))
            entries.append(other)
        mine = draw(descriptor(faults, top, oci.MANIFEST_TYPES + oci.INDEX_TYPES))
        if draw(st.booleans()):
            mine.setdefault("platform", PLATFORMS[0])
        entries.insert(draw(st.integers(0, len(entries))), mine)
        put(draw, faults, idx, "manifests", entries)
        top = json.dumps(idx).encode()
    if faults.spoil():
        top = draw(not_json())
    return faults, top, blobs


@settings(max_examples=500, deadline=None)
@given(img=image())
def test_resolve_gives_a_checked_image_or_an_image_error(img):
    faults, top, blobs = img
    try:
        res = oci.resolve(MemSource(top, blobs), oci.Platform.parse("linux/amd64"))
    except ImageError as e:
        assert faults.rate > 0, f"a valid image refused: {e}"
        assert str(e) and "\n" not in str(e)
        event(f"refused: {str(e).split(':')[0][:20]}")
        return
    event("resolved" if faults.rate == 0 else "resolved, spoiled")
    # What was read is what its descriptor named; what is returned is well-formed.
    assert json.loads(res.manifest)["schemaVersion"] == 2
    assert res.config in blobs.values()
    assert len(res.layers) <= oci.MAX_LAYERS
    for spec in res.layers:
        assert _native.oci_check_digest(spec.diff_id) == spec.diff_id
        assert spec.desc is not None and spec.desc.media_type in oci.LAYER_TYPES
        assert _native.oci_check_digest(spec.desc.digest) == spec.desc.digest
        assert 0 <= spec.desc.size <= 1 << 46
