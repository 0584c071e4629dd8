"""Mounting composefs images: through the ``composefs`` kernel module, or on a stock kernel.

Two ways to mount the same image (see the design notes):

* **kernel** — the out-of-tree ``composefs`` filesystem: ``mount -t composefs IMAGE MNT
  -o basedir=A:B,verity_check=N,digest=HEX``. Used when ``/proc/filesystems`` lists it.
* **overlay** (stock kernel) — the image is mounted as EROFS (straight from the file on kernels
  with file-backed EROFS, else from a read-only, auto-clearing loop device) as a *detached* mount,
  and overlayfs is stacked on it with ``metacopy=on,redirect_dir=on``: the EROFS mount is the one
  lower layer and every object directory (basedir) is a data-only layer. Only the overlay mount
  remains visible; the EROFS mount and the loop device (if any) live exactly as long as it does.

Layers are handed to overlayfs as file descriptors where the kernel takes them (``FSCONFIG_SET_FD``,
6.13+), else as paths (``lowerdir+=`` / ``datadir+=``, 6.7+), else through mount(2) with
``lowerdir=IMG::OBJ1::OBJ2`` (6.5+); kernels without the new mount API get a temporary mount
point for the EROFS layer that is detached and removed as soon as the overlay holds it.

Verification: ``verity_check`` 1 maps to overlay ``verity=on`` (files whose image entry records a
digest must match it), 2 to ``verity=require`` (every file must record one); a ``digest`` (the
image's own fs-verity digest) is measured with ``FS_IOC_MEASURE_VERITY`` before anything is
mounted, and implies 2. Where fs-verity is missing the mount is refused with a clear error.

Everything here raises ``CfsError`` for the user's mistakes and the system's refusals.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field

from . import mountapi as api
from .errors import CfsError

BACKENDS = ("auto", "kernel", "overlay")
VERITY_CHECK_VALUES = (0, 1, 2)
OVERLAY_VERITY = {0: None, 1: "on", 2: "require"}
# The source name our overlay mounts carry in /proc/self/mountinfo; `cfsctl umount` looks for it.
OVERLAY_SOURCE = "composefs"
KERNEL_FSTYPE = "composefs"
# Mount attributes a user may ask for (mount(8) names).
ATTR_NAMES = tuple(api.MOUNT_ATTRS)
EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")
MOUNT_APIS = ("auto", "new", "new-paths", "attached", "mixed", "legacy")


class MountError(CfsError):
    """A mount or unmount that could not be done, with the reason."""


# --- object directories ------------------------------------------------------------------------


@dataclass
class ObjectDir:
    """One object directory (basedir), searched in order for each file's redirect path.

    ``kind`` is "local" today. A remote, lazily fetched store would be another kind whose
    ``prepare()`` brings up its local view (a FUSE or cache directory) and returns its path; the
    mount code only ever sees the ordered list of prepared paths, so it needs no change for it.
    """

    path: str
    kind: str = "local"

    def prepare(self) -> str:
        if self.kind != "local":
            raise MountError(f"object directories of kind {self.kind!r} are not supported yet", self.path)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise MountError("basedir does not exist", self.path) from None
        except OSError as e:
            raise MountError(f"basedir cannot be used: {e.strerror}", self.path) from None
        if not stat.S_ISDIR(st.st_mode):
            raise MountError("basedir is not a directory", self.path)
        return os.path.abspath(self.path)


# --- the request -------------------------------------------------------------------------------


@dataclass
class MountRequest:
    image: str
    mountpoint: str
    basedirs: list[ObjectDir]
    digest: str | None = None
    verity_check: int | None = None  # None: 2 with a digest, else 0
    backend: str = "auto"
    upperdir: str | None = None
    workdir: str | None = None
    attrs: list[str] = field(default_factory=list)  # ro, nosuid, nodev, noexec, noatime, ...
    # How to build the stock mount; "auto" picks the best the kernel has. Tests force the others.
    erofs_source: str = "auto"  # auto | file | loop
    # new: fsopen/fsmount for both; new-paths: the same, layers always given as paths (6.7-6.12);
    # attached: new-paths with the EROFS mount briefly attached to a temporary directory (< 6.15);
    # mixed: EROFS by fsmount, overlay by mount(2) with lowerdir=/proc/self/fd/N::... (6.5, 6.6);
    # legacy: mount(2) only, EROFS on a temporary mount point (kernels before 5.2).
    mount_api: str = "auto"  # auto | new | new-paths | mixed | legacy
    # A repository's image is a file it made: a symlink there is refused, never followed.
    image_nofollow: bool = False
    # Kernel module only: an open /dev/composefs-fetch served by `cfsctl fetchd` (fetchd.py),
    # asked for objects missing from every basedir; its requests time out after fetch_timeout s.
    fetch_fd: int | None = None
    fetch_timeout: int | None = None

    @property
    def writable(self) -> bool:
        return self.upperdir is not None

    def effective_verity_check(self) -> int:
        if self.verity_check is None:
            return 2 if self.digest else 0
        return self.verity_check


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
    mount_api: str | None = None  # "new" (fsopen/fsmount) or "legacy" (mount(2))
    layers_by: str | None = None  # "fd", "path" or "string" (how overlay got its layers)

    def to_json(self) -> dict:
        return asdict(self)


def parse_digest(text: str) -> str:
    """Validate a hex sha256 fs-verity digest; return it lower-cased."""
    t = text.strip().lower()
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise MountError(f"bad digest {text!r}: expected 64 hex digits (an fs-verity sha256 digest)")
    return t


def validate(req: MountRequest) -> None:
    """Check the options that need no privilege and no filesystem access."""
    if req.backend not in BACKENDS:
        raise MountError(f"unknown backend {req.backend!r} (choose from {', '.join(BACKENDS)})")
    if req.verity_check is not None and req.verity_check not in VERITY_CHECK_VALUES:
        raise MountError(f"bad verity check level {req.verity_check!r}: expected 0, 1 or 2")
    if req.digest is not None:
        req.digest = parse_digest(req.digest)
        if req.verity_check is not None and req.verity_check != 2:
            raise MountError("--digest implies --verity-check 2 (the image's digest only means "
                             "something if every file is verified too)")
    if not req.basedirs:
        raise MountError("at least one basedir (object directory) is needed")
    if (req.upperdir is None) != (req.workdir is None):
        raise MountError("--upperdir and --workdir go together (overlayfs needs both for a writable mount)")
    for a in req.attrs:
        if a not in api.MOUNT_ATTRS:
            raise MountError(f"unknown mount attribute {a!r}")
    if req.erofs_source not in ("auto", "file", "loop"):
        raise MountError(f"bad erofs source {req.erofs_source!r}")
    if req.mount_api not in MOUNT_APIS:
        raise MountError(f"bad mount api {req.mount_api!r}")


def require_root(action: str = "mount") -> None:
    if os.geteuid() != 0:
        raise MountError(f"must be root to {action} composefs images (mounting needs CAP_SYS_ADMIN)")


def kernel_module_available() -> bool:
    """True when the running kernel has the ``composefs`` filesystem (module loaded or built in)."""
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == [KERNEL_FSTYPE] for line in f)
    except OSError:
        return False


def choose_backend(requested: str) -> str:
    if requested == "overlay":
        return "overlay"
    have = kernel_module_available()
    if requested == "kernel" and not have:
        raise MountError("the composefs kernel module is not loaded (/proc/filesystems does not list "
                         "composefs); load it, or use --backend overlay")
    return "kernel" if have else "overlay"


def _check_dir(path: str, what: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"{what} does not exist", path) from None
    except OSError as e:
        raise MountError(f"{what} cannot be used: {e.strerror}", path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{what} is not a directory", path)
    return os.path.abspath(path)


def _open_image(path: str, nofollow: bool = False) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
    except FileNotFoundError:
        raise MountError("image does not exist", path) from None
    except OSError as e:
        if e.errno == errno.ELOOP and nofollow:
            raise MountError("refused: image is a symlink (never followed)", path) from None
        raise MountError(f"cannot open image: {e.strerror}", path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise MountError("image is not a regular file", path)
    if st.st_size < 1024 + 128:
        os.close(fd)
        raise MountError(f"not a composefs image (only {st.st_size} bytes)", path)
    if os.pread(fd, 4, 1024) != EROFS_MAGIC:
        os.close(fd)
        raise MountError("not a composefs image (no EROFS superblock at offset 1024)", path)
    return fd


# --- fs-verity checks --------------------------------------------------------------------------

_NO_VERITY = (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS, errno.EINVAL)


def measure_image_digest(fd: int, path: str) -> str:
    """The image's fs-verity sha256 digest, or a clear error saying why there is none."""
    try:
        alg, digest = api.measure_verity(fd)
    except OSError as e:
        if e.errno == errno.ENODATA:
            raise MountError("--digest given but the image has no fs-verity (enable it with "
                             "'fsverity enable IMAGE')", path) from None
        if e.errno in _NO_VERITY:
            raise MountError("--digest given but the filesystem holding the image does not support "
                             "fs-verity, so the digest cannot be checked", path) from None
        raise MountError(f"cannot measure the image's fs-verity digest: {e.strerror}", path) from None
    if alg != api.FS_VERITY_HASH_ALG_SHA256:
        raise MountError(f"the image's fs-verity uses hash algorithm {alg}, composefs digests are sha256", path)
    return digest.hex()


def check_verity_support(path: str) -> None:
    """Refuse a basedir on a filesystem that cannot do fs-verity when verification is asked.

    FS_IOC_MEASURE_VERITY on a directory answers ENODATA where the filesystem supports fs-verity
    (the directory itself just has none) and EOPNOTSUPP/ENOTTY where it does not.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        api.measure_verity(fd)
    except OSError as e:
        if e.errno in _NO_VERITY:
            raise MountError("verity checking asked but this basedir's filesystem does not support "
                             "fs-verity, so no object could be verified", path) from None
    finally:
        os.close(fd)


# --- the mount ---------------------------------------------------------------------------------


def mount_image(req: MountRequest) -> MountResult:
    """Mount ``req.image`` on ``req.mountpoint``; return what was done."""
    validate(req)
    require_root()
    backend = choose_backend(req.backend)
    if req.fetch_fd is not None and backend != "kernel":
        raise MountError("objects fetched on first open (--remote) need the composefs kernel module")
    mountpoint = _check_dir(req.mountpoint, "mount point")
    basedirs = [b.prepare() for b in req.basedirs]
    upper = work = None
    if req.writable:
        upper = _check_dir(req.upperdir, "upperdir")
        work = _check_dir(req.workdir, "workdir")
        if backend == "kernel":
            raise MountError("the composefs kernel module mounts read-only; --upperdir needs --backend overlay")
    level = req.effective_verity_check()
    image = os.path.abspath(req.image)
    imgfd = _open_image(image, req.image_nofollow)
    try:
        if req.digest:
            got = measure_image_digest(imgfd, image)
            if got != req.digest:
                raise MountError(f"image digest mismatch: expected {req.digest}, the image has {got}", image)
        if level > 0:
            for b in basedirs:
                check_verity_support(b)
        result = MountResult(backend=backend, image=image, mountpoint=mountpoint, basedirs=basedirs,
                             verity_check=level, digest=req.digest, writable=req.writable)
        if backend == "kernel":
            _mount_kernel(req, imgfd, image, mountpoint, basedirs, level, result)
        else:
            _mount_overlay(req, imgfd, image, mountpoint, basedirs, level, upper, work, result)
        return result
    finally:
        os.close(imgfd)


def _attr_bits(req: MountRequest, readonly: bool) -> tuple[int, int]:
    names = set(req.attrs)
    if readonly:
        names.add("ro")
    new = legacy = 0
    for n in names:
        a, m = api.MOUNT_ATTRS[n]
        new |= a
        legacy |= m
    return new, legacy


def _explain(e: OSError, what: str) -> MountError:
    detail = str(e.strerror or e)
    return MountError(f"{what} failed: {detail}", getattr(e, "filename", None))


# kernel module ---------------------------------------------------------------------------------


def kernel_options(basedirs: list[str], level: int, digest: str | None, fetch_fd: int | None = None,
                   fetch_timeout: int | None = None) -> list[tuple[str, str]]:
    for b in basedirs:
        if ":" in b or "," in b:
            raise MountError("a basedir path for the kernel module cannot contain ':' or ','", b)
    opts = [("basedir", ":".join(basedirs)), ("verity_check", str(level))]
    if digest:
        opts.append(("digest", digest))
    if fetch_fd is not None:
        opts.append(("fetch_fd", str(fetch_fd)))
        if fetch_timeout is not None:
            opts.append(("fetch_timeout", str(fetch_timeout)))
    return opts


def _mount_kernel(req, imgfd, image, mountpoint, basedirs, level, result) -> None:
    opts = kernel_options(basedirs, level, req.digest, req.fetch_fd, req.fetch_timeout)
    new_attrs, legacy_flags = _attr_bits(req, readonly=True)
    result.mount_api = "new"
    # fsconfig string values are limited to 255 bytes; long ones go through mount(2)'s 4 KiB page.
    if req.mount_api != "legacy" and all(len(v) < 256 for _, v in opts) and len(image) < 256:
        try:
            fs = api.fsopen(KERNEL_FSTYPE)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise _explain(e, "opening the composefs filesystem") from None
        else:
            try:
                api.fsconfig_string(fs, "source", image)
                for k, v in opts:
                    api.fsconfig_string(fs, k, v)
                api.fsconfig_create(fs, "composefs mount")
                m = api.fsmount(fs, new_attrs)
                try:
                    api.move_mount_to(m, mountpoint)
                finally:
                    os.close(m)
                return
            except OSError as e:
                raise _explain(e, "composefs mount") from None
            finally:
                os.close(fs)
    result.mount_api = "legacy"
    data = ",".join(f"{k}={v}" for k, v in opts)
    try:
        api.mount(image, mountpoint, KERNEL_FSTYPE, legacy_flags, data)
    except OSError as e:
        raise _explain(e, "composefs mount") from None


# stock kernel: EROFS + overlayfs ---------------------------------------------------------------


@dataclass
class _Lower:
    """The EROFS layer: a detached mount fd (new API) or a temporary mount point (legacy)."""

    mntfd: int | None = None
    tmpdir: str | None = None

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.mntfd}" if self.mntfd is not None else self.tmpdir


def _new_api_available() -> bool:
    try:
        fd = api.fsopen("erofs")
    except OSError as e:
        if e.errno == errno.ENOSYS:
            return False
        raise _explain(e, "opening the erofs filesystem") from None
    os.close(fd)
    return True


def _mount_overlay(req, imgfd, image, mountpoint, basedirs, level, upper, work, result) -> None:
    how = req.mount_api
    if how == "auto":
        how = "new" if _new_api_available() else "legacy"
    use_new = how != "legacy"
    result.mount_api = how
    with contextlib.ExitStack() as stack:
        lower = _erofs_lower(req, imgfd, image, use_new, result, stack)
        if how == "attached":
            lower = _attach_lower(lower, stack)
        try:
            _stack_overlay(req, how, lower, mountpoint, basedirs, level, upper, work, result)
        except MountError:
            if lower.mntfd is None or req.mount_api != "auto":
                raise
            # Before 6.15 overlayfs cannot take a layer from a detached mount ("failed to clone
            # lowerpath", EINVAL): attach the EROFS mount on a private temporary directory for the
            # moment overlayfs takes hold of it, then detach it and remove the directory.
            lower = _attach_lower(lower, stack)
            _stack_overlay(req, "new-paths", lower, mountpoint, basedirs, level, upper, work, result)
            result.mount_api = "attached" if result.mount_api == "new-paths" else result.mount_api


def _stack_overlay(req, how, lower, mountpoint, basedirs, level, upper, work, result) -> None:
    done = False
    if how in ("new", "new-paths", "attached"):
        done = _overlay_new(req, lower, mountpoint, basedirs, level, upper, work, result,
                            fds=how == "new")
        result.mount_api = how
        if not done:  # kernel older than 6.7: no lowerdir+/datadir+, use mount(2)'s lowerdir=
            result.mount_api = "mixed"
    if not done:
        _overlay_legacy(req, lower, mountpoint, basedirs, level, upper, work)
        result.layers_by = "string"


def _temp_dir(stack: contextlib.ExitStack) -> str:
    base = "/run/composefs" if os.path.isdir("/run") else None
    if base:
        os.makedirs(base, mode=0o700, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="erofs.", dir=base)
    stack.callback(_remove_dir, tmp)
    return tmp


def _attach_lower(lower: _Lower, stack: contextlib.ExitStack) -> _Lower:
    """Attach a detached EROFS mount on a temporary directory (detached again when done)."""
    tmp = _temp_dir(stack)
    try:
        api.move_mount_to(lower.mntfd, tmp)
    except OSError as e:
        raise _explain(e, "attaching the EROFS layer") from None
    stack.callback(_detach, tmp)
    return _Lower(tmpdir=tmp)


def _erofs_lower(req, imgfd, image, use_new, result, stack) -> _Lower:
    """Mount the image as EROFS, from the file itself or else from a loop device."""
    sources = {"auto": ("file", "loop"), "file": ("file",), "loop": ("loop",)}[req.erofs_source]
    last: OSError | None = None
    for how in sources:
        devfd = None
        if how == "file":
            # The already opened (and, with --digest, measured) file: no second lookup of the path.
            source = f"/proc/self/fd/{imgfd}"
        else:
            try:
                source, devfd = api.loop_attach(imgfd, api.LO_FLAGS_READ_ONLY | api.LO_FLAGS_AUTOCLEAR,
                                                name=image[-63:])
            except OSError as e:
                raise _explain(e, "setting up a loop device for the image") from None
        try:
            if use_new:
                lower = _Lower(mntfd=_erofs_fsmount(source))
                stack.callback(os.close, lower.mntfd)
            else:
                lower = _erofs_tmp_mount(source, stack)
        except OSError as e:
            last = e
            # ENOTBLK: this kernel cannot mount EROFS from a regular file; try the loop device.
            if how == "file" and len(sources) > 1 and e.errno == errno.ENOTBLK:
                continue
            raise MountError(f"the image does not mount as EROFS: {e.strerror or e}", image) from None
        finally:
            if devfd is not None:
                # The mount holds the device now; with autoclear it goes away with the mount.
                os.close(devfd)
        result.erofs_source = how
        result.loop_device = source if how == "loop" else None
        return lower
    raise MountError(f"the image does not mount as EROFS: {last}", image)


def _erofs_fsmount(source: str) -> int:
    fs = api.fsopen("erofs")
    try:
        api.fsconfig_string(fs, "source", source)
        api.fsconfig_flag(fs, "ro")
        api.fsconfig_create(fs, "erofs mount")
        return api.fsmount(fs, api.MOUNT_ATTR_RDONLY | api.MOUNT_ATTR_NODEV)
    finally:
        os.close(fs)


def _erofs_tmp_mount(source: str, stack: contextlib.ExitStack) -> _Lower:
    """Kernels without fsmount: a private temporary mount point, detached once overlay holds it."""
    tmp = _temp_dir(stack)
    api.mount(source, tmp, "erofs", api.MS_RDONLY | api.MS_NODEV, None)
    stack.callback(_detach, tmp)
    return _Lower(tmpdir=tmp)


def _detach(path: str) -> None:
    with contextlib.suppress(OSError):
        api.umount2(path, api.MNT_DETACH)


def _remove_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _overlay_new(req, lower, mountpoint, basedirs, level, upper, work, result, fds=True) -> bool:
    """overlayfs through fsopen/fsconfig/fsmount/move_mount. False if the kernel lacks ``lowerdir+``."""
    fs = api.fsopen("overlay")
    opened: list[int] = []
    try:
        api.fsconfig_string(fs, "source", OVERLAY_SOURCE)
        api.fsconfig_string(fs, "metacopy", "on")
        api.fsconfig_string(fs, "redirect_dir", "on")
        # The EROFS layer: as its detached mount fd (6.13+), else as a /proc/self/fd path (6.7+).
        by = _add_layer(fs, "lowerdir+", lower.mntfd if fds else None, lower.path, opened)
        if by is None:
            return False
        result.layers_by = by
        for b in basedirs:
            if _add_layer(fs, "datadir+", None, b, opened) is None:
                return False
        if upper is not None:
            _add_layer(fs, "upperdir", None, upper, opened, required=True)
            _add_layer(fs, "workdir", None, work, opened, required=True)
        verity = OVERLAY_VERITY[level]
        if verity:
            try:
                api.fsconfig_string(fs, "verity", verity)
            except OSError as e:
                raise MountError(f"this kernel's overlayfs cannot verify (verity={verity}, needs 6.6+): "
                                 f"{e.strerror}") from None
        try:
            api.fsconfig_create(fs, "overlay mount")
        except OSError as e:
            raise _explain(e, "overlay mount") from None
        new_attrs, _ = _attr_bits(req, readonly=not req.writable)
        m = api.fsmount(fs, new_attrs)
        try:
            api.move_mount_to(m, mountpoint)
        except OSError as e:
            raise _explain(e, "attaching the mount") from None
        finally:
            os.close(m)
        return True
    finally:
        for fd in opened:
            os.close(fd)
        os.close(fs)


def _add_layer(fs: int, key: str, fd: int | None, path: str, opened: list[int], required=False) -> str | None:
    """Give overlayfs one layer, by fd where it can take fds, else by path. None: key unknown."""
    if fd is None and len(path) >= 256:
        # fsconfig strings stop at 255 bytes: hand long paths over as O_PATH descriptors.
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        opened.append(fd)
    if fd is not None:
        try:
            api.fsconfig_fd(fs, key, fd, shown=path)
            return "fd"
        except OSError:
            # Before 6.13 overlayfs takes layers only as strings (6.12 answers EBADF, older EINVAL);
            # the path below reaches the same layer (/proc/self/fd/N for the detached EROFS mount).
            pass
    try:
        api.fsconfig_string(fs, key, path)
        return "path"
    except OSError as e:
        if e.errno == errno.EINVAL and not required:
            return None
        raise _explain(e, f"overlay {key}{path}") from None


def _escape_layer(path: str) -> str:
    out = path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")
    return out


def overlay_legacy_options(lower: str, basedirs: list[str], level: int,
                           upper: str | None = None, work: str | None = None) -> str:
    """The mount(2) data string: ``lowerdir=IMG::OBJ1::OBJ2`` marks the objects as data-only."""
    lowers = "::".join(_escape_layer(p) for p in [lower, *basedirs])
    opts = [f"lowerdir={lowers}", "metacopy=on", "redirect_dir=on"]
    if upper is not None:
        opts += [f"upperdir={_escape_layer(upper)}", f"workdir={_escape_layer(work)}"]
    if OVERLAY_VERITY[level]:
        opts.append(f"verity={OVERLAY_VERITY[level]}")
    return ",".join(opts)


def _overlay_legacy(req, lower, mountpoint, basedirs, level, upper, work) -> None:
    data = overlay_legacy_options(lower.path, basedirs, level, upper, work)
    _, flags = _attr_bits(req, readonly=not req.writable)
    try:
        api.mount(OVERLAY_SOURCE, mountpoint, "overlay", flags, data)
    except OSError as e:
        raise _explain(e, "overlay mount") from None


# --- unmount -----------------------------------------------------------------------------------


@dataclass
class MountEntry:
    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    super_options: str


def _unescape(field_: str) -> str:
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
            entries.append(MountEntry(int(lf[0]), _unescape(lf[4]), rf[0], _unescape(rf[1]),
                                      rf[2] if len(rf) > 2 else ""))
    return entries


def is_composefs_entry(e: MountEntry) -> bool:
    return e.fstype == KERNEL_FSTYPE or (e.fstype == "overlay" and e.source == OVERLAY_SOURCE)


def find_mount(mountpoint: str) -> MountEntry | None:
    """The topmost mount on ``mountpoint`` (None if nothing is mounted there)."""
    target = os.path.realpath(mountpoint)
    found = None
    for e in read_mountinfo():
        if e.mountpoint == target:
            found = e
    return found


def unmount(mountpoint: str, lazy: bool = False) -> dict:
    """Unmount a composefs mount; refuse anything else.

    The EROFS layer is a detached mount held only by the overlay, and its loop device (if any)
    auto-clears, so unmounting the one visible mount releases everything the mount created.
    """
    if not os.path.exists(mountpoint) and find_mount(mountpoint) is None:
        raise MountError("no such mount point", mountpoint)
    e = find_mount(mountpoint)
    if e is None:
        raise MountError("not a mount point", mountpoint)
    from .fusemount import is_fuse_entry, unmount_fuse

    if is_fuse_entry(e):  # a user's own FUSE mount: fusermount3 unmounts it, no root needed
        unmount_fuse(e.mountpoint, lazy)
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
        raise _explain(err, "umount") from None
    return {"mountpoint": e.mountpoint, "fstype": e.fstype, "backend": "kernel" if e.fstype == KERNEL_FSTYPE
            else "overlay", "lazy": lazy}
