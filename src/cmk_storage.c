/*-------------------------------------------------------------------------
 *
 * cmk_storage.c
 *		Module entry point: settings, shared memory, the WAL resource
 *		manager, the key worker and the utility hook.
 *
 * cmk_storage must be loaded through shared_preload_libraries: the key
 * memory is mapped by the postmaster so that every process inherits it,
 * and the key worker and the resource manager are registered here.  Loaded
 * any other way, the module still defines its settings (but the
 * postmaster-only one) while encrypted data stays unavailable, and CREATE
 * EXTENSION refuses (cmk_preload.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "am/cmkam.h"
#include "cmk_storage.h"
#include "io/io_layer.h"
#include "io/io_sweep.h"
#include "keys/key_audit.h"
#include "keys/key_gate.h"
#include "keys/key_guard.h"
#include "keys/key_provider.h"
#include "keys/key_store.h"
#include "keys/key_wal.h"
#include "keys/nonce_epochs.h"
#include "stream/stream_server.h"

PG_MODULE_MAGIC;

char	   *cmk_key_uri = NULL;
int			cmk_wrap_algorithm = CMK_WRAP_RSA_OAEP_256;
int			cmk_key_wait_timeout_ms = 30000;
int			cmk_key_check_interval_s = 60;
int			cmk_key_grace_period_s = 600;
bool		cmk_auto_rewrap = true;
bool		cmk_cluster_encryption = false;
bool		cmk_temp_file_encryption = false;
bool		cmk_cluster_encryption_read_ahead = true;
int			cmk_debug_rotation_crash = 0;

/* Azure Key Vault provider settings: provider_azure.c reads them by name. */
static char *cmk_azure_client_id = NULL;
static char *cmk_azure_object_id = NULL;
static char *cmk_azure_msi_res_id = NULL;
static char *cmk_azure_token_endpoint = NULL;
static char *cmk_azure_api_version = NULL;
static char *cmk_ca_file = NULL;
static int	cmk_azure_connect_timeout_ms = 5000;
static int	cmk_azure_request_timeout_ms = 10000;
static int	cmk_azure_retry_timeout_ms = 20000;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry wrap_algorithm_options[] = {
	{"RSA-OAEP-256", CMK_WRAP_RSA_OAEP_256, false},
	{"rsa-oaep-256", CMK_WRAP_RSA_OAEP_256, true},
	{"RSA-OAEP", CMK_WRAP_RSA_OAEP, false},
	{"rsa-oaep", CMK_WRAP_RSA_OAEP, true},
	{NULL, 0, false}
};

void		_PG_init(void);

static void
cmk_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(cmk_audit_shmem_size());
	RequestAddinShmemSpace(cmk_guard_shmem_size());
	cmk_epochs_shmem_request();
	RequestAddinShmemSpace(cmk_sweep_shmem_size());
}

static void
cmk_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cmk_audit_shmem_init();
	cmk_guard_shmem_init();
	cmk_epochs_shmem_init();
	cmk_sweep_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

static void
define_settings(void)
{
	DefineCustomStringVariable("cmk_storage.key_uri",
							   "Key encryption key (KEK) that wraps the data encryption key.",
							   "file:///absolute/path/kek.pem for a local RSA key, "
							   "https://<vault>.vault.azure.net/keys/<name>[/<version>] for Azure Key Vault. "
							   "Changing it (and reloading) re-wraps the data encryption key with the new key.",
							   &cmk_key_uri,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("cmk_storage.wrap_algorithm",
							 "RSA padding used when wrapping the data encryption key.",
							 "Unwrapping always uses the algorithm recorded in the control file.",
							 &cmk_wrap_algorithm,
							 CMK_WRAP_RSA_OAEP_256,
							 wrap_algorithm_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.key_wait_timeout",
							"How long a session waits for the key worker to load the key at start-up.",
							NULL,
							&cmk_key_wait_timeout_ms,
							30000, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.key_check_interval",
							"How often the key worker re-validates the key encryption key.",
							"A revoked key makes encrypted data unavailable within one interval.",
							&cmk_key_check_interval_s,
							60, 1, 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.key_grace_period",
							"How long the key stays usable while the key vault cannot be reached.",
							"Only transient failures (network, throttling, server errors) get a grace period; a denial takes effect at once.",
							&cmk_key_grace_period_s,
							600, 0, 7 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("cmk_storage.auto_rewrap",
							 "Re-wrap the data encryption key when a newer key encryption key appears.",
							 "A newer version behind a versionless key URI, or a changed cmk_storage.key_uri.",
							 &cmk_auto_rewrap,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	/*
	 * PostgreSQL lets a library define PGC_POSTMASTER settings (these two) only while
	 * shared_preload_libraries is processed; later it ends the session with
	 * FATAL, which would hide the clear error CREATE EXTENSION gives when the
	 * library is not preloaded (cmk_preload.c).  Loaded late, the I/O layer
	 * is not there anyway.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomBoolVariable("cmk_storage.cluster_encryption",
								 "Encrypt every relation page and every WAL page of the cluster on disk.",
								 "Needs cmk_storage in shared_preload_libraries and the cluster's data encryption key at start-up (docs/io-layer.md).",
								 &cmk_cluster_encryption,
								 false,
								 PGC_POSTMASTER,
								 0,
								 NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
		DefineCustomBoolVariable("cmk_storage.temp_file_encryption",
								 "Encrypt temporary files, logical decoding spill files and the NOTIFY queue on disk.",
								 "Needs cmk_storage in shared_preload_libraries; always on when cmk_storage.cluster_encryption is on (docs/io-layer.md).",
								 &cmk_temp_file_encryption,
								 false,
								 PGC_POSTMASTER,
								 0,
								 NULL, NULL, NULL);

	DefineCustomBoolVariable("cmk_storage.cluster_encryption_read_ahead",
							 "Read consecutive relation pages up to 16 at a time with cluster encryption on.",
							 "Saves a system call per page of sequential scans; it only changes speed (docs/io-layer.md, \"Read-ahead\").",
							 &cmk_cluster_encryption_read_ahead,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.debug_rotation_crash",
							"Testing only: kill the key worker at a step of a re-wrap (1-3).",
							NULL,
							&cmk_debug_rotation_crash,
							0, 0, 3,
							PGC_SIGHUP,
							GUC_NOT_IN_SAMPLE | GUC_SUPERUSER_ONLY,
							NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.azure_client_id",
							   "Client id of the user-assigned managed identity that reads the Azure Key Vault key.",
							   "Set at most one of azure_client_id, azure_object_id and azure_msi_res_id; "
							   "with none, the platform's only (or system-assigned) identity is used.",
							   &cmk_azure_client_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.azure_object_id",
							   "Object (principal) id of the user-assigned managed identity, instead of its client id.",
							   NULL,
							   &cmk_azure_object_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.azure_msi_res_id",
							   "Azure resource id of the user-assigned managed identity, instead of its client id.",
							   NULL,
							   &cmk_azure_msi_res_id,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.azure_token_endpoint",
							   "Managed-identity token endpoint URL; empty for IMDS (or IDENTITY_ENDPOINT on App Service).",
							   "For tests and emulators.",
							   &cmk_azure_token_endpoint,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.azure_api_version",
							   "Azure Key Vault REST API version.",
							   NULL,
							   &cmk_azure_api_version,
							   "7.4",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cmk_storage.ca_file",
							   "PEM file of extra certificate authorities trusted for the key vault.",
							   "Empty: the system's trust store.  TLS verification cannot be turned off.",
							   &cmk_ca_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.azure_connect_timeout",
							"Connection timeout for Azure Key Vault and the managed-identity endpoint.",
							NULL,
							&cmk_azure_connect_timeout_ms,
							5000, 100, 60000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.azure_request_timeout",
							"Time limit of one HTTP request to Azure Key Vault or the managed-identity endpoint.",
							NULL,
							&cmk_azure_request_timeout_ms,
							10000, 100, 300000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.azure_retry_timeout",
							"Time limit of one key operation, retries (throttling, server errors, timeouts) included.",
							"The key worker also serves SQL requests, so keep it short; failed checks are retried at the next interval.",
							&cmk_azure_retry_timeout_ms,
							20000, 1000, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	cmk_stream_register();
	cmk_sweep_define_settings();

	MarkGUCPrefixReserved("cmk_storage");
}

void
_PG_init(void)
{
	cmk_note_load();
	define_settings();
	cmk_publication_guard_init();
	cmk_decode_init();

	if (!process_shared_preload_libraries_in_progress)
		return;

	cmk_key_store_create();
	/* Before any child exists: the startup process may need the key. */
	cmk_io_start();
	if (cmk_io_active())
	{
		cmk_sweep_register();
		cmk_gate_install();
	}
	cmk_key_worker_register();
	cmk_wal_register();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cmk_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cmk_shmem_startup;
}
