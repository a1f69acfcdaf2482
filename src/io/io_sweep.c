/*-------------------------------------------------------------------------
 *
 * io_sweep.c
 *		The cluster encryption sweep: background workers that get every
 *		plaintext relation page written again through the layer, re-encrypt
 *		plaintext WAL segments, and verify that none is left.
 *
 * initdb loads no library, so a new cluster starts with plaintext catalogs
 * and WAL; a cluster switched on later has only plaintext.  With cluster
 * encryption on, the module registers one static worker, the coordinator.
 * It loops:
 *
 *	 1. verify: read every relation file and WAL segment raw (io_verify.c);
 *		none plaintext => 'complete', and it stays idle;
 *	 2. relations: for each database, a worker connected to it (template0
 *		included) visits every block of every fork of every relation with
 *		storage in its pg_class (the first database also the shared
 *		catalogs); a block whose raw page is plaintext is read into a
 *		buffer, marked dirty under an exclusive content lock, and
 *		WAL-logged with a full-page image (when the relation needs WAL, and
 *		always for init forks): the rewrite replaces a page no WAL record
 *		covers, so the image is what protects it against a torn write;
 *	 3. a checkpoint, so that those buffers reach the disk (encrypted);
 *	 4. WAL: the plaintext segments are replaced by encrypted copies
 *		(io_sweep_wal.c);
 *	 5. back to 1; if plaintext is still found, the next pass starts after
 *		SWEEP_RETRY_SOON_S when this one was interrupted (a database
 *		worker that yielded to DDL, a relation that failed, a WAL segment
 *		that changed under it), after SWEEP_RETRY_S otherwise: then the
 *		plaintext is something the sweep cannot reach (a relation file no
 *		catalog knows), and the log names a file.
 *
 * Nothing is persisted: a restart begins again at 1, and a pass skips
 * every encrypted page after a raw read, without the buffer manager or
 * WAL, so resuming costs one throttled read of the cluster.  That read is
 * also what makes 'complete' trustworthy after any restart, restore or
 * offline tool: it is never carried over from a state file.
 *
 * On a standby (in recovery) nothing is rewritten: the relation files
 * change only by replay, which writes through the layer.  The coordinator
 * only verifies, every SWEEP_RETRY_S until clean, and does the full sweep
 * once promoted.
 *
 * Users are not blocked: a relation is held with AccessShareLock (as a
 * SELECT does) for at most SWEEP_CHUNK blocks at a time, buffers are
 * locked one at a time, everything is paced by the cost-based delay
 * (io_sweep_state.c), and the per-database worker yields to DDL as an
 * autovacuum worker does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xloginsert.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/bgwriter.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/smgr.h"
#include "tcop/tcopprot.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "io/io_layer.h"
#include "io/io_sweep.h"

#define SWEEP_CHUNK		1024	/* blocks per lock hold */
#define SWEEP_RETRY_S	60		/* before a new pass when plaintext is left */
#define SWEEP_RETRY_SOON_S 5	/* after an interrupted pass */
#define SWEEP_LOG_FILES 5		/* plaintext files named per verification */

PGDLLEXPORT void cmk_sweep_main(Datum main_arg);
PGDLLEXPORT void cmk_sweep_db_main(Datum main_arg);

/* lappend_oid into cxt */
static List *
lappend_oid_in(MemoryContext cxt, List *list, Oid oid)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	list = lappend_oid(list, oid);
	MemoryContextSwitchTo(old);
	return list;
}

/* bgw_extra of a per-database worker */
typedef struct SweepDbRequest
{
	Oid			db;
	bool		shared;			/* also the shared catalogs */
} SweepDbRequest;

void
cmk_sweep_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "cmk_storage", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cmk_sweep_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "cmk_storage cluster encryption sweep", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "cmk_storage cluster encryption sweep", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static void
progress_add(int64 scanned, int64 rewritten)
{
	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->blocks_scanned += scanned;
	cmk_sweep->blocks_rewritten += rewritten;
	cmk_sweep->updated = GetCurrentTimestamp();
	SpinLockRelease(&cmk_sweep->mutex);
}

/* ---------------------------------------------------------------------- */
/* The per-database worker                                                */

/*
 * Get one block written again through the layer.  The page is already the
 * current one in the buffer (read through the layer, so decrypted if it
 * was not plaintext after all); marking it dirty makes the next write
 * encrypt it.
 */
static void
rewrite_block(Relation rel, ForkNumber fork, BlockNumber blk,
			  BufferAccessStrategy strategy)
{
	Buffer		buf = ReadBufferExtended(rel, fork, blk, RBM_NORMAL, strategy);

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	START_CRIT_SECTION();
	MarkBufferDirty(buf);
	/* not page_std: FSM, VM and some index pages ignore pd_lower/pd_upper */
	if (RelationNeedsWAL(rel) || fork == INIT_FORKNUM)
		log_newpage_buffer(buf, false);
	END_CRIT_SECTION();

	/*
	 * A checkpoint writes only permanent buffers: an unlogged relation's
	 * page is written now (no WAL to flush first; a crash resets the fork
	 * from its init fork anyway).
	 */
	if (!RelationNeedsWAL(rel) && fork != INIT_FORKNUM)
		FlushOneBuffer(buf);
	UnlockReleaseBuffer(buf);
}

/* Blocks start..end-1 of one fork; returns the block after the last one done. */
static BlockNumber
sweep_blocks(Relation rel, ForkNumber fork, BlockNumber start, BlockNumber end,
			 BufferAccessStrategy strategy, char *page)
{
	char	   *rpath = relpathperm(rel->rd_node, fork);
	char		path[MAXPGPATH];
	int			fd = -1;
	BlockNumber fdseg = InvalidBlockNumber;
	BlockNumber blk;
	int64		scanned = 0;
	int64		rewritten = 0;

	for (blk = start; blk < end; blk++)
	{
		BlockNumber seg = blk / RELSEG_SIZE;
		ssize_t		n;

		if (seg != fdseg)
		{
			if (fd >= 0)
				CloseTransientFile(fd);
			if (seg == 0)
				strlcpy(path, rpath, sizeof(path));
			else
				snprintf(path, sizeof(path), "%s.%u", rpath, seg);
			fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
			if (fd < 0 && errno == ENOENT)
				break;
			if (fd < 0)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not open file \"%s\": %m", path)));
			fdseg = seg;
		}
		n = pg_pread(fd, page, BLCKSZ, (off_t) (blk % RELSEG_SIZE) * BLCKSZ);
		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (n < BLCKSZ)
			break;				/* extended meanwhile, not yet written */
		scanned++;
		if (cmk_raw_relpage_plain(page))
		{
			rewrite_block(rel, fork, blk, strategy);
			rewritten++;
		}
		if (scanned % 64 == 0)
		{
			progress_add(scanned, rewritten);
			scanned = rewritten = 0;
		}
		cmk_sweep_throttle(VacuumCostPageMiss);
	}
	if (fd >= 0)
		CloseTransientFile(fd);
	progress_add(scanned, rewritten);
	pfree(rpath);
	return blk;
}

/* Every fork of one relation, SWEEP_CHUNK blocks per transaction. */
static void
sweep_relation(Oid relid, BufferAccessStrategy strategy, char *page)
{
	MemoryContext caller = CurrentMemoryContext;

	for (ForkNumber fork = MAIN_FORKNUM; fork <= MAX_FORKNUM; fork++)
	{
		BlockNumber blk = 0;

		for (;;)
		{
			Relation	rel;
			BlockNumber nblocks;
			BlockNumber done;

			StartTransactionCommand();
			rel = try_relation_open(relid, AccessShareLock);
			if (rel == NULL)
			{
				/* dropped meanwhile: its files are gone with it */
				CommitTransactionCommand();
				MemoryContextSwitchTo(caller);
				return;
			}
			if (RelationUsesLocalBuffers(rel) ||
				!smgrexists(RelationGetSmgr(rel), fork))
			{
				relation_close(rel, AccessShareLock);
				CommitTransactionCommand();
				MemoryContextSwitchTo(caller);
				break;
			}
			if (fork == MAIN_FORKNUM && blk == 0)
			{
				char	   *nsp = get_namespace_name(RelationGetNamespace(rel));

				SpinLockAcquire(&cmk_sweep->mutex);
				snprintf(cmk_sweep->relname, sizeof(cmk_sweep->relname), "%s.%s",
						 nsp ? nsp : "?", RelationGetRelationName(rel));
				SpinLockRelease(&cmk_sweep->mutex);
			}
			nblocks = RelationGetNumberOfBlocksInFork(rel, fork);
			done = sweep_blocks(rel, fork, blk, Min(nblocks, blk + SWEEP_CHUNK),
								strategy, page);
			relation_close(rel, AccessShareLock);
			CommitTransactionCommand();
			MemoryContextSwitchTo(caller);
			if (done < Min(nblocks, blk + SWEEP_CHUNK) || done >= nblocks)
				break;
			blk = done;
		}
	}
}

/*
 * An error in one relation (a damaged page, a cancel by a lock waiter)
 * skips that relation for this pass, as autovacuum skips a table; the
 * database then counts as unfinished and is swept again soon.  FATAL
 * (shutdown) is not caught.  False after an error.
 */
static bool
sweep_relation_guarded(Oid relid, BufferAccessStrategy strategy, char *page)
{
	volatile bool ok = true;

	PG_TRY();
	{
		sweep_relation(relid, strategy, page);
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* The relations with storage of this database (and the shared ones). */
static List *
list_relations(bool shared)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *oids = NIL;
	MemoryContext caller = CurrentMemoryContext;	/* outlives the transaction */

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(RelationRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_class c = (Form_pg_class) GETSTRUCT(tup);

		if (!RELKIND_HAS_STORAGE(c->relkind) ||
			c->relpersistence == RELPERSISTENCE_TEMP ||
			(c->relisshared && !shared))
			continue;
		oids = lappend_oid_in(caller, oids, c->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	list_sort(oids, list_oid_cmp);
	return oids;
}

void
cmk_sweep_db_main(Datum main_arg)
{
	SweepDbRequest req;
	List	   *oids;
	ListCell   *lc;
	BufferAccessStrategy strategy;
	char	   *page;
	MemoryContext cxt;
	bool		ok = true;

	memcpy(&req, MyBgworkerEntry->bgw_extra, sizeof(req));
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(req.db, InvalidOid,
											  BGWORKER_BYPASS_ALLOWCONN);
	cmk_sweep_throttle_setup();

	/*
	 * Get out of the way as autovacuum does: CREATE DATABASE from this one
	 * as a template, DROP DATABASE and ALTER DATABASE terminate this worker
	 * instead of failing with "being accessed by other users", and a lock
	 * waiter blocked by it cancels it after deadlock_timeout.  The sweep
	 * takes the database again in a later pass.
	 */
	LWLockAcquire(ProcArrayLock, LW_EXCLUSIVE);
	MyProc->statusFlags |= PROC_IS_AUTOVACUUM;
	ProcGlobal->statusFlags[MyProc->pgxactoff] = MyProc->statusFlags;
	LWLockRelease(ProcArrayLock);

	oids = list_relations(req.shared);
	ereport(DEBUG1,
			(errmsg_internal("cmk_storage: sweeping %d relations of database %u%s",
							 list_length(oids), req.db, req.shared ? " and the shared catalogs" : "")));
	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->rels_total = list_length(oids);
	cmk_sweep->rels_done = 0;
	SpinLockRelease(&cmk_sweep->mutex);

	/* TopMemoryContext: survives the transactions, one per chunk */
	strategy = GetAccessStrategy(BAS_VACUUM);
	page = MemoryContextAlloc(TopMemoryContext, BLCKSZ);
	cxt = AllocSetContextCreate(TopMemoryContext, "cmk_storage sweep",
								ALLOCSET_DEFAULT_SIZES);
	foreach(lc, oids)
	{
		MemoryContextSwitchTo(cxt);
		ok &= sweep_relation_guarded(lfirst_oid(lc), strategy, page);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cxt);
		SpinLockAcquire(&cmk_sweep->mutex);
		cmk_sweep->rels_done++;
		SpinLockRelease(&cmk_sweep->mutex);
	}

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->db_ok = ok;
	SpinLockRelease(&cmk_sweep->mutex);
	proc_exit(0);
}

/* ---------------------------------------------------------------------- */
/* The coordinator                                                        */

static List *
list_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *oids = NIL;
	MemoryContext caller = CurrentMemoryContext;	/* outlives the transaction */

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* an interrupted DROP DATABASE: cannot be connected to */
		if (!database_is_invalid_form(db))
			oids = lappend_oid_in(caller, oids, db->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	list_sort(oids, list_oid_cmp);
	return oids;
}

/* Run the per-database worker for db and wait for it.  True if it finished. */
static bool
sweep_database(Oid db, bool shared)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	SweepDbRequest req;
	bool		ok;

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->db_ok = false;
	cmk_sweep->db = db;
	cmk_sweep->rels_total = cmk_sweep->rels_done = 0;
	cmk_sweep->relname[0] = '\0';
	SpinLockRelease(&cmk_sweep->mutex);

	memset(&req, 0, sizeof(req));
	req.db = db;
	req.shared = shared;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_notify_pid = MyProcPid;
	strlcpy(worker.bgw_library_name, "cmk_storage", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cmk_sweep_db_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "cmk_storage cluster encryption sweep of a database", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "cmk_storage cluster encryption sweep", BGW_MAXLEN);
	StaticAssertStmt(sizeof(req) <= BGW_EXTRALEN, "sweep request too large");
	memcpy(worker.bgw_extra, &req, sizeof(req));

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(LOG,
				(errmsg("cmk_storage: no free background worker slot for the cluster encryption sweep"),
				 errhint("Raise max_worker_processes; the sweep retries.")));
		return false;
	}
	if (WaitForBackgroundWorkerShutdown(handle) == BGWH_POSTMASTER_DIED)
		proc_exit(1);
	pfree(handle);

	SpinLockAcquire(&cmk_sweep->mutex);
	ok = cmk_sweep->db_ok;
	SpinLockRelease(&cmk_sweep->mutex);
	if (!ok)
		ereport(LOG,
				(errmsg("cmk_storage: the cluster encryption sweep of the database with OID %u did not finish", db),
				 errdetail("See the worker's error above; the sweep retries.")));
	return ok;
}

/* Every database; true if every per-database worker finished. */
static bool
sweep_relations(void)
{
	bool		all = true;

	List	   *dbs = list_databases();
	ListCell   *lc;
	int64		total = cmk_count_relation_blocks();

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->dbs_total = list_length(dbs);
	cmk_sweep->dbs_done = 0;
	cmk_sweep->blocks_total = total;
	cmk_sweep->blocks_scanned = 0;
	SpinLockRelease(&cmk_sweep->mutex);

	foreach(lc, dbs)
	{
		all &= sweep_database(lfirst_oid(lc), foreach_current_index(lc) == 0);
		SpinLockAcquire(&cmk_sweep->mutex);
		cmk_sweep->dbs_done++;
		SpinLockRelease(&cmk_sweep->mutex);
	}
	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->db = InvalidOid;
	cmk_sweep->relname[0] = '\0';
	SpinLockRelease(&cmk_sweep->mutex);
	list_free(dbs);
	return all;
}

static void
log_plain_file(const char *path, int64 pages, int64 first, void *arg)
{
	int		   *n = arg;

	if ((*n)++ == 0)
	{
		SpinLockAcquire(&cmk_sweep->mutex);
		strlcpy(cmk_sweep->plaintext_file, path, sizeof(cmk_sweep->plaintext_file));
		SpinLockRelease(&cmk_sweep->mutex);
	}
	if (*n <= SWEEP_LOG_FILES)
		ereport(DEBUG1,
				(errmsg_internal("cmk_storage: \"%s\" holds %lld plaintext pages, the first at page %lld",
								 path, (long long) pages, (long long) first)));
}

/* Read everything raw.  True if no plaintext page is left. */
static bool
verify(void)
{
	int			nfiles = 0;
	int64		plain;
	int64		total = cmk_count_relation_blocks();

	cmk_sweep_set_phase(CMK_SWEEP_VERIFYING);
	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->blocks_total = total;
	cmk_sweep->blocks_scanned = 0;
	cmk_sweep->plaintext_file[0] = '\0';
	SpinLockRelease(&cmk_sweep->mutex);

	plain = cmk_verify_cluster(true, log_plain_file, &nfiles);

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->plaintext_pages = plain;
	SpinLockRelease(&cmk_sweep->mutex);
	return plain == 0;
}

static void
wait_seconds(int s, CmkSweepPhase phase)
{
	cmk_sweep_set_phase(phase);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 s * 1000L, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		cmk_sweep_throttle_setup();
	}
}

void
cmk_sweep_main(Datum main_arg)
{
	bool		connected = false;
	int			retry_s = 0;	/* before the next pass */
	MemoryContext cxt;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	if (!cmk_io_active())
		proc_exit(0);			/* cannot happen: registered only when on */
	cmk_sweep_throttle_setup();

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->started = GetCurrentTimestamp();
	cmk_sweep->complete = false;
	SpinLockRelease(&cmk_sweep->mutex);

	cxt = AllocSetContextCreate(TopMemoryContext, "cmk_storage sweep",
								ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);

	for (;;)
	{
		bool		finished;

		MemoryContextReset(cxt);
		SpinLockAcquire(&cmk_sweep->mutex);
		cmk_sweep->pass++;
		SpinLockRelease(&cmk_sweep->mutex);

		if (verify())
			break;

		if (RecoveryInProgress())
		{
			/* a standby rewrites nothing; promotion ends this */
			wait_seconds(SWEEP_RETRY_S, CMK_SWEEP_STANDBY);
			continue;
		}
		if (!connected)
		{
			/* to list the databases; only a primary needs it */
			BackgroundWorkerInitializeConnectionByOid(InvalidOid, InvalidOid, 0);
			connected = true;
		}
		if (retry_s == SWEEP_RETRY_S)
		{
			/* a whole pass left plaintext: something it cannot reach */
			ereport(LOG,
					(errmsg("cmk_storage: %lld plaintext pages are left after a cluster encryption sweep, for example in \"%s\"",
							(long long) cmk_sweep->plaintext_pages,
							cmk_sweep->plaintext_file),
					 errhint("A relation file that no catalog refers to is never rewritten; see cmk_storage.verify_cluster_encryption(). The sweep retries every %d seconds.",
							 SWEEP_RETRY_S)));
		}
		if (retry_s > 0)
			wait_seconds(retry_s, CMK_SWEEP_WAITING);

		cmk_sweep_set_phase(CMK_SWEEP_RELATIONS);
		finished = sweep_relations();

		/* the rewritten buffers reach the disk, encrypted */
		cmk_sweep_set_phase(CMK_SWEEP_CHECKPOINT);
		RequestCheckpoint(CHECKPOINT_IMMEDIATE | CHECKPOINT_FORCE | CHECKPOINT_WAIT);

		cmk_sweep_set_phase(CMK_SWEEP_WAL);
		finished &= cmk_sweep_wal();

		/*
		 * A database whose worker was interrupted (it yields to DDL) or a
		 * WAL segment that changed under the sweep: try again soon.  A
		 * whole pass that still leaves plaintext: something it cannot
		 * reach, look again now and then.
		 */
		retry_s = finished ? SWEEP_RETRY_S : SWEEP_RETRY_SOON_S;
	}

	cmk_sweep_set_phase(CMK_SWEEP_COMPLETE);
	ereport(LOG,
			(errmsg("cmk_storage: cluster encryption is complete: no relation page and no WAL page under the data directory is plaintext")));

	/*
	 * Stay: a worker that exits is not started again after a crash restart,
	 * which resets shared memory and needs a new verification.
	 */
	for (;;)
		wait_seconds(3600, CMK_SWEEP_COMPLETE);
}
