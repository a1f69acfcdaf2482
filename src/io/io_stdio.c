/*-------------------------------------------------------------------------
 *
 * io_stdio.c
 *		stdio streams on the files the layer encrypts as byte files: the
 *		executable's fopen and fileno, redirected so that a FILE opened on a
 *		temporary-kind file reads and writes through the same wrappers as
 *		fd.c's calls do.
 *
 * Why: Citus writes its intermediate results (base/pgsql_job_cache/) with
 * PostgreSQL's file API, which the layer sees, but reads them back with
 * COPY FROM a file name: BeginCopyFrom opens the file with AllocateFile
 * (fopen), checks it with fstat(fileno(f)), and CopyGetData reads it with
 * fread.  Inside libc, fread reaches read() directly, out of the layer's
 * reach, so an encrypted file would read as ciphertext (docs/io-layer.md,
 * "stdio streams").
 *
 * How: fopen on a path the classifier calls a temporary-kind file opens the
 * descriptor through the executable's own open() (our wrapper: it
 * classifies, adjusts the flags and records the descriptor as any fd.c open
 * would) and returns a glibc cookie stream (fopencookie) whose read, write,
 * seek and close functions call the executable's pread, pwrite and close on
 * that descriptor at the stream's position.  glibc then implements every
 * stdio call on the stream (fread, fgets, getc, feof, ferror, fseeko,
 * ftello, fclose, ...) on top of those four, with its own end-of-file and
 * error semantics: nothing else needs redirecting.  fileno() on such a
 * stream returns the descriptor (glibc's cookie streams have none), so
 * fstat sees the file's true size (the format is length preserving).
 *
 * Every other fopen is the real fopen, unchanged: configuration files,
 * pg_stat, COPY of user files, and relation and WAL files, which
 * pg_read_binary_file must keep returning as stored (pg_rewind
 * --source-server copies them that way).  fread, fwrite and the rest are
 * not redirected at all, so no stream but ours pays anything.
 *
 * THE BOUNDARY BELOW fd.c (io_int.h) applies to the cookie functions: no
 * palloc, no elog, no locks, no shared memory; a failure is -1 (0 for a
 * write, as fopencookie requires) with errno, which the stream turns into
 * its error flag and the caller (COPY, FreeFile) reports with the file's
 * name.  fopen itself allocates the FILE inside glibc, as the real fopen
 * does; its callers (AllocateFile) are written for exactly that.  The
 * stream table is static, so this file allocates nothing of its own.
 * fileno() is called from elog's write_console, possibly in a signal
 * handler: it only reads that table.  This file must never pass plaintext
 * to a temporary-kind file's descriptor other than through the layer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_int.h"

/* More than PostgreSQL 15 ever keeps open on these files at once. */
#define MAX_STREAMS		64

typedef struct StdioStream
{
	FILE	   *fp;				/* the cookie stream, NULL while opening */
	int			fd;				/* -1: the slot is free */
	bool		append;			/* every write at the end ("a" modes) */
	off_t		pos;			/* the stream's position in the file */
} StdioStream;

static StdioStream streams[MAX_STREAMS];
static volatile int nstreams = 0;	/* slots in use: fileno's fast path */

/* The executable's current open/close/pread/pwrite: our wrappers. */
typedef int (*open_fn) (const char *, int,...);
typedef int (*close_fn) (int);
typedef ssize_t (*pread_fn) (int, void *, size_t, off_t);
typedef ssize_t (*pwrite_fn) (int, const void *, size_t, off_t);
typedef FILE *(*fopen_fn) (const char *, const char *);
typedef int (*fileno_fn) (FILE *);

static open_fn exec_open;
static close_fn exec_close;
static pread_fn exec_pread;
static pwrite_fn exec_pwrite;

/* The redirected functions: names, originals, same order. */
enum
{
	S_FOPEN, S_FILENO, S_COUNT
};

static const char *const stdio_names[S_COUNT] = {"fopen", "fileno"};
static void *originals[S_COUNT];

#define real_fopen		((fopen_fn) originals[S_FOPEN])
#define real_fileno		((fileno_fn) originals[S_FILENO])

/* ---------------------------------------------------------------------- */
/* The cookie functions                                                   */

static ssize_t
stream_read(void *cookie, char *buf, size_t size)
{
	StdioStream *s = (StdioStream *) cookie;
	ssize_t		r = exec_pread(s->fd, buf, size, s->pos);

	if (r > 0)
		s->pos += r;
	return r;					/* 0: end of file; -1: error, errno set */
}

static ssize_t
stream_write(void *cookie, const char *buf, size_t size)
{
	StdioStream *s = (StdioStream *) cookie;
	size_t		done = 0;

	if (s->append)
	{
		struct stat st;

		if (fstat(s->fd, &st) != 0)
			return 0;
		s->pos = st.st_size;
	}
	while (done < size)
	{
		ssize_t		w = exec_pwrite(s->fd, buf + done, size - done,
									s->pos + (off_t) done);

		if (w <= 0)
		{
			if (w == 0)
				errno = ENOSPC;
			break;
		}
		done += (size_t) w;
	}
	s->pos += (off_t) done;
	return (ssize_t) done;		/* short: glibc sets the error flag */
}

static int
stream_seek(void *cookie, off64_t *offset, int whence)
{
	StdioStream *s = (StdioStream *) cookie;
	off_t		base;

	switch (whence)
	{
		case SEEK_SET:
			base = 0;
			break;
		case SEEK_CUR:
			base = s->pos;
			break;
		case SEEK_END:
			{
				struct stat st;

				if (fstat(s->fd, &st) != 0)
					return -1;
				base = st.st_size;
				break;
			}
		default:
			errno = EINVAL;
			return -1;
	}
	if (base + *offset < 0)
	{
		errno = EINVAL;
		return -1;
	}
	s->pos = base + *offset;
	*offset = s->pos;
	return 0;
}

static void
release(StdioStream *s)
{
	s->fp = NULL;
	s->fd = -1;
	nstreams--;
}

static int
stream_close(void *cookie)
{
	StdioStream *s = (StdioStream *) cookie;
	int			rc = exec_close(s->fd);

	release(s);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* The replacements                                                       */

/*
 * fopen's mode as open() flags, by glibc's rules.  False for a mode this
 * file does not know (",ccs=" wide streams, anything new): such a stream on
 * an encrypted file is refused rather than opened raw.
 */
static bool
mode_flags(const char *mode, int *flags)
{
	int			acc;
	int			extra = 0;

	switch (mode[0])
	{
		case 'r':
			acc = O_RDONLY;
			break;
		case 'w':
			acc = O_WRONLY;
			extra = O_CREAT | O_TRUNC;
			break;
		case 'a':
			acc = O_WRONLY;
			extra = O_CREAT | O_APPEND;
			break;
		default:
			return false;
	}
	for (const char *p = mode + 1; *p; p++)
	{
		switch (*p)
		{
			case '+':
				acc = O_RDWR;
				break;
			case 'x':
				extra |= O_EXCL;
				break;
			case 'e':
				extra |= O_CLOEXEC;
				break;
			case 'b':
			case 't':
			case 'm':
			case 'c':
				break;
			default:
				return false;
		}
	}
	*flags = acc | extra;
	return true;
}

static FILE *
cmk_fopen(const char *path, const char *mode)
{
	static const cookie_io_functions_t io = {
		stream_read, stream_write, stream_seek, stream_close
	};
	CmkFileId	id;
	StdioStream *s = NULL;
	int			flags = O_RDONLY;
	bool		known;
	FILE	   *fp;

	if (path == NULL || mode == NULL)
		return real_fopen(path, mode);
	known = mode_flags(mode, &flags);
	cmk_classify(path, flags, &id);
	if (id.kind != CMK_FILE_TEMP)
		return real_fopen(path, mode);	/* everything else: untouched */

	if (!known)
	{
		errno = EINVAL;
		return NULL;
	}
	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i].fd < 0)
		{
			s = &streams[i];
			break;
		}
	if (s == NULL)
	{
		/* AllocateFile releases other descriptors and retries, then fails */
		errno = EMFILE;
		return NULL;
	}

	/* fopen creates files as 0666 less the umask; so do we */
	s->fd = exec_open(path, flags, 0666);
	if (s->fd < 0)
		return NULL;
	nstreams++;
	s->fp = NULL;
	s->append = (flags & O_APPEND) != 0;
	s->pos = 0;

	if (cmk_fdtable_get(s->fd) == NULL)
	{
		/*
		 * The open wrapper decided this descriptor passes through (a base
		 * backup's raw copy): a plain stream on it is what fopen would give.
		 */
		int			fd = s->fd;

		release(s);
		fp = fdopen(fd, mode);
		if (fp == NULL)
		{
			int			save_errno = errno;

			exec_close(fd);
			errno = save_errno;
		}
		return fp;
	}

	fp = fopencookie(s, mode, io);
	if (fp == NULL)
	{
		int			save_errno = errno;

		exec_close(s->fd);
		release(s);
		errno = save_errno;
		return NULL;
	}
	s->fp = fp;
	return fp;
}

static int
cmk_fileno(FILE *fp)
{
	if (nstreams > 0 && fp != NULL)
		for (int i = 0; i < MAX_STREAMS; i++)
			if (streams[i].fp == fp)
				return streams[i].fd;
	return real_fileno(fp);
}

/* ---------------------------------------------------------------------- */
/* Start-up                                                               */

/* The rail: fopen and fileno are redirectable, and no other opener exists. */
void
cmk_stdio_check(void)
{
	cmk_rail_check_stdio(stdio_names, S_COUNT);
}

/*
 * After cmk_wrappers_install: take the executable's (now redirected) open,
 * close, pread and pwrite from its GOT, then redirect fopen and fileno.
 */
void
cmk_stdio_install(void)
{
	static const char *const exec_names[] = {"open", "close", "pread", "pwrite"};
	static void *const replacements[S_COUNT] = {
		(void *) cmk_fopen, (void *) cmk_fileno
	};
	CmkGotSlot	exec[lengthof(exec_names)];
	CmkGotSlot	slots[S_COUNT];
	char		why[256];
	bool		ok;

	for (int i = 0; i < MAX_STREAMS; i++)
	{
		streams[i].fp = NULL;
		streams[i].fd = -1;
	}
	for (int i = 0; i < (int) lengthof(exec_names); i++)
		exec[i].name = exec_names[i];
	for (int i = 0; i < S_COUNT; i++)
		slots[i].name = stdio_names[i];

	ok = cmk_got_scan(exec, lengthof(exec_names), why, sizeof(why));
	for (int i = 0; ok && i < (int) lengthof(exec_names); i++)
		if (exec[i].slot == NULL || *exec[i].slot == NULL)
		{
			snprintf(why, sizeof(why), "no resolved GOT entry for %s", exec_names[i]);
			ok = false;
		}
	if (ok)
	{
		exec_open = (open_fn) *exec[0].slot;
		exec_close = (close_fn) *exec[1].slot;
		exec_pread = (pread_fn) *exec[2].slot;
		exec_pwrite = (pwrite_fn) *exec[3].slot;
		ok = cmk_got_scan(slots, S_COUNT, why, sizeof(why)) &&
			cmk_got_swap(slots, replacements, originals, S_COUNT, why, sizeof(why));
	}
	if (!ok)
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: could not redirect the server's stdio file streams: %s", why),
				 errhint("Set cmk_storage.cluster_encryption and cmk_storage.temp_file_encryption to off, or use the PostgreSQL 15 server package cmk_storage supports.")));
}
