// SPDX-License-Identifier: MIT OR Apache-2.0
//! Helpers shared by the fuzz targets in `src/bin/`: a reader of fuzzer-chosen parameters and an
//! independent fs-verity implementation on the `sha2` crate alone (the differential's reference).
//!
//! A target is one file, `src/bin/NAME.rs`, holding a `fuzz_target!`; its seeds live in
//! `corpus/NAME/`. The Makefile finds targets by listing that folder.

use sha2::{Digest, Sha256, Sha512};

/// Takes fuzzer-chosen values off the front of the input; past the end every value is zero, so
/// any input, however short, is a valid choice.
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Choices { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not taken yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The fs-verity hash functions, for the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefAlg {
    Sha256,
    Sha512,
}

fn ref_hash(alg: RefAlg, salt: &[u8], block: &[u8]) -> Vec<u8> {
    match alg {
        RefAlg::Sha256 => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(block);
            h.finalize().to_vec()
        }
        RefAlg::Sha512 => {
            let mut h = Sha512::new();
            h.update(salt);
            h.update(block);
            h.finalize().to_vec()
        }
    }
}

/// The fs-verity digest as Documentation/filesystems/fsverity.rst defines it, written as plainly
/// as possible and sharing no code with the core: each level hashes the zero-padded blocks of the
/// level below behind the salt (zero-padded to the hash's input block), until one hash is left;
/// empty data has an all-zero root; the digest is the unsalted hash of the 256-byte descriptor.
pub fn reference_fsverity(alg: RefAlg, block_size: usize, salt: &[u8], data: &[u8]) -> Vec<u8> {
    let (digest_size, input_block, alg_id) = match alg {
        RefAlg::Sha256 => (32, 64, 1u8),
        RefAlg::Sha512 => (64, 128, 2u8),
    };
    let mut padded_salt = salt.to_vec();
    if !salt.is_empty() {
        padded_salt.resize(salt.len().div_ceil(input_block) * input_block, 0);
    }
    let root = if data.is_empty() {
        vec![0u8; digest_size]
    } else {
        let mut level = data.to_vec();
        loop {
            let mut next = Vec::new();
            for chunk in level.chunks(block_size) {
                let mut block = chunk.to_vec();
                block.resize(block_size, 0);
                next.extend_from_slice(&ref_hash(alg, &padded_salt, &block));
            }
            level = next;
            if level.len() == digest_size {
                break level;
            }
        }
    };
    let mut desc = [0u8; 256];
    desc[0] = 1;
    desc[1] = alg_id;
    desc[2] = block_size.trailing_zeros() as u8;
    desc[3] = salt.len() as u8;
    desc[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
    desc[16..16 + digest_size].copy_from_slice(&root);
    desc[80..80 + salt.len()].copy_from_slice(salt);
    ref_hash(alg, &[], &desc)
}
