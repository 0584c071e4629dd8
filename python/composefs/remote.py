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
into the store only when it matches (``ObjectStore.insert_expected`` in the core); its size is
bounded by what the image records. Objects the local store has are not fetched, so a re-run
after a kill or a dropped link fetches only what is still missing. Objects are fetched
``jobs`` at a time over keep-alive connections; transient errors are retried with back-off.

Two transports, one rule: over plain ``http://`` the whole object loop runs in the Rust core
(``_native.RemoteFetcher``: its own HTTP/1.1 client, ``jobs`` threads, no interpreter per
object); ``https://`` and ``file://`` objects go through :class:`Remote` here (``http.client``,
a thread pool, ``ObjectStore.insert_stream``). The ref and the image always come through
:class:`Remote`. This module keeps the policy: which objects, in what order, what an error says.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import os
import re
import stat
import sys
import time
import urllib.parse

from . import _native
from .errors import CfsError
from .oci import Counter, Transient, _Counted, _rate, _wait
from .registry import MAX_REDIRECTS, RETRIES, TIMEOUT, Body, Connections, _oserr, redirected, retrying, web_url

MAX_IMAGE = 256 << 20
JOBS = 16


class Remote:
    """GETs of paths below a base URL (``http``, ``https``) or a ``file://`` directory."""

    def __init__(self, url: str, tls_verify: bool = True, timeout: float = TIMEOUT):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "file" and web_url(url) is None:
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
                url = redirected(url, resp.getheader("Location"), what)
                continue
            if resp.status == 200:
                return Body(resp, what, drop=lambda: self.conns.drop(u.scheme, u.netloc))
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


def fetch_object(remote: Remote, store, hexd: str, size: int, counter: Counter | None = None,
                 attempts: int = RETRIES):
    """Fetch object ``hexd`` (at most ``size`` bytes) through ``remote`` (the Python transport)
    into ``store``, trying transient errors ``attempts`` times in all; a copy that does not match
    is ``_native.FormatError`` and nothing is stored. :class:`ObjectSource` picks the transport."""
    rel = f"{hexd[:2]}/{hexd[2:]}"

    def attempt():
        with remote.open(f"objects/{rel}", f"object {rel}") as f:
            return store.insert_stream(_Counted(f, counter) if counter else f, hexd, size)

    return retrying(attempt, f"object {rel}", attempts=attempts)


class ObjectSource:
    """The objects of one remote, fetched into one store: the one way objects come from a remote
    (``pull`` and ``fetchd``). Over ``http://`` the Rust core's fetcher does the work; over
    ``https://`` and ``file://``, :func:`fetch_object`. Errors are the same either way:
    CfsError for what ends a fetch, ``_native.FormatError`` for a refused object. Transient
    errors are tried ``attempts`` times in all (``fetchd`` reads ahead with one try)."""

    def __init__(self, remote: Remote, store, attempts: int = RETRIES):
        self.remote, self.store, self.attempts = remote, store, attempts
        self.counter = Counter()
        self.native = None
        if remote.scheme == "http":
            try:
                self.native = _native.RemoteFetcher(f"http://{remote.host}{remote.base}", store,
                                                    timeout=remote.conns.timeout, attempts=attempts)
            except _native.FetchError as e:
                raise CfsError(e.args[0], remote.url) from None

    @property
    def bytes(self) -> int:
        """Object bytes received so far."""
        return self.native.bytes if self.native is not None else self.counter.n

    def fetch(self, hexd: str, size: int) -> str:
        """One object: "stored" or "reused"."""
        if self.native is None:
            return fetch_object(self.remote, self.store, hexd, size, self.counter, self.attempts).action
        try:
            return self.native.fetch(hexd, size)
        except _native.FetchError as e:
            raise CfsError(*e.args) from None

    def fetch_all(self, objects: list[tuple[str, int]], jobs: int, progress: bool = False) -> list[str]:
        """Every ``(hex digest, size)`` of ``objects``, ``jobs`` at a time, with a progress bar on
        a terminal when ``progress``; returns the hex digests of the refused ones."""
        total, count = sum(size for _h, size in objects), len(objects)
        if self.native is not None:
            with _progress_bar(progress and count > 0, total, count) as update:
                try:
                    return self.native.fetch_all(objects, jobs, update)
                except _native.FetchError as e:
                    raise CfsError(*e.args) from None
        bad: list[str] = []

        def one(obj):
            try:
                return self.fetch(*obj)
            except _native.FormatError:
                bad.append(obj[0])  # refused: never stored under its name
                return None

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="cfs-pull") as pool:
            futures = {pool.submit(one, o): o for o in objects}
            try:
                _wait(futures, self.counter, total, count, progress, unit="object")
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return bad


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, count: int):
    """``update(bytes, objects_done)`` drawing a bar of the bytes received on stderr, or doing
    nothing when not ``enabled``."""
    if not enabled:
        yield None
        return
    import click

    started = time.monotonic()
    shown = 0
    with click.progressbar(length=max(total, 1), file=sys.stderr, show_eta=True, show_percent=True,
                           label=f"{count} object{'s' if count != 1 else ''}",
                           item_show_func=lambda n: _rate(n or 0, started)) as bar:
        def update(n: int, _done: int) -> None:
            nonlocal shown
            bar.update(min(n, total) - shown, n)
            shown = min(n, total)

        yield update


def pull(repo, url: str, name: str, as_name: str | None = None, objects_only: bool = False,
         tls_verify: bool = True, jobs: int = JOBS, progress: bool = False) -> dict:
    """Fetch image NAME and the objects it needs from the repository at URL (lock held).

    The image is read once, into memory: hashed, parsed (its objects and entry count) and, unless
    ``objects_only``, written to the repository once its objects are durable."""
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
    try:
        plan = _native.image_bytes_plan(image)
    except _native.FormatError as e:
        raise CfsError(f"image {ref}: {e}", url) from None
    entries, objects = plan.entries, plan.objects
    for o in objects:
        if not re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{62}", o.name) or o.name.replace("/", "") != o.digest:
            raise CfsError(f"image {ref}: object path {o.name!r} is not its digest", url)
    store = _native.ObjectStore(repo.objects)
    missing = [(o.digest, o.size) for o in objects if not store.contains(o.digest)]
    source = ObjectSource(remote, store)
    bad = source.fetch_all(missing, jobs, progress)
    if bad:
        raise CfsError(f"{len(bad)} object(s) did not match their digest and were refused "
                       f"(first: {min(bad)[:2]}/{min(bad)[2:]})", url)
    store.sync()  # objects durable before an image names them
    if not objects_only:
        with repo.workdir() as work:
            tmp_image = os.path.join(work, "image")
            with open(tmp_image, "wb") as f:
                f.write(image)
            info = {"source": url, "kind": "pull", "entries": entries, "imported": int(time.time())}
            repo._commit_image(work, tmp_image, ref, local_name, info)
    return {"name": local_name, "digest": ref, "objects": len(objects), "objects_fetched": len(missing),
            "bytes_fetched": source.bytes, "object_bytes": sum(o.size for o in objects),
            "objects_only": objects_only, "seconds": round(time.monotonic() - started, 3)}
