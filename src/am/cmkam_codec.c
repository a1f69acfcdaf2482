/*-------------------------------------------------------------------------
 *
 * cmkam_codec.c
 *		The cmk_heap tuple format: turn a plaintext heap tuple into a stored
 *		(encrypted) one and back.
 *
 * A stored tuple stays a valid heap tuple for the relation's descriptor:
 * header, null bitmap, alignment padding and varlena length headers are in
 * clear; every attribute's bytes after its length header are XORed with an
 * AES-256-CTR keystream; a trailer inside t_len carries the nonces (each a
 * 16-bit nonce epoch and a 32-bit counter: cmkam_nonce.c) and the flags
 * that say how to read it.  Each attribute names one of up to
 * CMK_MAX_NONCES nonces, so an update can keep the stored bytes of every
 * unchanged attribute (HOT and lock strength then behave as on heap) while
 * every changed attribute gets fresh keystream and is re-rolled until its
 * stored bytes differ from the old ones, exactly as heap_update will compare
 * them.  Byte-level layout: docs/tuple-format.md.
 *
 * This file must never return a tuple it could not fully decrypt, never
 * reuse a nonce, and never look at the TID (it is chosen after encryption).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "access/detoast.h"
#include "access/heaptoast.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/datum.h"

#include "am/cmkam.h"
#include "keys/key_store.h"

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
	int			used;			/* high-water mark, for wiping */
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
 * Keystream layout of desc (docs/tuple-format.md): the attributes before
 * the first one that is not fixed-width share region 0 of the keystream,
 * each at the offset it has when no attribute is null (its "nominal"
 * offset, which never moves); every other attribute has its own region.
 */
static void
batch_init(XorBatch *b, CmkKeystream *ks, TupleDesc desc)
{
	int32		off = 0;
	int			i;

	b->ks = ks;
	b->nblocks = 0;
	b->used = 0;
	b->nxors = 0;
	b->last_nonce = NULL;
	b->ncontig = 0;
	b->contig_len = 0;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attlen <= 0)
			break;
		off = att_align_nominal(off, att->attalign);
		b->fixed_pos[i] = off;
		if (b->ncontig == i && off == b->contig_len)
		{
			b->ncontig = i + 1;
			b->contig_len = off + att->attlen;
		}
		off += att->attlen;
	}
	b->nfixed = i;
	/* region offsets are counted in 16-bit block numbers */
	Assert(off <= 0xFFFF * CMK_AES_BLOCK);
}

/* d[0..n) = s[0..n) ^ k[0..n), two words at a time; d may be s */
static inline void
xor_bytes(uint8 *d, const uint8 *s, const uint8 *k, int32 n)
{
	for (; n >= 16; d += 16, s += 16, k += 16, n -= 16)
	{
		uint64		x0,
					x1,
					y0,
					y1;

		memcpy(&x0, s, 8);
		memcpy(&x1, s + 8, 8);
		memcpy(&y0, k, 8);
		memcpy(&y1, k + 8, 8);
		x0 ^= y0;
		x1 ^= y1;
		memcpy(d, &x0, 8);
		memcpy(d + 8, &x1, 8);
	}
	if (n >= 8)
	{
		uint64		x,
					y;

		memcpy(&x, s, 8);
		memcpy(&y, k, 8);
		x ^= y;
		memcpy(d, &x, 8);
		d += 8;
		s += 8;
		k += 8;
		n -= 8;
	}
	if (n >= 4)
	{
		uint32		x,
					y;

		memcpy(&x, s, 4);
		memcpy(&y, k, 4);
		x ^= y;
		memcpy(d, &x, 4);
		d += 4;
		s += 4;
		k += 4;
		n -= 4;
	}
	for (; n > 0; n--)
		*d++ = *s++ ^ *k++;
}

static void
batch_flush(XorBatch *b)
{
	if (b->nblocks == 0)
		return;
	b->used = Max(b->used, b->nblocks);
	if (!cmk_keystream_blocks(b->ks, b->blocks, b->nblocks))
	{
		OPENSSL_cleanse(b->blocks, b->used * CMK_AES_BLOCK);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("AES keystream generation failed")));
	}
	for (int i = 0; i < b->nxors; i++)
		xor_bytes(b->xors[i].dst, b->xors[i].src,
				  b->blocks + b->xors[i].block * CMK_AES_BLOCK + b->xors[i].skip,
				  b->xors[i].len);
	b->nblocks = 0;
	b->nxors = 0;
	b->last_nonce = NULL;
}

/*
 * The counter blocks of blocks blk .. blk + n - 1 of keystream region r
 * under nonce N: N || r || blk, big-endian uint16 each
 * (docs/tuple-format.md).  The one place that defines them.  A region never
 * reaches 2^16 blocks: an inline attribute is smaller than a page.
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
 * Queue keystream for attribute i (0-based) under nonce over data[len],
 * whose stored bytes are read from src (data itself, or a page).  The
 * attribute's region and offset come from the batch's layout (batch_init).
 * The blocks of one range are queued
 * consecutively, so the range is XORed in one go; a range that starts in the
 * block queued last (the fixed-width prefix shares region 0) reuses it.
 */
static pg_noinline void
batch_add_general(XorBatch *b, NonceRef nonce, int i, uint8 *data,
				  const uint8 *src, int32 len)
{
	int			region = i < b->nfixed ? 0 : i + 1;
	int32		pos = i < b->nfixed ? b->fixed_pos[i] : 0;

	while (len > 0)
	{
		int			blk = pos / CMK_AES_BLOCK;
		int			skip = pos % CMK_AES_BLOCK;
		bool		reuse;
		int			nb;
		int			first;
		int32		n;

		if (b->nxors == BATCH_XORS)
			batch_flush(b);
		/* the counter pointer identifies the nonce within one batch */
		reuse = b->last_nonce == nonce.ctr && b->last_region == region &&
			b->last_blk == blk && b->nblocks > 0;
		nb = (skip + len + CMK_AES_BLOCK - 1) / CMK_AES_BLOCK;
		if (b->nblocks + nb - (reuse ? 1 : 0) > BATCH_BLOCKS)
		{
			batch_flush(b);
			reuse = false;
			nb = Min(nb, BATCH_BLOCKS);
		}
		n = Min(len, nb * CMK_AES_BLOCK - skip);
		first = reuse ? b->nblocks - 1 : b->nblocks;
		counter_blocks(b->blocks + b->nblocks * CMK_AES_BLOCK, nonce, region,
					   blk + (reuse ? 1 : 0), nb - (reuse ? 1 : 0));
		b->nblocks += nb - (reuse ? 1 : 0);
		b->last_nonce = nonce.ctr;
		b->last_region = region;
		b->last_blk = blk + nb - 1;
		b->xors[b->nxors].dst = data;
		b->xors[b->nxors].src = src;
		b->xors[b->nxors].block = (uint16) first;
		b->xors[b->nxors].skip = (uint16) skip;
		b->xors[b->nxors].len = n;
		b->nxors++;
		data += n;
		src += n;
		pos += n;
		len -= n;
	}
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
	batch_add_general(b, nonce, i, data, src, len);
}

/* The same, in place. */
static pg_attribute_always_inline void
batch_add(XorBatch *b, NonceRef nonce, int i, uint8 *data, int32 len)
{
	batch_add_from(b, nonce, i, data, data, len);
}

static void
batch_done(XorBatch *b)
{
	batch_flush(b);
	/* keystream is key-derived material: wipe what was used */
	OPENSSL_cleanse(b->blocks, b->used * CMK_AES_BLOCK);
}

static void
report_corrupt(Relation rel, HeapTuple tup, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("encrypted tuple (%u,%u) in relation \"%s\" is not readable: %s",
					ItemPointerGetBlockNumberNoCheck(&tup->t_self),
					ItemPointerGetOffsetNumberNoCheck(&tup->t_self),
					RelationGetRelationName(rel), what),
			 errhint("The tuple was not written by cmk_heap or the relation file is damaged.")));
}

static void
corrupt_at(Relation rel, HeapTupleHeader td, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("encrypted tuple in relation \"%s\" is not readable: %s",
					RelationGetRelationName(rel), what),
			 errhint("The tuple was not written by cmk_heap or the relation file is damaged.")));
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
			corrupt_at(rel, td, "invalid attribute header");
		if (VARATT_IS_1B(p))
		{
			*full = VARSIZE_1B(p);
			*hdr = 1;
		}
		else
		{
			if ((int32) off + 4 > limit)
				corrupt_at(rel, td, "attribute beyond end of data");
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
		corrupt_at(rel, td, "attribute beyond end of data");
}

/*
 * Locate every attribute of a tuple from attribute first on (which starts
 * at data offset off, unaligned), checking that none runs past data_end (the
 * trailer must never be read as data).  spans[0 .. first) are left alone.
 * Returns the number of physically present attributes.
 */
static int
walk_attrs_from(Relation rel, TupleDesc desc, HeapTuple tup, int32 data_end,
				AttrSpan *spans, int first, int32 off)
{
	HeapTupleHeader td = tup->t_data;
	int			natts = HeapTupleHeaderGetNatts(td);
	bool		hasnulls = HeapTupleHasNulls(tup);
	char	   *tp = (char *) td + td->t_hoff;
	int32		limit = data_end - td->t_hoff;

	if (natts > desc->natts || td->t_hoff > data_end || off > limit)
		report_corrupt(rel, tup, "header does not match the table");

	for (int i = first; i < natts; i++)
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
				report_corrupt(rel, tup, "attribute beyond end of data");
			off = att_align_pointer(off, att->attalign, -1, tp + off);
			if (off >= limit)
				report_corrupt(rel, tup, "attribute beyond end of data");
			p = tp + off;
			if (VARATT_IS_1B_E(p))
			{
				if (VARTAG_EXTERNAL(p) != VARTAG_ONDISK)
					report_corrupt(rel, tup, "unexpected external datum");
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
					report_corrupt(rel, tup, "attribute beyond end of data");
				s->full = VARSIZE_4B(p);
				s->hdr = 4;
			}
			if (s->full < s->hdr)
				report_corrupt(rel, tup, "invalid varlena length");
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_heap does not support column \"%s\" of type cstring",
							NameStr(att->attname))));
		if (off + s->full > limit)
			report_corrupt(rel, tup, "attribute beyond end of data");
		s->start = td->t_hoff + off;
		off += s->full;
	}
	return natts;
}

static int
walk_attrs(Relation rel, TupleDesc desc, HeapTuple tup, int32 data_end,
		   AttrSpan *spans)
{
	return walk_attrs_from(rel, desc, tup, data_end, spans, 0, 0);
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

static int32
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

/* The epoch of a stored nonce, which must be usable under want_tag. */
static inline const CmkEpoch *
checked_epoch(Relation rel, HeapTuple tup, const uint8 *nonce, uint32 want_tag)
{
	const CmkEpoch *e = cmk_epoch(nonce);

	if (!cmk_epoch_usable(e, want_tag))
		cmk_report_bad_epoch(rel, &tup->t_self, (nonce[0] << 8) | nonce[1],
							 want_tag);
	return e;
}

void
cmk_parse_trailer(Relation rel, HeapTuple tup, uint32 want_tag, Trailer *t)
{
	const uint8 *base = (const uint8 *) tup->t_data;
	int32		len = (int32) tup->t_len;
	int			natts = HeapTupleHeaderGetNatts(tup->t_data);
	uint8		flags;
	int32		size;

	if (len < (int32) SizeofHeapTupleHeader + CMK_TRAILER_MIN ||
		(base[len - 1] & CMK_FLAGS_MARKER_MASK) != CMK_FLAGS_MARKER)
	{
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
		report_corrupt(rel, tup, "no cmk_heap trailer");
	}
	flags = base[len - 1];
	t->nnonces = (flags & CMK_FLAG_NONCES_MASK) + 1;
	t->short_nonces = (flags & CMK_FLAG_SHORT_NONCES) != 0;
	if (t->short_nonces && t->nnonces == 1)
		report_corrupt(rel, tup, "invalid trailer flags");
	size = trailer_size(t->nnonces, natts, (flags & CMK_FLAG_HAS_EXTERNAL) != 0,
						t->short_nonces);
	if (len - size < tup->t_data->t_hoff)
		report_corrupt(rel, tup, "trailer larger than the tuple");
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
	t->pre0 = checked_epoch(rel, tup, t->nonce0, want_tag)->prefix;
	for (int j = 1; !t->short_nonces && j < t->nnonces; j++)
		(void) checked_epoch(rel, tup, t->more + (j - 1) * CMK_NONCE_LEN, want_tag);
	/* a 1-bit map (two nonces) cannot name a third; 4-bit entries can */
	for (int i = 0; t->map_bits == 4 && i < natts; i++)
		if (map_get(t, i) >= t->nnonces)
			report_corrupt(rel, tup, "invalid nonce reference");
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
	AttrSpan	spans[MaxTupleAttributeNumber];
	HeapTuple	plain;
	XorBatch	batch;
	int			natts;
	bool		has_ext = false;
	Oid			toastrelid = rel->rd_rel->reltoastrelid;

	cmk_parse_trailer(rel, cipher, tag, &t);

	plain = (HeapTuple) palloc(HEAPTUPLESIZE + t.data_end);
	plain->t_len = t.data_end;
	plain->t_self = cipher->t_self;
	plain->t_tableOid = cipher->t_tableOid;
	plain->t_data = (HeapTupleHeader) ((char *) plain + HEAPTUPLESIZE);
	memcpy(plain->t_data, cipher->t_data, t.data_end);

	natts = walk_attrs(rel, desc, plain, t.data_end, spans);
	batch_init(&batch, ks, desc);
	for (int i = 0; i < natts; i++)
	{
		AttrSpan   *s = &spans[i];

		if (s->start < 0 || s->is_ondisk)
		{
			if (s->is_ondisk)
				report_corrupt(rel, cipher, "raw TOAST pointer in stored tuple");
			continue;
		}
		batch_add(&batch, attr_nonce(&t, i), i,
				  (uint8 *) plain->t_data + s->start + s->hdr, s->full - s->hdr);
	}
	batch_done(&batch);

	/* Turn decrypted external references into on-disk TOAST pointers. */
	for (int i = 0; t.extbits && i < natts; i++)
	{
		uint8	   *p;

		if (!bit_get(t.extbits, i))
			continue;
		if (spans[i].start < 0)
			report_corrupt(rel, cipher, "invalid external reference");
		p = (uint8 *) plain->t_data + spans[i].start;
		if (!extref_to_toast_pointer(TupleDescAttr(desc, i), p, toastrelid))
			report_corrupt(rel, cipher, "invalid external reference");
		has_ext = true;
	}
	if (has_ext)
		plain->t_data->t_infomask |= HEAP_HASEXTERNAL;
	return plain;
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
	natts = walk_attrs_from(rel, desc, plain, data_len, spans, first,
							first > 0 ? batch->contig_len : 0);
	for (int i = first; i < natts; i++)
		has_ext |= spans[i].is_ondisk;
	tsize = trailer_size(1, natts, has_ext, false);
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
		for (int i = 0; i < natts; i++)
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

	batch_init(&batch, ks, RelationGetDescr(rel));
	for (int i = 0; i < n; i++)
		out[i] = encrypt_for_insert(rel, RelationGetDescr(rel), tag, plains[i],
									&batch, &space);
	batch_done(&batch);
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
		/* our own copy: it is turned back into stored form below */
		old_plain = old_decrypted ? heap_copytuple(old_decrypted) :
			cmk_decrypt_tuple(rel, desc, old_cipher);
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
		batch_init(&batch, ks, desc);
		for (int i = 0; i < natts; i++)
		{
			if (spans[i].start < 0 || nonce_of[i] >= 0)
				continue;
			batch_add(&batch, plain_nonce(nonces + new_idx * CMK_NONCE_LEN), i,
					  (uint8 *) out->t_data + spans[i].start + spans[i].hdr,
					  spans[i].full - spans[i].hdr);
		}
		batch_done(&batch);

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

	batch_init(&batch, ks, desc);
	for (int i = from; i < to; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int32		full;
		int32		hdr;

		starts[i] = -1;
		if (hasnulls && att_isnull(i, td->t_bits))
		{
			values[i] = (Datum) 0;
			isnull[i] = true;
			slow = true;
			continue;
		}
		isnull[i] = false;

		/* a varlena's first byte decides its alignment: it must be data */
		if (att->attlen == -1 && (int32) off >= limit)
			corrupt_at(rel, td, "attribute beyond end of data");
		off = cmk_attr_offset(att, off, &slow, tp);
		stored_extent(rel, td, att, tp, off, limit, &full, &hdr);

		batch_add(&batch, attr_nonce(t, i), i,
				  (uint8 *) tp + off + hdr, full - hdr);
		starts[i] = (int32) off;
		off += full;
		if (att->attlen <= 0)
			slow = true;
	}
	batch_done(&batch);

	for (int i = from; i < to; i++)
	{
		if (bit_get(t->extbits, i) &&
			(starts[i] < 0 ||
			 !extref_to_toast_pointer(TupleDescAttr(desc, i),
									  (uint8 *) tp + starts[i], toastrelid)))
			corrupt_at(rel, td, "invalid external reference");
		if (starts[i] >= 0)
			values[i] = fetchatt(TupleDescAttr(desc, i), tp + starts[i]);
	}
	*offp = off;
	*slowp = slow;
}

#if defined(__GNUC__) || defined(__clang__)
#define prefetch_read(p)	__builtin_prefetch(p)
#else
#define prefetch_read(p)	((void) 0)
#endif
#define PREFETCH_AHEAD		4
#define FAST_PREFETCH_AHEAD	16

/*
 * Keystream of the fast path of cmk_decrypt_page_prefixes: up to two nonces
 * times FAST_MAX_BLOCKS blocks per tuple of a page.  Static (the function
 * is not reentrant) and wiped after every use.
 */
#define FAST_MAX_BLOCKS		4
static uint8 fast_ks[MaxHeapTuplesPerPage * 2 * FAST_MAX_BLOCKS * CMK_AES_BLOCK];

/* No null among the first n attributes of a tuple with a null bitmap. */
static inline bool
no_null_before(const bits8 *bits, int n)
{
	for (int i = 0; i < n; i++)
		if (att_isnull(i, bits))
			return false;
	return true;
}

/* Corruption found while fast_ks holds keystream: wipe it, then report. */
static void
page_corrupt(Relation rel, HeapTupleHeader td, const char *what, int nfastblk)
{
	OPENSSL_cleanse(fast_ks, nfastblk * CMK_AES_BLOCK);
	corrupt_at(rel, td, what);
}

/*
 * The by-value fixed-width prefix of desc (see CmkPrefixLayout): the same
 * nominal offsets batch_init gives region 0.
 */
void
cmk_prefix_layout(TupleDesc desc, CmkPrefixLayout *lay)
{
	int32		off = 0;
	int			i;

	for (i = 0; i < desc->natts && i < CMK_PREFIX_MAX_ATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attlen <= 0 || !att->attbyval)
			break;
		off = att_align_nominal(off, att->attalign);
		if (off + att->attlen > CMK_PREFIX_MAX_BLOCKS * CMK_AES_BLOCK)
			break;
		lay->pos[i] = (int16) off;
		lay->len[i] = att->attlen;
		off += att->attlen;
		lay->end[i] = (int16) off;
	}
	lay->nbyval = i;
}

/*
 * The fast page path of sequential scans, for queries that read nothing but
 * by-value attributes of the fixed-width prefix (natts <= lay->nbyval: a
 * sum() over an integer column, a qualification on an integer key).
 *
 * For every tuple of tups whose attributes [0, natts) are present, not
 * null, inside its data and under at most two nonces, compute their
 * keystream, at their nominal offsets, into ks (room for 2 * ntups *
 * cmk_prefix_blocks(lay, natts) blocks), set ks, stp and fast: the slot then
 * decrypts each value when the executor asks for it, by XORing page and
 * keystream at the attribute's offset, with nothing copied and no
 * per-tuple bookkeeping (what cmk_decrypt_page_prefixes, for the general
 * case, spends most of its time on).  One cipher call for the page.
 *
 * Every other tuple is left with fast = false, for cmk_decrypt_page_prefixes
 * (which also reports whatever is wrong with it).  Returns their number.
 */
int
cmk_page_prefix_keystream(Relation rel, const CmkPrefixLayout *lay, int natts,
						  CmkPageTuple *tups, int ntups, uint8 *ks)
{
	uint32		tag;
	CmkKeystream *cks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	int			end = lay->end[natts - 1];
	int			nblk = cmk_prefix_blocks(lay, natts);
	uint32		all = natts == 32 ? ~(uint32) 0 : ((uint32) 1 << natts) - 1;
	uint8	   *cb = ks;		/* next counter block */
	int			nblocks;
	int			left = 0;
	bool		any_second = false;
	int32		usable_id = -1;	/* an epoch checked usable, and its prefix */
	const uint8 *usable_pre = NULL;

	StaticAssertStmt(CMK_PREFIX_MAX_ATTS <= 32, "second is a 32-bit mask");
	Assert(natts > 0 && natts <= lay->nbyval);

	/*
	 * Backwards: the heap fills a page from its end, so this walks the
	 * tuples (header, then trailer) in ascending addresses, one stream the
	 * hardware prefetcher follows; software prefetches start header and
	 * trailer further ahead.
	 */
	for (int j = ntups - 1; j >= 0; j--)
	{
		CmkPageTuple *pt = &tups[j];
		HeapTupleHeader src = pt->src;
		const uint8 *base = (const uint8 *) src;
		int32		len = (int32) pt->src_len;
		int			tupnatts = HeapTupleHeaderGetNatts(src);
		uint8		flags = base[len - 1];
		NonceRef	nonce[2];
		uint32		second = 0; /* prefix attributes under nonce[1] */

		pt->fast = false;
		pt->second = 0;
		if (j >= FAST_PREFETCH_AHEAD)
		{
			prefetch_read(tups[j - FAST_PREFETCH_AHEAD].src);
			prefetch_read((const char *) tups[j - FAST_PREFETCH_AHEAD].src +
						  tups[j - FAST_PREFETCH_AHEAD].src_len - 1);
		}
		if (tupnatts < natts ||
			((src->t_infomask & HEAP_HASNULL) &&
			 !no_null_before(src->t_bits, natts)))
		{
			left++;
			continue;
		}
		if (likely(flags == CMK_FLAGS_MARKER &&
				   len >= src->t_hoff + end + CMK_TRAILER_MIN))
		{
			/* one nonce, no external references: a fresh tuple */
			const uint8 *n0 = base + len - CMK_TRAILER_MIN;
			int32		id = (n0[0] << 8) | n0[1];

			/* a page's tuples mostly share an epoch: check it once */
			if (unlikely(id != usable_id))
			{
				const CmkEpoch *e = cmk_epoch(n0);

				if (!cmk_epoch_usable(e, tag))
				{
					left++;		/* reported there */
					continue;
				}
				usable_id = id;
				usable_pre = e->prefix;
			}
			nonce[0].pre = usable_pre;
			nonce[0].ctr = n0 + CMK_NONCE_EPOCH_LEN;
		}
		else if ((flags & ~CMK_FLAG_SHORT_NONCES) == (CMK_FLAGS_MARKER | 1))
		{
			/*
			 * Two nonces, no external references: a tuple updated once (or
			 * more, compacted), the second nonce a counter under the first's
			 * epoch (short) or a full nonce.  Inline too: after an update
			 * workload, about half a table looks like this.
			 */
			bool		short_nonces = (flags & CMK_FLAG_SHORT_NONCES) != 0;
			int			n1len = short_nonces ? CMK_NONCE_SHORT_LEN : CMK_NONCE_LEN;
			int32		data_end = len - trailer_size(2, tupnatts, false,
													  short_nonces);
			const uint8 *map = base + data_end;
			const uint8 *n0 = base + len - CMK_TRAILER_MIN;
			const uint8 *n1 = map + map_size(2, tupnatts);
			const CmkEpoch *e;
			const CmkEpoch *e1;

			if (data_end < src->t_hoff + end)
			{
				left++;			/* reported there */
				continue;
			}
			e = cmk_epoch(n0);
			e1 = n1len == CMK_NONCE_LEN ? cmk_epoch(n1) : e;
			if (!cmk_epoch_usable(e, tag) || !cmk_epoch_usable(e1, tag))
			{
				left++;
				continue;
			}
			for (int i = 0; i < natts; i++)
				second |= (uint32) ((map[i / 8] >> (i % 8)) & 1) << i;
			nonce[0].pre = e->prefix;
			nonce[0].ctr = n0 + CMK_NONCE_EPOCH_LEN;
			nonce[1].pre = e1->prefix;
			nonce[1].ctr = n1 + (n1len - CMK_NONCE_CTR_LEN);
		}
		else
		{
			HeapTupleData tup;
			Trailer		t;
			int			idx[2] = {-1, -1};
			bool		ok = true;

			tup.t_data = src;
			tup.t_len = pt->src_len;
			tup.t_self = pt->tid;
			tup.t_tableOid = RelationGetRelid(rel);
			/* reports a damaged trailer itself */
			cmk_parse_trailer(rel, &tup, tag, &t);
			if (t.data_end - src->t_hoff < end)
				ok = false;
			for (int i = 0; ok && i < natts; i++)
			{
				int			k = map_get(&t, i);

				if (bit_get(t.extbits, i))
					ok = false; /* corrupt: a by-value external reference */
				else if (idx[0] < 0 || k == idx[0])
					idx[0] = k;
				else if (idx[1] < 0 || k == idx[1])
				{
					idx[1] = k;
					second |= (uint32) 1 << i;
				}
				else
					ok = false; /* three nonces: not kept here */
			}
			if (!ok)
			{
				left++;
				continue;
			}
			nonce[0] = trailer_nonce(&t, idx[0]);
			if (idx[1] >= 0)
				nonce[1] = trailer_nonce(&t, idx[1]);
		}

		/* a nonce that covers the whole prefix is the only one */
		if (second == all)
		{
			nonce[0] = nonce[1];
			second = 0;
		}
		pt->ks = cb;
		counter_blocks(cb, nonce[0], 0, 0, nblk);
		cb += nblk * CMK_AES_BLOCK;
		if (second != 0)
		{
			counter_blocks(cb, nonce[1], 0, 0, nblk);
			cb += nblk * CMK_AES_BLOCK;
			pt->second = second;
			any_second = true;
		}
		pt->stp = (const char *) src + src->t_hoff;
		pt->fast = true;
	}

	nblocks = (cb - ks) / CMK_AES_BLOCK;
	if (nblocks > 0 && !cmk_keystream_blocks(cks, ks, nblocks))
	{
		OPENSSL_cleanse(ks, nblocks * CMK_AES_BLOCK);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("AES keystream generation failed")));
	}

	/*
	 * A tuple with a second nonce in the prefix (an update changed some of
	 * its attributes): move their keystream over the first's, so the slot
	 * reads one keystream per tuple.  (The second's blocks stay in ks, which
	 * the slot wipes like the rest of it.)
	 */
	for (int j = 0; any_second && j < ntups; j++)
	{
		CmkPageTuple *pt = &tups[j];
		uint8	   *kp = (uint8 *) pt->ks;

		if (!pt->fast || pt->second == 0)
			continue;
		for (int i = 0; i < natts; i++)
			if (pt->second & ((uint32) 1 << i))
				memcpy(kp + lay->pos[i], kp + nblk * CMK_AES_BLOCK + lay->pos[i],
					   lay->len[i]);
	}
	return left;
}

/*
 * Page-at-a-time decryption for sequential scans: for every visible tuple of
 * a pinned page, decrypt attributes [0, natts) straight into Datums, with as
 * few cipher calls as possible (one per BATCH_BLOCKS counter blocks, usually
 * one per page): per-call overhead, not AES, is what a per-tuple design pays.
 *
 * values and isnull have room for ntups * natts entries.  A by-value
 * attribute is decrypted inside its own Datum (its stored bytes are copied
 * there and the keystream XORed over them); a by-reference one is copied to
 * area and decrypted there.  Nothing else of the tuple is copied or touched.
 * Returns false if area is too small (the caller then falls back to one
 * tuple at a time).
 */
bool
cmk_decrypt_page_prefixes(Relation rel, TupleDesc desc, CmkPageTuple *tups,
						  int ntups, int natts, Datum *values, bool *isnull,
						  char *area, Size areasize)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	XorBatch	batch;
	Oid			toastrelid = rel->rd_rel->reltoastrelid;
	Size		used = 0;
	bool		any_ext = false;
	int			fast_natts;
	int32		fast_end = -1;
	int			fast_nblk = 0;
	int			nfastblk = 0;

	batch_init(&batch, ks, desc);

	/*
	 * The fast path's shape: the wanted attributes of the fixed-width
	 * prefix, if it is short.  Their keystream is region 0 from block 0, one
	 * contiguous run of blocks per nonce, XORed straight into the values.
	 */
	fast_natts = Min(natts, batch.nfixed);
	if (fast_natts > 0)
	{
		fast_end = batch.fixed_pos[fast_natts - 1] +
			TupleDescAttr(desc, fast_natts - 1)->attlen;
		fast_nblk = (fast_end + CMK_AES_BLOCK - 1) / CMK_AES_BLOCK;
		if (fast_nblk > FAST_MAX_BLOCKS)
			fast_end = -1;
	}

	for (int j = 0; j < ntups; j++)
	{
		CmkPageTuple *pt = &tups[j];
		HeapTupleHeader src = pt->src;
		HeapTupleData tup;
		bool		hasnulls;
		const char *stp;
		int32		limit;
		int			tupnatts;
		int			n;
		uint32		off = 0;
		bool		slow = false;
		Datum	   *v = values + (Size) j * natts;
		bool	   *nul = isnull + (Size) j * natts;

		if (pt->fast)
			continue;			/* served by cmk_page_prefix_keystream */
		hasnulls = (src->t_infomask & HEAP_HASNULL) != 0;
		stp = (const char *) src + src->t_hoff;
		tupnatts = HeapTupleHeaderGetNatts(src);
		n = Min(natts, tupnatts);

		/*
		 * Each tuple's header and trailer are usually two cache misses:
		 * start them a few tuples ahead (measured: ~5 % off a sum()).
		 */
		if (j + PREFETCH_AHEAD < ntups)
		{
			prefetch_read(tups[j + PREFETCH_AHEAD].src);
			prefetch_read((const char *) tups[j + PREFETCH_AHEAD].src +
						  tups[j + PREFETCH_AHEAD].src_len - 1);
		}
		tup.t_data = src;
		tup.t_len = pt->src_len;
		tup.t_self = pt->tid;
		tup.t_tableOid = RelationGetRelid(rel);
		parse_trailer(rel, &tup, tag, &pt->t);
		limit = pt->t.data_end - src->t_hoff;
		any_ext |= pt->t.extbits != NULL;

		/* room for every byte up to the end of data; only the prefix is copied */
		if (used + MAXALIGN(limit) > areasize)
			return false;
		pt->copy = area + used;
		used += MAXALIGN(limit);
		pt->values = v;
		pt->isnull = nul;
		pt->tupnatts = tupnatts;

		/*
		 * Fast path for the fixed-width prefix: no nulls in it, so its
		 * attributes sit at their nominal offsets (those heap caches in
		 * attcacheoff; nulls after them move nothing), inside the data, under
		 * at most two nonces.  Only counter blocks are queued here; pass 2
		 * reads the stored bytes and XORs them into the values.  Later
		 * attributes go the general way.
		 */
		pt->nfast = 0;
		if (fast_end > 0 && n >= fast_natts && fast_end <= limit &&
			(!hasnulls || no_null_before(src->t_bits, fast_natts)))
		{
			int			idx0 = map_get(&pt->t, 0);
			int			idx1 = -1;
			bool		ok = true;

			for (int i = 1; pt->t.map && i < fast_natts && ok; i++)
			{
				int			k = map_get(&pt->t, i);

				if (k != idx0 && idx1 < 0)
					idx1 = k;
				else if (k != idx0 && k != idx1)
					ok = false;
			}
			if (ok)
			{
				for (int set = 0; set < 2; set++)
				{
					int			idx = set == 0 ? idx0 : idx1;
					NonceRef	nonce;

					if (idx < 0)
						break;
					nonce = trailer_nonce(&pt->t, idx);
					pt->ksblk[set] = (int16) nfastblk;
					for (int blk = 0; blk < fast_nblk; blk++)
						counter_block(fast_ks + (nfastblk++) * CMK_AES_BLOCK,
									  nonce, 0, blk);
				}
				pt->nfast = (int16) fast_natts;
				pt->idx1 = (int8) idx1;
				off = fast_end;
			}
		}

		for (int i = pt->nfast; i < n; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			NonceRef	nonce;
			int32		full;
			int32		hdr;

			if (hasnulls && att_isnull(i, src->t_bits))
			{
				v[i] = (Datum) 0;
				nul[i] = true;
				slow = true;
				continue;
			}
			nul[i] = false;
			/* a varlena's first byte decides its alignment: it must be data */
			if (att->attlen == -1 && (int32) off >= limit)
				corrupt_at(rel, src, "attribute beyond end of data");
			off = cmk_attr_offset(att, off, &slow, stp);
			stored_extent(rel, src, att, stp, off, limit, &full, &hdr);
			nonce = attr_nonce(&pt->t, i);
			if (att->attbyval)
			{
				/* decrypt inside the Datum; pass 2 turns bytes into a value */
				v[i] = (Datum) 0;
				memcpy(&v[i], stp + off, full);
				batch_add(&batch, nonce, i, (uint8 *) &v[i], full);
			}
			else
			{
				/* the clear header, then decrypt from the page into the copy */
				memcpy(pt->copy + off, stp + off, hdr);
				batch_add_from(&batch, nonce, i, (uint8 *) pt->copy + off + hdr,
							   (const uint8 *) stp + off + hdr, full - hdr);
				v[i] = (Datum) off;
			}
			off += full;
			if (att->attlen <= 0)
				slow = true;
		}
		pt->ndec = n;
		pt->off = off;
		pt->slow = slow;
	}
	batch_done(&batch);
	if (nfastblk > 0 && !cmk_keystream_blocks(ks, fast_ks, nfastblk))
	{
		OPENSSL_cleanse(fast_ks, nfastblk * CMK_AES_BLOCK);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("AES keystream generation failed")));
	}

	/* pass 2: bytes to values; external references get their pointer form */
	for (int j = 0; j < ntups; j++)
	{
		CmkPageTuple *pt = &tups[j];

		if (pt->fast)
			continue;
		if (pt->nfast > 0)
		{
			const uint8 *stp = (const uint8 *) pt->src + pt->src->t_hoff;

			for (int i = 0; i < pt->nfast; i++)
			{
				Form_pg_attribute att = TupleDescAttr(desc, i);
				int32		pos = batch.fixed_pos[i];
				int			set = (pt->idx1 >= 0 && map_get(&pt->t, i) == pt->idx1);
				const uint8 *kp = fast_ks + pt->ksblk[set] * CMK_AES_BLOCK + pos;
				const uint8 *cp = stp + pos;

				if (any_ext && bit_get(pt->t.extbits, i))
					page_corrupt(rel, pt->src, "invalid external reference", nfastblk);
				pt->isnull[i] = false;
				if (att->attbyval)
					pt->values[i] = cmk_xor_byval(cp, kp, att->attlen);
				else
				{
					uint8	   *dst = (uint8 *) pt->copy + pos;

					for (int k = 0; k < att->attlen; k++)
						dst[k] = cp[k] ^ kp[k];
					pt->values[i] = PointerGetDatum(dst);
				}
			}
		}

		for (int i = pt->nfast; i < pt->ndec; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			Datum	   *d = &pt->values[i];

			if (any_ext && bit_get(pt->t.extbits, i) &&
				(pt->isnull[i] || att->attbyval ||
				 !extref_to_toast_pointer(att, (uint8 *) pt->copy + *d, toastrelid)))
				page_corrupt(rel, pt->src, "invalid external reference", nfastblk);
			if (pt->isnull[i])
				continue;
			if (att->attbyval)
				*d = fetch_att(d, true, att->attlen);
			else
				*d = PointerGetDatum(pt->copy + *d);
		}
	}
	/* keystream is key-derived material: wipe what was used */
	OPENSSL_cleanse(fast_ks, nfastblk * CMK_AES_BLOCK);
	return true;
}
