// SPDX-License-Identifier: MIT OR Apache-2.0
//! Digests of many files, with the hashing of small files batched across files.
//!
//! Most files of a tree are small (one to three blocks), so pairing blocks only within a file
//! would leave most SHA-256 computations without a partner. A [`Batch`] (one per worker thread)
//! reads small files back to back into one buffer, each zero-padded to whole blocks, and hashes
//! all their data blocks as one run of equal-length messages (two at a time, see
//! [`crate::hash::sha256_x2`]); then the next tree level of all of them together, and so on up;
//! then all their descriptors together.
//!
//! Per file the system calls are `open`, `fstat` (regular file? size), `read` until end of file
//! into the batch buffer, `close`. A read that returns less than asked and ends exactly at the
//! size `fstat` gave is taken as end of file (it is: the kernel stops a read at the file's size),
//! which saves the usual extra `read` that returns 0; a file that grew is read on to its end.

use super::*;

/// Batch buffer size: small files are those whose blocks fit in it (it stays in L2 between the
/// `read` that fills it and the hashing).
const BATCH_BYTES: usize = 512 << 10;
/// At most this many files per work unit, and fewer when there are few files, so that rayon can
/// spread them over its threads.
const MAX_FILES_PER_UNIT: usize = 32;

/// A file's digest and the number of bytes it covers, or why there is none.
type Outcome = Result<(Vec<u8>, u64), Error>;

/// Digests of `paths`, in order, computed on the current rayon pool.
pub(super) fn digest_paths<P: AsRef<Path> + Sync>(
    paths: &[P],
    params: &Params,
    chunking: &Chunking,
) -> Vec<Result<Vec<u8>, Error>> {
    use rayon::prelude::*;
    if paths.is_empty() {
        return Vec::new();
    }
    let per_unit = (paths.len() / (rayon::current_num_threads() * 8)).clamp(1, MAX_FILES_PER_UNIT);
    let units: Vec<Vec<Outcome>> = paths
        .par_chunks(per_unit)
        .map(|unit| with_batch_buf(|buf| digest_unit(unit, params, chunking, buf)))
        .collect();
    units.into_iter().flatten().map(|r| r.map(|(d, _)| d)).collect()
}

/// Digests and sizes of regular files already open, in order, on the calling thread (large
/// files are split over the current rayon pool, see [`Chunking`]). Each comes with the size
/// `fstat` gave when it was opened. The digest covers what was read: to the end of the file, or
/// exactly the given size for a file hashed in parallel.
pub fn digest_open_files(
    files: &[(&File, u64)],
    params: &Params,
    chunking: &Chunking,
) -> Vec<io::Result<(Vec<u8>, u64)>> {
    if files.is_empty() {
        return Vec::new();
    }
    with_batch_buf(|buf| {
        let mut results: Vec<Option<Outcome>> = (0..files.len()).map(|_| None).collect();
        let mut failed: Vec<Option<io::Error>> = (0..files.len()).map(|_| None).collect();
        let mut batch = Batch::new(params, buf);
        for (slot, &(file, size)) in files.iter().enumerate() {
            if let Err(e) = batch.add_file(slot, file, size, chunking, &mut results) {
                failed[slot] = Some(e);
            }
        }
        batch.finish(&mut results);
        results
            .into_iter()
            .zip(failed)
            .map(|(r, e)| match (r, e) {
                (_, Some(e)) => Err(e),
                (Some(Ok(v)), None) => Ok(v),
                (Some(Err(e)), None) => Err(io::Error::other(e.to_string())),
                (None, None) => unreachable!("every file has a result"),
            })
            .collect()
    })
}

thread_local! {
    static BATCH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's batch buffer (allocated once per thread). A work unit that waits
/// for a nested parallel job may run another unit on the same thread: that one gets a buffer of
/// its own.
fn with_batch_buf<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    super::with_thread_buf(&BATCH_BUF, BATCH_BYTES, f)
}

/// Digests of the files of one work unit, in order.
fn digest_unit<P: AsRef<Path>>(paths: &[P], params: &Params, chunking: &Chunking, buf: &mut [u8]) -> Vec<Outcome> {
    let mut results: Vec<Option<Outcome>> = (0..paths.len()).map(|_| None).collect();
    let mut batch = Batch::new(params, buf);
    for (slot, path) in paths.iter().enumerate() {
        let path = path.as_ref();
        if let Err(e) = batch.add(slot, path, chunking, &mut results) {
            results[slot] = Some(Err(e));
        }
    }
    batch.finish(&mut results);
    results
        .into_iter()
        .map(|r| r.expect("every file has a result"))
        .collect()
}

/// A file whose digest is under way.
struct Pending {
    /// Its index in the work unit.
    slot: usize,
    /// Bytes read.
    size: u64,
    /// The lowest tree level computed so far (its hashes concatenated); the root hash once it
    /// is one hash long. Empty for an empty file.
    level: Vec<u8>,
}

struct Batch<'a> {
    params: &'a Params,
    hasher: BlockHasher,
    bs: usize,
    ds: usize,
    /// Data of small files, each zero-padded to whole blocks; `buf[..used]` not hashed yet.
    buf: &'a mut [u8],
    used: usize,
    /// Files with data in `buf[..used]`: (index in `files`, number of blocks).
    waiting: Vec<(usize, usize)>,
    files: Vec<Pending>,
    /// Scratch space reused for tree levels, descriptors and their hashes.
    blocks: Vec<u8>,
    hashes: Vec<u8>,
}

/// How reading a small file into the batch buffer ended.
enum Filled {
    /// The whole file, this many bytes.
    Whole(usize),
    /// The buffer is full and the file goes on (it grew since `fstat`).
    Full,
}

impl<'a> Batch<'a> {
    fn new(params: &'a Params, buf: &'a mut [u8]) -> Batch<'a> {
        Batch {
            params,
            hasher: BlockHasher::new(params),
            bs: params.block_size as usize,
            ds: params.alg.digest_size(),
            buf,
            used: 0,
            waiting: Vec::new(),
            files: Vec::new(),
            blocks: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// Start on the file at `path`: small files are read into the batch; large ones have their
    /// data blocks hashed now (a very large one is digested completely, in parallel, and its
    /// result stored in `results`).
    fn add(
        &mut self,
        slot: usize,
        path: &Path,
        chunking: &Chunking,
        results: &mut [Option<Outcome>],
    ) -> Result<(), Error> {
        let (file, size) = open_regular_nonblocking(path)?;
        self.add_file(slot, &file, size, chunking, results)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    /// [`Batch::add`] for an open regular file whose size `fstat` gave as `size`.
    fn add_file(
        &mut self,
        slot: usize,
        file: &File,
        size: u64,
        chunking: &Chunking,
        results: &mut [Option<Outcome>],
    ) -> io::Result<()> {
        if chunking.is_parallel(size) {
            clear_nonblock(file)?;
            results[slot] = Some(Ok((digest_file_parallel(file, size, self.params, chunking)?, size)));
            return Ok(());
        }
        let capacity = self.buf.len();
        if size > capacity as u64 || (size as usize).div_ceil(self.bs) * self.bs > capacity {
            clear_nonblock(file)?;
            let mut level = Vec::new();
            let size = level0_from_reader(file, &self.hasher, self.bs, &mut level)?;
            self.files.push(Pending { slot, size, level });
            return Ok(());
        }
        if self.used + (size as usize).div_ceil(self.bs) * self.bs > capacity {
            self.hash_waiting();
        }
        let start = self.used;
        match read_to_end(file, &mut self.buf[start..], size)? {
            Filled::Whole(n) => {
                let end = start + n.div_ceil(self.bs) * self.bs;
                self.buf[start + n..end].fill(0);
                self.used = end;
                self.waiting.push((self.files.len(), (end - start) / self.bs));
                self.files.push(Pending {
                    slot,
                    size: n as u64,
                    level: Vec::new(),
                });
            }
            Filled::Full => {
                // Rare (the file grew since fstat): hash what was read (whole blocks: the free
                // part of the buffer is a multiple of the block size), then the rest on its own.
                let mut level = Vec::new();
                let head = capacity - start;
                self.hasher.hash_whole_blocks(&self.buf[start..], self.bs, &mut level);
                clear_nonblock(file)?;
                let rest = level0_from_reader(file, &self.hasher, self.bs, &mut level)?;
                self.files.push(Pending {
                    slot,
                    size: head as u64 + rest,
                    level,
                });
            }
        }
        Ok(())
    }

    /// Hash the data blocks of the files in the buffer, all in one run.
    fn hash_waiting(&mut self) {
        if self.used == 0 {
            return;
        }
        self.hashes.clear();
        self.hasher
            .hash_whole_blocks(&self.buf[..self.used], self.bs, &mut self.hashes);
        let mut at = 0;
        for &(i, blocks) in &self.waiting {
            let n = blocks * self.ds;
            self.files[i].level.extend_from_slice(&self.hashes[at..at + n]);
            at += n;
        }
        self.used = 0;
        self.waiting.clear();
    }

    /// Finish every pending file: tree levels of all files together, level by level, then all
    /// descriptors; store the digests in `results`.
    fn finish(&mut self, results: &mut [Option<Outcome>]) {
        self.hash_waiting();
        let (bs, ds) = (self.bs, self.ds);
        let mut climbing: Vec<usize> = Vec::new();
        loop {
            self.blocks.clear();
            climbing.clear();
            for (i, f) in self.files.iter().enumerate() {
                if f.level.len() > ds {
                    self.blocks.extend_from_slice(&f.level);
                    self.blocks.resize(self.blocks.len().div_ceil(bs) * bs, 0);
                    climbing.push(i);
                }
            }
            if climbing.is_empty() {
                break;
            }
            self.hashes.clear();
            self.hasher.hash_whole_blocks(&self.blocks, bs, &mut self.hashes);
            let mut at = 0;
            for &i in &climbing {
                let level = &mut self.files[i].level;
                let n = level.len().div_ceil(bs) * ds;
                level.clear();
                level.extend_from_slice(&self.hashes[at..at + n]);
                at += n;
            }
        }
        self.blocks.clear();
        let zero_root = vec![0u8; ds];
        for f in &self.files {
            let root = if f.size == 0 { &zero_root } else { &f.level };
            self.blocks.extend_from_slice(&descriptor(self.params, root, f.size));
        }
        self.hashes.clear();
        hash_descriptors(self.params.alg, &self.blocks, &mut self.hashes);
        for (f, d) in self.files.drain(..).zip(self.hashes.chunks_exact(ds)) {
            results[f.slot] = Some(Ok((d.to_vec(), f.size)));
        }
    }
}

/// Read `file` (whose size `fstat` gave as `size`) from its current position to its end into
/// `room`.
fn read_to_end(mut file: &File, room: &mut [u8], size: u64) -> io::Result<Filled> {
    let mut n = 0;
    loop {
        if n == room.len() {
            return Ok(Filled::Full);
        }
        let ask = room.len() - n;
        match file.read(&mut room[n..]) {
            Ok(0) => return Ok(Filled::Whole(n)),
            Ok(k) => {
                n += k;
                if k < ask && n as u64 == size {
                    return Ok(Filled::Whole(n));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => clear_nonblock(file)?,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str, data: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("cfs-many-{}-{tag}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 997) as u8).collect()
    }

    #[test]
    fn read_to_end_outcomes() {
        let data = pattern(10_000);
        let path = temp_file("read", &data);
        let mut room = vec![0u8; 16_384];
        for stale_size in [10_000u64, 100, 20_000] {
            let f = File::open(&path).unwrap();
            assert!(matches!(
                read_to_end(&f, &mut room, stale_size).unwrap(),
                Filled::Whole(10_000)
            ));
            assert_eq!(&room[..10_000], &data[..]);
        }
        let f = File::open(&path).unwrap();
        assert!(matches!(read_to_end(&f, &mut room[..8192], 100).unwrap(), Filled::Full));
        std::fs::remove_file(&path).unwrap();
    }

    /// Files larger than their `fstat` size said (they grew), with a small batch buffer so that
    /// some no longer fit: every digest still equals the one of the whole contents.
    #[test]
    fn files_that_grew() {
        let sizes = [5000usize, 3 * 4096, 100, 9000, 0, 4096, 20_000];
        let data: Vec<Vec<u8>> = sizes.iter().map(|&n| pattern(n)).collect();
        for params in [
            Params::default(),
            Params::new(HashAlg::Sha512, 1024, b"s".to_vec()).unwrap(),
        ] {
            let paths: Vec<_> = data
                .iter()
                .enumerate()
                .map(|(i, d)| temp_file(&format!("grew{i}"), d))
                .collect();
            let mut buf = vec![0u8; 16_384];
            let mut results: Vec<Option<Outcome>> = (0..paths.len()).map(|_| None).collect();
            let mut batch = Batch::new(&params, &mut buf);
            for (slot, p) in paths.iter().enumerate() {
                let f = File::open(p).unwrap();
                // Claim a tenth of the real size.
                batch
                    .add_file(
                        slot,
                        &f,
                        (sizes[slot] / 10) as u64,
                        &Chunking::sequential(),
                        &mut results,
                    )
                    .unwrap();
            }
            batch.finish(&mut results);
            for (i, r) in results.into_iter().enumerate() {
                let want = digest_bytes_with(&data[i], &params, &Chunking::sequential());
                assert_eq!(r.unwrap().unwrap().0, want, "file {i}, size {}", sizes[i]);
            }
            for p in paths {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
}
