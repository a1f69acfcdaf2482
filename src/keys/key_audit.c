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
 * cmk_storage.key_events.  The ring starts empty at each server start; the
 * log is the durable record.  Nothing here may receive key material.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

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

void
cmk_audit_shmem_init(void)
{
	bool		found;

	ring = ShmemInitStruct("cmk_storage audit", sizeof(CmkAuditRing), &found);
	if (!found)
	{
		memset(ring, 0, sizeof(CmkAuditRing));
		SpinLockInit(&ring->mutex);
	}
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
		CmkAuditEvent *ev;

		SpinLockAcquire(&ring->mutex);
		ev = &ring->events[ring->next_seq % CMK_AUDIT_SLOTS];
		ev->seq = ++ring->next_seq;
		ev->at = GetCurrentTimestamp();
		ev->pid = MyProcPid;
		strlcpy(ev->event, event, sizeof(ev->event));
		strlcpy(ev->outcome, outcome, sizeof(ev->outcome));
		strlcpy(ev->actor, actor, sizeof(ev->actor));
		strlcpy(ev->kid, kid, sizeof(ev->kid));
		strlcpy(ev->detail, detail, sizeof(ev->detail));
		SpinLockRelease(&ring->mutex);
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
