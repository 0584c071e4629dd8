// SPDX-License-Identifier: MIT OR Apache-2.0
//! On-disk structures of a composefs EROFS image, defined once with their encoders and
//! decoders (all little-endian). Layout facts from the EROFS format (Linux `erofs_fs.h`) and
//! composefs' `lcfs-erofs.h`.

pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_BITS: u32 = 12;
pub const SLOT_SIZE: u64 = 32;
pub const SUPER_OFFSET: u64 = 1024;
pub const SUPER_SIZE: usize = 128;
/// First inode byte: right after the superblock.
pub const INODES_START: u64 = SUPER_OFFSET + SUPER_SIZE as u64;

pub const CFS_MAGIC: u32 = 0xd078_629a;
pub const CFS_HEADER_VERSION: u32 = 1;
pub const CFS_HEADER_SIZE: usize = 32;
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

pub const COMPACT_SIZE: usize = 32;
pub const EXTENDED_SIZE: usize = 64;
pub const DIRENT_SIZE: usize = 12;
pub const XATTR_HEADER_SIZE: usize = 12;
pub const XATTR_ENTRY_SIZE: usize = 4;

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

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The 32-byte composefs header at offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfsHeader {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub composefs_version: u32,
}

impl CfsHeader {
    pub fn encode(&self) -> [u8; CFS_HEADER_SIZE] {
        let mut b = [0u8; CFS_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.composefs_version.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> CfsHeader {
        CfsHeader {
            magic: le32(b, 0),
            version: le32(b, 4),
            flags: le32(b, 8),
            composefs_version: le32(b, 12),
        }
    }
}

/// The fields of the EROFS superblock that composefs uses (the rest is zero).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub magic: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub feature_incompat: u32,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPER_SIZE] {
        let mut b = [0u8; SUPER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.feature_compat.to_le_bytes());
        b[12] = self.blkszbits;
        b[14..16].copy_from_slice(&self.root_nid.to_le_bytes());
        b[16..24].copy_from_slice(&self.inos.to_le_bytes());
        b[24..32].copy_from_slice(&self.build_time.to_le_bytes());
        b[32..36].copy_from_slice(&self.build_time_nsec.to_le_bytes());
        b[36..40].copy_from_slice(&self.blocks.to_le_bytes());
        b[40..44].copy_from_slice(&self.meta_blkaddr.to_le_bytes());
        b[44..48].copy_from_slice(&self.xattr_blkaddr.to_le_bytes());
        b[80..84].copy_from_slice(&self.feature_incompat.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Superblock {
        Superblock {
            magic: le32(b, 0),
            feature_compat: le32(b, 8),
            blkszbits: b[12],
            root_nid: le16(b, 14),
            inos: le64(b, 16),
            build_time: le64(b, 24),
            build_time_nsec: le32(b, 32),
            blocks: le32(b, 36),
            meta_blkaddr: le32(b, 40),
            xattr_blkaddr: le32(b, 44),
            feature_incompat: le32(b, 80),
        }
    }
}

/// A compact (32 B) or extended (64 B) inode. `i_u` is the raw union
/// (raw_blkaddr / rdev / chunk format).
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
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if self.compact() {
            let mut b = [0u8; COMPACT_SIZE];
            b[0..2].copy_from_slice(&self.format.to_le_bytes());
            b[2..4].copy_from_slice(&self.xattr_icount.to_le_bytes());
            b[4..6].copy_from_slice(&self.mode.to_le_bytes());
            b[6..8].copy_from_slice(&(self.nlink as u16).to_le_bytes());
            b[8..12].copy_from_slice(&(self.size as u32).to_le_bytes());
            b[16..20].copy_from_slice(&self.i_u.to_le_bytes());
            b[20..24].copy_from_slice(&self.ino.to_le_bytes());
            b[24..26].copy_from_slice(&(self.uid as u16).to_le_bytes());
            b[26..28].copy_from_slice(&(self.gid as u16).to_le_bytes());
            out.extend_from_slice(&b);
        } else {
            let mut b = [0u8; EXTENDED_SIZE];
            b[0..2].copy_from_slice(&self.format.to_le_bytes());
            b[2..4].copy_from_slice(&self.xattr_icount.to_le_bytes());
            b[4..6].copy_from_slice(&self.mode.to_le_bytes());
            b[8..16].copy_from_slice(&self.size.to_le_bytes());
            b[16..20].copy_from_slice(&self.i_u.to_le_bytes());
            b[20..24].copy_from_slice(&self.ino.to_le_bytes());
            b[24..28].copy_from_slice(&self.uid.to_le_bytes());
            b[28..32].copy_from_slice(&self.gid.to_le_bytes());
            b[32..40].copy_from_slice(&self.mtime.to_le_bytes());
            b[40..44].copy_from_slice(&self.mtime_nsec.to_le_bytes());
            b[44..48].copy_from_slice(&self.nlink.to_le_bytes());
            out.extend_from_slice(&b);
        }
    }
    /// Decode from `b` (at least 32 bytes; 64 for an extended inode, else `None`).
    pub fn decode(b: &[u8]) -> Option<DiskInode> {
        if b.len() < COMPACT_SIZE {
            return None;
        }
        let format = le16(b, 0);
        if format & 1 == 0 {
            Some(DiskInode {
                format,
                xattr_icount: le16(b, 2),
                mode: le16(b, 4),
                nlink: le16(b, 6) as u32,
                size: le32(b, 8) as u64,
                i_u: le32(b, 16),
                ino: le32(b, 20),
                uid: le16(b, 24) as u32,
                gid: le16(b, 26) as u32,
                mtime: 0,
                mtime_nsec: 0,
            })
        } else {
            if b.len() < EXTENDED_SIZE {
                return None;
            }
            Some(DiskInode {
                format,
                xattr_icount: le16(b, 2),
                mode: le16(b, 4),
                size: le64(b, 8),
                i_u: le32(b, 16),
                ino: le32(b, 20),
                uid: le32(b, 24),
                gid: le32(b, 28),
                mtime: le64(b, 32),
                mtime_nsec: le32(b, 40),
                nlink: le32(b, 44),
            })
        }
    }
}

/// A directory entry header (the name lives at `nameoff` in the same block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    pub nameoff: u16,
    pub file_type: u8,
}

impl Dirent {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nid.to_le_bytes());
        out.extend_from_slice(&self.nameoff.to_le_bytes());
        out.push(self.file_type);
        out.push(0);
    }
    pub fn decode(b: &[u8]) -> Dirent {
        Dirent {
            nid: le64(b, 0),
            nameoff: le16(b, 8),
            file_type: b[10],
        }
    }
}

/// The header of an inode's xattr area; shared xattr ids follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrIbodyHeader {
    pub name_filter: u32,
    pub shared_count: u8,
}

impl XattrIbodyHeader {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name_filter.to_le_bytes());
        out.push(self.shared_count);
        out.extend_from_slice(&[0u8; 7]);
    }
    pub fn decode(b: &[u8]) -> XattrIbodyHeader {
        XattrIbodyHeader {
            name_filter: le32(b, 0),
            shared_count: b[4],
        }
    }
}

/// One xattr entry header; name suffix and value follow, padded to 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XattrEntry {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: u16,
}

impl XattrEntry {
    pub fn decode(b: &[u8]) -> XattrEntry {
        XattrEntry {
            name_len: b[0],
            name_index: b[1],
            value_size: le16(b, 2),
        }
    }
    /// Size of the entry with name, value and padding.
    pub fn total_size(&self) -> usize {
        (XATTR_ENTRY_SIZE + self.name_len as usize + self.value_size as usize).div_ceil(4) * 4
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
        out.push(suffix.len() as u8);
        out.push(index);
        out.extend_from_slice(&(value_len as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        for v in value {
            out.extend_from_slice(v);
        }
        while !(out.len() - start).is_multiple_of(4) {
            out.push(0);
        }
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
            magic: EROFS_MAGIC,
            root_nid: 36,
            inos: 5,
            blocks: 9,
            ..Default::default()
        };
        assert_eq!(Superblock::decode(&sb.encode()), sb);
    }

    #[test]
    fn xattr_entries_are_padded_from_their_own_start() {
        let mut out = vec![0u8; 3];
        XattrEntry::encode_full(b"user.ab", b"v", &mut out);
        assert_eq!(out.len() - 3, XattrEntry::full_size(b"user.ab", 1));
        assert_eq!(out.len() - 3, 8);
    }
}
