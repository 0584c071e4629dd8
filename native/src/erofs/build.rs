// SPDX-License-Identifier: MIT OR Apache-2.0
//! From a tree to an image file: mkcomposefs' build flags, the writer, the image's fs-verity
//! digest and an atomic write (temporary file in the target directory, then rename).

use super::writer::{self, Options, Stats, WriteError};
use crate::fsio;
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

/// The one check of mkcomposefs' option combinations, shared by the scanner, the image builder
/// and (through pyo3) the Python CLI and API: one rule, one wording.
#[derive(Debug, thiserror::Error)]
#[error("--skip-xattrs and --user-xattrs cannot be used together")]
pub struct ConflictingOptions;

/// Refuse `--skip-xattrs` with `--user-xattrs` (drop every xattr, or keep the `user.` ones).
pub fn check_options(skip_xattrs: bool, user_xattrs: bool) -> Result<(), ConflictingOptions> {
    if skip_xattrs && user_xattrs {
        return Err(ConflictingOptions);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    ConflictingFlags(#[from] ConflictingOptions),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Apply `flags` to `tree` in place.
pub fn apply_flags(tree: &mut Tree, flags: Flags) -> Result<(), BuildError> {
    check_options(flags.skip_xattrs, flags.user_xattrs)?;
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

/// Write `bytes` to `path` atomically ([`fsio::AtomicFile`]). Nothing is left behind on error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Fill `path` atomically with what `fill` writes into the file: a temporary file beside it
/// (the stale temporaries of earlier writes of the same file swept first), flushed and renamed
/// into place when `fill` succeeds, with the permissions `fopen(3)` gives (0666 less the umask,
/// as mkcomposefs). Nothing is left behind on error.
pub fn write_atomic_with<R>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<R>,
) -> Result<R, BuildError> {
    let io = |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fsio::AtomicFile::create(path, fsio::FileMode::Umask).map_err(io)?;
    let r = fill(f.file()).map_err(io)?;
    f.commit().map_err(io)?;
    Ok(r)
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
