// SPDX-License-Identifier: MIT OR Apache-2.0
//! fs-verity digests, every SHA-256 backend this CPU can run (portable, SHA-NI two-way, AVX-512
//! sixteen-way), against an independent implementation on the `sha2` crate (`reference_fsverity`)
//! and against each other, on fuzzer-chosen data, algorithm, Merkle block size, salt, stream
//! pieces and parallel ranges; and the raw many-message SHA-256 of each backend against
//! `sha2::Sha256`, on fuzzer-chosen message lengths and counts (every padding edge).
//!
//! Input: a header of choices (see `Choices`), then the data. The data can be stretched (the body
//! repeated) to a fuzzer-chosen length so that multi-level trees come from short inputs.
#![no_main]

use composefs_native::fsverity::{digest_bytes_with, digest_reader, Chunking, HashAlg, Params, StreamDigest};
use composefs_native::hash::sha256_x2::{avx512_available, set_backend, sha_ni_available, Backend, Prefix};
use composefs_native_fuzz::{reference_fsverity, Choices, RefAlg};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::Once;

/// The backends this CPU runs; the others are not reachable here (`set_backend` would give
/// the portable one), which the target says once at start-up.
fn backends() -> Vec<Backend> {
    static SAY: Once = Once::new();
    let mut v = vec![Backend::Portable];
    if sha_ni_available() {
        v.push(Backend::ShaNi);
    }
    if avx512_available() {
        v.push(Backend::Avx512);
    }
    SAY.call_once(|| eprintln!("fsverity fuzz target: SHA-256 backends on this CPU: {v:?}"));
    v
}

/// A reader that hands out at most `step` bytes per call, as pipes and sockets do.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(self.step);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn check_fsverity(c: &mut Choices, body: &[u8], backends: &[Backend]) {
    let flags = c.byte();
    let (alg, ref_alg) = if flags & 1 == 0 {
        (HashAlg::Sha256, RefAlg::Sha256)
    } else {
        (HashAlg::Sha512, RefAlg::Sha512)
    };
    let block_size = 1024usize << (c.byte() % 7);
    let salt_len = c.byte() as usize % 33;
    let stretch = c.u16() as usize * 4;
    let piece = (c.u16() as usize).max(1);
    let range = c.u32() as u64 % (1 << 20);
    let step = (c.u16() as usize).max(1);
    let salt = c.bytes(salt_len).to_vec();
    let salt_len = salt.len();

    let owned;
    let data: &[u8] = if flags & 2 != 0 && stretch > 0 {
        owned = if body.is_empty() {
            vec![0u8; stretch]
        } else {
            body.iter().copied().cycle().take(stretch).collect::<Vec<u8>>()
        };
        &owned
    } else {
        body
    };

    let params = Params::new(alg, block_size as u32, salt.clone()).expect("valid parameters");
    let expect = reference_fsverity(ref_alg, block_size, &salt, data);
    let parallel = Chunking {
        parallel_threshold: 0,
        chunk_size: range,
    };
    for &b in backends {
        assert_eq!(set_backend(Some(b)), b);
        let seq = digest_bytes_with(data, &params, &Chunking::sequential());
        assert_eq!(
            seq, expect,
            "{b:?} sequential: {alg:?} block {block_size} salt {salt_len}"
        );
        let par = digest_bytes_with(data, &params, &parallel);
        assert_eq!(par, expect, "{b:?} parallel ranges of {range}");
        let mut s = StreamDigest::new(&params);
        for p in data.chunks(piece) {
            s.update(p);
        }
        assert_eq!(s.finish(), expect, "{b:?} stream in pieces of {piece}");
    }
    let r = digest_reader(Trickle { data, step }, &params).expect("reading memory");
    assert_eq!(r, expect, "reader in reads of {step}");
}

fn check_sha256(c: &mut Choices, body: &[u8], backends: &[Backend]) {
    // A prefix of whole 64-byte blocks (fs-verity's padded salt), then equal-length messages:
    // lengths multiple of 64 reach the sixteen-lane code, counts past 16 its remainder handling.
    let prefix_blocks = c.byte() as usize % 3;
    let len_choice = c.u16() as usize;
    let msg_len = if len_choice & 1 == 0 {
        64 * (1 + (len_choice >> 1) % 64)
    } else {
        1 + (len_choice >> 1) % 4200
    };
    let count = 1 + c.byte() as usize % 40;
    let fill = c.byte();
    let prefix: Vec<u8> = (0..prefix_blocks * 64).map(|i| fill.wrapping_add(i as u8)).collect();
    let msgs: Vec<u8> = if body.is_empty() {
        vec![fill; msg_len * count]
    } else {
        body.iter().copied().cycle().take(msg_len * count).collect()
    };
    let expect: Vec<u8> = msgs
        .chunks_exact(msg_len)
        .flat_map(|m| {
            let mut h = Sha256::new();
            h.update(&prefix);
            h.update(m);
            h.finalize().to_vec()
        })
        .collect();
    let p = Prefix::new(&prefix);
    for &b in backends {
        let mut out = Vec::new();
        p.hash_many_with(b, &msgs, msg_len, &mut out);
        assert_eq!(
            out, expect,
            "{b:?} hash_many: {count} messages of {msg_len} after {prefix_blocks} blocks"
        );
        assert_eq!(p.hash_one_with(b, &msgs[..msg_len]), expect[..32], "{b:?} hash_one");
        if count >= 2 {
            let (d0, d1) = p.hash_two_with(b, &msgs[..msg_len], &msgs[msg_len..2 * msg_len]);
            assert_eq!((&d0[..], &d1[..]), (&expect[..32], &expect[32..64]), "{b:?} hash_two");
        }
    }
}

/// Bytes of choices before the data: the fixed fields and a salt of up to 32 bytes.
const HEADER: usize = 48;

fuzz_target!(|data: &[u8]| {
    let backends = backends();
    let mut c = Choices::new(data);
    let which = c.byte();
    let header = c.bytes(HEADER);
    let body = c.rest();
    let mut c = Choices::new(header);
    if which & 1 == 0 {
        check_fsverity(&mut c, body, &backends);
    } else {
        check_sha256(&mut c, body, &backends);
    }
    set_backend(None);
});
