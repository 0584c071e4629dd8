// SPDX-License-Identifier: MIT OR Apache-2.0
//! gzip (RFC 1952) as container layers use it: members one after another, each a header, a
//! raw deflate stream and a trailer, inflated as one stream.
//!
//! The trailer's CRC-32 is not computed. A layer's compressed bytes are checked against the
//! blob digest and its uncompressed bytes against the config's `diff_id`, both SHA-256: a
//! CRC-32 over the same bytes would find nothing they miss, and it cost 1.5% of a pull's CPU
//! time on the thread that inflates. The trailer's length (ISIZE, the member's uncompressed
//! size modulo 2^32) is still compared. Headers are read with fixed bounds: the optional name
//! and comment are skipped byte by byte, never buffered.

use flate2::bufread::DeflateDecoder;
use std::io::{self, BufRead, Read};

/// The inflated contents of the gzip members read from `B`.
pub struct Gunzip<B: BufRead> {
    /// `None` only while a header is being read.
    dec: Option<DeflateDecoder<B>>,
    state: State,
    /// Uncompressed bytes of the current member so far.
    out: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// A member's header is next.
    Header,
    Body,
    Done,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("gzip: {what}"))
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

/// Read one member header (RFC 1952 section 2.3), leaving `r` at the deflate stream.
fn read_header<B: BufRead>(r: &mut B) -> io::Result<()> {
    let mut h = [0u8; 10];
    r.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad("truncated header"),
        _ => e,
    })?;
    if h[0..2] != [0x1f, 0x8b] {
        return Err(bad("not a gzip member (bad magic bytes)"));
    }
    if h[2] != 8 {
        return Err(bad(&format!("compression method {} (only 8, deflate, exists)", h[2])));
    }
    let flags = h[3];
    if flags & RESERVED != 0 {
        return Err(bad("reserved header flags set"));
    }
    if flags & FEXTRA != 0 {
        let mut len = [0u8; 2];
        r.read_exact(&mut len)?;
        skip_exact(r, u16::from_le_bytes(len) as u64)?;
    }
    if flags & FNAME != 0 {
        skip_string(r)?;
    }
    if flags & FCOMMENT != 0 {
        skip_string(r)?;
    }
    if flags & FHCRC != 0 {
        skip_exact(r, 2)?;
    }
    Ok(())
}

fn skip_exact<B: BufRead>(r: &mut B, n: u64) -> io::Result<()> {
    if io::copy(&mut r.take(n), &mut io::sink())? < n {
        return Err(bad("truncated header"));
    }
    Ok(())
}

/// Skip a zero-terminated header field.
fn skip_string<B: BufRead>(r: &mut B) -> io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(bad("truncated header"));
        }
        match buf.iter().position(|&b| b == 0) {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

impl<B: BufRead> Gunzip<B> {
    pub fn new(r: B) -> Gunzip<B> {
        Gunzip {
            dec: Some(DeflateDecoder::new(r)),
            state: State::Header,
            out: 0,
        }
    }

    pub fn into_inner(self) -> B {
        self.dec.expect("a decoder between reads").into_inner()
    }

    /// The current member's trailer; then whether another member follows.
    fn end_member(&mut self) -> io::Result<bool> {
        let r = self.dec.as_mut().expect("a decoder between reads").get_mut();
        let mut t = [0u8; 8];
        r.read_exact(&mut t).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("truncated member (no trailer)"),
            _ => e,
        })?;
        let isize = u32::from_le_bytes(t[4..8].try_into().unwrap());
        if isize != self.out as u32 {
            return Err(bad(&format!(
                "member inflates to {} bytes, its trailer says {isize} (modulo 2^32)",
                self.out
            )));
        }
        Ok(!r.fill_buf()?.is_empty())
    }
}

impl<B: BufRead> Read for Gunzip<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Header => {
                    // A fresh inflate state for each member, on the same reader.
                    let mut r = self.dec.take().expect("a decoder between reads").into_inner();
                    let header = read_header(&mut r);
                    self.dec = Some(DeflateDecoder::new(r));
                    header?;
                    self.out = 0;
                    self.state = State::Body;
                }
                State::Body => {
                    let n = self.dec.as_mut().expect("a decoder between reads").read(buf)?;
                    if n > 0 {
                        self.out += n as u64;
                        return Ok(n);
                    }
                    // The deflate stream ended (or its input did: then the trailer is short).
                    self.state = if self.end_member()? { State::Header } else { State::Done };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::{Compression, GzBuilder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Gunzip::new(io::BufReader::with_capacity(7, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 / 7 % 253) as u8).collect()
    }

    #[test]
    fn members_and_header_fields() {
        let a = sample(100_000);
        let b = b"second member".to_vec();
        let mut two = gz(&a);
        let mut named = Vec::new();
        let mut e = GzBuilder::new()
            .filename("layer.tar")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(&mut named, Compression::fast());
        e.write_all(&b).unwrap();
        e.finish().unwrap();
        two.extend_from_slice(&named);
        assert_eq!(gunzip(&two).unwrap(), [a.clone(), b].concat());
        assert_eq!(gunzip(&gz(b"")).unwrap(), b"");
        // Agrees with flate2's own decoder, which does compute the CRC.
        let mut theirs = Vec::new();
        flate2::read::MultiGzDecoder::new(&two[..])
            .read_to_end(&mut theirs)
            .unwrap();
        assert_eq!(gunzip(&two).unwrap(), theirs);
    }

    #[test]
    fn refusals() {
        let good = gz(&sample(5000));
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "truncated header"),
            (
                "bad magic",
                b"\x1f\x8c\x08\x00\x00\x00\x00\x00\x00\x03".to_vec(),
                "bad magic",
            ),
            (
                "method",
                [&good[..2], &[7], &good[3..]].concat(),
                "compression method 7",
            ),
            ("reserved flags", [&good[..3], &[0x20], &good[4..]].concat(), "reserved"),
            (
                "unterminated name",
                [&good[..3], &[FNAME], &good[4..10], b"abc"].concat(),
                "truncated header",
            ),
            ("no trailer", good[..good.len() - 8].to_vec(), "truncated member"),
            (
                "wrong size",
                [&good[..good.len() - 4], &4999u32.to_le_bytes()[..]].concat(),
                "trailer says 4999",
            ),
            ("garbage after", [&good[..], b"not a gzip member"].concat(), "bad magic"),
        ];
        for (what, data, want) in cases {
            let e = gunzip(&data).expect_err(what);
            assert!(e.to_string().contains(want), "{what}: {e}");
        }
        // A CRC that does not match is not looked at (the digests cover those bytes).
        let mut crc = good.clone();
        let at = crc.len() - 8;
        crc[at] ^= 0xff;
        assert_eq!(gunzip(&crc).unwrap(), sample(5000));
    }
}
