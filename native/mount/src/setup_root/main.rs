// SPDX-License-Identifier: MIT OR Apache-2.0
//! `composefs-setup-root ROOTMNT`: mounts the root filesystem of a composefs boot, in one process.
//!
//! initramfs-tools' `scripts/local-bottom/composefs` runs it once root= is mounted at ROOTMNT
//! (`${rootmnt}`); composefs-rs's program for the same step has the same name. Without
//! `composefs=` on the kernel command line it does nothing. Otherwise, in this order:
//!   1. the settings (config.rs, the one place they are read and checked);
//!   2. the root partition moves to /run/composefs/sysroot (it travels into the booted system
//!      with /run) and is remounted read-write unless it already is;
//!   3. composefs/images/<digest> and state/deploy/<digest> must exist there;
//!   4. the modules (modules.rs, without modprobe where it can): the fastest sha256 the kernel
//!      has (fs-verity picks one the first time it hashes, see the hook), overlayfs (/etc and
//!      /var) and the composefs module; erofs only when the module did not come (the stock
//!      path), and loop only when EROFS does not mount from the image file itself;
//!   5. the image mounted read-only at ROOTMNT with the digest enforced, by the mount crate's
//!      `mount_image` (the module with digest=, or EROFS + overlayfs with verity=require and the
//!      objects as a data-only layer; the image's fs-verity digest measured first either way);
//!   6. /etc and /var: overlays with the deployment's upper directories, a bind mount of
//!      state/var, or overlays with upper directories on a tmpfs (transient);
//!   7. one line on stdout: `composefs: root is image sha256:<d> (<how>), /etc X, /var Y (uptime
//!      a-b s)`.
//!
//! Any failure stops there: one line on stderr, `composefs: boot stopped: <why>`, and exit status
//! 1; the script hands that line to initramfs-tools' panic. Mounts made before a failure stay:
//! the boot does not go on, and panic's shell shows them as they were.
//!
//! Started under QEMU/TCG at every boot, so: no dynamic libraries beyond libc (the Makefile links
//! it statically where glibc's libc.a is installed), and no other program (modprobe only where
//! modules.rs cannot load a module itself).

mod config;
mod modules;

use std::ffi::{CStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use composefs_mount::{
    escape_layer, kernel_module_available, mount_image, Backend, ErofsSource, Error, ErrorKind, Request,
};
use config::{Config, ConfigError, EtcMode, VarMode, BOOT_CONF};
use rustix::fs::StatVfsMountFlags as St;
use rustix::mount::{self as rm, MountFlags};

const RUN: &str = "/run/composefs";
const USAGE: &str = "usage: composefs-setup-root ROOTMNT (from initramfs-tools' scripts/local-bottom/composefs)";

/// Why the boot stops: the text after `composefs: boot stopped: `.
struct Stop(String);

impl From<ConfigError> for Stop {
    fn from(e: ConfigError) -> Self {
        Stop(e.0)
    }
}

fn stop<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop(why.into()))
}

/// The first field of /proc/uptime as the kernel writes it ("12.34"), for the final line.
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

fn read_conf() -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(BOOT_CONF) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError(format!("cannot read {BOOT_CONF}: {}", strerror(&e)))),
    }
}

/// Load MODULES (names or aliases) as `modprobe -q -a` would: in this process (modules.rs), or
/// by modprobe where that cannot. Whether they came is for the caller to find out (a module
/// missing or refused, as with module_blacklist=, is not an error here).
fn load_modules(loader: &modules::Loader, names: &[&str]) {
    if loader.load(names) == modules::Loaded::Done {
        return;
    }
    let _ = Command::new("modprobe")
        .args(["-q", "-a"])
        .args(names)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn mkdirs(p: &Path) -> Result<(), Stop> {
    std::fs::create_dir_all(p).or_else(|e| stop(format!("cannot make {}: {}", p.display(), strerror(&e))))
}

/// Remount `p` read-write unless it is already (root= with `rw`), keeping its other flags.
fn make_writable(p: &Path) -> rustix::io::Result<()> {
    let st = rustix::fs::statvfs(p)?;
    if !st.f_flag.contains(St::RDONLY) {
        return Ok(());
    }
    let keep = [
        (St::NOSUID, MountFlags::NOSUID),
        (St::NODEV, MountFlags::NODEV),
        (St::NOEXEC, MountFlags::NOEXEC),
        (St::NOATIME, MountFlags::NOATIME),
        (St::NODIRATIME, MountFlags::NODIRATIME),
        (St::RELATIME, MountFlags::RELATIME),
    ];
    let flags = keep
        .iter()
        .filter(|(s, _)| st.f_flag.contains(*s))
        .fold(MountFlags::empty(), |f, (_, m)| f | *m);
    rm::mount_remount(p, flags, "")
}

/// A writable overlay of the image's `dir` (ROOTMNT/dir) with `base`/upper and `base`/work.
fn overlay_at(rootmnt: &Path, dir: &str, base: &Path) -> Result<(), String> {
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {}", d.display(), strerror(&e)))?;
    }
    let target = rootmnt.join(dir);
    let mut data = b"lowerdir=".to_vec();
    data.extend(escape_layer(&target));
    data.extend(b",upperdir=");
    data.extend(escape_layer(&upper));
    data.extend(b",workdir=");
    data.extend(escape_layer(&work));
    let data = std::ffi::CString::new(data).map_err(|_| "a path holds a NUL byte".to_string())?;
    rm::mount(
        format!("composefs-{dir}").as_str(),
        &target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| format!("overlay on {}: {e}", target.display()))
}

/// The mount crate's error without the image's path (the stop line names the image already).
fn detail(e: &Error, image: &Path) -> String {
    match &e.path {
        Some(p) if p == image => e.message.clone(),
        _ => e.to_string(),
    }
}

/// Mount the image at `rootmnt` with its digest enforced; how it was done, for the final line.
fn mount_root(
    cfg: &Config,
    loader: &modules::Loader,
    repo: &Path,
    image: &Path,
    rootmnt: &Path,
) -> Result<&'static str, Stop> {
    let d = &cfg.digest;
    load_modules(loader, &["crypto-sha256", "overlay", "composefs"]);
    let module = kernel_module_available();
    let mut req = Request::new(image.to_path_buf(), rootmnt.to_path_buf());
    req.basedirs = vec![repo.join("objects")];
    req.digest = Some(d.clone());
    req.image_nofollow = true;
    req.backend = if module { Backend::Kernel } else { Backend::Overlay };
    if !module {
        load_modules(loader, &["erofs"]);
        // EROFS straight from the image file (Linux 6.12+, EROFS_FS_BACKED_BY_FILE) needs no
        // loop device: loop is loaded, and the mount tried again with one, only where that fails.
        req.erofs_source = ErofsSource::File;
    }
    let mut result = mount_image(&req);
    if matches!(&result, Err(e) if !module && e.kind != ErrorKind::Digest) {
        load_modules(loader, &["loop"]);
        req.erofs_source = ErofsSource::Auto;
        result = mount_image(&req);
    }
    match result {
        Ok(_) if module => Ok("composefs module"),
        Ok(_) => Ok("erofs+overlayfs"),
        // The module checks the digest itself as well: any refusal of it may be a wrong image.
        Err(e) if module || e.kind == ErrorKind::Digest => stop(format!(
            "image sha256:{d} does not mount with its digest enforced (tampered or wrong image): {}",
            detail(&e, image)
        )),
        Err(e) => stop(format!(
            "image sha256:{d} does not mount as EROFS + overlayfs: {}",
            detail(&e, image)
        )),
    }
}

fn run(rootmnt: &Path, started: &str) -> Result<Option<String>, Stop> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .or_else(|e| stop(format!("cannot read /proc/cmdline: {}", strerror(&e))))?;
    let Some(cfg) = config::parse(&cmdline, read_conf)? else {
        return Ok(None);
    };
    let d = &cfg.digest;
    let run = Path::new(RUN);
    let sysroot = run.join("sysroot");
    mkdirs(&sysroot)?;
    if let Err(e) = rm::mount_move(rootmnt, &sysroot) {
        return stop(format!("cannot move the root partition to {}: {e}", sysroot.display()));
    }
    if let Err(e) = make_writable(&sysroot) {
        return stop(format!("cannot make the root partition writable: {e}"));
    }
    let repo = sysroot.join("composefs");
    let image = repo.join("images").join(d);
    let state = sysroot.join("state/deploy").join(d);
    if !image.is_file() {
        return stop(format!(
            "image sha256:{d} not found in /composefs/images of the root partition"
        ));
    }
    if !state.is_dir() {
        return stop(format!(
            "image sha256:{d} is not deployed (no /state/deploy/{d}; run cfsctl boot deploy)"
        ));
    }
    let how = mount_root(&cfg, &modules::Loader::open(&cmdline), &repo, &image, rootmnt)?;

    let transient = run.join("transient");
    if cfg.etc == EtcMode::Transient || cfg.var == VarMode::Transient {
        mkdirs(&transient)?;
        let mode: &CStr = c"mode=0755";
        if let Err(e) = rm::mount("composefs-transient", &transient, "tmpfs", MountFlags::empty(), mode) {
            return stop(format!("tmpfs for transient state failed: {e}"));
        }
    }
    let etc_base = match cfg.etc {
        EtcMode::Overlay => state.join("etc"),
        EtcMode::Transient => transient.join("etc"),
    };
    if let Err(e) = overlay_at(rootmnt, "etc", &etc_base) {
        return stop(format!(
            "cannot mount /etc ({}) from {}: {e}",
            cfg.etc.name(),
            etc_base.display()
        ));
    }
    let var = match cfg.var {
        VarMode::Overlay => overlay_at(rootmnt, "var", &state.join("var")),
        VarMode::Transient => overlay_at(rootmnt, "var", &transient.join("var")),
        VarMode::Bind => {
            let shared = sysroot.join("state/var");
            std::fs::create_dir_all(&shared)
                .map_err(|e| format!("{}: {}", shared.display(), strerror(&e)))
                .and_then(|()| {
                    rm::mount_bind(&shared, rootmnt.join("var"))
                        .map_err(|e| format!("bind mount of {}: {e}", shared.display()))
                })
        }
    };
    if let Err(e) = var {
        return stop(format!("cannot mount /var ({}): {e}", cfg.var.name()));
    }
    Ok(Some(format!(
        "composefs: root is image sha256:{d} ({how}), /etc {}, /var {} (uptime {started}-{} s)",
        cfg.etc.name(),
        cfg.var.name(),
        uptime()
    )))
}

fn main() -> ExitCode {
    let started = uptime();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = match args.as_slice() {
        [r] if !r.is_empty() && r.as_encoded_bytes()[0] != b'-' => run(&PathBuf::from(r), &started),
        _ => Err(Stop(USAGE.into())),
    };
    match result {
        Ok(line) => {
            if let Some(line) = line {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
            ExitCode::SUCCESS
        }
        Err(Stop(why)) => {
            let _ = writeln!(std::io::stderr(), "composefs: boot stopped: {why}");
            ExitCode::FAILURE
        }
    }
}
