/*-------------------------------------------------------------------------
 *
 * io_sweep.h
 *		Cluster encryption: the sweep that turns plaintext left from before
 *		cluster encryption was on into ciphertext, online, and the check
 *		that none is left (docs/io-layer.md, "Plaintext from before").
 *
 * Unlike the rest of src/io/, this code runs above fd.c, as ordinary
 * backend code in background workers and SQL functions: it may palloc,
 * ereport and take locks.  It reads files raw through the module's own libc
 * calls (only the executable's are redirected) and gets pages rewritten
 * through the buffer manager and the layer; it never writes a relation
 * file itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_IO_SWEEP_H
#define CMK_IO_SWEEP_H

#include "datatype/timestamp.h"
#include "storage/spin.h"

/* What the sweep is doing (cmk_storage.cluster_encryption_progress.phase). */
typedef enum CmkSweepPhase
{
	CMK_SWEEP_IDLE = 0,			/* not started, or cluster encryption off */
	CMK_SWEEP_VERIFYING,		/* reading every file raw */
	CMK_SWEEP_RELATIONS,		/* rewriting plaintext relation pages */
	CMK_SWEEP_CHECKPOINT,		/* waiting for a checkpoint */
	CMK_SWEEP_WAL,				/* re-encrypting WAL segments */
	CMK_SWEEP_WAITING,			/* plaintext left that it could not reach: retry later */
	CMK_SWEEP_STANDBY,			/* in recovery: verifies only, rewrites nothing */
	CMK_SWEEP_COMPLETE,			/* verified: no plaintext page */
} CmkSweepPhase;

/* Shared state: written by the sweep workers, read by SQL. */
typedef struct CmkSweepState
{
	slock_t		mutex;
	bool		complete;		/* a verification found no plaintext page */
	int			phase;			/* CmkSweepPhase */
	int			pass;			/* rounds since start */
	int			dbs_total;
	int			dbs_done;
	Oid			db;
	char		dbname[NAMEDATALEN];
	char		relname[2 * NAMEDATALEN + 2];
	int64		rels_total;		/* of the current database */
	int64		rels_done;
	int64		blocks_total;	/* of the current phase, cluster-wide */
	int64		blocks_scanned;
	int64		blocks_rewritten;	/* since start */
	int			wal_total;
	int			wal_done;
	int			wal_rewritten;	/* segments, since start */
	int64		plaintext_pages;	/* found by the latest verification */
	char		plaintext_file[MAXPGPATH];	/* one of them */
	TimestampTz started;
	TimestampTz updated;
	TimestampTz completed;
	bool		db_ok;			/* the per-database worker finished */
} CmkSweepState;

extern CmkSweepState *cmk_sweep;

/* io_sweep_state.c: shared memory, settings, throttling. */
extern Size cmk_sweep_shmem_size(void);
extern void cmk_sweep_shmem_init(void);
extern void cmk_sweep_define_settings(void);
extern void cmk_sweep_throttle_setup(void);
extern void cmk_sweep_throttle(int cost);
extern void cmk_sweep_set_phase(CmkSweepPhase phase);

/* io_verify.c: the raw checks. */
extern bool cmk_raw_relpage_plain(const char *page);
extern bool cmk_raw_walpage_plain(const char *page);

typedef void (*CmkPlainFileCallback) (const char *path, int64 pages,
									  int64 first, void *arg);
extern int64 cmk_count_relation_blocks(void);
extern int64 cmk_verify_cluster(bool throttle, CmkPlainFileCallback cb, void *arg);

/* io_sweep_wal.c: WAL segments. */
extern bool cmk_sweep_wal(void);

/* io_sweep.c: the workers. */
extern void cmk_sweep_register(void);

#endif							/* CMK_IO_SWEEP_H */
