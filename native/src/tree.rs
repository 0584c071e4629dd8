// SPDX-License-Identifier: MIT OR Apache-2.0
//! The in-memory filesystem tree shared by every producer (dump parser, directory scan, image
//! reader) and every consumer (dump writer, EROFS writer, object store).
//!
//! Inodes live in one flat vector; directory entries refer to them by index, so hardlinks are
//! simply several entries naming the same [`InodeId`]. Index 0 is always the root directory.
//! Names, symlink targets, payloads and xattrs are raw bytes (Linux names are not UTF-8).

/// Index of an inode in [`Tree::inodes`].
pub type InodeId = usize;

/// The root directory's id.
pub const ROOT: InodeId = 0;

/// File type bits of `st_mode` (same values as `S_IF*`).
pub mod mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

/// Modification time (the only timestamp composefs records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// One extended attribute: full key (`user.foo`, `trusted.overlay.x`, ...) and value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// An fs-verity sha256 digest.
pub type Digest = [u8; 32];

/// What an inode holds besides its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeData {
    /// Entries sorted by name bytes, without `.` and `..`.
    Directory { entries: Vec<DirEntry> },
    /// A regular file. `inline` holds small contents stored in the image itself; otherwise
    /// `payload` is the object path relative to a basedir (`ab/cdef...`) and `digest` the
    /// object's fs-verity digest when known. An empty file has neither.
    Regular {
        inline: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        digest: Option<Digest>,
    },
    /// A symbolic link and its target.
    Symlink { target: Vec<u8> },
    /// Character or block device, fifo or socket: everything is in `mode` and `rdev`.
    Special,
}

/// A name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode: InodeId,
}

/// One inode: metadata plus data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Full `st_mode`: type bits and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Link count as recorded by the producer; [`Tree::compute_nlink`] derives it from the tree.
    pub nlink: u32,
    pub rdev: u64,
    pub mtime: Timespec,
    /// `st_size`: content length for regular files, target length for symlinks.
    pub size: u64,
    /// Extended attributes in the order the producer gave them.
    pub xattrs: Vec<Xattr>,
    pub data: InodeData,
}

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & mode::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == mode::S_IFDIR
    }
    pub fn is_regular(&self) -> bool {
        self.file_type() == mode::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == mode::S_IFLNK
    }
    /// A whiteout is a character device with rdev 0.
    pub fn is_whiteout(&self) -> bool {
        self.file_type() == mode::S_IFCHR && self.rdev == 0
    }
    pub fn entries(&self) -> &[DirEntry] {
        match &self.data {
            InodeData::Directory { entries } => entries,
            _ => &[],
        }
    }
    /// A fresh empty directory inode.
    pub fn new_dir(perm: u32) -> Inode {
        Inode {
            mode: mode::S_IFDIR | (perm & 0o7777),
            uid: 0,
            gid: 0,
            nlink: 2,
            rdev: 0,
            mtime: Timespec::default(),
            size: 0,
            xattrs: Vec::new(),
            data: InodeData::Directory { entries: Vec::new() },
        }
    }
}

/// A whole tree. `inodes[ROOT]` is the root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub inodes: Vec<Inode>,
    /// For an inode named by several entries (a hardlink), the entry `(directory, name)` that
    /// "holds" it: mkcomposefs places such an inode where its non-`@` dump line sits, which
    /// decides the inode order in an image. Inodes not listed here are held by their first
    /// entry in breadth-first order. Producers that do not care leave it empty.
    pub primary: std::collections::HashMap<InodeId, (InodeId, Vec<u8>)>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new(Inode::new_dir(0o755))
    }
}

impl Tree {
    /// Free the tree on a thread of its own: a scanned tree is ~10^5 allocations and takes
    /// ~15 ms to free, which the caller need not wait for (at exit the thread simply ends).
    pub fn drop_in_background(self) {
        // Should no thread be had, the closure, and the tree with it, is dropped right here.
        let _ = std::thread::Builder::new()
            .name("cfs-free".into())
            .spawn(move || drop(self));
    }

    /// A tree holding only `root`, which must be a directory.
    pub fn new(root: Inode) -> Tree {
        assert!(root.is_dir(), "root must be a directory");
        Tree {
            inodes: vec![root],
            primary: Default::default(),
        }
    }

    pub fn root(&self) -> &Inode {
        &self.inodes[ROOT]
    }

    /// Append an inode (not yet linked anywhere) and return its id.
    pub fn push(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// Insert `name -> child` into directory `dir`, keeping entries sorted by name bytes.
    /// Returns false (and changes nothing) when the name already exists.
    pub fn link(&mut self, dir: InodeId, name: Vec<u8>, child: InodeId) -> bool {
        let InodeData::Directory { entries } = &mut self.inodes[dir].data else {
            panic!("link into a non-directory");
        };
        // Names often arrive in order (a scan, a sorted dump): then the new one goes last.
        if entries.last().is_none_or(|e| e.name < name) {
            entries.push(DirEntry { name, inode: child });
            return true;
        }
        match entries.binary_search_by(|e| e.name.as_slice().cmp(&name)) {
            Ok(_) => false,
            Err(pos) => {
                entries.insert(pos, DirEntry { name, inode: child });
                true
            }
        }
    }

    /// Look up `name` in directory `dir`.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        let entries = self.inodes[dir].entries();
        entries
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .ok()
            .map(|i| entries[i].inode)
    }

    /// Resolve a `/`-separated path from the root (leading `/` optional).
    pub fn resolve(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if !self.inodes[cur].is_dir() {
                return None;
            }
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Visit every (parent, entry) pair breadth-first: the root's entries first, then each
    /// directory's children in name order. Each directory inode is descended into once.
    /// Keep only the root's entries named in `names` (composefs-info's `--filter`). An inode held
    /// by an entry that is no longer reachable is then held by its first remaining entry.
    pub fn retain_top_level(&mut self, names: &[Vec<u8>]) {
        if let InodeData::Directory { entries } = &mut self.inodes[ROOT].data {
            entries.retain(|e| names.contains(&e.name));
        }
        let mut reachable = vec![false; self.inodes.len()];
        reachable[ROOT] = true;
        self.walk_breadth_first(|_, e| reachable[e.inode] = true);
        let inodes = &self.inodes;
        self.primary
            .retain(|_, (dir, name)| reachable[*dir] && inodes[*dir].entries().iter().any(|e| e.name == *name));
    }

    pub fn walk_breadth_first(&self, mut f: impl FnMut(InodeId, &DirEntry)) {
        let mut queue = std::collections::VecDeque::from([ROOT]);
        let mut seen = vec![false; self.inodes.len()];
        seen[ROOT] = true;
        while let Some(dir) = queue.pop_front() {
            for e in self.inodes[dir].entries() {
                f(dir, e);
                if self.inodes[e.inode].is_dir() && !seen[e.inode] {
                    seen[e.inode] = true;
                    queue.push_back(e.inode);
                }
            }
        }
    }

    /// For every inode, the entry `(directory, index in its entries)` that holds it: the
    /// directory's own entry for directories, [`Tree::primary`] when it names a real entry of
    /// that inode, else the first entry naming it in breadth-first order. `None` for the root
    /// and for unreachable inodes.
    pub fn holders(&self) -> Vec<Option<(InodeId, usize)>> {
        let mut out: Vec<Option<(InodeId, usize)>> = vec![None; self.inodes.len()];
        for (&ino, (dir, name)) in &self.primary {
            if ino < self.inodes.len() && *dir < self.inodes.len() {
                let entries = self.inodes[*dir].entries();
                if let Ok(i) = entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
                    if entries[i].inode == ino && !self.inodes[ino].is_dir() {
                        out[ino] = Some((*dir, i));
                    }
                }
            }
        }
        let mut queue = std::collections::VecDeque::from([ROOT]);
        let mut seen = vec![false; self.inodes.len()];
        seen[ROOT] = true;
        while let Some(dir) = queue.pop_front() {
            for (i, e) in self.inodes[dir].entries().iter().enumerate() {
                if e.inode != ROOT && out[e.inode].is_none() {
                    out[e.inode] = Some((dir, i));
                }
                if self.inodes[e.inode].is_dir() && !seen[e.inode] {
                    seen[e.inode] = true;
                    queue.push_back(e.inode);
                }
            }
        }
        out
    }

    /// Derive link counts from the tree: directories get 2 + number of subdirectories, other
    /// inodes the number of entries naming them.
    pub fn compute_nlink(&mut self) {
        let mut counts = vec![0u32; self.inodes.len()];
        for (id, ino) in self.inodes.iter().enumerate() {
            if ino.is_dir() {
                counts[id] += 2;
                for e in ino.entries() {
                    if self.inodes[e.inode].is_dir() {
                        counts[id] += 1;
                    } else {
                        counts[e.inode] += 1;
                    }
                }
            }
        }
        for (ino, n) in self.inodes.iter_mut().zip(counts) {
            ino.nlink = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64) -> Inode {
        Inode {
            mode: mode::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            mtime: Timespec::default(),
            size,
            xattrs: vec![],
            data: InodeData::Regular {
                inline: None,
                payload: None,
                digest: None,
            },
        }
    }

    #[test]
    fn link_keeps_entries_sorted_and_counts_links() {
        let mut t = Tree::default();
        let sub = t.push(Inode::new_dir(0o755));
        let f = t.push(file(0));
        assert!(t.link(ROOT, b"zz".to_vec(), sub));
        assert!(t.link(ROOT, b"a".to_vec(), f));
        assert!(t.link(sub, b"hard".to_vec(), f));
        assert!(!t.link(ROOT, b"a".to_vec(), f));
        let names: Vec<_> = t.root().entries().iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, vec![b"a".to_vec(), b"zz".to_vec()]);
        t.compute_nlink();
        assert_eq!(t.inodes[ROOT].nlink, 3);
        assert_eq!(t.inodes[f].nlink, 2);
        assert_eq!(t.resolve(b"/zz/hard"), Some(f));
        assert_eq!(t.resolve(b"zz/missing"), None);
    }
}
