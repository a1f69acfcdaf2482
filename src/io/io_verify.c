/*-------------------------------------------------------------------------
 *
 * io_verify.c
 *		The raw check behind cluster_encryption = 'complete': read every
 *		relation file and every WAL segment as stored and find the
 *		plaintext pages.
 *
 * The module's own libc calls are not redirected (only the executable's
 * are), so pread() here returns the bytes on disk.  Files are opened with
 * OpenTransientFile so that an error closes them; the layer then records
 * the descriptor like any other, which changes nothing for our reads.
 *
 * A relation page is plaintext if it is not all zeros and lacks the marker
 * (CMK_PD_ENCRYPTED in pd_flags).  A WAL page is plaintext if it has the
 * page magic without the marker (CMK_XLP_ENCRYPTED in xlp_info), or if it
 * is neither all zeros nor a page with the magic: the layer writes no such
 * page, so it is not one the layer wrote.  Which files are relation or WAL
 * files is decided by the layer's own classifier, so the check covers
 * exactly what the layer encrypts.
 *
 * Never writes anything.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog_internal.h"
#include "common/relpath.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/bufpage.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "io/io_int.h"
#include "io/io_layer.h"
#include "io/io_sweep.h"

#define VERIFY_CHUNK_PAGES	16

static bool
page_all_zero(const char *page)
{
	const uint64 *w = (const uint64 *) page;

	for (int i = 0; i < CMK_IO_PAGE / 8; i++)
		if (w[i] != 0)
			return false;
	return true;
}

bool
cmk_raw_relpage_plain(const char *page)
{
	if ((((const PageHeaderData *) page)->pd_flags & CMK_PD_ENCRYPTED) != 0)
		return false;
	return !page_all_zero(page);
}

bool
cmk_raw_walpage_plain(const char *page)
{
	const XLogPageHeaderData *h = (const XLogPageHeaderData *) page;

	if (h->xlp_magic == XLOG_PAGE_MAGIC)
		return (h->xlp_info & CMK_XLP_ENCRYPTED) == 0;
	return !page_all_zero(page);
}

/* Visits one file: its path relative to the data directory. */
typedef void (*FileVisitor) (const char *path, CmkFileKind kind, void *arg);

/* Every relation file under dir (one level: the files of a database). */
static void
visit_dir(const char *dir, FileVisitor visit, void *arg)
{
	DIR		   *d = AllocateDir(dir);
	struct dirent *de;
	char		path[MAXPGPATH];
	CmkFileId	id;

	if (d == NULL && errno == ENOENT)
		return;					/* dropped meanwhile */
	while ((de = ReadDir(d, dir)) != NULL)
	{
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		cmk_classify(path, O_RDONLY, &id);
		if (id.kind == CMK_FILE_RELATION)
			visit(path, CMK_FILE_RELATION, arg);
	}
	FreeDir(d);
}

/* The subdirectories (databases, tablespaces) of dir. */
static List *
subdirs(const char *dir)
{
	DIR		   *d = AllocateDir(dir);
	struct dirent *de;
	List	   *out = NIL;

	if (d == NULL && errno == ENOENT)
		return NIL;
	while ((de = ReadDir(d, dir)) != NULL)
	{
		if (de->d_name[0] == '.' || strspn(de->d_name, "0123456789") != strlen(de->d_name))
			continue;
		out = lappend(out, psprintf("%s/%s", dir, de->d_name));
	}
	FreeDir(d);
	return out;
}

/* global/, base/<db>/, pg_tblspc/<ts>/PG_15_<catversion>/<db>/, pg_wal/ */
static void
visit_all(bool wal, FileVisitor visit, void *arg)
{
	ListCell   *lc;

	visit_dir("global", visit, arg);
	foreach(lc, subdirs("base"))
		visit_dir(lfirst(lc), visit, arg);
	foreach(lc, subdirs("pg_tblspc"))
	{
		char	   *tsdir = psprintf("%s/%s", (char *) lfirst(lc),
									 TABLESPACE_VERSION_DIRECTORY);
		ListCell   *lc2;

		foreach(lc2, subdirs(tsdir))
			visit_dir(lfirst(lc2), visit, arg);
	}
	if (wal)
	{
		DIR		   *d = AllocateDir(XLOGDIR);
		struct dirent *de;
		char		path[MAXPGPATH];
		CmkFileId	id;

		while ((de = ReadDir(d, XLOGDIR)) != NULL)
		{
			/* PostgreSQL's and the sweep's own temporary files come and go */
			if (strncmp(de->d_name, "xlogtemp.", 9) == 0)
				continue;
			snprintf(path, sizeof(path), XLOGDIR "/%s", de->d_name);
			cmk_classify(path, O_RDONLY, &id);
			if (id.kind == CMK_FILE_WAL)
				visit(path, CMK_FILE_WAL, arg);
		}
		FreeDir(d);
	}
}

static void
add_file_blocks(const char *path, CmkFileKind kind, void *arg)
{
	struct stat st;

	if (stat(path, &st) == 0)
		*(int64 *) arg += st.st_size / BLCKSZ;
}

/* Blocks in all relation files now: the total of a pass, for progress. */
int64
cmk_count_relation_blocks(void)
{
	int64		n = 0;

	visit_all(false, add_file_blocks, &n);
	return n;
}

typedef struct VerifyState
{
	bool		throttle;		/* a sweep worker: pace it, report progress */
	CmkPlainFileCallback cb;
	void	   *cb_arg;
	int64		plain;
	char	   *buf;
} VerifyState;

static void
check_file(const char *path, CmkFileKind kind, void *arg)
{
	VerifyState *vs = arg;
	int			fd;
	off_t		off = 0;
	int64		plain = 0;
	int64		first = -1;
	int64		pages = 0;

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return;				/* dropped or recycled meanwhile */
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	for (;;)
	{
		ssize_t		n = pread(fd, vs->buf, VERIFY_CHUNK_PAGES * BLCKSZ, off);

		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		/* a fragment of a page at the end is never a page PostgreSQL reads */
		for (int i = 0; i < n / BLCKSZ; i++)
		{
			const char *page = vs->buf + i * BLCKSZ;
			bool		p = kind == CMK_FILE_WAL ? cmk_raw_walpage_plain(page)
				: cmk_raw_relpage_plain(page);

			if (p)
			{
				if (first < 0)
					first = off / BLCKSZ + i;
				plain++;
			}
		}
		pages += n / BLCKSZ;
		off += n;
		if (vs->throttle)
			cmk_sweep_throttle(VacuumCostPageMiss * (int) (n / BLCKSZ));
		else
			CHECK_FOR_INTERRUPTS();
		if (n < VERIFY_CHUNK_PAGES * BLCKSZ)
			break;
	}
	CloseTransientFile(fd);

	if (vs->throttle && kind == CMK_FILE_RELATION)
	{
		SpinLockAcquire(&cmk_sweep->mutex);
		cmk_sweep->blocks_scanned += pages;
		cmk_sweep->updated = GetCurrentTimestamp();
		SpinLockRelease(&cmk_sweep->mutex);
	}
	if (plain > 0)
	{
		vs->plain += plain;
		if (vs->cb)
			vs->cb(path, plain, first, vs->cb_arg);
	}
}

/*
 * Read every relation file and WAL segment raw; cb (if not NULL) is called
 * for each file holding plaintext pages.  Returns their total.  With
 * throttle, paced by the sweep's cost settings and counted in its progress.
 */
int64
cmk_verify_cluster(bool throttle, CmkPlainFileCallback cb, void *arg)
{
	VerifyState vs;

	vs.throttle = throttle;
	vs.cb = cb;
	vs.cb_arg = arg;
	vs.plain = 0;
	vs.buf = palloc(VERIFY_CHUNK_PAGES * BLCKSZ);
	visit_all(true, check_file, &vs);
	pfree(vs.buf);
	return vs.plain;
}
