/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * composefs: on-disk format of a composefs image.
 *
 * A composefs image is an EROFS image (4 KiB blocks, no compression) with a
 * 32-byte composefs header at offset 0.  All integers are little-endian.
 * This file is the single place where the on-disk layouts are described.
 */
#ifndef _CFS_FORMAT_H
#define _CFS_FORMAT_H

#include <linux/build_bug.h>
#include <linux/types.h>

/* composefs header at offset 0 */
#define CFS_MAGIC		0xd078629aU
#define CFS_HEADER_VERSION	1
#define CFS_MAX_FORMAT_VERSION	1

struct cfs_header {
	__le32 magic;
	__le32 version;
	__le32 flags;
	__le32 composefs_version;
	__le32 unused[4];
} __packed;

/* EROFS superblock at offset 1024 */
#define CFS_EROFS_SB_OFFSET	1024
#define CFS_EROFS_MAGIC		0xe0f5e1e2U
#define CFS_BLKBITS		12
#define CFS_BLKSIZE		(1U << CFS_BLKBITS)
#define CFS_SLOTBITS		5	/* nid = byte offset / 32 */

#define CFS_COMPAT_SB_CHKSUM	0x00000001
#define CFS_COMPAT_MTIME	0x00000002
#define CFS_COMPAT_XATTR_FILTER	0x00000004

#define CFS_INCOMPAT_ZERO_PADDING	0x00000001
#define CFS_INCOMPAT_CHUNKED_FILE	0x00000004
/* the only incompatible features this reader understands */
#define CFS_INCOMPAT_SUPPORTED	(CFS_INCOMPAT_ZERO_PADDING | \
				 CFS_INCOMPAT_CHUNKED_FILE)

struct cfs_erofs_super {
	__le32 magic;
	__le32 checksum;
	__le32 feature_compat;
	__u8 blkszbits;
	__u8 sb_extslots;
	__le16 root_nid;
	__le64 inos;
	__le64 build_time;
	__le32 build_time_nsec;
	__le32 blocks;
	__le32 meta_blkaddr;
	__le32 xattr_blkaddr;
	__u8 uuid[16];
	__u8 volume_name[16];
	__le32 feature_incompat;
	__le16 u1;
	__le16 extra_devices;
	__le16 devt_slotoff;
	__u8 dirblkbits;
	__u8 xattr_prefix_count;
	__le32 xattr_prefix_start;
	__le64 packed_nid;
	__u8 xattr_filter_reserved;
	__u8 reserved2[23];
} __packed;

/* i_format: bit 0 = extended inode, bits 1..3 = data layout */
#define CFS_I_VERSION_MASK	0x01
#define CFS_I_LAYOUT_SHIFT	1
#define CFS_I_LAYOUT_MASK	0x07
#define CFS_I_ALL		0x0f

enum {
	CFS_LAYOUT_FLAT_PLAIN = 0,
	CFS_LAYOUT_COMPRESSED_FULL = 1,
	CFS_LAYOUT_FLAT_INLINE = 2,
	CFS_LAYOUT_COMPRESSED_COMPACT = 3,
	CFS_LAYOUT_CHUNK_BASED = 4,
};

/* chunk format (i_u for chunk-based inodes) */
#define CFS_CHUNK_BLKBITS_MASK	0x001f
#define CFS_CHUNK_INDEXES	0x0020
#define CFS_CHUNK_ALL		(CFS_CHUNK_BLKBITS_MASK | CFS_CHUNK_INDEXES)
#define CFS_NULL_ADDR		0xffffffffU

struct cfs_chunk_index {
	__le16 advise;
	__le16 device_id;
	__le32 blkaddr;
} __packed;

struct cfs_inode_compact {
	__le16 i_format;
	__le16 i_xattr_icount;
	__le16 i_mode;
	__le16 i_nlink;
	__le32 i_size;
	__le32 i_reserved;
	__le32 i_u;		/* blkaddr, rdev or chunk format */
	__le32 i_ino;
	__le16 i_uid;
	__le16 i_gid;
	__le32 i_reserved2;
} __packed;

struct cfs_inode_extended {
	__le16 i_format;
	__le16 i_xattr_icount;
	__le16 i_mode;
	__le16 i_reserved;
	__le64 i_size;
	__le32 i_u;
	__le32 i_ino;
	__le32 i_uid;
	__le32 i_gid;
	__le64 i_mtime;
	__le32 i_mtime_nsec;
	__le32 i_nlink;
	__u8 i_reserved2[16];
} __packed;

/* inline xattr area: header, shared ids, then entries */
struct cfs_xattr_ibody_header {
	__le32 h_name_filter;
	__u8 h_shared_count;
	__u8 h_reserved2[7];
} __packed;

#define CFS_XATTR_INDEX_USER			1
#define CFS_XATTR_INDEX_POSIX_ACL_ACCESS	2
#define CFS_XATTR_INDEX_POSIX_ACL_DEFAULT	3
#define CFS_XATTR_INDEX_TRUSTED			4
#define CFS_XATTR_INDEX_LUSTRE			5
#define CFS_XATTR_INDEX_SECURITY		6

struct cfs_xattr_entry {
	__u8 e_name_len;
	__u8 e_name_index;
	__le16 e_value_size;
} __packed;

struct cfs_dirent {
	__le64 nid;
	__le16 nameoff;
	__u8 file_type;
	__u8 reserved;
} __packed;

#define CFS_NAME_LEN	255

/*
 * overlayfs metacopy xattr value (trusted.overlay.metacopy): version 0, the
 * value's length, flags, the fs-verity hash algorithm (0: no digest), digest.
 */
#define CFS_METACOPY_HDR	4
#define CFS_METACOPY_MAX	(CFS_METACOPY_HDR + 64)

/*
 * The sizes every reader and writer of this format agrees on; the Rust
 * writer and reader declare the same structs once (native/src/erofs/format.rs:
 * CfsHeader, Superblock, InodeCompact, InodeExtended, XattrIbodyHeader,
 * XattrEntry, Dirent; Metacopy::HEADER) and assert the same sizes at compile
 * time.
 */
static_assert(sizeof(struct cfs_header) == 32);
static_assert(sizeof(struct cfs_erofs_super) == 128);
static_assert(sizeof(struct cfs_chunk_index) == 8);
static_assert(sizeof(struct cfs_inode_compact) == 32);
static_assert(sizeof(struct cfs_inode_extended) == 64);
static_assert(sizeof(struct cfs_xattr_ibody_header) == 12);
static_assert(sizeof(struct cfs_xattr_entry) == 4);
static_assert(sizeof(struct cfs_dirent) == 12);

#endif /* _CFS_FORMAT_H */
