/*-------------------------------------------------------------------------
 *
 * control_file.h
 *		$PGDATA/cmk_storage/control: the wrapped DEK and what binds it to
 *		its cluster and its KEK.  Layout in docs/control-file.md.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_CONTROL_FILE_H
#define CMK_CONTROL_FILE_H

#include "crypto/cmk_crypto.h"
#include "keys/key_provider.h"

#define CMK_CONTROL_DIR			"cmk_storage"
#define CMK_CONTROL_NEW_DIR		"cmk_storage.new"
#define CMK_CONTROL_FILE		"cmk_storage/control"
#define CMK_CONTROL_TMP			"cmk_storage/control.tmp"
#define CMK_CONTROL_SIZE		2048
#define CMK_CONTROL_VERSION		1
#define CMK_CONTROL_TEXT_MAX	512

typedef struct CmkControl
{
	uint32		version;
	uint32		generation;		/* bumped by every re-wrap (rotation) */
	uint64		system_identifier;
	int64		created_at;		/* unix seconds, DEK creation */
	int64		wrapped_at;		/* unix seconds, last wrap */
	uint8		dek_id[CMK_DEK_ID_LEN];
	CmkWrapAlg	wrap_alg;
	uint16		wrapped_len;
	uint8		wrapped[CMK_MAX_WRAPPED];
	char		kid[CMK_CONTROL_TEXT_MAX + 1];
	char		key_uri[CMK_CONTROL_TEXT_MAX + 1];
} CmkControl;

typedef enum CmkControlStatus
{
	CMK_CONTROL_ABSENT,			/* no cmk_storage directory: first start */
	CMK_CONTROL_PRESENT,
	CMK_CONTROL_INVALID,		/* err says why */
} CmkControlStatus;

/* Pure (no I/O): used by the server and by frontend tools. */
extern void cmk_control_serialize(const CmkControl *ctl, uint8 *buf);
extern bool cmk_control_parse(const uint8 *buf, size_t len, CmkControl *ctl,
							  CmkError *err);

/* Server side, relative to the data directory (the current directory). */
extern CmkControlStatus cmk_control_read(CmkControl *ctl, CmkError *err);
#ifdef FRONTEND
extern CmkControlStatus cmk_control_read_dir(const char *dir, CmkControl *ctl,
											 CmkError *err);
#endif
extern bool cmk_control_create(const CmkControl *ctl, CmkError *err);
extern bool cmk_control_replace(const CmkControl *ctl, CmkError *err);
extern bool cmk_control_write_tmp(const CmkControl *ctl, CmkError *err);
extern bool cmk_control_install_tmp(CmkError *err);
extern bool cmk_write_file_synced(const char *path, const void *buf,
								  size_t len, const char **failed);

#endif							/* CMK_CONTROL_FILE_H */
