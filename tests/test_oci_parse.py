# SPDX-License-Identifier: MIT OR Apache-2.0
"""The Rust core's readers of outside input, driven with hypothesis: a tar archive (the member
index of an image archive, a layer) and a layer blob checked against its digests. Whatever the
bytes, the answer is a result or a FormatError — never a crash, a hang or another exception —
and valid archives built by Python's tarfile read back entry for entry."""

import hashlib
import io
import os
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import _native

NAMES = st.text(alphabet="abcxyz./-_é", min_size=1, max_size=120).filter(lambda n: n.strip("./"))


def build(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, "target/" + name
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


ENTRIES = st.lists(st.tuples(NAMES, st.sampled_from(["file", "dir", "sym"]), st.binary(max_size=3000)),
                   min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES)
def test_tar_index_reads_what_tarfile_wrote(tmp_path, entries):
    data = build(entries)
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    got = _native.tar_index(path)
    names = [os.fsdecode(m.name).rstrip("/") for m in got]
    assert names == [tarfile.TarInfo(n).name.rstrip("/") for n, _, _ in entries]
    for m, (_, want_kind, body) in zip(got, entries):
        assert m.kind == {"file": "file", "dir": "dir", "sym": "symlink"}[want_kind]
        if m.kind == "file":
            assert data[m.offset:m.offset + m.size] == body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, cuts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
       truncate=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_mutated_archives_give_a_result_or_format_error(tmp_path, entries, cuts, truncate):
    data = bytearray(build(entries))
    for at, byte in cuts:
        data[at % len(data)] = byte
    if truncate is not None:
        del data[truncate % (len(data) + 1):]
    path = tmp_path / "m.tar"
    path.write_bytes(bytes(data))
    try:
        _native.tar_index(path)
    except _native.FormatError:
        pass
    store = tmp_path / "store"
    try:
        _native.oci_read_layer(io.BytesIO(bytes(data)), store)
    except _native.FormatError:
        pass
    # Checked against the digests of the unmutated archive, a mutation is always refused.
    good = build(entries)
    if bytes(data) != good:
        with pytest.raises(_native.FormatError):
            _native.oci_read_layer(io.BytesIO(bytes(data)), store,
                                   digest="sha256:" + hashlib.sha256(good).hexdigest(), size=len(good),
                                   diff_id="sha256:" + hashlib.sha256(good).hexdigest())


@pytest.mark.parametrize("digest", [
    "", "sha256:", "sha256:../../etc/shadow", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "md5:" + "0" * 32,
    "sha512:" + "0" * 64, "sha256:" + "0" * 64 + "\n", "sha256:" + "0" * 62 + "/x",
])
def test_invalid_digests_are_refused(digest):
    with pytest.raises(ValueError):
        _native.oci_check_digest(digest)


def test_source_exceptions_pass_through(tmp_path):
    class Broken:
        def read(self, n):
            raise TimeoutError("the network went away")

    with pytest.raises(TimeoutError):
        _native.oci_read_layer(Broken(), tmp_path / "store")


def test_layer_stats_count_what_a_read_stored_and_found(tmp_path):
    """Two files of the same 100 bytes (an object), one of 10 (inline): the first read stores the
    object once and finds it for the second name; a second read of the layer finds both."""
    data = build([("a", "file", b"x" * 100), ("b", "file", b"y" * 10), ("d", "dir", b""),
                  ("d/c", "file", b"x" * 100)])
    store = tmp_path / "store"
    first = _native.oci_read_layer(io.BytesIO(data), store).stats
    assert isinstance(first, _native.LayerStats)
    assert (first.compressed_bytes, first.uncompressed_bytes, first.entries) == (len(data), len(data), 4)
    assert (first.objects_stored, first.bytes_stored, first.objects_reused, first.bytes_reused) == (1, 100, 1, 100)
    again = _native.oci_read_layer(io.BytesIO(data), store).stats
    assert (again.objects_stored, again.bytes_stored, again.objects_reused, again.bytes_reused) == (0, 0, 2, 200)
    assert repr(again).startswith(f"LayerStats(compressed_bytes={len(data)}, ")
    with pytest.raises(AttributeError):
        again.entries = 0
