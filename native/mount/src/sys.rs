// SPDX-License-Identifier: MIT OR Apache-2.0
//! The system calls and ioctls mounting needs, one small function each, no policy.
//!
//! The new mount API goes through `rustix`; what it does not wrap (loop devices, fs-verity
//! measurement, `mount_setattr`, `setns`) goes through `libc` with a SAFETY note per call.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::mount as rm;

/// An error from one call: errno, what was done, and the kernel's fs_context messages if any.
#[derive(Debug)]
pub struct SysError {
    pub errno: i32,
    pub what: String,
    pub log: Vec<String>,
}

impl std::fmt::Display for SysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = io::Error::from_raw_os_error(self.errno).to_string();
        let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
        write!(f, "{}: {msg}", self.what)?;
        if !self.log.is_empty() {
            write!(f, " (kernel: {})", self.log.join("; "))?;
        }
        Ok(())
    }
}

pub type SysResult<T> = Result<T, SysError>;

fn err(e: rustix::io::Errno, what: impl Into<String>, fs: Option<BorrowedFd<'_>>) -> SysError {
    SysError {
        errno: e.raw_os_error(),
        what: what.into(),
        log: fs.map(read_fs_log).unwrap_or_default(),
    }
}

fn io_err(e: io::Error, what: impl Into<String>) -> SysError {
    SysError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        what: what.into(),
        log: Vec::new(),
    }
}

/// Drain the fs_context message log of an fsopen() descriptor ("e overlay: ..." lines).
fn read_fs_log(fs: BorrowedFd<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    if rustix::fs::fcntl_setfl(fs, rustix::fs::OFlags::NONBLOCK).is_err() {
        return lines;
    }
    let mut buf = [0u8; 1024];
    for _ in 0..64 {
        match rustix::io::read(fs, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let t = String::from_utf8_lossy(&buf[..n]).trim_end_matches('\n').to_string();
                let t = if t.len() > 2 && t.as_bytes()[1] == b' ' {
                    t[2..].to_string()
                } else {
                    t
                };
                lines.push(t);
            }
        }
    }
    lines
}

pub fn fsopen(fstype: &str) -> SysResult<OwnedFd> {
    rm::fsopen(fstype, rm::FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| err(e, format!("fsopen({fstype})"), None))
}

pub fn set_flag(fs: &OwnedFd, key: &str) -> SysResult<()> {
    rm::fsconfig_set_flag(fs, key).map_err(|e| err(e, format!("fsconfig {key}"), Some(fs.as_fd())))
}

pub fn set_string(fs: &OwnedFd, key: &str, value: &[u8]) -> SysResult<()> {
    rm::fsconfig_set_string(fs, key, std::ffi::OsStr::from_bytes(value)).map_err(|e| {
        err(
            e,
            format!("fsconfig {key}={}", String::from_utf8_lossy(value)),
            Some(fs.as_fd()),
        )
    })
}

pub fn set_fd(fs: &OwnedFd, key: &str, fd: BorrowedFd<'_>, shown: &Path) -> SysResult<()> {
    rm::fsconfig_set_fd(fs, key, fd)
        .map_err(|e| err(e, format!("fsconfig {key}=<fd {}>", shown.display()), Some(fs.as_fd())))
}

pub fn create(fs: &OwnedFd, what: &str) -> SysResult<()> {
    rm::fsconfig_create(fs).map_err(|e| err(e, format!("creating {what}"), Some(fs.as_fd())))
}

pub fn fsmount(fs: &OwnedFd, attrs: u32) -> SysResult<OwnedFd> {
    rm::fsmount(
        fs,
        rm::FsMountFlags::FSMOUNT_CLOEXEC,
        rm::MountAttrFlags::from_bits_retain(attrs),
    )
    .map_err(|e| err(e, "fsmount", Some(fs.as_fd())))
}

pub fn move_mount_to(mnt: &OwnedFd, target: &Path) -> SysResult<()> {
    rm::move_mount(
        mnt,
        "",
        rustix::fs::CWD,
        target,
        rm::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| err(e, "move_mount", None))
}

pub fn mount(source: &[u8], target: &Path, fstype: &str, flags: u64, data: Option<&[u8]>) -> SysResult<()> {
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    rm::mount(
        std::ffi::OsStr::from_bytes(source),
        target,
        fstype,
        rm::MountFlags::from_bits_retain(flags as _),
        data.as_deref(),
    )
    .map_err(|e| err(e, format!("mount -t {fstype}"), None))
}

pub fn umount(target: &Path, detach: bool) -> SysResult<()> {
    let flags = if detach {
        rm::UnmountFlags::DETACH
    } else {
        rm::UnmountFlags::empty()
    };
    rm::unmount(target, flags | rm::UnmountFlags::NOFOLLOW).map_err(|e| err(e, "umount", None))
}

/// `struct mount_attr` of <linux/mount.h> (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Make the detached mount `mnt` idmapped with the ID mapping of the user namespace `userns`.
pub fn set_idmap(mnt: &OwnedFd, userns: &File) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from `attr`, a live, properly
    // laid out struct; the path is a valid NUL-terminated empty string and both fds are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io_err(io::Error::last_os_error(), "mount_setattr MOUNT_ATTR_IDMAP"));
    }
    Ok(())
}

/// Enter the mount namespace of `ns` (a /proc/PID/ns/mnt file or a bind mount of one).
pub fn enter_mount_ns(ns: &File) -> SysResult<()> {
    // SAFETY: setns takes an open fd and a namespace type; no memory is passed.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) };
    if r < 0 {
        return Err(io_err(io::Error::last_os_error(), "setns"));
    }
    Ok(())
}

// --- loop devices -------------------------------------------------------------------------------

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attach `backing` to a free loop device (LOOP_CONFIGURE); (device path, open device).
/// With LO_FLAGS_AUTOCLEAR the device detaches itself when its last user goes away.
pub fn loop_attach(backing: BorrowedFd<'_>, flags: u32, name: &[u8]) -> SysResult<(String, File)> {
    let ctl = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| io_err(e, "/dev/loop-control"))?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(io_err(io::Error::last_os_error(), "LOOP_CTL_GET_FREE"));
        }
        let dev = format!("/dev/loop{n}");
        let f = File::options()
            .read(true)
            .write(flags & LO_FLAGS_READ_ONLY == 0)
            .open(&dev)
            .map_err(|e| io_err(e, dev.clone()))?;
        let mut file_name = [0u8; 64];
        let take = name.len().min(63);
        file_name[..take].copy_from_slice(&name[name.len() - take..]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags,
                file_name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` from the pointer; `cfg` is a live
        // value with that exact layout.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CONFIGURE as _, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok((dev, f));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(io_err(e, format!("LOOP_CONFIGURE {dev}")));
        }
        // Another process took this device between the two calls: ask again.
    }
    Err(SysError {
        errno: libc::EBUSY,
        what: "no free loop device".into(),
        log: Vec::new(),
    })
}

// --- fs-verity ----------------------------------------------------------------------------------

pub use composefs_base::fsio::{measure_verity, FS_VERITY_HASH_ALG_SHA256};

/// Open with O_PATH|O_DIRECTORY (a layer handed to overlayfs by descriptor).
pub fn open_path_dir(p: &Path) -> SysResult<OwnedFd> {
    rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| err(e, format!("opening {}", p.display()), None))
}
