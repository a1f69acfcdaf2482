/*-------------------------------------------------------------------------
 *
 * stream_archive.c
 *		Archive module: archive_library = 'cmk_storage' encrypts every WAL
 *		segment, timeline history file and backup history file into
 *		cmk_storage.archive_directory.
 *
 * Each file is encrypted as one stream (docs/stream-format.md) under its own
 * WAL file name, written to a temporary name, fsynced, renamed into place
 * with the directory fsynced (durable_rename), and only then reported
 * archived.  If the destination already exists (the server crashed after
 * archiving but before marking the file done, or an operator re-queued it),
 * the existing archive is decrypted and compared with the file: identical
 * plaintext is success, anything else (different contents, another key,
 * damage) fails loudly and keeps failing until an operator looks.  The
 * comparison decrypts rather than storing a plaintext digest in the header,
 * so the archive reveals nothing about equal or guessable contents (history
 * files are short and predictable).
 *
 * This runs in the archiver, which has no catalog access and sits at the
 * bottom of the exception stack: ERRORs are caught here (as in
 * contrib/basic_archive) and turned into "not archived, retry later".  It
 * never calls the key vault; the key comes from the key store.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "miscadmin.h"
#include "postmaster/pgarch.h"
#include "storage/fd.h"
#include "utils/memutils.h"

#include "stream/cmk_fd_sink.h"
#include "stream/stream_server.h"

PGDLLEXPORT void _PG_archive_module_init(ArchiveModuleCallbacks *cb);

#define READ_BUFFER		(1024 * 1024)

static MemoryContext archive_context = NULL;
static CmkStream *archive_stream = NULL;	/* malloc'd, lives with the process */
static char *read_buffer = NULL;
static char *compare_buffer = NULL;
static char temp_path[MAXPGPATH];	/* to remove after a failure */

static bool cmk_archive_configured(void);
static bool cmk_archive_file(const char *file, const char *path);
static void cmk_archive_shutdown(void);

void
_PG_archive_module_init(ArchiveModuleCallbacks *cb)
{
	AssertVariableIsOfType(&_PG_archive_module_init, ArchiveModuleInit);

	cb->check_configured_cb = cmk_archive_configured;
	cb->archive_file_cb = cmk_archive_file;
	cb->shutdown_cb = cmk_archive_shutdown;
}

static bool
cmk_archive_configured(void)
{
	if (cmk_archive_directory == NULL || cmk_archive_directory[0] == '\0')
	{
		ereport(WARNING,
				(errmsg("cmk_storage.archive_directory is not set"),
				 errhint("Set cmk_storage.archive_directory to an absolute path when archive_library is cmk_storage.")));
		return false;
	}
	return true;
}

static void
cmk_archive_shutdown(void)
{
	if (archive_stream)
		cmk_stream_destroy(archive_stream);
	archive_stream = NULL;
}

/* ---------------------------------------------------------------------- */

static void
report_stream_error(const char *what, const char *path, CmkStreamStatus st,
					int save_errno)
{
	if (st == CMK_STREAM_ERR_WRITE)
	{
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", path)));
	}
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("could not %s \"%s\": %s", what, path,
					cmk_stream_errmsg(archive_stream))));
}

/* Comparison of an existing archive with the file to archive. */
typedef struct CompareArg
{
	const char *file;
	const char *path;
	int			fd;				/* the file to archive */
	const CmkStreamHeader *mine;	/* header we would write */
	bool		differs;
	const char *why;
} CompareArg;

static CmkStreamStatus
compare_key(void *arg, const CmkStreamHeader *hdr, uint8_t *subkey)
{
	CompareArg *c = arg;

	if (hdr->purpose != CMK_STREAM_WAL || strcmp(hdr->name, c->file) != 0)
	{
		c->why = "it holds a different file";
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (memcmp(hdr->dek_id, c->mine->dek_id, CMK_STREAM_DEK_ID_LEN) != 0 ||
		hdr->system_identifier != c->mine->system_identifier)
	{
		c->why = "it was written by another cluster or with another data encryption key";
		return CMK_STREAM_ERR_MISMATCH;
	}
	cmk_stream_server_subkey(CMK_STREAM_WAL, hdr->dek_id, subkey);
	return CMK_STREAM_OK;
}

static bool
compare_write(void *arg, const uint8_t *data, size_t len)
{
	CompareArg *c = arg;

	while (len > 0)
	{
		size_t		n = Min(len, READ_BUFFER);
		ssize_t		got = read(c->fd, compare_buffer, n);

		if (got < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", c->path)));
		if ((size_t) got != n || memcmp(compare_buffer, data, n) != 0)
		{
			c->differs = true;
			return false;
		}
		data += n;
		len -= n;
	}
	return true;
}

/*
 * The destination exists: is it this very file, encrypted?  Returns quietly
 * if so; ERRORs otherwise.
 */
static void
check_existing(const char *file, const char *path, const char *destination,
			   const CmkStreamHeader *mine)
{
	CompareArg	c = {file, path, -1, mine, false, NULL};
	int			fd;
	CmkStreamStatus st = CMK_STREAM_OK;

	c.fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (c.fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	fd = OpenTransientFile(destination, O_RDONLY | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", destination)));

	cmk_stream_decrypt_begin(archive_stream, compare_key, &c, compare_write, &c);
	for (;;)
	{
		ssize_t		n = read(fd, read_buffer, READ_BUFFER);

		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", destination)));
		if (n == 0)
		{
			st = cmk_stream_finish(archive_stream);
			break;
		}
		st = cmk_stream_update(archive_stream, read_buffer, n);
		if (st != CMK_STREAM_OK)
			break;
	}
	/* Identical so far: the file to archive must end here too. */
	if (st == CMK_STREAM_OK && read(c.fd, compare_buffer, 1) != 0)
		c.differs = true;
	CloseTransientFile(fd);
	CloseTransientFile(c.fd);

	if (st == CMK_STREAM_OK && !c.differs)
		return;
	cmk_stream_abort(archive_stream);
	if (c.differs)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_FILE),
				 errmsg("archive file \"%s\" already exists with different contents",
						destination),
				 errdetail("WAL file \"%s\" was archived before with other contents; it is not overwritten.",
						   file),
				 errhint("Check whether another cluster archives into the same directory, or whether this server was restored without cleaning up its archive.")));
	ereport(ERROR,
			(errcode(ERRCODE_DUPLICATE_FILE),
			 errmsg("archive file \"%s\" already exists and cannot be verified: %s",
					destination, c.why ? c.why : cmk_stream_errmsg(archive_stream)),
			 errhint("Check whether another cluster archives into the same directory; the existing file is not overwritten.")));
}

static void
archive_file_internal(const char *file, const char *path)
{
	char		destination[MAXPGPATH];
	struct stat st;
	struct timeval tv;
	CmkStreamHeader hdr;
	uint8		subkey[CMK_SUBKEY_LEN];
	CmkFdSink	sink = {-1, 0};
	CmkStreamStatus rc;
	int			in;

	cmk_stream_server_selftest();
	if (archive_stream == NULL)
	{
		archive_stream = cmk_stream_create();
		if (archive_stream == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	if (read_buffer == NULL)
		read_buffer = MemoryContextAlloc(TopMemoryContext, READ_BUFFER);
	if (compare_buffer == NULL)
		compare_buffer = MemoryContextAlloc(TopMemoryContext, READ_BUFFER);

	if (strlen(file) > CMK_STREAM_MAX_NAME)
		ereport(ERROR,
				(errmsg("WAL file name \"%s\" is too long", file)));
	snprintf(destination, MAXPGPATH, "%s/%s", cmk_archive_directory, file);

	/* Header fields from the control file; fails early if there is no key. */
	cmk_stream_server_header(CMK_STREAM_WAL, &hdr);
	strlcpy(hdr.name, file, sizeof(hdr.name));

	if (stat(destination, &st) == 0)
	{
		check_existing(file, path, destination, &hdr);
		ereport(DEBUG1,
				(errmsg("archive file \"%s\" already exists with identical contents",
						destination)));
		/* It may have been renamed but not yet made durable before a crash. */
		fsync_fname_ext(destination, false, false, ERROR);
		fsync_fname_ext(cmk_archive_directory, true, false, ERROR);
		return;
	}
	else if (errno != ENOENT)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", destination)));

	/* A name no other archiver (or crashed predecessor) would pick. */
	gettimeofday(&tv, NULL);
	snprintf(temp_path, sizeof(temp_path), "%s/archtemp.%s.%d.%ld%06ld",
			 cmk_archive_directory, file, MyProcPid, (long) tv.tv_sec, (long) tv.tv_usec);

	in = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (in < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	sink.fd = OpenTransientFile(temp_path, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY);
	if (sink.fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", temp_path)));

	cmk_stream_server_subkey(CMK_STREAM_WAL, hdr.dek_id, subkey);
	rc = cmk_stream_encrypt_begin(archive_stream, &hdr, subkey, cmk_fd_sink_write, &sink);
	OPENSSL_cleanse(subkey, sizeof(subkey));
	if (rc != CMK_STREAM_OK)
		report_stream_error("encrypt into", temp_path, rc, sink.save_errno);

	for (;;)
	{
		ssize_t		n = read(in, read_buffer, READ_BUFFER);

		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (n == 0)
			break;
		rc = cmk_stream_update(archive_stream, read_buffer, n);
		if (rc != CMK_STREAM_OK)
			report_stream_error("encrypt into", temp_path, rc, sink.save_errno);
	}
	rc = cmk_stream_finish(archive_stream);
	if (rc != CMK_STREAM_OK)
		report_stream_error("encrypt into", temp_path, rc, sink.save_errno);
	CloseTransientFile(in);

	/* Durable before success is reported: file, rename, directory. */
	if (pg_fsync(sink.fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", temp_path)));
	if (CloseTransientFile(sink.fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", temp_path)));
	(void) durable_rename(temp_path, destination, ERROR);
	temp_path[0] = '\0';

	ereport(DEBUG1,
			(errmsg("archived \"%s\" encrypted into \"%s\"", file, destination)));
}

static bool
cmk_archive_file(const char *file, const char *path)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext oldcontext;

	if (archive_context == NULL)
		archive_context = AllocSetContextCreate(TopMemoryContext,
												"cmk_storage archive",
												ALLOCSET_DEFAULT_SIZES);
	oldcontext = MemoryContextSwitchTo(archive_context);
	temp_path[0] = '\0';

	/*
	 * The archiver has no exception handler of its own in PostgreSQL 15: an
	 * ERROR would become FATAL and restart it.  Catch it, report it, clean
	 * up, and tell the archiver to retry the file later.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		EmitErrorReport();
		FlushErrorState();

		if (archive_stream)
			cmk_stream_abort(archive_stream);
		AtEOSubXact_Files(false, InvalidSubTransactionId, InvalidSubTransactionId);
		if (temp_path[0] != '\0')
			(void) unlink(temp_path);
		temp_path[0] = '\0';

		MemoryContextSwitchTo(oldcontext);
		MemoryContextReset(archive_context);
		PG_exception_stack = NULL;
		RESUME_INTERRUPTS();
		return false;
	}
	PG_exception_stack = &local_sigjmp_buf;

	archive_file_internal(file, path);

	PG_exception_stack = NULL;
	MemoryContextSwitchTo(oldcontext);
	MemoryContextReset(archive_context);
	return true;
}
