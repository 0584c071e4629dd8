// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for the dump format and the EROFS image (`crate::dump`, `crate::erofs`).
use super::errors::{os_error, FormatError};
use super::scan::{ScanCounts, StoreCounts};
use super::types::{Bytes, HexDigest, Xattr};
use crate::dump;
use crate::erofs::build::{self, BuildError, Flags};
use crate::erofs::reader::{self, ReadError};
use crate::erofs::writer::{Options, WriteError};
use crate::tree::Tree;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyString};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What a build made: the image's digest, version and size, its entries by kind and the
/// objects it refers to. Dump, directory and OCI builds all return one; `scan` and `store` are
/// the directory scan's counts (directory builds) and the object store's (with a store).
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct BuildResult {
    /// fs-verity sha256 digest of the image, hex.
    digest: String,
    /// composefs format version written (0, or 1 when the tree holds whiteouts).
    version: u32,
    image_size: u64,
    /// Paths in the image, the root included.
    entries: u64,
    inodes: u64,
    directories: u64,
    regular_files: u64,
    inline_files: u64,
    object_files: u64,
    symlinks: u64,
    devices: u64,
    whiteouts: u64,
    hardlinks: u64,
    shared_xattrs: u64,
    /// Distinct objects the image refers to.
    objects: u64,
    /// Their bytes, each object once.
    object_bytes: u64,
    /// Bytes of all object-backed files, each inode once (duplicates counted).
    file_bytes: u64,
    /// The image's bytes, when asked for (`return_image`).
    image: Option<Py<PyBytes>>,
    scan: Option<Py<ScanCounts>>,
    store: Option<Py<StoreCounts>>,
}

impl BuildResult {
    /// `objects` = (distinct objects, their bytes, bytes of all object-backed files).
    pub(super) fn new(
        py: Python<'_>,
        built: build::Built,
        objects: (u64, u64, u64),
        entries: u64,
        scan: Option<Py<ScanCounts>>,
        store: Option<Py<StoreCounts>>,
    ) -> PyResult<BuildResult> {
        let s = &built.stats;
        Ok(BuildResult {
            digest: dump::write::hex_digest(&built.digest),
            version: built.version,
            image_size: s.image_size,
            entries,
            inodes: s.inodes,
            directories: s.directories,
            regular_files: s.regular_files,
            inline_files: s.inline_files,
            object_files: s.object_files,
            symlinks: s.symlinks,
            devices: s.devices,
            whiteouts: s.whiteouts,
            hardlinks: s.hardlinks,
            shared_xattrs: s.shared_xattrs,
            objects: objects.0,
            object_bytes: objects.1,
            file_bytes: objects.2,
            image: built.bytes.map(|b| PyBytes::new(py, &b).unbind()),
            scan,
            store,
        })
    }
}

#[pymethods]
impl BuildResult {
    fn __repr__(&self) -> String {
        format!(
            "BuildResult(digest='{}', version={}, image_size={}, entries={}, objects={}, object_bytes={})",
            self.digest, self.version, self.image_size, self.entries, self.objects, self.object_bytes
        )
    }
}

/// The paths of a tree, the root included.
pub(super) fn count_entries(tree: &Tree) -> u64 {
    let mut n = 1;
    tree.walk_breadth_first(|_, _| n += 1);
    n
}

fn build_err(e: BuildError) -> PyErr {
    match e {
        BuildError::Io { path, source } => os_error(&source, Some(&path)),
        BuildError::ConflictingFlags(_) => PyValueError::new_err(e.to_string()),
        BuildError::Write(WriteError::BadVersion(_)) | BuildError::Write(WriteError::Threads(_)) => {
            PyValueError::new_err(e.to_string())
        }
        BuildError::Write(w) => FormatError::new_err(w.to_string()),
    }
}

pub(super) fn read_err(e: ReadError) -> PyErr {
    FormatError::new_err(e.to_string())
}

fn read_file(path: &Path) -> PyResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| os_error(&e, Some(path)))
}

/// Where an image is read from: a path (followed if a symlink: the caller named it), or a
/// descriptor the caller opened (the repository opens its images itself, refusing symlinks).
#[derive(FromPyObject)]
pub(super) enum ImageSource {
    Fd(RawFd),
    Path(PathBuf),
}

/// Borrow a caller's descriptor as a `File` that is never closed here.
fn borrowed_file(fd: RawFd) -> ManuallyDrop<File> {
    // SAFETY: the caller keeps `fd` open for the whole call; ManuallyDrop never closes it.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

/// The image's bytes: a regular file of bounded size (see `reader::read_image_file`).
fn image_bytes(src: &ImageSource) -> PyResult<Vec<u8>> {
    let (file, path): (ManuallyDrop<File>, Option<&Path>) = match src {
        ImageSource::Fd(fd) => (borrowed_file(*fd), None),
        ImageSource::Path(p) => {
            // Non-blocking, so that a FIFO given as an image is refused instead of waited on.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(p)
                .map_err(|e| os_error(&e, Some(p)))?;
            (ManuallyDrop::new(f), Some(p.as_path()))
        }
    };
    let r = reader::read_image_file(&file);
    if matches!(src, ImageSource::Path(_)) {
        drop(ManuallyDrop::into_inner(file));
    }
    r.map_err(|e| os_error(&e, path))?.map_err(read_err)
}

pub(super) fn load_image(src: &ImageSource) -> PyResult<reader::Loaded> {
    reader::read_image(&image_bytes(src)?).map_err(read_err)
}

/// The image's tree as composefs-info shows it: `opaque=x` marks kept when `opaque`, and only the
/// top-level entries named in `filter` when one is given.
fn load_image_shown(src: &ImageSource, opaque: bool, filter: &Option<Vec<Vec<u8>>>) -> PyResult<reader::Loaded> {
    let mut loaded = reader::read_image_with(&image_bytes(src)?, opaque).map_err(read_err)?;
    if let Some(names) = filter {
        loaded.tree.retain_top_level(names);
    }
    Ok(loaded)
}

/// Run `emit` into the descriptor `fd` (buffered), or into a vector returned as bytes.
fn emit_to<'py>(
    py: Python<'py>,
    out: Option<RawFd>,
    emit: impl FnOnce(&mut dyn Write) -> PyResult<()> + Send,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    match out {
        Some(fd) => {
            py.allow_threads(|| -> PyResult<()> {
                let file = borrowed_file(fd);
                let mut w = std::io::BufWriter::with_capacity(1 << 16, &*file);
                emit(&mut w)?;
                w.flush().map_err(|e| os_error(&e, None))
            })?;
            Ok(None)
        }
        None => {
            let v = py.allow_threads(|| -> PyResult<Vec<u8>> {
                let mut v = Vec::new();
                emit(&mut v)?;
                Ok(v)
            })?;
            Ok(Some(PyBytes::new(py, &v)))
        }
    }
}

/// The source of a dump: bytes, or a path to read.
#[derive(FromPyObject)]
enum DumpSource {
    /// Borrowed from the Python object, not copied.
    Bytes(pyo3::pybacked::PyBackedBytes),
    Path(PathBuf),
}

/// Parse a dump (bytes or a path), apply mkcomposefs' filters, write the image (atomically,
/// when `image_path` is given; its bytes under `image` with `return_image`) and return what was
/// built: a [`BuildResult`] (no `scan` or `store`).
#[pyfunction]
#[pyo3(signature = (source, image_path=None, *, min_version=0, max_version=1, threads=0,
                    use_epoch=false, skip_devices=false, skip_xattrs=false, user_xattrs=false,
                    return_image=false))]
#[allow(clippy::too_many_arguments)]
fn build_from_dump(
    py: Python<'_>,
    source: DumpSource,
    image_path: Option<PathBuf>,
    min_version: u32,
    max_version: u32,
    threads: usize,
    use_epoch: bool,
    skip_devices: bool,
    skip_xattrs: bool,
    user_xattrs: bool,
    return_image: bool,
) -> PyResult<BuildResult> {
    let flags = Flags {
        use_epoch,
        skip_devices,
        skip_xattrs,
        user_xattrs,
    };
    let opts = Options {
        min_version,
        max_version,
        threads,
    };
    let ((built, objects), entries) = py.allow_threads(|| -> PyResult<_> {
        let mut tree: Tree = match &source {
            DumpSource::Bytes(b) => dump::parse(b.as_ref()),
            // The text is dropped as soon as it is parsed (before the image is made).
            DumpSource::Path(p) => dump::parse(&read_file(p)?),
        }
        .map_err(|e| FormatError::new_err(e.to_string()))?;
        build::apply_flags(&mut tree, flags).map_err(build_err)?;
        let built = build::build_counting(&tree, &opts, image_path.as_deref(), return_image).map_err(build_err)?;
        let entries = count_entries(&tree);
        tree.drop_in_background();
        Ok((built, entries))
    })?;
    BuildResult::new(py, built, objects, entries, None, None)
}

/// The image's tree in composefs-dump(5) format: written to the descriptor `out` as the tree is
/// walked (returns None), or returned as bytes without `out`. `image` is a path or an open
/// descriptor. `opaque` keeps format 1's `opaque=x` marks (as composefs-info does; without them
/// the dump builds back into the same image), `filter` keeps only those top-level names.
#[pyfunction]
#[pyo3(signature = (image, out=None, opaque=false, filter=None))]
fn image_to_dump<'py>(
    py: Python<'py>,
    image: ImageSource,
    out: Option<RawFd>,
    opaque: bool,
    filter: Option<Vec<Vec<u8>>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    emit_to(py, out, |w| {
        let loaded = load_image_shown(&image, opaque, &filter)?;
        dump::write_dump(&loaded.tree, w).map_err(|e| os_error(&e, None))
    })
}

/// `composefs-info ls` output for an image, written or returned as [`image_to_dump`] does.
#[pyfunction]
#[pyo3(signature = (image, out=None, filter=None))]
fn image_ls<'py>(
    py: Python<'py>,
    image: ImageSource,
    out: Option<RawFd>,
    filter: Option<Vec<Vec<u8>>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    emit_to(py, out, |w| {
        let loaded = load_image_shown(&image, false, &filter)?;
        dump::write_ls(&loaded.tree, w).map_err(|e| os_error(&e, None))
    })
}

/// The `st_mode` file types by the names the JSON of `cfsctl info ls` and `info dump` gives them.
const FILE_TYPES: [(u32, &str); 8] = [
    (0o040000, "directory"),
    (0o100000, "file"),
    (0o120000, "symlink"),
    (0o020000, "chardev"),
    (0o060000, "blockdev"),
    (0o010000, "fifo"),
    (0o140000, "socket"),
    (0, "unknown"),
];

/// An entry's file type (an index into [`FILE_TYPES`]), handed to Python as one shared `str`
/// per name rather than a new string per entry.
#[derive(Clone, Copy)]
struct FileType(u8);

impl FileType {
    fn of(mode: u32) -> FileType {
        let i = FILE_TYPES[..7].iter().position(|&(t, _)| t == mode & 0o170000);
        FileType(i.unwrap_or(7) as u8)
    }

    fn name(self) -> &'static str {
        FILE_TYPES[usize::from(self.0)].1
    }
}

impl<'py> IntoPyObject<'py> for &FileType {
    type Target = PyString;
    type Output = Bound<'py, PyString>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        static NAMES: GILOnceCell<Vec<Py<PyString>>> = GILOnceCell::new();
        let names = NAMES.get_or_init(py, || {
            FILE_TYPES
                .iter()
                .map(|&(_, n)| PyString::intern(py, n).unbind())
                .collect()
        });
        Ok(names[usize::from(self.0)].bind(py).clone())
    }
}

/// One path of an image, as a line of its dump says it: the facts of `composefs-info ls`
/// (`path`, `type`, `target`, `object`, `hardlink_to`) and the inode's metadata.
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct ImageEntry {
    /// From the root (`/`).
    path: OsString,
    /// "directory", "file", "symlink", "chardev", "blockdev", "fifo" or "socket".
    #[pyo3(name = "type")]
    kind: FileType,
    /// A symlink's target.
    target: Option<OsString>,
    /// A file's backing object (its redirect path, `XX/<62 hex>`).
    object: Option<OsString>,
    /// An extra name of a hardlinked file: the path holding the inode (the dump's `@` line).
    hardlink_to: Option<OsString>,
    size: u64,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    mtime: i64,
    mtime_nsec: u32,
    /// A file's fs-verity digest as the image records it, hex.
    digest: Option<HexDigest>,
    /// The content of a small file kept inside the image.
    inline: Option<Bytes>,
    xattrs: Vec<Xattr>,
}

#[pymethods]
impl ImageEntry {
    fn __repr__(&self) -> String {
        format!(
            "ImageEntry(path={:?}, type='{}', size={})",
            self.path,
            self.kind.name(),
            self.size
        )
    }
}

/// An image's paths in dump order (depth-first, names sorted) as [`ImageEntry`]s. Without `full`
/// the root is left out, as `composefs-info ls` leaves it out (a dump has a line for it).
#[pyfunction]
#[pyo3(signature = (image, opaque=false, filter=None, full=true))]
fn image_entries(
    py: Python<'_>,
    image: ImageSource,
    opaque: bool,
    filter: Option<Vec<Vec<u8>>>,
    full: bool,
) -> PyResult<Vec<ImageEntry>> {
    use crate::tree::InodeData;
    use std::os::unix::ffi::OsStrExt;

    let name = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    py.allow_threads(|| {
        let loaded = load_image_shown(&image, opaque, &filter)?;
        let mut rows = Vec::with_capacity(loaded.tree.inodes.len());
        dump::for_each_path(&loaded.tree, |path, ino, link| {
            if !full && path == b"/" {
                return Ok(());
            }
            let (mut target, mut object, mut digest, mut inline) = (None, None, None, None);
            match &ino.data {
                InodeData::Symlink { target: t } => target = Some(name(t)),
                InodeData::Regular {
                    payload,
                    digest: dg,
                    inline: i,
                } => {
                    object = payload.as_deref().map(name);
                    digest = dg.map(HexDigest);
                    inline = i.as_ref().map(|c| Bytes(c.clone()));
                }
                _ => {}
            }
            rows.push(ImageEntry {
                path: name(path),
                kind: FileType::of(ino.mode),
                target,
                object,
                hardlink_to: link.map(name),
                size: ino.size,
                mode: ino.mode,
                nlink: ino.nlink,
                uid: ino.uid,
                gid: ino.gid,
                rdev: ino.rdev,
                mtime: ino.mtime.sec,
                mtime_nsec: ino.mtime.nsec,
                digest,
                inline,
                xattrs: ino.xattrs.iter().map(Xattr::of).collect(),
            });
            Ok(())
        })
        .map_err(|e| os_error(&e, None))?;
        Ok(rows)
    })
}

/// The number of paths in an image, its root included (the lines of its dump).
#[pyfunction]
fn image_count_paths(py: Python<'_>, image: ImageSource) -> PyResult<u64> {
    py.allow_threads(|| Ok(dump::count_paths(&load_image(&image)?.tree)))
}

/// The distinct object paths (`XX/<rest>`) an image refers to, sorted, as bytes (under the
/// top-level names in `filter` only, when given).
#[pyfunction]
#[pyo3(signature = (image, filter=None))]
fn image_objects(py: Python<'_>, image: ImageSource, filter: Option<Vec<Vec<u8>>>) -> PyResult<Vec<Py<PyBytes>>> {
    let objs = py.allow_threads(|| -> PyResult<Vec<Vec<u8>>> {
        Ok(dump::objects(&load_image_shown(&image, false, &filter)?.tree))
    })?;
    Ok(objs.into_iter().map(|o| PyBytes::new(py, &o).unbind()).collect())
}

/// What an image's header says, with the image's fs-verity digest.
#[pyclass(frozen, get_all, module = "composefs._native")]
pub struct ImageHeader {
    /// composefs format version (0 or 1).
    version: u32,
    /// Header flags (bit 0: an ACL xattr is present).
    flags: u32,
    /// fs-verity sha256 digest of the image, hex.
    digest: String,
}

#[pymethods]
impl ImageHeader {
    fn __repr__(&self) -> String {
        format!(
            "ImageHeader(version={}, flags={:#x}, digest='{}')",
            self.version, self.flags, self.digest
        )
    }
}

/// Read and check an image (a path or an open descriptor): its [`ImageHeader`].
#[pyfunction]
fn image_info(py: Python<'_>, image: ImageSource) -> PyResult<ImageHeader> {
    py.allow_threads(|| -> PyResult<_> {
        let bytes = image_bytes(&image)?;
        let loaded = reader::read_image(&bytes).map_err(read_err)?;
        let d = crate::fsverity::digest_bytes(&bytes, &crate::fsverity::Params::default());
        Ok(ImageHeader {
            version: loaded.version,
            flags: loaded.flags,
            digest: dump::write::hex_digest(&d),
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_from_dump, m)?)?;
    m.add_function(wrap_pyfunction!(image_to_dump, m)?)?;
    m.add_function(wrap_pyfunction!(image_ls, m)?)?;
    m.add_function(wrap_pyfunction!(image_entries, m)?)?;
    m.add_function(wrap_pyfunction!(image_count_paths, m)?)?;
    m.add_function(wrap_pyfunction!(image_objects, m)?)?;
    m.add_function(wrap_pyfunction!(image_info, m)?)?;
    m.add_class::<ImageHeader>()?;
    m.add_class::<ImageEntry>()?;
    m.add_class::<BuildResult>()?;
    Ok(())
}
