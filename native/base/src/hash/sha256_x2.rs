// SPDX-License-Identifier: MIT OR Apache-2.0
//! SHA-256 of many equal-length messages: sixteen at a time with AVX-512 (`sha256_x16`), two
//! at a time with the SHA extensions.
//!
//! fs-verity hashes long runs of independent, equal-length messages (the Merkle tree blocks, all
//! behind the same salt). One SHA-256 computation is a chain of dependent rounds, so a single
//! stream leaves the CPU's SHA unit idle while each `sha256rnds2` waits for the previous one.
//! Two independent computations with their instructions interleaved fill those gaps (the idea
//! of Linux's `sha256_finup_2x`, used by fs-verity since 6.11).
//!
//! Backends, chosen once at run time (see [`backend`]):
//! - [`Backend::Avx512`]: runs of sixteen messages whose length is a multiple of 64 bytes go
//!   through `sha256_x16` (one message per 32-bit lane of AVX-512 registers); everything else as
//!   with [`Backend::ShaNi`] (or [`Backend::Portable`] on a CPU without the SHA extensions). The
//!   default where the CPU has AVX-512F/BW, unless `CFS_NO_AVX512` is set (non-empty, not `0`);
//! - [`Backend::ShaNi`]: x86-64 SHA extensions (`sha256rnds2`, `sha256msg1`, `sha256msg2`), two
//!   messages interleaved; written from FIPS 180-4 and Intel's SHA extensions documentation;
//! - [`Backend::Portable`]: the `sha2` crate's compression function, one message at a time
//!   (itself SHA-NI or assembly-free Rust, whatever `sha2` picks). Used on other CPUs, or when
//!   the environment variable `CFS_NO_SHA_NI` is set to a non-empty value other than `0`.
//!
//! Every message is hashed from a [`Prefix`]: the state after some whole 64-byte blocks (none for
//! plain SHA-256; fs-verity's zero-padded salt), so the prefix is compressed once, not per
//! message.

use std::sync::atomic::{AtomicU8, Ordering};

/// The SHA-256 chaining state `H0..H7`.
pub type State = [u32; 8];

/// The initial hash value (FIPS 180-4, 5.3.3).
pub const IV: State = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256's input block size in bytes.
pub const BLOCK: usize = 64;
/// Digest size in bytes.
pub const DIGEST: usize = 32;

/// The round constants (FIPS 180-4, 4.2.2), aligned for 16-byte vector loads.
#[repr(C, align(16))]
pub(crate) struct RoundConstants(pub(crate) [u32; 64]);

pub(crate) static K: RoundConstants = RoundConstants([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
]);

/// How the compression function is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// AVX-512, sixteen messages at once, for runs of equal messages; the rest as `ShaNi`.
    Avx512,
    /// x86-64 SHA extensions, two messages interleaved.
    ShaNi,
    /// The `sha2` crate, one message at a time.
    Portable,
}

const UNSET: u8 = 0;
const SHA_NI: u8 = 1;
const PORTABLE: u8 = 2;
const AVX512: u8 = 3;

static BACKEND: AtomicU8 = AtomicU8::new(UNSET);

/// Whether this CPU has the SHA extensions (and the SSE levels the code uses).
pub fn sha_ni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("sse2")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU can run the sixteen-lane AVX-512 code.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::sha256_x16::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `CFS_NO_SHA_NI` forbids every backend but the portable one.
fn env_forbids_sha_ni() -> bool {
    env_set("CFS_NO_SHA_NI")
}

fn env_forbids_avx512() -> bool {
    env_set("CFS_NO_AVX512") || env_forbids_sha_ni()
}

fn encode(b: Backend) -> u8 {
    match b {
        Backend::Avx512 => AVX512,
        Backend::ShaNi => SHA_NI,
        Backend::Portable => PORTABLE,
    }
}

/// The backend in use: AVX-512, else SHA-NI, else portable, as far as the CPU has them and the
/// environment (`CFS_NO_AVX512`, `CFS_NO_SHA_NI`) allows (decided on first use), unless
/// [`set_backend`] chose otherwise.
pub fn backend() -> Backend {
    match BACKEND.load(Ordering::Relaxed) {
        AVX512 => Backend::Avx512,
        SHA_NI => Backend::ShaNi,
        PORTABLE => Backend::Portable,
        _ => {
            let b = if avx512_available() && !env_forbids_avx512() {
                Backend::Avx512
            } else if sha_ni_available() && !env_forbids_sha_ni() {
                Backend::ShaNi
            } else {
                Backend::Portable
            };
            BACKEND.store(encode(b), Ordering::Relaxed);
            b
        }
    }
}

/// Choose the backend for the whole process (`None`: back to the automatic choice). A request
/// for a backend the CPU cannot run gives [`Backend::Portable`]. Returns the backend now in use.
/// Meant for tests and benchmarks; every backend computes the same digests.
pub fn set_backend(choice: Option<Backend>) -> Backend {
    let b = match choice {
        Some(Backend::Avx512) if avx512_available() => Backend::Avx512,
        Some(Backend::ShaNi) if sha_ni_available() => Backend::ShaNi,
        Some(_) => Backend::Portable,
        None => {
            BACKEND.store(UNSET, Ordering::Relaxed);
            return backend();
        }
    };
    BACKEND.store(encode(b), Ordering::Relaxed);
    b
}

/// A SHA-256 computation after a prefix of whole 64-byte blocks; messages hashed from it are
/// appended to that prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    state: State,
    /// Bytes of the prefix (a multiple of 64), for the length in the final padding.
    len: u64,
}

impl Default for Prefix {
    fn default() -> Self {
        Prefix::EMPTY
    }
}

impl Prefix {
    /// Plain SHA-256: no prefix.
    pub const EMPTY: Prefix = Prefix { state: IV, len: 0 };

    /// The state after hashing `prefix`, whose length must be a multiple of 64 bytes.
    pub fn new(prefix: &[u8]) -> Prefix {
        assert!(
            prefix.len().is_multiple_of(BLOCK),
            "a prefix must be whole 64-byte blocks"
        );
        let mut p = Prefix::EMPTY;
        compress(backend(), &mut p.state, prefix);
        p.len = prefix.len() as u64;
        p
    }

    /// A prefix given by its state and length in bytes (a multiple of 64).
    pub fn from_state(state: State, len: u64) -> Prefix {
        assert!(
            len.is_multiple_of(BLOCK as u64),
            "a prefix must be whole 64-byte blocks"
        );
        Prefix { state, len }
    }

    /// SHA-256 of prefix + `msg`.
    pub fn hash_one(&self, msg: &[u8]) -> [u8; DIGEST] {
        self.hash_one_with(backend(), msg)
    }

    /// SHA-256 of prefix + `m0` and of prefix + `m1`; the messages must have the same length.
    pub fn hash_two(&self, m0: &[u8], m1: &[u8]) -> ([u8; DIGEST], [u8; DIGEST]) {
        self.hash_two_with(backend(), m0, m1)
    }

    /// Hash each `msg_len`-byte piece of `msgs` (whose length must be a multiple of `msg_len`)
    /// and append the digests to `out`, in order; two at a time where the backend can.
    pub fn hash_many(&self, msgs: &[u8], msg_len: usize, out: &mut Vec<u8>) {
        self.hash_many_with(backend(), msgs, msg_len, out)
    }

    /// [`Prefix::hash_one`] with an explicit backend.
    pub fn hash_one_with(&self, b: Backend, msg: &[u8]) -> [u8; DIGEST] {
        let mut st = self.state;
        let whole = msg.len() / BLOCK * BLOCK;
        compress(b, &mut st, &msg[..whole]);
        let mut pad = [0u8; 2 * BLOCK];
        let n = self.padding(&msg[whole..], msg.len(), &mut pad);
        compress(b, &mut st, &pad[..n]);
        digest_bytes(&st)
    }

    /// [`Prefix::hash_two`] with an explicit backend.
    pub fn hash_two_with(&self, b: Backend, m0: &[u8], m1: &[u8]) -> ([u8; DIGEST], [u8; DIGEST]) {
        assert_eq!(m0.len(), m1.len(), "hash_two needs messages of equal length");
        let (mut s0, mut s1) = (self.state, self.state);
        let whole = m0.len() / BLOCK * BLOCK;
        compress2(b, &mut s0, &mut s1, &m0[..whole], &m1[..whole]);
        let mut pad0 = [0u8; 2 * BLOCK];
        let mut pad1 = [0u8; 2 * BLOCK];
        let n = self.padding(&m0[whole..], m0.len(), &mut pad0);
        self.padding(&m1[whole..], m1.len(), &mut pad1);
        compress2(b, &mut s0, &mut s1, &pad0[..n], &pad1[..n]);
        (digest_bytes(&s0), digest_bytes(&s1))
    }

    /// [`Prefix::hash_many`] with an explicit backend.
    pub fn hash_many_with(&self, b: Backend, msgs: &[u8], msg_len: usize, out: &mut Vec<u8>) {
        assert!(
            msg_len > 0 && msgs.len().is_multiple_of(msg_len),
            "hash_many needs whole messages"
        );
        let msgs = self.hash_sixteens(b, msgs, msg_len, out);
        let mut pairs = msgs.chunks_exact(2 * msg_len);
        for pair in &mut pairs {
            let (d0, d1) = self.hash_two_with(b, &pair[..msg_len], &pair[msg_len..]);
            out.extend_from_slice(&d0);
            out.extend_from_slice(&d1);
        }
        let rest = pairs.remainder();
        if !rest.is_empty() {
            out.extend_from_slice(&self.hash_one_with(b, rest));
        }
    }

    /// With [`Backend::Avx512`], hash the leading groups of sixteen messages sixteen at a time
    /// (for messages of whole 64-byte blocks); returns the messages left.
    fn hash_sixteens<'m>(&self, b: Backend, msgs: &'m [u8], msg_len: usize, out: &mut Vec<u8>) -> &'m [u8] {
        #[cfg(target_arch = "x86_64")]
        {
            use super::sha256_x16::{hash16, LANES, MIN_LANES};
            if b == Backend::Avx512 && super::sha256_x16::available() && msg_len.is_multiple_of(BLOCK) {
                let mut groups = msgs.chunks_exact(LANES * msg_len);
                let mut digests = [0u8; LANES * DIGEST];
                for g in &mut groups {
                    // SAFETY: the CPU has AVX-512F/BW (checked above).
                    unsafe { hash16(&self.state, self.len, g, msg_len, LANES, &mut digests) };
                    out.extend_from_slice(&digests);
                }
                // A rest of at least MIN_LANES messages is still done sooner sixteen-wide, idle
                // lanes and all, than two at a time.
                let rest = groups.remainder();
                let lanes = rest.len() / msg_len;
                if lanes >= MIN_LANES {
                    // SAFETY: as above.
                    unsafe { hash16(&self.state, self.len, rest, msg_len, lanes, &mut digests) };
                    out.extend_from_slice(&digests[..lanes * DIGEST]);
                    return &[];
                }
                return rest;
            }
        }
        let _ = (b, msg_len, out);
        msgs
    }

    /// Write the final block(s) of a message of `msg_len` bytes whose last partial block is
    /// `tail` into `pad`: the tail, the 0x80 byte, zeros, and the bit length of prefix + message
    /// (big-endian). Returns their length (64 or 128).
    fn padding(&self, tail: &[u8], msg_len: usize, pad: &mut [u8; 2 * BLOCK]) -> usize {
        debug_assert!(tail.len() < BLOCK);
        pad[..tail.len()].copy_from_slice(tail);
        pad[tail.len()] = 0x80;
        let n = if tail.len() < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        let bits = (self.len + msg_len as u64).wrapping_mul(8);
        pad[n - 8..n].copy_from_slice(&bits.to_be_bytes());
        n
    }
}

/// The digest: the state words, big-endian.
fn digest_bytes(st: &State) -> [u8; DIGEST] {
    let mut d = [0u8; DIGEST];
    for (out, w) in d.chunks_exact_mut(4).zip(st) {
        out.copy_from_slice(&w.to_be_bytes());
    }
    d
}

/// Compress the whole 64-byte blocks of `blocks` into `st`.
fn compress(b: Backend, st: &mut State, blocks: &[u8]) {
    debug_assert!(blocks.len().is_multiple_of(BLOCK));
    if blocks.is_empty() {
        return;
    }
    match b {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Backend::ShaNi` is only chosen when `sha_ni_available()` (see `set_backend`
        // and `backend`), i.e. the CPU has every feature the function is compiled for.
        Backend::ShaNi | Backend::Avx512 if sha_ni_available_cached() => unsafe { ni::compress1(st, blocks) },
        _ => portable_compress(st, blocks),
    }
}

/// Compress the blocks of `b0` into `s0` and those of `b1` (as long) into `s1`.
fn compress2(b: Backend, s0: &mut State, s1: &mut State, b0: &[u8], b1: &[u8]) {
    debug_assert!(b0.len().is_multiple_of(BLOCK) && b0.len() == b1.len());
    if b0.is_empty() {
        return;
    }
    match b {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `compress`.
        Backend::ShaNi | Backend::Avx512 if sha_ni_available_cached() => unsafe { ni::compress2(s0, s1, b0, b1) },
        _ => {
            portable_compress(s0, b0);
            portable_compress(s1, b1);
        }
    }
}

/// `sha_ni_available()`, detected once (`is_x86_feature_detected!` caches too, but this keeps
/// the check to one relaxed load).
#[cfg(target_arch = "x86_64")]
fn sha_ni_available_cached() -> bool {
    static AVAILABLE: AtomicU8 = AtomicU8::new(UNSET);
    match AVAILABLE.load(Ordering::Relaxed) {
        SHA_NI => true,
        PORTABLE => false,
        _ => {
            let a = sha_ni_available();
            AVAILABLE.store(if a { SHA_NI } else { PORTABLE }, Ordering::Relaxed);
            a
        }
    }
}

fn portable_compress(st: &mut State, blocks: &[u8]) {
    use sha2::digest::generic_array::{typenum::U64, GenericArray};
    // SAFETY: GenericArray<u8, U64> is a [u8; 64] (same size, alignment 1), and `blocks` holds
    // blocks.len() / 64 of them.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len() / BLOCK) };
    sha2::compress256(st, blocks);
}

/// The SHA extensions code. The state lives in two registers as `sha256rnds2` wants it:
/// ABEF = (A, B, E, F) and CDGH = (C, D, G, H), the first letter in the highest 32-bit lane.
/// `sha256rnds2(cdgh, abef, wk)` does two rounds with the message-plus-constant words in the two
/// low lanes of `wk` and returns the new ABEF; after two rounds the old ABEF is the new CDGH, so
/// the two registers swap roles every two rounds.
#[cfg(target_arch = "x86_64")]
mod ni {
    use super::{State, BLOCK, K};
    use std::arch::x86_64::*;

    /// Byte shuffle turning four big-endian 32-bit words into native lanes.
    #[inline(always)]
    unsafe fn bswap_mask() -> __m128i {
        _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3)
    }

    #[inline(always)]
    unsafe fn load_state(s: &State) -> (__m128i, __m128i) {
        let abef = _mm_set_epi32(s[0] as i32, s[1] as i32, s[4] as i32, s[5] as i32);
        let cdgh = _mm_set_epi32(s[2] as i32, s[3] as i32, s[6] as i32, s[7] as i32);
        (abef, cdgh)
    }

    #[inline(always)]
    unsafe fn store_state(s: &mut State, abef: __m128i, cdgh: __m128i) {
        s[0] = _mm_extract_epi32::<3>(abef) as u32;
        s[1] = _mm_extract_epi32::<2>(abef) as u32;
        s[4] = _mm_extract_epi32::<1>(abef) as u32;
        s[5] = _mm_extract_epi32::<0>(abef) as u32;
        s[2] = _mm_extract_epi32::<3>(cdgh) as u32;
        s[3] = _mm_extract_epi32::<2>(cdgh) as u32;
        s[6] = _mm_extract_epi32::<1>(cdgh) as u32;
        s[7] = _mm_extract_epi32::<0>(cdgh) as u32;
    }

    /// Message words 4i..4i+3 of the block at `p`, as native lanes (W[4i] in the lowest).
    #[inline(always)]
    unsafe fn load_words(p: *const u8, i: usize, mask: __m128i) -> __m128i {
        _mm_shuffle_epi8(_mm_loadu_si128(p.add(16 * i).cast()), mask)
    }

    /// Round constants 4g..4g+3.
    #[inline(always)]
    unsafe fn k4(g: usize) -> __m128i {
        _mm_load_si128(K.0.as_ptr().add(4 * g).cast())
    }

    /// W[t..t+4] from the previous sixteen words, held as w0 = W[t-16..t-12], w1 = W[t-12..t-8],
    /// w2 = W[t-8..t-4], w3 = W[t-4..t]: W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16].
    /// `sha256msg1` adds σ0 of the next word to each word of w0; W[t-7..t-3] is w3:w2 shifted by
    /// one word; `sha256msg2` adds the σ1 terms (two of which depend on its own results).
    #[inline(always)]
    unsafe fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8::<4>(w3, w2));
        _mm_sha256msg2_epu32(t, w3)
    }

    /// Four rounds with message words `w` and round constants `k`.
    #[inline(always)]
    unsafe fn rounds4(abef: &mut __m128i, cdgh: &mut __m128i, w: __m128i, k: __m128i) {
        let wk = _mm_add_epi32(w, k);
        *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
        *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32::<0x0E>(wk));
    }

    /// One message stream's registers during a block.
    struct Lane {
        abef: __m128i,
        cdgh: __m128i,
        w: [__m128i; 4],
    }

    impl Lane {
        #[inline(always)]
        unsafe fn start(abef: __m128i, cdgh: __m128i, p: *const u8, mask: __m128i) -> Lane {
            let w = [
                load_words(p, 0, mask),
                load_words(p, 1, mask),
                load_words(p, 2, mask),
                load_words(p, 3, mask),
            ];
            Lane { abef, cdgh, w }
        }

        /// Round group `g` (rounds 4g..4g+3); for g >= 4 first extend the schedule into w[g % 4].
        #[inline(always)]
        unsafe fn group(&mut self, g: usize) {
            let i = g % 4;
            if g >= 4 {
                self.w[i] = schedule(self.w[i], self.w[(i + 1) % 4], self.w[(i + 2) % 4], self.w[(i + 3) % 4]);
            }
            rounds4(&mut self.abef, &mut self.cdgh, self.w[i], k4(g));
        }
    }

    /// Compress the blocks of `blocks` into `st`, one stream.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress1(st: &mut State, blocks: &[u8]) {
        let mask = bswap_mask();
        let (mut abef, mut cdgh) = load_state(st);
        for block in blocks.chunks_exact(BLOCK) {
            let mut l = Lane::start(abef, cdgh, block.as_ptr(), mask);
            // Written out so every index is a constant (the loop is unrolled by hand).
            l.group(0);
            l.group(1);
            l.group(2);
            l.group(3);
            l.group(4);
            l.group(5);
            l.group(6);
            l.group(7);
            l.group(8);
            l.group(9);
            l.group(10);
            l.group(11);
            l.group(12);
            l.group(13);
            l.group(14);
            l.group(15);
            abef = _mm_add_epi32(abef, l.abef);
            cdgh = _mm_add_epi32(cdgh, l.cdgh);
        }
        store_state(st, abef, cdgh);
    }

    /// Compress the blocks of `b0` into `s0` and of `b1` into `s1` (same length), the two streams'
    /// instructions interleaved so one's rounds run while the other's wait.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress2(s0: &mut State, s1: &mut State, b0: &[u8], b1: &[u8]) {
        let mask = bswap_mask();
        let (mut abef0, mut cdgh0) = load_state(s0);
        let (mut abef1, mut cdgh1) = load_state(s1);
        for (x, y) in b0.chunks_exact(BLOCK).zip(b1.chunks_exact(BLOCK)) {
            let mut l0 = Lane::start(abef0, cdgh0, x.as_ptr(), mask);
            let mut l1 = Lane::start(abef1, cdgh1, y.as_ptr(), mask);
            macro_rules! groups {
                ($($g:literal)*) => { $( l0.group($g); l1.group($g); )* };
            }
            groups!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            abef0 = _mm_add_epi32(abef0, l0.abef);
            cdgh0 = _mm_add_epi32(cdgh0, l0.cdgh);
            abef1 = _mm_add_epi32(abef1, l1.abef);
            cdgh1 = _mm_add_epi32(cdgh1, l1.cdgh);
        }
        store_state(s0, abef0, cdgh0);
        store_state(s1, abef1, cdgh1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn backends() -> Vec<Backend> {
        let mut v = vec![Backend::Portable];
        if sha_ni_available() {
            v.push(Backend::ShaNi);
        }
        if avx512_available() {
            v.push(Backend::Avx512);
        }
        v
    }

    fn reference(prefix: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prefix);
        h.update(msg);
        h.finalize().into()
    }

    /// Lengths around every padding edge of the first blocks, plus random ones up to 9 KiB.
    fn lengths(rng: &mut Rng) -> Vec<usize> {
        let mut v: Vec<usize> = (0..=200).collect();
        for edge in [256, 1024, 4096, 8192] {
            v.extend(edge - 9..=edge + 9);
        }
        v.extend((0..200).map(|_| rng.below(9 * 1024)));
        v
    }

    #[test]
    fn known_answers() {
        // FIPS 180-4 examples.
        let abc = Prefix::EMPTY.hash_one(b"abc");
        assert_eq!(
            hex(&abc),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        for b in backends() {
            let (d0, d1) = Prefix::EMPTY.hash_two_with(b, long, long);
            assert_eq!(
                hex(&d0),
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
            );
            assert_eq!(d0, d1);
            assert_eq!(hex(&Prefix::EMPTY.hash_one_with(b, b"")), hex(&Sha256::digest(b"")));
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn matches_sha2_for_many_lengths_and_prefixes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in lengths(&mut rng) {
            // A prefix of 0..3 random blocks: a different initial state for each length.
            let nblocks = rng.below(4);
            let prefix = rng.bytes(BLOCK * nblocks);
            let p = Prefix::new(&prefix);
            let (m0, m1) = (rng.bytes(len), rng.bytes(len));
            let (w0, w1) = (reference(&prefix, &m0), reference(&prefix, &m1));
            for b in backends() {
                assert_eq!(
                    p.hash_one_with(b, &m0),
                    w0,
                    "{b:?} one, len {len}, prefix {}",
                    prefix.len()
                );
                assert_eq!(
                    p.hash_two_with(b, &m0, &m1),
                    (w0, w1),
                    "{b:?} two, len {len}, prefix {}",
                    prefix.len()
                );
                assert_eq!(p.hash_two_with(b, &m1, &m0), (w1, w0), "{b:?} swapped, len {len}");
            }
        }
    }

    #[test]
    fn backends_agree_from_arbitrary_states() {
        // States no prefix would give (random words), compared between the backends.
        let mut rng = Rng(42);
        for _ in 0..300 {
            let state: State = std::array::from_fn(|_| rng.next() as u32);
            let p = Prefix::from_state(state, BLOCK as u64 * rng.below(1000) as u64);
            let len = rng.below(3000);
            let (m0, m1) = (rng.bytes(len), rng.bytes(len));
            let want = (
                p.hash_one_with(Backend::Portable, &m0),
                p.hash_one_with(Backend::Portable, &m1),
            );
            for b in backends() {
                assert_eq!(p.hash_two_with(b, &m0, &m1), want, "{b:?} len {len}");
                assert_eq!(p.hash_one_with(b, &m1), want.1, "{b:?} len {len}");
            }
        }
    }

    #[test]
    fn hash_many_pairs_and_odd_one() {
        let mut rng = Rng(7);
        let prefix = rng.bytes(BLOCK);
        let p = Prefix::new(&prefix);
        // Sixteen at a time with AVX-512 (lengths of whole blocks only), and a rest of at least
        // sha256_x16::MIN_LANES in part of the lanes.
        let cases = [
            (0usize, 4096usize),
            (1, 4096),
            (2, 4096),
            (5, 1024),
            (8, 256),
            (3, 55),
            (7, 64),
            (4, 1),
        ];
        let sixteens = [
            (16, 4096),
            (17, 64),
            (31, 128),
            (33, 256),
            (48, 4096),
            (40, 55),
            (20, 4097),
        ];
        let partial = [(8, 1024), (9, 64), (10, 1024), (15, 4096), (27, 128), (42, 256)];
        for (count, msg_len) in cases.into_iter().chain(sixteens).chain(partial) {
            let msgs = rng.bytes(count * msg_len);
            let want: Vec<u8> = msgs.chunks(msg_len).flat_map(|m| reference(&prefix, m)).collect();
            for b in backends() {
                let mut out = vec![0xee];
                p.hash_many_with(b, &msgs, msg_len, &mut out);
                assert_eq!(out[0], 0xee);
                assert_eq!(&out[1..], &want[..], "{b:?} {count} x {msg_len}");
            }
        }
    }

    #[test]
    fn sixteen_lanes_from_arbitrary_states() {
        // Random chaining states and prefix lengths (the length goes into the padding block).
        let mut rng = Rng(1616);
        for _ in 0..40 {
            let state: State = std::array::from_fn(|_| rng.next() as u32);
            let p = Prefix::from_state(state, BLOCK as u64 * (rng.next() % (1 << 40)));
            let msg_len = BLOCK * (1 + rng.below(80));
            let msgs = rng.bytes(16 * msg_len);
            let want: Vec<u8> = msgs
                .chunks(msg_len)
                .flat_map(|m| p.hash_one_with(Backend::Portable, m))
                .collect();
            for b in backends() {
                let mut out = Vec::new();
                p.hash_many_with(b, &msgs, msg_len, &mut out);
                assert_eq!(out, want, "{b:?} 16 x {msg_len}");
            }
        }
    }

    #[test]
    fn prefix_matches_streaming_hash() {
        let prefix = [0x5au8; 128];
        let p = Prefix::new(&prefix);
        assert_eq!(p.hash_one(b"tail"), reference(&prefix, b"tail"));
        assert_eq!(Prefix::new(&[]), Prefix::EMPTY);
    }
}
