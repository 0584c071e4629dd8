// SPDX-License-Identifier: MIT OR Apache-2.0
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
use crate::tree::{mode, Inode, InodeData, InodeId, Timespec, Tree, ROOT};
use rayon::prelude::*;
use std::collections::HashMap;
use zerocopy::IntoBytes;

use crate::hash::fx::{FastHash, FxHasher};

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
    #[error("symlink target {0:?} is empty, too long or holds a NUL byte")]
    BadSymlink(String),
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
        Options {
            min_version: 0,
            max_version: 1,
            threads: 0,
        }
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
const OVL_ESC: &[u8] = b"trusted.overlay.overlay.";
/// LCFS_INODE_EXTERNAL_XATTR_MAX: what libcomposefs lets one inode's xattrs take.
const XATTR_BUDGET: usize = 65535 / 2;

/// Prefixes an xattr value can have in front of its borrowed body: none, the `/` of a
/// redirect, the header of a metacopy digest. Values are never copied out of the tree.
const VALUE_PRE: [&[u8]; 3] = [b"", b"/", &Metacopy::HEADER];
const PRE_NONE: u8 = 0;
const PRE_SLASH: u8 = 1;
const PRE_METACOPY: u8 = 2;

/// One xattr of a node: an interned key and a value (prefix + body borrowed from the tree).
#[derive(Clone, Copy)]
struct Xa<'a> {
    key: u32,
    pre: u8,
    body: &'a [u8],
}

impl<'a> Xa<'a> {
    fn pre(&self) -> &'static [u8] {
        VALUE_PRE[self.pre as usize]
    }
    fn value_len(&self) -> usize {
        self.pre().len() + self.body.len()
    }
    fn value_parts(&self) -> [&'a [u8]; 2] {
        [self.pre(), self.body]
    }
    fn value_cmp(&self, o: &Xa) -> std::cmp::Ordering {
        if self.pre == o.pre {
            self.body.cmp(o.body)
        } else {
            self.pre().iter().chain(self.body).cmp(o.pre().iter().chain(o.body))
        }
    }
    fn same(&self, o: &Xa) -> bool {
        self.key == o.key && self.value_len() == o.value_len() && self.value_cmp(o).is_eq()
    }
    /// A hash of key id and value bytes that does not depend on how the value is split.
    fn content_hash(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = FxHasher::default();
        h.write_usize(self.key as usize);
        if self.pre == PRE_NONE {
            h.write(self.body);
        } else {
            // The prefixed value in one piece (the hasher's words must not depend on where the
            // prefix ends); on the stack for the usual short ones (metacopy, redirect).
            let (pre, n) = (self.pre(), self.value_len());
            let mut small = [0u8; 128];
            let mut big = Vec::new();
            let v: &mut [u8] = if n <= small.len() {
                &mut small[..n]
            } else {
                big.resize(n, 0);
                &mut big
            };
            v[..pre.len()].copy_from_slice(pre);
            v[pre.len()..].copy_from_slice(self.body);
            h.write(v);
        }
        h.finish()
    }
}

/// Interned xattr keys (full key after the overlay escape), with their bloom-filter bit.
struct Keys<'a> {
    bytes: Vec<std::borrow::Cow<'a, [u8]>>,
    filter: Vec<u32>,
    ids: HashMap<std::borrow::Cow<'a, [u8]>, u32, FastHash>,
}

impl<'a> Keys<'a> {
    fn new() -> Self {
        Keys {
            bytes: Vec::new(),
            filter: Vec::new(),
            ids: HashMap::default(),
        }
    }
    fn id(&mut self, key: std::borrow::Cow<'a, [u8]>) -> u32 {
        if let Some(&id) = self.ids.get(key.as_ref()) {
            return id;
        }
        let id = self.bytes.len() as u32;
        self.filter.push(xattr_filter_bit(&key));
        self.bytes.push(key.clone());
        self.ids.insert(key, id);
        id
    }
    fn get(&self, id: u32) -> &[u8] {
        &self.bytes[id as usize]
    }
}

/// A node's xattrs while they are being assembled, with libcomposefs' size account.
struct XaSet<'a> {
    list: Vec<Xa<'a>>,
    /// libcomposefs' per-inode xattr size account (limit [`XATTR_BUDGET`]).
    budget: usize,
}

impl<'a> XaSet<'a> {
    /// [`XaSet::set`] for a key the writer adds (its account counts the key as written).
    fn set_added(&mut self, keys: &Keys, key: u32, pre: u8, body: &'a [u8]) -> Result<(), WriteError> {
        self.set(Xa { key, pre, body }, keys.get(key).len())
    }
    fn clear(&mut self) {
        self.list.clear();
        self.budget = 0;
    }
    /// A source xattr: counted like lcfs_node_set_xattr but never refused (the source had it).
    fn add_source(&mut self, x: Xa<'a>, key_len: usize) {
        if self.list.is_empty() {
            self.budget += XATTR_HEADER_SIZE;
        }
        match self.list.iter_mut().find(|e| e.key == x.key) {
            None => {
                self.budget += 7 + key_len + x.value_len();
                self.list.push(x);
            }
            Some(e) => {
                self.budget = (self.budget + x.value_len()).saturating_sub(e.value_len());
                *e = x;
            }
        }
    }
    /// Set an xattr the way lcfs_node_set_xattr does, including its size account: the overlay
    /// xattrs the writer adds can exceed the budget, and mkcomposefs then refuses the tree.
    fn set(&mut self, x: Xa<'a>, key_len: usize) -> Result<(), WriteError> {
        if let Some(i) = self.list.iter().position(|e| e.key == x.key) {
            let old = self.list.remove(i);
            if self.list.is_empty() {
                self.budget = 0;
            } else {
                self.budget = self.budget.saturating_sub(7 + key_len + old.value_len());
            }
        }
        let mut entry = 7 + key_len + x.value_len();
        if self.list.is_empty() {
            entry += XATTR_HEADER_SIZE;
        }
        if self.budget + entry > XATTR_BUDGET {
            return Err(WriteError::XattrsTooLarge(self.budget + entry));
        }
        self.budget += entry;
        self.list.push(x);
        Ok(())
    }
}

enum Kind<'a> {
    Dir,
    Reg { inline: Option<&'a [u8]>, external: bool },
    Symlink(&'a [u8]),
    Other,
}

struct Node<'a> {
    src: Option<InodeId>,
    parent: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    rdev: u32,
    /// This node's xattrs: `Plan::xattrs[xa_start..xa_start + xa_len]`, sorted by key.
    xa_start: u32,
    xa_len: u32,
    mtime: Timespec,
    size: u64,
    kind: Kind<'a>,
    /// Directory entries including `.` and `..`, sorted: (name, node index).
    dirents: Vec<(&'a [u8], u32)>,
    // Layout.
    compact: bool,
    xattr_size: u32,
    blkaddr: u32,
    n_blocks: u64,
    tail: u64,
    ipad: u64,
    nid: u64,
}

impl Node<'_> {
    /// A whiteout of the source (chardev 0/0), not one of the root's synthetic ones.
    fn is_whiteout(&self) -> bool {
        self.src.is_some() && self.mode & mode::S_IFMT == mode::S_IFCHR && self.rdev == 0
    }
    /// This node's run in the xattr list.
    fn xattr_range(&self) -> std::ops::Range<usize> {
        self.xa_start as usize..(self.xa_start + self.xa_len) as usize
    }
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
fn dir_layout(dirents: &[(&[u8], u32)]) -> (u64, u64) {
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
fn dir_chunks(dirents: &[(&[u8], u32)], n_blocks: u64) -> (Vec<std::ops::Range<usize>>, std::ops::Range<usize>) {
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

fn encode_dirents(nodes: &[Node], dirents: &[(&[u8], u32)], out: &mut Vec<u8>) {
    let mut nameoff = (dirents.len() * DIRENT_SIZE) as u64;
    for (name, target) in dirents {
        let t = &nodes[*target as usize];
        let d = Dirent {
            nid: t.nid.into(),
            nameoff: (nameoff as u16).into(),
            file_type: ftype(t.mode),
            reserved: 0,
        };
        out.extend_from_slice(d.as_bytes());
        nameoff += name.len() as u64;
    }
    for (name, _) in dirents {
        out.extend_from_slice(name);
    }
}

/// Run `f` on a pool of `threads` workers (0: the current pool, rayon's default).
pub fn with_pool<R: Send, E: From<WriteError> + Send>(
    threads: usize,
    f: impl FnOnce() -> Result<R, E> + Send,
) -> Result<R, E> {
    if threads > 0 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| WriteError::Threads(e.to_string()))?;
        pool.install(f)
    } else {
        f()
    }
}

/// Build the image for `tree` in memory.
pub fn write_image(tree: &Tree, opts: &Options) -> Result<Image, WriteError> {
    with_pool(opts.threads, || {
        let plan = Plan::new(tree, opts)?;
        let mut bytes = Vec::with_capacity(plan.stats.image_size as usize);
        for chunk in plan.chunks() {
            bytes.extend_from_slice(&chunk);
        }
        debug_assert_eq!(bytes.len() as u64, plan.stats.image_size);
        Ok(Image {
            bytes,
            version: plan.version,
            stats: plan.stats.clone(),
        })
    })
}

/// The laid-out image of a tree: everything needed to produce its bytes, which
/// [`Plan::chunks`] then yields in order (the image is never held whole in memory).
pub struct Plan<'a> {
    nodes: Vec<Node<'a>>,
    /// Every node's xattrs, one run per node.
    xattrs: Vec<Xa<'a>>,
    keys: Keys<'a>,
    /// Per entry of `xattrs`: the offset of its shared-table copy, or [`NOT_SHARED`].
    shared_off: Vec<u32>,
    /// The shared table: indices into `xattrs`, in table order.
    shared: Vec<u32>,
    header: CfsHeader,
    sb: Superblock,
    inodes_end: u64,
    data_start: u64,
    pub version: u32,
    pub stats: Stats,
}

const NOT_SHARED: u32 = u32::MAX;

fn check_versions(opts: &Options) -> Result<(), WriteError> {
    if opts.min_version > 1 || opts.max_version > 1 {
        return Err(WriteError::BadVersion(opts.min_version.max(opts.max_version)));
    }
    Ok(())
}

/// The format version, `min_version` raised to 1 (where `max_version` allows) by a
/// whiteout.
fn format_version(nodes: &[Node], opts: &Options) -> u32 {
    let max_version = opts.max_version.max(opts.min_version);
    if opts.min_version < 1 && max_version >= 1 && nodes.iter().any(Node::is_whiteout) {
        1
    } else {
        opts.min_version
    }
}

/// The keys of the xattrs the writer adds for overlayfs.
struct AddedKeys {
    metacopy: u32,
    redirect: u32,
    whiteout: u32,
    user_whiteout: u32,
    whiteouts: u32,
    user_whiteouts: u32,
    opaque_escaped: u32,
    user_opaque: u32,
    opaque: u32,
    selinux: u32,
}

impl AddedKeys {
    fn intern(keys: &mut Keys<'_>) -> AddedKeys {
        let mut k = |s: &'static [u8]| keys.id(std::borrow::Cow::Borrowed(s));
        AddedKeys {
            metacopy: k(b"trusted.overlay.metacopy"),
            redirect: k(b"trusted.overlay.redirect"),
            whiteout: k(b"trusted.overlay.overlay.whiteout"),
            user_whiteout: k(b"user.overlay.whiteout"),
            whiteouts: k(b"trusted.overlay.overlay.whiteouts"),
            user_whiteouts: k(b"user.overlay.whiteouts"),
            opaque_escaped: k(b"trusted.overlay.overlay.opaque"),
            user_opaque: k(b"user.overlay.opaque"),
            opaque: k(b"trusted.overlay.opaque"),
            selinux: k(b"security.selinux"),
        }
    }
}

/// Each node's final set of xattrs (escaping, overlay metadata, whiteouts), stored as
/// one run per node in the returned list, sorted by key. The operations come in the order
/// libcomposefs applies them: its size account, which can refuse a tree, depends on it.
fn assign_xattrs<'a>(
    tree: &'a Tree,
    nodes: &mut [Node<'a>],
    version: u32,
    stats: &mut Stats,
) -> Result<(Keys<'a>, Vec<Xa<'a>>), WriteError> {
    let mut holds_whiteout = vec![false; nodes.len()];
    for n in nodes.iter().filter(|n| n.is_whiteout()) {
        holds_whiteout[n.parent as usize] = true;
    }
    let mut keys = Keys::new();
    let added = AddedKeys::intern(&mut keys);
    let mut xattrs: Vec<Xa<'a>> = Vec::new();
    let mut xs = XaSet {
        list: Vec::new(),
        budget: 0,
    };
    let mut root_selinux: Option<Xa<'a>> = None;
    for (i, n) in nodes.iter_mut().enumerate() {
        xs.clear();
        if let Some(src) = n.src {
            let ino = &tree.inodes[src];
            add_source_xattrs(ino, &mut keys, &mut xs)?;
            if let Kind::Reg { external: true, .. } = n.kind {
                add_object_xattrs(ino, &keys, &added, &mut xs)?;
            }
            if n.is_whiteout() {
                escape_whiteout(n, &keys, &added, &mut xs)?;
                stats.whiteouts += 1;
            }
            if holds_whiteout[i] {
                mark_whiteout_parent(version, &keys, &added, &mut xs)?;
            }
            if i == 0 {
                xs.set_added(&keys, added.opaque, PRE_NONE, b"y")?;
                root_selinux = xs.list.iter().find(|x| x.key == added.selinux).copied();
            }
        } else if let Some(se) = root_selinux {
            // The root's synthetic whiteouts carry its SELinux label, as in libcomposefs.
            xs.set_added(&keys, added.selinux, se.pre, se.body)?;
        }
        xs.list.sort_unstable_by(|a, b| keys.get(a.key).cmp(keys.get(b.key)));
        n.xa_start = xattrs.len() as u32;
        n.xa_len = xs.list.len() as u32;
        xattrs.extend_from_slice(&xs.list);
    }
    Ok((keys, xattrs))
}

/// The source's xattrs, checked, with `trusted.overlay.X` escaped to
/// `trusted.overlay.overlay.X`.
fn add_source_xattrs<'a>(ino: &'a Inode, keys: &mut Keys<'a>, xs: &mut XaSet<'a>) -> Result<(), WriteError> {
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
            std::borrow::Cow::Owned(k)
        } else {
            std::borrow::Cow::Borrowed(x.key.as_slice())
        };
        // Renaming does not change libcomposefs' account: it counts the input key.
        let key = keys.id(key);
        let body = &x.value;
        xs.add_source(
            Xa {
                key,
                pre: PRE_NONE,
                body,
            },
            x.key.len(),
        );
    }
    Ok(())
}

/// An object-backed file's `metacopy` (with its digest when known) and `redirect` (to its
/// payload, when it has one).
fn add_object_xattrs<'a>(ino: &'a Inode, keys: &Keys, added: &AddedKeys, xs: &mut XaSet<'a>) -> Result<(), WriteError> {
    let (payload, digest) = match &ino.data {
        InodeData::Regular { payload, digest, .. } => (payload.as_deref(), digest.as_ref()),
        _ => (None, None),
    };
    match digest {
        Some(d) => xs.set_added(keys, added.metacopy, PRE_METACOPY, d)?,
        None => xs.set_added(keys, added.metacopy, PRE_NONE, b"")?,
    }
    if let Some(p) = payload.filter(|p| !p.is_empty()) {
        xs.set_added(keys, added.redirect, PRE_SLASH, p)?;
    }
    Ok(())
}

/// A whiteout (chardev 0/0) becomes an empty regular file with escaped whiteout xattrs.
fn escape_whiteout(n: &mut Node, keys: &Keys, added: &AddedKeys, xs: &mut XaSet) -> Result<(), WriteError> {
    n.size = 0;
    n.mode = mode::S_IFREG | (n.mode & !mode::S_IFMT);
    n.kind = Kind::Reg {
        inline: None,
        external: false,
    };
    xs.set_added(keys, added.whiteout, PRE_NONE, b"")?;
    xs.set_added(keys, added.user_whiteout, PRE_NONE, b"")
}

/// A directory holding a whiteout is marked so (and, in format 1, opaque=x).
fn mark_whiteout_parent(version: u32, keys: &Keys, added: &AddedKeys, xs: &mut XaSet) -> Result<(), WriteError> {
    xs.set_added(keys, added.whiteouts, PRE_NONE, b"")?;
    xs.set_added(keys, added.user_whiteouts, PRE_NONE, b"")?;
    if version >= 1 {
        xs.set_added(keys, added.opaque_escaped, PRE_NONE, b"x")?;
        xs.set_added(keys, added.user_opaque, PRE_NONE, b"x")?;
    }
    Ok(())
}

/// The oldest mtime of the tree (the superblock's build time, and every compact
/// inode's mtime).
fn min_mtime(nodes: &[Node]) -> Timespec {
    nodes
        .iter()
        .map(|n| n.mtime)
        .fold(nodes[0].mtime, |a, b| if b < a { b } else { a })
}

/// Whether any node has a POSIX ACL (a flag of the composefs header).
fn has_acl_xattr(keys: &Keys, xattrs: &[Xa]) -> bool {
    let acl_keys = [
        keys.ids.get(b"system.posix_acl_access".as_slice()),
        keys.ids.get(b"system.posix_acl_default".as_slice()),
    ];
    xattrs.iter().any(|x| acl_keys.contains(&Some(&x.key)))
}

/// A directory's nlink: 2 + its subdirectories.
fn count_directory_links(nodes: &mut [Node]) {
    for i in 0..nodes.len() {
        if let Kind::Dir = nodes[i].kind {
            let subdirs = nodes[i]
                .dirents
                .iter()
                .filter(|(name, t)| *name != b"." && *name != b".." && matches!(nodes[*t as usize].kind, Kind::Dir))
                .count();
            nodes[i].nlink = 2 + subdirs as u32;
        }
    }
}

/// The shared xattr table.
struct SharedXattrs {
    /// Indices into the xattr list, in table order.
    table: Vec<u32>,
    /// Per entry of the xattr list: the offset of its copy in the table, or [`NOT_SHARED`].
    off: Vec<u32>,
    /// Bytes of the table.
    size: u64,
}

/// Key+values used more than once go to the shared table (reverse-sorted); each node
/// refers to the table for its first 128 sharable xattrs only.
fn share_xattrs(nodes: &[Node], xattrs: &[Xa], keys: &Keys) -> SharedXattrs {
    let (canon, uses) = find_equal_xattrs(xattrs);
    let mut table: Vec<u32> = (0..xattrs.len() as u32).filter(|&i| uses[i as usize] > 1).collect();
    drop(uses);
    table.sort_by(|&a, &b| {
        let (a, b) = (&xattrs[a as usize], &xattrs[b as usize]);
        keys.get(b.key)
            .cmp(keys.get(a.key))
            .then(b.value_len().cmp(&a.value_len()))
            .then(b.value_cmp(a))
    });
    let mut canon_off: HashMap<u32, u32, FastHash> = HashMap::default();
    let mut size = 0u64;
    for &id in &table {
        let x = &xattrs[id as usize];
        canon_off.insert(id, size as u32);
        size += XattrEntry::full_size(keys.get(x.key), x.value_len()) as u64;
    }
    let mut off: Vec<u32> = canon
        .iter()
        .map(|c| canon_off.get(c).copied().unwrap_or(NOT_SHARED))
        .collect();
    drop(canon);
    for n in nodes {
        let mut c = 0;
        for o in &mut off[n.xattr_range()] {
            if *o != NOT_SHARED {
                if c < XATTR_LONG_PREFIX {
                    c += 1;
                } else {
                    *o = NOT_SHARED;
                }
            }
        }
    }
    SharedXattrs { table, off, size }
}

/// For each xattr, the index of the first equal one (key and value), and for each of those
/// how many uses it has. Each distinct one is found by a content hash pointing at its first use
/// (colliding hashes are compared in full).
fn find_equal_xattrs(xattrs: &[Xa]) -> (Vec<u32>, Vec<u32>) {
    let mut first: HashMap<u64, u32, FastHash> = HashMap::with_capacity_and_hasher(xattrs.len(), Default::default());
    let mut collided: HashMap<u64, Vec<u32>, FastHash> = HashMap::default();
    let mut canon: Vec<u32> = Vec::with_capacity(xattrs.len());
    let mut uses: Vec<u32> = vec![0; xattrs.len()];
    // The hashes on all cores (the rest of the layout is sequential).
    let hashes: Vec<u64> = xattrs.par_iter().with_min_len(4096).map(|x| x.content_hash()).collect();
    for (i, (x, &h)) in xattrs.iter().zip(&hashes).enumerate() {
        let c = match first.entry(h) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i as u32);
                i as u32
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let f = *o.get();
                if xattrs[f as usize].same(x) {
                    f
                } else {
                    let more = collided.entry(h).or_default();
                    match more.iter().find(|&&g| xattrs[g as usize].same(x)) {
                        Some(&g) => g,
                        None => {
                            more.push(i as u32);
                            i as u32
                        }
                    }
                }
            }
        };
        canon.push(c);
        uses[c as usize] += 1;
    }
    (canon, uses)
}

/// Place the inodes from [`INODES_START`], each 32-byte aligned, compact where it can
/// be, padded so an inline tail never crosses a block. Returns the end of the inodes and the
/// number of data blocks.
fn lay_out_inodes(
    nodes: &mut [Node],
    xattrs: &[Xa],
    shared_off: &[u32],
    keys: &Keys,
    min_mtime: Timespec,
) -> Result<(u64, u64), WriteError> {
    let mut pos = INODES_START;
    let mut n_data_blocks = 0u64;
    for n in nodes.iter_mut() {
        (n.n_blocks, n.tail) = data_shape(n)?;
        n.compact = fits_compact(n, min_mtime);
        let inode_size = if n.compact { COMPACT_SIZE } else { EXTENDED_SIZE } as u64;
        let range = n.xattr_range();
        let xattr_size = xattr_area_size(&xattrs[range.clone()], &shared_off[range], keys)?;
        n.xattr_size = xattr_size as u32;
        let start = round_up(pos, SLOT_SIZE);
        let extra = keep_tail_in_one_block(n, start, inode_size + xattr_size as u64);
        n.ipad = start - pos + extra;
        pos = start + extra;
        n.nid = pos / SLOT_SIZE;
        n_data_blocks += n.n_blocks;
        pos += inode_size + xattr_size as u64 + n.tail;
    }
    Ok((round_up(pos, SLOT_SIZE), n_data_blocks))
}

/// A node's data as (full blocks, inline tail bytes), before the tail is fitted in a block.
fn data_shape(n: &Node) -> Result<(u64, u64), WriteError> {
    Ok(match n.kind {
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
    })
}

/// A compact inode has no mtime of its own (it is the build time) and 16-bit ids and nlink.
fn fits_compact(n: &Node, min_mtime: Timespec) -> bool {
    let size = match n.kind {
        Kind::Dir => n.n_blocks * BLOCK_SIZE + n.tail,
        _ => n.size,
    };
    n.mtime == min_mtime && n.nlink <= 0xffff && n.uid <= 0xffff && n.gid <= 0xffff && size <= u32::MAX as u64
}

/// Bytes of a node's xattr area: header, shared ids, inline entries.
fn xattr_area_size(xattrs: &[Xa], shared_off: &[u32], keys: &Keys) -> Result<usize, WriteError> {
    let mut n_shared = 0usize;
    let mut unshared = 0usize;
    for (x, &off) in xattrs.iter().zip(shared_off) {
        if off != NOT_SHARED {
            n_shared += 1;
        } else {
            unshared += XattrEntry::full_size(keys.get(x.key), x.value_len());
        }
    }
    let size = if n_shared == 0 && unshared == 0 {
        0
    } else {
        (XATTR_HEADER_SIZE + 4 * n_shared + unshared).div_ceil(4) * 4
    };
    if size > XATTR_HEADER_SIZE + 4 * 65534 {
        return Err(WriteError::XattrsTooLarge(size));
    }
    Ok(size)
}

/// The padding to put before an inode at `pos` whose record without the tail takes `non_tail`
/// bytes so that its inline tail stays in one block; a tail that cannot moves to a data block
/// (the reference's rules, symlinks apart).
fn keep_tail_in_one_block(n: &mut Node, pos: u64, non_tail: u64) -> u64 {
    if let Kind::Symlink(_) = n.kind {
        let total = non_tail + n.tail;
        let pos_block = pos / BLOCK_SIZE;
        let end_block = (pos + total - 1) / BLOCK_SIZE;
        if total / BLOCK_SIZE > 0 {
            n.n_blocks += 1;
            n.tail = 0;
        }
        return if pos_block != end_block {
            round_up(pos, BLOCK_SIZE) - pos
        } else {
            0
        };
    }
    let remainder = BLOCK_SIZE - (pos + non_tail) % BLOCK_SIZE;
    if remainder >= n.tail {
        return 0;
    }
    let extra_pad = round_up(remainder, SLOT_SIZE);
    let remainder = BLOCK_SIZE - (pos + non_tail + extra_pad) % BLOCK_SIZE;
    if n.tail <= remainder {
        extra_pad
    } else {
        n.n_blocks += 1;
        n.tail = 0;
        round_up(pos, BLOCK_SIZE) - pos
    }
}

/// Data blocks follow the shared xattr table, node after node.
fn assign_data_blocks(nodes: &mut [Node], data_start: u64) {
    let mut cur = data_start;
    for n in nodes.iter_mut().filter(|n| n.n_blocks > 0) {
        n.blkaddr = (cur / BLOCK_SIZE) as u32;
        cur += n.n_blocks * BLOCK_SIZE;
    }
}

/// The counts of [`Stats`] that come from the nodes (the root's synthetic whiteouts are not
/// the tree's).
fn count_entries(nodes: &[Node], stats: &mut Stats) {
    for n in nodes {
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
    stats.inodes = nodes.iter().filter(|n| n.src.is_some()).count() as u64;
    let names: u64 = nodes.iter().map(|n| n.dirents.len().saturating_sub(2) as u64).sum();
    stats.hardlinks = names.saturating_sub(nodes.len() as u64 - 1);
}

impl<'a> Plan<'a> {
    /// Lay out the image of `tree`: the steps of the module documentation, one function each.
    pub fn new(tree: &'a Tree, opts: &Options) -> Result<Plan<'a>, WriteError> {
        check_versions(opts)?;
        let mut nodes = bfs_nodes(tree)?;
        let version = format_version(&nodes, opts);
        let mut stats = Stats::default();
        let (keys, xattrs) = assign_xattrs(tree, &mut nodes, version, &mut stats)?;
        let min_mtime = min_mtime(&nodes);
        let has_acl = has_acl_xattr(&keys, &xattrs);
        count_directory_links(&mut nodes);
        let shared = share_xattrs(&nodes, &xattrs, &keys);
        stats.shared_xattrs = shared.table.len() as u64;
        let (inodes_end, n_data_blocks) = lay_out_inodes(&mut nodes, &xattrs, &shared.off, &keys, min_mtime)?;
        let data_start = round_up(inodes_end + shared.size, BLOCK_SIZE);
        assign_data_blocks(&mut nodes, data_start);
        let header = CfsHeader::new(if has_acl { CFS_FLAG_HAS_ACL } else { 0 }, version);
        let sb = Superblock {
            magic: EROFS_MAGIC.into(),
            feature_compat: (FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER).into(),
            blkszbits: BLOCK_BITS as u8,
            root_nid: (nodes[0].nid as u16).into(),
            inos: (nodes.len() as u64).into(),
            build_time: (min_mtime.sec as u64).into(),
            build_time_nsec: min_mtime.nsec.into(),
            blocks: ((data_start / BLOCK_SIZE + n_data_blocks) as u32).into(),
            meta_blkaddr: 0.into(),
            xattr_blkaddr: ((inodes_end / BLOCK_SIZE) as u32).into(),
            ..Default::default()
        };
        count_entries(&nodes, &mut stats);
        stats.image_size = data_start + n_data_blocks * BLOCK_SIZE;
        Ok(Plan {
            nodes,
            xattrs,
            keys,
            shared_off: shared.off,
            shared: shared.table,
            header,
            sb,
            inodes_end,
            data_start,
            version,
            stats,
        })
    }

    /// The image bytes, in pieces of about a megabyte, in order.
    pub fn chunks(&self) -> Chunks<'_, 'a> {
        Chunks {
            plan: self,
            stage: 0,
            next: 0,
            pos: 0,
        }
    }

    /// Where node `i`'s bytes (the padding before its inode record, then the record) start.
    fn node_start(&self, i: usize) -> u64 {
        self.nodes[i].nid * SLOT_SIZE - self.nodes[i].ipad
    }

    /// Append the inode record of node `i` (with its padding before it) to `out`.
    fn encode_inode(&self, i: usize, out: &mut Vec<u8>) {
        let start = out.len();
        let n = &self.nodes[i];
        out.resize(start + n.ipad as usize, 0);
        let t = n.mode & mode::S_IFMT;
        let mut layout = if n.tail > 0 {
            LAYOUT_FLAT_INLINE
        } else {
            LAYOUT_FLAT_PLAIN
        };
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
        let xattr_size = n.xattr_size as usize;
        let xattr_icount = if xattr_size == 0 {
            0
        } else {
            ((xattr_size - XATTR_HEADER_SIZE) / 4 + 1) as u16
        };
        DiskInode {
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
        .encode_into(out);
        if xattr_size > 0 {
            let range = n.xattr_range();
            let (xs, offs) = (&self.xattrs[range.clone()], &self.shared_off[range]);
            let filter = xs.iter().fold(0u32, |f, x| f | self.keys.filter[x.key as usize]);
            let n_shared = offs.iter().filter(|&&o| o != NOT_SHARED).count();
            let head = XattrIbodyHeader {
                name_filter: (!filter).into(),
                shared_count: n_shared as u8,
                reserved: [0; 7],
            };
            out.extend_from_slice(head.as_bytes());
            let shared_base = self.inodes_end % BLOCK_SIZE;
            for &off in offs.iter().filter(|&&o| o != NOT_SHARED) {
                out.extend_from_slice(&(((shared_base + off as u64) / 4) as u32).to_le_bytes());
            }
            for (x, &off) in xs.iter().zip(offs) {
                if off == NOT_SHARED {
                    XattrEntry::encode_parts(self.keys.get(x.key), &x.value_parts(), out);
                }
            }
        }
        if n.tail > 0 {
            match n.kind {
                Kind::Dir => {
                    let (_, tail) = dir_chunks(&n.dirents, n.n_blocks);
                    encode_dirents(&self.nodes, &n.dirents[tail], out);
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
            (out.len() - start) as u64,
            n.ipad + if n.compact { COMPACT_SIZE } else { EXTENDED_SIZE } as u64 + n.xattr_size as u64 + n.tail,
            "inode record {i} size"
        );
    }

    /// Append the data blocks of node `i` to `out`.
    fn encode_blocks(&self, i: usize, out: &mut Vec<u8>) {
        let n = &self.nodes[i];
        let start = out.len();
        match n.kind {
            Kind::Dir => {
                let (full, _) = dir_chunks(&n.dirents, n.n_blocks);
                for r in full {
                    let s = out.len();
                    encode_dirents(&self.nodes, &n.dirents[r], out);
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
}

/// Nodes per parallel encoding task, and tasks per chunk.
const NODES_PER_TASK: usize = 512;
const TASKS_PER_CHUNK: usize = 16;
const CHUNK_BYTES: usize = 1 << 20;

/// The bytes of a [`Plan`]'s image, a chunk at a time (see [`Plan::chunks`]).
pub struct Chunks<'p, 'a> {
    plan: &'p Plan<'a>,
    /// 0 header, 1 inodes, 2 shared xattrs, 3 data blocks, 4 done.
    stage: u8,
    /// Next node to encode in stages 1 and 3.
    next: usize,
    /// Bytes produced so far.
    pos: u64,
}

impl Iterator for Chunks<'_, '_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let p = self.plan;
        let out = match self.stage {
            0 => {
                let mut out = Vec::with_capacity(INODES_START as usize);
                out.extend_from_slice(p.header.as_bytes());
                out.resize(SUPER_OFFSET as usize, 0);
                out.extend_from_slice(p.sb.as_bytes());
                self.stage = 1;
                out
            }
            1 => {
                let end = (self.next + NODES_PER_TASK * TASKS_PER_CHUNK).min(p.nodes.len());
                let parts: Vec<Vec<u8>> = (self.next..end)
                    .step_by(NODES_PER_TASK)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|first| {
                        let last = (first + NODES_PER_TASK).min(end);
                        let upto = if last < p.nodes.len() {
                            p.node_start(last)
                        } else {
                            p.inodes_end
                        };
                        let mut out = Vec::with_capacity((upto - p.node_start(first)) as usize);
                        for i in first..last {
                            p.encode_inode(i, &mut out);
                        }
                        out
                    })
                    .collect();
                let mut out = parts.concat();
                drop(parts);
                self.next = end;
                if end == p.nodes.len() {
                    let len = self.pos + out.len() as u64;
                    out.resize(out.len() + (round_up(len, SLOT_SIZE) - len) as usize, 0);
                    self.stage = 2;
                    self.next = 0;
                }
                out
            }
            2 => {
                debug_assert_eq!(self.pos, p.inodes_end);
                let mut out = Vec::new();
                for &id in &p.shared {
                    let x = &p.xattrs[id as usize];
                    XattrEntry::encode_parts(p.keys.get(x.key), &x.value_parts(), &mut out);
                }
                out.resize((p.data_start - self.pos) as usize, 0);
                self.stage = 3;
                out
            }
            3 => {
                let mut out = Vec::with_capacity(CHUNK_BYTES + BLOCK_SIZE as usize);
                while self.next < p.nodes.len() && out.len() < CHUNK_BYTES {
                    if p.nodes[self.next].n_blocks > 0 {
                        p.encode_blocks(self.next, &mut out);
                    }
                    self.next += 1;
                }
                if self.next == p.nodes.len() {
                    self.stage = 4;
                }
                out
            }
            _ => return None,
        };
        self.pos += out.len() as u64;
        Some(out)
    }
}

/// A directory's entries while `bfs_nodes` lays them out: the name, and the entry's index and inode
/// (`None` for a synthetic whiteout of the root).
type Listing<'t> = Vec<(&'t [u8], Option<(usize, InodeId)>)>;

/// The nodes in breadth-first order (a hardlinked inode sits where the entry holding it
/// is), with their directory entries; plus the synthetic whiteouts `00`..`ff` of the root.
fn bfs_nodes(tree: &Tree) -> Result<Vec<Node<'_>>, WriteError> {
    let holders = tree.holders();
    let mut nodes: Vec<Node> = Vec::with_capacity(tree.inodes.len() + HEX_NAMES.len());
    let mut node_of: Vec<u32> = vec![u32::MAX; tree.inodes.len()];
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
                        Some(c) if !c.is_empty() => Kind::Reg {
                            inline: Some(c),
                            external: false,
                        },
                        _ => Kind::Reg {
                            inline: None,
                            external: ino.size > 0,
                        },
                    },
                    (_, mode::S_IFREG) => Kind::Reg {
                        inline: None,
                        external: ino.size > 0,
                    },
                    (InodeData::Symlink { target }, mode::S_IFLNK) => {
                        // What a kernel (and our reader) accepts: 1..PATH_MAX-1 bytes, no NUL.
                        // Trees from a dump or a scan always are; a merged layer record need not be.
                        if target.is_empty() || target.len() >= crate::dump::PATH_MAX || target.contains(&0) {
                            return Err(WriteError::BadSymlink(String::from_utf8_lossy(target).into_owned()));
                        }
                        Kind::Symlink(target)
                    }
                    (_, mode::S_IFLNK) => return Err(WriteError::BadMode(ino.mode)),
                    (_, mode::S_IFCHR | mode::S_IFBLK | mode::S_IFIFO | mode::S_IFSOCK) => Kind::Other,
                    _ => return Err(WriteError::BadMode(ino.mode)),
                };
                let size = match &kind {
                    Kind::Reg { inline: Some(c), .. } => c.len() as u64,
                    Kind::Symlink(t) => t.len() as u64,
                    _ => ino.size,
                };
                (
                    ino.mode,
                    ino.uid,
                    ino.gid,
                    ino.nlink,
                    ino.rdev as u32,
                    ino.mtime,
                    size,
                    kind,
                )
            }
        };
        Ok(Node {
            src,
            parent: parent as u32,
            mode: m,
            uid,
            gid,
            nlink,
            rdev,
            xa_start: 0,
            xa_len: 0,
            mtime,
            size,
            kind,
            dirents: Vec::new(),
            compact: false,
            xattr_size: 0,
            blkaddr: 0,
            n_blocks: 0,
            tail: 0,
            ipad: 0,
            nid: 0,
        })
    };
    nodes.push(new_node(Some(ROOT), 0)?);
    node_of[ROOT] = 0;
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
        let mut list: Listing = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_slice(), Some((i, e.inode))))
            .collect();
        if src == ROOT && qi == 0 {
            for n in HEX_NAMES.iter() {
                if tree.lookup(ROOT, n).is_none() {
                    list.push((n.as_slice(), None));
                }
            }
            list.sort_by(|a, b| a.0.cmp(b.0));
        }
        let mut dirents: Vec<(&[u8], u32)> = Vec::with_capacity(list.len() + 2);
        dirents.push((b".", qi as u32));
        dirents.push((b"..", nodes[qi].parent));
        for (name, what) in list {
            if name.is_empty()
                || name.len() > 255
                || name.contains(&b'/')
                || name.contains(&0)
                || name == b"."
                || name == b".."
            {
                return Err(WriteError::BadName(String::from_utf8_lossy(name).into_owned()));
            }
            match what {
                None => {
                    let n = new_node(None, qi)?;
                    nodes.push(n);
                    dirents.push((name, (nodes.len() - 1) as u32));
                }
                Some((i, ino)) => {
                    let holds = tree.inodes[ino].is_dir() || holders[ino] == Some((src, i));
                    if holds && node_of[ino] == u32::MAX && ino != ROOT {
                        let n = new_node(Some(ino), qi)?;
                        nodes.push(n);
                        node_of[ino] = (nodes.len() - 1) as u32;
                        dirents.push((name, (nodes.len() - 1) as u32));
                    } else {
                        dirents.push((name, u32::MAX));
                    }
                }
            }
        }
        dirents.sort_by(|a, b| a.0.cmp(b.0));
        nodes[qi].dirents = dirents;
        qi += 1;
    }
    drop(holders);
    for node in nodes.iter_mut() {
        let Some(src) = node.src else { continue };
        for (name, target) in node.dirents.iter_mut().filter(|d| d.1 == u32::MAX) {
            *target = tree
                .lookup(src, name)
                .map(|ino| node_of[ino])
                .filter(|&n| n != u32::MAX)
                .ok_or_else(|| WriteError::BadName(String::from_utf8_lossy(name).into_owned()))?;
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{parse, SAMPLE};
    use crate::tree::{Inode, InodeData, Timespec, ROOT};

    fn sample_with_whiteout() -> Tree {
        let mut tree = parse(SAMPLE).unwrap();
        let dir = tree.resolve(b"/dir").unwrap();
        let wh = tree.push(Inode {
            mode: mode::S_IFCHR,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            mtime: Timespec::default(),
            size: 0,
            xattrs: vec![],
            data: InodeData::Special,
        });
        assert!(tree.link(dir, b"gone".to_vec(), wh));
        tree
    }

    fn versions(min_version: u32, max_version: u32) -> Options {
        Options {
            min_version,
            max_version,
            threads: 1,
        }
    }

    #[test]
    fn header_superblock_and_counts() {
        let img = write_image(&parse(SAMPLE).unwrap(), &Options::default()).unwrap();
        let b = &img.bytes;
        let h: CfsHeader = read_at(b).unwrap();
        assert_eq!(
            (h.magic.get(), h.version.get(), h.composefs_version.get()),
            (CFS_MAGIC, CFS_HEADER_VERSION, 0)
        );
        assert!(b[CFS_HEADER_SIZE..SUPER_OFFSET as usize].iter().all(|&x| x == 0));
        let sb: Superblock = read_at(&b[SUPER_OFFSET as usize..]).unwrap();
        assert_eq!(sb.magic.get(), EROFS_MAGIC);
        assert_eq!(sb.build_time.get(), 999, "build time is the tree's oldest mtime");
        assert_eq!(img.stats.image_size, b.len() as u64);
        let s = &img.stats;
        // The root's 256 synthetic whiteouts are inodes but not counted as the tree's whiteouts.
        assert_eq!(
            (
                s.directories,
                s.regular_files,
                s.inline_files,
                s.object_files,
                s.symlinks,
                s.devices,
                s.hardlinks
            ),
            (2, 4, 1, 1, 1, 2, 1)
        );
        assert_eq!(s.external_bytes, 100000);
    }

    #[test]
    fn whiteouts_raise_the_version_within_its_bounds() {
        let plain = parse(SAMPLE).unwrap();
        let wh = sample_with_whiteout();
        for (tree, min, max, want) in [(&plain, 0, 1, 0), (&plain, 1, 1, 1), (&wh, 0, 1, 1), (&wh, 0, 0, 0)] {
            let img = write_image(tree, &versions(min, max)).unwrap();
            assert_eq!(img.version, want, "min {min} max {max}");
            assert_eq!(read_at::<CfsHeader>(&img.bytes).unwrap().composefs_version.get(), want);
        }
        assert!(matches!(
            write_image(&plain, &versions(2, 2)),
            Err(WriteError::BadVersion(2))
        ));
    }

    #[test]
    fn bytes_do_not_depend_on_threads() {
        let tree = sample_with_whiteout();
        let one = write_image(&tree, &versions(0, 1)).unwrap().bytes;
        for threads in [2, 4] {
            let opts = Options {
                threads,
                ..versions(0, 1)
            };
            assert!(write_image(&tree, &opts).unwrap().bytes == one, "{threads} threads");
        }
    }

    #[test]
    fn invalid_names_and_modes_are_refused() {
        for name in [&b"a/b"[..], b"", b"..", b"nul\0"] {
            let mut tree = Tree::default();
            let d = tree.push(Inode::new_dir(0o755));
            // Tree::link does not check names: the writer is the last line of defence.
            tree.link(ROOT, name.to_vec(), d);
            assert!(
                matches!(write_image(&tree, &Options::default()), Err(WriteError::BadName(_))),
                "{name:?}"
            );
        }
        let mut tree = Tree::default();
        let mut odd = Inode::new_dir(0o644);
        odd.mode = 0o170644;
        odd.data = InodeData::Special;
        let id = tree.push(odd);
        tree.link(ROOT, b"odd".to_vec(), id);
        assert!(matches!(
            write_image(&tree, &Options::default()),
            Err(WriteError::BadMode(_))
        ));
    }

    fn tree_with_symlink(target: &[u8]) -> Tree {
        let mut tree = Tree::new(Inode::new_dir(0o755));
        let link = tree.push(Inode {
            mode: mode::S_IFLNK | 0o777,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            mtime: Timespec::default(),
            size: target.len() as u64,
            xattrs: Vec::new(),
            data: InodeData::Symlink {
                target: target.to_vec(),
            },
        });
        assert!(tree.link(crate::tree::ROOT, b"l".to_vec(), link));
        tree
    }

    /// Found by the oci_layer fuzz target: a kept layer record with a NUL in a symlink target
    /// merged into a tree whose image the reader (like the kernel) then refused.
    #[test]
    fn refuses_symlinks_no_reader_accepts() {
        let long = vec![b'x'; 4096];
        for target in [&b""[..], b"a\0b", &long] {
            let err = write_image(&tree_with_symlink(target), &Options::default()).err();
            assert!(matches!(err, Some(WriteError::BadSymlink(_))), "{target:?}: {err:?}");
        }
        let ok = write_image(&tree_with_symlink(&long[..4095]), &Options::default()).unwrap();
        crate::erofs::reader::read_image(&ok.bytes).unwrap();
    }
}
