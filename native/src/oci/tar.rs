// SPDX-License-Identifier: MIT OR Apache-2.0
//! A streaming reader of tar archives (ustar, GNU long names, PAX) that holds at most one
//! header's worth of metadata in memory.
//!
//! Everything an archive says is bounded before it is read: PAX and GNU long-name data by
//! [`Limits::max_meta`], paths and link targets by [`Limits::max_path`], xattr values by
//! [`Limits::max_xattr_value`], the number of entries by [`Limits::max_entries`]; an entry's
//! data is held in memory only up to a bound its caller names, and only as its bytes arrive (a
//! size field is a claim, not a reason to allocate). Header checksums are checked, numbers must
//! be well-formed (octal or GNU base-256, with room to pad to a block), and an archive that ends
//! inside a header or an entry's data is an error, not an end. Only regular files have data to
//! read; the size field of any other entry is skipped over. Unknown entry types are refused
//! rather than guessed at; GNU sparse files are refused (no container layer tool writes them).

use crate::tree::{Timespec, Xattr};
use std::io::{self, Read};

/// Bounds on what one archive may make us hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of one PAX extended header or GNU long name/link record.
    pub max_meta: u64,
    /// Bytes of a path or link target.
    pub max_path: usize,
    /// Bytes of one xattr value (Linux's own limit is 64 KiB).
    pub max_xattr_value: usize,
    /// Entries in one archive (headers of files, directories, links, ...).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_meta: 1 << 20,
            max_path: 4096,
            max_xattr_value: 64 << 10,
            max_entries: 4_000_000,
        }
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Hardlink,
    Symlink,
    Char,
    Block,
    Directory,
    Fifo,
}

/// One entry's header, with PAX and GNU extensions applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    /// Symlink target or hardlink source path.
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// Length of the entry's data in the archive (0 but for regular files).
    pub size: u64,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: Vec<Xattr>,
    /// Offset of the entry's data from the start of the archive.
    pub data_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("truncated archive (ends inside {what} at offset {offset})")]
    Truncated { what: &'static str, offset: u64 },
    #[error("not a tar archive (bad header checksum at offset {offset})")]
    Checksum { offset: u64 },
    #[error("bad {field} field in the tar header at offset {offset}")]
    Number { field: &'static str, offset: u64 },
    #[error("{what} of {size} bytes at offset {offset} is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
        offset: u64,
    },
    #[error("malformed PAX header at offset {offset}: {why}")]
    Pax { offset: u64, why: &'static str },
    #[error("unsupported tar entry type {typeflag:?} at offset {offset}")]
    Unsupported { typeflag: char, offset: u64 },
    #[error("more than {0} entries")]
    TooManyEntries(u64),
}

/// A source of archive bytes that may be able to skip without reading.
pub trait Source: Read {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut self.take(n), &mut io::sink())
    }
}

impl<R: Read + ?Sized> Source for Box<R> {}
impl Source for &[u8] {}
impl<R: Read> Source for io::BufReader<R> {}

const BLOCK: u64 = 512;
/// How far [`TarReader::read_data_to_end`] may allocate ahead of the bytes read.
pub const GROW: u64 = 64 << 10;

/// Reads entries one after the other; [`TarReader::data`] reads the current entry's contents.
pub struct TarReader<R> {
    r: R,
    limits: Limits,
    /// Bytes consumed from `r`.
    pos: u64,
    /// Unread data bytes of the current entry, then its padding.
    left: u64,
    pad: u64,
    entries: u64,
    done: bool,
}

fn le_field(h: &[u8; 512], start: usize, len: usize) -> &[u8] {
    &h[start..start + len]
}

/// A NUL-terminated header string.
fn cstr_field(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// An octal number (leading spaces, then digits, ended by NUL/space or the field's end), or a
/// GNU base-256 number (first byte 0x80 positive, 0xff negative). Empty fields are 0.
fn number(f: &[u8], field: &'static str, offset: u64) -> Result<i128, TarError> {
    let bad = || TarError::Number { field, offset };
    if let Some(&first) = f.first() {
        if first == 0x80 || first == 0xff {
            // Big-endian two's complement after the marker byte (at most 88 bits here).
            let mut v: i128 = if first == 0xff { -1 } else { 0 };
            for &b in &f[1..] {
                v = (v << 8) | b as i128;
            }
            return Ok(v);
        }
    }
    let mut i = 0;
    while i < f.len() && f[i] == b' ' {
        i += 1;
    }
    let mut v: i128 = 0;
    let mut digits = 0;
    while i < f.len() && (b'0'..=b'7').contains(&f[i]) {
        v = v * 8 + (f[i] - b'0') as i128;
        digits += 1;
        i += 1;
        if digits > 24 {
            return Err(bad());
        }
    }
    if f[i..].iter().any(|&b| b != 0 && b != b' ') {
        return Err(bad());
    }
    Ok(v)
}

fn to_u32(v: i128, field: &'static str, offset: u64) -> Result<u32, TarError> {
    u32::try_from(v).map_err(|_| TarError::Number { field, offset })
}

fn to_u64(v: i128, field: &'static str, offset: u64) -> Result<u64, TarError> {
    u64::try_from(v).map_err(|_| TarError::Number { field, offset })
}

/// PAX/GNU overrides collected from extension records for the next entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Timespec>,
    xattrs: Vec<Xattr>,
}

/// A PAX decimal time `[-]SEC[.FRAC]`.
fn pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if sec.is_empty() || !sec.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = sec.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.25 is 1.25 s before the epoch: sec -2, nsec 0.75e9.
        if nsec == 0 {
            Some(Timespec { sec: -sec, nsec: 0 })
        } else {
            Some(Timespec {
                sec: -sec - 1,
                nsec: 1_000_000_000 - nsec,
            })
        }
    } else {
        Some(Timespec { sec, nsec })
    }
}

fn pax_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(|b| b.is_ascii_digit()) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl<R: Source> TarReader<R> {
    pub fn new(r: R, limits: Limits) -> TarReader<R> {
        TarReader {
            r,
            limits,
            pos: 0,
            left: 0,
            pad: 0,
            entries: 0,
            done: false,
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// The underlying reader (for draining what follows the end-of-archive marker).
    pub fn into_inner(self) -> R {
        self.r
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), TarError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(TarError::Truncated {
                        what,
                        offset: self.pos + got as u64,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), TarError> {
        let got = self.r.skip(n)?;
        self.pos += got;
        if got < n {
            return Err(TarError::Truncated { what, offset: self.pos });
        }
        Ok(())
    }

    /// Skip what is left of the current entry's data and padding.
    fn finish_entry(&mut self) -> Result<(), TarError> {
        let n = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        if n > 0 {
            self.skip(n, "an entry's data")?;
        }
        Ok(())
    }

    /// Read `size` bytes of extension data (bounded by `max_meta`) and its padding.
    fn read_meta(&mut self, size: u64, what: &'static str, offset: u64) -> Result<Vec<u8>, TarError> {
        if size > self.limits.max_meta {
            return Err(TarError::TooLarge {
                what,
                size,
                limit: self.limits.max_meta,
                offset,
            });
        }
        let mut buf = vec![0u8; size as usize];
        self.read_exact_or(&mut buf, what)?;
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        self.skip(pad, what)?;
        Ok(buf)
    }

    fn check_path(&self, p: &[u8], what: &'static str, offset: u64) -> Result<(), TarError> {
        if p.len() > self.limits.max_path {
            return Err(TarError::TooLarge {
                what,
                size: p.len() as u64,
                limit: self.limits.max_path as u64,
                offset,
            });
        }
        Ok(())
    }

    fn parse_pax(&self, data: &[u8], pending: &mut Pending, offset: u64) -> Result<(), TarError> {
        let bad = |why| TarError::Pax { offset, why };
        let mut rest = data;
        while !rest.is_empty() {
            let sp = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or(bad("record without a length"))?;
            let len = pax_decimal(&rest[..sp]).ok_or(bad("bad record length"))? as usize;
            if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
                return Err(bad("record length does not fit"));
            }
            let rec = &rest[sp + 1..len - 1];
            rest = &rest[len..];
            let eq = rec.iter().position(|&b| b == b'=').ok_or(bad("record without '='"))?;
            let (key, value) = (&rec[..eq], &rec[eq + 1..]);
            match key {
                b"path" => {
                    self.check_path(value, "PAX path", offset)?;
                    pending.path = Some(value.to_vec());
                }
                b"linkpath" => {
                    self.check_path(value, "PAX linkpath", offset)?;
                    pending.link = Some(value.to_vec());
                }
                b"size" => pending.size = Some(pax_decimal(value).ok_or(bad("bad size"))?),
                b"uid" => {
                    pending.uid = Some(
                        pax_decimal(value)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or(bad("bad uid"))?,
                    )
                }
                b"gid" => {
                    pending.gid = Some(
                        pax_decimal(value)
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or(bad("bad gid"))?,
                    )
                }
                b"mtime" => pending.mtime = Some(pax_time(value).ok_or(bad("bad mtime"))?),
                _ if key.starts_with(b"SCHILY.xattr.") => {
                    let name = &key[b"SCHILY.xattr.".len()..];
                    if name.is_empty() || name.len() > 255 {
                        return Err(bad("bad xattr name"));
                    }
                    if value.len() > self.limits.max_xattr_value {
                        return Err(TarError::TooLarge {
                            what: "xattr value",
                            size: value.len() as u64,
                            limit: self.limits.max_xattr_value as u64,
                            offset,
                        });
                    }
                    pending.xattrs.retain(|x| x.key != name);
                    pending.xattrs.push(Xattr {
                        key: name.to_vec(),
                        value: value.to_vec(),
                    });
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(TarError::Unsupported { typeflag: 'S', offset });
                }
                // atime, ctime, uname, gname, comment, charset, LIBARCHIVE.*, ...: not recorded
                // by composefs.
                _ => {}
            }
        }
        Ok(())
    }

    /// The next entry, or `None` at the end of the archive. Unread data of the previous entry
    /// is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.finish_entry()?;
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let mut h = [0u8; 512];
            // End of input right at a header boundary: tolerated (some writers omit the zeros).
            let mut first = [0u8; 1];
            let n = loop {
                match self.r.read(&mut first) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                if offset == 0 {
                    return Err(TarError::Truncated {
                        what: "the first header",
                        offset,
                    });
                }
                self.done = true;
                return Ok(None);
            }
            self.pos += 1;
            h[0] = first[0];
            self.read_exact_or(&mut h[1..], "a header")?;
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            self.check_sum(&h, offset)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(TarError::TooManyEntries(self.limits.max_entries));
            }
            let size_field = number(le_field(&h, 124, 12), "size", offset)?;
            let size = to_u64(size_field, "size", offset)?;
            let typeflag = h[156];
            match typeflag {
                b'x' | b'g' => {
                    let data = self.read_meta(size, "PAX header", offset)?;
                    if typeflag == b'x' {
                        self.parse_pax(&data, &mut pending, offset)?;
                    } else {
                        // Global headers are checked but not applied, like container engines do.
                        self.parse_pax(&data, &mut Pending::default(), offset)?;
                    }
                    continue;
                }
                b'L' | b'K' => {
                    let data = self.read_meta(size, "GNU long name", offset)?;
                    let name = cstr_field(&data).to_vec();
                    self.check_path(&name, "GNU long name", offset)?;
                    if typeflag == b'L' {
                        pending.path = Some(name);
                    } else {
                        pending.link = Some(name);
                    }
                    continue;
                }
                _ => {}
            }
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::Regular,
                b'1' => Kind::Hardlink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Directory,
                b'6' => Kind::Fifo,
                t => {
                    return Err(TarError::Unsupported {
                        typeflag: t as char,
                        offset,
                    })
                }
            };
            let ustar = &h[257..263] == b"ustar\0";
            let mut path = cstr_field(le_field(&h, 0, 100)).to_vec();
            if ustar {
                let prefix = cstr_field(le_field(&h, 345, 155));
                if !prefix.is_empty() {
                    let mut p = prefix.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(&path);
                    path = p;
                }
            }
            let path = pending.path.take().unwrap_or(path);
            let link = pending
                .link
                .take()
                .unwrap_or_else(|| cstr_field(le_field(&h, 157, 100)).to_vec());
            let size = pending.size.unwrap_or(size);
            let mode = (number(le_field(&h, 100, 8), "mode", offset)? & 0o7777) as u32;
            let uid = match pending.uid {
                Some(u) => u,
                None => to_u32(number(le_field(&h, 108, 8), "uid", offset)?, "uid", offset)?,
            };
            let gid = match pending.gid {
                Some(g) => g,
                None => to_u32(number(le_field(&h, 116, 8), "gid", offset)?, "gid", offset)?,
            };
            let mtime = match pending.mtime {
                Some(t) => t,
                None => {
                    let v = number(le_field(&h, 136, 12), "mtime", offset)?;
                    Timespec {
                        sec: i64::try_from(v).map_err(|_| TarError::Number { field: "mtime", offset })?,
                        nsec: 0,
                    }
                }
            };
            let (devmajor, devminor) = if matches!(kind, Kind::Char | Kind::Block) {
                (
                    to_u32(number(le_field(&h, 329, 8), "devmajor", offset)?, "devmajor", offset)?,
                    to_u32(number(le_field(&h, 337, 8), "devminor", offset)?, "devminor", offset)?,
                )
            } else {
                (0, 0)
            };
            // Only regular files carry data; anything else's size field is skipped over (GNU
            // tar writes hardlinks with size 0, but a size there would still be data) and is
            // not readable through `read_data`, as the entry's own `size` of 0 says.
            let padded = size
                .checked_next_multiple_of(BLOCK)
                .ok_or(TarError::Number { field: "size", offset })?;
            if kind == Kind::Regular {
                self.left = size;
                self.pad = padded - size;
            } else {
                self.left = 0;
                self.pad = padded;
            }
            self.check_path(&path, "path", offset)?;
            self.check_path(&link, "link target", offset)?;
            return Ok(Some(Entry {
                path,
                link,
                kind,
                mode,
                uid,
                gid,
                mtime,
                size: if kind == Kind::Regular { size } else { 0 },
                devmajor,
                devminor,
                xattrs: pending.xattrs,
                data_offset: self.pos,
            }));
        }
    }

    fn check_sum(&self, h: &[u8; 512], offset: u64) -> Result<(), TarError> {
        let want = number(le_field(h, 148, 8), "checksum", offset).map_err(|_| TarError::Checksum { offset })?;
        let mut unsigned: i64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in h.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += b as i64;
            signed += b as i8 as i64;
        }
        if want != unsigned as i128 && want != signed as i128 {
            return Err(TarError::Checksum { offset });
        }
        Ok(())
    }

    /// Read the current entry's data (at most its size; 0 at its end).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Err(TarError::Truncated {
                what: "an entry's data",
                offset: self.pos,
            });
        }
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }

    /// Append the rest of the current entry's data to `out`; data over `max` bytes is refused
    /// before any of it is read, and on an error `out` is left as it was. `out` grows with the
    /// bytes that arrive, never ahead of them by more than [`GROW`]: a header's size field may
    /// claim gigabytes that the archive does not hold, and only bytes present may cost memory.
    pub fn read_data_to_end(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), TarError> {
        if self.left > max as u64 {
            return Err(TarError::TooLarge {
                what: "entry data",
                size: self.left,
                limit: max as u64,
                offset: self.pos,
            });
        }
        let start = out.len();
        let mut at = start;
        while self.left > 0 {
            // Each step is filled before the next is added, so no byte is zeroed twice.
            out.resize(at + self.left.min(GROW) as usize, 0);
            while at < out.len() {
                let end = out.len();
                match self.read_data(&mut out[at..end]) {
                    Ok(n) => at += n,
                    Err(e) => {
                        out.truncate(start);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ustar header (with checksum) for tests and fuzz seeds.
    pub fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14000000000");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    pub fn archive(entries: &[([u8; 512], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = [k.as_bytes(), b"=", v, b"\n"].concat();
            let mut len = body.len() + 2;
            while format!("{len} ").len() + body.len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len} ").as_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    fn entries(data: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(data, Limits::default());
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut d = Vec::new();
            r.read_data_to_end(&mut d, usize::MAX)?;
            out.push((e, d));
        }
        Ok(out)
    }

    #[test]
    fn reads_entries_pax_and_gnu_names() {
        let long = vec![b'a'; 300];
        let p = pax(&[
            ("path", b"dir/long-pax-name"),
            ("mtime", b"-1.25"),
            ("SCHILY.xattr.user.k", b"v\0x"),
        ]);
        let data = archive(&[
            (header(b"dir/", b'5', 0, b""), b""),
            (header(b"dir/f", b'0', 5, b""), b"hello"),
            (
                header(b"././@LongLink", b'L', 301, b""),
                &[long.as_slice(), b"\0"].concat(),
            ),
            (header(b"short", b'2', 0, b"target"), b""),
            (header(b"PaxHeaders/x", b'x', p.len() as u64, b""), &p),
            (header(b"ignored", b'0', 3, b""), b"abc"),
            (header(b"hl", b'1', 0, b"dir/f"), b""),
        ]);
        let es = entries(&data).unwrap();
        assert_eq!(es.len(), 5);
        assert_eq!(es[0].0.kind, Kind::Directory);
        assert_eq!(es[1].1, b"hello");
        assert_eq!(es[1].0.mode, 0o644);
        assert_eq!(es[2].0.path, long);
        assert_eq!(es[2].0.link, b"target");
        assert_eq!(es[3].0.path, b"dir/long-pax-name");
        assert_eq!(
            es[3].0.mtime,
            Timespec {
                sec: -2,
                nsec: 750_000_000
            }
        );
        assert_eq!(es[3].0.xattrs[0].value, b"v\0x");
        assert_eq!(es[3].1, b"abc");
        assert_eq!(es[4].0.kind, Kind::Hardlink);
    }

    #[test]
    fn refuses_bad_input() {
        let ok = archive(&[(header(b"f", b'0', 5, b""), b"hello")]);
        // Truncated in data, in a header, bad checksum, bad type, huge PAX, not a tar.
        assert!(matches!(entries(&ok[..600]), Err(TarError::Truncated { .. })));
        assert!(matches!(entries(&ok[..100]), Err(TarError::Truncated { .. })));
        let mut bad = ok.clone();
        bad[0] = b'g';
        assert!(matches!(entries(&bad), Err(TarError::Checksum { offset: 0 })));
        let odd = archive(&[(header(b"f", b'Z', 0, b""), b"")]);
        assert!(matches!(
            entries(&odd),
            Err(TarError::Unsupported { typeflag: 'Z', .. })
        ));
        let huge = archive(&[(header(b"p", b'x', 2 << 30, b""), b"")]);
        assert!(matches!(entries(&huge), Err(TarError::TooLarge { .. })));
        assert!(entries(b"this is not a tar archive at all").is_err());
        assert!(matches!(entries(b""), Err(TarError::Truncated { .. })));
        let p = pax(&[("size", b"12x")]);
        let badpax = archive(&[(header(b"p", b'x', p.len() as u64, b""), &p)]);
        assert!(matches!(entries(&badpax), Err(TarError::Pax { .. })));
    }

    /// What an oci_layer fuzz run found: a directory header whose size field claims 2 GiB, with
    /// a few bytes after it. Reading "its data to the end" once allocated and zeroed the 2 GiB
    /// the header claimed before reading any. A directory has no data to read now, and data
    /// that is claimed but absent costs at most one growth step.
    #[test]
    fn claimed_sizes_cost_no_memory() {
        for (typeflag, kind) in [(b'5', Kind::Directory), (b'0', Kind::Regular), (0, Kind::Regular)] {
            let mut data = header(b"d/", typeflag, 2 << 30, b"").to_vec();
            data.extend_from_slice(&[0x5a; 9]);
            let mut r = TarReader::new(&data[..], Limits::default());
            let e = r.next_entry().unwrap().unwrap();
            assert_eq!(e.kind, kind);
            let mut buf = Vec::new();
            let read = r.read_data_to_end(&mut buf, usize::MAX);
            assert!(buf.capacity() <= GROW as usize, "{} bytes held", buf.capacity());
            if kind == Kind::Directory {
                assert_eq!(e.size, 0);
                read.unwrap();
                assert!(buf.is_empty(), "a directory's skipped bytes were read as data");
                assert!(matches!(r.next_entry(), Err(TarError::Truncated { offset: 521, .. })));
            } else {
                assert_eq!(e.size, 2 << 30);
                assert!(matches!(read, Err(TarError::Truncated { offset: 521, .. })));
                assert!(buf.is_empty(), "a failed read left bytes behind");
                // Over the caller's bound: refused before a byte is read.
                let mut r = TarReader::new(&data[..], Limits::default());
                r.next_entry().unwrap();
                let mut buf = Vec::new();
                assert!(matches!(
                    r.read_data_to_end(&mut buf, 1 << 20),
                    Err(TarError::TooLarge { size, limit, offset: 512, .. }) if size == 2 << 30 && limit == 1 << 20
                ));
                assert_eq!(buf.capacity(), 0);
            }
        }
        // Data that is there arrives whole, across growth steps, appended to what `out` held.
        let body: Vec<u8> = (0..3 * GROW + 5).map(|i| (i % 251) as u8).collect();
        let data = archive(&[(header(b"f", b'0', body.len() as u64, b""), &body)]);
        let mut r = TarReader::new(&data[..], Limits::default());
        r.next_entry().unwrap();
        let mut buf = b"head".to_vec();
        r.read_data_to_end(&mut buf, body.len()).unwrap();
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &body[..]);
        assert!(r.next_entry().unwrap().is_none());
    }

    /// A size whose padding to the next block does not fit in 64 bits (GNU base-256).
    #[test]
    fn size_that_cannot_be_padded() {
        let mut h = header(b"f", b'5', 0, b"");
        h[124] = 0x80;
        h[125..136].copy_from_slice(&[0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let data = archive(&[(h, b"")]);
        assert!(matches!(
            entries(&data),
            Err(TarError::Number {
                field: "size",
                offset: 0
            })
        ));
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0", "m", 0).unwrap(), 0o644);
        assert_eq!(number(b"  644 \0", "m", 0).unwrap(), 0o644);
        assert_eq!(number(b"\0\0\0", "m", 0).unwrap(), 0);
        assert!(number(b"64x", "m", 0).is_err());
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 1;
        big[10] = 1;
        assert_eq!(number(&big, "s", 0).unwrap(), 257);
        let neg = [0xffu8; 12];
        assert_eq!(number(&neg, "s", 0).unwrap(), -1);
    }
}
