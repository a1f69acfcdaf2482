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
 * The epoch of a stored nonce if it is usable under want_tag; otherwise
 * reported, or NULL if !report.
 */
static inline const CmkEpoch *
checked_epoch(Relation rel, HeapTuple tup, const uint8 *nonce, uint32 want_tag,
			  bool report)
{
	const CmkEpoch *e = cmk_epoch(nonce);
	uint16		id = (nonce[0] << 8) | nonce[1];

	if (!cmk_epoch_usable(e, want_tag) && !cmk_epoch_recheck(id, want_tag))
	{
		if (!report)
			return NULL;
		cmk_epoch_report_unusable(RelationGetRelationName(rel), &tup->t_self,
								  id, want_tag);
	}
	return e;
}

/*
 * Parse and check the trailer of tup into t.  A trailer that fails a check
 * is reported (ERROR) if report, else the result is false.
 */
static bool
parse_full(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t,
		   bool report)
{
	const uint8 *base = (const uint8 *) tup->t_data;
	int32		len = (int32) tup->t_len;
	int			natts = HeapTupleHeaderGetNatts(tup->t_data);
	uint8		flags;
	int32		size;
	const CmkEpoch *e;

#define FAIL(what) \
	do { \
		if (!report) \
			return false; \
		cmk_report_corrupt(rel, tup, (what)); \
	} while (0)

	if (len < (int32) SizeofHeapTupleHeader + CMK_TRAILER_MIN ||
		(base[len - 1] & CMK_FLAGS_MARKER_MASK) != CMK_FLAGS_MARKER)
	{
		if (!report)
			return false;
		if (len >= (int32) SizeofHeapTupleHeader + CMK_TRAILER_MIN &&
			(base[len - 1] == CMK_FORMAT_VERSION_1 ||
			 base[len - 1] == CMK_FORMAT_VERSION_2))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("tuple (%u,%u) in relation \"%s\" has cmk_heap tuple format %d, which this build does not read",
							ItemPointerGetBlockNumberNoCheck(&tup->t_self),
							ItemPointerGetOffsetNumberNoCheck(&tup->t_self),
							RelationGetRelationName(rel),
							base[len - 1] == CMK_FORMAT_VERSION_1 ? 1 : 2),
					 errdetail("Formats 1 and 2 were written only by pre-release builds of cmk_storage."),
					 errhint("Dump the table with the build that wrote it and restore it with this one.")));
		cmk_report_corrupt(rel, tup, "no cmk_heap trailer");
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
	if ((e = checked_epoch(rel, tup, t->nonce0, want_tag, report)) == NULL)
		return false;
	t->pre0 = e->prefix;
	for (int j = 1; !t->short_nonces && j < t->nnonces; j++)
		if (checked_epoch(rel, tup, t->more + (j - 1) * CMK_NONCE_LEN,
						  want_tag, report) == NULL)
			return false;
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
	(void) parse_full(rel, tup, want_tag, t, true);
}

/*
 * The same without reporting: false if cmk_parse_trailer would raise an
 * error.  For a reader that leaves damaged tuples to a later pass, so that
 * the error names the first damaged tuple in scan order.
 */
bool
cmk_trailer_readable(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t)
{
	return parse_full(rel, tup, want_tag, t, false);
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
