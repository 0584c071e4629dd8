// SPDX-License-Identifier: MIT OR Apache-2.0
//! A small HTTP/1.1 client for plain `http://` GETs of static files: what fetching a remote
//! repository's objects needs, and nothing more.
//!
//! Protocol: one request at a time on a keep-alive connection ([`Conn`]); a response body is
//! delimited by `Content-Length`, by chunked transfer coding, or (neither given) by the end of
//! the connection, and the connection is kept for the next request only when its body was read
//! to the end and the server did not ask to close it. Every socket operation has the same
//! timeout: a request that makes no progress for that long fails. Status lines and header
//! sections have fixed bounds, so a hostile server cannot make the client buffer without end.
//! Redirects, retries and what a status means are the caller's ([`crate::fetch`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest status or header line, and the most header bytes of one response.
const MAX_LINE: usize = 8 << 10;
const MAX_HEADERS: usize = 64 << 10;

/// An `http://` URL split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host[:port]` as written (the `Host` header).
    pub authority: String,
    /// Host and port to connect to (brackets of an IPv6 literal removed).
    pub host: String,
    pub port: u16,
    /// The path, starting with `/`, with its query if any.
    pub path: String,
}

/// Why a URL is not one this client fetches.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an http:// URL")]
    Scheme(String),
    #[error("{0:?}: bad host or port")]
    Authority(String),
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        let rest = match text.get(..7) {
            Some(s) if s.eq_ignore_ascii_case("http://") => &text[7..],
            _ => return Err(UrlError::Scheme(text.to_string())),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let path = match path.find('#') {
            Some(i) => path[..i].to_string(),
            None => path,
        };
        let bad = || UrlError::Authority(authority.to_string());
        if authority.is_empty() || authority.contains('@') || authority.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(bad)?;
            let port = match &v6[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse::<u16>().ok().filter(|&n| n != 0).ok_or_else(bad)?,
        };
        if host.is_empty() {
            return Err(bad());
        }
        if path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(bad());
        }
        Ok(Url {
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }

    /// `location` (a redirect's target) resolved against this URL. Ok(None) when it leaves
    /// plain http (an `https://` redirect): not for this client.
    pub fn join(&self, location: &str) -> Result<Option<Url>, UrlError> {
        let loc = location.trim();
        if let Some(colon) = loc.find(':') {
            let scheme = &loc[..colon];
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
                if scheme.eq_ignore_ascii_case("http") {
                    return Url::parse(loc).map(Some);
                }
                return Ok(None);
            }
        }
        let path = if let Some(rest) = loc.strip_prefix("//") {
            return Url::parse(&format!("http://{rest}")).map(Some);
        } else if loc.starts_with('/') {
            loc.to_string()
        } else {
            let dir = match self.path.split(['?']).next().unwrap_or("/").rfind('/') {
                Some(i) => &self.path[..=i],
                None => "/",
            };
            format!("{dir}{loc}")
        };
        Url::parse(&format!("http://{}{path}", self.authority)).map(Some)
    }
}

/// A response's status and the headers this client acts on.
#[derive(Debug, Default)]
pub struct Head {
    pub status: u16,
    pub location: Option<String>,
    length: Option<u64>,
    chunked: bool,
    close: bool,
}

impl Head {
    /// The body's length, when the server gave one (never for a chunked body).
    pub fn content_length(&self) -> Option<u64> {
        self.length
    }
}

/// One keep-alive connection to one `host:port`: a TCP socket, or any byte stream (the fuzz
/// target's replayed server, see [`Conn::over`]).
pub struct Conn<S = TcpStream> {
    key: (String, u16),
    sock: BufReader<S>,
    /// Requests answered on it so far (a reused connection may have been closed by the server).
    pub used: u32,
}

impl Conn {
    pub fn connect(url: &Url, timeout: Duration) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
        for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(timeout))?;
                    s.set_write_timeout(Some(timeout))?;
                    s.set_nodelay(true)?;
                    return Ok(Conn::over(s, url));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A second handle on the socket, to shut it down from another thread (a stop).
    pub fn handle(&self) -> io::Result<TcpStream> {
        self.sock.get_ref().try_clone()
    }
}

impl<S: Read + Write> Conn<S> {
    /// A connection to `url`'s host over `stream`, already connected.
    pub fn over(stream: S, url: &Url) -> Conn<S> {
        Conn {
            key: (url.host.clone(), url.port),
            sock: BufReader::with_capacity(64 << 10, stream),
            used: 0,
        }
    }

    /// Whether this connection goes where `url` points.
    pub fn serves(&self, url: &Url) -> bool {
        self.key.0 == url.host && self.key.1 == url.port
    }

    /// Send `GET url` and read the response head; the body follows through [`Conn::body`].
    pub fn get(&mut self, url: &Url) -> io::Result<Head> {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cfsctl\r\nAccept: */*\r\n\r\n",
            url.path, url.authority
        );
        self.sock.get_mut().write_all(req.as_bytes())?;
        self.used += 1;
        self.read_head()
    }

    fn read_line(&mut self, budget: &mut usize) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.sock)
            .take(MAX_LINE.min(*budget) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(bad_response("header line too long or cut short"));
        }
        *budget = budget.saturating_sub(n);
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| bad_response("header line is not text"))
    }

    fn read_head(&mut self) -> io::Result<Head> {
        let mut budget = MAX_HEADERS;
        let status_line = self.read_line(&mut budget)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let code = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_response("not an HTTP/1.x status line"));
        }
        let mut head = Head {
            status: code.parse().expect("three digits"),
            close: version == "HTTP/1.0",
            ..Head::default()
        };
        loop {
            let line = self.read_line(&mut budget)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad_response("header line without a colon"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.parse::<u64>().map_err(|_| bad_response("bad Content-Length"))?;
                if head.length.is_some_and(|m| m != n) {
                    return Err(bad_response("two different Content-Length headers"));
                }
                head.length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(bad_response("unsupported Transfer-Encoding"));
                }
                head.chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    head.close = true;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    head.close = false;
                }
            } else if name.eq_ignore_ascii_case("location") {
                head.location = Some(value.to_string());
            }
        }
        if head.chunked {
            head.length = None; // RFC 9112 6.3: chunked wins over a length
        }
        Ok(head)
    }

    /// The body of the response whose head was just read.
    pub fn body<'a>(&'a mut self, head: &Head) -> Body<'a, S> {
        let state = if head.chunked {
            State::ChunkStart
        } else if let Some(n) = head.length {
            State::Fixed(n)
        } else {
            State::UntilClose
        };
        Body {
            conn: self,
            state,
            close: head.close,
        }
    }
}

fn bad_response(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad response from the server: {what}"),
    )
}

enum State {
    Fixed(u64),
    ChunkStart,
    InChunk(u64),
    UntilClose,
    Done,
}

/// A response body as a reader: the end of the body is end of file; a connection that ends
/// before the body does is an `UnexpectedEof` error, never a short body.
pub struct Body<'a, S = TcpStream> {
    conn: &'a mut Conn<S>,
    state: State,
    close: bool,
}

impl<S: Read + Write> Body<'_, S> {
    /// Whether the body was read to its end on a connection the server keeps open.
    pub fn reusable(&self) -> bool {
        matches!(self.state, State::Done) && !self.close
    }

    /// Read and drop the rest of the body, at most `limit` bytes (a redirect's or an error
    /// page's); whether the connection can then be reused.
    pub fn drain(mut self, limit: u64) -> bool {
        let ok = io::copy(&mut (&mut self).take(limit), &mut io::sink()).is_ok();
        ok && self.reusable()
    }

    fn chunk_size(&mut self) -> io::Result<u64> {
        let mut budget = MAX_LINE;
        let line = self.conn.read_line(&mut budget)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        if hex.is_empty() || hex.len() > 15 {
            return Err(bad_response("bad chunk size"));
        }
        u64::from_str_radix(hex, 16).map_err(|_| bad_response("bad chunk size"))
    }
}

fn early_eof(left: Option<u64>) -> io::Error {
    let msg = match left {
        Some(n) => format!("connection closed {n} bytes before the end of the data"),
        None => "connection closed before the end of the data".to_string(),
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

impl<S: Read + Write> Read for Body<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Fixed(0) => self.state = State::Done,
                State::Fixed(left) => {
                    let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                    let n = self.conn.sock.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(early_eof(Some(left)));
                    }
                    self.state = State::Fixed(left - n as u64);
                    return Ok(n);
                }
                State::UntilClose => {
                    let n = self.conn.sock.read(buf)?;
                    if n == 0 {
                        self.state = State::Done;
                        self.close = true;
                    }
                    return Ok(n);
                }
                State::ChunkStart => {
                    let size = self.chunk_size()?;
                    if size == 0 {
                        // trailer fields, then the empty line that ends the message
                        let mut budget = MAX_HEADERS;
                        while !self.conn.read_line(&mut budget)?.is_empty() {}
                        self.state = State::Done;
                    } else {
                        self.state = State::InChunk(size);
                    }
                }
                State::InChunk(0) => {
                    let mut budget = 2;
                    if !self.conn.read_line(&mut budget)?.is_empty() {
                        return Err(bad_response("chunk longer than its size"));
                    }
                    self.state = State::ChunkStart;
                }
                State::InChunk(left) => {
                    let want = buf.len().min(left.min(usize::MAX as u64) as usize);
                    let n = self.conn.sock.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(early_eof(None));
                    }
                    self.state = State::InChunk(left - n as u64);
                    return Ok(n);
                }
            }
        }
    }
}

/// Shut a socket down (both ways) so that a thread blocked on it returns at once.
pub fn shutdown(sock: &TcpStream) {
    let _ = sock.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/repo").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/repo"));
        let u = Url::parse("HTTP://[::1]/a?b#c").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.authority.as_str()),
            ("::1", 80, "/a?b", "[::1]")
        );
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        for bad in [
            "https://h/",
            "http://",
            "http://h:99999/",
            "http://h:0/",
            "http://u@h/",
            "http://h/a b",
            "ftp://h/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let base = Url::parse("http://h:1/repo/objects/ab/cd").unwrap();
        assert_eq!(base.join("/x/y").unwrap().unwrap().path, "/x/y");
        assert_eq!(base.join("ef").unwrap().unwrap().path, "/repo/objects/ab/ef");
        assert_eq!(base.join("//o:2/z").unwrap().unwrap().authority, "o:2");
        assert_eq!(base.join("http://o/z").unwrap().unwrap().host, "o");
        assert!(base.join("https://o/z").unwrap().is_none());
    }

    /// A server on 127.0.0.1 answering each connection with the given raw responses, one per
    /// request read, then closing.
    fn serve(responses: Vec<Vec<u8>>) -> Url {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for resp in responses {
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                }
                w.write_all(&resp).unwrap();
            }
        });
        Url::parse(&format!("http://127.0.0.1:{port}/f")).unwrap()
    }

    fn fetch(conn: &mut Conn, url: &Url) -> io::Result<(u16, Vec<u8>, bool)> {
        let head = conn.get(url)?;
        let mut body = conn.body(&head);
        let mut out = Vec::new();
        body.read_to_end(&mut out)?;
        Ok((head.status, out, body.reusable()))
    }

    #[test]
    fn lengths_chunks_and_keep_alive() {
        let url = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nConnection: close\r\n\r\nno!".to_vec(),
        ]);
        let mut c = Conn::connect(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(fetch(&mut c, &url).unwrap(), (200, b"hello".to_vec(), true));
        assert_eq!(fetch(&mut c, &url).unwrap(), (200, b"abcde".to_vec(), true));
        assert_eq!(fetch(&mut c, &url).unwrap(), (404, b"no!".to_vec(), false));
    }

    #[test]
    fn bodies_cut_short_are_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"garbage\r\n\r\n",
            b"",
        ] {
            let url = serve(vec![raw.to_vec()]);
            let mut c = Conn::connect(&url, Duration::from_secs(5)).unwrap();
            assert!(fetch(&mut c, &url).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        // Neither length nor chunks: the body ends with the connection, which is then spent.
        let url = serve(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec()]);
        let mut c = Conn::connect(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(fetch(&mut c, &url).unwrap(), (200, b"all of it".to_vec(), false));
    }

    /// Seeded mutations of valid responses (bytes flipped, cut, duplicated, spliced): the reader
    /// never panics, never hangs (the server closes), and never yields more body than was sent.
    #[test]
    fn mutated_responses_are_read_or_refused() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nuntil the end",
        ];
        const ALPHABET: &[u8] = b"0123456789abcdef\r\n:; ";
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/f", l.local_addr().unwrap())).unwrap();
        let mut cases = Vec::new();
        for i in 0..400 {
            let mut v = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % v.len().max(1);
                match next() % 4 {
                    0 if !v.is_empty() => v[at] = next() as u8,
                    1 => v.truncate(at),
                    2 => v.insert(at, ALPHABET[(next() as usize) % ALPHABET.len()]),
                    _ => {
                        let end = (at + (next() as usize) % 8).min(v.len());
                        let piece = v[at..end].to_vec();
                        v.splice(at..at, piece);
                    }
                }
            }
            cases.push(v);
        }
        let sent = cases.clone();
        let server = thread::spawn(move || {
            for case in sent {
                let (mut s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let _ = s.write_all(&case);
            }
        });
        for case in &cases {
            let mut c = Conn::connect(&url, Duration::from_secs(5)).unwrap();
            if let Ok((_, body, _)) = fetch(&mut c, &url) {
                assert!(body.len() <= case.len(), "{}", String::from_utf8_lossy(case));
            }
        }
        server.join().unwrap();
    }

    /// Any byte stream carries a connection ([`Conn::over`], what the fuzz target uses): two
    /// responses on one connection, and the requests that went out.
    #[test]
    fn over_a_stream_in_memory() {
        struct Mem {
            input: io::Cursor<Vec<u8>>,
            output: Vec<u8>,
        }
        impl Read for Mem {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl Write for Mem {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab\
                      HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ncde\r\n0\r\n\r\n";
        let stream = Mem {
            input: io::Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        let url = Url::parse("http://h:8/a/b").unwrap();
        let mut c = Conn::over(stream, &url);
        assert!(c.serves(&url));
        for want in [&b"ab"[..], b"cde"] {
            let head = c.get(&url).unwrap();
            let mut body = c.body(&head);
            let mut got = Vec::new();
            body.read_to_end(&mut got).unwrap();
            assert_eq!(got, want);
            assert!(body.reusable());
        }
        let sent = String::from_utf8(c.sock.get_ref().output.clone()).unwrap();
        assert_eq!(sent.matches("GET /a/b HTTP/1.1\r\nHost: h:8\r\n").count(), 2, "{sent}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/f", l.local_addr().unwrap())).unwrap();
        let mut c = Conn::connect(&url, Duration::from_millis(200)).unwrap();
        let e = c.get(&url).unwrap_err();
        assert!(
            matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
            "{e}"
        );
        drop(l);
    }
}
