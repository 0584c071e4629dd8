// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for the FUSE server (`crate::fuse`).
use super::errors::{os_error, FormatError};
use crate::fuse::{self, FuseError, Options};
use pyo3::prelude::*;
use std::path::PathBuf;

/// Serve `image` at `mountpoint` (read-only, objects from `basedirs`, checked at
/// `verity_check` 0|1|2) until it is unmounted, with `threads` serving threads (0: default) and
/// FUSE passthrough of object reads when `passthrough` and the kernel allows it. Blocks, with the
/// GIL released. `fetch(hex_digest, size) -> errno` (0: stored in the first basedir) is called,
/// with the GIL, for an object missing from every basedir; an exception it raises is EIO. With
/// `exit_when_unmounted` the process exits (status 0) as soon as the mount is gone.
#[pyfunction]
#[pyo3(signature = (image, mountpoint, basedirs, verity_check=1, fsname="composefs", threads=0, passthrough=true, fetch=None, exit_when_unmounted=false))]
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
    fetch: Option<PyObject>,
    exit_when_unmounted: bool,
) -> PyResult<()> {
    let fetch: Option<fuse::Fetch> = fetch.map(|f| {
        Box::new(move |hex: &str, size: u64| {
            Python::with_gil(|py| match f.call1(py, (hex, size)).and_then(|r| r.extract::<i32>(py)) {
                Ok(0) => Ok(()),
                Ok(e) if e > 0 => Err(e),
                _ => Err(libc::EIO),
            })
        }) as fuse::Fetch
    });
    let opts = Options {
        basedirs,
        verity_check,
        threads,
        passthrough,
        fetch,
        exit_when_unmounted,
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
                fetch: None,
                exit_when_unmounted: false,
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
