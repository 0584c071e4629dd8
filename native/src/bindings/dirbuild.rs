//! Binding that builds an image straight from a directory: scan (filling an object store) and
//! write, without a dump in between. Used by the repository (`cfsctl import DIR`).

use super::errors::ToPyErr;
use crate::erofs::build;
use crate::erofs::writer::Options;
use crate::scan::{self, ScanOptions};
use crate::store::Store;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Scan `source` (inserting object-backed files into the store at `store`, then syncing it),
/// write the image atomically to `image_path`; returns {"digest", "image_size", "entries",
/// "objects", "object_bytes"}.
#[pyfunction]
#[pyo3(signature = (source, image_path, store, *, no_hardlinks=false, threads=0, min_version=0, max_version=1))]
fn build_from_directory<'py>(
    py: Python<'py>,
    source: PathBuf,
    image_path: PathBuf,
    store: PathBuf,
    no_hardlinks: bool,
    threads: usize,
    min_version: u32,
    max_version: u32,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScanOptions { no_hardlinks, threads, ..Default::default() };
    let (built, stats, objects) = py.allow_threads(|| -> PyResult<_> {
        let store = Store::open(&store).map_err(|e| e.to_pyerr())?;
        let (tree, stats) = scan::scan(&source, &opts, Some(&store), None).map_err(|e| e.to_pyerr())?;
        store.sync().map_err(|e| e.to_pyerr())?;
        let built = build::build(&tree, &Options { min_version, max_version, threads })
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        build::write_atomic(&image_path, &built.image.bytes).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((built, stats, build::object_stats(&tree)))
    })?;
    let d = PyDict::new(py);
    d.set_item("digest", crate::dump::write::hex_digest(&built.digest))?;
    d.set_item("image_size", built.image.stats.image_size)?;
    d.set_item("entries", stats.entries)?;
    d.set_item("objects", objects.0)?;
    d.set_item("object_bytes", objects.1)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_from_directory, m)?)?;
    Ok(())
}
