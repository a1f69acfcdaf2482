/*-------------------------------------------------------------------------
 *
 * key_wal.h
 *		WAL-logging of control-file changes through a custom resource
 *		manager, so standbys and point-in-time recovery follow key changes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_WAL_H
#define CMK_KEY_WAL_H

#include "access/xlogdefs.h"

#include "keys/control_file.h"

/* Custom resource manager id (PostgreSQL wiki: CustomWALResourceManagers). */
#define CMK_RMGR_ID				201
#define XLOG_CMK_CONTROL		0x00	/* full control-file image */
#define XLOG_CMK_NONCE_EPOCH	0x10	/* a new tuple nonce epoch */

extern void cmk_wal_register(void);
extern XLogRecPtr cmk_wal_log_control(const CmkControl *ctl);

#endif							/* CMK_KEY_WAL_H */
