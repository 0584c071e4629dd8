/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * composefs: parsing of composefs (EROFS) images.
 *
 * Everything here works on byte offsets into the image file and validates
 * what it reads; nothing here knows about the VFS objects built on top.
 */
#ifndef _CFS_IMAGE_H
#define _CFS_IMAGE_H

#include <linux/types.h>
#include <linux/fs.h>
#include "cfs_format.h"

#ifndef EFSCORRUPTED
#define EFSCORRUPTED	EUCLEAN
#endif

/* pages read ahead in the image file on a page-cache miss (128 KiB) */
#define CFS_IMAGE_RA_PAGES	32

struct cfs_image {
	struct file *file;	/* the image, opened at mount */
	u64 size;		/* image size at mount */
	u64 root_nid;
	u64 inos;
	s64 build_time;		/* signed on disk: times before 1970 are valid */
	u32 build_time_nsec;
	u32 blocks;
	u64 meta_base;		/* byte offset of nid 0 */
	u64 xattr_base;		/* byte offset of the shared xattr area */
	u32 composefs_version;
	u32 header_flags;
};

/* A parsed on-disk inode. */
struct cfs_inode_info {
	u64 nid;
	u64 iloc;		/* byte offset of the on-disk inode */
	u64 size;
	s64 mtime;
	u32 mtime_nsec;
	u32 nlink;
	u32 uid;
	u32 gid;
	u32 rdev;		/* encoded (new_encode_dev) */
	u32 blkaddr;		/* first data block of flat layouts */
	u16 mode;
	u8 layout;
	u8 chunkbits;		/* chunk-based: log2 of the chunk size */
	u8 chunk_unit;		/* chunk-based: 4 or 8 bytes per index */
	u8 inode_isize;		/* 32 or 64 */
	u32 xattr_isize;	/* inline xattr area size */
};

/*
 * A cursor over the image's page cache, like EROFS's erofs_buf: it keeps
 * the folio (and the mapping of the page) last used, so that consecutive
 * reads of an inode, its xattrs or a directory block cost one page-cache
 * lookup instead of one per field.  Put it with cfs_buf_put() before
 * returning; cursors must be put in the reverse order of their first use
 * (kmap_local nesting).
 */
struct cfs_buf {
	const struct cfs_image *img;
	struct folio *folio;	/* referenced, or NULL */
	void *kaddr;		/* mapping of page @index, or NULL */
	pgoff_t index;
	void *bounce;		/* page copy when the image has no read_folio */
};

#define CFS_BUF_INIT(i)	{ .img = (i) }

void cfs_buf_put(struct cfs_buf *buf);
int cfs_buf_read(struct cfs_buf *buf, u64 off, void *dst, size_t len);

/* One xattr entry as seen while iterating. */
struct cfs_xattr {
	struct cfs_buf *buf;	/* the cursor, to read the value with */
	u8 index;
	u8 name_len;
	u16 value_size;
	u64 value_off;		/* image byte offset of the value */
	char name[CFS_NAME_LEN + 1];	/* name after the prefix, NUL-ended */
};

/* Return < 0 to abort with that error, > 0 to stop, 0 to go on. */
typedef int (*cfs_xattr_actor)(void *ctx, const struct cfs_xattr *xa);

/*
 * A directory block, copied out of the image before anything in it is
 * looked at: whoever can write the image file can change its page cache
 * at any moment, so a field validated in place could be different when it
 * is used.  The copy is checked, then used, and never read from the image
 * again.  cfs_dir_read_block() validates every dirent (readdir); lookup
 * checks only the entries it compares.
 */
struct cfs_dirblock {
	u8 *data;		/* CFS_BLKSIZE bytes owned by the caller */
	unsigned int len;	/* valid bytes (last block may be short) */
	unsigned int ndirents;
};

int cfs_image_open(struct cfs_image *img, struct file *file);
int cfs_image_read(const struct cfs_image *img, u64 off, void *buf,
		   size_t len);
int cfs_image_read_inode(struct cfs_buf *buf, u64 nid,
			 struct cfs_inode_info *ci);
int cfs_image_read_data(const struct cfs_image *img,
			const struct cfs_inode_info *ci, u64 pos, void *buf,
			size_t len);

/* directories */
unsigned int cfs_dir_nblocks(const struct cfs_inode_info *ci);
int cfs_dir_read_block(struct cfs_buf *buf, const struct cfs_inode_info *ci,
		       unsigned int blk, struct cfs_dirblock *db);
int cfs_dirent_get(const struct cfs_dirblock *db, unsigned int i,
		   u64 *nid, u8 *ftype, const char **name,
		   unsigned int *namelen);
void *cfs_dirblock_alloc(void);
int cfs_dir_lookup(const struct cfs_image *img,
		   const struct cfs_inode_info *ci, const char *name,
		   unsigned int namelen, u64 *nid, u8 *ftype);

/* xattrs */
int cfs_xattr_iterate(struct cfs_buf *buf, const struct cfs_inode_info *ci,
		      cfs_xattr_actor actor, void *ctx);
int cfs_xattr_get(const struct cfs_image *img,
		  const struct cfs_inode_info *ci, u8 index, const char *name,
		  void *buf, size_t size);

static inline bool cfs_is_whiteout(const struct cfs_inode_info *ci)
{
	return S_ISCHR(ci->mode) && ci->rdev == 0;
}

#endif /* _CFS_IMAGE_H */
