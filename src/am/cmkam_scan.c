/*-------------------------------------------------------------------------
 *
 * cmkam_scan.c
 *		Every cmk_heap read path: sequential, TID-range, index, bitmap,
 *		sample and ANALYZE scans, row fetches, tuple locks and snapshot
 *		checks.
 *
 * Each hands the heap's callback the raw buffer slot inside our slot
 * (cmkam_slot.c); the heap finds the tuple and checks its visibility on the
 * page, and our slot then decrypts lazily what the executor reads.  The
 * original header stays available for system columns.
 *
 * No path may hand the executor a tuple it did not decrypt, and none may
 * pass key-bearing scan keys to the heap (they would compare ciphertext).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "executor/tuptable.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"

#include "am/cmkam.h"

#define HEAP_ROUTINE() GetHeapamTableAmRoutine()

TableScanDesc
cmkam_scan_begin(Relation rel, Snapshot snapshot, int nkeys,
				 struct ScanKeyData *key, ParallelTableScanDesc pscan,
				 uint32 flags)
{
	if (nkeys > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_heap does not support scan keys on relation \"%s\"",
						RelationGetRelationName(rel))));
	return heap_beginscan(rel, snapshot, nkeys, key, pscan, flags);
}

/*
 * The next visible tuple of the page a forward pagemode scan is on, stored
 * in the raw slot, or false if the heap has to take the step (another page,
 * another direction, a slot that no longer holds the scan's tuple).
 *
 * This is the within-page step of heapgettup_pagemode(), for the tuples
 * heapgetpage() already found visible; it spares a sequential scan two
 * calls and the heap's re-dispatch per tuple, which count(*) over a
 * cached table measurably pays.  Page changes, rescans, backward and
 * parallel-block steps all stay with the heap.
 */
static inline bool
next_on_page(HeapScanDesc hscan, ScanDirection direction, TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	BufferHeapTupleTableSlot *raw = (BufferHeapTupleTableSlot *) cs->raw;
	HeapTuple	tuple = &hscan->rs_ctup;
	int			lineindex = hscan->rs_cindex + 1;
	OffsetNumber lineoff;
	Page		page;
	ItemId		lpp;

	if (direction != ForwardScanDirection ||
		!(hscan->rs_base.rs_flags & SO_ALLOW_PAGEMODE) ||
		!hscan->rs_inited ||
		lineindex >= hscan->rs_ntuples ||
		cs->scan != hscan ||
		raw == NULL ||
		TTS_EMPTY(&raw->base.base) ||
		raw->buffer != hscan->rs_cbuf ||
		raw->base.tuple != tuple)
		return false;

	page = BufferGetPage(hscan->rs_cbuf);
	TestForOldSnapshot(hscan->rs_base.rs_snapshot, hscan->rs_base.rs_rd, page);
	lineoff = hscan->rs_vistuples[lineindex];
	lpp = PageGetItemId(page, lineoff);
	Assert(ItemIdIsNormal(lpp));
	tuple->t_data = (HeapTupleHeader) PageGetItem(page, lpp);
	tuple->t_len = ItemIdGetLength(lpp);
	ItemPointerSet(&tuple->t_self, hscan->rs_cblock, lineoff);
	hscan->rs_cindex = lineindex;

	pgstat_count_heap_getnext(hscan->rs_base.rs_rd);
	ExecStoreBufferHeapTuple(tuple, &raw->base.base, hscan->rs_cbuf);
	return true;
}

bool
cmkam_scan_getnextslot(TableScanDesc scan, ScanDirection direction,
					   TupleTableSlot *slot)
{
	HeapScanDesc hscan = (HeapScanDesc) scan;
	BlockNumber before = hscan->rs_cblock;

	if (next_on_page(hscan, direction, slot))
	{
		cmk_slot_adopt_raw(slot, scan->rs_rd, hscan, false);
		return true;
	}
	if (!heap_getnextslot(scan, direction, cmk_slot_raw(slot)))
	{
		ExecClearTuple(slot);
		return false;
	}

	/*
	 * Sequential scans decrypt a page at a time (cmkam_slot.c).  The scan
	 * keeps its current page pinned until rs_cblock changes (heapgetpage,
	 * rescan and the end of the scan all change it), so while it does not,
	 * the stored tuples of the page cannot be pruned or moved.
	 */
	cmk_slot_adopt_raw(slot, scan->rs_rd, hscan, hscan->rs_cblock != before);
	return true;
}

bool
cmkam_scan_getnextslot_tidrange(TableScanDesc scan, ScanDirection direction,
								TupleTableSlot *slot)
{
	if (!heap_getnextslot_tidrange(scan, direction, cmk_slot_raw(slot)))
	{
		ExecClearTuple(slot);
		return false;
	}
	cmk_slot_adopt_raw(slot, scan->rs_rd, NULL, false);
	return true;
}

bool
cmkam_index_fetch_tuple(struct IndexFetchTableData *scan, ItemPointer tid,
						Snapshot snapshot, TupleTableSlot *slot,
						bool *call_again, bool *all_dead)
{
	if (!HEAP_ROUTINE()->index_fetch_tuple(scan, tid, snapshot, cmk_slot_raw(slot),
										   call_again, all_dead))
		return false;
	cmk_slot_adopt_raw(slot, scan->rel, NULL, false);
	return true;
}

bool
cmkam_fetch_row_version(Relation rel, ItemPointer tid, Snapshot snapshot,
						TupleTableSlot *slot)
{
	ExecClearTuple(slot);
	if (!HEAP_ROUTINE()->tuple_fetch_row_version(rel, tid, snapshot, cmk_slot_raw(slot)))
		return false;
	cmk_slot_adopt_raw(slot, rel, NULL, false);
	cmk_slot_note_fetch(slot);
	return true;
}

/*
 * Heap's version locks the slot's buffer, which our decrypted slots do not
 * have; look the tuple up on its page instead.
 */
bool
cmkam_tuple_satisfies_snapshot(Relation rel, TupleTableSlot *slot,
							   Snapshot snapshot)
{
	ItemPointer tid = &slot->tts_tid;
	Buffer		buf;
	Page		page;
	OffsetNumber off = ItemPointerGetOffsetNumber(tid);
	ItemId		lp;
	HeapTupleData tup;
	bool		res = false;

	buf = ReadBuffer(rel, ItemPointerGetBlockNumber(tid));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	if (off >= FirstOffsetNumber && off <= PageGetMaxOffsetNumber(page))
	{
		lp = PageGetItemId(page, off);
		if (ItemIdIsNormal(lp))
		{
			tup.t_data = (HeapTupleHeader) PageGetItem(page, lp);
			tup.t_len = ItemIdGetLength(lp);
			tup.t_self = *tid;
			tup.t_tableOid = RelationGetRelid(rel);
			res = HeapTupleSatisfiesVisibility(&tup, snapshot, buf);
		}
	}
	UnlockReleaseBuffer(buf);
	return res;
}

TM_Result
cmkam_tuple_lock(Relation rel, ItemPointer tid, Snapshot snapshot,
				 TupleTableSlot *slot, CommandId cid, LockTupleMode mode,
				 LockWaitPolicy wait_policy, uint8 flags,
				 TM_FailureData *tmfd)
{
	TM_Result	result;
	ItemPointerData target = *tid;

	/*
	 * tid may point into slot (the apply worker passes &slot->tts_tid), and
	 * clearing the slot invalidates it: lock through a copy, and hand back
	 * the version heap moved it to (TUPLE_LOCK_FLAG_FIND_LAST_VERSION), as
	 * heap does.
	 */
	ExecClearTuple(slot);
	result = HEAP_ROUTINE()->tuple_lock(rel, &target, snapshot, cmk_slot_raw(slot), cid,
										mode, wait_policy, flags, tmfd);
	*tid = target;
	/* heap fills the slot on most results; callers may read it */
	if (!TTS_EMPTY(cmk_slot_raw(slot)))
		cmk_slot_adopt_raw(slot, rel, NULL, false);
	return result;
}

bool
cmkam_scan_analyze_next_tuple(TableScanDesc scan, TransactionId OldestXmin,
							  double *liverows, double *deadrows,
							  TupleTableSlot *slot)
{
	if (!HEAP_ROUTINE()->scan_analyze_next_tuple(scan, OldestXmin, liverows,
												 deadrows, cmk_slot_raw(slot)))
	{
		ExecClearTuple(slot);
		return false;
	}
	cmk_slot_adopt_raw(slot, scan->rs_rd, NULL, false);
	return true;
}

bool
cmkam_scan_bitmap_next_tuple(TableScanDesc scan, struct TBMIterateResult *tbmres,
							 TupleTableSlot *slot)
{
	if (!HEAP_ROUTINE()->scan_bitmap_next_tuple(scan, tbmres, cmk_slot_raw(slot)))
	{
		ExecClearTuple(slot);
		return false;
	}
	cmk_slot_adopt_raw(slot, scan->rs_rd, NULL, false);
	return true;
}

bool
cmkam_scan_sample_next_tuple(TableScanDesc scan, struct SampleScanState *scanstate,
							 TupleTableSlot *slot)
{
	if (!HEAP_ROUTINE()->scan_sample_next_tuple(scan, scanstate, cmk_slot_raw(slot)))
	{
		ExecClearTuple(slot);
		return false;
	}
	cmk_slot_adopt_raw(slot, scan->rs_rd, NULL, false);
	return true;
}
