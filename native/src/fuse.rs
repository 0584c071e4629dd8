// SPDX-License-Identifier: MIT OR Apache-2.0
//! A read-only FUSE filesystem serving a composefs image: the rootless twin of the kernel paths.
//!
//! The image is read once by the same reader `cfsctl info` uses ([`crate::erofs::reader`]), which
//! validates everything and gives back the tree as the kernel paths present it
//! ([`reader::View::Mounted`]: internal overlay xattrs gone, escaped ones unescaped, escaped
//! whiteouts empty files); a hostile image is refused before anything is mounted. Inode numbers are tree ids + 1
//! (stable for the mount); entries and attributes are cached by the kernel for a day (the image
//! never changes).
//!
//! Objects are found in the basedirs in order, opened without following a symlink in their last
//! component, and must be regular files. What an open checks follows the module's
//! `verity_check` levels: 0 nothing; 1 an object whose entry records a digest must have it (its
//! fs-verity measurement when it has fs-verity, taken at every open as the module does, else its
//! digest computed in software once per object file per mount: a file replaced or changed under
//! the same name is a different file, checked again); 2 also refuses files that record no digest.
//! A failed check is EIO.
//! Object files stay open while the kernel holds the FUSE file open. Reads go through FUSE
//! passthrough (the kernel reads the object itself, Linux ≥ 6.9) when the kernel grants it — it
//! needs CAP_SYS_ADMIN, so only a daemon started by root gets it — else they are `pread`s with the
//! page cache kept (`FOPEN_KEEP_CACHE`). Requests are served by several threads, each on its own
//! clone of the FUSE device; the tree is immutable, so only the open-file table, the passthrough
//! backing ids and the cache of checked objects take a lock.

use crate::erofs::reader;
use crate::tree::{mode, Digest, Inode, InodeData, Tree, ROOT};
use fuser::{
    AccessFlags, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(86400);
/// Serving threads when the caller does not say: enough to overlap object opens and digest
/// checks with lookups, few enough not to matter on a small machine.
const DEFAULT_THREADS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Image { path: PathBuf, source: reader::ReadError },
}

/// Fetches a missing object into the first basedir: called with the object's digest (hex) and
/// the size the image records; an errno for the reader when it cannot.
pub type Fetch = Box<dyn Fn(&str, u64) -> Result<(), i32> + Send + Sync>;

/// What to serve and how to check it.
pub struct Options {
    pub basedirs: Vec<PathBuf>,
    pub verity_check: u8,
    /// Serving threads (0: the default).
    pub threads: usize,
    /// Ask the kernel for FUSE passthrough of object reads (used only if it grants it).
    pub passthrough: bool,
    /// Where objects missing from every basedir come from (`--remote`); None: they stay missing.
    pub fetch: Option<Fetch>,
    /// End the process as soon as the mount is gone (a daemon): fuser would otherwise unmount the
    /// mount point by path after its session ends, and by then a new mount may be there.
    pub exit_when_unmounted: bool,
}

struct Open {
    /// The object (None for a file whose data is inline in the image).
    file: Option<Arc<File>>,
    /// Held while the kernel reads this open file through passthrough.
    _backing: Option<Arc<BackingId>>,
}

pub struct CfsFuse {
    tree: Tree,
    /// The directory holding each directory (the root's is the root).
    parent: Vec<usize>,
    opts: Options,
    /// Object files without fs-verity hashed in this mount: one hash per digest and file (device,
    /// inode, change time), however many opens race for it.
    checked: Mutex<HashMap<(Digest, FileId), Checked>>,
    open: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    /// Whether the kernel granted passthrough and registering backing files still works.
    passthrough: AtomicBool,
    /// The kernel takes ENOSYS from OPENDIR as "no opendir": from then on it opens directories
    /// itself, with the flags [`Filesystem::opendir`] would give (keep the cache, cache the
    /// listing), and sends neither OPENDIR nor RELEASEDIR — two round trips fewer per directory
    /// in every walk (Linux >= 5.1 says so in INIT).
    no_opendir: AtomicBool,
    /// One backing id per inode, shared by its open files (the kernel asks for that).
    backing: Mutex<HashMap<u64, Weak<BackingId>>>,
    /// One fetch at a time per missing object: later openers wait for it, then look again.
    fetching: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking serving thread must not take the whole mount down with a poisoned lock: the
    // tables hold no invariant a half-done update could break.
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// The outcome of hashing one object file, shared by the opens that wait for it.
type Checked = Arc<OnceLock<bool>>;

/// Which file an object is: a new file under the same name, or a change to it, gives another.
type FileId = (u64, u64, i64, i64);

fn file_id(file: &File) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    Ok((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// The fs-verity digest of an open file as the kernel measures it (None: no fs-verity).
fn measured_digest(file: &File) -> Option<Digest> {
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
        return Some(d);
    }
    None
}

impl CfsFuse {
    pub fn load(image: &Path, opts: Options) -> Result<CfsFuse, FuseError> {
        let bytes = std::fs::read(image).map_err(|source| FuseError::Io {
            path: image.to_path_buf(),
            source,
        })?;
        let loaded = reader::read_image_view(&bytes, reader::View::Mounted).map_err(|source| FuseError::Image {
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
        Ok(CfsFuse {
            tree: loaded.tree,
            opts,
            parent,
            checked: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        })
    }

    fn inode(&self, ino: INodeNo) -> Option<&Inode> {
        self.tree.inodes.get((ino.0 as usize).checked_sub(1)?)
    }

    fn attr(&self, ino: INodeNo, i: &Inode) -> FileAttr {
        // A directory's size is its EROFS size, as the kernel paths report it.
        let size = i.size;
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

    /// A directory's entries in readdir order, `.` and `..` first: (inode, name). None if `ino`
    /// is not a directory.
    fn listing(&self, ino: INodeNo) -> Option<impl Iterator<Item = (INodeNo, &[u8])> + '_> {
        let dir = self.inode(ino).filter(|i| i.is_dir())?;
        let parent = INodeNo(self.parent[ino.0 as usize - 1] as u64 + 1);
        let dots = [(ino, b".".as_slice()), (parent, b"..".as_slice())];
        let entries = dir
            .entries()
            .iter()
            .map(|e| (INodeNo(e.inode as u64 + 1), e.name.as_slice()));
        Some(dots.into_iter().chain(entries))
    }

    /// Whether the object with digest `want` open as `file` is the one named: its fs-verity
    /// measurement (cheap, so at every open), else its content hashed once per file per mount
    /// (concurrent opens of one file wait for the first hash).
    fn object_ok(&self, want: Digest, file: &File) -> bool {
        if let Some(d) = measured_digest(file) {
            return d == want;
        }
        let Ok(id) = file_id(file) else {
            return false;
        };
        let cell = lock(&self.checked).entry((want, id)).or_default().clone();
        *cell.get_or_init(|| crate::store::hash_fd(file).is_ok_and(|(d, _)| d == want))
    }

    /// The object at `rel` in the first basedir that has it (None if none has).
    fn find_object(&self, rel: &Path) -> Result<Option<File>, Errno> {
        for base in &self.opts.basedirs {
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(base.join(rel))
            {
                Ok(f) => return Ok(Some(f)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => return Err(Errno::ENOENT),
            }
        }
        Ok(None)
    }

    /// Fetch the missing object `want` (stored at `rel`, `size` bytes) through `opts.fetch`,
    /// once however many opens miss it together, then find it again. Only an object whose path
    /// is its digest is fetched: requests name objects by digest and nothing else.
    fn fetch_object(&self, rel: &Path, want: Digest, size: u64) -> Result<Option<File>, Errno> {
        let Some(fetch) = &self.opts.fetch else {
            return Ok(None);
        };
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        if rel.as_os_str().as_bytes() != format!("{}/{}", &hex[..2], &hex[2..]).as_bytes() {
            return Ok(None);
        }
        let gate = lock(&self.fetching).entry(want).or_default().clone();
        let _one = lock(&gate);
        if let Some(f) = self.find_object(rel)? {
            return Ok(Some(f)); // an opener before us fetched it
        }
        let fetched = fetch(&hex, size);
        lock(&self.fetching).remove(&want);
        fetched.map_err(Errno::from_i32)?;
        self.find_object(rel)
    }

    /// Open the object at `payload` in the first basedir that has it (fetching it with
    /// `--remote`), and check it.
    fn open_object(&self, payload: &[u8], digest: Option<Digest>, size: u64) -> Result<File, Errno> {
        let rel = Path::new(OsStr::from_bytes(payload));
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Errno::EIO);
        }
        let mut found = self.find_object(rel)?;
        if let (None, Some(want)) = (&found, digest) {
            found = self.fetch_object(rel, want, size)?;
        }
        // The stock path (overlayfs data-only layers) answers ENOENT for a missing object.
        let file = found.ok_or(Errno::ENOENT)?;
        match file.metadata() {
            Ok(m) if m.is_file() => {}
            _ => return Err(Errno::ENOENT),
        }
        let level = self.opts.verity_check;
        match digest {
            None if level >= 2 => return Err(Errno::EIO),
            Some(want) if level >= 1 && !self.object_ok(want, &file) => return Err(Errno::EIO),
            _ => {}
        }
        Ok(file)
    }

    /// The backing id of inode `ino` for passthrough, registered on first use. None when
    /// passthrough is off or the kernel refuses this file (then reads come to the daemon).
    fn backing_for(&self, ino: INodeNo, file: &File, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut table = lock(&self.backing);
        if let Some(id) = table.get(&ino.0).and_then(Weak::upgrade) {
            return Some(id);
        }
        match reply.open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                table.retain(|_, w| w.strong_count() > 0);
                table.insert(ino.0, Arc::downgrade(&id));
                Some(id)
            }
            Err(e) => {
                // EPERM: the daemon lacks CAP_SYS_ADMIN, so no file will do; anything else
                // (e.g. an object on a stacked filesystem) concerns this file only.
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.passthrough.store(false, Ordering::Relaxed);
                }
                None
            }
        }
    }
}

impl Filesystem for CfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Symlink targets and parallel lookups are safe to cache and run: nothing ever changes.
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Every listing comes with its entries' attributes (readdirplus, not only when the
        // kernel guesses it is worth it): one request per directory instead of one per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        if config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT).is_ok() {
            self.no_opendir.store(true, Ordering::Relaxed);
        }
        // Registering a backing file needs CAP_SYS_ADMIN: a user's daemon never gets it, so it does
        // not ask (asking changes the mount's stacking depth for nothing).
        // SAFETY: geteuid cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        if self.opts.passthrough
            && root
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Called once the session is over: the mount was unmounted or its connection aborted.
    /// fuser then unmounts the mount point by path (its check whether our mount is still there
    /// answers yes for a gone one), which removed a new mount made at the same place right after
    /// `cfsctl umount`; a daemon ends here instead. A read-only filesystem has nothing to flush.
    fn destroy(&mut self) {
        if self.opts.exit_when_unmounted {
            std::process::exit(0);
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.inode(parent) else {
            return reply.error(Errno::ENOENT);
        };
        if !p.is_dir() {
            return reply.error(Errno::ENOTDIR);
        }
        let dir = parent.0 as usize - 1;
        match self.tree.lookup(dir, name.as_bytes()) {
            Some(id) => {
                let ino = INodeNo(id as u64 + 1);
                let attr = self.attr(ino, &self.tree.inodes[id]);
                reply.entry(&TTL, &attr, Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Some(i) => reply.attr(&TTL, &self.attr(ino, i)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino).map(|i| &i.data) {
            Some(InodeData::Symlink { target }) => reply.data(target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) {
            return reply.error(Errno::EROFS);
        }
        let Some(i) = self.inode(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match &i.data {
            InodeData::Regular {
                payload: Some(p),
                digest,
                ..
            } => match self.open_object(p, *digest, i.size) {
                Ok(f) => Some(f),
                Err(e) => return reply.error(e),
            },
            InodeData::Regular { .. } => None,
            _ => return reply.error(Errno::EINVAL),
        };
        let backing = file.as_ref().and_then(|f| self.backing_for(ino, f, &reply));
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(
            fh,
            Open {
                file: file.map(Arc::new),
                _backing: backing.clone(),
            },
        );
        match backing {
            Some(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = lock(&self.open).get(&fh.0).and_then(|o| o.file.clone());
        match file {
            Some(f) => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => return reply.error(Errno::EIO),
                    }
                }
                reply.data(&buf[..got])
            }
            None => {
                let data: &[u8] = match self.inode(ino).map(|i| &i.data) {
                    Some(InodeData::Regular { inline: Some(b), .. }) => b,
                    _ => &[],
                };
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end])
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.open).remove(&fh.0);
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir.load(Ordering::Relaxed) {
            // the kernel then opens every directory with FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, as
            // below, and asks no more (see `no_opendir`)
            return reply.error(Errno::ENOSYS);
        }
        match self.inode(ino) {
            // The listing never changes: the kernel may keep it in its page cache.
            Some(i) if i.is_dir() => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(list) = self.listing(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, name)) in list.enumerate().skip(start) {
            let k = self.inode(child).map_or(FileType::Directory, kind);
            if reply.add(child, i as u64 + 1, k, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok()
    }

    /// Entries with their attributes: a cold walk (`find -ls`, `ls -l`) then needs no lookup
    /// per entry.
    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let Some(list) = self.listing(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (child, name)) in list.enumerate().skip(start) {
            let Some(c) = self.inode(child) else { continue };
            let attr = self.attr(child, c);
            if reply.add(child, i as u64 + 1, OsStr::from_bytes(name), &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let n = self.tree.inodes.len() as u64;
        reply.statfs(0, 0, 0, n, 0, 4096, 255, 4096)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inode(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match i.xattrs.iter().find(|x| x.key == name.as_bytes()) {
            Some(x) if size == 0 => reply.size(x.value.len() as u32),
            Some(x) if x.value.len() <= size as usize => reply.data(&x.value),
            Some(_) => reply.error(Errno::ERANGE),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(i) = self.inode(ino) else {
            return reply.error(Errno::ENOENT);
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
            reply.error(Errno::ERANGE)
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.inode(ino) {
            Some(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}

/// Serve `image` at `mountpoint` until it is unmounted (blocking).
pub fn serve(image: &Path, mountpoint: &Path, opts: Options, fsname: &str) -> Result<(), FuseError> {
    let threads = match opts.threads {
        0 => DEFAULT_THREADS,
        n => n,
    };
    let fs = CfsFuse::load(image, opts)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("composefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.n_threads = Some(threads);
    config.clone_fd = true;
    fuser::mount(fs, mountpoint, &config).map_err(|source| FuseError::Io {
        path: mountpoint.to_path_buf(),
        source,
    })
}
