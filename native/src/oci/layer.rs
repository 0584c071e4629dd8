// SPDX-License-Identifier: MIT OR Apache-2.0
//! One container layer, read from its blob stream into a list of changes ([`Layer`]) while its
//! file contents go into the object store.
//!
//! The protocol, in the order bytes flow:
//! 1. the blob's bytes are hashed and counted as they arrive ([`Verified`]); more bytes than the
//!    descriptor's size stop the read at once;
//! 2. gzip or zstd is recognised by its magic bytes (anything else is read as plain tar) and
//!    decompressed; the uncompressed stream is hashed too, for the config's `diff_id`;
//! 3. tar entries are read with [`TarReader`]'s bounds; paths are normalised (`.` and empty
//!    components dropped, `..` resolved; a path that leaves the root is an error), OCI whiteouts
//!    become [`Op::Whiteout`] / [`Op::Opaque`];
//! 4. a regular file's contents over [`INLINE_MAX`] bytes go to the store: small ones through
//!    memory (hashed and written on the rayon pool), large ones straight into a temporary file
//!    in the store (hashed as they are written, past the page cache where the filesystem
//!    allows); looking up and linking run on the rayon pool while the stream is read on, with
//!    at most [`IN_FLIGHT`] bytes waiting (one budget for every layer this process reads at
//!    once, so memory stays bounded however many layers are read in parallel and however slow
//!    the store is);
//! 5. at the end of the archive at most [`MAX_TRAILER`] more bytes are drained (tar padding),
//!    then `diff_id` and the blob digest and size are compared. Only a layer whose every check
//!    passed is returned; objects stored before a failure stay (they are named by their content).
//!
//! A [`Layer`] encodes to bytes ([`Layer::encode`]) so a repository can keep it by `diff_id`
//! and skip the layer's download next time; [`Layer::decode`] checks every length it reads.

use super::digest::{self, Algorithm, BlobDigest, Verified, VerifyError};
use super::gzip::Gunzip;
use super::tar::{self, Kind, TarError, TarReader};
use crate::scan::INLINE_MAX;
use crate::store::{self, Store};
use crate::tree::{mode, Digest, Timespec, Xattr};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// Contents up to this size are hashed from memory; larger ones are streamed to a store file.
const SMALL: u64 = 1 << 20;
/// Bytes of contents read but not yet stored, at most, summed over every layer being read.
/// Enough to keep the store jobs busy; more only costs memory (a pull of the benchmark image
/// peaked at 98 MiB RSS with 64 MiB here, 69 MiB with 16, in the same time).
const IN_FLIGHT: u64 = 16 << 20;
/// Bytes allowed after the end-of-archive marker (tar pads to records of 10 KiB).
const MAX_TRAILER: u64 = 1 << 20;
/// Decompression bombs: past the first [`BOMB_FREE`] bytes, a layer may expand at most
/// [`BOMB_RATIO`] times its compressed size (real layers expand 2 to 10 times).
const BOMB_FREE: u64 = 256 << 20;
const BOMB_RATIO: u64 = 100;

/// What a layer's regular file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Empty,
    Inline(Vec<u8>),
    Object(Digest),
}

/// Type-specific data of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeData {
    Directory,
    Regular {
        size: u64,
        content: Content,
    },
    Symlink(Vec<u8>),
    /// Devices and fifos: `mode` and `rdev` say it all.
    Special,
}

/// An inode a layer puts in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Type bits and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    pub rdev: u64,
    pub xattrs: Vec<Xattr>,
    pub data: NodeData,
}

/// One change, in archive order. Paths are normalised: components joined by `/`, no leading
/// `/`, no `.`/`..`/empty components; the root is the empty path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        path: Vec<u8>,
        node: Node,
    },
    /// A hardlink: `path` names the inode now at `target`.
    Link {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// `.wh.NAME`: remove `path` (the directory's `NAME`).
    Whiteout {
        path: Vec<u8>,
    },
    /// `.wh..wh..opq`: hide what lower layers have in directory `path`.
    Opaque {
        path: Vec<u8>,
    },
}

/// Counts of one layer read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    pub objects_stored: u64,
    pub bytes_stored: u64,
    pub objects_reused: u64,
    pub bytes_reused: u64,
}

/// A layer as a list of changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub ops: Vec<Op>,
    pub stats: LayerStats,
}

/// What the blob must be.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// The blob's digest (`None` for a docker-save layer, which only the diff_id names).
    pub digest: Option<BlobDigest>,
    pub size: Option<u64>,
    pub diff_id: Option<BlobDigest>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{0}")]
    Tar(#[from] TarError),
    #[error("{0}")]
    Blob(VerifyError),
    #[error("digest mismatch of the uncompressed layer (diff_id {want})")]
    DiffId { want: BlobDigest },
    #[error("{}: {why}", String::from_utf8_lossy(path))]
    Path { path: Vec<u8>, why: &'static str },
    #[error("{0} bytes of data after the end of the tar archive")]
    Trailer(u64),
    #[error("not a supported layer: {0}")]
    Decompress(io::Error),
    #[error("{0}")]
    Store(#[from] store::Error),
    #[error("corrupt layer record: {0}")]
    Record(&'static str),
    #[error("{0}")]
    Bomb(String),
}

/// A layer read from `raw`, with its contents stored in `store`. `read` counts the blob bytes
/// consumed so far (for progress).
pub fn read_layer<R: Read + Send>(
    raw: R,
    expect: &Expect,
    store: &Arc<Store>,
    limits: tar::Limits,
) -> Result<Layer, LayerError> {
    let alg = expect.digest.as_ref().map_or(Algorithm::Sha256, |d| d.alg);
    let compressed = Arc::new(AtomicU64::new(0));
    let blob = Verified::new(
        Counting {
            inner: raw,
            count: compressed.clone(),
        },
        alg,
        expect.size,
    );
    let mut buffered = BufReader::with_capacity(1 << 20, blob);
    let head = fill(&mut buffered).map_err(|e| blob_err(e, expect))?;
    let decoder = Decoder::new(buffered, &head).map_err(LayerError::Decompress)?;
    let diff_alg = expect.diff_id.as_ref().map_or(Algorithm::Sha256, |d| d.alg);
    let guarded = BombGuard {
        inner: decoder,
        compressed,
        out: 0,
    };
    let sink = Sink::new(store.clone());
    let mut ops = Vec::new();
    // Two stages on two threads: this one fetches, checks and decompresses the blob; the second
    // hashes the uncompressed stream and parses the tar. A layer's two halves of the work then
    // overlap instead of queueing behind each other on one core.
    let (guarded, digests, plain) = std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(STAGE_CHUNKS);
        // Chunks the tar stage is done with go back to be filled again (no fresh pages to
        // fault in and zero for every megabyte).
        let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
        let parser = scope.spawn(|| {
            let plain = Staged {
                rx,
                recycle,
                buf: Vec::new(),
                pos: 0,
                hasher: digest::Hasher::new(diff_alg),
                received: 0,
            };
            // The tar reader reads straight from the received chunks (no buffer between).
            let mut tar = TarReader::new(plain, limits);
            let read = read_entries(&mut tar, &sink, &mut ops);
            // Whatever happened, wait for the store jobs: none may outlive this call.
            let digests = sink.finish();
            let plain = match read {
                Err(e) => Err(decorate(e, expect)),
                Ok(()) => check_plain_end(tar.inner_mut(), expect),
            };
            // Dropping the receiver tells the fetching stage to stop.
            drop(tar);
            (digests, plain)
        });
        let guarded = pump(guarded, &tx, &recycled);
        drop(tx);
        let (digests, plain) = parser.join().expect("the tar stage does not panic");
        (guarded, digests, plain)
    });
    // The blob is checked last but reported first: a corrupted or swapped blob is a digest
    // mismatch, whatever the decoder or the tar reader made of its bytes. Only a failure of the
    // source itself (network, disk) or of the store leaves the rest of the blob unread.
    let drain = !matches!(
        &plain,
        Err(LayerError::Tar(TarError::Io(_))) | Err(LayerError::Store(_))
    );
    let blob = guarded.inner.into_inner().into_inner();
    let compressed = match (&expect.digest, drain) {
        (_, false) => Ok(0),
        (Some(want), true) => blob.finish_into(want).map(|(_, n)| n),
        (None, true) => blob.finish_unchecked().map(|(_, n)| n),
    };
    let (uncompressed, compressed) = match (plain, compressed) {
        (_, Err(e @ (VerifyError::Mismatch { .. } | VerifyError::Size { .. }))) => return Err(LayerError::Blob(e)),
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(LayerError::Blob(e)),
        (Ok(u), Ok(c)) => (u, c),
    };
    let digests = digests?;
    for op in &mut ops {
        if let Op::Put {
            node:
                Node {
                    data:
                        NodeData::Regular {
                            content: Content::Object(slot),
                            ..
                        },
                    ..
                },
            ..
        } = op
        {
            // Before the jobs end, an object's slot holds its job number.
            let job = u64::from_le_bytes(slot[..8].try_into().unwrap()) as usize;
            *slot = digests[job];
        }
    }
    let entries = ops.len() as u64;
    let s = sink.stats();
    Ok(Layer {
        ops,
        stats: LayerStats {
            compressed_bytes: compressed,
            uncompressed_bytes: uncompressed,
            entries,
            ..s
        },
    })
}

/// After the end-of-archive marker: at most [`MAX_TRAILER`] bytes of padding, then the diff_id.
/// Returns the uncompressed size.
fn check_plain_end(plain: &mut Staged, expect: &Expect) -> Result<u64, LayerError> {
    let trailer = io::copy(&mut (&mut *plain).take(MAX_TRAILER + 1), &mut io::sink())
        .map_err(|e| decorate(LayerError::Tar(e.into()), expect))?;
    if trailer > MAX_TRAILER {
        return Err(LayerError::Trailer(trailer));
    }
    // Drained to its end: every chunk was received, and hashed as it came.
    if let Some(want) = &expect.diff_id {
        if plain.hasher.clone().finish() != *want {
            return Err(LayerError::DiffId { want: want.clone() });
        }
    }
    Ok(plain.received)
}

/// Uncompressed chunks queued between the two stages of [`read_layer`] (bounded memory).
const STAGE_CHUNKS: usize = 4;
const STAGE_CHUNK: usize = 1 << 20;

/// The fetching stage: read `r` to its end in chunks (reusing those `recycled` returns) and send
/// them, an error as the last item. Stops early when the tar stage has gone (its receiver
/// dropped); returns `r` for the drain.
fn pump<R: Read>(mut r: R, tx: &mpsc::SyncSender<io::Result<Vec<u8>>>, recycled: &mpsc::Receiver<Vec<u8>>) -> R {
    loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(STAGE_CHUNK, 0);
        let mut n = 0;
        let mut err = None;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        buf.truncate(n);
        let end = n == 0 || err.is_some();
        if n > 0 && tx.send(Ok(buf)).is_err() {
            return r;
        }
        if let Some(e) = err {
            let _ = tx.send(Err(e));
            return r;
        }
        if end {
            return r; // end of stream: the closed channel reads as EOF
        }
    }
}

/// The tar stage's end of the channel, as a reader. Each chunk is hashed (for the diff_id)
/// and counted as it is received.
struct Staged {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    hasher: digest::Hasher,
    received: u64,
}

impl tar::Source for Staged {}

impl Read for Staged {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.hasher.update(&b);
                    self.received += b.len() as u64;
                    let used = std::mem::replace(&mut self.buf, b);
                    if used.capacity() == STAGE_CHUNK {
                        let _ = self.recycle.send(used); // the fetching stage may be gone
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A read error in terms of the blob: an overrun of the descriptor's size is a size mismatch.
fn blob_err(e: io::Error, _expect: &Expect) -> LayerError {
    if digest::is_overrun(&e) {
        return LayerError::Blob(digest::classify(e));
    }
    LayerError::Tar(TarError::Io(e))
}

fn decorate(e: LayerError, expect: &Expect) -> LayerError {
    match e {
        LayerError::Tar(TarError::Io(io)) => {
            if digest::is_overrun(&io) {
                return LayerError::Blob(digest::classify(io));
            }
            if io.get_ref().is_some_and(|r| r.is::<Bomb>()) {
                return LayerError::Bomb(io.to_string());
            }
            if io.kind() == io::ErrorKind::InvalidData || io.kind() == io::ErrorKind::Other {
                // A decoder's complaint about its input.
                return LayerError::Decompress(io);
            }
            let _ = expect;
            LayerError::Tar(TarError::Io(io))
        }
        e => e,
    }
}

/// Counts the bytes read through it into a shared counter.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

/// Stops a decoder whose output outgrows its input by more than [`BOMB_RATIO`].
struct BombGuard<R> {
    inner: R,
    compressed: Arc<AtomicU64>,
    out: u64,
}

#[derive(Debug)]
struct Bomb {
    out: u64,
    input: u64,
}

impl std::fmt::Display for Bomb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decompression bomb: {} bytes from {} compressed bytes (over {}:1)",
            self.out, self.input, BOMB_RATIO
        )
    }
}

impl std::error::Error for Bomb {}

impl<R: Read> Read for BombGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let input = self.compressed.load(Relaxed);
        if self.out > BOMB_FREE && self.out > input.saturating_mul(BOMB_RATIO) {
            return Err(io::Error::other(Bomb { out: self.out, input }));
        }
        Ok(n)
    }
}

fn fill<B: BufRead>(b: &mut B) -> io::Result<Vec<u8>> {
    let head = b.fill_buf()?;
    Ok(head[..head.len().min(4)].to_vec())
}

enum Decoder<B: BufRead> {
    Gzip(Box<Gunzip<B>>),
    Zstd(zstd::stream::read::Decoder<'static, B>),
    Plain(B),
}

impl<B: BufRead> Decoder<B> {
    fn new(b: B, head: &[u8]) -> io::Result<Decoder<B>> {
        if head.starts_with(&[0x1f, 0x8b]) {
            return Ok(Decoder::Gzip(Box::new(Gunzip::new(b))));
        }
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let mut d = zstd::stream::read::Decoder::with_buffer(b)?;
            // Frames asking for a window over 128 MiB are refused (memory stays bounded).
            d.window_log_max(27)?;
            return Ok(Decoder::Zstd(d));
        }
        Ok(Decoder::Plain(b))
    }
    fn into_inner(self) -> B {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::Plain(b) => b,
        }
    }
}

impl<B: BufRead> Read for Decoder<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(b) => b.read(buf),
        }
    }
}

/// Normalise a tar path: components without `.`/empty, `..` resolved; `None` if it leaves the root.
pub fn normalize(raw: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

/// A normalised path's directory and last component.
pub(crate) fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

/// Linux `makedev`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

fn read_entries<R: tar::Source>(tar: &mut TarReader<R>, sink: &Sink, ops: &mut Vec<Op>) -> Result<(), LayerError> {
    while let Some(e) = tar.next_entry()? {
        let path = normalize(&e.path).ok_or_else(|| LayerError::Path {
            path: e.path.clone(),
            why: "leaves the image's root",
        })?;
        if path.split(|&b| b == b'/').any(|c| c.len() > 255) {
            return Err(LayerError::Path {
                path,
                why: "a name longer than 255 bytes",
            });
        }
        let (dir, base) = split_last(&path);
        if base == b".wh..wh..opq" {
            ops.push(Op::Opaque { path: dir.to_vec() });
            continue;
        }
        if let Some(name) = base.strip_prefix(b".wh.") {
            if name.starts_with(b".wh.") {
                continue; // AUFS bookkeeping (.wh..wh.plnk, ...): not part of the tree
            }
            if name.is_empty() || name == b"." || name == b".." {
                return Err(LayerError::Path {
                    path,
                    why: "a whiteout without a name",
                });
            }
            ops.push(Op::Whiteout { path: join(dir, name) });
            continue;
        }
        let type_bits = match e.kind {
            Kind::Hardlink => {
                let target = normalize(&e.link)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| LayerError::Path {
                        path: path.clone(),
                        why: "a hardlink whose target leaves the image's root",
                    })?;
                ops.push(Op::Link { path, target });
                continue;
            }
            Kind::Regular => mode::S_IFREG,
            Kind::Directory => mode::S_IFDIR,
            Kind::Symlink => mode::S_IFLNK,
            Kind::Char => mode::S_IFCHR,
            Kind::Block => mode::S_IFBLK,
            Kind::Fifo => mode::S_IFIFO,
        };
        if path.is_empty() && e.kind != Kind::Directory {
            return Err(LayerError::Path {
                path: e.path.clone(),
                why: "the root must be a directory",
            });
        }
        let data = match e.kind {
            Kind::Regular => NodeData::Regular {
                size: e.size,
                content: read_content(tar, sink, e.size)?,
            },
            Kind::Directory => NodeData::Directory,
            Kind::Symlink => {
                if e.link.is_empty() {
                    return Err(LayerError::Path {
                        path,
                        why: "a symlink without a target",
                    });
                }
                NodeData::Symlink(e.link.clone())
            }
            _ => NodeData::Special,
        };
        ops.push(Op::Put {
            path,
            node: Node {
                mode: type_bits | e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                rdev: makedev(e.devmajor, e.devminor),
                xattrs: e.xattrs,
                data,
            },
        });
    }
    Ok(())
}

fn read_content<R: tar::Source>(tar: &mut TarReader<R>, sink: &Sink, size: u64) -> Result<Content, LayerError> {
    if size == 0 {
        return Ok(Content::Empty);
    }
    if size <= INLINE_MAX {
        let mut buf = Vec::with_capacity(size as usize);
        tar.read_data_to_end(&mut buf, INLINE_MAX as usize)?;
        return Ok(Content::Inline(buf));
    }
    let job = if size <= SMALL {
        let reserved = sink.reserve(size);
        let mut buf = Vec::with_capacity(size as usize);
        tar.read_data_to_end(&mut buf, SMALL as usize)?;
        sink.spawn(Work::Bytes(buf), reserved)
    } else {
        // Read straight into the writer's staging buffer: hashed and written a megabyte at a
        // time, past the page cache where the store's filesystem allows.
        let mut w = sink.store.object_writer()?;
        loop {
            let n = tar.read_data(w.spare())?;
            if n == 0 {
                break;
            }
            w.advance(n).map_err(|source| store::Error::Io {
                path: w.path().to_path_buf(),
                source,
            })?;
        }
        let reserved = sink.reserve(size);
        sink.spawn(Work::File(Box::new(w)), reserved)
    };
    // The job number stands in the digest's place until the jobs are done.
    let mut slot = [0u8; 32];
    slot[..8].copy_from_slice(&(job as u64).to_le_bytes());
    Ok(Content::Object(slot))
}

enum Work {
    Bytes(Vec<u8>),
    File(Box<store::ObjectWriter>),
}

/// The bytes read but not yet stored, over every [`Sink`] of the process (see [`IN_FLIGHT`]).
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

static BUDGET: Budget = Budget {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

impl Budget {
    /// Wait until `size` more bytes fit (when nothing is in flight, any size does: a single file
    /// larger than the budget still goes, alone). Store jobs never wait on a reader, so every
    /// wait here ends when jobs already spawned finish.
    fn take(&self, size: u64) {
        let mut used = self.used.lock().unwrap();
        while *used > 0 && *used + size > IN_FLIGHT {
            used = self.freed.wait(used).unwrap();
        }
        *used += size;
    }

    fn give_back(&self, size: u64) {
        *self.used.lock().unwrap() -= size;
        self.freed.notify_all();
    }
}

/// Bytes taken from [`BUDGET`], given back when dropped: by the store job that holds them, or
/// at once when the read fails before the job is spawned (the budget outlives any one layer).
struct Reserved(u64);

impl Drop for Reserved {
    fn drop(&mut self) {
        BUDGET.give_back(self.0);
    }
}

#[derive(Default)]
struct SinkState {
    running: usize,
    digests: Vec<Digest>,
    error: Option<store::Error>,
}

/// Store jobs of one layer on the rayon pool, within the process's bound on the bytes waiting.
struct Sink {
    store: Arc<Store>,
    state: Arc<(Mutex<SinkState>, Condvar)>,
    stored: Arc<[AtomicU64; 4]>,
}

impl Sink {
    fn new(store: Arc<Store>) -> Sink {
        Sink {
            store,
            state: Arc::new((Mutex::new(SinkState::default()), Condvar::new())),
            stored: Arc::new(Default::default()),
        }
    }

    /// Wait until `size` more bytes may be in flight.
    fn reserve(&self, size: u64) -> Reserved {
        BUDGET.take(size);
        Reserved(size)
    }

    fn spawn(&self, work: Work, reserved: Reserved) -> usize {
        let (m, _) = &*self.state;
        let job = {
            let mut s = m.lock().unwrap();
            s.running += 1;
            s.digests.push([0; 32]);
            s.digests.len() - 1
        };
        let store = self.store.clone();
        let state = self.state.clone();
        let stored = self.stored.clone();
        rayon::spawn(move || {
            let r = match work {
                Work::Bytes(b) => store.insert_bytes(&b).map(|(d, how)| (d, b.len() as u64, how)),
                Work::File(w) => store.commit_object(*w),
            };
            let (m, cv) = &*state;
            let mut s = m.lock().unwrap();
            match r {
                Ok((d, n, how)) => {
                    s.digests[job] = d;
                    let i = if how == store::Inserted::Stored { 0 } else { 2 };
                    stored[i].fetch_add(1, Relaxed);
                    stored[i + 1].fetch_add(n, Relaxed);
                }
                Err(e) => {
                    s.error.get_or_insert(e);
                }
            }
            s.running -= 1;
            cv.notify_all();
            drop(s);
            drop(reserved);
        });
        job
    }

    /// Wait for every job; the digests by job number, or the first error.
    fn finish(&self) -> Result<Vec<Digest>, store::Error> {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        while s.running > 0 {
            s = cv.wait(s).unwrap();
        }
        match s.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut s.digests)),
        }
    }

    fn stats(&self) -> LayerStats {
        LayerStats {
            objects_stored: self.stored[0].load(Relaxed),
            bytes_stored: self.stored[1].load(Relaxed),
            objects_reused: self.stored[2].load(Relaxed),
            bytes_reused: self.stored[3].load(Relaxed),
            ..Default::default()
        }
    }
}

// --- the record a repository keeps -----------------------------------------------------------

const MAGIC: &[u8; 8] = b"CFSLAYR1";

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LayerError> {
        if self.0.len() < n {
            return Err(LayerError::Record("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, LayerError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, LayerError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, LayerError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, LayerError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl Layer {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(MAGIC.to_vec());
        e.u64(self.ops.len() as u64);
        for op in &self.ops {
            match op {
                Op::Put { path, node } => {
                    e.u8(0);
                    e.bytes(path);
                    e.u32(node.mode);
                    e.u32(node.uid);
                    e.u32(node.gid);
                    e.u64(node.mtime.sec as u64);
                    e.u32(node.mtime.nsec);
                    e.u64(node.rdev);
                    e.u32(node.xattrs.len() as u32);
                    for x in &node.xattrs {
                        e.bytes(&x.key);
                        e.bytes(&x.value);
                    }
                    match &node.data {
                        NodeData::Directory => e.u8(0),
                        NodeData::Regular { size, content } => {
                            e.u8(1);
                            e.u64(*size);
                            match content {
                                Content::Empty => e.u8(0),
                                Content::Inline(b) => {
                                    e.u8(1);
                                    e.bytes(b);
                                }
                                Content::Object(d) => {
                                    e.u8(2);
                                    e.0.extend_from_slice(d);
                                }
                            }
                        }
                        NodeData::Symlink(t) => {
                            e.u8(2);
                            e.bytes(t);
                        }
                        NodeData::Special => e.u8(3),
                    }
                }
                Op::Link { path, target } => {
                    e.u8(1);
                    e.bytes(path);
                    e.bytes(target);
                }
                Op::Whiteout { path } => {
                    e.u8(2);
                    e.bytes(path);
                }
                Op::Opaque { path } => {
                    e.u8(3);
                    e.bytes(path);
                }
            }
        }
        e.0
    }

    pub fn decode(data: &[u8]) -> Result<Layer, LayerError> {
        let mut d = Dec(data);
        if d.take(8)? != MAGIC {
            return Err(LayerError::Record("bad magic"));
        }
        let n = d.u64()?;
        // Every op takes at least 5 bytes: a count beyond that is a lie, not an allocation.
        if n > data.len() as u64 / 5 {
            return Err(LayerError::Record("bad count"));
        }
        let mut ops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let op = match d.u8()? {
                0 => {
                    let path = d.bytes()?;
                    let (mode, uid, gid) = (d.u32()?, d.u32()?, d.u32()?);
                    let mtime = Timespec {
                        sec: d.u64()? as i64,
                        nsec: d.u32()?,
                    };
                    let rdev = d.u64()?;
                    let nx = d.u32()?;
                    let mut xattrs = Vec::new();
                    for _ in 0..nx {
                        xattrs.push(Xattr {
                            key: d.bytes()?,
                            value: d.bytes()?,
                        });
                    }
                    let data = match d.u8()? {
                        0 => NodeData::Directory,
                        1 => {
                            let size = d.u64()?;
                            let content = match d.u8()? {
                                0 => Content::Empty,
                                1 => Content::Inline(d.bytes()?),
                                2 => Content::Object(d.take(32)?.try_into().unwrap()),
                                _ => return Err(LayerError::Record("bad content tag")),
                            };
                            NodeData::Regular { size, content }
                        }
                        2 => NodeData::Symlink(d.bytes()?),
                        3 => NodeData::Special,
                        _ => return Err(LayerError::Record("bad node tag")),
                    };
                    Op::Put {
                        path,
                        node: Node {
                            mode,
                            uid,
                            gid,
                            mtime,
                            rdev,
                            xattrs,
                            data,
                        },
                    }
                }
                1 => Op::Link {
                    path: d.bytes()?,
                    target: d.bytes()?,
                },
                2 => Op::Whiteout { path: d.bytes()? },
                3 => Op::Opaque { path: d.bytes()? },
                _ => return Err(LayerError::Record("bad op tag")),
            };
            ops.push(op);
        }
        if !d.0.is_empty() {
            return Err(LayerError::Record("trailing bytes"));
        }
        Ok(Layer {
            ops,
            stats: LayerStats::default(),
        })
    }

    /// The objects the layer's files refer to.
    pub fn objects(&self) -> impl Iterator<Item = &Digest> {
        self.ops.iter().filter_map(|op| match op {
            Op::Put {
                node:
                    Node {
                        data:
                            NodeData::Regular {
                                content: Content::Object(d),
                                ..
                            },
                        ..
                    },
                ..
            } => Some(d),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::tar::tests::{archive, header};
    use std::io::Write;

    fn store() -> (Arc<Store>, std::path::PathBuf) {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cfs-layer-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        (Arc::new(Store::open(&dir).unwrap()), dir)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        let big = vec![7u8; 5000];
        archive(&[
            (header(b"./", b'5', 0, b""), b""),
            (header(b"etc/", b'5', 0, b""), b""),
            (header(b"etc/big", b'0', 5000, b""), &big),
            (header(b"etc/small", b'0', 3, b""), b"abc"),
            (header(b"etc/.wh.gone", b'0', 0, b""), b""),
            (header(b"var/.wh..wh..opq", b'0', 0, b""), b""),
            (header(b"/abs/../link", b'2', 0, b"etc/big"), b""),
        ])
    }

    fn expect(blob: &[u8], plain: &[u8]) -> Expect {
        Expect {
            digest: Some(BlobDigest::of(Algorithm::Sha256, blob)),
            size: Some(blob.len() as u64),
            diff_id: Some(BlobDigest::of(Algorithm::Sha256, plain)),
        }
    }

    #[test]
    fn reads_plain_and_gzip_layers() {
        let (store, dir) = store();
        let plain = sample();
        for blob in [plain.clone(), gzip(&plain)] {
            let l = read_layer(&blob[..], &expect(&blob, &plain), &store, tar::Limits::default()).unwrap();
            let paths: Vec<String> = l
                .ops
                .iter()
                .map(|op| match op {
                    Op::Put { path, .. } => format!("put {}", String::from_utf8_lossy(path)),
                    Op::Whiteout { path } => format!("wh {}", String::from_utf8_lossy(path)),
                    Op::Opaque { path } => format!("opq {}", String::from_utf8_lossy(path)),
                    Op::Link { path, .. } => format!("link {}", String::from_utf8_lossy(path)),
                })
                .collect();
            assert_eq!(
                paths,
                [
                    "put ",
                    "put etc",
                    "put etc/big",
                    "put etc/small",
                    "wh etc/gone",
                    "opq var",
                    "put link"
                ]
            );
            let objs: Vec<_> = l.objects().collect();
            assert_eq!(objs.len(), 1);
            assert!(store.contains(objs[0]));
            assert_eq!(l.stats.compressed_bytes, blob.len() as u64);
            assert_eq!(l.stats.uncompressed_bytes, plain.len() as u64);
            assert_eq!(Layer::decode(&l.encode()).unwrap().ops, l.ops);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_what_does_not_match() {
        let (store, dir) = store();
        let plain = sample();
        let blob = gzip(&plain);
        let good = expect(&blob, &plain);
        let read = |data: &[u8], e: &Expect| read_layer(data, e, &store, tar::Limits::default());
        // Another blob than the digest names: a digest mismatch, even where it does not parse.
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(
            read(&bad, &good),
            Err(LayerError::Blob(VerifyError::Mismatch { .. }))
        ));
        let other = gzip(&archive(&[(header(b"x", b'0', 1, b""), b"x")]));
        let e = Expect {
            size: Some(other.len() as u64),
            ..good.clone()
        };
        assert!(matches!(
            read(&other, &e),
            Err(LayerError::Blob(VerifyError::Mismatch { .. }))
        ));
        // Wrong sizes, a wrong diff_id.
        let e = Expect {
            size: Some(blob.len() as u64 - 1),
            ..good.clone()
        };
        assert!(matches!(
            read(&blob, &e),
            Err(LayerError::Blob(VerifyError::Size { .. }))
        ));
        let e = Expect {
            size: Some(blob.len() as u64 + 1),
            ..good.clone()
        };
        assert!(matches!(
            read(&blob, &e),
            Err(LayerError::Blob(VerifyError::Size { .. }))
        ));
        let e = Expect {
            diff_id: Some(BlobDigest::of(Algorithm::Sha256, b"other")),
            ..good.clone()
        };
        assert!(matches!(read(&blob, &e), Err(LayerError::DiffId { .. })));
        // Unchecked blobs: format errors surface as such.
        let none = Expect::default();
        assert!(matches!(read(b"not a tar", &none), Err(LayerError::Tar(_))));
        assert!(matches!(
            read(&plain[..1000], &none),
            Err(LayerError::Tar(TarError::Truncated { .. }))
        ));
        let mut trailer = plain.clone();
        trailer.extend(std::iter::repeat_n(0u8, 2 << 20));
        assert!(matches!(read(&trailer, &none), Err(LayerError::Trailer(_))));
        let escape = archive(&[(header(b"../x", b'0', 0, b""), b"")]);
        assert!(matches!(read(&escape, &none), Err(LayerError::Path { .. })));
        assert!(Layer::decode(b"CFSLAYR1\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn files_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_under(&e.path()),
                    _ => 1,
                })
                .sum()
        })
    }

    /// The shape an oci_layer fuzz run found (a header claiming 2 GiB of data with a few bytes
    /// after it), for each kind of entry and each path contents take: a truncated archive,
    /// nothing stored, no temporary left. A claimed size that is there is skipped past.
    #[test]
    fn claimed_sizes_that_are_absent() {
        let (store, dir) = store();
        let cases: [(u8, u64); 6] = [
            (b'5', 2 << 30),
            (b'2', 2 << 30),
            (b'0', 2 << 30),
            (0, SMALL),
            (b'0', SMALL - 1),
            (b'0', INLINE_MAX),
        ];
        for (typeflag, size) in cases {
            let mut plain = header(b"d/", typeflag, size, b"target").to_vec();
            plain.extend_from_slice(&[0x5a; 9]);
            for blob in [plain.clone(), gzip(&plain)] {
                let r = read_layer(&blob[..], &Expect::default(), &store, tar::Limits::default());
                assert!(
                    matches!(r, Err(LayerError::Tar(TarError::Truncated { offset: 521, .. }))),
                    "type {typeflag} size {size}: {r:?}"
                );
            }
        }
        assert_eq!(files_under(&dir), 0, "a truncated layer left files in the store");
        let skipped = vec![0x5a; 1000];
        let plain = archive(&[
            (header(b"d/", b'5', 1000, b""), &skipped),
            (header(b"d/f", b'0', 3, b""), b"abc"),
        ]);
        let l = read_layer(&plain[..], &Expect::default(), &store, tar::Limits::default()).unwrap();
        assert_eq!(l.ops.len(), 2);
        assert!(matches!(&l.ops[1], Op::Put { path, node } if path == b"d/f"
            && matches!(&node.data, NodeData::Regular { size: 3, content: Content::Inline(c) } if c == b"abc")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The in-flight budget is the process's: a read that fails between reserving and storing
    /// must give its bytes back, or enough failed layers would leave every later read waiting
    /// for ever. More truncated 1 MiB files than the budget holds, then a good layer.
    #[test]
    fn failed_reads_give_their_budget_back() {
        let (store, dir) = store();
        let (done, wait) = mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            let mut plain = header(b"f", b'0', SMALL, b"").to_vec();
            plain.extend_from_slice(&[0x5a; 9]);
            for _ in 0..IN_FLIGHT / SMALL + 8 {
                let r = read_layer(&plain[..], &Expect::default(), &s, tar::Limits::default());
                assert!(matches!(r, Err(LayerError::Tar(TarError::Truncated { .. }))), "{r:?}");
            }
            let plain = sample();
            done.send(read_layer(&plain[..], &Expect::default(), &s, tar::Limits::default()).map(|l| l.ops.len()))
                .unwrap();
        });
        let r = wait
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a read waited for budget never given back");
        assert_eq!(r.unwrap(), 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn decompression_bombs_stop_early() {
        let (store, dir) = store();
        let size = BOMB_FREE + (64 << 20);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&header(b"zeros", b'0', size, b"")).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            e.write_all(&zeros).unwrap();
        }
        let blob = e.finish().unwrap();
        let r = read_layer(&blob[..], &Expect::default(), &store, tar::Limits::default());
        assert!(matches!(r, Err(LayerError::Bomb(_))), "{r:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
