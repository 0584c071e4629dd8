// SPDX-License-Identifier: MIT OR Apache-2.0
//! Pieces shared by the result classes of several bindings: bytes as Python `bytes`, an
//! extended attribute, and an object put into a store.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::convert::Infallible;

/// Bytes kept by a result class and handed to Python as `bytes` (a `Vec<u8>` field would
/// become a list of ints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl<'py> IntoPyObject<'py> for &Bytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Infallible> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// An fs-verity digest kept by a result class as its bytes and handed to Python as lower-case
/// hex (`str`): the hex is made only when Python reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HexDigest(pub crate::tree::Digest);

impl<'py> IntoPyObject<'py> for &HexDigest {
    type Target = PyString;
    type Output = Bound<'py, PyString>;
    type Error = Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Infallible> {
        Ok(PyString::new(py, &crate::dump::hex(&self.0)))
    }
}

/// One extended attribute: its full name (`user.x`, `trusted.overlay.opaque`, ...) and value,
/// both as bytes (neither need be UTF-8).
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct Xattr {
    key: Bytes,
    value: Bytes,
}

impl Xattr {
    pub fn of(x: &crate::tree::Xattr) -> Xattr {
        Xattr {
            key: Bytes(x.key.clone()),
            value: Bytes(x.value.clone()),
        }
    }
}

#[pymethods]
impl Xattr {
    fn __repr__(&self) -> String {
        format!(
            "Xattr(key={}, value={})",
            bytes_repr(&self.key.0),
            bytes_repr(&self.value.0)
        )
    }
}

/// One object put into an object store: its fs-verity digest (hex), its size, and whether this
/// call wrote it (`"stored"`) or found it there already (`"reused"`). What `store_insert`,
/// `store_insert_many` and `ObjectStore.insert_stream` return.
#[pyclass(module = "composefs._native", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct StoredObject {
    digest: String,
    size: u64,
    action: &'static str,
}

impl StoredObject {
    pub fn new(digest: &crate::tree::Digest, size: u64, how: crate::store::Inserted) -> StoredObject {
        StoredObject {
            digest: crate::dump::hex(digest),
            size,
            action: match how {
                crate::store::Inserted::Stored => "stored",
                crate::store::Inserted::Reused => "reused",
            },
        }
    }
}

#[pymethods]
impl StoredObject {
    fn __repr__(&self) -> String {
        format!(
            "StoredObject(digest='{}', size={}, action='{}')",
            self.digest, self.size, self.action
        )
    }
}

/// `bytes` as Python's repr shows it: `b'...'` with `\xNN` escapes.
pub fn bytes_repr(b: &[u8]) -> String {
    let mut s = String::from("b'");
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('\'');
    s
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Xattr>()?;
    m.add_class::<StoredObject>()
}
