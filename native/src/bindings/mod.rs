//! Thin pyo3 bindings: argument conversion, GIL release, error mapping. No policy here.

use pyo3::prelude::*;

mod errors;
mod fsverity;
mod image;
mod oci;
mod scan;
mod store;

pub use errors::to_pyerr;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    fsverity::register(m)?;
    image::register(m)?;
    oci::register(m)?;
    scan::register(m)?;
    store::register(m)?;
    Ok(())
}
