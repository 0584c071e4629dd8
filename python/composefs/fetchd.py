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

from . import _native
from .errors import CfsError

DEVICE = "/dev/composefs-fetch"
VERSION = 1
ALG_SHA256 = 1
# struct cfs_fetch_request and struct cfs_fetch_reply in kernel/fetch.h
REQUEST = struct.Struct("<IIQB7s32s")
REPLY = struct.Struct("<IIQII")
JOBS = 8
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


def serve(fd: int, url: str, basedir: str, image: str, jobs: int = JOBS, tls_verify: bool = True,
          ready_fd: int | None = None) -> None:
    """Answer requests on channel ``fd`` until the mount goes; say so on ``ready_fd`` once able to."""
    from .remote import ObjectSource, Remote

    sizes = {hexd: size for _rel, hexd, size in _native.image_objects_sized(image)}
    store = _native.ObjectStore(basedir)
    source = ObjectSource(Remote(url, tls_verify=tls_verify), store)
    work: queue.Queue[tuple[int, str]] = queue.Queue()

    def answer(req_id: int, hexd: str) -> None:
        size = sizes.get(hexd)
        if size is None:
            _log(f"object {hexd}: not in the image, not fetched")
            return reply(fd, req_id, errno.ENOENT)
        try:
            source.fetch(hexd, size)
        except _native.FormatError:
            _log(f"object {hexd}: the server's copy does not match its digest; refused")
            return reply(fd, req_id, errno.EIO)
        except (CfsError, OSError) as e:
            _log(f"object {hexd}: {e}")
            return reply(fd, req_id, errno.EIO)
        reply(fd, req_id, 0)

    def worker() -> None:
        while True:
            req_id, hexd = work.get()
            try:
                answer(req_id, hexd)
            except Exception as e:  # a worker must outlive any one object
                _log(f"object {hexd}: {e!r}")
                reply(fd, req_id, errno.EIO)

    for i in range(max(1, jobs)):
        # daemon threads: the process exits with the mount, whatever is still in flight
        threading.Thread(target=worker, name=f"cfs-fetch-{i}", daemon=True).start()
    if ready_fd is not None:
        # the mount comes after this: a first miss does not wait for the interpreter to start
        os.write(ready_fd, b"R")
        os.close(ready_fd)
    while True:
        rec = os.read(fd, REQUEST.size)
        if not rec:
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


def start(url: str, image: str, basedir: str, jobs: int = JOBS, tls_verify: bool = True) -> Fetcher:
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
                "--basedir", basedir, "--image", image, "--jobs", str(jobs),
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
