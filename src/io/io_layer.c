/*-------------------------------------------------------------------------
 *
 * io_layer.c
 *		Start cluster encryption in the postmaster: checks, key, ciphers,
 *		tables, and the redirection of the executable's file calls.
 *
 * Order matters.  Everything that can refuse (the process, the build, the
 * binary's imports, the key) is checked before anything is changed, so a
 * refusal leaves a server that has written nothing.  The key is published
 * and the XTS contexts are built here, before any child exists: every
 * process inherits them, and no wrapper ever needs to set up a cipher.
 *
 * With cmk_storage.cluster_encryption off nothing here runs and no call is
 * redirected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "access/xlog.h"
#include "miscadmin.h"

#include "cmk_storage.h"
#include "io/io_int.h"
#include "io/io_layer.h"
#include "keys/key_store.h"

static bool active = false;

bool
cmk_io_active(void)
{
	return active;
}

static void
build_ciphers(void)
{
	uint8		key[CMK_XTS_KEY_LEN];
	bool		ok;

	ok = cmk_key_store_derive(CMK_IO_REL_LABEL, key, sizeof(key));
	if (ok)
		cmk_relpage_init(key, DataChecksumsEnabled());
	ok = ok && cmk_key_store_derive(CMK_IO_WAL_LABEL, key, sizeof(key));
	if (ok)
		cmk_walpage_init(key);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not derive the cluster encryption keys")));
}

void
cmk_io_start(void)
{
	CmkError	err;

	if (!cmk_cluster_encryption || !cmk_rail_check_process())
		return;
	cmk_rail_check_build();
	cmk_wrappers_check();

	if (!cmk_key_early_publish(&err))
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: cluster encryption needs the data encryption key before recovery: %s",
						err.message),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 err.hint[0] ? errhint("%s", err.hint) : 0));
	build_ciphers();

	cmk_classify_set_datadir(DataDir);
	cmk_fdtable_create();
	cmk_wrappers_create();
	cmk_wrappers_install();
	active = true;
	ereport(LOG,
			(errmsg("cmk_storage: cluster encryption is on: relation and WAL pages are encrypted")));
}
