//! The composefs EROFS writer: [`Tree`] → image bytes identical to `mkcomposefs` 1.0.8.
//!
//! What the reference does, step by step (libcomposefs `lcfs-writer-erofs.c`):
//! 1. format version: `min_version`, raised to 1 (if `max_version` allows) when the tree holds a
//!    whiteout (chardev 0/0);
//! 2. rewrite for overlayfs: input `trusted.overlay.X` becomes `trusted.overlay.overlay.X`;
//!    object-backed files get `trusted.overlay.metacopy` (+ `redirect` when they have a payload);
//!    whiteouts become empty regular files with escaped whiteout xattrs and mark their parent
//!    (`whiteouts`, and in format 1 `opaque=x`); the root gets `trusted.overlay.opaque=y` and the
//!    chardev-0/0 entries `00`..`ff` it does not already have;
//! 3. inodes in breadth-first order (a hardlinked inode sits where the entry holding it is),
//!    xattrs sorted by key, directory nlink = 2 + subdirectories;
//! 4. xattr key+values used by several inodes go to the shared table (reverse-sorted), at most
//!    128 shared references per inode;
//! 5. layout: inodes 32-byte aligned from byte 1152, padded so an inline tail never crosses a
//!    block; compact inodes where possible; then the shared xattrs; then the data blocks.

use super::format::*;
use crate::tree::{mode, InodeData, InodeId, Timespec, Tree, ROOT};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// A fast non-cryptographic hasher (FxHash's multiply-rotate) for the interning tables.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ rest.len() as u64);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FastHash = std::hash::BuildHasherDefault<FxHasher>;

/// Why an image cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("format version {0} is not supported (at most 1)")]
    BadVersion(u32),
    #[error("file of {0} bytes is too large for a composefs image")]
    FileTooLarge(u64),
    #[error("too many xattrs on one inode ({0} bytes)")]
    XattrsTooLarge(usize),
    #[error("xattr key {0:?} is empty, too long or holds a NUL byte")]
    BadXattrKey(String),
    #[error("xattr value of {0} bytes is too long")]
    XattrValueTooLong(usize),
    #[error("directory entry name {0:?} is invalid")]
    BadName(String),
    #[error("invalid file type in mode {0:o}")]
    BadMode(u32),
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// What to write.
#[derive(Clone, Debug)]
pub struct Options {
    pub min_version: u32,
    pub max_version: u32,
    /// Worker threads (0: rayon's default). The bytes never depend on it.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { min_version: 0, max_version: 1, threads: 0 }
    }
}

/// Counts reported with a written image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub inodes: u64,
    pub directories: u64,
    pub regular_files: u64,
    pub inline_files: u64,
    pub object_files: u64,
    pub symlinks: u64,
    pub devices: u64,
    pub whiteouts: u64,
    pub hardlinks: u64,
    pub shared_xattrs: u64,
    pub image_size: u64,
    /// Bytes of object-backed file contents the image refers to (each inode once).
    pub external_bytes: u64,
}

/// A written image.
pub struct Image {
    pub bytes: Vec<u8>,
    pub version: u32,
    pub stats: Stats,
}

const OVL: &[u8] = b"trusted.overlay.";
/// LCFS_INODE_EXTERNAL_XATTR_MAX: what libcomposefs lets one inode's xattrs take.
const XATTR_BUDGET: usize = 65535 / 2;

impl Node<'_> {
    /// Set an xattr the way lcfs_node_set_xattr does, including its size account: the overlay
    /// xattrs the writer adds can exceed the budget, and mkcomposefs then refuses the tree.
    fn set_xattr(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), WriteError> {
        if let Some(old) = self.xattrs.remove(key) {
            if self.xattrs.is_empty() {
                self.budget = 0;
            } else {
                self.budget = self.budget.saturating_sub(7 + key.len() + old.len());
            }
        }
        let mut entry = 7 + key.len() + value.len();
        if self.xattrs.is_empty() {
            entry += XATTR_HEADER_SIZE;
        }
        if self.budget + entry > XATTR_BUDGET {
            return Err(WriteError::XattrsTooLarge(self.budget + entry));
        }
        self.budget += entry;
        self.xattrs.insert(key.to_vec(), value);
        Ok(())
    }
}
const OVL_ESC: &[u8] = b"trusted.overlay.overlay.";

enum Kind<'a> {
    Dir,
    Reg { inline: Option<&'a [u8]>, external: bool },
    Symlink(&'a [u8]),
    Other,
}

struct Node<'a> {
    src: Option<InodeId>,
    parent: usize,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    rdev: u32,
    mtime: Timespec,
    size: u64,
    kind: Kind<'a>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// libcomposefs' per-inode xattr size account (limit [`XATTR_BUDGET`]).
    budget: usize,
    /// Directory entries including `.` and `..`, sorted: (name, node index).
    dirents: Vec<(&'a [u8], usize)>,
    // Layout.
    compact: bool,
    n_blocks: u64,
    tail: u64,
    ipad: u64,
    nid: u64,
    xattr_size: usize,
    blkaddr: u32,
}

static HEX_NAMES: [[u8; 2]; 256] = {
    let hex = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [hex[i >> 4], hex[i & 15]];
        i += 1;
    }
    t
};

fn ftype(m: u32) -> u8 {
    match m & mode::S_IFMT {
        mode::S_IFREG => FT_REG_FILE,
        mode::S_IFDIR => FT_DIR,
        mode::S_IFCHR => FT_CHRDEV,
        mode::S_IFBLK => FT_BLKDEV,
        mode::S_IFIFO => FT_FIFO,
        mode::S_IFSOCK => FT_SOCK,
        mode::S_IFLNK => FT_SYMLINK,
        _ => FT_UNKNOWN,
    }
}

/// Directory blocks and tail size for these entries (names only matter).
fn dir_layout(dirents: &[(&[u8], usize)]) -> (u64, u64) {
    let mut blocks = 0u64;
    let mut used = 0u64;
    for (name, _) in dirents {
        let len = (DIRENT_SIZE + name.len()) as u64;
        if used + len > BLOCK_SIZE {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    if used > BLOCK_SIZE / 2 {
        blocks += 1;
        used = 0;
    }
    (blocks, used)
}

/// Split the entries into blocks the way the reference does: returns the ranges of full
/// blocks and the range of the inline tail (possibly empty).
fn dir_chunks(dirents: &[(&[u8], usize)], n_blocks: u64) -> (Vec<std::ops::Range<usize>>, std::ops::Range<usize>) {
    let mut full = Vec::new();
    let mut used = 0u64;
    let mut first = 0usize;
    for (i, (name, _)) in dirents.iter().enumerate() {
        let len = (DIRENT_SIZE + name.len()) as u64;
        if used + len > BLOCK_SIZE {
            full.push(first..i);
            used = 0;
            first = i;
        }
        used += len;
    }
    if (full.len() as u64) < n_blocks {
        full.push(first..dirents.len());
        first = dirents.len();
    }
    (full, first..dirents.len())
}

fn encode_dirents(nodes: &[Node], dirents: &[(&[u8], usize)], out: &mut Vec<u8>) {
    let mut nameoff = (dirents.len() * DIRENT_SIZE) as u64;
    for (name, target) in dirents {
        let t = &nodes[*target];
        Dirent { nid: t.nid, nameoff: nameoff as u16, file_type: ftype(t.mode) }.encode_into(out);
        nameoff += name.len() as u64;
    }
    for (name, _) in dirents {
        out.extend_from_slice(name);
    }
}

fn pad_to(out: &mut Vec<u8>, align: u64) {
    let target = round_up(out.len() as u64, align) as usize;
    out.resize(target, 0);
}

/// Build the image for `tree`.
pub fn write_image(tree: &Tree, opts: &Options) -> Result<Image, WriteError> {
    if opts.threads > 0 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| WriteError::Threads(e.to_string()))?;
        pool.install(|| write_image_inner(tree, opts))
    } else {
        write_image_inner(tree, opts)
    }
}

fn write_image_inner(tree: &Tree, opts: &Options) -> Result<Image, WriteError> {
    if opts.min_version > 1 || opts.max_version > 1 {
        return Err(WriteError::BadVersion(opts.min_version.max(opts.max_version)));
    }
    let max_version = opts.max_version.max(opts.min_version);
    let holders = tree.holders();
    let mut stats = Stats::default();

    // 1. Nodes in breadth-first order.
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of: Vec<Option<usize>> = vec![None; tree.inodes.len()];
    let new_node = |src: Option<InodeId>, parent: usize| -> Result<Node, WriteError> {
        let (m, uid, gid, nlink, rdev, mtime, size, kind) = match src {
            None => {
                let r = &tree.inodes[ROOT];
                (mode::S_IFCHR | 0o644, r.uid, r.gid, 1, 0, r.mtime, 0, Kind::Other)
            }
            Some(id) => {
                let ino = &tree.inodes[id];
                let kind = match (&ino.data, ino.file_type()) {
                    (_, mode::S_IFDIR) => Kind::Dir,
                    (InodeData::Regular { inline, .. }, mode::S_IFREG) => match inline {
                        Some(c) if !c.is_empty() => Kind::Reg { inline: Some(c), external: false },
                        _ => Kind::Reg { inline: None, external: ino.size > 0 },
                    },
                    (_, mode::S_IFREG) => Kind::Reg { inline: None, external: ino.size > 0 },
                    (InodeData::Symlink { target }, mode::S_IFLNK) => Kind::Symlink(target),
                    (_, mode::S_IFLNK) => return Err(WriteError::BadMode(ino.mode)),
                    (_, mode::S_IFCHR | mode::S_IFBLK | mode::S_IFIFO | mode::S_IFSOCK) => Kind::Other,
                    _ => return Err(WriteError::BadMode(ino.mode)),
                };
                let size = match &kind {
                    Kind::Reg { inline: Some(c), .. } => c.len() as u64,
                    Kind::Symlink(t) => t.len() as u64,
                    _ => ino.size,
                };
                (ino.mode, ino.uid, ino.gid, ino.nlink, ino.rdev as u32, ino.mtime, size, kind)
            }
        };
        Ok(Node {
            src,
            parent,
            mode: m,
            uid,
            gid,
            nlink,
            rdev,
            mtime,
            size,
            kind,
            xattrs: BTreeMap::new(),
            budget: 0,
            dirents: Vec::new(),
            compact: false,
            n_blocks: 0,
            tail: 0,
            ipad: 0,
            nid: 0,
            xattr_size: 0,
            blkaddr: 0,
        })
    };
    nodes.push(new_node(Some(ROOT), 0)?);
    node_of[ROOT] = Some(0);
    let mut qi = 0;
    while qi < nodes.len() {
        let Some(src) = nodes[qi].src else {
            qi += 1;
            continue;
        };
        if !tree.inodes[src].is_dir() {
            qi += 1;
            continue;
        }
        let entries = tree.inodes[src].entries();
        // (name, Some((entry index, inode)) or None for a synthetic whiteout)
        let mut list: Vec<(&[u8], Option<(usize, InodeId)>)> =
            entries.iter().enumerate().map(|(i, e)| (e.name.as_slice(), Some((i, e.inode)))).collect();
        if src == ROOT && qi == 0 {
            for n in HEX_NAMES.iter() {
                if tree.lookup(ROOT, n).is_none() {
                    list.push((n.as_slice(), None));
                }
            }
            list.sort_by(|a, b| a.0.cmp(b.0));
        }
        let mut dirents: Vec<(&[u8], usize)> = Vec::with_capacity(list.len() + 2);
        dirents.push((b".", qi));
        dirents.push((b"..", nodes[qi].parent));
        for (name, what) in list {
            if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                return Err(WriteError::BadName(String::from_utf8_lossy(name).into_owned()));
            }
            match what {
                None => {
                    let n = new_node(None, qi)?;
                    nodes.push(n);
                    dirents.push((name, nodes.len() - 1));
                }
                Some((i, ino)) => {
                    let holds = tree.inodes[ino].is_dir() || holders[ino] == Some((src, i));
                    if holds && node_of[ino].is_none() && ino != ROOT {
                        let n = new_node(Some(ino), qi)?;
                        nodes.push(n);
                        node_of[ino] = Some(nodes.len() - 1);
                        dirents.push((name, nodes.len() - 1));
                    } else {
                        dirents.push((name, usize::MAX));
                    }
                }
            }
        }
        dirents.sort_by(|a, b| a.0.cmp(b.0));
        nodes[qi].dirents = dirents;
        qi += 1;
    }
    for dir in 0..nodes.len() {
        let Some(src) = nodes[dir].src else { continue };
        for k in 0..nodes[dir].dirents.len() {
            if nodes[dir].dirents[k].1 == usize::MAX {
                let name = nodes[dir].dirents[k].0;
                let target = tree
                    .lookup(src, name)
                    .and_then(|ino| node_of[ino])
                    .ok_or_else(|| WriteError::BadName(String::from_utf8_lossy(name).into_owned()))?;
                nodes[dir].dirents[k].1 = target;
            }
        }
    }

    // 2. Format version.
    let has_whiteout = nodes.iter().any(|n| n.src.is_some() && n.mode & mode::S_IFMT == mode::S_IFCHR && n.rdev == 0);
    let version = if opts.min_version < 1 && max_version >= 1 && has_whiteout { 1 } else { opts.min_version };

    // 3. Xattrs: escaping, overlay metadata, whiteouts.
    for n in nodes.iter_mut() {
        let Some(src) = n.src else { continue };
        let ino = &tree.inodes[src];
        for x in &ino.xattrs {
            if x.key.is_empty() || x.key.len() > 255 || x.key.contains(&0) {
                return Err(WriteError::BadXattrKey(String::from_utf8_lossy(&x.key).into_owned()));
            }
            if x.value.len() > 65535 {
                return Err(WriteError::XattrValueTooLong(x.value.len()));
            }
            let key = if x.key.starts_with(OVL) {
                let mut k = OVL_ESC.to_vec();
                k.extend_from_slice(&x.key[OVL.len()..]);
                k
            } else {
                x.key.clone()
            };
            // Renaming does not change libcomposefs' account: it counts the input key.
            if n.xattrs.is_empty() {
                n.budget += XATTR_HEADER_SIZE;
            }
            match n.xattrs.insert(key, x.value.clone()) {
                None => n.budget += 7 + x.key.len() + x.value.len(),
                Some(old) => n.budget = (n.budget + x.value.len()).saturating_sub(old.len()),
            }
        }
        if let Kind::Reg { external: true, .. } = n.kind {
            let (payload, digest) = match &ino.data {
                InodeData::Regular { payload, digest, .. } => (payload.as_deref(), digest.as_ref()),
                _ => (None, None),
            };
            let mut meta = Vec::new();
            if let Some(d) = digest {
                meta.extend_from_slice(&[0, 36, 0, 1]);
                meta.extend_from_slice(d);
            }
            n.set_xattr(b"trusted.overlay.metacopy", meta)?;
            if let Some(p) = payload.filter(|p| !p.is_empty()) {
                let mut v = b"/".to_vec();
                v.extend_from_slice(p);
                n.set_xattr(b"trusted.overlay.redirect", v)?;
            }
        }
    }
    for i in 0..nodes.len() {
        let n = &mut nodes[i];
        if n.src.is_none() || n.mode & mode::S_IFMT != mode::S_IFCHR || n.rdev != 0 {
            continue;
        }
        n.size = 0;
        n.mode = mode::S_IFREG | (n.mode & !mode::S_IFMT);
        n.kind = Kind::Reg { inline: None, external: false };
        n.set_xattr(b"trusted.overlay.overlay.whiteout", Vec::new())?;
        n.set_xattr(b"user.overlay.whiteout", Vec::new())?;
        stats.whiteouts += 1;
        let parent = n.parent;
        let p = &mut nodes[parent];
        p.set_xattr(b"trusted.overlay.overlay.whiteouts", Vec::new())?;
        p.set_xattr(b"user.overlay.whiteouts", Vec::new())?;
        if version >= 1 {
            p.set_xattr(b"trusted.overlay.overlay.opaque", b"x".to_vec())?;
            p.set_xattr(b"user.overlay.opaque", b"x".to_vec())?;
        }
    }
    nodes[0].set_xattr(b"trusted.overlay.opaque", b"y".to_vec())?;
    if let Some(se) = nodes[0].xattrs.get(b"security.selinux".as_slice()).cloned() {
        for n in nodes.iter_mut().filter(|n| n.src.is_none()) {
            n.set_xattr(b"security.selinux", se.clone())?;
        }
    }

    // 4. Tree-wide facts.
    let mut min_mtime = nodes[0].mtime;
    let mut has_acl = false;
    for n in &nodes {
        if n.mtime < min_mtime {
            min_mtime = n.mtime;
        }
        if n.xattrs.contains_key(b"system.posix_acl_access".as_slice()) || n.xattrs.contains_key(b"system.posix_acl_default".as_slice()) {
            has_acl = true;
        }
    }
    for i in 0..nodes.len() {
        if let Kind::Dir = nodes[i].kind {
            let subdirs = nodes[i].dirents.iter().skip(0).filter(|(name, t)| *name != b"." && *name != b".." && matches!(nodes[*t].kind, Kind::Dir)).count();
            nodes[i].nlink = 2 + subdirs as u32;
        }
    }

    // 5. Shared xattrs.
    let xattrs: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = nodes.iter_mut().map(|n| std::mem::take(&mut n.xattrs)).collect();
    // Intern every distinct key+value once (one hash per xattr), then work with ids.
    let mut ids: HashMap<(&[u8], &[u8]), u32, FastHash> = HashMap::default();
    let mut uniq: Vec<(&[u8], &[u8])> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let node_ids: Vec<Vec<u32>> = xattrs
        .iter()
        .map(|xs| {
            xs.iter()
                .map(|(k, v)| {
                    let id = *ids.entry((k.as_slice(), v.as_slice())).or_insert_with(|| {
                        uniq.push((k.as_slice(), v.as_slice()));
                        counts.push(0);
                        (uniq.len() - 1) as u32
                    });
                    counts[id as usize] += 1;
                    id
                })
                .collect()
        })
        .collect();
    drop(ids);
    let mut shared: Vec<u32> = (0..uniq.len() as u32).filter(|&i| counts[i as usize] > 1).collect();
    shared.sort_by(|&a, &b| {
        let (a, b) = (uniq[a as usize], uniq[b as usize]);
        b.0.cmp(a.0).then(b.1.len().cmp(&a.1.len())).then(b.1.cmp(a.1))
    });
    let mut shared_off: Vec<Option<u64>> = vec![None; uniq.len()];
    let mut shared_size = 0u64;
    for &id in &shared {
        let (k, v) = uniq[id as usize];
        shared_off[id as usize] = Some(shared_size);
        shared_size += XattrEntry::full_size(k, v.len()) as u64;
    }
    stats.shared_xattrs = shared.len() as u64;
    // Per node and xattr: its offset in the shared table, for the first 128 sharable ones.
    let node_shared: Vec<Vec<Option<u64>>> = node_ids
        .iter()
        .map(|xs| {
            let mut c = 0;
            xs.iter()
                .map(|&id| match shared_off[id as usize] {
                    Some(off) if c < XATTR_LONG_PREFIX => {
                        c += 1;
                        Some(off)
                    }
                    _ => None,
                })
                .collect()
        })
        .collect();

    // 6. Layout.
    let mut pos = INODES_START;
    let mut n_data_blocks = 0u64;
    for (i, n) in nodes.iter_mut().enumerate() {
        let (blocks, tail) = match n.kind {
            Kind::Dir => dir_layout(&n.dirents),
            Kind::Symlink(t) => (0, t.len() as u64),
            Kind::Reg { inline: Some(c), .. } => {
                let size = c.len() as u64;
                if size % BLOCK_SIZE > BLOCK_SIZE / 2 {
                    (size / BLOCK_SIZE + 1, 0)
                } else {
                    (size / BLOCK_SIZE, size % BLOCK_SIZE)
                }
            }
            Kind::Reg { external: true, .. } => {
                let count = chunk_count(n.size);
                if count > MAX_CHUNKS {
                    return Err(WriteError::FileTooLarge(n.size));
                }
                (0, count * 4)
            }
            _ => (0, 0),
        };
        n.n_blocks = blocks;
        n.tail = tail;
        let size_for_compact = match n.kind {
            Kind::Dir => blocks * BLOCK_SIZE + tail,
            _ => n.size,
        };
        n.compact = n.mtime == min_mtime
            && n.nlink <= 0xffff
            && n.uid <= 0xffff
            && n.gid <= 0xffff
            && size_for_compact <= u32::MAX as u64;
        let inode_size = if n.compact { COMPACT_SIZE } else { EXTENDED_SIZE } as u64;
        let mut n_shared = 0usize;
        let mut unshared = 0usize;
        for ((k, v), sh) in xattrs[i].iter().zip(&node_shared[i]) {
            if sh.is_some() {
                n_shared += 1;
            } else {
                unshared += XattrEntry::full_size(k, v.len());
            }
        }
        n.xattr_size = if n_shared == 0 && unshared == 0 {
            0
        } else {
            (XATTR_HEADER_SIZE + 4 * n_shared + unshared).div_ceil(4) * 4
        };
        if n.xattr_size > XATTR_HEADER_SIZE + 4 * 65534 {
            return Err(WriteError::XattrsTooLarge(n.xattr_size));
        }
        let xattr_size = n.xattr_size as u64;
        let ppos = pos;
        pos = round_up(pos, SLOT_SIZE);
        let mut ipad = pos - ppos;
        // Keep the tail inside one block.
        let extra = if let Kind::Symlink(_) = n.kind {
            let total = inode_size + xattr_size + n.tail;
            let pos_block = pos / BLOCK_SIZE;
            let end_block = (pos + total - 1) / BLOCK_SIZE;
            if total / BLOCK_SIZE > 0 {
                n.n_blocks += 1;
                n.tail = 0;
            }
            if pos_block != end_block {
                round_up(pos, BLOCK_SIZE) - pos
            } else {
                0
            }
        } else {
            let non_tail = inode_size + xattr_size;
            let remainder = BLOCK_SIZE - (pos + non_tail) % BLOCK_SIZE;
            if remainder < n.tail {
                let extra_pad = round_up(remainder, SLOT_SIZE);
                let remainder = BLOCK_SIZE - (pos + non_tail + extra_pad) % BLOCK_SIZE;
                if n.tail <= remainder {
                    extra_pad
                } else {
                    n.n_blocks += 1;
                    n.tail = 0;
                    round_up(pos, BLOCK_SIZE) - pos
                }
            } else {
                0
            }
        };
        ipad += extra;
        pos += extra;
        n.ipad = ipad;
        n.nid = pos / SLOT_SIZE;
        n_data_blocks += n.n_blocks;
        pos += inode_size + xattr_size + n.tail;
    }
    let inodes_end = round_up(pos, SLOT_SIZE);
    let data_start = round_up(inodes_end + shared_size, BLOCK_SIZE);
    let mut cur = data_start;
    for n in nodes.iter_mut() {
        if n.n_blocks > 0 {
            n.blkaddr = (cur / BLOCK_SIZE) as u32;
            cur += n.n_blocks * BLOCK_SIZE;
        }
    }

    // 7. Encode the inodes (in parallel; each record is independent now).
    let shared_base = inodes_end % BLOCK_SIZE;
    let records: Vec<Vec<u8>> = (0..nodes.len())
        .into_par_iter()
        .map(|i| encode_inode(&nodes, i, &xattrs[i], &node_shared[i], shared_base))
        .collect();

    let mut out: Vec<u8> = Vec::with_capacity((data_start + n_data_blocks * BLOCK_SIZE) as usize);
    let header = CfsHeader {
        magic: CFS_MAGIC,
        version: CFS_HEADER_VERSION,
        flags: if has_acl { CFS_FLAG_HAS_ACL } else { 0 },
        composefs_version: version,
    };
    out.extend_from_slice(&header.encode());
    out.resize(SUPER_OFFSET as usize, 0);
    let sb = Superblock {
        magic: EROFS_MAGIC,
        feature_compat: FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER,
        blkszbits: BLOCK_BITS as u8,
        root_nid: nodes[0].nid as u16,
        inos: nodes.len() as u64,
        build_time: min_mtime.sec as u64,
        build_time_nsec: min_mtime.nsec,
        blocks: (data_start / BLOCK_SIZE + n_data_blocks) as u32,
        meta_blkaddr: 0,
        xattr_blkaddr: (inodes_end / BLOCK_SIZE) as u32,
        feature_incompat: 0,
    };
    out.extend_from_slice(&sb.encode());
    for r in &records {
        out.extend_from_slice(r);
    }
    pad_to(&mut out, SLOT_SIZE);
    debug_assert_eq!(out.len() as u64, inodes_end);
    for &id in &shared {
        let (k, v) = uniq[id as usize];
        XattrEntry::encode_full(k, v, &mut out);
    }
    pad_to(&mut out, BLOCK_SIZE);
    debug_assert_eq!(out.len() as u64, data_start);
    for n in &nodes {
        if n.n_blocks == 0 {
            continue;
        }
        let start = out.len();
        match n.kind {
            Kind::Dir => {
                let (full, _) = dir_chunks(&n.dirents, n.n_blocks);
                for r in full {
                    let s = out.len();
                    encode_dirents(&nodes, &n.dirents[r], &mut out);
                    out.resize(s + BLOCK_SIZE as usize, 0);
                }
            }
            Kind::Reg { inline: Some(c), .. } => {
                let end = (n.n_blocks * BLOCK_SIZE).min(c.len() as u64) as usize;
                out.extend_from_slice(&c[..end]);
            }
            Kind::Reg { .. } => {
                for _ in 0..BLOCK_SIZE / 4 {
                    out.extend_from_slice(&NULL_ADDR.to_le_bytes());
                }
            }
            Kind::Symlink(t) => out.extend_from_slice(t),
            Kind::Other => {}
        }
        out.resize(start + (n.n_blocks * BLOCK_SIZE) as usize, 0);
    }

    // Stats.
    stats.inodes = nodes.len() as u64;
    for n in &nodes {
        match n.kind {
            Kind::Dir => stats.directories += 1,
            Kind::Reg { inline, external } => {
                stats.regular_files += 1;
                if inline.is_some() {
                    stats.inline_files += 1;
                }
                if external {
                    stats.object_files += 1;
                    stats.external_bytes += n.size;
                }
            }
            Kind::Symlink(_) => stats.symlinks += 1,
            Kind::Other => {
                if n.src.is_some() {
                    stats.devices += 1
                }
            }
        }
    }
    stats.inodes -= nodes.iter().filter(|n| n.src.is_none()).count() as u64;
    let names: u64 = nodes.iter().map(|n| n.dirents.len().saturating_sub(2) as u64).sum();
    stats.hardlinks = names.saturating_sub(nodes.len() as u64 - 1);
    stats.image_size = out.len() as u64;
    Ok(Image { bytes: out, version, stats })
}

fn encode_inode(
    nodes: &[Node],
    i: usize,
    xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    shared: &[Option<u64>],
    shared_base: u64,
) -> Vec<u8> {
    let n = &nodes[i];
    let mut out = Vec::with_capacity(n.ipad as usize + 64 + n.xattr_size + n.tail as usize);
    out.resize(n.ipad as usize, 0);
    let t = n.mode & mode::S_IFMT;
    let mut layout = if n.tail > 0 { LAYOUT_FLAT_INLINE } else { LAYOUT_FLAT_PLAIN };
    let mut i_u = 0u32;
    let size = match n.kind {
        Kind::Dir => n.n_blocks * BLOCK_SIZE + n.tail,
        Kind::Reg { .. } => n.size,
        Kind::Symlink(tg) => tg.len() as u64,
        Kind::Other => 0,
    };
    if n.n_blocks > 0 {
        i_u = n.blkaddr;
    }
    if t == mode::S_IFCHR || t == mode::S_IFBLK {
        i_u = n.rdev;
    }
    let mut chunk_count_n = 0u64;
    if let Kind::Reg { external: true, .. } = n.kind {
        layout = LAYOUT_CHUNK_BASED;
        let bits = chunk_bits(n.size);
        chunk_count_n = chunk_count(n.size);
        i_u = (i_u & 0xffff_0000) | (bits - BLOCK_BITS);
    }
    let xattr_icount = if n.xattr_size == 0 { 0 } else { ((n.xattr_size - XATTR_HEADER_SIZE) / 4 + 1) as u16 };
    DiskInode {
        compact: n.compact,
        format: DiskInode::make_format(n.compact, layout),
        xattr_icount,
        mode: n.mode as u16,
        nlink: n.nlink,
        size,
        i_u,
        ino: i as u32,
        uid: n.uid,
        gid: n.gid,
        mtime: n.mtime.sec as u64,
        mtime_nsec: n.mtime.nsec,
    }
    .encode_into(&mut out);
    if n.xattr_size > 0 {
        let mut filter = 0u32;
        for k in xattrs.keys() {
            filter |= xattr_filter_bit(k);
        }
        let n_shared = shared.iter().filter(|s| s.is_some()).count();
        XattrIbodyHeader { name_filter: !filter, shared_count: n_shared as u8 }.encode_into(&mut out);
        for off in shared.iter().flatten() {
            out.extend_from_slice(&(((shared_base + off) / 4) as u32).to_le_bytes());
        }
        for ((k, v), sh) in xattrs.iter().zip(shared) {
            if sh.is_none() {
                XattrEntry::encode_full(k, v, &mut out);
            }
        }
    }
    if n.tail > 0 {
        match n.kind {
            Kind::Dir => {
                let (_, tail) = dir_chunks(&n.dirents, n.n_blocks);
                encode_dirents(nodes, &n.dirents[tail], &mut out);
            }
            Kind::Symlink(tg) => out.extend_from_slice(tg),
            Kind::Reg { inline: Some(c), .. } => out.extend_from_slice(&c[c.len() - n.tail as usize..]),
            Kind::Reg { .. } => {
                for _ in 0..chunk_count_n {
                    out.extend_from_slice(&NULL_ADDR.to_le_bytes());
                }
            }
            Kind::Other => {}
        }
    }
    debug_assert_eq!(
        out.len() as u64,
        n.ipad + if n.compact { 32 } else { 64 } + n.xattr_size as u64 + n.tail,
        "inode record {i} size"
    );
    out
}
