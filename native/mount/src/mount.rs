// SPDX-License-Identifier: MIT OR Apache-2.0
//! The mount itself: checks first (options, root, directories, image, digest, fs-verity support),
//! then the module path or the stock EROFS + overlayfs path in the order the kernel allows.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::options::ATTRS;
use crate::sys::{self, SysError};
use crate::{Backend, ErofsSource, Error, ErrorKind, MountApi, Request};

const KERNEL_FSTYPE: &str = "composefs";
/// The source our overlay mounts carry in /proc/self/mountinfo; `cfsctl umount` looks for it.
const OVERLAY_SOURCE: &[u8] = b"composefs";
const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();
const COMPOSEFS_MAGIC: [u8; 4] = 0xd078_629au32.to_le_bytes();
/// Composefs header flag: the image holds an ACL xattr somewhere.
const CFS_FLAG_HAS_ACL: u32 = 1;
const MOUNT_ATTR_RDONLY: u32 = 0x01;
const MOUNT_ATTR_NODEV: u32 = 0x04;
/// fsconfig string values stop at 255 bytes.
const FSCONFIG_MAX: usize = 255;

/// What was mounted, and how.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub backend: &'static str,
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub basedirs: Vec<PathBuf>,
    pub verity_check: u8,
    pub digest: Option<String>,
    pub writable: bool,
    pub erofs_source: Option<&'static str>,
    pub loop_device: Option<String>,
    pub mount_api: Option<&'static str>,
    pub layers_by: Option<&'static str>,
    pub idmap: Option<PathBuf>,
}

fn fail(message: impl Into<String>, path: Option<&Path>) -> Error {
    Error::failure(message, path)
}

fn explain(e: SysError, what: &str) -> Error {
    fail(format!("{what} failed: {e}"), None)
}

/// Check what needs no privilege and no filesystem access.
pub fn validate(req: &Request) -> Result<(), Error> {
    if let Some(l) = req.verity_check {
        if l > 2 {
            return Err(Error::usage(format!("bad verity check level {l}: expected 0, 1 or 2")));
        }
        if l != 2 && (req.digest.is_some() || req.require_verity) {
            let why = if req.digest.is_some() { "a digest" } else { "verity" };
            return Err(Error::usage(format!(
                "{why} implies verity_check=2 (the image's digest only means something if every file is verified too)"
            )));
        }
    }
    if req.basedirs.is_empty() {
        return Err(Error::usage("at least one basedir (object directory) is needed"));
    }
    if req.upperdir.is_some() != req.workdir.is_some() {
        return Err(Error::usage(
            "upperdir and workdir go together (overlayfs needs both for a writable mount)",
        ));
    }
    for a in &req.attrs {
        if !ATTRS.iter().any(|(n, _, _)| n == a) {
            return Err(Error::usage(format!("unknown mount attribute {a:?}")));
        }
    }
    Ok(())
}

/// True when the running kernel has the `composefs` filesystem (module loaded or built in).
pub fn kernel_module_available() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(KERNEL_FSTYPE)))
        .unwrap_or(false)
}

fn choose_backend(b: Backend) -> Result<&'static str, Error> {
    if b == Backend::Overlay {
        return Ok("overlay");
    }
    let have = kernel_module_available();
    if b == Backend::Kernel && !have {
        return Err(fail(
            "the composefs kernel module is not loaded (/proc/filesystems does not list composefs); load it, \
             or use the overlay backend",
            None,
        ));
    }
    Ok(if have { "kernel" } else { "overlay" })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn check_dir(p: &Path, what: &str) -> Result<PathBuf, Error> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(absolute(p)),
        Ok(_) => Err(fail(format!("{what} is not a directory"), Some(p))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(format!("{what} does not exist"), Some(p))),
        Err(e) => Err(fail(format!("{what} cannot be used: {}", strerror(&e)), Some(p))),
    }
}

fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

/// The opened image and its composefs header flags.
fn open_image(p: &Path, nofollow: bool) -> Result<(File, u32), Error> {
    let mut o = File::options();
    o.read(true)
        .custom_flags(libc::O_NOCTTY | if nofollow { libc::O_NOFOLLOW } else { 0 });
    let f = o.open(p).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => fail("image does not exist", Some(p)),
        Some(libc::ELOOP) if nofollow => fail("refused: image is a symlink (never followed)", Some(p)),
        _ => fail(format!("cannot open image: {}", strerror(&e)), Some(p)),
    })?;
    let md = f
        .metadata()
        .map_err(|e| fail(format!("cannot stat image: {}", strerror(&e)), Some(p)))?;
    if !md.file_type().is_file() {
        return Err(fail("image is not a regular file", Some(p)));
    }
    if md.len() < 1024 + 128 {
        return Err(fail(
            format!("not a composefs image (only {} bytes)", md.len()),
            Some(p),
        ));
    }
    let mut head = [0u8; 32];
    let mut sb = [0u8; 4];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut head, 0)
        .and_then(|_| f.read_exact_at(&mut sb, 1024))
        .map_err(|e| fail(format!("cannot read image: {}", strerror(&e)), Some(p)))?;
    if sb != EROFS_MAGIC {
        return Err(fail(
            "not a composefs image (no EROFS superblock at offset 1024)",
            Some(p),
        ));
    }
    // An EROFS image without the composefs header (mkfs.erofs) may hold ACLs: assume it does.
    let flags = if head[..4] == COMPOSEFS_MAGIC {
        u32::from_le_bytes(head[8..12].try_into().unwrap())
    } else {
        CFS_FLAG_HAS_ACL
    };
    Ok((f, flags))
}

fn no_verity(errno: i32) -> bool {
    matches!(errno, libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
}

/// The image is not the one the digest names (ErrorKind::Digest).
fn digest_error(message: impl Into<String>, p: &Path) -> Error {
    Error {
        kind: ErrorKind::Digest,
        ..fail(message, Some(p))
    }
}

fn measure_image_digest(f: &File, p: &Path) -> Result<String, Error> {
    match sys::measure_verity(f.as_fd()) {
        Ok((alg, d)) if alg == sys::FS_VERITY_HASH_ALG_SHA256 => Ok(d.iter().map(|b| format!("{b:02x}")).collect()),
        Ok((alg, _)) => Err(digest_error(
            format!("the image's fs-verity uses hash algorithm {alg}, composefs digests are sha256"),
            p,
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Err(digest_error(
            "a digest was given but the image has no fs-verity (enable it with 'fsverity enable IMAGE')",
            p,
        )),
        Err(e) if no_verity(e.raw_os_error().unwrap_or(0)) => Err(fail(
            "a digest was given but the filesystem holding the image does not support fs-verity, so the digest \
             cannot be checked",
            Some(p),
        )),
        Err(e) => Err(fail(
            format!("cannot measure the image's fs-verity digest: {}", strerror(&e)),
            Some(p),
        )),
    }
}

/// Refuse a basedir on a filesystem without fs-verity when verification is asked.
/// FS_IOC_MEASURE_VERITY on a directory answers ENODATA where the filesystem supports fs-verity
/// (the directory itself just has none) and EOPNOTSUPP/ENOTTY where it does not.
fn check_verity_support(p: &Path) -> Result<(), Error> {
    let d = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(p)
        .map_err(|e| fail(format!("basedir cannot be used: {}", strerror(&e)), Some(p)))?;
    match sys::measure_verity(d.as_fd()) {
        Err(e) if no_verity(e.raw_os_error().unwrap_or(0)) => Err(fail(
            "verity checking asked but this basedir's filesystem does not support fs-verity, so no object could be \
             verified",
            Some(p),
        )),
        _ => Ok(()),
    }
}

/// Mount `req.image` on `req.mountpoint`; say what was done.
pub fn mount_image(req: &Request) -> Result<Outcome, Error> {
    validate(req)?;
    if rustix::process::geteuid().as_raw() != 0 {
        return Err(Error {
            kind: ErrorKind::Permission,
            message: "must be root to mount composefs images (mounting needs CAP_SYS_ADMIN)".into(),
            path: None,
        });
    }
    let backend = choose_backend(req.backend)?;
    if req.fetch_fd.is_some() && backend != "kernel" {
        return Err(Error::usage(
            "objects fetched on first open (--remote) need the composefs kernel module",
        ));
    }
    let mountpoint = check_dir(&req.mountpoint, "mount point")?;
    let basedirs = req
        .basedirs
        .iter()
        .map(|b| check_dir(b, "basedir"))
        .collect::<Result<Vec<_>, _>>()?;
    let (upper, work) = match (&req.upperdir, &req.workdir) {
        (Some(u), Some(w)) => {
            if backend == "kernel" {
                return Err(Error::usage(
                    "the composefs kernel module mounts read-only; upperdir needs the overlay backend",
                ));
            }
            (Some(check_dir(u, "upperdir")?), Some(check_dir(w, "workdir")?))
        }
        _ => (None, None),
    };
    let userns = match &req.idmap {
        Some(p) => Some(
            File::options()
                .read(true)
                .custom_flags(libc::O_NOCTTY)
                .open(p)
                .map_err(|e| {
                    fail(
                        format!("cannot open the idmap user namespace: {}", strerror(&e)),
                        Some(p),
                    )
                })?,
        ),
        None => None,
    };
    let image = absolute(&req.image);
    let (img, cfs_flags) = open_image(&image, req.image_nofollow)?;
    if let Some(want) = &req.digest {
        let got = measure_image_digest(&img, &image)?;
        if &got != want {
            return Err(digest_error(
                format!("image digest mismatch: expected {want}, the image has {got}"),
                &image,
            ));
        }
    }
    let level = req.level();
    // tryverity asks the kernel, not the filesystem: it verifies where it can.
    if level > 0 && !(req.try_verity && req.verity_check.is_none() && req.digest.is_none() && !req.require_verity) {
        for b in &basedirs {
            check_verity_support(b)?;
        }
    }
    let mut out = Outcome {
        backend,
        image: image.clone(),
        mountpoint: mountpoint.clone(),
        basedirs: basedirs.clone(),
        verity_check: level,
        digest: req.digest.clone(),
        writable: req.writable(),
        idmap: req.idmap.clone(),
        ..Default::default()
    };
    let ctx = Ctx {
        req,
        img: &img,
        cfs_flags,
        image: &image,
        mountpoint: &mountpoint,
        basedirs: &basedirs,
        upper,
        work,
        userns,
    };
    if backend == "kernel" {
        ctx.mount_kernel(&mut out)?;
    } else {
        ctx.mount_overlay(&mut out)?;
    }
    Ok(out)
}

struct Ctx<'a> {
    req: &'a Request,
    img: &'a File,
    cfs_flags: u32,
    image: &'a Path,
    mountpoint: &'a Path,
    basedirs: &'a [PathBuf],
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    userns: Option<File>,
}

/// Clean-ups run in reverse order when the mount is done or failed: detach temporary mounts,
/// remove temporary directories.
#[derive(Default)]
struct Cleanups(Vec<Cleanup>);

enum Cleanup {
    Detach(PathBuf),
    Rmdir(PathBuf),
}

impl Drop for Cleanups {
    fn drop(&mut self) {
        while let Some(c) = self.0.pop() {
            match c {
                Cleanup::Detach(p) => {
                    let _ = sys::umount(&p, true);
                }
                Cleanup::Rmdir(p) => {
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
    }
}

/// The EROFS layer: a detached mount (new API) or a temporary mount point.
struct Lower {
    mnt: Option<OwnedFd>,
    tmpdir: Option<PathBuf>,
}

impl Lower {
    fn path(&self) -> PathBuf {
        match &self.mnt {
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            None => self.tmpdir.clone().unwrap_or_default(),
        }
    }
}

fn attr_bits(req: &Request, readonly: bool) -> (u32, u64) {
    let mut new = 0;
    let mut legacy = 0;
    for (name, a, m) in ATTRS {
        if req.attrs.iter().any(|x| x == name) || (*name == "ro" && readonly) {
            new |= a;
            legacy |= m;
        }
    }
    (new, legacy)
}

/// A private temporary directory under /run/composefs (or the system's temporary directory).
fn temp_dir(cl: &mut Cleanups) -> Result<PathBuf, Error> {
    let base = if Path::new("/run").is_dir() {
        let b = PathBuf::from("/run/composefs");
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&b);
        b
    } else {
        std::env::temp_dir()
    };
    let seed = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0));
    for i in 0..100u64 {
        let p = base.join(format!(
            "erofs.{:x}",
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i) & 0xffff_ffff
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => {
                cl.0.push(Cleanup::Rmdir(p.clone()));
                return Ok(p);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(fail(
                    format!("cannot make a temporary directory: {}", strerror(&e)),
                    Some(&base),
                ))
            }
        }
    }
    Err(fail("cannot make a temporary directory", Some(&base)))
}

use std::os::unix::fs::DirBuilderExt;

/// A path as one overlayfs layer in a mount(2) option string (backslash, `:` and `,` escaped).
pub fn escape_layer(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &c in p.as_os_str().as_bytes() {
        if matches!(c, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out
}

/// The mount(2) data string of the stock overlay: `lowerdir=IMG::OBJ1::OBJ2` marks the objects
/// as data-only layers.
pub fn overlay_legacy_options(
    lower: &Path,
    basedirs: &[PathBuf],
    verity: Option<&str>,
    upper: Option<(&Path, &Path)>,
) -> Vec<u8> {
    let mut o = b"lowerdir=".to_vec();
    o.extend(escape_layer(lower));
    for b in basedirs {
        o.extend(b"::");
        o.extend(escape_layer(b));
    }
    o.extend(b",metacopy=on,redirect_dir=on");
    if let Some((u, w)) = upper {
        o.extend(b",upperdir=");
        o.extend(escape_layer(u));
        o.extend(b",workdir=");
        o.extend(escape_layer(w));
    }
    if let Some(v) = verity {
        o.extend(b",verity=");
        o.extend(v.as_bytes());
    }
    o
}

/// The options of a module mount.
pub fn kernel_options(
    basedirs: &[PathBuf],
    level: u8,
    digest: Option<&str>,
    fetch: Option<(i32, Option<u32>)>,
) -> Result<Vec<(&'static str, Vec<u8>)>, Error> {
    let mut joined = Vec::new();
    for (i, b) in basedirs.iter().enumerate() {
        let bytes = b.as_os_str().as_bytes();
        if bytes.iter().any(|c| matches!(c, b':' | b',')) {
            return Err(Error::usage(format!(
                "{}: a basedir path for the kernel module cannot contain ':' or ','",
                b.display()
            )));
        }
        if i > 0 {
            joined.push(b':');
        }
        joined.extend_from_slice(bytes);
    }
    let mut o = vec![("basedir", joined), ("verity_check", level.to_string().into_bytes())];
    if let Some(d) = digest {
        o.push(("digest", d.as_bytes().to_vec()));
    }
    if let Some((fd, timeout)) = fetch {
        o.push(("fetch_fd", fd.to_string().into_bytes()));
        if let Some(t) = timeout {
            o.push(("fetch_timeout", t.to_string().into_bytes()));
        }
    }
    Ok(o)
}

fn verity_name(level: u8) -> Option<&'static str> {
    match level {
        1 => Some("on"),
        2 => Some("require"),
        _ => None,
    }
}

impl Ctx<'_> {
    fn idmap(&self, mnt: &OwnedFd, what: &str) -> Result<(), Error> {
        if let Some(ns) = &self.userns {
            sys::set_idmap(mnt, ns).map_err(|e| {
                let why = if e.errno == libc::EINVAL {
                    format!("{what} cannot be idmapped here (the filesystem or kernel does not allow it, or the file is not a user namespace)")
                } else {
                    format!("making the {what} idmapped failed: {e}")
                };
                fail(why, self.req.idmap.as_deref())
            })?;
        }
        Ok(())
    }

    fn readonly(&self) -> bool {
        !self.req.writable() || self.req.readonly == Some(true)
    }

    // --- the kernel module -------------------------------------------------------------------

    fn mount_kernel(&self, out: &mut Outcome) -> Result<(), Error> {
        let fetch = self.req.fetch_fd.map(|fd| (fd, self.req.fetch_timeout));
        let opts = kernel_options(self.basedirs, out.verity_check, self.req.digest.as_deref(), fetch)?;
        let (new_attrs, legacy_flags) = attr_bits(self.req, true);
        let image = self.image.as_os_str().as_bytes();
        let fits = opts.iter().all(|(_, v)| v.len() <= FSCONFIG_MAX) && image.len() <= FSCONFIG_MAX;
        if self.req.mount_api != MountApi::Legacy && fits {
            match sys::fsopen(KERNEL_FSTYPE) {
                Err(e) if e.errno == libc::ENOSYS => {}
                Err(e) => return Err(explain(e, "opening the composefs filesystem")),
                Ok(fs) => {
                    out.mount_api = Some("new");
                    sys::set_string(&fs, "source", image).map_err(|e| explain(e, "composefs mount"))?;
                    for (k, v) in &opts {
                        sys::set_string(&fs, k, v).map_err(|e| explain(e, "composefs mount"))?;
                    }
                    sys::create(&fs, "composefs mount").map_err(|e| explain(e, "composefs mount"))?;
                    let m = sys::fsmount(&fs, new_attrs).map_err(|e| explain(e, "composefs mount"))?;
                    self.idmap(&m, "composefs mount")?;
                    return sys::move_mount_to(&m, self.mountpoint).map_err(|e| explain(e, "attaching the mount"));
                }
            }
        }
        if self.userns.is_some() {
            return Err(fail(
                "idmap needs the new mount API (fsopen/fsmount, Linux 5.12+)",
                None,
            ));
        }
        out.mount_api = Some("legacy");
        let mut data = Vec::new();
        for (k, v) in &opts {
            if !data.is_empty() {
                data.push(b',');
            }
            data.extend_from_slice(k.as_bytes());
            data.push(b'=');
            data.extend_from_slice(v);
        }
        sys::mount(image, self.mountpoint, KERNEL_FSTYPE, legacy_flags, Some(&data))
            .map_err(|e| explain(e, "composefs mount"))
    }

    // --- stock kernel: EROFS + overlayfs -----------------------------------------------------

    fn mount_overlay(&self, out: &mut Outcome) -> Result<(), Error> {
        let mut how = self.req.mount_api;
        if how == MountApi::Auto {
            how = match sys::fsopen("erofs") {
                Ok(_) => MountApi::New,
                Err(e) if e.errno == libc::ENOSYS => MountApi::Legacy,
                Err(e) => return Err(explain(e, "opening the erofs filesystem")),
            };
        }
        if how == MountApi::Legacy && self.userns.is_some() {
            return Err(fail(
                "idmap needs the new mount API (fsopen/fsmount, Linux 5.12+)",
                None,
            ));
        }
        out.mount_api = Some(how.name());
        let mut cl = Cleanups::default();
        let mut lower = self.erofs_lower(how != MountApi::Legacy, out, &mut cl)?;
        if how == MountApi::Attached {
            lower = self.attach_lower(lower, &mut cl)?;
        }
        match self.stack_overlay(how, &lower, out) {
            Err(e) if lower.mnt.is_some() && self.req.mount_api == MountApi::Auto => {
                // Before 6.15 overlayfs cannot take a layer from a detached mount ("failed to
                // clone lowerpath", EINVAL): attach the EROFS mount on a private temporary
                // directory while overlayfs takes hold of it; it is detached right after.
                let _ = e;
                let lower = self.attach_lower(lower, &mut cl)?;
                self.stack_overlay(MountApi::NewPaths, &lower, out)?;
                if out.mount_api == Some("new-paths") {
                    out.mount_api = Some("attached");
                }
                Ok(())
            }
            r => r,
        }
    }

    fn stack_overlay(&self, how: MountApi, lower: &Lower, out: &mut Outcome) -> Result<(), Error> {
        if matches!(how, MountApi::New | MountApi::NewPaths | MountApi::Attached) {
            if self.overlay_new(lower, out, how == MountApi::New)? {
                out.mount_api = Some(how.name());
                return Ok(());
            }
            // A kernel older than 6.7: no lowerdir+/datadir+, so mount(2)'s lowerdir= string.
            out.mount_api = Some("mixed");
        }
        self.overlay_legacy(lower, out)?;
        out.layers_by = Some("string");
        Ok(())
    }

    fn erofs_lower(&self, use_new: bool, out: &mut Outcome, cl: &mut Cleanups) -> Result<Lower, Error> {
        let sources: &[&str] = match self.req.erofs_source {
            ErofsSource::Auto => &["file", "loop"],
            ErofsSource::File => &["file"],
            ErofsSource::Loop => &["loop"],
        };
        let mut last = None;
        for &how in sources {
            let mut dev = None;
            let source = if how == "file" {
                // The file already opened (and measured): no second lookup of the path.
                format!("/proc/self/fd/{}", self.img.as_raw_fd())
            } else {
                let name = self.image.as_os_str().as_bytes();
                let (path, f) = sys::loop_attach(
                    self.img.as_fd(),
                    sys::LO_FLAGS_READ_ONLY | sys::LO_FLAGS_AUTOCLEAR,
                    name,
                )
                .map_err(|e| explain(e, "setting up a loop device for the image"))?;
                dev = Some(f);
                path
            };
            let r = if use_new {
                self.erofs_fsmount(source.as_bytes())
            } else {
                self.erofs_tmp_mount(source.as_bytes(), cl)?
            };
            // The mount holds the loop device now; with autoclear it goes away with the mount.
            drop(dev);
            match r {
                Ok(lower) => {
                    if let Some(m) = &lower.mnt {
                        self.idmap(m, "EROFS layer")?;
                    }
                    out.erofs_source = Some(if how == "file" { "file" } else { "loop" });
                    out.loop_device = (how == "loop").then_some(source);
                    return Ok(lower);
                }
                // ENOTBLK: this kernel cannot mount EROFS from a regular file; try a loop device.
                Err(e) if how == "file" && sources.len() > 1 && e.errno == libc::ENOTBLK => last = Some(e),
                Err(e) => {
                    return Err(fail(
                        format!("the image does not mount as EROFS: {e}"),
                        Some(self.image),
                    ))
                }
            }
        }
        Err(fail(
            format!(
                "the image does not mount as EROFS: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ),
            Some(self.image),
        ))
    }

    /// The EROFS mount as a detached mount.
    fn erofs_fsmount(&self, source: &[u8]) -> Result<Lower, SysError> {
        let fs = sys::fsopen("erofs")?;
        sys::set_string(&fs, "source", source)?;
        sys::set_flag(&fs, "ro")?;
        if self.cfs_flags & CFS_FLAG_HAS_ACL == 0 {
            // As the reference does: no ACL in the image, so no ACL lookups at all.
            let _ = sys::set_flag(&fs, "noacl");
        }
        sys::create(&fs, "erofs mount")?;
        let m = sys::fsmount(&fs, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV)?;
        Ok(Lower {
            mnt: Some(m),
            tmpdir: None,
        })
    }

    /// Kernels without fsmount: a private temporary mount point, detached once overlay holds it.
    fn erofs_tmp_mount(&self, source: &[u8], cl: &mut Cleanups) -> Result<Result<Lower, SysError>, Error> {
        let tmp = temp_dir(cl)?;
        let data: &[u8] = if self.cfs_flags & CFS_FLAG_HAS_ACL == 0 {
            b"noacl"
        } else {
            b""
        };
        if let Err(e) = sys::mount(
            source,
            &tmp,
            "erofs",
            libc::MS_RDONLY | libc::MS_NODEV,
            (!data.is_empty()).then_some(data),
        ) {
            return Ok(Err(e));
        }
        cl.0.push(Cleanup::Detach(tmp.clone()));
        Ok(Ok(Lower {
            mnt: None,
            tmpdir: Some(tmp),
        }))
    }

    /// Attach a detached EROFS mount on a temporary directory (detached again when done).
    fn attach_lower(&self, lower: Lower, cl: &mut Cleanups) -> Result<Lower, Error> {
        let Some(m) = lower.mnt else { return Ok(lower) };
        let tmp = temp_dir(cl)?;
        sys::move_mount_to(&m, &tmp).map_err(|e| explain(e, "attaching the EROFS layer"))?;
        cl.0.push(Cleanup::Detach(tmp.clone()));
        Ok(Lower {
            mnt: None,
            tmpdir: Some(tmp),
        })
    }

    /// overlayfs through fsopen/fsconfig/fsmount/move_mount; false if the kernel lacks `lowerdir+`.
    fn overlay_new(&self, lower: &Lower, out: &mut Outcome, fds: bool) -> Result<bool, Error> {
        let fs = sys::fsopen("overlay").map_err(|e| explain(e, "opening overlayfs"))?;
        let mut opened: Vec<OwnedFd> = Vec::new();
        let e = |e: SysError| explain(e, "overlay mount");
        sys::set_string(&fs, "source", OVERLAY_SOURCE).map_err(e)?;
        sys::set_string(&fs, "metacopy", b"on").map_err(e)?;
        sys::set_string(&fs, "redirect_dir", b"on").map_err(e)?;
        let lower_fd = if fds {
            lower.mnt.as_ref().map(|m| m.as_fd())
        } else {
            None
        };
        let Some(by) = add_layer(&fs, "lowerdir+", lower_fd, &lower.path(), &mut opened, false)? else {
            return Ok(false);
        };
        out.layers_by = Some(by);
        for b in self.basedirs {
            if add_layer(&fs, "datadir+", None, b, &mut opened, false)?.is_none() {
                return Ok(false);
            }
        }
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            add_layer(&fs, "upperdir", None, u, &mut opened, true)?;
            add_layer(&fs, "workdir", None, w, &mut opened, true)?;
        }
        if let Some(v) = verity_name(out.verity_check) {
            if let Err(err) = sys::set_string(&fs, "verity", v.as_bytes()) {
                if self.tries_only() {
                    out.verity_check = 0;
                } else {
                    return Err(fail(
                        format!("this kernel's overlayfs cannot verify (verity={v}, needs 6.6+): {err}"),
                        None,
                    ));
                }
            }
        }
        sys::create(&fs, "overlay mount").map_err(|e| explain(e, "overlay mount"))?;
        let (attrs, _) = attr_bits(self.req, self.readonly());
        let m = sys::fsmount(&fs, attrs).map_err(|e| explain(e, "overlay mount"))?;
        sys::move_mount_to(&m, self.mountpoint).map_err(|e| explain(e, "attaching the mount"))?;
        Ok(true)
    }

    /// Verification was asked with `tryverity` only: a kernel that cannot verify mounts without.
    fn tries_only(&self) -> bool {
        let r = self.req;
        r.try_verity && !r.require_verity && r.digest.is_none() && r.verity_check.is_none()
    }

    fn overlay_legacy(&self, lower: &Lower, out: &mut Outcome) -> Result<(), Error> {
        let upper = match (&self.upper, &self.work) {
            (Some(u), Some(w)) => Some((u.as_path(), w.as_path())),
            _ => None,
        };
        let (_, flags) = attr_bits(self.req, self.readonly());
        let data = overlay_legacy_options(&lower.path(), self.basedirs, verity_name(out.verity_check), upper);
        match sys::mount(OVERLAY_SOURCE, self.mountpoint, "overlay", flags, Some(&data)) {
            // The legacy interface cannot tell an unknown verity= from other errors: a tryverity
            // mount tries once more without it.
            Err(e) if e.errno == libc::EINVAL && out.verity_check > 0 && self.tries_only() => {
                out.verity_check = 0;
                let data = overlay_legacy_options(&lower.path(), self.basedirs, None, upper);
                sys::mount(OVERLAY_SOURCE, self.mountpoint, "overlay", flags, Some(&data))
                    .map_err(|e| explain(e, "overlay mount"))
            }
            r => r.map_err(|e| explain(e, "overlay mount")),
        }
    }
}

/// Give overlayfs one layer, by descriptor where it takes them, else by path; None: the key is
/// unknown to this kernel (EINVAL on an optional key).
fn add_layer(
    fs: &OwnedFd,
    key: &str,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    path: &Path,
    opened: &mut Vec<OwnedFd>,
    required: bool,
) -> Result<Option<&'static str>, Error> {
    let mut fd = fd.map(|f| f.as_raw_fd());
    if fd.is_none() && path.as_os_str().len() > FSCONFIG_MAX {
        // fsconfig strings stop at 255 bytes: long paths go over as O_PATH descriptors.
        let o = sys::open_path_dir(path).map_err(|e| explain(e, "opening a layer"))?;
        fd = Some(o.as_raw_fd());
        opened.push(o);
    }
    if let Some(raw) = fd {
        // SAFETY: `raw` is open for this whole call: it is either a borrowed descriptor of the
        // caller's or one kept open in `opened`.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        if sys::set_fd(fs, key, b, path).is_ok() {
            return Ok(Some("fd"));
        }
        // Before 6.13 overlayfs takes layers only as strings (6.12 answers EBADF, older EINVAL);
        // the path below reaches the same layer (/proc/self/fd/N for the detached EROFS mount).
    }
    match sys::set_string(fs, key, path.as_os_str().as_bytes()) {
        Ok(()) => Ok(Some("path")),
        Err(e) if e.errno == libc::EINVAL && !required => Ok(None),
        Err(e) => Err(fail(format!("overlay {key}{} failed: {e}", path.display()), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_strings() {
        let o = kernel_options(&["/a".into(), "/b".into()], 2, Some("ab"), None).unwrap();
        assert_eq!(o[0], ("basedir", b"/a:/b".to_vec()));
        assert_eq!(o[1], ("verity_check", b"2".to_vec()));
        assert_eq!(o[2], ("digest", b"ab".to_vec()));
        assert!(kernel_options(&["/a:b".into()], 0, None, None).is_err());
        assert_eq!(
            overlay_legacy_options(
                Path::new("/proc/self/fd/5"),
                &["/s,1".into(), "/s:2".into()],
                Some("require"),
                None
            ),
            b"lowerdir=/proc/self/fd/5::/s\\,1::/s\\:2,metacopy=on,redirect_dir=on,verity=require".to_vec()
        );
        assert_eq!(
            overlay_legacy_options(
                Path::new("/l"),
                &["/s".into()],
                Some("on"),
                Some((Path::new("/u"), Path::new("/w")))
            ),
            b"lowerdir=/l::/s,metacopy=on,redirect_dir=on,upperdir=/u,workdir=/w,verity=on".to_vec()
        );
    }

    #[test]
    fn validation() {
        let mut r = Request::new("i".into(), "/m".into());
        assert!(validate(&r).is_err()); // no basedir
        r.basedirs.push("/o".into());
        validate(&r).unwrap();
        r.digest = Some("ab".repeat(32));
        r.verity_check = Some(1);
        assert!(validate(&r).unwrap_err().message.contains("implies verity_check=2"));
        r.verity_check = None;
        assert_eq!(r.level(), 2);
        r.upperdir = Some("/u".into());
        assert!(validate(&r).is_err());
        r.workdir = Some("/w".into());
        r.attrs.push("bogus".into());
        assert!(validate(&r).unwrap_err().message.contains("unknown mount attribute"));
    }
}
