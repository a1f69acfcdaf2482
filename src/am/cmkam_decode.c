/*-------------------------------------------------------------------------
 *
 * cmkam_decode.c
 *		Logical decoding of cmk_heap tables: changes reach every output
 *		plugin as plaintext tuples, decrypted inside the server.
 *
 * WAL holds cmk_heap tuples as they are stored: ciphertext with a trailer
 * (docs/tuple-format.md).  The reorder buffer carries them, spills them to
 * disk and restores them as ciphertext; they are decrypted only at the last
 * moment, when the reorder buffer hands a change to the output plugin, and
 * the plaintext is wiped when the plugin returns.  How (details and limits:
 * docs/logical-decoding.md):
 *
 * 1. _PG_init replaces the rm_decode functions of the heap, heap2 and
 *    logical-message resource managers in RmgrTable (writable in PG 15, for
 *    custom resource managers) by wrappers that call the originals.  On the
 *    first record of a decoding context they wrap the reorder buffer's
 *    apply_change/stream_change (decrypt), message/stream_message (swallow
 *    ours) and the end-of-transaction callbacks (drop our state).
 *
 * 2. TOAST chunks.  The reorder buffer reassembles TOAST values from chunk
 *    inserts before any callback runs, reading chunk_id and chunk_seq with
 *    fastgetattr: on cmk_heap chunks, which are encrypted one by one, that
 *    would fail or, worse, rebuild the owning tuple without its trailer.
 *    So the heap wrapper recognises an insert into a TOAST relation whose
 *    tuple has bytes after its last attribute (a trailer: heap chunks never
 *    do) and queues it instead as a transactional logical message with our
 *    prefix, still encrypted, in the same place of the transaction.  The
 *    message callback files it (encrypted) under its TOAST relation and
 *    value; the change that owns it gets the decrypted value as an indirect
 *    datum, as the reorder buffer does for heap.
 *
 * 3. Old keys.  For REPLICA IDENTITY DEFAULT or USING INDEX heap logs the
 *    old key as a tuple it forms itself from the stored (encrypted) key
 *    columns, without our trailer: the nonces are lost.  The write path
 *    therefore logs, just before heap_update/heap_delete, a transactional
 *    logical message with the old tuple's trailer, attribute count and a
 *    CRC of the key columns' ciphertext (cmk_decode_log_old_tuple).  Old
 *    values that are TOASTed (FULL, or toasted key columns), which heap
 *    flattens into WAL, are logged as freshly encrypted chunks.  Nonces
 *    are not secret; nothing logged is plaintext.
 *
 * This file must never let a ciphertext tuple reach an output plugin (it
 * decrypts or raises an error), never skip a change, and never write
 * plaintext to WAL, spill files or anywhere but memory it wipes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "access/detoast.h"
#include "access/heapam_xlog.h"
#include "access/heaptoast.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "catalog/catalog.h"
#include "port/pg_crc32c.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/message.h"
#include "replication/reorderbuffer.h"
#include "replication/snapbuild.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/relfilenodemap.h"

#include "am/cmkam.h"
#include "keys/key_store.h"

/* Message prefixes: ours are consumed here, never passed on. */
#define PREFIX_CHUNK		"cmk_storage.toast_chunk"	/* a new value's chunk */
#define PREFIX_OLD_CHUNK	"cmk_storage.old_toast_chunk"	/* an old value's */
#define PREFIX_OLD_KEY		"cmk_storage.old_key"	/* trailer of an old key */

/* An old key message: this header, then the trailer bytes. */
typedef struct OldKeyMsg
{
	Oid			relid;
	uint16		natts;			/* HeapTupleHeaderGetNatts of the old tuple */
	uint16		trailer_len;
	pg_crc32c	crc;			/* of the key columns' ciphertext */
} OldKeyMsg;

/* A chunk message: the TOAST relation, then xl_heap_header and data. */
typedef struct ChunkMsg
{
	RelFileNode rnode;
} ChunkMsg;

typedef struct ChunkKey
{
	Oid			spc;
	Oid			relnode;
	Oid			valueid;
	bool		old;			/* an old value (PREFIX_OLD_CHUNK) */
} ChunkKey;

typedef struct ChunkEnt
{
	ChunkKey	key;
	int32		next_seq;
	int32		size;			/* payload bytes so far */
	List	   *chunks;			/* encrypted chunk tuples, in order */
} ChunkEnt;

/* What we keep for one top-level transaction being replayed. */
typedef struct TxnState
{
	TransactionId xid;
	MemoryContext cxt;
	HTAB	   *chunks;
	OldKeyMsg  *old_key;		/* pending, with its trailer after it */
} TxnState;

/* One decoding context's state (one at a time per backend). */
typedef struct DecodeState
{
	ReorderBuffer *rb;
	MemoryContext cxt;
	HTAB	   *txns;
} DecodeState;

static DecodeState *state = NULL;

static void (*orig_heap_decode) (LogicalDecodingContext *ctx, XLogRecordBuffer *buf);
static void (*orig_heap2_decode) (LogicalDecodingContext *ctx, XLogRecordBuffer *buf);
static void (*orig_msg_decode) (LogicalDecodingContext *ctx, XLogRecordBuffer *buf);

/* logical.c's callbacks; the same functions for every context. */
static ReorderBufferApplyChangeCB orig_apply_change;
static ReorderBufferStreamChangeCB orig_stream_change;
static ReorderBufferMessageCB orig_message;
static ReorderBufferStreamMessageCB orig_stream_message;
static ReorderBufferCommitCB orig_commit;
static ReorderBufferPrepareCB orig_prepare;
static ReorderBufferStreamAbortCB orig_stream_abort;
static ReorderBufferStreamPrepareCB orig_stream_prepare;
static ReorderBufferStreamCommitCB orig_stream_commit;

/* Plaintext handed to the plugin for one change, wiped after it. */
typedef struct Wipe
{
	void	   *p;
	Size		len;
} Wipe;

typedef struct ChangeScratch
{
	Wipe		w[MaxTupleAttributeNumber * 2 + 4];
	int			n;
} ChangeScratch;

static void
scratch_add(ChangeScratch *s, void *p, Size len)
{
	if (s->n >= lengthof(s->w))
		elog(ERROR, "cmk_heap decoding: too many plaintext buffers");
	s->w[s->n].p = p;
	s->w[s->n].len = len;
	s->n++;
}

static void
scratch_wipe(ChangeScratch *s)
{
	for (int i = 0; i < s->n; i++)
	{
		explicit_bzero(s->w[i].p, s->w[i].len);
		pfree(s->w[i].p);
	}
	s->n = 0;
}

/* ---------- state ---------- */

static void
state_gone(void *arg)
{
	state = NULL;
}

static DecodeState *
get_state(ReorderBuffer *rb)
{
	if (state == NULL || state->rb != rb)
		elog(ERROR, "cmk_heap decoding: no state for this reorder buffer");
	return state;
}

static TxnState *
txn_state(ReorderBuffer *rb, TransactionId xid, bool create)
{
	DecodeState *ds = get_state(rb);
	TxnState   *ts;
	bool		found;

	ts = hash_search(ds->txns, &xid, create ? HASH_ENTER : HASH_FIND, &found);
	if (ts == NULL || found)
		return ts;
	ts->cxt = AllocSetContextCreate(ds->cxt, "cmk_heap decoding transaction",
									ALLOCSET_SMALL_SIZES);
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(ChunkKey);
		ctl.entrysize = sizeof(ChunkEnt);
		ctl.hcxt = ts->cxt;
		ts->chunks = hash_create("cmk_heap decoding chunks", 16, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ts->old_key = NULL;
	return ts;
}

static void
txn_forget(ReorderBuffer *rb, TransactionId xid)
{
	TxnState   *ts;

	if (state == NULL || state->rb != rb)
		return;
	ts = hash_search(state->txns, &xid, HASH_FIND, NULL);
	if (ts == NULL)
		return;
	MemoryContextDelete(ts->cxt);
	hash_search(state->txns, &xid, HASH_REMOVE, NULL);
}

/* Drop the chunks and pending key of a transaction, keep the entry. */
static void
txn_clear(TxnState *ts)
{
	HASH_SEQ_STATUS seq;
	ChunkEnt   *ent;

	hash_seq_init(&seq, ts->chunks);
	while ((ent = hash_seq_search(&seq)) != NULL)
	{
		list_free_deep(ent->chunks);
		hash_search(ts->chunks, &ent->key, HASH_REMOVE, NULL);
	}
	if (ts->old_key)
		pfree(ts->old_key);
	ts->old_key = NULL;
}

/* ---------- decrypting one change ---------- */

/* An encrypted chunk tuple from a message: xl_heap_header + data. */
static HeapTuple
chunk_tuple(const char *data, Size len)
{
	xl_heap_header xlhdr;
	Size		datalen;
	HeapTuple	tup;

	if (len < SizeOfHeapHeader)
		elog(ERROR, "cmk_heap decoding: truncated TOAST chunk message");
	datalen = len - SizeOfHeapHeader;
	tup = palloc0(HEAPTUPLESIZE + SizeofHeapTupleHeader + datalen);
	tup->t_data = (HeapTupleHeader) ((char *) tup + HEAPTUPLESIZE);
	tup->t_len = SizeofHeapTupleHeader + datalen;
	ItemPointerSetInvalid(&tup->t_self);
	memcpy(&xlhdr, data, SizeOfHeapHeader);
	memcpy((char *) tup->t_data + SizeofHeapTupleHeader,
		   data + SizeOfHeapHeader, datalen);
	tup->t_data->t_infomask = xlhdr.t_infomask;
	tup->t_data->t_infomask2 = xlhdr.t_infomask2;
	tup->t_data->t_hoff = xlhdr.t_hoff;
	return tup;
}

/* chunk_data of a decrypted chunk tuple: pointer and payload length. */
static char *
chunk_payload(HeapTuple plain, TupleDesc desc, int32 *len)
{
	bool		isnull;
	Pointer		chunk = DatumGetPointer(fastgetattr(plain, 3, desc, &isnull));

	if (isnull || VARATT_IS_EXTERNAL(chunk) || VARATT_IS_COMPRESSED(chunk))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cmk_heap decoding: invalid TOAST chunk")));
	*len = VARSIZE_ANY_EXHDR(chunk);
	return VARDATA_ANY(chunk);
}

/*
 * A chunk message during replay: file the encrypted chunk under its TOAST
 * relation and value.  Decrypting it is the only way to read chunk_id and
 * chunk_seq; the plaintext is wiped at once and decrypted again when the
 * owning change needs it.
 */
static void
file_chunk(ReorderBuffer *rb, ReorderBufferTXN *txn, bool old,
		   const char *message, Size sz)
{
	ChunkMsg	hdr;
	Oid			relid;
	Relation	toastrel;
	HeapTuple	cipher;
	HeapTuple	plain;
	TupleDesc	desc;
	bool		isnull;
	ChunkKey	key;
	ChunkEnt   *ent;
	bool		found;
	int32		seq;
	int32		len;
	TxnState   *ts = txn_state(rb, txn->xid, true);
	MemoryContext oldcxt;

	if (sz < sizeof(ChunkMsg))
		elog(ERROR, "cmk_heap decoding: truncated TOAST chunk message");
	memcpy(&hdr, message, sizeof(ChunkMsg));
	relid = RelidByRelfilenode(hdr.rnode.spcNode, hdr.rnode.relNode);
	if (!OidIsValid(relid))
		elog(ERROR, "cmk_heap decoding: could not map TOAST filenode %u to a relation",
			 hdr.rnode.relNode);
	toastrel = RelationIdGetRelation(relid);
	if (!RelationIsValid(toastrel))
		elog(ERROR, "could not open relation with OID %u", relid);
	desc = RelationGetDescr(toastrel);

	oldcxt = MemoryContextSwitchTo(ts->cxt);
	cipher = chunk_tuple(message + sizeof(ChunkMsg), sz - sizeof(ChunkMsg));
	MemoryContextSwitchTo(oldcxt);

	plain = cmk_decrypt_tuple(toastrel, desc, cipher);
	memset(&key, 0, sizeof(key));
	key.spc = hdr.rnode.spcNode;
	key.relnode = hdr.rnode.relNode;
	key.valueid = DatumGetObjectId(fastgetattr(plain, 1, desc, &isnull));
	key.old = old;
	seq = DatumGetInt32(fastgetattr(plain, 2, desc, &isnull));
	(void) chunk_payload(plain, desc, &len);
	explicit_bzero(plain->t_data, plain->t_len);
	pfree(plain);
	RelationClose(toastrel);

	ent = hash_search(ts->chunks, &key, HASH_ENTER, &found);
	if (!found || seq == 0)
	{
		/* seq 0 again: the same old value logged by a later statement */
		if (found)
			list_free_deep(ent->chunks);
		ent->chunks = NIL;
		ent->next_seq = 0;
		ent->size = 0;
	}
	if (seq != ent->next_seq)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cmk_heap decoding: got chunk %d of TOAST value %u instead of chunk %d",
						seq, key.valueid, ent->next_seq)));
	oldcxt = MemoryContextSwitchTo(ts->cxt);
	ent->chunks = lappend(ent->chunks, cipher);
	MemoryContextSwitchTo(oldcxt);
	ent->next_seq++;
	ent->size += len;
}

/*
 * The value of an on-disk TOAST pointer from this transaction's chunks, as
 * an indirect datum, or NULL if the transaction did not write it (an
 * unchanged value of an update: output plugins show it as unchanged, as
 * for heap).
 */
static struct varlena *
reassemble(TxnState *ts, Relation toastrel, struct varlena *ptr, bool old,
		   ChangeScratch *scratch)
{
	struct varatt_external toast_pointer;
	struct varatt_indirect redirect;
	struct varlena *value;
	struct varlena *indirect;
	ChunkKey	key;
	ChunkEnt   *ent;
	ListCell   *lc;
	int32		extsize;
	int32		done = 0;
	TupleDesc	desc = RelationGetDescr(toastrel);

	VARATT_EXTERNAL_GET_POINTER(toast_pointer, ptr);
	memset(&key, 0, sizeof(key));
	key.spc = toastrel->rd_node.spcNode;
	key.relnode = toastrel->rd_node.relNode;
	key.valueid = toast_pointer.va_valueid;
	key.old = old;
	ent = ts ? hash_search(ts->chunks, &key, HASH_FIND, NULL) : NULL;
	if (ent == NULL)
		return NULL;

	extsize = VARATT_EXTERNAL_GET_EXTSIZE(toast_pointer);
	if (ent->size != extsize)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cmk_heap decoding: TOAST value %u has %d bytes in its chunks, expected %d",
						key.valueid, ent->size, extsize)));
	value = palloc(extsize + VARHDRSZ);
	scratch_add(scratch, value, extsize + VARHDRSZ);
	foreach(lc, ent->chunks)
	{
		HeapTuple	plain = cmk_decrypt_tuple(toastrel, desc, (HeapTuple) lfirst(lc));
		int32		len;
		char	   *p = chunk_payload(plain, desc, &len);

		if (done + len > extsize)
			elog(ERROR, "cmk_heap decoding: TOAST value %u overflows", key.valueid);
		memcpy(VARDATA(value) + done, p, len);
		done += len;
		explicit_bzero(plain->t_data, plain->t_len);
		pfree(plain);
	}
	if (VARATT_EXTERNAL_IS_COMPRESSED(toast_pointer))
		SET_VARSIZE_COMPRESSED(value, extsize + VARHDRSZ);
	else
		SET_VARSIZE(value, extsize + VARHDRSZ);

	indirect = palloc0(INDIRECT_POINTER_SIZE);
	scratch_add(scratch, indirect, INDIRECT_POINTER_SIZE);
	redirect.pointer = value;
	SET_VARTAG_EXTERNAL(indirect, VARTAG_INDIRECT);
	memcpy(VARDATA_EXTERNAL(indirect), &redirect, sizeof(redirect));
	return indirect;
}

/*
 * CRC of the identity columns' stored bytes (ciphertext), in a tuple whose
 * other columns are null: the write path computes it over the stored tuple,
 * the decoder over the key tuple heap logged, so a trailer can only be
 * paired with the key it belongs to.
 */
static pg_crc32c
key_crc(HeapTuple tup, TupleDesc desc, Bitmapset *attrs)
{
	Datum		values[MaxTupleAttributeNumber];
	bool		isnull[MaxTupleAttributeNumber];
	int			natts = HeapTupleHeaderGetNatts(tup->t_data);
	pg_crc32c	crc;

	heap_deform_tuple(tup, desc, values, isnull);
	INIT_CRC32C(crc);
	for (int i = 0; i < natts && i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int16		attnum = i + 1;
		char		buf[sizeof(Datum)];

		if (attrs ? !bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, attrs) :
			isnull[i])
			continue;
		if (isnull[i])
			continue;
		COMP_CRC32C(crc, &attnum, sizeof(attnum));
		if (att->attbyval)
		{
			store_att_byval(buf, values[i], att->attlen);
			COMP_CRC32C(crc, buf, att->attlen);
		}
		else if (att->attlen > 0)
			COMP_CRC32C(crc, DatumGetPointer(values[i]), att->attlen);
		else
			COMP_CRC32C(crc, VARDATA_ANY(DatumGetPointer(values[i])),
						VARSIZE_ANY_EXHDR(DatumGetPointer(values[i])));
	}
	FIN_CRC32C(crc);
	return crc;
}

/*
 * The old key tuple heap logged (identity columns' ciphertext, the rest
 * null, no trailer) made decryptable again: the stored tuple's attribute
 * count and the trailer our write path logged just before.  Attributes past
 * the stored tuple's end were filled by heap from attmissingval, which is
 * plaintext: they are returned in *late for the caller to keep as they are.
 */
static HeapTuple
rebuild_key_tuple(Relation rel, TxnState *ts, HeapTuple key,
				  Datum *late_values, bool *late_isnull)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum		values[MaxTupleAttributeNumber];
	bool		isnull[MaxTupleAttributeNumber];
	OldKeyMsg  *ok = ts ? ts->old_key : NULL;
	HeapTuple	formed;
	HeapTuple	rebuilt;
	int			natts;

	if (ok == NULL || ok->relid != RelationGetRelid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot decode the old key of a change to encrypted table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The WAL lacks the nonce record cmk_storage writes before every update and delete of a cmk_heap table with a replica identity key; the change was written without it."),
				 errhint("Changes written by a cmk_storage release without logical decoding support cannot be decoded: create the replication slot after upgrading.")));
	natts = ok->natts;
	if (natts > desc->natts)
		elog(ERROR, "cmk_heap decoding: old key has %d attributes, table has %d",
			 natts, desc->natts);

	heap_deform_tuple(key, desc, values, isnull);
	for (int i = 0; i < desc->natts; i++)
	{
		late_values[i] = values[i];
		late_isnull[i] = isnull[i];
		if (i >= natts)
			isnull[i] = true;
	}
	formed = heap_form_tuple(desc, values, isnull);
	HeapTupleHeaderSetNatts(formed->t_data, natts);
	if (key_crc(formed, desc, NULL) != ok->crc)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cannot decode the old key of a change to encrypted table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The nonce record before the change belongs to another row.")));

	rebuilt = palloc(HEAPTUPLESIZE + formed->t_len + ok->trailer_len);
	rebuilt->t_data = (HeapTupleHeader) ((char *) rebuilt + HEAPTUPLESIZE);
	rebuilt->t_len = formed->t_len + ok->trailer_len;
	rebuilt->t_self = key->t_self;
	rebuilt->t_tableOid = key->t_tableOid;
	memcpy(rebuilt->t_data, formed->t_data, formed->t_len);
	memcpy((char *) rebuilt->t_data + formed->t_len, (char *) (ok + 1),
		   ok->trailer_len);

	/*
	 * The external-reference bitmap opens the trailer: drop the bits of the
	 * columns heap left out of the key (now null).
	 */
	if (ok->trailer_len > 0 &&
		(((uint8 *) (ok + 1))[ok->trailer_len - 1] & CMK_FLAG_HAS_EXTERNAL))
	{
		uint8	   *ext = (uint8 *) rebuilt->t_data + formed->t_len;

		if (ok->trailer_len < (natts + 7) / 8 + CMK_TRAILER_MIN)
			elog(ERROR, "cmk_heap decoding: malformed old key trailer");
		for (int i = 0; i < natts; i++)
			if (HeapTupleHasNulls(formed) && att_isnull(i, formed->t_data->t_bits))
				ext[i / 8] &= ~(1 << (i % 8));
	}
	heap_freetuple(formed);
	pfree(ts->old_key);
	ts->old_key = NULL;
	return rebuilt;
}

/*
 * Plaintext version of one encrypted tuple of a change; every plaintext
 * buffer is registered in scratch.  is_key: an old key tuple (REPLICA
 * IDENTITY DEFAULT / USING INDEX).
 */
static HeapTuple
decrypt_for_plugin(Relation rel, TxnState *ts, HeapTuple cipher, bool old,
				   bool is_key, ChangeScratch *scratch)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum		values[MaxTupleAttributeNumber];
	bool		isnull[MaxTupleAttributeNumber];
	Datum		late_values[MaxTupleAttributeNumber];
	bool		late_isnull[MaxTupleAttributeNumber];
	HeapTuple	src = cipher;
	HeapTuple	plain;
	HeapTuple	result;
	int			natts;
	Relation	toastrel = NULL;

	if (is_key)
		src = rebuild_key_tuple(rel, ts, cipher, late_values, late_isnull);
	plain = cmk_decrypt_tuple(rel, desc, src);
	if (src != cipher)
		pfree(src);
	scratch_add(scratch, plain, HEAPTUPLESIZE + plain->t_len);
	if (!is_key && !HeapTupleHasExternal(plain))
		return plain;

	natts = HeapTupleHeaderGetNatts(plain->t_data);
	heap_deform_tuple(plain, desc, values, isnull);
	for (int i = 0; i < desc->natts; i++)
	{
		struct varlena *v;
		struct varlena *ind;

		if (is_key && i >= natts)
		{
			values[i] = late_values[i];
			isnull[i] = late_isnull[i];
			continue;
		}
		if (isnull[i] || TupleDescAttr(desc, i)->attlen != -1)
			continue;
		v = (struct varlena *) DatumGetPointer(values[i]);
		if (!VARATT_IS_EXTERNAL_ONDISK(v))
			continue;
		if (toastrel == NULL)
		{
			toastrel = RelationIdGetRelation(rel->rd_rel->reltoastrelid);
			if (!RelationIsValid(toastrel))
				elog(ERROR, "could not open TOAST relation of \"%s\"",
					 RelationGetRelationName(rel));
		}
		ind = reassemble(ts, toastrel, v, old, scratch);
		if (ind != NULL)
			values[i] = PointerGetDatum(ind);
	}
	if (toastrel)
		RelationClose(toastrel);
	result = heap_form_tuple(desc, values, isnull);
	result->t_self = cipher->t_self;
	result->t_tableOid = cipher->t_tableOid;
	scratch_add(scratch, result, HEAPTUPLESIZE + result->t_len);
	return result;
}

static ReorderBufferTupleBuf *
tuplebuf_for(HeapTuple tup, ChangeScratch *scratch)
{
	ReorderBufferTupleBuf *tb = palloc0(sizeof(ReorderBufferTupleBuf));

	tb->tuple = *tup;
	tb->alloc_tuple_size = tup->t_len;
	scratch_add(scratch, tb, sizeof(ReorderBufferTupleBuf));
	return tb;
}

static void
deliver(ReorderBuffer *rb, ReorderBufferTXN *txn, Relation relation,
		ReorderBufferChange *change, bool streaming)
{
	ReorderBufferTupleBuf *orig_new;
	ReorderBufferTupleBuf *orig_old;
	TxnState   *ts;
	ChangeScratch *scratch;
	bool		full = relation->rd_rel->relreplident == REPLICA_IDENTITY_FULL;

	if (!cmk_is_cmk_relation(relation))
	{
		if (streaming)
			orig_stream_change(rb, txn, relation, change);
		else
			orig_apply_change(rb, txn, relation, change);
		return;
	}

	ts = txn_state(rb, txn->xid, false);
	orig_new = change->data.tp.newtuple;
	orig_old = change->data.tp.oldtuple;
	scratch = palloc0(sizeof(ChangeScratch));
	PG_TRY();
	{
		if (orig_new)
			change->data.tp.newtuple =
				tuplebuf_for(decrypt_for_plugin(relation, ts, &orig_new->tuple,
												false, false, scratch),
							 scratch);
		if (orig_old)
			change->data.tp.oldtuple =
				tuplebuf_for(decrypt_for_plugin(relation, ts, &orig_old->tuple,
												true, !full, scratch),
							 scratch);
		if (streaming)
			orig_stream_change(rb, txn, relation, change);
		else
			orig_apply_change(rb, txn, relation, change);
	}
	PG_FINALLY();
	{
		change->data.tp.newtuple = orig_new;
		change->data.tp.oldtuple = orig_old;
		scratch_wipe(scratch);
		pfree(scratch);
	}
	PG_END_TRY();

	/* As the reorder buffer does with its TOAST hash. */
	if (ts && change->data.tp.clear_toast_afterwards)
		txn_clear(ts);
}

/* ---------- reorder buffer callbacks ---------- */

static void
cmk_apply_change(ReorderBuffer *rb, ReorderBufferTXN *txn, Relation relation,
				 ReorderBufferChange *change)
{
	deliver(rb, txn, relation, change, false);
}

static void
cmk_stream_change(ReorderBuffer *rb, ReorderBufferTXN *txn, Relation relation,
				  ReorderBufferChange *change)
{
	deliver(rb, txn, relation, change, true);
}

/* Ours: consumed.  Returns false for any other message. */
static bool
consume_message(ReorderBuffer *rb, ReorderBufferTXN *txn, bool transactional,
				const char *prefix, Size sz, const char *message)
{
	if (!transactional || strncmp(prefix, "cmk_storage.", 12) != 0)
		return false;
	if (strcmp(prefix, PREFIX_CHUNK) == 0)
		file_chunk(rb, txn, false, message, sz);
	else if (strcmp(prefix, PREFIX_OLD_CHUNK) == 0)
		file_chunk(rb, txn, true, message, sz);
	else if (strcmp(prefix, PREFIX_OLD_KEY) == 0)
	{
		TxnState   *ts = txn_state(rb, txn->xid, true);
		OldKeyMsg	ok;

		if (sz < sizeof(OldKeyMsg))
			elog(ERROR, "cmk_heap decoding: truncated old key message");
		memcpy(&ok, message, sizeof(ok));
		if (sz != sizeof(OldKeyMsg) + ok.trailer_len)
			elog(ERROR, "cmk_heap decoding: malformed old key message");
		if (ts->old_key)
			pfree(ts->old_key);
		ts->old_key = MemoryContextAlloc(ts->cxt, sz);
		memcpy(ts->old_key, message, sz);
	}
	else
		return false;
	return true;
}

static void
cmk_message(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn,
			bool transactional, const char *prefix, Size sz,
			const char *message)
{
	if (!consume_message(rb, txn, transactional, prefix, sz, message))
		orig_message(rb, txn, lsn, transactional, prefix, sz, message);
}

static void
cmk_stream_message(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn,
				   bool transactional, const char *prefix, Size sz,
				   const char *message)
{
	if (!consume_message(rb, txn, transactional, prefix, sz, message))
		orig_stream_message(rb, txn, lsn, transactional, prefix, sz, message);
}

static void
cmk_commit(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn)
{
	txn_forget(rb, txn->xid);
	orig_commit(rb, txn, lsn);
}

static void
cmk_prepare(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn)
{
	txn_forget(rb, txn->xid);
	orig_prepare(rb, txn, lsn);
}

static void
cmk_stream_abort(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn)
{
	txn_forget(rb, txn->xid);
	orig_stream_abort(rb, txn, lsn);
}

static void
cmk_stream_prepare(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn)
{
	txn_forget(rb, txn->xid);
	orig_stream_prepare(rb, txn, lsn);
}

static void
cmk_stream_commit(ReorderBuffer *rb, ReorderBufferTXN *txn, XLogRecPtr lsn)
{
	txn_forget(rb, txn->xid);
	orig_stream_commit(rb, txn, lsn);
}

#define WRAP(field, mine, saved) \
	do { \
		if (rb->field != NULL && rb->field != (mine)) \
		{ \
			if ((saved) != NULL && (saved) != rb->field) \
				elog(ERROR, "cmk_heap decoding: unexpected reorder buffer callback " #field); \
			(saved) = rb->field; \
			rb->field = (mine); \
		} \
	} while (0)

/* Once per decoding context, at its first heap or message record. */
static void
install(LogicalDecodingContext *ctx)
{
	ReorderBuffer *rb = ctx->reorder;
	MemoryContextCallback *cb;
	HASHCTL		ctl;

	if (state != NULL && state->rb == rb)
		return;

	WRAP(apply_change, cmk_apply_change, orig_apply_change);
	WRAP(stream_change, cmk_stream_change, orig_stream_change);
	WRAP(message, cmk_message, orig_message);
	WRAP(stream_message, cmk_stream_message, orig_stream_message);
	WRAP(commit, cmk_commit, orig_commit);
	WRAP(prepare, cmk_prepare, orig_prepare);
	WRAP(stream_abort, cmk_stream_abort, orig_stream_abort);
	WRAP(stream_prepare, cmk_stream_prepare, orig_stream_prepare);
	WRAP(stream_commit, cmk_stream_commit, orig_stream_commit);

	state = MemoryContextAllocZero(ctx->context, sizeof(DecodeState));
	state->rb = rb;
	state->cxt = AllocSetContextCreate(ctx->context, "cmk_heap decoding",
									   ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(TransactionId);
	ctl.entrysize = sizeof(TxnState);
	ctl.hcxt = state->cxt;
	state->txns = hash_create("cmk_heap decoding transactions", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	cb = MemoryContextAllocZero(state->cxt, sizeof(MemoryContextCallback));
	cb->func = state_gone;
	MemoryContextRegisterResetCallback(state->cxt, cb);
}

/* ---------- rm_decode wrappers ---------- */

/*
 * Does this heap insert put a cmk_heap TOAST chunk into a TOAST relation?
 * A heap chunk tuple (chunk_id oid, chunk_seq int4, chunk_data bytea with
 * storage plain, never null) ends exactly where chunk_data ends; a cmk_heap
 * one has its trailer after it.
 */
static bool
is_cmk_chunk_insert(XLogReaderState *r)
{
	xl_heap_insert *xlrec = (xl_heap_insert *) XLogRecGetData(r);
	xl_heap_header xlhdr;
	char	   *data;
	Size		len;
	uint32		t_len;
	uint32		end;
	uint32		vl;

	if (!(xlrec->flags & XLH_INSERT_ON_TOAST_RELATION) ||
		!(xlrec->flags & XLH_INSERT_CONTAINS_NEW_TUPLE) ||
		!XLogRecHasBlockRef(r, 0))
		return false;
	data = XLogRecGetBlockData(r, 0, &len);
	if (data == NULL || len < SizeOfHeapHeader)
		return false;
	memcpy(&xlhdr, data, SizeOfHeapHeader);
	t_len = len - SizeOfHeapHeader + SizeofHeapTupleHeader;
	if ((xlhdr.t_infomask2 & HEAP_NATTS_MASK) != 3 ||
		(xlhdr.t_infomask & HEAP_HASNULL) ||
		xlhdr.t_hoff < SizeofHeapTupleHeader ||
		(uint32) xlhdr.t_hoff + 8 + VARHDRSZ > t_len)
		return false;
	/* chunk_data starts at offset 8 of the data area, int-aligned */
	{
		char	   *p = data + SizeOfHeapHeader +
			(xlhdr.t_hoff - SizeofHeapTupleHeader) + 8;

		if (VARATT_IS_1B(p))
			vl = VARSIZE_1B(p);
		else
		{
			uint32		hdr;

			memcpy(&hdr, p, sizeof(hdr));
			vl = VARSIZE_4B(&hdr);
		}
	}
	end = (uint32) xlhdr.t_hoff + 8 + vl;
	return t_len > end;
}

/* DecodeInsert for a cmk_heap TOAST chunk: queue it as our message. */
static void
queue_chunk(LogicalDecodingContext *ctx, XLogRecordBuffer *buf)
{
	XLogReaderState *r = buf->record;
	TransactionId xid = XLogRecGetXid(r);
	RelFileNode rnode;
	char	   *data;
	Size		len;
	char	   *msg;
	ChunkMsg	hdr;

	ReorderBufferProcessXid(ctx->reorder, xid, buf->origptr);
	if (SnapBuildCurrentState(ctx->snapshot_builder) < SNAPBUILD_FULL_SNAPSHOT)
		return;
	if (!SnapBuildProcessChange(ctx->snapshot_builder, xid, buf->origptr) ||
		ctx->fast_forward)
		return;
	XLogRecGetBlockTag(r, 0, &rnode, NULL, NULL);
	if (rnode.dbNode != ctx->slot->data.database)
		return;
	if (ctx->callbacks.filter_by_origin_cb != NULL &&
		filter_by_origin_cb_wrapper(ctx, XLogRecGetOrigin(r)))
		return;

	data = XLogRecGetBlockData(r, 0, &len);
	msg = palloc(sizeof(ChunkMsg) + len);
	memset(&hdr, 0, sizeof(hdr));
	hdr.rnode = rnode;
	memcpy(msg, &hdr, sizeof(hdr));
	memcpy(msg + sizeof(hdr), data, len);
	ReorderBufferQueueMessage(ctx->reorder, xid, NULL, buf->origptr, true,
							  PREFIX_CHUNK, sizeof(ChunkMsg) + len, msg);
	pfree(msg);
}

static void
cmk_heap_decode(LogicalDecodingContext *ctx, XLogRecordBuffer *buf)
{
	install(ctx);
	if ((XLogRecGetInfo(buf->record) & XLOG_HEAP_OPMASK) == XLOG_HEAP_INSERT &&
		is_cmk_chunk_insert(buf->record))
		queue_chunk(ctx, buf);
	else
		orig_heap_decode(ctx, buf);
}

static void
cmk_heap2_decode(LogicalDecodingContext *ctx, XLogRecordBuffer *buf)
{
	install(ctx);
	orig_heap2_decode(ctx, buf);
}

static void
cmk_msg_decode(LogicalDecodingContext *ctx, XLogRecordBuffer *buf)
{
	install(ctx);
	orig_msg_decode(ctx, buf);
}

void
cmk_decode_init(void)
{
	if (RmgrTable[RM_HEAP_ID].rm_decode == cmk_heap_decode)
		return;
	orig_heap_decode = RmgrTable[RM_HEAP_ID].rm_decode;
	orig_heap2_decode = RmgrTable[RM_HEAP2_ID].rm_decode;
	orig_msg_decode = RmgrTable[RM_LOGICALMSG_ID].rm_decode;
	RmgrTable[RM_HEAP_ID].rm_decode = cmk_heap_decode;
	RmgrTable[RM_HEAP2_ID].rm_decode = cmk_heap2_decode;
	RmgrTable[RM_LOGICALMSG_ID].rm_decode = cmk_msg_decode;
}

/* ---------- write side ---------- */

static void
log_chunk_message(const char *prefix, Relation toastrel, HeapTuple cipher)
{
	ChunkMsg	hdr;
	xl_heap_header xlhdr;
	Size		datalen = cipher->t_len - SizeofHeapTupleHeader;
	Size		sz = sizeof(ChunkMsg) + SizeOfHeapHeader + datalen;
	char	   *msg = palloc(sz);

	memset(&hdr, 0, sizeof(hdr));
	hdr.rnode = toastrel->rd_node;
	xlhdr.t_infomask2 = cipher->t_data->t_infomask2;
	xlhdr.t_infomask = cipher->t_data->t_infomask;
	xlhdr.t_hoff = cipher->t_data->t_hoff;
	memcpy(msg, &hdr, sizeof(hdr));
	memcpy(msg + sizeof(hdr), &xlhdr, SizeOfHeapHeader);
	memcpy(msg + sizeof(hdr) + SizeOfHeapHeader,
		   (char *) cipher->t_data + SizeofHeapTupleHeader, datalen);
	LogLogicalMessage(prefix, msg, sz, true);
	pfree(msg);
}

/*
 * Log an old TOAST value as freshly encrypted chunks (heap would log it
 * flattened, in clear).  The chunk_id is the value's own, so the decoder
 * can match the old tuple's pointer.
 */
static void
log_old_value(Relation rel, struct varlena *ptr)
{
	struct varatt_external toast_pointer;
	struct varlena *value;
	Relation	toastrel;
	TupleDesc	desc;
	char	   *p;
	int32		todo;
	int32		seq = 0;
	union
	{
		struct varlena hdr;
		char		data[CMK_TOAST_CHUNK_SIZE + VARHDRSZ];
		int32		align_it;
	}			chunk;

	VARATT_EXTERNAL_GET_POINTER(toast_pointer, ptr);
	value = detoast_external_attr(ptr);	/* stored form, maybe compressed */
	toastrel = table_open(rel->rd_rel->reltoastrelid, AccessShareLock);
	desc = RelationGetDescr(toastrel);
	p = VARDATA_ANY(value);
	todo = VARSIZE_ANY_EXHDR(value);
	while (todo > 0)
	{
		int32		n = Min(todo, CMK_TOAST_CHUNK_SIZE);
		Datum		vals[3];
		bool		nulls[3] = {false, false, false};
		HeapTuple	plain;
		HeapTuple	cipher;

		SET_VARSIZE(&chunk, n + VARHDRSZ);
		memcpy(VARDATA(&chunk), p, n);
		vals[0] = ObjectIdGetDatum(toast_pointer.va_valueid);
		vals[1] = Int32GetDatum(seq++);
		vals[2] = PointerGetDatum(&chunk);
		plain = heap_form_tuple(desc, vals, nulls);
		cipher = cmk_encrypt_tuple(toastrel, plain, NULL, NULL);
		explicit_bzero(plain->t_data, plain->t_len);
		heap_freetuple(plain);
		log_chunk_message(PREFIX_OLD_CHUNK, toastrel, cipher);
		heap_freetuple(cipher);
		p += n;
		todo -= n;
	}
	OPENSSL_cleanse(&chunk, sizeof(chunk));
	explicit_bzero(value, VARSIZE_ANY(value));
	pfree(value);
	table_close(toastrel, AccessShareLock);
}

/*
 * Before heap_update/heap_delete of the stored tuple old_cipher: log what a
 * decoder needs to decrypt the old tuple or key heap will log (see the
 * header comment).  old_plain may be NULL; it is decrypted here if needed.
 */
void
cmk_decode_log_old_tuple(Relation rel, HeapTuple old_cipher, HeapTuple old_plain)
{
	char		replident = rel->rd_rel->relreplident;
	TupleDesc	desc = RelationGetDescr(rel);
	Bitmapset  *idattrs = NULL;
	bool		decrypted = false;

	if (!XLogLogicalInfoActive() || !RelationIsLogicallyLogged(rel) ||
		replident == REPLICA_IDENTITY_NOTHING)
		return;

	if (replident != REPLICA_IDENTITY_FULL)
	{
		uint32		tag;
		CmkTrailer	t;
		OldKeyMsg	ok;
		char	   *msg;
		int32		tlen;

		idattrs = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
		if (bms_is_empty(idattrs))
			return;
		(void) cmk_tuple_keystream(RelationGetRelationName(rel), &tag);
		cmk_parse_trailer(rel, old_cipher, tag, &t);
		tlen = old_cipher->t_len - t.data_end;
		memset(&ok, 0, sizeof(ok));
		ok.relid = RelationGetRelid(rel);
		ok.natts = HeapTupleHeaderGetNatts(old_cipher->t_data);
		ok.trailer_len = tlen;
		ok.crc = key_crc(old_cipher, desc, idattrs);
		msg = palloc(sizeof(ok) + tlen);
		memcpy(msg, &ok, sizeof(ok));
		memcpy(msg + sizeof(ok), (char *) old_cipher->t_data + t.data_end, tlen);
		LogLogicalMessage(PREFIX_OLD_KEY, msg, sizeof(ok) + tlen, true);
		pfree(msg);
	}

	if (!cmk_tuple_has_external(old_cipher))
		return;
	if (old_plain == NULL)
	{
		old_plain = cmk_decrypt_tuple(rel, desc, old_cipher);
		decrypted = true;
	}
	{
		Datum		values[MaxTupleAttributeNumber];
		bool		isnull[MaxTupleAttributeNumber];

		heap_deform_tuple(old_plain, desc, values, isnull);
		for (int i = 0; i < desc->natts; i++)
		{
			struct varlena *v;

			if (isnull[i] || TupleDescAttr(desc, i)->attlen != -1)
				continue;
			if (idattrs &&
				!bms_is_member(i + 1 - FirstLowInvalidHeapAttributeNumber, idattrs))
				continue;
			v = (struct varlena *) DatumGetPointer(values[i]);
			if (VARATT_IS_EXTERNAL_ONDISK(v))
				log_old_value(rel, v);
		}
	}
	if (decrypted)
	{
		explicit_bzero(old_plain->t_data, old_plain->t_len);
		heap_freetuple(old_plain);
	}
}
