"""Thin ctypes wrappers for the Linux mount syscalls and ioctls that mounting needs.

No policy lives here: every function does one syscall and raises ``OSError`` (with errno, and the
kernel's fs_context log lines when it has any) on failure. ``composefs.mount`` decides what to
call. The new mount API is called by syscall number (the same on every architecture since 5.1),
so this works whatever the C library version.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, *args):
    """syscall(2) with every integer argument passed as a full C long."""
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _libc.syscall(ctypes.c_long(nr), *conv)

# Syscall numbers of the new mount API (unified table, identical on all architectures but alpha).
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6

MOUNT_ATTR_RDONLY = 0x01
MOUNT_ATTR_NOSUID = 0x02
MOUNT_ATTR_NODEV = 0x04
MOUNT_ATTR_NOEXEC = 0x08
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80

MOVE_MOUNT_F_EMPTY_PATH = 0x04

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# <linux/loop.h>
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4

# <linux/fsverity.h>: _IOWR('f', 134, struct fsverity_digest)
FS_IOC_MEASURE_VERITY = 0xC0046686
FS_VERITY_HASH_ALG_SHA256 = 1
FS_VERITY_HASH_ALG_SHA512 = 2

# Mount attribute name -> (MOUNT_ATTR_* for fsmount, MS_* for mount(2)).
MOUNT_ATTRS = {
    "ro": (MOUNT_ATTR_RDONLY, MS_RDONLY),
    "nosuid": (MOUNT_ATTR_NOSUID, MS_NOSUID),
    "nodev": (MOUNT_ATTR_NODEV, MS_NODEV),
    "noexec": (MOUNT_ATTR_NOEXEC, MS_NOEXEC),
    "noatime": (MOUNT_ATTR_NOATIME, MS_NOATIME),
    "nodiratime": (MOUNT_ATTR_NODIRATIME, MS_NODIRATIME),
    "strictatime": (MOUNT_ATTR_STRICTATIME, MS_STRICTATIME),
}


class MountSyscallError(OSError):
    """An OSError from a mount syscall, carrying the kernel's fs_context messages if any."""

    def __init__(self, err: int, what: str, filename: str | None = None, log: list[str] | None = None):
        msg = os.strerror(err)
        self.log = log or []
        if self.log:
            msg = f"{msg} (kernel: {'; '.join(self.log)})"
        super().__init__(err, f"{what}: {msg}", filename)
        self.what = what


def _check(ret: int, what: str, filename: str | None = None, fsfd: int | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        log = read_fs_log(fsfd) if fsfd is not None else None
        raise MountSyscallError(err, what, filename, log)
    return ret


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return os.fsencode(s)


def read_fs_log(fsfd: int) -> list[str]:
    """Drain the fs_context message log of an fsopen() descriptor ("e overlay: ..." lines)."""
    lines: list[str] = []
    try:
        os.set_blocking(fsfd, False)
    except OSError:
        return lines
    for _ in range(64):
        try:
            data = os.read(fsfd, 1024)
        except OSError:
            break
        if not data:
            break
        text = data.decode("utf-8", "replace").rstrip("\n")
        # Each message is "<level> <text>"; keep the text.
        lines.append(text[2:] if len(text) > 2 and text[1] == " " else text)
    return lines


def fsopen(fstype: str) -> int:
    return _check(_syscall(SYS_fsopen, _b(fstype), FSOPEN_CLOEXEC), f"fsopen({fstype})")


def fsconfig_flag(fsfd: int, key: str) -> None:
    _check(_syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FLAG, _b(key), None, 0), f"fsconfig {key}", fsfd=fsfd)


def fsconfig_string(fsfd: int, key: str, value: str) -> None:
    _check(
        _syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, _b(key), _b(value), 0),
        f"fsconfig {key}={value}",
        fsfd=fsfd,
    )


def fsconfig_fd(fsfd: int, key: str, fd: int, shown: str = "") -> None:
    _check(
        _syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FD, _b(key), None, fd),
        f"fsconfig {key}=<fd {shown or fd}>",
        fsfd=fsfd,
    )


def fsconfig_create(fsfd: int, what: str) -> None:
    _check(_syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, None, None, 0), f"creating {what}", fsfd=fsfd)


def fsmount(fsfd: int, attrs: int) -> int:
    return _check(_syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC, attrs), "fsmount", fsfd=fsfd)


def move_mount_to(mntfd: int, target: str) -> None:
    AT_FDCWD = -100
    _check(
        _syscall(SYS_move_mount, mntfd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
        "move_mount",
        target,
    )


def mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount -t {fstype}", target)


def umount2(target: str, flags: int = 0) -> None:
    _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    _check(_libc.umount2(_b(target), flags), "umount", target)


# --- loop devices -----------------------------------------------------------------------------

_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")  # struct loop_info64, 232 bytes
_LOOP_CONFIG = struct.Struct("=II232s64s")  # struct loop_config, 304 bytes


def loop_attach(backing_fd: int, flags: int, name: str = "") -> tuple[str, int]:
    """Attach ``backing_fd`` to a free loop device with LOOP_CONFIGURE.

    Returns (device path, open device fd). With LO_FLAGS_AUTOCLEAR the device detaches itself when
    its last user (the caller's fd, then the filesystem mounted on it) goes away.
    """
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(16):
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{n}"
            mode = os.O_RDONLY if flags & LO_FLAGS_READ_ONLY else os.O_RDWR
            devfd = os.open(dev, mode | os.O_CLOEXEC)
            info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, os.fsencode(name)[:63], b"", b"", 0, 0)
            cfg = bytearray(_LOOP_CONFIG.pack(backing_fd, 0, info, b""))
            try:
                fcntl.ioctl(devfd, LOOP_CONFIGURE, cfg)
            except OSError as e:
                os.close(devfd)
                if e.errno == errno.EBUSY:  # another process took it first: ask again
                    continue
                raise MountSyscallError(e.errno, "LOOP_CONFIGURE", dev) from None
            return dev, devfd
        raise MountSyscallError(errno.EBUSY, "no free loop device", "/dev/loop-control")
    finally:
        os.close(ctl)


# --- fs-verity --------------------------------------------------------------------------------


def measure_verity(fd: int) -> tuple[int, bytes]:
    """FS_IOC_MEASURE_VERITY: (hash algorithm number, digest) of an fs-verity file."""
    buf = bytearray(struct.pack("=HH", 0, 64) + bytes(64))
    fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
    alg, size = struct.unpack_from("=HH", buf)
    return alg, bytes(buf[4 : 4 + size])
