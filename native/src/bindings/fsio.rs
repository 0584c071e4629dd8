// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::fsio`: the file protocols Python uses (fs-verity, atomic files,
//! temporaries, whether a pid lives) without a copy of its own.

use super::errors::os_error;
use super::scan::to_path;
use super::types::{bytes_repr, Bytes};
use crate::fsio;
use pyo3::prelude::*;
use rustix::fd::BorrowedFd;
use std::os::fd::RawFd;

/// Borrow a descriptor Python holds for the length of one call.
fn borrow(fd: RawFd) -> PyResult<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "bad file descriptor {fd}"
        )));
    }
    // SAFETY: the caller passes a descriptor it keeps open for the duration of the call, and
    // the borrow does not outlive the call (the functions below use it and return).
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Enable fs-verity (sha256, 4 KiB blocks) on a read-only descriptor. True when the file has it
/// now, False where the filesystem has no fs-verity; OSError for anything else.
#[pyfunction]
fn enable_verity(py: Python<'_>, fd: RawFd) -> PyResult<bool> {
    let fd = borrow(fd)?;
    match py.allow_threads(|| fsio::enable_verity(fd)) {
        Ok(v) => Ok(v != fsio::Verity::Unsupported),
        Err(e) => Err(os_error(&e, None)),
    }
}

/// What FS_IOC_MEASURE_VERITY reports of a file: its hash algorithm (`FS_VERITY_HASH_ALG_*`: 1
/// sha256, 2 sha512) and its fs-verity digest.
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(PartialEq)]
pub struct VerityMeasurement {
    algorithm: u16,
    digest: Bytes,
}

#[pymethods]
impl VerityMeasurement {
    fn __repr__(&self) -> String {
        format!(
            "VerityMeasurement(algorithm={}, digest={})",
            self.algorithm,
            bytes_repr(&self.digest.0)
        )
    }
}

/// FS_IOC_MEASURE_VERITY on a file with fs-verity; OSError (ENODATA, ENOTTY, EOPNOTSUPP…)
/// otherwise.
#[pyfunction]
fn measure_verity(fd: RawFd) -> PyResult<VerityMeasurement> {
    let (algorithm, d) = fsio::measure_verity(borrow(fd)?).map_err(|e| os_error(&e, None))?;
    Ok(VerityMeasurement {
        algorithm,
        digest: Bytes(d),
    })
}

/// Whether process `pid` exists.
#[pyfunction]
fn pid_alive(pid: u32) -> bool {
    fsio::pid_alive(pid)
}

/// Whether a file name is one of the toolchain's temporaries (today's scheme or an earlier one).
#[pyfunction]
fn is_temp_name(name: &Bound<'_, PyAny>) -> PyResult<bool> {
    use std::os::unix::ffi::OsStrExt;
    Ok(fsio::is_temp_name(to_path(name)?.as_os_str().as_bytes()))
}

/// Remove every temporary in `dir` whose writer no longer runs; returns how many.
#[pyfunction]
fn sweep_temporaries(py: Python<'_>, dir: &Bound<'_, PyAny>) -> PyResult<u64> {
    let dir = to_path(dir)?;
    py.allow_threads(|| fsio::sweep(&dir, fsio::Sweep::All))
        .map_err(|e| os_error(&e, Some(&dir)))
}

/// Write `data` to `path` atomically (temporary beside it, fsync, rename), with exactly `mode`
/// when given, else 0666 less the umask.
#[pyfunction]
#[pyo3(signature = (path, data, mode=None))]
fn write_atomic(py: Python<'_>, path: &Bound<'_, PyAny>, data: &[u8], mode: Option<u32>) -> PyResult<()> {
    let path = to_path(path)?;
    let mode = mode.map_or(fsio::FileMode::Umask, fsio::FileMode::Exact);
    py.allow_threads(|| fsio::write_atomic(&path, data, mode))
        .map_err(|e| os_error(&e, Some(&path)))
}

/// For an entry point that owns its process (the CLI): raise the open-files soft limit to the
/// hard one and give a scan's freed memory back. Library calls never do either on their own.
#[pyfunction]
fn configure_process() {
    crate::process::configure_for_cli()
}

/// Check an option combination (ValueError with the one wording when they conflict).
#[pyfunction]
#[pyo3(signature = (*, skip_xattrs=false, user_xattrs=false))]
fn check_options(skip_xattrs: bool, user_xattrs: bool) -> PyResult<()> {
    crate::erofs::build::check_options(skip_xattrs, user_xattrs)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<VerityMeasurement>()?;
    m.add_function(wrap_pyfunction!(check_options, m)?)?;
    m.add_function(wrap_pyfunction!(configure_process, m)?)?;
    m.add_function(wrap_pyfunction!(enable_verity, m)?)?;
    m.add_function(wrap_pyfunction!(measure_verity, m)?)?;
    m.add_function(wrap_pyfunction!(pid_alive, m)?)?;
    m.add_function(wrap_pyfunction!(is_temp_name, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_temporaries, m)?)?;
    m.add_function(wrap_pyfunction!(write_atomic, m)?)?;
    Ok(())
}
