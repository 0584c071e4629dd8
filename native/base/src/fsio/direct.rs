// SPDX-License-Identifier: MIT OR Apache-2.0
//! Large contents written past the page cache: a file filled front to back through a
//! block-aligned staging buffer, each full buffer written with direct I/O (`O_DIRECT`) where the
//! filesystem takes it.
//!
//! Why: contents streamed into the object store (a container layer's large files, a remote
//! store's objects) are written once and rarely read back soon. Through the page cache every
//! byte costs a fresh page (allocated, zeroed, later written back and reclaimed); with direct
//! I/O the device reads the staging buffer itself and the CPU is free for the decompression and
//! hashing around it. Durability is unchanged: the blocks are on the device when `write`
//! returns, and the caller's `syncfs` still flushes the metadata and the device's cache.
//! Not for a file read back at once: enabling fs-verity reads the whole file to build its
//! Merkle tree, from the page cache when the data is there and else from the device. The object
//! store asks for direct I/O only where its objects get no fs-verity (measured in the QEMU
//! guest on ext4 with verity: four 8 MiB objects written directly were read back, 33.5 MB more
//! block reads per import than through the page cache).
//!
//! The rules: the buffer is [`ALIGN`]-aligned and every direct write is a whole number of
//! [`ALIGN`] blocks at an offset that is one too, which every Linux filesystem with direct I/O
//! accepts. The last partial block goes through the page cache (`O_DIRECT` is switched off
//! first). A filesystem without direct I/O (refused at `fcntl`, or `EINVAL` at the first write)
//! gets the same bytes through the page cache: the outcome is the same file either way.

use rustix::fd::BorrowedFd;
use rustix::fs::OFlags;
use rustix::io::Errno;
use std::io;

/// Alignment of the staging buffer, of direct writes' lengths and of their file offsets.
pub const ALIGN: usize = 4096;
/// Bytes staged before a write.
pub const STAGE: usize = 1 << 20;

/// One aligned block of the staging buffer.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// Sequential writes to one file through an aligned staging buffer (see the module's doc). The
/// caller fills [`DirectWriter::spare`], then reports how much with [`DirectWriter::advance`];
/// each written block is handed back so the caller can hash what went to the file.
pub struct DirectWriter {
    buf: Box<[Block]>,
    filled: usize,
    direct: bool,
}

impl DirectWriter {
    /// A writer for `fd` (a regular file open for writing, at offset 0). With `direct`, direct
    /// I/O is switched on when the filesystem takes it; without, every write goes through the
    /// page cache (for a file that is read back at once: see the module's doc).
    pub fn new(fd: BorrowedFd<'_>, direct: bool) -> DirectWriter {
        let direct = direct && set_direct(fd, true).is_ok();
        DirectWriter {
            buf: vec![Block([0; ALIGN]); STAGE / ALIGN].into_boxed_slice(),
            filled: 0,
            direct,
        }
    }

    /// Whether the writes so far went past the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `Block` is `repr(C)` around a `[u8; ALIGN]` with alignment ALIGN, so it has no
        // padding and the blocks lie back to back: the slice covers exactly `len * ALIGN`
        // initialised bytes, borrowed mutably through `self` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<u8>(), self.buf.len() * ALIGN) }
    }

    /// The room left in the staging buffer (never empty).
    pub fn spare(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.bytes()[filled..]
    }

    /// Count `n` more bytes of [`DirectWriter::spare`] as filled; a full buffer is written to
    /// `fd` and returned (to be hashed, say).
    pub fn advance(&mut self, fd: BorrowedFd<'_>, n: usize) -> io::Result<Option<&[u8]>> {
        assert!(n <= STAGE - self.filled, "advance past the staging buffer");
        self.filled += n;
        if self.filled < STAGE {
            return Ok(None);
        }
        self.filled = 0;
        self.write_out(fd, STAGE)?;
        Ok(Some(&self.bytes()[..STAGE]))
    }

    /// Write what is staged (the file's end) and return it. The writer then starts afresh at
    /// the new end of file, in the page cache.
    pub fn finish(&mut self, fd: BorrowedFd<'_>) -> io::Result<&[u8]> {
        let n = std::mem::take(&mut self.filled);
        self.write_out(fd, n)?;
        Ok(&self.bytes()[..n])
    }

    /// Write the first `n` staged bytes: the whole blocks directly (when on), the rest through
    /// the page cache.
    fn write_out(&mut self, fd: BorrowedFd<'_>, n: usize) -> io::Result<()> {
        let mut done = 0;
        if self.direct {
            let whole = n / ALIGN * ALIGN;
            while done < whole {
                let data = &self.bytes()[done..whole];
                match rustix::io::write(fd, data) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    // A short direct write leaves an unaligned offset: the rest goes buffered.
                    Ok(k) if k % ALIGN != 0 => {
                        done += k;
                        break;
                    }
                    Ok(k) => done += k,
                    Err(Errno::INTR) => {}
                    // Direct I/O refused after all (alignment rules of its own): page cache.
                    Err(Errno::INVAL) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if done < n {
                set_direct(fd, false)?;
                self.direct = false;
            }
        }
        while done < n {
            let data = &self.bytes()[done..n];
            match rustix::io::write(fd, data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => done += k,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn set_direct(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let mut flags = rustix::fs::fcntl_getfl(fd)?;
    flags.set(OFlags::DIRECT, on);
    rustix::fs::fcntl_setfl(fd, flags)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;
    use std::io::Read;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Write `data` in pieces of `piece` bytes, with direct I/O if the test's filesystem takes
    /// it or through the page cache; the file and the blocks handed back must both equal `data`.
    fn write_in(dir: &std::path::Path, data: &[u8], piece: usize, direct: bool) {
        let path = dir.join(format!("f-{}-{piece}-{direct}", data.len()));
        let file = std::fs::File::create_new(&path).unwrap();
        let mut w = DirectWriter::new(file.as_fd(), direct);
        assert!(direct || !w.is_direct(), "asked for the page cache, got direct I/O");
        let mut seen = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let spare = w.spare();
            let k = piece.min(spare.len()).min(rest.len());
            spare[..k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
            if let Some(block) = w.advance(file.as_fd(), k).unwrap() {
                seen.extend_from_slice(block);
            }
        }
        seen.extend_from_slice(w.finish(file.as_fd()).unwrap());
        assert!(seen == data, "blocks handed back differ ({} bytes)", data.len());
        let mut back = Vec::new();
        std::fs::File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data, "file differs ({} bytes, pieces of {piece})", data.len());
    }

    #[test]
    fn every_length_around_the_block_and_stage_edges() {
        let dir = std::env::temp_dir().join(format!("cfs-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            STAGE - 1,
            STAGE,
            STAGE + 1,
            STAGE + ALIGN,
            3 * STAGE + 5,
        ] {
            for piece in [1000, 65536, STAGE] {
                for direct in [true, false] {
                    write_in(&dir, &pattern(len), piece, direct);
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
