/*-------------------------------------------------------------------------
 *
 * cmkam_trailer.c
 *		Reading the trailer of a stored cmk_heap tuple (its flags, nonces,
 *		nonce map and external-reference bits) with every check the rest of
 *		the codec relies on, and reporting a tuple that fails them.
 *
 * parse_trailer (cmkam_codec_int.h) reads the common one-nonce trailer
 * inline and hands everything else to cmk_parse_trailer.  This file must
 * never accept a trailer that reaches into the tuple header, a nonce map
 * entry naming a nonce the trailer does not hold, or a nonce epoch that is
 * not registered under the current data encryption key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "am/cmkam_codec_int.h"
#include "keys/key_store.h"

void
cmk_report_corrupt(Relation rel, HeapTuple tup, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("encrypted tuple (%u,%u) in relation \"%s\" is not readable: %s",
					ItemPointerGetBlockNumberNoCheck(&tup->t_self),
					ItemPointerGetOffsetNumberNoCheck(&tup->t_self),
					RelationGetRelationName(rel), what),
			 errhint("The tuple was not written by cmk_heap or the relation file is damaged.")));
}

void
cmk_corrupt_at(Relation rel, HeapTupleHeader td, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("encrypted tuple in relation \"%s\" is not readable: %s",
					RelationGetRelationName(rel), what),
			 errhint("The tuple was not written by cmk_heap or the relation file is damaged.")));
}

/*
 * What is wrong with a trailer: the one description that both the readers
 * (which raise it as an error) and verification (which returns it as a row)
 * use, so that the two can never disagree about what is sound.
 */
typedef struct TrailerFault
{
	const char *what;			/* a generic problem, or NULL */
	int			old_format;		/* 1 or 2: a pre-release format, else 0 */
	int			bad_epoch;		/* an epoch id not usable here, or -1 */
} TrailerFault;

/*
 * Parse and check the trailer of tup into t.  False, with the reason in *f,
 * if a check fails.  Throws nothing: every reader and verification share it.
 */
static bool
parse_full(HeapTuple tup, uint32 want_tag, Trailer *t, TrailerFault *f)
{
	const uint8 *base = (const uint8 *) tup->t_data;
	int32		len = (int32) tup->t_len;
	int			natts = HeapTupleHeaderGetNatts(tup->t_data);
	uint8		flags;
	int32		size;

#define FAIL(reason) \
	do { \
		f->what = (reason); \
		return false; \
	} while (0)

	f->what = NULL;
	f->old_format = 0;
	f->bad_epoch = -1;
	if (len < (int32) SizeofHeapTupleHeader + CMK_TRAILER_MIN)
		FAIL("no cmk_heap trailer");
	if ((base[len - 1] & CMK_FLAGS_MARKER_MASK) != CMK_FLAGS_MARKER)
	{
		if (base[len - 1] == CMK_FORMAT_VERSION_1 ||
			base[len - 1] == CMK_FORMAT_VERSION_2)
			f->old_format = base[len - 1] == CMK_FORMAT_VERSION_1 ? 1 : 2;
		FAIL("no cmk_heap trailer");
	}
	flags = base[len - 1];
	t->nnonces = (flags & CMK_FLAG_NONCES_MASK) + 1;
	t->short_nonces = (flags & CMK_FLAG_SHORT_NONCES) != 0;
	if (t->short_nonces && t->nnonces == 1)
		FAIL("invalid trailer flags");
	size = trailer_size(t->nnonces, natts, (flags & CMK_FLAG_HAS_EXTERNAL) != 0,
						t->short_nonces);
	if (len - size < tup->t_data->t_hoff)
		FAIL("trailer larger than the tuple");
	t->data_end = len - size;
	t->extbits = (flags & CMK_FLAG_HAS_EXTERNAL) ? base + t->data_end : NULL;
	t->map = NULL;
	t->map_bits = 0;
	if (t->nnonces > 1)
	{
		t->map = base + t->data_end + (t->extbits ? (natts + 7) / 8 : 0);
		t->map_bits = t->nnonces == 2 ? 1 : 4;
	}
	t->nonce0 = base + len - CMK_TRAILER_MIN;
	t->more = t->map ? t->map + map_size(t->nnonces, natts) : NULL;

	/* every epoch named must be registered, under the current DEK */
	for (int j = 0; j < (t->short_nonces ? 1 : t->nnonces); j++)
	{
		const uint8 *id = j == 0 ? t->nonce0 : t->more + (j - 1) * CMK_NONCE_LEN;
		uint16		eid = (id[0] << 8) | id[1];

		if (!cmk_epoch_usable(cmk_epoch(id), want_tag) &&
			!cmk_epoch_recheck(eid, want_tag))
		{
			f->bad_epoch = eid;
			FAIL("unusable nonce epoch");
		}
	}
	t->pre0 = cmk_epoch(t->nonce0)->prefix;
	/* a 1-bit map (two nonces) cannot name a third; 4-bit entries can */
	for (int i = 0; t->map_bits == 4 && i < natts; i++)
		if (map_get(t, i) >= t->nnonces)
			FAIL("invalid nonce reference");
#undef FAIL
	return true;
}

void
cmk_parse_trailer(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t)
{
	TrailerFault f;

	if (parse_full(tup, want_tag, t, &f))
		return;
	if (f.old_format)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("tuple (%u,%u) in relation \"%s\" has cmk_heap tuple format %d, which this build does not read",
						ItemPointerGetBlockNumberNoCheck(&tup->t_self),
						ItemPointerGetOffsetNumberNoCheck(&tup->t_self),
						RelationGetRelationName(rel), f.old_format),
				 errdetail("Formats 1 and 2 were written only by pre-release builds of cmk_storage."),
				 errhint("Dump the table with the build that wrote it and restore it with this one.")));
	if (f.bad_epoch >= 0)
		cmk_epoch_report_unusable(RelationGetRelationName(rel), &tup->t_self,
								  (uint16) f.bad_epoch, want_tag);
	cmk_report_corrupt(rel, tup, f.what);
}

/*
 * The same without reporting: false if cmk_parse_trailer would raise an
 * error.  For a reader that leaves damaged tuples to a later pass, so that
 * the error names the first damaged tuple in scan order.
 */
bool
cmk_trailer_readable(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t)
{
	TrailerFault f;

	return parse_full(tup, want_tag, t, &f);
}

/*
 * For verification (cmkam_verify.c): NULL if cmk_parse_trailer accepts the
 * trailer of tup, else what it would refuse it for, as a palloc'd message
 * without the tuple's location (the caller reports that).  Also reports
 * what no reader needs but no cmk_heap writer ever stores (cmkam_codec.c
 * writes every trailer): a nonce no attribute uses, a nonce map entry or an
 * external-reference bit for a null attribute, nonzero bits past the last
 * attribute, an external-reference bitmap without a bit set.  Damage there
 * (a flipped map bit decrypts an attribute with another nonce's keystream)
 * is otherwise invisible.  The epoch table must be readable
 * (cmk_epochs_check_readable), or every epoch is reported.
 */
char *
cmk_trailer_problem(HeapTuple tup, uint32 want_tag, CmkTrailer *t)
{
	TrailerFault f;
	HeapTupleHeader td = tup->t_data;
	int			natts = HeapTupleHeaderGetNatts(td);
	bool		hasnulls = (td->t_infomask & HEAP_HASNULL) != 0;
	bool		used[CMK_MAX_NONCES] = {false};
	bool		anyext = false;

	if (!parse_full(tup, want_tag, t, &f))
	{
		if (f.old_format)
			return psprintf("tuple has cmk_heap tuple format %d, which this build does not read",
							f.old_format);
		if (f.bad_epoch < 0)
			return pstrdup(f.what);
		return cmk_epoch_unusable_reason((uint16) f.bad_epoch, want_tag);
	}

	for (int i = 0; i < natts; i++)
	{
		bool		isnull = hasnulls && att_isnull(i, td->t_bits);

		if (isnull && map_get(t, i) != 0)
			return psprintf("nonce map gives null attribute %d nonce %d",
							i + 1, map_get(t, i));
		if (isnull && bit_get(t->extbits, i))
			return psprintf("external-reference bit set for null attribute %d",
							i + 1);
		if (!isnull)
			used[map_get(t, i)] = true;
		anyext |= bit_get(t->extbits, i);
	}
	for (int j = 0; t->nnonces > 1 && j < t->nnonces; j++)
		if (!used[j])
			return psprintf("trailer nonce %d is used by no attribute", j);
	if (t->extbits && !anyext)
		return pstrdup("external-reference bitmap flagged but empty");
	/* the bits past natts of each bitmap's last byte */
	if (t->extbits && natts % 8 != 0 && (t->extbits[natts / 8] >> (natts % 8)) != 0)
		return pstrdup("external-reference bitmap has bits set past the last attribute");
	if (t->map_bits == 1 && natts % 8 != 0 && (t->map[natts / 8] >> (natts % 8)) != 0)
		return pstrdup("nonce map has bits set past the last attribute");
	if (t->map_bits == 4 && natts % 2 != 0 && (t->map[natts / 2] >> 4) != 0)
		return pstrdup("nonce map has bits set past the last attribute");
	return NULL;
}

bool
cmk_tuple_has_external(HeapTuple cipher)
{
	const uint8 *base = (const uint8 *) cipher->t_data;
	uint8		flags = cipher->t_len > 0 ? base[cipher->t_len - 1] : 0;

	return (flags & CMK_FLAGS_MARKER_MASK) == CMK_FLAGS_MARKER &&
		(flags & CMK_FLAG_HAS_EXTERNAL) != 0;
}

void
cmk_check_tuple_format(Relation rel, HeapTuple cipher)
{
	uint32		tag;
	Trailer		t;

	(void) cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	cmk_parse_trailer(rel, cipher, tag, &t);
}
