/*-------------------------------------------------------------------------
 *
 * cmkam_codec_int.h
 *		Internals shared by the files of the cmk_heap tuple format: where a
 *		stored attribute sits, the parsed trailer and its nonces, and the
 *		keystream batch that encrypts many byte ranges with one cipher call.
 *
 * Included only by cmkam_keystream.c, cmkam_trailer.c, cmkam_codec.c and
 * cmkam_page.c; the rest of the access method goes through cmkam.h.  The
 * inline functions here run per attribute on the hot paths of scans and
 * COPY, so they stay small; none of them may read a tuple past its
 * data_end (the trailer is never data).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMKAM_CODEC_INT_H
#define CMKAM_CODEC_INT_H

#include "access/detoast.h"
#include "access/heaptoast.h"
#include "port/pg_bswap.h"

#include "am/cmkam.h"
#include "crypto/cmk_crypto.h"

StaticAssertDecl(TOAST_POINTER_SIZE == TOAST_POINTER_SIZE_CMK,
				 "TOAST pointer size changed");

/* Where one attribute's bytes sit, relative to the tuple header. */
typedef struct AttrSpan
{
	int32		start;			/* offset of the attribute; -1 if null/absent */
	int32		full;			/* stored length including varlena header */
	int32		hdr;			/* clear header bytes at start */
	bool		is_ondisk;		/* a raw on-disk TOAST pointer (plain form) */
} AttrSpan;

typedef CmkTrailer Trailer;

/*
 * A nonce as its 8-byte random prefix (its epoch's) and its 4-byte counter.
 * Both point into stable memory (the epoch table, a tuple, a trailer being
 * built), so the counter pointer identifies the nonce within one batch.
 */
typedef struct NonceRef
{
	const uint8 *pre;
	const uint8 *ctr;
} NonceRef;

/*
 * Bytes of one keystream region: its blocks are numbered by a uint16 in
 * the counter block (docs/tuple-format.md).  Checked, not assumed:
 * cmk_batch_init (the fixed-width prefix), cmk_batch_add_general (every
 * range longer than the inline path takes); cmkam_codec.c refuses a tuple
 * larger than a page before encrypting it.
 */
#define CMK_REGION_MAX_BYTES	(0x10000 * CMK_AES_BLOCK)

#define BATCH_BLOCKS	512
#define BATCH_XORS		1024

/*
 * Pending keystream: counter blocks to encrypt with one cipher call, and
 * the byte ranges to XOR with them.  Attributes of the fixed-width prefix
 * share keystream blocks, so consecutive ranges often use the same block.
 */
typedef struct XorBatch
{
	CmkKeystream *ks;
	int			nfixed;			/* attributes [0, nfixed): region 0 */
	int			ncontig;		/* [0, ncontig) of them have no padding */
	int32		contig_len;		/* bytes of those */
	int32		fixed_pos[MaxTupleAttributeNumber]; /* their region offsets */
	int			nblocks;
	int			nxors;
	/* the last block queued, for sharing */
	const uint8 *last_nonce;
	int			last_region;
	int			last_blk;
	uint8		blocks[BATCH_BLOCKS * CMK_AES_BLOCK];
	struct
	{
		uint8	   *dst;
		const uint8 *src;		/* dst = src ^ keystream; often src == dst */
		uint16		block;		/* first block; the next ones follow it */
		uint16		skip;		/* keystream bytes of it to skip */
		int32		len;
	}			xors[BATCH_XORS];
} XorBatch;

/* cmkam_keystream.c */
extern void cmk_batch_init(XorBatch *b, CmkKeystream *ks, TupleDesc desc);
extern void cmk_batch_add_general(XorBatch *b, NonceRef nonce, int i,
								  uint8 *data, const uint8 *src, int32 len);
extern void cmk_batch_done(XorBatch *b);

/* cmkam_trailer.c */
extern void cmk_report_corrupt(Relation rel, HeapTuple tup,
							   const char *what) pg_attribute_noreturn();
extern void cmk_corrupt_at(Relation rel, HeapTupleHeader td,
						   const char *what) pg_attribute_noreturn();

/*
 * The counter blocks of blocks blk .. blk + n - 1 of keystream region r
 * under nonce N: N || r || blk, big-endian uint16 each
 * (docs/tuple-format.md).  The one place that defines them.  A region never
 * reaches 2^16 blocks: the callers check CMK_REGION_MAX_BYTES (the inline
 * path of batch_add_from only takes ranges of at most BATCH_BLOCKS blocks
 * in a region other than 0, whose extent cmk_batch_init checked).
 */
static inline void
counter_blocks(uint8 *cb, NonceRef nonce, int region, int blk, int n)
{
	uint64		pre;
	uint32		ctr;
	uint32		tail = ((uint32) (uint16) region << 16) | (uint16) blk;

	Assert(blk + n <= 0x10000);
	memcpy(&pre, nonce.pre, CMK_NONCE_PREFIX_LEN);
	memcpy(&ctr, nonce.ctr, CMK_NONCE_CTR_LEN);
	for (int k = 0; k < n; k++, cb += CMK_AES_BLOCK)
	{
		uint32		t = pg_hton32(tail + k);

		memcpy(cb, &pre, CMK_NONCE_PREFIX_LEN);
		memcpy(cb + CMK_NONCE_PREFIX_LEN, &ctr, CMK_NONCE_CTR_LEN);
		memcpy(cb + 12, &t, sizeof(t));
	}
}

static inline void
counter_block(uint8 *cb, NonceRef nonce, int region, int blk)
{
	counter_blocks(cb, nonce, region, blk, 1);
}

/*
 * batch_add_from, inline for its common case: a range that starts a block
 * (nothing to share with the range before) and fits in the batch.
 */
static pg_attribute_always_inline void
batch_add_from(XorBatch *b, NonceRef nonce, int i, uint8 *data,
			   const uint8 *src, int32 len)
{
	int			region = i < b->nfixed ? 0 : i + 1;
	int32		pos = i < b->nfixed ? b->fixed_pos[i] : 0;
	int			nb = (len + CMK_AES_BLOCK - 1) / CMK_AES_BLOCK;

	if (likely(pos % CMK_AES_BLOCK == 0 && len > 0 &&
			   b->nxors < BATCH_XORS && b->nblocks + nb <= BATCH_BLOCKS))
	{
		counter_blocks(b->blocks + b->nblocks * CMK_AES_BLOCK, nonce,
					   region, pos / CMK_AES_BLOCK, nb);
		b->xors[b->nxors].dst = data;
		b->xors[b->nxors].src = src;
		b->xors[b->nxors].block = (uint16) b->nblocks;
		b->xors[b->nxors].skip = 0;
		b->xors[b->nxors].len = len;
		b->nxors++;
		b->nblocks += nb;
		b->last_nonce = nonce.ctr;
		b->last_region = region;
		b->last_blk = pos / CMK_AES_BLOCK + nb - 1;
		return;
	}
	cmk_batch_add_general(b, nonce, i, data, src, len);
}

/* The same, in place. */
static pg_attribute_always_inline void
batch_add(XorBatch *b, NonceRef nonce, int i, uint8 *data, int32 len)
{
	batch_add_from(b, nonce, i, data, data, len);
}

/*
 * A decrypted external reference of attribute att at p (its clear one-byte
 * varlena header, then the decrypted pointer body) becomes the on-disk TOAST
 * pointer the heap's toaster wrote: header 0x01, VARTAG_ONDISK and the
 * relation's TOAST table.  The one place that does it, for the full decrypt,
 * the lazy deform and the page path alike; false (the caller reports
 * corruption) unless it is exactly that, since the rewrite writes all
 * TOAST_POINTER_SIZE bytes at p.
 */
static inline bool
extref_to_toast_pointer(Form_pg_attribute att, uint8 *p, Oid toastrelid)
{
	if (att->attlen != -1 || !VARATT_IS_1B(p) || VARATT_IS_1B_E(p) ||
		VARSIZE_1B(p) != TOAST_POINTER_SIZE || p[1] != VARTAG_ONDISK ||
		!OidIsValid(toastrelid))
		return false;
	SET_VARTAG_EXTERNAL(p, VARTAG_ONDISK);
	memcpy(p + VARHDRSZ_EXTERNAL + offsetof(varatt_external, va_toastrelid),
		   &toastrelid, sizeof(Oid));
	return true;
}

/*
 * Extent of one stored attribute at aligned offset off of the data area tp
 * (limit bytes long): its full length and its clear header bytes.  Checks
 * that it stays inside the data, so the trailer is never read as data.
 */
static inline void
stored_extent(Relation rel, HeapTupleHeader td, Form_pg_attribute att,
			  const char *tp, uint32 off, int32 limit, int32 *full, int32 *hdr)
{
	if (att->attlen > 0)
	{
		*full = att->attlen;
		*hdr = 0;
	}
	else if (att->attlen == -1)
	{
		const char *p = tp + off;

		if ((int32) off >= limit || VARATT_IS_1B_E(p))
			cmk_corrupt_at(rel, td, "invalid attribute header");
		if (VARATT_IS_1B(p))
		{
			*full = VARSIZE_1B(p);
			*hdr = 1;
		}
		else
		{
			if ((int32) off + 4 > limit)
				cmk_corrupt_at(rel, td, "attribute beyond end of data");
			*full = VARSIZE_4B(p);
			*hdr = 4;
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_heap does not support column \"%s\" of type cstring",
						NameStr(att->attname))));
	if (*full < *hdr || (int32) off + *full > limit)
		cmk_corrupt_at(rel, td, "attribute beyond end of data");
}

/*
 * One step of a deform over a stored tuple (td, its data at tp, limit
 * bytes before the trailer): false if attribute i (att) is null; else its
 * aligned offset in *off and its extent in *full and *hdr, checked to lie
 * inside the data.  *off and *slow advance as in slot_deform_heap_tuple.
 * The one place the lazy deform and the page path locate an attribute.
 */
static pg_attribute_always_inline bool
locate_attr(Relation rel, HeapTupleHeader td, Form_pg_attribute att, int i,
			bool hasnulls, const char *tp, int32 limit, uint32 *off,
			bool *slow, int32 *full, int32 *hdr)
{
	if (hasnulls && att_isnull(i, td->t_bits))
	{
		*slow = true;
		return false;
	}
	/* a varlena's first byte decides its alignment: it must be data */
	if (att->attlen == -1 && (int32) *off >= limit)
		cmk_corrupt_at(rel, td, "attribute beyond end of data");
	*off = cmk_attr_offset(att, *off, slow, tp);
	stored_extent(rel, td, att, tp, *off, limit, full, hdr);
	return true;
}

/* Which nonce attribute i uses. */
static inline int
map_get(const Trailer *t, int i)
{
	if (t->map == NULL)
		return 0;
	if (t->map_bits == 1)
		return (t->map[i / 8] >> (i % 8)) & 0x01;
	return (t->map[i / 2] >> ((i % 2) * 4)) & 0x0F;
}

static inline bool
bit_get(const uint8 *bits, int i)
{
	return bits && (bits[i / 8] & (1 << (i % 8))) != 0;
}

static inline int32
map_size(int nnonces, int natts)
{
	if (nnonces == 1)
		return 0;
	return nnonces == 2 ? (natts + 7) / 8 : (natts + 1) / 2;
}

static inline int32
trailer_size(int nnonces, int natts, bool has_ext, bool short_nonces)
{
	return CMK_TRAILER_FIXED + CMK_NONCE_LEN +
		(nnonces - 1) * (short_nonces ? CMK_NONCE_SHORT_LEN : CMK_NONCE_LEN) +
		map_size(nnonces, natts) +
		(has_ext ? (natts + 7) / 8 : 0);
}

/* Nonce idx of a trailer, as its random prefix and its counter. */
static inline NonceRef
trailer_nonce(const Trailer *t, int idx)
{
	NonceRef	n;

	if (idx == 0)
	{
		n.pre = t->pre0;
		n.ctr = t->nonce0 + CMK_NONCE_EPOCH_LEN;
	}
	else if (t->short_nonces)
	{
		n.pre = t->pre0;
		n.ctr = t->more + (idx - 1) * CMK_NONCE_SHORT_LEN;
	}
	else
	{
		const uint8 *e = t->more + (idx - 1) * CMK_NONCE_LEN;

		n.pre = cmk_epoch(e)->prefix;
		n.ctr = e + CMK_NONCE_EPOCH_LEN;
	}
	return n;
}

/* Nonce idx of a trailer in stored form (epoch id, counter). */
static inline void
trailer_nonce_stored(const Trailer *t, int idx, uint8 *out)
{
	if (idx == 0)
		memcpy(out, t->nonce0, CMK_NONCE_LEN);
	else if (t->short_nonces)
	{
		memcpy(out, t->nonce0, CMK_NONCE_EPOCH_LEN);
		memcpy(out + CMK_NONCE_EPOCH_LEN,
			   t->more + (idx - 1) * CMK_NONCE_SHORT_LEN, CMK_NONCE_CTR_LEN);
	}
	else
		memcpy(out, t->more + (idx - 1) * CMK_NONCE_LEN, CMK_NONCE_LEN);
}

static inline NonceRef
attr_nonce(const Trailer *t, int i)
{
	return trailer_nonce(t, map_get(t, i));
}

/* A nonce in stored form whose epoch is registered. */
static inline NonceRef
plain_nonce(const uint8 *nonce)
{
	NonceRef	n = {cmk_epoch(nonce)->prefix, nonce + CMK_NONCE_EPOCH_LEN};

	return n;
}

/*
 * The common trailer (one nonce, no external references, a usable epoch)
 * without a function call; anything else goes to cmk_parse_trailer, which
 * also reports every problem.
 */
static inline void
parse_trailer(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t)
{
	const uint8 *base = (const uint8 *) tup->t_data;
	int32		len = (int32) tup->t_len;

	if (likely(len >= (int32) tup->t_data->t_hoff + CMK_TRAILER_MIN &&
			   base[len - 1] == CMK_FLAGS_MARKER))
	{
		const CmkEpoch *e = cmk_epoch(base + len - CMK_TRAILER_MIN);

		if (likely(cmk_epoch_usable(e, want_tag)))
		{
			t->nnonces = 1;
			t->data_end = len - CMK_TRAILER_MIN;
			t->nonce0 = base + t->data_end;
			t->pre0 = e->prefix;
			t->more = NULL;
			t->short_nonces = false;
			t->map = NULL;
			t->map_bits = 0;
			t->extbits = NULL;
			return;
		}
	}
	cmk_parse_trailer(rel, tup, want_tag, t);
}

#endif							/* CMKAM_CODEC_INT_H */
