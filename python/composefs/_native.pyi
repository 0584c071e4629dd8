# SPDX-License-Identifier: MIT OR Apache-2.0
"""Types of ``composefs._native``, the Rust core (native/src/bindings/).

Every public name of the module is declared here with its parameters as the extension declares
them; tests/test_native_stub.py checks both directions. Results still returned as dictionaries
are typed ``dict[str, Any]``: their keys are documented in the Rust docstrings and docs/json.md.
"""

from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, Literal, final

_Path = str | bytes | PathLike[str] | PathLike[bytes]
# An image given as a path or as an open file descriptor.
_Image = _Path | int
_Action = Literal["stored", "reused"]

INLINE_MAX: int

class FormatError(ValueError):
    """A malformed dump, image or OCI input."""

class MountFailed(Exception):
    """A mount that did not happen (the message says which step and why)."""

@final
class ImageHeader:
    """What an image's header says, with the image's fs-verity digest."""

    @property
    def version(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def digest(self) -> str: ...

@final
class MountOutcome:
    """What mount_image mounted, and how."""

    @property
    def backend(self) -> Literal["kernel", "overlay"]: ...
    @property
    def image(self) -> str: ...
    @property
    def mountpoint(self) -> str: ...
    @property
    def basedirs(self) -> list[str]: ...
    @property
    def verity_check(self) -> int: ...
    @property
    def digest(self) -> str | None: ...
    @property
    def writable(self) -> bool: ...
    @property
    def erofs_source(self) -> str | None: ...
    @property
    def loop_device(self) -> str | None: ...
    @property
    def mount_api(self) -> str | None: ...
    @property
    def layers_by(self) -> str | None: ...
    @property
    def idmap(self) -> str | None: ...

@final
class ScanSnapshot:
    """The counters of a running scan at one moment."""

    @property
    def phase(self) -> Literal["idle", "walk", "contents", "done"]: ...
    @property
    def entries(self) -> int: ...
    @property
    def files_done(self) -> int: ...
    @property
    def files_total(self) -> int: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...

@final
class ScanProgress:
    def __new__(cls) -> ScanProgress: ...
    def snapshot(self) -> ScanSnapshot: ...

@final
class ObjectStore:
    def __new__(cls, path: _Path) -> ObjectStore: ...
    def contains(self, digest: str) -> bool: ...
    def insert_stream(self, source: Any, digest: str, max: int) -> tuple[int, _Action]: ...
    def sync(self) -> None: ...

class FetchError(Exception):
    """An object fetch that failed: args are (message, url or None)."""

@final
class RemoteFetcher:
    """Objects fetched over plain ``http://`` from a repository at a base URL into an
    ObjectStore, on keep-alive connections shared by every call."""

    def __new__(cls, base_url: str, store: ObjectStore, timeout: float = 30.0, attempts: int = 4) -> RemoteFetcher: ...
    def fetch(self, digest: str, size: int) -> _Action: ...
    def fetch_all(
        self,
        objects: Sequence[tuple[str, int]],
        jobs: int = 16,
        progress: Callable[[int, int], Any] | None = None,
    ) -> list[str]: ...
    @property
    def bytes(self) -> int: ...

@final
class LayerStats:
    """What reading one OCI layer did."""

    @property
    def compressed_bytes(self) -> int: ...
    @property
    def uncompressed_bytes(self) -> int: ...
    @property
    def entries(self) -> int: ...
    @property
    def objects_stored(self) -> int: ...
    @property
    def bytes_stored(self) -> int: ...
    @property
    def objects_reused(self) -> int: ...
    @property
    def bytes_reused(self) -> int: ...

@final
class OciLayer:
    @property
    def stats(self) -> LayerStats: ...
    def save(self, path: _Path) -> None: ...
    @staticmethod
    def load(path: _Path) -> OciLayer: ...
    def missing_objects(self, store_dir: _Path) -> int: ...

# --- fs-verity and the process ------------------------------------------------------------------

def fsverity_digest_file(
    path: _Path,
    algorithm: str,
    block_size: int,
    salt: bytes,
    parallel_threshold: int | None = None,
    chunk_size: int | None = None,
) -> bytes: ...
def fsverity_digest_bytes(
    data: bytes,
    algorithm: str,
    block_size: int,
    salt: bytes,
    parallel_threshold: int | None = None,
    chunk_size: int | None = None,
) -> bytes: ...
def fsverity_digest_files(
    paths: Sequence[_Path],
    algorithm: str,
    block_size: int,
    salt: bytes,
    threads: int | None = None,
    parallel_threshold: int | None = None,
    chunk_size: int | None = None,
) -> list[bytes | OSError]: ...
def fsverity_sha256_backend(choice: str | None = None) -> str: ...
def fsverity_chunking_defaults() -> tuple[int, int]: ...
def enable_verity(fd: int) -> bool: ...
def measure_verity(fd: int) -> tuple[int, bytes]: ...
def pid_alive(pid: int) -> bool: ...
def is_temp_name(name: _Path) -> bool: ...
def sweep_temporaries(dir: _Path) -> int: ...
def write_atomic(path: _Path, data: bytes, mode: int | None = None) -> None: ...
def configure_process() -> None: ...
def check_options(*, skip_xattrs: bool = False, user_xattrs: bool = False) -> None: ...

# --- building and reading images ----------------------------------------------------------------

def scan_directory(
    source: _Path,
    *,
    no_hardlinks: bool = False,
    skip_devices: bool = False,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    use_epoch: bool = False,
    threads: int = 0,
    store: _Path | None = None,
    sync: bool = True,
    progress: ScanProgress | None = None,
    entries: bool = False,
) -> dict[str, Any]: ...
def build_from_directory(
    source: _Path,
    image_path: _Path | None = None,
    *,
    min_version: int = 0,
    max_version: int = 1,
    no_hardlinks: bool = False,
    skip_devices: bool = False,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    use_epoch: bool = False,
    threads: int = 0,
    store: _Path | None = None,
    sync: bool = True,
    progress: ScanProgress | None = None,
    return_image: bool = False,
) -> dict[str, Any]: ...
def build_from_dump(
    source: bytes | _Path,
    image_path: _Path | None = None,
    *,
    min_version: int = 0,
    max_version: int = 1,
    threads: int = 0,
    use_epoch: bool = False,
    skip_devices: bool = False,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    return_image: bool = False,
) -> dict[str, Any]: ...
def image_info(image: _Image) -> ImageHeader: ...
def image_to_dump(
    image: _Image, out: int | None = None, opaque: bool = False, filter: Sequence[bytes] | None = None
) -> bytes | None: ...
def image_ls(image: _Image, out: int | None = None, filter: Sequence[bytes] | None = None) -> bytes | None: ...
def image_entries(
    image: _Image, opaque: bool = False, filter: Sequence[bytes] | None = None, full: bool = True
) -> list[dict[str, Any]]: ...
def image_count_paths(image: _Image) -> int: ...
def image_objects(image: _Image, filter: Sequence[bytes] | None = None) -> list[bytes]: ...
def image_objects_sized(image_path: _Path) -> list[tuple[str, str, int]]: ...
def image_objects_walk(image_path: _Path) -> list[tuple[str, int]]: ...
def image_bytes_plan(data: bytes) -> tuple[int, list[tuple[str, str, int]]]: ...

# --- the object store -----------------------------------------------------------------------------

def store_insert(store: _Path, path: _Path) -> tuple[str, int, _Action]: ...
def store_insert_many(store: _Path, paths: Sequence[_Path]) -> list[tuple[str, int, _Action]]: ...

# --- OCI ------------------------------------------------------------------------------------------

def oci_check_digest(s: str) -> str: ...
def oci_verify_bytes(data: bytes, digest: str, size: int | None = None) -> None: ...
def oci_sha256(data: bytes) -> str: ...
def oci_read_layer(
    source: Any,
    store_dir: _Path,
    *,
    digest: str | None = None,
    size: int | None = None,
    diff_id: str | None = None,
) -> OciLayer: ...
def oci_build_image(layers: Sequence[OciLayer], image_path: _Path, *, max_entries: int = 4000000) -> dict[str, Any]: ...
def tar_index(path: _Path) -> list[tuple[bytes, str, int, int, bytes]]: ...

# --- mounting ---------------------------------------------------------------------------------------

def mount_image(
    image: _Path,
    mountpoint: _Path,
    basedirs: Sequence[_Path],
    *,
    digest: str | None = None,
    verity_check: int | None = None,
    require_verity: bool = False,
    try_verity: bool = False,
    backend: str = "auto",
    upperdir: _Path | None = None,
    workdir: _Path | None = None,
    attrs: Sequence[str] = ...,
    readonly: bool | None = None,
    idmap: _Path | None = None,
    erofs_source: str = "auto",
    mount_api: str = "auto",
    image_nofollow: bool = False,
    fetch_fd: int | None = None,
    fetch_timeout: int | None = None,
) -> MountOutcome: ...
def parse_mount_options(options: Sequence[str | bytes], sloppy: bool = False) -> dict[str, Any]: ...
def kernel_module_available() -> bool: ...
def umount2(target: _Path, flags: int = 0) -> None: ...
def fuse_serve(
    image: _Path,
    mountpoint: _Path,
    basedirs: Sequence[_Path],
    verity_check: int = 1,
    fsname: str = "composefs",
    threads: int = 0,
    passthrough: bool = True,
    fetch: Callable[[str, int], Any] | None = None,
    exit_when_unmounted: bool = False,
) -> None: ...
def fuse_check(image: _Path) -> None: ...

# A repository's lookup rules (native/base: repo), shared with the native cfsctl front.
REPO_META: bytes
REPO_NAME_MAX: int
def repo_name_problem(name: str | bytes) -> str | None: ...
def repo_check_name(name: str | bytes) -> None: ...
def repo_trusted(path: _Path) -> list[int]: ...
def repo_open_plain(path: _Path, trusted: Sequence[int], what: str) -> int: ...
def repo_read_plain(path: _Path, trusted: Sequence[int], what: str) -> bytes: ...
def repo_meta(path: _Path) -> bytes: ...
def repo_check_layout(path: _Path) -> None: ...
def repo_lock(path: _Path, exclusive: bool) -> int: ...
def repo_clean_temporaries(path: _Path) -> int: ...
def repo_resolve(path: _Path, name: str | bytes) -> str: ...
def repo_image_for_mount(path: _Path, name: str | bytes) -> tuple[str, str | None]: ...
