/*-------------------------------------------------------------------------
 *
 * cmkam_verify.c
 *		verify_relation(): check a cmk_heap relation for corruption.
 *
 * amcheck's verify_heapam (and so pg_amcheck) refuses every access method
 * but heap.  This is its counterpart for cmk_heap, with the same interface
 * (one row per problem: blkno, offnum, attnum, msg) and the same checks of
 * what cmk_heap shares with heap: line pointers, tuple headers, xmin and
 * xmax against the relation's freeze horizon and the next transaction ID,
 * multixact IDs, HOT update chains, attribute lengths.  Then what only
 * cmk_heap has, with the codec's own checks (cmkam_trailer.c,
 * cmkam_codec.c) run in their non-throwing form: the trailer, the nonce
 * epochs it names (registered, of the current DEK), every attribute inside
 * the data, every value decrypted, external references that decrypt to
 * sound TOAST pointers, and, for those, every encrypted chunk fetched,
 * checked and decrypted like a stored tuple of its own.
 *
 * This file must never raise an error about a damaged tuple (each problem
 * is a row; errors are for the relation as a whole: no key, no epoch table,
 * a wrong relation), never put plaintext into a message or leave it in
 * memory it frees, never look up the commit status of a transaction ID it
 * has not first found inside the valid range (clog lookups of garbage can
 * fail), and never read outside the line pointer's bytes of a page.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/heaptoast.h"
#include "access/multixact.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/toast_compression.h"
#include "access/toast_internals.h"
#include "access/transam.h"
#include "access/visibilitymap.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "common/pg_lzcompress.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"

#include "am/cmkam.h"
#include "keys/key_store.h"

PG_FUNCTION_INFO_V1(cmk_verify_relation);

#define VERIFY_COLS			4
#define MAX_VARLENA_BYTES	0x3FFFFFFF	/* a varlena's 30-bit length */

/*
 * pglz writes at least one control byte per 8 items and takes at least 2
 * bytes for an item that expands to at most 273: a compressed value never
 * claims more than about 100 raw bytes per stored byte.  A larger claim is
 * damage, and is not worth allocating for.
 */
#define PGLZ_MAX_EXPANSION	128

/* Where a transaction or multixact ID lies against the valid range. */
typedef enum XidRange
{
	XR_OK,
	XR_INVALID,
	XR_FUTURE,					/* at or after the next ID */
	XR_BEFORE_CLUSTER,			/* before the oldest the cluster keeps */
	XR_BEFORE_RELATION			/* before the relation's freeze horizon */
} XidRange;

typedef enum XidState
{
	XS_COMMITTED,
	XS_CURRENT,
	XS_IN_PROGRESS,
	XS_ABORTED
} XidState;

/* A TOAST pointer to check once the main page's lock is released. */
typedef struct PendingToast
{
	struct varatt_external ptr;
	BlockNumber blkno;
	OffsetNumber offnum;
	int			attnum;
} PendingToast;

/* One call of verify_relation. */
typedef struct VerifyState
{
	Relation	rel;
	TupleDesc	desc;
	uint32		dek_tag;

	/* transaction ID horizons, refreshed when an ID falls outside them */
	FullTransactionId next_fxid;
	FullTransactionId oldest_fxid;
	TransactionId relfrozenxid;
	MultiXactId next_mxid;
	MultiXactId oldest_mxid;
	MultiXactId relminmxid;
	TransactionId safe_xmin;	/* xmax from here on cannot be vacuumed
								 * while we run */
	TransactionId cached_xid;
	XidState	cached_state;

	/* the TOAST relation, if checked */
	Relation	toastrel;
	Relation   *toastidx;
	int			ntoastidx;
	Relation	toast_index;
	List	   *pending;

	/* per line pointer of the page being checked: [1 .. MaxOffsetNumber] */
	struct LineInfo *info;
	/* a decrypted tuple of the relation, deformed */
	Datum	   *values;
	bool	   *isnull;

	/* where we are; attnum 0: not an attribute */
	BlockNumber blkno;
	OffsetNumber offnum;
	int			attnum;
	bool		corrupt;

	BufferAccessStrategy strategy;
	MemoryContext fn_cxt;		/* lives as long as the call */
	MemoryContext tuple_cxt;	/* reset after each tuple */
	Tuplestorestate *store;
	TupleDesc	outdesc;
} VerifyState;

/* What the page pass learnt about each line pointer, for the HOT checks. */
typedef struct LineInfo
{
	bool		valid;			/* passed the line pointer checks */
	OffsetNumber next;			/* redirect target or same-page ctid */
	OffsetNumber prev;			/* predecessor in a HOT chain */
	bool		xmin_known;		/* xmin_state is set */
	XidState	xmin_state;
	TransactionId update_xid;	/* the updater, if safely known */
} LineInfo;

/*
 * A result row: a problem at the tuple (and attribute) being checked.  msg
 * is palloc'd and freed here: a badly damaged table can give many rows.
 */
static void
report(VerifyState *vs, char *msg)
{
	Datum		values[VERIFY_COLS];
	bool		nulls[VERIFY_COLS] = {false};

	values[0] = Int64GetDatum((int64) vs->blkno);
	values[1] = Int32GetDatum((int32) vs->offnum);
	values[2] = Int32GetDatum(vs->attnum);
	nulls[2] = vs->attnum <= 0;
	values[3] = CStringGetTextDatum(msg);
	tuplestore_putvalues(vs->store, vs->outdesc, values, nulls);
	pfree(DatumGetPointer(values[3]));
	pfree(msg);
	vs->corrupt = true;
}

/* Wipe plaintext before giving its memory back. */
static void
wipe_free(void *p, Size len)
{
	explicit_bzero(p, len);
	pfree(p);
}

/* ---------------------------------------------------------------------
 * Transaction IDs
 * ---------------------------------------------------------------------
 */

/*
 * The 64-bit form of an xid seen in a tuple, taking it to lie within 2^31
 * of the next xid.  One from before the first xid ever assigned (possible
 * only as damage) becomes the first normal one, so it compares as too old.
 */
static FullTransactionId
widen_xid(const VerifyState *vs, TransactionId xid)
{
	uint64		next = U64FromFullTransactionId(vs->next_fxid);
	int32		behind;

	if (!TransactionIdIsNormal(xid))
		return FullTransactionIdFromEpochAndXid(0, xid);
	behind = (int32) (XidFromFullTransactionId(vs->next_fxid) - xid);
	if (behind > 0 && next < (uint64) behind + FirstNormalTransactionId)
		return FullTransactionIdFromEpochAndXid(0, FirstNormalTransactionId);
	return FullTransactionIdFromU64(next - behind);
}

static void
refresh_xid_horizons(VerifyState *vs)
{
	TransactionId oldest;

	LWLockAcquire(XidGenLock, LW_SHARED);
	vs->next_fxid = ShmemVariableCache->nextXid;
	oldest = ShmemVariableCache->oldestXid;
	LWLockRelease(XidGenLock);
	vs->oldest_fxid = widen_xid(vs, oldest);
	ReadMultiXactIdRange(&vs->oldest_mxid, &vs->next_mxid);
}

static XidRange
xid_range(VerifyState *vs, TransactionId xid, TransactionId relfrozenxid)
{
	FullTransactionId fxid;

	if (!TransactionIdIsValid(xid))
		return XR_INVALID;
	if (xid == BootstrapTransactionId || xid == FrozenTransactionId)
		return XR_OK;
	fxid = widen_xid(vs, xid);
	if (!FullTransactionIdPrecedes(fxid, vs->next_fxid) ||
		FullTransactionIdPrecedes(fxid, vs->oldest_fxid))
	{
		/* the horizons may have moved since we read them */
		refresh_xid_horizons(vs);
		fxid = widen_xid(vs, xid);
	}
	if (!FullTransactionIdPrecedes(fxid, vs->next_fxid))
		return XR_FUTURE;
	if (FullTransactionIdPrecedes(fxid, vs->oldest_fxid))
		return XR_BEFORE_CLUSTER;
	if (TransactionIdIsNormal(relfrozenxid) &&
		FullTransactionIdPrecedes(fxid, widen_xid(vs, relfrozenxid)))
		return XR_BEFORE_RELATION;
	return XR_OK;
}

/*
 * The commit state of an xid that xid_range() found valid.  An xid older
 * than the commit log keeps is committed: anything else would have been
 * removed before the log was truncated.
 */
static XidState
xid_state(VerifyState *vs, TransactionId xid)
{
	XidState	st = XS_COMMITTED;

	if (xid == BootstrapTransactionId || xid == FrozenTransactionId)
		return XS_COMMITTED;
	if (xid == vs->cached_xid)
		return vs->cached_state;
	LWLockAcquire(XactTruncationLock, LW_SHARED);
	if (!FullTransactionIdPrecedes(widen_xid(vs, xid),
								   widen_xid(vs, ShmemVariableCache->oldestClogXid)))
	{
		if (TransactionIdIsCurrentTransactionId(xid))
			st = XS_CURRENT;
		else if (TransactionIdIsInProgress(xid))
			st = XS_IN_PROGRESS;
		else if (TransactionIdDidCommit(xid))
			st = XS_COMMITTED;
		else
			st = XS_ABORTED;
	}
	LWLockRelease(XactTruncationLock);
	vs->cached_xid = xid;
	vs->cached_state = st;
	return st;
}

/* Report an xid outside the valid range; what names it ("xmin", ...). */
static void
report_xid(VerifyState *vs, const char *what, TransactionId xid, XidRange r)
{
	FullTransactionId bound;
	const char *rel;

	switch (r)
	{
		case XR_FUTURE:
			bound = vs->next_fxid;
			rel = "equals or exceeds next valid transaction ID";
			break;
		case XR_BEFORE_CLUSTER:
			bound = vs->oldest_fxid;
			rel = "precedes oldest valid transaction ID";
			break;
		case XR_BEFORE_RELATION:
			bound = widen_xid(vs, vs->relfrozenxid);
			rel = "precedes relation freeze threshold";
			break;
		default:
			report(vs, psprintf("%s is invalid", what));
			return;
	}
	report(vs, psprintf("%s %u %s %u:%u", what, xid, rel,
						EpochFromFullTransactionId(bound),
						XidFromFullTransactionId(bound)));
}

static XidRange
mxid_range(VerifyState *vs, MultiXactId mxid)
{
	for (int pass = 0; pass < 2; pass++)
	{
		if (!MultiXactIdIsValid(mxid))
			return XR_INVALID;
		if (MultiXactIdPrecedes(mxid, vs->relminmxid))
			return XR_BEFORE_RELATION;
		if (MultiXactIdPrecedes(mxid, vs->oldest_mxid))
		{
			if (pass == 0)
			{
				refresh_xid_horizons(vs);
				continue;
			}
			return XR_BEFORE_CLUSTER;
		}
		if (MultiXactIdPrecedesOrEquals(vs->next_mxid, mxid))
		{
			if (pass == 0)
			{
				refresh_xid_horizons(vs);
				continue;
			}
			return XR_FUTURE;
		}
		break;
	}
	return XR_OK;
}

/* ---------------------------------------------------------------------
 * Tuple header and visibility (what heap has too)
 * ---------------------------------------------------------------------
 */

/*
 * Is the header sound enough to find the data?  Reports what is not.
 */
static bool
check_header(VerifyState *vs, HeapTupleHeader td, uint16 lp_len)
{
	int			natts = HeapTupleHeaderGetNatts(td);
	bool		hasnulls = (td->t_infomask & HEAP_HASNULL) != 0;
	unsigned	want_hoff;
	bool		ok = true;

	if (td->t_hoff > lp_len)
	{
		report(vs, psprintf("data begins at offset %u beyond the tuple length %u",
							td->t_hoff, lp_len));
		ok = false;
	}
	if ((td->t_infomask & HEAP_XMAX_COMMITTED) &&
		(td->t_infomask & HEAP_XMAX_IS_MULTI))
		report(vs, pstrdup("multixact should not be marked committed"));
	/* hints that contradict each other; amcheck (15.19 on) words it so */
	if ((td->t_infomask & HEAP_XMAX_COMMITTED) &&
		(td->t_infomask & HEAP_XMAX_INVALID))
		report(vs, pstrdup("tuple marked as datum tuple in table"));

	want_hoff = MAXALIGN(SizeofHeapTupleHeader +
						 (hasnulls ? BITMAPLEN(natts) : 0));
	if (td->t_hoff != want_hoff)
	{
		report(vs, psprintf("tuple data should begin at byte %u, but actually begins at byte %u (%u attribute%s, %s nulls)",
							want_hoff, td->t_hoff, natts,
							natts == 1 ? "" : "s",
							hasnulls ? "has" : "no"));
		ok = false;
	}
	return ok;
}

/*
 * Check xmin and xmax.  Returns whether the tuple's contents can be checked:
 * its inserter committed, so the relation's descriptor describes it.  Sets
 * *prunable if VACUUM may remove the tuple (and its TOAST values) while we
 * run, and li's xmin state and updater for the HOT chain checks.
 */
static bool
check_xids(VerifyState *vs, HeapTupleHeader td, bool *prunable, LineInfo *li)
{
	TransactionId xmin = HeapTupleHeaderGetXmin(td);
	TransactionId xmax;
	XidRange	r;
	XidState	st;

	*prunable = true;
	r = xid_range(vs, xmin, vs->relfrozenxid);
	if (r == XR_INVALID)
		return false;			/* a speculative insertion that was aborted */
	if (r != XR_OK)
	{
		report_xid(vs, "xmin", xmin, r);
		return false;
	}
	li->xmin_state = xid_state(vs, xmin);
	li->xmin_known = true;

	/*
	 * Tuples moved by pre-9.0 VACUUM FULL exist only in heap files that
	 * pg_upgrade carried over; no cmk_heap tuple was ever written so.
	 */
	if (td->t_infomask & HEAP_MOVED)
	{
		report(vs, pstrdup("tuple is marked as moved by old-style VACUUM FULL, which no cmk_heap tuple can be"));
		return false;
	}
	if (!HeapTupleHeaderXminCommitted(td) &&
		(HeapTupleHeaderXminInvalid(td) || li->xmin_state != XS_COMMITTED))
		return false;			/* the descriptor may not describe it */

	/* The inserter committed.  What of the deleter? */
	if (td->t_infomask & HEAP_XMAX_IS_MULTI)
	{
		MultiXactId mxid = HeapTupleHeaderGetRawXmax(td);

		r = mxid_range(vs, mxid);
		switch (r)
		{
			case XR_OK:
				break;
			case XR_INVALID:
				report(vs, pstrdup("multitransaction ID is invalid"));
				return true;
			case XR_BEFORE_RELATION:
				report(vs, psprintf("multitransaction ID %u precedes relation minimum multitransaction ID threshold %u",
									mxid, vs->relminmxid));
				return true;
			case XR_BEFORE_CLUSTER:
				report(vs, psprintf("multitransaction ID %u precedes oldest valid multitransaction ID threshold %u",
									mxid, vs->oldest_mxid));
				return true;
			case XR_FUTURE:
				report(vs, psprintf("multitransaction ID %u equals or exceeds next valid multitransaction ID %u",
									mxid, vs->next_mxid));
				return true;
		}
	}
	if ((td->t_infomask & HEAP_XMAX_INVALID) ||
		HEAP_XMAX_IS_LOCKED_ONLY(td->t_infomask))
	{
		/* live: nothing can remove it or its TOAST while we run */
		*prunable = false;
		return true;
	}
	if (td->t_infomask & HEAP_XMAX_IS_MULTI)
	{
		xmax = HeapTupleGetUpdateXid(td);
		r = xid_range(vs, xmax, vs->relfrozenxid);
		if (r != XR_OK)
		{
			report_xid(vs, "update xid", xmax, r);
			return true;
		}
	}
	else
	{
		xmax = HeapTupleHeaderGetRawXmax(td);
		r = xid_range(vs, xmax, vs->relfrozenxid);
		if (r == XR_INVALID)
		{
			*prunable = false;
			return true;
		}
		if (r != XR_OK)
		{
			report_xid(vs, "xmax", xmax, r);
			return false;
		}
	}
	st = xid_state(vs, xmax);
	/* a committed deletion older than our snapshot's xmin may be vacuumed */
	*prunable = st == XS_COMMITTED && TransactionIdPrecedes(xmax, vs->safe_xmin);
	return true;
}

/* ---------------------------------------------------------------------
 * What only cmk_heap has
 * ---------------------------------------------------------------------
 */

/*
 * A decrypted TOAST pointer: is it one our toaster could have written?
 * Queues its chunks for checking (after the page lock is released) if the
 * tuple cannot be vacuumed away meanwhile.
 */
static void
check_toast_pointer(VerifyState *vs, struct varlena *v, bool prunable)
{
	struct varatt_external p;
	uint32		extsize;

	VARATT_EXTERNAL_GET_POINTER(p, v);
	extsize = VARATT_EXTERNAL_GET_EXTSIZE(p);
	if (p.va_rawsize < VARHDRSZ || p.va_rawsize > MAX_VARLENA_BYTES)
	{
		report(vs, psprintf("toast value %u has raw size %d, outside 4..%d",
							p.va_valueid, p.va_rawsize, MAX_VARLENA_BYTES));
		return;
	}
	if (extsize == 0 || extsize > (uint32) p.va_rawsize - VARHDRSZ)
	{
		report(vs, psprintf("toast value %u has external size %u for raw size %d",
							p.va_valueid, extsize, p.va_rawsize));
		return;
	}
	if (VARATT_EXTERNAL_IS_COMPRESSED(p))
	{
		ToastCompressionId cm = VARATT_EXTERNAL_GET_COMPRESS_METHOD(p);

		if (cm != TOAST_PGLZ_COMPRESSION_ID && cm != TOAST_LZ4_COMPRESSION_ID)
			report(vs, psprintf("toast value %u has invalid compression method id %d",
								p.va_valueid, (int) cm));
	}
	else if (VARATT_EXTERNAL_GET_COMPRESS_METHOD(p) != 0)
		report(vs, psprintf("toast value %u is not compressed but names compression method id %d",
							p.va_valueid, (int) VARATT_EXTERNAL_GET_COMPRESS_METHOD(p)));

	if (!OidIsValid(vs->rel->rd_rel->reltoastrelid))
	{
		report(vs, psprintf("toast value %u is external but relation has no toast relation",
							p.va_valueid));
		return;
	}
	if (vs->toastrel != NULL && !prunable)
	{
		MemoryContext old = MemoryContextSwitchTo(vs->fn_cxt);
		PendingToast *pt = palloc(sizeof(PendingToast));

		pt->ptr = p;
		pt->blkno = vs->blkno;
		pt->offnum = vs->offnum;
		pt->attnum = vs->attnum;
		vs->pending = lappend(vs->pending, pt);
		MemoryContextSwitchTo(old);
	}
}

/*
 * An inline compressed value, decrypted: its compression header is
 * encrypted, so this is where damage to its bytes shows.  pglz data must
 * decompress to exactly the size it claims; lz4 data is checked for its
 * header only (decompressing it takes liblz4, which we do not link).
 */
static void
check_compressed(VerifyState *vs, struct varlena *v)
{
	int32		clen = VARSIZE(v) - VARHDRSZ_COMPRESSED;
	uint32		rawsize = VARDATA_COMPRESSED_GET_EXTSIZE(v);
	ToastCompressionId cm = VARDATA_COMPRESSED_GET_COMPRESS_METHOD(v);
	char	   *buf;
	int32		got;

	if (cm == TOAST_LZ4_COMPRESSION_ID)
		return;
	if (cm != TOAST_PGLZ_COMPRESSION_ID)
	{
		report(vs, psprintf("compressed value has invalid compression method id %d",
							(int) cm));
		return;
	}
	if (clen <= 0 || rawsize > (uint32) clen * PGLZ_MAX_EXPANSION)
	{
		report(vs, psprintf("compressed value claims %u bytes from %d compressed bytes",
							rawsize, clen));
		return;
	}
	buf = palloc(rawsize + 1);
	got = pglz_decompress((char *) v + VARHDRSZ_COMPRESSED, clen, buf,
						  (int32) rawsize, true);
	wipe_free(buf, rawsize + 1);
	if (got != (int32) rawsize)
		report(vs, psprintf("compressed value does not decompress to the %u bytes it claims",
							rawsize));
}

/*
 * Report a problem of a stored tuple of rel: at its own attribute attnum
 * (0: the tuple) if it is a tuple of the main relation, else (a TOAST
 * chunk, chunk != NULL) at the main tuple's attribute being checked, with
 * the chunk named in the message.
 */
static void
report_stored(VerifyState *vs, HeapTuple chunk, Oid valueid, int attnum,
			  char *msg)
{
	if (chunk == NULL)
	{
		int			save = vs->attnum;

		vs->attnum = attnum;
		report(vs, msg);
		vs->attnum = save;
		return;
	}
	if (attnum > 0)
		report(vs, psprintf("toast value %u: chunk tuple (%u,%u), attribute %d: %s",
							valueid,
							ItemPointerGetBlockNumber(&chunk->t_self),
							ItemPointerGetOffsetNumber(&chunk->t_self),
							attnum, msg));
	else
		report(vs, psprintf("toast value %u: chunk tuple (%u,%u): %s",
							valueid,
							ItemPointerGetBlockNumber(&chunk->t_self),
							ItemPointerGetOffsetNumber(&chunk->t_self),
							msg));
	pfree(msg);
}

/*
 * The cmk_heap part of a stored tuple of rel (the main relation, or with
 * chunk set, its TOAST relation): its trailer and the nonce epochs it
 * names, its attributes, and their decryption.  Returns the decrypted tuple
 * (the caller wipes it), or NULL after reporting why there is none.
 */
static HeapTuple
decrypt_checked(VerifyState *vs, Relation rel, HeapTuple cipher, bool chunk,
				Oid valueid)
{
	HeapTuple	rep = chunk ? cipher : NULL;
	CmkTrailer	t;
	CmkTupleFault fault = {0};
	char	   *problem;
	HeapTuple	plain;

	/* our writer clears it; the heap toaster would drop the trailer */
	if (cipher->t_data->t_infomask & HEAP_HASEXTERNAL)
		report_stored(vs, rep, valueid, 0,
					  pstrdup("tuple header flag HEAP_HASEXTERNAL is set, which cmk_heap never stores"));
	problem = cmk_trailer_problem(cipher, vs->dek_tag, &t);
	if (problem != NULL)
	{
		report_stored(vs, rep, valueid, 0, problem);
		return NULL;
	}
	plain = cmk_decrypt_tuple_checked(rel, RelationGetDescr(rel), cipher, &t,
									  &fault);
	if (plain == NULL)
		report_stored(vs, rep, valueid, fault.attnum, pstrdup(fault.what));
	return plain;
}

/*
 * Everything cmk_heap adds to a tuple of the main relation that passed the
 * heap checks: the trailer and epochs, the attributes, the values once
 * decrypted, and the TOAST pointers among them.
 */
static void
check_cmk_tuple(VerifyState *vs, HeapTupleHeader td, uint16 lp_len,
				bool prunable)
{
	HeapTupleData cipher;
	HeapTuple	plain;
	int			natts;

	cipher.t_data = td;
	cipher.t_len = lp_len;
	cipher.t_tableOid = RelationGetRelid(vs->rel);
	ItemPointerSet(&cipher.t_self, vs->blkno, vs->offnum);

	plain = decrypt_checked(vs, vs->rel, &cipher, false, InvalidOid);
	if (plain == NULL)
		return;

	/*
	 * The codec checked where every attribute lies, so the plaintext can be
	 * deformed; look into the varlena values stored in it (not into missing
	 * attributes' defaults, which are not stored).
	 */
	heap_deform_tuple(plain, vs->desc, vs->values, vs->isnull);
	natts = HeapTupleHeaderGetNatts(plain->t_data);
	for (int i = 0; i < natts; i++)
	{
		struct varlena *v = (struct varlena *) DatumGetPointer(vs->values[i]);

		if (vs->isnull[i] || TupleDescAttr(vs->desc, i)->attlen != -1)
			continue;
		vs->attnum = i + 1;
		if (VARATT_IS_EXTERNAL_ONDISK(v))
			check_toast_pointer(vs, v, prunable);
		else if (VARATT_IS_COMPRESSED(v))
			check_compressed(vs, v);
		vs->attnum = 0;
	}
	wipe_free(plain, HEAPTUPLESIZE + plain->t_len);
}

/* ---------------------------------------------------------------------
 * TOAST values
 * ---------------------------------------------------------------------
 */

/*
 * The stored chunk tuple at tid of the TOAST relation, copied, if it is
 * there and TOAST readers would see it (inserted by a transaction that did
 * not abort, as HeapTupleSatisfiesToast decides, here without consulting
 * anything a damaged header could lead astray).  NULL if not; *why then
 * says what is wrong, if anything.
 */
static HeapTuple
fetch_chunk(VerifyState *vs, ItemPointer tid, char **why)
{
	BlockNumber blk = ItemPointerGetBlockNumber(tid);
	OffsetNumber off = ItemPointerGetOffsetNumber(tid);
	Buffer		buf;
	Page		page;
	ItemId		lp;
	HeapTupleHeader td;
	HeapTupleData tup;
	HeapTuple	copy = NULL;
	XidRange	r;

	*why = NULL;
	if (blk >= RelationGetNumberOfBlocks(vs->toastrel))
	{
		*why = psprintf("toast index entry points to block %u, past the end of the toast table",
						blk);
		return NULL;
	}
	buf = ReadBufferExtended(vs->toastrel, MAIN_FORKNUM, blk, RBM_NORMAL,
							 vs->strategy);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page))
	{
		*why = psprintf("toast index entry points to (%u,%u), which is not a line pointer",
						blk, off);
		goto done;
	}
	lp = PageGetItemId(page, off);
	if (!ItemIdIsNormal(lp))
		goto done;				/* removed: as if not there */
	if (ItemIdGetOffset(lp) != MAXALIGN(ItemIdGetOffset(lp)) ||
		ItemIdGetLength(lp) < MAXALIGN(SizeofHeapTupleHeader) ||
		ItemIdGetOffset(lp) + ItemIdGetLength(lp) > BLCKSZ)
	{
		*why = psprintf("toast chunk at (%u,%u) has a damaged line pointer", blk, off);
		goto done;
	}
	td = (HeapTupleHeader) PageGetItem(page, lp);
	if (td->t_hoff > ItemIdGetLength(lp) ||
		HeapTupleHeaderGetNatts(td) != RelationGetDescr(vs->toastrel)->natts ||
		(td->t_infomask & HEAP_MOVED))
	{
		*why = psprintf("toast chunk at (%u,%u) has a damaged header", blk, off);
		goto done;
	}
	if (!HeapTupleHeaderXminCommitted(td))
	{
		if (HeapTupleHeaderXminInvalid(td))
			goto done;			/* its inserter aborted */
		r = xid_range(vs, HeapTupleHeaderGetRawXmin(td),
					  vs->toastrel->rd_rel->relfrozenxid);
		if (r == XR_INVALID)
			goto done;			/* an aborted speculative insertion */
		if (r != XR_OK)
		{
			*why = psprintf("toast chunk at (%u,%u) has xmin %u outside the valid range",
							blk, off, HeapTupleHeaderGetRawXmin(td));
			goto done;
		}
	}
	tup.t_data = td;
	tup.t_len = ItemIdGetLength(lp);
	tup.t_tableOid = RelationGetRelid(vs->toastrel);
	tup.t_self = *tid;
	copy = heap_copytuple(&tup);
done:
	UnlockReleaseBuffer(buf);
	return copy;
}

/*
 * Fetch every chunk of one TOAST value through the TOAST index, check each
 * chunk tuple as a cmk_heap tuple, decrypt it and check that the chunks
 * are this value's, in sequence, of the sizes our toaster writes
 * (CMK_TOAST_CHUNK_SIZE, the last one the rest) and add up to its size.
 * Problems are reported at the main tuple's attribute.
 */
static void
check_toast_value(VerifyState *vs, PendingToast *pt)
{
	Oid			valueid = pt->ptr.va_valueid;
	int32		extsize = VARATT_EXTERNAL_GET_EXTSIZE(pt->ptr);
	int32		last = (extsize - 1) / CMK_TOAST_CHUNK_SIZE;
	int32		expect = 0;
	bool		found = false;
	TupleDesc	tdesc = RelationGetDescr(vs->toastrel);
	SnapshotData snap;
	ScanKeyData key;
	IndexScanDesc scan;
	ItemPointer tid;

	vs->blkno = pt->blkno;
	vs->offnum = pt->offnum;
	vs->attnum = pt->attnum;

	init_toast_snapshot(&snap);
	ScanKeyInit(&key, (AttrNumber) 1, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(valueid));
	scan = index_beginscan(vs->toastrel, vs->toast_index, &snap, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	while ((tid = index_getnext_tid(scan, ForwardScanDirection)) != NULL)
	{
		char	   *why;
		HeapTuple	cipher;
		HeapTuple	plain;
		Datum		values[3];
		bool		isnull[3];
		int32		seq;
		struct varlena *chunk;
		int32		size;
		int32		want;

		CHECK_FOR_INTERRUPTS();
		cipher = fetch_chunk(vs, tid, &why);
		if (cipher == NULL)
		{
			if (why)
				report(vs, psprintf("toast value %u: %s", valueid, why));
			continue;
		}
		found = true;

		plain = decrypt_checked(vs, vs->toastrel, cipher, true, valueid);
		if (plain == NULL)
		{
			/* reported; take it for the chunk the index says comes next */
			heap_freetuple(cipher);
			expect++;
			continue;
		}
		heap_freetuple(cipher);
		heap_deform_tuple(plain, tdesc, values, isnull);
		if (isnull[0] || DatumGetObjectId(values[0]) != valueid)
			report(vs, psprintf("toast value %u: chunk tuple (%u,%u) decrypts to value %u",
								valueid, ItemPointerGetBlockNumber(tid),
								ItemPointerGetOffsetNumber(tid),
								isnull[0] ? InvalidOid : DatumGetObjectId(values[0])));
		if (isnull[1] || isnull[2])
		{
			report(vs, psprintf("toast value %u: chunk tuple (%u,%u) has a null sequence number or data",
								valueid, ItemPointerGetBlockNumber(tid),
								ItemPointerGetOffsetNumber(tid)));
			wipe_free(plain, HEAPTUPLESIZE + plain->t_len);
			expect++;
			continue;
		}
		seq = DatumGetInt32(values[1]);
		if (seq != expect)
			report(vs, psprintf("toast value %u index scan returned chunk %d when expecting chunk %d",
								valueid, seq, expect));
		expect = seq + 1;
		chunk = (struct varlena *) DatumGetPointer(values[2]);
		if (VARATT_IS_EXTERNAL(chunk) || VARATT_IS_COMPRESSED(chunk))
		{
			report(vs, psprintf("toast value %u chunk %d has invalid varlena header %0x",
								valueid, seq, (unsigned) ((uint8 *) chunk)[0]));
			wipe_free(plain, HEAPTUPLESIZE + plain->t_len);
			continue;
		}
		size = VARSIZE_ANY_EXHDR(chunk);
		wipe_free(plain, HEAPTUPLESIZE + plain->t_len);
		if (seq < 0)
			continue;
		if (seq > last)
		{
			report(vs, psprintf("toast value %u chunk %d follows last expected chunk %d",
								valueid, seq, last));
			continue;
		}
		want = seq < last ? CMK_TOAST_CHUNK_SIZE :
			extsize - last * CMK_TOAST_CHUNK_SIZE;
		if (size != want)
			report(vs, psprintf("toast value %u chunk %d has size %u, but expected size %u",
								valueid, seq, size, want));
	}
	index_endscan(scan);

	if (!found)
		report(vs, psprintf("toast value %u not found in toast table", valueid));
	else if (expect <= last)
		report(vs, psprintf("toast value %u was expected to end at chunk %d, but ended while expecting chunk %d",
							valueid, last, expect));
	vs->attnum = 0;
}

/* ---------------------------------------------------------------------
 * Pages
 * ---------------------------------------------------------------------
 */

/*
 * One line pointer: sound enough to look at what it points to?  Redirects
 * are recorded in li for the HOT checks.
 */
static bool
check_line_pointer(VerifyState *vs, Page page, OffsetNumber maxoff,
				   ItemId lp, LineInfo *li)
{
	if (ItemIdIsRedirected(lp))
	{
		OffsetNumber to = ItemIdGetRedirect(lp);
		ItemId		tlp;

		if (to < FirstOffsetNumber)
		{
			report(vs, psprintf("line pointer redirection to item at offset %u precedes minimum offset %u",
								to, FirstOffsetNumber));
			return false;
		}
		if (to > maxoff)
		{
			report(vs, psprintf("line pointer redirection to item at offset %u exceeds maximum offset %u",
								to, maxoff));
			return false;
		}
		tlp = PageGetItemId(page, to);
		if (!ItemIdIsUsed(tlp))
			report(vs, psprintf("line pointer redirection to unused item at offset %u", to));
		else if (ItemIdIsDead(tlp))
			report(vs, psprintf("redirected line pointer points to a dead item at offset %u", to));
		else if (ItemIdIsRedirected(tlp))
			report(vs, psprintf("redirected line pointer points to another redirected line pointer at offset %u", to));
		else
		{
			li->valid = true;
			li->next = to;
		}
		return false;
	}
	if (ItemIdGetOffset(lp) != MAXALIGN(ItemIdGetOffset(lp)))
	{
		report(vs, psprintf("line pointer to page offset %u is not maximally aligned",
							ItemIdGetOffset(lp)));
		return false;
	}
	if (ItemIdGetLength(lp) < MAXALIGN(SizeofHeapTupleHeader))
	{
		report(vs, psprintf("line pointer length %u is less than the minimum tuple header size %u",
							ItemIdGetLength(lp), (unsigned) MAXALIGN(SizeofHeapTupleHeader)));
		return false;
	}
	if (ItemIdGetOffset(lp) + ItemIdGetLength(lp) > BLCKSZ)
	{
		report(vs, psprintf("line pointer to page offset %u with length %u ends beyond maximum page offset %u",
							ItemIdGetOffset(lp), ItemIdGetLength(lp), BLCKSZ));
		return false;
	}
	li->valid = true;
	return true;
}

/*
 * HOT chains of one page (README.HOT): a redirect leads to a heap-only
 * tuple; a tuple updated on the same page leads to its new version, a
 * heap-only one exactly if the update was HOT; no two lead to the same
 * tuple; a heap-only tuple whose inserter did not abort has a predecessor;
 * a version inserted by an aborted transaction has no successor whose
 * inserter did not abort.  Links follow ctid and require the new version's
 * xmin to be the updater of the old one (its raw xmin: freezing keeps it).
 */
static void
check_hot_chains(VerifyState *vs, Page page, OffsetNumber maxoff,
				 LineInfo *info)
{
	vs->attnum = 0;
	for (OffsetNumber o = FirstOffsetNumber; o <= maxoff; o++)
	{
		LineInfo   *li = &info[o];
		OffsetNumber n = li->next;
		ItemId		lp = PageGetItemId(page, o);
		HeapTupleHeader cur;
		HeapTupleHeader nxt;

		if (n == InvalidOffsetNumber || !info[n].valid)
			continue;
		vs->offnum = o;
		if (ItemIdIsRedirected(lp))
		{
			nxt = (HeapTupleHeader) PageGetItem(page, PageGetItemId(page, n));
			if (!HeapTupleHeaderIsHeapOnly(nxt))
				report(vs, psprintf("redirected line pointer points to a non-heap-only tuple at offset %u", n));
			if (info[n].prev != InvalidOffsetNumber)
				report(vs, psprintf("redirect line pointer points to offset %u, but offset %u also points there",
									n, info[n].prev));
			else
				info[n].prev = o;
			continue;
		}
		if (ItemIdIsRedirected(PageGetItemId(page, n)) ||
			!TransactionIdIsValid(li->update_xid))
			continue;
		cur = (HeapTupleHeader) PageGetItem(page, lp);
		nxt = (HeapTupleHeader) PageGetItem(page, PageGetItemId(page, n));
		if (!TransactionIdEquals(li->update_xid, HeapTupleHeaderGetRawXmin(nxt)))
			continue;			/* not its new version */
		if (info[n].prev != InvalidOffsetNumber)
		{
			report(vs, psprintf("tuple points to new version at offset %u, but offset %u also points there",
								n, info[n].prev));
			continue;
		}
		info[n].prev = o;
		/* the raw flag: HeapTupleHeaderIsHotUpdated also looks at hints */
		if (!(cur->t_infomask2 & HEAP_HOT_UPDATED) && HeapTupleHeaderIsHeapOnly(nxt))
			report(vs, psprintf("non-heap-only update produced a heap-only tuple at offset %u", n));
		if ((cur->t_infomask2 & HEAP_HOT_UPDATED) && !HeapTupleHeaderIsHeapOnly(nxt))
			report(vs, psprintf("heap-only update produced a non-heap only tuple at offset %u", n));
		if (li->xmin_known && info[n].xmin_known &&
			li->xmin_state == XS_ABORTED && info[n].xmin_state != XS_ABORTED)
			report(vs, psprintf("tuple with aborted xmin %u was updated to produce a tuple at offset %u with %s xmin %u",
								HeapTupleHeaderGetRawXmin(cur), n,
								info[n].xmin_state == XS_COMMITTED ? "committed" : "in-progress",
								HeapTupleHeaderGetRawXmin(nxt)));

		/*
		 * Our xmin may have committed since we looked, the new version's
		 * after it: only an xmin still running now is wrong.
		 */
		if (li->xmin_known && info[n].xmin_known &&
			li->xmin_state == XS_IN_PROGRESS &&
			info[n].xmin_state == XS_COMMITTED &&
			TransactionIdIsInProgress(HeapTupleHeaderGetRawXmin(cur)))
			report(vs, psprintf("tuple with in-progress xmin %u was updated to produce a tuple at offset %u with committed xmin %u",
								HeapTupleHeaderGetRawXmin(cur), n,
								HeapTupleHeaderGetRawXmin(nxt)));
	}

	/* a chain starts at a redirect or a tuple that is not heap-only */
	for (OffsetNumber o = FirstOffsetNumber; o <= maxoff; o++)
	{
		ItemId		lp = PageGetItemId(page, o);

		if (!info[o].valid || !ItemIdIsNormal(lp) ||
			info[o].prev != InvalidOffsetNumber || !info[o].xmin_known ||
			info[o].xmin_state == XS_ABORTED)
			continue;
		if (HeapTupleHeaderIsHeapOnly((HeapTupleHeader) PageGetItem(page, lp)))
		{
			vs->offnum = o;
			report(vs, pstrdup("tuple is root of chain but is marked as heap-only tuple"));
		}
	}
}

/*
 * The transaction that updated td, for following HOT chains whatever the
 * tuple's visibility (an update of a row inserted by a transaction still
 * running is a chain too); invalid if it cannot be known without trusting
 * a multixact ID outside the valid range.
 */
static TransactionId
updater(VerifyState *vs, HeapTupleHeader td)
{
	if (!(td->t_infomask & HEAP_XMAX_IS_MULTI))
		return HeapTupleHeaderGetRawXmax(td);
	if ((td->t_infomask & HEAP_XMAX_INVALID) ||
		HEAP_XMAX_IS_LOCKED_ONLY(td->t_infomask) ||
		mxid_range(vs, HeapTupleHeaderGetRawXmax(td)) != XR_OK)
		return InvalidTransactionId;
	return HeapTupleGetUpdateXid(td);
}

/* Check every line pointer and tuple of the pinned, share-locked page. */
static void
check_page(VerifyState *vs, Page page)
{
	OffsetNumber maxoff = PageGetMaxOffsetNumber(page);
	LineInfo   *info = vs->info;

	memset(info, 0, sizeof(LineInfo) * (maxoff + 1));
	for (OffsetNumber o = FirstOffsetNumber; o <= maxoff; o++)
	{
		ItemId		lp = PageGetItemId(page, o);
		HeapTupleHeader td;
		bool		prunable;
		MemoryContext old;

		if (!ItemIdIsUsed(lp) || ItemIdIsDead(lp))
			continue;
		vs->offnum = o;
		vs->attnum = 0;
		if (!check_line_pointer(vs, page, maxoff, lp, &info[o]))
			continue;

		td = (HeapTupleHeader) PageGetItem(page, lp);
		{
			BlockNumber nb = ItemPointerGetBlockNumberNoCheck(&td->t_ctid);
			OffsetNumber no = ItemPointerGetOffsetNumberNoCheck(&td->t_ctid);

			if (nb == vs->blkno && no != o && no >= FirstOffsetNumber && no <= maxoff)
				info[o].next = no;
			info[o].update_xid = updater(vs, td);
		}

		old = MemoryContextSwitchTo(vs->tuple_cxt);
		if (check_header(vs, td, ItemIdGetLength(lp)) &&
			check_xids(vs, td, &prunable, &info[o]))
		{
			if (HeapTupleHeaderGetNatts(td) > vs->desc->natts)
				report(vs, psprintf("number of attributes %u exceeds maximum expected for table %u",
									HeapTupleHeaderGetNatts(td), vs->desc->natts));
			else
				check_cmk_tuple(vs, td, ItemIdGetLength(lp), prunable);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(vs->tuple_cxt);
	}
	check_hot_chains(vs, page, maxoff, info);
}

static BlockNumber
block_arg(FunctionCallInfo fcinfo, int argno, BlockNumber dflt,
		  BlockNumber nblocks, const char *what)
{
	int64		b;

	if (PG_ARGISNULL(argno))
		return dflt;
	b = PG_GETARG_INT64(argno);
	if (b < 0 || b >= (int64) nblocks)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s block number must be between 0 and %u", what, nblocks - 1)));
	return (BlockNumber) b;
}

/*
 * SQL: verify_relation(relation regclass, on_error_stop boolean,
 * check_toast boolean, skip text, startblock bigint, endblock bigint)
 * returns setof (blkno bigint, offnum integer, attnum integer, msg text).
 * attnum is pg_attribute.attnum (1-based), or null for the tuple as a whole.
 */
Datum
cmk_verify_relation(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VerifyState vs;
	bool		on_error_stop;
	bool		check_toast;
	const char *skip;
	bool		skip_visible = false;
	bool		skip_frozen = false;
	BlockNumber nblocks;
	BlockNumber first;
	BlockNumber last;
	Buffer		vmbuffer = InvalidBuffer;

	for (int i = 0; i < 4; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s cannot be null",
							i == 0 ? "relation" : i == 1 ? "on_error_stop" :
							i == 2 ? "check_toast" : "skip")));
	on_error_stop = PG_GETARG_BOOL(1);
	check_toast = PG_GETARG_BOOL(2);
	skip = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (pg_strcasecmp(skip, "all-visible") == 0)
		skip_visible = true;
	else if (pg_strcasecmp(skip, "all-frozen") == 0)
		skip_frozen = true;
	else if (pg_strcasecmp(skip, "none") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid skip option \"%s\"", skip),
				 errhint("Valid skip options are \"all-visible\", \"all-frozen\", and \"none\".")));

	memset(&vs, 0, sizeof(vs));
	vs.cached_xid = InvalidTransactionId;
	/* an xmax from our snapshot's xmin on cannot be vacuumed while we run */
	vs.safe_xmin = GetTransactionSnapshot()->xmin;

	InitMaterializedSRF(fcinfo, 0);
	vs.store = rsinfo->setResult;
	vs.outdesc = rsinfo->setDesc;

	vs.rel = relation_open(PG_GETARG_OID(0), AccessShareLock);
	if (vs.rel->rd_rel->relkind != RELKIND_RELATION &&
		vs.rel->rd_rel->relkind != RELKIND_MATVIEW &&
		vs.rel->rd_rel->relkind != RELKIND_TOASTVALUE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot check relation \"%s\"", RelationGetRelationName(vs.rel)),
				 errdetail_relkind_not_supported(vs.rel->rd_rel->relkind)));
	if (!cmk_is_cmk_relation(vs.rel))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("relation \"%s\" does not use the cmk_heap access method",
						RelationGetRelationName(vs.rel)),
				 errhint("Check heap relations with amcheck's verify_heapam().")));
	vs.desc = RelationGetDescr(vs.rel);

	/*
	 * No key, or no epoch table: nothing can be decrypted, which is not a
	 * problem of any tuple.  Say so once, with the reason.
	 */
	(void) cmk_tuple_keystream(RelationGetRelationName(vs.rel), &vs.dek_tag);
	cmk_epochs_check_readable();

	/* an unlogged relation has no data on a standby: nothing to check */
	if (vs.rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED &&
		RecoveryInProgress())
	{
		relation_close(vs.rel, AccessShareLock);
		PG_RETURN_NULL();
	}
	nblocks = RelationGetNumberOfBlocks(vs.rel);
	if (nblocks == 0)
	{
		relation_close(vs.rel, AccessShareLock);
		PG_RETURN_NULL();
	}
	first = block_arg(fcinfo, 4, 0, nblocks, "starting");
	last = block_arg(fcinfo, 5, nblocks - 1, nblocks, "ending");

	if (check_toast && OidIsValid(vs.rel->rd_rel->reltoastrelid))
	{
		int			valid;

		vs.toastrel = table_open(vs.rel->rd_rel->reltoastrelid, AccessShareLock);
		valid = toast_open_indexes(vs.toastrel, AccessShareLock,
								   &vs.toastidx, &vs.ntoastidx);
		vs.toast_index = vs.toastidx[valid];
	}

	vs.relfrozenxid = vs.rel->rd_rel->relfrozenxid;
	vs.relminmxid = vs.rel->rd_rel->relminmxid;
	refresh_xid_horizons(&vs);
	vs.strategy = GetAccessStrategy(BAS_BULKREAD);
	vs.fn_cxt = CurrentMemoryContext;
	/* a damaged pd_lower can claim more line pointers than fit tuples */
	vs.info = palloc(sizeof(LineInfo) * (MaxOffsetNumber + 1));
	vs.values = palloc(sizeof(Datum) * vs.desc->natts);
	vs.isnull = palloc(sizeof(bool) * vs.desc->natts);
	vs.tuple_cxt = AllocSetContextCreate(CurrentMemoryContext,
										 "verify_relation tuple",
										 ALLOCSET_DEFAULT_SIZES);

	for (vs.blkno = first; vs.blkno <= last; vs.blkno++)
	{
		Buffer		buf;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		if (skip_visible || skip_frozen)
		{
			uint8		bits = visibilitymap_get_status(vs.rel, vs.blkno, &vmbuffer);

			if ((skip_frozen && (bits & VISIBILITYMAP_ALL_FROZEN)) ||
				(skip_visible && (bits & VISIBILITYMAP_ALL_VISIBLE)))
				continue;
		}
		buf = ReadBufferExtended(vs.rel, MAIN_FORKNUM, vs.blkno, RBM_NORMAL,
								 vs.strategy);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		check_page(&vs, BufferGetPage(buf));
		UnlockReleaseBuffer(buf);

		/* TOAST values of the page, without holding its lock */
		foreach(lc, vs.pending)
		{
			MemoryContext old = MemoryContextSwitchTo(vs.tuple_cxt);

			check_toast_value(&vs, lfirst(lc));
			MemoryContextSwitchTo(old);
			MemoryContextReset(vs.tuple_cxt);
		}
		list_free_deep(vs.pending);
		vs.pending = NIL;

		if (on_error_stop && vs.corrupt)
			break;
	}

	if (vmbuffer != InvalidBuffer)
		ReleaseBuffer(vmbuffer);
	MemoryContextDelete(vs.tuple_cxt);
	if (vs.toastrel)
	{
		toast_close_indexes(vs.toastidx, vs.ntoastidx, AccessShareLock);
		table_close(vs.toastrel, AccessShareLock);
	}
	relation_close(vs.rel, AccessShareLock);
	PG_RETURN_NULL();
}
