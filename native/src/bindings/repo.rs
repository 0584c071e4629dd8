// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::repo` (a repository's lookup rules): `Error::User` becomes
//! `composefs.errors.CfsError(message, path)`, `Error::Io` an `OSError` naming its path.

use super::errors::os_error;
use super::scan::to_path;
use crate::repo::{self, Error, Repo};
use pyo3::prelude::*;
use std::borrow::Cow;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Io { source, path } => os_error(&source, Some(&path)),
        Error::User { message, path } => Python::with_gil(|py| {
            let cls = match py.import("composefs.errors").and_then(|m| m.getattr("CfsError")) {
                Ok(c) => c,
                Err(e) => return e,
            };
            match cls.call1((message, path.map(|p| p.into_os_string()))) {
                Ok(v) => PyErr::from_value(v),
                Err(e) => e,
            }
        }),
    }
}

fn open(path: &Bound<'_, PyAny>) -> PyResult<Repo> {
    Repo::at(&to_path(path)?).map_err(to_py)
}

fn name_bytes(name: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    Ok(to_path(name)?.as_os_str().as_bytes().to_vec())
}

/// Why NAME cannot be an image name, or None.
#[pyfunction]
fn repo_name_problem(name: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    Ok(repo::name_problem(&name_bytes(name)?))
}

/// CfsError unless NAME is a valid image name.
#[pyfunction]
fn repo_check_name(name: &Bound<'_, PyAny>) -> PyResult<()> {
    repo::check_name(&name_bytes(name)?).map_err(to_py)
}

/// The uids a repository trusts (its owner's, root's).
#[pyfunction]
fn repo_trusted(path: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    Ok(open(path)?.trusted().to_vec())
}

/// A descriptor of a plain file of a trusted owner (never a symlink, never a FIFO's wait).
#[pyfunction]
fn repo_open_plain(path: &Bound<'_, PyAny>, trusted: Vec<u32>, what: &str) -> PyResult<RawFd> {
    Ok(repo::open_plain(&to_path(path)?, &trusted, what)
        .map_err(to_py)?
        .into_raw_fd())
}

/// The bytes of a small plain file of a trusted owner.
#[pyfunction]
fn repo_read_plain(path: &Bound<'_, PyAny>, trusted: Vec<u32>, what: &str) -> PyResult<Cow<'static, [u8]>> {
    repo::read_plain(&to_path(path)?, &trusted, what)
        .map(Cow::Owned)
        .map_err(to_py)
}

/// The bytes of the repository's meta.json.
#[pyfunction]
fn repo_meta(path: &Bound<'_, PyAny>) -> PyResult<Cow<'static, [u8]>> {
    open(path)?.meta().map(Cow::Owned).map_err(to_py)
}

#[pyfunction]
fn repo_check_layout(path: &Bound<'_, PyAny>) -> PyResult<()> {
    open(path)?.check_layout().map_err(to_py)
}

/// Take the repository lock: its descriptor (the caller closes it to release the lock), then
/// calls `repo_clean_temporaries` (the two steps of `Repo::lock`, apart so the wait is timed alone).
#[pyfunction]
fn repo_lock(py: Python<'_>, path: &Bound<'_, PyAny>, exclusive: bool) -> PyResult<RawFd> {
    let r = open(path)?;
    let lock = py.allow_threads(|| r.flock(exclusive)).map_err(to_py)?;
    Ok(lock.0.into_raw_fd())
}

/// Remove what writers that are gone left behind (with the lock held); returns how many.
#[pyfunction]
fn repo_clean_temporaries(py: Python<'_>, path: &Bound<'_, PyAny>) -> PyResult<u64> {
    let r = open(path)?;
    py.allow_threads(|| r.clean_temporaries()).map_err(to_py)
}

/// The digest NAME|DIGEST|PREFIX names.
#[pyfunction]
fn repo_resolve(path: &Bound<'_, PyAny>, name: &Bound<'_, PyAny>) -> PyResult<String> {
    open(path)?.resolve(&name_bytes(name)?).map_err(to_py)
}

/// The image file of NAME|DIGEST in a repository and the digest to give its mount: None when
/// the file had no fs-verity and its digest was computed and checked here instead.
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct MountableImage {
    path: std::path::PathBuf,
    digest: Option<String>,
}

#[pymethods]
impl MountableImage {
    fn __repr__(&self) -> String {
        format!(
            "MountableImage(path={:?}, digest={})",
            self.path.display().to_string(),
            self.digest.as_deref().map_or("None".into(), |d| format!("'{d}'"))
        )
    }
}

/// The image of NAME|DIGEST, checked for mounting (see `MountableImage`).
#[pyfunction]
fn repo_image_for_mount(py: Python<'_>, path: &Bound<'_, PyAny>, name: &Bound<'_, PyAny>) -> PyResult<MountableImage> {
    let (r, name) = (open(path)?, name_bytes(name)?);
    let (path, digest) = py.allow_threads(|| r.image_for_mount(&name)).map_err(to_py)?;
    Ok(MountableImage { path, digest })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MountableImage>()?;
    m.add_function(wrap_pyfunction!(repo_name_problem, m)?)?;
    m.add_function(wrap_pyfunction!(repo_check_name, m)?)?;
    m.add_function(wrap_pyfunction!(repo_trusted, m)?)?;
    m.add_function(wrap_pyfunction!(repo_open_plain, m)?)?;
    m.add_function(wrap_pyfunction!(repo_read_plain, m)?)?;
    m.add_function(wrap_pyfunction!(repo_meta, m)?)?;
    m.add_function(wrap_pyfunction!(repo_check_layout, m)?)?;
    m.add_function(wrap_pyfunction!(repo_lock, m)?)?;
    m.add_function(wrap_pyfunction!(repo_clean_temporaries, m)?)?;
    m.add_function(wrap_pyfunction!(repo_resolve, m)?)?;
    m.add_function(wrap_pyfunction!(repo_image_for_mount, m)?)?;
    m.add("REPO_META", pyo3::types::PyBytes::new(m.py(), repo::META))?;
    m.add("REPO_NAME_MAX", repo::NAME_MAX)?;
    Ok(())
}
