// SPDX-License-Identifier: MIT OR Apache-2.0
//! Dump writer: [`Tree`] → text, byte for byte as `composefs-info dump` prints it (depth-first,
//! names sorted; a hardlink's extra names as `@` lines pointing at the entry holding the inode).

use super::*;
use crate::tree::{Inode, InodeData, InodeId, Tree, ROOT};
use std::io::{self, Write};

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

/// Print `tree` in composefs-dump(5) format to `out`, entry by entry as the walk meets them.
///
/// Memory stays independent of how deep and long the paths are beyond the one path being
/// printed: the walk keeps a single path buffer, and the target of a hardlink's `@` line is
/// rebuilt from each directory's parent link when it is printed, never stored per directory.
pub fn write_dump(tree: &Tree, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
    let holders = tree.holders();
    let parents = dir_parents(tree);
    let mut buf = Vec::new();
    let mut target = Vec::new();
    line(&mut buf, tree, b"", ROOT, None);
    out.write_all(&buf)?;
    walk_depth_first(tree, |d, i, path, first| {
        let e = &tree.inodes[d].entries()[i];
        buf.clear();
        if tree.inodes[e.inode].is_dir() {
            if !first {
                return Ok(());
            }
            line(&mut buf, tree, path, e.inode, None);
        } else if holders[e.inode] == Some((d, i)) {
            line(&mut buf, tree, path, e.inode, None);
        } else {
            target.clear();
            if let Some((hd, hi)) = holders[e.inode] {
                entry_path(tree, &parents, hd, hi, &mut target);
            }
            line(&mut buf, tree, path, e.inode, Some(&target));
        }
        out.write_all(&buf)
    })
}

/// Every path of `tree` in the order and with the links of [`write_dump`] (the root first, as
/// `/`): the path, its inode, and for each extra name of a hardlink the path of the entry holding
/// the inode. The `--json` of `cfsctl info dump` and `info ls` is made from these.
pub fn for_each_path(
    tree: &Tree,
    mut visit: impl FnMut(&[u8], &Inode, Option<&[u8]>) -> io::Result<()>,
) -> io::Result<()> {
    let holders = tree.holders();
    let parents = dir_parents(tree);
    let mut target = Vec::new();
    visit(b"/", &tree.inodes[ROOT], None)?;
    walk_depth_first(tree, |d, i, path, first| {
        let e = &tree.inodes[d].entries()[i];
        let ino = &tree.inodes[e.inode];
        if ino.is_dir() {
            return if first { visit(path, ino, None) } else { Ok(()) };
        }
        if holders[e.inode] == Some((d, i)) {
            return visit(path, ino, None);
        }
        target.clear();
        if let Some((hd, hi)) = holders[e.inode] {
            entry_path(tree, &parents, hd, hi, &mut target);
        }
        visit(path, ino, Some(&target))
    })
}

/// [`write_dump`] into a vector.
pub fn dump_to_vec(tree: &Tree) -> Vec<u8> {
    let mut v = Vec::new();
    write_dump(tree, &mut v).expect("writing to a vector cannot fail");
    v
}

/// `composefs-info ls` to `out`: one line per path (depth-first): directories end in `/`,
/// symlinks show `-> target`, object-backed files `@ payload`; extra names of a hardlink show the
/// path only. Streams like [`write_dump`].
pub fn write_ls(tree: &Tree, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
    let holders = tree.holders();
    let mut buf = Vec::new();
    walk_depth_first(tree, |d, i, path, _| {
        let e = &tree.inodes[d].entries()[i];
        buf.clear();
        // Paths keep spaces unescaped here (isprint instead of isgraph).
        for part in path.split(|&c| c == b' ').enumerate() {
            if part.0 > 0 {
                buf.push(b' ');
            }
            escape_into(&mut buf, part.1, Escape::Standard);
        }
        let child = &tree.inodes[e.inode];
        if holders[e.inode] == Some((d, i)) || child.is_dir() {
            match &child.data {
                InodeData::Directory { .. } => buf.extend_from_slice(b"/\t"),
                InodeData::Symlink { target } => {
                    buf.extend_from_slice(b"\t-> ");
                    escape_into(&mut buf, target, Escape::Standard);
                }
                InodeData::Regular { payload: Some(p), .. } => {
                    buf.extend_from_slice(b"\t@ ");
                    escape_into(&mut buf, p, Escape::Standard);
                }
                _ => {}
            }
        }
        buf.push(b'\n');
        out.write_all(&buf)
    })
}

/// [`write_ls`] into a vector.
pub fn ls_to_vec(tree: &Tree) -> Vec<u8> {
    let mut v = Vec::new();
    write_ls(tree, &mut v).expect("writing to a vector cannot fail");
    v
}

/// Number of paths in the tree, the root included (the lines of its dump).
pub fn count_paths(tree: &Tree) -> u64 {
    let mut n = 1;
    walk_depth_first(tree, |_, _, _, _| {
        n += 1;
        Ok(())
    })
    .expect("counting cannot fail");
    n
}

/// For every directory: the (parent directory, index in it) of the entry first naming it.
fn dir_parents(tree: &Tree) -> Vec<Option<(InodeId, usize)>> {
    let mut parents = vec![None; tree.inodes.len()];
    for (d, ino) in tree.inodes.iter().enumerate() {
        for (i, e) in ino.entries().iter().enumerate() {
            if e.inode != ROOT && tree.inodes[e.inode].is_dir() && parents[e.inode].is_none() {
                parents[e.inode] = Some((d, i));
            }
        }
    }
    parents
}

/// The full path of entry `i` of directory `d`, from the parent links, into `out`.
fn entry_path(tree: &Tree, parents: &[Option<(InodeId, usize)>], d: InodeId, i: usize, out: &mut Vec<u8>) {
    let mut chain = vec![(d, i)];
    let mut cur = d;
    // A valid tree has no cycles; the bound keeps a bad one from looping.
    while let Some((p, pi)) = parents[cur] {
        if chain.len() > tree.inodes.len() {
            break;
        }
        chain.push((p, pi));
        cur = p;
    }
    for &(dir, idx) in chain.iter().rev() {
        out.push(b'/');
        out.extend_from_slice(&tree.inodes[dir].entries()[idx].name);
    }
}

/// Depth-first, pre-order walk over every entry below the root, in stored (sorted) order:
/// `visit(dir, index in dir, full path, first)`. A directory is descended into once; `first` is
/// false only for a directory met again (impossible in a valid tree, kept safe for a bad one).
/// One path buffer serves the whole walk: a directory's frame remembers where its names start.
fn walk_depth_first(
    tree: &Tree,
    mut visit: impl FnMut(InodeId, usize, &[u8], bool) -> io::Result<()>,
) -> io::Result<()> {
    let mut seen = vec![false; tree.inodes.len()];
    seen[ROOT] = true;
    let mut path = Vec::new();
    // (directory, next entry, length of `path` that names the directory)
    let mut stack: Vec<(InodeId, usize, usize)> = vec![(ROOT, 0, 0)];
    while let Some(top) = stack.last_mut() {
        let (d, i, base) = *top;
        let entries = tree.inodes[d].entries();
        if i >= entries.len() {
            stack.pop();
            continue;
        }
        top.1 += 1;
        let child = entries[i].inode;
        path.truncate(base);
        path.push(b'/');
        path.extend_from_slice(&entries[i].name);
        let descend = tree.inodes[child].is_dir() && !std::mem::replace(&mut seen[child], true);
        visit(d, i, &path, descend || !tree.inodes[child].is_dir())?;
        if descend {
            stack.push((child, 0, path.len()));
        }
    }
    Ok(())
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
