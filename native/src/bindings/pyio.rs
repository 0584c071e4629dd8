// SPDX-License-Identifier: MIT OR Apache-2.0
//! Python file-like objects as Rust readers.
use pyo3::prelude::*;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// A Python object's `read(n)` as an `io::Read`; the first Python exception is kept so the
/// caller can raise it unchanged (a network timeout stays a timeout).
pub struct PyRead {
    obj: Py<PyAny>,
    error: Arc<Mutex<Option<PyErr>>>,
}

impl Read for PyRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(1 << 20);
        Python::with_gil(|py| {
            let r = self
                .obj
                .call_method1(py, "read", (want,))
                .and_then(|o| o.extract::<pyo3::pybacked::PyBackedBytes>(py));
            match r {
                Ok(b) if b.len() <= want => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(b.len())
                }
                Ok(_) => Err(io::Error::other("read() returned more than asked")),
                Err(e) => {
                    let msg = e.to_string();
                    self.error.lock().unwrap().get_or_insert(e);
                    Err(io::Error::other(msg))
                }
            }
        })
    }
}

impl PyRead {
    pub fn new(obj: Py<PyAny>, error: Arc<Mutex<Option<PyErr>>>) -> PyRead {
        PyRead { obj, error }
    }
}
