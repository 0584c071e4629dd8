// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: parsing of composefs (EROFS) images.
 *
 * The image is read through the page cache of the image file.  Every
 * offset, length, nid and name taken from the image is checked before it
 * is used; a malformed image gives -EFSCORRUPTED (or -EOPNOTSUPP for
 * features this reader does not implement), never an out-of-bounds access.
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

int cfs_image_read(const struct cfs_image *img, u64 off, void *buf,
		   size_t len)
{
	struct address_space *mapping = img->file->f_mapping;
	u64 end;

	if (check_add_overflow(off, (u64)len, &end) || end > img->size)
		return -EFSCORRUPTED;

	if (!mapping->a_ops->read_folio) {
		loff_t pos = off;
		ssize_t ret = kernel_read(img->file, buf, len, &pos);

		if (ret < 0)
			return ret;
		return ret == len ? 0 : -EIO;
	}

	while (len) {
		struct folio *folio;
		size_t foff, n;

		folio = cfs_image_folio(img, off >> PAGE_SHIFT);
		if (IS_ERR(folio))
			return PTR_ERR(folio);
		foff = off - folio_pos(folio);
		n = min_t(size_t, len, folio_size(folio) - foff);
		memcpy_from_folio(buf, folio, foff, n);
		folio_put(folio);
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
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
	img->build_time = le64_to_cpu(sb.build_time);
	img->build_time_nsec = le32_to_cpu(sb.build_time_nsec);
	img->blocks = le32_to_cpu(sb.blocks);
	img->meta_base = (u64)le32_to_cpu(sb.meta_blkaddr) << CFS_BLKBITS;
	img->xattr_base = (u64)le32_to_cpu(sb.xattr_blkaddr) << CFS_BLKBITS;
	if (img->meta_base >= img->size || img->xattr_base > img->size ||
	    img->build_time > S64_MAX || img->build_time_nsec >= NSEC_PER_SEC)
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

int cfs_image_read_inode(const struct cfs_image *img, u64 nid,
			 struct cfs_inode_info *ci)
{
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

	err = cfs_image_read(img, ci->iloc, &raw.c, sizeof(raw.c));
	if (err)
		return err;
	fmt = le16_to_cpu(raw.c.i_format);
	if (fmt & ~CFS_I_ALL)
		return -EFSCORRUPTED;
	ci->layout = (fmt >> CFS_I_LAYOUT_SHIFT) & CFS_I_LAYOUT_MASK;

	if (fmt & CFS_I_VERSION_MASK) {
		err = cfs_image_read(img, ci->iloc, &raw.e, sizeof(raw.e));
		if (err)
			return err;
		ci->inode_isize = sizeof(raw.e);
		icount = le16_to_cpu(raw.e.i_xattr_icount);
		ci->mode = le16_to_cpu(raw.e.i_mode);
		ci->size = le64_to_cpu(raw.e.i_size);
		iu = le32_to_cpu(raw.e.i_u);
		ci->uid = le32_to_cpu(raw.e.i_uid);
		ci->gid = le32_to_cpu(raw.e.i_gid);
		ci->mtime = le64_to_cpu(raw.e.i_mtime);
		ci->mtime_nsec = le32_to_cpu(raw.e.i_mtime_nsec);
		ci->nlink = le32_to_cpu(raw.e.i_nlink);
		if (le64_to_cpu(raw.e.i_mtime) > S64_MAX ||
		    ci->mtime_nsec >= NSEC_PER_SEC)
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
static int cfs_map(const struct cfs_image *img,
		   const struct cfs_inode_info *ci, u64 pos, u64 *pa,
		   u64 *plen, bool *hole)
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

			err = cfs_image_read(img, aoff, &a, sizeof(a));
			blkaddr = le32_to_cpu(a);
		} else {
			struct cfs_chunk_index idx;

			err = cfs_image_read(img, aoff, &idx, sizeof(idx));
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
	u64 end;
	int err;

	if (check_add_overflow(pos, (u64)len, &end) || end > ci->size)
		return -EFSCORRUPTED;
	while (len) {
		u64 pa, n;
		bool hole;

		err = cfs_map(img, ci, pos, &pa, &n, &hole);
		if (err)
			return err;
		if (!n)
			return -EFSCORRUPTED;
		n = min_t(u64, n, len);
		if (hole) {
			memset(buf, 0, n);
		} else {
			err = cfs_image_read(img, pa, buf, n);
			if (err)
				return err;
		}
		buf += n;
		pos += n;
		len -= n;
	}
	return 0;
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

int cfs_dir_read_block(const struct cfs_image *img,
		       const struct cfs_inode_info *ci, unsigned int blk,
		       struct cfs_dirblock *db)
{
	const struct cfs_dirent *de;
	unsigned int nameoff0, i, n, off, end;
	u64 pos = (u64)blk << CFS_BLKBITS;
	int err;

	if (pos >= ci->size)
		return -EFSCORRUPTED;
	db->len = min_t(u64, ci->size - pos, CFS_BLKSIZE);
	err = cfs_image_read_data(img, ci, pos, db->data, db->len);
	if (err)
		return err;

	de = cfs_de(db);
	if (db->len < sizeof(*de))
		return -EFSCORRUPTED;
	nameoff0 = le16_to_cpu(de[0].nameoff);
	if (!nameoff0 || nameoff0 % sizeof(*de) || nameoff0 >= db->len)
		return -EFSCORRUPTED;
	n = nameoff0 / sizeof(*de);

	for (i = 0; i < n; i++) {
		off = le16_to_cpu(de[i].nameoff);
		if (off < nameoff0 || off >= db->len)
			return -EFSCORRUPTED;
		if (i + 1 < n) {
			end = le16_to_cpu(de[i + 1].nameoff);
			if (end <= off || end > db->len)
				return -EFSCORRUPTED;
		} else {
			end = off + strnlen(db->data + off, db->len - off);
		}
		if (end == off || end - off > CFS_NAME_LEN ||
		    memchr(db->data + off, '/', end - off) ||
		    memchr(db->data + off, '\0', end - off))
			return -EFSCORRUPTED;
	}
	db->ndirents = n;
	return 0;
}

void cfs_dirent_get(const struct cfs_dirblock *db, unsigned int i,
		    u64 *nid, u8 *ftype, const char **name,
		    unsigned int *namelen)
{
	const struct cfs_dirent *de = cfs_de(db);
	unsigned int off = le16_to_cpu(de[i].nameoff);

	*nid = le64_to_cpu(de[i].nid);
	*ftype = de[i].file_type;
	*name = db->data + off;
	if (i + 1 < db->ndirents)
		*namelen = le16_to_cpu(de[i + 1].nameoff) - off;
	else
		*namelen = strnlen(db->data + off, db->len - off);
}

/* compare a name with the name of dirent i, as unsigned bytes */
static int cfs_dirent_cmp(const struct cfs_dirblock *db, unsigned int i,
			  const char *name, unsigned int len)
{
	const char *dname;
	unsigned int dlen;
	u64 nid;
	u8 ft;
	int r;

	cfs_dirent_get(db, i, &nid, &ft, &dname, &dlen);
	r = memcmp(name, dname, min(len, dlen));
	if (r)
		return r;
	return len < dlen ? -1 : len > dlen;
}

int cfs_dir_lookup(const struct cfs_image *img,
		   const struct cfs_inode_info *ci, const char *name,
		   unsigned int namelen, u64 *nid, u8 *ftype)
{
	struct cfs_dirblock db;
	long head = 0, back, cand = -1, mid, loaded = -1;
	const char *dn;
	unsigned int dl;
	int err = -ENOENT, r;

	back = (long)cfs_dir_nblocks(ci) - 1;
	if (back < 0)
		return -ENOENT;
	db.data = kmalloc(CFS_BLKSIZE, GFP_KERNEL);
	if (!db.data)
		return -ENOMEM;

	/* find the last block whose first name is <= name */
	while (head <= back) {
		mid = head + (back - head) / 2;
		err = cfs_dir_read_block(img, ci, mid, &db);
		if (err)
			goto out;
		loaded = mid;
		r = cfs_dirent_cmp(&db, 0, name, namelen);
		if (r == 0) {
			cfs_dirent_get(&db, 0, nid, ftype, &dn, &dl);
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
		err = cfs_dir_read_block(img, ci, cand, &db);
		if (err)
			goto out;
	}

	head = 1;
	back = (long)db.ndirents - 1;
	err = -ENOENT;
	while (head <= back) {
		mid = head + (back - head) / 2;
		r = cfs_dirent_cmp(&db, mid, name, namelen);
		if (r == 0) {
			cfs_dirent_get(&db, mid, nid, ftype, &dn, &dl);
			err = 0;
			break;
		}
		if (r < 0)
			back = mid - 1;
		else
			head = mid + 1;
	}
out:
	kfree(db.data);
	return err;
}

static int cfs_xattr_entry(const struct cfs_image *img, u64 pos, u64 limit,
			   struct cfs_xattr *xa, u64 *esize)
{
	struct cfs_xattr_entry e;
	u64 sz;
	int err;

	err = cfs_image_read(img, pos, &e, sizeof(e));
	if (err)
		return err;
	xa->index = e.e_name_index;
	xa->name_len = e.e_name_len;
	xa->value_size = le16_to_cpu(e.e_value_size);
	sz = ALIGN(sizeof(e) + xa->name_len + (u64)xa->value_size,
		   sizeof(e));
	if (sz > limit - pos)
		return -EFSCORRUPTED;
	err = cfs_image_read(img, pos + sizeof(e), xa->name, xa->name_len);
	if (err)
		return err;
	xa->name[xa->name_len] = '\0';
	if (memchr(xa->name, '\0', xa->name_len))
		return -EFSCORRUPTED;
	xa->value_off = pos + sizeof(e) + xa->name_len;
	*esize = sz;
	return 0;
}

int cfs_xattr_iterate(const struct cfs_image *img,
		      const struct cfs_inode_info *ci, cfs_xattr_actor actor,
		      void *ctx)
{
	struct cfs_xattr_ibody_header h;
	struct cfs_xattr *xa;
	u64 base, pos, end, esize;
	unsigned int i, shared;
	int err;

	if (!ci->xattr_isize)
		return 0;
	base = ci->iloc + ci->inode_isize;
	err = cfs_image_read(img, base, &h, sizeof(h));
	if (err)
		return err;
	shared = h.h_shared_count;
	if (sizeof(h) + sizeof(u32) * shared > ci->xattr_isize)
		return -EFSCORRUPTED;

	xa = kmalloc(sizeof(*xa), GFP_KERNEL);
	if (!xa)
		return -ENOMEM;

	/* inline entries first, then the shared ones, as EROFS does */
	pos = base + sizeof(h) + sizeof(u32) * shared;
	end = base + ci->xattr_isize;
	while (pos < end) {
		err = cfs_xattr_entry(img, pos, end, xa, &esize);
		if (err)
			goto out;
		err = actor(ctx, xa);
		if (err)
			goto out;
		pos += esize;
	}

	for (i = 0; i < shared; i++) {
		__le32 id;

		err = cfs_image_read(img, base + sizeof(h) + sizeof(u32) * i,
				     &id, sizeof(id));
		if (err)
			goto out;
		pos = img->xattr_base + (u64)le32_to_cpu(id) * sizeof(u32);
		err = cfs_xattr_entry(img, pos, img->size, xa, &esize);
		if (err)
			goto out;
		err = actor(ctx, xa);
		if (err)
			goto out;
	}
out:
	kfree(xa);
	return err < 0 ? err : 0;
}

struct cfs_xattr_get_ctx {
	u8 index;
	const char *name;
	size_t namelen;
	void *buf;
	size_t size;
	const struct cfs_image *img;
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
	err = cfs_image_read(c->img, xa->value_off, c->buf, xa->value_size);
	c->ret = err ? err : xa->value_size;
	return 1;
}

int cfs_xattr_get(const struct cfs_image *img,
		  const struct cfs_inode_info *ci, u8 index, const char *name,
		  void *buf, size_t size)
{
	struct cfs_xattr_get_ctx c = {
		.index = index, .name = name, .namelen = strlen(name),
		.buf = buf, .size = size, .img = img, .ret = -ENODATA,
	};
	int err;

	if (c.namelen > CFS_NAME_LEN)
		return -ENODATA;
	err = cfs_xattr_iterate(img, ci, cfs_xattr_get_actor, &c);
	return err ? err : c.ret;
}
