# SPDX-License-Identifier: MIT OR Apache-2.0
"""Pulls through a bad network that only netem can make — delay (with jitter), loss, reordering —
run in the QEMU guest, whose Debian 6.12 kernel has sch_netem (qemu/build-initramfs.sh loads it);
the host kernel may lack it, and its netem tests then skip. The rest of the network-fault tests
(cut link, killed or stopped server, kill -9, iptables loss, tbf rate) need no netem and run on
the host: tests/test_oci_pull.py and tests/test_remote.py.

One pair of network namespaces (ocireg.NetPair) for the module: the registry (docker-registry,
192.0.2.1:5000) and nginx (192.0.2.1:8080) in the server's, every pull in the client's, each
started once. The shaping sits on the server's veth, so it hits what the servers send. Inputs are
small and random (os.urandom): under TCG every byte and every process costs.
"""

from __future__ import annotations

import json

import pytest

import ocireg
import test_oci_pull as host_oci
import webrepo
from composefs.oci import import_archive
from composefs.repository import Repository
from ocireg import Layout, NetPair, Registry, build_image, tag


@pytest.fixture(scope="module")
def netpair():
    yield from ocireg.netpair_or(lambda why: pytest.fail(f"the guest must run the netem tests: {why}"))


@pytest.fixture(autouse=True)
def _clean_link(netpair):
    yield
    netpair.unshape()


def _shaped(netpair, shape: dict) -> None:
    """netem as asked; shape() skips where the kernel lacks netem, which in the guest is a
    failure (the point of running here)."""
    try:
        netpair.shape(**shape)
    except pytest.skip.Exception as e:
        pytest.fail(f"the guest kernel must have netem: {e}")
    assert netpair.qdisc()["kind"] == "netem"


def _check_shaping_happened(netpair, shape: dict) -> None:
    q = netpair.qdisc()
    assert q["kind"] == "netem" and q["packets"] > 0, q
    if shape.get("loss"):
        assert q["drops"] > 0, f"netem lost nothing: {q}"


# ---- cfsctl oci pull from the registry ---------------------------------------------------------


@pytest.fixture(scope="module")
def oci_image(netpair, tmp_path_factory):
    """The registry in the server namespace holding an image of a small layer and two 512 KiB
    ones (pushed from the client namespace), and the digest an import of the same layout gives
    (in this process: a cfsctl process costs seconds under TCG)."""
    if not ocireg.have("docker-registry", "skopeo"):
        pytest.fail("docker-registry and skopeo must be in the guest (the host's root; make setup)")
    tmp = tmp_path_factory.mktemp("oci")
    reg = Registry(tmp / "reg", host=NetPair.SERVER, port=5000, prefix=netpair.server_cmd).start()
    try:
        lay = Layout(tmp / "lay")
        tag(lay, [build_image(lay, host_oci.layers_for_faults(n_big=2, big=512 << 10))], "t")
        ref = reg.push(lay.root, "t", "cfs/netem", prefix=netpair.client_cmd)
        ref_repo = Repository.init(tmp / "ref-repo")
        with ref_repo.locked():
            want = import_archive(ref_repo, str(lay.root), "ref")["digest"]
        yield ref, want
    finally:
        reg.stop()


# "reorder" is a 10 ms delay as well (netem reorders by sending some packets without it); delay
# with jitter runs for `cfsctl pull` below: the guest's time budget has no room for both here.
@pytest.mark.parametrize("shape", ["loss-3pc", "reorder"])
def test_oci_pull_through_netem(oci_image, netpair, tmp_path, shape):
    ref, want = oci_image
    netem = host_oci.NETEM[shape]
    # Now and then a freshly added netem qdisc with loss drops nothing here (0 of ~800 packets,
    # three times on 2026-12-03; not understood): the pull is then repeated on a new qdisc, and
    # the test fails only if none of three lost a packet.
    for attempt in range(3):
        repo = tmp_path / f"repo{attempt}"
        Repository.init(repo)
        _shaped(netpair, netem)
        r = host_oci.pull_ok(repo, ref, "shaped", prefix=netpair.client_cmd, timeout=300)
        assert r["digest"] == want and r["layers"] == 3
        if not netem.get("loss") or netpair.qdisc()["drops"] > 0:
            break
        print(f"netem lost nothing on attempt {attempt + 1}: {netpair.qdisc()}")
    _check_shaping_happened(netpair, netem)


# ---- cfsctl pull from nginx --------------------------------------------------------------------

REMOTE_NETEM = {
    "delay-jitter": {"delay": 20_000, "jitter": 10_000},
    "loss-3pc": {"delay": 2_000, "loss": 3},
}


@pytest.fixture(scope="module")
def served(netpair, tmp_path_factory):
    """nginx in the server namespace serving a repository of 62 objects (one of 1 MiB)."""
    if not webrepo.NGINX or not ocireg.have(webrepo.NGINX):
        pytest.fail("nginx must be in the guest (the host's root; make setup installs nginx-light)")
    tmp = tmp_path_factory.mktemp("remote")
    remote, digest = webrepo.served_repo(tmp, files=60, big=1 << 20)
    srv = webrepo.Nginx(tmp, remote.parent, host=NetPair.SERVER, port=8080, prefix=netpair.server_cmd)
    try:
        yield srv, remote, digest
    finally:
        srv.stop(graceful=False)


@pytest.mark.parametrize("shape", list(REMOTE_NETEM))
def test_remote_pull_through_netem(served, netpair, tmp_path, shape):
    """Every object arrives, checked, with the link delayed or lossy."""
    srv, remote, digest = served
    local = tmp_path / "local"
    Repository.init(local)
    _shaped(netpair, REMOTE_NETEM[shape])
    r = webrepo.pull(f"{srv.url}/repo", "app", local, prefix=netpair.client_cmd, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    _check_shaping_happened(netpair, REMOTE_NETEM[shape])
    out = json.loads(r.stdout)
    want = webrepo.remote_objects(remote)
    assert out["digest"] == digest and out["objects_fetched"] == len(want)
    assert webrepo.local_objects(local) == want
