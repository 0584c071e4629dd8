// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: building VFS inodes from image inodes.
 */
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include "internal.h"

/*
 * st_blocks of an object-backed file is size / 512 until its object has
 * been found (by an open), then the object's own, as overlayfs reports it.
 */
static int cfs_file_getattr(struct mnt_idmap *idmap, const struct path *path,
			    struct kstat *stat, u32 request_mask,
			    unsigned int flags)
{
	struct inode *inode = d_inode(path->dentry);
	struct cfs_inode *cino = CFS_I(inode);
	struct path real = {};
	const struct cred *old_cred;
	struct kstat rstat;
	int err;

	generic_fillattr(idmap, request_mask, inode, stat);
	if (!cfs_is_backed(inode))
		return 0;
	mutex_lock(&cino->backing_lock);
	if (cino->backing.dentry) {
		real = cino->backing;
		path_get(&real);
	}
	mutex_unlock(&cino->backing_lock);
	if (!real.dentry)
		return 0;
	old_cred = override_creds(CFS_SB(inode->i_sb)->creds);
	/* the caller's security check, if any, was made on our inode */
	if (flags & AT_GETATTR_NOSEC)
		err = vfs_getattr_nosec(&real, &rstat, STATX_BLOCKS, flags);
	else
		err = vfs_getattr(&real, &rstat, STATX_BLOCKS, flags);
	revert_creds(old_cred);
	path_put(&real);
	if (err)
		return err;
	stat->blocks = rstat.blocks;
	return 0;
}

const struct inode_operations cfs_file_iops = {
	.getattr	= cfs_file_getattr,
	.listxattr	= cfs_listxattr,
	.get_inode_acl	= cfs_get_inode_acl,
};

const struct inode_operations cfs_symlink_iops = {
	.get_link	= simple_get_link,
	.listxattr	= cfs_listxattr,
};

const struct inode_operations cfs_special_iops = {
	.listxattr	= cfs_listxattr,
	.get_inode_acl	= cfs_get_inode_acl,
};

static int cfs_fill_symlink(struct inode *inode)
{
	struct cfs_inode *cino = CFS_I(inode);
	size_t len = cino->ci.size;
	char *link;
	int err;

	link = kmalloc(len + 1, GFP_KERNEL);
	if (!link)
		return -ENOMEM;
	err = cfs_image_read_data(CFS_IMG(inode), &cino->ci, 0, link, len);
	link[len] = '\0';
	if (!err && strlen(link) != len)
		err = -EFSCORRUPTED;
	if (err) {
		kfree(link);
		return err;
	}
	inode->i_link = link;
	return 0;
}

static int cfs_fill_inode(struct inode *inode)
{
	struct cfs_inode *cino = CFS_I(inode);
	struct cfs_inode_info *ci = &cino->ci;
	struct cfs_buf buf = CFS_BUF_INIT(CFS_IMG(inode));
	struct timespec64 ts;
	int err;

	/* one cursor for the inode and its xattrs: usually one page */
	err = cfs_image_read_inode(&buf, inode->i_ino, ci);
	if (err)
		goto out;

	inode->i_mode = ci->mode;
	i_uid_write(inode, ci->uid);
	i_gid_write(inode, ci->gid);
	set_nlink(inode, ci->nlink);
	inode->i_size = ci->size;
	inode->i_blocks = round_up(ci->size, CFS_BLKSIZE) >> 9;
	/* like EROFS: one timestamp for mtime, atime and ctime */
	ts.tv_sec = ci->mtime;
	ts.tv_nsec = ci->mtime_nsec;
	inode_set_mtime_to_ts(inode, ts);
	inode_set_atime_to_ts(inode, ts);
	inode_set_ctime_to_ts(inode, ts);

	switch (inode->i_mode & S_IFMT) {
	case S_IFDIR:
		inode->i_op = &cfs_dir_iops;
		inode->i_fop = &cfs_dir_fops;
		break;
	case S_IFREG:
		err = cfs_read_overlay_xattrs(inode, &buf);
		if (err)
			goto out;
		inode->i_op = &cfs_file_iops;
		if (cfs_is_backed(inode)) {
			inode->i_fop = &cfs_backed_fops;
			inode->i_mapping->a_ops = &cfs_backed_aops;
		} else {
			inode->i_fop = &cfs_data_fops;
			inode->i_mapping->a_ops = &cfs_data_aops;
		}
		break;
	case S_IFLNK:
		err = cfs_fill_symlink(inode);
		if (err)
			goto out;
		inode->i_op = &cfs_symlink_iops;
		break;
	default:
		init_special_inode(inode, inode->i_mode,
				   new_decode_dev(ci->rdev));
		inode->i_op = &cfs_special_iops;
		break;
	}
out:
	cfs_buf_put(&buf);
	return err;
}

/* the inode number is the nid, so hardlinks share one inode */
struct inode *cfs_iget(struct super_block *sb, u64 nid)
{
	struct inode *inode;
	int err;

	if (nid != (unsigned long)nid)
		return ERR_PTR(-EFSCORRUPTED);
	inode = iget_locked(sb, nid);
	if (!inode)
		return ERR_PTR(-ENOMEM);
	if (!(inode->i_state & I_NEW))
		return inode;

	err = cfs_fill_inode(inode);
	if (err) {
		if (err == -EFSCORRUPTED)
			pr_warn_ratelimited("composefs: corrupt inode (nid %llu)\n",
					    nid);
		iget_failed(inode);
		return ERR_PTR(err);
	}
	unlock_new_inode(inode);
	return inode;
}
