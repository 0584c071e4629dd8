// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: mount options, superblock, statfs and show_options.
 *
 *   mount -t composefs IMAGE MNT -o basedir=DIR[:DIR...],verity_check=N,
 *                                   digest=HEX[,fetch_fd=N,fetch_timeout=S]
 */
#include <linux/module.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/fs_parser.h>
#include <linux/namei.h>
#include <linux/mount.h>
#include <linux/seq_file.h>
#include <linux/statfs.h>
#include <linux/slab.h>
#include <linux/fsverity.h>
#include "internal.h"
#include "fetch.h"

static struct kmem_cache *cfs_inode_cachep;

struct cfs_fs_context {
	char *basedir;
	unsigned int verity_check;
	bool has_digest;
	u8 digest[32];
	struct cfs_fetch_chan *fetch;	/* fetch_fd's channel, until fill_super */
	unsigned int fetch_timeout;
};

enum { Opt_basedir, Opt_verity_check, Opt_digest, Opt_fetch_fd, Opt_fetch_timeout };

static const struct fs_parameter_spec cfs_param_spec[] = {
	fsparam_string("basedir", Opt_basedir),
	fsparam_u32("verity_check", Opt_verity_check),
	fsparam_string("digest", Opt_digest),
	fsparam_u32("fetch_fd", Opt_fetch_fd),
	fsparam_u32("fetch_timeout", Opt_fetch_timeout),
	{}
};

static int cfs_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct cfs_fs_context *ctx = fc->fs_private;
	struct fs_parse_result result;
	int opt;

	opt = fs_parse(fc, cfs_param_spec, param, &result);
	if (opt < 0)
		return opt;

	switch (opt) {
	case Opt_basedir:
		kfree(ctx->basedir);
		ctx->basedir = param->string;
		param->string = NULL;
		break;
	case Opt_verity_check:
		if (result.uint_32 > CFS_VERITY_REQUIRED)
			return invalfc(fc, "verity_check must be 0, 1 or 2");
		ctx->verity_check = result.uint_32;
		break;
	case Opt_digest:
		if (strlen(param->string) != 2 * sizeof(ctx->digest) ||
		    hex2bin(ctx->digest, param->string, sizeof(ctx->digest)))
			return invalfc(fc, "digest must be 64 hex digits");
		ctx->has_digest = true;
		break;
	case Opt_fetch_fd: {
		struct cfs_fetch_chan *ch;

		if (fc->purpose == FS_CONTEXT_FOR_RECONFIGURE)
			return invalfc(fc, "fetch_fd cannot change on remount");
		/* resolved now, in the mounter's file table, as FUSE's fd= */
		ch = cfs_fetch_bind(result.uint_32);

		if (IS_ERR(ch))
			return invalfc(fc, "fetch_fd %u is not an unused open /dev/composefs-fetch",
				       result.uint_32);
		if (ctx->fetch)
			cfs_fetch_detach(ctx->fetch);
		ctx->fetch = ch;
		break;
	}
	case Opt_fetch_timeout:
		if (!result.uint_32 || result.uint_32 > CFS_FETCH_TIMEOUT_MAX)
			return invalfc(fc, "fetch_timeout must be 1..%d seconds",
				       CFS_FETCH_TIMEOUT_MAX);
		ctx->fetch_timeout = result.uint_32;
		break;
	}
	return 0;
}

static int cfs_check_image_digest(struct fs_context *fc, struct file *file,
				  const u8 *want)
{
	u8 digest[FS_VERITY_MAX_DIGEST_SIZE];
	u8 alg;
	int n;

	n = fsverity_get_digest(file_inode(file), digest, &alg, NULL);
	if (n <= 0)
		return errorfc(fc, "image has no fs-verity digest"), -EIO;
	if (alg != FS_VERITY_HASH_ALG_SHA256 || n != 32 ||
	    memcmp(digest, want, 32))
		return errorfc(fc, "image fs-verity digest mismatch"), -EIO;
	return 0;
}

/*
 * Each basedir is resolved once, at mount time, and kept as a private clone
 * of its mount (as overlayfs keeps its layers): the clone has no mounts
 * below it, so objects are looked up only in the filesystem the basedir was
 * on when mounting, whatever is mounted under the basedir later (a bind
 * mount of this very composefs mount would otherwise make a file its own
 * object, and opening it would recurse until the stack overflows).
 */
static int cfs_parse_basedirs(struct fs_context *fc, struct cfs_sb_info *sbi,
			      int *depth)
{
	char *s, *dir;
	unsigned int n = 1;
	int err;

	for (s = sbi->basedir_opt; *s; s++)
		n += (*s == ':');
	sbi->basedirs = kcalloc(n, sizeof(*sbi->basedirs), GFP_KERNEL);
	if (!sbi->basedirs)
		return -ENOMEM;

	s = kstrdup(sbi->basedir_opt, GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	err = 0;
	for (char *p = s; (dir = strsep(&p, ":")) != NULL;) {
		struct vfsmount *mnt;
		struct path path;

		if (!*dir)
			continue;
		err = kern_path(dir, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &path);
		if (err) {
			errorfc(fc, "basedir %s: error %d", dir, err);
			break;
		}
		mnt = clone_private_mount(&path);
		path_put(&path);
		if (IS_ERR(mnt)) {
			err = PTR_ERR(mnt);
			errorfc(fc, "basedir %s: cannot clone its mount (error %d)",
				dir, err);
			break;
		}
		/* objects are only read, and reading them changes nothing */
		mnt->mnt_flags |= MNT_READONLY | MNT_NOATIME;
		sbi->basedirs[sbi->nbasedirs++] = mnt;
		*depth = max(*depth, mnt->mnt_sb->s_stack_depth);
	}
	kfree(s);
	return err;
}

static int cfs_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	struct super_block *sb = dentry->d_sb;
	struct cfs_sb_info *sbi = CFS_SB(sb);

	buf->f_type = sb->s_magic;
	buf->f_bsize = CFS_BLKSIZE;
	buf->f_blocks = sbi->img.blocks;
	buf->f_bfree = 0;
	buf->f_bavail = 0;
	buf->f_files = sbi->img.inos;
	buf->f_ffree = 0;
	buf->f_namelen = CFS_NAME_LEN;
	buf->f_fsid = u64_to_fsid(huge_encode_dev(sb->s_dev));
	return 0;
}

static int cfs_show_options(struct seq_file *m, struct dentry *root)
{
	struct cfs_sb_info *sbi = CFS_SB(root->d_sb);

	if (sbi->basedir_opt)
		seq_show_option(m, "basedir", sbi->basedir_opt);
	seq_printf(m, ",verity_check=%u", sbi->verity_check);
	if (sbi->has_digest)
		seq_printf(m, ",digest=%*phN", (int)sizeof(sbi->digest),
			   sbi->digest);
	if (sbi->fetch)
		seq_printf(m, ",fetch_timeout=%u", sbi->fetch_timeout);
	return 0;
}

static struct inode *cfs_alloc_inode(struct super_block *sb)
{
	struct cfs_inode *cino;

	cino = alloc_inode_sb(sb, cfs_inode_cachep, GFP_KERNEL);
	if (!cino)
		return NULL;
	memset(&cino->ci, 0, sizeof(cino->ci));
	cino->redirect = NULL;
	cino->metacopy_len = -1;
	cino->backing.mnt = NULL;
	cino->backing.dentry = NULL;
	return &cino->vfs_inode;
}

static void cfs_free_inode(struct inode *inode)
{
	struct cfs_inode *cino = CFS_I(inode);

	if (S_ISLNK(inode->i_mode))
		kfree(inode->i_link);
	kfree(cino->redirect);
	kmem_cache_free(cfs_inode_cachep, cino);
}

static void cfs_evict_inode(struct inode *inode)
{
	struct cfs_inode *cino = CFS_I(inode);

	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (cino->backing.dentry) {
		path_put(&cino->backing);
		cino->backing.dentry = NULL;
		cino->backing.mnt = NULL;
	}
}

static const struct super_operations cfs_super_ops = {
	.alloc_inode	= cfs_alloc_inode,
	.free_inode	= cfs_free_inode,
	.evict_inode	= cfs_evict_inode,
	.statfs		= cfs_statfs,
	.show_options	= cfs_show_options,
};

static int cfs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct cfs_fs_context *ctx = fc->fs_private;
	struct cfs_sb_info *sbi;
	struct file *file;
	struct inode *root;
	int depth, err;

	if (!fc->source)
		return invalfc(fc, "no image file given");

	sbi = kzalloc(sizeof(*sbi), GFP_KERNEL);
	if (!sbi)
		return -ENOMEM;
	sb->s_fs_info = sbi;
	sbi->creds = prepare_creds();
	if (!sbi->creds)
		return -ENOMEM;

	file = filp_open(fc->source, O_RDONLY | O_LARGEFILE, 0);
	if (IS_ERR(file)) {
		errorfc(fc, "cannot open image %s", fc->source);
		return PTR_ERR(file);
	}
	sbi->img.file = file;
	if (!S_ISREG(file_inode(file)->i_mode))
		return invalfc(fc, "image %s is not a regular file", fc->source);

	if (ctx->has_digest) {
		err = cfs_check_image_digest(fc, file, ctx->digest);
		if (err)
			return err;
		sbi->has_digest = true;
		memcpy(sbi->digest, ctx->digest, sizeof(sbi->digest));
	}
	sbi->verity_check = ctx->has_digest ? CFS_VERITY_REQUIRED :
					      ctx->verity_check;

	err = cfs_image_open(&sbi->img, file);
	if (err) {
		errorfc(fc, "%s is not a valid composefs image (error %d)",
			fc->source, err);
		return err;
	}

	depth = file_inode(file)->i_sb->s_stack_depth;
	if (ctx->basedir) {
		sbi->basedir_opt = ctx->basedir;
		ctx->basedir = NULL;
		err = cfs_parse_basedirs(fc, sbi, &depth);
		if (err)
			return err;
	}
	if (ctx->fetch) {
		if (!sbi->nbasedirs)
			return invalfc(fc, "fetch_fd needs a basedir to fetch into");
		sbi->fetch = ctx->fetch;
		ctx->fetch = NULL;
		sbi->fetch_timeout = ctx->fetch_timeout;
	}
	sb->s_stack_depth = depth + 1;
	if (sb->s_stack_depth > FILESYSTEM_MAX_STACK_DEPTH)
		return invalfc(fc, "maximum fs stacking depth exceeded");

	sb->s_magic = COMPOSEFS_SUPER_MAGIC;
	sb->s_op = &cfs_super_ops;
	sb->s_xattr = cfs_xattr_handlers;
	sb->s_flags |= SB_RDONLY | SB_NOATIME | SB_POSIXACL;
	sb->s_blocksize = CFS_BLKSIZE;
	sb->s_blocksize_bits = CFS_BLKBITS;
	sb->s_maxbytes = MAX_LFS_FILESIZE;
	sb->s_time_gran = 1;

	root = cfs_iget(sb, sbi->img.root_nid);
	if (IS_ERR(root)) {
		errorfc(fc, "cannot read the root directory (error %ld)",
			PTR_ERR(root));
		return PTR_ERR(root);
	}
	if (!S_ISDIR(root->i_mode)) {
		iput(root);
		return invalfc(fc, "root inode is not a directory");
	}
	sb->s_root = d_make_root(root);
	if (!sb->s_root)
		return -ENOMEM;
	return 0;
}

static int cfs_get_tree(struct fs_context *fc)
{
	return get_tree_nodev(fc, cfs_fill_super);
}

static int cfs_reconfigure(struct fs_context *fc)
{
	if (!(fc->sb_flags & SB_RDONLY))
		return invalfc(fc, "composefs is read-only");
	return 0;
}

static void cfs_free_fc(struct fs_context *fc)
{
	struct cfs_fs_context *ctx = fc->fs_private;

	if (ctx) {
		if (ctx->fetch)
			cfs_fetch_detach(ctx->fetch);
		kfree(ctx->basedir);
		kfree(ctx);
	}
}

static const struct fs_context_operations cfs_context_ops = {
	.parse_param	= cfs_parse_param,
	.get_tree	= cfs_get_tree,
	.reconfigure	= cfs_reconfigure,
	.free		= cfs_free_fc,
};

static int cfs_init_fs_context(struct fs_context *fc)
{
	struct cfs_fs_context *ctx;

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	ctx->verity_check = CFS_VERITY_RECORDED;
	ctx->fetch_timeout = CFS_FETCH_TIMEOUT_DEFAULT;
	fc->fs_private = ctx;
	fc->ops = &cfs_context_ops;
	fc->sb_flags |= SB_RDONLY;
	return 0;
}

static void cfs_kill_sb(struct super_block *sb)
{
	struct cfs_sb_info *sbi = CFS_SB(sb);

	kill_anon_super(sb);
	if (!sbi)
		return;
	if (sbi->basedirs)
		kern_unmount_array(sbi->basedirs, sbi->nbasedirs);
	kfree(sbi->basedirs);
	kfree(sbi->basedir_opt);
	if (sbi->fetch)
		cfs_fetch_detach(sbi->fetch);
	if (sbi->img.file)
		fput(sbi->img.file);
	if (sbi->creds)
		put_cred(sbi->creds);
	kfree(sbi);
}

static struct file_system_type cfs_fs_type = {
	.owner			= THIS_MODULE,
	.name			= "composefs",
	.init_fs_context	= cfs_init_fs_context,
	.parameters		= cfs_param_spec,
	.kill_sb		= cfs_kill_sb,
};
MODULE_ALIAS_FS("composefs");

static void cfs_inode_init_once(void *ptr)
{
	struct cfs_inode *cino = ptr;

	mutex_init(&cino->backing_lock);
	inode_init_once(&cino->vfs_inode);
}

static int __init cfs_init(void)
{
	int err;

	cfs_inode_cachep = kmem_cache_create("composefs_inode",
					     sizeof(struct cfs_inode), 0,
					     SLAB_RECLAIM_ACCOUNT | SLAB_ACCOUNT,
					     cfs_inode_init_once);
	if (!cfs_inode_cachep)
		return -ENOMEM;
	err = cfs_fetch_register();
	if (err)
		goto out_cache;
	err = register_filesystem(&cfs_fs_type);
	if (err)
		goto out_fetch;
	return 0;

out_fetch:
	cfs_fetch_unregister();
out_cache:
	kmem_cache_destroy(cfs_inode_cachep);
	return err;
}

static void __exit cfs_exit(void)
{
	unregister_filesystem(&cfs_fs_type);
	cfs_fetch_unregister();
	rcu_barrier();	/* wait for inodes freed by RCU */
	kmem_cache_destroy(cfs_inode_cachep);
}

module_init(cfs_init);
module_exit(cfs_exit);
MODULE_DESCRIPTION("composefs: mount composefs images with objects from basedirs");
MODULE_AUTHOR("composefs toolchain");
MODULE_LICENSE("GPL");
