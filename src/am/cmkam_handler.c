/*-------------------------------------------------------------------------
 *
 * cmkam_handler.c
 *		The cmk_heap table access method routine.
 *
 * cmk_heap is the heap with encrypted tuple contents: every callback that
 * only looks at tuple headers, page layout or relation storage is the
 * heap's own; the ones that read or write attribute data are replaced (see
 * cmkam.h for where each lives).  The TOAST relation of a cmk_heap table is
 * itself cmk_heap, so its chunks are encrypted and decrypted by the same
 * code, and core manages its lifetime.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/tableam.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "am/cmkam.h"

PG_FUNCTION_INFO_V1(cmk_heap_handler);

static TableAmRoutine cmk_routine;
static bool cmk_routine_ready = false;

/*
 * Like heap: a TOAST table when some attribute is toastable and a row could
 * exceed the threshold, here counting our trailer.
 */
static bool
cmkam_relation_needs_toast_table(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int32		data_length = 0;
	bool		maxlength_unknown = false;
	bool		has_toastable = false;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		data_length = att_align_nominal(data_length, att->attalign);
		if (att->attlen > 0)
			data_length += att->attlen;
		else
		{
			int32		maxlen = type_maximum_size(att->atttypid, att->atttypmod);

			if (maxlen < 0)
				maxlength_unknown = true;
			else
				data_length += maxlen;
			if (att->attstorage != TYPSTORAGE_PLAIN)
				has_toastable = true;
		}
	}
	if (!has_toastable)
		return false;
	if (maxlength_unknown)
		return true;
	return MAXALIGN(SizeofHeapTupleHeader + BITMAPLEN(desc->natts)) +
		MAXALIGN(data_length) + CMK_TRAILER_MAX(desc->natts) > TOAST_TUPLE_THRESHOLD;
}

/* Our TOAST tables are cmk_heap too: chunks are encrypted. */
static Oid
cmkam_relation_toast_am(Relation rel)
{
	return rel->rd_rel->relam;
}

static const TupleTableSlotOps *
cmkam_slot_callbacks(Relation rel)
{
	return &TTSOpsCmkHeapTuple;
}

const TableAmRoutine *
cmk_heap_routine(void)
{
	if (!cmk_routine_ready)
	{
		cmk_routine = *GetHeapamTableAmRoutine();

		cmk_routine.slot_callbacks = cmkam_slot_callbacks;
		cmk_routine.scan_begin = cmkam_scan_begin;
		cmk_routine.scan_getnextslot = cmkam_scan_getnextslot;
		cmk_routine.scan_getnextslot_tidrange = cmkam_scan_getnextslot_tidrange;
		cmk_routine.index_fetch_tuple = cmkam_index_fetch_tuple;
		cmk_routine.tuple_fetch_row_version = cmkam_fetch_row_version;
		cmk_routine.tuple_satisfies_snapshot = cmkam_tuple_satisfies_snapshot;

		cmk_routine.tuple_insert = cmkam_tuple_insert;
		cmk_routine.tuple_insert_speculative = cmkam_tuple_insert_speculative;
		cmk_routine.tuple_complete_speculative = cmkam_tuple_complete_speculative;
		cmk_routine.multi_insert = cmkam_multi_insert;
		cmk_routine.tuple_delete = cmkam_tuple_delete;
		cmk_routine.tuple_update = cmkam_tuple_update;
		cmk_routine.tuple_lock = cmkam_tuple_lock;

		cmk_routine.relation_copy_for_cluster = cmkam_relation_copy_for_cluster;
		cmk_routine.index_build_range_scan = cmkam_index_build_range_scan;
		cmk_routine.index_validate_scan = cmkam_index_validate_scan;

		cmk_routine.relation_needs_toast_table = cmkam_relation_needs_toast_table;
		cmk_routine.relation_toast_am = cmkam_relation_toast_am;
		cmk_routine.relation_fetch_toast_slice = cmk_fetch_toast_slice;

		cmk_routine.scan_analyze_next_tuple = cmkam_scan_analyze_next_tuple;
		cmk_routine.scan_bitmap_next_tuple = cmkam_scan_bitmap_next_tuple;
		cmk_routine.scan_sample_next_tuple = cmkam_scan_sample_next_tuple;

		cmk_routine_ready = true;
	}
	return &cmk_routine;
}

bool
cmk_is_cmk_relation(Relation rel)
{
	return rel->rd_tableam == cmk_heap_routine();
}

Datum
cmk_heap_handler(PG_FUNCTION_ARGS)
{
	PG_RETURN_POINTER(cmk_heap_routine());
}
