/*-------------------------------------------------------------------------
 *
 * cmkam_keystream.c
 *		The keystream batch of the cmk_heap tuple format: byte ranges of many
 *		attributes, often of many tuples, queue their AES-256-CTR counter
 *		blocks; one cipher call encrypts all the blocks; each range is then
 *		XORed with its own.
 *
 * Per-call overhead, not AES, is what a per-attribute design pays (about
 * 1.2 GB/s for 64-byte calls against 5.8 GB/s for 8 KiB ones here), hence
 * the batch.  The inline half (queueing a range that starts a block) is in
 * cmkam_codec_int.h with counter_blocks, the one definition of a counter
 * block.  This file must never leave keystream in the batch after the
 * flush that used it, nor XOR a range with blocks of another nonce, region
 * or offset than its own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "am/cmkam_codec_int.h"

/*
 * Keystream layout of desc (docs/tuple-format.md): the attributes before
 * the first one that is not fixed-width share region 0 of the keystream,
 * each at the offset it has when no attribute is null (its "nominal"
 * offset, which never moves); every other attribute has its own region.
 */
void
cmk_batch_init(XorBatch *b, CmkKeystream *ks, TupleDesc desc)
{
	int32		off = 0;
	int			i;

	b->ks = ks;
	b->nblocks = 0;
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

	/*
	 * Region offsets are counted in 16-bit block numbers: past 1 MiB the
	 * counter would wrap and two attributes would share keystream.  Only a
	 * table of very wide fixed-width types (whose rows could still fit with
	 * most of them null) gets here.  A real check, not an Assert: the
	 * table's definition is user input.
	 */
	if (unlikely(off > CMK_REGION_MAX_BYTES))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_heap cannot encrypt a row whose leading fixed-width columns span %d bytes",
						(int) off),
				 errdetail("The fixed-width columns before the first variable-width column must span at most %d bytes.",
						   CMK_REGION_MAX_BYTES),
				 errhint("Reorder the table's columns or use the heap access method for it.")));
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
	if (!cmk_keystream_blocks(b->ks, b->blocks, b->nblocks))
	{
		OPENSSL_cleanse(b->blocks, b->nblocks * CMK_AES_BLOCK);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("AES keystream generation failed")));
	}
	for (int i = 0; i < b->nxors; i++)
		xor_bytes(b->xors[i].dst, b->xors[i].src,
				  b->blocks + b->xors[i].block * CMK_AES_BLOCK + b->xors[i].skip,
				  b->xors[i].len);

	/*
	 * Keystream is key-derived material: wipe it as soon as it is used, so
	 * that between flushes the batch holds only counter blocks (public) and
	 * an ERROR raised while the caller queues more leaves no keystream in
	 * its stack frame.
	 */
	OPENSSL_cleanse(b->blocks, b->nblocks * CMK_AES_BLOCK);
	b->nblocks = 0;
	b->nxors = 0;
	b->last_nonce = NULL;
}

/*
 * Queue keystream for attribute i (0-based) under nonce over data[len],
 * whose stored bytes are read from src (data itself, or a page).  The
 * attribute's region and offset come from the batch's layout (cmk_batch_init).
 * The blocks of one range are queued
 * consecutively, so the range is XORed in one go; a range that starts in the
 * block queued last (the fixed-width prefix shares region 0) reuses it.
 */
pg_noinline void
cmk_batch_add_general(XorBatch *b, NonceRef nonce, int i, uint8 *data,
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

		/*
		 * A keystream region has 2^16 blocks (1 MiB); a longer range would
		 * wrap the block counter and reuse keystream.  Stored tuples are
		 * smaller than a page, so only a value that never reaches a page
		 * (a STORAGE PLAIN value over 1 MiB, before "row is too big") can
		 * get here: refuse before any byte is encrypted with it.
		 */
		if (unlikely(pos + len > CMK_REGION_MAX_BYTES))
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("cmk_heap cannot encrypt a value of %d bytes",
							(int) (pos + len)),
					 errdetail("An encrypted column value stored inline must be at most %d bytes.",
							   CMK_REGION_MAX_BYTES)));
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

/* The last flush: afterwards the batch holds no keystream. */
void
cmk_batch_done(XorBatch *b)
{
	batch_flush(b);
}
