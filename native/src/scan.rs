// SPDX-License-Identifier: MIT OR Apache-2.0
//! Building a [`Tree`] from a real directory, the way `mkcomposefs SOURCE IMAGE` does
//! (composefs 1.0.8 `lcfs_build` / `lcfs_load_node_from_file`), in two parallel phases:
//!
//! 1. **walk**: every directory is opened and read; an entry `readdir` calls a regular file is
//!    opened and `fstat`ed, every other one `statx`ed, relative to the open directory (no
//!    whole-path lookups); its xattrs listed (`flistxattr` on the entry's open descriptor for
//!    directories and regular files, `llistxattr` on the path otherwise) and symlink targets read
//!    (`readlinkat`). A directory's entries are cut into units of [`ENTRIES_PER_UNIT`] handled in
//!    parallel (rayon); each unit's regular files with a single name are read and hashed right
//!    away, together, so that SHA-256 blocks are hashed many at a time across files
//!    ([`crate::fsverity::digest_open_files`]) and hashing overlaps the walk;
//! 2. **contents**: every other regular file (several names, by `(st_dev, st_ino)`) is opened
//!    once, in parallel on all cores.
//!
//! Non-empty files of at most 64 bytes are inlined (mkcomposefs'
//! `LCFS_RECOMMENDED_INLINE_CONTENT_MAX`, limit included), larger ones are fs-verity hashed in a
//! streaming fashion (contents are never held in memory, files of 8 MiB or more are split over
//! the cores) and get the payload `XX/<62 hex>`; with a [`Store`] they are also inserted into
//! it. Empty files get neither.
//!
//! Like mkcomposefs, the walk descends into mount points (it does not stay on one filesystem)
//! and never follows symlinks except for the source path itself.
//!
//! Hardlinks: by default entries naming the same `(st_dev, st_ino)` become one inode with
//! several entries (the source's structure is preserved). With `no_hardlinks` every entry gets
//! its own inode, which is what mkcomposefs 1.0 produces.
//!
//! The result does not depend on the number of threads: inode ids are assigned in a sequential
//! depth-first pass over the sorted names, and contents are joined back in that order.

use crate::store::{self, open_regular, Store};
use crate::tree::{mode, Digest, Inode, InodeData, InodeId, Timespec, Tree, Xattr, ROOT};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// Largest content (in bytes) inlined into the image; mkcomposefs inlines `0 < size <= 64`.
pub const INLINE_MAX: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: file changed while it was being read", path.display())]
    Changed { path: PathBuf },
    #[error(transparent)]
    ConflictingOptions(#[from] crate::erofs::build::ConflictingOptions),
    #[error("cannot start {0} threads: {1}")]
    Threads(usize, String),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Error {
        match e {
            store::Error::Io { path, source } => Error::Io { path, source },
            // A scan stores what it hashed itself: a mismatch is a file changing underneath.
            store::Error::Changed { path } | store::Error::Mismatch { path } => Error::Changed { path },
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to keep from the source (the mkcomposefs options of the same names).
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Give every directory entry its own inode (mkcomposefs 1.0 output).
    pub no_hardlinks: bool,
    /// Leave out character and block devices (`--skip-devices`; whiteouts are chardevs too).
    pub skip_devices: bool,
    /// Record no xattrs (`--skip-xattrs`).
    pub skip_xattrs: bool,
    /// Record only `user.*` xattrs (`--user-xattrs`).
    pub user_xattrs: bool,
    /// All mtimes 0 (`--use-epoch`).
    pub use_epoch: bool,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
}

/// Live counters, readable from another thread while a scan runs (for progress bars).
#[derive(Debug, Default)]
pub struct Progress {
    /// 0 = not started, 1 = walking, 2 = reading contents, 3 = done.
    pub phase: AtomicU8,
    pub entries: AtomicU64,
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
}

pub const PHASE_WALK: u8 = 1;
pub const PHASE_CONTENTS: u8 = 2;
pub const PHASE_DONE: u8 = 3;

/// Totals of one scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Directory entries, the root included.
    pub entries: u64,
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub symlinks: u64,
    /// Fifos, sockets and devices.
    pub special_files: u64,
    /// Entries beyond the first naming an inode (0 with `no_hardlinks`).
    pub hardlinks: u64,
    pub inline_files: u64,
    pub empty_files: u64,
    /// Regular inodes backed by an object (`erofs::build::object_stats` counts the distinct
    /// objects among them).
    pub object_files: u64,
    /// Bytes of file contents read (each distinct source inode once).
    pub bytes_read: u64,
    /// Contents bytes of object-backed inodes in the tree.
    pub object_bytes: u64,
}

/// Metadata of one entry, from `lstat`.
#[derive(Clone, Copy, Debug)]
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    rdev: u64,
    size: u64,
    mtime: Timespec,
    dev: u64,
    ino: u64,
}

impl Stat {
    fn from_meta(m: &std::fs::Metadata, use_epoch: bool) -> Stat {
        Stat {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            rdev: m.rdev(),
            size: m.size(),
            mtime: if use_epoch {
                Timespec::default()
            } else {
                Timespec {
                    sec: m.mtime(),
                    nsec: m.mtime_nsec() as u32,
                }
            },
            dev: m.dev(),
            ino: m.ino(),
        }
    }
    fn file_type(&self) -> u32 {
        self.mode & mode::S_IFMT
    }
}

enum Kind {
    Dir(Vec<Node>),
    Symlink(Vec<u8>),
    Other,
}

/// Result of the walk for one entry.
struct Node {
    name: Vec<u8>,
    st: Stat,
    xattrs: Vec<Xattr>,
    kind: Kind,
    /// A regular file with a single name, already read during the walk.
    content: Option<Content>,
}

/// Contents of one regular file.
#[derive(Clone, Debug)]
enum Content {
    Empty,
    Inline(Vec<u8>),
    /// `payload` is the object's name in a store, `XX/<62 hex>` (made by the worker that hashed
    /// the file, not in the sequential flattening).
    Object {
        digest: Digest,
        size: u64,
        payload: Vec<u8>,
    },
}

/// A regular file to read (24 bytes, no path of its own: the path is made when the file is
/// opened): its inode, the directory entry naming it and that directory's path.
struct Work {
    inode: u32,
    /// The entry `tree.inodes[parent].entries()[entry]`.
    parent: u32,
    entry: u32,
    /// Index in `Flattener::dir_paths`.
    dir: u32,
    size: u64,
}

impl Work {
    fn path(&self, tree: &Tree, dir_paths: &[PathBuf]) -> PathBuf {
        let name = &tree.inodes[self.parent as usize].entries()[self.entry as usize].name;
        dir_paths[self.dir as usize].join(OsStr::from_bytes(name))
    }
}

/// Scan `root` into a tree; with `store`, also insert every object-backed file into it.
pub fn scan(
    root: &Path,
    opts: &ScanOptions,
    store: Option<&Store>,
    progress: Option<&Progress>,
) -> Result<(Tree, ScanStats), Error> {
    crate::erofs::build::check_options(opts.skip_xattrs, opts.user_xattrs)?;
    // The walk recurses once per directory level (paths reach PATH_MAX = 4096 bytes, so up to
    // 2048 levels): give the workers room.
    let mut builder = rayon::ThreadPoolBuilder::new().stack_size(64 << 20);
    if opts.threads > 0 {
        builder = builder.num_threads(opts.threads);
    }
    let pool = builder
        .build()
        .map_err(|e| Error::Threads(opts.threads, e.to_string()))?;
    let local = Progress::default();
    let progress = progress.unwrap_or(&local);
    let result = pool.install(|| scan_in_pool(root, opts, store, progress));
    drop(pool);
    crate::process::after_scan();
    result
}

fn scan_in_pool(
    root: &Path,
    opts: &ScanOptions,
    store: Option<&Store>,
    progress: &Progress,
) -> Result<(Tree, ScanStats), Error> {
    progress.phase.store(PHASE_WALK, Relaxed);
    // The source itself may be a symlink to a directory (the only symlink followed).
    let meta = std::fs::metadata(root).map_err(io_at(root))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let root_path = if std::fs::symlink_metadata(root)
        .map_err(io_at(root))?
        .file_type()
        .is_symlink()
    {
        std::fs::canonicalize(root).map_err(io_at(root))?
    } else {
        root.to_path_buf()
    };
    let st = Stat::from_meta(
        &std::fs::symlink_metadata(&root_path).map_err(io_at(&root_path))?,
        opts.use_epoch,
    );
    progress.entries.fetch_add(1, Relaxed);
    let root_dir = Dir::open_at(None, &cpath(&root_path)?, root_path.clone())?;
    let xattrs = xattrs_of(XattrSource::Fd(root_dir.fd.as_raw_fd()), opts).map_err(io_at(&root_path))?;
    let kind = Kind::Dir(walk_dir(&root_dir, opts, store, progress)?);
    drop(root_dir);

    // Flatten into the tree, sequentially and in name order (deterministic ids).
    let mut tree = Tree::new(make_inode(&st, xattrs, &kind));
    tree.inodes.reserve(progress.entries.load(Relaxed) as usize);
    let mut stats = ScanStats {
        entries: 1,
        inodes: 1,
        directories: 1,
        ..Default::default()
    };
    let mut flat = Flattener {
        tree: &mut tree,
        opts,
        links: HashMap::new(),
        work: Vec::new(),
        also: Vec::new(),
        work_of: HashMap::new(),
        dir_paths: vec![root_path.clone()],
        stats: &mut stats,
    };
    if let Kind::Dir(children) = kind {
        flat.add_children(ROOT, 0, children);
    }
    let work = std::mem::take(&mut flat.work);
    let mut also = std::mem::take(&mut flat.also);
    also.sort_by_key(|&(w, _)| w);
    let dir_paths = std::mem::take(&mut flat.dir_paths);
    drop(flat);

    // Contents of the files not read during the walk (several names), in parallel.
    progress.files_total.fetch_add(work.len() as u64, Relaxed);
    progress
        .bytes_total
        .fetch_add(work.iter().map(|w| w.size).sum(), Relaxed);
    progress.phase.store(PHASE_CONTENTS, Relaxed);
    let contents: Vec<Content> = work
        .par_iter()
        .map(|w| {
            let c = read_content(&w.path(&tree, &dir_paths), w.size, store);
            progress.files_done.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(w.size, Relaxed);
            c
        })
        .collect::<Result<_, _>>()?;

    drop(dir_paths);
    // Every inode a work item stands for: its own, then further names of the same source file
    // read once (`no_hardlinks`), in the order they were found.
    let mut also = also.into_iter().peekable();
    for (wi, (w, c)) in work.iter().zip(contents).enumerate() {
        let mut ids = vec![w.inode as InodeId];
        while let Some(&(_, id)) = also.peek().filter(|(i, _)| *i as usize == wi) {
            ids.push(id as InodeId);
            also.next();
        }
        apply_content(&mut tree, &mut stats, &ids, c);
    }
    tree.compute_nlink();
    progress.phase.store(PHASE_DONE, Relaxed);
    Ok((tree, stats))
}

struct Flattener<'a> {
    tree: &'a mut Tree,
    opts: &'a ScanOptions,
    /// (dev, ino) -> inode, for preserved hardlinks.
    links: HashMap<(u64, u64), InodeId>,
    work: Vec<Work>,
    /// (work index, inode): further inodes reading the same source file as that work item,
    /// sorted by work index.
    also: Vec<(u32, u32)>,
    /// Paths of the directories holding work items.
    dir_paths: Vec<PathBuf>,
    /// (dev, ino) -> index in `work`, so a file is read once even with `no_hardlinks`.
    work_of: HashMap<(u64, u64), usize>,
    stats: &'a mut ScanStats,
}

impl Flattener<'_> {
    /// Add `children` under directory inode `dir`, whose path is `dir_paths[dir_idx]`.
    fn add_children(&mut self, dir: InodeId, dir_idx: u32, children: Vec<Node>) {
        if let InodeData::Directory { entries } = &mut self.tree.inodes[dir].data {
            entries.reserve_exact(children.len());
        }
        for node in children {
            let Node {
                name,
                st,
                xattrs,
                kind,
                content,
            } = node;
            self.stats.entries += 1;
            let key = (st.dev, st.ino);
            let is_dir = matches!(kind, Kind::Dir(_));
            if !is_dir && !self.opts.no_hardlinks && st.nlink > 1 {
                if let Some(&id) = self.links.get(&key) {
                    self.tree.link(dir, name, id);
                    self.stats.hardlinks += 1;
                    continue;
                }
            }
            let child_path = is_dir.then(|| self.dir_paths[dir_idx as usize].join(OsStr::from_bytes(&name)));
            let id = self.tree.push(make_inode(&st, xattrs, &kind));
            self.stats.inodes += 1;
            self.tree.link(dir, name, id);
            match st.file_type() {
                mode::S_IFDIR => self.stats.directories += 1,
                mode::S_IFREG => self.stats.regular_files += 1,
                mode::S_IFLNK => self.stats.symlinks += 1,
                _ => self.stats.special_files += 1,
            }
            if !is_dir && st.nlink > 1 {
                self.links.insert(key, id);
            }
            match kind {
                Kind::Dir(children) => {
                    self.dir_paths.push(child_path.expect("a directory's path"));
                    let idx = (self.dir_paths.len() - 1) as u32;
                    self.add_children(id, idx, children)
                }
                _ if st.file_type() == mode::S_IFREG && st.size == 0 => self.stats.empty_files += 1,
                _ if content.is_some() => {
                    let c = content.expect("checked");
                    apply_content(self.tree, self.stats, &[id], c);
                }
                _ if st.file_type() == mode::S_IFREG => {
                    if let Some(&w) = self.work_of.get(&key).filter(|_| st.nlink > 1) {
                        self.also.push((w as u32, id as u32));
                    } else {
                        if st.nlink > 1 {
                            self.work_of.insert(key, self.work.len());
                        }
                        // Names arrive sorted, so the new entry is normally the last one.
                        let entries = self.tree.inodes[dir].entries();
                        let entry = match entries.last() {
                            Some(e) if e.inode == id => entries.len() - 1,
                            _ => entries.iter().position(|e| e.inode == id).expect("just linked"),
                        };
                        self.work.push(Work {
                            inode: id as u32,
                            parent: dir as u32,
                            entry: entry as u32,
                            dir: dir_idx,
                            size: st.size,
                        });
                    }
                }
                _ => {}
            }
        }
    }
}

/// Record a file's contents in its inodes `ids` (several when the source file has several names)
/// and in the totals.
fn apply_content(tree: &mut Tree, stats: &mut ScanStats, ids: &[InodeId], c: Content) {
    match &c {
        Content::Object { size, .. } => stats.bytes_read += size,
        Content::Inline(b) => stats.bytes_read += b.len() as u64,
        Content::Empty => {}
    }
    let Some((&last, others)) = ids.split_last() else {
        return;
    };
    let mut record = |id: InodeId, c: Content| {
        let ino = &mut tree.inodes[id];
        match c {
            Content::Empty => {
                ino.size = 0;
                stats.empty_files += 1;
            }
            Content::Inline(b) => {
                ino.size = b.len() as u64;
                ino.data = InodeData::Regular {
                    inline: Some(b),
                    payload: None,
                    digest: None,
                };
                stats.inline_files += 1;
            }
            Content::Object { digest, size, payload } => {
                ino.size = size;
                ino.data = InodeData::Regular {
                    inline: None,
                    payload: Some(payload),
                    digest: Some(digest),
                };
                stats.object_files += 1;
                stats.object_bytes += size;
            }
        }
    };
    for &id in others {
        record(id, c.clone());
    }
    record(last, c);
}

fn make_inode(st: &Stat, xattrs: Vec<Xattr>, kind: &Kind) -> Inode {
    let data = match kind {
        Kind::Dir(_) => InodeData::Directory { entries: Vec::new() },
        Kind::Symlink(t) => InodeData::Symlink { target: t.clone() },
        Kind::Other if st.file_type() == mode::S_IFREG => InodeData::Regular {
            inline: None,
            payload: None,
            digest: None,
        },
        Kind::Other => InodeData::Special,
    };
    let is_dev = matches!(st.file_type(), mode::S_IFCHR | mode::S_IFBLK);
    Inode {
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        nlink: st.nlink.min(u32::MAX as u64) as u32,
        rdev: if is_dev { st.rdev } else { 0 },
        mtime: st.mtime,
        size: match kind {
            Kind::Symlink(t) => t.len() as u64,
            _ => st.size,
        },
        xattrs,
        data,
    }
}

/// An open directory being walked: its descriptor (entries are `statx`ed, opened and read
/// relative to it, so the kernel resolves one name instead of a whole path) and its path (for
/// error messages, and the few calls that still take a path).
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open_at(parent: Option<&Dir>, name: &CStr, path: PathBuf) -> Result<Dir, Error> {
        let at = parent.map_or(rustix::fs::CWD, |d| d.fd.as_fd());
        let flags = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        match rustix::fs::openat(at, name, flags, rustix::fs::Mode::empty()) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(e) => Err(io_at(&path)(e.into())),
        }
    }

    fn child_path(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    /// The entries of the directory (not `.` and `..`), sorted by name.
    fn names(&self) -> Result<Vec<Name>, Error> {
        let err = |e| io_at(&self.path)(e);
        // A duplicate of our descriptor, read with getdents64 (rustix's `Dir`); ours stays
        // open for the entries' `openat`/`statx`.
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(|e| err(e.into()))?;
        let dir = rustix::fs::Dir::new(dup).map_err(|e| err(e.into()))?;
        let mut names = Vec::new();
        for ent in dir {
            let ent = ent.map_err(|e| err(e.into()))?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(Name {
                    name: name.to_vec(),
                    regular: ent.file_type() == rustix::fs::FileType::RegularFile,
                });
            }
        }
        names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(names)
    }
}

/// A directory entry's name, and whether its `d_type` said "regular file" (filesystems that do
/// not say give `DT_UNKNOWN`, so false).
struct Name {
    name: Vec<u8>,
    regular: bool,
}

/// `lstat` of `name` in `dir` (`statx` relative to the directory's descriptor).
fn stat_at(dir: &Dir, name: &CStr, use_epoch: bool) -> io::Result<Stat> {
    use rustix::fs::{AtFlags, StatxFlags};
    let stx = rustix::fs::statx(
        &dir.fd,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_SYNC_AS_STAT,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(Stat {
        mode: stx.stx_mode as u32,
        uid: stx.stx_uid,
        gid: stx.stx_gid,
        nlink: stx.stx_nlink as u64,
        rdev: libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
        size: stx.stx_size,
        mtime: if use_epoch {
            Timespec::default()
        } else {
            Timespec {
                sec: stx.stx_mtime.tv_sec,
                nsec: stx.stx_mtime.tv_nsec,
            }
        },
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
    })
}

/// Entries per work unit of a directory: the unit's regular files are hashed together, their
/// blocks paired across files (see `fsverity::digest_open_files`).
const ENTRIES_PER_UNIT: usize = 32;

/// Read the directory `dir`: every entry `lstat`ed, its xattrs and symlink target read, its
/// subdirectories walked, and regular files with one name read and hashed right away (so
/// hashing overlaps the walk; files with several names wait for the contents phase, which reads
/// each source inode once). Units of entries run in parallel.
fn walk_dir(dir: &Dir, opts: &ScanOptions, store: Option<&Store>, progress: &Progress) -> Result<Vec<Node>, Error> {
    let names = dir.names()?;
    // `with_max_len(1)`: every unit and every subdirectory is a task another worker can take.
    // Rayon otherwise splits an iterator only into about as many pieces as there are threads,
    // unless a piece is stolen, and runs each piece's items in turn: a worker holding a run of
    // directories left the other one idle (one of two workers slept ~1,900 times, 0.7 s in all,
    // per corpus build).
    let units: Vec<Vec<Node>> = names
        .par_chunks(ENTRIES_PER_UNIT)
        .with_max_len(1)
        .map(|unit| load_unit(dir, unit, opts, store, progress))
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<Node> = units.into_iter().flatten().collect();
    // Descend only now, every subdirectory a task of its own (a unit's subdirectories walked in
    // turn would leave a core idle under small directories). No file of this directory is open
    // any more, so the descriptors in use grow with the depth of the tree, not with depth x
    // unit size.
    nodes
        .par_iter_mut()
        .with_max_len(1)
        .filter(|node| matches!(node.kind, Kind::Dir(_)))
        .try_for_each(|node| -> Result<(), Error> {
            let cname = CString::new(node.name.as_slice()).expect("directory entries have no NUL");
            let sub = Dir::open_at(Some(dir), &cname, dir.child_path(&node.name))?;
            node.xattrs = xattrs_of(XattrSource::Fd(sub.fd.as_raw_fd()), opts).map_err(io_at(&sub.path))?;
            node.kind = Kind::Dir(walk_dir(&sub, opts, store, progress)?);
            Ok(())
        })?;
    Ok(nodes)
}

/// A regular file of a unit opened for hashing.
struct Opened {
    /// Index of its node in the unit's result.
    node: usize,
    file: File,
    size: u64,
}

/// Load the entries `names` of `dir` (see [`walk_dir`]); entries options leave out are dropped.
fn load_unit(
    dir: &Dir,
    names: &[Name],
    opts: &ScanOptions,
    store: Option<&Store>,
    progress: &Progress,
) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::with_capacity(names.len());
    let mut opened: Vec<Opened> = Vec::new();
    for Name { name, regular } in names {
        let cname = CString::new(name.as_slice()).expect("directory entries have no NUL");
        // What `readdir` calls a regular file is opened right away and `fstat`ed: one name
        // lookup instead of two (`lstat`, then `open`). Should that fail or find something
        // else (the entry changed, or cannot be opened), the entry is `lstat`ed as any other.
        let opened_now = regular
            .then(|| store::open_at(dir.fd.as_fd(), &cname).ok())
            .flatten()
            .filter(|(_, meta)| meta.is_file());
        let (st, mut early) = match opened_now {
            Some((file, meta)) => (Stat::from_meta(&meta, opts.use_epoch), Some(file)),
            None => (
                stat_at(dir, &cname, opts.use_epoch).map_err(|e| io_at(&dir.child_path(name))(e))?,
                None,
            ),
        };
        if opts.skip_devices && matches!(st.file_type(), mode::S_IFCHR | mode::S_IFBLK) {
            continue;
        }
        progress.entries.fetch_add(1, Relaxed);
        let mut content = None;
        let (xattrs, kind) = match st.file_type() {
            // Walked by `walk_dir` once the units' files are hashed and closed.
            mode::S_IFDIR => (Vec::new(), Kind::Dir(Vec::new())),
            mode::S_IFLNK => {
                let path = dir.child_path(name);
                let xattrs = xattrs_of(XattrSource::Path(&cpath(&path)?), opts).map_err(io_at(&path))?;
                (xattrs, Kind::Symlink(read_link_at(dir, &cname).map_err(io_at(&path))?))
            }
            mode::S_IFREG if st.size > 0 && st.nlink <= 1 => {
                progress.files_total.fetch_add(1, Relaxed);
                progress.bytes_total.fetch_add(st.size, Relaxed);
                let (file, size) = match early.take() {
                    Some(file) => (file, st.size),
                    None => store::open_regular_at(dir.fd.as_fd(), &cname)
                        .map_err(|e| Error::from(e.at(dir.child_path(name))))?,
                };
                let at = || dir.child_path(name);
                let xattrs = xattrs_of(XattrSource::Fd(file.as_raw_fd()), opts).map_err(|e| io_at(&at())(e))?;
                if st.size <= INLINE_MAX {
                    let c = read_small(&file).map_err(|e| io_at(&at())(e))?;
                    match c {
                        Some(c) => {
                            content = Some(c);
                            progress.files_done.fetch_add(1, Relaxed);
                            progress.bytes_done.fetch_add(st.size, Relaxed);
                        }
                        // It grew past the inline limit meanwhile: an object after all.
                        None => opened.push(Opened {
                            node: nodes.len(),
                            file,
                            size,
                        }),
                    }
                } else {
                    opened.push(Opened {
                        node: nodes.len(),
                        file,
                        size,
                    });
                }
                (xattrs, Kind::Other)
            }
            // Anything else; a regular file here (empty, or with several names: read in the
            // contents phase) is open already.
            _ => {
                let xattrs = match &early {
                    Some(file) => xattrs_of(XattrSource::Fd(file.as_raw_fd()), opts)
                        .map_err(|e| io_at(&dir.child_path(name))(e))?,
                    None => {
                        let path = dir.child_path(name);
                        xattrs_of(XattrSource::Path(&cpath(&path)?), opts).map_err(io_at(&path))?
                    }
                };
                (xattrs, Kind::Other)
            }
        };
        nodes.push(Node {
            name: name.clone(),
            st,
            xattrs,
            kind,
            content,
        });
    }
    hash_unit(dir, &mut nodes, opened, store, progress)?;
    Ok(nodes)
}

/// Hash the unit's `opened` regular files together (blocks paired across files), store them
/// with `store`, record their contents in `nodes`, and close them.
fn hash_unit(
    dir: &Dir,
    nodes: &mut [Node],
    opened: Vec<Opened>,
    store: Option<&Store>,
    progress: &Progress,
) -> Result<(), Error> {
    if opened.is_empty() {
        return Ok(());
    }
    let files: Vec<(&File, u64)> = opened.iter().map(|o| (&o.file, o.size)).collect();
    let digests = crate::fsverity::digest_open_files(&files, &crate::fsverity::Params::default(), &Default::default());
    drop(files);
    for (o, r) in opened.iter().zip(digests) {
        let node = &mut nodes[o.node];
        let path = || dir.child_path(&node.name);
        let (digest, size) = r.map_err(|e| io_at(&path())(e))?;
        let digest: Digest = digest.try_into().expect("sha256 digest is 32 bytes");
        if let Some(s) = store {
            s.insert_fd(&o.file, &path(), &digest, size)?;
        }
        progress.files_done.fetch_add(1, Relaxed);
        progress.bytes_done.fetch_add(node.st.size, Relaxed);
        node.content = Some(Content::Object {
            digest,
            size,
            payload: store::object_name(&digest).into_bytes(),
        });
    }
    Ok(())
}

/// Contents of a file `lstat` found to be at most [`INLINE_MAX`] bytes: inline (or empty), or
/// `None` if it has grown past the limit.
fn read_small(file: &File) -> io::Result<Option<Content>> {
    let mut buf = Vec::with_capacity(INLINE_MAX as usize + 1);
    file.take(INLINE_MAX + 1).read_to_end(&mut buf)?;
    Ok(match buf.len() as u64 {
        0 => Some(Content::Empty),
        n if n <= INLINE_MAX => Some(Content::Inline(buf)),
        _ => None,
    })
}

fn read_link_at(dir: &Dir, name: &CStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(&dir.fd, name, Vec::with_capacity(256))?.into_bytes())
}

fn cpath(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Io {
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Where to read an entry's own xattrs from: an open descriptor of it, or its path (never
/// following a symlink).
#[derive(Clone, Copy)]
enum XattrSource<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

impl XattrSource<'_> {
    fn list(self, buf: &mut [u8]) -> isize {
        // SAFETY: (l|f)listxattr into a buffer of the given length (or a size query).
        unsafe {
            let (p, n) = if buf.is_empty() {
                (std::ptr::null_mut(), 0)
            } else {
                (buf.as_mut_ptr().cast(), buf.len())
            };
            match self {
                XattrSource::Fd(fd) => libc::flistxattr(fd, p, n),
                XattrSource::Path(c) => libc::llistxattr(c.as_ptr(), p, n),
            }
        }
    }

    fn get(self, key: &CStr, buf: &mut [u8]) -> isize {
        // SAFETY: (l|f)getxattr into a buffer of the given length (or a size query).
        unsafe {
            let (p, n) = if buf.is_empty() {
                (std::ptr::null_mut(), 0)
            } else {
                (buf.as_mut_ptr().cast(), buf.len())
            };
            match self {
                XattrSource::Fd(fd) => libc::fgetxattr(fd, key.as_ptr(), p, n),
                XattrSource::Path(c) => libc::lgetxattr(c.as_ptr(), key.as_ptr(), p, n),
            }
        }
    }
}

/// The xattrs the options keep (callers add the path to an error: it is made only then).
fn xattrs_of(src: XattrSource, opts: &ScanOptions) -> io::Result<Vec<Xattr>> {
    if opts.skip_xattrs {
        return Ok(Vec::new());
    }
    read_xattrs(src, opts.user_xattrs)
}

/// The entry's own xattrs (not a symlink target's), in `llistxattr` order.
fn read_xattrs(src: XattrSource, user_only: bool) -> io::Result<Vec<Xattr>> {
    let list = loop {
        let n = src.list(&mut []);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new()); // filesystem without xattrs
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        let m = src.list(&mut buf);
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew meanwhile
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        break buf;
    };
    let mut out = Vec::new();
    for key in list.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if user_only && !key.starts_with(b"user.") {
            continue;
        }
        let ckey = CString::new(key).expect("xattr names have no NUL");
        let value = loop {
            let n = src.get(&ckey, &mut []);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; n as usize];
            let m = src.get(&ckey, &mut buf);
            if m < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(e);
            }
            buf.truncate(m as usize);
            break buf;
        };
        out.push(Xattr {
            key: key.to_vec(),
            value,
        });
    }
    Ok(out)
}

/// Read one regular file: inline it, or hash it (and store it). `size` is its `lstat` size,
/// which decides between inline and object like mkcomposefs; the recorded size is what was
/// actually read, so a file that changes during the scan never gets a size its digest lacks.
fn read_content(path: &Path, size: u64, store: Option<&Store>) -> Result<Content, Error> {
    let file = open_regular(path)?;
    if size <= INLINE_MAX {
        if let Some(c) = read_small(&file).map_err(io_at(path))? {
            return Ok(c);
        }
        // It grew past the inline limit meanwhile: treat it as an object below.
    }
    let (digest, size) = store::hash_fd(&file).map_err(io_at(path))?;
    if let Some(s) = store {
        s.insert_fd(&file, path, &digest, size)?;
    }
    Ok(Content::Object {
        digest,
        size,
        payload: store::object_name(&digest).into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cfs-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn scans_files_links_and_inline_limit() {
        let d = tmpdir("basic");
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::write(d.join("i64"), [1u8; 64]).unwrap();
        std::fs::write(d.join("o65"), [2u8; 65]).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::hard_link(d.join("o65"), d.join("sub/hard")).unwrap();
        symlink("../i64", d.join("sub/ln")).unwrap();
        for threads in [1, 2, 3] {
            let opts = ScanOptions {
                threads,
                ..Default::default()
            };
            let (t, s) = scan(&d, &opts, None, None).unwrap();
            assert_eq!(s.entries, 7);
            assert_eq!(s.hardlinks, 1);
            let i = t.resolve(b"i64").unwrap();
            assert!(matches!(&t.inodes[i].data, InodeData::Regular { inline: Some(b), .. } if b.len() == 64));
            let o = t.resolve(b"o65").unwrap();
            assert_eq!(t.resolve(b"sub/hard"), Some(o));
            assert_eq!(t.inodes[o].nlink, 2);
            let InodeData::Regular {
                digest: Some(dg),
                payload: Some(p),
                ..
            } = &t.inodes[o].data
            else {
                panic!()
            };
            assert_eq!(*dg, crate::fsverity::sha256_digest(&[2u8; 65]));
            assert_eq!(p.len(), 65);
            let l = t.resolve(b"sub/ln").unwrap();
            assert_eq!(
                t.inodes[l].data,
                InodeData::Symlink {
                    target: b"../i64".to_vec()
                }
            );
            let e = t.resolve(b"empty").unwrap();
            assert_eq!(
                t.inodes[e].data,
                InodeData::Regular {
                    inline: None,
                    payload: None,
                    digest: None
                }
            );
        }
        let opts = ScanOptions {
            no_hardlinks: true,
            ..Default::default()
        };
        let (t, s) = scan(&d, &opts, None, None).unwrap();
        assert_eq!(s.hardlinks, 0);
        assert_ne!(t.resolve(b"o65"), t.resolve(b"sub/hard"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_source_names_path() {
        let err = scan(Path::new("/nonexistent/cfs"), &ScanOptions::default(), None, None).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/cfs: "), "{err}");
    }
}
