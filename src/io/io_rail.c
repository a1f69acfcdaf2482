/*-------------------------------------------------------------------------
 *
 * io_rail.c
 *		The safety rail: refuse to start cluster encryption on anything but
 *		the server binary and process it was built for.
 *
 * The layer sees only the file calls the executable imports through its
 * GOT.  A binary that moves file bytes through any other entry point (a
 * vectored read, copy_file_range, io_uring, an address-taken read) would
 * read or write pages the layer never sees: plaintext next to ciphertext,
 * or ciphertext handed to the server as data.  So before anything is
 * swapped, the set of file-I/O functions the executable imports must be
 * exactly the set this module was written against (PostgreSQL 15 on
 * Linux), every one we wrap must have its JUMP_SLOT, and none may be
 * referenced otherwise.  Newer majors add preadv (17), AIO and
 * copy_file_range (18): each becomes a clear FATAL here, never silent
 * plaintext.
 *
 * Runs at start-up only, in the postmaster; every refusal is a FATAL that
 * names the cause and what to do.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/guc.h"

#include "io/io_int.h"

/*
 * Every libc entry point through which a process can open a file, move a
 * file's bytes, or make a second descriptor for a file.
 */
static const char *const watched[] = {
	"open", "open64", "openat", "openat64", "creat", "creat64",
	"__open_2", "__open64_2", "__openat_2", "__openat64_2",
	"close", "close_range", "closefrom",
	"read", "__read_chk", "readv", "pread", "pread64", "__pread_chk",
	"__pread64_chk", "preadv", "preadv64", "preadv2", "preadv64v2",
	"write", "writev", "pwrite", "pwrite64", "pwritev", "pwritev64",
	"pwritev2", "pwritev64v2", "ftruncate",
	"copy_file_range", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
	"mmap", "mmap64", "dup", "dup2", "dup3", "fdopen",
	"aio_read", "aio_read64", "aio_write", "aio_write64", "lio_listio",
	"lio_listio64", "io_submit", "io_uring_setup", "io_uring_enter", "syscall",
};

/*
 * Imported by PostgreSQL 15's executable, never on a file the layer
 * transforms: mmap maps anonymous or POSIX shared memory (and, in
 * pg_flush_data's fallback when sync_file_range is missing, maps a file
 * read-only only to msync it, never reading it); dup and dup2 duplicate
 * stderr and the syslogger pipe.
 */
static const char *const tolerated[] = {"mmap", "dup", "dup2"};

static bool
in_list(const char *name, const char *const *list, int n)
{
	for (int i = 0; i < n; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

/*
 * Only the process that forks every other server process interposes: the
 * postmaster (or a single-user backend, which is the whole server).  Not a
 * backend that loads the module later, not anything exec'd.
 */
bool
cmk_rail_check_process(void)
{
	if (process_shared_preload_libraries_in_progress && !IsUnderPostmaster)
		return true;
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cmk_storage: cluster encryption is on but not active in this process"),
			 errdetail("The I/O layer is started only by the postmaster, from shared_preload_libraries."),
			 errhint("Add cmk_storage to shared_preload_libraries and restart the server.")));
	return false;
}

static int
server_setting_int(const char *name)
{
	const char *v = GetConfigOption(name, true, false);

	return v ? atoi(v) : -1;
}

/* The running server's major version and page geometry are ours. */
void
cmk_rail_check_build(void)
{
	int			server_major = server_setting_int("server_version_num") / 10000;

	if (server_major != PG_VERSION_NUM / 10000)
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: cluster encryption was built for PostgreSQL %d, this server is %d",
						PG_VERSION_NUM / 10000, server_major),
				 errhint("Install the cmk_storage build for this server's major version.")));
	if (server_setting_int("block_size") != BLCKSZ ||
		server_setting_int("wal_block_size") != XLOG_BLCKSZ ||
		server_setting_int("segment_size") != RELSEG_SIZE)
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: cluster encryption needs block_size %d, wal_block_size %d and segment_size %d blocks",
						BLCKSZ, XLOG_BLCKSZ, RELSEG_SIZE),
				 errhint("Use a server built with the default page and segment sizes.")));
}

/*
 * The executable imports exactly the watched functions we wrap plus the
 * tolerated ones, each wrapped one through a JUMP_SLOT only.
 */
void
cmk_rail_check_binary(const char *const *wrapped, int nwrapped)
{
	CmkGotSlot	slots[lengthof(watched)];
	char		why[256];

	for (int i = 0; i < (int) lengthof(watched); i++)
		slots[i].name = watched[i];
	if (!cmk_got_scan(slots, lengthof(watched), why, sizeof(why)))
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: cluster encryption cannot inspect the server executable: %s", why),
				 errhint("Set cmk_storage.cluster_encryption = off, or use the PostgreSQL 15 server package cmk_storage supports.")));

	for (int i = 0; i < (int) lengthof(watched); i++)
	{
		bool		imported = slots[i].slot != NULL || slots[i].other_reloc;
		bool		is_wrapped = in_list(watched[i], wrapped, nwrapped);
		bool		is_tolerated = in_list(watched[i], tolerated, lengthof(tolerated));

		if (is_wrapped && (slots[i].slot == NULL || slots[i].other_reloc))
			ereport(FATAL,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_storage: cluster encryption cannot redirect \"%s\" in this server executable", watched[i]),
					 errdetail(slots[i].slot == NULL ?
							   "The executable does not call it through a procedure linkage table entry." :
							   "The executable also takes its address, so some calls would bypass encryption."),
					 errhint("Set cmk_storage.cluster_encryption = off, or use the PostgreSQL 15 server package cmk_storage supports.")));
		if (imported && !is_wrapped && !is_tolerated)
			ereport(FATAL,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_storage: this server executable moves file data through \"%s\", which cluster encryption does not cover", watched[i]),
					 errdetail("Pages written that way would bypass encryption."),
					 errhint("Set cmk_storage.cluster_encryption = off, or use the PostgreSQL 15 server package cmk_storage supports.")));
	}
}

/*
 * stdio: every libc entry point through which the executable can get a FILE
 * on a file by its name, and fileno.  The layer redirects fopen and fileno
 * (io_stdio.c), so that a stream on an encrypted temporary-kind file reads
 * and writes through the layer; a stream got any other way would read
 * ciphertext or write plaintext there.  freopen is tolerated: PostgreSQL 15
 * uses it only to point stdout and stderr at the -r output file (elog.c).
 * A FILE on a descriptor (fdopen) is watched above.
 */
static const char *const watched_stdio[] = {
	"fopen", "fopen64", "freopen", "freopen64", "fileno", "fileno_unlocked",
};
static const char *const tolerated_stdio[] = {"freopen"};

void
cmk_rail_check_stdio(const char *const *wrapped, int nwrapped)
{
	CmkGotSlot	slots[lengthof(watched_stdio)];
	char		why[256];

	for (int i = 0; i < (int) lengthof(watched_stdio); i++)
		slots[i].name = watched_stdio[i];
	if (!cmk_got_scan(slots, lengthof(watched_stdio), why, sizeof(why)))
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: the I/O layer cannot inspect the server executable: %s", why),
				 errhint("Set cmk_storage.cluster_encryption and cmk_storage.temp_file_encryption to off, or use the PostgreSQL 15 server package cmk_storage supports.")));

	for (int i = 0; i < (int) lengthof(watched_stdio); i++)
	{
		bool		imported = slots[i].slot != NULL || slots[i].other_reloc;
		bool		is_wrapped = in_list(watched_stdio[i], wrapped, nwrapped);
		bool		is_tolerated = in_list(watched_stdio[i], tolerated_stdio,
										   lengthof(tolerated_stdio));

		if (is_wrapped && (slots[i].slot == NULL || slots[i].other_reloc))
			ereport(FATAL,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_storage: the I/O layer cannot redirect \"%s\" in this server executable", watched_stdio[i]),
					 errdetail(slots[i].slot == NULL ?
							   "The executable does not call it through a procedure linkage table entry." :
							   "The executable also takes its address, so some stdio streams would bypass encryption."),
					 errhint("Set cmk_storage.cluster_encryption and cmk_storage.temp_file_encryption to off, or use the PostgreSQL 15 server package cmk_storage supports.")));
		if (imported && !is_wrapped && !is_tolerated)
			ereport(FATAL,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cmk_storage: this server executable opens stdio streams through \"%s\", which the I/O layer does not cover", watched_stdio[i]),
					 errdetail("Encrypted temporary files read or written that way would be read as ciphertext or written in clear."),
					 errhint("Set cmk_storage.cluster_encryption and cmk_storage.temp_file_encryption to off, or use the PostgreSQL 15 server package cmk_storage supports.")));
	}
}
