/*-------------------------------------------------------------------------
 *
 * io_sweep_wal.c
 *		Re-encrypt the plaintext WAL segments left in pg_wal: initdb's, those
 *		written before cluster encryption was on, and recycled segments that
 *		keep such pages under a future name.
 *
 * A segment is never modified in place.  An encrypted copy is built in a
 * temporary file (each page with the magic and without the marker encrypted
 * by the layer's own WAL page function, every other page copied as it is),
 * fsynced, and rename()d over the original: a reader that has the segment
 * open (walsender, the archiver's cp) keeps reading the old file, one that
 * opens it afterwards reads the new one, and both decrypt to the same
 * bytes.  A crash leaves either file, both valid; the temporary file is
 * named xlogtemp.* so that the next start-up removes it.
 *
 * Which segments may be replaced, checked under WALWriteLock and then
 * ControlFileLock (PostgreSQL's own order: XLogWrite takes the second
 * inside the first) right before the rename:
 *
 *	 - a segment wholly before the WAL write position (LogwrtResult.Write)
 *	   when the copy was started, or of an older timeline, or a .partial
 *	   one: PostgreSQL never writes into it again;
 *	 - a segment after the write position (a recycled one) that is still
 *	   after it: only XLogWrite opens a segment to write into it, under
 *	   WALWriteLock, when it starts writing there, and it then advances
 *	   the write position before releasing the lock; recycling and
 *	   installation of new segments (InstallXLogFileSegment) rename under
 *	   ControlFileLock.  The file's inode, size and mtime must also be
 *	   those the copy was made from.
 *
 * The segment being written is never touched.  If it holds plaintext (the
 * tail of a recycled segment), an XLOG switch makes PostgreSQL fill the
 * rest of it with (encrypted) pages, and the next round finds it complete.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "postmaster/bgwriter.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "io/io_int.h"
#include "io/io_layer.h"
#include "io/io_sweep.h"

#define SWEEP_WAL_ROUNDS	4

/* Where a segment stands relative to the WAL write position. */
typedef enum SegPlace
{
	SEG_PAST,					/* never written again */
	SEG_CURRENT,				/* being written */
	SEG_FUTURE,					/* not opened for writing yet */
} SegPlace;

static SegPlace
seg_place(const char *name, XLogRecPtr write)
{
	TimeLineID	tli;
	XLogSegNo	segno;
	XLogSegNo	cur;

	if (IsPartialXLogFileName(name))
		return SEG_PAST;
	XLogFromFileName(name, &tli, &segno, wal_segment_size);
	if (tli != GetWALInsertionTimeLine())
		return SEG_PAST;
	XLByteToSeg(write, cur, wal_segment_size);
	if (segno < cur)
		return SEG_PAST;
	if (segno == cur && XLogSegmentOffset(write, wal_segment_size) != 0)
		return SEG_CURRENT;
	return SEG_FUTURE;
}

static bool
same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
		a->st_size == b->st_size &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
		a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

typedef enum SegResult
{
	SEG_CLEAN,					/* nothing to do */
	SEG_REPLACED,
	SEG_CURRENT_PLAIN,			/* the segment being written holds plaintext */
	SEG_RACED,					/* changed meanwhile: look again next round */
} SegResult;

/*
 * Copy path to tmp, encrypting its plaintext pages.  Returns the number of
 * pages encrypted (0: nothing written, tmp not created).
 */
static int
encrypt_copy(const char *path, int fd, const char *tmp, char *in, char *out)
{
	int			tfd = -1;
	int			n_enc = 0;
	off_t		off;

	for (int pass = 0; pass < 2; pass++)
	{
		/* pass 0 only looks: most segments are already encrypted */
		for (off = 0;; off += BLCKSZ)
		{
			ssize_t		n = pread(fd, in, BLCKSZ, off);
			const char *src = in;

			if (n < 0)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not read file \"%s\": %m", path)));
			if (n == 0)
				break;
			if (n == BLCKSZ && cmk_raw_walpage_plain(in) &&
				((XLogPageHeader) in)->xlp_magic == XLOG_PAGE_MAGIC)
			{
				if (pass == 0)
				{
					n_enc++;
					break;
				}
				if (!cmk_walpage_encrypt((const uint8 *) in, (uint8 *) out))
					ereport(ERROR,
							(errcode(ERRCODE_INTERNAL_ERROR),
							 errmsg("cmk_storage: could not encrypt a page of WAL segment \"%s\"", path)));
				src = out;
				n_enc++;
			}
			if (pass == 1 && pg_pwrite(tfd, src, n, off) != n)
			{
				if (errno == 0)
					errno = ENOSPC;
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not write file \"%s\": %m", tmp)));
			}
			cmk_sweep_throttle(VacuumCostPageMiss + (pass == 1 ? VacuumCostPageDirty : 0));
			if (n < BLCKSZ)
				break;
		}
		if (pass == 0)
		{
			if (n_enc == 0)
				return 0;
			n_enc = 0;
			unlink(tmp);
			tfd = OpenTransientFile(tmp, O_RDWR | O_CREAT | O_EXCL | PG_BINARY);
			if (tfd < 0)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not create file \"%s\": %m", tmp)));
		}
	}
	if (pg_fsync(tfd) != 0)
		ereport(data_sync_elevel(ERROR),
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", tmp)));
	CloseTransientFile(tfd);
	return n_enc;
}

static SegResult
sweep_segment(const char *name, char *in, char *out)
{
	char		path[MAXPGPATH];
	char		tmp[MAXPGPATH];
	struct stat st0;
	struct stat st1;
	SegPlace	place;
	int			fd;
	int			n_enc;
	bool		ok;

	snprintf(path, sizeof(path), XLOGDIR "/%s", name);
	snprintf(tmp, sizeof(tmp), XLOGDIR "/xlogtemp.%d.cmk", MyProcPid);

	/* where it stood before it was read */
	place = seg_place(name, GetXLogWriteRecPtr());
	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return SEG_RACED;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	if (fstat(fd, &st0) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	if (place == SEG_CURRENT)
	{
		/* look only */
		char		page[BLCKSZ];
		off_t		off;
		bool		plain = false;

		for (off = 0; !plain && pg_pread(fd, page, BLCKSZ, off) == BLCKSZ; off += BLCKSZ)
			plain = cmk_raw_walpage_plain(page) &&
				((XLogPageHeader) page)->xlp_magic == XLOG_PAGE_MAGIC;
		CloseTransientFile(fd);
		return plain ? SEG_CURRENT_PLAIN : SEG_CLEAN;
	}
	n_enc = encrypt_copy(path, fd, tmp, in, out);
	CloseTransientFile(fd);
	if (n_enc == 0)
		return SEG_CLEAN;

	LWLockAcquire(WALWriteLock, LW_EXCLUSIVE);
	LWLockAcquire(ControlFileLock, LW_EXCLUSIVE);
	ok = (place == SEG_PAST ||
		  seg_place(name, GetXLogWriteRecPtr()) == SEG_FUTURE) &&
		stat(path, &st1) == 0 && same_file(&st0, &st1) &&
		rename(tmp, path) == 0;
	LWLockRelease(ControlFileLock);
	LWLockRelease(WALWriteLock);

	if (!ok)
	{
		unlink(tmp);
		return SEG_RACED;
	}
	fsync_fname(XLOGDIR, true);
	ereport(DEBUG1,
			(errmsg_internal("cmk_storage: re-encrypted %d plaintext pages of WAL segment \"%s\"",
							 n_enc, name)));
	return SEG_REPLACED;
}

static List *
list_segments(void)
{
	DIR		   *d = AllocateDir(XLOGDIR);
	struct dirent *de;
	List	   *out = NIL;

	while ((de = ReadDir(d, XLOGDIR)) != NULL)
		if (IsXLogFileName(de->d_name) || IsPartialXLogFileName(de->d_name))
			out = lappend(out, pstrdup(de->d_name));
	FreeDir(d);
	list_sort(out, (list_sort_comparator) pg_qsort_strcmp);
	return out;
}

/*
 * Re-encrypt every plaintext WAL segment.  True if a round found nothing
 * left to do (a segment that changed under it, or the current one still
 * holding plaintext after SWEEP_WAL_ROUNDS switches, makes it false: the
 * caller tries again later).
 */
bool
cmk_sweep_wal(void)
{
	char	   *in = palloc(BLCKSZ);
	char	   *out = palloc(BLCKSZ);

	/* everything written before lies in complete segments from here on */
	RequestXLogSwitch(false);

	for (int round = 0; round < SWEEP_WAL_ROUNDS; round++)
	{
		List	   *segs = list_segments();
		ListCell   *lc;
		bool		current_plain = false;
		bool		raced = false;
		int			replaced = 0;

		SpinLockAcquire(&cmk_sweep->mutex);
		cmk_sweep->wal_total = list_length(segs);
		cmk_sweep->wal_done = 0;
		SpinLockRelease(&cmk_sweep->mutex);

		foreach(lc, segs)
		{
			SegResult	r = sweep_segment(lfirst(lc), in, out);

			current_plain |= (r == SEG_CURRENT_PLAIN);
			raced |= (r == SEG_RACED);
			replaced += (r == SEG_REPLACED);
			SpinLockAcquire(&cmk_sweep->mutex);
			cmk_sweep->wal_done++;
			cmk_sweep->wal_rewritten += (r == SEG_REPLACED);
			cmk_sweep->updated = GetCurrentTimestamp();
			SpinLockRelease(&cmk_sweep->mutex);
		}
		list_free_deep(segs);
		if (!current_plain && !raced && replaced == 0)
			return true;
		/* the segment being written is filled up and left behind */
		if (current_plain)
			RequestXLogSwitch(false);
	}
	return false;
}
