// SPDX-License-Identifier: MIT OR Apache-2.0
//! The composefs-dump(5) text format: one line per path,
//! `PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTR...`.
//!
//! Fields are separated by single spaces; `-` stands for an absent optional field; bytes are
//! escaped as `\\`, `\n`, `\r`, `\t` or `\xNN`. A mode starting with `@` marks a hardlink whose
//! PAYLOAD is the path of its target. [`parse`] reads a dump into a [`crate::tree::Tree`]
//! (refusing what mkcomposefs refuses, with the line number); [`write`] prints a tree exactly
//! as `composefs-info dump` does.

pub mod parse;
pub mod write;

pub use parse::{parse, ParseError, ParseErrorKind};
pub use write::{count_paths, dump_to_vec, for_each_path, ls_to_vec, objects, write_dump, write_ls};

/// Longest file name (bytes).
pub const NAME_MAX: usize = 255;
/// Longest symlink target / payload (PATH_MAX - 1).
pub const PATH_MAX: usize = 4096;
/// Longest xattr key.
pub const XATTR_NAME_MAX: usize = 255;
/// Longest xattr value.
pub const XATTR_VALUE_MAX: usize = 65535;
/// Largest inline content accepted from a dump (LCFS_INLINE_CONTENT_MAX).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Per-inode budget for xattrs from external input (LCFS_INODE_EXTERNAL_XATTR_MAX).
pub const INODE_EXTERNAL_XATTR_MAX: usize = 65535 / 2;

/// How a field is escaped when written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Paths: everything outside `!`..`~` as `\xNN`.
    Standard,
    /// Payloads and contents: like `Standard`, and a lone `-` as `\x2d`.
    LoneDash,
    /// Xattr keys and values: like `Standard`, and `=` as `\x3d`.
    Equal,
}

pub(crate) fn escape_into(out: &mut Vec<u8>, val: &[u8], how: Escape) {
    if how == Escape::LoneDash && val == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    for &c in val {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if how == Escape::Equal => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
            }
        }
    }
}

/// A small dump holding one of each kind of entry (inline, object-backed and empty files, a
/// hardlink, a symlink, a device, a fifo, an escaped name, ids over 65535, xattrs), in the form
/// `write_dump` prints, for the unit tests of the parser, the writer and the reader. No whiteout,
/// so it makes a format 0 image.
#[cfg(test)]
pub(crate) const SAMPLE: &[u8] = b"\
/ 4096 40755 3 0 0 0 1000.0 - - - user.root=r
/a 0 100644 1 0 0 0 1000.0 - - -
/dev 0 20644 1 0 0 1025 1000.0 - - -
/dir 4096 40750 2 10 20 0 1001.5 - - - security.selinux=x trusted.overlay.custom=v
/dir/big 100000 100644 2 0 0 0 1002.0 ab/cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd - abcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd user.a=1 user.b=2
/dir/hl 100000 @100644 2 0 0 0 1002.0 /dir/big - abcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd user.a=1 user.b=2
/dir/small 5 100600 1 1000 1000 0 1003.25 - hello -
/dir/sym 6 120777 1 0 0 0 1000.0 target - -
/fifo 0 10644 1 0 0 0 1000.0 - - -
/name\\x20with=odd\\x01bytes 0 100644 1 70000 70000 0 999.0 - - - user.k\\x3d=v\\x3d
";

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        let every: Vec<u8> = (0..=255).collect();
        let want: String = every.iter().map(|b| format!("{b:02x}")).collect();
        for (bytes, want) in [
            (&[][..], ""),
            (&[0x00, 0x0f, 0xf0, 0xff][..], "000ff0ff"),
            (&every[..], &want),
        ] {
            assert_eq!(super::hex(bytes), want);
        }
    }
}
