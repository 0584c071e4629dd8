// SPDX-License-Identifier: MIT OR Apache-2.0
//! The content-addressed object store: a directory holding `XX/<62 hex>` files, each named by
//! the fs-verity sha256 digest of its contents (the layout of `mkcomposefs --digest-store` and
//! of a repository's `objects/` directory).
//!
//! Insertion is atomic and race-safe:
//! - the data is first copied into a temporary file inside the store (an unnamed `O_TMPFILE`
//!   where the filesystem supports it, else a named temporary of [`crate::fsio`]), by reflink (`FICLONE`),
//!   else `copy_file_range`, else a plain read/write copy;
//! - the *temporary file* is hashed (a plain copy hashes the very bytes it writes) and must give
//!   the digest the caller computed from the source, so a source that changed between hashing and
//!   copying is reported ([`Error::Changed`]) instead of being stored under a wrong name;
//! - contents that arrive as a stream ([`Store::object_writer`]) are hashed as they are written
//!   into the temporary file, a megabyte at a time, with direct I/O where the filesystem has it
//!   and has no fs-verity ([`fsio::direct`]: a layer's large files do not fill the page cache on
//!   their way in, unless fs-verity is to read them back);
//! - fs-verity is enabled (sha256, 4 KiB blocks) where the filesystem supports it;
//! - only then is the file linked under its digest name with `linkat`, which never replaces an
//!   existing file. A `kill -9` at any point leaves either nothing (`O_TMPFILE`), or a named
//!   temporary that [`Store::open`] removes once its owner process is gone ([`fsio::sweep`]).
//!
//! Objects are not fsync'ed one by one: call [`Store::sync`] (one `syncfs`) at the end of a build.
//!
//! Trust: only the store's owner (the owner of its root directory) and root may have put things
//! in it. A `XX` directory or an object that is not a plain directory or regular file owned by
//! one of them (a symlink, a FIFO, a file planted by another user through a too-open directory)
//! is refused, never followed or reused. New directories get mode 0755 and objects 0644
//! whatever the umask: readable by all, writable only by their owner.

use crate::fsio;
use crate::fsverity;
use crate::tree::Digest;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: file changed while it was being read", path.display())]
    Changed { path: PathBuf },
    /// Contents that had to hash to a given digest did not (nothing was stored).
    #[error("{}: content does not match its digest", path.display())]
    Mismatch { path: PathBuf },
}

impl Error {
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. } | Error::Changed { path } | Error::Mismatch { path } => path,
        }
    }
}

/// An entry refused by the trust rule (see the module comment).
fn refused(path: PathBuf, why: &str) -> Error {
    Error::Io {
        path,
        source: io::Error::other(format!("refused: {why}")),
    }
}

fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// What an insertion did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// A new object was written.
    Stored,
    /// An object with this digest already existed (in the store before, or added meanwhile).
    Reused,
}

/// Counters of one store's insertions (since [`Store::open`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub objects_stored: u64,
    pub bytes_stored: u64,
    pub objects_reused: u64,
    pub bytes_reused: u64,
    /// Objects on which fs-verity was enabled.
    pub verity_enabled: u64,
    /// Leftover temporary files of killed builds removed when the store was opened.
    pub temporaries_removed: u64,
}

#[derive(Default)]
struct Counters {
    objects_stored: AtomicU64,
    bytes_stored: AtomicU64,
    objects_reused: AtomicU64,
    bytes_reused: AtomicU64,
    verity_enabled: AtomicU64,
}

/// An open object store.
pub struct Store {
    root: PathBuf,
    /// Shared with the temporaries being written in it.
    dir: Arc<OwnedFd>,
    /// Owner of the root directory: with root, the only owner trusted inside the store.
    owner: u32,
    /// The `00`..`ff` directories, opened once each (without following symlinks) and checked.
    subdirs: [OnceLock<OwnedFd>; 256],
    /// Set for the `XX` directories this store created: see [`Store::known`].
    created: [AtomicBool; 256],
    /// Cleared after the first `O_TMPFILE` refusal: use named temporaries from then on.
    tmpfile_ok: AtomicBool,
    /// Cleared once the filesystem says it has no fs-verity.
    verity_ok: AtomicBool,
    counters: Counters,
    temporaries_removed: u64,
}

/// `objects/XX/<62 hex>` relative name of a digest (also the image's redirect payload).
pub fn object_name(digest: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = Vec::with_capacity(2 * digest.len() + 1);
    for (i, &b) in digest.iter().enumerate() {
        s.extend_from_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        if i == 0 {
            s.push(b'/');
        }
    }
    String::from_utf8(s).expect("hex digits are ASCII")
}

/// The target spelled in the store's named temporaries (they are linked, not renamed).
const TMP_TARGET: &[u8] = b"object";

fn cstr(s: &[u8]) -> CString {
    CString::new(s).expect("path without NUL")
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl Store {
    /// Open (creating it if needed) the store rooted at `root`, and remove temporary files left
    /// by builds that were killed (those whose process no longer exists).
    pub fn open(root: &Path) -> Result<Store, Error> {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let c = cstr(root.as_os_str().as_bytes());
        let created = make_dir(rustix::fs::CWD, &c).map_err(io_at(root))?;
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let dir = Arc::new(rustix::fs::open(c.as_c_str(), flags, Mode::empty()).map_err(|e| io_at(root)(e.into()))?);
        if created {
            fix_dir_mode(&dir).map_err(io_at(root))?;
        }
        let owner = fstat(&dir).map_err(io_at(root))?.st_uid;
        let mut store = Store {
            root: root.to_path_buf(),
            dir,
            owner,
            subdirs: std::array::from_fn(|_| OnceLock::new()),
            created: std::array::from_fn(|_| AtomicBool::new(false)),
            tmpfile_ok: AtomicBool::new(true),
            verity_ok: AtomicBool::new(true),
            counters: Counters::default(),
            temporaries_removed: 0,
        };
        store.temporaries_removed = fsio::sweep(root, fsio::Sweep::All).map_err(io_at(root))?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Full path of the object with this digest.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(object_name(digest))
    }

    /// Whether an object with this digest exists (an untrusted entry under its name counts as
    /// absent here; [`Store::lookup`] says why).
    pub fn contains(&self, digest: &Digest) -> bool {
        matches!(self.lookup(digest), Ok(true))
    }

    /// Whether a trusted object with this digest exists; an entry under its name that is not a
    /// regular file owned by the store's owner or root is an error, not an object.
    pub fn lookup(&self, digest: &Digest) -> Result<bool, Error> {
        let Some(sub) = self.subdir(digest[0], false)? else {
            return Ok(false);
        };
        let name = object_name(digest);
        let rest = cstr(&name.as_bytes()[3..]);
        let st = match rustix::fs::statat(sub, rest.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_at(self.root.join(&name))(e.into())),
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            || !self.trusted(st.st_uid)
        {
            return Err(refused(
                self.root.join(&name),
                "not a regular file owned by the object store's owner",
            ));
        }
        Ok(true)
    }

    /// Whether an insertion of contents already in hand (in memory, or streamed into a
    /// temporary) finds its object stored already, so need not write it: a [`Store::lookup`],
    /// except in an `XX` directory this store created, where nothing is looked up. Such a
    /// directory holds only what was linked into it since, and `linkat` refuses to replace any
    /// of that: an object stored meanwhile (by this process or another) is then found at the
    /// link, and counted as reused, after a write for nothing. A pull into an empty repository
    /// saves one failing lookup per object this way.
    fn known(&self, digest: &Digest) -> Result<bool, Error> {
        if self.created[digest[0] as usize].load(Relaxed) {
            return Ok(false);
        }
        self.lookup(digest)
    }

    fn trusted(&self, uid: u32) -> bool {
        uid == self.owner || uid == 0
    }

    /// The descriptor of directory `XX` for a digest starting with byte `b`, created (mode 0755)
    /// when `create`; None when it does not exist and is not to be created. A symlink or a
    /// directory owned by someone else is refused.
    fn subdir(&self, b: u8, create: bool) -> Result<Option<BorrowedFd<'_>>, Error> {
        let slot = &self.subdirs[b as usize];
        if let Some(fd) = slot.get() {
            return Ok(Some(fd.as_fd()));
        }
        let hex = format!("{b:02x}");
        let path = || self.root.join(&hex);
        let name = cstr(hex.as_bytes());
        let open = || -> io::Result<OwnedFd> {
            let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
            Ok(rustix::fs::openat(&*self.dir, name.as_c_str(), flags, Mode::empty())?)
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(e) if errno_of(&e) == libc::ENOENT => {
                if !create {
                    return Ok(None);
                }
                let created = make_dir(self.dir.as_fd(), &name).map_err(io_at(path()))?;
                let fd = open().map_err(|e| self.subdir_error(e, path()))?;
                if created {
                    fix_dir_mode(&fd).map_err(io_at(path()))?;
                    self.created[b as usize].store(true, Relaxed);
                }
                fd
            }
            Err(e) => return Err(self.subdir_error(e, path())),
        };
        let st = fstat(&fd).map_err(io_at(path()))?;
        if !self.trusted(st.st_uid) {
            return Err(refused(path(), "directory not owned by the object store's owner"));
        }
        // Another thread may have opened it meanwhile: keep the first, drop ours.
        let _ = slot.set(fd);
        Ok(slot.get().map(|fd| fd.as_fd()))
    }

    fn subdir_error(&self, e: io::Error, path: PathBuf) -> Error {
        match errno_of(&e) {
            libc::ELOOP | libc::ENOTDIR => refused(path, "not a directory (a symlink is never followed)"),
            _ => io_at(path)(e),
        }
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            objects_stored: c.objects_stored.load(Relaxed),
            bytes_stored: c.bytes_stored.load(Relaxed),
            objects_reused: c.objects_reused.load(Relaxed),
            bytes_reused: c.bytes_reused.load(Relaxed),
            verity_enabled: c.verity_enabled.load(Relaxed),
            temporaries_removed: self.temporaries_removed,
        }
    }

    /// Flush the whole store's filesystem once (`syncfs`), instead of an fsync per object.
    pub fn sync(&self) -> Result<(), Error> {
        fsio::syncfs(self.dir.as_fd()).map_err(io_at(&self.root))
    }

    /// Hash the file at `path` and insert it. Returns its digest, size and what happened.
    pub fn insert_path(&self, path: &Path) -> Result<(Digest, u64, Inserted), Error> {
        let file = open_regular(path)?;
        let (digest, size) = hash_fd(&file).map_err(io_at(path))?;
        let how = self.insert_fd(&file, path, &digest, size)?;
        Ok((digest, size, how))
    }

    /// Insert the contents of `src` (an open regular file, `path` names it in errors), whose
    /// fs-verity digest the caller computed as `digest` over `size` bytes. The object is stored
    /// only if a fresh copy of the file hashes to `digest`; otherwise [`Error::Changed`].
    pub fn insert_fd(&self, src: &File, path: &Path, digest: &Digest, size: u64) -> Result<Inserted, Error> {
        // A lookup even in a directory this store created: a tree's duplicate files would each
        // be copied before the link found the first ([`Store::known`] is for contents in hand).
        if self.lookup(digest)? {
            self.count_reused(size);
            return Ok(Inserted::Reused);
        }
        let tmp = self.temporary()?;
        let tmp_path = tmp.display_path(&self.root);
        let copied = copy_data(src, &tmp.file).map_err(|e| match e {
            CopyError::Src(e) => io_at(path)(e),
            CopyError::Dst(e) => io_at(&tmp_path)(e),
        })?;
        let got = match copied {
            Some(d) => d,
            None => hash_fd(&tmp.file).map_err(io_at(&tmp_path))?,
        };
        if got.0 != *digest || got.1 != size {
            return Err(Error::Changed {
                path: path.to_path_buf(),
            });
        }
        self.publish(tmp, digest, size)
    }

    /// Insert `data` (already in memory): hashed, then written only when the store lacks it.
    pub fn insert_bytes(&self, data: &[u8]) -> Result<(Digest, Inserted), Error> {
        let d = fsverity::digest_bytes(data, &fsverity::Params::default());
        let digest: Digest = d.try_into().expect("sha256 digest is 32 bytes");
        let size = data.len() as u64;
        if self.known(&digest)? {
            self.count_reused(size);
            return Ok((digest, Inserted::Reused));
        }
        let mut tmp = self.temporary()?;
        let tmp_path = tmp.display_path(&self.root);
        tmp.file.write_all(data).map_err(io_at(&tmp_path))?;
        Ok((digest, self.publish(tmp, &digest, size)?))
    }

    /// A temporary file in the store for contents that arrive as a stream (too large to hold in
    /// memory): write them, then [`Store::commit_object`] names the file by its digest. They are
    /// hashed as they are written, and written past the page cache where the filesystem allows
    /// and fs-verity will not read them back ([`fsio::direct`]).
    pub fn object_writer(&self) -> Result<ObjectWriter, Error> {
        let tmp = self.temporary()?;
        let path = tmp.display_path(&self.root);
        // Until the first object is published the store assumes fs-verity (the page cache is
        // never wrong, only slower).
        let direct = !self.verity_ok.load(Relaxed);
        let staged = fsio::direct::DirectWriter::new(tmp.file.as_fd(), direct);
        Ok(ObjectWriter {
            tmp,
            path,
            staged,
            digest: fsverity::StreamDigest::new(&fsverity::Params::default()),
        })
    }

    /// Write the rest of `w` and link it under its digest (or drop it when the store has the
    /// object already). The bytes hashed are the very bytes written to the file.
    pub fn commit_object(&self, w: ObjectWriter) -> Result<(Digest, u64, Inserted), Error> {
        let (tmp, digest, size) = w.finish()?;
        if self.known(&digest)? {
            self.count_reused(size);
            return Ok((digest, size, Inserted::Reused));
        }
        Ok((digest, size, self.publish(tmp, &digest, size)?))
    }

    /// Insert contents read from `r` that must be the object `want` (at most `max` bytes): the
    /// bytes are hashed as they are kept and compared before anything gets a name, so contents
    /// that do not match are never stored ([`Error::Mismatch`]). `name` labels errors.
    pub fn insert_expected<R: Read>(
        &self,
        mut r: R,
        want: &Digest,
        max: u64,
        name: &Path,
    ) -> Result<(u64, Inserted), Error> {
        const SMALL: u64 = 1 << 20;
        let mut head = Vec::new();
        (&mut r)
            .take(SMALL.min(max) + 1)
            .read_to_end(&mut head)
            .map_err(io_at(name))?;
        let too_long = || Error::Io {
            path: name.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "more data than the image records"),
        };
        if head.len() as u64 <= SMALL.min(max) {
            let d = fsverity::digest_bytes(&head, &fsverity::Params::default());
            if d.as_slice() != want {
                return Err(Error::Mismatch {
                    path: name.to_path_buf(),
                });
            }
            let size = head.len() as u64;
            if self.known(want)? {
                self.count_reused(size);
                return Ok((size, Inserted::Reused));
            }
            let mut tmp = self.temporary()?;
            let tmp_path = tmp.display_path(&self.root);
            tmp.file.write_all(&head).map_err(io_at(&tmp_path))?;
            return Ok((size, self.publish(tmp, want, size)?));
        }
        if head.len() as u64 > max {
            return Err(too_long());
        }
        let mut w = self.object_writer()?;
        w.write_all(&head).map_err(io_at(&w.path))?;
        drop(head);
        let copied = io::copy(&mut (&mut r).take(max - SMALL.min(max) + 1), &mut w).map_err(io_at(name))?;
        if SMALL + copied > max {
            return Err(too_long());
        }
        let (tmp, digest, size) = w.finish()?;
        if digest != *want {
            return Err(Error::Mismatch {
                path: name.to_path_buf(),
            });
        }
        if self.known(want)? {
            self.count_reused(size);
            return Ok((size, Inserted::Reused));
        }
        Ok((size, self.publish(tmp, want, size)?))
    }

    /// The last steps of every insertion, for a temporary file whose contents hash to `digest`:
    /// mode 0644, fs-verity, then `linkat` under the digest name (never replacing a file).
    fn publish(&self, tmp: Temp, digest: &Digest, size: u64) -> Result<Inserted, Error> {
        let name = object_name(digest);
        let sub = self.subdir(digest[0], true)?.expect("created");
        let tmp_path = tmp.display_path(&self.root);
        // Readable by everybody whatever the umask (as mkcomposefs does).
        rustix::fs::fchmod(&tmp.file, Mode::from_raw_mode(0o644)).map_err(|e| io_at(&tmp_path)(e.into()))?;
        let target = cstr(&name.as_bytes()[3..]);
        let linked = if self.verity_ok.load(Relaxed) {
            // fs-verity needs a file with no writable descriptor: reopen read-only, drop the writer.
            let ro = tmp.reopen_readonly().map_err(io_at(&tmp_path))?;
            let tmp = tmp.close_writer();
            self.enable_verity(&ro, &tmp_path)?;
            let linked = link_temp(tmp.name.as_deref(), &tmp.dir, &ro, sub, &target);
            drop(tmp); // removes a named temporary
            linked
        } else {
            // A filesystem without fs-verity (it said so once): the writer itself is linked,
            // without the reopen through /proc that only the ioctl needs.
            let linked = link_temp(tmp.name.as_deref(), &tmp.dir, &tmp.file, sub, &target);
            drop(tmp); // removes a named temporary
            linked
        };
        match linked {
            Ok(()) => {
                self.counters.objects_stored.fetch_add(1, Relaxed);
                self.counters.bytes_stored.fetch_add(size, Relaxed);
                Ok(Inserted::Stored)
            }
            Err(e) if errno_of(&e) == libc::EEXIST => {
                // Added meanwhile: reused only if it is one we trust.
                self.lookup(digest)?;
                self.count_reused(size);
                Ok(Inserted::Reused)
            }
            Err(e) => Err(io_at(self.root.join(&name))(e)),
        }
    }

    fn count_reused(&self, size: u64) {
        self.counters.objects_reused.fetch_add(1, Relaxed);
        self.counters.bytes_reused.fetch_add(size, Relaxed);
    }

    fn enable_verity(&self, ro: &File, tmp_path: &Path) -> Result<(), Error> {
        if !self.verity_ok.load(Relaxed) {
            return Ok(());
        }
        match fsio::enable_verity(ro.as_fd()).map_err(io_at(tmp_path))? {
            fsio::Verity::Enabled => {
                self.counters.verity_enabled.fetch_add(1, Relaxed);
            }
            fsio::Verity::AlreadyEnabled => {}
            fsio::Verity::Unsupported => self.verity_ok.store(false, Relaxed),
        }
        Ok(())
    }

    fn temporary(&self) -> Result<Temp, Error> {
        if self.tmpfile_ok.load(Relaxed) {
            let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
            match rustix::fs::openat(&*self.dir, c".", flags, Mode::from_raw_mode(0o644)) {
                Ok(fd) => {
                    return Ok(Temp {
                        file: File::from(fd),
                        name: None,
                        dir: self.dir.clone(),
                    })
                }
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                    self.tmpfile_ok.store(false, Relaxed)
                }
                Err(e) => return Err(io_at(&self.root)(e.into())),
            }
        }
        let (name, fd) = fsio::create_temp(self.dir.as_fd(), TMP_TARGET, rustix::fs::Mode::from_raw_mode(0o644))
            .map_err(io_at(&self.root))?;
        Ok(Temp {
            file: File::from(fd),
            name: Some(name),
            dir: self.dir.clone(),
        })
    }
}

/// Contents being streamed into the store (see [`Store::object_writer`]); dropping it without
/// committing leaves nothing behind. Fill it with `Write`, or without a copy through
/// [`ObjectWriter::spare`] and [`ObjectWriter::advance`].
pub struct ObjectWriter {
    tmp: Temp,
    path: PathBuf,
    staged: fsio::direct::DirectWriter,
    digest: fsverity::StreamDigest,
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let spare = self.staged.spare();
        let n = buf.len().min(spare.len());
        spare[..n].copy_from_slice(&buf[..n]);
        self.advance(n)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter {
    /// The temporary file's name, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Room for the next bytes (never empty); say how many were put there with
    /// [`ObjectWriter::advance`].
    pub fn spare(&mut self) -> &mut [u8] {
        self.staged.spare()
    }

    /// Take `n` more bytes from [`ObjectWriter::spare`] (written out, and hashed, a whole
    /// staging buffer at a time).
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        if let Some(block) = self.staged.advance(self.tmp.file.as_fd(), n)? {
            self.digest.update(block);
        }
        Ok(())
    }

    /// Write the rest; the temporary file, the digest of everything written, and its size.
    fn finish(mut self) -> Result<(Temp, Digest, u64), Error> {
        let tail = self.staged.finish(self.tmp.file.as_fd()).map_err(io_at(&self.path))?;
        self.digest.update(tail);
        let size = self.digest.total();
        let digest = self.digest.finish().try_into().expect("sha256 digest is 32 bytes");
        Ok((self.tmp, digest, size))
    }
}

/// `mkdirat(dirfd, name, 0755)`; Ok(false) when it exists already.
fn make_dir(dirfd: BorrowedFd<'_>, name: &CString) -> io::Result<bool> {
    match rustix::fs::mkdirat(dirfd, name.as_c_str(), Mode::from_raw_mode(0o755)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Mode 0755 on a directory we created, which mkdir gave `0755 & ~umask`.
fn fix_dir_mode(dir: &OwnedFd) -> io::Result<()> {
    Ok(rustix::fs::fchmod(dir, Mode::from_raw_mode(0o755))?)
}

fn fstat(fd: &OwnedFd) -> io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// A temporary file in the store: unnamed (`O_TMPFILE`) or named (removed on drop).
struct Temp {
    file: File,
    name: Option<CString>,
    dir: Arc<OwnedFd>,
}

impl Temp {
    fn display_path(&self, root: &Path) -> PathBuf {
        match &self.name {
            Some(n) => root.join(OsStr::from_bytes(n.as_bytes())),
            None => root.join("(O_TMPFILE)"),
        }
    }

    fn reopen_readonly(&self) -> io::Result<File> {
        let p = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        Ok(File::from(rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?))
    }

    /// Close the writable descriptor, keeping the name (if any) for [`Temp::link`] and cleanup.
    fn close_writer(mut self) -> TempName {
        TempName {
            name: self.name.take(),
            dir: self.dir.clone(),
        }
    }
}

struct TempName {
    name: Option<CString>,
    dir: Arc<OwnedFd>,
}

/// Cleared when `linkat(AT_EMPTY_PATH)` is refused to this process (see [`link_temp`]).
static EMPTY_PATH_LINKS: AtomicBool = AtomicBool::new(true);

/// Give a temporary file (named `name` in `dir`, or unnamed and open as `file`) the name
/// `target` in `dirfd`; never replaces.
fn link_temp(
    name: Option<&std::ffi::CStr>,
    dir: &OwnedFd,
    file: &File,
    dirfd: BorrowedFd<'_>,
    target: &CString,
) -> io::Result<()> {
    let r = match name {
        Some(n) => rustix::fs::linkat(dir, n, dirfd, target.as_c_str(), AtFlags::empty()),
        None => {
            // `AT_EMPTY_PATH` names the descriptor itself: allowed to anyone since Linux 6.10,
            // before that only with CAP_DAC_READ_SEARCH (ENOENT otherwise). Without it, the
            // file's /proc/self/fd link (a path walk through procfs per object), and the process
            // remembers which one works.
            let empty = || rustix::fs::linkat(file, c"", dirfd, target.as_c_str(), AtFlags::EMPTY_PATH);
            let tried = EMPTY_PATH_LINKS.load(Relaxed);
            match if tried { empty() } else { Err(Errno::NOENT) } {
                Err(Errno::NOENT) => {
                    let p = format!("/proc/self/fd/{}", file.as_raw_fd());
                    match rustix::fs::linkat(rustix::fs::CWD, p, dirfd, target.as_c_str(), AtFlags::SYMLINK_FOLLOW) {
                        Ok(()) => {
                            EMPTY_PATH_LINKS.store(false, Relaxed);
                            Ok(())
                        }
                        // No /proc either: AT_EMPTY_PATH is all there is (unless it just failed).
                        Err(Errno::NOENT) if !tried => empty(),
                        r => r,
                    }
                }
                r => r,
            }
        }
    };
    Ok(r?)
}

impl Drop for TempName {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            let _ = rustix::fs::unlinkat(&*self.dir, n.as_c_str(), rustix::fs::AtFlags::empty());
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = rustix::fs::unlinkat(&*self.dir, n.as_c_str(), rustix::fs::AtFlags::empty());
        }
    }
}

/// Open a regular file for reading without following a final symlink and without blocking on
/// a fifo that replaced it; refuse anything but a regular file.
pub fn open_regular(path: &Path) -> Result<File, Error> {
    let c = cstr(path.as_os_str().as_bytes());
    open_regular_at(rustix::fs::CWD, &c)
        .map(|(file, _)| file)
        .map_err(|e| e.at(path.to_path_buf()))
}

/// Why [`open_regular_at`] failed (without a path: the caller names the file only on error).
pub enum OpenError {
    Io(io::Error),
    /// Not a regular file any more.
    Changed,
}

impl OpenError {
    pub fn at(self, path: PathBuf) -> Error {
        match self {
            OpenError::Io(source) => Error::Io { path, source },
            OpenError::Changed => Error::Changed { path },
        }
    }
}

/// [`open_regular`] of `name` relative to the directory descriptor `dirfd` (or `AT_FDCWD`), also
/// giving the file's size from `fstat`.
pub fn open_regular_at(dirfd: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(File, u64), OpenError> {
    let (file, meta) = open_at(dirfd, name).map_err(OpenError::Io)?;
    if !meta.file_type().is_file() {
        return Err(OpenError::Changed);
    }
    Ok((file, meta.len()))
}

/// Open `name` relative to `dirfd` for reading without following a symlink, blocking on a FIFO
/// or taking a terminal, and `fstat` what was opened (which may be any type of file).
pub fn open_at(dirfd: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<(File, std::fs::Metadata)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(dirfd, name, flags, Mode::empty())?);
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Reads a file from a position with `pread`, ignoring (and not moving) the descriptor offset.
pub struct PosReader<'a> {
    pub file: &'a File,
    pub pos: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// fs-verity sha256 digest and length of a whole open file (read from offset 0).
pub fn hash_fd(file: &File) -> io::Result<(Digest, u64)> {
    let mut r = PosReader { file, pos: 0 };
    let d = fsverity::digest_reader(&mut r, &fsverity::Params::default())?;
    Ok((d.try_into().expect("sha256 digest is 32 bytes"), r.pos))
}

enum CopyError {
    Src(io::Error),
    Dst(io::Error),
}

/// Copy all of `src` into the empty `dst`. Returns the digest and length when the copy itself
/// hashed the written bytes (plain copy); `None` when the kernel copied (reflink,
/// `copy_file_range`) and the caller must hash `dst`.
fn copy_data(src: &File, dst: &File) -> Result<Option<(Digest, u64)>, CopyError> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(None);
    }
    match copy_range(src, dst) {
        Ok(true) => return Ok(None),
        Ok(false) => {}
        Err(e) => return Err(e),
    }
    // Plain copy, hashing exactly the bytes written.
    dst.set_len(0).map_err(CopyError::Dst)?;
    let mut tee = Tee {
        src: PosReader { file: src, pos: 0 },
        dst,
        pos: 0,
        err: None,
    };
    let res = fsverity::digest_reader(&mut tee, &fsverity::Params::default());
    if let Some(e) = tee.err.take() {
        return Err(CopyError::Dst(e));
    }
    let d = res.map_err(CopyError::Src)?;
    Ok(Some((d.try_into().expect("32 bytes"), tee.pos)))
}

/// `copy_file_range` until end of file. Ok(false) when the kernel cannot do it for this pair.
fn copy_range(src: &File, dst: &File) -> Result<bool, CopyError> {
    let mut off_in: u64 = 0;
    let mut off_out: u64 = 0;
    loop {
        let n = match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), 1 << 30) {
            Ok(n) => n,
            Err(
                Errno::XDEV
                | Errno::OPNOTSUPP
                | Errno::INVAL
                | Errno::NOSYS
                | Errno::PERM
                | Errno::BADF
                | Errno::TXTBSY,
            ) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(e @ (Errno::IO | Errno::NOMEM)) if off_out == 0 => return Err(CopyError::Src(e.into())),
            Err(e) => return Err(CopyError::Dst(e.into())),
        };
        if n == 0 {
            // Some filesystems (procfs-like) report 0 for files that do have data: let the
            // plain copy decide, it hashes what it reads anyway.
            return Ok(off_out > 0 || src.metadata().map(|m| m.len() == 0).unwrap_or(false));
        }
    }
}

struct Tee<'a> {
    src: PosReader<'a>,
    dst: &'a File,
    pos: u64,
    err: Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read(buf)?;
        let mut w = self.dst;
        if let Err(e) = w.write_all(&buf[..n]) {
            let kind = e.kind();
            self.err = Some(e);
            return Err(io::Error::new(kind, "write failed"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cfs-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn insert_reuse_and_names() {
        let base = tmpdir("basic");
        let src = base.join("src");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let store = Store::open(&base.join("objects")).unwrap();
        let (d, size, how) = store.insert_path(&src).unwrap();
        assert_eq!(how, Inserted::Stored);
        assert_eq!(size, data.len() as u64);
        assert_eq!(d, fsverity::sha256_digest(&data));
        assert_eq!(std::fs::read(store.object_path(&d)).unwrap(), data);
        let (_, _, how) = store.insert_path(&src).unwrap();
        assert_eq!(how, Inserted::Reused);
        let s = store.stats();
        assert_eq!(
            (s.objects_stored, s.bytes_stored, s.objects_reused, s.bytes_reused),
            (1, 100_000, 1, 100_000)
        );
        store.sync().unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn created_directories_skip_lookups_not_checks() {
        let base = tmpdir("created");
        let root = base.join("objects");
        let (a, b) = (Store::open(&root).unwrap(), Store::open(&root).unwrap());
        let data = b"stored through two stores".repeat(100);
        let (d, how) = a.insert_bytes(&data).unwrap();
        assert_eq!(how, Inserted::Stored);
        assert!(a.created[d[0] as usize].load(Relaxed));
        // `b` did not create the directory: it looks the object up.
        assert_eq!(b.insert_bytes(&data).unwrap().1, Inserted::Reused);
        // `a` skips the lookup and finds the object at the link.
        assert_eq!(a.insert_bytes(&data).unwrap().1, Inserted::Reused);
        assert_eq!(std::fs::read(a.object_path(&d)).unwrap(), data);
        // A symlink planted under an object's name in a directory `a` created is refused at
        // the link, never counted as the object.
        let other = b"planted".repeat(100);
        let d2: Digest = fsverity::sha256_digest(&other);
        a.subdir(d2[0], true).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", a.object_path(&d2)).unwrap();
        let e = a.insert_bytes(&other).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let s = a.stats();
        assert_eq!((s.objects_stored, s.objects_reused), (1, 1));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn changed_source_is_not_stored() {
        let base = tmpdir("changed");
        let src = base.join("src");
        std::fs::write(&src, vec![7u8; 10_000]).unwrap();
        let store = Store::open(&base.join("objects")).unwrap();
        let file = open_regular(&src).unwrap();
        let wrong = fsverity::sha256_digest(&[1u8; 10_000]);
        let err = store.insert_fd(&file, &src, &wrong, 10_000).unwrap_err();
        assert!(matches!(err, Error::Changed { .. }));
        assert!(!store.contains(&wrong));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let base = tmpdir("stale");
        let objects = base.join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        // pid 0 never names a live user process; our own pid is kept.
        std::fs::write(objects.join(".tmp-0-1"), b"junk").unwrap();
        let mine = objects.join(format!(".tmp-{}-99", std::process::id()));
        std::fs::write(&mine, b"live").unwrap();
        let store = Store::open(&objects).unwrap();
        assert_eq!(store.stats().temporaries_removed, 1);
        assert!(!objects.join(".tmp-0-1").exists());
        assert!(mine.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn symlinked_subdirectory_is_refused_not_followed() {
        let base = tmpdir("symlink");
        let src = base.join("src");
        let data = vec![3u8; 5000];
        std::fs::write(&src, &data).unwrap();
        let digest = fsverity::sha256_digest(&data);
        let objects = base.join("objects");
        let outside = base.join("outside");
        std::fs::create_dir_all(&objects).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, objects.join(&object_name(&digest)[..2])).unwrap();
        let store = Store::open(&objects).unwrap();
        let err = store.insert_path(&src).unwrap_err().to_string();
        assert!(err.contains("refused") && err.contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn object_that_is_not_a_regular_file_is_refused() {
        let base = tmpdir("notreg");
        let src = base.join("src");
        let data = vec![4u8; 5000];
        std::fs::write(&src, &data).unwrap();
        let digest = fsverity::sha256_digest(&data);
        let objects = base.join("objects");
        let name = object_name(&digest);
        std::fs::create_dir_all(objects.join(&name[..2])).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", objects.join(&name)).unwrap();
        let store = Store::open(&objects).unwrap();
        assert!(!store.contains(&digest));
        let err = store.insert_path(&src).unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
