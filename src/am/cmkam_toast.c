/*-------------------------------------------------------------------------
 *
 * cmkam_toast.c
 *		TOAST for cmk_heap: our own toaster, encrypted chunks, and the fetch
 *		callback that decrypts them.
 *
 * The heap toaster must never see a cmk_heap tuple: it rebuilds tuples with
 * heap_fill_tuple and so drops the trailer.  We therefore toast the
 * plaintext tuple ourselves, with the heap's policy and thresholds (so
 * values are compressed and moved out exactly when heap would do it), and
 * once more with the trailer's size subtracted if the encrypted tuple would
 * still cross TOAST_TUPLE_THRESHOLD.  Large values go to the ordinary TOAST
 * relation that core creates for us (its access method is cmk_heap, so its
 * lifetime follows the table through TRUNCATE, CLUSTER and DROP), one
 * cmk_heap-encrypted chunk tuple at a time.  The main tuple stores only an
 * encrypted reference (see cmkam_codec.c); readers get an ordinary on-disk
 * TOAST pointer and detoast through cmk_fetch_toast_slice.
 *
 * Nothing here may write a plaintext chunk or call heap's toast_save_datum.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "access/detoast.h"
#include "access/genam.h"
#include "access/heapam.h"
#include "access/heaptoast.h"
#include "access/table.h"
#include "access/toast_helper.h"
#include "access/toast_internals.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/index.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/snapmgr.h"

#include "am/cmkam.h"

/* Per-tuple toasting state, handed back to the write path. */
typedef struct CmkToastState
{
	ToastTupleContext ttc;
	bool		toast_isnull[MaxHeapAttributeNumber];
	bool		toast_oldisnull[MaxHeapAttributeNumber];
	Datum		toast_values[MaxHeapAttributeNumber];
	Datum		toast_oldvalues[MaxHeapAttributeNumber];
	ToastAttrInfo toast_attr[MaxHeapAttributeNumber];
	bool		saved[MaxHeapAttributeNumber];	/* externalized by us now */
	int			options;
} CmkToastState;

/*
 * Store one value as encrypted chunks; returns an on-disk TOAST pointer.
 */
static Datum
save_value(Relation rel, Datum value, int options)
{
	Relation	toastrel;
	Relation   *toastidxs;
	int			num_indexes;
	int			validIndex;
	TupleDesc	toastdesc;
	CommandId	mycid = GetCurrentCommandId(true);
	struct varatt_external toast_pointer;
	Pointer		dval = DatumGetPointer(value);
	char	   *data_p;
	int32		data_todo;
	int32		chunk_seq = 0;
	struct varlena *result;
	union
	{
		struct varlena hdr;
		char		data[CMK_TOAST_CHUNK_SIZE + VARHDRSZ];
		int32		align_it;
	}			chunk;

	Assert(!VARATT_IS_EXTERNAL(dval));

	toastrel = table_open(rel->rd_rel->reltoastrelid, RowExclusiveLock);
	toastdesc = RelationGetDescr(toastrel);
	validIndex = toast_open_indexes(toastrel, RowExclusiveLock,
									&toastidxs, &num_indexes);

	/* Same size bookkeeping as toast_save_datum. */
	if (VARATT_IS_SHORT(dval))
	{
		data_p = VARDATA_SHORT(dval);
		data_todo = VARSIZE_SHORT(dval) - VARHDRSZ_SHORT;
		toast_pointer.va_rawsize = data_todo + VARHDRSZ;
		toast_pointer.va_extinfo = data_todo;
	}
	else if (VARATT_IS_COMPRESSED(dval))
	{
		data_p = VARDATA(dval);
		data_todo = VARSIZE(dval) - VARHDRSZ;
		toast_pointer.va_rawsize = VARDATA_COMPRESSED_GET_EXTSIZE(dval) + VARHDRSZ;
		VARATT_EXTERNAL_SET_SIZE_AND_COMPRESS_METHOD(toast_pointer, data_todo,
													 VARDATA_COMPRESSED_GET_COMPRESS_METHOD(dval));
	}
	else
	{
		data_p = VARDATA(dval);
		data_todo = VARSIZE(dval) - VARHDRSZ;
		toast_pointer.va_rawsize = VARSIZE(dval);
		toast_pointer.va_extinfo = data_todo;
	}

	/*
	 * As heap's rewrites do: chunks of a transient rewrite heap are no
	 * change a logical decoder wants (its rows are skipped), and would only
	 * pile up in the decoder's memory (cmkam_decode.c).
	 */
	if (OidIsValid(rel->rd_rel->relrewrite))
		options |= HEAP_INSERT_NO_LOGICAL;

	toast_pointer.va_toastrelid = RelationGetRelid(toastrel);
	toast_pointer.va_valueid =
		GetNewOidWithIndex(toastrel,
						   RelationGetRelid(toastidxs[validIndex]),
						   (AttrNumber) 1);

	while (data_todo > 0)
	{
		Datum		t_values[3];
		bool		t_isnull[3] = {false, false, false};
		int32		chunk_size = Min(CMK_TOAST_CHUNK_SIZE, data_todo);
		HeapTuple	plain;
		HeapTuple	cipher;

		CHECK_FOR_INTERRUPTS();

		SET_VARSIZE(&chunk, chunk_size + VARHDRSZ);
		memcpy(VARDATA(&chunk), data_p, chunk_size);
		t_values[0] = ObjectIdGetDatum(toast_pointer.va_valueid);
		t_values[1] = Int32GetDatum(chunk_seq++);
		t_values[2] = PointerGetDatum(&chunk);

		plain = heap_form_tuple(toastdesc, t_values, t_isnull);
		cipher = cmk_encrypt_tuple(toastrel, plain, NULL, NULL);
		heap_insert(toastrel, cipher, mycid, options, NULL);

		/* The index keys (chunk_id, chunk_seq) come from the plaintext. */
		for (int i = 0; i < num_indexes; i++)
		{
			if (toastidxs[i]->rd_index->indisready)
				index_insert(toastidxs[i], t_values, t_isnull,
							 &cipher->t_self, toastrel,
							 toastidxs[i]->rd_index->indisunique ?
							 UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
							 false, NULL);
		}
		heap_freetuple(plain);
		heap_freetuple(cipher);

		data_todo -= chunk_size;
		data_p += chunk_size;
	}
	OPENSSL_cleanse(&chunk, sizeof(chunk));

	toast_close_indexes(toastidxs, num_indexes, NoLock);
	table_close(toastrel, NoLock);

	result = (struct varlena *) palloc(TOAST_POINTER_SIZE);
	SET_VARTAG_EXTERNAL(result, VARTAG_ONDISK);
	memcpy(VARDATA_EXTERNAL(result), &toast_pointer, sizeof(toast_pointer));
	return PointerGetDatum(result);
}

static void
externalize(CmkToastState *st, int attribute)
{
	ToastTupleContext *ttc = &st->ttc;
	ToastAttrInfo *attr = &ttc->ttc_attr[attribute];
	Datum		old_value = ttc->ttc_values[attribute];

	attr->tai_colflags |= TOASTCOL_IGNORE;
	ttc->ttc_values[attribute] = save_value(ttc->ttc_rel, old_value, st->options);
	if ((attr->tai_colflags & TOASTCOL_NEEDS_FREE) != 0)
		pfree(DatumGetPointer(old_value));
	attr->tai_colflags |= TOASTCOL_NEEDS_FREE;
	ttc->ttc_flags |= (TOAST_NEEDS_CHANGE | TOAST_NEEDS_FREE);
	st->saved[attribute] = true;
}

/*
 * The four rounds of heap_toast_insert_or_update (compress EXTENDED, move
 * out EXTENDED/EXTERNAL, compress MAIN, move out MAIN), with the targets
 * given.
 */
static void
toast_rounds(CmkToastState *st, Size maxDataLen, Size maxDataLenMain)
{
	ToastTupleContext *ttc = &st->ttc;
	Relation	rel = ttc->ttc_rel;
	TupleDesc	desc = RelationGetDescr(rel);
	bool		have_toast = OidIsValid(rel->rd_rel->reltoastrelid);
	int			a;

	while (heap_compute_data_size(desc, ttc->ttc_values, ttc->ttc_isnull) > maxDataLen &&
		   (a = toast_tuple_find_biggest_attribute(ttc, true, false)) >= 0)
	{
		if (TupleDescAttr(desc, a)->attstorage == TYPSTORAGE_EXTENDED)
			toast_tuple_try_compression(ttc, a);
		else
			ttc->ttc_attr[a].tai_colflags |= TOASTCOL_INCOMPRESSIBLE;
		if (ttc->ttc_attr[a].tai_size > maxDataLen && have_toast)
			externalize(st, a);
	}
	while (have_toast &&
		   heap_compute_data_size(desc, ttc->ttc_values, ttc->ttc_isnull) > maxDataLen &&
		   (a = toast_tuple_find_biggest_attribute(ttc, false, false)) >= 0)
		externalize(st, a);
	while (heap_compute_data_size(desc, ttc->ttc_values, ttc->ttc_isnull) > maxDataLen &&
		   (a = toast_tuple_find_biggest_attribute(ttc, true, true)) >= 0)
		toast_tuple_try_compression(ttc, a);
	while (have_toast &&
		   heap_compute_data_size(desc, ttc->ttc_values, ttc->ttc_isnull) > maxDataLenMain &&
		   (a = toast_tuple_find_biggest_attribute(ttc, false, true)) >= 0)
		externalize(st, a);
}

static Size
header_size(ToastTupleContext *ttc, int natts)
{
	Size		hoff = SizeofHeapTupleHeader;

	if ((ttc->ttc_flags & TOAST_HAS_NULLS) != 0)
		hoff += BITMAPLEN(natts);
	return MAXALIGN(hoff);
}

/*
 * Build the plaintext tuple to encrypt for the values in slot.  old_plain is
 * the decrypted old version for an update, else NULL.  *state_out receives
 * toasting state to pass to cmk_toast_finish once the heap operation is
 * known to have succeeded or failed (NULL when nothing was toasted).
 *
 * The result may be the slot's own materialized tuple: callers must not
 * free it.
 */
HeapTuple
cmk_form_plain_tuple(Relation rel, TupleTableSlot *slot, HeapTuple old_plain,
					 int options, struct CmkToastState **state_out)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			natts = desc->natts;
	HeapTuple	tup;
	CmkToastState *st;
	Size		hoff;
	Size		reserve;
	Size		target = RelationGetToastTupleTarget(rel, TOAST_TUPLE_TARGET);

	*state_out = NULL;
	tup = ExecFetchSlotHeapTuple(slot, true, NULL);

	/* The heap toaster's own trigger, plus room for our trailer. */
	reserve = (old_plain ? CMK_TRAILER_MAX(natts) :
			   CMK_TRAILER_FIXED + CMK_NONCE_LEN + (natts + 7) / 8);
	if (!HeapTupleHasExternal(tup) &&
		!(old_plain && HeapTupleHasExternal(old_plain)) &&
		tup->t_len + reserve <= TOAST_TUPLE_THRESHOLD)
		return tup;

	Assert(rel->rd_rel->relkind == RELKIND_RELATION ||
		   rel->rd_rel->relkind == RELKIND_MATVIEW ||
		   rel->rd_rel->relkind == RELKIND_TOASTVALUE);

	st = palloc0(sizeof(CmkToastState));
	st->options = options & ~HEAP_INSERT_SPECULATIVE;
	heap_deform_tuple(tup, desc, st->toast_values, st->toast_isnull);
	st->ttc.ttc_rel = rel;
	st->ttc.ttc_values = st->toast_values;
	st->ttc.ttc_isnull = st->toast_isnull;
	st->ttc.ttc_attr = st->toast_attr;
	if (old_plain)
	{
		heap_deform_tuple(old_plain, desc, st->toast_oldvalues, st->toast_oldisnull);
		st->ttc.ttc_oldvalues = st->toast_oldvalues;
		st->ttc.ttc_oldisnull = st->toast_oldisnull;
	}
	toast_tuple_init(&st->ttc);
	hoff = header_size(&st->ttc, natts);

	/* Heap's rounds when heap would toast, with heap's targets ... */
	if (HeapTupleHasExternal(tup) || (old_plain && HeapTupleHasExternal(old_plain)) ||
		tup->t_len > TOAST_TUPLE_THRESHOLD)
		toast_rounds(st, target - hoff, TOAST_TUPLE_TARGET_MAIN - hoff);

	/* ... and again if the trailer would push the tuple over the threshold. */
	if (hoff + heap_compute_data_size(desc, st->toast_values, st->toast_isnull) +
		reserve > TOAST_TUPLE_THRESHOLD)
	{
		Size		t1 = target > hoff + reserve ? target - hoff - reserve : 0;
		Size		t2 = TOAST_TUPLE_TARGET_MAIN - hoff - reserve;

		toast_rounds(st, t1, t2);
	}

	*state_out = st;
	if ((st->ttc.ttc_flags & TOAST_NEEDS_CHANGE) == 0)
		return tup;

	tup = heap_form_tuple(desc, st->toast_values, st->toast_isnull);
	return tup;
}

/*
 * After the heap operation: on success drop the old values an update
 * replaced; on failure drop the values we just stored, which nothing
 * references.  Frees temporary values either way.
 */
void
cmk_toast_finish(struct CmkToastState *st, bool succeeded)
{
	ToastTupleContext *ttc;
	int			natts;

	if (st == NULL)
		return;
	ttc = &st->ttc;
	natts = RelationGetDescr(ttc->ttc_rel)->natts;
	if (!succeeded)
	{
		for (int i = 0; i < natts; i++)
			if (st->saved[i])
				toast_delete_datum(ttc->ttc_rel, ttc->ttc_values[i], false);
		ttc->ttc_flags &= ~TOAST_NEEDS_DELETE_OLD;
	}
	toast_tuple_cleanup(ttc);
	pfree(st);
}

/* Delete the TOAST values a (decrypted) tuple references. */
void
cmk_toast_delete_tuple(Relation rel, HeapTuple plain, bool is_speculative)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum		values[MaxHeapAttributeNumber];
	bool		isnull[MaxHeapAttributeNumber];

	if (!HeapTupleHasExternal(plain))
		return;
	heap_deform_tuple(plain, desc, values, isnull);
	toast_delete_external(rel, values, isnull, is_speculative);
}

/*
 * relation_fetch_toast_slice of a cmk_heap TOAST relation.  Chunks come
 * through the index and our index_fetch_tuple, i.e. already decrypted.
 */
void
cmk_fetch_toast_slice(Relation toastrel, Oid valueid, int32 attrsize,
					  int32 sliceoffset, int32 slicelength,
					  struct varlena *result)
{
	Relation   *toastidxs;
	ScanKeyData toastkey[3];
	TupleDesc	toastdesc = RelationGetDescr(toastrel);
	int			nscankeys;
	SysScanDesc toastscan;
	HeapTuple	ttup;
	int32		totalchunks = ((attrsize - 1) / CMK_TOAST_CHUNK_SIZE) + 1;
	int32		startchunk = sliceoffset / CMK_TOAST_CHUNK_SIZE;
	int32		endchunk = (sliceoffset + slicelength - 1) / CMK_TOAST_CHUNK_SIZE;
	int32		expectedchunk;
	int			num_indexes;
	int			validIndex;
	SnapshotData SnapshotToast;

	validIndex = toast_open_indexes(toastrel, AccessShareLock,
									&toastidxs, &num_indexes);

	ScanKeyInit(&toastkey[0], (AttrNumber) 1, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(valueid));
	if (startchunk == 0 && endchunk == totalchunks - 1)
		nscankeys = 1;
	else if (startchunk == endchunk)
	{
		ScanKeyInit(&toastkey[1], (AttrNumber) 2, BTEqualStrategyNumber,
					F_INT4EQ, Int32GetDatum(startchunk));
		nscankeys = 2;
	}
	else
	{
		ScanKeyInit(&toastkey[1], (AttrNumber) 2, BTGreaterEqualStrategyNumber,
					F_INT4GE, Int32GetDatum(startchunk));
		ScanKeyInit(&toastkey[2], (AttrNumber) 2, BTLessEqualStrategyNumber,
					F_INT4LE, Int32GetDatum(endchunk));
		nscankeys = 3;
	}

	init_toast_snapshot(&SnapshotToast);
	toastscan = systable_beginscan_ordered(toastrel, toastidxs[validIndex],
										   &SnapshotToast, nscankeys, toastkey);

	expectedchunk = startchunk;
	while ((ttup = systable_getnext_ordered(toastscan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		int32		curchunk = DatumGetInt32(fastgetattr(ttup, 2, toastdesc, &isnull));
		Pointer		chunk = DatumGetPointer(fastgetattr(ttup, 3, toastdesc, &isnull));
		char	   *chunkdata;
		int32		chunksize;
		int32		expected_size;
		int32		from = 0;
		int32		to;

		if (!VARATT_IS_EXTENDED(chunk))
		{
			chunksize = VARSIZE(chunk) - VARHDRSZ;
			chunkdata = VARDATA(chunk);
		}
		else if (VARATT_IS_SHORT(chunk))
		{
			chunksize = VARSIZE_SHORT(chunk) - VARHDRSZ_SHORT;
			chunkdata = VARDATA_SHORT(chunk);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg_internal("found toasted toast chunk for toast value %u in %s",
									 valueid, RelationGetRelationName(toastrel))));

		expected_size = curchunk < totalchunks - 1 ? CMK_TOAST_CHUNK_SIZE :
			attrsize - ((totalchunks - 1) * CMK_TOAST_CHUNK_SIZE);
		if (curchunk != expectedchunk || curchunk > endchunk ||
			chunksize != expected_size)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg_internal("unexpected chunk %d of size %d (expected chunk %d of size %d) for toast value %u in %s",
									 curchunk, chunksize, expectedchunk, expected_size,
									 valueid, RelationGetRelationName(toastrel))));

		to = chunksize - 1;
		if (curchunk == startchunk)
			from = sliceoffset % CMK_TOAST_CHUNK_SIZE;
		if (curchunk == endchunk)
			to = (sliceoffset + slicelength - 1) % CMK_TOAST_CHUNK_SIZE;
		memcpy(VARDATA(result) + curchunk * CMK_TOAST_CHUNK_SIZE - sliceoffset + from,
			   chunkdata + from, (to - from) + 1);
		expectedchunk++;
	}

	if (expectedchunk != endchunk + 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg_internal("missing chunk number %d for toast value %u in %s",
								 expectedchunk, valueid,
								 RelationGetRelationName(toastrel))));

	systable_endscan_ordered(toastscan);
	toast_close_indexes(toastidxs, num_indexes, AccessShareLock);
}

/*
 * CLUSTER / VACUUM FULL: the plaintext of a surviving tuple, re-toasted into
 * the new relation's TOAST table and encrypted afresh.  Dropped columns are
 * emptied, as heap's reform_and_rewrite_tuple does.
 */
HeapTuple
cmk_prepare_tuple_for_rewrite(Relation oldrel, Relation newrel, HeapTuple plain,
							  TupleTableSlot *vslot)
{
	TupleDesc	newdesc = RelationGetDescr(newrel);
	HeapTuple	formed;
	HeapTuple	cipher;
	struct CmkToastState *st;

	ExecClearTuple(vslot);
	heap_deform_tuple(plain, RelationGetDescr(oldrel),
					  vslot->tts_values, vslot->tts_isnull);
	for (int i = 0; i < newdesc->natts; i++)
		if (TupleDescAttr(newdesc, i)->attisdropped)
			vslot->tts_isnull[i] = true;
	ExecStoreVirtualTuple(vslot);

	formed = cmk_form_plain_tuple(newrel, vslot, NULL, 0, &st);
	cipher = cmk_encrypt_tuple(newrel, formed, NULL, NULL);
	cmk_toast_finish(st, true);
	return cipher;
}
