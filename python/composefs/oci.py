"""Container images into a repository: OCI image layouts (directory or tar) and
``docker save``/``podman save`` archives.

The layers are read in order as tar streams (plain, gzip or zstd, recognised by their magic
bytes) and applied to an in-memory tree with the OCI whiteout rules: ``.wh.NAME`` removes NAME,
``.wh..wh..opq`` hides everything the lower layers put in that directory. Nothing is extracted
as a whole: each file's content (over 64 bytes) is written to one temporary file in the
repository and inserted into the object store in batches (of 64 MiB or 1,024 files; a batch
hashed and copied in Rust on both cores, on a worker thread while the next layer data is read),
so at most two batches of content sit outside the store. Hardlinks (also to files of lower layers)
stay one inode. The merged tree becomes a composefs dump that the writer turns into the image;
the manifest and config are kept beside the image (``images/<digest>.oci/``).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from typing import IO, Callable, Iterator

from . import _native
from .errors import CfsError

INLINE_MAX = 64
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# --- archives ------------------------------------------------------------------------------------


class Archive:
    """Blob access to an image archive: a directory or a (seekable) tar file."""

    def __init__(self, path: str):
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(path):
            return
        if not os.path.exists(path):
            raise CfsError("No such file or directory", path)
        try:
            self.tar = tarfile.open(path, "r:*")
        except tarfile.TarError as e:
            raise CfsError(f"not an OCI layout or docker archive: {e}", path) from None
        for m in self.tar.getmembers():
            self.members[posixpath.normpath(m.name.lstrip("/")).removeprefix("./")] = m

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return os.path.exists(os.path.join(self.path, name))
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        if self.tar is None:
            try:
                return open(os.path.join(self.path, name), "rb")
            except FileNotFoundError:
                raise CfsError(f"archive has no {name}", self.path) from None
        m = self.members.get(posixpath.normpath(name))
        while m is not None and m.issym():
            m = self.members.get(posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname)))
        if m is None:
            raise CfsError(f"archive has no {name}", self.path)
        f = self.tar.extractfile(m)
        if f is None:
            raise CfsError(f"{name} in the archive is not a file", self.path)
        return f

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _blob(digest: str) -> str:
    alg, _, hexd = digest.partition(":")
    return f"blobs/{alg}/{hexd}"


@dataclass
class ImageRef:
    manifest: bytes
    config: bytes
    layers: list[str]  # names inside the archive


def resolve_image(ar: Archive) -> ImageRef:
    """The manifest, config and layer list of the (first) image of the archive."""
    if ar.exists("index.json"):
        index = json.loads(ar.read("index.json"))
        while True:
            mans = index.get("manifests") or []
            if not mans:
                raise CfsError("index.json lists no manifests", ar.path)
            pick = next((m for m in mans if m.get("platform", {}).get("architecture") in (None, "amd64")), mans[0])
            data = ar.read(_blob(pick["digest"]))
            doc = json.loads(data)
            if "manifests" in doc:  # a nested image index
                index = doc
                continue
            config = ar.read(_blob(doc["config"]["digest"]))
            return ImageRef(data, config, [_blob(l["digest"]) for l in doc.get("layers", [])])
    if ar.exists("manifest.json"):
        data = ar.read("manifest.json")
        doc = json.loads(data)
        if not isinstance(doc, list) or not doc:
            raise CfsError("manifest.json is not a docker-save manifest", ar.path)
        first = doc[0]
        return ImageRef(json.dumps(first, indent=1).encode(), ar.read(first["Config"]), list(first["Layers"]))
    raise CfsError("neither an OCI image layout (index.json) nor a docker save archive (manifest.json)", ar.path)


class _Peek(io.RawIOBase):
    """A stream with its first bytes put back."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_layer(raw: IO[bytes]) -> tuple[tarfile.TarFile, Callable[[], None]]:
    """A streaming tar reader over a plain, gzip or zstd layer."""
    head = raw.read(4)
    stream = io.BufferedReader(_Peek(head, raw), 1 << 20)
    cleanup: Callable[[], None] = lambda: None
    if head.startswith(GZIP_MAGIC):
        return tarfile.open(fileobj=stream, mode="r|gz"), cleanup
    if head == ZSTD_MAGIC:
        try:
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(stream)
            return tarfile.open(fileobj=reader, mode="r|"), reader.close
        except ImportError:
            if not shutil.which("zstd"):
                raise CfsError("a zstd-compressed layer needs the 'zstandard' module or the zstd program") from None
            proc = subprocess.Popen(["zstd", "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            import threading

            def feed():
                try:
                    shutil.copyfileobj(stream, proc.stdin, 1 << 20)
                finally:
                    proc.stdin.close()

            t = threading.Thread(target=feed, daemon=True)
            t.start()

            def done():
                proc.stdout.close()
                t.join()
                if proc.wait() != 0:
                    raise CfsError("zstd could not decompress a layer")

            return tarfile.open(fileobj=proc.stdout, mode="r|"), done
    return tarfile.open(fileobj=stream, mode="r|"), cleanup


# --- the merged tree -----------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    rdev: int = 0
    target: bytes = b""  # symlink
    inline: bytes | None = None
    digest: str | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    children: dict[bytes, "Node"] | None = None
    layer: int = 0


def _split(name: str) -> list[bytes] | None:
    """Path components of a tar member name, ``..`` resolved; ``None`` if it escapes the root."""
    out: list[bytes] = []
    for p in os.fsencode(name).split(b"/"):
        if p in (b"", b"."):
            continue
        if p == b"..":
            if not out:
                return None
            out.pop()
            continue
        out.append(p)
    return out


class BatchInserter:
    """Puts files into the object store in batches, one batch at a time on a worker thread.

    ``add`` queues a temporary file for a node; when the queue holds ``batch_bytes`` or
    ``batch_files``, it goes to ``insert_many`` (the native call hashes and copies the batch on
    both cores with the GIL released) on the worker while the caller goes on reading the layer;
    the caller waits only when a second batch is ready before the first is done. The node's
    digest is set and its temporary file removed when its batch is done; ``finish`` waits for
    everything (call it before using the digests).
    """

    def __init__(self, insert_many: Callable[[list[str]], list[str]], workdir: str,
                 batch_bytes: int = 64 << 20, batch_files: int = 1024):
        from concurrent.futures import ThreadPoolExecutor

        self.insert_many, self.workdir = insert_many, workdir
        self.batch_bytes, self.batch_files = batch_bytes, batch_files
        self.pending: list[tuple[Node, str]] = []
        self.pending_bytes = 0
        self.running = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfs-insert")
        self.count = 0
        self.objects = 0

    def new_path(self) -> str:
        self.count += 1
        return os.path.join(self.workdir, f"content-{self.count}")

    def add(self, node: Node, path: str, size: int) -> None:
        self.pending.append((node, path))
        self.pending_bytes += size
        if self.pending_bytes >= self.batch_bytes or len(self.pending) >= self.batch_files:
            self._submit()

    def _submit(self) -> None:
        self._wait()
        if self.pending:
            batch, self.pending, self.pending_bytes = self.pending, [], 0
            self.running = self.pool.submit(self._insert, batch)

    def _insert(self, batch: list[tuple[Node, str]]) -> None:
        digests = self.insert_many([p for _n, p in batch])
        for (node, path), d in zip(batch, digests):
            node.digest = d
            os.unlink(path)
        self.objects += len(batch)

    def _wait(self) -> None:
        if self.running is not None:
            running, self.running = self.running, None
            running.result()

    def finish(self) -> None:
        self._submit()
        self._wait()

    def close(self) -> None:
        """Stop the worker, after its batch (on the error path too; its error, if any, was
        raised by ``finish`` or is left behind for the error already on its way)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


class Merger:
    def __init__(self, inserter: BatchInserter):
        self.root = Node(mode=stat.S_IFDIR | 0o755, children={})
        self.inserter = inserter
        self.layer = 0

    def _dir(self, parts: list[bytes]) -> Node:
        """The directory at parts, created (0755) where missing."""
        node = self.root
        for p in parts:
            child = node.children.get(p)
            if child is None or child.children is None:
                child = Node(mode=stat.S_IFDIR | 0o755, children={}, layer=self.layer)
                node.children[p] = child
            node = child
        return node

    def _lookup(self, parts: list[bytes]) -> Node | None:
        node = self.root
        for p in parts:
            if node.children is None:
                return None
            node = node.children.get(p)
            if node is None:
                return None
        return node

    def _prune(self, d: Node) -> None:
        for name in list(d.children):
            c = d.children[name]
            if c.layer < self.layer:
                del d.children[name]
            elif c.children is not None:
                self._prune(c)

    def apply(self, tf: tarfile.TarFile) -> None:
        self.layer += 1
        for m in tf:
            parts = _split(m.name)
            if parts is None:  # "../x": outside the image; ignored as container runtimes do
                continue
            if not parts:
                if m.isdir():
                    self._meta(self.root, m)
                continue
            parent_parts, base = parts[:-1], parts[-1]
            if base == b".wh..wh..opq":
                self._prune(self._dir(parent_parts))
                continue
            if base.startswith(b".wh."):
                parent = self._lookup(parent_parts)
                if parent is not None and parent.children is not None:
                    parent.children.pop(base[4:], None)
                continue
            parent = self._dir(parent_parts)
            if m.islnk():
                link = _split(m.linkname)
                target = self._lookup(link) if link else None
                if target is None or target.children is not None:
                    raise CfsError(f"layer {self.layer}: hardlink {m.name} to missing {m.linkname}")
                parent.children[base] = target
                continue
            if m.isdir():
                old = parent.children.get(base)
                if old is not None and old.children is not None:
                    self._meta(old, m)
                    old.layer = self.layer
                    continue
                node = Node(mode=stat.S_IFDIR, children={})
            elif m.isreg():
                node = Node(mode=stat.S_IFREG, size=m.size)
                self._content(node, tf, m)
            elif m.issym():
                node = Node(mode=stat.S_IFLNK, target=os.fsencode(m.linkname))
            elif m.ischr() or m.isblk():
                node = Node(mode=stat.S_IFCHR if m.ischr() else stat.S_IFBLK,
                            rdev=os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                node = Node(mode=stat.S_IFIFO)
            else:
                continue
            self._meta(node, m)
            node.layer = self.layer
            parent.children[base] = node

    def _meta(self, node: Node, m: tarfile.TarInfo) -> None:
        node.mode = stat.S_IFMT(node.mode) | (m.mode & 0o7777)
        node.uid, node.gid, node.mtime = m.uid, m.gid, int(m.mtime)
        node.xattrs = {}
        for k, v in (m.pax_headers or {}).items():
            if k.startswith("SCHILY.xattr."):
                raw = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                node.xattrs[k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")] = raw

    def _content(self, node: Node, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if m.size == 0:
            return
        src = tf.extractfile(m)
        if m.size <= INLINE_MAX:
            node.inline = src.read()
            return
        tmp = self.inserter.new_path()
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        self.inserter.add(node, tmp, m.size)

    # --- to a dump -----------------------------------------------------------------------------

    def walk(self) -> Iterator[tuple[bytes, Node]]:
        yield b"/", self.root
        stack = [(b"", self.root)]
        while stack:
            prefix, d = stack.pop()
            for name in sorted(d.children):
                c = d.children[name]
                path = prefix + b"/" + name
                yield path, c
                if c.children is not None:
                    stack.append((path, c))

    def dump(self) -> bytes:
        entries = list(self.walk())
        nlink: dict[int, int] = {}
        for _, n in entries:
            nlink[id(n)] = nlink.get(id(n), 0) + 1
        seen: dict[int, bytes] = {}
        out = []
        for path, n in entries:
            if n.children is None and id(n) in seen:
                out.append(b"%s 0 @%o 0 0 0 0 0.0 %s - -" % (_esc(path), n.mode, _esc(seen[id(n)])))
                continue
            seen[id(n)] = path
            if n.children is not None:
                links = 2 + sum(1 for c in n.children.values() if c.children is not None)
            else:
                links = nlink[id(n)]
            size, payload, content, digest = 0, b"-", b"-", b"-"
            if stat.S_ISREG(n.mode):
                size = n.size
                if n.digest:
                    payload, digest = (n.digest[:2] + "/" + n.digest[2:]).encode(), n.digest.encode()
                elif n.inline:
                    content = _esc(n.inline)
            elif stat.S_ISLNK(n.mode):
                size, payload = len(n.target), _esc(n.target)
            elif stat.S_ISDIR(n.mode):
                size = 4096
            fields = [_esc(path), b"%d" % size, b"%o" % n.mode, b"%d" % links, b"%d" % n.uid,
                      b"%d" % n.gid, b"%d" % n.rdev, b"%d.0" % max(0, n.mtime), payload, content, digest]
            fields += [_esc(k, eq=True) + b"=" + _esc(v) for k, v in sorted(n.xattrs.items())]
            out.append(b" ".join(fields))
        return b"\n".join(out) + b"\n"


def _esc(b: bytes, eq: bool = False) -> bytes:
    out = bytearray()
    for c in b:
        if c <= 0x20 or c >= 0x7f or c == 0x5C or (eq and c == 0x3D):
            out += b"\\x%02x" % c
        else:
            out.append(c)
    return bytes(out) if out else b"-"


def _syncfs(path: str) -> None:
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


# --- import --------------------------------------------------------------------------------------


def import_archive(repo, archive: str, name: str) -> dict:
    """Import the image in ARCHIVE into the repository as NAME (caller holds the shared lock)."""
    from .repository import check_name

    check_name(name)
    ar = Archive(archive)
    try:
        ref = resolve_image(ar)
        with repo.workdir() as work:
            inserter = BatchInserter(
                lambda paths: [d for d, _size, _how in _native.store_insert_many(repo.objects, paths)], work)
            merger = Merger(inserter)
            try:
                for i, layer in enumerate(ref.layers):
                    with ar.open(layer) as raw:
                        tf, done = open_layer(raw)
                        try:
                            merger.apply(tf)
                        except (tarfile.TarError, EOFError, OSError) as e:
                            raise CfsError(f"layer {i + 1} ({layer}): {e}", archive) from None
                        finally:
                            tf.close()
                        done()
                inserter.finish()
            finally:
                inserter.close()
            dump = merger.dump()
            _syncfs(repo.objects)  # objects durable before an image names them
        r = repo.import_dump(dump, name, os.path.abspath(archive), kind="oci",
                             extra={"manifest.json": ref.manifest, "config.json": ref.config})
    finally:
        ar.close()
    r["layers"] = len(ref.layers)
    return r
