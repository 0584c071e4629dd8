"""`cfsctl oci pull` from a local registry against the ways users get the same result today.

The image: the debootstrap'd Debian minbase root of bench_repo.py (shared with it, made once),
as a two-layer OCI image (layer 1: everything but /usr/share; layer 2: /usr/share; GNU tar with
numeric owners and xattrs, gzip -6), pushed with skopeo into Debian's docker-registry on
127.0.0.1 (a temporary config under bench/work/oci/, plain HTTP).

Timed, each into an empty repository, alternated round by round (BENCH_REPEAT rounds, best wall
time kept), page cache warm, `sync` and quiet writeback before each run:
  * `cfsctl oci pull` (this project);
  * `skopeo copy docker://... oci:DIR` then `cfsctl oci import DIR` (what users do without pull);
  * the reference Rust project's `cfsctl oci pull` when `COMPOSEFS_RS_CFSCTL=/path/to/cfsctl`
    (composefs-rs, built by hand outside this repository) is set: it fetches through skopeo's
    image proxy, pointed at the plain-HTTP registry by a temporary registries.conf.
Target (issue #12): >= 1.5x faster than the faster of the other two, peak RSS under 150 MB.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench_build import loadavg, log, run_child, settle, warm
from bench_repo import ROOTS, make_root, mib, sha256_file

TITLE = "oci pull from a local registry: cfsctl oci pull vs skopeo copy + cfsctl oci import vs composefs-rs"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
TIMEOUT = 1800
REPO = "bench/debian"
TAG = "minbase"


def make_two_layer_layout(out: Path, root: Path) -> None:
    """OUT: an OCI layout of ROOT as two gzip layers (all but usr/share, then usr/share)."""
    if (out / "index.json").exists():
        return
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar_base = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root)]
    layers = []
    for n, args in enumerate([["--exclude=./usr/share", "-cf"], ["-cf"]]):
        tar = tmp / f"layer{n}.tar"
        what = ["."] if n == 0 else ["./usr/share"]
        log(f"making {out}: layer {n + 1}")
        subprocess.run(tar_base + args + [str(tar)] + what, check=True, timeout=TIMEOUT)
        diff_id = sha256_file(tar)
        subprocess.run(["gzip", "-6", "-n", str(tar)], check=True, timeout=TIMEOUT)
        gz = tmp / f"layer{n}.tar.gz"
        d, size = sha256_file(gz), gz.stat().st_size
        os.rename(gz, blobs / d)
        layers.append((d, size, diff_id))

    def blob(doc: dict) -> tuple[str, int]:
        data = json.dumps(doc, sort_keys=True).encode()
        import hashlib

        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return d, len(data)

    cfg_d, cfg_n = blob({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i}" for _, _, i in layers]}})
    man_d, man_n = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                    "digest": f"sha256:{cfg_d}", "size": cfg_n},
                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                     "digest": f"sha256:{d}", "size": s} for d, s, _ in layers]})
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{man_d}", "size": man_n,
         "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    os.rename(tmp, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, workdir: Path):
        self.dir = workdir / "registry"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        cfg = self.dir / "config.yml"
        cfg.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                       f"    rootdirectory: {self.dir / 'data'}\n  delete:\n    enabled: true\n"
                       f"http:\n  addr: 127.0.0.1:{self.port}\n")
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    @property
    def ref(self) -> str:
        return f"docker://127.0.0.1:{self.port}/{REPO}:{TAG}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run(workdir: Path) -> list[dict]:
    ours = shutil.which("cfsctl") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "cfsctl")
    rs = os.environ.get("COMPOSEFS_RS_CFSCTL")
    (workdir.parent / "repo").mkdir(exist_ok=True)
    root = make_root(workdir.parent / "repo", "minbase", ROOTS["minbase"])
    layout = workdir / "layout-minbase-2"
    make_two_layer_layout(layout, root)
    blob_bytes = sum(f.stat().st_size for f in (layout / "blobs").rglob("*") if f.is_file())
    reg = Registry(workdir)
    try:
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:{TAG}", reg.ref],
                       check=True, timeout=TIMEOUT)
        regconf = workdir / "registries.conf"
        regconf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{reg.port}"\ninsecure = true\n')
        warm(reg.dir)
        runs = workdir / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir()

        def fresh(name: str) -> Path:
            d = runs / name
            shutil.rmtree(d, ignore_errors=True)
            return d

        def ours_pull(i: int):
            repo = fresh(f"pull-{i}")
            subprocess.run([ours, "init", "--repo", str(repo)], check=True, capture_output=True)
            return [[ours, "oci", "pull", reg.ref, "--name", "d", "--tls-verify=false", "--repo", str(repo),
                     "--json"]]

        def skopeo_import(i: int):
            repo, oci = fresh(f"skopeo-{i}"), fresh(f"skopeo-oci-{i}")
            subprocess.run([ours, "init", "--repo", str(repo)], check=True, capture_output=True)
            return [["skopeo", "copy", "-q", "--src-tls-verify=false", reg.ref, f"oci:{oci}:{TAG}"],
                    [ours, "oci", "import", str(oci), "--name", "d", "--repo", str(repo), "--json"]]

        def rs_pull(i: int):
            repo = fresh(f"rs-{i}")
            repo.mkdir()
            return [[rs, "--insecure", "--repo", str(repo), "oci", "pull", reg.ref, "d"]]

        tools = [("cfsctl oci pull", ours_pull), ("skopeo copy + cfsctl oci import", skopeo_import)]
        if rs:
            tools.append(("composefs-rs cfsctl oci pull", rs_pull))
        env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(regconf))
        best: dict[str, tuple[float, float, int]] = {}
        failed: dict[str, str] = {}
        digests: dict[str, str] = {}
        for i in range(REPEAT):
            order = tools if i % 2 == 0 else tools[::-1]
            for label, steps in order:
                if label in failed:
                    continue
                wall = cpu = 0.0
                rss = 0
                try:
                    for args in steps(i):
                        settle()
                        w, c, r, out = run_child(args, stdout=None, env=env)
                        wall, cpu, rss = wall + w, cpu + c, max(rss, r)
                        if args[0] == ours and out.strip():
                            digests[label] = json.loads(out)["digest"]
                except RuntimeError as e:
                    failed[label] = str(e).strip().splitlines()[-1][:200]
                    log(f"{label}: {e}")
                    continue
                log(f"{label}: {wall:.3f} s wall, {cpu:.3f} s cpu, {mib(rss)} peak RSS (load {loadavg()})")
                if label not in best or wall < best[label][0]:
                    best[label] = (wall, cpu, rss)
    finally:
        reg.stop()
    rows = []
    others = [best[k][0] for k in best if k != "cfsctl oci pull"]
    for label, _ in tools:
        if label in failed and label not in best:
            rows.append({"case": "pull into an empty repository", "tool": label, "seconds": None,
                         "note": f"FAILED: {failed[label]}"})
            continue
        wall, cpu, rss = best[label]
        note = [f"peak RSS {mib(rss)}"]
        if label == "cfsctl oci pull" and others:
            note.append(f"{min(others) / wall:.2f}x the faster other way")
        rows.append({"case": "pull into an empty repository", "tool": label, "seconds": wall, "cpu": cpu,
                     "bytes": blob_bytes, "note": ", ".join(note)})
    if len(set(digests.values())) == 1 and len(digests) > 1:
        rows.append({"case": "same image digest from pull and skopeo + import", "tool": "", "seconds": None,
                     "note": next(iter(digests.values()))})
    return rows
