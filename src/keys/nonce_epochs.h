/*-------------------------------------------------------------------------
 *
 * nonce_epochs.h
 *		The cluster's table of tuple nonce epochs: up to 65,536 random
 *		64-bit nonce prefixes, each registered once, durably, under one DEK,
 *		and never changed or removed.  $PGDATA/cmk_storage/nonce_epochs
 *		holds it, bound to the cluster and the DEK and authenticated with a
 *		key derived from the DEK.  Format: docs/nonce-epochs.md.
 *
 * Readers look entries up without a lock, per tuple: an entry is valid
 * only once it is authenticated (by the file's MAC, by WAL replayed in this
 * server life, or by its registration in this server life), and before any
 * tuple naming it can be seen.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_NONCE_EPOCHS_H
#define CMK_NONCE_EPOCHS_H

#include "lib/stringinfo.h"
#include "storage/itemptr.h"

#include "keys/control_file.h"

#define CMK_NONCE_EPOCHS		65536
#define CMK_NONCE_PREFIX_LEN	8	/* random prefix of an epoch */
#define CMK_EPOCH_RECORD_LEN	16	/* WAL record: id, 0, DEK tag, prefix */

typedef struct CmkEpoch
{
	uint32		valid;			/* authenticated: may be used */
	uint32		dek_tag;		/* first 4 bytes of the DEK identifier */
	uint8		prefix[CMK_NONCE_PREFIX_LEN];
} CmkEpoch;

extern PGDLLIMPORT CmkEpoch *cmk_epochs;	/* the table's entries */

/* The epoch a stored nonce names (2 bytes, big-endian).  Per tuple: inline. */
static inline const CmkEpoch *
cmk_epoch(const uint8 *id)
{
	return &cmk_epochs[(id[0] << 8) | id[1]];
}

/* May a tuple of the DEK tagged want_tag name this epoch? */
static inline bool
cmk_epoch_usable(const CmkEpoch *e, uint32 want_tag)
{
	return e->valid && e->dek_tag == want_tag;
}

/* postmaster: shared memory, and the file read into it */
extern Size cmk_epochs_shmem_size(void);
extern void cmk_epochs_shmem_request(void);
extern void cmk_epochs_shmem_init(void);

/* the key directory's creation (control_file.c), before any key is live */
extern bool cmk_epochs_write_empty(const char *path, uint64 system_identifier,
								   const uint8 *dek_id);

/* key worker, after it published a key: authenticate the file now */
extern void cmk_epochs_key_available(void);

/* encryption: counters under the current epoch */
extern void cmk_nonce_reserve(uint32 dek_tag, uint16 *epoch, uint32 *first,
							  uint32 count);

/*
 * Reads, when cmk_epoch_usable() said no: recheck authenticates the file if
 * it has not been yet and says whether the epoch is usable now; report
 * raises the error that says why not.
 */
extern bool cmk_epoch_recheck(uint16 id, uint32 want_tag);
extern void cmk_epoch_report_unusable(const char *relname, ItemPointer tid,
									  uint16 id, uint32 want_tag)
			pg_attribute_noreturn();

/*
 * Verification: raise an error unless the table as a whole can be used (or
 * every tuple would look as if it named an unusable epoch); then why one
 * epoch is not usable, as a message without the tuple's location.
 */
extern void cmk_epochs_check_readable(void);
extern char *cmk_epoch_unusable_reason(uint16 id, uint32 want_tag);

/* WAL (key_wal.c) */
extern void cmk_epoch_redo(const uint8 *rec, Size len);
extern void cmk_epoch_desc(StringInfo buf, const uint8 *rec, Size len);
extern void cmk_epochs_redo_control(const CmkControl *ctl);

/* SQL (key_sql.c) */
extern int	cmk_epochs_used(void);
extern bool cmk_epochs_problem(char *buf, size_t size);
extern bool cmk_epochs_upgrade(char *msg, size_t msgsize);

#endif							/* CMK_NONCE_EPOCHS_H */
