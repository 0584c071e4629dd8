//! Dump writer: [`Tree`] → text, byte for byte as `composefs-info dump` prints it (depth-first,
//! names sorted; a hardlink's extra names as `@` lines pointing at the entry holding the inode).

use super::*;
use crate::tree::{InodeData, InodeId, Tree, ROOT};

fn line(out: &mut Vec<u8>, tree: &Tree, path: &[u8], id: InodeId, link_to: Option<&[u8]>) {
    let ino = &tree.inodes[id];
    escape_into(out, if path.is_empty() { b"/" } else { path }, Escape::Standard);
    out.extend_from_slice(
        format!(
            " {} {}{:o} {} {} {} {} {}.{} ",
            ino.size,
            if link_to.is_some() { "@" } else { "" },
            ino.mode,
            ino.nlink,
            ino.uid,
            ino.gid,
            ino.rdev,
            ino.mtime.sec,
            ino.mtime.nsec
        )
        .as_bytes(),
    );
    let (payload, content, digest) = match &ino.data {
        InodeData::Regular {
            inline,
            payload,
            digest,
        } => (payload.as_deref(), inline.as_deref(), digest.as_ref()),
        InodeData::Symlink { target } => (Some(target.as_slice()), None, None),
        _ => (None, None, None),
    };
    match link_to.or(payload) {
        Some(p) => escape_into(out, p, Escape::LoneDash),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match content {
        Some(c) => escape_into(out, c, Escape::LoneDash),
        None => out.push(b'-'),
    }
    out.push(b' ');
    match digest {
        Some(d) => out.extend_from_slice(hex(d).as_bytes()),
        None => out.push(b'-'),
    }
    for x in &ino.xattrs {
        out.push(b' ');
        escape_into(out, &x.key, Escape::Equal);
        out.push(b'=');
        escape_into(out, &x.value, Escape::Equal);
    }
    out.push(b'\n');
}

/// Print `tree` in composefs-dump(5) format.
pub fn write_dump(tree: &Tree) -> Vec<u8> {
    let holders = tree.holders();
    // Full path of every holding entry, for `@` lines.
    let mut dir_path: Vec<Option<Vec<u8>>> = vec![None; tree.inodes.len()];
    dir_path[ROOT] = Some(Vec::new());
    let holder_path = |dir_path: &Vec<Option<Vec<u8>>>, id: InodeId| -> Option<Vec<u8>> {
        let (d, i) = holders[id]?;
        let mut p = dir_path[d].clone()?;
        p.push(b'/');
        p.extend_from_slice(&tree.inodes[d].entries()[i].name);
        Some(p)
    };
    // Directory paths first (breadth-first, each directory once).
    let mut queue = std::collections::VecDeque::from([ROOT]);
    while let Some(d) = queue.pop_front() {
        for e in tree.inodes[d].entries() {
            if tree.inodes[e.inode].is_dir() && dir_path[e.inode].is_none() && e.inode != ROOT {
                let mut p = dir_path[d].clone().unwrap();
                p.push(b'/');
                p.extend_from_slice(&e.name);
                dir_path[e.inode] = Some(p);
                queue.push_back(e.inode);
            }
        }
    }
    let mut out = Vec::new();
    line(&mut out, tree, b"", ROOT, None);
    walk_depth_first(tree, |d, i, path, first| {
        let e = &tree.inodes[d].entries()[i];
        if tree.inodes[e.inode].is_dir() {
            if first {
                line(&mut out, tree, path, e.inode, None);
            }
        } else if holders[e.inode] == Some((d, i)) {
            line(&mut out, tree, path, e.inode, None);
        } else {
            let target = holder_path(&dir_path, e.inode).unwrap_or_default();
            line(&mut out, tree, path, e.inode, Some(&target));
        }
    });
    out
}

/// `composefs-info ls`: one line per path (depth-first): directories end in `/`, symlinks show
/// `-> target`, object-backed files `@ payload`; extra names of a hardlink show the path only.
pub fn write_ls(tree: &Tree) -> Vec<u8> {
    let holders = tree.holders();
    let mut out = Vec::new();
    walk_depth_first(tree, |d, i, path, _| {
        let e = &tree.inodes[d].entries()[i];
        // Paths keep spaces unescaped here (isprint instead of isgraph).
        for part in path.split(|&c| c == b' ').enumerate() {
            if part.0 > 0 {
                out.push(b' ');
            }
            escape_into(&mut out, part.1, Escape::Standard);
        }
        let child = &tree.inodes[e.inode];
        if holders[e.inode] == Some((d, i)) || child.is_dir() {
            match &child.data {
                InodeData::Directory { .. } => out.extend_from_slice(b"/\t"),
                InodeData::Symlink { target } => {
                    out.extend_from_slice(b"\t-> ");
                    escape_into(&mut out, target, Escape::Standard);
                }
                InodeData::Regular { payload: Some(p), .. } => {
                    out.extend_from_slice(b"\t@ ");
                    escape_into(&mut out, p, Escape::Standard);
                }
                _ => {}
            }
        }
        out.push(b'\n');
    });
    out
}

/// Depth-first, pre-order walk over every entry below the root, in stored (sorted) order:
/// `visit(dir, index in dir, full path, first)`. A directory is descended into once; `first` is
/// false only for a directory met again (impossible in a valid tree, kept safe for a bad one).
fn walk_depth_first(tree: &Tree, mut visit: impl FnMut(InodeId, usize, &[u8], bool)) {
    let mut seen = vec![false; tree.inodes.len()];
    seen[ROOT] = true;
    let mut stack: Vec<(InodeId, usize, Vec<u8>)> = vec![(ROOT, 0, Vec::new())];
    while let Some(top) = stack.last_mut() {
        let (d, i) = (top.0, top.1);
        let entries = tree.inodes[d].entries();
        if i >= entries.len() {
            stack.pop();
            continue;
        }
        top.1 += 1;
        let child = entries[i].inode;
        let mut path = top.2.clone();
        path.push(b'/');
        path.extend_from_slice(&entries[i].name);
        let descend = tree.inodes[child].is_dir() && !std::mem::replace(&mut seen[child], true);
        visit(d, i, &path, descend || !tree.inodes[child].is_dir());
        if descend {
            stack.push((child, 0, path));
        }
    }
}

/// The distinct object paths (payloads of regular files), sorted.
pub fn objects(tree: &Tree) -> Vec<Vec<u8>> {
    let mut reachable = vec![false; tree.inodes.len()];
    tree.walk_breadth_first(|_, e| reachable[e.inode] = true);
    let mut v: Vec<Vec<u8>> = tree
        .inodes
        .iter()
        .enumerate()
        .filter(|(i, _)| reachable[*i])
        .filter_map(|(_, ino)| match &ino.data {
            InodeData::Regular { payload: Some(p), .. } => Some(p.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Lower-case hex of a digest.
pub fn hex_digest(d: &[u8]) -> String {
    hex(d)
}
