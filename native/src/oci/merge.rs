// SPDX-License-Identifier: MIT OR Apache-2.0
//! Layers applied in order onto one [`Tree`] (the model the image writer takes), with the rules
//! container engines apply when they unpack an image:
//! - an entry replaces what is at its path, except that a directory over a directory keeps the
//!   lower one's contents and takes the new metadata;
//! - missing parent directories are created (0755, root-owned);
//! - parent paths resolve through symlinks already in the tree, confined to the image's root
//!   (an absolute target starts at the root, `..` stops there; more than 40 links is an error),
//!   as containerd's and umoci's confined resolution do; the last component is never followed;
//! - `.wh.NAME` removes NAME; `.wh..wh..opq` removes what lower layers put in the directory
//!   (recursively), keeping what its own layer adds, before or after the marker;
//! - a hardlink names the inode its target names at that moment (a directory cannot be a target).
//!
//! The result holds only reachable inodes, with link counts derived from the tree.

use super::layer::{split_last, Content, Layer, Node, NodeData, Op};
use crate::store::object_name;
use crate::tree::{mode, Inode, InodeData, InodeId, Timespec, Tree, ROOT};
use std::collections::HashSet;

const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("layer {layer}: {}: {why}", String::from_utf8_lossy(path))]
    Path {
        layer: usize,
        path: Vec<u8>,
        why: &'static str,
    },
    #[error("more than {0} entries in the image")]
    TooManyEntries(u64),
}

struct Merger {
    tree: Tree,
    /// Entries `(directory, name)` put in place by the layer being applied.
    touched: HashSet<(InodeId, Vec<u8>)>,
    layer: usize,
    max_entries: u64,
}

fn to_inode(node: &Node) -> Inode {
    let (size, data) = match &node.data {
        NodeData::Directory => (0, InodeData::Directory { entries: Vec::new() }),
        NodeData::Regular { size, content } => (
            *size,
            match content {
                Content::Empty => InodeData::Regular {
                    inline: None,
                    payload: None,
                    digest: None,
                },
                Content::Inline(b) => InodeData::Regular {
                    inline: Some(b.clone()),
                    payload: None,
                    digest: None,
                },
                Content::Object(d) => InodeData::Regular {
                    inline: None,
                    payload: Some(object_name(d).into_bytes()),
                    digest: Some(*d),
                },
            },
        ),
        NodeData::Symlink(t) => (t.len() as u64, InodeData::Symlink { target: t.clone() }),
        NodeData::Special => (0, InodeData::Special),
    };
    let mut xattrs = node.xattrs.clone();
    xattrs.sort();
    Inode {
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        nlink: 1,
        rdev: if matches!(node.data, NodeData::Special) {
            node.rdev
        } else {
            0
        },
        mtime: node.mtime,
        size,
        xattrs,
        data,
    }
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

impl Merger {
    fn err(&self, path: &[u8], why: &'static str) -> MergeError {
        MergeError::Path {
            layer: self.layer,
            path: path.to_vec(),
            why,
        }
    }

    /// Replace (or add) `name` in `dir` with `child`.
    fn set(&mut self, dir: InodeId, name: &[u8], child: InodeId) {
        let InodeData::Directory { entries } = &mut self.tree.inodes[dir].data else {
            unreachable!("set into a non-directory");
        };
        match entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
            Ok(i) => entries[i].inode = child,
            Err(i) => entries.insert(
                i,
                crate::tree::DirEntry {
                    name: name.to_vec(),
                    inode: child,
                },
            ),
        }
        self.touched.insert((dir, name.to_vec()));
    }

    fn remove(&mut self, dir: InodeId, name: &[u8]) {
        if let InodeData::Directory { entries } = &mut self.tree.inodes[dir].data {
            if let Ok(i) = entries.binary_search_by(|e| e.name.as_slice().cmp(name)) {
                entries.remove(i);
            }
        }
    }

    fn push(&mut self, inode: Inode) -> Result<InodeId, MergeError> {
        if self.tree.inodes.len() as u64 >= self.max_entries {
            return Err(MergeError::TooManyEntries(self.max_entries));
        }
        Ok(self.tree.push(inode))
    }

    /// The directory `dir` names, symlinks followed within the root. Missing directories are
    /// created when `create` holds (with `mtime`), else `None` is returned.
    fn resolve_dir(
        &mut self,
        full: &[u8],
        dir: &[u8],
        create: Option<Timespec>,
    ) -> Result<Option<InodeId>, MergeError> {
        let mut stack: Vec<InodeId> = vec![ROOT];
        let mut todo: Vec<Vec<u8>> = components(dir).rev().map(|c| c.to_vec()).collect();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            let cur = *stack.last().unwrap();
            if c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            match self.tree.lookup(cur, &c) {
                Some(id) if self.tree.inodes[id].is_dir() => stack.push(id),
                Some(id) if self.tree.inodes[id].is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(self.err(full, "too many levels of symbolic links"));
                    }
                    let InodeData::Symlink { target } = &self.tree.inodes[id].data else {
                        unreachable!()
                    };
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    let more: Vec<Vec<u8>> = components(target).rev().map(|c| c.to_vec()).collect();
                    todo.extend(more);
                }
                Some(_) => return Err(self.err(full, "a parent is not a directory")),
                None => {
                    let Some(mtime) = create else {
                        return Ok(None);
                    };
                    let mut d = Inode::new_dir(0o755);
                    d.mtime = mtime;
                    let id = self.push(d)?;
                    self.set(cur, &c, id);
                    stack.push(id);
                }
            }
        }
        Ok(Some(*stack.last().unwrap()))
    }

    /// A layer's paths are normalised when it is read from its tar ("a/b", "" for the root); a
    /// record decoded from the repository is checked again, since a name "", "." or ".." (or a
    /// path like "/") would become a directory entry that breaks the image.
    fn check_path(&self, path: &[u8]) -> Result<(), MergeError> {
        if path.is_empty() {
            return Ok(());
        }
        if path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(self.err(path, "a path that is not normalised"));
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), MergeError> {
        match op {
            Op::Put { path, node } => {
                self.check_path(path)?;
                // The type bits of the mode and the kind of data must agree (a record decoded
                // from the repository is not trusted to): the writer takes one, the reader the other.
                let kind = node.mode & mode::S_IFMT;
                let agrees = match node.data {
                    NodeData::Directory => kind == mode::S_IFDIR,
                    NodeData::Regular { .. } => kind == mode::S_IFREG,
                    NodeData::Symlink(_) => kind == mode::S_IFLNK,
                    NodeData::Special => matches!(kind, mode::S_IFCHR | mode::S_IFBLK | mode::S_IFIFO | mode::S_IFSOCK),
                };
                if !agrees {
                    return Err(self.err(path, "an entry whose mode and type disagree"));
                }
            }
            Op::Whiteout { path } | Op::Opaque { path } => self.check_path(path)?,
            Op::Link { path, target } => {
                self.check_path(path)?;
                self.check_path(target)?;
            }
        }
        match op {
            Op::Put { path, node } => {
                if path.is_empty() {
                    // The root's own entry ("./") may change its metadata, never its type: the
                    // image's root must stay a directory.
                    if !matches!(node.data, NodeData::Directory) {
                        return Err(self.err(path, "the root is not a directory"));
                    }
                    let root = &mut self.tree.inodes[ROOT];
                    let new = to_inode(node);
                    root.mode = new.mode;
                    root.uid = new.uid;
                    root.gid = new.gid;
                    root.mtime = new.mtime;
                    root.xattrs = new.xattrs;
                    return Ok(());
                }
                let (dir, name) = split_last(path);
                let parent = self.resolve_dir(path, dir, Some(node.mtime))?.unwrap();
                let old = self.tree.lookup(parent, name);
                if let (Some(old), NodeData::Directory) = (old, &node.data) {
                    if self.tree.inodes[old].is_dir() {
                        let new = to_inode(node);
                        let o = &mut self.tree.inodes[old];
                        o.mode = new.mode;
                        o.uid = new.uid;
                        o.gid = new.gid;
                        o.mtime = new.mtime;
                        o.xattrs = new.xattrs;
                        self.touched.insert((parent, name.to_vec()));
                        return Ok(());
                    }
                }
                let id = self.push(to_inode(node))?;
                self.set(parent, name, id);
            }
            Op::Link { path, target } => {
                let (tdir, tname) = split_last(target);
                let tparent = self.resolve_dir(target, tdir, None)?;
                let inode = tparent
                    .and_then(|p| self.tree.lookup(p, tname))
                    .ok_or_else(|| self.err(path, "a hardlink to a missing file"))?;
                if self.tree.inodes[inode].is_dir() {
                    return Err(self.err(path, "a hardlink to a directory"));
                }
                let (dir, name) = split_last(path);
                let mtime = self.tree.inodes[inode].mtime;
                let parent = self.resolve_dir(path, dir, Some(mtime))?.unwrap();
                if self
                    .tree
                    .lookup(parent, name)
                    .is_some_and(|o| self.tree.inodes[o].is_dir())
                {
                    return Err(self.err(path, "a hardlink over a directory"));
                }
                self.set(parent, name, inode);
            }
            Op::Whiteout { path } => {
                let (dir, name) = split_last(path);
                if let Some(parent) = self.resolve_dir(path, dir, None)? {
                    self.remove(parent, name);
                }
            }
            Op::Opaque { path } => {
                let dir = self.resolve_dir(path, path, Some(Timespec::default()))?.unwrap();
                self.prune(dir);
            }
        }
        Ok(())
    }

    /// Remove the entries of `dir` (recursively) that the current layer did not put there.
    fn prune(&mut self, dir: InodeId) {
        let mut todo = vec![dir];
        let mut seen = HashSet::new();
        while let Some(d) = todo.pop() {
            if !seen.insert(d) {
                continue;
            }
            let entries = std::mem::take(match &mut self.tree.inodes[d].data {
                InodeData::Directory { entries } => entries,
                _ => continue,
            });
            let kept: Vec<_> = entries
                .into_iter()
                .filter(|e| self.touched.contains(&(d, e.name.clone())))
                .collect();
            for e in &kept {
                if self.tree.inodes[e.inode].is_dir() {
                    todo.push(e.inode);
                }
            }
            self.tree.inodes[d].data = InodeData::Directory { entries: kept };
        }
    }
}

/// The tree of `layers` applied in order (lowest first). `max_entries` bounds the inodes made.
pub fn merge(layers: &[&Layer], max_entries: u64) -> Result<Tree, MergeError> {
    let mut m = Merger {
        tree: Tree::default(),
        touched: HashSet::new(),
        layer: 0,
        max_entries,
    };
    for (i, layer) in layers.iter().enumerate() {
        m.layer = i + 1;
        m.touched.clear();
        for op in &layer.ops {
            m.apply(op)?;
        }
    }
    let mut tree = compact(m.tree);
    tree.compute_nlink();
    Ok(tree)
}

/// The tree with only the inodes reachable from the root, numbered in breadth-first order.
fn compact(old: Tree) -> Tree {
    let mut map: Vec<Option<InodeId>> = vec![None; old.inodes.len()];
    let mut order = vec![ROOT];
    map[ROOT] = Some(0);
    let mut i = 0;
    while i < order.len() {
        for e in old.inodes[order[i]].entries() {
            if map[e.inode].is_none() {
                map[e.inode] = Some(order.len());
                order.push(e.inode);
            }
        }
        i += 1;
    }
    let mut slots: Vec<Option<Inode>> = old.inodes.into_iter().map(Some).collect();
    let mut inodes = Vec::with_capacity(order.len());
    for id in order {
        let mut ino = slots[id].take().unwrap();
        if let InodeData::Directory { entries } = &mut ino.data {
            for e in entries.iter_mut() {
                e.inode = map[e.inode].unwrap();
            }
        }
        inodes.push(ino);
    }
    Tree {
        inodes,
        primary: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::layer::{Layer, Node, NodeData, Op};
    use super::*;
    use crate::tree::mode;

    fn node(kind: u32, data: NodeData) -> Node {
        Node {
            mode: kind | 0o644,
            uid: 0,
            gid: 0,
            mtime: Timespec { sec: 5, nsec: 0 },
            rdev: 0,
            xattrs: vec![],
            data,
        }
    }
    fn dir(p: &str) -> Op {
        Op::Put {
            path: p.into(),
            node: node(mode::S_IFDIR, NodeData::Directory),
        }
    }
    fn file(p: &str, body: &str) -> Op {
        Op::Put {
            path: p.into(),
            node: node(
                mode::S_IFREG,
                NodeData::Regular {
                    size: body.len() as u64,
                    content: Content::Inline(body.into()),
                },
            ),
        }
    }
    fn link(p: &str, t: &str) -> Op {
        Op::Put {
            path: p.into(),
            node: node(mode::S_IFLNK, NodeData::Symlink(t.into())),
        }
    }
    fn layer(ops: Vec<Op>) -> Layer {
        Layer {
            ops,
            ..Default::default()
        }
    }
    fn paths(t: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(t: &Tree, d: InodeId, prefix: &str, out: &mut Vec<String>) {
            for e in t.inodes[d].entries() {
                let p = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
                out.push(p.clone());
                if t.inodes[e.inode].is_dir() {
                    walk(t, e.inode, &p, out);
                }
            }
        }
        walk(t, ROOT, "", &mut out);
        out
    }

    #[test]
    fn whiteouts_opaque_and_symlinked_parents() {
        let l1 = layer(vec![
            dir("usr"),
            dir("usr/lib"),
            file("usr/lib/a", "a"),
            link("lib", "usr/lib"),
            dir("etc"),
            file("etc/old", "o"),
            dir("etc/sub"),
            file("etc/sub/deep", "d"),
            file("gone", "g"),
        ]);
        let l2 = layer(vec![
            file("lib/b", "b"), // through the symlink: usr/lib/b
            Op::Whiteout { path: "gone".into() },
            file("etc/new", "n"),
            Op::Opaque { path: "etc".into() },
            dir("etc/sub"),
            Op::Link {
                path: "hard".into(),
                target: "usr/lib/a".into(),
            },
        ]);
        let t = merge(&[&l1, &l2], 1000).unwrap();
        assert_eq!(
            paths(&t),
            [
                "/etc",
                "/etc/new",
                "/etc/sub",
                "/hard",
                "/lib",
                "/usr",
                "/usr/lib",
                "/usr/lib/a",
                "/usr/lib/b"
            ]
        );
        let a = t.resolve(b"usr/lib/a").unwrap();
        assert_eq!(t.resolve(b"hard"), Some(a));
        assert_eq!(t.inodes[a].nlink, 2);
    }

    #[test]
    fn escapes_and_loops() {
        // A symlink pointing out of the root resolves inside it.
        let l = layer(vec![
            link("up", "../../.."),
            file("up/x", "x"),
            link("abs", "/etc"),
            file("abs/y", "y"),
        ]);
        let t = merge(&[&l], 1000).unwrap();
        assert!(t.resolve(b"x").is_some());
        assert!(t.resolve(b"etc/y").is_some());
        let l = layer(vec![link("a", "b"), link("b", "a"), file("a/x", "x")]);
        assert!(matches!(merge(&[&l], 1000), Err(MergeError::Path { .. })));
        let l = layer(vec![Op::Link {
            path: "h".into(),
            target: "missing".into(),
        }]);
        assert!(merge(&[&l], 1000).is_err());
        let l = layer(vec![file("f", "x"), file("f/x", "y")]);
        assert!(merge(&[&l], 1000).is_err());
        let many: Vec<Op> = (0..20).map(|i| file(&format!("f{i}"), "x")).collect();
        assert!(matches!(
            merge(&[&layer(many)], 10),
            Err(MergeError::TooManyEntries(10))
        ));
    }

    #[test]
    fn replace_rules() {
        let l1 = layer(vec![dir("d"), file("d/x", "x"), file("f", "1")]);
        let l2 = layer(vec![file("d", "now a file"), dir("f"), file("f/y", "y")]);
        let t = merge(&[&l1, &l2], 1000).unwrap();
        assert_eq!(paths(&t), ["/d", "/f", "/f/y"]);
        assert_eq!(t.inodes.len(), 4); // the lower d/x is gone from the tree
    }

    #[test]
    fn the_root_stays_a_directory() {
        // Found by the oci_layer fuzz target: a root entry of another type made an image whose
        // root inode had a file's mode.
        for root in [
            file("", "x"),
            link("", "target"),
            file(".", "x"),
            file("/", "x"),
            file("a/../b", "x"),
        ] {
            let l = layer(vec![root]);
            assert!(merge(&[&l], 1000).is_err());
        }
        let t = merge(&[&layer(vec![dir(""), file("a", "a")])], 1000).unwrap();
        assert!(t.inodes[ROOT].is_dir());
        // The fuzzer's case: a directory (the root's entry) whose mode has no directory type bits.
        let odd = Op::Put {
            path: Vec::new(),
            node: node(0, NodeData::Directory),
        };
        assert!(merge(&[&layer(vec![odd])], 1000).is_err());
    }
}
