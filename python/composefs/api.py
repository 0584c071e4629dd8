# SPDX-License-Identifier: MIT OR Apache-2.0
"""The public Python API, re-exported by the package: ``import composefs``.

It covers the main jobs of ``cfsctl`` with typed functions and frozen result classes: fs-verity
digests, building an image from a directory or a composefs dump, reading an image back, a
repository of images over one object store, and mounting. Everything here wraps the modules the
CLI uses (``build``, ``fsverity``, ``repository``, ``mount``), so both give the same results.

Errors: :class:`CfsError` for what a user can fix (a bad option, a malformed dump or image, a
missing source; ``.path`` names the input), :class:`MountError` (a ``CfsError``) for mounts,
``OSError`` for the file system's refusals, ``ValueError`` for bad digest parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Union

from . import _native
from . import _API as _PUBLIC_NAMES
from .errors import CfsError
from .mount import MountError, MountResult

# The names are listed once, in the package (which loads them lazily from here).
__all__ = list(_PUBLIC_NAMES)

StrPath = Union[str, os.PathLike[str]]


def _pick(cls: type, values: Mapping[str, Any], **extra: Any) -> Any:
    """An instance of the dataclass ``cls`` from the keys of ``values`` it declares (plus ``extra``)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **extra)


# --- building ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """What a build made. Counts are of the image's entries; object figures count each object once."""

    digest: str
    """The image's fs-verity sha256 digest, hex: what a mount's ``digest`` takes."""
    version: int
    """composefs format version written: 0, or 1 when the tree holds whiteouts."""
    image_size: int
    inodes: int
    directories: int
    regular_files: int
    inline_files: int
    object_files: int
    symlinks: int
    devices: int
    whiteouts: int
    hardlinks: int
    shared_xattrs: int
    objects: int
    """Distinct backing objects the image refers to."""
    object_bytes: int
    """Their bytes."""
    bytes_stored: int = 0
    """Object bytes this build copied into the store (directory builds with a store)."""
    bytes_reused: int = 0
    """Object bytes the store held already."""
    image: bytes | None = None
    """The image's bytes, when asked for with ``return_image``."""


_STORE_FIELDS = ("bytes_stored", "bytes_reused")


def _build_result(r: _native.BuildResult) -> BuildResult:
    """The public result of a native build: its fields of the same names, the store's bytes."""
    values: dict[str, Any] = {f.name: getattr(r, f.name) for f in fields(BuildResult) if f.name not in _STORE_FIELDS}
    values.update({k: getattr(r.store, k) if r.store else 0 for k in _STORE_FIELDS})
    return BuildResult(**values)


def build_from_directory(
    source: StrPath,
    image: StrPath | None = None,
    *,
    store: StrPath | None = None,
    hardlinks: bool = False,
    use_epoch: bool = False,
    skip_devices: bool = False,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    min_version: int = 0,
    max_version: int = 1,
    threads: int = 0,
    return_image: bool = False,
) -> BuildResult:
    """Build a composefs image of the directory tree ``source``, like ``cfsctl build``.

    Every regular file is read once, in parallel: files of 1..64 bytes are inlined, larger ones
    become objects named by their fs-verity digest, copied into the object directory ``store``
    when one is given (atomically, deduplicated, flushed before returning). The image is written
    to ``image`` atomically; ``image=None`` only computes it (its digest, or its bytes with
    ``return_image``). Like mkcomposefs 1.0, every name gets its own inode (the same image
    bytes); ``hardlinks=True`` keeps the names of one source inode one inode; the other flags
    mean what mkcomposefs' options of the same names mean. ``threads=0`` uses every CPU; the
    bytes never depend on it.
    """
    from .build import ScanOptions, build_image

    options = ScanOptions(no_hardlinks=not hardlinks, skip_devices=skip_devices, skip_xattrs=skip_xattrs,
                          user_xattrs=user_xattrs, use_epoch=use_epoch, threads=threads)
    r = build_image(source, image, options, store=store, min_version=min_version, max_version=max_version,
                    return_image=return_image)
    return _build_result(r)


def build_from_dump(
    source: StrPath | bytes,
    image: StrPath | None = None,
    *,
    use_epoch: bool = False,
    skip_devices: bool = False,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    min_version: int = 0,
    max_version: int = 1,
    threads: int = 0,
    return_image: bool = False,
) -> BuildResult:
    """Build an image from a composefs-dump(5) description, like ``mkcomposefs --from-file``.

    ``source`` is the path of a dump file, or the dump's text as ``bytes``. The objects it names
    are not needed to build. The image is byte-identical with mkcomposefs 1.0.8's; ``image``,
    ``return_image`` and the flags are as for :func:`build_from_directory`.
    """
    if isinstance(source, bytes):
        data: bytes | str = source
        shown = "<dump>"
    else:
        data = shown = os.fspath(source)
    try:
        r = _native.build_from_dump(data, None if image is None else os.fspath(image), min_version=min_version,
                                    max_version=max_version, threads=threads, use_epoch=use_epoch,
                                    skip_devices=skip_devices, skip_xattrs=skip_xattrs, user_xattrs=user_xattrs,
                                    return_image=return_image)
    except _native.FormatError as e:
        raise CfsError(str(e), shown) from None
    except ValueError as e:
        raise CfsError(str(e)) from None
    return _build_result(r)


# --- reading images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """An image file's header facts."""

    path: str
    version: int
    """composefs format version (0 or 1)."""
    flags: int
    """composefs header flags (bit 0: an ACL xattr is present)."""
    digest: str
    """The file's fs-verity sha256 digest, hex."""


def _read(fn: Any, image: StrPath) -> Any:
    path = os.fspath(image)
    try:
        return fn(path)
    except _native.FormatError as e:
        raise CfsError(str(e), path) from None


def inspect_image(image: StrPath) -> ImageInfo:
    """Read and check the image ``image``; return its format version, flags and digest."""
    h = _read(_native.image_info, image)
    return ImageInfo(path=os.fspath(image), version=h.version, flags=h.flags, digest=h.digest)


def dump_image(image: StrPath) -> bytes:
    """The image's tree in composefs-dump(5) format (:func:`build_from_dump` rebuilds the same bytes)."""
    return _read(_native.image_to_dump, image)


def list_image(image: StrPath) -> bytes:
    """``composefs-info ls`` output: every path, ``-> TARGET`` for symlinks, ``@ OBJECT`` for files."""
    return _read(_native.image_ls, image)


def image_objects(image: StrPath) -> list[str]:
    """The backing objects (``XX/<62 hex>``) the image refers to, sorted, each once."""
    return [os.fsdecode(o) for o in _read(_native.image_objects, image)]


# --- mounting ------------------------------------------------------------------------------------


def mount_image(
    image: StrPath,
    mountpoint: StrPath,
    *,
    basedirs: StrPath | Sequence[StrPath],
    digest: str | None = None,
    verity_check: int | None = None,
    backend: str = "auto",
    upperdir: StrPath | None = None,
    workdir: StrPath | None = None,
    options: Sequence[str] = (),
    idmap: StrPath | None = None,
) -> MountResult:
    """Mount the image file ``image`` on ``mountpoint`` (needs root), like ``cfsctl mount``.

    ``basedirs``: the object directories searched in order for each file's contents. ``digest``
    (the image's fs-verity digest) is checked before mounting and implies ``verity_check=2``;
    ``verity_check`` 1 checks the files whose entry records a digest, 2 requires one everywhere.
    ``backend``: "kernel" (the composefs module), "overlay" (EROFS + overlayfs on a stock
    kernel) or "auto". ``upperdir`` with ``workdir`` makes the mount writable (overlay only);
    ``options`` are mount attributes such as "nosuid", "nodev", "noexec", "noatime". ``idmap``
    (a user namespace file such as ``/proc/PID/ns/user``) makes the mount idmapped with its ID
    mapping.
    """
    from .mount import MountRequest, ObjectDir
    from .mount import mount_image as _mount_image

    if isinstance(basedirs, (str, os.PathLike)):
        basedirs = [basedirs]
    req = MountRequest(image=os.fspath(image), mountpoint=os.fspath(mountpoint),
                       basedirs=[ObjectDir(os.fspath(b)) for b in basedirs], digest=digest,
                       verity_check=verity_check, backend=backend,
                       upperdir=None if upperdir is None else os.fspath(upperdir),
                       workdir=None if workdir is None else os.fspath(workdir), attrs=list(options),
                       idmap=None if idmap is None else os.fspath(idmap))
    return _mount_image(req)


def unmount(mountpoint: StrPath, *, lazy: bool = False) -> None:
    """Unmount the composefs mount on ``mountpoint`` with everything it holds (refuses other mounts)."""
    from .mount import unmount as _unmount

    _unmount(os.fspath(mountpoint), lazy=lazy)


# --- repositories --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """An image added to a repository."""

    name: str
    digest: str
    entries: int
    objects: int
    object_bytes: int
    missing_objects: int
    """Objects the image names that the repository's store lacks (dump imports)."""
    layers: int | None = None
    """Layers applied (container images)."""


@dataclass(frozen=True)
class RepositoryImage:
    """One named image of a repository. ``missing``: the name points at no image file (the
    counts are then 0); ``unique_bytes`` are in objects no other named image uses."""

    name: str
    digest: str
    missing: bool = False
    entries: int = 0
    image_bytes: int = 0
    objects: int = 0
    bytes: int = 0
    unique_bytes: int = 0
    shared_bytes: int = 0


@dataclass(frozen=True)
class GcResult:
    dry_run: bool
    images_removed: tuple[str, ...]
    objects_removed: int
    bytes_freed: int


@dataclass(frozen=True)
class FsckProblem:
    kind: str
    """object-unreadable, object-corrupt, image-unreadable, image-corrupt, objects-missing or ref-dangling."""
    path: str
    message: str


@dataclass(frozen=True)
class FsckResult:
    objects: int
    images: int
    problems: tuple[FsckProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class Repository:
    """A composefs repository: named images over one object store (what ``cfsctl init``,
    ``import``, ``images``, ``rm``, ``gc``, ``fsck`` and ``mount NAME`` work on).

    Each method takes the repository's lock as the CLI does (shared for imports, reads and
    mounts, exclusive for :meth:`gc`), so it is safe beside running ``cfsctl`` commands.
    ``path=None`` means the default: ``$CFS_REPO``, else /var/lib/composefs as root, else
    ~/.local/share/composefs.
    """

    def __init__(self, path: StrPath | None = None):
        """Open an existing repository (:class:`CfsError` if ``path`` holds none)."""
        from . import repository

        self._repo = repository.Repository.open(repository.default_path() if path is None else path)

    @classmethod
    def create(cls, path: StrPath | None = None) -> Repository:
        """Create a repository at ``path`` (an existing one is opened as it is)."""
        from . import repository

        repository.Repository.init(repository.default_path() if path is None else path)
        return cls(path)

    @property
    def path(self) -> str:
        return self._repo.path

    @property
    def objects(self) -> str:
        """The object directory (``objects/XX/<62 hex>``), a basedir for :func:`mount_image`."""
        return self._repo.objects

    def __repr__(self) -> str:
        return f"Repository({self.path!r})"

    def import_directory(self, source: StrPath, name: str, *, hardlinks: bool = False) -> ImportResult:
        """Scan ``source`` into the store and name the image ``name`` (replacing that name)."""
        with self._repo.locked():
            r = self._repo.import_directory(os.fspath(source), name, no_hardlinks=not hardlinks)
        return _pick(ImportResult, r)

    def import_dump(self, source: StrPath | bytes, name: str) -> ImportResult:
        """Build a dump (a path, or the text as bytes) into the repository as ``name``; its
        objects are expected in the store already (``missing_objects`` counts those that are not)."""
        with self._repo.locked():
            if isinstance(source, bytes):
                r = self._repo.import_dump(source, name, "-")
            else:
                path = os.path.abspath(source)
                if not os.path.isfile(path):
                    raise CfsError("No such file" if not os.path.exists(path) else "not a regular file", path)
                r = self._repo.import_dump(path, name, path)
        return _pick(ImportResult, r)

    def import_oci(self, archive: StrPath, name: str) -> ImportResult:
        """Import a container image (OCI layout directory or tar, docker/podman save archive)."""
        from .oci import import_archive

        with self._repo.locked():
            r = import_archive(self._repo, os.fspath(archive), name)
        return _pick(ImportResult, r)

    def images(self) -> list[RepositoryImage]:
        """Every named image with its entries and object bytes, unique and shared."""
        with self._repo.locked():
            return [_pick(RepositoryImage, i) for i in self._repo.list_images()]

    def resolve(self, name_or_digest: str) -> str:
        """The digest of the image named ``name_or_digest`` (a name, digest or unique prefix)."""
        with self._repo.locked():
            return self._repo.resolve(name_or_digest)

    def image_path(self, name_or_digest: str) -> str:
        """The image file of a name, digest or unique prefix (:func:`inspect_image` reads it)."""
        return self._repo.image_path(self.resolve(name_or_digest))

    def remove(self, name: str) -> str:
        """Remove the name ``name``; returns the digest it named. :meth:`gc` frees the space."""
        with self._repo.locked():
            return self._repo.remove_ref(name)

    def gc(self, *, dry_run: bool = False) -> GcResult:
        """Remove images no name refers to and objects no remaining image uses."""
        with self._repo.locked(exclusive=True):
            r = self._repo.gc(dry_run=dry_run)
        return GcResult(dry_run=r["dry_run"], images_removed=tuple(r["images_removed"]),
                        objects_removed=r["objects_removed"], bytes_freed=r["bytes_freed"])

    def fsck(self) -> FsckResult:
        """Re-hash every object and image against its name; check every image's objects and names."""
        with self._repo.locked():
            r = self._repo.fsck()
        return FsckResult(objects=r["objects"], images=r["images"],
                          problems=tuple(_pick(FsckProblem, p) for p in r["problems"]))

    def mount(self, name_or_digest: str, mountpoint: StrPath, *, verity_check: int | None = None,
              backend: str = "auto", options: Sequence[str] = ()) -> MountResult:
        """Mount a repository image (needs root), its digest verified first: by fs-verity when the
        image file has it, else computed in software (as ``cfsctl mount NAME`` does)."""
        from .repository import verified_image_for_mount

        with self._repo.locked():
            path, digest = verified_image_for_mount(self._repo, name_or_digest)
        return mount_image(path, mountpoint, basedirs=[self.objects], digest=digest, verity_check=verity_check,
                     backend=backend, options=options)
