// SPDX-License-Identifier: MIT OR Apache-2.0
//! The image reader behind `cfsctl info`/`ls`/`dump`/`objects` on hostile bytes: reading must give
//! a tree or a `ReadError`, never a panic, an overflow or a runaway allocation, and whatever it
//! reads must print as a dump and as `ls` output. A dump printed from an image must also parse:
//! the reader only yields trees the dump format can hold.
#![no_main]

use composefs_native::{dump, erofs::reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = reader::read_image(data) else {
        return;
    };
    let text = dump::dump_to_vec(&loaded.tree);
    let _ = dump::ls_to_vec(&loaded.tree);
    let _ = dump::objects(&loaded.tree);
    if let Ok(again) = dump::parse(&text) {
        assert_eq!(
            dump::dump_to_vec(&again),
            text,
            "dump of a read image changed on a re-parse"
        );
    }
});
