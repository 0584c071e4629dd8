// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for fetching objects from elsewhere into a store: an open [`Store`] that takes
//! streams which must hash to a given digest, and the (object, size) list of an image.
use super::errors::{os_error, to_pyerr, FormatError};
use super::pyio::PyRead;
use crate::erofs::reader;
use crate::store::{Inserted, Store};
use crate::tree::InodeData;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn parse_hex(hex: &str) -> PyResult<[u8; 32]> {
    let bad = || PyValueError::new_err(format!("invalid object digest {hex:?}"));
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    if hex.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err(bad());
    }
    Ok(d)
}

/// An object store opened once (leftover temporaries of dead processes swept then).
#[pyclass(frozen, module = "composefs._native")]
struct ObjectStore {
    store: Arc<Store>,
}

#[pymethods]
impl ObjectStore {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<ObjectStore> {
        let store = py.allow_threads(|| Store::open(&path)).map_err(to_pyerr)?;
        Ok(ObjectStore { store: Arc::new(store) })
    }

    /// Whether the object with this (hex) digest is in the store.
    fn contains(&self, digest: &str) -> PyResult<bool> {
        Ok(self.store.contains(&parse_hex(digest)?))
    }

    /// Store what `source.read(n)` yields as object `digest` (hex), at most `max` bytes; it is
    /// hashed before it gets a name, and FormatError("... does not match its digest") leaves
    /// nothing behind. Returns (size, "stored" | "reused"). The source's own exceptions are
    /// raised unchanged.
    fn insert_stream(
        &self,
        py: Python<'_>,
        source: Py<PyAny>,
        digest: &str,
        max: u64,
    ) -> PyResult<(u64, &'static str)> {
        let want = parse_hex(digest)?;
        let error = Arc::new(Mutex::new(None));
        let reader = PyRead::new(source, error.clone());
        let name = PathBuf::from(crate::store::object_name(&want));
        let store = self.store.clone();
        let r = py.allow_threads(|| store.insert_expected(reader, &want, max, &name));
        if let Some(e) = error.lock().unwrap().take() {
            return Err(e);
        }
        let (size, how) = r.map_err(to_pyerr)?;
        Ok((size, if how == Inserted::Stored { "stored" } else { "reused" }))
    }

    /// Flush the store's filesystem (one `syncfs`).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store.clone();
        py.allow_threads(|| store.sync()).map_err(to_pyerr)
    }
}

/// The distinct objects an image refers to: (`XX/<62 hex>`, hex digest, size), sorted by name.
#[pyfunction]
fn image_objects_sized(py: Python<'_>, image_path: PathBuf) -> PyResult<Vec<(String, String, u64)>> {
    py.allow_threads(|| {
        let bytes = std::fs::read(&image_path).map_err(|e| os_error(&e, Some(Path::new(&image_path))))?;
        let loaded = reader::read_image(&bytes).map_err(|e| FormatError::new_err(e.to_string()))?;
        let mut out: Vec<(String, String, u64)> = Vec::new();
        for ino in &loaded.tree.inodes {
            if let InodeData::Regular {
                payload: Some(p),
                digest,
                ..
            } = &ino.data
            {
                let name = String::from_utf8_lossy(p).into_owned();
                let hex: String = match digest {
                    Some(d) => crate::dump::write::hex_digest(d),
                    None => name.replace('/', ""),
                };
                out.push((name, hex, ino.size));
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ObjectStore>()?;
    m.add_function(wrap_pyfunction!(image_objects_sized, m)?)?;
    Ok(())
}
