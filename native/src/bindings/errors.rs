// SPDX-License-Identifier: MIT OR Apache-2.0
//! Mapping of the core's typed errors to Python exceptions.
//!
//! I/O errors become `OSError` (with errno and filename, so Python sees e.g. `FileNotFoundError`);
//! invalid arguments become `ValueError`; format errors become `composefs._native.FormatError`,
//! a `ValueError` subclass.

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _native,
    FormatError,
    PyValueError,
    "Malformed input: a dump or image that does not follow the format."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FormatError", m.py().get_type::<FormatError>())?;
    Ok(())
}

/// Build an `OSError(errno, strerror, filename)` from an `io::Error` and the path it concerns.
pub fn os_error(err: &std::io::Error, path: Option<&std::path::Path>) -> PyErr {
    let errno = err.raw_os_error().unwrap_or(libc::EIO);
    let msg = match err.raw_os_error() {
        Some(_) => std::io::Error::from_raw_os_error(errno).to_string(),
        None => err.to_string(),
    };
    // Strip the " (os error N)" suffix Rust appends.
    let msg = match msg.find(" (os error") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    match path {
        // As an OsString: Python gets the name exactly (os.fsdecode form, surrogateescape), so
        // a non-UTF-8 path survives into the message and os.fsencode(e.filename) gives its bytes.
        Some(p) => PyOSError::new_err((errno, msg, p.as_os_str().to_os_string())),
        None => PyOSError::new_err((errno, msg)),
    }
}

/// Errors from the core convert to Python through this trait.
pub trait ToPyErr {
    fn to_pyerr(&self) -> PyErr;
}

pub fn to_pyerr<E: ToPyErr>(e: E) -> PyErr {
    e.to_pyerr()
}
