/*-------------------------------------------------------------------------
 *
 * key_worker.c
 *		The background worker that owns all KEK traffic: it self-tests the
 *		crypto, creates the DEK on a cluster's first start, unwraps it on
 *		later starts and publishes it in the key store.
 *
 * Failure policy (docs/design.md, "Start-up"): the server always starts.
 * Recovery never needs the DEK (WAL holds ciphertext), so a missing vault,
 * a wrong key or a damaged control file leaves the key unavailable with its
 * reason in cmk_storage.status and in every error on encrypted data; the
 * worker keeps retrying.  It never creates a DEK while a cmk_storage
 * directory exists, never on a standby, and never touches a control file it
 * could not use.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <time.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"

#include "cmk_storage.h"
#include "keys/control_file.h"
#include "keys/key_store.h"

PGDLLEXPORT void cmk_key_worker_main(Datum main_arg);

#define RETRY_MIN_MS	1000
#define RETRY_MAX_MS	60000

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

/* First start: create, wrap and durably record a new DEK. */
static bool
create_dek(const CmkKeyProvider *provider, CmkControl *ctl, CmkError *err)
{
	uint8	   *dek = cmk_key_store_scratch();
	size_t		wrapped_len = 0;

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

	memset(ctl, 0, sizeof(*ctl));
	if (!cmk_random_bytes(dek, CMK_DEK_LEN) || !cmk_dek_identifier(dek, ctl->dek_id))
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL,
					  "could not generate a data encryption key");
		return false;
	}
	ctl->wrap_alg = (CmkWrapAlg) cmk_wrap_algorithm;
	if (!provider->wrap(cmk_key_uri, ctl->wrap_alg, dek, CMK_DEK_LEN,
						ctl->wrapped, &wrapped_len, ctl->kid, sizeof(ctl->kid), err))
		return false;
	ctl->wrapped_len = (uint16) wrapped_len;
	ctl->version = CMK_CONTROL_VERSION;
	ctl->generation = 1;
	ctl->system_identifier = GetSystemIdentifier();
	ctl->created_at = ctl->wrapped_at = (int64) time(NULL);
	strlcpy(ctl->key_uri, cmk_key_uri, sizeof(ctl->key_uri));
	if (!cmk_control_create(ctl, err))
		return false;

	ereport(LOG,
			(errmsg("cmk_storage: created a new data encryption key, wrapped by key %s with %s",
					ctl->kid, cmk_wrap_alg_name(ctl->wrap_alg))));
	return true;
}

/* Later starts: unwrap the recorded DEK and prove it is the right one. */
static bool
unwrap_dek(const CmkKeyProvider *provider, CmkControl *ctl, CmkError *err)
{
	uint8	   *dek = cmk_key_store_scratch();
	uint8		dek_id[CMK_DEK_ID_LEN];
	size_t		dek_len = 0;
	uint64		sysid = GetSystemIdentifier();

	if (ctl->system_identifier != sysid)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileForeign",
					  "Restore this cluster's own $PGDATA/cmk_storage directory. The file was left untouched.",
					  "cmk_storage control file belongs to another cluster");
		cmk_error_detail(err, "The file names database system identifier %llu; this cluster's is %llu.",
						 (unsigned long long) ctl->system_identifier,
						 (unsigned long long) sysid);
		return false;
	}
	if (!provider->unwrap(cmk_key_uri, ctl->kid, ctl->wrap_alg,
						  ctl->wrapped, ctl->wrapped_len, dek, &dek_len, err))
		return false;
	if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(dek, dek_id) ||
		!cmk_ct_equal(dek_id, ctl->dek_id, CMK_DEK_ID_LEN))
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "DekIdentifierMismatch",
					  "Configure the key that wrapped this cluster's data encryption key. The control file was left untouched.",
					  "the unwrapped data encryption key does not match the control file's DEK identifier");
		return false;
	}
	ereport(LOG,
			(errmsg("cmk_storage: data encryption key unwrapped with key %s", ctl->kid)));
	return true;
}

/* One attempt; on failure err says why and the key store says unavailable. */
static bool
load_key(void)
{
	CmkControl	ctl;
	CmkError	err;
	const CmkKeyProvider *provider;
	CmkControlStatus cs = CMK_CONTROL_INVALID;
	bool		ok = false;

	memset(&err, 0, sizeof(err));
	provider = cmk_find_provider(cmk_key_uri, &err);
	if (provider != NULL)
	{
		cs = cmk_control_read(&ctl, &err);
		if (cs == CMK_CONTROL_ABSENT)
			ok = create_dek(provider, &ctl, &err);
		else if (cs == CMK_CONTROL_PRESENT)
			ok = unwrap_dek(provider, &ctl, &err);
	}

	if (ok)
	{
		cmk_key_store_publish(&ctl, provider->name);
		return true;
	}

	{
		CmkKeyStatus before;

		cmk_key_store_status(&before);
		cmk_key_store_unavailable(CMK_KEY_UNAVAILABLE, &err,
								  cs == CMK_CONTROL_PRESENT ? &ctl : NULL);
		/* Log each distinct reason once, not on every retry. */
		if (before.state != CMK_KEY_UNAVAILABLE || strcmp(before.reason, err.message) != 0)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cmk_storage: data encryption key unavailable: %s", err.message),
					 err.detail[0] ? errdetail("%s", err.detail) : 0,
					 err.hint[0] ? errhint("%s", err.hint) : 0));
	}
	return false;
}

void
cmk_key_worker_main(Datum main_arg)
{
	int			retry_ms = RETRY_MIN_MS;
	bool		loaded = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (!cmk_key_store_exists())
		proc_exit(0);

	if (!cmk_crypto_selftest(log_selftest, NULL))
	{
		CmkError	err;

		cmk_error_set(&err, CMK_ERR_INTERNAL, "SelfTestFailed",
					  "Check the OpenSSL installation; see SELECT * FROM cmk_storage.self_test().",
					  "the cryptographic self-test failed");
		cmk_key_store_unavailable(CMK_KEY_UNAVAILABLE, &err, NULL);
		ereport(WARNING, (errmsg("cmk_storage: %s", err.message), errhint("%s", err.hint)));
	}
	else if (cmk_key_uri == NULL || cmk_key_uri[0] == '\0')
		cmk_key_store_unavailable(CMK_KEY_NOT_CONFIGURED, NULL, NULL);
	else
		loaded = load_key();

	for (;;)
	{
		long		timeout = loaded ? -1 : retry_ms;

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!loaded && cmk_key_uri && cmk_key_uri[0])
		{
			loaded = load_key();
			retry_ms = loaded ? RETRY_MIN_MS : Min(retry_ms * 2, RETRY_MAX_MS);
		}
	}
	proc_exit(0);
}
