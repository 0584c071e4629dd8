// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: directory lookup and readdir.
 *
 * Character devices 0/0 are overlayfs whiteouts (composefs puts 256 of
 * them in the root to hide the object directories); they are hidden from
 * lookup and readdir, as the stock overlayfs mount of an image does.
 */
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/fs_types.h>
#include "internal.h"

static struct dentry *cfs_lookup(struct inode *dir, struct dentry *dentry,
				 unsigned int flags)
{
	struct inode *inode = NULL;
	u64 nid;
	u8 ftype;
	int err;

	if (dentry->d_name.len > CFS_NAME_LEN)
		return ERR_PTR(-ENAMETOOLONG);

	err = cfs_dir_lookup(CFS_IMG(dir), &CFS_I(dir)->ci,
			     dentry->d_name.name, dentry->d_name.len,
			     &nid, &ftype);
	if (err == -ENOENT) {
		inode = NULL;
	} else if (err) {
		inode = ERR_PTR(err);
	} else {
		inode = cfs_iget(dir->i_sb, nid);
		if (!IS_ERR(inode) && cfs_is_whiteout(&CFS_I(inode)->ci)) {
			iput(inode);
			inode = NULL;
		}
	}
	return d_splice_alias(inode, dentry);
}

static bool cfs_nid_is_whiteout(const struct cfs_image *img, u64 nid)
{
	struct cfs_buf buf = CFS_BUF_INIT(img);
	struct cfs_inode_info ci;
	bool ret;

	ret = !cfs_image_read_inode(&buf, nid, &ci) && cfs_is_whiteout(&ci);
	cfs_buf_put(&buf);
	return ret;
}

/*
 * Positions are byte offsets of dirents, as in EROFS, except in the root:
 * overlayfs always merges its root directory and numbers its entries
 * instead (".", "..", and the whiteouts count), so the root's positions are
 * entry indexes here too, and a seek to index N reads the entries before.
 */
static int cfs_readdir(struct file *file, struct dir_context *ctx)
{
	struct inode *dir = file_inode(file);
	const struct cfs_image *img = CFS_IMG(dir);
	const struct cfs_inode_info *ci = &CFS_I(dir)->ci;
	bool indexed = dir == d_inode(dir->i_sb->s_root);
	struct cfs_buf buf = CFS_BUF_INIT(img);
	struct cfs_dirblock db;
	loff_t idx = 0;
	u64 bpos = 0;
	int err = 0;

	if (ctx->pos < 0)
		return 0;
	if (!indexed)
		bpos = ctx->pos & ~(u64)(CFS_BLKSIZE - 1);
	db.data = cfs_dirblock_alloc();
	if (!db.data)
		return -ENOMEM;
	for (; bpos < dir->i_size; bpos += CFS_BLKSIZE) {
		unsigned int i = 0, namelen;
		const char *name;
		u8 ftype;
		u64 nid;

		err = cfs_dir_read_block(&buf, ci, bpos >> CFS_BLKBITS, &db);
		if (err)
			break;
		if (indexed) {
			if (ctx->pos >= idx + db.ndirents) {
				idx += db.ndirents;
				continue;
			}
			i = ctx->pos - idx;
		} else if (ctx->pos > bpos) {
			i = DIV_ROUND_UP((unsigned int)(ctx->pos - bpos),
					 sizeof(struct cfs_dirent));
		}
		for (; i < db.ndirents; i++) {
			ctx->pos = indexed ? idx + i :
				   bpos + i * sizeof(struct cfs_dirent);
			err = cfs_dirent_get(&db, i, &nid, &ftype, &name,
					     &namelen);
			if (err)
				goto out;
			if (ftype == FT_CHRDEV && cfs_nid_is_whiteout(img, nid))
				continue;
			if (!dir_emit(ctx, name, namelen, nid,
				      fs_ftype_to_dtype(ftype)))
				goto out;
		}
		idx += db.ndirents;
		ctx->pos = indexed ? idx : bpos + db.len;
	}
out:
	cfs_buf_put(&buf);
	kfree(db.data);
	return err;
}

const struct inode_operations cfs_dir_iops = {
	.lookup		= cfs_lookup,
	.listxattr	= cfs_listxattr,
	.get_inode_acl	= cfs_get_inode_acl,
};

const struct file_operations cfs_dir_fops = {
	.llseek		= generic_file_llseek,
	.read		= generic_read_dir,
	.iterate_shared	= cfs_readdir,
};
