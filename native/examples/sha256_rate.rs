// SPDX-License-Identifier: MIT OR Apache-2.0
//! Single-core SHA-256 rate on 4 KiB messages (what fs-verity hashes), counted like
//! `openssl speed -evp sha256 -bytes 4096`: 4096 bytes per message, its padding block not counted.
//! Each case is timed by this thread's CPU time, so other load on the machine matters little.
//!
//!     cargo run --release --example sha256_rate [SECONDS_PER_CASE]
//!
//! Cases: the `sha2` crate as fs-verity used it before (clone a hasher, update, finalize), the
//! portable backend (`sha2`'s compression function), and the SHA-NI backend one message at a
//! time and two interleaved, and the AVX-512 backend (sixteen messages at once). Output: one
//! line per case, MB (10^6 bytes) per CPU second.

use _native::hash::sha256_x2::{Backend, Prefix};
use sha2::{Digest as _, Sha256};

const MSG: usize = 4096;
const BUF: usize = 1 << 20; // 256 messages: stays in L2

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// MB per CPU second of `pass` (which hashes all of `BUF`), run for about `secs` CPU seconds;
/// the best of five slices.
fn rate(secs: f64, mut pass: impl FnMut()) -> f64 {
    pass(); // warm up
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        let t = thread_cpu();
        let mut n = 0u64;
        while thread_cpu() - t < secs / 5.0 {
            pass();
            n += 1;
        }
        best = best.max((n * BUF as u64) as f64 / (thread_cpu() - t) / 1e6);
    }
    best
}

fn main() {
    let secs: f64 = std::env::args().nth(1).map_or(2.0, |s| s.parse().expect("seconds"));
    let data: Vec<u8> = (0..BUF).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut out = Vec::with_capacity(BUF / MSG * 32);
    let mut sink = 0u8;

    let salted = Sha256::new();
    let r = rate(secs, || {
        for m in data.chunks(MSG) {
            let mut h = salted.clone();
            h.update(m);
            sink ^= h.finalize()[0];
        }
    });
    println!("sha2 crate, Sha256 clone+update+finalize      {r:8.0} MB/cpu-s");

    let p = Prefix::EMPTY;
    for (name, b, two) in [
        (
            "portable backend (sha2 compress256), 1 stream",
            Backend::Portable,
            false,
        ),
        ("SHA-NI backend, 1 stream                     ", Backend::ShaNi, false),
        ("SHA-NI backend, 2 streams interleaved        ", Backend::ShaNi, true),
        ("AVX-512 backend, 16 streams in one register  ", Backend::Avx512, true),
    ] {
        if b == Backend::ShaNi && !_native::hash::sha256_x2::sha_ni_available() {
            println!("{name} (no SHA-NI on this CPU)");
            continue;
        }
        if b == Backend::Avx512 && !_native::hash::sha256_x2::avx512_available() {
            println!("{name} (no AVX-512 on this CPU)");
            continue;
        }
        let r = rate(secs, || {
            out.clear();
            if two {
                p.hash_many_with(b, &data, MSG, &mut out);
            } else {
                for m in data.chunks(MSG) {
                    out.extend_from_slice(&p.hash_one_with(b, m));
                }
            }
            sink ^= out[0];
        });
        println!("{name} {r:8.0} MB/cpu-s");
    }
    std::hint::black_box(sink);
}
