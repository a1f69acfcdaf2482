/*-------------------------------------------------------------------------
 *
 * key_worker.c
 *		The background worker that owns all KEK traffic and the control
 *		file: it self-tests the crypto, creates the DEK on a cluster's first
 *		start, unwraps it on later starts, re-validates the KEK at
 *		cmk_storage.key_check_interval, re-wraps the DEK on request or when
 *		a newer KEK appears, and publishes or wipes the key accordingly.
 *
 * Failure policy (docs/design.md): the server always starts.  Recovery
 * never needs the DEK (WAL holds ciphertext), so a missing vault, a wrong
 * key or a damaged control file leaves the key unavailable with its reason
 * in cmk_storage.status and in every error on encrypted data; the worker
 * keeps retrying.  A definitive denial wipes the key at once; transient
 * failures keep it for cmk_storage.key_grace_period.  It never creates a DEK
 * while a cmk_storage directory exists, never on a standby, never over
 * evidence of encrypted data (key_guard.c) unless cmk_storage.create_key()
 * asks it to, and never touches a control file it could not use.  It is the
 * only writer of the control file outside redo.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/control_file.h"
#include "keys/key_audit.h"
#include "keys/key_gate.h"
#include "keys/key_guard.h"
#include "keys/key_store.h"
#include "keys/key_wal.h"
#include "keys/nonce_epochs.h"

PGDLLEXPORT void cmk_key_worker_main(Datum main_arg);

#define RETRY_MIN_MS	1000
#define RETRY_MAX_MS	60000

/* The control file as this worker knows it. */
static CmkControl ctl;
static bool have_ctl = false;
static bool key_live = false;	/* we published a key and have not wiped it */
static uint32 seen_epoch = 0;

/*
 * The cmk_storage.key_uri value last acted on.  A change of the setting is
 * adopted once (edge-triggered), so an explicit rotate_key() to another URI
 * is not undone at the next check.
 */
static char adopted_uri[CMK_CONTROL_TEXT_MAX + 1];

static bool check_key(const char *actor, char *msg, size_t msgsize);

void
cmk_key_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, "cmk_storage", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "cmk_key_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "cmk_storage key worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "cmk_storage key worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static void
log_selftest(void *arg, const char *name, bool ok)
{
	if (!ok)
		ereport(WARNING,
				(errmsg("cmk_storage: crypto self-test failed: %s", name)));
}

/* Test hook: die like kill -9 at a step of a re-wrap. */
static void
crash_point(int step)
{
	if (cmk_debug_rotation_crash == step)
	{
		ereport(LOG, (errmsg("cmk_storage: simulated crash at re-wrap step %d", step)));
		kill(getpid(), SIGKILL);
	}
}

/* The URI that names the KEK version that wrapped the DEK. */
static const char *
unwrap_uri(void)
{
	return (have_ctl && ctl.key_uri[0]) ? ctl.key_uri : cmk_key_uri;
}

/*
 * First start, or cmk_storage.create_key() (actor): create, wrap and durably
 * record a new DEK, if the guard finds no encrypted data that mode counts.
 */
static bool
create_dek(CmkError *err, CmkGuardMode mode, const char *actor)
{
	const CmkKeyProvider *provider = cmk_find_provider(cmk_key_uri, err);
	uint8	   *dek = cmk_key_store_scratch();
	size_t		wrapped_len = 0;
	CmkControl	c;

	if (provider == NULL)
		return false;

	/*
	 * A standby or a server in archive recovery shares its data with another
	 * cluster's key: it must never make one of its own.  Plain crash
	 * recovery of a primary just has to finish first.
	 */
	if (RecoveryInProgress())
	{
		struct stat st;

		if (stat(STANDBY_SIGNAL_FILE, &st) == 0 || stat(RECOVERY_SIGNAL_FILE, &st) == 0)
		{
			cmk_error_set(err, CMK_ERR_CONFIG, "NoControlFileInRecovery",
						  "Copy $PGDATA/cmk_storage from the primary or from the backup being restored (pg_basebackup copies it), then restart.",
						  "this server is a standby or in archive recovery and has no cmk_storage control file; it never creates a key of its own");
			return false;
		}
		while (RecoveryInProgress())
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 100L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (ShutdownRequestPending)
				proc_exit(0);
		}
	}

	/* A lost cmk_storage directory is restored, never replaced. */
	if (!cmk_guard_allows_new_key(mode, err))
		return false;

	memset(&c, 0, sizeof(c));
	if (!cmk_random_bytes(dek, CMK_DEK_LEN) || !cmk_dek_identifier(dek, c.dek_id))
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL,
					  "could not generate a data encryption key");
		return false;
	}
	c.wrap_alg = (CmkWrapAlg) cmk_wrap_algorithm;
	if (!provider->wrap(cmk_key_uri, c.wrap_alg, dek, CMK_DEK_LEN,
						c.wrapped, &wrapped_len, c.kid, sizeof(c.kid), err))
		return false;
	c.wrapped_len = (uint16) wrapped_len;
	c.version = CMK_CONTROL_VERSION;
	c.generation = 1;
	c.system_identifier = GetSystemIdentifier();
	c.created_at = c.wrapped_at = (int64) time(NULL);
	strlcpy(c.key_uri, cmk_key_uri, sizeof(c.key_uri));

	/* WAL first: standbys and PITR get the same file; redo repairs a crash. */
	cmk_wal_log_control(&c);
	if (!cmk_control_create(&c, err))
		return false;
	cmk_guard_note_dir_created();

	/*
	 * The marker names the new DEK before any tuple is encrypted under it.
	 * If it cannot be written, the next attempt finds the control file and
	 * writes the marker before using the key.
	 */
	if (!cmk_guard_write_marker(&c, err))
		return false;

	ctl = c;
	have_ctl = true;
	cmk_audit("create", "success", actor, ctl.kid,
			  mode == CMK_GUARD_FORCE ?
			  "created a new data encryption key, wrapped with %s, although data may be encrypted under an earlier one (forced)" :
			  "created a new data encryption key, wrapped with %s",
			  cmk_wrap_alg_name(ctl.wrap_alg));
	return true;
}

/*
 * Unwrap the recorded DEK into the scratch area and prove it is the right
 * one.  Used at start-up and for every re-validation.
 */
static bool
unwrap_dek(CmkError *err)
{
	const CmkKeyProvider *provider = cmk_find_provider(unwrap_uri(), err);
	uint8	   *dek = cmk_key_store_scratch();
	uint8		dek_id[CMK_DEK_ID_LEN];
	size_t		dek_len = 0;
	uint64		sysid = GetSystemIdentifier();

	if (provider == NULL)
		return false;
	if (ctl.system_identifier != sysid)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileForeign",
					  "Restore this cluster's own $PGDATA/cmk_storage directory. The file was left untouched.",
					  "cmk_storage control file belongs to another cluster");
		cmk_error_detail(err, "The file names database system identifier %llu; this cluster's is %llu.",
						 (unsigned long long) ctl.system_identifier,
						 (unsigned long long) sysid);
		return false;
	}
	if (!provider->unwrap(unwrap_uri(), ctl.kid, ctl.wrap_alg,
						  ctl.wrapped, ctl.wrapped_len, dek, &dek_len, err))
		return false;
	if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(dek, dek_id) ||
		!cmk_ct_equal(dek_id, ctl.dek_id, CMK_DEK_ID_LEN))
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "DekIdentifierMismatch",
					  "Configure the key that wrapped this cluster's data encryption key. The control file was left untouched.",
					  "the unwrapped data encryption key does not match the control file's DEK identifier");
		return false;
	}
	return true;
}

static void
make_unavailable(const CmkError *err, bool log_it)
{
	CmkKeyStatus before;

	cmk_key_store_status(&before);
	cmk_key_store_unavailable(CMK_KEY_UNAVAILABLE, err, have_ctl ? &ctl : NULL);
	key_live = false;
	/* Log each distinct reason once, not on every retry. */
	if (log_it && (before.state != CMK_KEY_UNAVAILABLE || strcmp(before.reason, err->message) != 0))
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: data encryption key unavailable: %s", err->message),
				 err->detail[0] ? errdetail("%s", err->detail) : 0,
				 err->hint[0] ? errhint("%s", err->hint) : 0));
}

/* Read (or re-read) the control file; first start creates it. */
static bool
load_control(CmkError *err, bool *created)
{
	CmkControl	c;
	CmkControlStatus cs;

	*created = false;
	cs = cmk_control_read(&c, err);
	have_ctl = false;
	if (cs == CMK_CONTROL_PRESENT)
	{
		if (!cmk_guard_dir_usable(err) || !cmk_guard_check_marker(&c, err))
			return false;
		ctl = c;
		have_ctl = true;
		return true;
	}
	if (cs == CMK_CONTROL_ABSENT)
	{
		*created = true;
		return create_dek(err, CMK_GUARD_AUTOMATIC, NULL);
	}
	return false;
}

/* Make the DEK in scratch, checked against ctl, the live key. */
static void
publish_key(void)
{
	CmkError	err;

	cmk_key_store_publish(&ctl, cmk_find_provider(unwrap_uri(), &err)->name);
	cmk_key_store_note_check(true, &ctl);
	key_live = true;
	cmk_epochs_key_available();
}

/* Start-up (and retry until it works): control file, unwrap, publish. */
static bool
start_key(void)
{
	CmkError	err;
	CmkKeyStatus st;
	bool		created;

	memset(&err, 0, sizeof(err));

	/*
	 * With cluster encryption the postmaster unwrapped and published the key
	 * before recovery (key_early.c).  That key is live: re-validate it as a
	 * periodic check does, so that a transient vault fault now is absorbed
	 * by the grace period instead of revoking the key the server just
	 * started with.
	 */
	cmk_key_store_status(&st);
	if (!key_live && st.state == CMK_KEY_AVAILABLE)
	{
		char		msg[CMK_ERR_MSG];

		key_live = true;
		if (!check_key(NULL, msg, sizeof(msg)))
			return false;
		cmk_audit("unwrap", "success", NULL, ctl.kid, "data encryption key unwrapped");
		return true;
	}

	seen_epoch = cmk_key_store_control_epoch();
	if (!load_control(&err, &created) || (!created && !unwrap_dek(&err)))
	{
		cmk_audit_error(created ? "create" : "unwrap", NULL, have_ctl ? ctl.kid : NULL, &err);
		cmk_key_store_note_check(false, have_ctl ? &ctl : NULL);
		make_unavailable(&err, true);
		return false;
	}
	if (!created)
		cmk_audit("unwrap", "success", NULL, ctl.kid, "data encryption key unwrapped");
	publish_key();
	return true;
}

/*
 * cmk_storage.create_key(): a DEK for a data directory that has no
 * cmk_storage directory, past the evidence that made start-up refuse.
 * Without force, only cmk_heap relations still refuse; with force nothing
 * does.  Never replaces a key directory that exists, however damaged.
 */
static bool
create_on_request(bool force, const char *actor, char *msg, size_t msgsize)
{
	CmkError	err;
	struct stat st;
	char		hex[2 * CMK_DEK_ID_LEN + 1];

	memset(&err, 0, sizeof(err));
	cmk_audit("request", "success", actor, NULL, "data encryption key creation requested%s",
			  force ? " (forced)" : "");
	if (have_ctl || stat(CMK_CONTROL_DIR, &st) == 0 || errno != ENOENT)
	{
		snprintf(msg, msgsize, "this cluster already has a key directory, $PGDATA/cmk_storage: restore its control file if it is damaged, or re-wrap its key with rotate_key()");
		return false;
	}
	if (!create_dek(&err, force ? CMK_GUARD_FORCE : CMK_GUARD_NO_RELATIONS, actor))
	{
		cmk_audit_error("create", actor, NULL, &err);
		make_unavailable(&err, true);
		snprintf(msg, msgsize, "%s", err.message);
		return false;
	}
	publish_key();
	cmk_hex(ctl.dek_id, CMK_DEK_ID_LEN, hex);
	snprintf(msg, msgsize, "created data encryption key %s", hex);
	return true;
}

/*
 * Re-wrap the live DEK with the KEK named by new_uri (its current version),
 * WAL-log the new control file, then install it.  The old KEK version keeps
 * working for unwrap until the new file is durable.
 */
static bool
rewrap(const char *new_uri, const char *actor, char *msg, size_t msgsize)
{
	const CmkKeyProvider *provider;
	CmkError	err;
	CmkControl	c = ctl;
	size_t		wrapped_len = 0;
	bool		ok;

	memset(&err, 0, sizeof(err));
	if (RecoveryInProgress())
	{
		snprintf(msg, msgsize, "cannot re-wrap the data encryption key during recovery or on a standby");
		return false;
	}
	if (!have_ctl || !cmk_key_store_dek_to_scratch())
	{
		snprintf(msg, msgsize, "the data encryption key is not available");
		return false;
	}
	/* generation 0 is invalid (docs/control-file.md): never wrap to it */
	if (ctl.generation == PG_UINT32_MAX)
	{
		OPENSSL_cleanse(cmk_key_store_scratch(), CMK_DEK_LEN);
		snprintf(msg, msgsize, "the control file's generation counter is exhausted");
		return false;
	}
	provider = cmk_find_provider(new_uri, &err);
	c.wrap_alg = (CmkWrapAlg) cmk_wrap_algorithm;
	ok = provider != NULL &&
		provider->wrap(new_uri, c.wrap_alg, cmk_key_store_scratch(), CMK_DEK_LEN,
					   c.wrapped, &wrapped_len, c.kid, sizeof(c.kid), &err);
	OPENSSL_cleanse(cmk_key_store_scratch(), CMK_DEK_LEN);
	if (!ok)
	{
		cmk_audit_error("rotate", actor, c.kid, &err);
		snprintf(msg, msgsize, "%s", err.message);
		return false;
	}
	c.wrapped_len = (uint16) wrapped_len;
	c.generation = ctl.generation + 1;
	c.wrapped_at = (int64) time(NULL);
	strlcpy(c.key_uri, new_uri, sizeof(c.key_uri));

	cmk_wal_log_control(&c);
	crash_point(1);
	if (!cmk_control_write_tmp(&c, &err))
	{
		snprintf(msg, msgsize, "%s", err.message);
		cmk_audit_error("rotate", actor, c.kid, &err);
		return false;
	}
	crash_point(2);
	if (!cmk_control_install_tmp(&err))
	{
		snprintf(msg, msgsize, "%s", err.message);
		cmk_audit_error("rotate", actor, c.kid, &err);
		return false;
	}
	crash_point(3);

	cmk_audit("rotate", "success", actor, c.kid,
			  "data encryption key re-wrapped (generation %u, previously %s)",
			  c.generation, ctl.kid);
	snprintf(msg, msgsize, "re-wrapped with %s (generation %u)", c.kid, c.generation);
	ctl = c;
	seen_epoch = cmk_key_store_control_epoch();
	cmk_key_store_note_check(true, &ctl);
	return true;
}

/*
 * Re-validate: unwrap again with the KEK (the only proof that the vault
 * still lets us).  Definitive failures wipe the key now; transient ones
 * after the grace period.  A newer KEK (another key_uri, or a new version
 * behind a versionless URI) is adopted by re-wrapping when allowed.
 */
static bool
check_key(const char *actor, char *msg, size_t msgsize)
{
	CmkError	err;
	CmkKeyStatus st;
	bool		created;

	memset(&err, 0, sizeof(err));
	cmk_key_store_status(&st);

	/* The control file changed under us (redo on a standby). */
	if (seen_epoch != cmk_key_store_control_epoch() || !have_ctl)
	{
		seen_epoch = cmk_key_store_control_epoch();
		if (!load_control(&err, &created))
		{
			cmk_audit_error("check", actor, NULL, &err);
			make_unavailable(&err, true);
			snprintf(msg, msgsize, "%s", err.message);
			return false;
		}
	}

	if (!unwrap_dek(&err))
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		in_grace = err.kind == CMK_ERR_TRANSIENT && key_live &&
			!TimestampDifferenceExceeds(st.last_ok_at, now, cmk_key_grace_period_s * 1000);

		OPENSSL_cleanse(cmk_key_store_scratch(), CMK_DEK_LEN);
		cmk_key_store_note_check(false, &ctl);
		if (in_grace)
		{
			if (st.checks_failed == 0 || actor)
				cmk_audit_error("check", actor, ctl.kid, &err);
			snprintf(msg, msgsize, "transient failure, key kept for the grace period: %s", err.message);
			return false;
		}
		if (key_live || st.state != CMK_KEY_UNAVAILABLE || actor)
			cmk_audit_error(key_live ? "revoke" : "check", actor, ctl.kid, &err);
		if (key_live && err.kind == CMK_ERR_TRANSIENT)
			strlcat(err.message, " (grace period expired)", sizeof(err.message));
		make_unavailable(&err, true);
		snprintf(msg, msgsize, "%s", err.message);
		return false;
	}

	if (!key_live)
	{
		cmk_key_store_publish(&ctl, cmk_find_provider(unwrap_uri(), &err)->name);
		key_live = true;
		cmk_epochs_key_available();
		cmk_audit("recover", "success", actor, ctl.kid,
				  "the key encryption key is usable again; encrypted data is available");
	}
	else
	{
		OPENSSL_cleanse(cmk_key_store_scratch(), CMK_DEK_LEN);
		if (actor)
			cmk_audit("check", "success", actor, ctl.kid, "key encryption key re-validated");
	}
	cmk_key_store_note_check(true, &ctl);
	snprintf(msg, msgsize, "key available");

	/*
	 * Adopt a newer KEK without a restart: a changed cmk_storage.key_uri, or
	 * a newer enabled version behind the (versionless) URI now in use.
	 */
	if (cmk_auto_rewrap && !RecoveryInProgress() && cmk_key_uri[0])
	{
		const CmkKeyProvider *p = cmk_find_provider(ctl.key_uri, &err);
		CmkKekInfo info;
		char		rmsg[CMK_ERR_MSG];

		if (strcmp(cmk_key_uri, adopted_uri) != 0)
		{
			if (strcmp(cmk_key_uri, ctl.key_uri) != 0)
				(void) rewrap(cmk_key_uri, actor, rmsg, sizeof(rmsg));
			strlcpy(adopted_uri, cmk_key_uri, sizeof(adopted_uri));
		}
		else if (p && p->describe(ctl.key_uri, &info, &err) &&
				 strcmp(info.kid, ctl.kid) != 0 && info.enabled)
			(void) rewrap(ctl.key_uri, actor, rmsg, sizeof(rmsg));
	}
	return true;
}

static void
serve_request(void)
{
	CmkRequestKind kind;
	char		uri[CMK_CONTROL_TEXT_MAX + 1];
	char		actor[NAMEDATALEN];
	char		msg[CMK_ERR_MSG];
	bool		ok = false;

	if (!cmk_key_take_request(&kind, uri, sizeof(uri), actor, sizeof(actor)))
		return;
	msg[0] = '\0';
	if (kind == CMK_REQ_CHECK)
		ok = check_key(actor, msg, sizeof(msg));
	else if (kind == CMK_REQ_ROTATE)
	{
		cmk_audit("request", "success", actor, have_ctl ? ctl.kid : NULL,
				  "re-wrap requested with %s", uri[0] ? uri : cmk_key_uri);
		ok = rewrap(uri[0] ? uri : cmk_key_uri, actor, msg, sizeof(msg));
	}
	else if (kind == CMK_REQ_CREATE || kind == CMK_REQ_CREATE_FORCE)
		ok = create_on_request(kind == CMK_REQ_CREATE_FORCE, actor, msg, sizeof(msg));
	cmk_key_finish_request(ok, msg);
}

void
cmk_key_worker_main(Datum main_arg)
{
	int			retry_ms = RETRY_MIN_MS;
	TimestampTz next_check;
	bool		gate_closed;
	char		msg[CMK_ERR_MSG];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (!cmk_key_store_exists())
		proc_exit(0);
	cmk_key_store_set_worker_latch();

	if (!cmk_crypto_selftest(log_selftest, NULL))
	{
		CmkError	err;

		cmk_error_set(&err, CMK_ERR_INTERNAL, "SelfTestFailed",
					  "Check the OpenSSL installation; see SELECT * FROM cmk_storage.self_test().",
					  "the cryptographic self-test failed");
		cmk_key_store_unavailable(CMK_KEY_UNAVAILABLE, &err, NULL);
		ereport(WARNING, (errmsg("cmk_storage: %s", err.message), errhint("%s", err.hint)));
		for (;;)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			if (ShutdownRequestPending)
				proc_exit(0);
		}
	}

	if (cmk_key_uri[0] == '\0')
		cmk_key_store_unavailable(CMK_KEY_NOT_CONFIGURED, NULL, NULL);
	else
		(void) start_key();
	gate_closed = cmk_gate_tick();
	next_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											 key_live ? cmk_key_check_interval_s * 1000 : retry_ms);

	for (;;)
	{
		long		timeout;
		TimestampTz now = GetCurrentTimestamp();

		timeout = TimestampDifferenceMilliseconds(now, next_check);
		/* While revoked, end sessions that slipped in (key_gate.c). */
		if (gate_closed)
			timeout = Min(timeout, CMK_GATE_SWEEP_MS);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (cmk_key_uri[0] == '\0' && !have_ctl)
		{
			cmk_key_store_unavailable(CMK_KEY_NOT_CONFIGURED, NULL, NULL);
			next_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), RETRY_MAX_MS);
			continue;
		}

		serve_request();

		if (GetCurrentTimestamp() >= next_check ||
			seen_epoch != cmk_key_store_control_epoch())
		{
			bool		ok = key_live || have_ctl ? check_key(NULL, msg, sizeof(msg)) : start_key();

			if (ok)
				retry_ms = RETRY_MIN_MS;
			else if (!key_live)
				retry_ms = Min(retry_ms * 2, RETRY_MAX_MS);
			next_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 key_live ? cmk_key_check_interval_s * 1000 :
													 Min(retry_ms, cmk_key_check_interval_s * 1000));
		}
		gate_closed = cmk_gate_tick();
	}
	proc_exit(0);
}
