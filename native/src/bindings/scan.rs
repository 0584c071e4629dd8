// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::scan` and `crate::store`: scan a directory (optionally filling an object
//! store) with the GIL released; a `ScanProgress` object whose counters Python may poll from
//! another thread while the scan runs.

use super::errors::{os_error, ToPyErr};
use super::image::{count_entries, BuildResult};
use super::types::{bytes_repr, Bytes, StoredObject, Xattr};
use crate::scan::{self, ScanOptions, ScanStats};
use crate::store::{self, Store, StoreStats};
use crate::tree::{InodeData, Tree};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl ToPyErr for store::Error {
    fn to_pyerr(&self) -> PyErr {
        match self {
            store::Error::Io { path, source } => os_error(source, Some(path)),
            store::Error::Changed { path } => changed(path),
            store::Error::Mismatch { .. } => super::errors::FormatError::new_err(self.to_string()),
        }
    }
}

fn changed(path: &std::path::Path) -> PyErr {
    PyOSError::new_err((
        libc::EAGAIN,
        "file changed while it was being read",
        path.as_os_str().to_os_string(),
    ))
}

impl ToPyErr for scan::Error {
    fn to_pyerr(&self) -> PyErr {
        match self {
            scan::Error::Io { path, source } => os_error(source, Some(path)),
            scan::Error::Changed { path } => changed(path),
            scan::Error::NotADirectory { path } => {
                os_error(&std::io::Error::from_raw_os_error(libc::ENOTDIR), Some(path))
            }
            scan::Error::ConflictingOptions(_) | scan::Error::Threads(..) => PyValueError::new_err(self.to_string()),
        }
    }
}

/// Live counters of a running scan; pass one to `scan_directory(progress=...)` and call
/// `snapshot()` from another thread.
#[pyclass(module = "composefs._native", frozen)]
pub struct ScanProgress {
    inner: Arc<scan::Progress>,
}

#[pymethods]
impl ScanProgress {
    #[new]
    fn new() -> Self {
        ScanProgress {
            inner: Arc::new(scan::Progress::default()),
        }
    }

    /// Where the scan is now: a [`ScanSnapshot`].
    fn snapshot(&self) -> ScanSnapshot {
        let p = &self.inner;
        let phase = match p.phase.load(Relaxed) {
            scan::PHASE_WALK => "walk",
            scan::PHASE_CONTENTS => "contents",
            scan::PHASE_DONE => "done",
            _ => "idle",
        };
        ScanSnapshot {
            phase,
            entries: p.entries.load(Relaxed),
            files_done: p.files_done.load(Relaxed),
            files_total: p.files_total.load(Relaxed),
            bytes_done: p.bytes_done.load(Relaxed),
            bytes_total: p.bytes_total.load(Relaxed),
        }
    }
}

/// The counters of a running scan at one moment.
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct ScanSnapshot {
    /// "idle", "walk" (listing directories), "contents" (reading files) or "done".
    phase: &'static str,
    entries: u64,
    files_done: u64,
    files_total: u64,
    bytes_done: u64,
    bytes_total: u64,
}

#[pymethods]
impl ScanSnapshot {
    fn __repr__(&self) -> String {
        format!(
            "ScanSnapshot(phase='{}', entries={}, files_done={}, files_total={}, bytes_done={}, bytes_total={})",
            self.phase, self.entries, self.files_done, self.files_total, self.bytes_done, self.bytes_total
        )
    }
}

/// What a scan found: the counts of `crate::scan::ScanStats` and the distinct objects.
#[pyclass(module = "composefs._native", name = "ScanStats", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct ScanCounts {
    /// Directory entries, the root included.
    entries: u64,
    inodes: u64,
    directories: u64,
    regular_files: u64,
    symlinks: u64,
    /// Fifos, sockets and devices.
    special_files: u64,
    /// Entries beyond the first naming an inode (0 with `no_hardlinks`).
    hardlinks: u64,
    inline_files: u64,
    empty_files: u64,
    /// Regular inodes backed by an object.
    object_files: u64,
    /// The distinct objects among them.
    distinct_objects: u64,
    /// Bytes of file contents read (each distinct source inode once).
    bytes_read: u64,
    /// Contents bytes of object-backed inodes.
    object_bytes: u64,
}

impl ScanCounts {
    fn of(s: &ScanStats, distinct_objects: u64) -> Self {
        ScanCounts {
            entries: s.entries,
            inodes: s.inodes,
            directories: s.directories,
            regular_files: s.regular_files,
            symlinks: s.symlinks,
            special_files: s.special_files,
            hardlinks: s.hardlinks,
            inline_files: s.inline_files,
            empty_files: s.empty_files,
            object_files: s.object_files,
            distinct_objects,
            bytes_read: s.bytes_read,
            object_bytes: s.object_bytes,
        }
    }
}

#[pymethods]
impl ScanCounts {
    fn __repr__(&self) -> String {
        format!(
            "ScanStats(entries={}, inodes={}, directories={}, regular_files={}, symlinks={}, special_files={}, \
             hardlinks={}, inline_files={}, empty_files={}, object_files={}, distinct_objects={}, bytes_read={}, \
             object_bytes={})",
            self.entries,
            self.inodes,
            self.directories,
            self.regular_files,
            self.symlinks,
            self.special_files,
            self.hardlinks,
            self.inline_files,
            self.empty_files,
            self.object_files,
            self.distinct_objects,
            self.bytes_read,
            self.object_bytes
        )
    }
}

/// What filling an object store did (`crate::store::StoreStats`).
#[pyclass(module = "composefs._native", name = "StoreStats", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct StoreCounts {
    objects_stored: u64,
    bytes_stored: u64,
    objects_reused: u64,
    bytes_reused: u64,
    /// Objects on which fs-verity was enabled.
    verity_enabled: u64,
    /// Leftover temporaries of killed builds removed when the store was opened.
    temporaries_removed: u64,
}

impl StoreCounts {
    fn of(s: &StoreStats) -> Self {
        StoreCounts {
            objects_stored: s.objects_stored,
            bytes_stored: s.bytes_stored,
            objects_reused: s.objects_reused,
            bytes_reused: s.bytes_reused,
            verity_enabled: s.verity_enabled,
            temporaries_removed: s.temporaries_removed,
        }
    }
}

#[pymethods]
impl StoreCounts {
    fn __repr__(&self) -> String {
        format!(
            "StoreStats(objects_stored={}, bytes_stored={}, objects_reused={}, bytes_reused={}, verity_enabled={}, \
             temporaries_removed={})",
            self.objects_stored,
            self.bytes_stored,
            self.objects_reused,
            self.bytes_reused,
            self.verity_enabled,
            self.temporaries_removed
        )
    }
}

/// The scan's counts and the store's (None without a store) as Python objects.
pub(super) fn scan_counts(
    py: Python<'_>,
    stats: &ScanStats,
    distinct_objects: u64,
    store: Option<&StoreStats>,
) -> PyResult<(Py<ScanCounts>, Option<Py<StoreCounts>>)> {
    let scan = Py::new(py, ScanCounts::of(stats, distinct_objects))?;
    let store = store.map(|s| Py::new(py, StoreCounts::of(s))).transpose()?;
    Ok((scan, store))
}

/// One entry of a scanned tree, with the values the tree holds (for tests and inspection).
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct ScanEntry {
    /// From the root (`/`), as bytes.
    path: Bytes,
    /// The tree's inode number: entries of one inode (kept hardlinks) share it.
    inode: usize,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    nlink: u32,
    rdev: u64,
    xattrs: Vec<Xattr>,
    /// A symlink's target.
    target: Option<Bytes>,
    /// The content of a regular file kept inside the image (1..64 bytes).
    inline: Option<Bytes>,
    /// The object path (`XX/<62 hex>`) of an object-backed file.
    payload: Option<String>,
    /// Its fs-verity digest, hex.
    digest: Option<String>,
}

#[pymethods]
impl ScanEntry {
    fn __repr__(&self) -> String {
        format!(
            "ScanEntry(path={}, inode={}, mode={:#o}, size={})",
            bytes_repr(&self.path.0),
            self.inode,
            self.mode,
            self.size
        )
    }
}

/// What `scan_directory` returns.
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct ScanResult {
    stats: Py<ScanCounts>,
    /// None without a store.
    store: Option<Py<StoreCounts>>,
    /// Every entry, root first then breadth-first (only when asked for).
    entries: Option<Vec<Py<ScanEntry>>>,
}

#[pymethods]
impl ScanResult {
    fn __repr__(&self) -> String {
        format!(
            "ScanResult(stats={}, store={}, entries={})",
            self.stats.get().__repr__(),
            self.store.as_ref().map_or("None".into(), |s| s.get().__repr__()),
            match &self.entries {
                Some(e) => format!("[{} entries]", e.len()),
                None => "None".into(),
            }
        )
    }
}

/// A path argument: str, bytes (names need not be UTF-8) or os.PathLike.
pub(super) fn to_path(obj: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(PathBuf::from(std::ffi::OsStr::from_bytes(b.as_bytes())));
    }
    obj.extract()
}

pub(super) fn hex(b: &[u8]) -> String {
    crate::dump::hex(b)
}

/// Every entry of the tree (root first, then breadth-first).
fn scan_entries(py: Python<'_>, tree: &Tree) -> PyResult<Vec<Py<ScanEntry>>> {
    let mut paths: Vec<Option<Vec<u8>>> = vec![None; tree.inodes.len()];
    paths[crate::tree::ROOT] = Some(b"/".to_vec());
    let mut order: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), crate::tree::ROOT)];
    tree.walk_breadth_first(|parent, e| {
        let mut p = paths[parent].clone().unwrap_or_default();
        if p != b"/" {
            p.push(b'/');
        }
        p.extend_from_slice(&e.name);
        if tree.inodes[e.inode].is_dir() {
            paths[e.inode] = Some(p.clone());
        }
        order.push((p, e.inode));
    });
    order
        .into_iter()
        .map(|(path, id)| {
            let ino = &tree.inodes[id];
            let (mut target, mut inline, mut payload, mut digest) = (None, None, None, None);
            match &ino.data {
                InodeData::Symlink { target: t } => target = Some(Bytes(t.clone())),
                InodeData::Regular {
                    inline: i,
                    payload: p,
                    digest: dg,
                } => {
                    inline = i.as_ref().map(|b| Bytes(b.clone()));
                    payload = p.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                    digest = dg.as_ref().map(|b| hex(b));
                }
                _ => {}
            }
            let entry = ScanEntry {
                path: Bytes(path),
                inode: id,
                mode: ino.mode,
                uid: ino.uid,
                gid: ino.gid,
                size: ino.size,
                mtime: ino.mtime.sec,
                mtime_nsec: ino.mtime.nsec,
                nlink: ino.nlink,
                rdev: ino.rdev,
                xattrs: ino.xattrs.iter().map(Xattr::of).collect(),
                target,
                inline,
                payload,
                digest,
            };
            Py::new(py, entry)
        })
        .collect()
}

/// What both scanning bindings do with the GIL released: open `store` (when given), scan
/// `source` into it, hand the tree to `then` (which may write the image, or keep the tree), and `syncfs` the store
/// last when `sync`, so that the objects are durable once the call returns.
fn scan_into_store<T>(
    source: &std::path::Path,
    opts: &ScanOptions,
    store: Option<&std::path::Path>,
    progress: Option<&scan::Progress>,
    sync: bool,
    then: impl FnOnce(Tree) -> PyResult<T>,
) -> PyResult<(T, ScanStats, Option<StoreStats>)> {
    let store = store.map(Store::open).transpose().map_err(|e| e.to_pyerr())?;
    let (tree, stats) = scan::scan(source, opts, store.as_ref(), progress).map_err(|e| e.to_pyerr())?;
    let out = then(tree)?;
    if let (Some(s), true) = (&store, sync) {
        s.sync().map_err(|e| e.to_pyerr())?;
    }
    Ok((out, stats, store.map(|s| s.stats())))
}

/// Scan `source` into a tree (see `crate::scan`); with `store`, insert every object-backed
/// file into that object store and `syncfs` it at the end when `sync` is true.
/// Returns a [`ScanResult`] (its `entries` only when `entries` is true).
#[pyfunction]
#[pyo3(signature = (source, *, no_hardlinks=false, skip_devices=false, skip_xattrs=false,
                    user_xattrs=false, use_epoch=false, threads=0, store=None, sync=true,
                    progress=None, entries=false))]
#[allow(clippy::too_many_arguments)]
fn scan_directory<'py>(
    py: Python<'py>,
    source: &Bound<'py, PyAny>,
    no_hardlinks: bool,
    skip_devices: bool,
    skip_xattrs: bool,
    user_xattrs: bool,
    use_epoch: bool,
    threads: usize,
    store: Option<&Bound<'py, PyAny>>,
    sync: bool,
    progress: Option<PyRef<'py, ScanProgress>>,
    entries: bool,
) -> PyResult<ScanResult> {
    let opts = ScanOptions {
        no_hardlinks,
        skip_devices,
        skip_xattrs,
        user_xattrs,
        use_epoch,
        threads,
    };
    let progress = progress.map(|p| p.inner.clone());
    let source = to_path(source)?;
    let store = store.map(to_path).transpose()?;
    let ((tree, objects), stats, store_stats) = py.allow_threads(|| {
        scan_into_store(&source, &opts, store.as_deref(), progress.as_deref(), sync, |tree| {
            let objects = crate::erofs::build::object_stats(&tree);
            Ok((tree, objects))
        })
    })?;
    let (stats, store) = scan_counts(py, &stats, objects.0, store_stats.as_ref())?;
    let entries = if entries { Some(scan_entries(py, &tree)?) } else { None };
    Ok(ScanResult { stats, store, entries })
}

/// Scan `source` (filling `store` when given), write the composefs image of the tree to
/// `image_path` atomically (when given; its bytes under `image` with `return_image`), `syncfs`
/// the store and the image's filesystem when `sync`. Returns a [`BuildResult`] with the scan's
/// counts (`scan`) and the store's (`store`, None without a store).
#[pyfunction]
#[pyo3(signature = (source, image_path=None, *, min_version=0, max_version=1, no_hardlinks=false,
                    skip_devices=false, skip_xattrs=false, user_xattrs=false, use_epoch=false,
                    threads=0, store=None, sync=true, progress=None, return_image=false))]
#[allow(clippy::too_many_arguments)]
fn build_from_directory<'py>(
    py: Python<'py>,
    source: &Bound<'py, PyAny>,
    image_path: Option<&Bound<'py, PyAny>>,
    min_version: u32,
    max_version: u32,
    no_hardlinks: bool,
    skip_devices: bool,
    skip_xattrs: bool,
    user_xattrs: bool,
    use_epoch: bool,
    threads: usize,
    store: Option<&Bound<'py, PyAny>>,
    sync: bool,
    progress: Option<PyRef<'py, ScanProgress>>,
    return_image: bool,
) -> PyResult<BuildResult> {
    use crate::erofs::build;
    let opts = ScanOptions {
        no_hardlinks,
        skip_devices,
        skip_xattrs,
        user_xattrs,
        use_epoch,
        threads,
    };
    let wopts = crate::erofs::writer::Options {
        min_version,
        max_version,
        threads,
    };
    let progress = progress.map(|p| p.inner.clone());
    let source = to_path(source)?;
    let store = store.map(to_path).transpose()?;
    let image_path = image_path.map(to_path).transpose()?;
    let build_err = |e: build::BuildError| match e {
        build::BuildError::Io { path, source } => os_error(&source, Some(&path)),
        other => PyValueError::new_err(other.to_string()),
    };
    let (built, stats, store_stats) = py.allow_threads(|| {
        scan_into_store(&source, &opts, store.as_deref(), progress.as_deref(), sync, |tree| {
            let built = build::build_counting(&tree, &wopts, image_path.as_deref(), return_image).map_err(build_err)?;
            let entries = count_entries(&tree);
            tree.drop_in_background();
            Ok((built, entries))
        })
    })?;
    let ((built, objects), entries) = built;
    let (scan, store) = scan_counts(py, &stats, objects.0, store_stats.as_ref())?;
    BuildResult::new(py, built, objects, entries, Some(scan), store)
}

/// Insert one file into an object store.
#[pyfunction]
fn store_insert(py: Python<'_>, store: &Bound<'_, PyAny>, path: &Bound<'_, PyAny>) -> PyResult<StoredObject> {
    let (store, path) = (to_path(store)?, to_path(path)?);
    py.allow_threads(|| {
        let s = Store::open(&store).map_err(|e| e.to_pyerr())?;
        let (d, size, how) = s.insert_path(&path).map_err(|e| e.to_pyerr())?;
        Ok(StoredObject::new(&d, size, how))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ScanProgress>()?;
    m.add_class::<ScanSnapshot>()?;
    m.add_class::<ScanCounts>()?;
    m.add_class::<StoreCounts>()?;
    m.add_class::<ScanEntry>()?;
    m.add_class::<ScanResult>()?;
    m.add_function(wrap_pyfunction!(scan_directory, m)?)?;
    m.add_function(wrap_pyfunction!(store_insert, m)?)?;
    m.add_function(wrap_pyfunction!(build_from_directory, m)?)?;
    m.add("INLINE_MAX", scan::INLINE_MAX)?;
    Ok(())
}
