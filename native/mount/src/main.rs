// SPDX-License-Identifier: MIT OR Apache-2.0
//! `mount.composefs`: the helper mount(8) runs for `mount -t composefs IMAGE MNT -o OPTIONS`.
//!
//! mount(8) calls `/sbin/mount.composefs SOURCE TARGET [-sfnvrw] [-N NS] [-o OPTIONS] [-t TYPE]`;
//! the reference helper's own spelling (`mount.composefs [-t type] [-o opts] IMAGE MNT`) works too.
//! Exit status as mount(8): 0 success, 1 bad invocation or permissions, 32 mount failure.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use composefs_mount::{mount_image, options, validate, Error, Request};

const USAGE: &str = "\
usage: mount.composefs [-sfnvrwh] [-N NAMESPACE] [-t composefs] [-o OPTIONS] IMAGE MOUNTPOINT
Example:
  mount.composefs -o basedir=/composefs/objects image.cfs /mnt/image
or, as a mount helper:
  mount -t composefs -o basedir=/composefs/objects image.cfs /mnt/image

Options (-o, comma separated; a backslash makes the next character literal):
  basedir=PATH[:PATH...]  object directories, searched in order (required)
  digest=DIGEST           the image's fs-verity sha256 digest, checked before mounting;
                          implies verity
  verity                  every file must record an fs-verity digest and match it
  tryverity               verity where the kernel can verify, else none
  verity_check=0|1|2      0 no checks, 1 files that record a digest, 2 as verity
  idmap=PATH              idmapped mount with the ID mapping of this user namespace file
  upperdir=DIR,workdir=DIR   a writable overlay on top (overlay backend)
  ro, rw                  read-only (always, without upperdir) or read/write
  backend=auto|kernel|overlay   the composefs module or EROFS + overlayfs (auto: the module
                          when /proc/filesystems lists composefs)
  nosuid, nodev, noexec, noatime, nodiratime, strictatime   mount attributes
Flags:
  -s  ignore unknown options (never one that names verification)
  -f  check everything that needs no mounting, mount nothing
  -n  (ignored: no mtab)     -v  say what was mounted
  -r  same as -o ro          -w  same as -o rw
  -N NAMESPACE  mount in the mount namespace of this file or PID
  -h, --help    this text    --version  the version
";

struct Args {
    image: OsString,
    target: OsString,
    opts: Vec<OsString>,
    sloppy: bool,
    fake: bool,
    verbose: bool,
    namespace: Option<OsString>,
}

enum Parsed {
    Run(Args),
    Exit(ExitCode),
}

fn usage_error(msg: &str) -> Error {
    Error::usage(format!("{msg}\n{}", USAGE.lines().next().unwrap_or_default()))
}

fn parse(argv: Vec<OsString>) -> Result<Parsed, Error> {
    let mut pos = Vec::new();
    let mut a = Args {
        image: OsString::new(),
        target: OsString::new(),
        opts: Vec::new(),
        sloppy: false,
        fake: false,
        verbose: false,
        namespace: None,
    };
    let mut it = argv.into_iter();
    let mut only_pos = false;
    while let Some(arg) = it.next() {
        let b = arg.as_bytes();
        if only_pos || b.len() < 2 || b[0] != b'-' {
            pos.push(arg);
            continue;
        }
        match b {
            b"--" => {
                only_pos = true;
                continue;
            }
            b"--help" => {
                print!("{USAGE}");
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            b"--version" => {
                println!("mount.composefs (composefs toolchain) {}", env!("CARGO_PKG_VERSION"));
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            _ if b.starts_with(b"--") => return Err(usage_error(&format!("unknown option {}", arg.to_string_lossy()))),
            _ => {}
        }
        // A cluster of one-letter flags; -o, -t and -N take a value (attached or next).
        let mut i = 1;
        while i < b.len() {
            let c = b[i];
            match c {
                b'o' | b't' | b'N' => {
                    let value = if i + 1 < b.len() {
                        OsString::from(std::ffi::OsStr::from_bytes(&b[i + 1..]))
                    } else {
                        it.next()
                            .ok_or_else(|| usage_error(&format!("option -{} needs a value", c as char)))?
                    };
                    match c {
                        b'o' => a.opts.push(value),
                        b't' => {
                            let t = value.as_bytes();
                            if t != b"composefs" && !t.starts_with(b"composefs.") {
                                return Err(Error::usage(format!(
                                    "this helper mounts composefs, not {}",
                                    value.to_string_lossy()
                                )));
                            }
                        }
                        _ => a.namespace = Some(value),
                    }
                    break;
                }
                b's' => a.sloppy = true,
                b'f' => a.fake = true,
                b'n' => {}
                b'v' => a.verbose = true,
                b'r' => a.opts.push("ro".into()),
                b'w' => a.opts.push("rw".into()),
                b'h' => {
                    print!("{USAGE}");
                    return Ok(Parsed::Exit(ExitCode::SUCCESS));
                }
                _ => return Err(usage_error(&format!("unknown flag -{}", c as char))),
            }
            i += 1;
        }
    }
    match <[OsString; 2]>::try_from(pos) {
        Ok([image, target]) => {
            a.image = image;
            a.target = target;
            Ok(Parsed::Run(a))
        }
        Err(pos) if pos.len() < 2 => Err(usage_error(if pos.is_empty() {
            "no image given"
        } else {
            "no mount point given"
        })),
        Err(_) => Err(usage_error("too many arguments: expected IMAGE MOUNTPOINT")),
    }
}

fn enter_namespace(ns: &OsString) -> Result<(), Error> {
    let b = ns.as_bytes();
    let path = if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        PathBuf::from(format!("/proc/{}/ns/mnt", ns.to_string_lossy()))
    } else {
        PathBuf::from(ns)
    };
    let f =
        File::open(&path).map_err(|e| Error::failure(format!("cannot open the mount namespace: {e}"), Some(&path)))?;
    composefs_mount::enter_mount_ns(&f)
        .map_err(|e| Error::failure(format!("cannot enter the mount namespace: {e}"), Some(&path)))
}

fn run(argv: Vec<OsString>) -> Result<ExitCode, Error> {
    let a = match parse(argv)? {
        Parsed::Run(a) => a,
        Parsed::Exit(c) => return Ok(c),
    };
    let mut req = Request::new(PathBuf::from(&a.image), PathBuf::from(&a.target));
    options::apply(&mut req, &a.opts, a.sloppy)?;
    if req.basedirs.is_empty() {
        return Err(Error::usage("missing basedir= option: where are the objects?"));
    }
    validate(&req)?;
    if let Some(ns) = &a.namespace {
        enter_namespace(ns)?;
    }
    if a.fake {
        if a.verbose {
            println!(
                "mount.composefs: would mount {} on {}",
                req.image.display(),
                req.mountpoint.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = mount_image(&req)?;
    if a.verbose {
        let how = match out.erofs_source {
            Some(s) => format!("{}, erofs from {s}", out.backend),
            None => out.backend.to_string(),
        };
        println!(
            "mount.composefs: {} mounted on {} ({how})",
            req.image.display(),
            out.mountpoint.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mount.composefs: {e}");
            ExitCode::from(e.exit_status() as u8)
        }
    }
}
