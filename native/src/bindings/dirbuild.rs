//! Binding that builds an image straight from a directory: scan (optionally filling an object
//! store) and write, without a dump in between. Used by `cfsctl build DIR` and the repository.

use super::errors::ToPyErr;
use crate::erofs::build;
use crate::erofs::writer::Options;
use crate::scan::{self, ScanOptions};
use crate::store::Store;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::path::PathBuf;

/// Scan `source` (inserting object-backed files into the store at `store` when given, then
/// syncing it), write the image atomically to `image_path` when given; returns the same dict as
/// `build_from_dump` plus `entries` (directory entries scanned).
#[pyfunction]
#[pyo3(signature = (source, image_path=None, store=None, *, no_hardlinks=false, threads=0, min_version=0,
                    max_version=1, use_epoch=false, skip_devices=false, skip_xattrs=false,
                    user_xattrs=false, return_image=false))]
#[allow(clippy::too_many_arguments)]
fn build_from_directory<'py>(
    py: Python<'py>,
    source: PathBuf,
    image_path: Option<PathBuf>,
    store: Option<PathBuf>,
    no_hardlinks: bool,
    threads: usize,
    min_version: u32,
    max_version: u32,
    use_epoch: bool,
    skip_devices: bool,
    skip_xattrs: bool,
    user_xattrs: bool,
    return_image: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScanOptions { no_hardlinks, threads, use_epoch, skip_devices, skip_xattrs, user_xattrs };
    let (built, stats, objects) = py.allow_threads(|| -> PyResult<_> {
        let store = match &store {
            Some(p) => Some(Store::open(p).map_err(|e| e.to_pyerr())?),
            None => None,
        };
        let (tree, stats) = scan::scan(&source, &opts, store.as_ref(), None).map_err(|e| e.to_pyerr())?;
        if let Some(s) = &store {
            s.sync().map_err(|e| e.to_pyerr())?;
        }
        let built = build::build(&tree, &Options { min_version, max_version, threads })
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if let Some(p) = &image_path {
            build::write_atomic(p, &built.image.bytes).map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        Ok((built, stats, build::object_stats(&tree)))
    })?;
    let d = PyDict::new(py);
    let s = &built.image.stats;
    d.set_item("digest", crate::dump::write::hex_digest(&built.digest))?;
    d.set_item("version", built.image.version)?;
    d.set_item("image_size", s.image_size)?;
    d.set_item("entries", stats.entries)?;
    d.set_item("inodes", s.inodes)?;
    d.set_item("directories", s.directories)?;
    d.set_item("regular_files", s.regular_files)?;
    d.set_item("inline_files", s.inline_files)?;
    d.set_item("object_files", s.object_files)?;
    d.set_item("symlinks", s.symlinks)?;
    d.set_item("devices", s.devices)?;
    d.set_item("whiteouts", s.whiteouts)?;
    d.set_item("hardlinks", s.hardlinks)?;
    d.set_item("shared_xattrs", s.shared_xattrs)?;
    d.set_item("objects", objects.0)?;
    d.set_item("object_bytes", objects.1)?;
    d.set_item("file_bytes", objects.2)?;
    d.set_item("deduplicated_bytes", objects.2 - objects.1.min(objects.2))?;
    if return_image {
        d.set_item("image", PyBytes::new(py, &built.image.bytes))?;
    }
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_from_directory, m)?)?;
    Ok(())
}
