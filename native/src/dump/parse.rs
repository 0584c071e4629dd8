// SPDX-License-Identifier: MIT OR Apache-2.0
//! Dump parser: text → [`Tree`], with the same acceptance rules as mkcomposefs 1.0.8
//! `--from-file` (and a little stricter where mkcomposefs silently misreads, e.g. malformed
//! digests or integers).

use super::*;
use crate::tree::{mode, Digest, Inode, InodeData, InodeId, Timespec, Tree, Xattr, ROOT};
use std::collections::HashMap;

/// What is wrong with a dump line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("no files in dump")]
    Empty,
    #[error("embedded NUL byte at position {0}")]
    EmbeddedNul(usize),
    #[error("expected at least 11 space-separated fields, found {0}")]
    MissingFields(usize),
    #[error("invalid escape in {field}: {what}")]
    BadEscape { field: &'static str, what: String },
    #[error("invalid {field} {value:?}")]
    BadInteger { field: &'static str, value: String },
    #[error("invalid mode {0:o}: unknown file type")]
    BadMode(u32),
    #[error("invalid empty path")]
    EmptyPath,
    #[error("root must be a directory")]
    RootNotDir,
    #[error("can't have multiple roots")]
    MultipleRoots,
    #[error("root node not present (the first line must be \"/\")")]
    NoRoot,
    #[error("invalid . or .. in path {0}")]
    DotName(String),
    #[error("empty name in path {0}")]
    EmptyName(String),
    #[error("name too long ({len} > 255 bytes) in path {path}")]
    NameTooLong { path: String, len: usize },
    #[error("parent directory missing for {0}")]
    MissingParent(String),
    #[error("parent must be a directory for {0}")]
    ParentNotDir(String),
    #[error("path {0} already exists")]
    Duplicate(String),
    #[error("directories can't be hardlinked")]
    HardlinkIsDir,
    #[error("no target path for the hardlink")]
    HardlinkNoTarget,
    #[error("no target at {0} for hardlink")]
    HardlinkMissingTarget(String),
    #[error("self-referential hardlink {0}")]
    HardlinkSelf(String),
    #[error("hardlink cycle through {0}")]
    HardlinkCycle(String),
    #[error("hardlink target {0} is a directory")]
    HardlinkToDir(String),
    #[error("invalid content size {content}, must match size {size}")]
    ContentSize { content: usize, size: u64 },
    #[error("inline content size {0} exceeds maximum 5000")]
    ContentTooLong(usize),
    #[error("invalid symlink: empty target")]
    SymlinkEmpty,
    #[error("payload too long ({0} bytes, at most 4095)")]
    PayloadTooLong(usize),
    #[error("NUL byte in {0}")]
    NulInField(&'static str),
    #[error("invalid digest {0:?}: expected 64 hex digits")]
    BadDigest(String),
    #[error("missing = in xattr")]
    XattrNoEquals,
    #[error("invalid xattr key length {0} (1..255)")]
    XattrKeyLength(usize),
    #[error("xattr value too long ({0} > 65535 bytes)")]
    XattrValueTooLong(usize),
    #[error("too many xattrs: more than 32767 bytes for one inode")]
    XattrsTooLarge,
}

/// A refused dump: the 1-based line number (0: the dump as a whole) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "line {}: {}", self.line, self.kind)
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hexdigit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Undo the dump escaping.
pub fn unescape(s: &[u8], field: &'static str) -> Result<Vec<u8>, ParseErrorKind> {
    let bad = |what: &str| ParseErrorKind::BadEscape {
        field,
        what: what.to_string(),
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err(bad("no character after escape"));
        };
        i += 1;
        match e {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                if i + 2 > s.len() {
                    return Err(bad("no hex characters after hex escape"));
                }
                match (hexdigit(s[i]), hexdigit(s[i + 1])) {
                    (Some(a), Some(b)) => out.push(a << 4 | b),
                    _ => return Err(bad("invalid hex characters after hex escape")),
                }
                i += 2;
            }
            other => return Err(bad(&format!("unsupported escape type {}", other as char))),
        }
    }
    Ok(out)
}

fn unescape_opt(s: &[u8], field: &'static str) -> Result<Option<Vec<u8>>, ParseErrorKind> {
    if s == b"-" {
        Ok(None)
    } else {
        unescape(s, field).map(Some)
    }
}

fn parse_u64(s: &[u8], field: &'static str, radix: u32) -> Result<u64, ParseErrorKind> {
    let bad = || ParseErrorKind::BadInteger { field, value: lossy(s) };
    if s.is_empty() || !s.iter().all(|c| (*c as char).is_digit(radix)) {
        return Err(bad());
    }
    u64::from_str_radix(std::str::from_utf8(s).unwrap(), radix).map_err(|_| bad())
}

fn parse_u32(s: &[u8], field: &'static str, radix: u32) -> Result<u32, ParseErrorKind> {
    let v = parse_u64(s, field, radix)?;
    u32::try_from(v).map_err(|_| ParseErrorKind::BadInteger { field, value: lossy(s) })
}

fn parse_mtime(s: &[u8]) -> Result<Timespec, ParseErrorKind> {
    let bad = || ParseErrorKind::BadInteger {
        field: "mtime",
        value: lossy(s),
    };
    let dot = s.iter().position(|&c| c == b'.').ok_or_else(bad)?;
    let (sec_s, nsec_s) = (&s[..dot], &s[dot + 1..]);
    let (neg, digits) = match sec_s.first() {
        Some(b'-') => (true, &sec_s[1..]),
        _ => (false, sec_s),
    };
    let sec = parse_u64(digits, "mtime", 10).map_err(|_| bad())?;
    let sec = i64::try_from(sec).map_err(|_| bad())?;
    let nsec = parse_u64(nsec_s, "mtime", 10).map_err(|_| bad())?;
    if nsec >= 1_000_000_000 {
        return Err(bad());
    }
    Ok(Timespec {
        sec: if neg { -sec } else { sec },
        nsec: nsec as u32,
    })
}

fn valid_type(m: u32) -> bool {
    matches!(
        m & mode::S_IFMT,
        mode::S_IFREG | mode::S_IFDIR | mode::S_IFLNK | mode::S_IFBLK | mode::S_IFCHR | mode::S_IFSOCK | mode::S_IFIFO
    )
}

/// Per-inode xattr bookkeeping as lcfs_node_set_xattr does it (size budget, last key wins).
#[derive(Default)]
struct XattrSet {
    list: Vec<Xattr>,
    size: usize,
}

impl XattrSet {
    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), ParseErrorKind> {
        if key.is_empty() || key.len() > XATTR_NAME_MAX {
            return Err(ParseErrorKind::XattrKeyLength(key.len()));
        }
        if key.contains(&0) {
            return Err(ParseErrorKind::NulInField("xattr key"));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(ParseErrorKind::XattrValueTooLong(value.len()));
        }
        if let Some(i) = self.list.iter().position(|x| x.key == key) {
            let old = self.list.swap_remove(i);
            if self.list.is_empty() {
                self.size = 0;
            } else {
                self.size -= 7 + old.key.len() + old.value.len();
            }
        }
        let mut entry = 7 + key.len() + value.len();
        if self.list.is_empty() {
            entry += 12;
        }
        if self.size + entry > INODE_EXTERNAL_XATTR_MAX {
            return Err(ParseErrorKind::XattrsTooLarge);
        }
        self.size += entry;
        self.list.push(Xattr { key, value });
        Ok(())
    }
}

struct Fixup {
    line: usize,
    placeholder: InodeId,
    target: Option<Vec<u8>>,
}

struct Parser {
    tree: Option<Tree>,
    placeholders: HashMap<InodeId, usize>, // placeholder id -> index in fixups
    fixups: Vec<Fixup>,
    /// Lines in the dump: room to reserve for the inodes.
    lines: usize,
}

fn split_fields(line: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields = Vec::with_capacity(11);
    let mut rest = line;
    while fields.len() < 11 {
        match rest.iter().position(|&c| c == b' ') {
            Some(i) => {
                fields.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                fields.push(rest);
                rest = &rest[rest.len()..];
                break;
            }
        }
    }
    (fields, rest)
}

impl Parser {
    /// Find the directory that will hold `path` and the last name.
    fn parent_of(&self, path: &[u8]) -> Result<(InodeId, Vec<u8>), ParseErrorKind> {
        let tree = self.tree.as_ref().ok_or(ParseErrorKind::NoRoot)?;
        let shown = lossy(path);
        let comps: Vec<&[u8]> = {
            let trimmed = {
                let mut p = path;
                while p.first() == Some(&b'/') {
                    p = &p[1..];
                }
                p
            };
            trimmed.split(|&c| c == b'/').collect()
        };
        let (name, dirs) = comps.split_last().unwrap();
        let mut cur = ROOT;
        for d in dirs {
            if d.is_empty() {
                return Err(ParseErrorKind::EmptyName(shown));
            }
            if !tree.inodes[cur].is_dir() {
                return Err(ParseErrorKind::ParentNotDir(shown));
            }
            cur = tree
                .lookup(cur, d)
                .ok_or_else(|| ParseErrorKind::MissingParent(shown.clone()))?;
        }
        if !tree.inodes[cur].is_dir() {
            return Err(ParseErrorKind::ParentNotDir(shown));
        }
        if name.is_empty() {
            return Err(ParseErrorKind::EmptyName(shown));
        }
        if *name == b"." || *name == b".." {
            return Err(ParseErrorKind::DotName(shown));
        }
        if name.len() > NAME_MAX {
            return Err(ParseErrorKind::NameTooLong {
                path: shown,
                len: name.len(),
            });
        }
        if tree.lookup(cur, name).is_some() {
            return Err(ParseErrorKind::Duplicate(shown));
        }
        Ok((cur, name.to_vec()))
    }

    fn line(&mut self, lineno: usize, line: &[u8]) -> Result<(), ParseErrorKind> {
        if let Some(off) = line.iter().position(|&c| c == 0) {
            return Err(ParseErrorKind::EmbeddedNul(off));
        }
        let (f, xattr_part) = split_fields(line);
        if f.len() < 11 {
            return Err(ParseErrorKind::MissingFields(f.len()));
        }
        let path = unescape(f[0], "path")?;
        if path.is_empty() {
            return Err(ParseErrorKind::EmptyPath);
        }
        if path.contains(&0) {
            return Err(ParseErrorKind::NulInField("path"));
        }
        let (is_link, mode_s) = match f[2].first() {
            Some(b'@') => (true, &f[2][1..]),
            _ => (false, f[2]),
        };
        let md = parse_u32(mode_s, "mode", 8)?;
        if !valid_type(md) {
            return Err(ParseErrorKind::BadMode(md));
        }
        let is_root = path == b"/";
        if is_root {
            if md & mode::S_IFMT != mode::S_IFDIR || is_link {
                return Err(ParseErrorKind::RootNotDir);
            }
            if self.tree.is_some() {
                return Err(ParseErrorKind::MultipleRoots);
            }
        }
        let parent = if is_root { None } else { Some(self.parent_of(&path)?) };

        if is_link {
            if md & mode::S_IFMT == mode::S_IFDIR {
                return Err(ParseErrorKind::HardlinkIsDir);
            }
            let target = unescape_opt(f[8], "payload")?;
            let tree = self.tree.as_mut().unwrap();
            let mut ph = Inode::new_dir(0);
            ph.mode = md;
            ph.data = InodeData::Special;
            let id = tree.push(ph);
            let (dir, name) = parent.unwrap();
            tree.link(dir, name, id);
            self.placeholders.insert(id, self.fixups.len());
            self.fixups.push(Fixup {
                line: lineno,
                placeholder: id,
                target,
            });
            return Ok(());
        }

        let size = parse_u64(f[1], "size", 10)?;
        let nlink = parse_u32(f[3], "nlink", 10)?;
        let uid = parse_u32(f[4], "uid", 10)?;
        let gid = parse_u32(f[5], "gid", 10)?;
        let rdev = parse_u64(f[6], "rdev", 10)?;
        let mtime = parse_mtime(f[7])?;
        let payload = unescape_opt(f[8], "payload")?;
        let content = unescape_opt(f[9], "content")?;
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(ParseErrorKind::ContentSize { content: c.len(), size });
            }
        }
        let digest_s = unescape_opt(f[10], "digest")?;
        let digest: Option<Digest> = match digest_s {
            None => None,
            Some(d) => {
                let bad = || ParseErrorKind::BadDigest(lossy(&d));
                if d.len() != 64 {
                    return Err(bad());
                }
                let mut raw = [0u8; 32];
                for i in 0..32 {
                    match (hexdigit(d[2 * i]), hexdigit(d[2 * i + 1])) {
                        (Some(a), Some(b)) => raw[i] = a << 4 | b,
                        _ => return Err(bad()),
                    }
                }
                Some(raw)
            }
        };
        let ftype = md & mode::S_IFMT;
        let mut inode = Inode {
            mode: md,
            uid,
            gid,
            nlink,
            // The reference keeps rdev in 32 bits.
            rdev: if ftype == mode::S_IFCHR || ftype == mode::S_IFBLK {
                rdev as u32 as u64
            } else {
                0
            },
            mtime,
            size,
            xattrs: Vec::new(),
            data: InodeData::Special,
        };
        match ftype {
            mode::S_IFDIR => inode.data = InodeData::Directory { entries: Vec::new() },
            mode::S_IFLNK => {
                let target = payload.unwrap_or_default();
                if target.is_empty() {
                    return Err(ParseErrorKind::SymlinkEmpty);
                }
                if target.len() >= PATH_MAX {
                    return Err(ParseErrorKind::PayloadTooLong(target.len()));
                }
                if target.contains(&0) {
                    return Err(ParseErrorKind::NulInField("symlink target"));
                }
                inode.size = target.len() as u64;
                inode.data = InodeData::Symlink { target };
            }
            _ => {
                if let Some(p) = &payload {
                    if p.len() >= PATH_MAX {
                        return Err(ParseErrorKind::PayloadTooLong(p.len()));
                    }
                    if p.contains(&0) {
                        return Err(ParseErrorKind::NulInField("payload"));
                    }
                }
                if let Some(c) = &content {
                    if c.len() > INLINE_CONTENT_MAX {
                        return Err(ParseErrorKind::ContentTooLong(c.len()));
                    }
                }
                if ftype == mode::S_IFREG {
                    inode.data = InodeData::Regular {
                        inline: content.filter(|c| !c.is_empty()),
                        payload,
                        digest,
                    };
                }
            }
        }
        if xattr_part.len() > 65535 {
            return Err(ParseErrorKind::XattrsTooLarge);
        }
        let mut xs = XattrSet::default();
        let mut rest = xattr_part;
        while !rest.is_empty() {
            let (field, next) = match rest.iter().position(|&c| c == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let eq = field
                .iter()
                .position(|&c| c == b'=')
                .ok_or(ParseErrorKind::XattrNoEquals)?;
            let key = unescape(&field[..eq], "xattr key")?;
            let value = unescape(&field[eq + 1..], "xattr value")?;
            xs.set(key, value)?;
        }
        inode.xattrs = xs.list;

        match parent {
            None => {
                let mut tree = Tree::new(inode);
                tree.inodes.reserve_exact(self.lines);
                self.tree = Some(tree);
            }
            Some((dir, name)) => {
                let tree = self.tree.as_mut().unwrap();
                let id = tree.push(inode);
                tree.link(dir, name, id);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Tree, ParseError> {
        let mut tree = self.tree.take().ok_or(ParseError {
            line: 0,
            kind: ParseErrorKind::Empty,
        })?;
        // Resolve each hardlink to a real inode, following chains of hardlinks.
        let mut resolved: HashMap<InodeId, InodeId> = HashMap::new();
        for fx in &self.fixups {
            let err = |kind| ParseError { line: fx.line, kind };
            let Some(target) = &fx.target else {
                return Err(err(ParseErrorKind::HardlinkNoTarget));
            };
            let shown = lossy(target);
            let mut cur = tree
                .resolve(target)
                .ok_or_else(|| err(ParseErrorKind::HardlinkMissingTarget(shown.clone())))?;
            if cur == fx.placeholder {
                return Err(err(ParseErrorKind::HardlinkSelf(shown)));
            }
            let mut steps = 0;
            while let Some(&i) = self.placeholders.get(&cur) {
                let next = &self.fixups[i];
                let t = next
                    .target
                    .as_ref()
                    .ok_or_else(|| err(ParseErrorKind::HardlinkNoTarget))?;
                cur = tree
                    .resolve(t)
                    .ok_or_else(|| err(ParseErrorKind::HardlinkMissingTarget(lossy(t))))?;
                steps += 1;
                if cur == fx.placeholder || steps > self.fixups.len() {
                    return Err(err(ParseErrorKind::HardlinkCycle(shown)));
                }
            }
            if tree.inodes[cur].is_dir() {
                return Err(err(ParseErrorKind::HardlinkToDir(shown)));
            }
            resolved.insert(fx.placeholder, cur);
        }
        if !resolved.is_empty() {
            // Drop the placeholders and renumber.
            let mut newid = vec![usize::MAX; tree.inodes.len()];
            let mut n = 0;
            for (i, slot) in newid.iter_mut().enumerate() {
                if !resolved.contains_key(&i) {
                    *slot = n;
                    n += 1;
                }
            }
            let map = |i: InodeId| newid[*resolved.get(&i).unwrap_or(&i)];
            let old = std::mem::take(&mut tree.inodes);
            tree.inodes.reserve_exact(n);
            // Per new inode: how many entries name it, and the (directory, entry index) of its
            // non-`@` line, which holds it.
            let mut linked = vec![0u32; n];
            let mut holder = vec![(u32::MAX, u32::MAX); n];
            for (i, mut ino) in old.into_iter().enumerate() {
                if resolved.contains_key(&i) {
                    continue;
                }
                if let InodeData::Directory { entries } = &mut ino.data {
                    for (k, e) in entries.iter_mut().enumerate() {
                        let real = !resolved.contains_key(&e.inode);
                        e.inode = map(e.inode);
                        linked[e.inode] += 1;
                        if real {
                            holder[e.inode] = (newid[i] as u32, k as u32);
                        }
                    }
                }
                tree.inodes.push(ino);
            }
            for (id, &(dir, k)) in holder.iter().enumerate() {
                if linked[id] > 1 && dir != u32::MAX {
                    let name = tree.inodes[dir as usize].entries()[k as usize].name.clone();
                    tree.primary.insert(id, (dir as usize, name));
                }
            }
        }
        Ok(tree)
    }
}

/// Parse a whole dump.
pub fn parse(input: &[u8]) -> Result<Tree, ParseError> {
    let mut lines: Vec<&[u8]> = input.split(|&c| c == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut p = Parser {
        tree: None,
        placeholders: HashMap::new(),
        fixups: Vec::new(),
        lines: lines.len(),
    };
    for (i, line) in lines.into_iter().enumerate() {
        p.line(i + 1, line).map_err(|kind| ParseError { line: i + 1, kind })?;
    }
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::SAMPLE;

    #[test]
    fn sample_round_trips_byte_for_byte() {
        let tree = parse(SAMPLE).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&crate::dump::dump_to_vec(&tree)),
            String::from_utf8_lossy(SAMPLE)
        );
        assert_eq!(parse(&crate::dump::dump_to_vec(&tree)).unwrap(), tree);
    }

    #[test]
    fn sample_fields_land_where_they_belong() {
        let tree = parse(SAMPLE).unwrap();
        let big = tree.resolve(b"/dir/big").unwrap();
        assert_eq!(tree.resolve(b"/dir/hl"), Some(big), "a hardlink names the same inode");
        match &tree.inodes[big].data {
            InodeData::Regular {
                inline,
                payload,
                digest,
            } => {
                assert_eq!(inline, &None);
                assert_eq!(payload.as_deref(), Some(format!("ab/{}", "cd".repeat(31)).as_bytes()));
                assert_eq!(digest.unwrap()[..2], [0xab, 0xcd]);
            }
            other => panic!("{other:?}"),
        }
        let small = &tree.inodes[tree.resolve(b"/dir/small").unwrap()];
        assert_eq!(
            (small.uid, small.gid, small.mtime),
            (1000, 1000, Timespec { sec: 1003, nsec: 25 })
        );
        assert!(matches!(&small.data, InodeData::Regular { inline: Some(c), .. } if c == b"hello"));
        let odd = &tree.inodes[tree.resolve(b"/name with=odd\x01bytes").unwrap()];
        assert_eq!(
            (odd.uid, odd.xattrs[0].key.as_slice(), odd.xattrs[0].value.as_slice()),
            (70000, &b"user.k="[..], &b"v="[..])
        );
        let dev = &tree.inodes[tree.resolve(b"/dev").unwrap()];
        assert_eq!((dev.file_type(), dev.rdev), (mode::S_IFCHR, 1025));
    }

    /// One bad line after a good root, and where and why the parser refuses it.
    #[test]
    fn refusals_name_the_line_and_the_reason() {
        const ROOT_LINE: &str = "/ 4096 40755 2 0 0 0 0.0 - - -\n";
        let digest = "ab".repeat(32);
        let cases: Vec<(String, usize, ParseErrorKind)> = vec![
            (String::new(), 0, ParseErrorKind::Empty),
            ("/a 0 100644 1 0 0 0 0.0 - - -\n".into(), 1, ParseErrorKind::NoRoot),
            ("/ 0 100644 1 0 0 0 0.0 - - -\n".into(), 1, ParseErrorKind::RootNotDir),
            (format!("{ROOT_LINE}{ROOT_LINE}"), 2, ParseErrorKind::MultipleRoots),
            (
                format!("{ROOT_LINE}/a 0 100644 1 0 0 0\n"),
                2,
                ParseErrorKind::MissingFields(7),
            ),
            (
                format!("{ROOT_LINE}/a 0 170644 1 0 0 0 0.0 - - -\n"),
                2,
                ParseErrorKind::BadMode(0o170644),
            ),
            (
                format!("{ROOT_LINE}/x/a 0 100644 1 0 0 0 0.0 - - -\n"),
                2,
                ParseErrorKind::MissingParent("/x/a".into()),
            ),
            (
                format!("{ROOT_LINE}/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n"),
                3,
                ParseErrorKind::Duplicate("/a".into()),
            ),
            (
                format!("{ROOT_LINE}/a 3 100644 1 0 0 0 0.0 - ab -\n"),
                2,
                ParseErrorKind::ContentSize { content: 2, size: 3 },
            ),
            (
                format!("{ROOT_LINE}/a 9 100644 1 0 0 0 0.0 ab/c - {}\n", &digest[1..]),
                2,
                ParseErrorKind::BadDigest(digest[1..].to_string()),
            ),
            (
                format!("{ROOT_LINE}/a 0 120777 1 0 0 0 0.0 - - -\n"),
                2,
                ParseErrorKind::SymlinkEmpty,
            ),
            (
                format!("{ROOT_LINE}/a 0 100644 1 0 0 0 0.0 - - - user.x\n"),
                2,
                ParseErrorKind::XattrNoEquals,
            ),
            (
                format!("{ROOT_LINE}/a 0 @100644 1 0 0 0 0.0 /nowhere - -\n"),
                2,
                ParseErrorKind::HardlinkMissingTarget("/nowhere".into()),
            ),
            (
                format!("{ROOT_LINE}/a\\q 0 100644 1 0 0 0 0.0 - - -\n"),
                2,
                ParseErrorKind::BadEscape {
                    field: "path",
                    what: "unsupported escape type q".into(),
                },
            ),
        ];
        for (text, line, kind) in cases {
            let err = parse(text.as_bytes()).expect_err(&text);
            assert_eq!(err, ParseError { line, kind }, "{text:?}");
        }
    }
}
