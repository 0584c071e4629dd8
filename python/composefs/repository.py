# SPDX-License-Identifier: MIT OR Apache-2.0
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

The lookup rules (names, refs, trust, the lock) are the Rust core's, ``native/base/src/repo.rs``,
which the native ``cfsctl mount NAME`` front uses too; this module calls them.

Names (refs) are checked once, by :func:`check_name`: 1 to ``NAME_MAX`` characters from
``A-Za-z0-9._:@+=-``, not starting with ``.``, ``-`` or ``sha256:``, never containing ``.tmp``
(reserved for temporaries, which are swept) and never shaped like an image digest (6 to 64 hex
digits): a digest or digest prefix always means the image itself, never a ref.

Trust and modes: directories are created 0755 and files 0644 whatever the umask. Only the
repository's owner (the owner of its directory) and root may have made what is in it: a ref,
image, object or directory that is not a plain file (or directory) owned by one of them is
refused and never followed, by import, mount and fsck alike; fsck also reports stray entries.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import _native
from .build import ScanOptions, build_image
from .errors import CfsError
from .fsverity import digest_files

FORMAT = "composefs-repository"
VERSION = 1
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
# The longest image name (the rule is the Rust core's, see check_name).
NAME_MAX = _native.REPO_NAME_MAX
DIR_MODE = 0o755
FILE_MODE = 0o644
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


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an image name, or None (the rule: see the module comment; it lives
    in the Rust core, native/base/src/repo.rs, with every lookup rule)."""
    return _native.repo_name_problem(name)


def check_name(name: str) -> str:
    _native.repo_check_name(name)
    return name


def _make_dir(path: str) -> None:
    """mkdir with mode 0755 whatever the umask; an existing directory is left as it is."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def _open_plain(path: str, trusted: tuple[int, ...], what: str) -> int:
    """Open ``path`` read-only if it is a regular file owned by a trusted uid; never follows a
    symlink, never blocks on a FIFO. Raises CfsError naming the path otherwise."""
    return _native.repo_open_plain(path, trusted, what)


def _read_plain(path: str, trusted: tuple[int, ...], what: str) -> bytes:
    return _native.repo_read_plain(path, trusted, what)


def _log_lock(exclusive: bool, waited: float, held: float) -> None:
    """The lock's one instrumentation point: with ``CFS_LOCK_LOG=FILE`` in the environment, each
    release of the repository lock appends a JSON line (pid, mode, seconds waited for it, seconds
    held) to FILE, one ``O_APPEND`` write, so concurrent commands can share the file. Soak runs
    (tests/soak.py) read it to report lock waits; nothing else writes or reads it."""
    path = os.environ.get("CFS_LOCK_LOG")
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "mode": "exclusive" if exclusive else "shared",
                       "wait": round(waited, 6), "held": round(held, 6)}) + "\n"
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0644 (the Rust core's protocol and
    temporary names, which ``_clean_temporaries`` sweeps)."""
    _native.write_atomic(path, data, FILE_MODE)


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
        # Records of verified container layers, by diff_id (composefs.oci keeps them).
        self.layers_dir = os.path.join(self.path, "layers")
        self._lockfd: int | None = None
        self._owner: tuple[int, ...] | None = None

    @property
    def trusted(self) -> tuple[int, ...]:
        """The uids whose files the repository accepts: its owner's, and root's."""
        if self._owner is None:
            self._owner = tuple(_native.repo_trusted(self.path))
        return self._owner

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
        parent = os.path.dirname(repo.path)
        os.makedirs(parent, exist_ok=True)
        for d in (repo.path, repo.objects, repo.images_dir, repo.refs_dir, repo.tmp_dir):
            _make_dir(d)
        repo.check_layout()
        fd = os.open(os.path.join(repo.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        _write_atomic(meta, _native.REPO_META)
        return repo

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Repository":
        repo = cls(path)
        repo.check_meta()
        return repo

    def check_meta(self) -> None:
        meta = os.path.join(self.path, "meta.json")
        try:
            m = json.loads(_native.repo_meta(self.path))
        except ValueError:
            raise CfsError("repository metadata is not valid JSON", meta) from None
        if not isinstance(m, dict):
            raise CfsError("repository metadata is not a JSON object", meta)
        if m.get("format") != FORMAT:
            raise CfsError("not a composefs repository", meta)
        if m.get("version") != VERSION:
            raise CfsError(f"repository version {m.get('version')!r} is not supported (this cfsctl: {VERSION})", meta)
        self.check_layout()

    def check_layout(self) -> None:
        """The repository's directories must be real directories of a trusted owner."""
        _native.repo_check_layout(self.path)

    # --- locking and temporaries ---------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Iterator["Repository"]:
        # The lock and the sweep of dead writers' temporaries that follows taking it are the Rust
        # core's (native/base/src/repo.rs), as the native cfsctl front takes them too.
        t0 = time.monotonic()
        fd = _native.repo_lock(self.path, exclusive)
        t1 = time.monotonic()
        try:
            _native.repo_clean_temporaries(self.path)
            yield self
        finally:
            os.close(fd)
            _log_lock(exclusive, t1 - t0, time.monotonic() - t1)

    @contextlib.contextmanager
    def workdir(self) -> Iterator[str]:
        d = os.path.join(self.tmp_dir, f"{os.getpid()}-{next(_counter)}-{time.monotonic_ns()}")
        os.mkdir(d, 0o700)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    # --- paths and refs ------------------------------------------------------------------------

    def image_path(self, digest: str) -> str:
        return os.path.join(self.images_dir, digest)

    def open_image(self, digest: str) -> int:
        """A read-only descriptor of the image file, refused unless it is a regular file of a
        trusted owner (a symlink is never followed)."""
        return _open_plain(self.image_path(digest), self.trusted, "image")

    def refs(self) -> dict[str, str]:
        """Every ref: name -> digest (refs that are refused are left out; see :meth:`scan_refs`)."""
        return self.scan_refs()[0]

    def scan_refs(self) -> tuple[dict[str, str], list[dict]]:
        """(name -> digest for every ref, problems): every entry of refs/ but the temporaries of
        running writes is a ref, whatever its name (names from before the name rule included);
        one that is not a plain file of a trusted owner is a problem and is not read."""
        out, problems = {}, []
        for name in sorted(os.listdir(self.refs_dir)):
            if _native.is_temp_name(name):
                continue
            p = os.path.join(self.refs_dir, name)
            try:
                data = _read_plain(p, self.trusted, "ref")
            except FileNotFoundError:
                continue
            except CfsError as e:
                problems.append({"kind": "ref-refused", "path": p, "message": e.message})
                continue
            out[name] = data.decode("utf-8", "replace").strip()
        return out, problems

    def set_ref(self, name: str, digest: str) -> None:
        _write_atomic(os.path.join(self.refs_dir, check_name(name)), digest.encode() + b"\n")

    def image_digests(self) -> list[str]:
        return sorted(e for e in os.listdir(self.images_dir) if DIGEST_RE.match(e))

    def resolve(self, name_or_digest: str) -> str:
        """The digest of an image given by ref name, full digest or a unique digest prefix. A
        digest (or prefix) is looked up among the images only, never through a ref."""
        return _native.repo_resolve(self.path, name_or_digest)

    # --- adding images -------------------------------------------------------------------------

    def _commit_image(self, work: str, tmp_image: str, digest: str, name: str, info: dict,
                      extra: dict[str, bytes] | None = None) -> None:
        final = self.image_path(digest)
        if extra:
            oci = final + ".oci"
            staged = os.path.join(work, "oci")
            _make_dir(staged)
            for fname, data in extra.items():
                _write_atomic(os.path.join(staged, fname), data)
            if not os.path.isdir(oci):
                try:
                    os.rename(staged, oci)
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
        _write_atomic(final + ".json", json.dumps(info, indent=1).encode() + b"\n")
        with open(tmp_image, "rb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
            _native.enable_verity(f.fileno())
        os.rename(tmp_image, final)  # same digest, same bytes: replacing is harmless
        self.set_ref(name, digest)

    def import_directory(self, source: str, name: str, no_hardlinks: bool = True) -> dict:
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
            self._commit_image(work, tmp_image, r.digest, name, info)
        return {"name": name, "digest": r.digest, "entries": entries, "objects": r.objects,
                "object_bytes": r.object_bytes, "missing_objects": 0,
                "bytes_stored": r.store.bytes_stored if r.store else 0,
                "bytes_deduplicated": r.store.bytes_reused if r.store else 0}

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
            self._commit_image(work, tmp_image, r.digest, name, info, extra)
        return {"name": name, "digest": r.digest, "entries": entries, "objects": len(objs),
                "object_bytes": r.object_bytes, "missing_objects": missing, "bytes_stored": 0,
                "bytes_deduplicated": 0}

    # --- reading -------------------------------------------------------------------------------

    def image_objects(self, digest: str) -> list[str]:
        """The objects an image uses. CfsError when the image cannot be read (refused, missing,
        not an image), naming the image file."""
        path = self.image_path(digest)
        try:
            fd = self.open_image(digest)
        except FileNotFoundError:
            raise CfsError("image file missing", path) from None
        try:
            return [o.decode() for o in _native.image_objects(fd)]
        except _native.FormatError as e:
            raise CfsError(str(e), path) from None
        except OSError as e:
            raise CfsError(e.strerror or str(e), path) from None
        finally:
            os.close(fd)

    def image_entries(self, digest: str) -> int:
        try:
            info = json.loads(_read_plain(self.image_path(digest) + ".json", self.trusted, "image metadata"))
            return int(info["entries"])
        except (OSError, ValueError, KeyError, TypeError, CfsError):
            fd = self.open_image(digest)
            try:
                return _native.image_count_paths(fd)
            finally:
                os.close(fd)

    def list_images(self) -> list[dict]:
        """One dict per ref: name, digest, entries, bytes (objects), unique_bytes, shared_bytes."""
        refs = self.refs()
        live = sorted(set(refs.values()))
        objs: dict[str, set[str]] = {}
        unreadable: dict[str, str] = {}
        for d in live:
            if not DIGEST_RE.match(d) or not os.path.lexists(self.image_path(d)):
                continue
            try:
                objs[d] = set(self.image_objects(d))
            except CfsError as e:
                unreadable[d] = e.message
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
            if d in unreadable:
                out.append({"name": name, "digest": d, "unreadable": unreadable[d]})
                continue
            if d not in objs:
                out.append({"name": name, "digest": d, "missing": True})
                continue
            total = sum(sizes[o] for o in objs[d])
            unique = sum(sizes[o] for o in objs[d] if users[o] == 1)
            try:
                entries = self.image_entries(d)
            except (CfsError, OSError, _native.FormatError) as e:
                out.append({"name": name, "digest": d, "unreadable": str(e)})
                continue
            out.append({"name": name, "digest": d, "entries": entries,
                        "image_bytes": os.stat(self.image_path(d)).st_size, "objects": len(objs[d]),
                        "object_bytes": total, "unique_bytes": unique, "shared_bytes": total - unique})
        return out

    # --- removing ------------------------------------------------------------------------------

    def remove_ref(self, name: str) -> str | None:
        """Unlink ref ``name``; returns the digest it named (None for a ref that was refused,
        e.g. a symlink, which is removed without being followed)."""
        refs = self.refs()
        p = os.path.join(self.refs_dir, name)
        plain = name not in ("", ".", "..") and "/" not in name and "\0" not in name
        if name not in refs and not (plain and os.path.lexists(p) and not stat.S_ISDIR(os.lstat(p).st_mode)):
            raise CfsError(f"no image named {name!r} in repository {self.path}")
        os.unlink(p)
        return refs.get(name)

    def gc(self, dry_run: bool = False) -> dict:
        """Remove images no ref names and objects no remaining image uses (exclusive lock held).

        What cannot be read is skipped and listed under ``skipped``, and gc keeps what it then
        cannot know to be unused: a ref that cannot be read (refused, too long) might name any
        image, so every image is kept; a named image that cannot be read (corrupt, refused) is
        kept, and then no object is removed, since which objects it needs is unknown.
        """
        refs, skipped = self.scan_refs()
        live = set(refs.values())
        images_kept = bool(skipped)
        if images_kept:
            live.update(self.image_digests())
        dead_images = [d for d in self.image_digests() if d not in live]
        needed: set[str] = set()
        unknown_needs = False
        for d in sorted(live):
            if not DIGEST_RE.match(d) or not os.path.lexists(self.image_path(d)):
                continue
            try:
                needed.update(self.image_objects(d))
            except CfsError as e:
                skipped.append({"kind": "image-unreadable", "path": e.path, "message": e.message})
                unknown_needs = True
        freed = 0
        # Images first, then objects: a gc killed half-way leaves only unused objects behind,
        # never an image whose objects are gone.
        for d in list(dead_images):
            p = self.image_path(d)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                skipped.append({"kind": "stray", "path": p, "message": "a directory, not an image: left alone"})
                dead_images.remove(d)
                continue
            freed += st.st_size
            if not dry_run:
                os.unlink(p)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p + ".json")
                _remove_entry(p + ".oci")
        dead_objects = []
        for sub, subdir, entries in ([] if unknown_needs else self._object_dirs()):
            for e in entries:
                rel = f"{sub}/{e.name}"
                if e.name.startswith(".") or rel in needed:
                    continue
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    skipped.append({"kind": "stray", "path": e.path, "message": "a directory, not an object: left alone"})
                    continue
                freed += st.st_size
                dead_objects.append(rel)
                if not dry_run:
                    os.unlink(os.path.join(subdir, e.name))
        # side files whose image is gone
        if not dry_run:
            for e in os.listdir(self.images_dir):
                base = e.split(".", 1)[0]
                if DIGEST_RE.match(base) and e != base and base not in live and not _native.is_temp_name(e):
                    _remove_entry(os.path.join(self.images_dir, e))
        layers_removed = self._gc_layer_records(live, dry_run, skipped)
        return {"dry_run": dry_run, "images_removed": dead_images, "objects_removed": len(dead_objects),
                "bytes_freed": freed, "images_kept": images_kept, "objects_kept": unknown_needs,
                "layers_removed": layers_removed, "skipped": skipped}

    def _gc_layer_records(self, live: set[str], dry_run: bool, skipped: list[dict]) -> int:
        """Remove the layer records no remaining container image lists in its config (they only
        save a later pull the download). If a config cannot be read, every record is kept."""
        wanted: set[str] = set()
        for d in live:
            cfg = os.path.join(self.image_path(d) + ".oci", "config.json")
            try:
                fd = os.open(cfg, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as e:
                skipped.append({"kind": "config-unreadable", "path": cfg, "message": e.strerror or str(e)})
                return 0
            try:
                with os.fdopen(fd, "rb") as f:
                    doc = json.loads(f.read(8 << 20))
                ids = doc["rootfs"]["diff_ids"]
                wanted.update(i.replace(":", "-", 1) for i in ids if isinstance(i, str))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                skipped.append({"kind": "config-unreadable", "path": cfg, "message": "not an image config"})
                return 0
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for e in os.listdir(self.layers_dir):
                if e in wanted or not (re.fullmatch(r"sha(256|512)-[0-9a-f]+", e) or _native.is_temp_name(e)):
                    continue
                removed += 1
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.layers_dir, e))
        return removed

    def _object_dirs(self, problems: list[dict] | None = None) -> Iterator[tuple[str, str, list[os.DirEntry]]]:
        """(XX, path, entries) of each object directory, in order. Entries of objects/ that are
        not such a directory (a symlink, a stray file, a foreign owner) are never entered; with
        ``problems`` given they are reported there."""
        def report(kind, path, message):
            if problems is not None:
                problems.append({"kind": kind, "path": path, "message": message})

        for top in sorted(os.scandir(self.objects), key=lambda e: e.name):
            path = top.path
            if _native.is_temp_name(top.name):
                continue  # the object store's temporaries (removed once their writer is gone)
            st = top.stat(follow_symlinks=False)
            if not re.fullmatch(r"[0-9a-f]{2}", top.name):
                report("stray", path, "not an object directory (objects/ holds only 00..ff)")
            elif why := self._refusal(st, stat.S_ISDIR, "directory"):
                report("object-dir-refused", path, why)
            else:
                if st.st_mode & 0o022:
                    report("mode", path, _OPEN_MODE)
                yield top.name, path, sorted(os.scandir(path), key=lambda e: e.name)

    def _refusal(self, st: os.stat_result, is_type: Callable[[int], bool], noun: str) -> str | None:
        """Why an entry (``lstat`` result) is not one the repository trusts: not of the type
        wanted, or not owned by the repository's owner or root; None when it is."""
        if not is_type(st.st_mode):
            return f"not a {noun} (a symlink is never followed)"
        if st.st_uid not in self.trusted:
            return f"owned by uid {st.st_uid}, not by the repository's owner"
        return None

    # --- checking ------------------------------------------------------------------------------

    def fsck(self, threads: int | None = None) -> dict:
        problems: list[dict] = []
        paths, names = [], []
        for sub, subdir, entries in self._object_dirs(problems):
            for e in entries:
                p = e.path
                st = e.stat(follow_symlinks=False)
                if not re.fullmatch(r"[0-9a-f]{62}", e.name):
                    if not _native.is_temp_name(e.name):
                        problems.append({"kind": "stray", "path": p, "message": "not named by an object digest"})
                elif why := self._refusal(st, stat.S_ISREG, "regular file"):
                    problems.append({"kind": "object-refused", "path": p, "message": why})
                else:
                    paths.append(p)
                    names.append(sub + e.name)
        images = []
        for d in self.image_digests():
            p = self.image_path(d)
            st = os.lstat(p)
            if why := self._refusal(st, stat.S_ISREG, "regular file"):
                problems.append({"kind": "image-refused", "path": p, "message": why})
            else:
                images.append(d)
        problems.extend(self._strays())
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
            except CfsError as e:
                problems.append({"kind": "image-unreadable", "path": p, "message": e.message})
                continue
            missing = [o for o in objs if o not in have]
            if missing:
                problems.append({"kind": "objects-missing", "path": p,
                                 "message": f"{len(missing)} of {len(objs)} objects missing, e.g. {missing[0]}"})
        refs, ref_problems = self.scan_refs()
        problems.extend(ref_problems)
        for name, d in refs.items():
            p = os.path.join(self.refs_dir, name)
            if name_problem(name):
                problems.append({"kind": "ref-name", "path": p,
                                 "message": f"name not allowed ({name_problem(name)}); rename it with "
                                            "'cfsctl import' or remove it with 'cfsctl rm'"})
            if not DIGEST_RE.match(d) or d not in images:
                problems.append({"kind": "ref-dangling", "path": p,
                                 "message": f"names image {d!r}, which is not in the repository"})
        return {"objects": len(paths), "images": len(images), "problems": problems}

    def _strays(self) -> list[dict]:
        """Entries of the repository that nothing of ours creates (objects/ is checked apart)."""
        out = []
        for d in (self.path, self.objects, self.images_dir, self.refs_dir, self.tmp_dir):
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(d).st_mode & 0o022:
                    out.append({"kind": "mode", "path": d, "message": _OPEN_MODE})
        known = {"meta.json", "lock", "objects", "images", "refs", "tmp", "layers"}
        for e in sorted(os.listdir(self.path)):
            if e not in known and not _native.is_temp_name(e):
                out.append({"kind": "stray", "path": os.path.join(self.path, e), "message": "unexpected entry"})
        with contextlib.suppress(FileNotFoundError):
            for e in sorted(os.listdir(self.layers_dir)):
                if not re.fullmatch(r"sha(256|512)-[0-9a-f]{64}([0-9a-f]{64})?", e) and not _native.is_temp_name(e):
                    out.append({"kind": "stray", "path": os.path.join(self.layers_dir, e),
                                "message": "not a layer record"})
        for e in sorted(os.listdir(self.images_dir)):
            if _native.is_temp_name(e):
                continue
            m = re.fullmatch(r"([0-9a-f]{64})(\.json|\.oci)?", e)
            if not m:
                out.append({"kind": "stray", "path": os.path.join(self.images_dir, e),
                            "message": "not an image, its metadata or its OCI files"})
        return out


# What fsck says of a directory made under a lax umask by an older cfsctl.
_OPEN_MODE = "writable by group or others (another user could plant entries): chmod go-w"


def _count_entries(image: str) -> int:
    """Entries of an image (every path including the root)."""
    return _native.image_count_paths(image)


def _remove_entry(path: str) -> None:
    """Remove a file, symlink or directory tree; a symlink is removed, never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def verified_image_for_mount(repo: Repository, name_or_digest: str) -> tuple[str, str | None]:
    """The image path of NAME|DIGEST and the digest to give the mount (``None`` when checked here).

    With fs-verity on the image file, the mount measures it against the digest (the kernel's
    word). Without fs-verity (a filesystem that lacks it), the image file's digest is computed in
    software now and compared with its name; a mismatch refuses the mount. The file is checked
    before it is opened for mounting, so this guards against corruption, not against a root
    process rewriting the repository between the check and the mount.
    """
    found = _native.repo_image_for_mount(repo.path, name_or_digest)
    return os.fsdecode(found.path), found.digest
