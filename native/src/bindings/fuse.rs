//! Bindings for the FUSE server (`crate::fuse`).
use super::errors::{os_error, FormatError};
use crate::fuse::{self, FuseError, Options};
use pyo3::prelude::*;
use std::path::PathBuf;

/// Serve `image` at `mountpoint` (read-only, objects from `basedirs`, checked at
/// `verity_check` 0|1|2) until it is unmounted, with `threads` serving threads (0: default) and
/// FUSE passthrough of object reads when `passthrough` and the kernel allows it. Blocks, with the
/// GIL released.
#[pyfunction]
#[pyo3(signature = (image, mountpoint, basedirs, verity_check=1, fsname="composefs", threads=0, passthrough=true))]
#[allow(clippy::too_many_arguments)]
fn fuse_serve(
    py: Python<'_>,
    image: PathBuf,
    mountpoint: PathBuf,
    basedirs: Vec<PathBuf>,
    verity_check: u8,
    fsname: &str,
    threads: usize,
    passthrough: bool,
) -> PyResult<()> {
    let opts = Options {
        basedirs,
        verity_check,
        threads,
        passthrough,
    };
    py.allow_threads(|| fuse::serve(&image, &mountpoint, opts, fsname))
        .map_err(|e| match e {
            FuseError::Io { path, source } => os_error(&source, Some(&path)),
            e => FormatError::new_err(e.to_string()),
        })
}

/// Check that `image` can be served (read and validated) without mounting it.
#[pyfunction]
fn fuse_check(py: Python<'_>, image: PathBuf) -> PyResult<()> {
    py.allow_threads(|| {
        fuse::CfsFuse::load(
            &image,
            Options {
                basedirs: vec![],
                verity_check: 0,
                threads: 0,
                passthrough: false,
            },
        )
        .map(|_| ())
    })
    .map_err(|e| match e {
        FuseError::Io { path, source } => os_error(&source, Some(&path)),
        e => FormatError::new_err(e.to_string()),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fuse_serve, m)?)?;
    m.add_function(wrap_pyfunction!(fuse_check, m)?)?;
    Ok(())
}
