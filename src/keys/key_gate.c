/*-------------------------------------------------------------------------
 *
 * key_gate.c
 *		Revocation with cluster encryption: while the data encryption key
 *		is unavailable, no client reads or writes data, and service
 *		resumes by itself when the key is back (docs/operations.md,
 *		"Revocation with cluster encryption").
 *
 * The I/O layer's cipher contexts are built once in the postmaster and
 * cannot be taken away from a running process without breaking the
 * processes that must keep flushing what is already committed (the
 * checkpointer, the background writer, the WAL writer, the startup
 * process).  So revocation is enforced one level up, at the processes that
 * serve clients, and never inside the wrappers below fd.c:
 *
 * - a new connection (client or replication) is refused in
 *   ClientAuthentication_hook, the first point of backend start where an
 *   extension runs code and the client can still be told why;
 * - the key worker ends client backends, walsenders, autovacuum workers and
 *   background workers connected to a database with SIGTERM, as
 *   pg_terminate_backend() does, once when the revocation is confirmed and
 *   every CMK_GATE_SWEEP_MS while it lasts (the postmaster restarts some of
 *   them by itself, and a session may have passed the hook just before);
 * - their "due to administrator command" FATAL is reworded, in
 *   emit_log_hook, to name the key as the cause.
 *
 * The gate is the key store's state: it closes when the key worker wipes
 * the key and opens when it publishes it again.  It must never end an
 * auxiliary process (that could lose committed data or restart the
 * cluster), never PANIC, and never reach into the I/O layer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/backend_status.h"
#include "utils/elog.h"

#include "keys/key_gate.h"
#include "keys/key_store.h"

static bool gate_installed = false;
static ClientAuthentication_hook_type prev_client_auth_hook = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

/* key worker: the gate as last logged */
static bool logged_closed = false;

#define GATE_DETAIL \
	"Cluster encryption is on: while the key encryption key cannot be used, no session may read or write data."
#define GATE_RESUME \
	"Connections are accepted again by themselves at the first successful key check after that (cmk_storage.key_check_interval)."

/* The hint: what the provider says to do, and that service resumes. */
static char *
gate_hint(const CmkKeyStatus *st)
{
	if (st->hint[0])
		return psprintf("%s %s", st->hint, GATE_RESUME);
	return psprintf("Restore access to the key encryption key named by cmk_storage.key_uri. %s",
					GATE_RESUME);
}

/*
 * Every connection, after authentication succeeded: refuse it while the
 * gate is closed.  Only an authenticated client learns the reason.  The
 * backend has read nothing but the catalogs authentication needs.
 */
static void
gate_client_auth(Port *port, int status)
{
	CmkKeyStatus st;
	char		reason[sizeof(st.reason)];

	if (prev_client_auth_hook)
		prev_client_auth_hook(port, status);
	if (status != STATUS_OK)
		return;
	cmk_key_store_status(&st);
	if (st.state == CMK_KEY_AVAILABLE)
		return;
	/* the client learns why, but not where the server keeps its key file */
	cmk_key_reason_for_client(st.reason, reason, sizeof(reason));
	ereport(FATAL,
			(errcode(ERRCODE_CANNOT_CONNECT_NOW),
			 errmsg("the database system is not accepting connections: the data encryption key is unavailable: %s",
					reason[0] ? reason : cmk_key_state_name(st.state)),
			 errdetail(GATE_DETAIL),
			 errhint("%s", gate_hint(&st))));
}

/* Whether this kind of process is ended while the gate is closed. */
static bool
ended_while_closed(BackendType type, Oid database)
{
	switch (type)
	{
		case B_BACKEND:
		case B_WAL_SENDER:
		case B_AUTOVAC_WORKER:
			return true;
		case B_BG_WORKER:
			/* user code or SQL: parallel, logical apply, extensions' */
			return OidIsValid(database);
		default:
			/* auxiliary processes flush what is committed: never */
			return false;
	}
}

/*
 * Whether this process's "terminating" FATAL may be reworded: it must come
 * from ProcessInterrupts, outside any signal handler, because rewording
 * reads the key store under its spinlock.  Backends, walsenders, autovacuum
 * workers and PostgreSQL's own background workers (parallel, logical
 * replication) handle SIGTERM with die(), which only sets a flag.  An
 * extension's worker may use bgworker_die(), which raises the FATAL inside
 * the handler: its message is left as it is, and the key worker's WARNING
 * names the cause.
 */
static bool
rewordable(void)
{
	if (MyBackendType == B_BG_WORKER)
		return MyBgworkerEntry != NULL && OidIsValid(MyDatabaseId) &&
			strcmp(MyBgworkerEntry->bgw_library_name, "postgres") == 0;
	return ended_while_closed(MyBackendType, MyDatabaseId);
}

/*
 * A process the key worker ended reports PostgreSQL's "terminating ... due
 * to administrator command" (ERRCODE_ADMIN_SHUTDOWN) FATAL: name the key
 * instead.  While the gate is closed no client can connect to issue
 * pg_terminate_backend(), so such a FATAL in such a process is ours (or a
 * shutdown's, which ends it the same way).  Runs in ErrorContext.
 */
static void
gate_emit_log(ErrorData *edata)
{
	CmkKeyStatus st;
	char		client_reason[sizeof(st.reason)];
	const char *reason;

	if (edata->elevel == FATAL && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN &&
		rewordable())
	{
		cmk_key_store_status(&st);
		if (st.state != CMK_KEY_AVAILABLE)
		{
			cmk_key_reason_for_client(st.reason, client_reason, sizeof(client_reason));
			reason = client_reason[0] ? client_reason : cmk_key_state_name(st.state);
			if (MyBackendType == B_BG_WORKER)
				edata->message = psprintf("terminating background worker \"%s\" because the data encryption key is unavailable: %s",
										  MyBgworkerEntry->bgw_type, reason);
			else if (MyBackendType == B_AUTOVAC_WORKER)
				edata->message = psprintf("terminating autovacuum process because the data encryption key is unavailable: %s",
										  reason);
			else
				edata->message = psprintf("terminating connection because the data encryption key is unavailable: %s",
										  reason);
			edata->detail = pstrdup(GATE_DETAIL);
			edata->hint = gate_hint(&st);
		}
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
cmk_gate_install(void)
{
	Assert(!IsUnderPostmaster);
	gate_installed = true;
	prev_client_auth_hook = ClientAuthentication_hook;
	ClientAuthentication_hook = gate_client_auth;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = gate_emit_log;
}

/*
 * SIGTERM every process that serves clients, as pg_terminate_backend()
 * does (to the process group: a COPY ... PROGRAM child goes too).
 * Returns how many were signalled.
 */
static int
sweep(void)
{
	int			n = 0;
	int			nbackends;

	pgstat_clear_backend_activity_snapshot();
	nbackends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= nbackends; i++)
	{
		LocalPgBackendStatus *l = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *be;

		if (l == NULL)
			continue;
		be = &l->backendStatus;
		if (be->st_procpid <= 0 || be->st_procpid == MyProcPid ||
			!ended_while_closed(be->st_backendType, be->st_databaseid))
			continue;
#ifdef HAVE_SETSID
		if (kill(-be->st_procpid, SIGTERM) == 0)
#else
		if (kill(be->st_procpid, SIGTERM) == 0)
#endif
			n++;
	}
	pgstat_clear_backend_activity_snapshot();
	return n;
}

bool
cmk_gate_tick(void)
{
	CmkKeyStatus st;
	bool		closed;
	int			ended;

	if (!gate_installed)
		return false;
	cmk_key_store_status(&st);
	closed = st.state != CMK_KEY_AVAILABLE;
	if (!closed)
	{
		if (logged_closed)
			ereport(LOG,
					(errmsg("cmk_storage: the data encryption key is available again: accepting connections")));
		logged_closed = false;
		return false;
	}

	ended = sweep();
	if (!logged_closed)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: the data encryption key is unavailable: refusing connections and ending sessions: %s",
						st.reason[0] ? st.reason : cmk_key_state_name(st.state)),
				 errdetail_plural("%d session or worker was told to end. The checkpointer, background writer, WAL writer, startup process and WAL receiver keep running, so that nothing committed is lost.",
								  "%d sessions or workers were told to end. The checkpointer, background writer, WAL writer, startup process and WAL receiver keep running, so that nothing committed is lost.",
								  ended, ended),
				 errhint("%s", gate_hint(&st))));
	logged_closed = true;
	return true;
}
