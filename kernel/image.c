// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: parsing of composefs (EROFS) images.
 *
 * The image is read through the page cache of the image file, which
 * whoever can write that file may change at any moment.  So every field is
 * read once into a copy (cfs_buf_read), then checked, then used: nothing
 * is used in place and nothing is read twice.  Every offset, length, nid
 * and name taken from the image is checked before it is used; a malformed
 * image gives -EFSCORRUPTED (or -EOPNOTSUPP for features this reader does
 * not implement), never an out-of-bounds access.
 */
#include <linux/fs.h>
#include <linux/pagemap.h>
#include <linux/highmem.h>
#include <linux/slab.h>
#include <linux/overflow.h>
#include <linux/limits.h>
#include "image.h"

/*
 * A folio of the image file, read ahead on a miss: metadata reads are
 * small, and one synchronous 4 KiB read per miss makes a cold walk of a
 * big image wait on thousands of small I/Os.
 */
static struct folio *cfs_image_folio(const struct cfs_image *img,
				     pgoff_t index)
{
	struct file *file = img->file;
	struct address_space *mapping = file->f_mapping;
	struct folio *folio;

	folio = filemap_get_folio(mapping, index);
	if (IS_ERR(folio)) {
		page_cache_sync_readahead(mapping, &file->f_ra, file, index,
					  CFS_IMAGE_RA_PAGES);
	} else {
		if (folio_test_readahead(folio))
			page_cache_async_readahead(mapping, &file->f_ra, file,
						   folio, CFS_IMAGE_RA_PAGES);
		if (folio_test_uptodate(folio))
			return folio;
		folio_put(folio);
	}
	return read_mapping_folio(mapping, index, file);
}

/* a copy of page @index of an image whose file system has no read_folio */
static int cfs_buf_bounce(struct cfs_buf *buf, pgoff_t index)
{
	loff_t pos = (loff_t)index << PAGE_SHIFT;
	size_t len;
	ssize_t ret;

	buf->kaddr = NULL;
	if (!buf->bounce) {
		buf->bounce = kmalloc(PAGE_SIZE, GFP_KERNEL);
		if (!buf->bounce)
			return -ENOMEM;
	}
	/* callers checked that the page holds bytes below img->size */
	len = min_t(u64, PAGE_SIZE, buf->img->size - pos);
	ret = kernel_read(buf->img->file, buf->bounce, len, &pos);
	if (ret < 0)
		return ret;
	if (ret != len)
		return -EIO;
	buf->kaddr = buf->bounce;
	buf->index = index;
	return 0;
}

/* make page @index of the image the cursor's current page */
static int cfs_buf_page(struct cfs_buf *buf, pgoff_t index)
{
	struct folio *folio = buf->folio;

	if (buf->kaddr && buf->index == index)
		return 0;
	if (!buf->img->file->f_mapping->a_ops->read_folio)
		return cfs_buf_bounce(buf, index);
	if (buf->kaddr) {
		kunmap_local(buf->kaddr);
		buf->kaddr = NULL;
	}
	if (folio && index - folio->index >= folio_nr_pages(folio)) {
		folio_put(folio);
		folio = NULL;
		buf->folio = NULL;
	}
	if (!folio) {
		folio = cfs_image_folio(buf->img, index);
		if (IS_ERR(folio))
			return PTR_ERR(folio);
		buf->folio = folio;
	}
	buf->kaddr = kmap_local_folio(folio,
				      (index - folio->index) << PAGE_SHIFT);
	buf->index = index;
	return 0;
}

void cfs_buf_put(struct cfs_buf *buf)
{
	if (buf->kaddr && buf->kaddr != buf->bounce)
		kunmap_local(buf->kaddr);
	buf->kaddr = NULL;
	if (buf->folio)
		folio_put(buf->folio);
	buf->folio = NULL;
	kfree(buf->bounce);
	buf->bounce = NULL;
}

/* copy @len bytes at image offset @off (any range inside the image) */
int cfs_buf_read(struct cfs_buf *buf, u64 off, void *dst, size_t len)
{
	u64 end;
	int err;

	if (check_add_overflow(off, (u64)len, &end) || end > buf->img->size)
		return -EFSCORRUPTED;
	while (len) {
		size_t n = min_t(size_t, len, PAGE_SIZE - offset_in_page(off));

		err = cfs_buf_page(buf, off >> PAGE_SHIFT);
		if (err)
			return err;
		memcpy(dst, buf->kaddr + offset_in_page(off), n);
		dst += n;
		off += n;
		len -= n;
	}
	return 0;
}

int cfs_image_read(const struct cfs_image *img, u64 off, void *buf,
		   size_t len)
{
	struct cfs_buf b = CFS_BUF_INIT(img);
	int err;

	err = cfs_buf_read(&b, off, buf, len);
	cfs_buf_put(&b);
	return err;
}

int cfs_image_open(struct cfs_image *img, struct file *file)
{
	struct cfs_header hdr;
	struct cfs_erofs_super sb;
	u32 incompat;
	int err;

	img->file = file;
	img->size = i_size_read(file_inode(file));
	if (img->size < CFS_EROFS_SB_OFFSET + sizeof(sb))
		return -EINVAL;

	err = cfs_image_read(img, 0, &hdr, sizeof(hdr));
	if (err)
		return err;
	if (le32_to_cpu(hdr.magic) != CFS_MAGIC ||
	    le32_to_cpu(hdr.version) != CFS_HEADER_VERSION)
		return -EINVAL;
	img->composefs_version = le32_to_cpu(hdr.composefs_version);
	img->header_flags = le32_to_cpu(hdr.flags);
	if (img->composefs_version > CFS_MAX_FORMAT_VERSION)
		return -EOPNOTSUPP;

	err = cfs_image_read(img, CFS_EROFS_SB_OFFSET, &sb, sizeof(sb));
	if (err)
		return err;
	if (le32_to_cpu(sb.magic) != CFS_EROFS_MAGIC)
		return -EINVAL;
	if (sb.blkszbits != CFS_BLKBITS || sb.dirblkbits != 0)
		return -EOPNOTSUPP;
	incompat = le32_to_cpu(sb.feature_incompat);
	if (incompat & ~CFS_INCOMPAT_SUPPORTED)
		return -EOPNOTSUPP;

	img->root_nid = le16_to_cpu(sb.root_nid);
	img->inos = le64_to_cpu(sb.inos);
	img->build_time = (s64)le64_to_cpu(sb.build_time);
	img->build_time_nsec = le32_to_cpu(sb.build_time_nsec);
	img->blocks = le32_to_cpu(sb.blocks);
	img->meta_base = (u64)le32_to_cpu(sb.meta_blkaddr) << CFS_BLKBITS;
	img->xattr_base = (u64)le32_to_cpu(sb.xattr_blkaddr) << CFS_BLKBITS;
	if (img->meta_base >= img->size || img->xattr_base > img->size ||
	    img->build_time_nsec >= NSEC_PER_SEC)
		return -EFSCORRUPTED;
	return 0;
}

static int cfs_check_range(const struct cfs_image *img, u64 off, u64 len)
{
	u64 end;

	if (check_add_overflow(off, len, &end) || end > img->size)
		return -EFSCORRUPTED;
	return 0;
}

static inline u64 cfs_inline_off(const struct cfs_inode_info *ci)
{
	return ci->iloc + ci->inode_isize + ci->xattr_isize;
}

/* check that the data of a flat or chunk-based inode lies in the image */
static int cfs_check_data(const struct cfs_image *img,
			  const struct cfs_inode_info *ci)
{
	u64 nblocks, plain, tail, toff, nchunks, aoff;

	if (!ci->size)
		return 0;
	nblocks = DIV_ROUND_UP(ci->size, CFS_BLKSIZE);

	switch (ci->layout) {
	case CFS_LAYOUT_FLAT_PLAIN:
		return cfs_check_range(img, (u64)ci->blkaddr << CFS_BLKBITS,
				       ci->size);
	case CFS_LAYOUT_FLAT_INLINE:
		plain = (nblocks - 1) << CFS_BLKBITS;
		if (plain && cfs_check_range(img,
					     (u64)ci->blkaddr << CFS_BLKBITS,
					     plain))
			return -EFSCORRUPTED;
		tail = ci->size - plain;
		toff = cfs_inline_off(ci);
		/* the inline tail must not cross a block boundary */
		if ((toff & (CFS_BLKSIZE - 1)) + tail > CFS_BLKSIZE)
			return -EFSCORRUPTED;
		return cfs_check_range(img, toff, tail);
	case CFS_LAYOUT_CHUNK_BASED:
		nchunks = (ci->size >> ci->chunkbits) +
			  !!(ci->size & ((1ULL << ci->chunkbits) - 1));
		if (nchunks > img->size / ci->chunk_unit)
			return -EFSCORRUPTED;
		aoff = ALIGN(cfs_inline_off(ci), (u64)ci->chunk_unit);
		return cfs_check_range(img, aoff, nchunks * ci->chunk_unit);
	default:
		return -EOPNOTSUPP;
	}
}

int cfs_image_read_inode(struct cfs_buf *buf, u64 nid,
			 struct cfs_inode_info *ci)
{
	const struct cfs_image *img = buf->img;
	union {
		struct cfs_inode_compact c;
		struct cfs_inode_extended e;
	} raw;
	u16 fmt, icount;
	u32 iu;
	int err;

	if (nid > (U64_MAX - img->meta_base) >> CFS_SLOTBITS)
		return -EFSCORRUPTED;
	memset(ci, 0, sizeof(*ci));
	ci->nid = nid;
	ci->iloc = img->meta_base + (nid << CFS_SLOTBITS);

	err = cfs_buf_read(buf, ci->iloc, &raw.c, sizeof(raw.c));
	if (err)
		return err;
	fmt = le16_to_cpu(raw.c.i_format);
	if (fmt & ~CFS_I_ALL)
		return -EFSCORRUPTED;
	ci->layout = (fmt >> CFS_I_LAYOUT_SHIFT) & CFS_I_LAYOUT_MASK;

	if (fmt & CFS_I_VERSION_MASK) {
		/* only the rest: the union already holds the first 32 bytes */
		err = cfs_buf_read(buf, ci->iloc + sizeof(raw.c),
				   (u8 *)&raw.e + sizeof(raw.c),
				   sizeof(raw.e) - sizeof(raw.c));
		if (err)
			return err;
		ci->inode_isize = sizeof(raw.e);
		icount = le16_to_cpu(raw.e.i_xattr_icount);
		ci->mode = le16_to_cpu(raw.e.i_mode);
		ci->size = le64_to_cpu(raw.e.i_size);
		iu = le32_to_cpu(raw.e.i_u);
		ci->uid = le32_to_cpu(raw.e.i_uid);
		ci->gid = le32_to_cpu(raw.e.i_gid);
		ci->mtime = (s64)le64_to_cpu(raw.e.i_mtime);
		ci->mtime_nsec = le32_to_cpu(raw.e.i_mtime_nsec);
		ci->nlink = le32_to_cpu(raw.e.i_nlink);
		if (ci->mtime_nsec >= NSEC_PER_SEC)
			return -EFSCORRUPTED;
	} else {
		ci->inode_isize = sizeof(raw.c);
		icount = le16_to_cpu(raw.c.i_xattr_icount);
		ci->mode = le16_to_cpu(raw.c.i_mode);
		ci->size = le32_to_cpu(raw.c.i_size);
		iu = le32_to_cpu(raw.c.i_u);
		ci->uid = le16_to_cpu(raw.c.i_uid);
		ci->gid = le16_to_cpu(raw.c.i_gid);
		ci->mtime = img->build_time;
		ci->mtime_nsec = img->build_time_nsec;
		ci->nlink = le16_to_cpu(raw.c.i_nlink);
	}
	ci->xattr_isize = icount ? sizeof(struct cfs_xattr_ibody_header) +
				   sizeof(u32) * (icount - 1) : 0;
	err = cfs_check_range(img, ci->iloc,
			      (u64)ci->inode_isize + ci->xattr_isize);
	if (err)
		return err;
	if (ci->size > MAX_LFS_FILESIZE)
		return -EFSCORRUPTED;

	switch (ci->mode & S_IFMT) {
	case S_IFDIR:
	case S_IFLNK:
	case S_IFREG:
		if (ci->layout == CFS_LAYOUT_CHUNK_BASED) {
			if (iu & ~CFS_CHUNK_ALL)
				return -EOPNOTSUPP;
			ci->chunkbits = CFS_BLKBITS +
					(iu & CFS_CHUNK_BLKBITS_MASK);
			ci->chunk_unit = (iu & CFS_CHUNK_INDEXES) ?
				sizeof(struct cfs_chunk_index) : sizeof(__le32);
		} else {
			ci->blkaddr = iu;
		}
		/* a directory or a symlink lives inside the image */
		if (S_ISDIR(ci->mode) && ci->size > img->size)
			return -EFSCORRUPTED;
		if (S_ISLNK(ci->mode) &&
		    (ci->size == 0 || ci->size >= PATH_MAX))
			return -EFSCORRUPTED;
		err = cfs_check_data(img, ci);
		if (err)
			return err;
		break;
	case S_IFCHR:
	case S_IFBLK:
		ci->rdev = iu;
		break;
	case S_IFIFO:
	case S_IFSOCK:
		break;
	default:
		return -EFSCORRUPTED;
	}
	return 0;
}

/* map a logical offset of an inode to an image range (or a hole) */
static int cfs_map(struct cfs_buf *buf, const struct cfs_inode_info *ci,
		   u64 pos, u64 *pa, u64 *plen, bool *hole)
{
	u64 nblocks, lastblk, chunknr, aoff, cmask;
	u32 blkaddr;
	int err;

	*hole = false;
	switch (ci->layout) {
	case CFS_LAYOUT_FLAT_PLAIN:
		*pa = ((u64)ci->blkaddr << CFS_BLKBITS) + pos;
		*plen = ci->size - pos;
		return 0;
	case CFS_LAYOUT_FLAT_INLINE:
		nblocks = DIV_ROUND_UP(ci->size, CFS_BLKSIZE);
		lastblk = (nblocks - 1) << CFS_BLKBITS;
		if (pos < lastblk) {
			*pa = ((u64)ci->blkaddr << CFS_BLKBITS) + pos;
			*plen = lastblk - pos;
		} else {
			*pa = cfs_inline_off(ci) + (pos - lastblk);
			*plen = ci->size - pos;
		}
		return 0;
	case CFS_LAYOUT_CHUNK_BASED:
		chunknr = pos >> ci->chunkbits;
		cmask = (1ULL << ci->chunkbits) - 1;
		aoff = ALIGN(cfs_inline_off(ci), (u64)ci->chunk_unit) +
		       chunknr * ci->chunk_unit;
		if (ci->chunk_unit == sizeof(__le32)) {
			__le32 a;

			err = cfs_buf_read(buf, aoff, &a, sizeof(a));
			blkaddr = le32_to_cpu(a);
		} else {
			struct cfs_chunk_index idx;

			err = cfs_buf_read(buf, aoff, &idx, sizeof(idx));
			blkaddr = le32_to_cpu(idx.blkaddr);
		}
		if (err)
			return err;
		*plen = min(ci->size - pos, (cmask + 1) - (pos & cmask));
		if (blkaddr == CFS_NULL_ADDR) {
			*hole = true;
			return 0;
		}
		*pa = ((u64)blkaddr << CFS_BLKBITS) + (pos & cmask);
		return 0;
	default:
		return -EOPNOTSUPP;
	}
}

int cfs_image_read_data(const struct cfs_image *img,
			const struct cfs_inode_info *ci, u64 pos, void *buf,
			size_t len)
{
	struct cfs_buf b = CFS_BUF_INIT(img);
	u64 end;
	int err = 0;

	if (check_add_overflow(pos, (u64)len, &end) || end > ci->size)
		return -EFSCORRUPTED;
	while (len) {
		u64 pa, n;
		bool hole;

		err = cfs_map(&b, ci, pos, &pa, &n, &hole);
		if (err)
			break;
		err = -EFSCORRUPTED;
		if (!n)
			break;
		n = min_t(u64, n, len);
		if (hole) {
			memset(buf, 0, n);
		} else {
			err = cfs_buf_read(&b, pa, buf, n);
			if (err)
				break;
		}
		err = 0;
		buf += n;
		pos += n;
		len -= n;
	}
	cfs_buf_put(&b);
	return err;
}

unsigned int cfs_dir_nblocks(const struct cfs_inode_info *ci)
{
	/* directory sizes are bounded by the image size at inode read */
	return DIV_ROUND_UP(ci->size, CFS_BLKSIZE);
}

static inline const struct cfs_dirent *cfs_de(const struct cfs_dirblock *db)
{
	return (const struct cfs_dirent *)db->data;
}

/* a buffer for one directory block (struct cfs_dirblock.data) */
void *cfs_dirblock_alloc(void)
{
	return kmalloc(CFS_BLKSIZE, GFP_KERNEL);
}

/*
 * Copy directory block @blk into db->data and check its dirent array: the
 * first nameoff gives the number of dirents, which must fit before the
 * names.  Everything later taken from the block is taken from this copy.
 */
static int cfs_dir_map_block(struct cfs_buf *buf,
			     const struct cfs_inode_info *ci, unsigned int blk,
			     struct cfs_dirblock *db)
{
	const struct cfs_dirent *de;
	unsigned int nameoff0;
	u64 pos = (u64)blk << CFS_BLKBITS;
	u64 pa, n;
	bool hole;
	int err;

	if (pos >= ci->size)
		return -EFSCORRUPTED;
	db->len = min_t(u64, ci->size - pos, CFS_BLKSIZE);
	err = cfs_map(buf, ci, pos, &pa, &n, &hole);
	if (err)
		return err;
	/* a directory block is never a hole and is contiguous */
	if (hole || n < db->len)
		return -EFSCORRUPTED;
	err = cfs_buf_read(buf, pa, db->data, db->len);
	if (err)
		return err;

	de = cfs_de(db);
	if (db->len < sizeof(*de))
		return -EFSCORRUPTED;
	nameoff0 = le16_to_cpu(de[0].nameoff);
	if (!nameoff0 || nameoff0 % sizeof(*de) || nameoff0 >= db->len)
		return -EFSCORRUPTED;
	db->ndirents = nameoff0 / sizeof(*de);
	return 0;
}

/*
 * The name of dirent @i, bounds-checked: it starts after the dirent array,
 * ends at the next name (or at a NUL or the block's end for the last one)
 * and is 1..CFS_NAME_LEN bytes long.
 */
static int cfs_dirent_name(const struct cfs_dirblock *db, unsigned int i,
			   const char **name, unsigned int *namelen)
{
	const struct cfs_dirent *de = cfs_de(db);
	unsigned int off = le16_to_cpu(de[i].nameoff), end;

	if (off < db->ndirents * sizeof(*de) || off >= db->len)
		return -EFSCORRUPTED;
	if (i + 1 < db->ndirents) {
		end = le16_to_cpu(de[i + 1].nameoff);
		if (end <= off || end > db->len)
			return -EFSCORRUPTED;
	} else {
		end = off + strnlen(db->data + off, db->len - off);
	}
	if (end == off || end - off > CFS_NAME_LEN)
		return -EFSCORRUPTED;
	*name = db->data + off;
	*namelen = end - off;
	return 0;
}

/* map and fully validate a block, for readdir (names go to user space) */
int cfs_dir_read_block(struct cfs_buf *buf, const struct cfs_inode_info *ci,
		       unsigned int blk, struct cfs_dirblock *db)
{
	const char *name;
	unsigned int i, len;
	int err;

	err = cfs_dir_map_block(buf, ci, blk, db);
	if (err)
		return err;
	for (i = 0; i < db->ndirents; i++) {
		err = cfs_dirent_name(db, i, &name, &len);
		if (err)
			return err;
		if (memchr(name, '/', len) || memchr(name, '\0', len))
			return -EFSCORRUPTED;
	}
	return 0;
}

static void cfs_dirent_nid(const struct cfs_dirblock *db, unsigned int i,
			   u64 *nid, u8 *ftype)
{
	*nid = le64_to_cpu(cfs_de(db)[i].nid);
	*ftype = cfs_de(db)[i].file_type;
}

/* dirent @i of a block copy that cfs_dir_read_block() validated */
int cfs_dirent_get(const struct cfs_dirblock *db, unsigned int i,
		   u64 *nid, u8 *ftype, const char **name,
		   unsigned int *namelen)
{
	cfs_dirent_nid(db, i, nid, ftype);
	return cfs_dirent_name(db, i, name, namelen);
}

/*
 * Compare a name with the name of dirent @i, as unsigned bytes; *r gets
 * the result.  A stored name holding '/' or NUL never equals a looked-up
 * name, so lookup needs only the bounds checks.
 */
static int cfs_dirent_cmp(const struct cfs_dirblock *db, unsigned int i,
			  const char *name, unsigned int len, int *r)
{
	const char *dname;
	unsigned int dlen;
	int err;

	err = cfs_dirent_name(db, i, &dname, &dlen);
	if (err)
		return err;
	*r = memcmp(name, dname, min(len, dlen));
	if (!*r)
		*r = len < dlen ? -1 : len > dlen;
	return 0;
}

/*
 * Binary search of the sorted directory, in place in the page cache: first
 * over the first names of the blocks, then within the block found.
 */
int cfs_dir_lookup(const struct cfs_image *img,
		   const struct cfs_inode_info *ci, const char *name,
		   unsigned int namelen, u64 *nid, u8 *ftype)
{
	struct cfs_buf buf = CFS_BUF_INIT(img);
	struct cfs_dirblock db;
	long head = 0, back, cand = -1, mid, loaded = -1;
	int err = -ENOENT, r = 0;

	db.data = cfs_dirblock_alloc();
	if (!db.data)
		return -ENOMEM;
	back = (long)cfs_dir_nblocks(ci) - 1;

	/* find the last block whose first name is <= name */
	while (head <= back) {
		mid = head + (back - head) / 2;
		err = cfs_dir_map_block(&buf, ci, mid, &db);
		if (!err)
			err = cfs_dirent_cmp(&db, 0, name, namelen, &r);
		if (err)
			goto out;
		loaded = mid;
		if (r == 0) {
			cfs_dirent_nid(&db, 0, nid, ftype);
			goto out;
		}
		if (r < 0) {
			back = mid - 1;
		} else {
			cand = mid;
			head = mid + 1;
		}
	}
	err = -ENOENT;
	if (cand < 0)
		goto out;
	/* usually the last block probed (always for one-block directories) */
	if (cand != loaded) {
		err = cfs_dir_map_block(&buf, ci, cand, &db);
		if (err)
			goto out;
	}

	head = 1;
	back = (long)db.ndirents - 1;
	err = -ENOENT;
	while (head <= back) {
		mid = head + (back - head) / 2;
		err = cfs_dirent_cmp(&db, mid, name, namelen, &r);
		if (err)
			goto out;
		if (r == 0) {
			cfs_dirent_nid(&db, mid, nid, ftype);
			goto out;
		}
		if (r < 0)
			back = mid - 1;
		else
			head = mid + 1;
		err = -ENOENT;
	}
out:
	cfs_buf_put(&buf);
	kfree(db.data);
	return err;
}

static int cfs_xattr_entry(struct cfs_buf *buf, u64 pos, u64 limit,
			   struct cfs_xattr *xa, u64 *esize)
{
	struct cfs_xattr_entry e;
	u64 sz;
	int err;

	err = cfs_buf_read(buf, pos, &e, sizeof(e));
	if (err)
		return err;
	xa->index = e.e_name_index;
	xa->name_len = e.e_name_len;
	xa->value_size = le16_to_cpu(e.e_value_size);
	sz = ALIGN(sizeof(e) + xa->name_len + (u64)xa->value_size,
		   sizeof(e));
	if (sz > limit - pos)
		return -EFSCORRUPTED;
	err = cfs_buf_read(buf, pos + sizeof(e), xa->name, xa->name_len);
	if (err)
		return err;
	xa->name[xa->name_len] = '\0';
	if (memchr(xa->name, '\0', xa->name_len))
		return -EFSCORRUPTED;
	xa->value_off = pos + sizeof(e) + xa->name_len;
	*esize = sz;
	return 0;
}

int cfs_xattr_iterate(struct cfs_buf *buf, const struct cfs_inode_info *ci,
		      cfs_xattr_actor actor, void *ctx)
{
	const struct cfs_image *img = buf->img;
	struct cfs_xattr_ibody_header h;
	struct cfs_xattr xa;
	u64 base, pos, end, esize;
	unsigned int i, shared;
	int err;

	if (!ci->xattr_isize)
		return 0;
	base = ci->iloc + ci->inode_isize;
	err = cfs_buf_read(buf, base, &h, sizeof(h));
	if (err)
		return err;
	shared = h.h_shared_count;
	if (sizeof(h) + sizeof(u32) * shared > ci->xattr_isize)
		return -EFSCORRUPTED;
	xa.buf = buf;

	/* inline entries first, then the shared ones, as EROFS does */
	pos = base + sizeof(h) + sizeof(u32) * shared;
	end = base + ci->xattr_isize;
	while (pos < end) {
		err = cfs_xattr_entry(buf, pos, end, &xa, &esize);
		if (err)
			return err;
		err = actor(ctx, &xa);
		if (err)
			return err < 0 ? err : 0;
		pos += esize;
	}

	for (i = 0; i < shared; i++) {
		__le32 id;

		err = cfs_buf_read(buf, base + sizeof(h) + sizeof(u32) * i,
				   &id, sizeof(id));
		if (err)
			return err;
		pos = img->xattr_base + (u64)le32_to_cpu(id) * sizeof(u32);
		err = cfs_xattr_entry(buf, pos, img->size, &xa, &esize);
		if (err)
			return err;
		err = actor(ctx, &xa);
		if (err)
			return err < 0 ? err : 0;
	}
	return 0;
}

struct cfs_xattr_get_ctx {
	u8 index;
	const char *name;
	size_t namelen;
	void *buf;
	size_t size;
	int ret;
};

static int cfs_xattr_get_actor(void *p, const struct cfs_xattr *xa)
{
	struct cfs_xattr_get_ctx *c = p;
	int err;

	if (xa->index != c->index || xa->name_len != c->namelen ||
	    memcmp(xa->name, c->name, c->namelen))
		return 0;
	if (!c->buf) {
		c->ret = xa->value_size;
		return 1;
	}
	if (c->size < xa->value_size) {
		c->ret = -ERANGE;
		return 1;
	}
	err = cfs_buf_read(xa->buf, xa->value_off, c->buf, xa->value_size);
	c->ret = err ? err : xa->value_size;
	return 1;
}

int cfs_xattr_get(const struct cfs_image *img,
		  const struct cfs_inode_info *ci, u8 index, const char *name,
		  void *buf, size_t size)
{
	struct cfs_xattr_get_ctx c = {
		.index = index, .name = name, .namelen = strlen(name),
		.buf = buf, .size = size, .ret = -ENODATA,
	};
	struct cfs_buf b = CFS_BUF_INIT(img);
	int err;

	if (c.namelen > CFS_NAME_LEN)
		return -ENODATA;
	err = cfs_xattr_iterate(&b, ci, cfs_xattr_get_actor, &c);
	cfs_buf_put(&b);
	return err ? err : c.ret;
}
