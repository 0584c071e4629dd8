"""A composefs repository: many images sharing one object store.

Layout (all under one directory, one filesystem)::

    meta.json                 {"format": "composefs-repository", "version": 1}
    lock                      flock(2) target (see "Locking")
    objects/XX/<62 hex>       file contents, named by their fs-verity sha256 digest
    images/<64 hex>           image files, named by their own fs-verity digest
    images/<64 hex>.json      what we know about an image (entries, source, time)
    images/<64 hex>.oci/      manifest.json and config.json of an imported container image
    refs/<name>               a name -> the image digest (one line)
    tmp/<pid>-<n>/            work space of a running command

Locking: commands that add (``import``) or only read (``images``, ``fsck``, ``mount``) take a
*shared* lock, so any number of imports run at once; ``gc`` takes an *exclusive* lock, so it
never runs while an import has objects in the store that no ref reaches yet. ``rm`` only
unlinks a ref (atomic) under a shared lock. Every file that names something (an image, a ref,
an object) appears by an atomic rename, so a ``kill -9`` leaves either the old or the new state
plus temporaries: ``tmp/<pid>-*`` directories of dead processes (and the object store's own
temporaries) are removed by the next command that opens the repository.

Mounting by name or digest verifies the image's digest: with fs-verity on the image file the
kernel measures it; without fs-verity the digest is computed in software from the file and
compared before mounting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import re
import shutil
import time
import sys
from dataclasses import dataclass, field
from typing import Iterator

from . import _native
from .build import ScanOptions, build_image
from .errors import CfsError
from .fsverity import digest_files

FORMAT = "composefs-repository"
VERSION = 1
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:@+=-]{0,254}$")
_counter = itertools.count()


def default_path() -> str:
    """``$CFS_REPO``, else /var/lib/composefs for root, else ~/.local/share/composefs."""
    env = os.environ.get("CFS_REPO")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/composefs"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "composefs")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise CfsError(f"invalid image name {name!r} (letters, digits and ._:@+=- ; not starting with '.')")
    return name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{next(_counter)}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


@dataclass
class ImageInfo:
    name: str | None
    digest: str
    entries: int
    image_bytes: int
    objects: list[str] = field(default_factory=list)


class Repository:
    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.objects = os.path.join(self.path, "objects")
        self.images_dir = os.path.join(self.path, "images")
        self.refs_dir = os.path.join(self.path, "refs")
        self.tmp_dir = os.path.join(self.path, "tmp")
        self._lockfd: int | None = None

    # --- creation and opening ------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike) -> "Repository":
        repo = cls(path)
        meta = os.path.join(repo.path, "meta.json")
        if os.path.exists(meta):
            repo.check_meta()
            return repo
        if os.path.exists(repo.path) and not os.path.isdir(repo.path):
            raise CfsError("exists and is not a directory", repo.path)
        for d in (repo.path, repo.objects, repo.images_dir, repo.refs_dir, repo.tmp_dir):
            os.makedirs(d, exist_ok=True)
        open(os.path.join(repo.path, "lock"), "a").close()
        _write_atomic(meta, json.dumps({"format": FORMAT, "version": VERSION}).encode() + b"\n")
        return repo

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Repository":
        repo = cls(path)
        repo.check_meta()
        return repo

    def check_meta(self) -> None:
        meta = os.path.join(self.path, "meta.json")
        try:
            with open(meta, "rb") as f:
                m = json.load(f)
        except FileNotFoundError:
            raise CfsError("not a composefs repository (no meta.json; run 'cfsctl init')", self.path) from None
        except ValueError:
            raise CfsError("repository metadata is not valid JSON", meta) from None
        if m.get("format") != FORMAT:
            raise CfsError("not a composefs repository", meta)
        if m.get("version") != VERSION:
            raise CfsError(f"repository version {m.get('version')} is not supported (this cfsctl: {VERSION})", meta)

    # --- locking and temporaries ---------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Iterator["Repository"]:
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            self._clean_temporaries()
            yield self
        finally:
            os.close(fd)

    def _clean_temporaries(self) -> int:
        """Remove work directories and half-written files of processes that no longer exist."""
        removed = 0
        os.makedirs(self.tmp_dir, exist_ok=True)
        for entry in os.listdir(self.tmp_dir):
            pid = entry.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(self.tmp_dir, entry), ignore_errors=True)
                removed += 1
        for d in (self.images_dir, self.refs_dir):
            for entry in os.listdir(d):
                m = re.search(r"\.tmp-(\d+)-\d+$", entry) or re.search(r"\.tmp(\d+)-\d+-\d+$", entry)
                if m and not _pid_alive(int(m.group(1))):
                    p = os.path.join(d, entry)
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
                    removed += 1
        return removed

    @contextlib.contextmanager
    def workdir(self) -> Iterator[str]:
        d = os.path.join(self.tmp_dir, f"{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}")
        os.makedirs(d)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # --- paths and refs ------------------------------------------------------------------------

    def image_path(self, digest: str) -> str:
        return os.path.join(self.images_dir, digest)

    def refs(self) -> dict[str, str]:
        out = {}
        for name in sorted(os.listdir(self.refs_dir)):
            if not NAME_RE.match(name) or ".tmp-" in name:
                continue
            try:
                with open(os.path.join(self.refs_dir, name)) as f:
                    out[name] = f.read().strip()
            except FileNotFoundError:
                continue
        return out

    def set_ref(self, name: str, digest: str) -> None:
        _write_atomic(os.path.join(self.refs_dir, check_name(name)), digest.encode() + b"\n")

    def image_digests(self) -> list[str]:
        return sorted(e for e in os.listdir(self.images_dir) if DIGEST_RE.match(e))

    def resolve(self, name_or_digest: str) -> str:
        """The digest of an image given by ref name, full digest or a unique digest prefix."""
        refs = self.refs()
        if name_or_digest in refs:
            return refs[name_or_digest]
        d = name_or_digest.lower().removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{6,64}", d):
            hits = [x for x in self.image_digests() if x.startswith(d)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise CfsError(f"digest prefix {name_or_digest!r} is ambiguous")
        raise CfsError(f"no image named {name_or_digest!r} in repository {self.path}")

    # --- adding images -------------------------------------------------------------------------

    def _commit_image(self, work: str, tmp_image: str, digest: str, name: str, info: dict,
                      extra: dict[str, bytes] | None = None) -> None:
        final = self.image_path(digest)
        if extra:
            oci = final + ".oci"
            staged = os.path.join(work, "oci")
            os.makedirs(staged, exist_ok=True)
            for fname, data in extra.items():
                with open(os.path.join(staged, fname), "wb") as f:
                    f.write(data)
            if not os.path.isdir(oci):
                try:
                    os.rename(staged, oci)
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
        _write_atomic(final + ".json", json.dumps(info, indent=1).encode() + b"\n")
        with open(tmp_image, "rb") as f:
            os.fsync(f.fileno())
            _enable_verity(f.fileno())
        os.rename(tmp_image, final)  # same digest, same bytes: replacing is harmless
        self.set_ref(name, digest)

    def import_directory(self, source: str, name: str, no_hardlinks: bool = False) -> dict:
        check_name(name)
        if not os.path.isdir(source):
            raise CfsError("not a directory" if os.path.exists(source) else "No such file or directory", source)
        with self.workdir() as work:
            tmp_image = os.path.join(work, "image")
            r = build_image(os.path.abspath(source), tmp_image, ScanOptions(no_hardlinks=no_hardlinks), store=self.objects,
                            progress=sys.stderr.isatty())
            entries = _count_entries(tmp_image)
            info = {"source": os.path.abspath(source), "kind": "directory", "entries": entries,
                    "imported": int(time.time())}
            self._commit_image(work, tmp_image, r["digest"], name, info)
        return {"name": name, "digest": r["digest"], "entries": entries, "objects": r["objects"],
                "object_bytes": r["object_bytes"], "missing_objects": 0}

    def import_dump(self, source: str | bytes, name: str, source_label: str = "-",
                    kind: str = "dump", extra: dict[str, bytes] | None = None) -> dict:
        check_name(name)
        with self.workdir() as work:
            tmp_image = os.path.join(work, "image")
            try:
                r = _native.build_from_dump(source, tmp_image)
            except _native.FormatError as e:
                raise CfsError(str(e), source_label) from None
            objs = [o.decode() for o in _native.image_objects(tmp_image)]
            missing = sum(1 for o in objs if not os.path.exists(os.path.join(self.objects, o)))
            entries = _count_entries(tmp_image)
            info = {"source": source_label, "kind": kind, "entries": entries, "imported": int(time.time())}
            self._commit_image(work, tmp_image, r["digest"], name, info, extra)
        return {"name": name, "digest": r["digest"], "entries": entries, "objects": len(objs),
                "object_bytes": r["object_bytes"], "missing_objects": missing}

    # --- reading -------------------------------------------------------------------------------

    def image_objects(self, digest: str) -> list[str]:
        return [o.decode() for o in _native.image_objects(self.image_path(digest))]

    def image_entries(self, digest: str) -> int:
        try:
            with open(self.image_path(digest) + ".json") as f:
                return int(json.load(f)["entries"])
        except (OSError, ValueError, KeyError):
            return _count_entries(self.image_path(digest))

    def list_images(self) -> list[dict]:
        """One dict per ref: name, digest, entries, bytes (objects), unique_bytes, shared_bytes."""
        refs = self.refs()
        live = sorted(set(refs.values()))
        objs = {d: set(self.image_objects(d)) for d in live if os.path.exists(self.image_path(d))}
        users: dict[str, int] = {}
        for s in objs.values():
            for o in s:
                users[o] = users.get(o, 0) + 1
        sizes: dict[str, int] = {}
        for o in users:
            try:
                sizes[o] = os.stat(os.path.join(self.objects, o)).st_size
            except FileNotFoundError:
                sizes[o] = 0
        out = []
        for name, d in refs.items():
            if d not in objs:
                out.append({"name": name, "digest": d, "missing": True})
                continue
            total = sum(sizes[o] for o in objs[d])
            unique = sum(sizes[o] for o in objs[d] if users[o] == 1)
            out.append({"name": name, "digest": d, "entries": self.image_entries(d),
                        "image_bytes": os.stat(self.image_path(d)).st_size, "objects": len(objs[d]),
                        "bytes": total, "unique_bytes": unique, "shared_bytes": total - unique})
        return out

    # --- removing ------------------------------------------------------------------------------

    def remove_ref(self, name: str) -> str:
        refs = self.refs()
        if name not in refs:
            raise CfsError(f"no image named {name!r} in repository {self.path}")
        os.unlink(os.path.join(self.refs_dir, name))
        return refs[name]

    def gc(self, dry_run: bool = False) -> dict:
        """Remove images no ref names and objects no remaining image uses (exclusive lock held)."""
        live = set(self.refs().values())
        dead_images = [d for d in self.image_digests() if d not in live]
        needed: set[str] = set()
        for d in live:
            if os.path.exists(self.image_path(d)):
                needed.update(self.image_objects(d))
        freed = 0
        # Images first, then objects: a gc killed half-way leaves only unused objects behind,
        # never an image whose objects are gone.
        for d in dead_images:
            p = self.image_path(d)
            freed += os.lstat(p).st_size
            if not dry_run:
                os.unlink(p)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p + ".json")
                shutil.rmtree(p + ".oci", ignore_errors=True)
        dead_objects = []
        for sub in sorted(os.listdir(self.objects)):
            subdir = os.path.join(self.objects, sub)
            if len(sub) != 2 or not os.path.isdir(subdir):
                continue
            for e in os.listdir(subdir):
                rel = f"{sub}/{e}"
                if e.startswith("."):
                    continue
                if rel not in needed:
                    p = os.path.join(subdir, e)
                    freed += os.lstat(p).st_size
                    dead_objects.append(rel)
                    if not dry_run:
                        os.unlink(p)
        # side files whose image is gone
        if not dry_run:
            for e in os.listdir(self.images_dir):
                base = e.split(".", 1)[0]
                if DIGEST_RE.match(base) and e != base and base not in live:
                    p = os.path.join(self.images_dir, e)
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
        return {"dry_run": dry_run, "images_removed": dead_images, "objects_removed": len(dead_objects),
                "bytes_freed": freed}

    # --- checking ------------------------------------------------------------------------------

    def fsck(self, threads: int | None = None) -> dict:
        problems: list[dict] = []
        paths, names = [], []
        for sub in sorted(os.listdir(self.objects)):
            subdir = os.path.join(self.objects, sub)
            if not os.path.isdir(subdir):
                continue
            for e in sorted(os.listdir(subdir)):
                if e.startswith("."):
                    continue
                paths.append(os.path.join(subdir, e))
                names.append(sub + e)
        images = self.image_digests()
        results = digest_files(paths + [self.image_path(d) for d in images], threads=threads)
        for p, n, r in zip(paths, names, results):
            if isinstance(r, OSError):
                problems.append({"kind": "object-unreadable", "path": p, "message": r.strerror or str(r)})
            elif r.hex() != n:
                problems.append({"kind": "object-corrupt", "path": p,
                                 "message": f"content digest is {r.hex()}"})
        have = {n[:2] + "/" + n[2:] for n in names}
        for d, r in zip(images, results[len(paths):]):
            p = self.image_path(d)
            if isinstance(r, OSError):
                problems.append({"kind": "image-unreadable", "path": p, "message": r.strerror or str(r)})
                continue
            if r.hex() != d:
                problems.append({"kind": "image-corrupt", "path": p, "message": f"image digest is {r.hex()}"})
                continue
            try:
                objs = self.image_objects(d)
            except (_native.FormatError, OSError) as e:
                problems.append({"kind": "image-unreadable", "path": p, "message": str(e)})
                continue
            missing = [o for o in objs if o not in have]
            if missing:
                problems.append({"kind": "objects-missing", "path": p,
                                 "message": f"{len(missing)} of {len(objs)} objects missing, e.g. {missing[0]}"})
        for name, d in self.refs().items():
            if not DIGEST_RE.match(d) or d not in images:
                problems.append({"kind": "ref-dangling", "path": os.path.join(self.refs_dir, name),
                                 "message": f"names image {d!r}, which is not in the repository"})
        return {"objects": len(paths), "images": len(images), "problems": problems}


FS_IOC_ENABLE_VERITY = 0x40806685


def _enable_verity(fd: int) -> bool:
    """Enable fs-verity (sha256, 4 KiB blocks, no salt) on a read-only fd where the filesystem
    supports it; the image's fs-verity digest is then its name, and mounts check it in the kernel."""
    import struct

    arg = bytearray(struct.pack("<IIIIQIIQ", 1, 1, 4096, 0, 0, 0, 0, 0) + bytes(88))
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
        return True
    except OSError as e:
        if e.errno == errno.EEXIST:
            return True
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EACCES,
                       errno.ETXTBSY, errno.EBUSY, errno.EROFS):
            return False
        raise


def _count_entries(image: str) -> int:
    """Entries of an image (every path including the root)."""
    return len(_native.image_to_dump(image).splitlines())


def verified_image_for_mount(repo: Repository, name_or_digest: str) -> tuple[str, str | None]:
    """The image path of NAME|DIGEST and the digest to give the mount (``None`` when checked here).

    With fs-verity on the image file, the mount measures it against the digest (the kernel's
    word). Without fs-verity (a filesystem that lacks it), the image file's digest is computed in
    software now and compared with its name; a mismatch refuses the mount. The file is checked
    before it is opened for mounting, so this guards against corruption, not against a root
    process rewriting the repository between the check and the mount.
    """
    from . import mountapi
    from .fsverity import digest_file

    digest = repo.resolve(name_or_digest)
    path = repo.image_path(digest)
    if not os.path.exists(path):
        raise CfsError(f"image {digest} is named but its file is missing (run 'cfsctl fsck')", path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            mountapi.measure_verity(fd)
            return path, digest
        except OSError:
            pass
    finally:
        os.close(fd)
    got = digest_file(path).hex()
    if got != digest:
        raise CfsError(f"image digest mismatch: named {digest}, content is {got} (run 'cfsctl fsck')", path)
    return path, None
