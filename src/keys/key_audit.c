/*-------------------------------------------------------------------------
 *
 * key_audit.c
 *		The audit trail of key events.
 *
 * Every event is written to the server log as one line,
 *
 *   cmk_storage audit: event=<e> outcome=<o> actor=<role|key-worker> kid=<kid> detail="<text>"
 *
 * (double quotes and backslashes in the detail are backslash-escaped), and
 * kept in a ring of the last CMK_AUDIT_SLOTS events in shared memory for
 * cmk_storage.key_events.  The ring is durable: every event is also written,
 * and fsynced, to its slot of a file of the same shape under the data
 * directory (cmk_storage/audit_trail, fixed-size records with a CRC each),
 * from which the ring is loaded at start-up, so the view keeps its history
 * and numbering across restarts and crashes.  A record a crash tore is
 * skipped with a warning; a write that fails leaves the event in the log and
 * the ring only, with a warning.  Nothing here may receive key material.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "keys/control_file.h"
#include "keys/key_audit.h"

typedef struct CmkAuditEvent
{
	uint64		seq;
	TimestampTz at;
	int			pid;
	char		event[16];
	char		outcome[16];
	char		actor[NAMEDATALEN];
	char		kid[CMK_MAX_KID];
	char		detail[CMK_ERR_MSG];
} CmkAuditEvent;

/*
 * One slot of the audit trail file: the event with sequence number seq is
 * at offset ((seq - 1) % CMK_AUDIT_SLOTS) * sizeof(CmkAuditRecord).  Every
 * byte is defined (the event is zeroed before it is filled), so the CRC
 * covers the record exactly.
 */
#define CMK_AUDIT_FILE		CMK_CONTROL_DIR "/audit_trail"
#define CMK_AUDIT_MAGIC		0x434d4b41	/* "CMKA" */
#define CMK_AUDIT_VERSION	1

typedef struct CmkAuditRecord
{
	uint32		magic;
	uint32		version;
	CmkAuditEvent ev;
	pg_crc32c	crc;			/* of everything before it */
} CmkAuditRecord;

typedef struct CmkAuditRing
{
	slock_t		mutex;
	uint64		next_seq;		/* events recorded since start */
	CmkAuditEvent events[CMK_AUDIT_SLOTS];
} CmkAuditRing;

static CmkAuditRing *ring = NULL;

PG_FUNCTION_INFO_V1(cmk_key_events);

Size
cmk_audit_shmem_size(void)
{
	return sizeof(CmkAuditRing);
}

static pg_crc32c
record_crc(const CmkAuditRecord *rec)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, rec, offsetof(CmkAuditRecord, crc));
	FIN_CRC32C(crc);
	return crc;
}

/*
 * Load the ring from the audit trail file (postmaster, at start-up and
 * after a crash).  A missing file is an empty trail; a slot that is all
 * zeroes was never written; anything else that does not check out is
 * skipped and counted.  Events older than the newest CMK_AUDIT_SLOTS (a
 * slot whose overwrite failed) are stale and skipped too.
 */
static void
load_trail(void)
{
	int			fd;
	CmkAuditRecord *recs;
	ssize_t		n;
	uint64		last = 0;
	int			damaged = 0;

	fd = OpenTransientFile(CMK_AUDIT_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not open cmk_storage audit trail \"%s\": %m",
							CMK_AUDIT_FILE),
					 errdetail("cmk_storage.key_events starts empty; the server log keeps the earlier events.")));
		return;
	}
	recs = palloc0(sizeof(CmkAuditRecord) * CMK_AUDIT_SLOTS);
	n = read(fd, recs, sizeof(CmkAuditRecord) * CMK_AUDIT_SLOTS);
	if (n < 0)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not read cmk_storage audit trail \"%s\": %m",
						CMK_AUDIT_FILE)));
	CloseTransientFile(fd);

	for (int i = 0; i < CMK_AUDIT_SLOTS && n > 0; i++)
	{
		CmkAuditRecord *r = &recs[i];

		if (r->magic == 0 && r->ev.seq == 0)
			continue;			/* never written */
		if (r->magic != CMK_AUDIT_MAGIC || r->version != CMK_AUDIT_VERSION ||
			!EQ_CRC32C(r->crc, record_crc(r)) || r->ev.seq == 0 ||
			(r->ev.seq - 1) % CMK_AUDIT_SLOTS != (uint64) i)
		{
			damaged++;
			r->ev.seq = 0;
			continue;
		}
		last = Max(last, r->ev.seq);
	}
	for (int i = 0; i < CMK_AUDIT_SLOTS && n > 0; i++)
	{
		CmkAuditEvent *ev = &recs[i].ev;

		if (ev->seq == 0 || ev->seq + CMK_AUDIT_SLOTS <= last)
			continue;
		ev->event[sizeof(ev->event) - 1] = '\0';
		ev->outcome[sizeof(ev->outcome) - 1] = '\0';
		ev->actor[sizeof(ev->actor) - 1] = '\0';
		ev->kid[sizeof(ev->kid) - 1] = '\0';
		ev->detail[sizeof(ev->detail) - 1] = '\0';
		ring->events[i] = *ev;
	}
	ring->next_seq = last;
	pfree(recs);
	if (damaged > 0)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cmk_storage audit trail \"%s\": %d damaged record(s) skipped",
						CMK_AUDIT_FILE, damaged),
				 errdetail("A crash while an event was written tears at most one record; more means the file was changed outside cmk_storage."),
				 errhint("The server log has every event as a \"cmk_storage audit:\" line.")));
}

void
cmk_audit_shmem_init(void)
{
	bool		found;

	ring = ShmemInitStruct("cmk_storage audit", sizeof(CmkAuditRing), &found);
	if (!found)
	{
		memset(ring, 0, sizeof(CmkAuditRing));
		SpinLockInit(&ring->mutex);
		load_trail();
	}
}

/*
 * Write an event to its slot of the audit trail file and fsync it.  A
 * failure is a WARNING, not an ERROR: the event is in the log and the ring
 * already, and the key operation it records must not fail for it.
 */
static void
write_trail(const CmkAuditEvent *ev)
{
	CmkAuditRecord rec;
	int			fd;
	off_t		off = (off_t) ((ev->seq - 1) % CMK_AUDIT_SLOTS) * sizeof(rec);

	memset(&rec, 0, sizeof(rec));
	rec.magic = CMK_AUDIT_MAGIC;
	rec.version = CMK_AUDIT_VERSION;
	rec.ev = *ev;
	rec.crc = record_crc(&rec);

	/*
	 * Never create the key directory: its existence says that the cluster
	 * has a key (control_file.c installs it whole).  Events before that, a
	 * first start that failed, are in the log only.
	 */
	errno = 0;
	fd = OpenTransientFilePerm(CMK_AUDIT_FILE, O_WRONLY | O_CREAT | PG_BINARY,
							   pg_file_create_mode);
	if (fd < 0 && errno == ENOENT)
		return;
	if (fd < 0 ||
		pg_pwrite(fd, &rec, sizeof(rec), off) != sizeof(rec) ||
		pg_fsync(fd) != 0)
	{
		int			save_errno = errno ? errno : ENOSPC;

		if (fd >= 0)
			CloseTransientFile(fd);
		errno = save_errno;
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not write cmk_storage audit trail \"%s\": %m",
						CMK_AUDIT_FILE),
				 errdetail("Key event %llu is in the server log only; cmk_storage.key_events loses it at the next restart.",
						   (unsigned long long) ev->seq)));
		return;
	}
	if (CloseTransientFile(fd) != 0)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not close cmk_storage audit trail \"%s\": %m",
						CMK_AUDIT_FILE)));
}

static void
append_escaped(StringInfo buf, const char *s)
{
	for (; *s; s++)
	{
		if (*s == '"' || *s == '\\')
			appendStringInfoChar(buf, '\\');
		if (*s == '\n' || *s == '\r')
			appendStringInfoChar(buf, ' ');
		else
			appendStringInfoChar(buf, *s);
	}
}

static void
record(const char *event, const char *outcome, const char *actor,
	   const char *kid, const char *detail)
{
	StringInfoData line;

	if (actor == NULL)
		actor = "key-worker";
	if (kid == NULL || kid[0] == '\0')
		kid = "-";

	initStringInfo(&line);
	appendStringInfo(&line, "cmk_storage audit: event=%s outcome=%s actor=%s kid=%s detail=\"",
					 event, outcome, actor, kid);
	append_escaped(&line, detail);
	appendStringInfoChar(&line, '"');
	ereport(LOG, (errmsg_internal("%s", line.data), errhidestmt(true)));
	pfree(line.data);

	if (ring != NULL)
	{
		CmkAuditEvent ev;

		/* filled outside the spinlock; zeroed so the file's CRC is exact */
		memset(&ev, 0, sizeof(ev));
		ev.at = GetCurrentTimestamp();
		ev.pid = MyProcPid;
		strlcpy(ev.event, event, sizeof(ev.event));
		strlcpy(ev.outcome, outcome, sizeof(ev.outcome));
		strlcpy(ev.actor, actor, sizeof(ev.actor));
		strlcpy(ev.kid, kid, sizeof(ev.kid));
		strlcpy(ev.detail, detail, sizeof(ev.detail));

		SpinLockAcquire(&ring->mutex);
		ev.seq = ++ring->next_seq;
		ring->events[(ev.seq - 1) % CMK_AUDIT_SLOTS] = ev;
		SpinLockRelease(&ring->mutex);

		/* events of different numbers go to different slots of the file */
		write_trail(&ev);
	}
}

void
cmk_audit(const char *event, const char *outcome, const char *actor,
		  const char *kid, const char *fmt,...)
{
	char		detail[CMK_ERR_MSG];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	record(event, outcome, actor, kid, detail);
}

void
cmk_audit_error(const char *event, const char *actor, const char *kid,
				const CmkError *err)
{
	const char *outcome;
	char		detail[CMK_ERR_MSG];

	switch (err->kind)
	{
		case CMK_ERR_DENIED:
		case CMK_ERR_WRONG_KEY:
			outcome = "denied";
			break;
		case CMK_ERR_TRANSIENT:
			outcome = "transient";
			break;
		default:
			outcome = "failure";
			break;
	}
	snprintf(detail, sizeof(detail), "%s%s%s%s", err->code[0] ? err->code : "",
			 err->code[0] ? ": " : "", err->message,
			 err->kind == CMK_ERR_TRANSIENT ? " (will retry)" : "");
	record(event, outcome, actor, kid, detail);
}

/* SQL: the events still in the ring, oldest first. */
Datum
cmk_key_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CmkAuditEvent *copy;
	uint64		first,
				last;

	InitMaterializedSRF(fcinfo, 0);
	if (ring == NULL)
		return (Datum) 0;

	copy = palloc(sizeof(ring->events));
	SpinLockAcquire(&ring->mutex);
	memcpy(copy, ring->events, sizeof(ring->events));
	last = ring->next_seq;
	SpinLockRelease(&ring->mutex);
	first = last > CMK_AUDIT_SLOTS ? last - CMK_AUDIT_SLOTS + 1 : 1;

	for (uint64 seq = first; seq <= last; seq++)
	{
		CmkAuditEvent *ev = &copy[(seq - 1) % CMK_AUDIT_SLOTS];
		Datum		values[8];
		bool		nulls[8] = {0};

		/* a record the trail file could not give back at start-up */
		if (ev->seq != seq)
			continue;

		values[0] = Int64GetDatum((int64) ev->seq);
		values[1] = TimestampTzGetDatum(ev->at);
		values[2] = CStringGetTextDatum(ev->event);
		values[3] = CStringGetTextDatum(ev->outcome);
		values[4] = CStringGetTextDatum(ev->actor);
		values[5] = CStringGetTextDatum(ev->kid);
		values[6] = CStringGetTextDatum(ev->detail);
		values[7] = Int32GetDatum(ev->pid);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(copy);
	return (Datum) 0;
}
