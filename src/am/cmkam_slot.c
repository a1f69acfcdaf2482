/*-------------------------------------------------------------------------
 *
 * cmkam_slot.c
 *		The tuple slot of cmk_heap: decrypts lazily, only the attributes a
 *		query asks for.
 *
 * A cmk_heap slot wraps an ordinary buffer-heap slot ("raw") that the
 * heap's own callbacks fill with the stored (encrypted) tuple, pinned in
 * shared buffers.  Nothing is decrypted until the executor deforms: then the
 * tuple's header and data are copied to a per-slot buffer and the attributes
 * up to the one requested are decrypted there with one cipher call, so
 * count(*) decrypts nothing and sum(col3) never touches col4.  Whole-tuple
 * requests (materialize, copies, system columns of a virtual tuple) get a
 * fully decrypted copy.
 *
 * The slot must never hand out a pointer into the encrypted page tuple as a
 * datum, and never keep a decrypted copy beyond clear/release.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"

#include "am/cmkam.h"
#include "keys/key_store.h"

/*
 * Page cache of a sequential scan: the visible tuples of the current page,
 * copied and decrypted (attribute prefix) together, one cipher call for all.
 */
typedef struct CmkPageCache
{
	HeapScanDesc scan;
	Buffer		buffer;
	BlockNumber block;
	int			natts;			/* prefix decrypted for every entry */
	int			njobs;
	CmkPrefixJob jobs[MaxHeapTuplesPerPage];
	int16		index[MaxHeapTuplesPerPage + 1];	/* offnum -> job + 1 */
	char		area[2 * BLCKSZ];
} CmkPageCache;

typedef struct CmkTupleTableSlot
{
	TupleTableSlot base;
	TupleTableSlot *raw;		/* heap buffer slot holding the stored tuple */
	Relation	rel;			/* relation of the raw tuple */
	HeapScanDesc scan;			/* pagemode scan it came from, or NULL */
	HeapTuple	mat;			/* owned, fully decrypted (or formed) tuple */
	/* lazy state for the raw tuple */
	bool		prepared;
	CmkTrailer	trailer;
	HeapTupleHeader td;			/* plaintext copy being deformed */
	int			ndec;			/* attributes of td already decrypted */
	CmkPrefixJob *job;			/* page-cache entry td belongs to, if any */
	HeapTupleHeader plain;		/* own copy buffer (not page cached) */
	Size		bufsize;
	uint32		off;			/* deform position in td */
	CmkPageCache *pc;			/* allocated on first use */
} CmkTupleTableSlot;

static inline HeapTuple
raw_tuple(CmkTupleTableSlot *cs)
{
	return ((BufferHeapTupleTableSlot *) cs->raw)->base.tuple;
}

static inline bool
has_raw(CmkTupleTableSlot *cs)
{
	return cs->raw != NULL && !TTS_EMPTY(cs->raw);
}

static void
cmk_slot_init(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	MemoryContext old = MemoryContextSwitchTo(slot->tts_mcxt);

	cs->raw = MakeTupleTableSlot(slot->tts_tupleDescriptor, &TTSOpsBufferHeapTuple);
	cs->rel = NULL;
	cs->mat = NULL;
	cs->prepared = false;
	cs->plain = NULL;
	cs->bufsize = 0;
	cs->off = 0;
	cs->scan = NULL;
	cs->td = NULL;
	cs->job = NULL;
	cs->pc = NULL;
	MemoryContextSwitchTo(old);
}

static void
cmk_slot_clear(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (TTS_SHOULDFREE(slot) && cs->mat)
	{
		heap_freetuple(cs->mat);
		slot->tts_flags &= ~TTS_FLAG_SHOULDFREE;
	}
	cs->mat = NULL;
	if (cs->raw)
		ExecClearTuple(cs->raw);
	cs->rel = NULL;
	cs->scan = NULL;
	cs->prepared = false;
	cs->off = 0;
	slot->tts_nvalid = 0;
	slot->tts_flags |= TTS_FLAG_EMPTY;
	ItemPointerSetInvalid(&slot->tts_tid);
}

static void
cmk_slot_release(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (cs->raw)
	{
		ExecDropSingleTupleTableSlot(cs->raw);
		cs->raw = NULL;
	}
	if (cs->plain)
	{
		explicit_bzero(cs->plain, cs->bufsize);
		pfree(cs->plain);
		cs->plain = NULL;
	}
	if (cs->pc)
	{
		explicit_bzero(cs->pc->area, sizeof(cs->pc->area));
		pfree(cs->pc);
		cs->pc = NULL;
	}
}

/* Copy header and data of the raw tuple, ready for lazy decryption. */
static void
prepare_raw(CmkTupleTableSlot *cs)
{
	HeapTuple	tup = raw_tuple(cs);
	uint32		tag;

	(void) cmk_tuple_keystream(RelationGetRelationName(cs->rel), &tag);
	cmk_parse_trailer(cs->rel, tup, tag, &cs->trailer);
	if (cs->bufsize < (Size) cs->trailer.data_end)
	{
		if (cs->plain)
		{
			explicit_bzero(cs->plain, cs->bufsize);
			pfree(cs->plain);
		}
		cs->bufsize = Max(MAXALIGN(cs->trailer.data_end), 256);
		cs->plain = MemoryContextAlloc(cs->base.tts_mcxt, cs->bufsize);
	}
	memcpy(cs->plain, tup->t_data, cs->trailer.data_end);
	cs->td = cs->plain;
	cs->ndec = 0;
	cs->job = NULL;
	cs->off = 0;
	cs->prepared = true;
}

/*
 * Sequential scans: decrypt the wanted attribute prefix of every visible
 * tuple on the page at once and serve this and the following tuples from
 * there.  An entry is used only if the stored tuple at that offset still
 * has the same length and trailer (a pruned and reused line pointer holds
 * another tuple, whose nonces differ).
 */
static bool
cache_entry_valid(CmkPageCache *pc, int idx, HeapTuple tup)
{
	CmkPrefixJob *j = &pc->jobs[idx];

	return j->src_len == tup->t_len &&
		memcmp(j->trailer_copy, (char *) tup->t_data + j->t.data_end,
			   tup->t_len - j->t.data_end) == 0;
}

static bool
prepare_from_page(CmkTupleTableSlot *cs, int natts)
{
	HeapScanDesc scan = cs->scan;
	Buffer		buf = ((BufferHeapTupleTableSlot *) cs->raw)->buffer;
	HeapTuple	tup = raw_tuple(cs);
	BlockNumber blk = ItemPointerGetBlockNumber(&tup->t_self);
	OffsetNumber offnum = ItemPointerGetOffsetNumber(&tup->t_self);
	CmkPageCache *pc = cs->pc;
	CmkPrefixJob *job;
	int			idx;

	if (scan == NULL || !(scan->rs_base.rs_flags & SO_ALLOW_PAGEMODE) ||
		scan->rs_cbuf != buf || !BufferIsValid(buf) || scan->rs_ntuples <= 1)
		return false;
	if (pc == NULL)
		pc = cs->pc = MemoryContextAllocZero(cs->base.tts_mcxt, sizeof(CmkPageCache));

	idx = (pc->scan == scan && pc->buffer == buf && pc->block == blk &&
		   pc->natts >= natts) ? pc->index[offnum] - 1 : -1;
	if (idx < 0 || !cache_entry_valid(pc, idx, tup))
	{
		Page		page = BufferGetPage(buf);
		uint32		tag;

		(void) cmk_tuple_keystream(RelationGetRelationName(cs->rel), &tag);
		memset(pc->index, 0, sizeof(pc->index));
		pc->njobs = 0;
		pc->scan = NULL;
		for (int i = 0; i < scan->rs_ntuples; i++)
		{
			OffsetNumber o = scan->rs_vistuples[i];
			ItemId		lp = PageGetItemId(page, o);
			HeapTupleData t;
			CmkPrefixJob *j = &pc->jobs[pc->njobs];

			t.t_data = (HeapTupleHeader) PageGetItem(page, lp);
			t.t_len = ItemIdGetLength(lp);
			ItemPointerSet(&t.t_self, blk, o);
			t.t_tableOid = RelationGetRelid(cs->rel);
			cmk_parse_trailer(cs->rel, &t, tag, &j->t);
			j->src = t.t_data;
			j->src_len = t.t_len;
			pc->index[o] = ++pc->njobs;
		}
		if (!cmk_decrypt_prefixes(cs->rel, cs->base.tts_tupleDescriptor, pc->jobs,
								  pc->njobs, natts, pc->area, sizeof(pc->area)))
			return false;
		pc->scan = scan;
		pc->buffer = buf;
		pc->block = blk;
		pc->natts = natts;
		idx = pc->index[offnum] - 1;
		if (idx < 0 || !cache_entry_valid(pc, idx, tup))
			return false;
	}
	job = &pc->jobs[idx];
	cs->trailer = job->t;
	cs->td = job->td;
	cs->ndec = job->ndec;
	cs->job = job;
	cs->off = 0;
	cs->prepared = true;
	return true;
}

/*
 * Deform attributes [nvalid, to) of a plaintext tuple header the heap way,
 * continuing from the slot's saved position.
 */
static void
deform_plain(TupleTableSlot *slot, HeapTupleHeader td, int to)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	TupleDesc	desc = slot->tts_tupleDescriptor;
	bool		hasnulls = (td->t_infomask & HEAP_HASNULL) != 0;
	char	   *tp = (char *) td + td->t_hoff;
	int			attnum = slot->tts_nvalid;
	uint32		off = attnum == 0 ? 0 : cs->off;
	bool		slow = attnum == 0 ? false : TTS_SLOW(slot);

	for (; attnum < to; attnum++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, attnum);

		if (hasnulls && att_isnull(attnum, td->t_bits))
		{
			slot->tts_values[attnum] = (Datum) 0;
			slot->tts_isnull[attnum] = true;
			slow = true;
			continue;
		}
		slot->tts_isnull[attnum] = false;
		off = cmk_attr_offset(att, off, &slow, tp);
		slot->tts_values[attnum] = fetchatt(att, tp + off);
		off = att_addlength_pointer(off, att->attlen, tp + off);
		if (att->attlen <= 0)
			slow = true;
	}
	cs->off = off;
	if (slow)
		slot->tts_flags |= TTS_FLAG_SLOW;
	else
		slot->tts_flags &= ~TTS_FLAG_SLOW;
	slot->tts_nvalid = Max(slot->tts_nvalid, to);
}

static void
cmk_slot_getsomeattrs(TupleTableSlot *slot, int natts)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	int			tupnatts;

	Assert(!TTS_EMPTY(slot));
	if (cs->mat)
	{
		tupnatts = Min(HeapTupleHeaderGetNatts(cs->mat->t_data), natts);
		deform_plain(slot, cs->mat->t_data, tupnatts);
	}
	else
	{
		Assert(has_raw(cs));
		if (!cs->prepared && !prepare_from_page(cs, natts))
			prepare_raw(cs);
		tupnatts = Min(HeapTupleHeaderGetNatts(cs->td), natts);

		/* attributes already in clear, then decrypt the rest */
		if (slot->tts_nvalid < Min(cs->ndec, tupnatts))
			deform_plain(slot, cs->td, Min(cs->ndec, tupnatts));
		if (slot->tts_nvalid < tupnatts && cs->job != NULL)
		{
			/*
			 * The page cache holds only the prefix: continue on a full copy
			 * (same layout, so the deform position carries over).
			 */
			uint32		keep_off = cs->off;
			int			keep_ndec = cs->ndec;

			prepare_raw(cs);
			cs->off = keep_off;
			cs->ndec = keep_ndec;
		}
		if (slot->tts_nvalid < tupnatts)
		{
			uint32		off = slot->tts_nvalid == 0 ? 0 : cs->off;
			bool		slow = slot->tts_nvalid == 0 ? false : TTS_SLOW(slot);

			cmk_deform_decrypt(cs->rel, slot->tts_tupleDescriptor, cs->td,
							   cs->trailer.data_end, &cs->trailer,
							   slot->tts_nvalid, tupnatts,
							   slot->tts_values, slot->tts_isnull, &off, &slow);
			cs->off = off;
			if (slow)
				slot->tts_flags |= TTS_FLAG_SLOW;
			else
				slot->tts_flags &= ~TTS_FLAG_SLOW;
			cs->ndec = tupnatts;
			slot->tts_nvalid = tupnatts;
		}
	}
	if (tupnatts < natts)
		slot_getmissingattrs(slot, tupnatts, natts);
}

static Datum
cmk_slot_getsysattr(TupleTableSlot *slot, int attnum, bool *isnull)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	HeapTuple	tuple = cs->mat ? cs->mat : (has_raw(cs) ? raw_tuple(cs) : NULL);

	if (tuple == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot retrieve a system column in this context")));
	/* header fields are never encrypted */
	return heap_getsysattr(tuple, attnum, slot->tts_tupleDescriptor, isnull);
}

/* A fully decrypted (or formed) copy of the slot's tuple, in mcxt. */
static HeapTuple
plain_copy(TupleTableSlot *slot, MemoryContext mcxt)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	HeapTuple	tuple;

	if (cs->mat)
		tuple = heap_copytuple(cs->mat);
	else if (has_raw(cs))
		tuple = cmk_decrypt_tuple(cs->rel, slot->tts_tupleDescriptor, raw_tuple(cs));
	else
		tuple = heap_form_tuple(slot->tts_tupleDescriptor, slot->tts_values, slot->tts_isnull);
	tuple->t_self = slot->tts_tid;
	tuple->t_tableOid = slot->tts_tableOid;
	MemoryContextSwitchTo(old);
	return tuple;
}

static void
cmk_slot_materialize(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	HeapTuple	tuple;

	Assert(!TTS_EMPTY(slot));
	if (TTS_SHOULDFREE(slot))
		return;
	tuple = plain_copy(slot, slot->tts_mcxt);
	if (cs->raw)
		ExecClearTuple(cs->raw);
	cs->prepared = false;
	cs->mat = tuple;
	cs->off = 0;
	slot->tts_nvalid = 0;
	slot->tts_flags |= TTS_FLAG_SHOULDFREE;
}

static void
cmk_slot_copyslot(TupleTableSlot *dst, TupleTableSlot *src)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) dst;
	HeapTuple	tuple;
	MemoryContext old;

	old = MemoryContextSwitchTo(dst->tts_mcxt);
	tuple = ExecCopySlotHeapTuple(src);
	MemoryContextSwitchTo(old);
	ExecClearTuple(dst);
	cs->mat = tuple;
	dst->tts_flags &= ~TTS_FLAG_EMPTY;
	dst->tts_flags |= TTS_FLAG_SHOULDFREE;
	dst->tts_tid = src->tts_tid;
	dst->tts_tableOid = src->tts_tableOid;
}

static HeapTuple
cmk_slot_get_heap_tuple(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	Assert(!TTS_EMPTY(slot));
	if (!cs->mat)
		cmk_slot_materialize(slot);
	return cs->mat;
}

static HeapTuple
cmk_slot_copy_heap_tuple(TupleTableSlot *slot)
{
	Assert(!TTS_EMPTY(slot));
	return plain_copy(slot, CurrentMemoryContext);
}

static MinimalTuple
cmk_slot_copy_minimal_tuple(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	HeapTuple	tuple;
	MinimalTuple mtup;

	Assert(!TTS_EMPTY(slot));
	if (!cs->mat && !has_raw(cs))
		return heap_form_minimal_tuple(slot->tts_tupleDescriptor,
									   slot->tts_values, slot->tts_isnull);
	tuple = plain_copy(slot, CurrentMemoryContext);
	mtup = minimal_tuple_from_heap_tuple(tuple);
	heap_freetuple(tuple);
	return mtup;
}

const TupleTableSlotOps TTSOpsCmkHeapTuple = {
	.base_slot_size = sizeof(CmkTupleTableSlot),
	.init = cmk_slot_init,
	.release = cmk_slot_release,
	.clear = cmk_slot_clear,
	.getsomeattrs = cmk_slot_getsomeattrs,
	.getsysattr = cmk_slot_getsysattr,
	.materialize = cmk_slot_materialize,
	.copyslot = cmk_slot_copyslot,
	.get_heap_tuple = cmk_slot_get_heap_tuple,
	.get_minimal_tuple = NULL,
	.copy_heap_tuple = cmk_slot_copy_heap_tuple,
	.copy_minimal_tuple = cmk_slot_copy_minimal_tuple,
};

/* The heap buffer slot our callbacks hand to the heap's. */
TupleTableSlot *
cmk_slot_raw(TupleTableSlot *slot)
{
	Assert(slot->tts_ops == &TTSOpsCmkHeapTuple);
	return ((CmkTupleTableSlot *) slot)->raw;
}

/*
 * The heap filled the raw slot with a stored tuple of rel: make it the
 * slot's content, undecrypted.
 */
void
cmk_slot_adopt_raw(TupleTableSlot *slot, Relation rel, HeapScanDesc scan)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	cs->scan = scan;
	if (cs->mat)
	{
		if (TTS_SHOULDFREE(slot))
			heap_freetuple(cs->mat);
		cs->mat = NULL;
		slot->tts_flags &= ~TTS_FLAG_SHOULDFREE;
	}
	cs->rel = rel;
	cs->prepared = false;
	cs->off = 0;
	slot->tts_nvalid = 0;
	slot->tts_flags &= ~TTS_FLAG_EMPTY;
	slot->tts_tid = cs->raw->tts_tid;
	slot->tts_tableOid = cs->raw->tts_tableOid;
}

/* The tuple a slot of ours or of the heap kinds owns, if any. */
HeapTuple
cmk_slot_own_tuple(TupleTableSlot *slot)
{
	if (slot->tts_ops == &TTSOpsCmkHeapTuple)
		return ((CmkTupleTableSlot *) slot)->mat;
	if (TTS_IS_BUFFERTUPLE(slot) || TTS_IS_HEAPTUPLE(slot))
		return ((HeapTupleTableSlot *) slot)->tuple;
	return NULL;
}
