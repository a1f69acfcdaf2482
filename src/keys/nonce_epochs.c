/*-------------------------------------------------------------------------
 *
 * nonce_epochs.c
 *		Tuple nonces: the cluster's table of nonce epochs and the counters
 *		handed out under the current one.
 *
 * A tuple nonce is a random 64-bit prefix and a 32-bit counter.  Storing the
 * prefix in every tuple would cost 8 bytes per row, so the prefixes live in
 * a table of up to 65,536 "epochs" ($PGDATA/cmk_storage/nonce_epochs, in
 * shared memory while the server runs) and a tuple names its epoch by a
 * 16-bit id: a freshly inserted tuple carries 7 bytes of trailer
 * (docs/tuple-format.md).
 *
 * Every postmaster life registers a new epoch the first time it needs a
 * nonce (and again when 2^32 counters are used up), with a random unused id
 * and a random prefix; counters are never continued across a restart, so a
 * restored, cloned or promoted data directory never continues a counter its
 * twin also continues.  Registration writes the file (fsync, rename) and
 * then WAL-logs the entry and flushes it, before any tuple can name the
 * epoch: a crash, a checkpoint, a base backup, a standby or a point-in-time
 * restore therefore always has every epoch its tuples name.  Ids are random
 * so that a tuple copied from another cluster most likely names an epoch
 * this one never registered, which is reported, never decrypted.
 *
 * This file must never hand out a nonce twice, publish an epoch before it
 * is durable in the file and in WAL, or reuse an id of this cluster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xloginsert.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "cmk_bigendian.h"
#include "crypto/cmk_crypto.h"
#include "keys/control_file.h"
#include "keys/key_wal.h"
#include "keys/nonce_epochs.h"

#define EPOCH_FILE			CMK_CONTROL_DIR "/nonce_epochs"
#define EPOCH_TMP			CMK_CONTROL_DIR "/nonce_epochs.tmp"
#define EPOCH_MAGIC			"CMKEPOCH"
#define EPOCH_FILE_VERSION	1
#define EPOCH_HEADER		16	/* magic, version, count */
#define EPOCH_ENTRY			16	/* id, reserved, DEK tag, prefix */
#define EPOCH_TRANCHE		"cmk_storage nonce epochs"

typedef struct CmkEpochTable
{
	LWLock	   *lock;			/* registration, redo and file writes */
	slock_t		mutex;			/* current and next */
	int32		current;		/* epoch of this postmaster life, or -1 */
	uint64		next;			/* its first counter not yet handed out */
	int32		nvalid;			/* registered epochs */
	bool		damaged;		/* the file could not be read: see why */
	char		why[256];
	CmkEpoch	entries[CMK_NONCE_EPOCHS];
} CmkEpochTable;

static CmkEpochTable *cmk_epoch_table = NULL;
CmkEpoch   *cmk_epochs = NULL;

Size
cmk_epochs_shmem_size(void)
{
	return sizeof(CmkEpochTable);
}

void
cmk_epochs_shmem_request(void)
{
	RequestAddinShmemSpace(cmk_epochs_shmem_size());
	RequestNamedLWLockTranche(EPOCH_TRANCHE, 1);
}

/* Load the file into an empty table; problems make the table "damaged". */
static void
load_epoch_file(CmkEpochTable *tab)
{
	struct stat st;
	uint8	   *buf;
	int			fd;
	ssize_t		len;
	uint32		n;
	pg_crc32c	crc;

	/*
	 * No cmk_storage directory: no DEK yet (its creation writes an empty
	 * file next to the control file), or a standby that was built without
	 * it.  A directory without the file is damage: epochs would be lost.
	 */
	if (stat(CMK_CONTROL_DIR, &st) != 0 && errno == ENOENT)
		return;
	fd = open(EPOCH_FILE, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		if (errno == ENOENT)
			snprintf(tab->why, sizeof(tab->why), "\"%s\" is missing", EPOCH_FILE);
		else
			snprintf(tab->why, sizeof(tab->why), "could not open \"%s\": %m", EPOCH_FILE);
		tab->damaged = true;
		return;
	}
	if (fstat(fd, &st) != 0 ||
		st.st_size > EPOCH_HEADER + (off_t) CMK_NONCE_EPOCHS * EPOCH_ENTRY + 4)
	{
		snprintf(tab->why, sizeof(tab->why), "\"%s\" has an invalid size", EPOCH_FILE);
		tab->damaged = true;
		close(fd);
		return;
	}
	buf = palloc(st.st_size + 1);
	len = read(fd, buf, st.st_size + 1);
	close(fd);
	if (len < EPOCH_HEADER + 4 || memcmp(buf, EPOCH_MAGIC, 8) != 0 ||
		cmk_get32(buf + 8) != EPOCH_FILE_VERSION ||
		(n = cmk_get32(buf + 12)) > CMK_NONCE_EPOCHS ||
		len != EPOCH_HEADER + (ssize_t) n * EPOCH_ENTRY + 4)
	{
		snprintf(tab->why, sizeof(tab->why), "\"%s\" is not a nonce epoch file of this version or is truncated",
				 EPOCH_FILE);
		tab->damaged = true;
		pfree(buf);
		return;
	}
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, buf, len - 4);
	FIN_CRC32C(crc);
	if (crc != cmk_get32(buf + len - 4))
	{
		snprintf(tab->why, sizeof(tab->why), "\"%s\" has a wrong checksum", EPOCH_FILE);
		tab->damaged = true;
		pfree(buf);
		return;
	}
	for (uint32 i = 0; i < n; i++)
	{
		const uint8 *p = buf + EPOCH_HEADER + i * EPOCH_ENTRY;
		CmkEpoch   *e = &tab->entries[(p[0] << 8) | p[1]];

		if (e->valid)
		{
			snprintf(tab->why, sizeof(tab->why), "\"%s\" lists epoch %u twice",
					 EPOCH_FILE, (p[0] << 8) | p[1]);
			tab->damaged = true;
			break;
		}
		memcpy(&e->dek_tag, p + 4, 4);
		memcpy(e->prefix, p + 8, CMK_NONCE_PREFIX_LEN);
		e->valid = 1;
		tab->nvalid++;
	}
	pfree(buf);
}

/* Called under AddinShmemInitLock by the postmaster's shmem start-up. */
void
cmk_epochs_shmem_init(void)
{
	bool		found;
	CmkEpochTable *tab;

	tab = ShmemInitStruct("cmk_storage nonce epochs", sizeof(CmkEpochTable), &found);
	if (!found)
	{
		memset(tab, 0, sizeof(CmkEpochTable));
		tab->lock = &(GetNamedLWLockTranche(EPOCH_TRANCHE))->lock;
		SpinLockInit(&tab->mutex);
		tab->current = -1;
		load_epoch_file(tab);
		if (tab->damaged)
		{
			/* refuse every epoch alike, not just the unreadable ones */
			memset(tab->entries, 0, sizeof(tab->entries));
			tab->nvalid = 0;
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("cmk_storage: %s", tab->why),
					 errdetail("Encrypted tables cannot be read or written until the file is restored."),
					 errhint("Restore $PGDATA/cmk_storage/nonce_epochs from a backup of this cluster.")));
		}
	}
	cmk_epoch_table = tab;
	cmk_epochs = tab->entries;
}

/*
 * The file image of the table (NULL: an empty one), plus the entry (id,
 * extra) if extra is given.
 */
static uint8 *
serialize(const CmkEpochTable *tab, int id, const CmkEpoch *extra, Size *lenp)
{
	int			n = (tab ? tab->nvalid : 0) + (extra ? 1 : 0);
	Size		len = EPOCH_HEADER + (Size) n * EPOCH_ENTRY + 4;
	uint8	   *buf = palloc0(len);
	uint8	   *p = buf + EPOCH_HEADER;
	pg_crc32c	crc;

	memcpy(buf, EPOCH_MAGIC, 8);
	cmk_put32(buf + 8, EPOCH_FILE_VERSION);
	cmk_put32(buf + 12, (uint32) n);
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
	{
		const CmkEpoch *e = (i == id && extra) ? extra :
			tab ? &tab->entries[i] : NULL;

		if (e == NULL || !e->valid)
			continue;
		cmk_put16(p, (uint16) i);
		memcpy(p + 4, &e->dek_tag, 4);
		memcpy(p + 8, e->prefix, CMK_NONCE_PREFIX_LEN);
		p += EPOCH_ENTRY;
	}
	Assert(p == buf + len - 4);
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, buf, len - 4);
	FIN_CRC32C(crc);
	cmk_put32(p, crc);
	*lenp = len;
	return buf;
}

/*
 * The empty epoch file of a new cmk_storage directory (the DEK's creation
 * installs it with the control file): from then on a missing file is damage.
 */
bool
cmk_epochs_write_empty(const char *path)
{
	Size		len;
	uint8	   *buf = serialize(NULL, -1, NULL, &len);
	const char *failed;
	bool		ok = cmk_write_file_synced(path, buf, len, &failed);

	pfree(buf);
	return ok;
}

/*
 * Write the table, plus the entry (id, extra) if extra is given, to the
 * file: nonce_epochs.tmp, fsync, rename, fsync.  Caller holds the lock.
 */
static bool
write_epoch_file(CmkEpochTable *tab, int id, const CmkEpoch *extra, int elevel)
{
	Size		len;
	uint8	   *buf = serialize(tab, id, extra, &len);
	const char *failed;
	bool		ok = cmk_write_file_synced(EPOCH_TMP, buf, len, &failed);

	pfree(buf);
	if (!ok)
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not %s \"%s\": %m", failed, EPOCH_TMP)));
		return false;
	}
	return durable_rename(EPOCH_TMP, EPOCH_FILE, elevel) == 0;
}

static void pg_attribute_noreturn()
report_damaged(CmkEpochTable *tab)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("cmk_storage nonce epochs are not available: %s", tab->why),
			 errdetail("Encrypted tables cannot be read or written until the file is restored."),
			 errhint("Restore $PGDATA/cmk_storage/nonce_epochs from a backup of this cluster and restart the server.")));
}

/*
 * Can count more counters come from the current epoch for the DEK tagged
 * dek_tag?  Caller holds tab->mutex.
 */
static inline bool
current_has_room(const CmkEpochTable *tab, uint32 dek_tag, uint32 count)
{
	return tab->current >= 0 &&
		tab->next + count <= (uint64) PG_UINT32_MAX + 1 &&
		tab->entries[tab->current].dek_tag == dek_tag;
}

/* The WAL record of an epoch: id, DEK tag, prefix (as in the file). */
static void
cmk_epoch_record(uint8 *rec, uint16 id, const CmkEpoch *e)
{
	memset(rec, 0, CMK_EPOCH_RECORD_LEN);
	cmk_put16(rec, id);
	memcpy(rec + 4, &e->dek_tag, 4);
	memcpy(rec + 8, e->prefix, CMK_NONCE_PREFIX_LEN);
}

/*
 * Register a new epoch under the DEK tagged dek_tag and make it current,
 * unless another backend did so meanwhile (the caller retries).
 */
static void
register_epoch(CmkEpochTable *tab, uint32 dek_tag, uint32 count)
{
	CmkEpoch	fresh = {0};
	uint8		rnd[4];
	int			free_ids;
	int			pick;
	int			id = -1;
	XLogRecPtr	lsn;
	uint8		rec[CMK_EPOCH_RECORD_LEN];

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	SpinLockAcquire(&tab->mutex);
	if (current_has_room(tab, dek_tag, count))
	{
		SpinLockRelease(&tab->mutex);
		LWLockRelease(tab->lock);
		return;					/* someone else registered one */
	}
	SpinLockRelease(&tab->mutex);

	if (tab->damaged)
	{
		LWLockRelease(tab->lock);
		report_damaged(tab);
	}
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot encrypt tuples during recovery")));
	free_ids = CMK_NONCE_EPOCHS - tab->nvalid;
	if (free_ids <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("all %d nonce epochs of this cluster are used", CMK_NONCE_EPOCHS),
				 errdetail("Every server start that writes encrypted tuples, and every 2^32 tuples written, uses one."),
				 errhint("Dump the encrypted tables and restore them into a new cluster.")));
	if (!cmk_random_bytes(rnd, sizeof(rnd)) ||
		!cmk_random_bytes(fresh.prefix, sizeof(fresh.prefix)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce epoch")));
	/* the pick-th free id: (nearly) uniform over the ids never used here */
	pick = (int) (cmk_get32(rnd) % (uint32) free_ids);
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (!tab->entries[i].valid && pick-- == 0)
		{
			id = i;
			break;
		}
	Assert(id >= 0);
	fresh.dek_tag = dek_tag;
	fresh.valid = 1;

	/* durable in the file first: a checkpoint after the record has it */
	(void) write_epoch_file(tab, id, &fresh, ERROR);

	cmk_epoch_record(rec, (uint16) id, &fresh);
	XLogBeginInsert();
	XLogRegisterData((char *) rec, sizeof(rec));
	lsn = XLogInsert(CMK_RMGR_ID, XLOG_CMK_NONCE_EPOCH);
	XLogFlush(lsn);

	/* publish: nothing between the flush and here can fail */
	tab->entries[id].dek_tag = fresh.dek_tag;
	memcpy(tab->entries[id].prefix, fresh.prefix, sizeof(fresh.prefix));
	pg_write_barrier();
	tab->entries[id].valid = 1;
	tab->nvalid++;
	SpinLockAcquire(&tab->mutex);
	tab->current = id;
	tab->next = 0;
	SpinLockRelease(&tab->mutex);
	LWLockRelease(tab->lock);

	ereport(DEBUG1,
			(errmsg_internal("cmk_storage: registered nonce epoch %d (%d of %d used)",
							 id, tab->nvalid, CMK_NONCE_EPOCHS)));
}

/*
 * Reserve count nonce counters for tuples encrypted under the DEK tagged
 * dek_tag: *epoch receives the current epoch's id, *first the range [first,
 * first + count).  Registers a new epoch when this postmaster life has none
 * yet or its counters run out.  No counter is handed out twice.
 */
void
cmk_nonce_reserve(uint32 dek_tag, uint16 *epoch, uint32 *first, uint32 count)
{
	CmkEpochTable *tab = cmk_epoch_table;

	Assert(count > 0);
	if (tab == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage is not loaded"),
				 errhint("Add cmk_storage to shared_preload_libraries and restart the server.")));
	for (;;)
	{
		SpinLockAcquire(&tab->mutex);
		if (current_has_room(tab, dek_tag, count))
		{
			*epoch = (uint16) tab->current;
			*first = (uint32) tab->next;
			tab->next += count;
			SpinLockRelease(&tab->mutex);
			return;
		}
		SpinLockRelease(&tab->mutex);
		register_epoch(tab, dek_tag, count);
	}
}

/*
 * Redo: the epoch becomes known (and durable in the file) before any
 * later record names it.  WAL is authoritative: an entry the file has with
 * other contents (registered but never logged before a crash, so never
 * used) is replaced.
 */
void
cmk_epoch_redo(const uint8 *rec, Size len)
{
	CmkEpochTable *tab = cmk_epoch_table;
	CmkEpoch	e = {0};
	int			id;
	CmkEpoch   *cur;

	if (len != CMK_EPOCH_RECORD_LEN || tab == NULL)
		elog(PANIC, "cmk_storage redo: invalid nonce epoch record");
	id = (rec[0] << 8) | rec[1];
	memcpy(&e.dek_tag, rec + 4, 4);
	memcpy(e.prefix, rec + 8, CMK_NONCE_PREFIX_LEN);
	e.valid = 1;

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	cur = &tab->entries[id];
	if (!(cur->valid && cur->dek_tag == e.dek_tag &&
		  memcmp(cur->prefix, e.prefix, CMK_NONCE_PREFIX_LEN) == 0))
	{
		struct stat st;

		/*
		 * A standby without a cmk_storage directory (its control file was
		 * not copied) cannot read encrypted data anyway; creating the
		 * directory would make it look like a cluster with a lost control
		 * file.  Keep the epoch in memory; restoring the directory from the
		 * primary brings the file.
		 */
		if (stat(CMK_CONTROL_DIR, &st) != 0)
			ereport(WARNING,
					(errmsg("cmk_storage: nonce epoch %d not written to disk: there is no cmk_storage directory", id),
					 errhint("Copy $PGDATA/cmk_storage from the primary.")));
		else if (!tab->damaged)
			(void) write_epoch_file(tab, id, &e, PANIC);
		if (!cur->valid)
			tab->nvalid++;
		cur->valid = 0;
		pg_write_barrier();
		cur->dek_tag = e.dek_tag;
		memcpy(cur->prefix, e.prefix, CMK_NONCE_PREFIX_LEN);
		pg_write_barrier();
		cur->valid = 1;
	}
	LWLockRelease(tab->lock);
}

void
cmk_epoch_desc(StringInfo buf, const uint8 *rec, Size len)
{
	if (len != CMK_EPOCH_RECORD_LEN)
		appendStringInfoString(buf, "invalid record");
	else
		appendStringInfo(buf, "epoch %u; DEK %02x%02x%02x%02x",
						 (rec[0] << 8) | rec[1], rec[4], rec[5], rec[6], rec[7]);
}

/* Registered epochs, for cmk_storage.status; -1 if the table is damaged. */
int
cmk_epochs_used(void)
{
	if (cmk_epoch_table == NULL || cmk_epoch_table->damaged)
		return -1;
	return cmk_epoch_table->nvalid;
}

/*
 * A tuple names epoch id under want_tag: report what is wrong with that, if
 * anything (cmk_epoch_usable() said no).
 */
void
cmk_epoch_report_unusable(const char *relname, ItemPointer tid, uint16 id,
						  uint32 want_tag)
{
	CmkEpochTable *tab = cmk_epoch_table;
	const CmkEpoch *e;

	if (tab == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage is not loaded"),
				 errhint("Add cmk_storage to shared_preload_libraries and restart the server.")));
	if (tab->damaged)
		report_damaged(tab);
	e = &tab->entries[id];
	if (!e->valid)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tuple (%u,%u) in relation \"%s\" names nonce epoch %u, which this cluster never registered",
						ItemPointerGetBlockNumberNoCheck(tid),
						ItemPointerGetOffsetNumberNoCheck(tid),
						relname, id),
				 errdetail("This cluster has registered %d nonce epochs in $PGDATA/cmk_storage/nonce_epochs.",
						   tab->nvalid),
				 errhint("The tuple was written by another cluster, or nonce_epochs is older than the data: start the server with the cmk_storage directory of the cluster that wrote it.")));
	else
	{
		uint32		have = e->dek_tag;

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tuple (%u,%u) in relation \"%s\" was encrypted with another data encryption key",
						ItemPointerGetBlockNumberNoCheck(tid),
						ItemPointerGetOffsetNumberNoCheck(tid),
						relname),
				 errdetail("Its nonce epoch %u belongs to DEK %02x%02x%02x%02x; the current DEK is %02x%02x%02x%02x.",
						   id,
						   ((uint8 *) &have)[0], ((uint8 *) &have)[1],
						   ((uint8 *) &have)[2], ((uint8 *) &have)[3],
						   ((uint8 *) &want_tag)[0], ((uint8 *) &want_tag)[1],
						   ((uint8 *) &want_tag)[2], ((uint8 *) &want_tag)[3]),
				 errhint("Start the server with the control file (and key) of the cluster that wrote this data.")));
	}
}
