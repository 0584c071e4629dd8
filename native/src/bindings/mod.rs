// SPDX-License-Identifier: MIT OR Apache-2.0
//! Thin pyo3 bindings: argument conversion, GIL release, error mapping. No policy here.

use pyo3::prelude::*;

mod errors;
mod fsio;
mod fsverity;
mod fuse;
mod image;
mod mount;
mod oci;
mod pyio;
mod remote;
mod repo;
mod scan;
mod store;
mod types;

pub use errors::to_pyerr;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    fsio::register(m)?;
    fsverity::register(m)?;
    fuse::register(m)?;
    image::register(m)?;
    mount::register(m)?;
    oci::register(m)?;
    remote::register(m)?;
    repo::register(m)?;
    scan::register(m)?;
    store::register(m)?;
    types::register(m)?;
    Ok(())
}
