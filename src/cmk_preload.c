/*-------------------------------------------------------------------------
 *
 * cmk_preload.c
 *		Refuse CREATE EXTENSION cmk_storage when the library was not loaded
 *		through shared_preload_libraries.
 *
 * Without shared_preload_libraries there is no key memory, no key worker
 * and no WAL resource manager, so no key can ever become available: the
 * extension would install, and every encrypted table would then fail with
 * a key error far from the real cause.  Citus propagates CREATE EXTENSION
 * to every worker, so a misconfigured node would only be noticed later.
 * The extension script therefore calls cmk_require_preload() first, and
 * it fails with the fix in the hint.
 *
 * This file must never do more than check: it runs in whatever backend
 * happens to load the library, preloaded or not.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "cmk_storage.h"

PG_FUNCTION_INFO_V1(cmk_require_preload);

/*
 * True when _PG_init ran while the postmaster (or a single-user backend)
 * processed shared_preload_libraries; every child inherits it.
 */
static bool cmk_loaded_at_preload = false;

/* From _PG_init: remember how the library was loaded. */
void
cmk_note_load(void)
{
	if (process_shared_preload_libraries_in_progress)
		cmk_loaded_at_preload = true;
}

/*
 * cmk_require_preload() -- error unless the library was preloaded.
 * Called by the extension script before it creates anything.
 */
Datum
cmk_require_preload(PG_FUNCTION_ARGS)
{
	if (!cmk_loaded_at_preload)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage must be loaded via shared_preload_libraries"),
				 errdetail("Without it the server cannot hold the data encryption key, so encrypted data would stay unavailable."),
				 errhint("Add cmk_storage to shared_preload_libraries in postgresql.conf, set cmk_storage.key_uri, restart the server, and run CREATE EXTENSION again.")));
	PG_RETURN_VOID();
}
