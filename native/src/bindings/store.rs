// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::store`: inserting many files into an object store in one call (the
//! store opened once, the files hashed and copied on the rayon pool with the GIL released).

use super::errors::ToPyErr;
use super::scan::to_path;
use super::types::StoredObject;
use crate::store::Store;
use pyo3::prelude::*;
use rayon::prelude::*;

/// Insert every file of `paths` into the object store at `store`, in parallel; returns one
/// StoredObject per path, in order. The first error (in path order)
/// is raised; files inserted before it stay in the store (unreferenced objects are what
/// `gc` removes).
#[pyfunction]
fn store_insert_many(
    py: Python<'_>,
    store: &Bound<'_, PyAny>,
    paths: Vec<Bound<'_, PyAny>>,
) -> PyResult<Vec<StoredObject>> {
    let store = to_path(store)?;
    let paths = paths.iter().map(to_path).collect::<PyResult<Vec<_>>>()?;
    py.allow_threads(|| {
        let s = Store::open(&store).map_err(|e| e.to_pyerr())?;
        let results: Vec<_> = paths.par_iter().map(|p| s.insert_path(p)).collect();
        results
            .into_iter()
            .map(|r| {
                let (d, size, how) = r.map_err(|e| e.to_pyerr())?;
                Ok(StoredObject::new(&d, size, how))
            })
            .collect()
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(store_insert_many, m)?)?;
    Ok(())
}
