// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for container-image input (`crate::oci`): digest checks, layer reading from a Python
//! stream, the kept layer records, the merged image, and the member index of an archive file.
use super::errors::{os_error, FormatError};
use super::image::{count_entries, BuildResult};
use super::pyio::PyRead;
use super::remote::ObjectStore;
use super::types::{bytes_repr, Bytes};
use crate::erofs::build;
use crate::erofs::writer::Options;
use crate::oci::digest::{self, BlobDigest};
use crate::oci::layer::{self, Expect, Layer, LayerError};
use crate::oci::merge;
use crate::oci::tar::{self, Kind, TarReader};
use crate::store::{self, Store};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn parse_digest(s: &str) -> PyResult<BlobDigest> {
    BlobDigest::parse(s).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `s` if it is a valid OCI digest (`sha256:<64 hex>` or `sha512:<128 hex>`); else ValueError.
#[pyfunction]
fn oci_check_digest(s: &str) -> PyResult<String> {
    Ok(parse_digest(s)?.to_string())
}

/// Check `data` against `digest` (and `size` when given); FormatError("digest mismatch" or
/// "digest mismatch (size ...)") otherwise.
#[pyfunction]
#[pyo3(signature = (data, digest, size=None))]
fn oci_verify_bytes(py: Python<'_>, data: &[u8], digest: &str, size: Option<u64>) -> PyResult<()> {
    let want = parse_digest(digest)?;
    py.allow_threads(|| digest::verify_bytes(data, &want, size))
        .map_err(|e| FormatError::new_err(e.to_string()))
}

/// The sha256 digest (`sha256:<hex>`) of `data`.
#[pyfunction]
fn oci_sha256(py: Python<'_>, data: &[u8]) -> String {
    py.allow_threads(|| BlobDigest::of(digest::Algorithm::Sha256, data).to_string())
}

fn layer_err(e: LayerError) -> PyErr {
    match e {
        LayerError::Store(store::Error::Io { path, source }) => os_error(&source, Some(&path)),
        e => FormatError::new_err(e.to_string()),
    }
}

/// One layer read into a list of changes (see `crate::oci::layer`).
#[pyclass(frozen, module = "composefs._native")]
struct OciLayer {
    layer: Arc<Layer>,
}

/// What reading one layer did: its bytes as fetched and unpacked, its entries, and the objects
/// it stored or found already in the store.
#[pyclass(module = "composefs._native", name = "LayerStats", frozen, get_all)]
pub struct LayerCounts {
    compressed_bytes: u64,
    uncompressed_bytes: u64,
    entries: u64,
    objects_stored: u64,
    bytes_stored: u64,
    objects_reused: u64,
    bytes_reused: u64,
}

#[pymethods]
impl LayerCounts {
    fn __repr__(&self) -> String {
        format!(
            "LayerStats(compressed_bytes={}, uncompressed_bytes={}, entries={}, objects_stored={}, bytes_stored={}, \
             objects_reused={}, bytes_reused={})",
            self.compressed_bytes,
            self.uncompressed_bytes,
            self.entries,
            self.objects_stored,
            self.bytes_stored,
            self.objects_reused,
            self.bytes_reused
        )
    }
}

#[pymethods]
impl OciLayer {
    /// Counts of the read (zero for a layer loaded from a record).
    #[getter]
    fn stats(&self) -> LayerCounts {
        let s = &self.layer.stats;
        LayerCounts {
            compressed_bytes: s.compressed_bytes,
            uncompressed_bytes: s.uncompressed_bytes,
            entries: s.entries,
            objects_stored: s.objects_stored,
            bytes_stored: s.bytes_stored,
            objects_reused: s.objects_reused,
            bytes_reused: s.bytes_reused,
        }
    }

    /// Write the layer's record to `path` atomically.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let layer = self.layer.clone();
        py.allow_threads(|| build::write_atomic(&path, &layer.encode()))
            .map_err(|e| match e {
                build::BuildError::Io { path, source } => os_error(&source, Some(&path)),
                e => FormatError::new_err(e.to_string()),
            })
    }

    /// A layer record read back from `path`; FormatError when it is not one.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<OciLayer> {
        let layer = py.allow_threads(|| -> PyResult<Layer> {
            let data = std::fs::read(&path).map_err(|e| os_error(&e, Some(&path)))?;
            Layer::decode(&data).map_err(layer_err)
        })?;
        Ok(OciLayer { layer: Arc::new(layer) })
    }

    /// How many of the layer's objects the store at `store_dir` lacks.
    fn missing_objects(&self, py: Python<'_>, store_dir: PathBuf) -> PyResult<u64> {
        let layer = self.layer.clone();
        py.allow_threads(|| {
            let store = Store::open(&store_dir).map_err(|e| os_error(&io::Error::other(e.to_string()), None))?;
            Ok(layer.objects().filter(|d| !store.contains(d)).count() as u64)
        })
    }
}

/// Read one layer blob from `source` (an object with `read(n) -> bytes`), checking it against
/// `digest`/`size` (the blob) and `diff_id` (the uncompressed tar), storing file contents in
/// `store` (an ObjectStore, or the path of one: an ObjectStore shared by the layers of one
/// image knows which directories it created, see `Store::known`). FormatError on anything
/// wrong with the input; the source's own exceptions are raised unchanged.
#[pyfunction]
#[pyo3(signature = (source, store, *, digest=None, size=None, diff_id=None))]
fn oci_read_layer(
    py: Python<'_>,
    source: Py<PyAny>,
    store: &Bound<'_, PyAny>,
    digest: Option<&str>,
    size: Option<u64>,
    diff_id: Option<&str>,
) -> PyResult<OciLayer> {
    let expect = Expect {
        digest: digest.map(parse_digest).transpose()?,
        size,
        diff_id: diff_id.map(parse_digest).transpose()?,
    };
    let error = Arc::new(Mutex::new(None));
    let reader = PyRead::new(source, error.clone());
    // The store itself, or the path of one to open.
    let store: Result<Arc<Store>, PathBuf> = match store.downcast::<ObjectStore>() {
        Ok(s) => Ok(s.get().store.clone()),
        Err(_) => Err(store.extract()?),
    };
    let r = py.allow_threads(|| -> Result<Layer, LayerError> {
        let store = match store {
            Ok(s) => s,
            Err(dir) => Arc::new(Store::open(&dir)?),
        };
        layer::read_layer(reader, &expect, &store, tar::Limits::default())
    });
    if let Some(e) = error.lock().unwrap().take() {
        return Err(e);
    }
    Ok(OciLayer {
        layer: Arc::new(r.map_err(layer_err)?),
    })
}

/// Apply `layers` in order and write the image to `image_path` (atomically). Returns what was
/// built, as `build_from_dump` does.
#[pyfunction]
#[pyo3(signature = (layers, image_path, *, max_entries=4_000_000))]
fn oci_build_image<'py>(
    py: Python<'py>,
    layers: Vec<PyRef<'py, OciLayer>>,
    image_path: PathBuf,
    max_entries: u64,
) -> PyResult<BuildResult> {
    let layers: Vec<Arc<Layer>> = layers.iter().map(|l| l.layer.clone()).collect();
    let (built, objects, entries) = py.allow_threads(|| -> PyResult<_> {
        let refs: Vec<&Layer> = layers.iter().map(|l| l.as_ref()).collect();
        let tree = merge::merge(&refs, max_entries).map_err(|e| FormatError::new_err(e.to_string()))?;
        let entries = count_entries(&tree);
        let built =
            build::build_counting(&tree, &Options::default(), Some(&image_path), false).map_err(|e| match e {
                build::BuildError::Io { path, source } => os_error(&source, Some(&path)),
                e => FormatError::new_err(e.to_string()),
            })?;
        tree.drop_in_background();
        Ok((built.0, built.1, entries))
    })?;
    BuildResult::new(py, built, objects, entries, None, None)
}

/// One member of a tar archive, from its header: its name, its kind (`"file"`, `"hardlink"`,
/// `"symlink"`, `"dir"` or `"other"`), where its data starts in the archive and how long it is,
/// and its link target (empty unless a link).
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct TarMember {
    name: Bytes,
    kind: &'static str,
    offset: u64,
    size: u64,
    link: Bytes,
}

#[pymethods]
impl TarMember {
    fn __repr__(&self) -> String {
        format!(
            "TarMember(name={}, kind='{}', offset={}, size={}, link={})",
            bytes_repr(&self.name.0),
            self.kind,
            self.offset,
            self.size,
            bytes_repr(&self.link.0)
        )
    }
}

/// A buffered file whose skips seek instead of reading.
struct FileSource(io::BufReader<std::fs::File>);

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl tar::Source for FileSource {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let len = self.0.get_ref().metadata()?.len();
        let pos = self.0.stream_position()?;
        let n = n.min(len.saturating_sub(pos));
        self.0.seek_relative(n as i64)?;
        Ok(n)
    }
}

/// The members of the tar archive at `path`, in archive order. Only headers are read.
#[pyfunction]
fn tar_index(py: Python<'_>, path: PathBuf) -> PyResult<Vec<TarMember>> {
    let entries = py.allow_threads(|| -> PyResult<Vec<tar::Entry>> {
        let f = std::fs::File::open(&path).map_err(|e| os_error(&e, Some(&path)))?;
        let mut r = TarReader::new(FileSource(io::BufReader::new(f)), tar::Limits::default());
        let mut out = Vec::new();
        while let Some(e) = r
            .next_entry()
            .map_err(|e| FormatError::new_err(format!("{}: {e}", Path::new(&path).display())))?
        {
            out.push(e);
        }
        Ok(out)
    })?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let kind = match e.kind {
                Kind::Regular => "file",
                Kind::Hardlink => "hardlink",
                Kind::Symlink => "symlink",
                Kind::Directory => "dir",
                _ => "other",
            };
            TarMember {
                name: Bytes(e.path),
                kind,
                offset: e.data_offset,
                size: e.size,
                link: Bytes(e.link),
            }
        })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(oci_check_digest, m)?)?;
    m.add_function(wrap_pyfunction!(oci_verify_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(oci_sha256, m)?)?;
    m.add_function(wrap_pyfunction!(oci_read_layer, m)?)?;
    m.add_function(wrap_pyfunction!(oci_build_image, m)?)?;
    m.add_function(wrap_pyfunction!(tar_index, m)?)?;
    m.add_class::<OciLayer>()?;
    m.add_class::<TarMember>()?;
    m.add_class::<LayerCounts>()?;
    Ok(())
}
