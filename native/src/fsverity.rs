//! fs-verity digests, exactly as the kernel computes them
//! (Documentation/filesystems/fsverity.rst): a Merkle tree over the zero-padded data blocks, the
//! salt (zero-padded to the hash's input block size) prepended to every hashed block, and the
//! 256-byte `fsverity_descriptor` hashed last. Empty data has an all-zero root hash.

use sha2::{Digest as _, Sha256, Sha512};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

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
    Io { path: std::path::PathBuf, source: io::Error },
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
        Params { alg: HashAlg::Sha256, block_size: 4096, salt: Vec::new() }
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

/// A hasher with the padded salt already absorbed, cloned for every block.
#[derive(Clone)]
pub(crate) enum BlockHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl BlockHasher {
    pub(crate) fn new(params: &Params) -> BlockHasher {
        let salt = params.padded_salt();
        match params.alg {
            HashAlg::Sha256 => {
                let mut h = Sha256::new();
                h.update(&salt);
                BlockHasher::Sha256(h)
            }
            HashAlg::Sha512 => {
                let mut h = Sha512::new();
                h.update(&salt);
                BlockHasher::Sha512(h)
            }
        }
    }

    /// Hash one block, zero-padding `data` to `block_size`; append the digest to `out`.
    pub(crate) fn hash_block(&self, data: &[u8], block_size: usize, out: &mut Vec<u8>) {
        const ZEROS: [u8; 65536] = [0; 65536];
        let pad = &ZEROS[..block_size - data.len()];
        match self.clone() {
            BlockHasher::Sha256(mut h) => {
                h.update(data);
                h.update(pad);
                out.extend_from_slice(&h.finalize());
            }
            BlockHasher::Sha512(mut h) => {
                h.update(data);
                h.update(pad);
                out.extend_from_slice(&h.finalize());
            }
        }
    }
}

/// Given the concatenated level-0 hashes, build the upper levels and return the root hash.
/// `level0` must hold at least one hash (non-empty data).
pub(crate) fn root_from_level0(params: &Params, mut level: Vec<u8>) -> Vec<u8> {
    let bs = params.block_size as usize;
    let ds = params.alg.digest_size();
    let hasher = BlockHasher::new(params);
    while level.len() > ds {
        let mut next = Vec::with_capacity(level.len().div_ceil(bs) * ds);
        for block in level.chunks(bs) {
            hasher.hash_block(block, bs, &mut next);
        }
        level = next;
    }
    level
}

/// The final digest: the hash of the `fsverity_descriptor` for this root hash and size.
pub(crate) fn descriptor_digest(params: &Params, root_hash: &[u8], data_size: u64) -> Vec<u8> {
    let mut desc = [0u8; 256];
    desc[0] = 1; // version
    desc[1] = params.alg as u8;
    desc[2] = params.block_size.trailing_zeros() as u8;
    desc[3] = params.salt.len() as u8;
    // desc[4..8]: sig_size, always 0
    desc[8..16].copy_from_slice(&data_size.to_le_bytes());
    desc[16..16 + root_hash.len()].copy_from_slice(root_hash);
    desc[80..80 + params.salt.len()].copy_from_slice(&params.salt);
    match params.alg {
        HashAlg::Sha256 => Sha256::digest(desc).to_vec(),
        HashAlg::Sha512 => Sha512::digest(desc).to_vec(),
    }
}

/// Digest of an in-memory byte string.
pub fn digest_bytes(data: &[u8], params: &Params) -> Vec<u8> {
    let bs = params.block_size as usize;
    let root = if data.is_empty() {
        vec![0u8; params.alg.digest_size()]
    } else {
        let hasher = BlockHasher::new(params);
        let mut level0 = Vec::with_capacity(data.len().div_ceil(bs) * params.alg.digest_size());
        for block in data.chunks(bs) {
            hasher.hash_block(block, bs, &mut level0);
        }
        root_from_level0(params, level0)
    };
    descriptor_digest(params, &root, data.len() as u64)
}

/// Digest of everything `reader` yields.
pub fn digest_reader<R: Read>(mut reader: R, params: &Params) -> io::Result<Vec<u8>> {
    let bs = params.block_size as usize;
    let hasher = BlockHasher::new(params);
    let mut level0 = Vec::new();
    let mut buf = vec![0u8; bs.max(1 << 20)];
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
        for block in buf[..filled].chunks(bs) {
            hasher.hash_block(block, bs, &mut level0);
        }
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    let root = if total == 0 {
        vec![0u8; params.alg.digest_size()]
    } else {
        root_from_level0(params, level0)
    };
    Ok(descriptor_digest(params, &root, total))
}

/// Digest of a regular file's contents.
pub fn digest_file(path: &Path, params: &Params) -> Result<Vec<u8>, Error> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(Error::NotRegular { path: path.to_path_buf() });
    }
    digest_reader(file, params).map_err(io_err)
}

/// The default composefs digest (sha256, 4 KiB blocks, no salt) of a byte string.
pub fn sha256_digest(data: &[u8]) -> [u8; 32] {
    let d = digest_bytes(data, &Params::default());
    d.try_into().expect("sha256 digest is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn matches_conformance_rows() {
        let rows = [
            (0usize, "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"),
            (1, "b2382412cad9bfb3087625f76dd4caaee741bb0fe0b2ad47a70a05e8483d5387"),
            (64, "fb27e04752a22bad51c16a2663dfcd7c629475ea56bec54ec6b919220b7b48e9"),
        ];
        for (n, want) in rows {
            let data = stream(n);
            assert_eq!(hex(&digest_bytes(&data, &Params::default())), want, "size {n}");
            let r = digest_reader(&data[..], &Params::default()).unwrap();
            assert_eq!(hex(&r), want, "reader, size {n}");
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Params::new(HashAlg::Sha256, 3000, vec![]).is_err());
        assert!(Params::new(HashAlg::Sha256, 512, vec![]).is_err());
        assert!(Params::new(HashAlg::Sha256, 4096, vec![0; 33]).is_err());
        assert!(Params::new(HashAlg::Sha512, 65536, vec![0; 32]).is_ok());
    }
}
