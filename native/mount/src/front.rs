// SPDX-License-Identifier: MIT OR Apache-2.0
//! `cfsctl`, the executable: a native front for the Python CLI.
//!
//! Container engines and scripts run `cfsctl mount` and `cfsctl umount` once per container; an
//! interpreter, click and the package cost far more than the mount itself. So the `cfsctl` on
//! PATH is this binary. It handles `mount` and `umount` itself when the command line is one it
//! fully understands, and for everything else (every other command, `--help`, shell completion,
//! FUSE, `--remote`, any option or value it does not know, any argument that is not printable
//! ASCII) it `exec`s the Python CLI with the same arguments.
//!
//! `mount NAME MNT` (an image of a repository, by ref name or digest) is looked up by the rules
//! the Python CLI uses too (`composefs_base::repo`: names, refs, trust, the digest check, the
//! shared lock held for the lookup). A repository whose meta.json is not byte for byte what
//! `cfsctl init` writes, a failed lookup of a NAME that is also a file here (the Python CLI's
//! hint), or a lock log asked for (`CFS_LOCK_LOG`, the Python CLI's instrumentation) go to Python.
//!
//! The protocol: the Python CLI (`composefs.cli`, installed as `cfsctl-py` beside this binary,
//! or the program `$CFSCTL_PYTHON_CLI` names) owns every rule; what this front does must be what
//! it would do, byte for byte: stdout, stderr (`cfsctl: error: WHAT`, `{"error": ...}` under
//! `--json`), exit status and the mount left behind. The mount itself is the one implementation
//! the Python path calls too (this crate's `mount_image`); the front only parses the command line
//! the way click does and prints what the Python path prints. Anything it is unsure of goes to
//! Python *before* anything is done, so a case handed over is never half done.
//! tests/test_front.py runs both paths over a table of command lines and compares them.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use composefs_base::repo::{self, Repo};
use composefs_mount::{mount_image, options, Backend, Error, Outcome, Request};

/// The Python CLI the front hands a command line to, beside the front itself.
const PYTHON_CLI: &str = "cfsctl-py";

/// What the front decided to do with a command line.
enum Plan {
    /// Not one the front fully understands: the Python CLI runs it.
    Python,
    Mount(MountArgs),
    Umount(UmountArgs),
}

struct MountArgs {
    image: OsString,
    mountpoint: OsString,
    basedirs: Vec<OsString>,
    digest: Option<String>,
    verity_check: Option<u8>,
    backend: Backend,
    upperdir: Option<OsString>,
    workdir: Option<OsString>,
    options: Vec<OsString>,
    /// `--repo` of the command (the last one given), and the global one before the command.
    repo: Option<OsString>,
    global_repo: Option<OsString>,
    json: bool,
}

struct UmountArgs {
    mountpoint: OsString,
    lazy: bool,
    json: bool,
}

/// An option of the sub-command and its value, as click splits them: `--name VALUE`,
/// `--name=VALUE`, `-o VALUE`, `-oVALUE`. None: the argument is not this option, or its value
/// is missing (click would say so: Python).
fn take_value<'a>(
    arg: &'a [u8],
    it: &mut std::slice::Iter<'a, OsString>,
    long: &[u8],
    short: Option<u8>,
) -> Option<Option<&'a [u8]>> {
    if arg == long || short.is_some_and(|s| arg == [b'-', s]) {
        return Some(it.next().map(|v| v.as_bytes()));
    }
    if arg.len() > long.len() && arg.starts_with(long) && arg[long.len()] == b'=' {
        return Some(Some(&arg[long.len() + 1..]));
    }
    if let Some(s) = short {
        if arg.len() > 2 && arg[0] == b'-' && arg[1] == s {
            return Some(Some(&arg[2..]));
        }
    }
    None
}

fn text(v: &[u8]) -> String {
    // Every argument was checked to be printable ASCII.
    String::from_utf8_lossy(v).into_owned()
}

/// Parse `cfsctl [GLOBAL...] mount|umount ARGS...`; Python for anything else.
fn plan(args: &[OsString]) -> Plan {
    // Only printable ASCII, no empty argument, no `--`: the cases where click's and Python's
    // handling of text (escaping, `or` on empty strings, end of options) need no second copy here.
    if args
        .iter()
        .any(|a| a.is_empty() || a == "--" || !a.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
    {
        return Plan::Python;
    }
    if std::env::var_os("_CFSCTL_COMPLETE").is_some() {
        return Plan::Python;
    }
    let mut json = false;
    let mut it = args.iter();
    // Global options before the command: --json and --repo (mount only; unused for an image file).
    let mut global_repo = None;
    let command = loop {
        let Some(a) = it.next() else { return Plan::Python };
        let b = a.as_bytes();
        if b == b"--json" {
            json = true;
        } else if let Some(v) = take_value(b, &mut it, b"--repo", None) {
            // An empty value means the default to click; that is Python's to spell out.
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            global_repo = Some(OsStr::from_bytes(v).to_os_string());
        } else {
            break b;
        }
    };
    let rest: Vec<OsString> = it.cloned().collect();
    match command {
        b"mount" => plan_mount(&rest, json, global_repo),
        b"umount" if global_repo.is_none() => plan_umount(&rest, json),
        _ => Plan::Python,
    }
}

fn plan_mount(args: &[OsString], mut json: bool, global_repo: Option<OsString>) -> Plan {
    let mut pos = Vec::new();
    let mut m = MountArgs {
        image: OsString::new(),
        mountpoint: OsString::new(),
        basedirs: Vec::new(),
        digest: None,
        verity_check: None,
        backend: Backend::Auto,
        upperdir: None,
        workdir: None,
        options: Vec::new(),
        repo: None,
        global_repo,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if b == b"-" || b[0] != b'-' {
            pos.push(a.clone());
            continue;
        }
        if b == b"--json" {
            json = true;
            continue;
        }
        if let Some(v) = take_value(b, &mut it, b"--basedir", None) {
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            m.basedirs.push(OsStr::from_bytes(v).to_os_string());
        } else if let Some(v) = take_value(b, &mut it, b"--options", Some(b'o')) {
            let Some(v) = v else { return Plan::Python };
            m.options.push(OsStr::from_bytes(v).to_os_string());
        } else if let Some(v) = take_value(b, &mut it, b"--digest", None) {
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            m.digest = Some(text(v));
        } else if let Some(v) = take_value(b, &mut it, b"--verity-check", None) {
            m.verity_check = match v {
                Some(b"0") => Some(0),
                Some(b"1") => Some(1),
                Some(b"2") => Some(2),
                _ => return Plan::Python,
            };
        } else if let Some(v) = take_value(b, &mut it, b"--backend", None) {
            m.backend = match v {
                Some(b"auto") => Backend::Auto,
                Some(b"kernel") => Backend::Kernel,
                Some(b"overlay") => Backend::Overlay,
                _ => return Plan::Python, // fuse, or a value click refuses
            };
        } else if let Some(v) = take_value(b, &mut it, b"--upperdir", None) {
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            m.upperdir = Some(OsStr::from_bytes(v).to_os_string());
        } else if let Some(v) = take_value(b, &mut it, b"--workdir", None) {
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            m.workdir = Some(OsStr::from_bytes(v).to_os_string());
        } else if let Some(v) = take_value(b, &mut it, b"--repo", None) {
            // Names the repository of NAME|DIGEST; an image file does not use it.
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return Plan::Python;
            };
            m.repo = Some(OsStr::from_bytes(v).to_os_string());
        } else {
            return Plan::Python; // --fuse, --remote, --help, hidden test options, unknown ones
        }
    }
    let Ok([image, mountpoint]) = <[OsString; 2]>::try_from(pos) else {
        return Plan::Python;
    };
    // click.Path(file_okay=False): an existing mount point that is a file, or one that cannot be
    // read, is a usage error.
    if let Ok(st) = std::fs::metadata(&mountpoint) {
        if st.is_file() || rustix::fs::access(&mountpoint, rustix::fs::Access::READ_OK).is_err() {
            return Plan::Python;
        }
    }
    m.image = image;
    m.mountpoint = mountpoint;
    m.json = json;
    Plan::Mount(m)
}

fn plan_umount(args: &[OsString], mut json: bool) -> Plan {
    let mut pos = Vec::new();
    let mut lazy = false;
    for a in args {
        match a.as_bytes() {
            b"--json" => json = true,
            b"-l" | b"--lazy" => lazy = true,
            b if b == b"-" || b[0] != b'-' => pos.push(a.clone()),
            _ => return Plan::Python,
        }
    }
    let Ok([mountpoint]) = <[OsString; 1]>::try_from(pos) else {
        return Plan::Python;
    };
    // Nothing is looked up here: the mount point is found in mountinfo (`run_umount`), since a
    // stat of it would wait for a FUSE daemon that may be stopped.
    Plan::Umount(UmountArgs { mountpoint, lazy, json })
}

/// What the front does with a planned mount: `Err(None)` hands it to Python untouched.
fn run_mount(m: MountArgs) -> Result<Option<String>, Option<Error>> {
    // What `cfsctl mount` (cmd_mount.py) does for an image file, in its order: the -o options
    // first, the flags adding to them and winning where both say something.
    let mut req = Request::new(PathBuf::from(&m.image), PathBuf::from(&m.mountpoint));
    options::apply(&mut req, &m.options, false).map_err(Some)?;
    let mut basedirs: Vec<PathBuf> = m.basedirs.iter().map(PathBuf::from).collect();
    basedirs.append(&mut req.basedirs);
    // The one rule for IMAGE (cmd_mount.is_image_path): a file when it holds a '/' or object
    // directories are given, else a name or digest in the repository.
    let from_repo = !m.image.as_bytes().contains(&b'/') && basedirs.is_empty();
    if basedirs.is_empty() && !from_repo {
        return Err(None); // an image file without objects: Python words it
    }
    if m.backend != Backend::Auto {
        req.backend = m.backend;
    }
    // FUSE: the default for a user who is not root.
    if req.backend == Backend::Auto && !rustix::process::geteuid().is_root() {
        return Err(None);
    }
    let mut repo_digest = None;
    if from_repo {
        let (image, objects, digest) = lookup(&m)?;
        req.image = image;
        req.image_nofollow = true;
        basedirs.push(objects);
        repo_digest = digest;
    }
    req.basedirs = basedirs;
    if let Some(d) = &m.digest {
        req.digest = Some(options::parse_digest(d).map_err(Some)?);
    }
    if req.digest.is_none() {
        req.digest = repo_digest;
    }
    if m.verity_check.is_some() {
        req.verity_check = m.verity_check;
    }
    if let Some(u) = m.upperdir {
        req.upperdir = Some(u.into());
    }
    if let Some(w) = m.workdir {
        req.workdir = Some(w.into());
    }
    let out = mount_image(&req).map_err(Some)?;
    Ok(m.json.then(|| mount_json(&out)))
}

/// The repository `cfsctl mount` uses, by the Python CLI's rule (cli.py `GlobalOption`): its own
/// `--repo`, else the global `--repo` before the command, else `$CFS_REPO`, else the default for
/// root (the front runs repository mounts for root only). `env` is `$CFS_REPO`.
fn repo_path(m: &MountArgs, env: Option<OsString>) -> PathBuf {
    let env = env.filter(|v| !v.is_empty());
    let given = m.repo.clone().or_else(|| m.global_repo.clone()).or(env);
    given.map_or_else(|| PathBuf::from("/var/lib/composefs"), PathBuf::from)
}

/// NAME|DIGEST in the repository, as cmd_mount.py and repository.py look it up: (image file,
/// object directory, digest for the mount when fs-verity is to check it). `Err(None)`: a case
/// the front leaves to Python, handed over before anything is done.
fn lookup(m: &MountArgs) -> Result<(PathBuf, PathBuf, Option<String>), Option<Error>> {
    if std::env::var_os("CFS_LOCK_LOG").is_some() {
        return Err(None);
    }
    // A failed lookup of a NAME that is also a file here gets Python's hint (write ./NAME); the
    // lookup changed nothing Python's own would not (it sweeps the same dead temporaries).
    let hint = |e: repo::Error| match e {
        repo::Error::User { .. } if Path::new(&m.image).exists() => None,
        e => repo_error(e),
    };
    let r = Repo::at(&repo_path(m, std::env::var_os("CFS_REPO"))).map_err(hint)?;
    if r.meta().map_err(hint)? != repo::META {
        return Err(None); // valid JSON written some other way: Python reads it
    }
    r.check_layout().map_err(hint)?;
    let lock = r.lock(false).map_err(hint)?;
    let (image, digest) = r.image_for_mount(m.image.as_bytes()).map_err(hint)?;
    drop(lock);
    Ok((image, r.objects(), digest))
}

/// A repository error as the Python CLI prints it: `CfsError` as it is, an `OSError` as
/// `describe_oserror` words it (its path, then the system's words).
fn repo_error(e: repo::Error) -> Option<Error> {
    Some(match e {
        repo::Error::User { message, path } => Error::failure(message, path.as_deref()),
        repo::Error::Io { source, path } => Error::failure(strerror(&source), Some(&path)),
    })
}

/// The system's words for an error, without the " (os error N)" Rust adds.
fn strerror(e: &std::io::Error) -> String {
    let why = match e.raw_os_error() {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    why.split(" (os error").next().unwrap_or_default().to_string()
}

/// `MountResult.to_json()` as `json.dumps(..., indent=2)` prints it (mount.py).
fn mount_json(o: &Outcome) -> String {
    let s = |v: &str| json_str(v.as_bytes());
    let p = |v: &Path| json_str(v.as_os_str().as_bytes());
    let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    let basedirs = if o.basedirs.is_empty() {
        "[]".to_string()
    } else {
        let items: Vec<String> = o.basedirs.iter().map(|b| format!("    {}", p(b))).collect();
        format!("[\n{}\n  ]", items.join(",\n"))
    };
    let fields = [
        ("backend", s(o.backend)),
        ("image", p(&o.image)),
        ("mountpoint", p(&o.mountpoint)),
        ("basedirs", basedirs),
        ("verity_check", o.verity_check.to_string()),
        ("digest", opt(o.digest.as_deref().map(s))),
        ("writable", o.writable.to_string()),
        ("erofs_source", opt(o.erofs_source.map(s))),
        ("loop_device", opt(o.loop_device.as_deref().map(s))),
        ("mount_api", opt(o.mount_api.map(s))),
        ("layers_by", opt(o.layers_by.map(s))),
        ("idmap", opt(o.idmap.as_deref().map(p))),
    ];
    json_object(&fields)
}

fn json_object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("  \"{k}\": {v}")).collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}

/// A JSON string as Python's `json.dumps` writes one (ensure_ascii) for a str that
/// `os.fsdecode` made of `bytes`: undecodable bytes are the surrogates U+DC80..U+DCFF.
fn json_str(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    let push = |c: u32, out: &mut String| match c {
        0x22 => out.push_str("\\\""),
        0x5c => out.push_str("\\\\"),
        0x0a => out.push_str("\\n"),
        0x0d => out.push_str("\\r"),
        0x09 => out.push_str("\\t"),
        0x08 => out.push_str("\\b"),
        0x0c => out.push_str("\\f"),
        0x20..=0x7e => out.push(char::from(c as u8)),
        0x10000.. => {
            let v = c - 0x10000;
            out.push_str(&format!("\\u{:04x}\\u{:04x}", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff)));
        }
        _ => out.push_str(&format!("\\u{c:04x}")),
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push(c as u32, &mut out);
        }
        for &b in chunk.invalid() {
            push(0xdc00 + b as u32, &mut out);
        }
    }
    out.push('"');
    out
}

/// `errors.printable`: control characters and undecodable bytes as backslash escapes.
fn printable(text: &[u8]) -> String {
    let mut out = String::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `cli.fail`: one line on stderr, JSON under --json; exit status 1.
fn fail(what: &[u8], json: bool) -> ExitCode {
    let t = printable(what);
    let line = if json {
        format!("{{\"error\": {}}}", json_str(t.as_bytes()))
    } else {
        format!("cfsctl: error: {t}")
    };
    let _ = writeln!(std::io::stderr(), "{line}");
    ExitCode::from(1)
}

fn error_text(e: &Error) -> Vec<u8> {
    // CfsError's str(): "PATH: MESSAGE" (PATH as given).
    let mut t = Vec::new();
    if let Some(p) = &e.path {
        t.extend_from_slice(p.as_os_str().as_bytes());
        t.extend_from_slice(b": ");
    }
    t.extend_from_slice(e.message.as_bytes());
    t
}

/// One line of /proc/self/mountinfo: (mount point, fstype, source), unescaped.
fn mountinfo_fields(line: &[u8]) -> Option<(Vec<u8>, &[u8], Vec<u8>)> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let left: Vec<&[u8]> = line[..sep].split(|&c| c == b' ').collect();
    let right: Vec<&[u8]> = line[sep + 3..].split(|&c| c == b' ').collect();
    Some((
        unescape_octal(left.get(4)?),
        right.first()?,
        unescape_octal(right.get(1)?),
    ))
}

fn unescape_octal(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 4 <= f.len() && f[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = f[i + 1..i + 4].iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// Where a mount on `path` is listed in mountinfo, as mount.py's `_listed_path` finds it: the
/// parent resolved, the last component not looked at (a stat of a mount point asks the filesystem
/// mounted there, and a stopped FUSE daemon never answers). A path that is not listed there goes to
/// Python, which resolves it in full.
fn listed_path(path: &Path) -> Option<PathBuf> {
    let Some(name) = path.file_name() else {
        return std::fs::canonicalize(path).ok(); // `/`, or a path ending in `..`
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

/// What `cfsctl umount` (mount.py `unmount`) does for a composefs mount as root; `Err(None)`:
/// Python's case (a FUSE mount, another filesystem, not a mount point, not root).
fn run_umount(u: UmountArgs) -> Result<Option<String>, Option<Error>> {
    if !rustix::process::geteuid().is_root() {
        return Err(None);
    }
    let target = listed_path(Path::new(&u.mountpoint)).ok_or(None)?;
    let info = std::fs::read("/proc/self/mountinfo").map_err(|_| None)?;
    let mut found = None;
    for line in info.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let (mnt, fstype, source) = mountinfo_fields(line).ok_or(None)?;
        if mnt == target.as_os_str().as_bytes() {
            found = Some((mnt, fstype.to_vec(), source));
        }
    }
    let (mnt, fstype, source) = found.ok_or(None)?;
    let backend = match (fstype.as_slice(), source.as_slice()) {
        (b"composefs", _) => "kernel",
        (b"overlay", b"composefs") => "overlay",
        _ => return Err(None),
    };
    let mnt = PathBuf::from(OsString::from_vec(mnt));
    if let Err(e) = composefs_mount::umount(&mnt, u.lazy) {
        let message = if e.errno == libc::EBUSY {
            "mount is busy (files open or a process inside); close them or use --lazy".to_string()
        } else {
            let why = std::io::Error::from_raw_os_error(e.errno).to_string();
            let why = why.split(" (os error").next().unwrap_or_default().to_string();
            format!("umount failed: umount: {why}")
        };
        return Err(Some(Error::failure(message, Some(Path::new(&u.mountpoint)))));
    }
    Ok(u.json.then(|| {
        json_object(&[
            ("mountpoint", json_str(mnt.as_os_str().as_bytes())),
            ("fstype", json_str(&fstype)),
            ("backend", json_str(backend.as_bytes())),
            ("lazy", u.lazy.to_string()),
        ])
    }))
}

/// Hand the command line to the Python CLI; returns only if it could not be started.
fn exec_python(args: &[OsString]) -> ExitCode {
    let program = match std::env::var_os("CFSCTL_PYTHON_CLI") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => beside_self(PYTHON_CLI),
    };
    let err = std::process::Command::new(&program).args(args).exec();
    let _ = writeln!(
        std::io::stderr(),
        "cfsctl: error: {}: cannot run the Python CLI: {}",
        printable(program.as_os_str().as_bytes()),
        err.to_string().split(" (os error").next().unwrap_or_default()
    );
    ExitCode::from(1)
}

/// `name` in the directory this executable was installed in: /proc/self/exe, or where /proc is
/// missing (a bare chroot) the path it was run by (argv[0], else found on PATH) with symlinks
/// resolved, so a `cfsctl` linked from another directory still finds the Python CLI beside the
/// real one, however it was called (absolute path, relative path, bare name).
fn beside_self(name: &str) -> PathBuf {
    let exe = std::env::current_exe().ok().or_else(|| {
        let argv0 = PathBuf::from(std::env::args_os().next()?);
        if argv0.as_os_str().as_bytes().contains(&b'/') {
            return std::fs::canonicalize(&argv0).ok().or(Some(argv0));
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join(&argv0))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| !m.file_type().is_dir() && !m.file_type().is_fifo())
            })
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
    });
    exe.and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join(name)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let result = match plan(&args) {
        Plan::Python => return exec_python(&args),
        Plan::Mount(m) => run_mount(m),
        Plan::Umount(u) => run_umount(u),
    };
    match result {
        Ok(out) => {
            if let Some(out) = out {
                let mut stdout = std::io::stdout().lock();
                if writeln!(stdout, "{out}").and_then(|_| stdout.flush()).is_err() {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(Some(e)) => fail(&error_text(&e), json),
        Err(None) => exec_python(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn json_strings_are_pythons() {
        // What json.dumps(os.fsdecode(b)) prints for each byte string.
        let cases: &[(&[u8], &str)] = &[
            (b"plain/path", r#""plain/path""#),
            (b"q\"b\\s", r#""q\"b\\s""#),
            (b"\n\r\t\x08\x0c", r#""\n\r\t\b\f""#),
            (b"\x01\x1f\x7f", r#""\u0001\u001f\u007f""#),
            ("é€".as_bytes(), r#""\u00e9\u20ac""#),
            ("😀".as_bytes(), r#""\ud83d\ude00""#),
            (b"a\xffb\xc3", r#""a\udcffb\udcc3""#),
        ];
        for (bytes, want) in cases {
            assert_eq!(json_str(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn printable_escapes_what_python_escapes() {
        assert_eq!(printable(b"a b/c"), "a b/c");
        assert_eq!(printable(b"x\ny\tz\r\x1b\x7f"), "x\\ny\\tz\\r\\x1b\\x7f");
        assert_eq!(printable(b"bad\xff"), "bad\\xff");
    }

    #[test]
    fn mountinfo_lines_are_split_and_unescaped() {
        let line = b"36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - overlay composefs ro,lowerdir=x";
        let (mnt, fstype, source) = mountinfo_fields(line).unwrap();
        assert_eq!(
            (mnt.as_slice(), fstype, source.as_slice()),
            (&b"/mnt/with space"[..], &b"overlay"[..], &b"composefs"[..])
        );
        assert!(mountinfo_fields(b"no separator").is_none());
    }

    #[test]
    fn listed_paths_leave_the_last_component_alone() {
        let cwd = std::env::current_dir().unwrap();
        let cases: &[(&str, PathBuf)] = &[
            ("/nonexistent-cfs/mnt", PathBuf::new()), // a missing parent: Python words it
            ("/tmp/nonexistent-cfs-mnt", PathBuf::from("/tmp/nonexistent-cfs-mnt")),
            ("/tmp/nonexistent-cfs-mnt/", PathBuf::from("/tmp/nonexistent-cfs-mnt")),
            ("/tmp/./nonexistent-cfs-mnt", PathBuf::from("/tmp/nonexistent-cfs-mnt")),
            ("nonexistent-cfs-mnt", cwd.join("nonexistent-cfs-mnt")),
            ("/", PathBuf::from("/")),
            ("/tmp/..", PathBuf::from("/")),
        ];
        for (path, want) in cases {
            let got = listed_path(Path::new(path)).unwrap_or_default();
            assert_eq!(&got, want, "{path}");
        }
    }

    #[test]
    fn the_command_line_beats_the_environment_for_the_repository() {
        // (command line, $CFS_REPO, repository used): the command's own --repo, else the one
        // before the command, else the environment, else the default.
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&["mount", "app", "/", "--repo", "/a"], None, "/a"),
            (&["mount", "app", "/", "--repo", "/a"], Some("/e"), "/a"),
            (&["--repo", "/g", "mount", "app", "/"], None, "/g"),
            (&["--repo", "/g", "mount", "app", "/"], Some("/e"), "/g"),
            (&["--repo", "/g", "mount", "app", "/", "--repo", "/a"], None, "/a"),
            (&["--repo", "/g", "mount", "app", "/", "--repo", "/a"], Some("/e"), "/a"),
            (&["--repo=/g", "--repo", "/h", "mount", "app", "/"], Some("/e"), "/h"),
            (&["mount", "app", "/", "--repo", "/a", "--repo=/b"], Some("/e"), "/b"),
            (&["mount", "app", "/"], Some("/e"), "/e"),
            (&["mount", "app", "/"], Some(""), "/var/lib/composefs"),
            (&["mount", "app", "/"], None, "/var/lib/composefs"),
        ];
        for (a, env, want) in cases {
            let Plan::Mount(m) = plan(&argv(a)) else {
                panic!("{a:?} not planned as a mount")
            };
            assert_eq!(repo_path(&m, env.map(OsString::from)), Path::new(want), "{a:?} {env:?}");
        }
    }

    #[test]
    fn only_command_lines_it_fully_understands_are_kept() {
        let native: &[&[&str]] = &[
            &["mount", "a/img.cfs", "/", "--basedir", "/o"],
            &["--json", "mount", "img.cfs", "/", "-obasedir=/o", "--backend=overlay"],
            &[
                "--repo",
                "/r",
                "mount",
                "img.cfs",
                "/",
                "--options",
                "basedir=/o",
                "--verity-check",
                "2",
            ],
            &["umount", "/", "-l", "--json"],
            &["mount", "app", "/", "--repo", "/r", "--json"],
            &["--repo=/r", "mount", "sha256:abcdef", "/"],
            // Planned without looking at the path; `run_umount` hands it over, not being listed.
            &["umount", "/nonexistent/cfs-front-test"],
        ];
        for a in native {
            assert!(!matches!(plan(&argv(a)), Plan::Python), "{a:?}");
        }
        let python: &[&[&str]] = &[
            &[],
            &["images"],
            &["--version"],
            &["mount", "img.cfs", "/", "--basedir"],
            &["mount", "img.cfs", "/", "--basedir", "/o", "--fuse"],
            &["mount", "img.cfs", "/", "--basedir", "/o", "--backend", "fuse"],
            &["mount", "img.cfs", "/", "--basedir", "/o", "--verity-check", "01"],
            &[
                "mount",
                "img.cfs",
                "/",
                "--basedir",
                "/o",
                "--remote",
                "http://127.0.0.1/",
            ],
            &["mount", "img.cfs", "/", "--basedir", "/o", "--", "x"],
            &["mount", "img.cfs", "/", "--basedir", ""],
            &["mount", "img.cfs", "/", "--basedir", "/ö"],
            &["mount", "img.cfs", "/", "extra", "--basedir", "/o"],
            &["mount", "-h"],
            &["umount", "/", "--repo", "/r"],
            &["mount", "app", "/", "--repo="],
            &["--repo=", "mount", "app", "/"],
            &["--repo", "/r", "umount", "/"],
        ];
        for a in python {
            assert!(matches!(plan(&argv(a)), Plan::Python), "{a:?}");
        }
    }
}
