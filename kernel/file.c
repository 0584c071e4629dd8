// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: regular file I/O.
 *
 * Files whose image entry carries trusted.overlay.metacopy and an absolute
 * trusted.overlay.redirect are served by the object file found under the
 * first basedir holding it: read_iter, mmap and splice_read go to the
 * backing file, so the page cache is the object file's and is shared by
 * every mount using that object.  Other regular files (inline or block
 * data in the image) are read from the image through a private mapping.
 */
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/namei.h>
#include <linux/mount.h>
#include <linux/pagemap.h>
#include <linux/highmem.h>
#include <linux/fsverity.h>
#include <linux/backing-file.h>
#include "internal.h"
#include "fetch.h"

/* check the object's fs-verity digest against the one the image records */
static int cfs_verify_object(struct cfs_sb_info *sbi, struct cfs_inode *cino,
			     const struct path *path)
{
	u8 digest[FS_VERITY_MAX_DIGEST_SIZE];
	struct inode *real = d_inode(path->dentry);
	const u8 *mc = cino->metacopy;
	int len = cino->metacopy_len;
	int dsize;
	u8 alg;

	if (sbi->verity_check == CFS_VERITY_NONE)
		return 0;

	if (len > 0 && (len < CFS_METACOPY_HDR || len > CFS_METACOPY_MAX ||
			mc[0] != 0 || mc[1] != len)) {
		pr_warn_ratelimited("composefs: bad metacopy xattr (nid %llu)\n",
				    cino->ci.nid);
		return -EIO;
	}
	if (len == 0 || mc[3] == 0) {
		if (sbi->verity_check == CFS_VERITY_REQUIRED) {
			pr_warn_ratelimited("composefs: file (nid %llu) records no digest\n",
					    cino->ci.nid);
			return -EIO;
		}
		return 0;
	}

	if (!fsverity_active(real) && IS_VERITY(real)) {
		/* load the verity info, as overlayfs does */
		struct file *f = kernel_file_open(path, O_RDONLY, current_cred());

		if (IS_ERR(f))
			return -EIO;
		fput(f);
	}
	dsize = fsverity_get_digest(real, digest, &alg, NULL);
	if (dsize <= 0) {
		pr_warn_ratelimited("composefs: object %s has no fs-verity digest\n",
				    cino->redirect);
		return -EIO;
	}
	if (dsize != len - CFS_METACOPY_HDR || alg != mc[3] ||
	    memcmp(digest, mc + CFS_METACOPY_HDR, dsize)) {
		pr_warn_ratelimited("composefs: object %s has the wrong fs-verity digest\n",
				    cino->redirect);
		return -EIO;
	}
	return 0;
}

/*
 * The object under the first basedir that holds it as a regular file,
 * looked up as overlayfs looks up a data layer: beneath the basedir's
 * private clone, following no symlink and crossing no mount.  Every basedir
 * failing gives the last one's error (-ENOENT when the object is missing or
 * is not a regular file).
 */
static int cfs_lookup_object(struct cfs_sb_info *sbi, const char *redirect,
			     struct path *p)
{
	unsigned int i;
	int err = -ENOENT;

	for (i = 0; i < sbi->nbasedirs; i++) {
		struct vfsmount *mnt = sbi->basedirs[i];

		err = vfs_path_lookup(mnt->mnt_root, mnt, redirect,
				      LOOKUP_BENEATH | LOOKUP_NO_SYMLINKS |
				      LOOKUP_NO_XDEV, p);
		if (err)
			continue;
		if (d_is_reg(p->dentry))
			return 0;
		path_put(p);
		err = -ENOENT;
	}
	return err;
}

/*
 * The digest an object's redirect path names, when it has the store's
 * layout "/XX/<62 hex>" (lower case): what a fetcher is asked for.
 */
static bool cfs_redirect_digest(const char *redirect, u8 *digest)
{
	char hex[64];
	int i;

	if (strlen(redirect) != 66 || redirect[0] != '/' || redirect[3] != '/')
		return false;
	memcpy(hex, redirect + 1, 2);
	memcpy(hex + 2, redirect + 4, 62);
	for (i = 0; i < 64; i++)
		if (!(hex[i] >= '0' && hex[i] <= '9') && !(hex[i] >= 'a' && hex[i] <= 'f'))
			return false;
	return !hex2bin(digest, hex, 32);
}

/*
 * Find (once) the object under the basedirs and verify it.  With a fetcher
 * (fetch_fd=) an object missing from every basedir is asked for, without
 * holding any lock, then looked up and verified again like any other.
 */
static int cfs_get_backing(struct inode *inode, struct path *out)
{
	struct cfs_sb_info *sbi = CFS_SB(inode->i_sb);
	struct cfs_inode *cino = CFS_I(inode);
	const struct cred *old_cred;
	struct path p = {};
	bool fetched = false;
	u8 digest[32];
	int err;

again:
	mutex_lock(&cino->backing_lock);
	if (cino->backing.dentry) {
		*out = cino->backing;
		path_get(out);
		mutex_unlock(&cino->backing_lock);
		return 0;
	}

	old_cred = override_creds(sbi->creds);
	err = cfs_lookup_object(sbi, cino->redirect, &p);
	if (err == -ENOENT && sbi->fetch && !fetched &&
	    cfs_redirect_digest(cino->redirect, digest)) {
		revert_creds(old_cred);
		mutex_unlock(&cino->backing_lock);
		err = cfs_fetch_object(sbi->fetch, digest, sbi->fetch_timeout);
		if (err)
			return err;
		fetched = true;
		goto again;
	}
	if (err) {
		pr_warn_ratelimited("composefs: object %s not found (error %d)\n",
				    cino->redirect, err);
	} else if (p.mnt->mnt_sb->s_stack_depth >= inode->i_sb->s_stack_depth) {
		/*
		 * Cannot happen through a private clone taken at mount time,
		 * which counted in our depth; never stack deeper than that.
		 */
		pr_warn_ratelimited("composefs: object %s is on a filesystem stacked too deep\n",
				    cino->redirect);
		path_put(&p);
		err = -ELOOP;
	} else {
		err = cfs_verify_object(sbi, cino, &p);
		if (err)
			path_put(&p);
	}
	revert_creds(old_cred);

	if (!err) {
		cino->backing = p;
		path_get(&p);
		*out = p;
	}
	mutex_unlock(&cino->backing_lock);
	return err;
}

static int cfs_backed_open(struct inode *inode, struct file *file)
{
	struct cfs_sb_info *sbi = CFS_SB(inode->i_sb);
	const struct cred *old_cred;
	struct file *realfile;
	struct inode *realinode;
	struct path real;
	int flags, err;

	err = cfs_get_backing(inode, &real);
	if (err)
		return err;

	flags = (file->f_flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC)) |
		O_NOATIME;
	realinode = d_inode(real.dentry);
	old_cred = override_creds(sbi->creds);
	err = inode_permission(mnt_idmap(real.mnt), realinode,
			       MAY_OPEN | MAY_READ);
	if (err) {
		realfile = ERR_PTR(err);
	} else {
		if (!inode_owner_or_capable(mnt_idmap(real.mnt), realinode))
			flags &= ~O_NOATIME;
		realfile = backing_file_open(file, flags, &real, current_cred());
	}
	revert_creds(old_cred);
	path_put(&real);
	if (IS_ERR(realfile))
		return PTR_ERR(realfile);

	file->private_data = realfile;
	return 0;
}

static int cfs_backed_release(struct inode *inode, struct file *file)
{
	fput(file->private_data);
	return 0;
}

/*
 * Seeks go to the object file, as in overlayfs: only its filesystem knows
 * its holes (SEEK_DATA, SEEK_HOLE) and its size.
 */
static loff_t cfs_backed_llseek(struct file *file, loff_t offset, int whence)
{
	struct inode *inode = file_inode(file);
	struct file *realfile = file->private_data;
	const struct cred *old_cred;
	loff_t ret;

	inode_lock(inode);
	realfile->f_pos = file->f_pos;
	old_cred = override_creds(CFS_SB(inode->i_sb)->creds);
	ret = vfs_llseek(realfile, offset, whence);
	revert_creds(old_cred);
	file->f_pos = realfile->f_pos;
	inode_unlock(inode);
	return ret;
}

static ssize_t cfs_backed_read_iter(struct kiocb *iocb, struct iov_iter *iter)
{
	struct file *file = iocb->ki_filp;
	struct backing_file_ctx ctx = {
		.cred = CFS_SB(file_inode(file)->i_sb)->creds,
		.user_file = file,
	};

	if (!iov_iter_count(iter))
		return 0;
	return backing_file_read_iter(file->private_data, iter, iocb,
				      iocb->ki_flags, &ctx);
}

static ssize_t cfs_backed_splice_read(struct file *in, loff_t *ppos,
				      struct pipe_inode_info *pipe,
				      size_t len, unsigned int flags)
{
	struct backing_file_ctx ctx = {
		.cred = CFS_SB(file_inode(in)->i_sb)->creds,
		.user_file = in,
	};

	return backing_file_splice_read(in->private_data, ppos, pipe, len,
					flags, &ctx);
}

static int cfs_backed_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct backing_file_ctx ctx = {
		.cred = CFS_SB(file_inode(file)->i_sb)->creds,
		.user_file = file,
	};

	return backing_file_mmap(file->private_data, vma, &ctx);
}

const struct file_operations cfs_backed_fops = {
	.open		= cfs_backed_open,
	.release	= cfs_backed_release,
	.llseek		= cfs_backed_llseek,
	.read_iter	= cfs_backed_read_iter,
	.splice_read	= cfs_backed_splice_read,
	.mmap		= cfs_backed_mmap,
};

/* O_DIRECT is passed on to the backing file */
const struct address_space_operations cfs_backed_aops = {
	.direct_IO	= noop_direct_IO,
};

/* files whose data is in the image itself */
static int cfs_read_folio(struct file *file, struct folio *folio)
{
	struct inode *inode = folio->mapping->host;
	u64 pos = folio_pos(folio);
	size_t fsize = folio_size(folio), n = 0;
	void *kaddr;
	int err = 0;

	if (pos < inode->i_size)
		n = min_t(u64, fsize, inode->i_size - pos);
	kaddr = kmap_local_folio(folio, 0);
	if (n)
		err = cfs_image_read_data(CFS_IMG(inode), &CFS_I(inode)->ci,
					  pos, kaddr, n);
	memset(kaddr + n, 0, fsize - n);
	kunmap_local(kaddr);
	if (!err)
		folio_mark_uptodate(folio);
	folio_unlock(folio);
	return err;
}

/*
 * O_DIRECT opens, as on EROFS; a direct read must be block-aligned (else
 * EINVAL, as EROFS answers) and is then served from the page cache, as
 * EROFS serves data inline in its metadata.
 */
static ssize_t cfs_data_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	if (!iov_iter_count(to))
		return 0;
	if (iocb->ki_flags & IOCB_DIRECT) {
		if ((iocb->ki_pos | iov_iter_count(to) |
		     iov_iter_alignment(to)) & (CFS_BLKSIZE - 1))
			return -EINVAL;
		iocb->ki_flags &= ~IOCB_DIRECT;
	}
	return filemap_read(iocb, to, 0);
}

const struct address_space_operations cfs_data_aops = {
	.read_folio	= cfs_read_folio,
	.direct_IO	= noop_direct_IO,
};

const struct file_operations cfs_data_fops = {
	.llseek		= generic_file_llseek,
	.read_iter	= cfs_data_read_iter,
	.splice_read	= filemap_splice_read,
	.mmap		= generic_file_readonly_mmap,
};
