# SPDX-License-Identifier: MIT OR Apache-2.0
"""Repository sharing: two Debian root filesystems of one release in one repository (issue #6).

The trees, made once with `debootstrap` from deb.debian.org (kept under bench/work/repo/roots/):
  * minbase:  `debootstrap --variant=minbase bookworm`                (essential + apt)
  * standard: `debootstrap --include=python3,openssh-server,curl bookworm`  (required + important
              priority packages, plus those three and their dependencies)
The second holds nearly every file of the first (same package versions, same mirror snapshot),
plus much more: what two neighbouring variants of a system image share.

Measured (page cache warm: both trees read once before the first timing; before each import the
writeback of the previous one is flushed, `sync` + wait, outside the timing):
  * each tree: entries, bytes of regular files (each inode once), `du -s --block-size=1`; the sum;
  * `cfsctl init` of a fresh repository, then `cfsctl import minbase`, then `cfsctl import standard`
    (wall, CPU of the child, peak RSS via os.wait4), once with hardlinks kept (`--hardlinks`) and
    once with `--no-hardlinks` (the default, what mkcomposefs 1.0 does: the like-for-like comparison);
  * the repository's disk use (`du -s --block-size=1`: whole, objects/, images/) against the sum
    of the trees, and `cfsctl images --json` (bytes unique to an image, bytes shared);
  * the reference: `mkcomposefs --digest-store=STORE TREE IMAGE` for both trees into one fresh
    store, same timings, the store's and images' disk use; image digests compared with ours;
  * each tree as a one-layer OCI image layout (GNU tar + gzip, made once, not timed), then
    `cfsctl oci import` of both into a fresh repository (timed; BENCH_REPO_OCI=0 leaves it out).
Best of BENCH_REPEAT runs (default 3), each into a fresh repository / store.

Tools: ours is `$CFSCTL`, else `cfsctl` beside the running Python; the reference is
`$MKCOMPOSEFS`, else `mkcomposefs` on PATH, else /work/ref/composefs/build/tools/mkcomposefs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_build import find_tools, loadavg, log, run_child, settle, warm

TITLE = "repository sharing: two debootstrap'd Debian roots, cfsctl import vs mkcomposefs --digest-store"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
WITH_OCI = os.environ.get("BENCH_REPO_OCI", "1") != "0"
MIRROR = os.environ.get("BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
DEBOOTSTRAP_TIMEOUT = 1800
TIMEOUT = 1800
REF_FALLBACK = "/work/ref/composefs/build/tools/mkcomposefs"

# name -> debootstrap options (the order is the import order: the small one first)
ROOTS = {
    "minbase": ["--variant=minbase"],
    "standard": ["--include=python3,openssh-server,curl"],
}


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# ---------------------------------------------------------------- the trees


def ensure_debootstrap() -> str:
    exe = shutil.which("debootstrap")
    if exe:
        return exe
    # the project's way: the Makefile's bench package list (`make bench` installs it too)
    root = Path(__file__).resolve().parent.parent
    log("debootstrap is missing: make bench-apt")
    subprocess.run(["make", "-C", str(root), "bench-apt"], check=True, timeout=900)
    exe = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(exe, os.X_OK):
        raise RuntimeError("debootstrap is still missing after 'make bench-apt'")
    return exe


def make_root(workdir: Path, name: str, opts: list[str]) -> Path:
    """roots/NAME, made by debootstrap into a temporary directory and renamed when complete, so
    a half-made tree is never used; remade when the options change."""
    workdir = workdir.resolve()  # debootstrap wants absolute paths
    roots = workdir / "roots"
    roots.mkdir(exist_ok=True)
    final = roots / name
    spec = json.dumps({"suite": SUITE, "mirror": MIRROR, "options": opts})
    stamp = roots / f"{name}.spec"
    if final.is_dir() and stamp.exists() and stamp.read_text() == spec:
        return final
    exe = ensure_debootstrap()
    for old in roots.glob(f".{name}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    tmp = roots / f".{name}.tmp-{os.getpid()}"
    cache = workdir / "debs"  # downloaded .debs, shared by both roots
    cache.mkdir(exist_ok=True)
    args = [exe, *opts, f"--cache-dir={cache}", SUITE, str(tmp), MIRROR]
    log(f"making {final}: {' '.join(args)}")
    t = time.monotonic()
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT)
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"debootstrap failed ({p.returncode}):\n{p.stdout.decode(errors='replace')[-3000:]}")
    # nothing of the build host's apt state or debootstrap's log should differ between runs
    shutil.rmtree(tmp / "debootstrap", ignore_errors=True)
    os.rename(tmp, final)
    stamp.write_text(spec)
    log(f"{final}: made in {time.monotonic() - t:.0f} s")
    return final


def tree_size(root: Path) -> dict:
    """entries (every name, root included), regular file bytes (each inode once), files,
    hardlinked names, and `du -s --block-size=1`."""
    entries = files = nbytes = extra_links = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        entries += 1
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            entries += 1
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_mode & 0o170000 == 0o100000:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    extra_links += 1
                    continue
                seen.add(key)
                files += 1
                nbytes += st.st_size
    return {"entries": entries, "files": files, "bytes": nbytes, "hardlinked_names": extra_links,
            "du": du(root)}


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True,
                         check=True, timeout=TIMEOUT).stdout
    return int(out.split()[0])


def reference() -> str | None:
    ref = find_tools()[1]
    if ref:
        return ref
    return REF_FALLBACK if os.access(REF_FALLBACK, os.X_OK) else None


# ---------------------------------------------------------------- one run of a tool


class Tool:
    """One way of putting both trees into one store; best wall time per step over the runs."""

    def __init__(self, label: str, steps):
        self.label = label
        self.steps = steps  # (store dir) -> list of (step name, argv)
        self.best: dict[str, tuple[float, float, int, bytes]] = {}
        self.last_store: Path | None = None
        self.failed: str | None = None

    def run_once(self, store: Path, prepare=None) -> None:
        if self.failed:
            return
        shutil.rmtree(store, ignore_errors=True)
        prepare(store)
        for step, args in self.steps(store):
            settle()
            try:
                wall, cpu, rss, out = run_child(args, stdout=None)
            except RuntimeError as e:
                log(f"{self.label} / {step}: {e}")
                self.failed = str(e).strip().splitlines()[-1][:200]
                return
            log(f"{self.label} / {step}: {wall:.3f} s wall, {cpu:.3f} s cpu, {mib(rss)} peak RSS (load {loadavg()})")
            if step not in self.best or wall < self.best[step][0]:
                self.best[step] = (wall, cpu, rss, out)
        self.last_store = store


def run(workdir: Path) -> list[dict]:
    ours = find_tools()[0]
    ref = reference()
    log(f"ours: {ours}; reference: {ref or 'not found (set MKCOMPOSEFS=/path/to/mkcomposefs)'}")
    roots = {name: make_root(workdir, name, opts) for name, opts in ROOTS.items()}
    sizes = {name: tree_size(root) for name, root in roots.items()}
    total_bytes = sum(s["bytes"] for s in sizes.values())
    total_du = sum(s["du"] for s in sizes.values())
    rows: list[dict] = []
    for name, s in sizes.items():
        rows.append({"case": f"tree {name}", "tool": "os.walk, du", "seconds": None, "bytes": s["bytes"],
                     "note": f"{s['entries']:,} entries, {s['files']:,} files ({s['hardlinked_names']} more "
                             f"hardlinked names), {mib(s['bytes'])} in files, {mib(s['du'])} on disk (du)"})
    rows.append({"case": "sum of the two trees", "tool": "", "seconds": None, "bytes": total_bytes,
                 "note": f"{mib(total_bytes)} in files, {mib(total_du)} on disk (du)"})

    runs = workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    for root in roots.values():
        log(f"warming the page cache: {root}")
        warm(root)

    def cfs_steps(extra: list[str]):
        def steps(repo: Path):
            return [(name, [ours, "import", "--repo", str(repo), *extra, "--json", str(root), "--name", name])
                    for name, root in roots.items()]
        return steps

    def ref_init(store: Path) -> None:
        (store / "objects").mkdir(parents=True)

    def cfs_init(repo: Path) -> None:
        subprocess.run([ours, "init", "--repo", str(repo)], check=True, capture_output=True, timeout=60)

    tools = [Tool("cfsctl import --hardlinks", cfs_steps(["--hardlinks"])),
             Tool("cfsctl import --no-hardlinks", cfs_steps(["--no-hardlinks"]))]
    if ref:
        def ref_steps(store: Path):
            return [(name, [ref, "--print-digest", f"--digest-store={store / 'objects'}", str(root),
                            str(store / f"{name}.cfs")]) for name, root in roots.items()]
        tools.append(Tool("mkcomposefs --digest-store", ref_steps))
    for i in range(REPEAT):
        for n, tool in enumerate(tools):
            store = runs / f"{n}-{i}"
            tool.run_once(store, cfs_init if tool.label.startswith("cfsctl") else ref_init)

    ref_tool = tools[2] if ref else None
    digests: dict[str, dict[str, str]] = {}
    for tool in tools:
        digests[tool.label] = {}
        for step, (_w, _c, _r, out) in tool.best.items():
            text = out.decode().strip()
            if tool.label.startswith("cfsctl"):
                digests[tool.label][step] = json.loads(text)["digest"]
            elif text:
                digests[tool.label][step] = text.split()[-1].removeprefix("sha256:")
    for name in roots:
        for tool in tools:
            if tool.failed and name not in tool.best:
                rows.append({"case": f"import {name}", "tool": tool.label, "seconds": None,
                             "note": f"FAILED: {tool.failed}"})
                continue
            wall, cpu, rss, _out = tool.best[name]
            note = [f"peak RSS {mib(rss)}"]
            if ref_tool and tool is not ref_tool and name in ref_tool.best:
                rwall, _rc, rrss, _ro = ref_tool.best[name]
                note.append(f"{rwall / wall:.2f}x the reference's speed, RSS {rss / rrss:.2f}x")
                ours_d, ref_d = digests[tool.label].get(name), digests[ref_tool.label].get(name)
                if ours_d and ref_d:
                    note.append("same image digest" if ours_d == ref_d else "different image digest")
            first = name == next(iter(roots))
            rows.append({"case": f"import {name} ({'empty store' if first else 'store holds the first'})",
                         "tool": tool.label, "seconds": wall, "cpu": cpu, "bytes": sizes[name]["bytes"],
                         "note": ", ".join(note)})

    for tool in tools:
        if len(tool.best) == len(roots):
            wall = sum(b[0] for b in tool.best.values())
            cpu = sum(b[1] for b in tool.best.values())
            note = "sum of the two best imports"
            if ref_tool and tool is not ref_tool and len(ref_tool.best) == len(roots):
                note += f", {sum(b[0] for b in ref_tool.best.values()) / wall:.2f}x the reference's speed"
            rows.append({"case": "import both (sum)", "tool": tool.label, "seconds": wall, "cpu": cpu,
                         "bytes": total_bytes, "note": note})

    for tool in tools:
        store = tool.last_store
        if store is None:
            continue
        whole = du(store)
        objects = du(store / "objects")
        if tool.label.startswith("cfsctl"):
            images = du(store / "images")
            what = f"objects/ {mib(objects)}, images/ {mib(images)}"
        else:
            images = sum(du(store / f"{n}.cfs") for n in roots)
            what = f"store {mib(objects)}, images {mib(images)}"
        nobj = sum(len(files) for _d, _s, files in os.walk(store / "objects"))
        rows.append({"case": "disk use after both imports", "tool": tool.label, "seconds": None, "bytes": whole,
                     "note": f"{mib(whole)} (du) = {whole / total_du:.1%} of the trees' {mib(total_du)}; "
                             f"{what}; {nobj:,} objects"})
        if tool.label == "cfsctl import --hardlinks":
            imgs = json.loads(subprocess.run([ours, "images", "--repo", str(store), "--json"], check=True,
                                             capture_output=True, timeout=TIMEOUT).stdout)
            for im in imgs:
                rows.append({"case": f"cfsctl images: {im['name']}", "tool": "cfsctl images --json",
                             "seconds": None, "bytes": im["object_bytes"],
                             "note": f"{im['objects']:,} objects, {mib(im['object_bytes'])}: {mib(im['unique_bytes'])} "
                                     f"unique, {mib(im['shared_bytes'])} shared; image file {mib(im['image_bytes'])}"})

    if WITH_OCI:
        dir_best = {n: b[0] for n, b in tools[0].best.items()}
        rows += oci_rows(workdir, ours, roots, sizes, dir_best)
    rows.append({"case": "load average at end", "tool": "", "seconds": None,
                 "note": f"{loadavg()}; page cache warm"})
    return rows


# ---------------------------------------------------------------- the same trees as container images


# One layer holding the whole tree: tar options, then the paths (relative to the root) it holds.
WHOLE_TREE = [([], ["."])]


def make_layout(out: Path, root: Path, layers: list[tuple[list[str], list[str]]] = WHOLE_TREE,
                tag: str | None = None) -> None:
    """A one-image OCI layout at OUT whose layers are parts of ROOT as gzip tars (GNU tar,
    numeric owners, xattrs), made once. LAYERS gives each layer's extra tar options (e.g.
    `--exclude`) and the paths it holds; TAG is the image's ref name (default: the root's name).
    (umoci 0.4.7's `insert` writes truncated layers here.)"""
    if (out / "index.json").exists():
        return
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    made = []  # (blob digest, blob size, diff_id) per layer
    for n, (opts, paths) in enumerate(layers):
        tar = tmp / f"layer{n}.tar"
        log(f"making {out}: layer {n + 1} of {len(layers)}, tar of {root} {' '.join(opts + paths)}")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(root),
                        *opts, "-cf", str(tar), *paths], check=True, timeout=TIMEOUT)
        diff_id = sha256_file(tar)
        subprocess.run(["gzip", "-6", "-n", str(tar)], check=True, timeout=TIMEOUT)
        gz = tmp / f"layer{n}.tar.gz"
        digest, size = sha256_file(gz), gz.stat().st_size
        os.rename(gz, blobs / digest)
        made.append((digest, size, diff_id))

    def blob(doc: dict) -> tuple[str, int]:
        data = json.dumps(doc, sort_keys=True).encode()
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return d, len(data)

    cfg_d, cfg_n = blob({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i}" for _, _, i in made]}})
    man_d, man_n = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                    "digest": f"sha256:{cfg_d}", "size": cfg_n},
                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                     "digest": f"sha256:{d}", "size": size} for d, size, _ in made]})
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{man_d}", "size": man_n,
         "annotations": {"org.opencontainers.image.ref.name": tag or root.name}}]}))
    os.rename(tmp, out)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def oci_rows(workdir: Path, ours: str, roots: dict[str, Path], sizes: dict[str, dict],
             dir_best: dict[str, float]) -> list[dict]:
    layouts = {}
    for name, root in roots.items():
        layouts[name] = workdir / f"oci-{name}"
        spec = (workdir / "roots" / f"{name}.spec").read_text()
        stamp = workdir / f"oci-{name}.spec"
        if not (stamp.exists() and stamp.read_text() == spec):
            shutil.rmtree(layouts[name], ignore_errors=True)
            stamp.unlink(missing_ok=True)
        make_layout(layouts[name], root)
        stamp.write_text(spec)
        warm(layouts[name])
    rows = []
    best: dict[str, tuple[float, float, int]] = {}
    store = None
    for i in range(REPEAT):
        store = workdir / "runs" / f"oci-{i}"
        shutil.rmtree(store, ignore_errors=True)
        subprocess.run([ours, "init", "--repo", str(store)], check=True, capture_output=True, timeout=60)
        for name in roots:
            settle()
            wall, cpu, rss, _ = run_child([ours, "oci", "import", "--repo", str(store), str(layouts[name]),
                                           "--name", name])
            log(f"cfsctl oci import / {name}: {wall:.3f} s wall, {cpu:.3f} s cpu, {mib(rss)} (load {loadavg()})")
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu, rss)
    for name, (wall, cpu, rss) in best.items():
        layer = sum(f.stat().st_size for f in (layouts[name] / "blobs").rglob("*") if f.is_file())
        rows.append({"case": f"oci import {name} (one gzip layer)", "tool": "cfsctl oci import", "seconds": wall,
                     "cpu": cpu, "bytes": sizes[name]["bytes"],
                     "note": f"peak RSS {mib(rss)}; layout {mib(layer)} (GNU tar + gzip -6, not timed)"
                             + (f"; {wall / dir_best[name]:.1f}x the time of `cfsctl import` of the directory"
                                if name in dir_best else "")})
    if store is not None:
        whole = du(store)
        rows.append({"case": "disk use after both oci imports", "tool": "cfsctl oci import", "seconds": None,
                     "bytes": whole, "note": f"{mib(whole)} (du), objects/ {mib(du(store / 'objects'))}"})
    return rows
