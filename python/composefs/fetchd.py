# SPDX-License-Identifier: MIT OR Apache-2.0
"""``cfsctl fetchd``: fetches the objects a composefs module mount misses, from a remote repository.

The module (``mount -t composefs ... -o fetch_fd=N``) asks for an object when it is in none of
the mount's basedirs; the channel is an open ``/dev/composefs-fetch`` whose descriptor number
the mounter passed as ``fetch_fd`` (protocol: ``kernel/fetch.h``, ``kernel/README.md``). Each
request names an object by its sha256 fs-verity digest only. The daemon fetches it from the
repository (``remote.ObjectSource``, the code ``cfsctl pull`` uses: hashed while stored, linked
under its name only if it matches, fs-verity enabled), writing only inside the first basedir,
then replies; the module looks the object up again and checks its fs-verity digest itself, so a
reply is never trusted for content. Objects the image does not name are answered ENOENT without
a request to the server. Requests are served ``jobs`` at a time. Reading end of file means the
mount is gone (or never came): the daemon exits.

Read-ahead, as the kernel reads a file ahead of its reader: a request for the object at position
i of the image's walk order (``_native.image_objects_walk``: the order ``find`` meets the files)
queues the next objects after i that are neither in the store nor queued nor in flight, at most
``readahead`` objects and ``READAHEAD_BYTES`` bytes (:func:`plan_readahead`), for a pool of
``READAHEAD_JOBS`` threads of their own with their own connections, tried once. The rules:
- a request never waits behind read-ahead: its own pool, and an object it wants that is only
  queued for read-ahead is taken off the queue and fetched by the request;
- one fetch per object: a request for an object read-ahead is fetching waits for that fetch;
- a failed read-ahead (a wrong copy, a server down) answers nobody: the request that waited
  fetches the object itself, with retries, and answers EIO if that fails; read-ahead does not
  try that object again.

``cfsctl mount NAME MNT --remote URL`` opens the device, starts the daemon holding the only
other copy of the descriptor, and mounts; the daemon's stderr goes to the file named by
``$CFS_FETCHD_LOG`` when set, else nowhere.
"""

from __future__ import annotations

import errno
import os
import queue
import select
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from . import _native
from .errors import CfsError

DEVICE = "/dev/composefs-fetch"
VERSION = 1
ALG_SHA256 = 1
# struct cfs_fetch_request and struct cfs_fetch_reply in kernel/fetch.h
REQUEST = struct.Struct("<IIQB7s32s")
REPLY = struct.Struct("<IIQII")
JOBS = 8
READAHEAD = 64  # objects ahead of a miss; 0: none
READAHEAD_BYTES = 16 << 20
READAHEAD_JOBS = 16  # as many as `cfsctl pull` keeps in flight
READAHEAD_SCAN = 8  # times READAHEAD: the most positions one plan looks at (objects present are skipped)
START_TIMEOUT = 120  # seconds; an interpreter on a slow machine takes a few


def _log(msg: str) -> None:
    print(f"cfsctl fetchd: {msg}", file=sys.stderr, flush=True)


def reply(fd: int, req_id: int, error: int) -> None:
    try:
        os.write(fd, REPLY.pack(VERSION, REPLY.size, req_id, error, 0))
    except OSError as e:
        # ENOENT: every reader gave up (timeout, killed) before the answer came
        if e.errno != errno.ENOENT:
            _log(f"reply to request {req_id}: {e.strerror}")


def plan_readahead(order: Sequence[tuple[str, int]], at: int, window: int, max_bytes: int,
                   busy: Callable[[str], bool], skip: Callable[[str], bool]) -> list[str]:
    """The objects to read ahead after a request for ``order[at]`` (``order``: (hex digest, size)
    in walk order), nearest first: those after ``at`` that are neither ``busy`` (queued or in
    flight) nor to ``skip`` (in the store), while the objects ahead that are not skipped — busy
    ones count, they are on their way — number at most ``window`` and weigh at most
    ``max_bytes``. At most ``READAHEAD_SCAN * window`` positions are looked at."""
    out: list[str] = []
    count = nbytes = 0
    for hexd, size in order[at + 1:at + 1 + READAHEAD_SCAN * window]:
        if count >= window:
            break
        if busy(hexd):
            count += 1
            nbytes += size
            continue
        if skip(hexd):
            continue
        if nbytes + size > max_bytes:
            break
        out.append(hexd)
        count += 1
        nbytes += size
    return out


class _Flight:
    """One fetch of one object under way; ``ok`` is meaningful once ``done`` is set."""

    def __init__(self, ahead: bool):
        self.done = threading.Event()
        self.ok = False
        self.ahead = ahead


class _Objects:
    """What fetchd knows of the image's objects: which are queued for read-ahead (``pending``,
    oldest first) or being fetched (``running``), which are known to be in the store, which
    read-ahead failed on. One lock guards it all; no fetch runs under it."""

    def __init__(self, order: list[tuple[str, int]], store, window: int, max_bytes: int):
        self.order = order
        self.sizes = dict(order)
        self.pos = {hexd: i for i, (hexd, _size) in enumerate(order)}  # distinct: one position each
        self.store = store
        self.window, self.max_bytes = window, max_bytes
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.pending: OrderedDict[str, None] = OrderedDict()
        self.running: dict[str, _Flight] = {}
        self.stored: set[str] = set()  # known to be in the store; for plans only (requests look)
        self.failed_ahead: set[str] = set()
        self.stats = {"requests": 0, "fetched": 0, "waited": 0, "ahead": 0, "ahead_failed": 0}

    def count(self, what: str) -> None:
        with self.lock:
            self.stats[what] += 1

    def present(self, hexd: str) -> bool:
        if hexd in self.stored:
            return True
        if self.store.contains(hexd):
            self.stored.add(hexd)
            return True
        return False

    def plan(self, hexd: str) -> None:
        """Queue read-ahead after a request for ``hexd``."""
        at = self.pos.get(hexd)
        if at is None or self.window <= 0:
            return

        def busy(h: str) -> bool:
            return h in self.pending or h in self.running

        def skip(h: str) -> bool:  # not counted in the window: stored, or read-ahead gave up on it
            return h in self.failed_ahead or self.present(h)

        # Without the lock (requests claim objects meanwhile: a plan never delays them); what
        # became busy since is dropped below.
        new = plan_readahead(self.order, at, self.window, self.max_bytes, busy, skip)
        with self.lock:
            new = [h for h in new if not busy(h)]
            for h in new:
                self.pending[h] = None
            while len(self.pending) > 4 * self.window:  # readers that moved on: their oldest go
                self.pending.popitem(last=False)
            if new:
                self.wake.notify(len(new))

    def claim(self, hexd: str) -> tuple[_Flight, bool]:
        """For a request: the flight of ``hexd``, and whether it is the caller's to fetch (taking
        it off the read-ahead queue when it was only queued there)."""
        with self.lock:
            self.pending.pop(hexd, None)
            f = self.running.get(hexd)
            if f is not None:
                return f, False
            f = self.running[hexd] = _Flight(ahead=False)
            return f, True

    def next_ahead(self) -> tuple[str, _Flight]:
        """For a read-ahead worker: the oldest queued object not in flight, now in flight."""
        with self.lock:
            while True:
                while not self.pending:
                    self.wake.wait()
                hexd, _ = self.pending.popitem(last=False)
                if hexd not in self.running:
                    f = self.running[hexd] = _Flight(ahead=True)
                    return hexd, f

    def finish(self, hexd: str, f: _Flight, ok: bool) -> None:
        with self.lock:
            if self.running.get(hexd) is f:
                del self.running[hexd]
            if ok:
                self.stored.add(hexd)
            elif f.ahead:
                self.failed_ahead.add(hexd)
        f.ok = ok
        f.done.set()


def serve(fd: int, url: str, basedir: str, image: str, jobs: int = JOBS, tls_verify: bool = True,
          ready_fd: int | None = None, readahead: int = READAHEAD,
          readahead_bytes: int = READAHEAD_BYTES) -> None:
    """Answer requests on channel ``fd`` until the mount goes; say so on ``ready_fd`` once able to."""
    from .remote import ObjectSource, Remote

    store = _native.ObjectStore(basedir)
    walk = [(o.digest, o.size) for o in _native.image_objects_walk(image)]
    objs = _Objects(walk, store, readahead, readahead_bytes)
    source = ObjectSource(Remote(url, tls_verify=tls_verify), store)
    work: queue.Queue[tuple[int, str]] = queue.Queue()
    plans: queue.Queue[str] = queue.Queue()

    def answer(req_id: int, hexd: str) -> None:
        size = objs.sizes.get(hexd)
        if size is None:
            _log(f"object {hexd}: not in the image, not fetched")
            return reply(fd, req_id, errno.ENOENT)
        objs.count("requests")
        if readahead > 0:
            plans.put(hexd)
        while True:
            f, mine = objs.claim(hexd)
            if mine:
                break
            objs.count("waited")
            f.done.wait()  # read-ahead tries once, within the transport's timeout
            if f.ok:
                return reply(fd, req_id, 0)
            # that fetch failed: fetch it here, and answer for this one
        ok = False
        try:
            if not store.contains(hexd):  # read-ahead may have stored it since the module looked
                source.fetch(hexd, size)
                objs.count("fetched")
            ok = True
        except _native.FormatError:
            _log(f"object {hexd}: the server's copy does not match its digest; refused")
        except (CfsError, OSError) as e:
            _log(f"object {hexd}: {e}")
        finally:
            objs.finish(hexd, f, ok)
        reply(fd, req_id, 0 if ok else errno.EIO)

    def worker() -> None:
        while True:
            req_id, hexd = work.get()
            try:
                answer(req_id, hexd)
            except Exception as e:  # a worker must outlive any one object
                _log(f"object {hexd}: {e!r}")
                reply(fd, req_id, errno.EIO)

    def planner() -> None:
        while True:
            hexd = plans.get()
            try:
                objs.plan(hexd)
            except Exception as e:  # read-ahead is an optimisation: never fatal
                _log(f"read-ahead after {hexd}: {e!r}")

    def ahead_worker(ahead: ObjectSource) -> None:
        while True:
            hexd, f = objs.next_ahead()
            ok = False
            try:
                if not store.contains(hexd):
                    ahead.fetch(hexd, objs.sizes[hexd])
                    objs.count("ahead")
                ok = True
            except _native.FormatError:
                _log(f"object {hexd}: read ahead, the server's copy does not match its digest; refused")
            except Exception as e:  # CfsError, OSError, anything: the request will fetch it itself
                _log(f"object {hexd}: read ahead: {e}")
            finally:
                if not ok:
                    objs.count("ahead_failed")
                objs.finish(hexd, f, ok)

    # daemon threads: the process exits with the mount, whatever is still in flight
    for i in range(max(1, jobs)):
        threading.Thread(target=worker, name=f"cfs-fetch-{i}", daemon=True).start()
    if readahead > 0:
        # its own transport (connections, one try each): read-ahead never holds what a request needs
        ahead = ObjectSource(Remote(url, tls_verify=tls_verify), store, attempts=1)
        threading.Thread(target=planner, name="cfs-plan", daemon=True).start()
        for i in range(READAHEAD_JOBS):
            threading.Thread(target=ahead_worker, args=(ahead,), name=f"cfs-ahead-{i}", daemon=True).start()
    if ready_fd is not None:
        # the mount comes after this: a first miss does not wait for the interpreter to start
        os.write(ready_fd, b"R")
        os.close(ready_fd)
    while True:
        rec = os.read(fd, REQUEST.size)
        if not rec:
            st = objs.stats
            _log(f"mount gone: {st['requests']} requests, {st['fetched']} objects fetched for them, "
                 f"{st['waited']} waited for a fetch under way, {st['ahead']} read ahead "
                 f"({st['ahead_failed']} failed)")
            return  # end of file: the mount is gone
        if len(rec) != REQUEST.size:
            raise CfsError(f"short request from the module ({len(rec)} bytes)")
        version, size, req_id, alg, _reserved, digest = REQUEST.unpack(rec)
        if version != VERSION or size != REQUEST.size or alg != ALG_SHA256:
            _log(f"request {req_id}: unknown version {version}, size {size} or algorithm {alg}")
            reply(fd, req_id, errno.EIO)
            continue
        work.put((req_id, digest.hex()))


class Fetcher:
    """A started ``cfsctl fetchd`` and this process's copy of its channel (``fd``)."""

    def __init__(self, fd: int, proc: subprocess.Popen):
        self.fd, self.proc = fd, proc

    def release(self) -> None:
        """Close this process's copy: from now on the daemon alone holds the channel."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def abort(self) -> None:
        self.release()
        self.proc.kill()
        self.proc.wait()


def start(url: str, image: str, basedir: str, jobs: int = JOBS, tls_verify: bool = True,
          readahead: int = READAHEAD) -> Fetcher:
    """Open the module's fetch device and start a daemon serving it; mount with ``fd`` next."""
    try:
        fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise CfsError(f"cannot open the fetch channel: {e.strerror} (is the composefs module loaded?)",
                       DEVICE) from None
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    log = os.environ.get("CFS_FETCHD_LOG")
    ready_r, ready_w = os.pipe()
    try:
        err = open(log, "ab") if log else subprocess.DEVNULL
        args = [sys.executable, "-m", "composefs.cli", "fetchd", "--fd", str(fd), "--ready-fd", str(ready_w),
                "--basedir", basedir, "--image", image, "--jobs", str(jobs), "--readahead", str(readahead),
                f"--tls-verify={str(tls_verify).lower()}", url]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(fd, ready_w), start_new_session=True, env=env)
        if log:
            err.close()
        os.close(ready_w)
        ready_w = -1
        # b"R" once it serves; end of file if it died first
        ready, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
        if not ready:
            proc.kill()
        if not ready or os.read(ready_r, 1) != b"R":
            proc.wait()
            raise CfsError(f"cfsctl fetchd did not start (exit status {proc.returncode}"
                           f"{'; see ' + log if log else '; $CFS_FETCHD_LOG names a file for its messages'})")
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    return Fetcher(fd, proc)
