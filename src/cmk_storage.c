/*-------------------------------------------------------------------------
 *
 * cmk_storage.c
 *		Module entry point: settings, key memory and the key worker.
 *
 * cmk_storage must be loaded through shared_preload_libraries: the key
 * memory is mapped by the postmaster so that every process inherits it, and
 * the key worker is registered here.  Loaded any other way, the module still
 * defines its settings but encrypted data stays unavailable.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "am/cmkam.h"
#include "cmk_storage.h"
#include "keys/key_provider.h"
#include "keys/key_store.h"

PG_MODULE_MAGIC;

char	   *cmk_key_uri = NULL;
int			cmk_wrap_algorithm = CMK_WRAP_RSA_OAEP_256;
int			cmk_key_wait_timeout_ms = 30000;

static const struct config_enum_entry wrap_algorithm_options[] = {
	{"RSA-OAEP-256", CMK_WRAP_RSA_OAEP_256, false},
	{"rsa-oaep-256", CMK_WRAP_RSA_OAEP_256, true},
	{"RSA-OAEP", CMK_WRAP_RSA_OAEP, false},
	{"rsa-oaep", CMK_WRAP_RSA_OAEP, true},
	{NULL, 0, false}
};

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomStringVariable("cmk_storage.key_uri",
							   "Key encryption key (KEK) that wraps the data encryption key.",
							   "file:///absolute/path/kek.pem for a local RSA key, "
							   "https://<vault>.vault.azure.net/keys/<name>[/<version>] for Azure Key Vault.",
							   &cmk_key_uri,
							   "",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("cmk_storage.wrap_algorithm",
							 "RSA padding used when wrapping a new data encryption key.",
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

	MarkGUCPrefixReserved("cmk_storage");

	cmk_publication_guard_init();

	if (!process_shared_preload_libraries_in_progress)
		return;

	cmk_key_store_create();
	cmk_key_worker_register();
}
