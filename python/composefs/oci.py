# SPDX-License-Identifier: MIT OR Apache-2.0
"""Container images into a repository, from an OCI image layout (directory or tar), a
``docker save`` / ``podman save`` archive, or a registry (:mod:`composefs.registry`).

The order of work, and what is trusted when:
1. the image index or manifest is read with a size limit; every digest string is checked by the
   Rust core before it is used for anything; a blob named by digest is read only from inside
   the layout (no symlinks, no ``..``) or the archive (members by exact name, links followed a
   bounded number of times) and must match its descriptor's digest and size;
2. the manifest and config must have the shape the OCI image spec gives them; the config's
   ``rootfs.diff_ids`` name each layer's uncompressed tar;
3. each layer is read by the Rust core (``_native.oci_read_layer``): blob digest and size,
   decompression, diff_id and tar bounds all checked while it streams, file contents stored in
   the object store as they arrive; layers are read concurrently. A layer whose record the
   repository keeps (``layers/<diff_id>``, written once the layer passed every check and its
   objects were flushed) is not fetched again while all its objects are in the store;
4. the layers are merged in order and the image is written and committed with the manifest and
   config beside it. Any failure before that leaves no ref and no image.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform as _platform
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable

from . import _native
from .errors import CfsError

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
LAYER_TYPES = tuple(
    prefix + suffix
    for prefix in ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.nondistributable.v1.tar")
    for suffix in ("", "+gzip", "+zstd")
) + ("application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")

MAX_MANIFEST = 4 << 20  # the distribution spec lets registries refuse larger manifests
MAX_CONFIG = 8 << 20
MAX_LAYERS = 1000
MAX_INDEX_DEPTH = 4
MAX_LINK_HOPS = 8
PARALLEL_LAYERS = 3


class ImageError(CfsError):
    """Something about the image itself is wrong (not the network, not the local machine)."""


# --- descriptors and documents -------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict | None = None

    @classmethod
    def parse(cls, obj, what: str) -> "Descriptor":
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: a descriptor must be a JSON object")
        mt, digest, size = obj.get("mediaType", ""), obj.get("digest"), obj.get("size")
        if not isinstance(mt, str):
            raise ImageError(f"{what}: mediaType must be a string")
        if not isinstance(digest, str):
            raise ImageError(f"{what}: descriptor without a digest")
        try:
            digest = _native.oci_check_digest(digest)
        except ValueError as e:
            raise ImageError(f"{what}: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 1 << 46:
            raise ImageError(f"{what} {digest}: bad size {size!r}")
        plat = obj.get("platform")
        if plat is not None and not isinstance(plat, dict):
            raise ImageError(f"{what} {digest}: platform must be a JSON object")
        return cls(mt, digest, size, plat)


def parse_json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImageError(f"{what}: not valid JSON ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: not a JSON object")
    return doc


def check_bytes(data: bytes, desc: Descriptor, what: str) -> None:
    try:
        _native.oci_verify_bytes(data, desc.digest, desc.size)
    except _native.FormatError as e:
        raise ImageError(f"{what} {desc.digest}: {e}") from None


# --- platforms -----------------------------------------------------------------------------------

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
         "i686": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64", "mips64": "mips64le", "loongarch64": "loong64"}


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise CfsError(f"invalid platform {text!r} (expected os/arch[/variant], e.g. linux/amd64)")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def running(cls) -> "Platform":
        m = _platform.machine()
        arch = _ARCH.get(m, m)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(m)
        return cls("linux", arch, variant)

    def matches(self, p: dict) -> bool:
        if p.get("os") != self.os or p.get("architecture") != self.arch:
            return False
        if self.variant is None:
            return True
        v = p.get("variant")
        return v == self.variant or (v is None and self.arch == "arm64" and self.variant == "v8")

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.arch, self.variant) if x)


def pick_manifest(index: dict, plat: Platform, what: str) -> Descriptor:
    mans = index.get("manifests")
    if not isinstance(mans, list) or not mans:
        raise ImageError(f"{what}: lists no manifests")
    if len(mans) > 10000:
        raise ImageError(f"{what}: lists {len(mans)} manifests")
    descs = [Descriptor.parse(m, f"{what}: manifest") for m in mans]
    descs = [d for d in descs if d.media_type in INDEX_TYPES + MANIFEST_TYPES or d.media_type == ""]
    with_plat = [d for d in descs if d.platform is not None]
    hits = [d for d in with_plat if plat.matches(d.platform)]
    if hits:
        return hits[0]
    untagged = [d for d in descs if d.platform is None]
    if untagged:
        return untagged[0]
    have = sorted({"/".join(str(d.platform.get(k)) for k in ("os", "architecture", "variant") if d.platform.get(k))
                   for d in with_plat})
    raise ImageError(f"{what}: no image for platform {plat} (has {', '.join(have) or 'none'})")


# --- sources -------------------------------------------------------------------------------------


class Source:
    """Where an image's blobs come from. ``label`` names it in messages, ``top_name`` the
    top-level document."""

    label: str
    top_name = "index.json"

    def top(self) -> tuple[bytes, Descriptor | None]:
        """The top-level document (an index or a manifest) and, when something outside it names
        it, its descriptor (to be checked)."""
        raise NotImplementedError

    def open_blob(self, desc: Descriptor) -> IO[bytes]:
        raise NotImplementedError

    def read_blob(self, desc: Descriptor, limit: int, what: str) -> bytes:
        if desc.size > limit:
            raise ImageError(f"{what} {desc.digest}: {desc.size} bytes is over the limit of {limit}")
        with self.open_blob(desc) as f:
            data = f.read(desc.size + 1)
        check_bytes(data, desc, what)
        return data

    def close(self) -> None:
        pass


def _blob_path(digest: str) -> tuple[str, str]:
    alg, _, hexd = _native.oci_check_digest(digest).partition(":")
    return alg, hexd


class LayoutDir(Source):
    """An OCI image layout directory. Blobs are opened by walking ``blobs/ALG/HEX`` one name at
    a time relative to the layout's own descriptor, refusing symlinks at every step."""

    def __init__(self, path: str):
        self.label = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CfsError(e.strerror or str(e), path) from None

    def _open(self, names: Iterable[str], what: str) -> IO[bytes]:
        names = list(names)
        fd = self.fd
        opened: list[int] = []
        try:
            for i, n in enumerate(names):
                last = i == len(names) - 1
                flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY)
                try:
                    fd = os.open(n, flags, dir_fd=fd)
                except OSError as e:
                    raise ImageError(f"{what}: {'/'.join(names)}: {e.strerror}") from None
                opened.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ImageError(f"{what}: {'/'.join(names)} is not a regular file")
            f = os.fdopen(opened.pop(), "rb")
            return f
        finally:
            for o in opened:
                os.close(o)

    def top(self) -> tuple[bytes, Descriptor | None]:
        with self._open(["index.json"], "index.json") as f:
            data = f.read(MAX_MANIFEST + 1)
        if len(data) > MAX_MANIFEST:
            raise ImageError(f"index.json is over the limit of {MAX_MANIFEST} bytes")
        return data, None

    def open_blob(self, desc: Descriptor) -> IO[bytes]:
        alg, hexd = _blob_path(desc.digest)
        return self._open(["blobs", alg, hexd], "blob")

    def close(self) -> None:
        os.close(self.fd)


class _Slice:
    """``size`` bytes of a file from ``offset``, read with pread (many may be open at once)."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.pos, self.end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.end - self.pos
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.pos)
        if not data:
            raise ImageError("archive is truncated")
        self.pos += len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TarArchive(Source):
    """A tar file holding an OCI layout or a docker-save image. Its members are indexed by the
    Rust tar reader (headers only, bounded); a member is found by its exact normalised name, and
    symlinks and hardlinks between members are followed at most ``MAX_LINK_HOPS`` times."""

    def __init__(self, path: str):
        self.label = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise CfsError("not a directory or a regular file", path)
            members = _native.tar_index(path)
        except OSError as e:
            raise CfsError(e.strerror or str(e), path) from None
        except _native.FormatError as e:
            raise ImageError(f"not an image archive: {_tail(e, path)}") from None
        self.members: dict[str, tuple[str, int, int, str]] = {}
        for m in members:
            n = _norm(os.fsdecode(m.name))
            if n is not None:
                self.members[n] = (m.kind, m.offset, m.size, os.fsdecode(m.link))
        self.docker = "index.json" not in self.members and "manifest.json" in self.members

    def _find(self, name: str, what: str) -> tuple[int, int]:
        n = _norm(name)
        for _ in range(MAX_LINK_HOPS + 1):
            m = self.members.get(n) if n is not None else None
            if m is None:
                raise ImageError(f"{what}: archive has no {name}")
            kind, offset, size, link = m
            if kind == "file":
                return offset, size
            if kind == "symlink":
                n = _norm(os.path.join(os.path.dirname(n), link)) if not link.startswith("/") else _norm(link)
            elif kind == "hardlink":
                n = _norm(link)
            else:
                raise ImageError(f"{what}: {name} in the archive is not a file")
        raise ImageError(f"{what}: {name}: too many levels of links in the archive")

    def open_member(self, name: str, what: str, limit: int | None = None) -> _Slice:
        offset, size = self._find(name, what)
        if limit is not None and size > limit:
            raise ImageError(f"{what}: {name} is over the limit of {limit} bytes")
        return _Slice(self.fd, offset, size)

    def top(self) -> tuple[bytes, Descriptor | None]:
        return self.open_member("index.json", "index.json", MAX_MANIFEST).read(), None

    def open_blob(self, desc: Descriptor) -> IO[bytes]:
        alg, hexd = _blob_path(desc.digest)
        return self.open_member(f"blobs/{alg}/{hexd}", "blob")

    def close(self) -> None:
        os.close(self.fd)


def _norm(name: str) -> str | None:
    out: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(p)
    return "/".join(out)


def _tail(e: Exception, path: str) -> str:
    s = str(e)
    return s[len(path) + 2:] if s.startswith(path + ": ") else s


# --- resolving an image --------------------------------------------------------------------------


@dataclass
class LayerSpec:
    desc: Descriptor | None  # None: a docker-save layer, named only by its diff_id
    diff_id: str
    member: str | None = None  # docker-save: the layer's archive member


@dataclass
class Resolved:
    manifest: bytes
    config: bytes
    layers: list[LayerSpec] = field(default_factory=list)


def _manifest_layers(doc: dict, what: str) -> tuple[Descriptor, list[Descriptor]]:
    if "config" not in doc:
        raise ImageError(f"{what}: no config")
    config = Descriptor.parse(doc["config"], f"{what}: config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageError(f"{what}: layers must be a list")
    if len(layers) > MAX_LAYERS:
        raise ImageError(f"{what}: {len(layers)} layers is over the limit of {MAX_LAYERS}")
    descs = [Descriptor.parse(l, f"{what}: layer") for l in layers]
    for d in descs:
        if d.media_type not in LAYER_TYPES:
            raise ImageError(f"{what}: layer {d.digest}: unsupported media type {d.media_type!r}")
    return config, descs


def _diff_ids(config: bytes, count: int) -> list[str]:
    doc = parse_json(config, "config")
    rootfs = doc.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ImageError("config: rootfs.diff_ids must be a list of digests")
    if len(ids) != count:
        raise ImageError(f"config: {len(ids)} diff_ids for {count} layers")
    out = []
    for i in ids:
        try:
            out.append(_native.oci_check_digest(i))
        except ValueError as e:
            raise ImageError(f"config: {e}") from None
    return out


def resolve(src: Source, plat: Platform) -> Resolved:
    """The manifest, config and layers of the image ``src`` holds for ``plat``."""
    if isinstance(src, TarArchive) and src.docker:
        return _resolve_docker(src)
    data, desc = src.top()
    if desc is not None:
        check_bytes(data, desc, "manifest")
    what = src.top_name if desc is None else "manifest"
    doc = parse_json(data, what)
    for _ in range(MAX_INDEX_DEPTH + 1):
        if doc.get("schemaVersion") != 2:
            raise ImageError(f"{what}: schemaVersion {doc.get('schemaVersion')!r} is not supported (only 2)")
        mt = doc.get("mediaType", "")
        if "manifests" in doc or mt in INDEX_TYPES:
            pick = pick_manifest(doc, plat, what)
            data = src.read_blob(pick, MAX_MANIFEST, "manifest")
            doc = parse_json(data, f"manifest {pick.digest}")
            what = f"manifest {pick.digest}"
            continue
        if mt and mt not in MANIFEST_TYPES:
            raise ImageError(f"{what}: unsupported media type {mt!r}")
        config_desc, layers = _manifest_layers(doc, what)
        config = src.read_blob(config_desc, MAX_CONFIG, "config")
        ids = _diff_ids(config, len(layers))
        return Resolved(data, config, [LayerSpec(d, i) for d, i in zip(layers, ids)])
    raise ImageError(f"{what}: image indexes nested more than {MAX_INDEX_DEPTH} deep")


def _resolve_docker(src: TarArchive) -> Resolved:
    data = src.open_member("manifest.json", "manifest.json", MAX_MANIFEST).read()
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImageError(f"manifest.json: not valid JSON ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise ImageError("manifest.json: not a docker-save manifest (a list of images)")
    first = doc[0]
    cfg_name, layers = first.get("Config"), first.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layers, list) or not all(isinstance(l, str) for l in layers):
        raise ImageError("manifest.json: Config must be a name and Layers a list of names")
    if len(layers) > MAX_LAYERS:
        raise ImageError(f"manifest.json: {len(layers)} layers is over the limit of {MAX_LAYERS}")
    config = src.open_member(cfg_name, "config", MAX_CONFIG).read()
    # The config's name is its digest (HEX.json, or blobs/sha256/HEX): check it when it is one.
    base = os.path.basename(cfg_name).removesuffix(".json")
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        check_bytes(config, Descriptor("", f"sha256:{base}", len(config)), "config")
    ids = _diff_ids(config, len(layers))
    manifest = json.dumps(first, indent=1).encode()
    return Resolved(manifest, config, [LayerSpec(None, i, member=m) for m, i in zip(layers, ids)])


def open_source(path: str) -> Source:
    if os.path.isdir(path):
        return LayoutDir(path)
    return TarArchive(path)


# --- importing -----------------------------------------------------------------------------------


class Counter:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def add(self, k: int) -> None:
        with self.lock:
            self.n += k


class _Counted:
    def __init__(self, raw, counter: Counter):
        self.raw, self.counter = raw, counter

    def read(self, n: int) -> bytes:
        b = self.raw.read(n)
        self.counter.add(len(b))
        return b


def layer_record_path(repo, diff_id: str) -> str:
    alg, _, hexd = _native.oci_check_digest(diff_id).partition(":")
    return os.path.join(repo.layers_dir, f"{alg}-{hexd}")


def _cached_layer(repo, diff_id: str):
    path = layer_record_path(repo, diff_id)
    try:
        layer = _native.OciLayer.load(path)
    except (OSError, _native.FormatError):
        return None
    return layer if layer.missing_objects(repo.objects) == 0 else None


class Transient(Exception):
    """A failure worth trying again (network, server); ``str`` says what happened."""


def import_resolved(repo, src: Source, res: Resolved, name: str, ref_label: str, *,
                    retry: Callable[[Callable[[], object], str], object] | None = None,
                    progress: bool = False) -> dict:
    """Read (or reuse) every layer of ``res``, build the image and name it (shared lock held)."""
    from .repository import check_name

    check_name(name)
    if not os.path.isdir(repo.layers_dir):
        os.makedirs(repo.layers_dir, exist_ok=True)
        os.chmod(repo.layers_dir, 0o755)  # whatever the umask, as every repository directory
    n = len(res.layers)
    layers: list = [None] * n
    fetched = [False] * n
    counter = Counter()
    store = _native.ObjectStore(repo.objects)  # its sync() flushes what the layers stored
    todo = []
    for i, spec in enumerate(res.layers):
        cached = _cached_layer(repo, spec.diff_id)
        if cached is not None:
            layers[i] = cached
        else:
            todo.append(i)
    total = sum(res.layers[i].desc.size for i in todo if res.layers[i].desc is not None)

    def read_one(i: int):
        spec = res.layers[i]
        label = spec.desc.digest if spec.desc is not None else spec.diff_id

        def attempt():
            if spec.member is not None:
                stream = src.open_member(spec.member, f"layer {label}")
            else:
                stream = src.open_blob(spec.desc)
            with stream:
                try:
                    return _native.oci_read_layer(
                        _Counted(stream, counter), store,
                        digest=spec.desc.digest if spec.desc else None,
                        size=spec.desc.size if spec.desc else None, diff_id=spec.diff_id)
                except _native.FormatError as e:
                    raise ImageError(f"layer {label}: {e}") from None

        layer = retry(attempt, f"layer {label}") if retry else attempt()
        fetched[i] = True
        # Kept at once, so an interrupted pull does not fetch this layer again; its objects are
        # made durable first (a record never names objects a power cut could lose). The last
        # layer's flush runs while the image is built; the image is committed after it.
        kept.append(keeper.submit(keep, spec.diff_id, layer))
        return layer

    def keep(diff_id: str, layer) -> None:
        store.sync()
        layer.save(layer_record_path(repo, diff_id))

    started = time.monotonic()
    kept: list[concurrent.futures.Future] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfs-keep") as keeper:
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_LAYERS,
                                                   thread_name_prefix="cfs-layer") as pool:
            futures = {pool.submit(read_one, i): i for i in todo}
            try:
                _wait(futures, counter, total, len(todo), progress)
                for fut, i in futures.items():
                    layers[i] = fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        with repo.workdir() as work:
            tmp_image = os.path.join(work, "image")
            try:
                r = _native.oci_build_image(layers, tmp_image)
            except _native.FormatError as e:
                raise ImageError(str(e)) from None
            for fut in kept:
                fut.result()  # every fetched layer's objects durable (and its record kept)
            info = {"source": ref_label, "kind": "oci", "entries": r.entries, "imported": int(time.time())}
            repo._commit_image(work, tmp_image, r.digest, name, info,
                               {"manifest.json": res.manifest, "config.json": res.config})
    stats = [l.stats for l in layers]
    return {"name": name, "digest": r.digest, "entries": r.entries, "objects": r.objects,
            "object_bytes": r.object_bytes, "missing_objects": 0, "layers": n,
            "layers_fetched": sum(fetched), "layers_reused": n - sum(fetched),
            "bytes_fetched": counter.n, "bytes_stored": sum(s.bytes_stored for s in stats),
            "bytes_deduplicated": sum(s.bytes_reused for s in stats), "seconds": round(time.monotonic() - started, 3)}


def _wait(futures, counter: Counter, total: int, count: int, progress: bool, unit: str = "layer") -> None:
    """Wait for the reads; on a terminal, a progress bar of the bytes read."""
    pending = set(futures)
    if not progress or not pending:
        for f in concurrent.futures.as_completed(pending):
            f.result()  # the first failure stops the wait (and the import)
        return
    import click

    shown = 0
    started = time.monotonic()
    with click.progressbar(length=max(total, 1), file=sys.stderr, show_eta=True, show_percent=True,
                           label=f"{count} {unit}{'s' if count != 1 else ''}",
                           item_show_func=lambda _: _rate(counter.n, started)) as bar:
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.25,
                                                    return_when=concurrent.futures.FIRST_EXCEPTION)
            for f in done:
                f.result()
            now = counter.n
            bar.update(min(now, total) - shown, now)
            shown = min(now, total)


def _rate(n: int, started: float) -> str:
    dt = max(time.monotonic() - started, 1e-3)
    return f"{n / 1e6:.1f} MB, {n / dt / 1e6:.1f} MB/s"


def import_archive(repo, archive: str, name: str, platform: str | None = None, progress: bool = False) -> dict:
    """Import the image in ARCHIVE (OCI layout dir or tar, docker-save tar) as NAME."""
    plat = Platform.parse(platform) if platform else Platform.running()
    try:
        src = open_source(archive)
    except ImageError as e:
        raise CfsError(str(e), archive) from None
    try:
        try:
            res = resolve(src, plat)
            r = import_resolved(repo, src, res, name, os.path.abspath(archive), progress=progress)
        except ImageError as e:
            raise CfsError(str(e), archive) from None
    finally:
        src.close()
    return r
