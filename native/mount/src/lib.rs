// SPDX-License-Identifier: MIT OR Apache-2.0
//! Mounting composefs images: the one implementation behind `mount.composefs` (the mount(8)
//! helper, `src/main.rs`) and `cfsctl mount` (through the core's pyo3 bindings).
//!
//! Two kernel paths mount the same image (see the design notes):
//! * **kernel**: the out-of-tree `composefs` filesystem, `-t composefs IMAGE` with
//!   `basedir=A:B,verity_check=N,digest=HEX`; chosen when `/proc/filesystems` lists it.
//! * **overlay** (stock kernel): the image mounted as EROFS (from the file, or from a read-only,
//!   self-clearing loop device) as a *detached* mount, overlayfs stacked on it with
//!   `metacopy=on,redirect_dir=on`, the object directories as data-only layers. Only the overlay
//!   stays visible; the EROFS mount and the loop device live exactly as long as it does.
//!
//! Verification: level 1 is overlay `verity=on`, 2 is `verity=require`; `digest=` (the image's own
//! fs-verity digest) is measured before anything is mounted and implies 2. `idmap=PATH` makes the
//! image's tree idmapped with the user namespace at PATH (on the EROFS layer for overlay, as the
//! reference does, on the composefs mount itself for the module).

mod mount;
pub mod options;
mod sys;

use std::path::PathBuf;

pub use mount::{escape_layer, kernel_module_available, mount_image, validate, Outcome};
pub use sys::{enter_mount_ns, measure_verity, umount, SysError};

/// What kind of failure, for the exit status of mount(8) helpers and for Python's exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad option or combination (mount(8) exit status 1).
    Usage,
    /// Not allowed: not root (exit status 1).
    Permission,
    /// The system refused, or the image or a directory is unusable (exit status 32).
    Failure,
    /// The image is not the one its digest names: another fs-verity digest, or none (exit
    /// status 32; a boot tells "tampered or wrong image" from other failures by it).
    Digest,
}

/// A mount error: what went wrong, and the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub path: Option<PathBuf>,
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Usage,
            message: message.into(),
            path: None,
        }
    }

    pub fn failure(message: impl Into<String>, path: Option<&std::path::Path>) -> Self {
        Error {
            kind: ErrorKind::Failure,
            message: message.into(),
            path: path.map(PathBuf::from),
        }
    }

    /// The exit status a mount(8) helper gives for this error.
    pub fn exit_status(&self) -> i32 {
        match self.kind {
            ErrorKind::Usage | ErrorKind::Permission => 1,
            ErrorKind::Failure | ErrorKind::Digest => 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Auto,
    Kernel,
    Overlay,
}

impl Backend {
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "auto" => Backend::Auto,
            "kernel" => Backend::Kernel,
            "overlay" => Backend::Overlay,
            _ => {
                return Err(Error::usage(format!(
                    "unknown backend {s:?} (choose from auto, kernel, overlay)"
                )))
            }
        })
    }
}

/// Where the EROFS layer of the stock path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErofsSource {
    Auto,
    File,
    Loop,
}

/// How the stock mount is assembled; `Auto` picks the best this kernel has, tests force the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountApi {
    Auto,
    /// fsopen/fsmount for both, layers as descriptors where the kernel takes them (6.13+).
    New,
    /// The same with layers always given as paths (6.7 to 6.12).
    NewPaths,
    /// NewPaths with the EROFS mount attached to a private temporary directory for a moment
    /// (overlayfs before 6.15 refuses a detached layer).
    Attached,
    /// EROFS by fsmount, overlay by mount(2) with `lowerdir=/proc/self/fd/N::...` (6.5, 6.6).
    Mixed,
    /// mount(2) only, EROFS on a temporary mount point (kernels without the new mount API).
    Legacy,
}

impl MountApi {
    pub const NAMES: [&'static str; 6] = ["auto", "new", "new-paths", "attached", "mixed", "legacy"];

    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "auto" => MountApi::Auto,
            "new" => MountApi::New,
            "new-paths" => MountApi::NewPaths,
            "attached" => MountApi::Attached,
            "mixed" => MountApi::Mixed,
            "legacy" => MountApi::Legacy,
            _ => return Err(Error::usage(format!("bad mount api {s:?}"))),
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One mount to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    /// Object directories, searched in order for each file's redirect path.
    pub basedirs: Vec<PathBuf>,
    /// The image's expected fs-verity sha256 digest (64 lower-case hex digits).
    pub digest: Option<String>,
    /// 0, 1 or 2; None: 2 with a digest or `require_verity`, else 0.
    pub verity_check: Option<u8>,
    /// `verity`: every file must record a digest and match it (level 2).
    pub require_verity: bool,
    /// `tryverity`: level 2 where the kernel can verify, else none.
    pub try_verity: bool,
    pub backend: Backend,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Mount attributes other than ro (nosuid, nodev, noexec, noatime, ...).
    pub attrs: Vec<String>,
    /// `ro`/`rw` as asked; a mount without an upper directory is read-only whatever is asked.
    pub readonly: Option<bool>,
    /// A user namespace file whose ID mapping the mount gets.
    pub idmap: Option<PathBuf>,
    pub erofs_source: ErofsSource,
    pub mount_api: MountApi,
    /// A repository's image is a file it made: a symlink there is refused, never followed.
    pub image_nofollow: bool,
    /// Module only: an open `/dev/composefs-fetch` served by a fetcher (`cfsctl fetchd`), asked
    /// for objects missing from every basedir; its requests time out after `fetch_timeout` s.
    pub fetch_fd: Option<i32>,
    pub fetch_timeout: Option<u32>,
}

impl Request {
    pub fn new(image: PathBuf, mountpoint: PathBuf) -> Self {
        Request {
            image,
            mountpoint,
            basedirs: Vec::new(),
            digest: None,
            verity_check: None,
            require_verity: false,
            try_verity: false,
            backend: Backend::Auto,
            upperdir: None,
            workdir: None,
            attrs: Vec::new(),
            readonly: None,
            idmap: None,
            erofs_source: ErofsSource::Auto,
            mount_api: MountApi::Auto,
            image_nofollow: false,
            fetch_fd: None,
            fetch_timeout: None,
        }
    }

    pub fn writable(&self) -> bool {
        self.upperdir.is_some()
    }

    /// The verification level asked for (before a `tryverity` meets the kernel).
    pub fn level(&self) -> u8 {
        match self.verity_check {
            Some(l) => l,
            None if self.digest.is_some() || self.require_verity || self.try_verity => 2,
            None => 0,
        }
    }
}
