/*-------------------------------------------------------------------------
 *
 * key_guard.h
 *		Whether a data directory without cmk_storage/ may get a new DEK:
 *		the evidence of encrypted data, and the marker file that records
 *		that a DEK exists.  Rules in docs/operations.md ("Lost key
 *		directory"); marker format in docs/control-file.md.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_GUARD_H
#define CMK_KEY_GUARD_H

#include "access/xlogdefs.h"

#include "keys/control_file.h"

/* $PGDATA/<this>: outside cmk_storage/, so losing that directory keeps it */
#define CMK_MARKER_FILE		"cmk_dek_in_use"
#define CMK_MARKER_TMP		"cmk_dek_in_use.tmp"

typedef enum CmkGuardMode
{
	CMK_GUARD_AUTOMATIC,		/* start-up: any evidence refuses */
	CMK_GUARD_NO_RELATIONS,		/* create_key(): only cmk_heap relations
								 * refuse */
	CMK_GUARD_FORCE,			/* create_key(force => true): nothing refuses */
} CmkGuardMode;

/* postmaster */
extern Size cmk_guard_shmem_size(void);
extern void cmk_guard_shmem_init(void);

/* key worker */
extern bool cmk_guard_allows_new_key(CmkGuardMode mode, CmkError *err);
extern bool cmk_guard_dir_usable(CmkError *err);
extern bool cmk_guard_write_marker(const CmkControl *ctl, CmkError *err);
extern bool cmk_guard_check_marker(const CmkControl *ctl, CmkError *err);

/* key worker and redo: this server life made cmk_storage/ itself */
extern void cmk_guard_note_dir_created(void);

/* redo: a cmk_storage record met while cmk_storage/ is missing */
extern void cmk_guard_note_wal_evidence(XLogRecPtr lsn);

#endif							/* CMK_KEY_GUARD_H */
