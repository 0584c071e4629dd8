//! A read-only FUSE filesystem serving a composefs image: the rootless twin of the kernel paths.
//!
//! The image is read once by the same reader `cfsctl info` uses ([`crate::erofs::reader`]), which
//! validates everything and gives the source tree back (overlay escapes undone, internal xattrs
//! gone); a hostile image is refused before anything is mounted. Inode numbers are tree ids + 1
//! (stable for the mount); entries and attributes are cached by the kernel for a day (the image
//! never changes).
//!
//! Objects are found in the basedirs in order, opened without following a symlink in their last
//! component, and must be regular files. What an open checks follows the module's
//! `verity_check` levels: 0 nothing; 1 an object whose entry records a digest must have it (its
//! fs-verity measurement when it has fs-verity, else its digest computed in software, once per
//! object per mount); 2 also refuses files that record no digest. A failed check is EIO.
//! Object files stay open while the kernel holds the FUSE file open; reads are `pread`s with the
//! page cache kept (`FOPEN_KEEP_CACHE`).

use crate::erofs::reader;
use crate::tree::{mode, Digest, Inode, InodeData, Tree, ROOT};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(86400);
const FOPEN_KEEP_CACHE: u32 = 1 << 1;

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Image { path: PathBuf, source: reader::ReadError },
}

/// What to serve and how to check it.
pub struct Options {
    pub basedirs: Vec<PathBuf>,
    pub verity_check: u8,
}

struct Open {
    file: Option<File>,
}

pub struct CfsFuse {
    tree: Tree,
    /// The directory holding each directory (the root's is the root).
    parent: Vec<usize>,
    opts: Options,
    uid: u32,
    gid: u32,
    /// Objects already checked in this mount (digest → ok).
    checked: HashMap<Digest, bool>,
    open: HashMap<u64, Open>,
    next_fh: u64,
}

fn kind(ino: &Inode) -> FileType {
    match ino.file_type() {
        mode::S_IFDIR => FileType::Directory,
        mode::S_IFLNK => FileType::Symlink,
        mode::S_IFCHR => FileType::CharDevice,
        mode::S_IFBLK => FileType::BlockDevice,
        mode::S_IFIFO => FileType::NamedPipe,
        mode::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`) of a 64-bit `dev_t`.
fn encode_dev(rdev: u64) -> u32 {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

fn time_of(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// The fs-verity digest of an open file: measured by the kernel when the file has fs-verity,
/// else computed here.
fn object_digest(file: &File) -> std::io::Result<Digest> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Measure {
        alg: u16,
        size: u16,
        digest: [u8; 64],
    }
    const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xC004_6686;
    let mut m = Measure {
        alg: 0,
        size: 64,
        digest: [0; 64],
    };
    // SAFETY: the ioctl writes at most `size` digest bytes after the two u16 fields of `m`,
    // which lives for the call; the descriptor is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_MEASURE_VERITY as _, &mut m) };
    if r == 0 && m.alg == 1 && m.size == 32 {
        let mut d = [0u8; 32];
        d.copy_from_slice(&m.digest[..32]);
        return Ok(d);
    }
    let (d, _) = crate::store::hash_fd(file)?;
    Ok(d)
}

impl CfsFuse {
    pub fn load(image: &Path, opts: Options) -> Result<CfsFuse, FuseError> {
        let bytes = std::fs::read(image).map_err(|source| FuseError::Io {
            path: image.to_path_buf(),
            source,
        })?;
        let loaded = reader::read_image(&bytes).map_err(|source| FuseError::Image {
            path: image.to_path_buf(),
            source,
        })?;
        let mut parent = vec![ROOT; loaded.tree.inodes.len()];
        for (id, ino) in loaded.tree.inodes.iter().enumerate() {
            for e in ino.entries() {
                if loaded.tree.inodes[e.inode].is_dir() {
                    parent[e.inode] = id;
                }
            }
        }
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(CfsFuse {
            tree: loaded.tree,
            opts,
            uid,
            gid,
            parent,
            checked: HashMap::new(),
            open: HashMap::new(),
            next_fh: 1,
        })
    }

    fn inode(&self, ino: u64) -> Option<&Inode> {
        self.tree.inodes.get((ino as usize).checked_sub(1)?)
    }

    fn attr(&self, ino: u64, i: &Inode) -> FileAttr {
        let size = match &i.data {
            InodeData::Directory { entries } => 4096u64.max(entries.len() as u64 * 32),
            _ => i.size,
        };
        let t = time_of(i.mtime.sec, i.mtime.nsec);
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: kind(i),
            perm: (i.mode & 0o7777) as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: encode_dev(i.rdev),
            blksize: 4096,
            flags: 0,
        }
    }

    /// Open the object at `payload` in the first basedir that has it, and check it.
    fn open_object(&mut self, payload: &[u8], digest: Option<Digest>) -> Result<File, i32> {
        let rel = Path::new(OsStr::from_bytes(payload));
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(libc::EIO);
        }
        let mut found = None;
        for base in &self.opts.basedirs {
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(base.join(rel))
            {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => return Err(libc::ENOENT),
            }
        }
        // The stock path (overlayfs data-only layers) answers ENOENT for a missing object.
        let file = found.ok_or(libc::ENOENT)?;
        match file.metadata() {
            Ok(m) if m.is_file() => {}
            _ => return Err(libc::ENOENT),
        }
        let level = self.opts.verity_check;
        match digest {
            None if level >= 2 => return Err(libc::EIO),
            Some(want) if level >= 1 => {
                let ok = match self.checked.get(&want) {
                    Some(&ok) => ok,
                    None => {
                        let ok = object_digest(&file).is_ok_and(|d| d == want);
                        self.checked.insert(want, ok);
                        ok
                    }
                };
                if !ok {
                    return Err(libc::EIO);
                }
            }
            _ => {}
        }
        Ok(file)
    }
}

impl Filesystem for CfsFuse {
    fn init(&mut self, _req: &Request<'_>, _config: &mut KernelConfig) -> Result<(), libc::c_int> {
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.inode(parent) else {
            return reply.error(libc::ENOENT);
        };
        if !p.is_dir() {
            return reply.error(libc::ENOTDIR);
        }
        let dir = parent as usize - 1;
        match self.tree.lookup(dir, name.as_bytes()) {
            Some(id) => {
                let ino = id as u64 + 1;
                let attr = self.attr(ino, &self.tree.inodes[id]);
                reply.entry(&TTL, &attr, 0)
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.inode(ino) {
            Some(i) => reply.attr(&TTL, &self.attr(ino, i)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.inode(ino).map(|i| &i.data) {
            Some(InodeData::Symlink { target }) => reply.data(target),
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let Some(i) = self.inode(ino) else {
            return reply.error(libc::ENOENT);
        };
        let file = match &i.data {
            InodeData::Regular {
                payload: Some(p),
                digest,
                ..
            } => {
                let (p, d) = (p.clone(), *digest);
                match self.open_object(&p, d) {
                    Ok(f) => Some(f),
                    Err(e) => return reply.error(e),
                }
            }
            InodeData::Regular { .. } => None,
            _ => return reply.error(libc::EINVAL),
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        self.open.insert(fh, Open { file });
        reply.opened(fh, FOPEN_KEEP_CACHE)
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = offset.max(0) as u64;
        match self.open.get(&fh).and_then(|o| o.file.as_ref()) {
            Some(f) => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return reply.error(libc::EIO),
                    }
                }
                reply.data(&buf[..got])
            }
            None => {
                let data: &[u8] = match self.inode(ino).map(|i| &i.data) {
                    Some(InodeData::Regular { inline: Some(b), .. }) => b,
                    _ => &[],
                };
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end])
            }
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open.remove(&fh);
        reply.ok()
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.inode(ino) {
            Some(i) if i.is_dir() => reply.opened(0, FOPEN_KEEP_CACHE),
            Some(_) => reply.error(libc::ENOTDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(dir) = self.inode(ino) else {
            return reply.error(libc::ENOENT);
        };
        let parent = self.parent[ino as usize - 1] as u64 + 1;
        let mut all: Vec<(u64, FileType, &[u8])> =
            vec![(ino, FileType::Directory, b"."), (parent, FileType::Directory, b"..")];
        for e in dir.entries() {
            all.push((e.inode as u64 + 1, kind(&self.tree.inodes[e.inode]), &e.name));
        }
        for (i, (child, k, name)) in all.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*child, i as i64 + 1, *k, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let n = self.tree.inodes.len() as u64;
        reply.statfs(0, 0, 0, n, 0, 4096, 255, 4096)
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inode(ino) else {
            return reply.error(libc::ENOENT);
        };
        match i.xattrs.iter().find(|x| x.key == name.as_bytes()) {
            Some(x) if size == 0 => reply.size(x.value.len() as u32),
            Some(x) if x.value.len() <= size as usize => reply.data(&x.value),
            Some(_) => reply.error(libc::ERANGE),
            None => reply.error(libc::ENODATA),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inode(ino) else {
            return reply.error(libc::ENOENT);
        };
        let mut list = Vec::new();
        for x in &i.xattrs {
            list.extend_from_slice(&x.key);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() <= size as usize {
            reply.data(&list)
        } else {
            reply.error(libc::ERANGE)
        }
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, mask: i32, reply: fuser::ReplyEmpty) {
        match self.inode(ino) {
            Some(_) if mask & libc::W_OK != 0 => reply.error(libc::EROFS),
            Some(_) => reply.ok(),
            None => reply.error(libc::ENOENT),
        }
    }
}

/// Serve `image` at `mountpoint` until it is unmounted (blocking).
pub fn serve(image: &Path, mountpoint: &Path, opts: Options, fsname: &str) -> Result<(), FuseError> {
    let fs = CfsFuse::load(image, opts)?;
    let _ = (fs.uid, fs.gid);
    let options = [
        MountOption::RO,
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("composefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    fuser::mount2(fs, mountpoint, &options).map_err(|source| FuseError::Io {
        path: mountpoint.to_path_buf(),
        source,
    })
}
