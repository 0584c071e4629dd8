// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::scan` and `crate::store`: scan a directory (optionally filling an object
//! store) with the GIL released; a `ScanProgress` object whose counters Python may poll from
//! another thread while the scan runs.

use super::errors::{os_error, ToPyErr};
use crate::scan::{self, ScanOptions, ScanStats};
use crate::store::{self, Store, StoreStats};
use crate::tree::{InodeData, Tree};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
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

fn stats_dict<'py>(py: Python<'py>, s: &ScanStats, distinct_objects: u64) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("entries", s.entries)?;
    d.set_item("inodes", s.inodes)?;
    d.set_item("directories", s.directories)?;
    d.set_item("regular_files", s.regular_files)?;
    d.set_item("symlinks", s.symlinks)?;
    d.set_item("special_files", s.special_files)?;
    d.set_item("hardlinks", s.hardlinks)?;
    d.set_item("inline_files", s.inline_files)?;
    d.set_item("empty_files", s.empty_files)?;
    d.set_item("object_files", s.object_files)?;
    d.set_item("distinct_objects", distinct_objects)?;
    d.set_item("bytes_read", s.bytes_read)?;
    d.set_item("object_bytes", s.object_bytes)?;
    Ok(d)
}

fn store_dict<'py>(py: Python<'py>, s: &StoreStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("objects_stored", s.objects_stored)?;
    d.set_item("bytes_stored", s.bytes_stored)?;
    d.set_item("objects_reused", s.objects_reused)?;
    d.set_item("bytes_reused", s.bytes_reused)?;
    d.set_item("verity_enabled", s.verity_enabled)?;
    d.set_item("temporaries_removed", s.temporaries_removed)?;
    Ok(d)
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
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every entry of the tree (root first, then breadth-first) as a dict of plain values.
fn entries_list<'py>(py: Python<'py>, tree: &Tree) -> PyResult<Bound<'py, PyList>> {
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
    let out = PyList::empty(py);
    for (path, id) in order {
        let ino = &tree.inodes[id];
        let d = PyDict::new(py);
        d.set_item("path", PyBytes::new(py, &path))?;
        d.set_item("inode", id)?;
        d.set_item("mode", ino.mode)?;
        d.set_item("uid", ino.uid)?;
        d.set_item("gid", ino.gid)?;
        d.set_item("size", ino.size)?;
        d.set_item("mtime", (ino.mtime.sec, ino.mtime.nsec))?;
        d.set_item("nlink", ino.nlink)?;
        d.set_item("rdev", ino.rdev)?;
        let xattrs = PyList::empty(py);
        for x in &ino.xattrs {
            xattrs.append(PyTuple::new(
                py,
                [PyBytes::new(py, &x.key), PyBytes::new(py, &x.value)],
            )?)?;
        }
        d.set_item("xattrs", xattrs)?;
        let (mut target, mut inline, mut payload, mut digest) = (None, None, None, None);
        match &ino.data {
            InodeData::Symlink { target: t } => target = Some(PyBytes::new(py, t)),
            InodeData::Regular {
                inline: i,
                payload: p,
                digest: dg,
            } => {
                inline = i.as_ref().map(|b| PyBytes::new(py, b));
                payload = p.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                digest = dg.as_ref().map(|b| hex(b));
            }
            _ => {}
        }
        d.set_item("target", target)?;
        d.set_item("inline", inline)?;
        d.set_item("payload", payload)?;
        d.set_item("digest", digest)?;
        out.append(d)?;
    }
    Ok(out)
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

/// The `stats` and `store` (None without a store) items of a scanning binding's result.
fn set_scan_items(
    py: Python<'_>,
    d: &Bound<'_, PyDict>,
    stats: &ScanStats,
    distinct_objects: u64,
    store: Option<&StoreStats>,
) -> PyResult<()> {
    d.set_item("stats", stats_dict(py, stats, distinct_objects)?)?;
    d.set_item("store", store.map(|s| store_dict(py, s)).transpose()?)
}

/// Scan `source` into a tree (see `crate::scan`); with `store`, insert every object-backed
/// file into that object store and `syncfs` it at the end when `sync` is true.
/// Returns {"stats": {...}, "store": {...} | None, "entries": [...] | None}.
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
) -> PyResult<Bound<'py, PyDict>> {
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
    let d = PyDict::new(py);
    set_scan_items(py, &d, &stats, objects.0, store_stats.as_ref())?;
    if entries {
        d.set_item("entries", entries_list(py, &tree)?)?;
    } else {
        d.set_item("entries", py.None())?;
    }
    Ok(d)
}

/// Scan `source` (filling `store` when given), write the composefs image of the tree to
/// `image_path` atomically (when given; its bytes under `image` with `return_image`), `syncfs`
/// the store and the image's filesystem when `sync`. Returns the image's `digest`, `version`,
/// counts, and the scan's `stats` and `store` dicts.
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
) -> PyResult<Bound<'py, PyDict>> {
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
    let ((built, objects), stats, store_stats) = py.allow_threads(|| {
        scan_into_store(&source, &opts, store.as_deref(), progress.as_deref(), sync, |tree| {
            let built = build::build_counting(&tree, &wopts, image_path.as_deref(), return_image).map_err(build_err)?;
            tree.drop_in_background();
            Ok(built)
        })
    })?;
    let d = super::image::built_dict(py, &built, objects)?;
    set_scan_items(py, &d, &stats, objects.0, store_stats.as_ref())?;
    if let Some(bytes) = &built.bytes {
        d.set_item("image", PyBytes::new(py, bytes))?;
    }
    Ok(d)
}

/// Insert one file into an object store; returns (hex digest, size, "stored" | "reused").
#[pyfunction]
fn store_insert(
    py: Python<'_>,
    store: &Bound<'_, PyAny>,
    path: &Bound<'_, PyAny>,
) -> PyResult<(String, u64, &'static str)> {
    let (store, path) = (to_path(store)?, to_path(path)?);
    py.allow_threads(|| {
        let s = Store::open(&store).map_err(|e| e.to_pyerr())?;
        let (d, size, how) = s.insert_path(&path).map_err(|e| e.to_pyerr())?;
        Ok((
            hex(&d),
            size,
            if how == store::Inserted::Stored {
                "stored"
            } else {
                "reused"
            },
        ))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ScanProgress>()?;
    m.add_class::<ScanSnapshot>()?;
    m.add_function(wrap_pyfunction!(scan_directory, m)?)?;
    m.add_function(wrap_pyfunction!(store_insert, m)?)?;
    m.add_function(wrap_pyfunction!(build_from_directory, m)?)?;
    m.add("INLINE_MAX", scan::INLINE_MAX)?;
    Ok(())
}
