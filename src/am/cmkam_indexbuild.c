/*-------------------------------------------------------------------------
 *
 * cmkam_indexbuild.c
 *		Index build and CREATE INDEX CONCURRENTLY validation scans for
 *		cmk_heap.
 *
 * Heap's versions call heap_getnext (which refuses any other access method)
 * and form index values from the raw tuple, which for us is ciphertext.
 * These follow the heap's logic (HeapTupleSatisfiesVacuum with SnapshotAny,
 * HOT chains indexed under their root TID, waits for in-progress
 * transactions when uniqueness is checked, parallel scans, progress
 * reporting) but visit tuples through heap_getnextslot and evaluate index
 * expressions and predicates on the decrypted tuple.
 *
 * Index values are computed from plaintext and so are stored in clear in
 * the index: a documented limit of a table-AM design (docs/design.md).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/procarray.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/tuplesort.h"

#include "am/cmkam.h"

/* Blocks a (possibly parallel) scan has handed out, for progress reports. */
static BlockNumber
blocks_done(HeapScanDesc hscan)
{
	ParallelBlockTableScanDesc bpscan = NULL;
	BlockNumber startblock;
	BlockNumber nblocks;

	if (hscan->rs_base.rs_parallel != NULL)
	{
		bpscan = (ParallelBlockTableScanDesc) hscan->rs_base.rs_parallel;
		startblock = bpscan->phs_startblock;
		nblocks = bpscan->phs_nblocks;
	}
	else
	{
		startblock = hscan->rs_startblock;
		nblocks = hscan->rs_nblocks;
	}
	if (hscan->rs_cblock > startblock)
		return hscan->rs_cblock - startblock;
	return hscan->rs_cblock + nblocks - startblock;
}

static BlockNumber
total_blocks(HeapScanDesc hscan)
{
	if (hscan->rs_base.rs_parallel != NULL)
		return ((ParallelBlockTableScanDesc) hscan->rs_base.rs_parallel)->phs_nblocks;
	return hscan->rs_nblocks;
}

/*
 * Wait for the transaction that is inserting or deleting tuple to end; the
 * caller looks at the tuple again.  Called and returns with the buffer
 * share-locked.
 */
static void
wait_for(Relation heapRelation, HeapScanDesc hscan, HeapTuple tuple,
		 TransactionId xwait)
{
	LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_UNLOCK);
	XactLockTableWait(xwait, heapRelation, &tuple->t_self, XLTW_InsertIndexUnique);
	CHECK_FOR_INTERRUPTS();
	LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_SHARE);
}

/*
 * Decide, as heapam_index_build_range_scan does, whether a tuple seen with
 * SnapshotAny is to be indexed and whether it counts as alive.  Returns
 * false when the caller must look at the tuple again (we waited for a
 * transaction).  Called and returns with the buffer share-locked.
 */
static bool
judge_tuple(Relation heapRelation, HeapScanDesc hscan, HeapTuple tuple,
			TransactionId OldestXmin, IndexInfo *indexInfo, bool anyvisible,
			bool checking_uniqueness, double *reltuples,
			bool *indexIt, bool *tupleIsAlive)
{
	bool		is_system_catalog = IsSystemRelation(heapRelation);
	TransactionId xwait;

	switch (HeapTupleSatisfiesVacuum(tuple, OldestXmin, hscan->rs_cbuf))
	{
		case HEAPTUPLE_DEAD:
			*indexIt = *tupleIsAlive = false;
			break;
		case HEAPTUPLE_LIVE:
			*indexIt = *tupleIsAlive = true;
			*reltuples += 1;
			break;
		case HEAPTUPLE_RECENTLY_DEAD:
			/* Index it for old snapshots, unless a HOT chain continues. */
			if (HeapTupleIsHotUpdated(tuple))
			{
				*indexIt = false;
				indexInfo->ii_BrokenHotChain = true;
			}
			else
				*indexIt = true;
			*tupleIsAlive = false;
			break;
		case HEAPTUPLE_INSERT_IN_PROGRESS:
			if (anyvisible)
			{
				*indexIt = *tupleIsAlive = true;
				*reltuples += 1;
				break;
			}
			xwait = HeapTupleHeaderGetXmin(tuple->t_data);
			if (!TransactionIdIsCurrentTransactionId(xwait))
			{
				if (!is_system_catalog)
					elog(WARNING, "concurrent insert in progress within table \"%s\"",
						 RelationGetRelationName(heapRelation));
				if (checking_uniqueness)
				{
					wait_for(heapRelation, hscan, tuple, xwait);
					return false;
				}
			}
			else
				*reltuples += 1;
			*indexIt = *tupleIsAlive = true;
			break;
		case HEAPTUPLE_DELETE_IN_PROGRESS:
			if (anyvisible)
			{
				*indexIt = true;
				*tupleIsAlive = false;
				*reltuples += 1;
				break;
			}
			xwait = HeapTupleHeaderGetUpdateXid(tuple->t_data);
			if (!TransactionIdIsCurrentTransactionId(xwait))
			{
				if (!is_system_catalog)
					elog(WARNING, "concurrent delete in progress within table \"%s\"",
						 RelationGetRelationName(heapRelation));
				if (checking_uniqueness || HeapTupleIsHotUpdated(tuple))
				{
					wait_for(heapRelation, hscan, tuple, xwait);
					return false;
				}
				*indexIt = true;
				*reltuples += 1;
			}
			else if (HeapTupleIsHotUpdated(tuple))
			{
				*indexIt = false;
				indexInfo->ii_BrokenHotChain = true;
			}
			else
				*indexIt = true;
			*tupleIsAlive = false;
			break;
		default:
			elog(ERROR, "unexpected HeapTupleSatisfiesVacuum result");
	}
	return true;
}

double
cmkam_index_build_range_scan(Relation heapRelation, Relation indexRelation,
							 IndexInfo *indexInfo, bool allow_sync,
							 bool anyvisible, bool progress,
							 BlockNumber start_blockno, BlockNumber numblocks,
							 IndexBuildCallback callback, void *callback_state,
							 TableScanDesc scan)
{
	bool		checking_uniqueness = (indexInfo->ii_Unique ||
									   indexInfo->ii_ExclusionOps != NULL);
	EState	   *estate = CreateExecutorState();
	ExprContext *econtext = GetPerTupleExprContext(estate);
	/*
	 * Index values come from our lazily decrypting slot: an index on aid
	 * decrypts aid, not the whole row.  The heap fills its raw slot.
	 */
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(heapRelation),
													&TTSOpsCmkHeapTuple);
	TupleTableSlot *raw = cmk_slot_raw(slot);
	ExprState  *predicate;
	Snapshot	snapshot;
	bool		need_unregister_snapshot = false;
	TransactionId OldestXmin = InvalidTransactionId;
	HeapScanDesc hscan;
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	double		reltuples = 0;
	BlockNumber previous_blkno = InvalidBlockNumber;
	BlockNumber root_blkno = InvalidBlockNumber;
	OffsetNumber root_offsets[MaxHeapTuplesPerPage];

	Assert(!(anyvisible && checking_uniqueness));

	econtext->ecxt_scantuple = slot;
	predicate = ExecPrepareQual(indexInfo->ii_Predicate, estate);

	/*
	 * A normal build sees every tuple (SnapshotAny) and judges liveness
	 * itself, since RECENTLY_DEAD tuples must be indexed; a concurrent build
	 * indexes what an MVCC snapshot sees.
	 */
	if (!IsBootstrapProcessingMode() && !indexInfo->ii_Concurrent)
		OldestXmin = GetOldestNonRemovableTransactionId(heapRelation);

	if (!scan)
	{
		if (!TransactionIdIsValid(OldestXmin))
		{
			snapshot = RegisterSnapshot(GetTransactionSnapshot());
			need_unregister_snapshot = true;
		}
		else
			snapshot = SnapshotAny;
		scan = table_beginscan_strat(heapRelation, snapshot, 0, NULL,
									 true, allow_sync);
	}
	else
		snapshot = scan->rs_snapshot;
	hscan = (HeapScanDesc) scan;

	if (progress)
		pgstat_progress_update_param(PROGRESS_SCAN_BLOCKS_TOTAL, total_blocks(hscan));

	if (!allow_sync)
		heap_setscanlimits(scan, start_blockno, numblocks);

	while (heap_getnextslot(scan, ForwardScanDirection, raw))
	{
		HeapTuple	tuple = ((BufferHeapTupleTableSlot *) raw)->base.tuple;
		bool		tupleIsAlive;
		ItemPointerData tid;

		CHECK_FOR_INTERRUPTS();
		cmk_slot_adopt_raw(slot, heapRelation, NULL, false);

		if (progress)
		{
			BlockNumber done = blocks_done(hscan);

			if (done != previous_blkno)
			{
				pgstat_progress_update_param(PROGRESS_SCAN_BLOCKS_DONE, done);
				previous_blkno = done;
			}
		}

		/* HOT chains are indexed under their root's TID. */
		if (hscan->rs_cblock != root_blkno)
		{
			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_SHARE);
			heap_get_root_tuples(BufferGetPage(hscan->rs_cbuf), root_offsets);
			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_UNLOCK);
			root_blkno = hscan->rs_cblock;
		}

		if (snapshot == SnapshotAny)
		{
			bool		indexIt = false;

			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_SHARE);
			while (!judge_tuple(heapRelation, hscan, tuple, OldestXmin, indexInfo,
								anyvisible, checking_uniqueness, &reltuples,
								&indexIt, &tupleIsAlive))
				;
			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_UNLOCK);
			if (!indexIt)
				continue;
		}
		else
		{
			tupleIsAlive = true;
			reltuples += 1;
		}

		MemoryContextReset(econtext->ecxt_per_tuple_memory);
		if (predicate != NULL && !ExecQual(predicate, econtext))
			continue;
		FormIndexDatum(indexInfo, slot, estate, values, isnull);

		tid = tuple->t_self;
		if (HeapTupleIsHeapOnly(tuple))
		{
			OffsetNumber offnum = ItemPointerGetOffsetNumber(&tuple->t_self);

			/* A HOT tuple whose root we have not seen: map the page again. */
			if (root_offsets[offnum - 1] == InvalidOffsetNumber)
			{
				LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_SHARE);
				heap_get_root_tuples(BufferGetPage(hscan->rs_cbuf), root_offsets);
				LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_UNLOCK);
			}
			if (!OffsetNumberIsValid(root_offsets[offnum - 1]))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg_internal("failed to find parent tuple for heap-only tuple at (%u,%u) in table \"%s\"",
										 ItemPointerGetBlockNumber(&tuple->t_self),
										 offnum, RelationGetRelationName(heapRelation))));
			ItemPointerSetOffsetNumber(&tid, root_offsets[offnum - 1]);
		}
		callback(indexRelation, &tid, values, isnull, tupleIsAlive, callback_state);
	}

	if (progress)
		pgstat_progress_update_param(PROGRESS_SCAN_BLOCKS_DONE, total_blocks(hscan));

	table_endscan(scan);
	if (need_unregister_snapshot)
		UnregisterSnapshot(snapshot);
	ExecDropSingleTupleTableSlot(slot);
	FreeExecutorState(estate);
	indexInfo->ii_ExpressionsState = NIL;
	indexInfo->ii_PredicateState = NULL;
	return reltuples;
}

/*
 * CREATE INDEX CONCURRENTLY, phase 3: insert every tuple visible to the
 * snapshot whose root TID the index (sorted into state->tuplesort) lacks.
 */
void
cmkam_index_validate_scan(Relation heapRelation, Relation indexRelation,
						  IndexInfo *indexInfo, Snapshot snapshot,
						  ValidateIndexState *state)
{
	EState	   *estate = CreateExecutorState();
	ExprContext *econtext = GetPerTupleExprContext(estate);
	TupleTableSlot *slot = table_slot_create(heapRelation, NULL);
	ExprState  *predicate;
	TableScanDesc scan;
	HeapScanDesc hscan;
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	BlockNumber root_blkno = InvalidBlockNumber;
	BlockNumber previous_blkno = InvalidBlockNumber;
	OffsetNumber root_offsets[MaxHeapTuplesPerPage];
	bool		in_index[MaxHeapTuplesPerPage];
	ItemPointer indexcursor = NULL;
	ItemPointerData decoded;
	bool		tuplesort_empty = false;

	econtext->ecxt_scantuple = slot;
	predicate = ExecPrepareQual(indexInfo->ii_Predicate, estate);

	/* Block order must match the sorted TIDs: no syncscan. */
	scan = table_beginscan_strat(heapRelation, snapshot, 0, NULL, true, false);
	hscan = (HeapScanDesc) scan;
	pgstat_progress_update_param(PROGRESS_SCAN_BLOCKS_TOTAL, hscan->rs_nblocks);

	/*
	 * Our own getnextslot: the slot decrypts lazily what the predicate and
	 * the index read; the stored header (heap-only or not) is its raw tuple.
	 */
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		HeapTuple	tuple = ((BufferHeapTupleTableSlot *) cmk_slot_raw(slot))->base.tuple;
		ItemPointerData rootTuple = slot->tts_tid;
		OffsetNumber root_offnum = ItemPointerGetOffsetNumber(&rootTuple);

		CHECK_FOR_INTERRUPTS();
		state->htups += 1;

		if (hscan->rs_cblock != previous_blkno)
		{
			pgstat_progress_update_param(PROGRESS_SCAN_BLOCKS_DONE, hscan->rs_cblock);
			previous_blkno = hscan->rs_cblock;
		}
		if (hscan->rs_cblock != root_blkno)
		{
			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_SHARE);
			heap_get_root_tuples(BufferGetPage(hscan->rs_cbuf), root_offsets);
			LockBuffer(hscan->rs_cbuf, BUFFER_LOCK_UNLOCK);
			memset(in_index, 0, sizeof(in_index));
			root_blkno = hscan->rs_cblock;
		}

		if (HeapTupleIsHeapOnly(tuple))
		{
			root_offnum = root_offsets[root_offnum - 1];
			if (!OffsetNumberIsValid(root_offnum))
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg_internal("failed to find parent tuple for heap-only tuple at (%u,%u) in table \"%s\"",
										 ItemPointerGetBlockNumber(&slot->tts_tid),
										 ItemPointerGetOffsetNumber(&slot->tts_tid),
										 RelationGetRelationName(heapRelation))));
			ItemPointerSetOffsetNumber(&rootTuple, root_offnum);
		}

		/* Advance the sorted index TIDs up to this root. */
		while (!tuplesort_empty &&
			   (!indexcursor || ItemPointerCompare(indexcursor, &rootTuple) < 0))
		{
			Datum		ts_val;
			bool		ts_isnull;

			if (indexcursor && ItemPointerGetBlockNumber(indexcursor) == root_blkno)
				in_index[ItemPointerGetOffsetNumber(indexcursor) - 1] = true;
			tuplesort_empty = !tuplesort_getdatum(state->tuplesort, true,
												  &ts_val, &ts_isnull, NULL);
			if (!tuplesort_empty)
			{
				itemptr_decode(&decoded, DatumGetInt64(ts_val));
				indexcursor = &decoded;
#ifndef USE_FLOAT8_BYVAL
				pfree(DatumGetPointer(ts_val));
#endif
			}
			else
				indexcursor = NULL;
		}

		if ((tuplesort_empty || ItemPointerCompare(indexcursor, &rootTuple) > 0) &&
			!in_index[root_offnum - 1])
		{
			MemoryContextReset(econtext->ecxt_per_tuple_memory);
			if (predicate != NULL && !ExecQual(predicate, econtext))
				continue;
			FormIndexDatum(indexInfo, slot, estate, values, isnull);
			index_insert(indexRelation, values, isnull, &rootTuple, heapRelation,
						 indexInfo->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
						 false, indexInfo);
			state->tups_inserted += 1;
		}
	}

	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	FreeExecutorState(estate);
	indexInfo->ii_ExpressionsState = NIL;
	indexInfo->ii_PredicateState = NULL;
}
