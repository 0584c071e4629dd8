// SPDX-License-Identifier: MIT OR Apache-2.0
//! The file protocols every part of the toolchain shares, in one place: enabling and measuring
//! fs-verity, `syncfs`, whether a process lives, atomic files (a temporary file beside the
//! target, then a rename) with one temporary-name scheme and one sweep of the temporaries that
//! killed processes left, and large contents written past the page cache ([`direct`]). The
//! object store, the image writer and (through pyo3) the Python repository, mount and boot code
//! all call these; none keeps a copy.
//!
//! Temporary names: `.<TARGET>.tmp-<pid>-<n>`, TARGET being the file name the temporary will be
//! renamed to (`object` for the object store's, which are linked under a digest name), `<n>` a
//! per-process counter. A target too long to fit in a file name beside the suffix is spelled
//! `cfs`. The sweep also recognises the names earlier versions used, so a repository or an
//! output directory left by one is still cleaned: `<TARGET>.tmp-<pid>-<n>` (the Python
//! repository's, and with an empty TARGET the object store's `.tmp-<pid>-<n>`) and
//! `.<TARGET>.tmp<pid>-<nonce>-<n>` (the image writer's, `.cfs.tmp…` for long names).

pub mod direct;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What enabling fs-verity did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verity {
    Enabled,
    /// The file had fs-verity already.
    AlreadyEnabled,
    /// This filesystem (or kernel) has no fs-verity: the file is kept without it.
    Unsupported,
}

/// `struct fsverity_enable_arg` of `<linux/fsverity.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct FsverityEnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}
const _: () = assert!(std::mem::size_of::<FsverityEnableArg>() == 128);

const FS_IOC_ENABLE_VERITY: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<FsverityEnableArg>(b'f', 133);
const _: () = assert!(FS_IOC_ENABLE_VERITY as u64 == 0x4080_6685);

/// Enable fs-verity (sha256, 4 KiB blocks, no salt, no signature) on `fd`, which must be open
/// read-only with no writable descriptor left anywhere.
///
/// The one errno policy: ENOTTY (no such ioctl), EOPNOTSUPP (the filesystem lacks the feature or
/// has it off), EINVAL (some filesystems' answer to a request they cannot serve) and ENOSYS mean
/// "not supported here"; EEXIST means already enabled; anything else is a real error.
pub fn enable_verity(fd: BorrowedFd<'_>) -> io::Result<Verity> {
    let arg = FsverityEnableArg {
        version: 1,
        hash_algorithm: 1,
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    loop {
        // SAFETY: FS_IOC_ENABLE_VERITY reads a `struct fsverity_enable_arg`, which
        // `FsverityEnableArg` lays out field for field (size checked above); its salt and
        // signature pointers are null with zero sizes, so the kernel reads nothing else. The
        // Setter holds the struct itself and passes its address (a Setter of a reference would
        // pass the reference's address: the kernel then read garbage and said EINVAL, which
        // reads as "not supported" and left every object without fs-verity).
        let r = unsafe {
            rustix::ioctl::ioctl(
                fd,
                rustix::ioctl::Setter::<FS_IOC_ENABLE_VERITY, FsverityEnableArg>::new(arg),
            )
        };
        return match r {
            Ok(()) => Ok(Verity::Enabled),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::EXIST) => Ok(Verity::AlreadyEnabled),
            Err(
                rustix::io::Errno::NOTTY
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS,
            ) => Ok(Verity::Unsupported),
            Err(e) => Err(e.into()),
        };
    }
}

pub const FS_VERITY_HASH_ALG_SHA256: u16 = 1;

/// `struct fsverity_digest` with room for the largest digest (sha512).
#[repr(C)]
struct VerityDigest {
    algorithm: u16,
    size: u16,
    digest: [u8; 64],
}

// The kernel's opcode encodes the header's size only (the digest is a flexible array).
const FS_IOC_MEASURE_VERITY: rustix::ioctl::Opcode = rustix::ioctl::opcode::read_write::<[u16; 2]>(b'f', 134);
const _: () = assert!(FS_IOC_MEASURE_VERITY as u64 == 0xC004_6686);

/// FS_IOC_MEASURE_VERITY: (hash algorithm, digest) of a file with fs-verity (ENODATA when it has
/// none, ENOTTY/EOPNOTSUPP where the filesystem has no fs-verity). The one implementation (the
/// mount crate re-exports it).
pub fn measure_verity(fd: BorrowedFd<'_>) -> io::Result<(u16, Vec<u8>)> {
    let mut d = VerityDigest {
        algorithm: 0,
        size: 64,
        digest: [0; 64],
    };
    // SAFETY: the kernel reads `size` and writes at most that many digest bytes after the
    // 4-byte header of `struct fsverity_digest`; `VerityDigest` is that header plus 64 bytes.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Updater::<FS_IOC_MEASURE_VERITY, VerityDigest>::new(&mut d),
        )?;
    }
    let n = usize::from(d.size).min(d.digest.len());
    Ok((d.algorithm, d.digest[..n].to_vec()))
}

/// Flush the whole filesystem holding `fd` once, instead of an fsync per file.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

/// Whether process `pid` exists (one that exists but is not ours to signal counts as alive).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH))
}

/// Target spelled in temporaries whose real target name is too long for a file name.
const LONG_TARGET: &[u8] = b"cfs";
/// Room left in a 255-byte file name for `.<TARGET>` once `.tmp-<pid>-<n>` is added.
const TARGET_MAX: usize = 255 - ".tmp-".len() - 10 - 1 - 20 - 1;

static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name for `target` (see the module comment).
pub fn temp_name(target: &[u8]) -> Vec<u8> {
    let target = if target.len() > TARGET_MAX { LONG_TARGET } else { target };
    let mut name = Vec::with_capacity(target.len() + 40);
    name.push(b'.');
    name.extend_from_slice(target);
    name.extend_from_slice(format!(".tmp-{}-{}", std::process::id(), NEXT_TEMP.fetch_add(1, Relaxed)).as_bytes());
    name
}

fn digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

fn parse_pid(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The target and the writer's pid of a temporary name of ours (today's or an earlier
/// version's), or None for any other name.
pub fn parse_temp_name(name: &[u8]) -> Option<(&[u8], u32)> {
    // `.<T>.tmp-<pid>-<n>` and the older `<T>.tmp-<pid>-<n>`.
    if let Some(at) = find_last(name, b".tmp-") {
        let mut parts = name[at + 5..].split(|&c| c == b'-');
        if let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) {
            if digits(pid) && digits(n) {
                let head = &name[..at];
                return Some((head.strip_prefix(b".").unwrap_or(head), parse_pid(pid)?));
            }
        }
    }
    // The image writer's older `.<T>.tmp<pid>-<nonce>-<n>`.
    let at = find_last(name, b".tmp")?;
    let head = name[..at].strip_prefix(b".")?;
    let mut parts = name[at + 4..].split(|&c| c == b'-');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(pid), Some(nonce), Some(n), None) if digits(pid) && digits(nonce) && digits(n) => {
            Some((head, parse_pid(pid)?))
        }
        _ => None,
    }
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Whether `name` is one of our temporaries, live or not.
pub fn is_temp_name(name: &[u8]) -> bool {
    parse_temp_name(name).is_some()
}

/// Which temporaries a sweep removes.
#[derive(Clone, Copy, Debug)]
pub enum Sweep<'a> {
    /// Every temporary of ours (a directory only we write: the object store, a repository's).
    All,
    /// Those of one target (and of over-long targets): a directory shared with other files.
    Target(&'a [u8]),
}

/// Remove the temporaries in `dir` (as chosen by `which`) whose writer no longer runs; returns
/// how many were removed. Only regular files are removed; one that cannot be is left for the
/// next sweep. Our own pid's temporaries are kept (a pid reused by us is never stale to us).
pub fn sweep(dir: &Path, which: Sweep<'_>) -> io::Result<u64> {
    let d = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let me = std::process::id();
    let mut removed = 0;
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let Some((target, pid)) = parse_temp_name(name.as_bytes()) else {
            continue;
        };
        if let Sweep::Target(t) = which {
            if target != t && target != LONG_TARGET {
                continue;
            }
        }
        if pid == me || pid_alive(pid) || !ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        if rustix::fs::unlinkat(&d, name.as_bytes(), AtFlags::empty()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// How an atomic file gets its permissions.
#[derive(Clone, Copy, Debug)]
pub enum FileMode {
    /// 0666 less the umask (applied by the kernel at creation), as `fopen(3)` gives.
    Umask,
    /// Exactly this mode, whatever the umask.
    Exact(u32),
}

/// A file being written beside its target, renamed over it by [`AtomicFile::commit`]; dropped
/// uncommitted, it leaves nothing behind.
pub struct AtomicFile {
    dir: OwnedFd,
    dir_path: PathBuf,
    tmp: Option<CString>,
    target: CString,
    file: Option<File>,
    mode: FileMode,
}

impl AtomicFile {
    /// Start writing `path`: sweep the stale temporaries of the same target, then create a
    /// fresh temporary beside it.
    pub fn create(path: &Path, mode: FileMode) -> io::Result<AtomicFile> {
        let dir_path = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let target = path
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(rustix::io::Errno::ISDIR.raw_os_error()))?
            .as_bytes();
        let dir = rustix::fs::open(
            &dir_path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        sweep(&dir_path, Sweep::Target(target))?;
        let (tmp, fd) = create_temp(dir.as_fd(), target, Mode::from_raw_mode(0o666))?;
        Ok(AtomicFile {
            dir,
            dir_path,
            tmp: Some(tmp),
            target: CString::new(target).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            file: Some(File::from(fd)),
            mode,
        })
    }

    /// The temporary's path, for messages.
    pub fn temp_path(&self) -> PathBuf {
        let name = self.tmp.as_ref().map(|t| t.as_bytes()).unwrap_or_default();
        self.dir_path.join(OsStr::from_bytes(name))
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// Give the file its mode, flush it (`fsync`) and rename it over the target.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("open until committed");
        if let FileMode::Exact(m) = self.mode {
            rustix::fs::fchmod(&file, Mode::from_raw_mode(m))?;
        }
        file.sync_all()?;
        drop(file);
        let tmp = self.tmp.as_ref().expect("named until committed");
        rustix::fs::renameat(&self.dir, tmp.as_c_str(), &self.dir, self.target.as_c_str())?;
        self.tmp = None;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = rustix::fs::unlinkat(&self.dir, t.as_c_str(), AtFlags::empty());
        }
    }
}

/// Create a fresh temporary for `target` in `dir` (`O_EXCL`, never following a symlink), with
/// `mode` less the umask. Returns its name and descriptor.
pub fn create_temp(dir: BorrowedFd<'_>, target: &[u8], mode: Mode) -> io::Result<(CString, OwnedFd)> {
    loop {
        let name = CString::new(temp_name(target)).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match rustix::fs::openat(
            dir,
            name.as_c_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => return Ok((name, fd)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write `bytes` to `path` atomically (see [`AtomicFile`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: FileMode) -> io::Result<()> {
    use std::io::Write;
    let mut f = AtomicFile::create(path, mode)?;
    f.file().write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_today_and_before() {
        let today = temp_name(b"out.cfs");
        assert!(today.starts_with(b".out.cfs.tmp-"));
        assert_eq!(parse_temp_name(&today), Some((&b"out.cfs"[..], std::process::id())));
        type Case = (&'static [u8], Option<(&'static [u8], u32)>);
        let table: &[Case] = &[
            (b".object.tmp-12-3", Some((b"object", 12))),
            (b".tmp-12-3", Some((b"", 12))),
            (b"main.tmp-7-0", Some((b"main", 7))),
            (b".out.cfs.tmp99-123-0", Some((b"out.cfs", 99))),
            (b".cfs.tmp99-5-1", Some((b"cfs", 99))),
            (b".out.cfs.tmp-99-1-0", None),
            (b"out.cfs", None),
            (b"a.tmp", None),
            (b".tmp-x-1", None),
            (b".tmp-1-", None),
            (b"sha256-ab", None),
        ];
        for (name, want) in table {
            assert_eq!(parse_temp_name(name), *want, "{}", String::from_utf8_lossy(name));
        }
        let long = vec![b'a'; 250];
        assert!(temp_name(&long).starts_with(b".cfs.tmp-"));
        assert!(temp_name(&vec![b'a'; TARGET_MAX]).len() <= 255);
    }

    #[test]
    fn sweep_keeps_the_living_and_other_targets() {
        let dir = std::env::temp_dir().join(format!("cfs-fsio-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut dead = 4_000_000u32;
        while pid_alive(dead) {
            dead += 1;
        }
        let me = std::process::id();
        for n in [
            format!(".img.tmp-{dead}-0"),
            format!(".img.tmp-{me}-0"),
            format!(".other.tmp-{dead}-0"),
            format!(".cfs.tmp-{dead}-4"),
        ] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        assert_eq!(sweep(&dir, Sweep::Target(b"img")).unwrap(), 2);
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [format!(".img.tmp-{me}-0"), format!(".other.tmp-{dead}-0")]);
        assert_eq!(sweep(&dir, Sweep::All).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_file_exact_mode_and_no_leftover_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cfs-fsio-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"one", FileMode::Exact(0o640)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640);
        {
            let mut f = AtomicFile::create(&p, FileMode::Umask).unwrap();
            std::io::Write::write_all(f.file(), b"two").unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// After a reboot the same pid comes round again and a temporary of the last boot can hold
    /// the very name this process picks next (a power-cut test found `refs/NAME.tmp-190-2:
    /// File exists`): creating a temporary steps past names that exist.
    #[test]
    fn temporary_steps_past_a_leftover_with_our_name() {
        let dir = std::env::temp_dir().join(format!("cfs-fsio-leftover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let next = NEXT_TEMP.load(Relaxed);
        // Other tests in this process take names too: cover well past the next few.
        for n in next..next + 2000 {
            std::fs::write(dir.join(format!(".ref.tmp-{me}-{n}")), b"last boot").unwrap();
        }
        let d = File::open(&dir).unwrap();
        let (name, _fd) = create_temp(d.as_fd(), b"ref", Mode::from_raw_mode(0o644)).unwrap();
        let n: u64 = name.to_str().unwrap().rsplit('-').next().unwrap().parse().unwrap();
        assert!(n >= next + 2000, "{name:?}");
        write_atomic(&dir.join("ref"), b"now", FileMode::Exact(0o644)).unwrap();
        assert_eq!(std::fs::read(dir.join("ref")).unwrap(), b"now");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pid_alive_sees_us_not_the_impossible() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
