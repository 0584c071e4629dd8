// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: extended attributes, presented as overlayfs presents them.
 *
 * Overlayfs keeps its own "trusted.overlay.*" attributes private and
 * shows an escaped "trusted.overlay.overlay.X" of the lower layer as
 * "trusted.overlay.X".  composefs images use that escaping, so the same
 * rule applies here: the internal ones (metacopy, redirect, opaque, ...)
 * are hidden, the escaped ones are shown unescaped.
 */
#include <linux/fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/xattr.h>
#include <linux/posix_acl_xattr.h>
#include <linux/capability.h>
#include "internal.h"

#define CFS_OVL_PREFIX		"overlay."	/* after "trusted." */
#define CFS_OVL_PREFIX_LEN	(sizeof(CFS_OVL_PREFIX) - 1)
#define CFS_OVL_ESC_PREFIX	"overlay.overlay."
#define CFS_OVL_ESC_PREFIX_LEN	(sizeof(CFS_OVL_ESC_PREFIX) - 1)

static int cfs_xattr_handler_get(const struct xattr_handler *handler,
				 struct dentry *unused, struct inode *inode,
				 const char *name, void *buffer, size_t size)
{
	char *escaped = NULL;
	int ret;

	if (handler->flags == CFS_XATTR_INDEX_TRUSTED &&
	    !strncmp(name, CFS_OVL_PREFIX, CFS_OVL_PREFIX_LEN)) {
		escaped = kasprintf(GFP_KERNEL, CFS_OVL_PREFIX "%s", name);
		if (!escaped)
			return -ENOMEM;
		name = escaped;
	}
	ret = cfs_xattr_get(CFS_IMG(inode), &CFS_I(inode)->ci, handler->flags,
			    name, buffer, size);
	kfree(escaped);
	return ret;
}

static const struct xattr_handler cfs_xattr_user_handler = {
	.prefix	= XATTR_USER_PREFIX,
	.flags	= CFS_XATTR_INDEX_USER,
	.get	= cfs_xattr_handler_get,
};

static const struct xattr_handler cfs_xattr_trusted_handler = {
	.prefix	= XATTR_TRUSTED_PREFIX,
	.flags	= CFS_XATTR_INDEX_TRUSTED,
	.get	= cfs_xattr_handler_get,
};

static const struct xattr_handler cfs_xattr_security_handler = {
	.prefix	= XATTR_SECURITY_PREFIX,
	.flags	= CFS_XATTR_INDEX_SECURITY,
	.get	= cfs_xattr_handler_get,
};

const struct xattr_handler * const cfs_xattr_handlers[] = {
	&cfs_xattr_user_handler,
	&cfs_xattr_trusted_handler,
	&cfs_xattr_security_handler,
	NULL,
};

struct cfs_list_ctx {
	char *buf;
	size_t size;
	size_t pos;
	bool trusted;		/* caller may see trusted.* */
	bool acl;
};

static int cfs_list_actor(void *p, const struct cfs_xattr *xa)
{
	struct cfs_list_ctx *c = p;
	const char *prefix, *name = xa->name;
	size_t plen, nlen, len;

	switch (xa->index) {
	case CFS_XATTR_INDEX_USER:
		prefix = XATTR_USER_PREFIX;
		break;
	case CFS_XATTR_INDEX_POSIX_ACL_ACCESS:
		if (!c->acl)
			return 0;
		prefix = XATTR_NAME_POSIX_ACL_ACCESS;
		break;
	case CFS_XATTR_INDEX_POSIX_ACL_DEFAULT:
		if (!c->acl)
			return 0;
		prefix = XATTR_NAME_POSIX_ACL_DEFAULT;
		break;
	case CFS_XATTR_INDEX_TRUSTED:
		if (!c->trusted)
			return 0;
		prefix = XATTR_TRUSTED_PREFIX;
		if (!strncmp(name, CFS_OVL_ESC_PREFIX, CFS_OVL_ESC_PREFIX_LEN))
			name += CFS_OVL_PREFIX_LEN;	/* unescape */
		else if (!strncmp(name, CFS_OVL_PREFIX, CFS_OVL_PREFIX_LEN))
			return 0;	/* overlayfs-private */
		break;
	case CFS_XATTR_INDEX_SECURITY:
		prefix = XATTR_SECURITY_PREFIX;
		break;
	default:
		return 0;	/* no handler: invisible, as in EROFS */
	}

	plen = strlen(prefix);
	nlen = strlen(name);
	len = plen + nlen + 1;
	if (c->buf) {
		if (c->pos + len > c->size)
			return -ERANGE;
		memcpy(c->buf + c->pos, prefix, plen);
		memcpy(c->buf + c->pos + plen, name, nlen + 1);
	}
	c->pos += len;
	return 0;
}

ssize_t cfs_listxattr(struct dentry *dentry, char *buffer, size_t size)
{
	struct inode *inode = d_inode(dentry);
	struct cfs_list_ctx c = {
		.buf = buffer,
		.size = size,
		.trusted = ns_capable_noaudit(&init_user_ns, CAP_SYS_ADMIN),
		.acl = IS_POSIXACL(inode),
	};
	struct cfs_buf buf = CFS_BUF_INIT(CFS_IMG(inode));
	int err;

	err = cfs_xattr_iterate(&buf, &CFS_I(inode)->ci, cfs_list_actor, &c);
	cfs_buf_put(&buf);
	if (err)
		return err;
	if (c.pos > XATTR_LIST_MAX && buffer)
		return -E2BIG;
	return c.pos;
}

struct posix_acl *cfs_get_inode_acl(struct inode *inode, int type, bool rcu)
{
	const struct cfs_image *img = CFS_IMG(inode);
	const struct cfs_inode_info *ci = &CFS_I(inode)->ci;
	struct posix_acl *acl;
	char *value = NULL;
	u8 index;
	int rc;

	if (rcu)
		return ERR_PTR(-ECHILD);
	if (type == ACL_TYPE_ACCESS)
		index = CFS_XATTR_INDEX_POSIX_ACL_ACCESS;
	else if (type == ACL_TYPE_DEFAULT)
		index = CFS_XATTR_INDEX_POSIX_ACL_DEFAULT;
	else
		return ERR_PTR(-EINVAL);

	rc = cfs_xattr_get(img, ci, index, "", NULL, 0);
	if (rc > 0) {
		value = kmalloc(rc, GFP_KERNEL);
		if (!value)
			return ERR_PTR(-ENOMEM);
		rc = cfs_xattr_get(img, ci, index, "", value, rc);
	}
	if (rc == -ENODATA)
		acl = NULL;
	else if (rc < 0)
		acl = ERR_PTR(rc);
	else
		acl = posix_acl_from_xattr(&init_user_ns, value, rc);
	kfree(value);
	return acl;
}

/* collect the overlayfs metacopy and redirect attributes of a file */
struct cfs_ovl_ctx {
	struct cfs_inode *cino;
	size_t redirect_len;
	bool have_redirect;
	bool bad_redirect;
};

static int cfs_ovl_actor(void *p, const struct cfs_xattr *xa)
{
	struct cfs_ovl_ctx *c = p;
	struct cfs_inode *cino = c->cino;
	char *r;
	int err;

	if (xa->index != CFS_XATTR_INDEX_TRUSTED)
		return 0;
	if (cino->metacopy_len < 0 && !strcmp(xa->name, "overlay.metacopy")) {
		err = cfs_buf_read(xa->buf, xa->value_off, cino->metacopy,
				   min_t(size_t, xa->value_size,
					 CFS_METACOPY_MAX));
		if (err)
			return err;
		cino->metacopy_len = xa->value_size;
	} else if (!c->have_redirect && !strcmp(xa->name, "overlay.redirect")) {
		c->have_redirect = true;
		if (!xa->value_size || xa->value_size >= PATH_MAX) {
			c->bad_redirect = true;
			return 0;
		}
		r = kmalloc(xa->value_size + 1, GFP_KERNEL);
		if (!r)
			return -ENOMEM;
		err = cfs_buf_read(xa->buf, xa->value_off, r, xa->value_size);
		if (err) {
			kfree(r);
			return err;
		}
		r[xa->value_size] = '\0';
		cino->redirect = r;
		c->redirect_len = xa->value_size;
	}
	return 0;
}

/* an absolute path of non-empty components other than "." and ".." */
static bool cfs_redirect_ok(const char *r, size_t len)
{
	const char *s = r, *end = r + len, *next;

	if (strlen(r) != len || r[0] != '/')
		return false;
	while (s < end) {
		s++;	/* skip '/' */
		next = strchrnul(s, '/');
		if (next == s || (next - s == 1 && s[0] == '.') ||
		    (next - s == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		s = next;
	}
	return true;
}

int cfs_read_overlay_xattrs(struct inode *inode, struct cfs_buf *buf)
{
	struct cfs_inode *cino = CFS_I(inode);
	struct cfs_ovl_ctx c = { .cino = cino };
	int err;

	err = cfs_xattr_iterate(buf, &cino->ci, cfs_ovl_actor, &c);
	if (err)
		goto fail;
	if (cino->metacopy_len < 0) {
		/* overlayfs ignores a redirect on a file without metacopy */
		kfree(cino->redirect);
		cino->redirect = NULL;
		return 0;
	}
	/* overlayfs fails the lookup of such files with EIO */
	err = -EIO;
	if (cino->metacopy_len > 0 && cino->metacopy_len < CFS_METACOPY_HDR)
		goto fail;
	if (!cino->redirect || c.bad_redirect ||
	    !cfs_redirect_ok(cino->redirect, c.redirect_len))
		goto fail;
	return 0;
fail:
	kfree(cino->redirect);
	cino->redirect = NULL;
	cino->metacopy_len = -1;
	return err;
}
