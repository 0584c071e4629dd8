// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for fetching objects from elsewhere into a store: an open [`Store`] that takes
//! streams which must hash to a given digest, the (object, size) list of an image (by name, or
//! in the order a walk of its tree meets them), and the HTTP object fetcher ([`crate::fetch`]).
//! Fetch errors become `composefs._native.FetchError` with `(message, url or None)`; the store's
//! own errors keep their usual types.
use super::errors::{to_pyerr, FormatError};
use super::image::{load_image, read_err, ImageSource};
use super::pyio::PyRead;
use super::types::StoredObject;
use crate::erofs::reader;
use crate::fetch::{self, Fetcher, Object, Outcome};
use crate::store::Store;
use crate::tree::InodeData;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

create_exception!(
    _native,
    FetchError,
    PyException,
    "An object fetch that failed: args are (message, url or None)."
);

fn fetch_err(e: fetch::Error) -> PyErr {
    match e {
        fetch::Error::Store(e) => to_pyerr(e),
        e => {
            let url = e.url().map(str::to_string);
            FetchError::new_err((e.to_string(), url))
        }
    }
}

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
pub struct ObjectStore {
    pub(crate) store: Arc<Store>,
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
    /// nothing behind. The source's own exceptions are raised unchanged.
    fn insert_stream(&self, py: Python<'_>, source: Py<PyAny>, digest: &str, max: u64) -> PyResult<StoredObject> {
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
        Ok(StoredObject::new(&want, size, how))
    }

    /// Flush the store's filesystem (one `syncfs`).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store.clone();
        py.allow_threads(|| store.sync()).map_err(to_pyerr)
    }
}

/// Objects fetched over plain `http://` from a repository at a base URL into an [`ObjectStore`],
/// on keep-alive connections shared by every call (see [`crate::fetch`]).
#[pyclass(frozen, module = "composefs._native")]
struct RemoteFetcher {
    inner: Arc<Fetcher>,
}

#[pymethods]
impl RemoteFetcher {
    #[new]
    #[pyo3(signature = (base_url, store, timeout = 30.0, attempts = 4))]
    fn new(base_url: &str, store: &ObjectStore, timeout: f64, attempts: u32) -> PyResult<RemoteFetcher> {
        if !(timeout > 0.0 && timeout < 1e6) {
            return Err(PyValueError::new_err(format!("bad timeout {timeout}")));
        }
        let opts = fetch::Options {
            timeout: Duration::from_secs_f64(timeout),
            attempts,
            ..fetch::Options::default()
        };
        let inner = Fetcher::new(base_url, store.store.clone(), opts).map_err(fetch_err)?;
        Ok(RemoteFetcher { inner: Arc::new(inner) })
    }

    /// Fetch object `digest` (hex, at most `size` bytes): "stored" or "reused"; a server copy
    /// that does not match is FormatError("... does not match its digest"), nothing stored.
    fn fetch(&self, py: Python<'_>, digest: &str, size: u64) -> PyResult<&'static str> {
        let obj = Object {
            digest: parse_hex(digest)?,
            size,
        };
        let f = self.inner.clone();
        match py.allow_threads(|| f.fetch(&obj)).map_err(fetch_err)? {
            Outcome::Stored => Ok("stored"),
            Outcome::Reused => Ok("reused"),
            Outcome::Refused => Err(FormatError::new_err(format!(
                "{}: content does not match its digest",
                crate::store::object_name(&obj.digest)
            ))),
        }
    }

    /// Fetch every `(hex digest, size)` of `objects`, `jobs` at a time; returns the hex digests
    /// of the refused ones (the others are in the store). `progress(bytes, objects_done)` is
    /// called about four times a second; Ctrl-C (or an exception from `progress`) stops every
    /// fetch at once and is raised.
    #[pyo3(signature = (objects, jobs = 16, progress = None))]
    fn fetch_all(
        &self,
        py: Python<'_>,
        objects: Vec<(String, u64)>,
        jobs: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Vec<String>> {
        let objs = objects
            .iter()
            .map(|(h, size)| {
                Ok(Object {
                    digest: parse_hex(h)?,
                    size: *size,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let f = self.inner.clone();
        let mut raised: Option<PyErr> = None;
        let r = py.allow_threads(|| {
            f.fetch_all(&objs, jobs.max(1), Duration::from_millis(250), || {
                Python::with_gil(|py| {
                    let r = py.check_signals().and_then(|()| match &progress {
                        Some(cb) => cb.call1(py, (f.bytes(), f.done())).map(drop),
                        None => Ok(()),
                    });
                    r.map_err(|e| raised = Some(e)).is_ok()
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let summary = r.map_err(fetch_err)?;
        Ok(summary
            .refused
            .iter()
            .map(|d| crate::dump::write::hex_digest(d))
            .collect())
    }

    /// Body bytes received so far.
    #[getter]
    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
}

/// One object an image refers to: its name in the store as the image records it (`XX/<62
/// hex>`), the hex fs-verity digest the module asks for (the digest the entry records, else the
/// name without its `/`), and its size.
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageObject {
    name: String,
    digest: String,
    size: u64,
}

#[pymethods]
impl ImageObject {
    fn __repr__(&self) -> String {
        format!(
            "ImageObject(name='{}', digest='{}', size={})",
            self.name, self.digest, self.size
        )
    }
}

/// An image read from memory: its entry count (as `image_count_paths` counts them) and its
/// objects (as `image_objects_sized` lists them).
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct ImagePlan {
    entries: u64,
    objects: Vec<Py<ImageObject>>,
}

#[pymethods]
impl ImagePlan {
    fn __repr__(&self) -> String {
        format!(
            "ImagePlan(entries={}, objects=[{} objects])",
            self.entries,
            self.objects.len()
        )
    }
}

/// The object of an inode, if it has one.
fn object_of(ino: &crate::tree::Inode) -> Option<ImageObject> {
    let InodeData::Regular {
        payload: Some(p),
        digest,
        ..
    } = &ino.data
    else {
        return None;
    };
    let name = String::from_utf8_lossy(p).into_owned();
    let digest: String = match digest {
        Some(d) => crate::dump::write::hex_digest(d),
        None => name.replace('/', ""),
    };
    Some(ImageObject {
        name,
        digest,
        size: ino.size,
    })
}

/// The distinct objects of a loaded image, sorted by name.
fn sized_objects(loaded: &reader::Loaded) -> Vec<ImageObject> {
    let mut out: Vec<ImageObject> = loaded.tree.inodes.iter().filter_map(object_of).collect();
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// The distinct objects of a loaded image in the order a depth-first walk of its directories
/// in their stored (name-sorted) order meets them, as `find` and `ls -R` do on a mount, each at
/// the first path that names it.
fn walk_objects(loaded: &reader::Loaded) -> Vec<ImageObject> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    crate::dump::for_each_path(&loaded.tree, |_path, ino, _link| {
        if let Some(o) = object_of(ino) {
            if seen.insert(o.digest.clone()) {
                out.push(o);
            }
        }
        Ok(())
    })
    .expect("the visitor never fails");
    out
}

/// The distinct objects an image refers to in walk order (see [`walk_objects`]). What
/// `cfsctl fetchd` may fetch, and the order it reads ahead in.
#[pyfunction]
fn image_objects_walk(py: Python<'_>, image_path: PathBuf) -> PyResult<Vec<ImageObject>> {
    py.allow_threads(|| Ok(walk_objects(&load_image(&ImageSource::Path(image_path))?)))
}

/// The distinct objects an image refers to, sorted by name.
#[pyfunction]
fn image_objects_sized(py: Python<'_>, image_path: PathBuf) -> PyResult<Vec<ImageObject>> {
    py.allow_threads(|| Ok(sized_objects(&load_image(&ImageSource::Path(image_path))?)))
}

/// An image held in memory, read once: its entry count and its objects.
#[pyfunction]
fn image_bytes_plan(py: Python<'_>, data: &[u8]) -> PyResult<ImagePlan> {
    let (entries, objects) = py.allow_threads(|| {
        let loaded = reader::read_image(data).map_err(read_err)?;
        PyResult::Ok((crate::dump::count_paths(&loaded.tree), sized_objects(&loaded)))
    })?;
    let objects = objects
        .into_iter()
        .map(|o| Py::new(py, o))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(ImagePlan { entries, objects })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ObjectStore>()?;
    m.add_class::<RemoteFetcher>()?;
    m.add_class::<ImageObject>()?;
    m.add_class::<ImagePlan>()?;
    m.add("FetchError", m.py().get_type::<FetchError>())?;
    m.add_function(wrap_pyfunction!(image_objects_sized, m)?)?;
    m.add_function(wrap_pyfunction!(image_objects_walk, m)?)?;
    m.add_function(wrap_pyfunction!(image_bytes_plan, m)?)?;
    Ok(())
}
