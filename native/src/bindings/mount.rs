// SPDX-License-Identifier: MIT OR Apache-2.0
//! Bindings for the `composefs-mount` crate (the mount logic `mount.composefs` runs too):
//! `cfsctl mount` hands its request over here. Errors become `composefs._native.MountFailed`
//! with `(message, path, kind)`; the Python side turns them into `MountError`.

use std::ffi::OsString;
use std::path::PathBuf;

use composefs_mount as cm;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    MountFailed,
    PyException,
    "A mount that could not be done: args are (message, path or None, kind: usage|permission|failure)."
);

fn mount_err(e: cm::Error) -> PyErr {
    let kind = match e.kind {
        cm::ErrorKind::Usage => "usage",
        cm::ErrorKind::Permission => "permission",
        cm::ErrorKind::Failure | cm::ErrorKind::Digest => "failure",
    };
    MountFailed::new_err((e.message, e.path.map(|p| p.into_os_string()), kind))
}

fn source(s: &str) -> Result<cm::ErofsSource, cm::Error> {
    Ok(match s {
        "auto" => cm::ErofsSource::Auto,
        "file" => cm::ErofsSource::File,
        "loop" => cm::ErofsSource::Loop,
        _ => return Err(cm::Error::usage(format!("bad erofs source {s:?}"))),
    })
}

/// Mount an image (see the `composefs-mount` crate); returns what was done.
#[pyfunction]
#[pyo3(signature = (image, mountpoint, basedirs, *, digest=None, verity_check=None, require_verity=false,
    try_verity=false, backend="auto", upperdir=None, workdir=None, attrs=Vec::new(), readonly=None, idmap=None,
    erofs_source="auto", mount_api="auto", image_nofollow=false, fetch_fd=None, fetch_timeout=None))]
#[allow(clippy::too_many_arguments)]
fn mount_image(
    py: Python<'_>,
    image: PathBuf,
    mountpoint: PathBuf,
    basedirs: Vec<PathBuf>,
    digest: Option<&str>,
    verity_check: Option<u8>,
    require_verity: bool,
    try_verity: bool,
    backend: &str,
    upperdir: Option<PathBuf>,
    workdir: Option<PathBuf>,
    attrs: Vec<String>,
    readonly: Option<bool>,
    idmap: Option<PathBuf>,
    erofs_source: &str,
    mount_api: &str,
    image_nofollow: bool,
    fetch_fd: Option<i32>,
    fetch_timeout: Option<u32>,
) -> PyResult<MountOutcome> {
    let mut req = cm::Request::new(image, mountpoint);
    req.basedirs = basedirs;
    req.digest = digest.map(cm::options::parse_digest).transpose().map_err(mount_err)?;
    req.verity_check = verity_check;
    req.require_verity = require_verity;
    req.try_verity = try_verity;
    req.backend = cm::Backend::parse(backend).map_err(mount_err)?;
    req.upperdir = upperdir;
    req.workdir = workdir;
    req.readonly = readonly;
    for a in attrs {
        match a.as_str() {
            "ro" => req.readonly = Some(true),
            "rw" => req.readonly = Some(false),
            _ => req.attrs.push(a),
        }
    }
    req.idmap = idmap;
    req.erofs_source = source(erofs_source).map_err(mount_err)?;
    req.mount_api = cm::MountApi::parse(mount_api).map_err(mount_err)?;
    req.image_nofollow = image_nofollow;
    req.fetch_fd = fetch_fd;
    req.fetch_timeout = fetch_timeout;
    let out = py.allow_threads(|| cm::mount_image(&req)).map_err(mount_err)?;
    Ok(MountOutcome(out))
}

/// What [`mount_image`] mounted, and how (the fields of `composefs-mount`'s `Outcome`).
#[pyclass(module = "composefs._native", frozen)]
pub struct MountOutcome(cm::Outcome);

#[pymethods]
impl MountOutcome {
    /// "kernel" (the composefs module) or "overlay" (EROFS + overlayfs).
    #[getter]
    fn backend(&self) -> &'static str {
        self.0.backend
    }
    #[getter]
    fn image(&self) -> PathBuf {
        self.0.image.clone()
    }
    #[getter]
    fn mountpoint(&self) -> PathBuf {
        self.0.mountpoint.clone()
    }
    #[getter]
    fn basedirs(&self) -> Vec<PathBuf> {
        self.0.basedirs.clone()
    }
    #[getter]
    fn verity_check(&self) -> u8 {
        self.0.verity_check
    }
    #[getter]
    fn digest(&self) -> Option<String> {
        self.0.digest.clone()
    }
    #[getter]
    fn writable(&self) -> bool {
        self.0.writable
    }
    /// "file" or "loop" (overlay backend).
    #[getter]
    fn erofs_source(&self) -> Option<&'static str> {
        self.0.erofs_source
    }
    #[getter]
    fn loop_device(&self) -> Option<String> {
        self.0.loop_device.clone()
    }
    #[getter]
    fn mount_api(&self) -> Option<&'static str> {
        self.0.mount_api
    }
    /// "fd", "path" or "string": how overlayfs got its layers.
    #[getter]
    fn layers_by(&self) -> Option<&'static str> {
        self.0.layers_by
    }
    #[getter]
    fn idmap(&self) -> Option<PathBuf> {
        self.0.idmap.clone()
    }
    fn __repr__(&self) -> String {
        format!("MountOutcome({:?})", self.0)
    }
}

/// What the helper's `-o` options ask for: the fields of a mount request they set, with the
/// names `mount_image` takes them by.
#[pyclass(module = "composefs._native", frozen, get_all)]
pub struct MountOptions {
    basedirs: Vec<PathBuf>,
    digest: Option<String>,
    verity_check: Option<u8>,
    require_verity: bool,
    try_verity: bool,
    /// "auto", "kernel" or "overlay".
    backend: &'static str,
    upperdir: Option<PathBuf>,
    workdir: Option<PathBuf>,
    attrs: Vec<String>,
    readonly: Option<bool>,
    idmap: Option<PathBuf>,
}

#[pymethods]
impl MountOptions {
    fn __repr__(&self) -> String {
        format!(
            "MountOptions(basedirs={:?}, digest={}, verity_check={}, require_verity={}, try_verity={}, \
             backend='{}', upperdir={}, workdir={}, attrs={:?}, readonly={}, idmap={})",
            self.basedirs,
            py_repr(&self.digest),
            py_repr(&self.verity_check),
            py_bool(self.require_verity),
            py_bool(self.try_verity),
            self.backend,
            py_repr(&self.upperdir),
            py_repr(&self.workdir),
            self.attrs,
            self.readonly.map_or("None", py_bool),
            py_repr(&self.idmap)
        )
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// `None`, or the value as Rust's `Debug` shows it (close to Python's repr for the fields here).
fn py_repr<T: std::fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "None".into(),
    }
}

/// The helper's `-o` option strings (mount.composefs spellings and escapes) as [`MountOptions`].
#[pyfunction]
#[pyo3(signature = (options, sloppy=false))]
fn parse_mount_options(options: Vec<OsString>, sloppy: bool) -> PyResult<MountOptions> {
    let mut req = cm::Request::new(PathBuf::new(), PathBuf::new());
    cm::options::apply(&mut req, &options, sloppy).map_err(mount_err)?;
    Ok(MountOptions {
        basedirs: req.basedirs,
        digest: req.digest,
        verity_check: req.verity_check,
        require_verity: req.require_verity,
        try_verity: req.try_verity,
        backend: match req.backend {
            cm::Backend::Auto => "auto",
            cm::Backend::Kernel => "kernel",
            cm::Backend::Overlay => "overlay",
        },
        upperdir: req.upperdir,
        workdir: req.workdir,
        attrs: req.attrs,
        readonly: req.readonly,
        idmap: req.idmap,
    })
}

/// True when /proc/filesystems lists the composefs module's filesystem.
#[pyfunction]
fn kernel_module_available() -> bool {
    cm::kernel_module_available()
}

/// umount2(2) of `target` with its raw flags (MNT_DETACH, UMOUNT_NOFOLLOW…); OSError on failure.
#[pyfunction]
#[pyo3(signature = (target, flags=0))]
fn umount2(py: Python<'_>, target: std::path::PathBuf, flags: u32) -> PyResult<()> {
    let f = rustix::mount::UnmountFlags::from_bits_retain(flags);
    py.allow_threads(|| rustix::mount::unmount(&target, f))
        .map_err(|e| super::errors::os_error(&e.into(), Some(&target)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MountFailed", m.py().get_type::<MountFailed>())?;
    m.add_function(wrap_pyfunction!(mount_image, m)?)?;
    m.add_class::<MountOutcome>()?;
    m.add_function(wrap_pyfunction!(parse_mount_options, m)?)?;
    m.add_class::<MountOptions>()?;
    m.add_function(wrap_pyfunction!(kernel_module_available, m)?)?;
    m.add_function(wrap_pyfunction!(umount2, m)?)?;
    Ok(())
}
