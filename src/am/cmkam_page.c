/*-------------------------------------------------------------------------
 *
 * cmkam_page.c
 *		Page-at-a-time decryption for cmk_heap sequential scans: one cipher
 *		call serves the visible tuples of a pinned page.
 *
 * Two paths.  cmk_page_prefix_keystream computes the keystream of the
 * by-value fixed-width prefix, and the slot XORs each such value from the
 * page when the executor asks for it; a query that reads nothing else (a
 * sum() over an integer column) needs no more.  cmk_decrypt_page_prefixes
 * decrypts the attributes after that prefix, and every attribute of the
 * tuples the first path cannot serve, into the slot's page cache.  Neither
 * copies the page: the data of a tuple on a pinned page does not move
 * (docs/design.md).  This file must never serve a tuple whose trailer it
 * has not checked, nor return with keystream anywhere but in the buffers
 * its caller wipes (the slot's page cache).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "am/cmkam_codec_int.h"
#include "keys/key_store.h"
#include "port/pg_bitutils.h"

#if defined(__GNUC__) || defined(__clang__)
#define prefetch_read(p)	__builtin_prefetch(p)
#else
#define prefetch_read(p)	((void) 0)
#endif
#define PREFETCH_AHEAD		4	/* general path */
#define FAST_PREFETCH_AHEAD	16	/* by-value prefix path */

/* Bits [0, n) set, n <= 32. */
static inline uint32
low_mask(int n)
{
	return n == 32 ? ~(uint32) 0 : ((uint32) 1 << n) - 1;
}

/*
 * The first nbytes (1 to 4) of a little-endian bit string: a null bitmap, or
 * the one-bit nonce map of a two-nonce trailer (bit i of byte i / 8 for
 * attribute i).  The caller masks off the bits it does not want.
 */
static inline uint32
load_bits(const bits8 *p, int nbytes)
{
	uint32		v = p[0];

	for (int b = 1; b < nbytes; b++)
		v |= (uint32) p[b] << (8 * b);
	return v;
}

/*
 * Whether the epoch a stored nonce names is usable under tag (if not, the
 * general path reports it), leaving its prefix in *pre.  A page's tuples
 * mostly share an epoch: *id / *pre keep the last one found usable.  (A
 * tuple updated after a restart has its two nonces under two epochs: each
 * of the two gets its own cache.)
 */
static inline bool
epoch_usable_cached(const uint8 *nonce, uint32 tag, int32 *id, const uint8 **pre)
{
	int32		this_id = (nonce[0] << 8) | nonce[1];
	const CmkEpoch *e;

	if (likely(this_id == *id))
		return true;
	e = cmk_epoch(nonce);
	if (!cmk_epoch_usable(e, tag))
		return false;
	*id = this_id;
	*pre = e->prefix;
	return true;
}

/*
 * The by-value fixed-width prefix of desc (see CmkPrefixLayout): the same
 * nominal offsets cmk_batch_init gives region 0.
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
	for (int n = 1; n <= lay->nbyval; n++)
	{
		int			w = n;

		while (w < lay->nbyval &&
			   cmk_prefix_blocks(lay, w + 1) == cmk_prefix_blocks(lay, n))
			w++;
		lay->wide[n - 1] = (int8) w;
	}
}

/*
 * The counter blocks of a tuple's by-value prefix: nblk is 1 for anything up
 * to 16 bytes of leading columns (three int4, two int8), so that case is
 * unrolled.
 */
static pg_attribute_always_inline void
prefix_counter_blocks(uint8 *cb, NonceRef nonce, int nblk)
{
	if (likely(nblk == 1))
		counter_block(cb, nonce, 0, 0);
	else
		counter_blocks(cb, nonce, 0, 0, nblk);
}

/*
 * prefix_keystream's case for any other trailer (external references, a
 * trailer with more nonces, or a damaged one): whether attributes [0, upto)
 * of pt, data up to end, lie under at most two nonces, given in nonce[] with
 * those under the second in *second.  Out of line, so that the common
 * cases' loop keeps its registers.
 */
static pg_noinline bool
prefix_nonces_general(Relation rel, CmkPageTuple *pt, uint32 tag, int upto,
					  int32 end, NonceRef nonce[2], uint32 *second)
{
	HeapTupleData tup;
	Trailer		t;
	int			idx[2] = {-1, -1};

	tup.t_data = pt->src;
	tup.t_len = pt->src_len;
	tup.t_self = pt->tid;
	tup.t_tableOid = RelationGetRelid(rel);

	/*
	 * A damaged trailer is left to cmk_decrypt_page_prefixes, which walks
	 * the page forwards: the error names the first damaged tuple in scan
	 * order.
	 */
	if (!cmk_trailer_readable(rel, &tup, tag, &t) ||
		t.data_end - pt->src->t_hoff < end)
		return false;
	for (int i = 0; i < upto; i++)
	{
		int			k = map_get(&t, i);

		if (bit_get(t.extbits, i))
			return false;		/* corrupt: a by-value external reference */
		else if (idx[0] < 0 || k == idx[0])
			idx[0] = k;
		else if (idx[1] < 0 || k == idx[1])
		{
			idx[1] = k;
			*second |= (uint32) 1 << i;
		}
		else
			return false;		/* three nonces: not kept here */
	}
	nonce[0] = trailer_nonce(&t, idx[0]);
	if (idx[1] >= 0)
		nonce[1] = trailer_nonce(&t, idx[1]);
	return true;
}

/*
 * The fast page path of sequential scans, for the by-value attributes of
 * the fixed-width prefix (natts <= lay->nbyval): all a sum() over an integer
 * column or a qualification on an integer key reads, and the start of the
 * rows COPY TO or a wider query reads (cmk_decrypt_page_prefixes then
 * decrypts the attributes after them).
 *
 * For every tuple of tups whose attributes [0, natts) are present, not
 * null, inside its data and under at most two nonces, compute their
 * keystream, at their nominal offsets, into ks (room for 2 * ntups *
 * cmk_prefix_blocks(lay, natts) blocks; *nblocksp says how many it wrote, for
 * the caller to wipe), set ks, stp and fast_natts: the slot then
 * decrypts each value when the executor asks for it, by XORing page and
 * keystream at the attribute's offset, with nothing copied and no
 * per-tuple bookkeeping (what cmk_decrypt_page_prefixes, for the general
 * case, spends most of its time on).  One cipher call for the page.
 *
 * The blocks computed for natts attributes often cover more of them (three
 * int4 columns share one block): a tuple whose first lay->wide[natts - 1]
 * attributes qualify as well, under no nonce the first natts do not use,
 * gets the keystream of all of them, and fast_natts says how many it has.
 * Then a query that reads more of the tuples it qualifies needs no second
 * pass over the page.
 *
 * Every other tuple is left with fast_natts = 0, for cmk_decrypt_page_prefixes
 * to decrypt from its first attribute (and to report whatever is wrong with
 * it).  Returns their number.
 */
static pg_attribute_always_inline int
prefix_keystream(Relation rel, const CmkPrefixLayout *lay, int natts,
				 CmkPageTuple *tups, int ntups, uint8 *ks, int *nblocksp,
				 bool widen)
{
	uint32		tag;
	CmkKeystream *cks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	int			wide = widen ? lay->wide[natts - 1] : natts;
	int			nblk = cmk_prefix_blocks(lay, natts);
	uint32		all = low_mask(natts);
	uint32		all_wide = low_mask(wide);
	int32		end_natts = lay->end[natts - 1];
	int32		end_wide = lay->end[wide - 1];
	int			nbytes = (natts + 7) / 8;
	int			wide_nbytes = (wide + 7) / 8;
	uint8	   *cb = ks;		/* next counter block */
	int			nblocks;
	int			left = 0;
	bool		any_second = false;
	int32		id0 = -1;		/* see epoch_usable_cached */
	int32		id1 = -1;
	const uint8 *pre0 = NULL;
	const uint8 *pre1 = NULL;

	StaticAssertStmt(CMK_PREFIX_MAX_ATTS <= 32, "second is a 32-bit mask");
	Assert(natts > 0 && natts <= wide && wide <= lay->nbyval);

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
		bool		hasnull = (src->t_infomask & HEAP_HASNULL) != 0;
		NonceRef	nonce[2];
		int			upto;		/* attributes served: natts or wide */
		uint32		upto_mask;
		int32		end;		/* their data's end */
		uint32		second = 0; /* of them, those under nonce[1] */

		pt->fast_natts = 0;
		pt->second = 0;
		pt->tupnatts = tupnatts;	/* also for a tuple served whole */
		if (j >= FAST_PREFETCH_AHEAD)
		{
			prefetch_read(tups[j - FAST_PREFETCH_AHEAD].src);
			prefetch_read((const char *) tups[j - FAST_PREFETCH_AHEAD].src +
						  tups[j - FAST_PREFETCH_AHEAD].src_len - 1);
		}
		/* a null bitmap bit is set for a present attribute */
		if (tupnatts < natts ||
			(hasnull && (load_bits(src->t_bits, nbytes) & all) != all))
		{
			left++;
			continue;
		}
		upto = natts;
		upto_mask = all;
		end = end_natts;
		if (widen && tupnatts >= wide &&
			(!hasnull || (load_bits(src->t_bits, wide_nbytes) & all_wide) == all_wide))
		{
			upto = wide;
			upto_mask = all_wide;
			end = end_wide;
		}

		if (likely(flags == CMK_FLAGS_MARKER &&
				   len >= src->t_hoff + end + CMK_TRAILER_MIN))
		{
			/* one nonce, no external references: a fresh tuple */
			const uint8 *n0 = base + len - CMK_TRAILER_MIN;

			if (unlikely(!epoch_usable_cached(n0, tag, &id0, &pre0)))
			{
				left++;
				continue;
			}
			nonce[0].pre = pre0;
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

			if (data_end < src->t_hoff + end)
			{
				left++;			/* reported there */
				continue;
			}
			if (unlikely(!epoch_usable_cached(n0, tag, &id0, &pre0) ||
						 (n1len == CMK_NONCE_LEN &&
						  !epoch_usable_cached(n1, tag, &id1, &pre1))))
			{
				left++;
				continue;
			}
			nonce[0].pre = pre0;
			nonce[1].pre = n1len == CMK_NONCE_LEN ? pre1 : pre0;
			second = load_bits(map, (upto + 7) / 8) & upto_mask;
			if (widen && upto > natts)
			{
				uint32		narrow = second & all;

				/*
				 * Widen only for free: not when the attributes beyond natts
				 * need a nonce those up to it do not (an UPDATE changed
				 * them), which would double this tuple's blocks for the one
				 * row a qualification usually lets through; the slot serves
				 * that row alone (serve_prefix_alone).
				 */
				if ((narrow == 0 && second != 0) ||
					(narrow == all && second != upto_mask))
				{
					upto = natts;
					upto_mask = all;
					second = narrow;
				}
			}
			nonce[0].ctr = n0 + CMK_NONCE_EPOCH_LEN;
			nonce[1].ctr = n1 + (n1len - CMK_NONCE_CTR_LEN);
		}
		else if (!prefix_nonces_general(rel, pt, tag, upto, end, nonce,
										&second))
		{
			left++;
			continue;
		}

		/* a nonce that covers all the attributes served is the only one */
		if (second == upto_mask)
		{
			nonce[0] = nonce[1];
			second = 0;
		}
		pt->ks = cb;
		prefix_counter_blocks(cb, nonce[0], nblk);
		cb += nblk * CMK_AES_BLOCK;
		if (second != 0)
		{
			prefix_counter_blocks(cb, nonce[1], nblk);
			cb += nblk * CMK_AES_BLOCK;
			pt->second = second;
			any_second = true;
		}
		pt->stp = (const char *) src + src->t_hoff;
		pt->fast_natts = upto;
	}

	nblocks = (cb - ks) / CMK_AES_BLOCK;
	*nblocksp = nblocks;
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

		if (pt->fast_natts == 0)
			continue;
		for (uint32 m = pt->second; m != 0; m &= m - 1)
		{
			int			i = pg_rightmost_one_pos32(m);

			memcpy(kp + lay->pos[i], kp + nblk * CMK_AES_BLOCK + lay->pos[i],
				   lay->len[i]);
		}
	}
	return left;
}

int
cmk_page_prefix_keystream(Relation rel, const CmkPrefixLayout *lay, int natts,
						  CmkPageTuple *tups, int ntups, uint8 *ks,
						  int *nblocks)
{
	/* two copies of the loop: the common one has nothing to widen */
	if (lay->wide[natts - 1] > natts)
		return prefix_keystream(rel, lay, natts, tups, ntups, ks, nblocks,
								true);
	return prefix_keystream(rel, lay, natts, tups, ntups, ks, nblocks, false);
}

/*
 * Page-at-a-time decryption for sequential scans: for every visible tuple of
 * a pinned page, decrypt attributes [0, natts) straight into Datums, with as
 * few cipher calls as possible (one per BATCH_BLOCKS counter blocks, usually
 * one per page): per-call overhead, not AES, is what a per-tuple design pays.
 *
 * A tuple that cmk_page_prefix_keystream served (fast) already has the
 * keystream of attributes [0, fast_natts) of lay, the slot XORs those from
 * the page; here it starts after them, where no null before moves anything.
 * Every other tuple starts at attribute 0.
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
						  int ntups, int natts, const CmkPrefixLayout *lay,
						  int fast_natts, Datum *values, bool *isnull,
						  char *area, Size areasize)
{
	uint32		tag;
	CmkKeystream *ks = cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
	XorBatch	batch;
	Oid			toastrelid = rel->rd_rel->reltoastrelid;
	Size		used = 0;
	bool		any_ext = false;
	uint32		fast_end = fast_natts > 0 ? lay->end[fast_natts - 1] : 0;

	Assert(fast_natts <= lay->nbyval);
	cmk_batch_init(&batch, ks, desc);
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
		int			first = 0;
		uint32		off = 0;
		bool		slow = false;
		Datum	   *v = values + (Size) j * natts;
		bool	   *nul = isnull + (Size) j * natts;

		if (pt->fast_natts > 0)
		{
			if (natts <= fast_natts)
				continue;		/* all by XOR from the page */
			first = fast_natts;
			off = fast_end;
		}
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

		/* room for every byte up to the end of data; only some are copied */
		if (used + MAXALIGN(limit) > areasize)
			return false;
		pt->copy = area + used;
		used += MAXALIGN(limit);
		pt->values = v;
		pt->isnull = nul;
		pt->tupnatts = tupnatts;

		for (int i = first; i < n; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			NonceRef	nonce;
			int32		full;
			int32		hdr;

			if (!locate_attr(rel, src, att, i, hasnulls, stp, limit, &off,
							 &slow, &full, &hdr))
			{
				v[i] = (Datum) 0;
				nul[i] = true;
				continue;
			}
			nul[i] = false;
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
	cmk_batch_done(&batch);

	/* pass 2: bytes to values; external references get their pointer form */
	for (int j = 0; j < ntups; j++)
	{
		CmkPageTuple *pt = &tups[j];

		if (pt->fast_natts > 0 && natts <= fast_natts)
			continue;
		for (int i = pt->fast_natts > 0 ? fast_natts : 0; i < pt->ndec; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			Datum	   *d = &pt->values[i];

			if (any_ext && bit_get(pt->t.extbits, i) &&
				(pt->isnull[i] || att->attbyval ||
				 !extref_to_toast_pointer(att, (uint8 *) pt->copy + *d, toastrelid)))
				cmk_corrupt_at(rel, pt->src, "invalid external reference");
			if (pt->isnull[i])
				continue;
			if (att->attbyval)
				*d = fetch_att(d, true, att->attlen);
			else
				*d = PointerGetDatum(pt->copy + *d);
		}
	}
	return true;
}
