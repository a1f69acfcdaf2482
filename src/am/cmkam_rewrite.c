/*-------------------------------------------------------------------------
 *
 * cmkam_rewrite.c
 *		CLUSTER, VACUUM FULL and REFRESH MATERIALIZED VIEW rewrites of a
 *		cmk_heap table.
 *
 * Heap's relation_copy_for_cluster needs the slot's buffer for the
 * liveness test, sorts on raw (for us, encrypted) values and rebuilds tuples
 * with heap_form_tuple, which would drop our trailer.  Here every surviving
 * tuple is decrypted, its dropped columns emptied, re-toasted into the new
 * TOAST table and encrypted afresh (new nonces), then handed to the heap's
 * rewrite module, which keeps update chains and freezes as heap does.
 *
 * CLUSTER always reads in index order, never through a sort: a sort would
 * spill decrypted tuples to temporary files in clear.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/rewriteheap.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"

#include "am/cmkam.h"

/* The page version of the tuple a decrypting scan just returned. */
static HeapTuple
page_tuple(Relation rel, Buffer buf, ItemPointer tid, HeapTuple tup)
{
	Page		page = BufferGetPage(buf);
	ItemId		lp = PageGetItemId(page, ItemPointerGetOffsetNumber(tid));

	tup->t_data = (HeapTupleHeader) PageGetItem(page, lp);
	tup->t_len = ItemIdGetLength(lp);
	tup->t_self = *tid;
	tup->t_tableOid = RelationGetRelid(rel);
	return tup;
}

void
cmkam_relation_copy_for_cluster(Relation OldHeap, Relation NewHeap,
								Relation OldIndex, bool use_sort,
								TransactionId OldestXmin,
								TransactionId *xid_cutoff,
								MultiXactId *multi_cutoff,
								double *num_tuples, double *tups_vacuumed,
								double *tups_recently_dead)
{
	bool		is_system_catalog = IsSystemRelation(OldHeap);
	RewriteState rwstate;
	IndexScanDesc indexScan = NULL;
	TableScanDesc tableScan = NULL;
	HeapScanDesc heapScan = NULL;
	TupleTableSlot *slot;
	TupleTableSlot *vslot;
	MemoryContext tuple_cxt;
	BlockNumber prev_cblock = InvalidBlockNumber;

	rwstate = begin_heap_rewrite(OldHeap, NewHeap, OldestXmin, *xid_cutoff,
								 *multi_cutoff);

	if (OldIndex != NULL)
	{
		pgstat_progress_update_param(PROGRESS_CLUSTER_PHASE,
									 PROGRESS_CLUSTER_PHASE_INDEX_SCAN_HEAP);
		pgstat_progress_update_param(PROGRESS_CLUSTER_INDEX_RELID,
									 RelationGetRelid(OldIndex));
		indexScan = index_beginscan(OldHeap, OldIndex, SnapshotAny, 0, 0);
		index_rescan(indexScan, NULL, 0, NULL, 0);
	}
	else
	{
		pgstat_progress_update_param(PROGRESS_CLUSTER_PHASE,
									 PROGRESS_CLUSTER_PHASE_SEQ_SCAN_HEAP);
		tableScan = table_beginscan(OldHeap, SnapshotAny, 0, NULL);
		heapScan = (HeapScanDesc) tableScan;
		pgstat_progress_update_param(PROGRESS_CLUSTER_TOTAL_HEAP_BLKS,
									 heapScan->rs_nblocks);
	}

	slot = table_slot_create(OldHeap, NULL);
	vslot = MakeSingleTupleTableSlot(RelationGetDescr(NewHeap), &TTSOpsVirtual);
	tuple_cxt = AllocSetContextCreate(CurrentMemoryContext, "cmk_heap rewrite tuple",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		Buffer		buf;
		HeapTupleData raw;
		HeapTuple	plain;
		HeapTuple	cipher;
		bool		isdead;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();

		/* Our scans return decrypted tuples; their buffer stays pinned. */
		if (indexScan != NULL)
		{
			if (!index_getnext_slot(indexScan, ForwardScanDirection, slot))
				break;
			if (indexScan->xs_recheck)
				elog(ERROR, "CLUSTER does not support lossy index conditions");
			buf = ((IndexFetchHeapData *) indexScan->xs_heapfetch)->xs_cbuf;
		}
		else
		{
			if (!table_scan_getnextslot(tableScan, ForwardScanDirection, slot))
			{
				pgstat_progress_update_param(PROGRESS_CLUSTER_HEAP_BLKS_SCANNED,
											 heapScan->rs_nblocks);
				break;
			}
			buf = heapScan->rs_cbuf;
			if (prev_cblock != heapScan->rs_cblock)
			{
				pgstat_progress_update_param(PROGRESS_CLUSTER_HEAP_BLKS_SCANNED,
											 (heapScan->rs_cblock + heapScan->rs_nblocks -
											  heapScan->rs_startblock) % heapScan->rs_nblocks + 1);
				prev_cblock = heapScan->rs_cblock;
			}
		}

		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page_tuple(OldHeap, buf, &slot->tts_tid, &raw);
		switch (HeapTupleSatisfiesVacuum(&raw, OldestXmin, buf))
		{
			case HEAPTUPLE_DEAD:
				isdead = true;
				break;
			case HEAPTUPLE_RECENTLY_DEAD:
				*tups_recently_dead += 1;
				/* FALLTHROUGH */
			case HEAPTUPLE_LIVE:
				isdead = false;
				break;
			case HEAPTUPLE_INSERT_IN_PROGRESS:
				if (!is_system_catalog &&
					!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(raw.t_data)))
					elog(WARNING, "concurrent insert in progress within table \"%s\"",
						 RelationGetRelationName(OldHeap));
				isdead = false;
				break;
			case HEAPTUPLE_DELETE_IN_PROGRESS:
				if (!is_system_catalog &&
					!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetUpdateXid(raw.t_data)))
					elog(WARNING, "concurrent delete in progress within table \"%s\"",
						 RelationGetRelationName(OldHeap));
				*tups_recently_dead += 1;
				isdead = false;
				break;
			default:
				elog(ERROR, "unexpected HeapTupleSatisfiesVacuum result");
				isdead = false;
		}
		LockBuffer(buf, BUFFER_LOCK_UNLOCK);

		if (isdead)
		{
			*tups_vacuumed += 1;
			if (rewrite_heap_dead_tuple(rwstate, &raw))
			{
				*tups_vacuumed += 1;
				*tups_recently_dead -= 1;
			}
			continue;
		}

		*num_tuples += 1;
		old = MemoryContextSwitchTo(tuple_cxt);
		plain = ExecFetchSlotHeapTuple(slot, false, NULL);
		cipher = cmk_prepare_tuple_for_rewrite(OldHeap, NewHeap, plain, vslot);
		rewrite_heap_tuple(rwstate, &raw, cipher);
		ExecClearTuple(vslot);
		MemoryContextSwitchTo(old);
		MemoryContextReset(tuple_cxt);

		pgstat_progress_update_param(PROGRESS_CLUSTER_HEAP_TUPLES_SCANNED, *num_tuples);
		pgstat_progress_update_param(PROGRESS_CLUSTER_HEAP_TUPLES_WRITTEN, *num_tuples);
	}

	if (indexScan != NULL)
		index_endscan(indexScan);
	if (tableScan != NULL)
		table_endscan(tableScan);
	ExecDropSingleTupleTableSlot(slot);
	ExecDropSingleTupleTableSlot(vslot);
	MemoryContextDelete(tuple_cxt);

	end_heap_rewrite(rwstate);
}
