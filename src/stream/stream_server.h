/*-------------------------------------------------------------------------
 *
 * stream_server.h
 *		Server side of the encrypted streams: the archive module
 *		(archive_library = 'cmk_storage') and the base-backup target
 *		(pg_basebackup --target=cmk:/dir).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_STREAM_SERVER_H
#define CMK_STREAM_SERVER_H

#include "crypto/cmk_crypto.h"
#include "stream/cmk_stream.h"

extern char *cmk_archive_directory;

/* From _PG_init, before the GUC prefix is reserved. */
extern void cmk_stream_register(void);

/* stream_server.c */
extern void cmk_stream_server_selftest(void);
extern void cmk_stream_server_header(CmkStreamPurpose purpose, CmkStreamHeader *hdr);
extern void cmk_stream_server_subkey(CmkStreamPurpose purpose, const uint8 *dek_id,
									 uint8 *subkey);

/* stream_backup.c */
extern void cmk_backup_target_register(void);

#endif							/* CMK_STREAM_SERVER_H */
