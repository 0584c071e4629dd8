// SPDX-License-Identifier: MIT OR Apache-2.0
//! SHA-256 of sixteen equal-length messages at once, with AVX-512.
//!
//! fs-verity hashes long runs of independent, equal-length messages (4 KiB Merkle blocks behind
//! one salt, 256-byte descriptors). Each 32-bit lane of a 512-bit register holds one message's
//! working variable, so one instruction advances sixteen computations by the same step; on CPUs
//! with AVX-512 this outruns the SHA extensions, whose `sha256rnds2` chain advances one
//! computation (two when interleaved, see `sha256_x2`). Written from FIPS 180-4 (6.2.2).
//!
//! Messages are read in place: each lane's 64-byte block is loaded whole and the sixteen are
//! transposed into word vectors (gathers cost a quarter of the time). Their length must be a
//! multiple of 64 bytes, so the final padding block is the same for all sixteen and is built
//! from constants.

use super::sha256_x2::{State, BLOCK, DIGEST, K};
use std::arch::x86_64::*;

/// Lanes per computation.
pub const LANES: usize = 16;

/// Fewest messages worth a sixteen-lane computation: one costs about as much as eight or nine
/// messages hashed two at a time with the SHA extensions (2,740-3,000 against 1,440-1,660
/// MB/cpu-s in `sha256_rate`).
pub const MIN_LANES: usize = 9;

/// Whether this CPU has the AVX-512 subsets used here.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

#[inline(always)]
unsafe fn add(x: __m512i, y: __m512i) -> __m512i {
    _mm512_add_epi32(x, y)
}

#[inline(always)]
unsafe fn add4(w: __m512i, x: __m512i, y: __m512i, z: __m512i) -> __m512i {
    add(add(w, x), add(y, z))
}

/// x ^ y ^ z.
#[inline(always)]
unsafe fn xor3(x: __m512i, y: __m512i, z: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(x, y, z)
}

/// Σ0 (FIPS 180-4, 4.4.2).
#[inline(always)]
unsafe fn big_sigma0(x: __m512i) -> __m512i {
    xor3(
        _mm512_ror_epi32::<2>(x),
        _mm512_ror_epi32::<13>(x),
        _mm512_ror_epi32::<22>(x),
    )
}

/// Σ1.
#[inline(always)]
unsafe fn big_sigma1(x: __m512i) -> __m512i {
    xor3(
        _mm512_ror_epi32::<6>(x),
        _mm512_ror_epi32::<11>(x),
        _mm512_ror_epi32::<25>(x),
    )
}

/// σ0.
#[inline(always)]
unsafe fn small_sigma0(x: __m512i) -> __m512i {
    xor3(
        _mm512_ror_epi32::<7>(x),
        _mm512_ror_epi32::<18>(x),
        _mm512_srli_epi32::<3>(x),
    )
}

/// σ1.
#[inline(always)]
unsafe fn small_sigma1(x: __m512i) -> __m512i {
    xor3(
        _mm512_ror_epi32::<17>(x),
        _mm512_ror_epi32::<19>(x),
        _mm512_srli_epi32::<10>(x),
    )
}

/// One round: T1 = h + Σ1(e) + Ch(e, f, g) + K[t] + W[t], T2 = Σ0(a) + Maj(a, b, c); d += T1,
/// h = T1 + T2. The caller renames the variables instead of shifting them.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn round(
    a: __m512i,
    b: __m512i,
    c: __m512i,
    d: &mut __m512i,
    e: __m512i,
    f: __m512i,
    g: __m512i,
    h: &mut __m512i,
    w: __m512i,
    t: usize,
) {
    // Ch(e, f, g) = (e & f) ^ (!e & g): truth table 0xCA; Maj(a, b, c): 0xE8.
    let ch = _mm512_ternarylogic_epi32::<0xCA>(e, f, g);
    let t1 = add4(*h, big_sigma1(e), ch, add(_mm512_set1_epi32(K.0[t] as i32), w));
    let t2 = add(big_sigma0(a), _mm512_ternarylogic_epi32::<0xE8>(a, b, c));
    *d = add(*d, t1);
    *h = add(t1, t2);
}

/// The 64 rounds on one block of each lane (message words `w`), added into the state `s`.
#[inline(always)]
unsafe fn compress(s: &mut [__m512i; 8], w: &mut [__m512i; 16]) {
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *s;
    round(a, b, c, &mut d, e, f, g, &mut h, w[0], 0);
    round(h, a, b, &mut c, d, e, f, &mut g, w[1], 1);
    round(g, h, a, &mut b, c, d, e, &mut f, w[2], 2);
    round(f, g, h, &mut a, b, c, d, &mut e, w[3], 3);
    round(e, f, g, &mut h, a, b, c, &mut d, w[4], 4);
    round(d, e, f, &mut g, h, a, b, &mut c, w[5], 5);
    round(c, d, e, &mut f, g, h, a, &mut b, w[6], 6);
    round(b, c, d, &mut e, f, g, h, &mut a, w[7], 7);
    round(a, b, c, &mut d, e, f, g, &mut h, w[8], 8);
    round(h, a, b, &mut c, d, e, f, &mut g, w[9], 9);
    round(g, h, a, &mut b, c, d, e, &mut f, w[10], 10);
    round(f, g, h, &mut a, b, c, d, &mut e, w[11], 11);
    round(e, f, g, &mut h, a, b, c, &mut d, w[12], 12);
    round(d, e, f, &mut g, h, a, b, &mut c, w[13], 13);
    round(c, d, e, &mut f, g, h, a, &mut b, w[14], 14);
    round(b, c, d, &mut e, f, g, h, &mut a, w[15], 15);
    w[0] = add4(small_sigma1(w[14]), w[9], small_sigma0(w[1]), w[0]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[0], 16);
    w[1] = add4(small_sigma1(w[15]), w[10], small_sigma0(w[2]), w[1]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[1], 17);
    w[2] = add4(small_sigma1(w[0]), w[11], small_sigma0(w[3]), w[2]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[2], 18);
    w[3] = add4(small_sigma1(w[1]), w[12], small_sigma0(w[4]), w[3]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[3], 19);
    w[4] = add4(small_sigma1(w[2]), w[13], small_sigma0(w[5]), w[4]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[4], 20);
    w[5] = add4(small_sigma1(w[3]), w[14], small_sigma0(w[6]), w[5]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[5], 21);
    w[6] = add4(small_sigma1(w[4]), w[15], small_sigma0(w[7]), w[6]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[6], 22);
    w[7] = add4(small_sigma1(w[5]), w[0], small_sigma0(w[8]), w[7]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[7], 23);
    w[8] = add4(small_sigma1(w[6]), w[1], small_sigma0(w[9]), w[8]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[8], 24);
    w[9] = add4(small_sigma1(w[7]), w[2], small_sigma0(w[10]), w[9]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[9], 25);
    w[10] = add4(small_sigma1(w[8]), w[3], small_sigma0(w[11]), w[10]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[10], 26);
    w[11] = add4(small_sigma1(w[9]), w[4], small_sigma0(w[12]), w[11]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[11], 27);
    w[12] = add4(small_sigma1(w[10]), w[5], small_sigma0(w[13]), w[12]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[12], 28);
    w[13] = add4(small_sigma1(w[11]), w[6], small_sigma0(w[14]), w[13]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[13], 29);
    w[14] = add4(small_sigma1(w[12]), w[7], small_sigma0(w[15]), w[14]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[14], 30);
    w[15] = add4(small_sigma1(w[13]), w[8], small_sigma0(w[0]), w[15]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[15], 31);
    w[0] = add4(small_sigma1(w[14]), w[9], small_sigma0(w[1]), w[0]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[0], 32);
    w[1] = add4(small_sigma1(w[15]), w[10], small_sigma0(w[2]), w[1]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[1], 33);
    w[2] = add4(small_sigma1(w[0]), w[11], small_sigma0(w[3]), w[2]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[2], 34);
    w[3] = add4(small_sigma1(w[1]), w[12], small_sigma0(w[4]), w[3]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[3], 35);
    w[4] = add4(small_sigma1(w[2]), w[13], small_sigma0(w[5]), w[4]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[4], 36);
    w[5] = add4(small_sigma1(w[3]), w[14], small_sigma0(w[6]), w[5]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[5], 37);
    w[6] = add4(small_sigma1(w[4]), w[15], small_sigma0(w[7]), w[6]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[6], 38);
    w[7] = add4(small_sigma1(w[5]), w[0], small_sigma0(w[8]), w[7]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[7], 39);
    w[8] = add4(small_sigma1(w[6]), w[1], small_sigma0(w[9]), w[8]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[8], 40);
    w[9] = add4(small_sigma1(w[7]), w[2], small_sigma0(w[10]), w[9]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[9], 41);
    w[10] = add4(small_sigma1(w[8]), w[3], small_sigma0(w[11]), w[10]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[10], 42);
    w[11] = add4(small_sigma1(w[9]), w[4], small_sigma0(w[12]), w[11]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[11], 43);
    w[12] = add4(small_sigma1(w[10]), w[5], small_sigma0(w[13]), w[12]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[12], 44);
    w[13] = add4(small_sigma1(w[11]), w[6], small_sigma0(w[14]), w[13]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[13], 45);
    w[14] = add4(small_sigma1(w[12]), w[7], small_sigma0(w[15]), w[14]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[14], 46);
    w[15] = add4(small_sigma1(w[13]), w[8], small_sigma0(w[0]), w[15]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[15], 47);
    w[0] = add4(small_sigma1(w[14]), w[9], small_sigma0(w[1]), w[0]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[0], 48);
    w[1] = add4(small_sigma1(w[15]), w[10], small_sigma0(w[2]), w[1]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[1], 49);
    w[2] = add4(small_sigma1(w[0]), w[11], small_sigma0(w[3]), w[2]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[2], 50);
    w[3] = add4(small_sigma1(w[1]), w[12], small_sigma0(w[4]), w[3]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[3], 51);
    w[4] = add4(small_sigma1(w[2]), w[13], small_sigma0(w[5]), w[4]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[4], 52);
    w[5] = add4(small_sigma1(w[3]), w[14], small_sigma0(w[6]), w[5]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[5], 53);
    w[6] = add4(small_sigma1(w[4]), w[15], small_sigma0(w[7]), w[6]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[6], 54);
    w[7] = add4(small_sigma1(w[5]), w[0], small_sigma0(w[8]), w[7]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[7], 55);
    w[8] = add4(small_sigma1(w[6]), w[1], small_sigma0(w[9]), w[8]);
    round(a, b, c, &mut d, e, f, g, &mut h, w[8], 56);
    w[9] = add4(small_sigma1(w[7]), w[2], small_sigma0(w[10]), w[9]);
    round(h, a, b, &mut c, d, e, f, &mut g, w[9], 57);
    w[10] = add4(small_sigma1(w[8]), w[3], small_sigma0(w[11]), w[10]);
    round(g, h, a, &mut b, c, d, e, &mut f, w[10], 58);
    w[11] = add4(small_sigma1(w[9]), w[4], small_sigma0(w[12]), w[11]);
    round(f, g, h, &mut a, b, c, d, &mut e, w[11], 59);
    w[12] = add4(small_sigma1(w[10]), w[5], small_sigma0(w[13]), w[12]);
    round(e, f, g, &mut h, a, b, c, &mut d, w[12], 60);
    w[13] = add4(small_sigma1(w[11]), w[6], small_sigma0(w[14]), w[13]);
    round(d, e, f, &mut g, h, a, b, &mut c, w[13], 61);
    w[14] = add4(small_sigma1(w[12]), w[7], small_sigma0(w[15]), w[14]);
    round(c, d, e, &mut f, g, h, a, &mut b, w[14], 62);
    w[15] = add4(small_sigma1(w[13]), w[8], small_sigma0(w[0]), w[15]);
    round(b, c, d, &mut e, f, g, h, &mut a, w[15], 63);
    for (x, y) in s.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *x = add(*x, y);
    }
}

/// Transpose 16 x 16 32-bit words: afterwards `r[t]` holds word `t` of every former row (row `j`
/// in lane `j`). Words are interleaved, then pairs of words, then 128-bit quarters.
#[inline(always)]
unsafe fn transpose(r: &mut [__m512i; 16]) {
    let mut a = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    // b[4m + q], quarter l: word 4l + q of rows 4m..4m+3.
    let mut b = [_mm512_setzero_si512(); 16];
    for m in 0..4 {
        b[4 * m] = _mm512_unpacklo_epi64(a[4 * m], a[4 * m + 2]);
        b[4 * m + 1] = _mm512_unpackhi_epi64(a[4 * m], a[4 * m + 2]);
        b[4 * m + 2] = _mm512_unpacklo_epi64(a[4 * m + 1], a[4 * m + 3]);
        b[4 * m + 3] = _mm512_unpackhi_epi64(a[4 * m + 1], a[4 * m + 3]);
    }
    // Word 4l + q of all rows: quarter l of b[q], b[4 + q], b[8 + q], b[12 + q].
    for q in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x44>(b[q], b[4 + q]);
        let v1 = _mm512_shuffle_i32x4::<0xEE>(b[q], b[4 + q]);
        let v2 = _mm512_shuffle_i32x4::<0x44>(b[8 + q], b[12 + q]);
        let v3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + q], b[12 + q]);
        r[q] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        r[4 + q] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
        r[8 + q] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        r[12 + q] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
    }
}

/// SHA-256 of prefix + message for the messages `msgs[j * len..(j + 1) * len]`, `j` below
/// `lanes` (1 to 16; lanes beyond read nothing and compute nothing of use): the prefix is given
/// by its state `prefix` and byte length `prefix_len` (a multiple of 64). `len` must be a multiple
/// of 64 and `msgs` exactly `lanes` such messages. The digests go to the start of `out`, in order.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW ([`available`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn hash16(
    prefix: &State,
    prefix_len: u64,
    msgs: &[u8],
    len: usize,
    lanes: usize,
    out: &mut [u8; LANES * DIGEST],
) {
    assert!((1..=LANES).contains(&lanes) && len.is_multiple_of(BLOCK) && msgs.len() == lanes * len);
    // Big-endian words to native: reverse the bytes of each 32-bit lane.
    let bswap = _mm512_broadcast_i32x4(_mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12));
    let mut s: [__m512i; 8] = std::array::from_fn(|i| _mm512_set1_epi32(prefix[i] as i32));
    let mut w = [_mm512_setzero_si512(); 16];
    for at in (0..len).step_by(BLOCK) {
        // Row j: lane j's block (a masked-off load reads nothing, so idle lanes touch no
        // memory); then transposed so that w[t] holds word t of every lane.
        for (j, row) in w.iter_mut().enumerate() {
            let p = msgs.as_ptr().wrapping_add(j * len + at);
            let mask: __mmask16 = if j < lanes { 0xffff } else { 0 };
            *row = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi32(mask, p.cast()), bswap);
        }
        transpose(&mut w);
        compress(&mut s, &mut w);
    }
    // The padding block, alike for every lane: 0x80, zeros, the length in bits.
    let bits = (prefix_len + len as u64).wrapping_mul(8);
    w = [_mm512_setzero_si512(); 16];
    w[0] = _mm512_set1_epi32(0x8000_0000u32 as i32);
    w[14] = _mm512_set1_epi32((bits >> 32) as i32);
    w[15] = _mm512_set1_epi32(bits as u32 as i32);
    compress(&mut s, &mut w);
    let mut words = [[0u32; LANES]; 8];
    for (dst, v) in words.iter_mut().zip(s) {
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), v);
    }
    for (j, digest) in out.chunks_exact_mut(DIGEST).take(lanes).enumerate() {
        for (i, word) in words.iter().enumerate() {
            digest[4 * i..4 * i + 4].copy_from_slice(&word[j].to_be_bytes());
        }
    }
}
