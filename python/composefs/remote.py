# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl pull``: images and their objects from a repository served as plain files.

A repository is a static website: any server that serves the repository directory's files
(nginx, a CDN, an S3-style bucket) or a ``file://`` path is a remote. Three kinds of path are
fetched, by name, never by listing a directory:
    refs/NAME             the digest of the image NAME (64 hex digits and a newline)
    images/DIGEST         the image, whose fs-verity digest must be DIGEST
    objects/XX/<62 hex>   an object, whose fs-verity digest must be its name

Nothing fetched is trusted: the ref must be a digest, the image must hash to it (and is read
with a size limit), and every object is hashed by the Rust core while it is kept and linked
into the store only when it matches (``ObjectStore.insert_stream``); its size is bounded by
what the image records. Objects the local store has are not fetched, so a re-run after a
kill or a dropped link fetches only what is still missing. Objects are fetched ``jobs`` at a
time over keep-alive connections; transient errors are retried with back-off.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import re
import stat
import time
import urllib.parse

from . import _native
from .errors import CfsError
from .oci import Counter, Transient, _Counted, _wait
from .registry import MAX_REDIRECTS, TIMEOUT, Connections, _oserr, read_body, retrying

MAX_IMAGE = 256 << 20
JOBS = 16


class Remote:
    """GETs of paths below a base URL (``http``, ``https``) or a ``file://`` directory."""

    def __init__(self, url: str, tls_verify: bool = True, timeout: float = TIMEOUT):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https", "file") or (u.scheme != "file" and not u.netloc):
            raise CfsError(f"invalid repository URL {url!r} (http://, https:// or file://)")
        self.url = url
        self.scheme = u.scheme
        self.base = u.path.rstrip("/")
        self.host = u.netloc
        self.conns = Connections(timeout, tls_verify)

    def open(self, rel: str, what: str):
        """A stream of the file at ``rel`` (a 404 is a CfsError, network trouble Transient)."""
        if self.scheme == "file":
            path = urllib.parse.unquote(self.base) + "/" + rel
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as e:
                raise CfsError(f"{what}: {e.strerror}", path) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise CfsError(f"{what}: not a regular file", path)
            return os.fdopen(fd, "rb")
        url = f"{self.scheme}://{self.host}{self.base}/{rel}"
        for _ in range(MAX_REDIRECTS + 1):
            u = urllib.parse.urlsplit(url)
            c = self.conns.get(u.scheme, u.netloc)
            try:
                c.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers={"User-Agent": "cfsctl"})
                resp = c.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self.conns.drop(u.scheme, u.netloc)
                raise Transient(f"{what}: {_oserr(e)}") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                resp.read(1 << 16)
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
                continue
            if resp.status == 200:
                return _Body(resp, self.conns, u, what)
            resp.read(1 << 16)
            if resp.status == 429 or resp.status >= 500:
                raise Transient(f"{what}: HTTP {resp.status}")
            raise CfsError(f"{what}: {'not found' if resp.status == 404 else f'HTTP {resp.status}'}", url)
        raise CfsError(f"{what}: more than {MAX_REDIRECTS} redirects", url)

    def read(self, rel: str, limit: int, what: str) -> bytes:
        def get():
            with self.open(rel, what) as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise CfsError(f"{what}: more than {limit} bytes")
            return data

        return retrying(get, what)


class _Body:
    def __init__(self, resp: http.client.HTTPResponse, conns: Connections, u, what: str):
        self.resp, self.conns, self.u, self.what = resp, conns, u, what

    def read(self, n: int) -> bytes:
        try:
            return read_body(self.resp, n, self.what)
        except Transient:
            self.conns.drop(self.u.scheme, self.u.netloc)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None or not self.resp.isclosed():
            self.resp.close()
            self.conns.drop(self.u.scheme, self.u.netloc)
        return False


def fetch_object(remote: Remote, store, hexd: str, size: int, counter: Counter | None = None):
    """Fetch object ``hexd`` (at most ``size`` bytes) into ``store``, retrying transient errors.

    The store hashes it while keeping it and links it under its name only if it matches
    (``_native.FormatError`` otherwise, nothing stored); fs-verity is enabled on it where the
    filesystem has it. The one way objects come from a remote: ``pull`` and ``fetchd`` use it.
    """
    rel = f"{hexd[:2]}/{hexd[2:]}"

    def attempt():
        with remote.open(f"objects/{rel}", f"object {rel}") as f:
            return store.insert_stream(_Counted(f, counter) if counter else f, hexd, size)

    return retrying(attempt, f"object {rel}")


def pull(repo, url: str, name: str, as_name: str | None = None, objects_only: bool = False,
         tls_verify: bool = True, jobs: int = JOBS, progress: bool = False) -> dict:
    """Fetch image NAME and the objects it needs from the repository at URL (lock held)."""
    from .fsverity import digest_bytes
    from .repository import check_name

    check_name(name)
    local_name = check_name(as_name) if as_name else name
    remote = Remote(url, tls_verify=tls_verify)
    started = time.monotonic()
    ref = remote.read(f"refs/{name}", 200, f"ref {name}").decode("ascii", "replace").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", ref):
        raise CfsError(f"ref {name}: not an image digest", url)
    image = remote.read(f"images/{ref}", MAX_IMAGE, f"image {ref}")
    got = digest_bytes(image).hex()
    if got != ref:
        raise CfsError(f"image {ref}: digest mismatch (the server sent {got})", url)
    store = _native.ObjectStore(repo.objects)
    counter = Counter()
    with repo.workdir() as work:
        tmp_image = os.path.join(work, "image")
        with open(tmp_image, "wb") as f:
            f.write(image)
        try:
            objects = _native.image_objects_sized(tmp_image)
        except _native.FormatError as e:
            raise CfsError(f"image {ref}: {e}", url) from None
        missing = [o for o in objects if not store.contains(o[1])]
        total = sum(o[2] for o in missing)
        bad: list[str] = []

        def fetch(obj):
            rel, hexd, size = obj
            if not re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{62}", rel) or rel.replace("/", "") != hexd:
                raise CfsError(f"image {ref}: object path {rel!r} is not its digest", url)
            try:
                return fetch_object(remote, store, hexd, size, counter)
            except _native.FormatError:
                bad.append(rel)  # refused: never stored under its name
                return None

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="cfs-pull") as pool:
            futures = {pool.submit(fetch, o): o for o in missing}
            try:
                _wait(futures, counter, total, len(missing), progress, unit="object")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        if bad:
            raise CfsError(f"{len(bad)} object(s) did not match their digest and were refused "
                           f"(first: {sorted(bad)[0]})", url)
        store.sync()  # objects durable before an image names them
        if not objects_only:
            info = {"source": url, "kind": "pull", "entries": repo_entries(tmp_image), "imported": int(time.time())}
            repo._commit_image(work, tmp_image, ref, local_name, info)
    return {"name": local_name, "digest": ref, "objects": len(objects), "objects_fetched": len(missing),
            "bytes_fetched": counter.n, "object_bytes": sum(o[2] for o in objects),
            "objects_only": objects_only, "seconds": round(time.monotonic() - started, 3)}


def repo_entries(image: str) -> int:
    from .repository import _count_entries

    return _count_entries(image)
