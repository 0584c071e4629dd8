# SPDX-License-Identifier: MIT OR Apache-2.0
"""Image references as `cfsctl oci pull` takes them (`registry.Reference`): the forms skopeo and
podman accept (`docker://` optional, Docker Hub's defaults, a port, an IPv6 literal, a tag, a
digest or both), each read into registry host, repository, tag and digest; anything else a
one-line CfsError. Round trip: a reference prints as text that reads back as itself."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composefs.errors import CfsError
from composefs.registry import DOCKER_HUB, Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, want", [
    ("docker://127.0.0.1:5000/cfs/test:t", ("127.0.0.1:5000", "cfs/test", "t", None)),
    ("127.0.0.1:5000/cfs/test", ("127.0.0.1:5000", "cfs/test", "latest", None)),
    ("debian", (DOCKER_HUB, "library/debian", "latest", None)),
    ("docker.io/debian:12", (DOCKER_HUB, "library/debian", "12", None)),
    ("index.docker.io/org/app:v1.2_3-x", (DOCKER_HUB, "org/app", "v1.2_3-x", None)),
    ("org/app", (DOCKER_HUB, "org/app", "latest", None)),
    ("localhost/app", ("localhost", "app", "latest", None)),
    ("quay.io/a/b/c@" + D, ("quay.io", "a/b/c", None, D)),
    ("quay.io/a/b:t@" + D, ("quay.io", "a/b", "t", D)),
    ("docker://[::1]:5000/x:y", ("[::1]:5000", "x", "y", None)),
    ("registry.test:65535/a__b/c-d.e", ("registry.test:65535", "a__b/c-d.e", "latest", None)),
])
def test_references_read(text, want):
    r = Reference.parse(text)
    assert (r.host, r.repo, r.tag, r.digest) == want
    assert Reference.parse(str(r)) == r


@pytest.mark.parametrize("text", [
    "", "docker://", "//host/x", "docker:////x", "Upper/Case", "host:5000/UPPER", "a//b", "a/b/",
    "x:bad tag", "x:" + "t" * 129, "x:.dot", "x@sha256:short", "x@md5:" + "0" * 32, "x@" + D + "x",
    "h:0/x", "h:65536/x", "h:99999/x", "h:123456/x", "h_x.io:5000/a", "[::1/x", "a/b@",
    "host:5000/a:b:c", "docker://h/a b",
])
def test_bad_references_are_one_line_errors(text):
    with pytest.raises(CfsError) as e:
        Reference.parse(text)
    assert "\n" not in str(e.value)


COMPONENT = st.from_regex(r"[a-z0-9]{1,4}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
HOSTS = st.one_of(
    st.sampled_from(["localhost", "registry.test", "127.0.0.1", "[::1]", "[fe80::1]"]),
    st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,5}", fullmatch=True),
).flatmap(lambda h: st.sampled_from([h]) | st.integers(1, 65535).map(lambda p: f"{h}:{p}"))


@settings(max_examples=300, deadline=None)
@given(host=HOSTS, parts=st.lists(COMPONENT, min_size=1, max_size=3),
       tag=st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
       digest=st.none() | st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()))
def test_references_round_trip(host, parts, tag, digest):
    r = Reference(host, "/".join(parts), tag if tag or digest else "latest", digest)
    assert Reference.parse(str(r)) == r
    assert Reference.parse(str(r).removeprefix("docker://")) == r


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7f) | st.sampled_from("é\n\x00/:@[]"), max_size=60))
def test_any_text_is_a_reference_or_a_cfs_error(text):
    try:
        r = Reference.parse(text)
    except CfsError:
        return
    assert Reference.parse(str(r)) == r
