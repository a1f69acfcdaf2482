/*-------------------------------------------------------------------------
 *
 * key_early.c
 *		The DEK in the postmaster, before the startup process runs: what
 *		cluster encryption needs for crash recovery and standby replay.
 *
 * With cmk_storage.cluster_encryption on, every relation and WAL page the
 * startup process reads may be ciphertext, so the key cannot wait for the
 * key worker.  The postmaster reads the control file, unwraps the DEK with
 * the provider (synchronously, retrying transient failures until
 * cmk_storage.key_wait_timeout), checks it against the control file's DEK
 * identifier and this cluster's system identifier, and publishes it into
 * the locked key page (key_store.c) that every child inherits.  The key
 * worker starts later as usual, unwraps again and takes over custody.
 *
 * This file never creates a DEK and never writes the control file: a
 * cluster gets its key from the key worker (docs/io-layer.md, "Turning it
 * on").  It reports through CmkError; the caller decides that the server
 * does not start.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/control_file.h"
#include "keys/key_store.h"

/*
 * Unwrap and publish the DEK.  False with err filled if the server must
 * not start.  Postmaster (or single-user backend), from _PG_init.
 */
bool
cmk_key_early_publish(CmkError *err)
{
	const CmkKeyProvider *provider;
	CmkControl	ctl;
	CmkControlStatus cs;
	uint8	   *dek;
	uint8		dek_id[CMK_DEK_ID_LEN];
	size_t		dek_len = 0;
	TimestampTz deadline;
	long		backoff_ms = 500;
	CmkKeyStatus st;

	memset(err, 0, sizeof(*err));
	if (!cmk_key_store_exists())
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Add cmk_storage to shared_preload_libraries and restart the server.",
					  "cmk_storage is not loaded through shared_preload_libraries");
		return false;
	}
	if (cmk_key_uri == NULL || cmk_key_uri[0] == '\0')
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Set cmk_storage.key_uri to the key that wraps this cluster's data encryption key.",
					  "cluster encryption needs a key, and cmk_storage.key_uri is not set");
		return false;
	}

	cs = cmk_control_read(&ctl, err);
	if (cs == CMK_CONTROL_ABSENT)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Start the server once with cmk_storage.cluster_encryption = off so that the key worker creates the key (cmk_storage.status shows \"available\"), then turn cluster encryption on. If this cluster had a key, restore its $PGDATA/cmk_storage directory.",
					  "cluster encryption is on, but this cluster has no data encryption key yet ($PGDATA/%s is missing)",
					  CMK_CONTROL_DIR);
		return false;
	}
	if (cs != CMK_CONTROL_PRESENT)
		return false;
	if (ctl.system_identifier != GetSystemIdentifier())
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileForeign",
					  "Restore this cluster's own $PGDATA/cmk_storage directory.",
					  "cmk_storage control file belongs to another cluster");
		cmk_error_detail(err, "The file names database system identifier %llu; this cluster's is %llu.",
						 (unsigned long long) ctl.system_identifier,
						 (unsigned long long) GetSystemIdentifier());
		return false;
	}

	provider = cmk_find_provider(ctl.key_uri[0] ? ctl.key_uri : cmk_key_uri, err);
	if (provider == NULL)
		return false;

	dek = cmk_key_store_scratch();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   cmk_key_wait_timeout_ms);
	for (;;)
	{
		memset(err, 0, sizeof(*err));
		if (provider->unwrap(ctl.key_uri[0] ? ctl.key_uri : cmk_key_uri,
							 ctl.kid, ctl.wrap_alg, ctl.wrapped, ctl.wrapped_len,
							 dek, &dek_len, err))
			break;
		if (err->kind != CMK_ERR_TRANSIENT ||
			GetCurrentTimestamp() + backoff_ms * 1000 >= deadline)
			return false;
		ereport(LOG,
				(errmsg("cmk_storage: could not unwrap the data encryption key yet, retrying in %ld ms: %s",
						backoff_ms, err->message)));
		pg_usleep(backoff_ms * 1000L);
		backoff_ms = Min(backoff_ms * 2, 10000);
	}
	if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(dek, dek_id) ||
		!cmk_ct_equal(dek_id, ctl.dek_id, CMK_DEK_ID_LEN))
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "DekIdentifierMismatch",
					  "Configure the key that wrapped this cluster's data encryption key. The control file was left untouched.",
					  "the unwrapped data encryption key does not match the control file's DEK identifier");
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		return false;
	}

	/* publish() moves the DEK into the locked page and wipes scratch */
	cmk_key_store_publish(&ctl, provider->name);
	cmk_key_store_status(&st);
	if (st.state != CMK_KEY_AVAILABLE)
	{
		cmk_error_set(err, st.err_kind ? st.err_kind : CMK_ERR_INTERNAL, NULL,
					  st.hint, "%s", st.reason[0] ? st.reason : "the key could not be published");
		return false;
	}
	return true;
}
