// SPDX-License-Identifier: MIT OR Apache-2.0
//! The HTTP/1.1 client (`native/src/http.rs`, what `cfsctl pull` fetches a remote repository's
//! objects with) against a hostile server: the input, after a few choice bytes, is everything
//! the server sends on one keep-alive connection, handed over in fuzzer-chosen pieces.
//!
//! Up to four requests go over the connection, as long as each body was read to its end on a
//! connection the server keeps. Each response head is parsed or refused; a body is read to its
//! end (or to an error) in fuzzer-chosen read sizes; a redirect's `Location` is resolved against
//! the request's URL. Never a panic or an endless loop; a body never yields more bytes than the
//! server sent, nor more than its `Content-Length`; and a URL the client would request next is
//! one it parses back to itself, with nothing in its path or authority that could end the
//! request line (a space, CR, LF).
#![no_main]

use composefs_native::http::{Conn, Url};
use composefs_native_fuzz::Choices;
use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};

/// The server's bytes, `piece` at most per read (a short read is always a valid answer).
struct Replay<'a> {
    data: &'a [u8],
    piece: usize,
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.piece).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Replay<'_> {
    /// Requests go nowhere.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A URL the client may request: it reads back as itself and cannot break the request line.
fn check_url(u: &Url) {
    assert!(u.path.starts_with('/'), "path {:?}", u.path);
    for part in [&u.path, &u.authority] {
        assert!(!part.bytes().any(|b| b <= b' ' || b >= 0x7f), "unsafe byte in {part:?}");
    }
    let again = Url::parse(&format!("http://{}{}", u.authority, u.path)).expect("re-parses");
    assert_eq!(&again, u);
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let piece = 1 + c.byte() as usize % 64 * 97; // 1 .. 6112 bytes per read of the socket
    let read_size = 1 + c.u16() as usize % 8192; // the caller's buffer
    let sent = c.rest();
    let url = Url::parse("http://registry.test:5000/repo/objects/ab/cdef?x=1").expect("valid");
    let mut conn = Conn::over(Replay { data: sent, piece }, &url);
    let mut got_total = 0usize;
    for _ in 0..4 {
        let head = match conn.get(&url) {
            Ok(h) => h,
            Err(_) => return,
        };
        if let Some(loc) = &head.location {
            if let Ok(Some(next)) = url.join(loc) {
                check_url(&next);
            }
        }
        let mut body = conn.body(&head);
        let mut buf = vec![0u8; read_size];
        let mut got = 0usize;
        let ended = loop {
            match body.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    assert!(n <= buf.len());
                    got += n;
                }
                Err(_) => break false,
            }
        };
        got_total += got;
        assert!(got_total <= sent.len(), "more body bytes than the server sent");
        if let Some(n) = head.content_length() {
            assert!(got as u64 <= n, "{got} body bytes for a Content-Length of {n}");
            if ended {
                assert_eq!(got as u64, n, "a body that ended short of its Content-Length");
            }
        }
        if !ended || !body.reusable() {
            return;
        }
    }
});
