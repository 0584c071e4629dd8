# SPDX-License-Identifier: MIT OR Apache-2.0
"""`cfsctl oci pull` over a 50 ms-RTT, rate-limited link, in the QEMU guest (issue #12: at least
80% of the link's bandwidth). Root; `.venv/bin/python bench/run.py oci_guest`.

The host kernel has no sch_netem, so the shaped link lives in the guest (Debian's 6.12 kernel,
TCG): bench/guest/oci_netem.py runs docker-registry and `cfsctl oci pull` in two network
namespaces joined by a veth pair, netem delay 25 ms each way and a tbf rate on what the registry
sends. The image is pushed with skopeo into a registry store made here on the host and preloaded
onto the guest's ext4 disk. BENCH_OCI_GUEST_IMAGE chooses it:
  small (default)  three layers cut from the tests' cached debootstrap'd minbase root
                   (tests/ocireg.debian_rootfs): /usr/bin + /usr/sbin, /usr/share/doc +
                   /usr/share/man, /etc + /usr/share/zoneinfo; several blobs, so that fetching them
                   concurrently still matters, and small enough for a link the emulated client
                   can fill to carry in minutes;
  full             bench_oci.py's two-layer debootstrap'd Debian (119 MB of blobs: about 20 minutes
                   a shaped pull under TCG on a loaded host).

Knobs: BENCH_OCI_GUEST_RATES (Mbit/s, comma-separated; default `auto`: half the rate the
emulated client pulls at without shaping, measured first in the same boot),
BENCH_OCI_GUEST_REPEAT (default 2). Under TCG the client's CPU is emulated and slow, so the
rate must be one it can sustain: the link, not the emulated CPU, has to be the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench_guest import boot_job
from bench_oci import REPO, TAG, Registry, image
from bench_repo import make_layout

ROOT = Path(__file__).resolve().parent.parent
TITLE = "oci pull over a 50 ms-RTT rate-limited link (QEMU guest, netem + tbf)"
IMAGE = os.environ.get("BENCH_OCI_GUEST_IMAGE", "small")
SMALL_LAYERS = [([], ["./usr/bin", "./usr/sbin"]), ([], ["./usr/share/doc", "./usr/share/man"]),
                ([], ["./etc", "./usr/share/zoneinfo"])]
RATES = os.environ.get("BENCH_OCI_GUEST_RATES", "auto")
REPEAT = int(os.environ.get("BENCH_OCI_GUEST_REPEAT", "2"))
TIMEOUT = int(os.environ.get("BENCH_GUEST_TIMEOUT", "5400"))
TARGET = 0.80
# What tbf counts beyond TCP payload: 66 bytes (Ethernet 14 + IP 20 + TCP 32 with timestamps)
# per 1448-byte segment, so TCP can deliver at most this share of the rate as payload.
PAYLOAD_SHARE = 1448 / (1448 + 66)


def prepare(workdir: Path) -> tuple[Path, list[str]]:
    """workdir/disk/registry/storage: a docker-registry store holding the image; the layer digests."""
    if IMAGE == "full":
        _root, layout = image(workdir.parent / "oci")
    elif IMAGE == "small":
        sys.path.insert(0, str(ROOT / "tests"))
        from ocireg import debian_rootfs

        layout = workdir / "layout-small-3"
        stamp = workdir / "layout-small-3.spec"
        if not (stamp.exists() and stamp.read_text() == json.dumps(SMALL_LAYERS)):
            shutil.rmtree(layout, ignore_errors=True)
        make_layout(layout, debian_rootfs(), SMALL_LAYERS, tag=TAG)
        stamp.write_text(json.dumps(SMALL_LAYERS))
    else:
        raise SystemExit(f"BENCH_OCI_GUEST_IMAGE={IMAGE!r}: small or full")
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    blobs = [layer["digest"] for layer in man["layers"]]
    disk = workdir / "disk"
    stamp = workdir / "disk.spec"
    spec = json.dumps({"layout": str(layout), "blobs": blobs})
    if not (stamp.exists() and stamp.read_text() == spec):
        shutil.rmtree(disk, ignore_errors=True)
        store = disk / "registry" / "storage"
        store.mkdir(parents=True)
        reg = Registry(workdir, data=store)
        try:
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{TAG}",
                            f"docker://127.0.0.1:{reg.port}/{REPO}:{TAG}"], check=True, timeout=600)
        finally:
            reg.stop()
        stamp.write_text(spec)
    return disk, blobs


def measure(workdir: Path) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("bench_oci_guest needs root (QEMU harness, network namespaces)")
    disk, blobs = prepare(workdir)
    res = boot_job(workdir, "oci_netem.py", disk,
                   ["--ref-path", f"{REPO}:{TAG}", "--blobs", ",".join(blobs), "--rates", RATES,
                    "--repeat", str(REPEAT)], "oci_netem.json", timeout=TIMEOUT, build_module=False)
    res["image"] = IMAGE
    return res


def rows_of(res: dict) -> list[dict]:
    rows = []
    for mbit in [None, *res["rates"]]:
        link = "no shaping" if mbit is None else f"{res['delay_each_way']} each way + tbf {mbit:g} Mbit/s"
        pulls = [r for r in res["runs"] if r["tool"] == "pull" and r["mbit"] == mbit]
        curls = [r for r in res["runs"] if r["tool"] == "curl" and r["mbit"] == mbit]
        nbytes = pulls[0]["bytes"] if pulls else None
        if pulls:
            secs = statistics.median(r["seconds"] for r in pulls)
            note = [f"median of {len(pulls)}; process wall {statistics.median(r['wall'] for r in pulls):.1f} s "
                    f"(Python start-up under TCG included); MB/s over the transfer part ({secs:.1f} s)"]
            if mbit is not None:
                share = nbytes * 8 / secs / (mbit * 1e6)
                note.append(f"{share * 100:.0f}% of the link rate ({share / PAYLOAD_SHARE * 100:.0f}% of what TCP "
                            f"can carry as payload): target >= {TARGET * 100:.0f}% "
                            f"{'met' if share >= TARGET else 'MISSED'}")
            rows.append({"case": f"pull, {link}", "tool": "cfsctl oci pull", "seconds": secs,
                         "cpu": statistics.median(r["cpu"] for r in pulls), "bytes": nbytes,
                         "note": "; ".join(note)})
        if curls:
            wall = statistics.median(r["wall"] for r in curls)
            note = f"median of {len(curls)}; the layer blobs to /dev/null, nothing verified or stored"
            if mbit is not None and nbytes:
                note += f"; {nbytes * 8 / wall / (mbit * 1e6) * 100:.0f}% of the link rate"
            rows.append({"case": f"pull, {link}", "tool": "curl -Z (layer blobs only)", "seconds": wall,
                         "cpu": statistics.median(r["cpu"] for r in curls), "bytes": nbytes, "note": note})
    if rows:
        rows[0]["note"] += f"; guest kernel {res['kernel']}, TCG, one boot of {res.get('boot_s', 0):.0f} s"
    return rows


def run(workdir: Path) -> list[dict]:
    return rows_of(measure(Path(workdir)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    r = measure(ROOT / "bench" / "work" / "oci_guest")
    print(json.dumps(r, indent=1))
