// SPDX-License-Identifier: MIT OR Apache-2.0
//! The writer against the reference data in tests/data/conformance (dumps gunzipped with zcat),
//! the copy tests/cfsrun.py names for the Python tests.
use _native::{dump, erofs::writer, fsverity};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::Command;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn conformance_dumps_match_reference_bytes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/conformance/dumps");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).expect("conformance data");
    let mut failures = Vec::new();
    for row in tsv.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let out = Command::new("zcat")
            .arg(dir.join(format!("{}.gz", cols[0])))
            .output()
            .unwrap();
        assert!(out.status.success());
        let tree = dump::parse(&out.stdout).unwrap_or_else(|e| panic!("{}: {e}", cols[0]));
        let img = writer::write_image(&tree, &writer::Options::default()).unwrap();
        let sha = hex(&Sha256::digest(&img.bytes));
        let verity = hex(&fsverity::digest_bytes(&img.bytes, &fsverity::Params::default()));
        let ok = sha == cols[1] && verity == cols[2] && img.version.to_string() == cols[3];
        eprintln!(
            "{} {} version {}",
            cols[0],
            if ok { "ok" } else { "MISMATCH" },
            img.version
        );
        // The reader undoes everything: image -> tree -> image and image -> dump -> image.
        let back = _native::erofs::reader::read_image(&img.bytes).unwrap();
        let again = writer::write_image(&back.tree, &writer::Options::default()).unwrap();
        assert!(again.bytes == img.bytes, "{}: image -> tree -> image differs", cols[0]);
        let text = dump::dump_to_vec(&back.tree);
        let reparsed = dump::parse(&text).unwrap();
        let again = writer::write_image(
            &reparsed,
            &writer::Options {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(again.bytes == img.bytes, "{}: image -> dump -> image differs", cols[0]);
        if !ok {
            std::fs::write(format!("/tmp/cfs-{}.img", cols[0]), &img.bytes).unwrap();
            failures.push(cols[0].to_string());
        }
    }
    assert!(failures.is_empty(), "mismatching: {failures:?}");
}
