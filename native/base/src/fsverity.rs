// SPDX-License-Identifier: MIT OR Apache-2.0
//! fs-verity digests, exactly as the kernel computes them
//! (Documentation/filesystems/fsverity.rst): a Merkle tree over the zero-padded data blocks, the
//! salt (zero-padded to the hash's input block size) prepended to every hashed block, and the
//! 256-byte `fsverity_descriptor` hashed last. Empty data has an all-zero root hash.

use crate::hash::sha256_x2::Prefix;
use sha2::{Digest as _, Sha512};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod many;
pub use many::digest_open_files;

/// Hash algorithms fs-verity supports, with their on-disk numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlg {
    Sha256 = 1,
    Sha512 = 2,
}

impl HashAlg {
    pub fn from_name(name: &str) -> Option<HashAlg> {
        match name {
            "sha256" => Some(HashAlg::Sha256),
            "sha512" => Some(HashAlg::Sha512),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
        }
    }
    pub fn digest_size(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }
    /// The hash function's own input block size, to which the salt is padded.
    fn input_block_size(self) -> usize {
        match self {
            HashAlg::Sha256 => 64,
            HashAlg::Sha512 => 128,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("block size {0} is not a power of two between 1024 and 65536")]
    BadBlockSize(u32),
    #[error("salt is {0} bytes; at most 32 are allowed")]
    SaltTooLong(usize),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{path}: not a regular file")]
    NotRegular { path: std::path::PathBuf },
}

/// Parameters of a digest: algorithm, Merkle tree block size, salt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub alg: HashAlg,
    pub block_size: u32,
    pub salt: Vec<u8>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alg: HashAlg::Sha256,
            block_size: 4096,
            salt: Vec::new(),
        }
    }
}

impl Params {
    pub fn new(alg: HashAlg, block_size: u32, salt: Vec<u8>) -> Result<Params, Error> {
        if !(1024..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(Error::BadBlockSize(block_size));
        }
        if salt.len() > 32 {
            return Err(Error::SaltTooLong(salt.len()));
        }
        Ok(Params { alg, block_size, salt })
    }

    /// The salt as prepended to each hashed block: zero-padded to the hash's input block size.
    fn padded_salt(&self) -> Vec<u8> {
        if self.salt.is_empty() {
            return Vec::new();
        }
        let n = self.alg.input_block_size();
        let mut s = self.salt.clone();
        s.resize(self.salt.len().div_ceil(n) * n, 0);
        s
    }
}

/// Hashes Merkle tree blocks, with the padded salt already absorbed (once, not per block).
#[derive(Clone)]
pub(crate) enum BlockHasher {
    /// The salted SHA-256 state; blocks are hashed two at a time where the CPU allows.
    Sha256(Prefix),
    Sha512(Sha512),
}

impl BlockHasher {
    pub(crate) fn new(params: &Params) -> BlockHasher {
        let salt = params.padded_salt();
        match params.alg {
            HashAlg::Sha256 => BlockHasher::Sha256(Prefix::new(&salt)),
            HashAlg::Sha512 => {
                let mut h = Sha512::new();
                h.update(&salt);
                BlockHasher::Sha512(h)
            }
        }
    }

    /// Hash each `block_size`-byte block of `data` (whole blocks only); append the digests to
    /// `out`, in order.
    pub(crate) fn hash_whole_blocks(&self, data: &[u8], block_size: usize, out: &mut Vec<u8>) {
        debug_assert!(data.len().is_multiple_of(block_size));
        match self {
            BlockHasher::Sha256(p) => p.hash_many(data, block_size, out),
            BlockHasher::Sha512(h) => {
                for block in data.chunks_exact(block_size) {
                    let mut h = h.clone();
                    h.update(block);
                    out.extend_from_slice(&h.finalize());
                }
            }
        }
    }

    /// Hash one block, zero-padding `data` to `block_size`; append the digest to `out`.
    pub(crate) fn hash_block(&self, data: &[u8], block_size: usize, out: &mut Vec<u8>) {
        if data.len() == block_size {
            return self.hash_whole_blocks(data, block_size, out);
        }
        let mut padded = vec![0u8; block_size];
        padded[..data.len()].copy_from_slice(data);
        self.hash_whole_blocks(&padded, block_size, out)
    }
}

/// Given the concatenated level-0 hashes, build the upper levels and return the root hash.
/// `level0` must hold at least one hash (non-empty data).
pub(crate) fn root_from_level0(params: &Params, mut level: Vec<u8>) -> Vec<u8> {
    let bs = params.block_size as usize;
    let ds = params.alg.digest_size();
    let hasher = BlockHasher::new(params);
    // Levels above this many blocks are hashed in parallel, in runs of this many blocks.
    const PAR_BLOCKS: usize = 64;
    while level.len() > ds {
        // The level's last block is zero-padded.
        level.resize(level.len().div_ceil(bs) * bs, 0);
        level = if level.len() > bs * PAR_BLOCKS * 2 {
            use rayon::prelude::*;
            let parts: Vec<Vec<u8>> = level
                .par_chunks(bs * PAR_BLOCKS)
                .map(|run| {
                    let mut out = Vec::with_capacity(PAR_BLOCKS * ds);
                    hasher.hash_whole_blocks(run, bs, &mut out);
                    out
                })
                .collect();
            parts.concat()
        } else {
            let mut next = Vec::with_capacity(level.len() / bs * ds);
            hasher.hash_whole_blocks(&level, bs, &mut next);
            next
        };
    }
    level
}

/// Size of the `fsverity_descriptor`.
const DESCRIPTOR_SIZE: usize = 256;

/// The `fsverity_descriptor` for this root hash and data size.
fn descriptor(params: &Params, root_hash: &[u8], data_size: u64) -> [u8; DESCRIPTOR_SIZE] {
    let mut desc = [0u8; DESCRIPTOR_SIZE];
    desc[0] = 1; // version
    desc[1] = params.alg as u8;
    desc[2] = params.block_size.trailing_zeros() as u8;
    desc[3] = params.salt.len() as u8;
    // desc[4..8]: sig_size, always 0
    desc[8..16].copy_from_slice(&data_size.to_le_bytes());
    desc[16..16 + root_hash.len()].copy_from_slice(root_hash);
    desc[80..80 + params.salt.len()].copy_from_slice(&params.salt);
    desc
}

/// Hash each 256-byte descriptor in `descs` (unsalted); append the digests to `out`.
fn hash_descriptors(alg: HashAlg, descs: &[u8], out: &mut Vec<u8>) {
    match alg {
        HashAlg::Sha256 => Prefix::EMPTY.hash_many(descs, DESCRIPTOR_SIZE, out),
        HashAlg::Sha512 => {
            for d in descs.chunks_exact(DESCRIPTOR_SIZE) {
                out.extend_from_slice(&Sha512::digest(d));
            }
        }
    }
}

/// The final digest: the hash of the `fsverity_descriptor` for this root hash and size.
pub(crate) fn descriptor_digest(params: &Params, root_hash: &[u8], data_size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(params.alg.digest_size());
    hash_descriptors(params.alg, &descriptor(params, root_hash, data_size), &mut out);
    out
}

/// The digest of `size` bytes whose level-0 hashes are `level0`: empty data has an all-zero
/// root hash, otherwise the tree is built up from `level0`.
fn digest_from_level0(params: &Params, level0: Vec<u8>, size: u64) -> Vec<u8> {
    let root = if size == 0 {
        vec![0u8; params.alg.digest_size()]
    } else {
        root_from_level0(params, level0)
    };
    descriptor_digest(params, &root, size)
}

/// The fs-verity digest of data that arrives in pieces of any length (an image being generated):
/// whole blocks are hashed as they come, a partial one is kept until it fills or the data ends.
pub struct StreamDigest {
    params: Params,
    hasher: BlockHasher,
    partial: Vec<u8>,
    level0: Vec<u8>,
    total: u64,
}

impl StreamDigest {
    pub fn new(params: &Params) -> StreamDigest {
        let bs = params.block_size as usize;
        StreamDigest {
            params: params.clone(),
            hasher: BlockHasher::new(params),
            partial: Vec::with_capacity(bs),
            level0: Vec::new(),
            total: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.params.block_size as usize;
        self.total += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < bs {
                return;
            }
            self.hasher.hash_whole_blocks(&self.partial, bs, &mut self.level0);
            self.partial.clear();
        }
        let whole = data.len() / bs * bs;
        self.hasher.hash_whole_blocks(&data[..whole], bs, &mut self.level0);
        self.partial.extend_from_slice(&data[whole..]);
    }

    /// How many bytes [`StreamDigest::update`] was given.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The digest of everything given to [`StreamDigest::update`].
    pub fn finish(mut self) -> Vec<u8> {
        hash_blocks(
            &self.hasher,
            &self.partial,
            self.params.block_size as usize,
            &mut self.level0,
        );
        digest_from_level0(&self.params, self.level0, self.total)
    }
}

/// How large inputs are split for hashing on several threads.
///
/// Inputs of at least `parallel_threshold` bytes are cut into contiguous ranges of at most
/// `chunk_size` bytes (rounded up to a multiple of the Merkle block size), of equal length and as
/// many as a multiple of the current rayon pool's threads, so the threads finish together (a
/// 12.5 MiB file on two threads: four ranges of 3.1 MiB, not 4 + 4 + 4 + 0.5); the level-0 hashes
/// of the ranges are computed in parallel on that pool, then concatenated in order, so the result
/// is bit-identical with the sequential computation. Smaller inputs are hashed sequentially.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub parallel_threshold: u64,
    pub chunk_size: u64,
}

/// Files of at least this many bytes are hashed on several threads by default.
pub const DEFAULT_PARALLEL_THRESHOLD: u64 = 8 << 20;
/// Default size of the contiguous ranges a large input is cut into.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            parallel_threshold: DEFAULT_PARALLEL_THRESHOLD,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

impl Chunking {
    /// Never split: everything on the calling thread.
    pub fn sequential() -> Self {
        Chunking {
            parallel_threshold: u64::MAX,
            ..Chunking::default()
        }
    }

    fn is_parallel(&self, size: u64) -> bool {
        size > 0 && size >= self.parallel_threshold
    }

    /// The range size in bytes for an input of `size` bytes: a non-zero multiple of the block
    /// size, at most `chunk_size` rounded up to one, for a number of ranges that is a multiple of
    /// the current rayon pool's thread count (the last range may be shorter).
    fn range_size(&self, size: u64, block_size: usize) -> u64 {
        let bs = block_size as u64;
        let max = self.chunk_size.max(1).div_ceil(bs) * bs;
        let threads = rayon::current_num_threads().max(1) as u64;
        let ranges = size.div_ceil(max).div_ceil(threads).max(1) * threads;
        size.div_ceil(ranges).div_ceil(bs).max(1) * bs
    }
}

/// Bytes read at a time: a multiple of every allowed block size, small enough to stay in L2.
const READ_BUF_SIZE: usize = 128 << 10;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's read buffer (allocated once per thread, reused for every file).
/// `f` must not re-enter rayon (a stolen task could then ask for the same buffer).
fn with_read_buf<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    with_thread_buf(&READ_BUF, READ_BUF_SIZE, f)
}

/// Run `f` with the first `size` bytes of the thread-local buffer `key` (grown once per thread).
/// Should the buffer be in use already on this thread (a nested job run by the same thread), `f`
/// gets a buffer of its own instead.
fn with_thread_buf<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>>,
    size: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < size {
                buf.resize(size, 0);
            }
            f(&mut buf[..size])
        }
        Err(_) => f(&mut vec![0u8; size]),
    })
}

/// Hash every `bs`-sized block of `data` (the last one zero-padded), appending to `out`.
fn hash_blocks(hasher: &BlockHasher, data: &[u8], bs: usize, out: &mut Vec<u8>) {
    let whole = data.len() / bs * bs;
    hasher.hash_whole_blocks(&data[..whole], bs, out);
    if whole < data.len() {
        hasher.hash_block(&data[whole..], bs, out);
    }
}

/// Level-0 hashes of `data`, split into ranges hashed in parallel.
fn level0_parallel_bytes(params: &Params, data: &[u8], chunking: &Chunking) -> Vec<u8> {
    use rayon::prelude::*;
    let bs = params.block_size as usize;
    let ds = params.alg.digest_size();
    let range = chunking.range_size(data.len() as u64, bs) as usize;
    let hasher = BlockHasher::new(params);
    let parts: Vec<Vec<u8>> = data
        .par_chunks(range)
        .map(|part| {
            let mut out = Vec::with_capacity(part.len().div_ceil(bs) * ds);
            hash_blocks(&hasher, part, bs, &mut out);
            out
        })
        .collect();
    parts.concat()
}

/// Digest of an in-memory byte string (parallel when it is large).
pub fn digest_bytes(data: &[u8], params: &Params) -> Vec<u8> {
    digest_bytes_with(data, params, &Chunking::default())
}

/// [`digest_bytes`] with explicit chunking.
pub fn digest_bytes_with(data: &[u8], params: &Params, chunking: &Chunking) -> Vec<u8> {
    let bs = params.block_size as usize;
    let level0 = if chunking.is_parallel(data.len() as u64) {
        level0_parallel_bytes(params, data, chunking)
    } else {
        let hasher = BlockHasher::new(params);
        let mut level0 = Vec::with_capacity(data.len().div_ceil(bs) * params.alg.digest_size());
        hash_blocks(&hasher, data, bs, &mut level0);
        level0
    };
    digest_from_level0(params, level0, data.len() as u64)
}

/// Digest of everything `reader` yields (sequential, read to end of file).
pub fn digest_reader<R: Read>(reader: R, params: &Params) -> io::Result<Vec<u8>> {
    let hasher = BlockHasher::new(params);
    let mut level0 = Vec::new();
    let total = level0_from_reader(reader, &hasher, params.block_size as usize, &mut level0)?;
    Ok(digest_from_level0(params, level0, total))
}

/// Append the level-0 hashes of everything `reader` yields to `level0`; return the byte count.
fn level0_from_reader<R: Read>(
    mut reader: R,
    hasher: &BlockHasher,
    bs: usize,
    level0: &mut Vec<u8>,
) -> io::Result<u64> {
    with_read_buf(|buf| -> io::Result<u64> {
        let mut total: u64 = 0;
        loop {
            // Fill the buffer completely (or to EOF) so blocks are never split across reads.
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            hash_blocks(hasher, &buf[..filled], bs, level0);
            total += filled as u64;
            if filled < buf.len() {
                return Ok(total);
            }
        }
    })
}

/// Append the level-0 hashes of `file[start..start + len]`, read with `pread`.
/// `start` must be a multiple of the block size.
fn hash_file_range(
    file: &File,
    start: u64,
    len: u64,
    hasher: &BlockHasher,
    bs: usize,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    with_read_buf(|buf| {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let want = (buf.len() as u64).min(end - pos) as usize;
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut buf[filled..want], pos + filled as u64) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file shrank while it was being read",
                        ))
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            hash_blocks(hasher, &buf[..want], bs, out);
            pos += want as u64;
        }
        Ok(())
    })
}

/// Digest of the first `size` bytes of `file`, its ranges hashed in parallel.
fn digest_file_parallel(file: &File, size: u64, params: &Params, chunking: &Chunking) -> io::Result<Vec<u8>> {
    use rayon::prelude::*;
    let bs = params.block_size as usize;
    let ds = params.alg.digest_size();
    let range = chunking.range_size(size, bs);
    let hasher = BlockHasher::new(params);
    let parts: Vec<Vec<u8>> = (0..size.div_ceil(range))
        .into_par_iter()
        .map(|i| {
            let start = i * range;
            let len = range.min(size - start);
            let mut out = Vec::with_capacity((len as usize).div_ceil(bs) * ds);
            hash_file_range(file, start, len, &hasher, bs, &mut out)?;
            Ok(out)
        })
        .collect::<io::Result<_>>()?;
    Ok(digest_from_level0(params, parts.concat(), size))
}

/// Open `path` for reading without blocking on FIFOs or taking a controlling terminal, and make
/// sure it is a regular file. Returns the file and its size.
fn open_regular(path: &Path) -> Result<(File, u64), Error> {
    let (file, size) = open_regular_nonblocking(path)?;
    clear_nonblock(&file).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file, size))
}

/// [`open_regular`], but the file keeps `O_NONBLOCK` (one system call less). Linux ignores it
/// for regular files; readers of such a file still handle `EAGAIN` (see [`clear_nonblock`]).
fn open_regular_nonblocking(path: &Path) -> Result<(File, u64), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(io::Error::from_raw_os_error(libc::EISDIR)));
    }
    if !meta.is_file() {
        return Err(Error::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta.len()))
}

/// Back to plain blocking reads (`O_NONBLOCK` was only for the open).
fn clear_nonblock(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Digest of a regular file's contents. Large files are hashed on several threads of the current
/// rayon pool (see [`Chunking`]).
pub fn digest_file(path: &Path, params: &Params) -> Result<Vec<u8>, Error> {
    digest_file_with(path, params, &Chunking::default())
}

/// [`digest_file`] with explicit chunking.
pub fn digest_file_with(path: &Path, params: &Params, chunking: &Chunking) -> Result<Vec<u8>, Error> {
    let (file, size) = open_regular(path)?;
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if chunking.is_parallel(size) {
        digest_file_parallel(&file, size, params, chunking).map_err(io_err)
    } else {
        // Small files: read to end of file, like fsverity-utils.
        digest_reader(&file, params).map_err(io_err)
    }
}

/// Digest of the first `size` bytes of a file already open (one that passed its caller's checks,
/// so nothing is opened by path again), read by position; large files are hashed in parallel as
/// by [`digest_file`].
pub fn digest_open_file(file: &File, size: u64, params: &Params) -> io::Result<Vec<u8>> {
    let chunking = Chunking::default();
    if chunking.is_parallel(size) {
        digest_file_parallel(file, size, params, &chunking)
    } else {
        digest_reader(
            ReadAt {
                file,
                pos: 0,
                end: size,
            },
            params,
        )
    }
}

/// Reads `file` from `pos` to `end` by position: the descriptor's own offset is neither used
/// nor moved.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf
            .len()
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Digests of many files, computed in parallel on `threads` threads (`None`: one per CPU),
/// returned in the order of `paths`. Large files are also split (see [`Chunking`]).
pub fn digest_files<P: AsRef<Path> + Sync>(
    paths: &[P],
    params: &Params,
    threads: Option<usize>,
) -> Vec<Result<Vec<u8>, Error>> {
    digest_files_with(paths, params, threads, &Chunking::default())
}

/// [`digest_files`] with explicit chunking.
pub fn digest_files_with<P: AsRef<Path> + Sync>(
    paths: &[P],
    params: &Params,
    threads: Option<usize>,
    chunking: &Chunking,
) -> Vec<Result<Vec<u8>, Error>> {
    let work = || many::digest_paths(paths, params, chunking);
    match threads {
        None => work(),
        Some(n) => match rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build() {
            Ok(pool) => pool.install(work),
            Err(_) => work(),
        },
    }
}

/// The default composefs digest (sha256, 4 KiB blocks, no salt) of a byte string.
pub fn sha256_digest(data: &[u8]) -> [u8; 32] {
    let d = digest_bytes(data, &Params::default());
    d.try_into().expect("sha256 digest is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256_x2::{set_backend, Backend};
    use sha2::Sha256;

    /// Run `f` once with each SHA-256 backend this CPU has. The switch is process-wide: a lock
    /// keeps switching tests apart (other tests may meanwhile run on either backend, which
    /// compute the same digests).
    fn for_each_backend(mut f: impl FnMut(Backend)) {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                set_backend(None);
            }
        }
        let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _reset = Reset;
        for b in [Backend::Portable, Backend::ShaNi, Backend::Avx512] {
            if set_backend(Some(b)) == b {
                f(b);
            }
        }
    }

    /// The conformance stream: sha256(b"cfs" + le64(i)) for i = 0, 1, ... concatenated.
    fn stream(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 32);
        let mut i: u64 = 0;
        while out.len() < n {
            let mut h = Sha256::new();
            h.update(b"cfs");
            h.update(i.to_le_bytes());
            out.extend_from_slice(&h.finalize());
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn stream_digest_equals_digest_bytes_whatever_the_pieces() {
        let params = [
            Params::default(),
            Params::new(HashAlg::Sha512, 1024, b"salt".to_vec()).unwrap(),
            Params::new(HashAlg::Sha256, 65536, vec![7; 32]).unwrap(),
        ];
        for p in &params {
            for n in [0usize, 1, 1023, 1024, 4095, 4096, 4097, 3 * 4096 + 17, 300_000] {
                let data = stream(n);
                let want = digest_bytes(&data, p);
                for piece in [1usize, 100, 1024, 4096, 5000, 1 << 20] {
                    let mut d = StreamDigest::new(p);
                    // Pieces of varying length: piece, piece / 2 + 1, piece, ...
                    let (mut at, mut k) = (0, 0);
                    while at < n {
                        let len = if k % 2 == 0 { piece } else { piece / 2 + 1 }.min(n - at);
                        d.update(&data[at..at + len]);
                        at += len;
                        k += 1;
                    }
                    assert_eq!(d.finish(), want, "{p:?} size {n} pieces {piece}");
                }
            }
        }
    }

    #[test]
    fn matches_conformance_rows() {
        let rows = [
            (
                0usize,
                "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
            ),
            (1, "b2382412cad9bfb3087625f76dd4caaee741bb0fe0b2ad47a70a05e8483d5387"),
            (64, "fb27e04752a22bad51c16a2663dfcd7c629475ea56bec54ec6b919220b7b48e9"),
        ];
        for_each_backend(|b| {
            for (n, want) in rows {
                let data = stream(n);
                assert_eq!(hex(&digest_bytes(&data, &Params::default())), want, "{b:?} size {n}");
                let r = digest_reader(&data[..], &Params::default()).unwrap();
                assert_eq!(hex(&r), want, "{b:?} reader, size {n}");
            }
        });
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cfs-fsverity-{}-{tag}", std::process::id()))
    }

    #[test]
    fn open_file_digest_equals_bytes_digest() {
        // Below and above the parallel threshold; only `size` bytes count, whatever follows.
        let data = stream(DEFAULT_PARALLEL_THRESHOLD as usize + 4097);
        let p = temp_path("open");
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        for n in [0usize, 1, 4096, 70_000, data.len()] {
            let want = digest_bytes(&data[..n], &Params::default());
            assert_eq!(
                digest_open_file(&f, n as u64, &Params::default()).unwrap(),
                want,
                "size {n}"
            );
        }
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn parallel_equals_sequential() {
        // Sizes around block and range edges; tiny ranges so even small inputs are split.
        let data = stream(3 * 65536 + 4097);
        let salts: [&[u8]; 3] = [b"", b"\x01", &[0xab; 32]];
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            for bs in [1024u32, 4096, 65536] {
                for salt in salts {
                    let params = Params::new(alg, bs, salt.to_vec()).unwrap();
                    for n in [1usize, 1024, 4096, 65536, 65537, 2 * 65536 + 1, data.len()] {
                        let d = &data[..n];
                        let want = digest_bytes_with(d, &params, &Chunking::sequential());
                        for chunk in [1u64, 1024, 5000, 65536, 1 << 20] {
                            let c = Chunking {
                                parallel_threshold: 0,
                                chunk_size: chunk,
                            };
                            assert_eq!(digest_bytes_with(d, &params, &c), want, "{alg:?} {bs} {n} {chunk}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ranges_are_even_across_the_threads() {
        // (input size, chunk size, block size, threads, range size): ranges of at most the chunk
        // size, block-aligned, as many as a multiple of the threads.
        const MIB: u64 = 1 << 20;
        let cases: &[(u64, u64, usize, usize, u64)] = &[
            (13_131_776, 4 * MIB, 4096, 2, 802 * 4096), // 4 ranges: 3 x 802 blocks + 800
            (12 * MIB, 4 * MIB, 4096, 2, 3 * MIB),      // 4 x 3 MiB, not 3 x 4 MiB
            (16 * MIB, 4 * MIB, 4096, 2, 4 * MIB),
            (8 * MIB, 4 * MIB, 4096, 1, 4 * MIB),
            (9 * MIB, 4 * MIB, 4096, 1, 3 * MIB),
            (100 * MIB, 4 * MIB, 4096, 2, 985 * 4096), // 26 ranges (25 would not share evenly)
            (5 * MIB, 4 * MIB, 4096, 4, 1_310_720),
            (10_000, 1, 4096, 2, 4096), // a tiny chunk size is still one block
            (1, 1 << 20, 65536, 3, 65536),
            (3 * 65536 + 4097, 5000, 1024, 2, 5120),
        ];
        for &(size, chunk, bs, threads, want) in cases {
            let c = Chunking {
                parallel_threshold: 0,
                chunk_size: chunk,
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| c.range_size(size, bs));
            assert_eq!(got, want, "{size} {chunk} {bs} {threads}");
        }
    }

    #[test]
    fn file_paths_agree() {
        let data = stream(5 * 4096 * 128 + 17); // several level-0 hash blocks, three levels
        let path = temp_path("agree");
        std::fs::write(&path, &data).unwrap();
        for alg in [HashAlg::Sha256, HashAlg::Sha512] {
            let params = Params::new(alg, 4096, b"salt".to_vec()).unwrap();
            let want = digest_bytes_with(&data, &params, &Chunking::sequential());
            assert_eq!(digest_file_with(&path, &params, &Chunking::sequential()).unwrap(), want);
            for chunk in [4096u64, 100_000, 1 << 20] {
                let c = Chunking {
                    parallel_threshold: 1,
                    chunk_size: chunk,
                };
                assert_eq!(digest_file_with(&path, &params, &c).unwrap(), want);
            }
            let many = digest_files(&[&path, &path], &params, Some(2));
            assert_eq!(many.len(), 2);
            for r in many {
                assert_eq!(r.unwrap(), want);
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// `digest_files` (files batched across, blocks paired across files) against the digest of
    /// each file's bytes: sizes around block and batch-buffer edges, errors in between, several
    /// parameter sets, thread counts and chunkings, both SHA-256 backends.
    #[test]
    fn many_files_agree_with_bytes() {
        let dir = temp_path("many");
        std::fs::create_dir_all(&dir).unwrap();
        let batch = 512 << 10;
        let mut sizes = vec![0usize, 1, 55, 56, 63, 64, 4095, 4096, 4097, 8192, 100_000, 3000, 1, 0];
        sizes.extend([batch - 1, batch, batch + 1, 2 * batch + 4097, 200_000, 7, 65536 * 3 + 1]);
        let mut x: u64 = 12345;
        for _ in 0..40 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            sizes.push(1usize << ((x >> 33) % 17) | ((x >> 20) as usize & 4095));
        }
        let data = stream(sizes.iter().sum::<usize>() + sizes.len());
        let mut contents = Vec::new();
        let mut paths = Vec::new();
        let mut at = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let path = dir.join(format!("f{i}"));
            std::fs::write(&path, &data[at..at + n]).unwrap();
            contents.push(&data[at..at + n]);
            paths.push(path);
            at += n + 1;
        }
        // A missing file and a directory in the middle.
        paths.insert(10, dir.join("missing"));
        paths.insert(20, dir.clone());
        let params_sets = [
            Params::default(),
            Params::new(HashAlg::Sha256, 1024, b"salt".to_vec()).unwrap(),
            Params::new(HashAlg::Sha256, 65536, vec![0xff; 32]).unwrap(),
            Params::new(HashAlg::Sha512, 4096, b"x".to_vec()).unwrap(),
        ];
        for params in &params_sets {
            let want: Vec<Vec<u8>> = contents
                .iter()
                .map(|c| digest_bytes_with(c, params, &Chunking::sequential()))
                .collect();
            for_each_backend(|b| {
                for threads in [Some(1), Some(3)] {
                    for chunking in [
                        Chunking::default(),
                        Chunking {
                            parallel_threshold: 300_000,
                            chunk_size: 65536,
                        },
                    ] {
                        let got = digest_files_with(&paths, params, threads, &chunking);
                        assert_eq!(got.len(), paths.len());
                        let mut ok = got.into_iter().enumerate().filter_map(|(i, r)| match i {
                            10 => {
                                assert!(matches!(r, Err(Error::Io { ref source, .. }) if source.kind() == io::ErrorKind::NotFound));
                                None
                            }
                            20 => {
                                assert!(matches!(r, Err(Error::Io { ref source, .. }) if source.raw_os_error() == Some(libc::EISDIR)));
                                None
                            }
                            _ => Some(r.unwrap()),
                        });
                        for (i, w) in want.iter().enumerate() {
                            assert_eq!(
                                &ok.next().unwrap(),
                                w,
                                "{b:?} {params:?} {threads:?} {chunking:?} size {}",
                                sizes[i]
                            );
                        }
                    }
                }
            });
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_errors() {
        let params = Params::default();
        let dir = std::env::temp_dir();
        match digest_file(&dir, &params) {
            Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EISDIR)),
            other => panic!("directory: {other:?}"),
        }
        let missing = temp_path("missing");
        let results = digest_files(&[missing.clone(), dir.clone()], &params, None);
        match &results[0] {
            Err(Error::Io { source, path }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
                assert_eq!(path, &missing);
            }
            other => panic!("missing: {other:?}"),
        }
        assert!(results[1].is_err());
        assert!(matches!(
            digest_file(Path::new("/dev/null"), &params),
            Err(Error::NotRegular { .. })
        ));
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Params::new(HashAlg::Sha256, 3000, vec![]).is_err());
        assert!(Params::new(HashAlg::Sha256, 512, vec![]).is_err());
        assert!(Params::new(HashAlg::Sha256, 4096, vec![0; 33]).is_err());
        assert!(Params::new(HashAlg::Sha512, 65536, vec![0; 32]).is_ok());
    }
}
