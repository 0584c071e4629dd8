# SPDX-License-Identifier: MIT OR Apache-2.0
"""The two small system calls Python makes around mounts, both done by the Rust core:
``umount2`` (``cfsctl umount``, FUSE unmounts as root) and ``FS_IOC_MEASURE_VERITY`` (a repository
image's digest; the fs-verity protocol lives in ``native/src/fsio``).

Mounting itself is done by the Rust core (``native/mount``, the code ``mount.composefs`` runs).
Each function does one call and raises ``OSError`` with errno on failure; no policy lives here.
"""

from __future__ import annotations

from . import _native

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

FS_VERITY_HASH_ALG_SHA256 = 1

# umount2(target, flags=0)
umount2 = _native.umount2
# (hash algorithm number, digest) of an fs-verity file
measure_verity = _native.measure_verity
