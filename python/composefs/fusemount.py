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

import errno
import os
import shutil
import signal
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


def unmount_fuse(entry, lazy: bool = False) -> None:
    """Unmount our FUSE mount ``entry`` (a ``mount.MountEntry``) and end its daemon, never waiting
    on the daemon itself: it may be stopped (SIGSTOP) and answer nothing.

    Nothing here goes through the mount: the mount point comes from mountinfo, and neither
    ``umount2`` nor ``fusermount3 -u`` asks the daemon anything (a plain FUSE mount sends no
    DESTROY; the kernel aborts the connection when its superblock goes). With ``lazy`` a busy
    mount is detached and its daemon left to serve the files still open; otherwise the daemon, whose
    connection is gone, exits by itself, and one that has not within ``DAEMON_EXIT_TIMEOUT`` (or is
    stopped, so never will) is killed with SIGKILL: a stopped process ends on no other signal
    without being resumed first, and a read-only daemon whose mount is gone has nothing to flush.
    Only this mount's daemons are ever signalled (see ``_daemons_of``)."""
    daemons = _daemons_of(_connection(entry.device))
    try:
        if _detach(entry.mountpoint, lazy):
            _end(daemons)
    finally:
        for pidfd in daemons.values():
            os.close(pidfd)


# How long a daemon whose mount is gone may take to exit on its own before it is killed.
DAEMON_EXIT_TIMEOUT = 3.0


def _detach(mountpoint: str, lazy: bool) -> bool:
    """Unmount; with ``lazy`` detach a busy mount instead. False: detached while busy (the daemon
    still serves open files)."""
    if os.geteuid() == 0:
        from .mount import MountError, api

        try:
            api.umount2(mountpoint, api.UMOUNT_NOFOLLOW)
            return True
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise MountError(f"umount failed: {err.strerror or err}", mountpoint) from None
            if not lazy:
                raise MountError("mount is busy (files open or a process inside); close them or use "
                                 "--lazy", mountpoint) from None
        try:
            api.umount2(mountpoint, api.MNT_DETACH | api.UMOUNT_NOFOLLOW)
        except OSError as err:
            raise MountError(f"umount failed: {err.strerror or err}", mountpoint) from None
        return False
    p = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if p.returncode == 0:
        return True
    if lazy:
        p = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True)
        if p.returncode == 0:
            return False
    raise CfsError(f"fusermount3: {p.stderr.strip() or p.returncode}", mountpoint)


def _connection(device: str) -> int | None:
    """The FUSE connection number of a mount whose mountinfo device is ``device`` (MAJOR:MINOR):
    the kernel's dev_t of its superblock, as /dev/fuse's fdinfo and /sys/fs/fuse/connections
    name it."""
    major, _, minor = device.partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return (int(major) << 20) | int(minor)


def _daemons_of(connection: int | None) -> dict[int, int]:
    """Our daemons (``python -m composefs.fusemount serve``) holding FUSE connection
    ``connection`` open: {pid: pidfd}. The connection is what the kernel shows for each open
    /dev/fuse in /proc/PID/fdinfo (``fuse_connection:``, Linux 6.16 and later; on older kernels
    nothing is found and no daemon is signalled). Each is checked after its pidfd is open, so a
    pid reused by then is never the one signalled."""
    found: dict[int, int] = {}
    if connection is None:
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if not _is_daemon(pid, connection):
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        if _is_daemon(pid, connection):
            found[pid] = pidfd
        else:
            os.close(pidfd)
    return found


def _is_daemon(pid: int, connection: int) -> bool:
    # Its open files first: reading a process's command line takes its memory map lock, which a
    # process faulting on a stopped FUSE mount may keep others waiting on; fd links and fdinfo do not.
    try:
        holds = False
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/fuse":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                holds = any(key == "fuse_connection" and value.strip() == str(connection)
                            for key, _, value in (line.partition(":") for line in f))
            if holds:
                break
        if not holds:
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[1:4] == [b"-m", b"composefs.fusemount", b"serve"]
    except OSError:  # gone, or not ours to look at
        return False


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _end(daemons: dict[int, int]) -> None:
    """Wait for each daemon to exit (its pidfd becomes readable), killing the stopped ones at once
    and the rest at the deadline. One the kernel holds past a second deadline (in uninterruptible
    sleep) is left: umount does not wait on it any longer. Exited ones leave ``daemons``, their
    pidfds closed; the caller closes the rest."""
    import select

    deadline = time.monotonic() + DAEMON_EXIT_TIMEOUT
    while daemons and time.monotonic() < deadline + DAEMON_EXIT_TIMEOUT:
        for pid, pidfd in list(daemons.items()):
            if select.select([pidfd], [], [], 0)[0]:
                os.close(daemons.pop(pid))
            elif _stopped(pid) or time.monotonic() >= deadline:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if daemons:
            select.select(list(daemons.values()), [], [], 0.05)


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
