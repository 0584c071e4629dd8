// SPDX-License-Identifier: MIT OR Apache-2.0
//! A repository's lookup rules, in one place (the layout is described in
//! python/composefs/repository.py): which strings are image names, how a name or a digest
//! becomes an image file, which files are trusted, and the repository lock. The Python
//! `Repository` and the native `cfsctl mount NAME` front both call these, so both resolve, refuse
//! and word errors alike.
//!
//! Trust: only the repository's owner (the owner of its directory) and root may have made what
//! is in it; a ref, image or directory that is not a plain file (or directory) owned by one of
//! them is refused and never followed. A digest or digest prefix always names the image itself,
//! never a ref; a ref that cannot be used (refused, too long) names nothing.
//!
//! Lock: flock(2) on `lock`, shared for readers and adders, exclusive for gc; whoever takes it
//! removes the temporaries that writers no longer running left behind.

use crate::{fsio, fsverity};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest image name: the temporary `refs/.NAME.tmp-<pid>-<n>` must fit in a file name.
pub const NAME_MAX: usize = 200;
/// meta.json and refs are a line or two; anything longer is not ours.
pub const SMALL_FILE_MAX: usize = 64 * 1024;
/// meta.json as `cfsctl init` writes it.
pub const META: &[u8] = b"{\"format\": \"composefs-repository\", \"version\": 1}\n";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the user can fix, naming the path it concerns (Python: `CfsError`).
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    User { message: String, path: Option<PathBuf> },
    /// The system refused an operation on `path` (Python: `OSError`).
    #[error("{}: {source}", path.display())]
    Io { source: io::Error, path: PathBuf },
}

fn user(message: impl Into<String>, path: Option<&Path>) -> Error {
    Error::User {
        message: message.into(),
        path: path.map(Path::to_path_buf),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        source,
        path: path.to_path_buf(),
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// `(sha256:)?` then 6 to 64 hex digits, any case: a digest or digest prefix.
pub fn is_digestish(s: &[u8]) -> bool {
    let rest = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"sha256:") => &s[7..],
        _ => s,
    };
    (6..=64).contains(&rest.len()) && rest.iter().all(u8::is_ascii_hexdigit)
}

/// Why `name` cannot be an image name, or None.
pub fn name_problem(name: &[u8]) -> Option<String> {
    let first = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    let rest = |c: &u8| c.is_ascii_alphanumeric() || b"._:@+=-".contains(c);
    if name.is_empty() || !first(&name[0]) || !name[1..].iter().all(rest) {
        return Some("letters, digits and ._:@+=- only, not starting with '.' or '-'".into());
    }
    if name.len() > NAME_MAX {
        return Some(format!("{} characters, at most {NAME_MAX} are allowed", name.len()));
    }
    if name.windows(4).any(|w| w == b".tmp") {
        return Some("'.tmp' is reserved for temporary files".into());
    }
    if is_digestish(name) || name.get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"sha256:")) {
        return Some("shaped like an image digest, which always names the image itself".into());
    }
    None
}

pub fn check_name(name: &[u8]) -> Result<(), Error> {
    match name_problem(name) {
        Some(why) => Err(user(format!("invalid image name {}: {why}", py_repr(name)), None)),
        None => Ok(()),
    }
}

/// Python's `repr()` of the str that `os.fsdecode` makes of `bytes` (undecodable bytes are the
/// surrogates U+DC80..U+DCFF), as the messages have always quoted names.
pub fn py_repr(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if !py_printable(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if !py_printable(c) && (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if !py_printable(c) => out.push_str(&format!("\\U{:08x}", c as u32)),
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            out.push_str(&format!("\\udc{b:02x}"));
        }
    }
    out.push(quote);
    out
}

/// `str.isprintable()` for one character, as far as it can be told without Unicode's tables:
/// control, separator (but the space), format and private-use characters are not printable.
/// (Unassigned code points, which Python also escapes, are printed as they are.)
fn py_printable(c: char) -> bool {
    let u = c as u32;
    let format = matches!(u, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f
        | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb);
    let private = matches!(u, 0xe000..=0xf8ff | 0xf0000..);
    c == ' ' || !(c.is_control() || c.is_whitespace() || format || private)
}

/// Open `path` read-only if it is a regular file owned by one of `trusted`; never follows a
/// symlink, never blocks on a FIFO.
pub fn open_plain(path: &Path, trusted: &[u32], what: &str) -> Result<OwnedFd, Error> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(user(
                format!("refused: {what} is a symlink (never followed)"),
                Some(path),
            ))
        }
        Err(e) => return Err(io_at(path)(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io_at(path)(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(user(format!("refused: {what} is not a regular file"), Some(path)));
    }
    if !trusted.contains(&st.st_uid) {
        return Err(user(
            format!(
                "refused: {what} is owned by uid {}, not by the repository's owner",
                st.st_uid
            ),
            Some(path),
        ));
    }
    Ok(fd)
}

/// A small file (meta.json, a ref) read through [`open_plain`].
pub fn read_plain(path: &Path, trusted: &[u32], what: &str) -> Result<Vec<u8>, Error> {
    let fd = open_plain(path, trusted, what)?;
    let mut buf = vec![0; SMALL_FILE_MAX + 1];
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::pread(&fd, &mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io_at(path)(e.into())),
        }
    }
    if n > SMALL_FILE_MAX {
        return Err(user(
            format!("{what} is larger than {SMALL_FILE_MAX} bytes"),
            Some(path),
        ));
    }
    buf.truncate(n);
    Ok(buf)
}

/// `os.path.abspath`: absolute, with `.`, `..` and repeated slashes resolved lexically.
pub fn abspath(path: &Path) -> io::Result<PathBuf> {
    let p = path.as_os_str().as_bytes();
    let joined;
    let p = if p.starts_with(b"/") {
        p
    } else {
        let mut cwd = std::env::current_dir()?.into_os_string().into_vec();
        cwd.push(b'/');
        cwd.extend_from_slice(p);
        joined = cwd;
        &joined[..]
    };
    // POSIX keeps exactly two leading slashes; Python's normpath does too.
    let lead: &[u8] = if p.starts_with(b"//") && !p.starts_with(b"///") {
        b"//"
    } else {
        b"/"
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = lead.to_vec();
    out.extend_from_slice(&parts.join(&b'/'));
    Ok(PathBuf::from(OsString::from_vec(out)))
}

/// A repository, by path. Opening reads nothing but the owner of its directory; [`Repo::meta`]
/// and [`Repo::check_layout`] are the checks of opening one.
#[derive(Debug, Clone)]
pub struct Repo {
    pub path: PathBuf,
    owner: u32,
}

/// The repository lock, held until dropped.
#[derive(Debug)]
pub struct Lock(pub OwnedFd);

impl Repo {
    pub fn at(path: &Path) -> Result<Repo, Error> {
        let path = abspath(path).map_err(io_at(path))?;
        let owner = match std::fs::metadata(&path) {
            Ok(st) => st.uid(),
            // An absent directory: what a missing meta.json says.
            Err(e) if e.kind() == io::ErrorKind::NotFound => u32::MAX,
            Err(e) => return Err(io_at(&path)(e)),
        };
        Ok(Repo { path, owner })
    }

    /// The uids whose files the repository accepts: its owner's and root's.
    pub fn trusted(&self) -> [u32; 2] {
        [self.owner, 0]
    }

    pub fn objects(&self) -> PathBuf {
        self.path.join("objects")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.path.join("images")
    }

    pub fn refs_dir(&self) -> PathBuf {
        self.path.join("refs")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.path.join("tmp")
    }

    /// The bytes of meta.json (whose meaning the caller checks).
    pub fn meta(&self) -> Result<Vec<u8>, Error> {
        match read_plain(&self.path.join("meta.json"), &self.trusted(), "repository metadata") {
            Err(e) if is_not_found(&e) => Err(user(
                "not a composefs repository (no meta.json; run 'cfsctl init')",
                Some(&self.path),
            )),
            r => r,
        }
    }

    /// The repository's directories must be real directories of a trusted owner.
    pub fn check_layout(&self) -> Result<(), Error> {
        for d in [self.objects(), self.images_dir(), self.refs_dir()] {
            let st = match std::fs::symlink_metadata(&d) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(user("missing (a damaged repository)", Some(&d)))
                }
                Err(e) => return Err(io_at(&d)(e)),
            };
            if !st.is_dir() {
                return Err(user("refused: not a directory (a symlink is never followed)", Some(&d)));
            }
            if !self.trusted().contains(&st.uid()) {
                return Err(user(
                    format!("refused: owned by uid {}, not by the repository's owner", st.uid()),
                    Some(&d),
                ));
            }
        }
        Ok(())
    }

    /// Take the repository lock (shared, or exclusive for gc), then remove what writers that are
    /// gone left behind.
    pub fn lock(&self, exclusive: bool) -> Result<Lock, Error> {
        let lock = self.flock(exclusive)?;
        self.clean_temporaries()?;
        Ok(lock)
    }

    /// The lock alone, waiting for it ([`Repo::lock`] without the sweep, for a caller that times
    /// the wait apart).
    pub fn flock(&self, exclusive: bool) -> Result<Lock, Error> {
        let path = self.path.join("lock");
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&path, flags, Mode::from_raw_mode(0o644)).map_err(|e| io_at(&path)(e.into()))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        loop {
            match rustix::fs::flock(&fd, op) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r.map_err(|e| io_at(&path)(e.into()))?,
            }
        }
        Ok(Lock(fd))
    }

    /// Remove work directories and half-written files of processes that no longer exist;
    /// returns how many.
    pub fn clean_temporaries(&self) -> Result<u64, Error> {
        let tmp = self.tmp_dir();
        match std::fs::DirBuilder::new().mode(0o755).create(&tmp) {
            Ok(()) => std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io_at(&tmp))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(&tmp)(e)),
        }
        if !std::fs::symlink_metadata(&tmp).map_err(io_at(&tmp))?.is_dir() {
            return Err(user(
                "refused: not a directory (a symlink is never followed)",
                Some(&tmp),
            ));
        }
        let mut removed = 0;
        for ent in std::fs::read_dir(&tmp).map_err(io_at(&tmp))? {
            let ent = ent.map_err(io_at(&tmp))?;
            let name = ent.file_name();
            let pid = name.as_bytes().split(|&b| b == b'-').next().unwrap_or_default();
            let pid = std::str::from_utf8(pid)
                .ok()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
                if !fsio::pid_alive(pid) {
                    remove_entry(&ent.path()).map_err(io_at(&ent.path()))?;
                    removed += 1;
                }
            }
        }
        for d in [self.images_dir(), self.refs_dir()] {
            removed += fsio::sweep(&d, fsio::Sweep::All).map_err(io_at(&d))?;
        }
        Ok(removed)
    }

    /// The digest ref `name` holds; None when no usable ref has that name (missing, refused,
    /// too long, a temporary, not a plain entry of refs/).
    fn read_ref(&self, name: &[u8]) -> Result<Option<String>, Error> {
        if matches!(name, b"" | b"." | b"..") || name.contains(&b'/') || name.contains(&0) || fsio::is_temp_name(name) {
            return Ok(None);
        }
        let p = self.refs_dir().join(std::ffi::OsStr::from_bytes(name));
        match read_plain(&p, &self.trusted(), "ref") {
            Ok(data) => {
                let text = String::from_utf8_lossy(&data);
                // str.strip(): Unicode whitespace and the ASCII separators Python counts as space.
                let d = text.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
                Ok(Some(d.to_string()))
            }
            Err(Error::User { .. }) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every image digest in images/ (sorted).
    pub fn image_digests(&self) -> Result<Vec<String>, Error> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let name = ent.map_err(io_at(&dir))?.file_name();
            let b = name.as_bytes();
            if b.len() == 64 && b.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
                out.push(String::from_utf8_lossy(b).into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The digest of the image a ref name, a full digest or a unique digest prefix names. A
    /// digest (or prefix) is looked up among the images only, never through a ref.
    pub fn resolve(&self, name: &[u8]) -> Result<String, Error> {
        if !is_digestish(name) {
            if let Some(d) = self.read_ref(name)? {
                return Ok(d);
            }
        } else {
            let lower = name.to_ascii_lowercase();
            let want = lower.strip_prefix(b"sha256:").unwrap_or(&lower);
            let mut hits = self
                .image_digests()?
                .into_iter()
                .filter(|d| d.as_bytes().starts_with(want));
            match (hits.next(), hits.next()) {
                (Some(d), None) => return Ok(d),
                (Some(_), Some(_)) => return Err(user(format!("digest prefix {} is ambiguous", py_repr(name)), None)),
                _ => {}
            }
        }
        Err(user(
            format!(
                "no image named {} in repository {}",
                py_repr(name),
                String::from_utf8_lossy(self.path.as_os_str().as_bytes())
            ),
            None,
        ))
    }

    /// The image file of NAME|DIGEST and the digest to give the mount (None when checked here).
    ///
    /// With fs-verity on the image file, the mount measures it against the digest (the kernel's
    /// word). Without it (a filesystem that lacks fs-verity), the file's digest is computed now,
    /// from the descriptor that passed the checks, and must equal its name. This guards against
    /// corruption, not against a root process rewriting the repository before the mount.
    pub fn image_for_mount(&self, name: &[u8]) -> Result<(PathBuf, Option<String>), Error> {
        let digest = self.resolve(name)?;
        let path = self.images_dir().join(&digest);
        let fd = match open_plain(&path, &self.trusted(), "image") {
            Err(e) if is_not_found(&e) => {
                return Err(user(
                    format!("image {digest} is named but its file is missing (run 'cfsctl fsck')"),
                    Some(&path),
                ))
            }
            r => r?,
        };
        if fsio::measure_verity(fd.as_fd()).is_ok() {
            return Ok((path, Some(digest)));
        }
        let file = std::fs::File::from(fd);
        let size = file.metadata().map_err(io_at(&path))?.len();
        let got = fsverity::digest_open_file(&file, size, &fsverity::Params::default()).map_err(io_at(&path))?;
        let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
        if got != digest {
            return Err(user(
                format!("image digest mismatch: named {digest}, content is {got} (run 'cfsctl fsck')"),
                Some(&path),
            ));
        }
        Ok((path, None))
    }
}

/// Remove a file, symlink or directory tree; a symlink is removed, never followed. A directory
/// tree is removed as far as it can be (what is left goes on the next sweep).
fn remove_entry(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(st) if st.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
            Ok(())
        }
        Ok(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok: &[&[u8]] = &[
            b"app",
            b"a",
            b"_x",
            b"app:1.0@x+y=z-w",
            b"abcde",
            b"sha256",
            b"deadbeefx",
        ];
        for n in ok {
            assert_eq!(name_problem(n), None, "{n:?}");
        }
        let bad: &[(&[u8], &str)] = &[
            (b"", "letters"),
            (b".x", "letters"),
            (b"-x", "letters"),
            (b"a/b", "letters"),
            (b"a\n", "letters"),
            (b"x.tmp", "'.tmp'"),
            (b"abcdef", "digest"),
            (b"ABCDEF12", "digest"),
            (b"sha256:x", "digest"),
            (b"SHA256_x", ""),
        ];
        for (n, want) in bad {
            if want.is_empty() {
                assert_eq!(name_problem(n), None, "{n:?}");
            } else {
                assert!(name_problem(n).is_some_and(|w| w.contains(want)), "{n:?}");
            }
        }
        assert!(name_problem(&[b'a'; NAME_MAX + 1]).unwrap().contains("201 characters"));
        assert!(is_digestish(b"sha256:ABCDEF") && is_digestish(&[b'0'; 64]));
        assert!(!is_digestish(b"abcde") && !is_digestish(&[b'0'; 65]) && !is_digestish(b"sha256:"));
    }

    #[test]
    fn reprs_are_pythons() {
        let cases: &[(&[u8], &str)] = &[
            (b"app", "'app'"),
            (b"it's", "\"it's\""),
            (b"a'b\"c", "'a\\'b\"c'"),
            (b"x\\y\n\x1b\x7f", "'x\\\\y\\n\\x1b\\x7f'"),
            (b"\xff", "'\\udcff'"),
            ("é".as_bytes(), "'é'"),
            (
                "a\u{a0}b\u{ad}\u{2028}\u{e000}\u{100000}".as_bytes(),
                "'a\\xa0b\\xad\\u2028\\ue000\\U00100000'",
            ),
        ];
        for (b, want) in cases {
            assert_eq!(py_repr(b), *want, "{b:?}");
        }
    }

    #[test]
    fn abspath_is_pythons() {
        let cases = [
            ("/a/./b//c/", "/a/b/c"),
            ("/a/../..", "/"),
            ("//a", "//a"),
            ("///a", "/a"),
            ("/", "/"),
        ];
        for (p, want) in cases {
            assert_eq!(abspath(Path::new(p)).unwrap(), PathBuf::from(want), "{p}");
        }
    }
}
