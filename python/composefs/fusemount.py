# SPDX-License-Identifier: MIT OR Apache-2.0
"""Mounting through FUSE: no privileges needed (``fusermount3`` does the mount for a user).

The filesystem is served by the Rust core (``_native.fuse_serve``) in a daemon process of its
own: ``mount_fuse`` checks the image (its digest when one is given, then a full read by the
same reader ``cfsctl info`` uses), starts ``python -m composefs.fusemount serve ...`` in a new
session, and returns once the mount is in ``/proc/self/mountinfo`` (or reports the daemon's
error line). With ``foreground`` the caller itself serves until the mount goes. A daemon that
dies leaves a mount answering ENOTCONN, which ``cfsctl umount`` (``fusermount3 -u``) removes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from . import _native
from .errors import CfsError

# How our FUSE mounts show in mountinfo: type "fuse" or "fuse.composefs" (with a subtype, as
# fusermount3 mounts them), source "composefs:IMAGE".
FSTYPES = ("fuse", "fuse.composefs")
SOURCE_PREFIX = "composefs:"
START_TIMEOUT = 20.0


def _check_image(image: str, digest: str | None) -> None:
    if digest:
        from .fsverity import digest_file

        got = digest_file(image).hex()
        if got != digest:
            raise CfsError(f"image digest mismatch: expected {digest}, the image has {got}", image)
    try:
        _native.fuse_check(image)
    except _native.FormatError as e:
        raise CfsError(f"not a valid composefs image: {e}", image) from None


def mount_fuse(image: str, mountpoint: str, basedirs: list[str], digest: str | None = None,
               verity_check: int | None = None, foreground: bool = False, remote: str | None = None,
               tls_verify: bool = True) -> dict:
    image = os.path.abspath(image)
    mountpoint = os.path.abspath(mountpoint)
    if not os.path.isdir(mountpoint):
        raise CfsError("mount point is not a directory", mountpoint)
    level = 2 if digest else (1 if verity_check is None else verity_check)
    _check_image(image, digest)
    basedirs = [os.path.abspath(b) for b in basedirs]
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        raise CfsError("fusermount3 is not installed (Debian: fuse3); a user needs it to mount with FUSE")
    if remote:
        from .remote import Remote

        Remote(remote)  # a malformed URL is an error now, not a daemon's EIO later
    args = ["serve", image, mountpoint, str(level), remote or "-", "1" if tls_verify else "0", *basedirs]
    if foreground:
        serve(args)
        return {"backend": "fuse", "image": image, "mountpoint": mountpoint, "basedirs": basedirs,
                "verity_check": level, "digest": digest, "foreground": True}
    # The daemon imports this very package, wherever it was imported from.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "composefs.fusemount", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            close_fds=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _mounted(mountpoint):
            proc.stderr.close()  # the daemon's later messages (none expected) go nowhere
            return {"backend": "fuse", "image": image, "mountpoint": mountpoint, "basedirs": basedirs,
                    "verity_check": level, "digest": digest, "pid": proc.pid}
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise CfsError(f"FUSE mount failed: {err[-1] if err else f'exit status {proc.returncode}'}", mountpoint)
        time.sleep(0.02)
    proc.kill()
    raise CfsError("FUSE mount did not appear in time", mountpoint)


def _mounted(mountpoint: str) -> bool:
    from .mount import read_mountinfo

    return any(e.mountpoint == mountpoint and is_fuse_entry(e) for e in read_mountinfo())


def is_fuse_entry(e) -> bool:
    return e.fstype in FSTYPES and e.source.startswith(SOURCE_PREFIX)


def unmount_fuse(mountpoint: str, lazy: bool = False) -> None:
    if os.geteuid() == 0:
        from .mount import api

        api.umount2(mountpoint, (api.MNT_DETACH if lazy else 0) | api.UMOUNT_NOFOLLOW)
        return
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise CfsError(f"fusermount3: {p.stderr.strip() or p.returncode}", mountpoint)


def serve(args: list[str], daemon: bool = False) -> None:
    """Serve until unmounted. A daemon ends its process the moment its mount is gone (see
    ``exit_when_unmounted`` of ``_native.fuse_serve``)."""
    _, image, mountpoint, level, remote, tls_verify, *basedirs = args
    fetch = _fetcher(remote, basedirs[0], tls_verify == "1") if remote != "-" else None
    _native.fuse_serve(image, mountpoint, basedirs, int(level), fsname=SOURCE_PREFIX + image, fetch=fetch,
                       exit_when_unmounted=daemon)


def _fetcher(url: str, basedir: str, tls_verify: bool):
    """``fetch(hex, size) -> errno`` for the daemon: the object from the remote repository at
    URL into the store at BASEDIR, by ``remote.fetch_object`` (the code ``cfsctl pull`` and
    ``fetchd`` use: hashed while stored, linked only if it matches, fs-verity enabled)."""
    import errno as _errno

    from .remote import Remote, fetch_object

    remote = Remote(url, tls_verify=tls_verify)
    store = _native.ObjectStore(basedir)

    def fetch(hexd: str, size: int) -> int:
        try:
            fetch_object(remote, store, hexd, size)
            return 0
        except CfsError as e:
            return _errno.ENOENT if "not found" in str(e) else _errno.EIO
        except Exception:  # a refused object, the network: the reader gets EIO, the daemon lives
            return _errno.EIO

    return fetch


if __name__ == "__main__":
    try:
        serve(sys.argv[1:], daemon=True)
    except (OSError, CfsError, _native.FormatError) as e:
        print(f"cfsctl: error: {e}", file=sys.stderr)
        sys.exit(1)
