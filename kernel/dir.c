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

static int cfs_readdir(struct file *file, struct dir_context *ctx)
{
	struct inode *dir = file_inode(file);
	const struct cfs_image *img = CFS_IMG(dir);
	const struct cfs_inode_info *ci = &CFS_I(dir)->ci;
	struct cfs_buf buf = CFS_BUF_INIT(img);
	struct cfs_dirblock db;
	int err = 0;

	while (ctx->pos >= 0 && ctx->pos < dir->i_size) {
		u64 bpos = ctx->pos & ~(u64)(CFS_BLKSIZE - 1);
		unsigned int i, namelen;
		const char *name;
		u8 ftype;
		u64 nid;

		err = cfs_dir_read_block(&buf, ci, bpos >> CFS_BLKBITS, &db);
		if (err)
			break;
		i = DIV_ROUND_UP((unsigned int)(ctx->pos - bpos),
				 sizeof(struct cfs_dirent));
		for (; i < db.ndirents; i++) {
			ctx->pos = bpos + i * sizeof(struct cfs_dirent);
			cfs_dirent_get(&db, i, &nid, &ftype, &name, &namelen);
			if (ftype == FT_CHRDEV && cfs_nid_is_whiteout(img, nid))
				continue;
			if (!dir_emit(ctx, name, namelen, nid,
				      fs_ftype_to_dtype(ftype)))
				goto out;
		}
		ctx->pos = bpos + db.len;
	}
out:
	cfs_buf_put(&buf);
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
