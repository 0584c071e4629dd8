// SPDX-License-Identifier: MIT OR Apache-2.0
//! The container-layer path on hostile bytes (`native/src/oci`): the first byte picks what the
//! rest is fed to.
//! - 0: a layer blob (plain tar, gzip or zstd) read by `read_layer` into a store, with no
//!   expectations, or (bit 1 of the first byte) with its own digest and size expected, which must
//!   change nothing; a layer read must survive its record (`encode` → `decode` gives the same
//!   ops), be merged into a tree, and the tree's image must read back;
//! - 1: a kept layer record, as read back from a repository: `decode` refuses it or gives ops
//!   that encode to the same bytes, and merging them fails cleanly or gives a writable tree;
//! - 2: the tar reader alone, every entry's data read to its end (bounded by bit 2 of the first
//!   byte, or not at all).
//!
//! Never a panic, an overflow or an unbounded allocation.
#![no_main]

use composefs_native::erofs::{reader, writer};
use composefs_native::oci::digest::{Algorithm, BlobDigest};
use composefs_native::oci::layer::{read_layer, Expect, Layer};
use composefs_native::oci::merge::merge;
use composefs_native::oci::tar::{Limits, TarReader, GROW};
use composefs_native::store::Store;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Small bounds, so that inputs of a few KiB reach every limit.
const LIMITS: Limits = Limits {
    max_meta: 4096,
    max_path: 1024,
    max_xattr_value: 2048,
    max_entries: 200,
};
const MAX_ENTRIES: u64 = 1000;
/// Bytes of one entry's data the tar path reads into memory when it bounds them at all (bit 2
/// of the first byte); unbounded, memory must still follow the bytes present, not the sizes
/// claimed.
const MAX_DATA: usize = 4096;
/// Inputs between two fresh stores (every input may store new objects).
const STORE_RUNS: u32 = 2000;

struct Scratch {
    dir: PathBuf,
    store: Arc<Store>,
    runs: u32,
}

const SCRATCH_PREFIX: &str = "cfs-fuzz-oci-";

/// libFuzzer ends the process with `exit`, so a run cannot remove its own scratch store: the
/// next run removes those of processes that are gone.
fn remove_stale_scratch() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The object store the layers go to: a scratch directory, emptied every `STORE_RUNS` inputs.
fn store() -> Arc<Store> {
    static SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);
    let mut s = SCRATCH.lock().unwrap();
    if s.as_ref().is_some_and(|s| s.runs >= STORE_RUNS) {
        let _ = std::fs::remove_dir_all(&s.take().unwrap().dir);
    }
    let s = s.get_or_insert_with(|| {
        remove_stale_scratch();
        let dir = std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch {
            store: Arc::new(Store::open(&dir).expect("a scratch store")),
            dir,
            runs: 0,
        }
    });
    s.runs += 1;
    s.store.clone()
}

fn check_tree(layer: &Layer) {
    let Ok(tree) = merge(&[layer], MAX_ENTRIES) else {
        return;
    };
    let Ok(image) = writer::write_image(&tree, &writer::Options::default()) else {
        return;
    };
    reader::read_image(&image.bytes).unwrap_or_else(|e| panic!("the image of a merged layer does not read: {e}"));
}

fn blob(flags: u8, data: &[u8]) {
    let store = store();
    let plain = read_layer(data, &Expect::default(), &store, LIMITS);
    if flags & 2 != 0 {
        let expect = Expect {
            digest: Some(BlobDigest::of(Algorithm::Sha256, data)),
            size: Some(data.len() as u64),
            diff_id: None,
        };
        let checked = read_layer(data, &expect, &store, LIMITS);
        match (&plain, &checked) {
            (Ok(a), Ok(b)) => assert_eq!(a.ops, b.ops, "a correct digest changed the ops"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "a correct digest changed the outcome: {:?} / {:?}",
                a.is_ok(),
                b.is_ok()
            ),
        }
    }
    let Ok(layer) = plain else {
        return;
    };
    let record = layer.encode();
    let back = Layer::decode(&record).unwrap_or_else(|e| panic!("a layer's own record does not decode: {e}"));
    assert_eq!(back.ops, layer.ops, "a layer's record changed its ops");
    check_tree(&layer);
}

fn record(data: &[u8]) {
    let Ok(layer) = Layer::decode(data) else {
        return;
    };
    assert_eq!(layer.encode(), data, "decode → encode changed a record");
    check_tree(&layer);
}

fn tar(flags: u8, data: &[u8]) {
    let max = if flags & 4 != 0 { MAX_DATA } else { usize::MAX };
    let mut r = TarReader::new(data, LIMITS);
    while let Ok(Some(e)) = r.next_entry() {
        let mut buf = Vec::new();
        let read = r.read_data_to_end(&mut buf, max);
        // Amortised growth may double what the bytes present need, plus one step ahead.
        assert!(
            buf.capacity() <= 2 * data.len() + GROW as usize,
            "{} bytes held for an entry of a {}-byte archive",
            buf.capacity(),
            data.len()
        );
        if read.is_err() {
            break;
        }
        assert_eq!(buf.len() as u64, e.size, "an entry's data is not the size it reports");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    match flags % 3 {
        0 => blob(flags, rest),
        1 => record(rest),
        _ => tar(flags, rest),
    }
});
