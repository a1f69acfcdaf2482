/*-------------------------------------------------------------------------
 *
 * cmkam.h
 *		The cmk_heap table access method: heap storage whose tuple contents
 *		are encrypted.  Shared declarations of its files:
 *
 *		cmkam_handler.c		the TableAmRoutine and callbacks heap serves as is
 *		cmkam_codec.c		tuple codec: encrypt, decrypt, lazy deform, nonces
 *		cmkam_trailer.c		reading and checking a stored tuple's trailer
 *		cmkam_keystream.c	keystream batches: one cipher call, many ranges
 *		cmkam_page.c		page-at-a-time decryption for sequential scans
 *		(cmkam_codec_int.h	what those four share, inline hot paths)
 *		cmkam_write.c		insert, multi-insert, speculative insert, update,
 *							delete
 *		cmkam_toast.c		our own toaster and encrypted TOAST chunks
 *		cmkam_scan.c		every read path (scans, fetches, locks)
 *		cmkam_slot.c		the slot type that decrypts lazily per column
 *		cmkam_indexbuild.c	index build and validation scans
 *		cmkam_rewrite.c		CLUSTER / VACUUM FULL
 *		cmkam_logical.c		publication DDL: clears marks of older releases
 *		cmkam_decode.c		logical decoding: plaintext for output plugins
 *		cmkam_verify.c		verify_relation(): amcheck's heap checks and ours
 *
 * Format and invariants: docs/tuple-format.md.  The nonce epochs the
 * trailers name are the key subsystem's (keys/nonce_epochs.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMKAM_H
#define CMKAM_H

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "utils/rel.h"

#include "keys/nonce_epochs.h"

/*
 * Trailer (format 3), read backwards from the end of the tuple (inside
 * t_len): its last byte is the flags byte, whose top three bits are always
 * CMK_FLAGS_MARKER.  A stored nonce is a 16-bit epoch id and a 32-bit
 * counter; the epoch's random prefix is in the cluster's epoch table.
 */
#define CMK_FLAGS_MARKER		0xA0	/* bits 5-7 of the flags byte */
#define CMK_FLAGS_MARKER_MASK	0xE0
#define CMK_FLAG_NONCES_MASK	0x07	/* number of nonces - 1 */
#define CMK_FLAG_HAS_EXTERNAL	0x08	/* external-reference bitmap present */
#define CMK_FLAG_SHORT_NONCES	0x10	/* nonces 1.. share nonce 0's epoch */
#define CMK_FORMAT_VERSION_1	0xC1	/* pre-release layouts: refused */
#define CMK_FORMAT_VERSION_2	0xC2
#define CMK_NONCE_EPOCH_LEN		2		/* epoch id, big-endian */
#define CMK_NONCE_CTR_LEN		4		/* counter, big-endian */
#define CMK_NONCE_LEN			(CMK_NONCE_EPOCH_LEN + CMK_NONCE_CTR_LEN)
#define CMK_NONCE_SHORT_LEN		CMK_NONCE_CTR_LEN
#define CMK_MAX_NONCES			8	/* distinct nonces one tuple may carry */
#define CMK_TRAILER_FIXED		1	/* the flags byte */
#define CMK_TRAILER_MIN			(CMK_TRAILER_FIXED + CMK_NONCE_LEN)

/* The encrypted stand-in for an on-disk TOAST pointer: a short varlena. */
#define CMK_EXTREF_HEADER		((uint8) ((TOAST_POINTER_SIZE_CMK << 1) | 0x01))
#define TOAST_POINTER_SIZE_CMK	18	/* VARHDRSZ_EXTERNAL + varatt_external */

/* Largest trailer for a tuple of natts attributes. */
#define CMK_TRAILER_MAX(natts) \
	(CMK_TRAILER_FIXED + CMK_MAX_NONCES * CMK_NONCE_LEN + \
	 ((natts) + 1) / 2 + ((natts) + 7) / 8)

/*
 * Offset of attribute att, heap's way (slot_deform_heap_tuple): use and
 * maintain attcacheoff while the layout so far is fixed.  Both the lazy
 * decryption and the plaintext deform of cmk_heap slots walk tuples with it,
 * so they agree with heap and with each other on where every attribute is.
 * tp + off must be readable for varlena attributes.
 */
static inline uint32
cmk_attr_offset(Form_pg_attribute att, uint32 off, bool *slow, const char *tp)
{
	if (!*slow && att->attcacheoff >= 0)
		return att->attcacheoff;
	if (att->attlen == -1)
	{
		if (!*slow && off == att_align_nominal(off, att->attalign))
			att->attcacheoff = off;
		else
		{
			off = att_align_pointer(off, att->attalign, -1, tp + off);
			*slow = true;
		}
		return off;
	}
	off = att_align_nominal(off, att->attalign);
	if (!*slow)
		att->attcacheoff = off;
	return off;
}

/* A parsed trailer; pointers point into the stored tuple. */
typedef struct CmkTrailer
{
	int			nnonces;
	const uint8 *nonce0;		/* nonce 0, CMK_NONCE_LEN bytes */
	const uint8 *pre0;			/* its epoch's prefix */
	const uint8 *more;			/* nonces 1..: CMK_NONCE_LEN bytes each, or
								 * CMK_NONCE_SHORT_LEN with short_nonces */
	bool		short_nonces;
	int			map_bits;		/* 1 (two nonces) or 4 bits per attribute */
	const uint8 *map;			/* nonce index per attribute, or NULL: all 0 */
	const uint8 *extbits;		/* 1 bit per attribute, or NULL */
	int32		data_end;		/* offset where the trailer starts */
} CmkTrailer;

/*
 * One visible stored tuple of a pinned page, for page-at-a-time decryption
 * of an attribute prefix straight into Datums.
 */
typedef struct CmkPageTuple
{
	HeapTupleHeader src;		/* in: the stored tuple (page stays pinned) */
	uint32		src_len;		/* in: its length */
	ItemPointerData tid;		/* in: for error messages */
	CmkTrailer	t;				/* out: parsed trailer, pointing into the page */
	Datum	   *values;			/* out: attributes [0, ndec), or after the
								 * XOR prefix of a fast tuple */
	bool	   *isnull;
	char	   *copy;			/* out: decrypted by-reference bytes */
	int			ndec;			/* out */
	int			tupnatts;		/* out: HeapTupleHeaderGetNatts */
	uint32		off;			/* out: deform position after attribute ndec */
	bool		slow;			/* out: as slot_deform_heap_tuple's "slow" */
	/* out of cmk_page_prefix_keystream: served by XOR from the page */
	int			fast_natts;		/* > 0: the keystream of attributes
								 * [0, fast_natts) is at ks ("fast") */
	uint32		second;			/* codec-private: attributes under a
								 * second nonce */
	const char *stp;			/* its data area, in the pinned page */
	const uint8 *ks;			/* keystream at the prefix's nominal offsets */
} CmkPageTuple;

/*
 * The leading attributes of a descriptor that are fixed-width and passed by
 * value, and where they sit: at their nominal offsets in the data area (the
 * ones heap caches in attcacheoff) and in keystream region 0 alike.  A
 * tuple with no null among them can have them decrypted by XORing page and
 * keystream at those offsets, straight into Datums.
 */
#define CMK_PREFIX_MAX_ATTS		32
#define CMK_PREFIX_MAX_BLOCKS	8

typedef struct CmkPrefixLayout
{
	int			nbyval;			/* such leading attributes (at most
								 * CMK_PREFIX_MAX_ATTS, within
								 * CMK_PREFIX_MAX_BLOCKS AES blocks) */
	int16		pos[CMK_PREFIX_MAX_ATTS];
	int16		len[CMK_PREFIX_MAX_ATTS];
	int16		end[CMK_PREFIX_MAX_ATTS];	/* pos + len */
	/*
	 * wide[n - 1]: how many leading attributes the keystream blocks of the
	 * first n cover whole (at least n, at most nbyval)
	 */
	int8		wide[CMK_PREFIX_MAX_ATTS];
} CmkPrefixLayout;

/* Keystream blocks of the first natts attributes of a layout. */
static inline int
cmk_prefix_blocks(const CmkPrefixLayout *lay, int natts)
{
	return (lay->end[natts - 1] + 15) / 16;
}

/*
 * A by-value attribute of len bytes stored at cp, decrypted with keystream
 * kp: what fetch_att would return for the plaintext bytes.  Whole-width
 * loads, so the CPU never has to forward byte stores into a wider load.
 */
static inline Datum
cmk_xor_byval(const uint8 *cp, const uint8 *kp, int16 len)
{
	switch (len)
	{
		case 1:
			return CharGetDatum((char) (cp[0] ^ kp[0]));
		case 2:
			{
				uint16		c,
							k;

				memcpy(&c, cp, 2);
				memcpy(&k, kp, 2);
				return Int16GetDatum((int16) (c ^ k));
			}
		case 4:
			{
				uint32		c,
							k;

				memcpy(&c, cp, 4);
				memcpy(&k, kp, 4);
				return Int32GetDatum((int32) (c ^ k));
			}
#if SIZEOF_DATUM == 8
		case 8:
			{
				uint64		c,
							k;

				memcpy(&c, cp, 8);
				memcpy(&k, kp, 8);
				return Int64GetDatum((int64) (c ^ k));
			}
#endif
		default:
			elog(ERROR, "unsupported byval length: %d", len);
			return (Datum) 0;
	}
}

/* cmkam_page.c */
extern void cmk_prefix_layout(TupleDesc desc, CmkPrefixLayout *lay);
extern int	cmk_page_prefix_keystream(Relation rel, const CmkPrefixLayout *lay,
									  int natts, CmkPageTuple *tups, int ntups,
									  uint8 *ks, int *nblocks);
extern bool cmk_decrypt_page_prefixes(Relation rel, TupleDesc desc,
									  CmkPageTuple *tups, int ntups, int natts,
									  const CmkPrefixLayout *lay,
									  int fast_natts, Datum *values,
									  bool *isnull, char *area, Size areasize);

/* cmkam_trailer.c */
extern void cmk_parse_trailer(Relation rel, HeapTuple cipher, uint32 want_tag,
							  CmkTrailer *t);
extern bool cmk_trailer_readable(Relation rel, HeapTuple cipher,
								 uint32 want_tag, CmkTrailer *t);
extern bool cmk_tuple_has_external(HeapTuple cipher);
extern void cmk_check_tuple_format(Relation rel, HeapTuple cipher);
extern char *cmk_trailer_problem(HeapTuple cipher, uint32 want_tag,
								 CmkTrailer *t);

/*
 * A problem the codec found in a stored tuple, returned instead of raised
 * for verification (cmkam_verify.c), which reports it as a row.
 */
typedef struct CmkTupleFault
{
	const char *what;			/* a message, without the tuple's location */
	int			attnum;			/* the attribute (1-based), or 0: the tuple */
} CmkTupleFault;

/* cmkam_codec.c */
extern void cmk_deform_decrypt(Relation rel, TupleDesc desc, HeapTupleHeader td,
							   int32 data_end, const CmkTrailer *t, int from,
							   int to, Datum *values, bool *isnull,
							   uint32 *offp, bool *slowp);
extern HeapTuple cmk_encrypt_tuple(Relation rel, HeapTuple plain,
								   HeapTuple old_cipher,
								   HeapTuple old_decrypted);
extern void cmk_encrypt_tuples(Relation rel, HeapTuple *plains, int n,
							   HeapTuple *out);
extern HeapTuple cmk_decrypt_tuple(Relation rel, TupleDesc desc,
								   HeapTuple cipher);
extern HeapTuple cmk_decrypt_tuple_checked(Relation rel, TupleDesc desc,
										   HeapTuple cipher,
										   const CmkTrailer *t,
										   CmkTupleFault *fault);

/* cmkam_toast.c */

/*
 * Chunk payload: heap's chunk size less one trailer, so that four encrypted
 * chunk tuples still fit on a page, as heap's do.
 */
#define CMK_TOAST_CHUNK_SIZE \
	(TOAST_MAX_CHUNK_SIZE - CMK_TRAILER_FIXED - CMK_NONCE_LEN)

struct CmkToastState;
extern HeapTuple cmk_form_plain_tuple(Relation rel, TupleTableSlot *slot,
									  HeapTuple old_plain, int options,
									  struct CmkToastState **state_out);
extern void cmk_toast_finish(struct CmkToastState *st, bool succeeded);
extern void cmk_toast_delete_tuple(Relation rel, HeapTuple plain,
								   bool is_speculative);
extern void cmk_fetch_toast_slice(Relation toastrel, Oid valueid,
								  int32 attrsize, int32 sliceoffset,
								  int32 slicelength, struct varlena *result);
extern HeapTuple cmk_prepare_tuple_for_rewrite(Relation oldrel, Relation newrel,
											   HeapTuple plain,
											   TupleTableSlot *vslot);

/* cmkam_write.c */
extern void cmkam_tuple_insert(Relation rel, TupleTableSlot *slot,
							   CommandId cid, int options,
							   struct BulkInsertStateData *bistate);
extern void cmkam_tuple_insert_speculative(Relation rel, TupleTableSlot *slot,
										   CommandId cid, int options,
										   struct BulkInsertStateData *bistate,
										   uint32 specToken);
extern void cmkam_tuple_complete_speculative(Relation rel, TupleTableSlot *slot,
											 uint32 specToken, bool succeeded);
extern void cmkam_multi_insert(Relation rel, TupleTableSlot **slots, int nslots,
							   CommandId cid, int options,
							   struct BulkInsertStateData *bistate);
extern TM_Result cmkam_tuple_delete(Relation rel, ItemPointer tid, CommandId cid,
									Snapshot snapshot, Snapshot crosscheck,
									bool wait, TM_FailureData *tmfd,
									bool changingPart);
extern TM_Result cmkam_tuple_update(Relation rel, ItemPointer otid,
									TupleTableSlot *slot, CommandId cid,
									Snapshot snapshot, Snapshot crosscheck,
									bool wait, TM_FailureData *tmfd,
									LockTupleMode *lockmode,
									bool *update_indexes);
extern HeapTuple cmk_read_cipher_tuple(Relation rel, ItemPointer tid);

/* cmkam_slot.c */
struct CmkPageCache;
typedef struct CmkTupleTableSlot
{
	TupleTableSlot base;
	TupleTableSlot *raw;		/* heap buffer slot holding the stored tuple */
	Relation	rel;			/* relation of the raw tuple */
	HeapScanDesc scan;			/* pagemode scan it came from, or NULL */
	uint64		visit;			/* page visit of the raw tuple, 0 if none */
	int			cindex;			/* its index in the scan's rs_vistuples */
	HeapTuple	mat;			/* owned, fully decrypted (or formed) tuple */
	/* lazy state for the raw tuple */
	bool		prepared;		/* td holds a copy of the stored tuple */
	CmkTrailer	trailer;
	HeapTupleHeader td;			/* plaintext copy being deformed */
	HeapTupleHeader plain;		/* own copy buffer */
	Size		bufsize;
	uint32		off;			/* deform position after tts_nvalid */
	int			xor_natts;		/* leading attributes decrypted by XOR from
								 * the stored tuple: still ciphertext in td */
	struct CmkPageCache *pc;			/* allocated on first use */
	CmkPrefixLayout *lay;		/* of lay_desc, if not the relation's */
	TupleDesc	lay_desc;
	struct CmkSlotWipe *wipe;	/* set with the first plaintext buffer */
} CmkTupleTableSlot;

extern PGDLLIMPORT const TupleTableSlotOps TTSOpsCmkHeapTuple;
extern TupleTableSlot *cmk_slot_raw(TupleTableSlot *slot);
extern void cmk_slot_drop_mat(TupleTableSlot *slot);
extern HeapTuple cmk_slot_own_tuple(TupleTableSlot *slot);
extern void cmk_slot_note_fetch(TupleTableSlot *slot);
extern bool cmk_slot_fetched_version(Relation rel, ItemPointer tid,
									 TupleTableSlot *newslot,
									 HeapTuple cipher, HeapTuple plain);

/*
 * The heap filled the raw slot with a stored tuple of rel: make it the
 * slot's content, undecrypted.  Inline: every tuple of a scan passes here.
 *
 * scan is the pagemode sequential scan it came from (or NULL), new_page
 * whether that scan moved to another page (or re-read one) to return it.  A
 * run of tuples from the same scan without a page change is one "visit" of
 * a page the scan holds pinned throughout, so a page cache built during the
 * visit stays valid for all of it; anything else starts a new visit
 * (visit 0: assigned when a page cache is first asked for).
 */
static inline void
cmk_slot_adopt_raw(TupleTableSlot *slot, Relation rel, HeapScanDesc scan,
				   bool new_page)
{
	CmkTupleTableSlot *cs = (CmkTupleTableSlot *) slot;

	if (new_page || cs->scan != scan || scan == NULL)
		cs->visit = 0;
	cs->scan = scan;
	cs->cindex = scan ? scan->rs_cindex : -1;
	if (unlikely(cs->mat != NULL))
		cmk_slot_drop_mat(slot);
	cs->rel = rel;
	cs->prepared = false;
	cs->off = 0;
	cs->xor_natts = 0;
	slot->tts_nvalid = 0;
	slot->tts_flags &= ~TTS_FLAG_EMPTY;
	slot->tts_tid = cs->raw->tts_tid;
	slot->tts_tableOid = cs->raw->tts_tableOid;
}

/* cmkam_scan.c */
extern TableScanDesc cmkam_scan_begin(Relation rel, Snapshot snapshot,
									  int nkeys, struct ScanKeyData *key,
									  ParallelTableScanDesc pscan,
									  uint32 flags);
extern bool cmkam_scan_getnextslot(TableScanDesc scan, ScanDirection direction,
								   TupleTableSlot *slot);
extern bool cmkam_scan_getnextslot_tidrange(TableScanDesc scan,
											ScanDirection direction,
											TupleTableSlot *slot);
extern bool cmkam_index_fetch_tuple(struct IndexFetchTableData *scan,
									ItemPointer tid, Snapshot snapshot,
									TupleTableSlot *slot, bool *call_again,
									bool *all_dead);
extern bool cmkam_fetch_row_version(Relation rel, ItemPointer tid,
									Snapshot snapshot, TupleTableSlot *slot);
extern bool cmkam_tuple_satisfies_snapshot(Relation rel, TupleTableSlot *slot,
										   Snapshot snapshot);
extern TM_Result cmkam_tuple_lock(Relation rel, ItemPointer tid,
								  Snapshot snapshot, TupleTableSlot *slot,
								  CommandId cid, LockTupleMode mode,
								  LockWaitPolicy wait_policy, uint8 flags,
								  TM_FailureData *tmfd);
extern bool cmkam_scan_analyze_next_tuple(TableScanDesc scan,
										  TransactionId OldestXmin,
										  double *liverows, double *deadrows,
										  TupleTableSlot *slot);
extern bool cmkam_scan_bitmap_next_tuple(TableScanDesc scan,
										 struct TBMIterateResult *tbmres,
										 TupleTableSlot *slot);
extern bool cmkam_scan_sample_next_tuple(TableScanDesc scan,
										 struct SampleScanState *scanstate,
										 TupleTableSlot *slot);

/* cmkam_indexbuild.c */
extern double cmkam_index_build_range_scan(Relation heapRelation,
										   Relation indexRelation,
										   struct IndexInfo *indexInfo,
										   bool allow_sync, bool anyvisible,
										   bool progress,
										   BlockNumber start_blockno,
										   BlockNumber numblocks,
										   IndexBuildCallback callback,
										   void *callback_state,
										   TableScanDesc scan);
extern void cmkam_index_validate_scan(Relation heapRelation,
									  Relation indexRelation,
									  struct IndexInfo *indexInfo,
									  Snapshot snapshot,
									  struct ValidateIndexState *state);

/* cmkam_rewrite.c */
extern void cmkam_relation_copy_for_cluster(Relation OldHeap, Relation NewHeap,
											Relation OldIndex, bool use_sort,
											TransactionId OldestXmin,
											TransactionId *xid_cutoff,
											MultiXactId *multi_cutoff,
											double *num_tuples,
											double *tups_vacuumed,
											double *tups_recently_dead);

/* cmkam_logical.c */
extern void cmk_publication_guard_init(void);

/* cmkam_decode.c */
extern void cmk_decode_init(void);
extern void cmk_decode_log_old_tuple(Relation rel, HeapTuple old_cipher,
									 HeapTuple old_plain);

/* cmkam_handler.c */
extern const TableAmRoutine *cmk_heap_routine(void);
extern bool cmk_is_cmk_relation(Relation rel);

#endif							/* CMKAM_H */
