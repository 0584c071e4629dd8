// SPDX-License-Identifier: MIT OR Apache-2.0
//! Fetching a remote repository's objects (`objects/XX/<62 hex>` below a base URL) over plain
//! HTTP into an object store: the per-object loop of `cfsctl pull`, without the interpreter.
//!
//! Protocol, for each object:
//! - `GET BASE/objects/XX/<62 hex>` on a keep-alive connection taken from the fetcher's idle
//!   ones (or a new one); redirects (301, 302, 303, 307, 308) followed at most [`MAX_REDIRECTS`]
//!   times, to plain `http://` only;
//! - a 200 body goes straight into [`Store::insert_expected`], the store's one rule for contents
//!   that must be a given object: hashed as it is kept, at most the size the image records, and
//!   linked under its name only if it matches. A body that does not match is *refused*: counted,
//!   never stored, and the other objects go on;
//! - 404 and other 4xx end the whole fetch; 429, 5xx, connection errors, timeouts and bodies cut
//!   short are retried with back-off (0.5 s, 1 s, 2 s, ...) up to [`Options::attempts`] tries;
//! - [`Fetcher::stop`] (Ctrl-C, or the first error that ends the fetch) shuts every socket in
//!   use down, so no thread waits out a timeout; a body being stored when that happens is
//!   dropped with its unnamed temporary. A `kill -9` leaves nothing under an object's name either
//!   (the store's protocol).

use crate::http::{self, Conn, Url};
use crate::store::{self, object_name, Inserted, Store};
use crate::tree::Digest;
use std::io::{self, Read};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const MAX_REDIRECTS: usize = 5;
/// The most of a redirect's or an error's body read (to keep the connection) before dropping it.
const DRAIN: u64 = 64 << 10;

/// How a [`Fetcher`] behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// No progress on a socket for this long fails the attempt.
    pub timeout: Duration,
    /// Tries of one object before the fetch fails.
    pub attempts: u32,
    /// The first back-off; each next one doubles.
    pub delay: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(30),
            attempts: 4,
            delay: Duration::from_millis(500),
        }
    }
}

/// What ended a fetch. Messages name the object (`object XX/<62 hex>`) as users see them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: not found")]
    NotFound { what: String, url: String },
    #[error("{what}: HTTP {status}")]
    Status { what: String, url: String, status: u16 },
    #[error("{what}: more than {MAX_REDIRECTS} redirects")]
    Redirects { what: String, url: String },
    #[error("{what}: redirected to {location:?}: only plain http:// is followed")]
    Redirect {
        what: String,
        url: String,
        location: String,
    },
    #[error("{what}: {why} (after {attempts} attempts)")]
    GaveUp { what: String, why: String, attempts: u32 },
    #[error("invalid repository URL: {0}")]
    Url(#[from] http::UrlError),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("stopped")]
    Stopped,
}

impl Error {
    /// The URL the error concerns, when it is about one.
    pub fn url(&self) -> Option<&str> {
        match self {
            Error::NotFound { url, .. }
            | Error::Status { url, .. }
            | Error::Redirects { url, .. }
            | Error::Redirect { url, .. } => Some(url),
            _ => None,
        }
    }
}

/// What became of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// The store had it (or another fetch added it meanwhile).
    Reused,
    /// The server's copy did not match its name (or was longer than recorded): not stored.
    Refused,
}

/// One object to fetch: its digest and the size its image records (the most accepted).
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub digest: Digest,
    pub size: u64,
}

/// What [`Fetcher::fetch_all`] did.
#[derive(Debug, Default)]
pub struct Summary {
    pub stored: u64,
    pub reused: u64,
    /// Objects whose server copy was refused, in no particular order.
    pub refused: Vec<Digest>,
}

/// An attempt's failure: worth another try, or the end.
enum Failure {
    Transient(String),
    Fatal(Error),
}

/// Fetches objects below one base URL into one store; shareable between threads.
pub struct Fetcher {
    base: Url,
    store: Arc<Store>,
    opts: Options,
    idle: Mutex<Vec<Conn>>,
    /// Sockets in use, by ticket, for [`Fetcher::stop`].
    busy: Mutex<Vec<(u64, TcpStream)>>,
    tickets: AtomicU64,
    stopped: AtomicBool,
    bytes: AtomicU64,
    done: AtomicU64,
}

impl Fetcher {
    /// A fetcher of the repository at `base` (`http://HOST[:PORT]/PATH`).
    pub fn new(base: &str, store: Arc<Store>, opts: Options) -> Result<Fetcher, Error> {
        let mut base = Url::parse(base)?;
        if let Some(q) = base.path.find('?') {
            base.path.truncate(q);
        }
        while base.path.ends_with('/') {
            base.path.pop();
        }
        Ok(Fetcher {
            base,
            store,
            opts,
            idle: Mutex::new(Vec::new()),
            busy: Mutex::new(Vec::new()),
            tickets: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }

    /// Body bytes received so far (those of attempts that failed included).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Objects finished so far (stored, reused or refused).
    pub fn done(&self) -> u64 {
        self.done.load(Relaxed)
    }

    /// End every fetch in progress as soon as possible ([`Error::Stopped`]); for good.
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
        for (_, s) in self.busy.lock().unwrap().iter() {
            http::shutdown(s);
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Relaxed)
    }

    /// Fetch every object of `objects` with `jobs` threads. The calling thread runs `tick`
    /// about every `every` until the work is done; when `tick` says false the fetch stops.
    /// The first error that is not a refused object ends it ([`Fetcher::stop`]) and is returned.
    pub fn fetch_all(
        &self,
        objects: &[Object],
        jobs: usize,
        every: Duration,
        mut tick: impl FnMut() -> bool,
    ) -> Result<Summary, Error> {
        let next = AtomicUsize::new(0);
        let running = AtomicUsize::new(jobs.clamp(1, objects.len().max(1)));
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let summary = Mutex::new(Summary::default());
        let main = std::thread::current();
        std::thread::scope(|scope| {
            for _ in 0..running.load(Relaxed) {
                scope.spawn(|| {
                    while !self.is_stopped() {
                        let i = next.fetch_add(1, Relaxed);
                        let Some(obj) = objects.get(i) else { break };
                        match self.fetch(obj) {
                            Ok(how) => {
                                let mut s = summary.lock().unwrap();
                                match how {
                                    Outcome::Stored => s.stored += 1,
                                    Outcome::Reused => s.reused += 1,
                                    Outcome::Refused => s.refused.push(obj.digest),
                                }
                            }
                            Err(Error::Stopped) => break,
                            Err(e) => {
                                first_error.lock().unwrap().get_or_insert(e);
                                self.stop();
                                break;
                            }
                        }
                    }
                    running.fetch_sub(1, Relaxed);
                    main.unpark();
                });
            }
            while running.load(Relaxed) > 0 {
                if !tick() {
                    self.stop();
                }
                std::thread::park_timeout(every);
            }
        });
        if let Some(e) = first_error.into_inner().unwrap() {
            return Err(e);
        }
        if self.is_stopped() {
            return Err(Error::Stopped);
        }
        Ok(summary.into_inner().unwrap())
    }

    /// Fetch one object, retrying what is worth retrying.
    pub fn fetch(&self, obj: &Object) -> Result<Outcome, Error> {
        let rel = object_name(&obj.digest);
        let what = format!("object {rel}");
        let url = Url {
            path: format!("{}/objects/{rel}", self.base.path),
            ..self.base.clone()
        };
        let mut why = String::new();
        for attempt in 0..self.opts.attempts.max(1) {
            if attempt > 0 && !self.sleep(self.opts.delay * (1 << (attempt - 1).min(16))) {
                return Err(Error::Stopped);
            }
            if self.is_stopped() {
                return Err(Error::Stopped);
            }
            match self.attempt(&url, obj, &rel, &what) {
                Ok(how) => {
                    self.done.fetch_add(1, Relaxed);
                    return Ok(how);
                }
                Err(_) if self.is_stopped() => return Err(Error::Stopped),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(w)) => why = w,
            }
        }
        Err(Error::GaveUp {
            what,
            why,
            attempts: self.opts.attempts.max(1),
        })
    }

    /// Sleep `d` unless stopped meanwhile; false when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let end = std::time::Instant::now() + d;
        while !self.is_stopped() {
            let now = std::time::Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
        false
    }

    fn attempt(&self, start: &Url, obj: &Object, rel: &str, what: &str) -> Result<Outcome, Failure> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let (mut conn, ticket) = self.checkout(&url)?;
            let head = match conn.get(&url) {
                // A kept connection the server has closed meanwhile: once more on a new one.
                Err(e) if conn.used > 1 && stale(&e) => {
                    self.checkin(conn, ticket, false);
                    let (c, t) = self.fresh(&url)?;
                    conn = c;
                    match conn.get(&url) {
                        Ok(h) => (h, t),
                        Err(e) => {
                            self.checkin(conn, t, false);
                            return Err(Failure::Transient(describe(&e)));
                        }
                    }
                }
                Err(e) => {
                    self.checkin(conn, ticket, false);
                    return Err(Failure::Transient(describe(&e)));
                }
                Ok(h) => (h, ticket),
            };
            let (head, ticket) = head;
            let full = || format!("http://{}{}", url.authority, url.path);
            match head.status {
                301 | 302 | 303 | 307 | 308 if head.location.is_some() => {
                    let location = head.location.clone().unwrap_or_default();
                    let keep = conn.body(&head).drain(DRAIN);
                    self.checkin(conn, ticket, keep);
                    url = match url.join(&location) {
                        Ok(Some(u)) => u,
                        Ok(None) => {
                            return Err(Failure::Fatal(Error::Redirect {
                                what: what.to_string(),
                                url: full(),
                                location,
                            }))
                        }
                        Err(e) => return Err(Failure::Fatal(e.into())),
                    };
                }
                200 => {
                    let mut body = conn.body(&head);
                    let mut net = NetReader {
                        body: &mut body,
                        fetcher: self,
                        error: None,
                    };
                    let r = self
                        .store
                        .insert_expected(&mut net, &obj.digest, obj.size, Path::new(rel));
                    let net_error = net.error.take();
                    let keep = body.reusable();
                    self.checkin(conn, ticket, keep);
                    return match r {
                        Ok((_, Inserted::Stored)) => Ok(Outcome::Stored),
                        Ok((_, Inserted::Reused)) => Ok(Outcome::Reused),
                        Err(_) if net_error.is_some() => Err(Failure::Transient(net_error.unwrap_or_default())),
                        Err(store::Error::Mismatch { .. }) => Ok(Outcome::Refused),
                        Err(store::Error::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidData => {
                            // longer than the image records: a wrong object as well
                            Ok(Outcome::Refused)
                        }
                        Err(e) => Err(Failure::Fatal(e.into())),
                    };
                }
                status => {
                    let keep = conn.body(&head).drain(DRAIN);
                    self.checkin(conn, ticket, keep);
                    let (what, url) = (what.to_string(), full());
                    return Err(match status {
                        404 => Failure::Fatal(Error::NotFound { what, url }),
                        429 | 500..=599 => Failure::Transient(format!("HTTP {status}")),
                        _ => Failure::Fatal(Error::Status { what, url, status }),
                    });
                }
            }
        }
        Err(Failure::Fatal(Error::Redirects {
            what: what.to_string(),
            url: format!("http://{}{}", url.authority, url.path),
        }))
    }

    /// An idle connection to `url`'s server, or a new one; registered as busy.
    fn checkout(&self, url: &Url) -> Result<(Conn, u64), Failure> {
        let kept = {
            let mut idle = self.idle.lock().unwrap();
            idle.iter().rposition(|c| c.serves(url)).map(|i| idle.swap_remove(i))
        };
        match kept {
            Some(c) => Ok(self.register(c)),
            None => self.fresh(url),
        }
    }

    fn fresh(&self, url: &Url) -> Result<(Conn, u64), Failure> {
        if self.is_stopped() {
            return Err(Failure::Fatal(Error::Stopped));
        }
        let c = Conn::connect(url, self.opts.timeout).map_err(|e| Failure::Transient(describe(&e)))?;
        Ok(self.register(c))
    }

    fn register(&self, c: Conn) -> (Conn, u64) {
        let ticket = self.tickets.fetch_add(1, Relaxed);
        if let Ok(h) = c.handle() {
            self.busy.lock().unwrap().push((ticket, h));
        }
        if self.is_stopped() {
            // stop() ran between the check and the registration: shut this one down too
            if let Ok(h) = c.handle() {
                http::shutdown(&h);
            }
        }
        (c, ticket)
    }

    /// Done with a connection: kept for the next request when `keep`, else closed.
    fn checkin(&self, c: Conn, ticket: u64, keep: bool) {
        self.busy.lock().unwrap().retain(|(t, _)| *t != ticket);
        if keep && !self.is_stopped() {
            self.idle.lock().unwrap().push(c);
        }
    }
}

/// Whether an error on a kept connection's first bytes means the server had closed it.
fn stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// An I/O error as users read it: the system's words, without Rust's "(os error N)".
fn describe(e: &io::Error) -> String {
    if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
        return "timed out".to_string();
    }
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A response body as the store reads it: bytes counted, a stop honoured, and the network's
/// error kept so that it is told apart from the store's own.
struct NetReader<'a, 'b> {
    body: &'a mut http::Body<'b>,
    fetcher: &'a Fetcher,
    error: Option<String>,
}

impl Read for NetReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fetcher.is_stopped() {
            // Never `Interrupted`: `read_to_end` and `io::copy` retry that, and would spin here
            // for ever (every later read answers the same).
            self.error.get_or_insert_with(|| "stopped".to_string());
            return Err(io::Error::other("stopped"));
        }
        match self.body.read(buf) {
            Ok(n) => {
                self.fetcher.bytes.fetch_add(n as u64, Relaxed);
                Ok(n)
            }
            Err(e) => {
                let msg = describe(&e);
                self.error.get_or_insert_with(|| msg.clone());
                // not Interrupted either (see above)
                Err(io::Error::other(msg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsverity;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::PathBuf;

    fn tmpdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cfs-fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A keep-alive server on 127.0.0.1 answering `GET /r/objects/XX/REST` from `files` (by
    /// name) with `answer`, which sees the request count and may return a raw response instead.
    fn server(
        files: Vec<(String, Vec<u8>)>,
        answer: impl Fn(usize, &str, Option<&Vec<u8>>) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/r", l.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let (files, answer, n) = (Arc::new(files), Arc::new(answer), count.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (files, answer, n) = (files.clone(), answer.clone(), n.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    loop {
                        let mut first = String::new();
                        if r.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                            line.clear();
                        }
                        let path = first.split(' ').nth(1).unwrap_or("").to_string();
                        let i = n.fetch_add(1, Relaxed);
                        let file = files.iter().find(|(p, _)| *p == path).map(|(_, d)| d);
                        let resp = answer(i, &path, file).unwrap_or_else(|| match file {
                            Some(d) => {
                                let mut v =
                                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", d.len()).into_bytes();
                                v.extend_from_slice(d);
                                v
                            }
                            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        });
                        if resp.is_empty() || w.write_all(&resp).is_err() {
                            return; // an empty answer: the connection drops
                        }
                    }
                });
            }
        });
        (base, count)
    }

    fn objects(n: usize) -> (Vec<Object>, Vec<(String, Vec<u8>)>) {
        let mut objs = Vec::new();
        let mut files = Vec::new();
        for i in 0..n {
            let data: Vec<u8> = (0..(100 + i * 7919 % 300_000)).map(|j| (j * 31 + i) as u8).collect();
            let d = fsverity::sha256_digest(&data);
            objs.push(Object {
                digest: d,
                size: data.len() as u64,
            });
            files.push((format!("/r/objects/{}", object_name(&d)), data));
        }
        (objs, files)
    }

    fn quick() -> Options {
        Options {
            timeout: Duration::from_secs(5),
            attempts: 3,
            delay: Duration::from_millis(10),
        }
    }

    #[test]
    fn all_objects_stored_over_few_connections() {
        let (objs, files) = objects(40);
        let (base, count) = server(files.clone(), |_, _, _| None);
        let dir = tmpdir("all");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        let f = Fetcher::new(&base, store.clone(), quick()).unwrap();
        let s = f.fetch_all(&objs, 4, Duration::from_millis(10), || true).unwrap();
        assert_eq!((s.stored, s.reused, s.refused.len()), (40, 0, 0));
        assert_eq!(count.load(Relaxed), 40);
        for (o, (_, data)) in objs.iter().zip(&files) {
            assert_eq!(&std::fs::read(store.object_path(&o.digest)).unwrap(), data);
        }
        assert_eq!(f.bytes(), files.iter().map(|(_, d)| d.len() as u64).sum::<u64>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_bodies_are_refused_and_the_rest_goes_on() {
        let (objs, files) = objects(6);
        let victim = files[2].0.clone();
        let (base, _) = server(files, move |_, path, file| {
            (path == victim).then(|| {
                let mut d = file.unwrap().clone();
                d[0] ^= 1;
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", d.len()).into_bytes();
                v.extend_from_slice(&d);
                v
            })
        });
        let dir = tmpdir("refused");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        let f = Fetcher::new(&base, store.clone(), quick()).unwrap();
        let s = f.fetch_all(&objs, 2, Duration::from_millis(10), || true).unwrap();
        assert_eq!((s.stored, s.refused.clone()), (5, vec![objs[2].digest]));
        assert!(!store.contains(&objs[2].digest));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transient_failures_are_retried_then_given_up() {
        let (objs, files) = objects(3);
        // every first request of an object: a 503, a dropped connection or a cut-short body
        let (base, _) = server(files, |i, _, file| match i {
            0 => Some(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec()),
            2 => Some(Vec::new()),
            4 => Some(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nab", file.unwrap().len()).into_bytes()),
            _ => None,
        });
        let dir = tmpdir("retry");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        // a body cut short and then silence: the timeout ends that attempt
        let opts = Options {
            timeout: Duration::from_millis(300),
            ..quick()
        };
        let f = Fetcher::new(&base, store.clone(), opts).unwrap();
        for o in &objs {
            assert_eq!(f.fetch(o).unwrap(), Outcome::Stored);
        }
        let (base, _) = server(vec![], |_, _, _| {
            Some(b"HTTP/1.1 500 No\r\nContent-Length: 0\r\n\r\n".to_vec())
        });
        let f = Fetcher::new(&base, store.clone(), quick()).unwrap();
        let e = f.fetch(&objects(4).0[3]).unwrap_err().to_string();
        assert!(
            e.ends_with(": HTTP 500 (after 3 attempts)") && e.starts_with("object "),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redirects_are_followed_within_bounds_and_not_found_ends_the_fetch() {
        let (objs, mut files) = objects(4);
        let moved = files[1].0.clone();
        let looping = files[2].0.clone();
        let secure = files[3].0.clone();
        files[1].0 = format!("/elsewhere{moved}");
        let (base, _) = server(files, move |_, path, _| {
            let to = |loc: String| {
                Some(format!("HTTP/1.1 301 Moved\r\nLocation: {loc}\r\nContent-Length: 0\r\n\r\n").into_bytes())
            };
            if path == moved {
                to(format!("/elsewhere{path}"))
            } else if path == looping {
                to(path.rsplit('/').next().unwrap().to_string())
            } else if path == secure {
                to(format!("https://example.invalid{path}"))
            } else {
                None
            }
        });
        let dir = tmpdir("redirect");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        let f = Fetcher::new(&base, store.clone(), quick()).unwrap();
        assert_eq!(f.fetch(&objs[0]).unwrap(), Outcome::Stored);
        assert_eq!(f.fetch(&objs[1]).unwrap(), Outcome::Stored);
        assert!(matches!(f.fetch(&objs[2]).unwrap_err(), Error::Redirects { .. }));
        assert!(matches!(f.fetch(&objs[3]).unwrap_err(), Error::Redirect { .. }));
        let missing = objects(5).0[4];
        let e = f
            .fetch_all(&[objs[0], missing], 1, Duration::from_millis(10), || true)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("object {}: not found", object_name(&missing.digest))
        );
        assert!(e.url().unwrap().ends_with(&object_name(&missing.digest)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_ends_a_stalled_fetch_at_once_and_stores_nothing() {
        let (objs, files) = objects(4);
        // headers and half a body, then nothing: only the stop (or the timeout) ends the read
        let (base, _) = server(files, |_, _, file| {
            let d = file.unwrap();
            let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", d.len()).into_bytes();
            v.extend_from_slice(&d[..d.len() / 2]);
            Some(v)
        });
        let dir = tmpdir("stop");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        let opts = Options {
            timeout: Duration::from_secs(60),
            ..quick()
        };
        let f = Fetcher::new(&base, store.clone(), opts).unwrap();
        let t = std::time::Instant::now();
        let mut ticks = 0;
        let e = f
            .fetch_all(&objs, 4, Duration::from_millis(20), || {
                ticks += 1;
                ticks < 10
            })
            .unwrap_err();
        assert!(matches!(e, Error::Stopped), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(objs.iter().all(|o| !store.contains(&o.digest)));
        assert_eq!(std::fs::read_dir(dir.join("objects")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_between_two_reads_of_a_flowing_body_ends_the_fetch() {
        // The body never stalls (a server streaming as fast as it can), so a thread is most
        // often between two reads, not blocked in one, when the stop comes: the next read must
        // end the copy. (It once answered `Interrupted`, which `read_to_end`/`io::copy` retry:
        // the thread spun for ever and the fetch never returned.)
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/r", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    let mut w = s;
                    let chunk = vec![7u8; 64 << 10];
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n");
                    while w.write_all(&chunk).is_ok() {}
                });
            }
        });
        let dir = tmpdir("flowing");
        let store = Arc::new(Store::open(&dir.join("objects")).unwrap());
        let objs: Vec<Object> = (0..2u8)
            .map(|i| Object {
                digest: [i; 32],
                size: 1 << 30,
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let f = Arc::new(Fetcher::new(&base, store, quick()).unwrap());
        let runner = f.clone();
        std::thread::spawn(move || {
            let mut ticks = 0;
            let r = runner.fetch_all(&objs, 2, Duration::from_millis(20), || {
                ticks += 1;
                ticks < 5
            });
            let _ = tx.send(r.map(|_| ()));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(r) => assert!(matches!(r, Err(Error::Stopped)), "{r:?}"),
            Err(_) => panic!("the fetch did not end within 20 s of the stop"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
