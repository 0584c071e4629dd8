// SPDX-License-Identifier: MIT OR Apache-2.0
//! On-disk structures of a composefs EROFS image, each defined once as a `#[repr(C)]` struct of
//! little-endian fields that is its own bytes (zerocopy): the writer appends `as_bytes()`, the
//! reader copies a struct out of the image with [`read_at`], so a field's offset exists only in
//! the struct's declaration. Layout facts from the EROFS format (Linux `erofs_fs.h`) and
//! composefs' `lcfs-erofs.h`; kernel/cfs_format.h declares the same structs for the module.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_BITS: u32 = 12;
pub const SLOT_SIZE: u64 = 32;
pub const SUPER_OFFSET: u64 = 1024;
pub const SUPER_SIZE: usize = size_of::<Superblock>();
/// First inode byte: right after the superblock.
pub const INODES_START: u64 = SUPER_OFFSET + SUPER_SIZE as u64;

pub const CFS_MAGIC: u32 = 0xd078_629a;
pub const CFS_HEADER_VERSION: u32 = 1;
pub const CFS_HEADER_SIZE: usize = size_of::<CfsHeader>();
pub const CFS_FLAG_HAS_ACL: u32 = 1;

pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub const FEATURE_COMPAT_MTIME: u32 = 2;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 4;

pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1f;
pub const NULL_ADDR: u32 = 0xffff_ffff;
pub const MAX_CHUNKS: u64 = 1024;

pub const COMPACT_SIZE: usize = size_of::<InodeCompact>();
pub const EXTENDED_SIZE: usize = size_of::<InodeExtended>();
pub const DIRENT_SIZE: usize = size_of::<Dirent>();
pub const XATTR_HEADER_SIZE: usize = size_of::<XattrIbodyHeader>();
pub const XATTR_ENTRY_SIZE: usize = size_of::<XattrEntry>();

/// The `trusted.overlay.metacopy` value of a file whose data is an object: overlayfs'
/// `struct ovl_metacopy` (version 0, the value's own length, flags 0, fs-verity hash algorithm
/// 1 = sha256) followed by the object's sha256 digest. The kernel module reads the same layout
/// (`CFS_METACOPY_HDR` in kernel/cfs_format.h).
pub struct Metacopy;

impl Metacopy {
    pub const LEN: usize = 36;
    pub const HEADER: [u8; 4] = [0, Self::LEN as u8, 0, 1];

    /// The digest a metacopy value records. Only the length is checked: the header bytes of
    /// images from other writers are not judged here (the kernel and overlayfs judge them).
    pub fn digest(value: &[u8]) -> Option<[u8; 32]> {
        (value.len() == Self::LEN).then(|| value[Self::HEADER.len()..].try_into().expect("32 bytes"))
    }
}

pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;
pub const XATTR_LONG_PREFIX: usize = 0x80;

pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// EROFS short xattr prefixes, in the order the reference tries them.
pub const XATTR_PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
];

/// Split a full xattr key into (prefix index, suffix).
pub fn xattr_split(key: &[u8]) -> (u8, &[u8]) {
    for (p, idx) in XATTR_PREFIXES {
        if key.starts_with(p) {
            return (idx, &key[p.len()..]);
        }
    }
    (0, key)
}

/// Rebuild a full xattr key from its prefix index and suffix.
pub fn xattr_join(index: u8, suffix: &[u8]) -> Option<Vec<u8>> {
    let prefix: &[u8] = match index {
        0 => b"",
        _ => XATTR_PREFIXES.iter().find(|(_, i)| *i == index)?.0,
    };
    let mut k = prefix.to_vec();
    k.extend_from_slice(suffix);
    Some(k)
}

pub fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The derives every on-disk struct carries: any bytes are a valid value, the struct is its
/// bytes (no padding: `IntoBytes` refuses to derive otherwise), and alignment 1 so a struct can
/// be read at any offset of an image.
macro_rules! on_disk {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
    };
}

on_disk! {
    /// The composefs header at offset 0 (`struct cfs_header`).
    pub struct CfsHeader {
        pub magic: U32,
        pub version: U32,
        pub flags: U32,
        pub composefs_version: U32,
        pub unused: [U32; 4],
    }
}

on_disk! {
    /// The EROFS superblock at [`SUPER_OFFSET`] (`struct cfs_erofs_super`, Linux
    /// `erofs_super_block`). composefs leaves every field it does not name in the writer zero.
    pub struct Superblock {
        pub magic: U32,
        pub checksum: U32,
        pub feature_compat: U32,
        pub blkszbits: u8,
        pub sb_extslots: u8,
        pub root_nid: U16,
        pub inos: U64,
        pub build_time: U64,
        pub build_time_nsec: U32,
        pub blocks: U32,
        pub meta_blkaddr: U32,
        pub xattr_blkaddr: U32,
        pub uuid: [u8; 16],
        pub volume_name: [u8; 16],
        pub feature_incompat: U32,
        pub u1: U16,
        pub extra_devices: U16,
        pub devt_slotoff: U16,
        pub dirblkbits: u8,
        pub xattr_prefix_count: u8,
        pub xattr_prefix_start: U32,
        pub packed_nid: U64,
        pub xattr_filter_reserved: u8,
        pub reserved2: [u8; 23],
    }
}

on_disk! {
    /// A compact inode (`struct cfs_inode_compact`): mtime is the superblock's build time.
    pub struct InodeCompact {
        pub format: U16,
        pub xattr_icount: U16,
        pub mode: U16,
        pub nlink: U16,
        pub size: U32,
        pub reserved: U32,
        /// raw_blkaddr, rdev or chunk format, by file type and layout.
        pub i_u: U32,
        pub ino: U32,
        pub uid: U16,
        pub gid: U16,
        pub reserved2: U32,
    }
}

on_disk! {
    /// An extended inode (`struct cfs_inode_extended`).
    pub struct InodeExtended {
        pub format: U16,
        pub xattr_icount: U16,
        pub mode: U16,
        pub reserved: U16,
        pub size: U64,
        pub i_u: U32,
        pub ino: U32,
        pub uid: U32,
        pub gid: U32,
        pub mtime: U64,
        pub mtime_nsec: U32,
        pub nlink: U32,
        pub reserved2: [u8; 16],
    }
}

on_disk! {
    /// A directory entry header (`struct cfs_dirent`); the name lives at `nameoff` in the same
    /// block.
    pub struct Dirent {
        pub nid: U64,
        pub nameoff: U16,
        pub file_type: u8,
        pub reserved: u8,
    }
}

on_disk! {
    /// The header of an inode's xattr area (`struct cfs_xattr_ibody_header`); shared xattr ids
    /// (little-endian u32, in units of 4 bytes from the xattr block) follow it.
    pub struct XattrIbodyHeader {
        /// The complement of the bloom filter of the inode's keys ([`xattr_filter_bit`]).
        pub name_filter: U32,
        pub shared_count: u8,
        pub reserved: [u8; 7],
    }
}

on_disk! {
    /// One xattr entry header (`struct cfs_xattr_entry`); name suffix and value follow, padded
    /// to 4 bytes.
    pub struct XattrEntry {
        pub name_len: u8,
        pub name_index: u8,
        pub value_size: U16,
    }
}

// The sizes kernel/cfs_format.h asserts for the same structs (`static_assert`): a field added,
// dropped or resized here stops the build instead of shifting every later byte.
const _: () = {
    assert!(size_of::<CfsHeader>() == 32);
    assert!(size_of::<Superblock>() == 128);
    assert!(size_of::<InodeCompact>() == 32);
    assert!(size_of::<InodeExtended>() == 64);
    assert!(size_of::<Dirent>() == 12);
    assert!(size_of::<XattrIbodyHeader>() == 12);
    assert!(size_of::<XattrEntry>() == 4);
};

/// The on-disk struct at the start of `b`, or `None` when `b` is shorter than it.
pub fn read_at<T: FromBytes>(b: &[u8]) -> Option<T> {
    T::read_from_prefix(b).ok().map(|(t, _)| t)
}

impl CfsHeader {
    pub fn new(flags: u32, composefs_version: u32) -> CfsHeader {
        CfsHeader {
            magic: CFS_MAGIC.into(),
            version: CFS_HEADER_VERSION.into(),
            flags: flags.into(),
            composefs_version: composefs_version.into(),
            ..Default::default()
        }
    }
}

/// A compact or an extended inode, seen through the fields both have (a compact inode's mtime
/// is zero here: it is the superblock's build time). Reader and writer use this view; the bytes
/// are [`InodeCompact`] or [`InodeExtended`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskInode {
    /// `i_format`: bit 0 clear for a compact inode, set for an extended one; the layout above.
    pub format: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl DiskInode {
    pub fn make_format(compact: bool, layout: u16) -> u16 {
        (layout << 1) | if compact { 0 } else { 1 }
    }
    /// Compact (32 bytes) or extended (64): said by `format` alone.
    pub fn compact(&self) -> bool {
        self.format & 1 == 0
    }
    pub fn layout(&self) -> u16 {
        (self.format >> 1) & 7
    }
    pub fn disk_size(&self) -> usize {
        if self.compact() {
            COMPACT_SIZE
        } else {
            EXTENDED_SIZE
        }
    }
    /// Bytes of the xattr area following the inode.
    pub fn xattr_size(&self) -> usize {
        if self.xattr_icount == 0 {
            0
        } else {
            XATTR_HEADER_SIZE + 4 * (self.xattr_icount as usize - 1)
        }
    }
    /// Append the inode's bytes; a compact inode keeps the low bits of the wide fields (the
    /// writer chooses compact only where they fit).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if self.compact() {
            let raw = InodeCompact {
                format: self.format.into(),
                xattr_icount: self.xattr_icount.into(),
                mode: self.mode.into(),
                nlink: (self.nlink as u16).into(),
                size: (self.size as u32).into(),
                i_u: self.i_u.into(),
                ino: self.ino.into(),
                uid: (self.uid as u16).into(),
                gid: (self.gid as u16).into(),
                ..Default::default()
            };
            out.extend_from_slice(raw.as_bytes());
        } else {
            let raw = InodeExtended {
                format: self.format.into(),
                xattr_icount: self.xattr_icount.into(),
                mode: self.mode.into(),
                size: self.size.into(),
                i_u: self.i_u.into(),
                ino: self.ino.into(),
                uid: self.uid.into(),
                gid: self.gid.into(),
                mtime: self.mtime.into(),
                mtime_nsec: self.mtime_nsec.into(),
                nlink: self.nlink.into(),
                ..Default::default()
            };
            out.extend_from_slice(raw.as_bytes());
        }
    }
    /// Decode from `b` (at least 32 bytes; 64 for an extended inode, else `None`).
    pub fn decode(b: &[u8]) -> Option<DiskInode> {
        let format = U16::read_from_prefix(b).ok()?.0.get();
        if format & 1 == 0 {
            let i: InodeCompact = read_at(b)?;
            Some(DiskInode {
                format,
                xattr_icount: i.xattr_icount.get(),
                mode: i.mode.get(),
                nlink: i.nlink.get().into(),
                size: i.size.get().into(),
                i_u: i.i_u.get(),
                ino: i.ino.get(),
                uid: i.uid.get().into(),
                gid: i.gid.get().into(),
                mtime: 0,
                mtime_nsec: 0,
            })
        } else {
            let i: InodeExtended = read_at(b)?;
            Some(DiskInode {
                format,
                xattr_icount: i.xattr_icount.get(),
                mode: i.mode.get(),
                nlink: i.nlink.get(),
                size: i.size.get(),
                i_u: i.i_u.get(),
                ino: i.ino.get(),
                uid: i.uid.get(),
                gid: i.gid.get(),
                mtime: i.mtime.get(),
                mtime_nsec: i.mtime_nsec.get(),
            })
        }
    }
}

impl XattrEntry {
    /// Size of the entry with name, value and padding.
    pub fn total_size(&self) -> usize {
        (XATTR_ENTRY_SIZE + self.name_len as usize + self.value_size.get() as usize).div_ceil(4) * 4
    }
    /// Encode a whole entry (header, suffix, value, padding) for a full key.
    pub fn encode_full(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        Self::encode_parts(key, &[value], out)
    }
    /// [`XattrEntry::encode_full`] for a value given in pieces (written one after another).
    pub fn encode_parts(key: &[u8], value: &[&[u8]], out: &mut Vec<u8>) {
        let (index, suffix) = xattr_split(key);
        let start = out.len();
        let value_len: usize = value.iter().map(|v| v.len()).sum();
        let head = XattrEntry {
            name_len: suffix.len() as u8,
            name_index: index,
            value_size: (value_len as u16).into(),
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(suffix);
        for v in value {
            out.extend_from_slice(v);
        }
        out.resize(start + (out.len() - start).next_multiple_of(4), 0);
    }
    /// On-disk size of the entry for a full key and value.
    pub fn full_size(key: &[u8], value_len: usize) -> usize {
        let (_, suffix) = xattr_split(key);
        (XATTR_ENTRY_SIZE + suffix.len() + value_len).div_ceil(4) * 4
    }
}

/// Bloom-filter bit of one xattr key (set bits mean "maybe present"; the disk stores the
/// complement).
pub fn xattr_filter_bit(key: &[u8]) -> u32 {
    let (index, suffix) = xattr_split(key);
    let h = xxhash_rust::xxh32::xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(index as u32));
    1u32 << (h & 31)
}

/// Chunk size bits for an object-backed file of `size` bytes (at least one block, at most
/// 2^(12+31)).
pub fn chunk_bits(size: u64) -> u32 {
    let x = size.wrapping_sub(1);
    let ilog = if x == 0 { 0 } else { 63 - x.leading_zeros() };
    let bits = (ilog + 1).max(BLOCK_BITS);
    bits.min(CHUNK_FORMAT_BLKBITS_MASK as u32 + BLOCK_BITS)
}

pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(1u64 << chunk_bits(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bits_cover_the_file_in_one_chunk() {
        assert_eq!(chunk_bits(1), 12);
        assert_eq!(chunk_bits(4096), 12);
        assert_eq!(chunk_bits(4097), 13);
        assert_eq!(chunk_bits(1 << 32), 32);
        assert_eq!(chunk_bits((1 << 32) + 1), 33);
        assert_eq!(chunk_bits(u64::MAX), 43);
        assert_eq!(chunk_count(1 << 40), 1);
        assert_eq!(chunk_count((1u64 << 43) * 3), 3);
    }

    #[test]
    fn xattr_prefixes_split_and_join() {
        for key in [
            &b"user.x"[..],
            b"trusted.overlay.y",
            b"security.selinux",
            b"system.posix_acl_access",
            b"other.z",
        ] {
            let (i, s) = xattr_split(key);
            assert_eq!(xattr_join(i, s).unwrap(), key);
        }
        assert_eq!(xattr_split(b"system.posix_acl_default"), (3, &b""[..]));
        assert_eq!(xattr_join(5, b"x"), None);
    }

    #[test]
    fn inodes_encode_and_decode() {
        for compact in [true, false] {
            let i = DiskInode {
                format: DiskInode::make_format(compact, LAYOUT_CHUNK_BASED),
                xattr_icount: 7,
                mode: 0o100644,
                nlink: 3,
                size: 123456,
                i_u: 0xabcd,
                ino: 42,
                uid: 1000,
                gid: 100,
                mtime: if compact { 0 } else { 99 },
                mtime_nsec: if compact { 0 } else { 5 },
            };
            let mut b = Vec::new();
            i.encode_into(&mut b);
            assert_eq!(b.len(), i.disk_size());
            assert_eq!(DiskInode::decode(&b).unwrap(), i);
            assert_eq!(i.layout(), LAYOUT_CHUNK_BASED);
            assert_eq!(i.xattr_size(), 12 + 6 * 4);
        }
        let sb = Superblock {
            magic: EROFS_MAGIC.into(),
            root_nid: 36.into(),
            inos: 5.into(),
            blocks: 9.into(),
            ..Default::default()
        };
        assert_eq!(read_at::<Superblock>(sb.as_bytes()), Some(sb));
        assert_eq!(read_at::<Superblock>(&sb.as_bytes()[1..]), None);
    }

    /// The offsets the kernel's EROFS reader (`erofs_fs.h`) uses for the fields composefs sets.
    #[test]
    fn fields_sit_where_erofs_reads_them() {
        use std::mem::offset_of;
        for (what, offset, want) in [
            ("sb.feature_compat", offset_of!(Superblock, feature_compat), 8),
            ("sb.root_nid", offset_of!(Superblock, root_nid), 14),
            ("sb.build_time", offset_of!(Superblock, build_time), 24),
            ("sb.xattr_blkaddr", offset_of!(Superblock, xattr_blkaddr), 44),
            ("sb.feature_incompat", offset_of!(Superblock, feature_incompat), 80),
            ("sb.packed_nid", offset_of!(Superblock, packed_nid), 96),
            ("compact.i_u", offset_of!(InodeCompact, i_u), 16),
            ("compact.uid", offset_of!(InodeCompact, uid), 24),
            ("extended.size", offset_of!(InodeExtended, size), 8),
            ("extended.mtime", offset_of!(InodeExtended, mtime), 32),
            ("extended.nlink", offset_of!(InodeExtended, nlink), 44),
            ("dirent.nameoff", offset_of!(Dirent, nameoff), 8),
            ("dirent.file_type", offset_of!(Dirent, file_type), 10),
            (
                "xattr header.shared_count",
                offset_of!(XattrIbodyHeader, shared_count),
                4,
            ),
            ("xattr entry.value_size", offset_of!(XattrEntry, value_size), 2),
        ] {
            assert_eq!(offset, want, "{what}");
        }
    }

    #[test]
    fn xattr_entries_are_padded_from_their_own_start() {
        let mut out = vec![0u8; 3];
        XattrEntry::encode_full(b"user.ab", b"v", &mut out);
        assert_eq!(out.len() - 3, XattrEntry::full_size(b"user.ab", 1));
        assert_eq!(out.len() - 3, 8);
    }
}
