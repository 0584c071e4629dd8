# SPDX-License-Identifier: MIT OR Apache-2.0
"""Mounting composefs images: the ``cfsctl mount`` side of the Rust mount code.

The mount logic itself (option checks, the image and digest checks, the ``composefs`` kernel
module path, the stock EROFS + overlayfs path with its loop device and mount-API fallbacks,
idmapped mounts) lives in the Rust crate ``native/mount`` — the same code the native
``mount.composefs`` helper runs — and is reached here through ``composefs._native.mount_image``.
This module holds the request and result types of the Python API, turns the core's errors into
``MountError``, and unmounts.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields

from . import _native
from . import mountapi as api
from .errors import CfsError

BACKENDS = ("auto", "kernel", "overlay")
# The source name our overlay mounts carry in /proc/self/mountinfo; `cfsctl umount` looks for it.
OVERLAY_SOURCE = "composefs"
KERNEL_FSTYPE = "composefs"
MOUNT_APIS = ("auto", "new", "new-paths", "attached", "mixed", "legacy")


def native_binary(name: str) -> str:
    """An installed binary of the native mount crate (``mount.composefs``,
    ``composefs-setup-root``): the one next to this Python's cfsctl, else the one on PATH."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return os.path.abspath(found)
    raise CfsError(f"{name} is not installed with this Python (reinstall the package)")


class MountError(CfsError):
    """A mount or unmount that could not be done, with the reason.

    ``kind`` says whose the problem is: "usage" (an option or combination), "permission" (not
    root) or "failure" (the system, the image or a directory refused).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, kind: str = "failure"):
        super().__init__(message, path)
        self.kind = kind


@dataclass
class ObjectDir:
    """One object directory (basedir), searched in order for each file's redirect path.

    ``kind`` is "local" today. A remote, lazily fetched store would be another kind whose
    ``prepare()`` brings up its local view (a FUSE or cache directory) and returns its path; the
    mount code only ever sees the ordered list of prepared paths.
    """

    path: str
    kind: str = "local"

    def prepare(self) -> str:
        if self.kind != "local":
            raise MountError(f"object directories of kind {self.kind!r} are not supported yet", self.path)
        return self.path


@dataclass
class MountRequest:
    image: str
    mountpoint: str
    basedirs: list[ObjectDir]
    digest: str | None = None
    verity_check: int | None = None  # None: 2 with a digest (or verity), else 0
    backend: str = "auto"
    upperdir: str | None = None
    workdir: str | None = None
    attrs: list[str] = field(default_factory=list)  # ro, rw, nosuid, nodev, noexec, noatime, ...
    # The helper's `verity` (level 2) and `tryverity` (level 2 where the kernel can verify).
    require_verity: bool = False
    try_verity: bool = False
    # A user namespace file (/proc/PID/ns/user) whose ID mapping the mount gets.
    idmap: str | None = None
    # How to build the stock mount; "auto" picks the best the kernel has. Tests force the others
    # (see MountApi in native/mount/src/lib.rs).
    erofs_source: str = "auto"  # auto | file | loop
    mount_api: str = "auto"  # auto | new | new-paths | attached | mixed | legacy
    # A repository's image is a file it made: a symlink there is refused, never followed.
    image_nofollow: bool = False
    # Kernel module only: an open /dev/composefs-fetch served by `cfsctl fetchd` (fetchd.py),
    # asked for objects missing from every basedir; its requests time out after fetch_timeout s.
    fetch_fd: int | None = None
    fetch_timeout: int | None = None

    @property
    def writable(self) -> bool:
        return self.upperdir is not None


@dataclass
class MountResult:
    backend: str  # "kernel" or "overlay"
    image: str
    mountpoint: str
    basedirs: list[str]
    verity_check: int
    digest: str | None = None
    writable: bool = False
    erofs_source: str | None = None  # "file" or "loop" (overlay backend)
    loop_device: str | None = None
    mount_api: str | None = None  # how the mount was assembled (see MOUNT_APIS)
    layers_by: str | None = None  # "fd", "path" or "string" (how overlay got its layers)
    idmap: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _from_native(e: Exception) -> MountError:
    message, path, kind = e.args
    return MountError(message, path, kind)


def parse_options(option_strings: list[str], sloppy: bool = False) -> _native.MountOptions:
    """The helper's ``-o`` strings (mount.composefs spellings and escapes) as request fields."""
    try:
        return _native.parse_mount_options(list(option_strings), sloppy)
    except _native.MountFailed as e:
        raise _from_native(e) from None


def kernel_module_available() -> bool:
    """True when the running kernel has the ``composefs`` filesystem (module loaded or built in)."""
    return _native.kernel_module_available()


def require_root(action: str = "mount") -> None:
    if os.geteuid() != 0:
        raise MountError(f"must be root to {action} composefs images (mounting needs CAP_SYS_ADMIN)",
                         kind="permission")


def mount_image(req: MountRequest) -> MountResult:
    """Mount ``req.image`` on ``req.mountpoint``; return what was done."""
    try:
        out = _native.mount_image(
            req.image, req.mountpoint, [b.prepare() for b in req.basedirs], digest=req.digest,
            verity_check=req.verity_check, require_verity=req.require_verity, try_verity=req.try_verity,
            backend=req.backend, upperdir=req.upperdir, workdir=req.workdir, attrs=list(req.attrs),
            idmap=req.idmap, erofs_source=req.erofs_source, mount_api=req.mount_api,
            image_nofollow=req.image_nofollow, fetch_fd=req.fetch_fd, fetch_timeout=req.fetch_timeout)
    except _native.MountFailed as e:
        raise _from_native(e) from None
    except OverflowError:
        raise MountError(f"bad verity check level {req.verity_check!r}: expected 0, 1 or 2", kind="usage") from None
    return MountResult(**{f.name: getattr(out, f.name) for f in fields(MountResult)})


# --- unmount -----------------------------------------------------------------------------------


@dataclass
class MountEntry:
    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    super_options: str
    device: str = ""  # major:minor of the filesystem (a FUSE mount's minor is its connection number)


def _unescape_field(field_: str) -> str:
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and i + 4 <= len(field_) and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    entries = []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            left, _, right = line.partition(" - ")
            lf, rf = left.split(" "), right.split(" ")
            entries.append(MountEntry(int(lf[0]), _unescape_field(lf[4]), rf[0], _unescape_field(rf[1]),
                                      rf[2] if len(rf) > 2 else "", lf[2]))
    return entries


def is_composefs_entry(e: MountEntry) -> bool:
    return e.fstype == KERNEL_FSTYPE or (e.fstype == "overlay" and e.source == OVERLAY_SOURCE)


def _listed_path(mountpoint: str) -> str:
    """Where a mount on ``mountpoint`` is listed in mountinfo, found without looking at the last
    component itself: resolving it would ask the filesystem mounted there for the attributes of its
    root, and a FUSE daemon that is stopped never answers."""
    p = mountpoint.rstrip("/") or "/"
    head, tail = os.path.split(p)
    if tail in ("", ".", ".."):
        return os.path.realpath(p)
    return os.path.join(os.path.realpath(head or "."), tail)


def find_mount(mountpoint: str) -> MountEntry | None:
    """The topmost mount on ``mountpoint`` (None if nothing is mounted there). A path that names
    a mount point is never looked at through the filesystem (see ``_listed_path``); only one that
    does not (a symlink to one, say) is resolved in full."""
    entries = read_mountinfo()

    def top(target: str) -> MountEntry | None:
        return next((e for e in reversed(entries) if e.mountpoint == target), None)

    return top(_listed_path(mountpoint)) or top(os.path.realpath(mountpoint))


def unmount(mountpoint: str, lazy: bool = False) -> dict:
    """Unmount a composefs mount; refuse anything else.

    The EROFS layer is a detached mount held only by the overlay, and its loop device (if any)
    auto-clears, so unmounting the one visible mount releases everything the mount created.
    """
    e = find_mount(mountpoint)
    if e is None:
        raise MountError("not a mount point" if os.path.exists(mountpoint) else "no such mount point", mountpoint)
    from .fusemount import is_fuse_entry, unmount_fuse

    if is_fuse_entry(e):  # a user's own FUSE mount: fusermount3 unmounts it, no root needed
        unmount_fuse(e, lazy)
        return {"mountpoint": e.mountpoint, "fstype": e.fstype, "backend": "fuse", "lazy": lazy}
    require_root("unmount")
    if not is_composefs_entry(e):
        raise MountError(f"not a composefs mount (it is {e.fstype} from {e.source}); refusing to "
                         "unmount it, use umount(8)", mountpoint)
    try:
        api.umount2(e.mountpoint, (api.MNT_DETACH if lazy else 0) | api.UMOUNT_NOFOLLOW)
    except OSError as err:
        if err.errno == errno.EBUSY:
            raise MountError("mount is busy (files open or a process inside); close them or use "
                             "--lazy", mountpoint) from None
        raise MountError(f"umount failed: {err.strerror or err}", mountpoint) from None
    return {"mountpoint": e.mountpoint, "fstype": e.fstype, "backend": "kernel" if e.fstype == KERNEL_FSTYPE
            else "overlay", "lazy": lazy}
