/*-------------------------------------------------------------------------
 *
 * cmkam_write.c
 *		cmk_heap write paths: insert, multi-insert, speculative insert,
 *		update and delete.
 *
 * Each path forms the plaintext tuple (toasting it ourselves), encrypts it
 * and hands the ciphertext tuple to the heap's own function, which does
 * visibility, locking, HOT, WAL and everything else byte for byte.  The
 * caller's slot keeps the plaintext: indexes, triggers, constraints and
 * RETURNING read it; we copy back the TID and the header fields heap stamped
 * (xmin, cmin, ctid) so system columns in RETURNING are right.
 *
 * No path here may pass a plaintext tuple to heap_* functions, and no path
 * may delete TOAST chunks before the heap operation is known to succeed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/tupdesc.h"
#include "access/xlog.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"

#include "am/cmkam.h"

/*
 * Copy of the stored (encrypted) tuple at tid.  Tuple data never changes in
 * place once written, so the copy stays exact while the caller's snapshot
 * keeps the tuple from being pruned.
 */
HeapTuple
cmk_read_cipher_tuple(Relation rel, ItemPointer tid)
{
	Buffer		buf = ReadBuffer(rel, ItemPointerGetBlockNumber(tid));
	Page		page;
	OffsetNumber off = ItemPointerGetOffsetNumber(tid);
	ItemId		lp;
	HeapTupleData tup;
	HeapTuple	copy;

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page) ||
		!ItemIdIsNormal((lp = PageGetItemId(page, off))))
	{
		UnlockReleaseBuffer(buf);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg_internal("no tuple at (%u,%u) in relation \"%s\"",
								 ItemPointerGetBlockNumber(tid), off,
								 RelationGetRelationName(rel))));
	}
	tup.t_data = (HeapTupleHeader) PageGetItem(page, lp);
	tup.t_len = ItemIdGetLength(lp);
	tup.t_self = *tid;
	tup.t_tableOid = RelationGetRelid(rel);
	copy = heap_copytuple(&tup);
	UnlockReleaseBuffer(buf);
	return copy;
}

/*
 * Give the caller's slot what heap_insert/heap_update stamped into our
 * ciphertext tuple, as heap does for its own slot tuple.
 */
static void
stamp_slot(TupleTableSlot *slot, HeapTuple cipher)
{
	HeapTuple	mine = cmk_slot_own_tuple(slot);

	slot->tts_tid = cipher->t_self;
	if (mine != NULL && mine != cipher)
	{
		mine->t_self = cipher->t_self;
		mine->t_tableOid = cipher->t_tableOid;
		mine->t_data->t_choice = cipher->t_data->t_choice;
		mine->t_data->t_ctid = cipher->t_data->t_ctid;
		mine->t_data->t_infomask &= ~HEAP_XACT_MASK;
		mine->t_data->t_infomask |= cipher->t_data->t_infomask & HEAP_XACT_MASK;
		mine->t_data->t_infomask2 &= ~HEAP2_XACT_MASK;
		mine->t_data->t_infomask2 |= cipher->t_data->t_infomask2 & HEAP2_XACT_MASK;
	}
}

static HeapTuple
encrypt_slot(Relation rel, TupleTableSlot *slot, int options,
			 struct CmkToastState **st)
{
	HeapTuple	plain;
	HeapTuple	cipher;

	plain = cmk_form_plain_tuple(rel, slot, NULL, options, st);
	cipher = cmk_encrypt_tuple(rel, plain, NULL, NULL);
	slot->tts_tableOid = RelationGetRelid(rel);
	cipher->t_tableOid = slot->tts_tableOid;
	return cipher;
}

void
cmkam_tuple_insert(Relation rel, TupleTableSlot *slot, CommandId cid,
				   int options, BulkInsertState bistate)
{
	struct CmkToastState *st;
	HeapTuple	cipher = encrypt_slot(rel, slot, options, &st);

	heap_insert(rel, cipher, cid, options, bistate);
	cmk_toast_finish(st, true);
	stamp_slot(slot, cipher);
	heap_freetuple(cipher);
}

void
cmkam_tuple_insert_speculative(Relation rel, TupleTableSlot *slot,
							   CommandId cid, int options,
							   BulkInsertState bistate, uint32 specToken)
{
	struct CmkToastState *st;
	HeapTuple	cipher = encrypt_slot(rel, slot, options, &st);

	HeapTupleHeaderSetSpeculativeToken(cipher->t_data, specToken);
	heap_insert(rel, cipher, cid, options | HEAP_INSERT_SPECULATIVE, bistate);
	cmk_toast_finish(st, true);
	stamp_slot(slot, cipher);
	heap_freetuple(cipher);
}

void
cmkam_tuple_complete_speculative(Relation rel, TupleTableSlot *slot,
								 uint32 specToken, bool succeeded)
{
	if (succeeded)
	{
		heap_finish_speculative(rel, &slot->tts_tid);
		return;
	}

	/* Super-delete: heap only drops TOAST for HEAP_HASEXTERNAL, so we do. */
	{
		HeapTuple	cipher = cmk_read_cipher_tuple(rel, &slot->tts_tid);

		if (cmk_tuple_has_external(cipher))
		{
			HeapTuple	plain = cmk_decrypt_tuple(rel, RelationGetDescr(rel), cipher);

			cmk_toast_delete_tuple(rel, plain, true);
			heap_freetuple(plain);
		}
		heap_freetuple(cipher);
	}
	heap_abort_speculative(rel, &slot->tts_tid);
}

/*
 * heap_multi_insert takes slots, but only ever asks them for their heap tuple
 * (ExecFetchSlotHeapTuple) and stamps tts_tableOid and tts_tid.  A carrier
 * slot answers exactly that for a ciphertext tuple it does not own: the
 * tuples live in the batch's memory context and go with it.  A general heap
 * slot per tuple (store, materialize check, clear, pfree) cost about 170
 * instructions a row of COPY FROM; this costs a few stores.
 *
 * Anything else asked of a carrier slot is a bug and fails loudly.
 */
typedef struct CarrierSlot
{
	TupleTableSlot base;
	HeapTuple	tuple;
} CarrierSlot;

static void
carrier_noop(TupleTableSlot *slot)
{
}

static void
carrier_clear(TupleTableSlot *slot)
{
	((CarrierSlot *) slot)->tuple = NULL;
	slot->tts_flags |= TTS_FLAG_EMPTY;
	ItemPointerSetInvalid(&slot->tts_tid);
}

static HeapTuple
carrier_get_heap_tuple(TupleTableSlot *slot)
{
	Assert(!TTS_EMPTY(slot));
	return ((CarrierSlot *) slot)->tuple;
}

static void carrier_unsupported(void) pg_attribute_noreturn();

static void
carrier_unsupported(void)
{
	elog(ERROR, "cmk_heap: unexpected use of a multi-insert carrier slot");
	pg_unreachable();
}

static void
carrier_getsomeattrs(TupleTableSlot *slot, int natts)
{
	carrier_unsupported();
}

static Datum
carrier_getsysattr(TupleTableSlot *slot, int attnum, bool *isnull)
{
	carrier_unsupported();
}

static void
carrier_copyslot(TupleTableSlot *dst, TupleTableSlot *src)
{
	carrier_unsupported();
}

static HeapTuple
carrier_copy_heap_tuple(TupleTableSlot *slot)
{
	carrier_unsupported();
}

static MinimalTuple
carrier_copy_minimal_tuple(TupleTableSlot *slot)
{
	carrier_unsupported();
}

static const TupleTableSlotOps CarrierSlotOps = {
	.base_slot_size = sizeof(CarrierSlot),
	.init = carrier_noop,
	.release = carrier_noop,
	.clear = carrier_clear,
	.getsomeattrs = carrier_getsomeattrs,
	.getsysattr = carrier_getsysattr,
	.materialize = carrier_noop,	/* the batch context owns the tuple */
	.copyslot = carrier_copyslot,
	.get_heap_tuple = carrier_get_heap_tuple,
	.get_minimal_tuple = NULL,
	.copy_heap_tuple = carrier_copy_heap_tuple,
	.copy_minimal_tuple = carrier_copy_minimal_tuple,
};

static inline void
carrier_store(TupleTableSlot *slot, HeapTuple tuple)
{
	((CarrierSlot *) slot)->tuple = tuple;
	slot->tts_flags &= ~TTS_FLAG_EMPTY;
	slot->tts_nvalid = 0;
}

/* Carrier slots live as long as the backend: COPY pays for them once. */
static TupleTableSlot **carriers = NULL;
static int	n_carriers = 0;

void
cmkam_multi_insert(Relation rel, TupleTableSlot **slots, int nslots,
				   CommandId cid, int options, BulkInsertState bistate)
{
	MemoryContext batch_cxt;
	MemoryContext old;
	struct CmkToastState **states;
	HeapTuple  *plains;
	HeapTuple  *ciphers;

	if (nslots > n_carriers)
	{
		int			n = Max(nslots, 1000);

		old = MemoryContextSwitchTo(TopMemoryContext);
		carriers = carriers ?
			repalloc(carriers, n * sizeof(TupleTableSlot *)) :
			palloc(n * sizeof(TupleTableSlot *));
		for (int i = n_carriers; i < n; i++)
			carriers[i] = MakeTupleTableSlot(NULL, &CarrierSlotOps);
		n_carriers = n;
		MemoryContextSwitchTo(old);
	}

	/*
	 * The batch's ciphertext tuples are allocated one after another and
	 * freed together: a generation context suits that better than an
	 * AllocSet.
	 */
	batch_cxt = GenerationContextCreate(CurrentMemoryContext,
										"cmk_heap multi-insert",
										ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch_cxt);
	states = palloc(nslots * sizeof(struct CmkToastState *));
	plains = palloc(nslots * sizeof(HeapTuple));
	ciphers = palloc(nslots * sizeof(HeapTuple));
	for (int i = 0; i < nslots; i++)
	{
		plains[i] = cmk_form_plain_tuple(rel, slots[i], NULL, options, &states[i]);
		slots[i]->tts_tableOid = RelationGetRelid(rel);
	}
	/* one keystream batch for the whole multi-insert */
	cmk_encrypt_tuples(rel, plains, nslots, ciphers);
	for (int i = 0; i < nslots; i++)
	{
		ciphers[i]->t_tableOid = RelationGetRelid(rel);
		carrier_store(carriers[i], ciphers[i]);
	}
	MemoryContextSwitchTo(old);

	heap_multi_insert(rel, carriers, nslots, cid, options, bistate);

	for (int i = 0; i < nslots; i++)
	{
		slots[i]->tts_tid = carriers[i]->tts_tid;
		ExecClearTuple(carriers[i]);
		cmk_toast_finish(states[i], true);
	}
	MemoryContextDelete(batch_cxt);
}

TM_Result
cmkam_tuple_delete(Relation rel, ItemPointer tid, CommandId cid,
				   Snapshot snapshot, Snapshot crosscheck, bool wait,
				   TM_FailureData *tmfd, bool changingPart)
{
	TM_Result	result;

	/* What a logical decoder needs to decrypt the old key heap logs. */
	if (XLogLogicalInfoActive() && RelationIsLogicallyLogged(rel))
	{
		HeapTuple	old_cipher = cmk_read_cipher_tuple(rel, tid);

		cmk_decode_log_old_tuple(rel, old_cipher, NULL);
		heap_freetuple(old_cipher);
	}

	result = heap_delete(rel, tid, cid, crosscheck, wait, tmfd, changingPart);

	/* heap_delete left the tuple in place with xmax set; drop its TOAST. */
	if (result == TM_Ok && OidIsValid(rel->rd_rel->reltoastrelid))
	{
		HeapTuple	cipher = cmk_read_cipher_tuple(rel, tid);

		if (cmk_tuple_has_external(cipher))
		{
			HeapTuple	plain = cmk_decrypt_tuple(rel, RelationGetDescr(rel), cipher);

			cmk_toast_delete_tuple(rel, plain, false);
			heap_freetuple(plain);
		}
		heap_freetuple(cipher);
	}
	return result;
}

TM_Result
cmkam_tuple_update(Relation rel, ItemPointer otid, TupleTableSlot *slot,
				   CommandId cid, Snapshot snapshot, Snapshot crosscheck,
				   bool wait, TM_FailureData *tmfd, LockTupleMode *lockmode,
				   bool *update_indexes)
{
	HeapTupleData old_cipher_view;
	HeapTupleData old_plain_view;
	HeapTuple	old_cipher;
	HeapTuple	old_plain;
	bool		reused;
	struct CmkToastState *st;
	HeapTuple	plain;
	HeapTuple	cipher;
	TM_Result	result;

	/*
	 * The executor has usually just fetched and decrypted the old version
	 * (to form the new row from it): use that rather than reading and
	 * decrypting it again.
	 */
	reused = cmk_slot_fetched_version(rel, otid, slot, &old_cipher_view,
									  &old_plain_view);
	if (reused)
	{
		old_cipher = &old_cipher_view;
		old_plain = &old_plain_view;
	}
	else
	{
		old_cipher = cmk_read_cipher_tuple(rel, otid);
		old_plain = cmk_decrypt_tuple(rel, RelationGetDescr(rel), old_cipher);
	}

	plain = cmk_form_plain_tuple(rel, slot, old_plain, 0, &st);
	cipher = cmk_encrypt_tuple(rel, plain, old_cipher, old_plain);
	slot->tts_tableOid = RelationGetRelid(rel);
	cipher->t_tableOid = slot->tts_tableOid;

	cmk_decode_log_old_tuple(rel, old_cipher, old_plain);
	result = heap_update(rel, otid, cipher, cid, crosscheck, wait, tmfd, lockmode);

	/* As heapam_tuple_update: the new TID even on failure. */
	ItemPointerCopy(&cipher->t_self, &slot->tts_tid);
	*update_indexes = result == TM_Ok && !HeapTupleIsHeapOnly(cipher);
	cmk_toast_finish(st, result == TM_Ok);
	if (result == TM_Ok)
		stamp_slot(slot, cipher);

	heap_freetuple(cipher);
	if (!reused)
	{
		heap_freetuple(old_plain);
		heap_freetuple(old_cipher);
	}
	return result;
}
