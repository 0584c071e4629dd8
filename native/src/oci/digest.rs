// SPDX-License-Identifier: MIT OR Apache-2.0
//! OCI content digests (`sha256:<64 hex>`, `sha512:<128 hex>`) and the streaming verifier.
//!
//! A digest string from a manifest, an index, a config or a reference is parsed by
//! [`BlobDigest::parse`] before it is used for anything (a path, a URL, a comparison): only the
//! two registered algorithms with lower-case hex of the exact length pass. [`Verified`] wraps a
//! reader and hashes and counts every byte that goes through it; reading past the expected size
//! is an error at once, and [`Verified::finish`] drains the rest and compares size and digest.

use sha2::{Digest as _, Sha256, Sha512};
use std::fmt;
use std::io::{self, Read};

/// A digest algorithm registered by the OCI image spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated `algorithm:hex` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobDigest {
    pub alg: Algorithm,
    /// Lower-case hex, exactly as long as the algorithm's output.
    pub hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
    Invalid(String),
}

impl BlobDigest {
    pub fn parse(s: &str) -> Result<BlobDigest, DigestError> {
        let bad = || {
            let shown: String = s.chars().take(140).collect();
            DigestError::Invalid(shown)
        };
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let alg = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(bad()),
        };
        if hex.len() != alg.hex_len() || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        Ok(BlobDigest {
            alg,
            hex: hex.to_string(),
        })
    }

    /// The digest of `data` with `alg`.
    pub fn of(alg: Algorithm, data: &[u8]) -> BlobDigest {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.alg.name(), self.hex)
    }
}

/// An incremental hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    pub fn finish(self) -> BlobDigest {
        let (alg, bytes) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        BlobDigest {
            alg,
            hex: crate::dump::write::hex_digest(&bytes),
        }
    }
}

/// What a blob failed on.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("digest mismatch")]
    Mismatch { got: BlobDigest },
    /// A blob of another size is not the blob its digest names either.
    #[error("digest mismatch (size {got} bytes where the descriptor says {want})")]
    Size { got: u64, want: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Check bytes already in memory against a digest and (when known) a size.
pub fn verify_bytes(data: &[u8], want: &BlobDigest, size: Option<u64>) -> Result<(), VerifyError> {
    if let Some(s) = size {
        if data.len() as u64 != s {
            return Err(VerifyError::Size {
                got: data.len() as u64,
                want: s,
            });
        }
    }
    let got = BlobDigest::of(want.alg, data);
    if &got != want {
        return Err(VerifyError::Mismatch { got });
    }
    Ok(())
}

/// A reader that hashes and counts everything read through it. With an expected size, a read
/// that would go past it fails at once (so a lying server cannot make us read forever).
pub struct Verified<R> {
    inner: R,
    hasher: Hasher,
    read: u64,
    limit: Option<u64>,
}

/// An `io::Error` carrying a size overrun; [`Verified::finish`]'s caller sees it as
/// [`VerifyError::Size`] through [`classify`].
#[derive(Debug)]
struct Overrun {
    want: u64,
}

impl fmt::Display for Overrun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "digest mismatch (more than the {} bytes the descriptor says)",
            self.want
        )
    }
}

impl std::error::Error for Overrun {}

impl<R: Read> Verified<R> {
    pub fn new(inner: R, alg: Algorithm, limit: Option<u64>) -> Verified<R> {
        Verified {
            inner,
            hasher: Hasher::new(alg),
            read: 0,
            limit,
        }
    }

    /// Read what is left (up to the limit, plus one byte to detect an overrun), compare size and
    /// digest, and return the bytes read.
    pub fn finish(self, want: &BlobDigest) -> Result<u64, VerifyError> {
        Ok(self.finish_into(want)?.1)
    }

    /// [`Verified::finish`], handing back the inner reader and the byte count.
    pub fn finish_into(mut self, want: &BlobDigest) -> Result<(R, u64), VerifyError> {
        let n = self.drain()?;
        let got = self.hasher.finish();
        if &got != want {
            return Err(VerifyError::Mismatch { got });
        }
        Ok((self.inner, n))
    }

    /// Read what is left and check the size only (for a blob no digest names).
    pub fn finish_unchecked(mut self) -> Result<(R, u64), VerifyError> {
        let n = self.drain()?;
        Ok((self.inner, n))
    }

    /// The inner reader, unchecked.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn drain(&mut self) -> Result<u64, VerifyError> {
        io::copy(self, &mut io::sink()).map_err(classify)?;
        if let Some(l) = self.limit {
            if self.read != l {
                return Err(VerifyError::Size {
                    got: self.read,
                    want: l,
                });
            }
        }
        Ok(self.read)
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(l) = self.limit {
            if self.read > l {
                return Err(io::Error::new(io::ErrorKind::InvalidData, Overrun { want: l }));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An I/O error from a [`Verified`] reader as a [`VerifyError`] (overruns become size errors).
pub fn classify(e: io::Error) -> VerifyError {
    if let Some(o) = e.get_ref().and_then(|r| r.downcast_ref::<Overrun>()) {
        return VerifyError::Size {
            got: o.want + 1,
            want: o.want,
        };
    }
    VerifyError::Io(e)
}

/// Whether an I/O error is a [`Verified`] size overrun.
pub fn is_overrun(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Overrun>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let ok = [EMPTY256.to_string(), format!("sha512:{}", "0".repeat(128))];
        for s in ok {
            assert_eq!(BlobDigest::parse(&s).unwrap().to_string(), s);
        }
        let bad = [
            "",
            "sha256",
            "sha256:",
            "sha256:../../../../etc/shadow",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "0".repeat(63)),
            &format!("sha256:{}", "0".repeat(65)),
            &format!("sha384:{}", "0".repeat(96)),
            &format!("SHA256:{}", "0".repeat(64)),
            &format!("sha256:{}/", "0".repeat(63)),
        ];
        for s in bad {
            assert!(BlobDigest::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn verified_reader() {
        let want = BlobDigest::parse(EMPTY256).unwrap();
        Verified::new(&b""[..], Algorithm::Sha256, Some(0))
            .finish(&want)
            .unwrap();
        let data = b"hello world";
        let d = BlobDigest::of(Algorithm::Sha256, data);
        Verified::new(&data[..], Algorithm::Sha256, Some(11))
            .finish(&d)
            .unwrap();
        assert!(matches!(
            Verified::new(&data[..], Algorithm::Sha256, Some(10)).finish(&d),
            Err(VerifyError::Size { .. })
        ));
        assert!(matches!(
            Verified::new(&data[..], Algorithm::Sha256, Some(12)).finish(&d),
            Err(VerifyError::Size { got: 11, want: 12 })
        ));
        assert!(matches!(
            Verified::new(&b"hello worle"[..], Algorithm::Sha256, Some(11)).finish(&d),
            Err(VerifyError::Mismatch { .. })
        ));
        let d512 = BlobDigest::of(Algorithm::Sha512, data);
        Verified::new(&data[..], Algorithm::Sha512, None).finish(&d512).unwrap();
        verify_bytes(data, &d512, Some(11)).unwrap();
        assert!(verify_bytes(data, &d, Some(3)).is_err());
    }
}
