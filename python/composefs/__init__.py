# SPDX-License-Identifier: MIT OR Apache-2.0
"""composefs toolchain: build, inspect and mount verified, content-addressed read-only images.

The public API (documented in README.md, "Python API")::

    import composefs

    composefs.digest_file("f")                                  # fs-verity digest, raw bytes
    r = composefs.build_from_directory("rootfs", "app.cfs", store="objects")
    composefs.inspect_image("app.cfs").digest == r.digest
    repo = composefs.Repository.create("/srv/cfs")
    repo.import_directory("rootfs", "app")
    composefs.mount_image("app.cfs", "/mnt/app", basedirs="objects")

Names are loaded on first use, so ``cfsctl`` (which imports this package) starts no slower for
them; ``composefs.api`` and ``composefs.fsverity`` hold the definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import (
        BuildResult,
        CfsError,
        FsckProblem,
        FsckResult,
        GcResult,
        ImageInfo,
        ImportResult,
        MountError,
        MountResult,
        Repository,
        RepositoryImage,
        build_from_directory,
        build_from_dump,
        dump_image,
        image_objects,
        inspect_image,
        list_image,
        mount_image,
        unmount,
    )
    from .fsverity import digest_bytes, digest_file, digest_files

_FSVERITY = ("digest_bytes", "digest_file", "digest_files")
_API = (
    "BuildResult",
    "CfsError",
    "FsckProblem",
    "FsckResult",
    "GcResult",
    "ImageInfo",
    "ImportResult",
    "MountError",
    "MountResult",
    "Repository",
    "RepositoryImage",
    "build_from_directory",
    "build_from_dump",
    "dump_image",
    "image_objects",
    "inspect_image",
    "list_image",
    "mount_image",
    "unmount",
)
__all__ = ["__version__", *_FSVERITY, *_API]


def __getattr__(name: str) -> Any:
    if name in _FSVERITY:
        from . import fsverity

        return getattr(fsverity, name)
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
