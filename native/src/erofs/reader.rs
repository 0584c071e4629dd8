// SPDX-License-Identifier: MIT OR Apache-2.0
//! The composefs EROFS reader: image bytes → [`Tree`], undoing what the writer added (the root's
//! `00`..`ff` whiteouts and opaque mark, overlay metadata xattrs, escaped whiteouts, the escaping
//! of `trusted.overlay.*`) so that dump → image → dump round-trips. Every offset and length is
//! checked: a malformed image gives a [`ReadError`], never a panic.

use super::format::*;
use crate::tree::{mode, DirEntry, Inode, InodeData, InodeId, Timespec, Tree, Xattr, ROOT};
use std::collections::{HashMap, HashSet, VecDeque};
use zerocopy::FromBytes;

/// Why an image cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("image too small ({0} bytes)")]
    TooSmall(usize),
    #[error("not a composefs image (bad magic)")]
    BadMagic,
    #[error("unsupported composefs header version {0}")]
    BadVersion(u32),
    #[error("not an EROFS image (bad superblock magic)")]
    BadSuperMagic,
    #[error("unsupported block size 2^{0}")]
    BadBlockSize(u8),
    #[error("not a regular file")]
    NotRegularFile,
    #[error("image too large ({0} bytes; at most {MAX_IMAGE_SIZE} are read)")]
    TooLarge(u64),
    #[error("corrupt image: inode {nid}: {what}")]
    Corrupt { nid: u64, what: String },
}

/// The largest image file read. An image records metadata only (file contents live in objects),
/// so even trees of millions of entries stay far below it; the bound keeps a device or a huge
/// file given by mistake from being read into memory.
pub const MAX_IMAGE_SIZE: u64 = 1 << 30;

/// The bytes of an image file, read from an open descriptor (with `pread`, from offset 0). Only a
/// regular file of at most [`MAX_IMAGE_SIZE`] bytes is read: the check comes before the first
/// read, so a FIFO, a device or an endless file is refused instead of read. The outer error is
/// the file's (I/O), the inner one the image's.
pub fn read_image_file(file: &std::fs::File) -> std::io::Result<Result<Vec<u8>, ReadError>> {
    use std::io::Read;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Err(ReadError::NotRegularFile));
    }
    if meta.len() > MAX_IMAGE_SIZE {
        return Ok(Err(ReadError::TooLarge(meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file growing while read is cut at the bound plus one byte, which then fails the check.
    crate::store::PosReader { file, pos: 0 }
        .take(MAX_IMAGE_SIZE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IMAGE_SIZE {
        return Ok(Err(ReadError::TooLarge(bytes.len() as u64)));
    }
    Ok(Ok(bytes))
}

/// A loaded image.
pub struct Loaded {
    pub tree: Tree,
    /// composefs format version from the header.
    pub version: u32,
    pub flags: u32,
}

struct Ctx<'a> {
    img: &'a [u8],
    meta: usize,
    xattr_base: usize,
    sb: Superblock,
    /// A compact inode's mtime.
    build_time: Timespec,
    /// Presenting a source view ([`View::Source`] or [`View::SourceWithOpaque`]).
    source: bool,
}

fn corrupt(nid: u64, what: impl Into<String>) -> ReadError {
    ReadError::Corrupt { nid, what: what.into() }
}

struct RawInode<'a> {
    di: DiskInode,
    /// Inode start offset in the image.
    off: usize,
    xattrs: Vec<(Vec<u8>, &'a [u8])>,
}

impl<'a> Ctx<'a> {
    fn slice(&self, nid: u64, off: u64, len: u64, what: &str) -> Result<&'a [u8], ReadError> {
        let end = off
            .checked_add(len)
            .ok_or_else(|| corrupt(nid, format!("{what} out of range")))?;
        if end > self.img.len() as u64 {
            return Err(corrupt(nid, format!("{what} beyond the end of the image")));
        }
        Ok(&self.img[off as usize..end as usize])
    }

    fn inode(&self, nid: u64) -> Result<RawInode<'a>, ReadError> {
        let off = (self.meta as u64)
            .checked_add(
                nid.checked_mul(SLOT_SIZE)
                    .ok_or_else(|| corrupt(nid, "nid out of range"))?,
            )
            .ok_or_else(|| corrupt(nid, "nid out of range"))?;
        let head = self.slice(nid, off, COMPACT_SIZE as u64, "inode")?;
        let di = if head[0] & 1 == 0 {
            DiskInode::decode(head)
        } else {
            DiskInode::decode(self.slice(nid, off, EXTENDED_SIZE as u64, "inode")?)
        }
        .ok_or_else(|| corrupt(nid, "truncated inode"))?;
        let xsize = di.xattr_size() as u64;
        let xarea = self.slice(nid, off + di.disk_size() as u64, xsize, "xattrs")?;
        let mut xattrs = Vec::new();
        if xsize > 0 {
            let h: XattrIbodyHeader = read_at(xarea).ok_or_else(|| corrupt(nid, "xattr area too small"))?;
            let shared_end = XATTR_HEADER_SIZE + 4 * h.shared_count as usize;
            if shared_end > xarea.len() {
                return Err(corrupt(nid, "shared xattr ids beyond the xattr area"));
            }
            // Inline entries first, then shared ones (the reference reader's order).
            let mut p = shared_end;
            while let Some(e) = xarea.get(p..).and_then(read_at::<XattrEntry>) {
                let total = e.total_size();
                if p + XATTR_ENTRY_SIZE + e.name_len as usize + e.value_size.get() as usize > xarea.len() {
                    return Err(corrupt(nid, "xattr entry beyond the xattr area"));
                }
                xattrs.push(self.xattr_from(nid, &xarea[p..], e)?);
                p += total;
            }
            for i in 0..h.shared_count as usize {
                let id = u32::from_le_bytes(xarea[XATTR_HEADER_SIZE + 4 * i..][..4].try_into().unwrap()) as u64;
                let eoff = self.xattr_base as u64 + id * 4;
                let head = self.slice(nid, eoff, XATTR_ENTRY_SIZE as u64, "shared xattr")?;
                let e: XattrEntry = read_at(head).expect("sliced to its size");
                let body = self.slice(
                    nid,
                    eoff,
                    (XATTR_ENTRY_SIZE + e.name_len as usize + e.value_size.get() as usize) as u64,
                    "shared xattr",
                )?;
                xattrs.push(self.xattr_from(nid, body, e)?);
            }
        }
        Ok(RawInode {
            di,
            off: off as usize,
            xattrs,
        })
    }

    fn xattr_from(&self, nid: u64, b: &'a [u8], e: XattrEntry) -> Result<(Vec<u8>, &'a [u8]), ReadError> {
        let name = &b[XATTR_ENTRY_SIZE..XATTR_ENTRY_SIZE + e.name_len as usize];
        let value = &b[XATTR_ENTRY_SIZE + e.name_len as usize..][..e.value_size.get() as usize];
        let key = xattr_join(e.name_index, name)
            .ok_or_else(|| corrupt(nid, format!("unknown xattr prefix {}", e.name_index)))?;
        if key.is_empty() || key.contains(&0) {
            return Err(corrupt(nid, "invalid xattr name"));
        }
        Ok((key, value))
    }

    /// Bytes of an inode's data: full blocks from `raw_blkaddr`, then the inline tail.
    fn data(&self, nid: u64, raw: &RawInode<'a>, size: u64) -> Result<Vec<&'a [u8]>, ReadError> {
        let layout = raw.di.layout();
        let (blocks_len, tail_len) = match layout {
            LAYOUT_FLAT_PLAIN => (size, 0),
            LAYOUT_FLAT_INLINE => (size - size % BLOCK_SIZE, size % BLOCK_SIZE),
            other => return Err(corrupt(nid, format!("unexpected data layout {other}"))),
        };
        let mut parts = Vec::new();
        if blocks_len > 0 {
            parts.push(self.slice(nid, raw.di.i_u as u64 * BLOCK_SIZE, blocks_len, "data blocks")?);
        }
        if tail_len > 0 {
            let toff = (raw.off + raw.di.disk_size() + raw.di.xattr_size()) as u64;
            if toff / BLOCK_SIZE != (toff + tail_len - 1) / BLOCK_SIZE {
                return Err(corrupt(nid, "inline data crosses a block boundary"));
            }
            parts.push(self.slice(nid, toff, tail_len, "inline data")?);
        }
        Ok(parts)
    }
}

/// Parse one directory block: (name, nid) pairs.
fn dir_block(nid: u64, blk: &[u8]) -> Result<Vec<(&[u8], u64)>, ReadError> {
    let first: Dirent = read_at(blk).ok_or_else(|| corrupt(nid, "directory block too small"))?;
    let table = first.nameoff.get() as usize;
    let n = table / DIRENT_SIZE;
    if !table.is_multiple_of(DIRENT_SIZE) || n == 0 || table > blk.len() {
        return Err(corrupt(nid, "bad directory entry table"));
    }
    let (ents, _) = <[Dirent]>::ref_from_prefix_with_elems(blk, n).expect("the table fits in the block");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = ents[i].nameoff.get() as usize;
        let end = if i + 1 < n {
            ents[i + 1].nameoff.get() as usize
        } else {
            blk.len()
        };
        if start > end || end > blk.len() {
            return Err(corrupt(nid, "bad directory entry name offset"));
        }
        let mut name = &blk[start..end];
        if i + 1 == n {
            if let Some(z) = name.iter().position(|&c| c == 0) {
                name = &name[..z];
            }
        }
        if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name.contains(&0) {
            return Err(corrupt(nid, "invalid name in directory"));
        }
        out.push((name, ents[i].nid.get()));
    }
    Ok(out)
}

const OVL: &[u8] = b"trusted.overlay.";
const OVL_ESC: &[u8] = b"trusted.overlay.overlay.";

/// How a loaded image is presented: as the tree it was built from, or as a mount shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The tree that dumps back to the dump it was built from: escaped whiteouts are whiteouts
    /// (chardev 0/0) again, and the markings the writer adds for them are left out.
    Source,
    /// [`View::Source`] keeping format 1's `opaque=x` marks (what composefs-info shows: every
    /// xattr the image holds for an entry).
    SourceWithOpaque,
    /// What the kernel paths (the module, EROFS + overlayfs) present: overlayfs only unescapes
    /// `trusted.overlay.overlay.*`, so an escaped whiteout is an empty regular file showing
    /// `trusted.overlay.whiteout`, and every escaped or `user.overlay.*` marking stays visible.
    Mounted,
}

/// Load a composefs image, as a tree that dumps back to the dump it was built from: the
/// `opaque=x` marks format 1 adds to directories holding whiteouts are left out (the writer adds
/// them again).
pub fn read_image(img: &[u8]) -> Result<Loaded, ReadError> {
    read_image_view(img, View::Source)
}

/// [`read_image`], keeping the `opaque=x` marks of format 1 when `keep_opaque`.
pub fn read_image_with(img: &[u8], keep_opaque: bool) -> Result<Loaded, ReadError> {
    let view = if keep_opaque {
        View::SourceWithOpaque
    } else {
        View::Source
    };
    read_image_view(img, view)
}

/// Load a composefs image presented as `view` says.
pub fn read_image_view(img: &[u8], view: View) -> Result<Loaded, ReadError> {
    let (header, ctx) = Ctx::open(img, view)?;
    let mut walk = Walk::from_root(&ctx)?;
    walk.load_directories()?;
    let Walk {
        mut tree,
        id_of,
        seen,
        first_seen,
        ..
    } = walk;
    let marked = whiteout_marked_directories(&tree);
    // Format 1 marks directories holding whiteouts opaque=x; the writer adds it again.
    if header.composefs_version.get() >= 1 && view == View::Source {
        drop_whiteout_opaque_marks(&mut tree);
    }
    record_hardlink_holders(&mut tree, &seen, first_seen, &id_of, &marked);
    Ok(Loaded {
        tree,
        version: header.composefs_version.get(),
        flags: header.flags.get(),
    })
}

impl<'a> Ctx<'a> {
    /// Check the composefs header and the superblock; the context every later read uses.
    fn open(img: &'a [u8], view: View) -> Result<(CfsHeader, Ctx<'a>), ReadError> {
        if img.len() < SUPER_OFFSET as usize + SUPER_SIZE {
            return Err(ReadError::TooSmall(img.len()));
        }
        let h: CfsHeader = read_at(img).expect("checked length");
        if h.magic.get() != CFS_MAGIC {
            return Err(ReadError::BadMagic);
        }
        if h.version.get() != CFS_HEADER_VERSION {
            return Err(ReadError::BadVersion(h.version.get()));
        }
        let sb: Superblock = read_at(&img[SUPER_OFFSET as usize..]).expect("checked length");
        if sb.magic.get() != EROFS_MAGIC {
            return Err(ReadError::BadSuperMagic);
        }
        if sb.blkszbits as u32 != BLOCK_BITS {
            return Err(ReadError::BadBlockSize(sb.blkszbits));
        }
        let meta = sb.meta_blkaddr.get() as u64 * BLOCK_SIZE;
        let xattr_base = sb.xattr_blkaddr.get() as u64 * BLOCK_SIZE;
        if meta >= img.len() as u64 || xattr_base > img.len() as u64 {
            return Err(corrupt(
                sb.root_nid.get() as u64,
                "metadata or xattr area beyond the image",
            ));
        }
        let ctx = Ctx {
            img,
            meta: meta as usize,
            xattr_base: xattr_base as usize,
            build_time: Timespec {
                sec: sb.build_time.get() as i64,
                nsec: sb.build_time_nsec.get(),
            },
            source: view != View::Mounted,
            sb,
        };
        Ok((h, ctx))
    }

    /// One inode as the tree holds it (not its directory entries), or `None` for a chardev 0/0:
    /// the root's synthetic whiteouts.
    fn load_inode(&self, nid: u64) -> Result<Option<Inode>, ReadError> {
        let raw = self.inode(nid)?;
        let di = &raw.di;
        let m = di.mode as u32;
        let t = m & mode::S_IFMT;
        let mtime = if di.compact() {
            self.build_time
        } else {
            Timespec {
                sec: di.mtime as i64,
                nsec: di.mtime_nsec,
            }
        };
        let mut ino = Inode {
            mode: m,
            uid: di.uid,
            gid: di.gid,
            nlink: di.nlink,
            rdev: 0,
            mtime,
            size: di.size,
            xattrs: Vec::new(),
            data: InodeData::Special,
        };
        match t {
            mode::S_IFCHR | mode::S_IFBLK => {
                ino.rdev = di.i_u as u64;
                if t == mode::S_IFCHR && di.i_u == 0 {
                    return Ok(None);
                }
            }
            mode::S_IFDIR => ino.data = InodeData::Directory { entries: Vec::new() },
            mode::S_IFLNK => {
                if di.size == 0 || di.size >= 4096 {
                    return Err(corrupt(nid, "bad symlink size"));
                }
                let target: Vec<u8> = self.data(nid, &raw, di.size)?.concat();
                if target.contains(&0) {
                    return Err(corrupt(nid, "NUL in symlink target"));
                }
                ino.data = InodeData::Symlink { target };
            }
            mode::S_IFREG => {
                let inline = if di.size > 0 && di.layout() != LAYOUT_CHUNK_BASED {
                    if di.size > self.img.len() as u64 {
                        return Err(corrupt(nid, "inline file larger than the image"));
                    }
                    Some(self.data(nid, &raw, di.size)?.concat())
                } else {
                    None
                };
                ino.data = InodeData::Regular {
                    inline,
                    payload: None,
                    digest: None,
                };
            }
            mode::S_IFIFO | mode::S_IFSOCK => {}
            _ => return Err(corrupt(nid, format!("bad mode {m:o}"))),
        }
        self.undo_overlay_xattrs(&mut ino, raw.xattrs);
        Ok(Some(ino))
    }

    /// Give `ino` the xattrs of its image entry minus what the writer added for overlayfs: the
    /// metacopy digest and redirect become the file's digest and payload; in the source views an
    /// escaped whiteout becomes a whiteout again and the whiteout markings go; escaped
    /// `trusted.overlay.overlay.*` keys lose one `overlay.`, other `trusted.overlay.*` ones go.
    fn undo_overlay_xattrs(&self, ino: &mut Inode, xattrs: Vec<(Vec<u8>, &[u8])>) {
        for (key, value) in xattrs {
            let is_reg = ino.is_regular();
            if key == b"trusted.overlay.redirect" {
                if let InodeData::Regular { payload, .. } = &mut ino.data {
                    let v = if value.len() > 1 && value[0] == b'/' {
                        &value[1..]
                    } else {
                        value
                    };
                    *payload = Some(v.to_vec());
                }
                continue;
            }
            if key == b"trusted.overlay.metacopy" {
                if let InodeData::Regular { digest, .. } = &mut ino.data {
                    if let Some(d) = Metacopy::digest(value) {
                        *digest = Some(d);
                    }
                }
                continue;
            }
            if key == b"trusted.overlay.overlay.whiteout" && is_reg && self.source {
                ino.mode = (ino.mode & !mode::S_IFMT) | mode::S_IFCHR;
                ino.rdev = 0;
                ino.size = 0;
                ino.data = InodeData::Special;
                continue;
            }
            if self.source
                && (key == b"trusted.overlay.overlay.whiteouts"
                    || key == b"user.overlay.whiteout"
                    || key == b"user.overlay.whiteouts")
            {
                continue;
            }
            let key = if key.starts_with(OVL) {
                if !key.starts_with(OVL_ESC) {
                    continue;
                }
                let mut k = b"trusted.".to_vec();
                k.extend_from_slice(&key[OVL.len()..]);
                k
            } else {
                key
            };
            match ino.xattrs.iter_mut().find(|x| x.key == key) {
                Some(x) => x.value = value.to_vec(),
                None => ino.xattrs.push(Xattr {
                    key,
                    value: value.to_vec(),
                }),
            }
        }
    }

    /// The (name, nid) entries of directory `nid`, `.` and `..` included, block by block.
    fn dir_entries(&self, nid: u64) -> Result<Vec<(&'a [u8], u64)>, ReadError> {
        let raw = self.inode(nid)?;
        let mut out = Vec::new();
        for part in self.data(nid, &raw, raw.di.size)? {
            for blk in part.chunks(BLOCK_SIZE as usize) {
                out.extend(dir_block(nid, blk)?);
            }
        }
        Ok(out)
    }
}

/// The breadth-first walk of an image's directories that builds its tree.
struct Walk<'c, 'a> {
    ctx: &'c Ctx<'a>,
    tree: Tree,
    /// The tree inode of every nid loaded.
    id_of: HashMap<u64, InodeId>,
    /// Every entry in breadth-first order, whiteouts included: (dir, name, nid).
    seen: Vec<(InodeId, Vec<u8>, u64)>,
    /// The nids in the order they were first met (once each, but for chardev-0/0 entries).
    first_seen: Vec<u64>,
    /// Directories whose entries are still to be read: (nid, tree inode).
    queue: VecDeque<(u64, InodeId)>,
}

impl<'c, 'a> Walk<'c, 'a> {
    /// Start with the root inode (which must be a directory).
    fn from_root(ctx: &'c Ctx<'a>) -> Result<Self, ReadError> {
        let root_nid = ctx.sb.root_nid.get() as u64;
        let root = ctx
            .load_inode(root_nid)?
            .filter(|r| r.is_dir())
            .ok_or_else(|| corrupt(root_nid, "root is not a directory"))?;
        Ok(Walk {
            ctx,
            tree: Tree::new(root),
            id_of: HashMap::from([(root_nid, ROOT)]),
            seen: Vec::new(),
            first_seen: Vec::new(),
            queue: VecDeque::from([(root_nid, ROOT)]),
        })
    }

    /// Read every directory's entries, loading each inode the first time an entry names it.
    fn load_directories(&mut self) -> Result<(), ReadError> {
        while let Some((dnid, did)) = self.queue.pop_front() {
            let mut entries: Vec<DirEntry> = Vec::new();
            for (name, nid) in self.ctx.dir_entries(dnid)? {
                if name == b"." || name == b".." {
                    continue;
                }
                self.seen.push((did, name.to_vec(), nid));
                if let Some(id) = self.inode_of(nid)? {
                    entries.push(DirEntry {
                        name: name.to_vec(),
                        inode: id,
                    });
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            if entries.windows(2).any(|w| w[0].name == w[1].name) {
                return Err(corrupt(dnid, "duplicate name in directory"));
            }
            self.tree.inodes[did].data = InodeData::Directory { entries };
        }
        Ok(())
    }

    /// The tree inode of the entry naming `nid`: loaded (and a directory queued) the first time,
    /// the same one after (a hardlink); `None` for the root's synthetic whiteouts.
    fn inode_of(&mut self, nid: u64) -> Result<Option<InodeId>, ReadError> {
        if let Some(&id) = self.id_of.get(&nid) {
            if self.tree.inodes[id].is_dir() {
                return Err(corrupt(nid, "directory linked twice (hardlink or cycle)"));
            }
            return Ok(Some(id));
        }
        self.first_seen.push(nid);
        let Some(ino) = self.ctx.load_inode(nid)? else {
            return Ok(None);
        };
        let is_dir = ino.is_dir();
        let id = self.tree.push(ino);
        self.id_of.insert(nid, id);
        if is_dir {
            self.queue.push_back((nid, id));
        }
        Ok(Some(id))
    }
}

/// Take the `opaque=x` marks off the directories holding a whiteout (format 1 adds them).
fn drop_whiteout_opaque_marks(t: &mut Tree) {
    for d in 0..t.inodes.len() {
        if t.inodes[d].is_dir() && t.inodes[d].entries().iter().any(|e| t.inodes[e.inode].is_whiteout()) {
            t.inodes[d].xattrs.retain(|x| {
                !((x.key == b"trusted.overlay.opaque" || x.key == b"user.overlay.opaque") && x.value == b"x")
            });
        }
    }
}

/// The directories carrying both `opaque=x` marks the writer puts on a directory holding a whiteout.
fn whiteout_marked_directories(t: &Tree) -> HashSet<InodeId> {
    let has = |d: usize, key: &[u8]| t.inodes[d].xattrs.iter().any(|x| x.key == key && x.value == b"x");
    (0..t.inodes.len())
        .filter(|&d| t.inodes[d].is_dir() && has(d, b"trusted.overlay.opaque") && has(d, b"user.overlay.opaque"))
        .collect()
}

/// Which entry holds each hardlinked inode: match entries in breadth-first order against the
/// inodes in nid order (the writer places inodes in that order).
///
/// Two names of one inode with no other inode placed between them in breadth-first order are
/// both where the writer could have placed it, and for most inodes the choice changes nothing.
/// For a whiteout it does: the writer marks the holder's directory `opaque=x` (format 1), so the
/// holder is the name in a marked directory — else the dump would move the marks on its next trip
/// through the writer.
fn record_hardlink_holders(
    t: &mut Tree,
    seen: &[(InodeId, Vec<u8>, u64)],
    mut first_seen: Vec<u64>,
    id_of: &HashMap<u64, InodeId>,
    marked: &HashSet<InodeId>,
) {
    first_seen.sort_unstable();
    let mut count: HashMap<InodeId, usize> = HashMap::new();
    for (_, _, nid) in seen {
        if let Some(id) = id_of.get(nid) {
            *count.entry(*id).or_default() += 1;
        }
    }
    // The entries (indices into `seen`) where the inodes were placed, in nid order.
    let mut placed = Vec::with_capacity(first_seen.len());
    for (i, (_, _, nid)) in seen.iter().enumerate() {
        if placed.len() < first_seen.len() && first_seen[placed.len()] == *nid {
            placed.push(i);
        }
    }
    for (k, &i) in placed.iter().enumerate() {
        let (dir, _, nid) = &seen[i];
        let Some(&id) = id_of.get(nid) else { continue };
        if count.get(&id).copied().unwrap_or(0) < 2 {
            continue;
        }
        let mut holder = i;
        if t.inodes[id].is_whiteout() && !marked.contains(dir) {
            let end = placed.get(k + 1).copied().unwrap_or(seen.len());
            if let Some(j) = (i + 1..end).find(|&j| seen[j].2 == *nid && marked.contains(&seen[j].0)) {
                holder = j;
            }
        }
        let (dir, name, _) = &seen[holder];
        t.primary.insert(id, (*dir, name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{parse, SAMPLE};
    use crate::erofs::writer::{write_image, Options};

    fn sample_image() -> Vec<u8> {
        write_image(&parse(SAMPLE).unwrap(), &Options::default()).unwrap().bytes
    }

    /// A whiteout named twice, the link just before its holder in breadth-first order (the last
    /// entry of `/`, then the first of `/a`): either could hold it, but only `/a/w` makes the
    /// writer mark `/a` opaque again. Found by the `dump_parse` fuzz target (not a fixed point).
    #[test]
    fn a_hardlinked_whiteout_keeps_its_holder_where_the_marks_are() {
        let text = b"/ 4096 40755 3 0 0 0 0.0 - - -\n\
/a 4096 40755 2 0 0 0 0.0 - - - user.x=1\n\
/a/w 0 20000 2 0 0 0 0.0 - - -\n\
/z 0 @20000 2 0 0 0 0.0 /a/w - -\n";
        let first = write_image(&parse(text).unwrap(), &Options::default()).unwrap().bytes;
        let loaded = read_image(&first).unwrap();
        let dump = crate::dump::dump_to_vec(&loaded.tree);
        assert!(
            dump.windows(7).any(|w| w == b"/z 0 @2"),
            "{}",
            String::from_utf8_lossy(&dump)
        );
        let second = write_image(&parse(&dump).unwrap(), &Options::default()).unwrap().bytes;
        assert!(first == second, "{}", String::from_utf8_lossy(&dump));
    }

    #[test]
    fn image_reads_back_as_its_dump() {
        let loaded = read_image(&sample_image()).unwrap();
        assert_eq!((loaded.version, loaded.flags), (0, 0));
        // Directory sizes come from the format, not from the dump: compare the other fields.
        let want = parse(SAMPLE).unwrap();
        let strip = |t: &Tree| -> Vec<u8> {
            let mut t = t.clone();
            for ino in t.inodes.iter_mut().filter(|i| i.is_dir()) {
                ino.size = 0;
            }
            crate::dump::dump_to_vec(&t)
        };
        assert_eq!(
            String::from_utf8_lossy(&strip(&loaded.tree)),
            String::from_utf8_lossy(&strip(&want))
        );
    }

    #[test]
    fn image_to_tree_to_image_is_the_same_bytes() {
        let bytes = sample_image();
        let back = read_image(&bytes).unwrap();
        assert!(write_image(&back.tree, &Options::default()).unwrap().bytes == bytes);
    }

    #[test]
    fn short_or_foreign_input_is_refused() {
        let bytes = sample_image();
        assert_eq!(read_image(&bytes[..100]).err(), Some(ReadError::TooSmall(100)));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(read_image(&bad).err(), Some(ReadError::BadMagic));
        let mut bad = bytes.clone();
        bad[SUPER_OFFSET as usize] ^= 1;
        assert_eq!(read_image(&bad).err(), Some(ReadError::BadSuperMagic));
    }

    /// A whiteout and overlay xattrs of the source: the source view gives them back as they were,
    /// the mounted view shows what overlayfs (and the module) show.
    #[test]
    fn views_of_escaped_overlay_markings() {
        let dump = "/ 4096 40755 3 0 0 0 1000.0 - - -\n\
                    /d 4096 40755 2 0 0 0 1000.0 - - -\n\
                    /d/w 0 20000 1 0 0 0 1000.0 - - -\n\
                    /f 1 100644 1 0 0 0 1000.0 - x - trusted.overlay.custom=v user.overlay.k=u\n";
        let bytes = write_image(&parse(dump.as_bytes()).unwrap(), &Options::default())
            .unwrap()
            .bytes;
        let keys = |i: &Inode| {
            i.xattrs
                .iter()
                .map(|x| String::from_utf8_lossy(&x.key).into_owned())
                .collect::<Vec<_>>()
        };
        for view in [View::Source, View::SourceWithOpaque, View::Mounted] {
            let t = read_image_view(&bytes, view).unwrap().tree;
            let d = t.lookup(ROOT, b"d").unwrap();
            let w = &t.inodes[t.lookup(d, b"w").unwrap()];
            let f = &t.inodes[t.lookup(ROOT, b"f").unwrap()];
            assert_eq!(keys(f), ["trusted.overlay.custom", "user.overlay.k"], "{view:?}");
            if view == View::Mounted {
                assert!(w.is_regular() && w.size == 0, "{view:?}");
                assert_eq!(keys(w), ["trusted.overlay.whiteout", "user.overlay.whiteout"]);
                assert!(keys(&t.inodes[d]).contains(&"trusted.overlay.whiteouts".to_string()));
                assert!(keys(&t.inodes[d]).contains(&"trusted.overlay.opaque".to_string()));
            } else {
                assert!(w.is_whiteout() && keys(w).is_empty(), "{view:?}");
                assert!(!keys(&t.inodes[d]).contains(&"trusted.overlay.whiteouts".to_string()));
                let opaque = keys(&t.inodes[d]).contains(&"trusted.overlay.opaque".to_string());
                assert_eq!(opaque, view == View::SourceWithOpaque);
            }
        }
    }

    /// Truncations and single-byte changes anywhere in the metadata give a tree or an error,
    /// never a panic (seeded, so a failure repeats).
    #[test]
    fn damaged_images_never_panic() {
        let bytes = sample_image();
        for len in (0..bytes.len()).step_by(97) {
            let _ = read_image(&bytes[..len]);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let meta_end = bytes.len().min(16384);
        for _ in 0..3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bad = bytes.clone();
            let pos = CFS_HEADER_SIZE + (state as usize) % (meta_end - CFS_HEADER_SIZE);
            bad[pos] ^= (state >> 32) as u8 | 1;
            let _ = read_image(&bad);
        }
    }
}
