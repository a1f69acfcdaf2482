/*-------------------------------------------------------------------------
 *
 * stream_backup.c
 *		Base-backup target: pg_basebackup --target=cmk:/server/dir writes
 *		every archive of the backup, and its manifest, encrypted.
 *
 * The target sits where PostgreSQL 15 puts targets, after compression and
 * throttling (basebackup.c: progress -> [compression] -> [throttle] ->
 * target -> copystream), so with server-side compression it encrypts the
 * compressed tar.  Each archive becomes "<archive name>.cmk" in the
 * directory, one stream (docs/stream-format.md) whose header names the
 * archive and carries the backup id, so that archives cannot be swapped
 * between backups.  Files are written under ".tmp" names, fsynced and
 * renamed.  Last comes "backup_end.cmk", an encrypted list of every archive
 * (name, size, salt) with the backup's start and end WAL positions: a backup
 * without it is incomplete, and cmk_restore refuses it.
 *
 * Runs in a WAL sender.  No vault call: the key comes from the key store.
 * Like the built-in "server" target it requires pg_write_server_files and an
 * absolute path to a directory that does not exist or is empty.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/wait_event.h"

#include "stream/basebackup_abi.h"
#include "stream/stream_server.h"

#define CMK_TARGET_NAME		"cmk"
#define CMK_SUFFIX			".cmk"
#define CMK_END_NAME		"backup_end"

/* One finished archive, for the end marker. */
typedef struct BackupFile
{
	char	   *name;
	uint64		bytes;
	uint8		salt[CMK_STREAM_SALT_LEN];
} BackupFile;

typedef struct bbsink_cmk
{
	bbsink		base;

	char	   *directory;
	CmkStreamHeader template;	/* wrapped DEK and cluster fields */
	uint8		backup_id[CMK_STREAM_SET_ID_LEN];
	CmkStream  *stream;			/* malloc'd; freed in cleanup */

	File		file;			/* open temp file, or 0 */
	off_t		filepos;
	int			save_errno;
	char		temp_path[MAXPGPATH];
	char		final_path[MAXPGPATH];

	List	   *done;			/* BackupFile *, in order written */
} bbsink_cmk;

static void *cmk_check_detail(char *target, char *target_detail);
static bbsink *cmk_get_sink(bbsink *next_sink, void *detail_arg);

static void bbsink_cmk_begin_archive(bbsink *sink, const char *archive_name);
static void bbsink_cmk_archive_contents(bbsink *sink, size_t len);
static void bbsink_cmk_end_archive(bbsink *sink);
static void bbsink_cmk_begin_manifest(bbsink *sink);
static void bbsink_cmk_manifest_contents(bbsink *sink, size_t len);
static void bbsink_cmk_end_manifest(bbsink *sink);
static void bbsink_cmk_end_backup(bbsink *sink, XLogRecPtr endptr, TimeLineID endtli);
static void bbsink_cmk_cleanup(bbsink *sink);

static const bbsink_ops bbsink_cmk_ops = {
	.begin_backup = bbsink_forward_begin_backup,
	.begin_archive = bbsink_cmk_begin_archive,
	.archive_contents = bbsink_cmk_archive_contents,
	.end_archive = bbsink_cmk_end_archive,
	.begin_manifest = bbsink_cmk_begin_manifest,
	.manifest_contents = bbsink_cmk_manifest_contents,
	.end_manifest = bbsink_cmk_end_manifest,
	.end_backup = bbsink_cmk_end_backup,
	.cleanup = bbsink_cmk_cleanup,
};

void
cmk_backup_target_register(void)
{
	BaseBackupAddTarget(CMK_TARGET_NAME, cmk_check_detail, cmk_get_sink);
}

static void *
cmk_check_detail(char *target, char *target_detail)
{
	if (target_detail == NULL || target_detail[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the cmk backup target requires a directory"),
				 errhint("Use pg_basebackup --target=cmk:/absolute/path/on/the/server -X fetch.")));
	return target_detail;
}

static bbsink *
cmk_get_sink(bbsink *next_sink, void *detail_arg)
{
	bbsink_cmk *sink;
	char	   *dir = detail_arg;
	uint8		subkey[CMK_SUBKEY_LEN];

	/* Replication permission is not enough to write files on the server. */
	StartTransactionCommand();
	if (!has_privs_of_role(GetUserId(), ROLE_PG_WRITE_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be superuser or a role with privileges of the pg_write_server_files role to create an encrypted backup on the server")));
	CommitTransactionCommand();

	/* A backup inside the directory being backed up is always a mistake. */
	if (!is_absolute_path(dir))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("relative path not allowed for an encrypted backup stored on the server")));
	if (strlen(dir) + CMK_STREAM_MAX_NAME + 16 >= MAXPGPATH)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("backup directory path is too long")));

	/* Fail before any file is created if the key cannot be had. */
	cmk_stream_server_selftest();
	sink = palloc0(sizeof(bbsink_cmk));
	*((const bbsink_ops **) &sink->base.bbs_ops) = &bbsink_cmk_ops;
	sink->base.bbs_next = next_sink;
	sink->directory = pstrdup(dir);
	cmk_stream_server_header(CMK_STREAM_BACKUP, &sink->template);
	cmk_stream_server_subkey(CMK_STREAM_BACKUP, sink->template.dek_id, subkey);
	OPENSSL_cleanse(subkey, sizeof(subkey));
	if (!cmk_random_bytes(sink->backup_id, sizeof(sink->backup_id)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random backup id")));

	switch (pg_check_dir(dir))
	{
		case 0:
			if (MakePGDirectory(dir) < 0)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not create directory \"%s\": %m", dir)));
			break;
		case 1:
			break;
		case 2:
		case 3:
		case 4:
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_FILE),
					 errmsg("directory \"%s\" exists but is not empty", dir)));
			break;
		default:
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not access directory \"%s\": %m", dir)));
	}

	sink->stream = cmk_stream_create();
	if (sink->stream == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	return &sink->base;
}

/* ---------------------------------------------------------------------- */

static bool
write_file(void *arg, const uint8_t *data, size_t len)
{
	bbsink_cmk *sink = arg;

	while (len > 0)
	{
		int			chunk = (int) Min(len, (size_t) 1 << 30);
		int			n;

		errno = 0;
		n = FileWrite(sink->file, (char *) data, chunk, sink->filepos,
					  WAIT_EVENT_BASEBACKUP_WRITE);
		if (n <= 0)
		{
			sink->save_errno = errno ? errno : ENOSPC;
			return false;
		}
		sink->filepos += n;
		data += n;
		len -= n;
	}
	return true;
}

static void
check_stream(bbsink_cmk *sink, CmkStreamStatus st)
{
	if (st == CMK_STREAM_OK)
		return;
	if (st == CMK_STREAM_ERR_WRITE)
	{
		errno = sink->save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", sink->temp_path),
				 errhint("Check free disk space.")));
	}
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("could not encrypt into \"%s\": %s", sink->temp_path,
					cmk_stream_errmsg(sink->stream))));
}

static void
open_stream(bbsink_cmk *sink, const char *name)
{
	CmkStreamHeader hdr;
	uint8		subkey[CMK_SUBKEY_LEN];
	CmkStreamStatus st;

	Assert(sink->file == 0);
	if (strlen(name) > CMK_STREAM_MAX_NAME)
		ereport(ERROR,
				(errmsg("backup archive name \"%s\" is too long", name)));
	snprintf(sink->final_path, MAXPGPATH, "%s/%s%s", sink->directory, name, CMK_SUFFIX);
	snprintf(sink->temp_path, MAXPGPATH, "%s.tmp", sink->final_path);

	sink->file = PathNameOpenFile(sink->temp_path,
								  O_CREAT | O_EXCL | O_WRONLY | PG_BINARY);
	if (sink->file <= 0)
	{
		sink->file = 0;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", sink->temp_path)));
	}
	sink->filepos = 0;

	hdr = sink->template;
	strlcpy(hdr.name, name, sizeof(hdr.name));
	memcpy(hdr.set_id, sink->backup_id, sizeof(hdr.set_id));
	cmk_stream_server_subkey(CMK_STREAM_BACKUP, hdr.dek_id, subkey);
	st = cmk_stream_encrypt_begin(sink->stream, &hdr, subkey, write_file, sink);
	OPENSSL_cleanse(subkey, sizeof(subkey));
	check_stream(sink, st);
}

/* Finish the stream, make it durable, and remember it for the end marker. */
static void
close_stream(bbsink_cmk *sink, bool remember)
{
	check_stream(sink, cmk_stream_finish(sink->stream));

	/*
	 * Not data_sync_elevel(): a failed backup must not PANIC the server;
	 * the backup just fails (as in basebackup_server.c).
	 */
	if (FileSync(sink->file, WAIT_EVENT_BASEBACKUP_SYNC) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", sink->temp_path)));
	FileClose(sink->file);
	sink->file = 0;
	(void) durable_rename(sink->temp_path, sink->final_path, ERROR);

	if (remember)
	{
		const CmkStreamHeader *hdr = cmk_stream_header(sink->stream);
		BackupFile *f = palloc(sizeof(BackupFile));

		f->name = pstrdup(hdr->name);
		f->bytes = cmk_stream_plain_bytes(sink->stream);
		memcpy(f->salt, hdr->salt, sizeof(f->salt));
		sink->done = lappend(sink->done, f);
	}
}

static void
bbsink_cmk_begin_archive(bbsink *sink, const char *archive_name)
{
	open_stream((bbsink_cmk *) sink, archive_name);
	bbsink_forward_begin_archive(sink, archive_name);
}

static void
bbsink_cmk_archive_contents(bbsink *sink, size_t len)
{
	bbsink_cmk *mysink = (bbsink_cmk *) sink;

	check_stream(mysink, cmk_stream_update(mysink->stream, sink->bbs_buffer, len));
	/* The next sink (copystream, not sending) only reports progress. */
	bbsink_forward_archive_contents(sink, len);
}

static void
bbsink_cmk_end_archive(bbsink *sink)
{
	close_stream((bbsink_cmk *) sink, true);
	bbsink_forward_end_archive(sink);
}

static void
bbsink_cmk_begin_manifest(bbsink *sink)
{
	open_stream((bbsink_cmk *) sink, "backup_manifest");
	bbsink_forward_begin_manifest(sink);
}

static void
bbsink_cmk_manifest_contents(bbsink *sink, size_t len)
{
	bbsink_cmk *mysink = (bbsink_cmk *) sink;

	check_stream(mysink, cmk_stream_update(mysink->stream, sink->bbs_buffer, len));
	bbsink_forward_manifest_contents(sink, len);
}

static void
bbsink_cmk_end_manifest(bbsink *sink)
{
	close_stream((bbsink_cmk *) sink, true);
	bbsink_forward_end_manifest(sink);
}

/*
 * Write backup_end.cmk: the only proof that the backup is complete, and the
 * list that ties its archives together (docs/stream-format.md).
 */
static void
bbsink_cmk_end_backup(bbsink *sink, XLogRecPtr endptr, TimeLineID endtli)
{
	bbsink_cmk *mysink = (bbsink_cmk *) sink;
	bbsink_state *state = sink->bbs_state;
	StringInfoData buf;
	char		hex[2 * CMK_STREAM_SALT_LEN + 1];
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "cmk_storage base backup 1\n");
	cmk_hex(mysink->backup_id, sizeof(mysink->backup_id), hex);
	appendStringInfo(&buf, "backup_id %s\n", hex);
	appendStringInfo(&buf, "system_identifier " UINT64_FORMAT "\n",
					 mysink->template.system_identifier);
	appendStringInfo(&buf, "start_lsn %X/%X\n", LSN_FORMAT_ARGS(state->startptr));
	appendStringInfo(&buf, "start_tli %u\n", state->starttli);
	appendStringInfo(&buf, "end_lsn %X/%X\n", LSN_FORMAT_ARGS(endptr));
	appendStringInfo(&buf, "end_tli %u\n", endtli);
	foreach(lc, mysink->done)
	{
		BackupFile *f = lfirst(lc);

		cmk_hex(f->salt, sizeof(f->salt), hex);
		appendStringInfo(&buf, "file " UINT64_FORMAT " %s %s\n", f->bytes, hex, f->name);
	}
	appendStringInfoString(&buf, "end\n");

	open_stream(mysink, CMK_END_NAME);
	check_stream(mysink, cmk_stream_update(mysink->stream, buf.data, buf.len));
	close_stream(mysink, false);
	pfree(buf.data);
	if (fsync_fname_ext(mysink->directory, true, false, ERROR) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync directory \"%s\": %m", mysink->directory)));

	/*
	 * Restoring needs the DEK identifier as a trust anchor from outside the
	 * backup (a forger with the public KEK controls everything inside it),
	 * so hand it to the operator now, on pg_basebackup's terminal and in the
	 * server log, rather than only in a view of a server that may be gone.
	 */
	{
		char		dek[2 * CMK_STREAM_DEK_ID_LEN + 1];
		char		id[2 * CMK_STREAM_SET_ID_LEN + 1];

		cmk_hex(mysink->template.dek_id, CMK_STREAM_DEK_ID_LEN, dek);
		cmk_hex(mysink->backup_id, sizeof(mysink->backup_id), id);
		ereport(NOTICE,
				(errmsg("encrypted base backup %s written to \"%s\" under data encryption key %s",
						id, mysink->directory, dek),
				 errhint("Restoring it needs \"cmk_restore backup --dek-id %s\": record this identifier "
						 "where whoever can write the backups cannot change it.", dek)));
		ereport(LOG,
				(errmsg("cmk_storage: encrypted base backup %s written to \"%s\" under data encryption key %s",
						id, mysink->directory, dek)));
	}

	bbsink_forward_end_backup(sink, endptr, endtli);
}

/* After success or error: nothing half-written stays under a final name. */
static void
bbsink_cmk_cleanup(bbsink *sink)
{
	bbsink_cmk *mysink = (bbsink_cmk *) sink;

	if (mysink->file > 0)
	{
		FileClose(mysink->file);
		mysink->file = 0;
		(void) unlink(mysink->temp_path);
	}
	if (mysink->stream)
	{
		cmk_stream_destroy(mysink->stream);
		mysink->stream = NULL;
	}
	bbsink_forward_cleanup(sink);
}
