// SPDX-License-Identifier: MIT OR Apache-2.0
//! Loading the few kernel modules a composefs root needs without starting modprobe.
//!
//! Each program started in the initramfs costs under QEMU/TCG, and modprobe (kmod with its
//! compression and crypto libraries) was most of what remained of the root's mount. What it does
//! for us is small: a name is a module of modules.dep or an alias of modules.alias (every module
//! of it, as `modprobe -a` loads them), else built in or absent (nothing to do); its
//! modules.softdep `pre:` modules and its modules.dep dependencies go first, then the module
//! itself by finit_module, which decompresses .ko.xz/.ko.zst/.ko.gz in the kernel
//! (MODULE_INIT_COMPRESSED_FILE, CONFIG_MODULE_DECOMPRESS). A module already loaded
//! (/sys/module/NAME, or EEXIST) is skipped; one the kernel refuses with EPERM (module_blacklist=
//! on the command line, signature enforcement) or ENODEV (a CPU without the feature) did not
//! come, and modprobe -q would not say anything either.
//!
//! What modprobe would take from its configuration is modprobe's to apply: when modprobe.d (its
//! `*.conf` files) has an `options`, `install`, `remove`, `blacklist`, `softdep` or `alias` line
//! for a module of the plan or a name asked for, or the kernel command line a `MODULE.param` or
//! `modprobe.blacklist=` naming one, nothing is loaded here and the names go to modprobe. So do
//! names this cannot do itself (no modules.dep, a decompression this kernel lacks, any other
//! error). Left out otherwise: alias patterns with wildcards, softdep `post:`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The text of the index files depmod writes (modules.alias and modules.softdep optional).
pub struct Index {
    dir: PathBuf,
    dep: String,
    alias: String,
    softdep: String,
}

/// Module names compare with `-` and `_` the same (kmod writes `_`).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/erofs/erofs.ko.xz` -> `erofs`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    norm(base.split(".ko").next().unwrap_or(base))
}

fn compressed(path: &str) -> bool {
    [".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|s| path.ends_with(s))
}

impl Index {
    /// The index of /lib/modules/RELEASE; None without a readable modules.dep.
    pub fn open(dir: PathBuf) -> Option<Self> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let dep = std::fs::read_to_string(dir.join("modules.dep")).ok()?;
        Some(Index {
            alias: read("modules.alias"),
            softdep: read("modules.softdep"),
            dep,
            dir,
        })
    }

    #[cfg(test)]
    fn from_texts(dep: &str, alias: &str, softdep: &str) -> Self {
        Index {
            dir: PathBuf::from("/lib/modules/test"),
            dep: dep.into(),
            alias: alias.into(),
            softdep: softdep.into(),
        }
    }

    /// modules.dep's line of module `name`: (its path, its dependencies' paths).
    fn dep_line(&self, name: &str) -> Option<(&str, Vec<&str>)> {
        self.dep.lines().find_map(|l| {
            let (path, deps) = l.split_once(':')?;
            (module_name(path) == name).then(|| (path.trim(), deps.split_whitespace().collect()))
        })
    }

    /// The modules a name stands for: itself if modules.dep has it, else every module of that
    /// alias; none when it is built in or absent.
    fn resolve(&self, name: &str) -> Vec<String> {
        let n = norm(name);
        if self.dep_line(&n).is_some() {
            return vec![n];
        }
        let mut out: Vec<String> = Vec::new();
        for l in self.alias.lines() {
            let mut w = l.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                let m = norm(m);
                if a == name && !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// modules.softdep's `pre:` names of module `name`.
    fn soft_pre(&self, name: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for l in self.softdep.lines() {
            let mut w = l.split_whitespace();
            if w.next() != Some("softdep") || w.next().map(norm).as_deref() != Some(name) {
                continue;
            }
            let mut pre = false;
            for t in w {
                match t {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    _ if pre => out.push(t),
                    _ => {}
                }
            }
        }
        out
    }

    /// The files to load, in order, for the names asked for (dependencies first, each file once).
    pub fn plan(&self, names: &[&str]) -> Vec<PathBuf> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            for m in self.resolve(name) {
                self.visit(&m, &mut seen, &mut order, 0);
            }
        }
        order
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<PathBuf>, depth: usize) {
        if depth > 32 || !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, deps)) = self.dep_line(name) else {
            return; // built in, or not here
        };
        for pre in self.soft_pre(name) {
            for m in self.resolve(pre) {
                self.visit(&m, seen, order, depth + 1);
            }
        }
        for d in deps {
            self.visit(&module_name(d), seen, order, depth + 1);
        }
        order.push(self.dir.join(path));
    }
}

/// Where modprobe reads its configuration (kmod's directories; only `*.conf` files count).
const CONF_DIRS: [&str; 5] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
];

/// The text of every modprobe.d `*.conf` file there is (unreadable ones count as configuring
/// everything: modprobe decides then).
fn read_confs() -> Result<Vec<String>, ()> {
    let mut out = Vec::new();
    for dir in CONF_DIRS {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".conf") {
                out.push(std::fs::read_to_string(e.path()).map_err(|_| ())?);
            }
        }
    }
    Ok(out)
}

/// Whether modprobe's configuration says anything of `names` (normalised module names and the
/// names asked for): a modprobe.d line of `confs` or a parameter of `cmdline`.
fn configured(names: &HashSet<String>, confs: &[String], cmdline: &str) -> bool {
    let named = |w: &str| names.contains(w) || names.contains(&norm(w));
    for text in confs {
        // A backslash at the end of a line continues it (kmod); `#` starts a comment line.
        let text = text.replace("\\\n", " ");
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("options" | "install" | "remove" | "blacklist" | "softdep" | "alias"), Some(m)) if named(m) => {
                    return true
                }
                _ => {}
            }
        }
    }
    cmdline.split_whitespace().any(|arg| {
        let key = arg.split('=').next().unwrap_or(arg);
        if key == "modprobe.blacklist" {
            return arg.split_once('=').is_some_and(|(_, v)| v.split(',').any(named));
        }
        match key.split_once('.') {
            Some((m, _)) => named(m) && !super::config::CMDLINE_KEYS.contains(&key),
            None => false,
        }
    })
}

/// What loading a list of modules came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Everything loaded, already there, built in, unknown or refused (EPERM).
    Done,
    /// Not done here: hand the names to modprobe.
    Modprobe,
}

const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

fn load_file(path: &Path) -> Result<(), rustix::io::Errno> {
    let name = module_name(&path.to_string_lossy());
    if Path::new("/sys/module").join(&name).exists() {
        return Ok(());
    }
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let flags = if compressed(&path.to_string_lossy()) {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match rustix::system::finit_module(&fd, c"", flags) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::EXIST => Ok(()),
        Err(e) => Err(e),
    }
}

/// What loading needs, read once for the whole boot: the running kernel's module index (None
/// without a readable modules.dep), modprobe's configuration (Err when a file of it is
/// unreadable) and the kernel command line (as the caller read it for its own settings).
pub struct Loader {
    index: Option<Index>,
    confs: Result<Vec<String>, ()>,
    cmdline: String,
}

impl Loader {
    pub fn open(cmdline: &str) -> Loader {
        let release = rustix::system::uname();
        let release = release.release().to_string_lossy().into_owned();
        Loader {
            index: Index::open(Path::new("/lib/modules").join(release)),
            confs: read_confs(),
            cmdline: cmdline.to_string(),
        }
    }

    /// Load `names` (module names or aliases) as `modprobe -q -a` would.
    pub fn load(&self, names: &[&str]) -> Loaded {
        let (Some(index), Ok(confs)) = (&self.index, &self.confs) else {
            return Loaded::Modprobe;
        };
        let plan = index.plan(names);
        let mut concerned: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
        concerned.extend(plan.iter().map(|p| module_name(&p.to_string_lossy())));
        if configured(&concerned, confs, &self.cmdline) {
            return Loaded::Modprobe;
        }
        for path in plan {
            match load_file(&path) {
                // Refused (EPERM: module_blacklist=, unsigned under lockdown; ENODEV: a
                // CPU-specific module on a CPU without the feature): this one did not come, as
                // with modprobe -q; the caller looks at what is there.
                Ok(()) | Err(rustix::io::Errno::PERM | rustix::io::Errno::NODEV) => {}
                Err(_) => return Loaded::Modprobe,
            }
        }
        Loaded::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/crypto/sha256-ssse3.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/block/loop.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/lib/crc16.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/fs/jbd2/jbd2.ko.xz:
updates/composefs.ko:
";
    const ALIAS: &str = "\
alias crypto-sha256-ni sha256_ssse3
alias crypto-sha256 sha256_ssse3
alias sha256 sha256_ssse3
alias cpu:type:x86,ven*fam*mod*:feature:*0089* sha256_ssse3
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_intel
alias fs-overlay overlay
alias fs-erofs erofs
alias devname:loop-control loop
alias fs-composefs composefs
";
    const SOFTDEP: &str = "softdep libcrc32c pre: crypto-crc32c\nsoftdep ext4 pre: crc32c post: nothing\n";

    #[test]
    fn plans() {
        let ix = Index::from_texts(DEP, ALIAS, SOFTDEP);
        let d = "/lib/modules/test/";
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["crypto-sha256", "overlay", "composefs"],
                &[
                    "kernel/arch/x86/crypto/sha256-ssse3.ko.xz",
                    "kernel/fs/overlayfs/overlay.ko.xz",
                    "updates/composefs.ko",
                ],
            ),
            // softdep pre: (an alias of two modules) before the dependency, the dependency before erofs
            (
                &["erofs", "loop"],
                &[
                    "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                    "kernel/crypto/crc32c_generic.ko.xz",
                    "kernel/lib/libcrc32c.ko.xz",
                    "kernel/fs/erofs/erofs.ko.xz",
                    "kernel/drivers/block/loop.ko.xz",
                ],
            ),
            (
                &["ext4"],
                &[
                    "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                    "kernel/lib/crc16.ko.xz",
                    "kernel/fs/mbcache.ko.xz",
                    "kernel/fs/jbd2/jbd2.ko.xz",
                    "kernel/fs/ext4/ext4.ko.xz",
                ],
            ),
            // names with - or _, aliases of filesystems, each file once
            (
                &["sha256-ssse3", "sha256_ssse3", "fs-erofs", "erofs"],
                &[
                    "kernel/arch/x86/crypto/sha256-ssse3.ko.xz",
                    "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                    "kernel/crypto/crc32c_generic.ko.xz",
                    "kernel/lib/libcrc32c.ko.xz",
                    "kernel/fs/erofs/erofs.ko.xz",
                ],
            ),
            // built in, unknown, a wildcard alias asked for literally: nothing
            (&["sha256_generic", "vfat", "nosuch", "cpu:type:x86"], &[]),
        ];
        for (names, want) in cases {
            let got = ix.plan(names);
            let want: Vec<PathBuf> = want.iter().map(|p| PathBuf::from(format!("{d}{p}"))).collect();
            assert_eq!(got, want, "{names:?}");
        }
        assert!(compressed("a/b.ko.zst") && !compressed("updates/composefs.ko"));
    }

    /// What makes the loading modprobe's: configuration naming a module of the plan (or a name
    /// asked for), and nothing else.
    #[test]
    fn configuration_goes_to_modprobe() {
        let names: HashSet<String> = ["overlay", "fs-erofs", "erofs", "libcrc32c", "sha256_ssse3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Debian's own modprobe.d (kmod, systemd, fbdev blacklists): none of ours.
        let debian = "# comment\nalias char-major-10-175 agpgart\nalias block-major-7-* loop\n\
                      options bonding max_bonds=0\nblacklist vga16fb\n";
        let cases: &[(&str, &str, bool)] = &[
            ("", "", false),
            (debian, "root=/dev/vda1 ro quiet", false),
            // our own settings look like parameters of the composefs module
            ("", "composefs=abc composefs.etc=transient composefs.var=bind", false),
            ("options overlay metacopy=on\n", "", true),
            ("  options   overlay redirect_dir=on\n", "", true),
            ("# options overlay metacopy=on\n", "", false),
            ("options overlayfs x=1\n", "", false),
            ("install erofs /bin/false\n", "", true),
            ("remove erofs /bin/true\n", "", true),
            ("blacklist libcrc32c\n", "", true),
            ("blacklist sha256-ssse3\n", "", true),
            ("softdep overlay pre: nls_utf8\n", "", true),
            ("alias fs-erofs squashfs\n", "", true),
            ("alias fs-squashfs erofs\n", "", false),
            // a continued line is one line
            ("options \\\n overlay index=off\n", "", true),
            ("", "overlay.metacopy=Y", true),
            ("", "sha256-ssse3.x=1", true),
            ("", "ext4.x=1 nfs.y", false),
            ("", "modprobe.blacklist=nouveau,erofs", true),
            ("", "modprobe.blacklist=nouveau", false),
        ];
        for (conf, cmdline, want) in cases {
            assert_eq!(
                configured(&names, &[conf.to_string()], cmdline),
                *want,
                "{conf:?} {cmdline:?}"
            );
        }
    }
}
