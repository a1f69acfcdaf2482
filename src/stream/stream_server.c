/*-------------------------------------------------------------------------
 *
 * stream_server.c
 *		Settings and key access shared by the archive module and the
 *		base-backup target.
 *
 * Streams are encrypted with a per-file key derived from the purpose subkey
 * that the key worker placed in the key store, and their header carries the
 * wrapped DEK exactly as the control file holds it, so that a restore needs
 * nothing but the KEK.  No vault call is ever made here: if the key store
 * has no key, archiving and backups fail (and are retried) with the key
 * worker's reason.  Subkeys are copied to the caller's stack only for the
 * moment it takes to derive a stream key; callers wipe them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/crypto.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/control_file.h"
#include "keys/key_store.h"
#include "stream/stream_server.h"

char	   *cmk_archive_directory = NULL;

static bool
check_archive_directory(char **newval, void **extra, GucSource source)
{
	/* Empty is the default; the archive module then refuses to archive. */
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (!is_absolute_path(*newval))
	{
		GUC_check_errdetail("The archive directory must be an absolute path.");
		return false;
	}
	/* Room for "/" + a temporary name built from a 64-byte WAL file name. */
	if (strlen(*newval) + 128 >= MAXPGPATH)
	{
		GUC_check_errdetail("The archive directory path is too long.");
		return false;
	}
	return true;
}

void
cmk_stream_register(void)
{
	DefineCustomStringVariable("cmk_storage.archive_directory",
							   "Directory where archive_library = 'cmk_storage' stores encrypted WAL files.",
							   "An absolute path.  Files keep their WAL file names; restore them with "
							   "restore_command = '<bindir>/cmk_restore wal --dek-id ... --archive-directory ... %f %p' (cmk_restore is installed next to the server's programs; see docs/streams-runbook.md).",
							   &cmk_archive_directory,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_archive_directory, NULL, NULL);

	cmk_backup_target_register();
}

/*
 * Run the stream known-answer and tamper tests once per process before the
 * first stream is written: an archive that cannot be read back is worse
 * than no archive, because it is only discovered at restore time.
 */
void
cmk_stream_server_selftest(void)
{
	static bool passed = false;

	if (passed)
		return;
	if (!cmk_stream_selftest(NULL, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: the stream encryption self-test failed"),
				 errdetail("Nothing was encrypted."),
				 errhint("Run \"cmk_restore selftest\" to see which test fails, and check the OpenSSL installation.")));
	passed = true;
}

/*
 * Fill everything of a header that comes from the cluster: the wrapped DEK,
 * its key id and DEK id, the system identifier, the chunk size.  The caller
 * sets the name and, for backups, the set id.
 */
void
cmk_stream_server_header(CmkStreamPurpose purpose, CmkStreamHeader *hdr)
{
	CmkControl	ctl;
	CmkError	err;
	CmkControlStatus cs;

	if (!cmk_key_store_exists())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage must be loaded through shared_preload_libraries to encrypt %s",
						purpose == CMK_STREAM_WAL ? "archived WAL" : "base backups"),
				 errhint("Add cmk_storage to shared_preload_libraries and restart the server.")));

	memset(&err, 0, sizeof(err));
	cs = cmk_control_read(&ctl, &err);
	if (cs == CMK_CONTROL_ABSENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage has no data encryption key yet: \"%s\" does not exist",
						CMK_CONTROL_FILE),
				 errhint("Set cmk_storage.key_uri; the key worker creates the key at the first start.")));
	if (cs != CMK_CONTROL_PRESENT)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("cmk_storage: %s", err.message),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 err.hint[0] ? errhint("%s", err.hint) : 0));

	memset(hdr, 0, sizeof(*hdr));
	hdr->purpose = (uint8) purpose;
	hdr->chunk_size = CMK_STREAM_DEFAULT_CHUNK;
	hdr->system_identifier = ctl.system_identifier;
	memcpy(hdr->dek_id, ctl.dek_id, CMK_STREAM_DEK_ID_LEN);
	hdr->wrap_alg = (uint16) ctl.wrap_alg;
	hdr->wrapped_len = ctl.wrapped_len;
	memcpy(hdr->wrapped, ctl.wrapped, ctl.wrapped_len);
	strlcpy(hdr->kid, ctl.kid, sizeof(hdr->kid));
}

/*
 * Copy the purpose subkey out of the key store (CMK_SUBKEY_LEN bytes),
 * waiting up to cmk_storage.key_wait_timeout while the key worker is still
 * loading.  The DEK in memory must be the one the header names, else a
 * restore would unwrap a different key.  ERRORs with the key worker's reason
 * if the key is unavailable; the caller wipes subkey.
 */
void
cmk_stream_server_subkey(CmkStreamPurpose purpose, const uint8 *dek_id, uint8 *subkey)
{
	CmkKeyPurpose kp = purpose == CMK_STREAM_WAL ? CMK_PURPOSE_ARCHIVE : CMK_PURPOSE_BACKUP;
	uint8		have_id[CMK_DEK_ID_LEN];
	TimestampTz deadline = 0;

	while (!cmk_key_store_subkey(kp, subkey, have_id))
	{
		CmkKeyStatus st;

		cmk_key_store_status(&st);
		if (st.state != CMK_KEY_LOADING)
			cmk_report_key_unavailable(NULL);
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   cmk_key_wait_timeout_ms);
		else if (GetCurrentTimestamp() >= deadline)
			cmk_report_key_unavailable(NULL);
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
	if (memcmp(have_id, dek_id, CMK_DEK_ID_LEN) != 0)
	{
		OPENSSL_cleanse(subkey, CMK_SUBKEY_LEN);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: the data encryption key in memory is not the one in \"%s\"",
						CMK_CONTROL_FILE),
				 errhint("A key change is in progress; the operation can be retried once it completes.")));
	}
}
