/*-------------------------------------------------------------------------
 *
 * cmkam_codec.c
 *		The cmk_heap tuple codec: turn a plaintext heap tuple into a stored
 *		(encrypted) one and back, one tuple at a time.
 *
 * A stored tuple stays a valid heap tuple for the relation's descriptor:
 * header, null bitmap, alignment padding and varlena length headers are in
 * clear; every attribute's bytes after its length header are XORed with an
 * AES-256-CTR keystream; a trailer inside t_len carries the nonces (each a
 * 16-bit nonce epoch and a 32-bit counter: keys/nonce_epochs.c) and the flags
 * that say how to read it.  Each attribute names one of up to
 * CMK_MAX_NONCES nonces, so an update can keep the stored bytes of every
 * unchanged attribute (HOT and lock strength then behave as on heap) while
 * every changed attribute gets fresh keystream and is re-rolled until its
 * stored bytes differ from the old ones, exactly as heap_update will compare
 * them.  Byte-level layout: docs/tuple-format.md.
 *
 * Its siblings: cmkam_trailer.c reads trailers, cmkam_keystream.c batches
 * keystream, cmkam_page.c decrypts a scan's page at a time.
 *
 * This file must never return a tuple it could not fully decrypt, never
 * reuse a nonce, and never look at the TID (it is chosen after encryption).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "miscadmin.h"
#include "utils/datum.h"

#include "am/cmkam_codec_int.h"
#include "keys/key_store.h"

#define NONCE_RANGE		1024	/* counters a backend reserves at a time */

static struct
{
	int			pid;			/* owner: a forked child must not reuse them */
	uint32		dek_tag;		/* the DEK they were reserved under */
	uint16		epoch;
	uint32		next;
	uint32		left;
}			nonce_state;

/*
 * A fresh nonce in stored form (CMK_NONCE_LEN bytes: epoch id, counter,
 * big-endian): the cluster's current nonce epoch and a counter under it,
 * reserved from shared memory NONCE_RANGE at a time (cmk_nonce_reserve).
 * No counter is handed out twice under one epoch.  Because all backends
 * share the epoch, an update usually stores its fresh nonce as a 4-byte
 * counter next to the old one (docs/tuple-format.md).
 */
static pg_noinline void
reserve_nonces(uint32 dek_tag)
{
	cmk_nonce_reserve(dek_tag, &nonce_state.epoch, &nonce_state.next,
					  NONCE_RANGE);
	nonce_state.left = NONCE_RANGE;
	nonce_state.pid = MyProcPid;
	nonce_state.dek_tag = dek_tag;
}

static inline void
next_nonce(uint8 *out, uint32 dek_tag)
{
	if (unlikely(nonce_state.pid != MyProcPid || nonce_state.left == 0 ||
				 nonce_state.dek_tag != dek_tag))
		reserve_nonces(dek_tag);
	out[0] = (uint8) (nonce_state.epoch >> 8);
	out[1] = (uint8) nonce_state.epoch;
	out[2] = (uint8) (nonce_state.next >> 24);
	out[3] = (uint8) (nonce_state.next >> 16);
	out[4] = (uint8) (nonce_state.next >> 8);
	out[5] = (uint8) nonce_state.next;
	nonce_state.next++;
	nonce_state.left--;
}

/*
 * Locate every attribute of a tuple from attribute first on (which starts
 * at data offset off, unaligned), checking that none runs past data_end (the
 * trailer must never be read as data).  spans[0 .. first) are left alone:
 * the caller fills them.
 * Returns the number of physically present attributes.  A tuple that fails
 * a check is reported (ERROR), or with fault set, described there and -1
 * returned: that is verification, which also requires the data to end
 * exactly where the trailer starts (docs/tuple-format.md: the trailer
 * follows the last attribute; readers never look at bytes in between).
 */
static int
walk_attrs_from(Relation rel, TupleDesc desc, HeapTuple tup, int32 data_end,
				AttrSpan *spans, int first, int32 off, CmkTupleFault *fault)
{
	HeapTupleHeader td = tup->t_data;
	int			natts = HeapTupleHeaderGetNatts(td);
	bool		hasnulls = HeapTupleHasNulls(tup);
	char	   *tp = (char *) td + td->t_hoff;
	int32		limit = data_end - td->t_hoff;
	int			i = -1;

#define WALK_FAIL(msg) \
	do { \
		if (fault == NULL) \
			cmk_report_corrupt(rel, tup, (msg)); \
		fault->what = (msg); \
		fault->attnum = i + 1; \
		return -1; \
	} while (0)

	if (natts > desc->natts || td->t_hoff > data_end || off > limit)
		WALK_FAIL("header does not match the table");

	for (i = first; i < natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		AttrSpan   *s = &spans[i];

		s->is_ondisk = false;
		if (hasnulls && att_isnull(i, td->t_bits))
		{
			s->start = -1;
			s->full = s->hdr = 0;
			continue;
		}
		if (att->attlen > 0)
		{
			off = att_align_nominal(off, att->attalign);
			s->full = att->attlen;
			s->hdr = 0;
		}
		else if (att->attlen == -1)
		{
			char	   *p;

			if (off >= limit)
				WALK_FAIL("attribute beyond end of data");
			off = att_align_pointer(off, att->attalign, -1, tp + off);
			if (off >= limit)
				WALK_FAIL("attribute beyond end of data");
			p = tp + off;
			if (VARATT_IS_1B_E(p))
			{
				if (VARTAG_EXTERNAL(p) != VARTAG_ONDISK)
					WALK_FAIL("unexpected external datum");
				s->is_ondisk = true;
				s->full = TOAST_POINTER_SIZE;
				s->hdr = 1;
			}
			else if (VARATT_IS_1B(p))
			{
				s->full = VARSIZE_1B(p);
				s->hdr = 1;
			}
			else
			{
				if (off + 4 > limit)
					WALK_FAIL("attribute beyond end of data");
				s->full = VARSIZE_4B(p);
				s->hdr = 4;
			}
			if (s->full < s->hdr)
				WALK_FAIL("invalid varlena length");
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_heap does not support column \"%s\" of type cstring",
							NameStr(att->attname))));
		if (off + s->full > limit)
			WALK_FAIL("attribute beyond end of data");
		s->start = td->t_hoff + off;
		off += s->full;
	}
	if (fault != NULL && off != limit)
	{
		i = -1;
		WALK_FAIL(psprintf("data ends at byte %d, but the trailer starts at byte %d",
						   td->t_hoff + off, data_end));
	}
#undef WALK_FAIL
	return natts;
}

static int
walk_attrs(Relation rel, TupleDesc desc, HeapTuple tup, int32 data_end,
		   AttrSpan *spans)
{
	return walk_attrs_from(rel, desc, tup, data_end, spans, 0, 0, NULL);
}

/*
 * Decrypt a stored tuple, whose trailer t describes, into a palloc'd copy;
 * see cmk_decrypt_tuple.  A tuple that fails a check is reported (ERROR),
 * or with fault set, described there and NULL returned (nothing of it left
 * in memory).
 */
static HeapTuple
decrypt_stored(Relation rel, TupleDesc desc, HeapTuple cipher,
			   CmkKeystream *ks, const Trailer *t, CmkTupleFault *fault)
{
	AttrSpan	spans[MaxTupleAttributeNumber];
	HeapTuple	plain;
	XorBatch	batch;
	int			natts;
	bool		has_ext = false;
	Oid			toastrelid = rel->rd_rel->reltoastrelid;
	const char *bad = NULL;
	int			bad_att = 0;

	plain = (HeapTuple) palloc(HEAPTUPLESIZE + t->data_end);
	plain->t_len = t->data_end;
	plain->t_self = cipher->t_self;
	plain->t_tableOid = cipher->t_tableOid;
	plain->t_data = (HeapTupleHeader) ((char *) plain + HEAPTUPLESIZE);
	memcpy(plain->t_data, cipher->t_data, t->data_end);

	natts = walk_attrs_from(rel, desc, plain, t->data_end, spans, 0, 0, fault);
	if (natts < 0)
	{
		pfree(plain);			/* nothing decrypted yet */
		return NULL;
	}
	cmk_batch_init(&batch, ks, desc);
	for (int i = 0; i < natts; i++)
	{
		AttrSpan   *s = &spans[i];

		if (s->start < 0)
			continue;
		if (s->is_ondisk)
		{
			/* a batch between flushes holds no keystream: drop it */
			bad = "raw TOAST pointer in stored tuple";
			bad_att = i + 1;
			break;
		}
		batch_add(&batch, attr_nonce(t, i), i,
				  (uint8 *) plain->t_data + s->start + s->hdr, s->full - s->hdr);
	}
	if (bad == NULL)
		cmk_batch_done(&batch);

	/* Turn decrypted external references into on-disk TOAST pointers. */
	for (int i = 0; bad == NULL && t->extbits && i < natts; i++)
	{
		if (!bit_get(t->extbits, i))
			continue;
		if (spans[i].start < 0 ||
			!extref_to_toast_pointer(TupleDescAttr(desc, i),
									 (uint8 *) plain->t_data + spans[i].start,
									 toastrelid))
		{
			bad = "invalid external reference";
			bad_att = i + 1;
		}
		has_ext = true;
	}
	if (bad != NULL)
	{
		if (fault == NULL)
			cmk_report_corrupt(rel, cipher, bad);
		explicit_bzero(plain->t_data, t->data_end);
		pfree(plain);
		fault->what = bad;
		fault->attnum = bad_att;
		return NULL;
	}
	if (has_ext)
		plain->t_data->t_infomask |= HEAP_HASEXTERNAL;
	return plain;
}

/*
 * Decrypt a stored tuple into a palloc'd copy that keeps the original header
 * (system columns read it), t_self and t_tableOid.  desc is the descriptor
 * the caller will deform with: during ALTER TABLE ... ALTER COLUMN TYPE the
 * relation's own descriptor already describes the new layout.  External references
 * become ordinary on-disk TOAST pointers into the relation's TOAST table,
 * whose fetch callback decrypts the chunks.
 */
HeapTuple
cmk_decrypt_tuple(Relation rel, TupleDesc desc, HeapTuple cipher)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	Trailer		t;

	cmk_parse_trailer(rel, cipher, tag, &t);
	return decrypt_stored(rel, desc, cipher, ks, &t, NULL);
}

/*
 * The same for verification, with the trailer already checked
 * (cmk_trailer_problem): NULL and *fault set where cmk_decrypt_tuple would
 * raise an error about the tuple.  Errors that are not about the tuple (no
 * key, a table this build cannot encrypt) are still raised.
 */
HeapTuple
cmk_decrypt_tuple_checked(Relation rel, TupleDesc desc, HeapTuple cipher,
						  const CmkTrailer *t, CmkTupleFault *fault)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);

	Assert(fault != NULL);
	return decrypt_stored(rel, desc, cipher, ks, t, fault);
}

/*
 * Refuse a tuple that cannot fit on a page, with heap's own error, before
 * any of it is encrypted: heap_insert would refuse it only after, and the
 * encryption of an oversized value is not to be attempted at all (a
 * keystream region has 1 MiB: CMK_REGION_MAX_BYTES).  stored_len is the
 * size the stored tuple will have, or a lower bound of it.
 */
static inline void
check_stored_size(Size stored_len)
{
	if (unlikely(MAXALIGN(stored_len) > MaxHeapTupleSize))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("row is too big: size %zu, maximum size %zu",
						MAXALIGN(stored_len), MaxHeapTupleSize)));
}

/*
 * Insert-only encryption (no old version, so one fresh nonce and no
 * collision check), writing straight into the result and queueing the
 * keystream on a caller's batch: COPY encrypts a whole multi-insert batch
 * with one cipher call per BATCH_BLOCKS blocks.  The result is not
 * encrypted until the batch is flushed.
 */
static HeapTuple
encrypt_for_insert(Relation rel, TupleDesc desc, uint32 tag, HeapTuple plain,
				   XorBatch *batch, char **space)
{
	AttrSpan	spans[MaxTupleAttributeNumber];
	int32		data_len = (int32) plain->t_len;
	int			natts;
	bool		has_ext = false;
	uint8		nonce[CMK_NONCE_LEN];
	NonceRef	nonce_ref;
	int			first = 0;
	int32		tsize;
	HeapTuple	out;
	char	   *d;
	uint8	   *tp;

	/*
	 * Without nulls, the leading fixed-width attributes that follow each
	 * other without padding are one range of region 0 (the same keystream
	 * bytes as one by one), and need no walking.
	 */
	if (!HeapTupleHasNulls(plain) && batch->ncontig > 1 &&
		HeapTupleHeaderGetNatts(plain->t_data) >= batch->ncontig)
		first = batch->ncontig;

	/*
	 * Every span is defined, the prefix's too, so that no loop below can
	 * read an entry nobody wrote (a loop over spans[0 .. natts) once did,
	 * and wrote a varlena header at a garbage offset).  Without nulls or
	 * padding, attribute i of the prefix sits at its nominal offset.
	 */
	for (int i = 0; i < first; i++)
	{
		spans[i].start = plain->t_data->t_hoff + batch->fixed_pos[i];
		spans[i].full = TupleDescAttr(desc, i)->attlen;
		spans[i].hdr = 0;
		spans[i].is_ondisk = false;
	}
	natts = walk_attrs_from(rel, desc, plain, data_len, spans, first,
							first > 0 ? batch->contig_len : 0, NULL);
	for (int i = first; i < natts; i++)
		has_ext |= spans[i].is_ondisk;
	tsize = trailer_size(1, natts, has_ext, false);
	check_stored_size(data_len + tsize);
	out = (HeapTuple) *space;
	*space += MAXALIGN(HEAPTUPLESIZE + data_len + tsize);
	out->t_len = data_len + tsize;
	out->t_self = plain->t_self;
	out->t_tableOid = plain->t_tableOid;
	out->t_data = (HeapTupleHeader) ((char *) out + HEAPTUPLESIZE);
	d = (char *) out->t_data;
	memcpy(d, plain->t_data, data_len);
	out->t_data->t_infomask &= ~HEAP_HASEXTERNAL;

	next_nonce(nonce, tag);
	tp = (uint8 *) d + data_len;
	memset(tp, 0, tsize);
	if (has_ext)
	{
		/* the fixed-width prefix [0, first) holds no TOAST pointer */
		for (int i = first; i < natts; i++)
		{
			if (!spans[i].is_ondisk)
				continue;
			SET_VARSIZE_1B(d + spans[i].start, TOAST_POINTER_SIZE);
			memset(d + spans[i].start + VARHDRSZ_EXTERNAL +
				   offsetof(varatt_external, va_toastrelid), 0, sizeof(Oid));
			tp[i / 8] |= (uint8) (1 << (i % 8));
		}
		tp += (natts + 7) / 8;
	}
	memcpy(tp, nonce, CMK_NONCE_LEN);
	tp += CMK_NONCE_LEN;
	*tp = (uint8) (CMK_FLAGS_MARKER | (has_ext ? CMK_FLAG_HAS_EXTERNAL : 0));

	/* The nonce is copied into the trailer: queue against that copy. */
	nonce_ref = plain_nonce((uint8 *) d + data_len + (has_ext ? (natts + 7) / 8 : 0));
	if (first > 0)
		batch_add(batch, nonce_ref, 0, (uint8 *) d + plain->t_data->t_hoff,
				  batch->contig_len);
	for (int i = first; i < natts; i++)
		if (spans[i].start >= 0)
			batch_add(batch, nonce_ref, i, (uint8 *) d + spans[i].start + spans[i].hdr,
					  spans[i].full - spans[i].hdr);
	return out;
}

/*
 * Encrypt n new tuples for insertion, sharing cipher calls.  The results
 * share one allocation, out[0] at its start: pfree(out[0]) frees them all,
 * which for n = 1 is heap_freetuple() of the one result.
 */
void
cmk_encrypt_tuples(Relation rel, HeapTuple *plains, int n, HeapTuple *out)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	XorBatch	batch;
	Size		space_len = 0;
	char	   *space;

	/* the largest trailer a one-nonce tuple can need: every bit map present */
	for (int i = 0; i < n; i++)
		space_len += MAXALIGN(HEAPTUPLESIZE + plains[i]->t_len +
							  trailer_size(1, HeapTupleHeaderGetNatts(plains[i]->t_data),
										   true, false));
	space = palloc(space_len);

	cmk_batch_init(&batch, ks, RelationGetDescr(rel));
	for (int i = 0; i < n; i++)
		out[i] = encrypt_for_insert(rel, RelationGetDescr(rel), tag, plains[i],
									&batch, &space);
	cmk_batch_done(&batch);
}

/*
 * Encrypt a plaintext tuple (formed by heap_form_tuple; external values are
 * on-disk TOAST pointers produced by our toaster).  With old_cipher, the
 * stored version being updated, unchanged attributes keep their stored bytes
 * and nonce, and changed ones are guaranteed to differ from the old bytes;
 * old_decrypted, if the caller has it, is old_cipher decrypted (saves
 * decrypting it again).
 */
HeapTuple
cmk_encrypt_tuple(Relation rel, HeapTuple plain, HeapTuple old_cipher,
				  HeapTuple old_decrypted)
{
	TupleDesc	desc = RelationGetDescr(rel);
	HeapTuple	result;
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	AttrSpan	spans[MaxTupleAttributeNumber];
	AttrSpan	old_spans[MaxTupleAttributeNumber];
	int8		nonce_of[MaxTupleAttributeNumber];	/* index into nonces */
	uint8		nonces[CMK_MAX_NONCES * CMK_NONCE_LEN];
	int			nnonces = 0;
	int			new_idx = -1;
	int			natts;
	int			old_natts = 0;
	bool		has_ext = false;
	bool		overflow = false;
	bool		short_nonces;
	Trailer		ot = {0};
	HeapTuple	old_plain = NULL;
	HeapTuple	out;
	char	   *stored;			/* stored-form plaintext (refs converted) */
	char	   *stored_fresh = NULL;	/* same, before reusing old bytes */
	int32		data_len = (int32) plain->t_len;
	int32		tsize;
	uint8	   *tp;

	if (old_cipher == NULL)
	{
		cmk_encrypt_tuples(rel, &plain, 1, &result);
		return result;
	}

	natts = walk_attrs(rel, desc, plain, data_len, spans);
	/* the smallest trailer it can get; heap_update checks the final size */
	check_stored_size(data_len + trailer_size(1, natts, false, false));

	/* Stored form: on-disk pointers become short varlenas to encrypt. */
	stored = palloc(data_len);
	memcpy(stored, plain->t_data, data_len);
	((HeapTupleHeader) stored)->t_infomask &= ~HEAP_HASEXTERNAL;
	for (int i = 0; i < natts; i++)
	{
		if (!spans[i].is_ondisk)
			continue;
		has_ext = true;
		SET_VARSIZE_1B(stored + spans[i].start, TOAST_POINTER_SIZE);
		memset(stored + spans[i].start + VARHDRSZ_EXTERNAL +
			   offsetof(varatt_external, va_toastrelid), 0, sizeof(Oid));
	}

	if (old_cipher != NULL)
	{
		stored_fresh = palloc(data_len);
		memcpy(stored_fresh, stored, data_len);
		cmk_parse_trailer(rel, old_cipher, tag, &ot);
		/*
		 * External references are turned back into stored form below, in our
		 * own copy; without them the caller's decryption is only read.
		 */
		if (old_decrypted == NULL)
			old_plain = cmk_decrypt_tuple(rel, desc, old_cipher);
		else if (ot.extbits)
			old_plain = heap_copytuple(old_decrypted);
		else
			old_plain = old_decrypted;
		/* back to stored form for byte comparison */
		old_natts = walk_attrs(rel, desc, old_cipher, ot.data_end, old_spans);
		for (int i = 0; ot.extbits && i < old_natts; i++)
		{
			if (bit_get(ot.extbits, i))
			{
				char	   *p = (char *) old_plain->t_data + old_spans[i].start;

				SET_VARSIZE_1B(p, TOAST_POINTER_SIZE);
				memset(p + VARHDRSZ_EXTERNAL + offsetof(varatt_external, va_toastrelid),
					   0, sizeof(Oid));
			}
		}
	}

	/*
	 * Assign nonces: an attribute whose stored-form plaintext is unchanged
	 * keeps the old ciphertext and nonce.
	 */
	for (int i = 0; i < natts; i++)
	{
		AttrSpan   *s = &spans[i];
		AttrSpan   *o = i < old_natts ? &old_spans[i] : NULL;

		nonce_of[i] = -1;
		if (s->start < 0)
			continue;
		if (o && o->start >= 0 && o->full == s->full &&
			bit_get(ot.extbits, i) == s->is_ondisk &&
			memcmp(stored + s->start, (char *) old_plain->t_data + o->start, s->full) == 0)
		{
			uint8		n[CMK_NONCE_LEN];
			int			j;

			trailer_nonce_stored(&ot, map_get(&ot, i), n);

			for (j = 0; j < nnonces; j++)
				if (memcmp(nonces + j * CMK_NONCE_LEN, n, CMK_NONCE_LEN) == 0)
					break;
			if (j == nnonces)
			{
				if (nnonces == CMK_MAX_NONCES - 1)
				{
					overflow = true;	/* keep one slot for the new nonce */
					break;
				}
				memcpy(nonces + j * CMK_NONCE_LEN, n, CMK_NONCE_LEN);
				nnonces++;
			}
			nonce_of[i] = j;
			memcpy(stored + s->start, (char *) old_cipher->t_data + o->start, s->full);
		}
	}
	/* Ran out of nonce slots: no reuse at all for this version. */
	if (overflow)
	{
		nnonces = 0;
		memcpy(stored, stored_fresh, data_len);
		for (int i = 0; i < natts; i++)
			nonce_of[i] = -1;
	}

	/* Attributes without a nonce get a fresh one. */
	for (int i = 0; i < natts; i++)
		if (spans[i].start >= 0 && nonce_of[i] < 0)
			new_idx = nnonces;
	if (new_idx >= 0 || nnonces == 0)
	{
		new_idx = nnonces++;
		next_nonce(nonces + new_idx * CMK_NONCE_LEN, tag);
	}

	/* room for the long form; the nonce may still be re-drawn below */
	tsize = trailer_size(nnonces, natts, has_ext, false);
	out = (HeapTuple) palloc0(HEAPTUPLESIZE + data_len + tsize);
	out->t_len = data_len + tsize;
	out->t_self = plain->t_self;
	out->t_tableOid = plain->t_tableOid;
	out->t_data = (HeapTupleHeader) ((char *) out + HEAPTUPLESIZE);

	for (;;)
	{
		XorBatch	batch;
		bool		collision = false;

		memcpy(out->t_data, stored, data_len);
		cmk_batch_init(&batch, ks, desc);
		for (int i = 0; i < natts; i++)
		{
			if (spans[i].start < 0 || nonce_of[i] >= 0)
				continue;
			batch_add(&batch, plain_nonce(nonces + new_idx * CMK_NONCE_LEN), i,
					  (uint8 *) out->t_data + spans[i].start + spans[i].hdr,
					  spans[i].full - spans[i].hdr);
		}
		cmk_batch_done(&batch);

		/*
		 * heap_update decides HOT and lock strength by comparing the stored
		 * bytes (heap_getattr + datumIsEqual) of the old and new tuple.  A
		 * changed attribute whose fresh ciphertext happens to equal the old
		 * bytes (1 in 256 for a one-byte column) would look unchanged: re-roll
		 * the nonce until it does not.
		 */
		if (old_cipher != NULL)
		{
			out->t_len = data_len;	/* compare without the trailer */
			for (int i = 0; i < natts && !collision; i++)
			{
				Form_pg_attribute att = TupleDescAttr(desc, i);
				Datum		a,
							b;
				bool		anull,
							bnull;

				if (spans[i].start < 0 || nonce_of[i] >= 0)
					continue;
				a = heap_getattr(old_cipher, i + 1, desc, &anull);
				b = heap_getattr(out, i + 1, desc, &bnull);
				if (!anull && !bnull && datumIsEqual(a, b, att->attbyval, att->attlen))
					collision = true;
			}
			out->t_len = data_len + tsize;
		}
		if (!collision)
			break;
		next_nonce(nonces + new_idx * CMK_NONCE_LEN, tag);
	}

	/*
	 * Trailer: [extbits][map][nonces 1..][nonce 0][flags].  Nonces drawn
	 * since the postmaster started share one epoch (next_nonce), so usually
	 * only their 4-byte counters need storing.
	 */
	short_nonces = nnonces > 1;
	for (int j = 1; j < nnonces; j++)
		if (memcmp(nonces + j * CMK_NONCE_LEN, nonces, CMK_NONCE_EPOCH_LEN) != 0)
			short_nonces = false;
	tsize = trailer_size(nnonces, natts, has_ext, short_nonces);
	out->t_len = data_len + tsize;
	tp = (uint8 *) out->t_data + data_len;
	if (has_ext)
	{
		for (int i = 0; i < natts; i++)
			if (spans[i].is_ondisk)
				tp[i / 8] |= (uint8) (1 << (i % 8));
		tp += (natts + 7) / 8;
	}
	if (nnonces > 1)
	{
		for (int i = 0; i < natts; i++)
		{
			/* NULL attributes have no bytes; give them nonce 0 */
			int			idx = nonce_of[i] >= 0 ? nonce_of[i] :
				(spans[i].start >= 0 ? new_idx : 0);

			if (nnonces == 2)
				tp[i / 8] |= (uint8) (idx << (i % 8));
			else
				tp[i / 2] |= (uint8) (idx << ((i % 2) * 4));
		}
		tp += map_size(nnonces, natts);
	}
	for (int j = 1; j < nnonces; j++)
	{
		if (short_nonces)
		{
			memcpy(tp, nonces + j * CMK_NONCE_LEN + CMK_NONCE_EPOCH_LEN,
				   CMK_NONCE_SHORT_LEN);
			tp += CMK_NONCE_SHORT_LEN;
		}
		else
		{
			memcpy(tp, nonces + j * CMK_NONCE_LEN, CMK_NONCE_LEN);
			tp += CMK_NONCE_LEN;
		}
	}
	memcpy(tp, nonces, CMK_NONCE_LEN);
	tp += CMK_NONCE_LEN;
	*tp++ = (uint8) (CMK_FLAGS_MARKER | (nnonces - 1) |
					 (has_ext ? CMK_FLAG_HAS_EXTERNAL : 0) |
					 (short_nonces ? CMK_FLAG_SHORT_NONCES : 0));
	Assert(tp == (uint8 *) out->t_data + out->t_len);

	out->t_data->t_infomask &= ~HEAP_HASEXTERNAL;
	pfree(stored);
	if (old_plain)
	{
		if (old_plain != old_decrypted)
			pfree(old_plain);
		pfree(stored_fresh);
	}
	return out;
}

/*
 * Lazy decryption for cmk_heap slots: decrypt and deform attributes
 * [from, to) of a tuple whose header and data (without trailer) were copied
 * to td, continuing at *offp / *slowp as slot_deform_heap_tuple does (and
 * maintaining attcacheoff the same way: the layout is heap's).  One cipher
 * call serves all the attributes asked for; attributes after them are
 * neither decrypted nor looked at.
 */
void
cmk_deform_decrypt(Relation rel, TupleDesc desc, HeapTupleHeader td,
				   int32 data_end, const CmkTrailer *t, int from, int to,
				   Datum *values, bool *isnull, uint32 *offp, bool *slowp)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	bool		hasnulls = (td->t_infomask & HEAP_HASNULL) != 0;
	char	   *tp = (char *) td + td->t_hoff;
	int32		limit = data_end - td->t_hoff;
	uint32		off = *offp;
	bool		slow = *slowp;
	int32		starts[MaxTupleAttributeNumber];
	XorBatch	batch;
	Oid			toastrelid = rel->rd_rel->reltoastrelid;

	cmk_batch_init(&batch, ks, desc);
	for (int i = from; i < to; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int32		full;
		int32		hdr;

		starts[i] = -1;
		if (!locate_attr(rel, td, att, i, hasnulls, tp, limit, &off, &slow,
						 &full, &hdr))
		{
			values[i] = (Datum) 0;
			isnull[i] = true;
			continue;
		}
		isnull[i] = false;

		batch_add(&batch, attr_nonce(t, i), i,
				  (uint8 *) tp + off + hdr, full - hdr);
		starts[i] = (int32) off;
		off += full;
		if (att->attlen <= 0)
			slow = true;
	}
	cmk_batch_done(&batch);

	for (int i = from; i < to; i++)
	{
		if (bit_get(t->extbits, i) &&
			(starts[i] < 0 ||
			 !extref_to_toast_pointer(TupleDescAttr(desc, i),
									  (uint8 *) tp + starts[i], toastrelid)))
			cmk_corrupt_at(rel, td, "invalid external reference");
		if (starts[i] >= 0)
			values[i] = fetchatt(TupleDescAttr(desc, i), tp + starts[i]);
	}
	*offp = off;
	*slowp = slow;
}
