/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * composefs: the channel between the module and a userspace fetcher of
 * missing objects (fetch.c).  The records below are the whole protocol;
 * userspace (python/composefs/fetchd.py) reads and writes them as they are
 * laid out here, little-endian, fixed size.
 */
#ifndef _CFS_FETCH_H
#define _CFS_FETCH_H

#include <linux/types.h>

#define CFS_FETCH_VERSION	1
#define CFS_FETCH_ALG_SHA256	1	/* FS_VERITY_HASH_ALG_SHA256 */

/* read() from the channel: one request per read, the buffer must hold it */
struct cfs_fetch_request {
	__le32 version;		/* CFS_FETCH_VERSION */
	__le32 size;		/* sizeof(struct cfs_fetch_request) */
	__le64 id;		/* echoed by the reply */
	__u8 alg;		/* CFS_FETCH_ALG_SHA256 */
	__u8 reserved[7];	/* zero */
	__u8 digest[32];	/* the object's fs-verity digest */
};

/* write() to the channel: exactly one reply per write */
struct cfs_fetch_reply {
	__le32 version;		/* CFS_FETCH_VERSION */
	__le32 size;		/* sizeof(struct cfs_fetch_reply) */
	__le64 id;		/* of the request answered */
	__le32 error;		/* 0: stored in the first basedir; else an errno */
	__le32 reserved;	/* zero */
};

struct cfs_fetch_chan;

#define CFS_FETCH_TIMEOUT_DEFAULT	30	/* seconds */
#define CFS_FETCH_TIMEOUT_MAX		3600

struct cfs_fetch_chan *cfs_fetch_bind(int fd);
void cfs_fetch_detach(struct cfs_fetch_chan *ch);
int cfs_fetch_object(struct cfs_fetch_chan *ch, const u8 *digest,
		     unsigned int timeout_secs);
int cfs_fetch_register(void);
void cfs_fetch_unregister(void);

#endif /* _CFS_FETCH_H */
