/*-------------------------------------------------------------------------
 *
 * io_layer.h
 *		Cluster encryption: the I/O layer below fd.c (docs/io-layer.md).
 *
 * With cmk_storage.cluster_encryption on, the postmaster redirects the
 * libc file calls the server executable imports, so that every relation
 * page and every WAL page is encrypted on its way to disk and decrypted on
 * its way back.  Off (the default), nothing here runs.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_IO_LAYER_H
#define CMK_IO_LAYER_H

/* On-disk markers: flags a server without the layer rejects. */
#define CMK_PD_ENCRYPTED	0x8000	/* PageHeaderData.pd_flags */
#define CMK_XLP_ENCRYPTED	0x4000	/* XLogPageHeaderData.xlp_info */

/* HKDF info labels of the two 64-byte XTS keys (docs/io-layer.md). */
#define CMK_IO_REL_LABEL	"cmk_storage/v1/cluster-relation-xts"
#define CMK_IO_WAL_LABEL	"cmk_storage/v1/cluster-wal-xts"

/* _PG_init, after the key store exists: start the layer if it is on. */
extern void cmk_io_start(void);

/*
 * Whether this process encrypts relation and WAL pages (cluster encryption
 * was started; temp_file_encryption alone does not count).
 */
extern bool cmk_io_active(void);

#endif							/* CMK_IO_LAYER_H */
