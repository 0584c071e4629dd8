// SPDX-License-Identifier: GPL-2.0-only
/*
 * composefs: missing objects fetched by a userspace process.
 *
 * A fetcher opens the misc device /dev/composefs-fetch; each open file is
 * one channel.  It passes the file's descriptor number to the mount as
 * fetch_fd=N (as FUSE takes fd=N); the mount takes a reference on the
 * channel, and a channel serves at most one mount.  Only whoever holds the
 * open file can read requests and write replies, so only the fetcher that
 * set up the mount answers.
 *
 * When an object is in no basedir, the opener queues a request naming the
 * object by its digest (one request per digest: later openers wait on the
 * same one) and sleeps, killable, for at most fetch_timeout seconds.  The
 * fetcher read()s fixed-size struct cfs_fetch_request records and write()s
 * one struct cfs_fetch_reply per request.  A positive reply only makes the
 * opener look the object up in the basedirs again, where it is checked
 * (fs-verity) like any local object: the reply is never trusted for content.
 *
 * Closing the channel (a fetcher that exits or dies) fails pending and
 * later requests with EIO at once.  When the mount goes, reads return 0
 * (end of file), which tells the fetcher to exit.
 *
 * Lifetimes: the channel is refcounted, one reference held by the open file
 * and one by the mount; a request is refcounted, one reference held while it
 * is on a list of its channel and one by each waiter.
 */
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/miscdevice.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/sched/signal.h>
#include <linux/refcount.h>
#include "fetch.h"

struct cfs_fetch_chan {
	refcount_t ref;
	spinlock_t lock;		/* everything below */
	wait_queue_head_t readq;	/* the fetcher waiting for requests */
	struct list_head queued;	/* not yet read by the fetcher */
	struct list_head sent;		/* read, waiting for a reply */
	u64 next_id;
	bool bound;			/* a mount took this channel */
	bool closed;			/* the fetcher closed its file */
	bool detached;			/* the mount went (or never came) */
};

struct cfs_fetch_req {
	struct list_head list;		/* on queued or sent until done */
	refcount_t ref;
	wait_queue_head_t wq;
	unsigned int waiters;		/* under the channel's lock */
	bool done;
	int result;
	u64 id;
	u8 digest[32];
};

static void cfs_fetch_chan_put(struct cfs_fetch_chan *ch)
{
	if (refcount_dec_and_test(&ch->ref)) {
		WARN_ON(!list_empty(&ch->queued) || !list_empty(&ch->sent));
		kfree(ch);
	}
}

static void cfs_fetch_req_put(struct cfs_fetch_req *req)
{
	if (refcount_dec_and_test(&req->ref))
		kfree(req);
}

/* take req off its list with this result; caller holds ch->lock */
static void cfs_fetch_finish(struct cfs_fetch_req *req, int result)
{
	list_del_init(&req->list);
	req->result = result;
	WRITE_ONCE(req->done, true);
	wake_up_all(&req->wq);
}

static struct cfs_fetch_req *cfs_fetch_find(struct cfs_fetch_chan *ch,
					    const u8 *digest)
{
	struct cfs_fetch_req *req;

	list_for_each_entry(req, &ch->queued, list)
		if (!memcmp(req->digest, digest, sizeof(req->digest)))
			return req;
	list_for_each_entry(req, &ch->sent, list)
		if (!memcmp(req->digest, digest, sizeof(req->digest)))
			return req;
	return NULL;
}

/*
 * Ask the fetcher for the object with this sha256 fs-verity digest and wait
 * for its answer.  0: look in the basedirs again; -ENOENT: the fetcher has
 * no such object; -EIO: it failed, timed out or is gone; -EINTR: killed.
 */
int cfs_fetch_object(struct cfs_fetch_chan *ch, const u8 *digest,
		     unsigned int timeout_secs)
{
	struct cfs_fetch_req *req, *new;
	long left;
	int err;

	new = kzalloc(sizeof(*new), GFP_KERNEL);
	if (!new)
		return -ENOMEM;

	spin_lock(&ch->lock);
	if (ch->closed || ch->detached) {
		spin_unlock(&ch->lock);
		kfree(new);
		return -EIO;
	}
	req = cfs_fetch_find(ch, digest);
	if (!req) {
		req = new;
		new = NULL;
		INIT_LIST_HEAD(&req->list);
		init_waitqueue_head(&req->wq);
		refcount_set(&req->ref, 1);	/* the list's */
		req->id = ++ch->next_id;
		memcpy(req->digest, digest, sizeof(req->digest));
		list_add_tail(&req->list, &ch->queued);
		wake_up_interruptible(&ch->readq);
	}
	refcount_inc(&req->ref);
	req->waiters++;
	spin_unlock(&ch->lock);
	kfree(new);

	left = wait_event_killable_timeout(req->wq, READ_ONCE(req->done),
					   (long)timeout_secs * HZ);

	spin_lock(&ch->lock);
	req->waiters--;
	if (req->done) {
		err = req->result;
	} else {
		err = left < 0 ? -EINTR : -EIO;
		if (left == 0)
			pr_warn_ratelimited("composefs: fetch of object %*phN timed out\n",
					    (int)sizeof(req->digest), req->digest);
		/* nobody waits any more: forget it, a later miss asks again */
		if (!req->waiters) {
			cfs_fetch_finish(req, -EIO);
			refcount_dec(&req->ref);	/* the list's; ours is left */
		}
	}
	spin_unlock(&ch->lock);
	cfs_fetch_req_put(req);
	return err;
}

static int cfs_fetch_open(struct inode *inode, struct file *file)
{
	struct cfs_fetch_chan *ch;

	ch = kzalloc(sizeof(*ch), GFP_KERNEL);
	if (!ch)
		return -ENOMEM;
	refcount_set(&ch->ref, 1);	/* the file's */
	spin_lock_init(&ch->lock);
	init_waitqueue_head(&ch->readq);
	INIT_LIST_HEAD(&ch->queued);
	INIT_LIST_HEAD(&ch->sent);
	file->private_data = ch;
	return stream_open(inode, file);
}

/* fail every request of a channel that can no longer be answered */
static void cfs_fetch_fail_all(struct cfs_fetch_chan *ch)
{
	struct cfs_fetch_req *req, *tmp;
	LIST_HEAD(gone);

	spin_lock(&ch->lock);
	list_splice_init(&ch->queued, &gone);
	list_splice_init(&ch->sent, &gone);
	list_for_each_entry_safe(req, tmp, &gone, list) {
		cfs_fetch_finish(req, -EIO);
		cfs_fetch_req_put(req);	/* the list's */
	}
	spin_unlock(&ch->lock);
}

static int cfs_fetch_release(struct inode *inode, struct file *file)
{
	struct cfs_fetch_chan *ch = file->private_data;

	spin_lock(&ch->lock);
	ch->closed = true;
	spin_unlock(&ch->lock);
	cfs_fetch_fail_all(ch);
	cfs_fetch_chan_put(ch);
	return 0;
}

static ssize_t cfs_fetch_read(struct file *file, char __user *buf,
			      size_t count, loff_t *ppos)
{
	struct cfs_fetch_chan *ch = file->private_data;
	struct cfs_fetch_request rec = {};
	struct cfs_fetch_req *req;
	u64 id;
	int err;

	if (count < sizeof(rec))
		return -EINVAL;

	spin_lock(&ch->lock);
	while (list_empty(&ch->queued)) {
		bool eof = ch->detached;

		spin_unlock(&ch->lock);
		if (eof)
			return 0;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		err = wait_event_interruptible(ch->readq,
					       !list_empty(&ch->queued) ||
					       READ_ONCE(ch->detached));
		if (err)
			return err;
		spin_lock(&ch->lock);
	}
	req = list_first_entry(&ch->queued, struct cfs_fetch_req, list);
	list_move_tail(&req->list, &ch->sent);
	id = req->id;
	rec.version = cpu_to_le32(CFS_FETCH_VERSION);
	rec.size = cpu_to_le32(sizeof(rec));
	rec.id = cpu_to_le64(id);
	rec.alg = CFS_FETCH_ALG_SHA256;
	memcpy(rec.digest, req->digest, sizeof(rec.digest));
	spin_unlock(&ch->lock);

	if (copy_to_user(buf, &rec, sizeof(rec))) {
		/* not delivered: queue it again if it is still wanted */
		spin_lock(&ch->lock);
		list_for_each_entry(req, &ch->sent, list) {
			if (req->id == id) {
				list_move(&req->list, &ch->queued);
				break;
			}
		}
		spin_unlock(&ch->lock);
		return -EFAULT;
	}
	return sizeof(rec);
}

static ssize_t cfs_fetch_write(struct file *file, const char __user *buf,
			       size_t count, loff_t *ppos)
{
	struct cfs_fetch_chan *ch = file->private_data;
	struct cfs_fetch_reply rep;
	struct cfs_fetch_req *req, *found = NULL;
	u32 error;
	u64 id;

	if (count != sizeof(rep))
		return -EINVAL;
	if (copy_from_user(&rep, buf, sizeof(rep)))
		return -EFAULT;
	error = le32_to_cpu(rep.error);
	if (le32_to_cpu(rep.version) != CFS_FETCH_VERSION ||
	    le32_to_cpu(rep.size) != sizeof(rep) || rep.reserved ||
	    error >= MAX_ERRNO)
		return -EINVAL;
	id = le64_to_cpu(rep.id);

	spin_lock(&ch->lock);
	list_for_each_entry(req, &ch->sent, list) {
		if (req->id == id) {
			found = req;
			break;
		}
	}
	if (found) {
		/* only "not there" is passed on; any other failure is EIO */
		cfs_fetch_finish(found, !error ? 0 :
				 error == ENOENT ? -ENOENT : -EIO);
		cfs_fetch_req_put(found);	/* the list's */
	}
	spin_unlock(&ch->lock);
	/* an unknown id: answered already, or every waiter gave up */
	return found ? count : -ENOENT;
}

static __poll_t cfs_fetch_poll(struct file *file, poll_table *wait)
{
	struct cfs_fetch_chan *ch = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &ch->readq, wait);
	spin_lock(&ch->lock);
	if (!list_empty(&ch->queued) || ch->detached)
		mask |= EPOLLIN | EPOLLRDNORM;
	spin_unlock(&ch->lock);
	return mask;
}

static const struct file_operations cfs_fetch_fops = {
	.owner		= THIS_MODULE,
	.open		= cfs_fetch_open,
	.release	= cfs_fetch_release,
	.read		= cfs_fetch_read,
	.write		= cfs_fetch_write,
	.poll		= cfs_fetch_poll,
};

/*
 * The channel open as descriptor fd in the calling (mounting) process, with
 * a reference for the mount; EINVAL if fd is not a composefs-fetch file,
 * EBUSY if its channel already serves a mount or its fetcher closed it.
 */
struct cfs_fetch_chan *cfs_fetch_bind(int fd)
{
	struct cfs_fetch_chan *ch;
	struct file *file;
	int err = 0;

	file = fget(fd);
	if (!file)
		return ERR_PTR(-EBADF);
	if (file->f_op != &cfs_fetch_fops) {
		fput(file);
		return ERR_PTR(-EINVAL);
	}
	ch = file->private_data;
	spin_lock(&ch->lock);
	if (ch->bound || ch->closed || ch->detached)
		err = -EBUSY;
	else
		ch->bound = true;
	if (!err)
		refcount_inc(&ch->ref);
	spin_unlock(&ch->lock);
	fput(file);
	return err ? ERR_PTR(err) : ch;
}

/* the mount is gone (or failed): the fetcher reads end of file */
void cfs_fetch_detach(struct cfs_fetch_chan *ch)
{
	spin_lock(&ch->lock);
	ch->detached = true;
	wake_up_interruptible_all(&ch->readq);
	spin_unlock(&ch->lock);
	cfs_fetch_fail_all(ch);
	cfs_fetch_chan_put(ch);
}

static struct miscdevice cfs_fetch_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "composefs-fetch",
	.fops	= &cfs_fetch_fops,
	.mode	= 0600,
};

int cfs_fetch_register(void)
{
	return misc_register(&cfs_fetch_dev);
}

void cfs_fetch_unregister(void)
{
	misc_deregister(&cfs_fetch_dev);
}
