// SPDX-License-Identifier: MIT OR Apache-2.0
//! The composefs-dump(5) parser on arbitrary text: a dump parses or is refused with a
//! `ParseError`, never a panic. What parses round-trips: parse → write → parse → write gives the
//! same text; and its image, written and read back, prints a dump that is a fixed point of
//! dump → image → dump (the first trip may drop markings the reader cannot tell from the
//! writer's own, as tests/test_roundtrip.py notes; a second trip changes nothing).
#![no_main]

use composefs_native::dump;
use composefs_native::erofs::{reader, writer};
use composefs_native::tree::Tree;
use libfuzzer_sys::fuzz_target;

fn image_dump(tree: &Tree, what: &str) -> Option<Vec<u8>> {
    // Threads 0: the global pool (a pool per input would cost more than the input).
    let opts = writer::Options {
        threads: 0,
        ..writer::Options::default()
    };
    let image = writer::write_image(tree, &opts).ok()?;
    let loaded =
        reader::read_image(&image.bytes).unwrap_or_else(|e| panic!("the image of {what} does not read back: {e}"));
    assert_eq!(loaded.version, image.version);
    Some(dump::dump_to_vec(&loaded.tree))
}

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = dump::parse(data) else {
        return;
    };
    let text = dump::dump_to_vec(&tree);
    let _ = dump::ls_to_vec(&tree);
    let again = dump::parse(&text).unwrap_or_else(|e| panic!("a written dump does not parse: {e}"));
    assert_eq!(dump::dump_to_vec(&again), text, "parse → write is not stable");

    let Some(first) = image_dump(&tree, "the input") else {
        return;
    };
    let tree1 = dump::parse(&first).unwrap_or_else(|e| panic!("the dump of a written image does not parse: {e}"));
    let second = image_dump(&tree1, "a dump read from an image").expect("a tree read from an image is writable");
    assert_eq!(second, first, "dump → image → dump is not a fixed point after one trip");
});
