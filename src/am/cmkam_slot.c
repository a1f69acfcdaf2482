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

#include <openssl/crypto.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "storage/proc.h"
#include "utils/memutils.h"

#include "am/cmkam.h"
#include "keys/key_store.h"

/*
 * Page cache of a sequential scan: the wanted attribute prefix of every
 * visible tuple of the current page, decrypted together into Datums with one
 * cipher call for all.  It belongs to one "visit" of one page (see
 * cmk_slot_adopt_raw), during which the scan keeps the page pinned.
 */
typedef struct CmkPageCache
{
	uint64		visit;			/* 0: empty */
	int			natts;			/* prefix decrypted for every entry */
	int			ntups;
	/* grown on demand: a slot is often made per query for a small table */
	CmkPageTuple *tups;
	int			ntups_alloc;
	Datum	   *values;			/* ntups * natts, plaintext */
	bool	   *isnull;
	Size		nvalues;		/* allocated entries of values/isnull */
	Size		values_used;	/* high-water mark, for wiping */
	char	   *area;			/* by-reference values (MAXALIGNed) */
	Size		area_size;
	Size		area_used;		/* high-water mark, for wiping */
	/* the fast path: by-value prefix attributes XORed from the page */
	CmkPrefixLayout lay;		/* of lay_desc */
	TupleDesc	lay_desc;		/* the slot's descriptor it was made for */
	uint8	   *ks;				/* keystream of the visit's fast tuples */
	int			lone;			/* tuples served alone since the last build */
	Size		ks_size;
	Size		ks_used;		/* high-water mark, for wiping */
} CmkPageCache;


/* Page visits of this backend's scans; 0 means "not in a visit". */
static uint64 page_visit_counter = 0;

/*
 * The slot table_tuple_fetch_row_version filled last (cmk_slot_note_fetch),
 * for the update that usually follows: an UPDATE fetches the old version
 * into a slot and deforms it to form the new row, then asks us to update
 * that same TID in the same command.  Cleared whenever that slot is
 * cleared, released or its memory context goes away, so it never points at
 * a freed slot; and only good in the command that fetched, so never at a
 * slot whose buffer pin an ERROR or the end of a statement released.
 */
static CmkTupleTableSlot *last_fetched = NULL;
static LocalTransactionId last_fetched_lxid;
static SubTransactionId last_fetched_subxid;
static CommandId last_fetched_cid;

/* The page cache's plaintext buffers: wiped (the part ever used), then freed. */
static void
drop_values(CmkPageCache *pc)
{
	if (pc->values == NULL)
		return;
	OPENSSL_cleanse(pc->values, pc->values_used * sizeof(Datum));
	pfree(pc->values);
	pfree(pc->isnull);
	pc->values = NULL;
	pc->isnull = NULL;
	pc->nvalues = 0;
	pc->values_used = 0;
}

static void
drop_ks(CmkPageCache *pc)
{
	if (pc->ks == NULL)
		return;
	OPENSSL_cleanse(pc->ks, pc->ks_used);
	pfree(pc->ks);
	pc->ks = NULL;
	pc->ks_size = 0;
	pc->ks_used = 0;
}

static void
drop_area(CmkPageCache *pc)
{
	if (pc->area == NULL)
		return;
	OPENSSL_cleanse(pc->area, pc->area_used);
	pfree(pc->area);
	pc->area = NULL;
	pc->area_size = 0;
	pc->area_used = 0;
}

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

	/*
	 * The raw slot is made when a read first needs it (cmk_slot_raw): a slot
	 * that is only ever written, as COPY FROM's thousand buffer slots, then
	 * pays for no second slot and no descriptor pin.
	 */
	cs->raw = NULL;
	cs->rel = NULL;
	cs->mat = NULL;
	cs->prepared = false;
	cs->plain = NULL;
	cs->bufsize = 0;
	cs->off = 0;
	cs->xor_natts = 0;
	cs->scan = NULL;
	cs->visit = 0;
	cs->cindex = -1;
	cs->td = NULL;
	cs->pc = NULL;
	cs->lay = NULL;
	cs->lay_desc = NULL;
	cs->wipe = NULL;
}

static void
cmk_slot_clear(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (last_fetched == cs)
		last_fetched = NULL;
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
	cs->visit = 0;
	cs->prepared = false;
	cs->off = 0;
	cs->xor_natts = 0;
	slot->tts_nvalid = 0;
	slot->tts_flags |= TTS_FLAG_EMPTY;
	ItemPointerSetInvalid(&slot->tts_tid);
}

/* Wipe and free the slot's plaintext and keystream buffers. */
static void
drop_buffers(CmkTupleTableSlot *cs)
{
	if (cs->plain)
	{
		OPENSSL_cleanse(cs->plain, cs->bufsize);
		pfree(cs->plain);
		cs->plain = NULL;
		cs->bufsize = 0;
	}
	if (cs->pc)
	{
		CmkPageCache *pc = cs->pc;

		drop_area(pc);
		drop_values(pc);
		drop_ks(pc);
		if (pc->tups)
			pfree(pc->tups);
		pfree(pc);
		cs->pc = NULL;
	}
}

/*
 * An ERROR that unwinds past a slot resets or deletes its memory context
 * without calling release: the context's reset callback wipes what release
 * would have.  The callback's own record lives in the context, not in the
 * slot (which release may free first), and release disarms it.  Callbacks
 * run before the context frees anything, so the slot is still intact then.
 */
typedef struct CmkSlotWipe
{
	MemoryContextCallback cb;
	CmkTupleTableSlot *cs;		/* NULL once the slot is released */
} CmkSlotWipe;

static void
slot_wipe_callback(void *arg)
{
	CmkSlotWipe *w = (CmkSlotWipe *) arg;

	if (w->cs != NULL)
	{
		if (last_fetched == w->cs)
			last_fetched = NULL;
		drop_buffers(w->cs);
		w->cs->wipe = NULL;
		w->cs = NULL;
	}
}

/* Arm the callback before the slot's first plaintext buffer is allocated. */
static inline void
arm_wipe(CmkTupleTableSlot *cs)
{
	CmkSlotWipe *w;

	if (likely(cs->wipe != NULL))
		return;
	w = MemoryContextAlloc(cs->base.tts_mcxt, sizeof(CmkSlotWipe));
	w->cb.func = slot_wipe_callback;
	w->cb.arg = w;
	w->cs = cs;
	MemoryContextRegisterResetCallback(cs->base.tts_mcxt, &w->cb);
	cs->wipe = w;
}

static void
cmk_slot_release(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (last_fetched == cs)
		last_fetched = NULL;
	if (cs->raw)
	{
		ExecDropSingleTupleTableSlot(cs->raw);
		cs->raw = NULL;
	}
	drop_buffers(cs);
	if (cs->lay)
	{
		pfree(cs->lay);
		cs->lay = NULL;
		cs->lay_desc = NULL;
	}
	if (cs->wipe)
	{
		cs->wipe->cs = NULL;
		cs->wipe = NULL;
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
		arm_wipe(cs);
		if (cs->plain)
		{
			OPENSSL_cleanse(cs->plain, cs->bufsize);
			pfree(cs->plain);
		}
		cs->bufsize = Max(MAXALIGN(cs->trailer.data_end), 256);
		cs->plain = MemoryContextAlloc(cs->base.tts_mcxt, cs->bufsize);
	}
	memcpy(cs->plain, tup->t_data, cs->trailer.data_end);
	cs->td = cs->plain;
	cs->prepared = true;
}

/*
 * The by-value prefix layout of the slot's descriptor (CmkPrefixLayout).
 * For the relation's own descriptor, what every slot has, it is made once
 * and kept in the relcache entry (rd_amcache, which a relcache rebuild frees
 * and this makes again), not once per query's slots.  The result may go
 * away with the next invalidation a catalog access or lock accepts: callers
 * use it within one step and copy what they keep.
 */
static const CmkPrefixLayout *
slot_layout(CmkTupleTableSlot *cs)
{
	TupleDesc	desc = cs->base.tts_tupleDescriptor;
	Relation	rel = cs->rel;

	if (likely(rel != NULL && desc == RelationGetDescr(rel)))
	{
		if (unlikely(rel->rd_amcache == NULL))
		{
			CmkPrefixLayout *lay = MemoryContextAlloc(CacheMemoryContext,
													  sizeof(CmkPrefixLayout));

			cmk_prefix_layout(desc, lay);
			rel->rd_amcache = lay;
		}
		return (const CmkPrefixLayout *) rel->rd_amcache;
	}
	if (cs->lay_desc != desc)
	{
		if (cs->lay == NULL)
			cs->lay = MemoryContextAlloc(cs->base.tts_mcxt,
										 sizeof(CmkPrefixLayout));
		cmk_prefix_layout(desc, cs->lay);
		cs->lay_desc = desc;
	}
	return cs->lay;
}

/*
 * Attributes [tts_nvalid, to) of the by-value prefix, none null: XOR the
 * stored tuple's data area stp with its keystream ks, both at the layout's
 * nominal offsets, straight into the slot's Datums.  The stored copy, if
 * one is made later, still has their ciphertext (xor_natts).
 */
static pg_attribute_always_inline void
xor_prefix_into_slot(CmkTupleTableSlot *cs, const CmkPrefixLayout *lay,
					 const uint8 *stp, const uint8 *ks, int to)
{
	TupleTableSlot *slot = &cs->base;

	if (slot->tts_nvalid >= to)
		return;
	for (int i = slot->tts_nvalid; i < to; i++)
	{
		slot->tts_values[i] = cmk_xor_byval(stp + lay->pos[i], ks + lay->pos[i],
											lay->len[i]);
		slot->tts_isnull[i] = false;
	}
	slot->tts_nvalid = to;
	cs->xor_natts = to;
	cs->off = lay->end[to - 1];
	slot->tts_flags &= ~TTS_FLAG_SLOW;
}

/*
 * A tuple not served from a page cache (an index scan's, a fetched row
 * version): decrypt as much of [tts_nvalid, natts) as lies in the by-value
 * prefix the way the page path does, with the same builder on a page of
 * one, straight from the stored tuple into the slot's Datums, and return
 * whether that was all the executor asked for.  Nothing is copied; the
 * keystream lives on this stack frame and is wiped before returning.  A
 * tuple the builder does not take (a null among those attributes, external
 * references, three nonces, anything damaged) is left to the general path,
 * which reports what is wrong with it.
 */
static bool
serve_prefix_alone(CmkTupleTableSlot *cs, int natts)
{
	TupleTableSlot *slot = &cs->base;
	const CmkPrefixLayout *lay = slot_layout(cs);
	HeapTuple	tup = raw_tuple(cs);
	int			to = Min(natts, lay->nbyval);
	CmkPageTuple pt;
	uint8		ks[2 * CMK_PREFIX_MAX_BLOCKS * CMK_AES_BLOCK];
	int			nblocks;

	if (slot->tts_nvalid >= to)
		return false;
	pt.src = tup->t_data;
	pt.src_len = tup->t_len;
	pt.tid = tup->t_self;
	if (cmk_page_prefix_keystream(cs->rel, lay, to, &pt, 1, ks, &nblocks) != 0)
		return false;			/* no keystream was made */

	xor_prefix_into_slot(cs, lay, (const uint8 *) pt.stp, pt.ks, to);
	OPENSSL_cleanse(ks, nblocks * CMK_AES_BLOCK);
	return to == natts;
}

/*
 * The page cache's entry of tup, the tuple the scan returned last.  Entries
 * follow the scan's rs_vistuples, which stay put for the visit, and the
 * heap leaves rs_cindex on the tuple it returned: that is the entry.  The
 * TID check is independent of the lookup (the CPU overlaps the two) and
 * only guards the assumption.
 */
static inline CmkPageTuple *
visit_entry(CmkPageCache *pc, int idx, HeapTuple tup)
{
	if (idx < 0 || idx >= pc->ntups ||
		ItemPointerGetOffsetNumber(&pc->tups[idx].tid) !=
		ItemPointerGetOffsetNumberNoCheck(&tup->t_self))
		return NULL;
	return &pc->tups[idx];
}

/*
 * Build the page cache for the slot's visit of the scan's current page:
 * attributes [0, natts) of every visible tuple.  Returns false if the page
 * does not fit the cache's area (the caller then goes one tuple at a time).
 */
static bool
build_visit(CmkTupleTableSlot *cs, CmkPageCache *pc, int natts)
{
	HeapScanDesc scan = cs->scan;
	MemoryContext mcxt = cs->base.tts_mcxt;
	Page		page = BufferGetPage(scan->rs_cbuf);
	BlockNumber blk = scan->rs_cblock;
	int			ntups = scan->rs_ntuples;
	int			left = ntups;
	int			ks_natts;
	const CmkPrefixLayout *lay;

	pc->visit = 0;
	pc->ntups = 0;
	if (ntups > pc->ntups_alloc)
	{
		if (pc->tups)
			pfree(pc->tups);
		pc->ntups_alloc = Max(ntups, 64);
		pc->tups = MemoryContextAlloc(mcxt, pc->ntups_alloc * sizeof(CmkPageTuple));
	}
	for (int i = 0; i < ntups; i++)
	{
		OffsetNumber o = scan->rs_vistuples[i];
		ItemId		lp = PageGetItemId(page, o);
		CmkPageTuple *pt = &pc->tups[i];

		pt->src = (HeapTupleHeader) PageGetItem(page, lp);
		pt->src_len = ItemIdGetLength(lp);
		ItemPointerSet(&pt->tid, blk, o);
		pt->fast_natts = 0;

		/*
		 * Nothing decrypted yet.  cmk_decrypt_page_prefixes skips a tuple
		 * that the keystream serves whole and leaves these alone: they must
		 * not keep a former visit's values (the class of bug of issue 21).
		 */
		pt->ndec = 0;
		pt->off = 0;
		pt->slow = false;
	}
	pc->ntups = ntups;

	if (pc->lay_desc != cs->base.tts_tupleDescriptor)
	{
		pc->lay = *slot_layout(cs);
		pc->lay_desc = cs->base.tts_tupleDescriptor;
	}
	lay = &pc->lay;

	/*
	 * By-value prefix attributes: keystream now, XOR on demand.  For every
	 * tuple if the query reads nothing else; otherwise the general path
	 * decrypts the attributes after them.
	 */
	ks_natts = Min(natts, lay->nbyval);
	if (ks_natts > 0)
	{
		Size		ks_need = (Size) 2 * ntups *
			cmk_prefix_blocks(lay, ks_natts) * CMK_AES_BLOCK;
		int			nblocks;

		if (ks_need > pc->ks_size)
		{
			drop_ks(pc);
			pc->ks_size = Max(ks_need, 4096);
			pc->ks = MemoryContextAlloc(mcxt, pc->ks_size);
		}
		left = cmk_page_prefix_keystream(cs->rel, lay, ks_natts,
										 pc->tups, ntups, pc->ks,
										 &nblocks);
		pc->ks_used = Max(pc->ks_used, (Size) nblocks * CMK_AES_BLOCK);
	}

	/* the rest: decrypted into Datums now */
	if (left > 0 || natts > ks_natts)
	{
		Size		need = (Size) ntups * natts;
		Size		area_need = 0;

		for (int i = 0; i < ntups; i++)
			area_need += MAXALIGN(pc->tups[i].src_len);

		if (need > pc->nvalues)
		{
			drop_values(pc);
			pc->nvalues = Max(need, 256);
			pc->values = MemoryContextAlloc(mcxt, pc->nvalues * sizeof(Datum));
			pc->isnull = MemoryContextAlloc(mcxt, pc->nvalues * sizeof(bool));
		}
		/* every tuple's data fits in its stored length */
		if (area_need > pc->area_size)
		{
			drop_area(pc);
			pc->area_size = Max(area_need, 1024);
			pc->area = MemoryContextAlloc(mcxt, pc->area_size);
		}
		pc->values_used = Max(pc->values_used, need);
		pc->area_used = Max(pc->area_used, area_need);
		if (!cmk_decrypt_page_prefixes(cs->rel, cs->base.tts_tupleDescriptor,
									   pc->tups, ntups, natts,
									   lay, ks_natts,
									   pc->values, pc->isnull,
									   pc->area, pc->area_size))
			return false;
	}
	pc->visit = cs->visit;
	pc->natts = natts;
	pc->lone = 0;
	return true;
}

/*
 * Sequential scans: decrypt the wanted attribute prefix of every visible
 * tuple on the page at once and serve this and the following tuples from
 * there.  Returns the entry of the slot's raw tuple, or NULL if it is not
 * served from a page cache.
 */
static CmkPageTuple *
page_cache_entry(CmkTupleTableSlot *cs, int natts)
{
	HeapScanDesc scan = cs->scan;
	HeapTuple	tup = raw_tuple(cs);
	CmkPageCache *pc = cs->pc;

	if (cs->visit == 0)
	{
		/* first request of a run of tuples: can it be a page visit? */
		if (scan == NULL || !(scan->rs_base.rs_flags & SO_ALLOW_PAGEMODE) ||
			scan->rs_ntuples <= 1 ||
			((BufferHeapTupleTableSlot *) cs->raw)->buffer != scan->rs_cbuf)
			return NULL;
		cs->visit = ++page_visit_counter;
	}
	if (pc == NULL)
	{
		arm_wipe(cs);
		pc = cs->pc = MemoryContextAllocZero(cs->base.tts_mcxt, sizeof(CmkPageCache));
	}
	if (likely(pc->visit == cs->visit))
	{
		CmkPageTuple *pt;

		if (likely(natts <= pc->natts))
			return visit_entry(pc, cs->cindex, tup);

		/*
		 * More attributes than the visit was built for.  A tuple that has
		 * them in its keystream (fast_natts) is served from it.  The first
		 * one that does not is served alone: a qualification let one row
		 * through, and the target list or an UPDATE now reads the rest of
		 * it.  A second one means the query reads more of many tuples:
		 * build the visit again for natts.
		 */
		pt = visit_entry(pc, cs->cindex, tup);
		if (pt == NULL)
			return NULL;
		if (pt->fast_natts >= natts)
			return pt;
		if (pc->lone++ == 0)
			return NULL;
	}

	if (!build_visit(cs, pc, natts))
		return NULL;
	return visit_entry(pc, cs->cindex, tup);
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

/*
 * Everything but a page visit's tuple whose keystream covers the request
 * (cmk_slot_getsomeattrs).  Out of line, so that the caller's common case
 * saves and restores none of the registers this needs.  pt: the tuple's
 * entry in the page cache of the current visit, built for natts attributes
 * or more, if the caller found it; else NULL.
 */
static pg_noinline void
getsomeattrs_general(TupleTableSlot *slot, int natts, CmkPageTuple *pt)
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
		/* first the page cache, which knows the tuple's natts too */
		if (pt == NULL && !cs->prepared && cs->scan != NULL)
			pt = page_cache_entry(cs, natts);
		if (pt != NULL && pt->fast_natts > 0)
		{
			/*
			 * By-value prefix attributes, none null: decrypt what is asked
			 * for from the pinned page, with the keystream computed for the
			 * page visit.  The attributes after them, if asked for, are in
			 * the page cache.
			 */
			int			to = natts;

			/* this tuple's keystream covers [0, fast_natts) */
			if (unlikely(to > pt->fast_natts))
				to = pt->fast_natts;
			xor_prefix_into_slot(cs, &cs->pc->lay, (const uint8 *) pt->stp,
								 pt->ks, to);
			if (likely(to == natts))
				return;
		}
		else if (pt == NULL && !cs->prepared && serve_prefix_alone(cs, natts))
			return;
		tupnatts = Min(pt ? pt->tupnatts : HeapTupleHeaderGetNatts(raw_tuple(cs)->t_data),
					   natts);

		/* from the page cache, as far as it goes */
		if (pt != NULL && slot->tts_nvalid < tupnatts)
		{
			int			to = Min(pt->ndec, tupnatts);

			for (int i = slot->tts_nvalid; i < to; i++)
			{
				slot->tts_values[i] = pt->values[i];
				slot->tts_isnull[i] = pt->isnull[i];
			}
			slot->tts_nvalid = Max(slot->tts_nvalid, to);
			if (slot->tts_nvalid == pt->ndec)
			{
				cs->off = pt->off;
				if (pt->slow)
					slot->tts_flags |= TTS_FLAG_SLOW;
				else
					slot->tts_flags &= ~TTS_FLAG_SLOW;
			}
		}

		/* the rest from a copy of the stored tuple, decrypted lazily */
		if (slot->tts_nvalid < tupnatts)
		{
			uint32		off;
			bool		slow;

			if (!cs->prepared)
				prepare_raw(cs);
			off = slot->tts_nvalid == 0 ? 0 : cs->off;
			slow = slot->tts_nvalid == 0 ? false : TTS_SLOW(slot);
			cmk_deform_decrypt(cs->rel, slot->tts_tupleDescriptor, cs->td,
							   cs->trailer.data_end, &cs->trailer,
							   slot->tts_nvalid, tupnatts,
							   slot->tts_values, slot->tts_isnull, &off, &slow);
			cs->off = off;
			if (slow)
				slot->tts_flags |= TTS_FLAG_SLOW;
			else
				slot->tts_flags &= ~TTS_FLAG_SLOW;
			slot->tts_nvalid = tupnatts;
		}
	}
	if (tupnatts < natts)
		slot_getmissingattrs(slot, tupnatts, natts);
}

/*
 * The common case inline: a tuple of the current page visit (the visit
 * built for at least natts attributes) whose prefix keystream covers them,
 * served by XOR from the pinned page.  The same test page_cache_entry makes
 * first, without its bookkeeping; anything else goes the general way.
 */
static void
cmk_slot_getsomeattrs(TupleTableSlot *slot, int natts)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;
	CmkPageCache *pc = cs->pc;
	CmkPageTuple *pt = NULL;

	Assert(!TTS_EMPTY(slot));
	if (likely(pc != NULL && cs->visit != 0 && pc->visit == cs->visit &&
			   natts <= pc->natts && cs->mat == NULL && !cs->prepared))
	{
		pt = visit_entry(pc, cs->cindex, raw_tuple(cs));
		if (likely(pt != NULL && pt->fast_natts >= natts))
		{
			xor_prefix_into_slot(cs, &pc->lay, (const uint8 *) pt->stp,
								 pt->ks, natts);
			return;
		}
	}
	/* the rest, including page cache rows beyond their keystream (COPY TO) */
	getsomeattrs_general(slot, natts, pt);
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
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	Assert(slot->tts_ops == &TTSOpsCmkHeapTuple);
	if (unlikely(cs->raw == NULL))
	{
		MemoryContext old = MemoryContextSwitchTo(slot->tts_mcxt);

		cs->raw = MakeTupleTableSlot(slot->tts_tupleDescriptor,
									 &TTSOpsBufferHeapTuple);
		MemoryContextSwitchTo(old);
	}
	return cs->raw;
}

/* Out of line part of cmk_slot_adopt_raw: drop a materialized tuple. */
void
cmk_slot_drop_mat(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (TTS_SHOULDFREE(slot))
		heap_freetuple(cs->mat);
	cs->mat = NULL;
	slot->tts_flags &= ~TTS_FLAG_SHOULDFREE;
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

/*
 * Remember a slot cmkam_fetch_row_version just filled.  Arming the wipe
 * callback (once per slot) is what clears the note if an ERROR deletes the
 * slot's memory context without a release.
 */
void
cmk_slot_note_fetch(TupleTableSlot *slot)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	arm_wipe(cs);
	last_fetched = cs;
	last_fetched_lxid = MyProc->lxid;
	last_fetched_subxid = GetCurrentSubTransactionId();
	last_fetched_cid = GetCurrentCommandId(false);
}

/*
 * The stored tuple at tid of rel and its decryption, if the slot last
 * filled by cmkam_fetch_row_version still holds them: cmkam_tuple_update
 * then needs neither to read the page again nor to decrypt the old version
 * a second time.  cipher points into the page the slot keeps pinned (the
 * pin also keeps the tuple from being pruned, and stored tuple data never
 * changes in place); plain into the slot's plaintext copy, which the call
 * completes.  Both stay valid until that slot is cleared or materialized;
 * the caller must not change either.  newslot, the slot of the new
 * version, is materialized by the update, so it must be another slot.
 * Tuples with external references take the general path (their
 * decryption also rewrites the references).
 */
bool
cmk_slot_fetched_version(Relation rel, ItemPointer tid, TupleTableSlot *newslot,
						 HeapTuple cipher, HeapTuple plain)
{
	CmkTupleTableSlot *cs = last_fetched;
	HeapTuple	raw;

	if (cs == NULL || &cs->base == newslot ||
		last_fetched_lxid != MyProc->lxid ||
		last_fetched_subxid != GetCurrentSubTransactionId() ||
		last_fetched_cid != GetCurrentCommandId(false) ||
		TTS_EMPTY(&cs->base) || cs->mat != NULL || !has_raw(cs) ||
		cs->rel == NULL || RelationGetRelid(cs->rel) != RelationGetRelid(rel) ||
		cs->base.tts_tupleDescriptor != RelationGetDescr(rel))
		return false;
	raw = raw_tuple(cs);
	if (!ItemPointerEquals(&raw->t_self, tid))
		return false;

	/* decrypt what the executor did not read (usually nothing) */
	slot_getallattrs(&cs->base);
	if (cs->mat != NULL)
		return false;

	/*
	 * A tuple of by-value columns only may have been served by XOR whole,
	 * with no copy made: make the copy now, it is completed below.
	 */
	if (!cs->prepared &&
		cs->xor_natts >= HeapTupleHeaderGetNatts(raw->t_data))
		prepare_raw(cs);
	if (!cs->prepared || cs->trailer.extbits != NULL)
		return false;

	/*
	 * The leading attributes served by XOR went straight from the stored
	 * tuple into Datums; the copy still has their ciphertext.  They are
	 * by-value, not null, at their nominal offsets: store the plaintext.
	 */
	if (cs->xor_natts > 0)
	{
		const CmkPrefixLayout *lay = slot_layout(cs);
		char	   *tp = (char *) cs->td + cs->td->t_hoff;

		Assert(cs->xor_natts <= lay->nbyval);
		for (int i = 0; i < cs->xor_natts; i++)
			store_att_byval(tp + lay->pos[i], cs->base.tts_values[i],
							lay->len[i]);
		cs->xor_natts = 0;
	}

	*cipher = *raw;
	plain->t_len = cs->trailer.data_end;
	plain->t_self = raw->t_self;
	plain->t_tableOid = raw->t_tableOid;
	plain->t_data = cs->td;
	return true;
}
