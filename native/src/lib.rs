// SPDX-License-Identifier: MIT OR Apache-2.0
//! Rust core of the composefs toolchain.
//!
//! Each concern has its own module; the pyo3 layer in [`bindings`] stays thin and only converts
//! arguments, results and errors.

pub mod dump;
pub mod erofs;
pub mod fetch;
pub mod fuse;
pub mod http;
pub mod oci;
pub mod process;
pub mod scan;
pub mod store;
pub mod tree;

mod bindings;

// The shared rules (base/), under the paths the core has always used.
pub use composefs_base::{fsio, fsverity, hash, repo};

use pyo3::prelude::*;

/// The `composefs._native` extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    bindings::register(m)
}
