/*-------------------------------------------------------------------------
 *
 * key_guard.c
 *		Never a second DEK over encrypted data: decide whether a data
 *		directory without cmk_storage/ may get a new key.
 *
 * cmk_storage/ holds the only copy of the wrapped DEK.  If it is lost (a
 * careless delete, a restore that left it out) on a cluster that already
 * encrypted data, creating a new DEK would silently split the data: old
 * rows unreadable now, new rows lost if the old directory is restored
 * later.  So before the key worker creates a DEK it asks here, and three
 * kinds of evidence refuse:
 *
 *	 - WAL: redo met a nonce-epoch record while cmk_storage/ was missing
 *	   (only written when tuples are encrypted);
 *	 - the marker $PGDATA/cmk_dek_in_use, written next to (not inside)
 *	   cmk_storage/ whenever a DEK is created or loaded, so it survives the
 *	   directory's loss and travels with every copy of the data directory
 *	   (pg_basebackup, cp); initdb never makes one;
 *	 - a relation whose pg_class.relam is cmk_heap in any database, found by
 *	   one short-lived background worker per database (the key worker itself
 *	   has no database connection and cannot get one).
 *
 * A refusal lasts for the life of the shared memory: restoring the
 * directory needs a restart anyway, because the nonce epochs are read only
 * at start-up (a directory that appears later is refused too).  The
 * explicit way past the evidence is cmk_storage.create_key()
 * (docs/operations.md, "Lost key directory").
 *
 * This file never creates a key, never writes anything but the marker, and
 * never reads table data: catalogs only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "keys/key_guard.h"

PGDLLEXPORT void cmk_guard_scan_main(Datum main_arg);

/* databases one listing hands back; more are listed in further rounds */
#define SCAN_LIST_MAX	256

typedef enum ScanKind
{
	SCAN_LIST_DATABASES = 1,	/* no database: list those after oid */
	SCAN_DATABASE,				/* connected to oid: count cmk_heap relations */
} ScanKind;

/* A scan worker's bgw_extra. */
typedef struct ScanRequest
{
	int32		kind;
	Oid			oid;
} ScanRequest;

typedef struct GuardShared
{
	slock_t		mutex;
	bool		dir_at_start;	/* cmk_storage/ existed when shmem was made */
	bool		dir_created;	/* this server life made it (DEK creation,
								 * redo) */
	XLogRecPtr	wal_evidence;	/* first nonce-epoch record redo met without
								 * the directory, or invalid */
	bool		refused;		/* evidence was found: refuse until restart */
	CmkError	refusal;
	/* the one scan worker running reports here */
	Latch	   *waiter;
	bool		done;
	int			ndbs;
	bool		more;
	Oid			dbs[SCAN_LIST_MAX];
	int64		nrels;
	char		dbname[NAMEDATALEN];
	char		example[2 * NAMEDATALEN + 8];
} GuardShared;

static GuardShared *guard = NULL;

#define GUARD_HINT \
	"Restore $PGDATA/cmk_storage from the backup this data came from, keep the key encryption key that wrapped it, and restart the server. " \
	"A new key would leave this data unreadable: to create one anyway, see \"Lost key directory\" in docs/operations.md."

Size
cmk_guard_shmem_size(void)
{
	return sizeof(GuardShared);
}

/*
 * Called under AddinShmemInitLock by the postmaster's shmem start-up, which
 * is also when the nonce epochs are loaded: whether cmk_storage/ existed
 * then is whether this server life has its epochs.
 */
void
cmk_guard_shmem_init(void)
{
	bool		found;
	struct stat st;

	guard = ShmemInitStruct("cmk_storage key guard", sizeof(GuardShared), &found);
	if (!found)
	{
		memset(guard, 0, sizeof(GuardShared));
		SpinLockInit(&guard->mutex);
		guard->wal_evidence = InvalidXLogRecPtr;
		guard->dir_at_start = stat(CMK_CONTROL_DIR, &st) == 0 || errno != ENOENT;
	}
}

void
cmk_guard_note_dir_created(void)
{
	if (guard == NULL)
		return;
	SpinLockAcquire(&guard->mutex);
	guard->dir_created = true;
	SpinLockRelease(&guard->mutex);
}

void
cmk_guard_note_wal_evidence(XLogRecPtr lsn)
{
	if (guard == NULL)
		return;
	SpinLockAcquire(&guard->mutex);
	if (XLogRecPtrIsInvalid(guard->wal_evidence))
		guard->wal_evidence = lsn;
	SpinLockRelease(&guard->mutex);
}

/*
 * A cmk_storage/ that appeared while the server ran (restored by hand after
 * a refusal, or copied to a standby) cannot be used before a restart: the
 * nonce epochs in shared memory were loaded without it, and the first new
 * epoch would overwrite its nonce_epochs with that empty table.
 */
bool
cmk_guard_dir_usable(CmkError *err)
{
	bool		ok;

	Assert(guard != NULL);
	SpinLockAcquire(&guard->mutex);
	ok = guard->dir_at_start || guard->dir_created;
	SpinLockRelease(&guard->mutex);
	if (!ok)
		cmk_error_set(err, CMK_ERR_CONFIG, "KeyDirectoryAppeared",
					  "Restart the server to use it.",
					  "$PGDATA/cmk_storage appeared while the server was running; it is read only at server start");
	return ok;
}

/* ---------------------------------------------------------------------- */
/* The marker file                                                        */

typedef enum MarkerState
{
	MARKER_ABSENT,
	MARKER_VALID,
	MARKER_GARBLED,				/* present, not in the format below */
	MARKER_UNREADABLE,			/* present (or unknown), errno says why */
} MarkerState;

typedef struct Marker
{
	uint64		system_identifier;
	uint8		dek_id[CMK_DEK_ID_LEN];
	int64		created_at;
} Marker;

/* docs/control-file.md, "The marker file"; the comment is for operators */
#define MARKER_TEXT \
	"# cmk_storage: the data in this directory is encrypted under the data\n" \
	"# encryption key (DEK) named below; its wrapped key is in cmk_storage/.\n" \
	"# If cmk_storage/ is lost, restore it from the backup this data came from\n" \
	"# and keep this file: it stops cmk_storage from creating a new key over\n" \
	"# the encrypted data (docs/operations.md, \"Lost key directory\").\n" \
	"format 1\n" \
	"system_identifier %llu\n" \
	"dek_id %s\n" \
	"created_at %lld\n"

static bool
parse_hex_id(const char *s, uint8 *out)
{
	if (strlen(s) != 2 * CMK_DEK_ID_LEN)
		return false;
	for (int i = 0; i < 2 * CMK_DEK_ID_LEN; i++)
	{
		char		c = s[i];
		int			v;

		if (c >= '0' && c <= '9')
			v = c - '0';
		else if (c >= 'a' && c <= 'f')
			v = c - 'a' + 10;
		else
			return false;
		if (i % 2 == 0)
			out[i / 2] = (uint8) (v << 4);
		else
			out[i / 2] |= (uint8) v;
	}
	return true;
}

static MarkerState
read_marker(Marker *m)
{
	char		buf[2048];
	char	   *line;
	char	   *save = NULL;
	ssize_t		len;
	int			fd;
	int			have = 0;

	memset(m, 0, sizeof(*m));
	fd = OpenTransientFile(CMK_MARKER_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
		return errno == ENOENT ? MARKER_ABSENT : MARKER_UNREADABLE;
	len = read(fd, buf, sizeof(buf) - 1);
	if (len < 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		return MARKER_UNREADABLE;
	}
	CloseTransientFile(fd);
	buf[len] = '\0';
	if (memchr(buf, '\0', len) != NULL)
		return MARKER_GARBLED;

	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *end;

		if (line[0] == '#')
			continue;
		errno = 0;
		if (strcmp(line, "format 1") == 0)
			have |= 1;
		else if (strncmp(line, "system_identifier ", 18) == 0)
		{
			m->system_identifier = strtoull(line + 18, &end, 10);
			if (errno != 0 || *end != '\0' || end == line + 18)
				return MARKER_GARBLED;
			have |= 2;
		}
		else if (strncmp(line, "dek_id ", 7) == 0)
		{
			if (!parse_hex_id(line + 7, m->dek_id))
				return MARKER_GARBLED;
			have |= 4;
		}
		else if (strncmp(line, "created_at ", 11) == 0)
		{
			m->created_at = strtoll(line + 11, &end, 10);
			if (errno != 0 || *end != '\0' || end == line + 11)
				return MARKER_GARBLED;
			have |= 8;
		}
		else
			return MARKER_GARBLED;
	}
	return have == 15 ? MARKER_VALID : MARKER_GARBLED;
}

/*
 * Write the marker for the DEK of ctl: marker.tmp, fsync, rename, fsync.
 * Before the key is published, so no tuple is encrypted under a DEK the
 * marker does not name.
 */
bool
cmk_guard_write_marker(const CmkControl *ctl, CmkError *err)
{
	char		hex[2 * CMK_DEK_ID_LEN + 1];
	char		buf[1024];
	const char *failed;
	int			len;

	cmk_hex(ctl->dek_id, CMK_DEK_ID_LEN, hex);
	len = snprintf(buf, sizeof(buf), MARKER_TEXT,
				   (unsigned long long) ctl->system_identifier, hex,
				   (long long) ctl->created_at);
	Assert(len > 0 && len < sizeof(buf));
	if (!cmk_write_file_synced(CMK_MARKER_TMP, buf, len, &failed))
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL,
					  "Check the permissions and free space of the data directory.",
					  "could not %s \"%s\": %m", failed, CMK_MARKER_TMP);
		return false;
	}
	if (durable_rename(CMK_MARKER_TMP, CMK_MARKER_FILE, LOG) != 0)
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL,
					  "Check the permissions and free space of the data directory.",
					  "could not rename \"%s\" to \"%s\": %m", CMK_MARKER_TMP, CMK_MARKER_FILE);
		return false;
	}
	return true;
}

/*
 * The key worker loaded the control file ctl: make sure the marker exists
 * (clusters from before the marker get theirs here), and warn once if it
 * names another DEK, which means data was encrypted under a key whose
 * directory is not the one in place.  A marker naming another DEK is never
 * overwritten: it is the only trace of that key.
 */
bool
cmk_guard_check_marker(const CmkControl *ctl, CmkError *err)
{
	static bool warned = false;
	Marker		m;
	char		have[2 * CMK_DEK_ID_LEN + 1];
	char		want[2 * CMK_DEK_ID_LEN + 1];

	switch (read_marker(&m))
	{
		case MARKER_ABSENT:
		case MARKER_GARBLED:
			return cmk_guard_write_marker(ctl, err);
		case MARKER_UNREADABLE:
			if (!warned)
				ereport(WARNING,
						(errcode_for_file_access(),
						 errmsg("cmk_storage: could not read \"%s\": %m", CMK_MARKER_FILE)));
			warned = true;
			return true;
		case MARKER_VALID:
			break;
	}
	if (warned || (m.system_identifier == ctl->system_identifier &&
				   memcmp(m.dek_id, ctl->dek_id, CMK_DEK_ID_LEN) == 0))
		return true;
	warned = true;
	cmk_hex(ctl->dek_id, CMK_DEK_ID_LEN, have);
	cmk_hex(m.dek_id, CMK_DEK_ID_LEN, want);
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cmk_storage: the control file's data encryption key %s is not the key %s that \"%s\" names",
					have, want, CMK_MARKER_FILE),
			 errdetail("Data encrypted under the key the marker names cannot be read with this control file."),
			 errhint("If this control file is the right one, delete \"%s\" (it is written again at the next start); otherwise restore the cmk_storage directory of DEK %s.",
					 CMK_MARKER_FILE, want)));
	return true;
}

/* ---------------------------------------------------------------------- */
/* The scan workers                                                       */

/* List the valid databases with an OID above after, ascending. */
static void
list_databases(Oid after)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *oids = NIL;
	int			n;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* an interrupted DROP DATABASE: nothing in it can be used again */
		if (db->oid > after && !database_is_invalid_form(db))
			oids = lappend_oid(oids, db->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	list_sort(oids, list_oid_cmp);

	n = Min(list_length(oids), SCAN_LIST_MAX);
	SpinLockAcquire(&guard->mutex);
	for (int i = 0; i < n; i++)
		guard->dbs[i] = list_nth_oid(oids, i);
	guard->ndbs = n;
	guard->more = list_length(oids) > SCAN_LIST_MAX;
	SpinLockRelease(&guard->mutex);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Count this database's relations whose access method is cmk_heap. */
static void
count_encrypted(void)
{
	Oid			amoid;
	int64		n = 0;
	int64		toast = 0;
	char		example[sizeof(guard->example)] = "";
	char	   *dbname;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	amoid = get_table_am_oid("cmk_heap", true);
	if (OidIsValid(amoid))
	{
		Relation	rel = table_open(RelationRelationId, AccessShareLock);
		ScanKeyData key;
		TableScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key, Anum_pg_class_relam, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(amoid));
		scan = table_beginscan_catalog(rel, 1, &key);
		while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
		{
			Form_pg_class c = (Form_pg_class) GETSTRUCT(tup);

			/* a TOAST relation is counted with its table */
			if (c->relkind == RELKIND_TOASTVALUE)
			{
				toast++;
				continue;
			}
			if (n++ == 0)
			{
				char	   *nsp = get_namespace_name(c->relnamespace);

				strlcpy(example, quote_qualified_identifier(nsp ? nsp : "?",
															NameStr(c->relname)),
						sizeof(example));
			}
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	dbname = get_database_name(MyDatabaseId);

	SpinLockAcquire(&guard->mutex);
	guard->nrels = n > 0 ? n : toast;
	strlcpy(guard->dbname, dbname ? dbname : "?", sizeof(guard->dbname));
	strlcpy(guard->example, example, sizeof(guard->example));
	SpinLockRelease(&guard->mutex);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * A scan worker: one catalog question, the answer in shared memory, and
 * exit.  It connects even to databases that do not allow connections
 * (template0): encrypted data could be anywhere.
 */
void
cmk_guard_scan_main(Datum main_arg)
{
	ScanRequest req;
	Latch	   *waiter;

	memcpy(&req, MyBgworkerEntry->bgw_extra, sizeof(req));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (req.kind == SCAN_LIST_DATABASES)
	{
		BackgroundWorkerInitializeConnectionByOid(InvalidOid, InvalidOid, 0);
		list_databases(req.oid);
	}
	else
	{
		BackgroundWorkerInitializeConnectionByOid(req.oid, InvalidOid,
												  BGWORKER_BYPASS_ALLOWCONN);
		count_encrypted();
	}

	SpinLockAcquire(&guard->mutex);
	guard->done = true;
	waiter = guard->waiter;
	SpinLockRelease(&guard->mutex);
	if (waiter)
		SetLatch(waiter);
	proc_exit(0);
}

/*
 * Key worker: run one scan worker and wait for it to exit.  False (with
 * err) if it could not start or stopped without an answer.  The key worker
 * ignores SIGUSR1, so it polls the worker's state rather than wait for the
 * postmaster's notification.
 */
static bool
run_scan_worker(ScanKind kind, Oid oid, CmkError *err)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	ScanRequest req;
	pid_t		pid;
	bool		done;

	SpinLockAcquire(&guard->mutex);
	guard->waiter = MyLatch;
	guard->done = false;
	guard->ndbs = 0;
	guard->more = false;
	guard->nrels = 0;
	guard->dbname[0] = guard->example[0] = '\0';
	SpinLockRelease(&guard->mutex);

	memset(&req, 0, sizeof(req));
	req.kind = kind;
	req.oid = oid;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "cmk_storage", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cmk_guard_scan_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "cmk_storage encrypted data check", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "cmk_storage encrypted data check", BGW_MAXLEN);
	StaticAssertStmt(sizeof(req) <= BGW_EXTRALEN, "scan request too large");
	memcpy(worker.bgw_extra, &req, sizeof(req));

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "NoWorkerSlot",
					  "Raise max_worker_processes; the key worker retries.",
					  "no free background worker slot to check the databases for encrypted data before creating a data encryption key");
		return false;
	}
	for (;;)
	{
		BgwHandleStatus st = GetBackgroundWorkerPid(handle, &pid);

		if (st == BGWH_STOPPED)
			break;
		if (st == BGWH_POSTMASTER_DIED)
			proc_exit(1);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
		{
			TerminateBackgroundWorker(handle);
			proc_exit(0);
		}
	}
	pfree(handle);

	SpinLockAcquire(&guard->mutex);
	done = guard->done;
	guard->waiter = NULL;
	SpinLockRelease(&guard->mutex);
	if (!done)
	{
		if (kind == SCAN_LIST_DATABASES)
			cmk_error_set(err, CMK_ERR_INTERNAL, "ScanFailed",
						  "See the server log for the worker's error; the key worker retries.",
						  "could not list the databases to check them for encrypted data before creating a data encryption key");
		else
			cmk_error_set(err, CMK_ERR_INTERNAL, "ScanFailed",
						  "See the server log for the worker's error; the key worker retries.",
						  "could not check the database with OID %u for encrypted data before creating a data encryption key",
						  oid);
	}
	return done;
}

/* The start of every refusal: what is missing and that no key is made. */
static void
refuse(CmkError *err, const char *evidence)
{
	cmk_error_set(err, CMK_ERR_CONFIG, "KeyDirectoryMissing", GUARD_HINT,
				  "$PGDATA/cmk_storage is missing, but %s; no new data encryption key is created",
				  evidence);
}

/*
 * Look in every database for a cmk_heap relation.  True if every database
 * was checked; *found then says whether one was (err tells which).
 */
static bool
scan_databases(CmkError *err, bool *found)
{
	Oid			after = InvalidOid;
	Oid			dbs[SCAN_LIST_MAX];
	int			ndbs;
	bool		more;

	*found = false;
	do
	{
		if (!run_scan_worker(SCAN_LIST_DATABASES, after, err))
			return false;
		SpinLockAcquire(&guard->mutex);
		ndbs = guard->ndbs;
		more = guard->more;
		memcpy(dbs, guard->dbs, ndbs * sizeof(Oid));
		SpinLockRelease(&guard->mutex);

		for (int i = 0; i < ndbs; i++)
		{
			int64		nrels;
			char		dbname[NAMEDATALEN];
			char		example[sizeof(guard->example)];
			char		what[CMK_ERR_MSG];

			if (!run_scan_worker(SCAN_DATABASE, dbs[i], err))
				return false;
			SpinLockAcquire(&guard->mutex);
			nrels = guard->nrels;
			strlcpy(dbname, guard->dbname, sizeof(dbname));
			strlcpy(example, guard->example, sizeof(example));
			SpinLockRelease(&guard->mutex);
			if (nrels == 0)
				continue;
			if (nrels == 1)
				snprintf(what, sizeof(what), "database \"%s\" holds the encrypted relation \"%s\"",
						 dbname, example);
			else
				snprintf(what, sizeof(what), "database \"%s\" holds %lld encrypted relations, among them \"%s\"",
						 dbname, (long long) nrels, example);
			refuse(err, what);
			cmk_error_detail(err, "Relations whose access method is cmk_heap hold tuples encrypted under the lost key.");
			*found = true;
			return true;
		}
		if (ndbs > 0)
			after = dbs[ndbs - 1];
	} while (more);
	return true;
}

static void
remember_refusal(const CmkError *err)
{
	SpinLockAcquire(&guard->mutex);
	guard->refused = true;
	guard->refusal = *err;
	SpinLockRelease(&guard->mutex);
}

static void
forget_refusal(void)
{
	SpinLockAcquire(&guard->mutex);
	guard->refused = false;
	SpinLockRelease(&guard->mutex);
}

/*
 * May the key worker create a DEK for this data directory, which has no
 * cmk_storage/?  Called on a primary, after crash recovery.  mode says
 * which evidence counts: at start-up all of it (cheapest first); for
 * create_key() only relations, which are what a new key makes unreadable;
 * for create_key(force => true) none.
 */
bool
cmk_guard_allows_new_key(CmkGuardMode mode, CmkError *err)
{
	bool		refused;
	bool		found;
	XLogRecPtr	wal;
	Marker		m;
	MarkerState ms;

	Assert(guard != NULL);
	if (mode == CMK_GUARD_FORCE)
	{
		forget_refusal();
		return true;
	}

	if (mode == CMK_GUARD_AUTOMATIC)
	{
		SpinLockAcquire(&guard->mutex);
		refused = guard->refused;
		if (refused)
			*err = guard->refusal;
		wal = guard->wal_evidence;
		SpinLockRelease(&guard->mutex);
		if (refused)
			return false;

		if (!XLogRecPtrIsInvalid(wal))
		{
			refuse(err, "the WAL replayed at start-up shows that tuples were encrypted");
			cmk_error_detail(err, "Redo met a nonce epoch record at %X/%X; such records are written only when tuples are encrypted.",
							 LSN_FORMAT_ARGS(wal));
			remember_refusal(err);
			return false;
		}

		ms = read_marker(&m);
		if (ms != MARKER_ABSENT)
		{
			char		hex[2 * CMK_DEK_ID_LEN + 1];
			int			save_errno = errno;

			refuse(err, "this data directory already has a data encryption key");
			if (ms == MARKER_VALID)
			{
				cmk_hex(m.dek_id, CMK_DEK_ID_LEN, hex);
				cmk_error_detail(err, "\"%s\" names DEK %s, created %s, of the cluster with system identifier %llu.",
								 CMK_MARKER_FILE, hex,
								 timestamptz_to_str(time_t_to_timestamptz((pg_time_t) m.created_at)),
								 (unsigned long long) m.system_identifier);
			}
			else if (ms == MARKER_GARBLED)
				cmk_error_detail(err, "\"%s\" exists but is not in the expected format.",
								 CMK_MARKER_FILE);
			else
			{
				errno = save_errno;
				cmk_error_detail(err, "\"%s\" exists but could not be read: %m.",
								 CMK_MARKER_FILE);
			}
			remember_refusal(err);
			return false;
		}
	}

	if (!scan_databases(err, &found))
		return false;
	if (found)
	{
		remember_refusal(err);
		return false;
	}
	forget_refusal();
	return true;
}
