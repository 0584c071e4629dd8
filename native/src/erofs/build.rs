// SPDX-License-Identifier: MIT OR Apache-2.0
//! From a tree to an image file: mkcomposefs' build flags, the writer, the image's fs-verity
//! digest and an atomic write (temporary file in the target directory, then rename).

use super::writer::{self, Options, Stats, WriteError};
use crate::tree::{mode, InodeData, Tree, ROOT};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// mkcomposefs' source filters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    /// All mtimes become 0.0.
    pub use_epoch: bool,
    /// Drop character and block devices (whiteouts included).
    pub skip_devices: bool,
    /// Drop every xattr.
    pub skip_xattrs: bool,
    /// Keep only `user.*` xattrs.
    pub user_xattrs: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--skip-xattrs and --user-xattrs conflict")]
    ConflictingFlags,
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Apply `flags` to `tree` in place.
pub fn apply_flags(tree: &mut Tree, flags: Flags) -> Result<(), BuildError> {
    if flags.skip_xattrs && flags.user_xattrs {
        return Err(BuildError::ConflictingFlags);
    }
    for ino in tree.inodes.iter_mut() {
        if flags.use_epoch {
            ino.mtime = Default::default();
        }
        if flags.skip_xattrs {
            ino.xattrs.clear();
        } else if flags.user_xattrs {
            ino.xattrs.retain(|x| x.key.starts_with(b"user."));
        }
    }
    if flags.skip_devices {
        let is_dev: Vec<bool> = tree
            .inodes
            .iter()
            .map(|i| matches!(i.file_type(), mode::S_IFCHR | mode::S_IFBLK))
            .collect();
        for ino in tree.inodes.iter_mut() {
            if let InodeData::Directory { entries } = &mut ino.data {
                entries.retain(|e| !is_dev[e.inode]);
            }
        }
        // Unreachable device inodes stay in the vector; the writer only walks entries.
    }
    let _ = ROOT;
    Ok(())
}

/// [`build`], with the tree's [`object_stats`] counted on another worker meanwhile.
pub fn build_counting(
    tree: &Tree,
    opts: &Options,
    path: Option<&Path>,
    keep_bytes: bool,
) -> Result<(Built, (u64, u64, u64)), BuildError> {
    let (built, objects) = rayon::join(|| build(tree, opts, path, keep_bytes), || object_stats(tree));
    Ok((built?, objects))
}

/// Object statistics of a tree: (distinct objects, their bytes, bytes of all object-backed
/// files counted per inode).
pub fn object_stats(tree: &Tree) -> (u64, u64, u64) {
    let mut seen: HashMap<&[u8], u64, crate::hash::fx::FastHash> =
        HashMap::with_capacity_and_hasher(tree.inodes.len(), Default::default());
    let mut reachable = vec![false; tree.inodes.len()];
    tree.walk_breadth_first(|_, e| reachable[e.inode] = true);
    let mut total = 0;
    for (i, ino) in tree.inodes.iter().enumerate() {
        if !reachable[i] {
            continue;
        }
        if let InodeData::Regular {
            inline: None,
            payload: Some(p),
            ..
        } = &ino.data
        {
            if ino.size > 0 {
                total += ino.size;
                seen.insert(p.as_slice(), ino.size);
            }
        }
    }
    (seen.len() as u64, seen.values().sum(), total)
}

/// Write `bytes` to `path` atomically: a temporary file next to it, then rename. Nothing is
/// left behind on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Fill `path` atomically with what `fill` writes into the file: a temporary file next to it,
/// flushed and renamed into place when `fill` succeeds. Nothing is left behind on error.
pub fn write_atomic_with<R>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<R>,
) -> Result<R, BuildError> {
    let io = |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::from_raw_os_error(libc::EISDIR)))?;
    sweep_stale_temporaries(&dir, name);
    let mut tmp = None;
    for attempt in 0..100u32 {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut t = dir.join(format!(
            ".{}.tmp{}-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            nonce,
            attempt
        ));
        if t.as_os_str().len() > 4000 {
            t = dir.join(format!(".cfs.tmp{}-{}-{}", std::process::id(), nonce, attempt));
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&t) {
            Ok(f) => {
                tmp = Some((t, f));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e)),
        }
    }
    let (tmp_path, mut f) = tmp.ok_or_else(|| io(std::io::Error::from_raw_os_error(libc::EEXIST)))?;
    let result = (|| -> std::io::Result<R> {
        let r = fill(&mut f)?;
        // Regular permissions (0666 & ~umask), like fopen(3) in mkcomposefs.
        let mask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o666 & !(mask as u32)))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp_path, path)?;
        Ok(r)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp_path);
        io(e)
    })
}

/// Remove the temporaries that killed writes of the same image left in `dir`
/// (`.NAME.tmp<pid>-<nonce>-<n>`, or `.cfs.tmp<pid>-…` for very long names) whose process is
/// gone. Best effort: a temporary that cannot be removed is left for the next write.
fn sweep_stale_temporaries(dir: &Path, name: &std::ffi::OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let mut own = b".".to_vec();
    own.extend_from_slice(name.as_bytes());
    own.extend_from_slice(b".tmp");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in entries.flatten() {
        let file_name = ent.file_name();
        let n = file_name.as_bytes();
        let rest = n
            .strip_prefix(own.as_slice())
            .or_else(|| n.strip_prefix(b".cfs.tmp".as_slice()));
        let Some(rest) = rest else { continue };
        let mut parts = rest.split(|&c| c == b'-');
        let pid = parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok()?.parse::<u32>().ok());
        let shaped = parts.clone().count() == 2 && parts.all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
        let Some(pid) = pid.filter(|_| shaped) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
            let _ = std::fs::remove_file(ent.path());
        }
    }
}

/// A built image: its fs-verity digest, format version and counts, and its bytes when asked.
pub struct Built {
    pub digest: [u8; 32],
    pub version: u32,
    pub stats: Stats,
    pub bytes: Option<Vec<u8>>,
}

fn to_digest(d: Vec<u8>) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&d);
    digest
}

/// Build the image of `tree` and its fs-verity digest; write it to `path` atomically when
/// given, and return its bytes with `keep_bytes`. The image is produced a chunk at a time
/// (never whole in memory unless `keep_bytes`), and each chunk is hashed and written while
/// the next one is being generated.
pub fn build(tree: &Tree, opts: &Options, path: Option<&Path>, keep_bytes: bool) -> Result<Built, BuildError> {
    writer::with_pool(opts.threads, || {
        let plan = writer::Plan::new(tree, opts)?;
        let mut kept = keep_bytes.then(|| Vec::with_capacity(plan.stats.image_size as usize));
        let digest = match path {
            Some(p) => write_atomic_with(p, |f| emit(&plan, Some(f), kept.as_mut()))?,
            None => emit(&plan, None, kept.as_mut()).map_err(|source| BuildError::Io {
                path: PathBuf::from("<memory>"),
                source,
            })?,
        };
        Ok(Built {
            digest: to_digest(digest),
            version: plan.version,
            stats: plan.stats.clone(),
            bytes: kept,
        })
    })
}

/// Generate `plan`'s image chunk by chunk; hash each chunk, and write it to `file` and/or
/// append it to `kept`, while the next chunk is generated (`rayon::join`). Returns the image's
/// fs-verity digest.
fn emit(
    plan: &writer::Plan<'_>,
    mut file: Option<&mut std::fs::File>,
    mut kept: Option<&mut Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    let mut digest = crate::fsverity::StreamDigest::new(&crate::fsverity::Params::default());
    let mut chunks = plan.chunks();
    let mut cur = chunks.next();
    while let Some(chunk) = cur {
        let (next, written) = rayon::join(
            || chunks.next(),
            || -> std::io::Result<()> {
                digest.update(&chunk);
                if let Some(f) = file.as_mut() {
                    f.write_all(&chunk)?;
                }
                if let Some(k) = kept.as_mut() {
                    k.extend_from_slice(&chunk);
                }
                Ok(())
            },
        );
        written?;
        cur = next;
    }
    Ok(digest.finish())
}
