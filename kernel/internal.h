/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * composefs: VFS-side definitions shared by super.c, inode.c, dir.c,
 * file.c and xattr.c.
 */
#ifndef _CFS_INTERNAL_H
#define _CFS_INTERNAL_H

#include <linux/fs.h>
#include <linux/path.h>
#include <linux/mutex.h>
#include <linux/cred.h>
#include "image.h"

#define COMPOSEFS_SUPER_MAGIC	CFS_MAGIC

enum {
	CFS_VERITY_NONE = 0,	/* never check */
	CFS_VERITY_RECORDED = 1,	/* check files that record a digest */
	CFS_VERITY_REQUIRED = 2,	/* every object must have a digest */
};

struct cfs_sb_info {
	struct cfs_image img;
	struct vfsmount **basedirs;	/* private clones, rooted at each basedir */
	unsigned int nbasedirs;
	char *basedir_opt;		/* as given, for show_options */
	unsigned int verity_check;
	bool has_digest;
	u8 digest[32];
	const struct cred *creds;	/* mounter's credentials */
	struct cfs_fetch_chan *fetch;	/* fetch_fd=: asked for missing objects */
	unsigned int fetch_timeout;	/* seconds */
};

struct cfs_inode {
	struct cfs_inode_info ci;
	char *redirect;			/* object path, metacopy files only */
	u8 metacopy[CFS_METACOPY_MAX];
	int metacopy_len;		/* -1: no metacopy xattr */
	struct mutex backing_lock;
	struct path backing;		/* resolved and verified object */
	struct inode vfs_inode;
};

static inline struct cfs_sb_info *CFS_SB(struct super_block *sb)
{
	return sb->s_fs_info;
}

static inline struct cfs_inode *CFS_I(struct inode *inode)
{
	return container_of(inode, struct cfs_inode, vfs_inode);
}

static inline struct cfs_image *CFS_IMG(struct inode *inode)
{
	return &CFS_SB(inode->i_sb)->img;
}

static inline bool cfs_is_backed(struct inode *inode)
{
	return S_ISREG(inode->i_mode) && CFS_I(inode)->metacopy_len >= 0;
}

/* inode.c */
struct inode *cfs_iget(struct super_block *sb, u64 nid);
extern const struct inode_operations cfs_file_iops;
extern const struct inode_operations cfs_symlink_iops;
extern const struct inode_operations cfs_special_iops;

/* dir.c */
extern const struct inode_operations cfs_dir_iops;
extern const struct file_operations cfs_dir_fops;

/* file.c */
extern const struct file_operations cfs_backed_fops;
extern const struct file_operations cfs_data_fops;
extern const struct address_space_operations cfs_backed_aops;
extern const struct address_space_operations cfs_data_aops;

/* xattr.c */
extern const struct xattr_handler * const cfs_xattr_handlers[];
ssize_t cfs_listxattr(struct dentry *dentry, char *buffer, size_t size);
struct posix_acl *cfs_get_inode_acl(struct inode *inode, int type, bool rcu);
int cfs_read_overlay_xattrs(struct inode *inode, struct cfs_buf *buf);

#endif /* _CFS_INTERNAL_H */
