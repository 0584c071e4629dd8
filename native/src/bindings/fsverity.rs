// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for `crate::fsverity`: argument conversion, GIL release, error mapping.
use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::{os_error, ToPyErr};
use super::to_pyerr;
use crate::fsverity::{self, Chunking, HashAlg, Params};

impl ToPyErr for fsverity::Error {
    fn to_pyerr(&self) -> PyErr {
        use fsverity::Error as E;
        match self {
            E::BadBlockSize(_) | E::SaltTooLong(_) => PyValueError::new_err(self.to_string()),
            E::Io { path, source } => os_error(source, Some(path)),
            E::NotRegular { path } => {
                PyOSError::new_err((libc::EINVAL, "Not a regular file", path.as_os_str().to_os_string()))
            }
        }
    }
}

fn params(algorithm: &str, block_size: u32, salt: &[u8]) -> PyResult<Params> {
    let alg = HashAlg::from_name(algorithm).ok_or_else(|| {
        PyValueError::new_err(format!("unknown hash algorithm {algorithm:?} (known: sha256, sha512)"))
    })?;
    Params::new(alg, block_size, salt.to_vec()).map_err(to_pyerr)
}

fn chunking(parallel_threshold: Option<u64>, chunk_size: Option<u64>) -> Chunking {
    let d = Chunking::default();
    Chunking {
        parallel_threshold: parallel_threshold.unwrap_or(d.parallel_threshold),
        chunk_size: chunk_size.unwrap_or(d.chunk_size),
    }
}

/// fs-verity digest of a regular file. `parallel_threshold` and `chunk_size` (bytes) override
/// when and how a large file is split across threads.
#[pyfunction]
#[pyo3(signature = (path, algorithm, block_size, salt, parallel_threshold=None, chunk_size=None))]
fn fsverity_digest_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    algorithm: &str,
    block_size: u32,
    salt: &[u8],
    parallel_threshold: Option<u64>,
    chunk_size: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let p = params(algorithm, block_size, salt)?;
    let c = chunking(parallel_threshold, chunk_size);
    let d = py
        .allow_threads(|| fsverity::digest_file_with(&path, &p, &c))
        .map_err(to_pyerr)?;
    Ok(PyBytes::new(py, &d))
}

/// fs-verity digest of a byte string.
#[pyfunction]
#[pyo3(signature = (data, algorithm, block_size, salt, parallel_threshold=None, chunk_size=None))]
fn fsverity_digest_bytes<'py>(
    py: Python<'py>,
    data: &[u8],
    algorithm: &str,
    block_size: u32,
    salt: &[u8],
    parallel_threshold: Option<u64>,
    chunk_size: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let p = params(algorithm, block_size, salt)?;
    let c = chunking(parallel_threshold, chunk_size);
    let d = py.allow_threads(|| fsverity::digest_bytes_with(data, &p, &c));
    Ok(PyBytes::new(py, &d))
}

/// fs-verity digests of many files in parallel, in input order: each item is the digest
/// (bytes) or the exception (an OSError instance) for that file.
#[pyfunction]
#[pyo3(signature = (paths, algorithm, block_size, salt, threads=None, parallel_threshold=None, chunk_size=None))]
#[allow(clippy::too_many_arguments)]
fn fsverity_digest_files(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    algorithm: &str,
    block_size: u32,
    salt: &[u8],
    threads: Option<usize>,
    parallel_threshold: Option<u64>,
    chunk_size: Option<u64>,
) -> PyResult<Vec<PyObject>> {
    let p = params(algorithm, block_size, salt)?;
    let c = chunking(parallel_threshold, chunk_size);
    let results = py.allow_threads(|| fsverity::digest_files_with(&paths, &p, threads, &c));
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(d) => PyBytes::new(py, &d).into_any().unbind(),
            Err(e) => e.to_pyerr().into_value(py).into_any(),
        })
        .collect())
}

/// The SHA-256 implementation in use: "avx512" (sixteen blocks at once in AVX-512 registers,
/// the rest as "sha-ni"), "sha-ni" (x86 SHA extensions, two blocks interleaved) or "portable"
/// (the `sha2` crate). `choice` switches it for the whole process first: one of those (falling
/// back to "portable" on a CPU without it), or "auto" (the default choice: the first the CPU
/// has, unless the environment variables CFS_NO_AVX512 or CFS_NO_SHA_NI rule it out). Every
/// implementation gives the same digests; this is for tests and benchmarks.
#[pyfunction]
#[pyo3(signature = (choice=None))]
fn fsverity_sha256_backend(choice: Option<&str>) -> PyResult<&'static str> {
    use crate::hash::sha256_x2::{backend, set_backend, Backend};
    let b = match choice {
        None => backend(),
        Some("auto") => set_backend(None),
        Some("avx512") => set_backend(Some(Backend::Avx512)),
        Some("sha-ni") => set_backend(Some(Backend::ShaNi)),
        Some("portable") => set_backend(Some(Backend::Portable)),
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "unknown SHA-256 backend {other:?} (known: auto, avx512, sha-ni, portable)"
            )))
        }
    };
    Ok(match b {
        Backend::Avx512 => "avx512",
        Backend::ShaNi => "sha-ni",
        Backend::Portable => "portable",
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fsverity_digest_file, m)?)?;
    m.add_function(wrap_pyfunction!(fsverity_digest_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(fsverity_digest_files, m)?)?;
    // the defaults of fsverity_digest_files' parallel_threshold and chunk_size, in bytes
    m.add("FSVERITY_PARALLEL_THRESHOLD", fsverity::DEFAULT_PARALLEL_THRESHOLD)?;
    m.add("FSVERITY_CHUNK_SIZE", fsverity::DEFAULT_CHUNK_SIZE)?;
    m.add_function(wrap_pyfunction!(fsverity_sha256_backend, m)?)?;
    Ok(())
}
