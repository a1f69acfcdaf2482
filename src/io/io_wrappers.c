/*-------------------------------------------------------------------------
 *
 * io_wrappers.c
 *		The replacements of the executable's open, close, read, __read_chk,
 *		write, pread, pwrite and pwritev: where pages are encrypted and
 *		decrypted.
 *
 * A descriptor whose file the classifier calls OTHER goes straight to the
 * real function (one table lookup).  On a relation or WAL file, I/O is
 * done in whole 8 kB pages at page-aligned offsets: reads land in the
 * caller's buffer and are decrypted there (the buffer is the caller's to
 * fill); writes are encrypted into a bounce buffer (the caller's buffer is
 * a shared buffer or WAL buffer others may read: it is never modified).
 * A range that does not cover whole pages (copy code, the walsender, the
 * walreceiver) is served through the covering pages: read them, decrypt,
 * copy out; or read, decrypt, merge, encrypt, write (read-modify-write).
 * read() and write() work at the descriptor's position (lseek), which they
 * advance as the kernel would.
 *
 * THE BOUNDARY BELOW fd.c.  These functions run inside PostgreSQL's fd.c,
 * md.c, xlog.c, walreceiver.c and copydir.c, sometimes in a critical
 * section (XLogWrite, a checkpoint's buffer writes), with the caller's
 * errno conventions.  So they never palloc, never allocate at all (the
 * bounce buffers are mapped at start-up; the OpenSSL contexts were built in
 * the postmaster and only get a new tweak per call, which allocates
 * nothing), never ereport or elog (which could longjmp out of fd.c, or
 * recurse into write() for the log), never take a lock, and never touch
 * shared memory.  Failure is -1 with errno = EIO (or the real call's
 * errno); the caller reports it with the file name and block as it reports
 * any I/O error ("could not read block 7 in file ...: Input/output
 * error"), which is the right place: it knows the file, we know only that
 * the cipher failed, which OpenSSL does only on memory corruption.  No
 * signal handler of PostgreSQL 15 reads or writes a relation or WAL file
 * (handlers set flags and latches), so the bounce buffers are never used by
 * two frames at once; a handler's write to stderr or a pipe takes the
 * pass-through path, which only reads the descriptor table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_int.h"

#define P				CMK_IO_PAGE
#define BOUNCE_PAGES	16		/* 128 kB per pwrite call */

/* The wrapped functions: names, replacements, originals, same order. */
enum
{
	W_OPEN, W_CLOSE, W_READ, W_READ_CHK, W_WRITE, W_PREAD, W_PWRITE,
	W_PWRITEV, W_FTRUNCATE, W_UNLINK, W_COUNT
};

static const char *const wrapped_names[W_COUNT] = {
	"open", "close", "read", "__read_chk", "write", "pread", "pwrite", "pwritev",
	"ftruncate", "unlink"
};

typedef int (*open_fn) (const char *, int,...);
typedef int (*close_fn) (int);
typedef ssize_t (*read_fn) (int, void *, size_t);
typedef ssize_t (*read_chk_fn) (int, void *, size_t, size_t);
typedef ssize_t (*write_fn) (int, const void *, size_t);
typedef ssize_t (*pread_fn) (int, void *, size_t, off_t);
typedef ssize_t (*pwrite_fn) (int, const void *, size_t, off_t);
typedef ssize_t (*pwritev_fn) (int, const struct iovec *, int, off_t);
typedef int (*ftruncate_fn) (int, off_t);
typedef int (*unlink_fn) (const char *);

static void *originals[W_COUNT];

#define real_open		((open_fn) originals[W_OPEN])
#define real_close		((close_fn) originals[W_CLOSE])
#define real_read		((read_fn) originals[W_READ])
#define real_read_chk	((read_chk_fn) originals[W_READ_CHK])
#define real_write		((write_fn) originals[W_WRITE])
#define real_pread		((pread_fn) originals[W_PREAD])
#define real_pwrite		((pwrite_fn) originals[W_PWRITE])
#define real_pwritev	((pwritev_fn) originals[W_PWRITEV])
#define real_ftruncate	((ftruncate_fn) originals[W_FTRUNCATE])
#define real_unlink		((unlink_fn) originals[W_UNLINK])

extern void __chk_fail(void) pg_attribute_noreturn();

/* Mapped at start-up, page aligned (O_DIRECT needs it). */
static uint8 *bounce = NULL;	/* BOUNCE_PAGES pages: encrypted output */
static uint8 *rmw = NULL;		/* one page: read-modify-write */

/* ---------------------------------------------------------------------- */
/* One page                                                               */

static inline bool
decrypt_page(const CmkFileId *id, off_t pos, uint8 *page)
{
	if (id->kind == CMK_FILE_RELATION)
		return cmk_relpage_decrypt(id, cmk_rel_blkno(id, pos), page);
	return cmk_walpage_decrypt(page);
}

static inline bool
encrypt_page(const CmkFileId *id, off_t pos, const uint8 *plain, uint8 *out)
{
	if (id->kind == CMK_FILE_RELATION)
		return cmk_relpage_encrypt(id, cmk_rel_blkno(id, pos), plain, out);
	return cmk_walpage_encrypt(plain, out);
}

/* pwrite all of len or fail: bytes written, or -1 if none */
static ssize_t
pwrite_all(int fd, const uint8 *buf, size_t len, off_t pos)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		w = real_pwrite(fd, buf + done, len - done, pos + done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return done > 0 ? (ssize_t) done : w;
		done += w;
	}
	return (ssize_t) done;
}

/* ---------------------------------------------------------------------- */
/* Ranges                                                                 */

static ssize_t
layer_pread(int fd, const CmkFileId *id, uint8 *buf, size_t n, off_t off)
{
	size_t		total = 0;

	if (id->kind == CMK_FILE_TEMP)
		return cmk_tmpfile_pread(fd, id, buf, n, off);
	if (id->kind == CMK_FILE_WAL_STORED)
		return cmk_rawstream_pread(real_pread, fd, buf, n, off);
	if (id->kind == CMK_FILE_RELATION && n == P && off % P == 0)
	{
		/* mdread's one block: maybe from a read-ahead window */
		ssize_t		r;

		if (cmk_readahead_pread(real_pread, fd, id, buf, off, &r))
			return r;
	}

	while (total < n)
	{
		off_t		pos = off + (off_t) total;
		size_t		inpage = (size_t) (pos % P);

		if (inpage == 0 && n - total >= P)
		{
			/* Whole pages straight into the caller's buffer. */
			size_t		want = ((n - total) / P) * P;
			ssize_t		r = real_pread(fd, buf + total, want, pos);

			if (r < 0)
				return total > 0 ? (ssize_t) total : r;
			for (size_t k = 0; k + P <= (size_t) r; k += P)
				if (!decrypt_page(id, pos + (off_t) k, buf + total + k))
				{
					errno = EIO;
					return -1;
				}

			/*
			 * A fragment of a page at the end of the file (never written by
			 * the layer, which writes whole pages) is returned as it is; the
			 * callers treat a short page as an error or as absent.
			 */
			total += (size_t) r;
			if ((size_t) r < want)
				break;
		}
		else
		{
			/* Part of a page: read it whole, decrypt, copy the part. */
			off_t		start = pos - (off_t) inpage;
			size_t		part = Min(P - inpage, n - total);
			ssize_t		r = real_pread(fd, rmw, P, start);

			if (r < 0)
				return total > 0 ? (ssize_t) total : r;
			if (r == P && !decrypt_page(id, start, rmw))
			{
				errno = EIO;
				return -1;
			}
			if ((size_t) r <= inpage)
				break;
			part = Min(part, (size_t) r - inpage);
			memcpy(buf + total, rmw + inpage, part);
			total += part;
			if (r < P)
				break;
		}
	}
	return (ssize_t) total;
}

static ssize_t
layer_pwrite_pages(int fd, const CmkFileId *id, const uint8 *buf, size_t n,
				   off_t off)
{
	size_t		total = 0;

	while (total < n)
	{
		off_t		pos = off + (off_t) total;
		size_t		inpage = (size_t) (pos % P);

		if (inpage == 0 && n - total >= P)
		{
			size_t		pages = Min((n - total) / P, BOUNCE_PAGES);
			ssize_t		w;

			for (size_t k = 0; k < pages; k++)
				if (!encrypt_page(id, pos + (off_t) (k * P),
								  buf + total + k * P, bounce + k * P))
				{
					errno = EIO;
					return total > 0 ? (ssize_t) total : -1;
				}
			w = pwrite_all(fd, bounce, pages * P, pos);
			if (w < 0)
				return total > 0 ? (ssize_t) total : w;
			total += (size_t) w;
			if ((size_t) w < pages * P)
				break;
		}
		else
		{
			/*
			 * Part of a page: read-modify-write the whole page.  A page
			 * beyond the end of the file is zeros; a fragment at the end is
			 * kept as it is.  Writing the whole page may extend the file to
			 * the page boundary (docs/io-layer.md).
			 */
			off_t		start = pos - (off_t) inpage;
			size_t		part = Min(P - inpage, n - total);
			ssize_t		r = real_pread(fd, rmw, P, start);
			ssize_t		w;

			if (r < 0)
				return total > 0 ? (ssize_t) total : r;
			if (r == P)
			{
				if (!decrypt_page(id, start, rmw))
				{
					errno = EIO;
					return total > 0 ? (ssize_t) total : -1;
				}
			}
			else
				memset(rmw + r, 0, P - (size_t) r);
			memcpy(rmw + inpage, buf + total, part);
			if (!encrypt_page(id, start, rmw, bounce))
			{
				errno = EIO;
				return total > 0 ? (ssize_t) total : -1;
			}
			w = pwrite_all(fd, bounce, P, start);
			if (w < 0)
				return total > 0 ? (ssize_t) total : w;
			if ((size_t) w < P)
			{
				/* how much of the caller's part reached the disk */
				if ((size_t) w > inpage)
					total += Min(part, (size_t) w - inpage);
				break;
			}
			total += part;
		}
	}
	return (ssize_t) total;
}

static ssize_t
layer_pwrite(int fd, const CmkFileId *id, const uint8 *buf, size_t n, off_t off)
{
	ssize_t		w;

	if (id->kind == CMK_FILE_TEMP)
		return cmk_tmpfile_pwrite(fd, id, buf, n, off);
	if (id->kind == CMK_FILE_WAL_STORED)
		return real_pwrite(fd, buf, n, off);	/* read-only: EBADF */
	if (id->kind == CMK_FILE_WAL)
		cmk_rawstream_check_received(buf, n, off);
	w = layer_pwrite_pages(fd, id, buf, n, off);

	/*
	 * Other processes' read-ahead windows over these pages are stale now
	 * (io_readahead.c); also after a failure, which may have written part.
	 */
	if (id->kind == CMK_FILE_RELATION)
		cmk_readahead_note_write(id, off, n);
	return w;
}

/* ---------------------------------------------------------------------- */
/* The replacements                                                       */

static int
cmk_open(const char *path, int flags,...)
{
	mode_t		mode = 0;
	int			fd;
	CmkFileId	id;

	/* the third argument exists exactly when glibc's open() reads it */
	if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE)
	{
		va_list		ap;

		va_start(ap, flags);
		mode = (mode_t) va_arg(ap, int);
		va_end(ap);
	}
	cmk_classify(path, flags, &id);
	fd = real_open(path, id.kind == CMK_FILE_TEMP ?
				   cmk_tmpfile_open_flags(flags) : flags, mode);
	if (fd < 0)
		return fd;
	/* a base backup copies relation and WAL files as stored */
	if (cmk_rawcopy_wanted(&id, flags))
		id.kind = CMK_FILE_OTHER;
	/* pg_basebackup -X stream and pg_receivewal stream WAL as stored */
	else if (cmk_rawstream_wanted(&id, flags))
		id.kind = CMK_FILE_WAL_STORED;
	if (id.kind == CMK_FILE_OTHER)
		cmk_fdtable_clear(fd);
	else if (!cmk_fdtable_set(fd, &id))
	{
		/* Fail closed: a descriptor we cannot track is never used. */
		real_close(fd);
		errno = EMFILE;
		return -1;
	}
	else if (id.kind == CMK_FILE_TEMP && id.temp &&
			 !cmk_tmpauth_open(fd, &id, path, flags, mode))
	{
		/* an authenticated file is never used without its side file */
		int			save_errno = errno;

		cmk_fdtable_clear(fd);
		real_close(fd);
		errno = save_errno;
		return -1;
	}
	return fd;
}

static int
cmk_close(int fd)
{
	cmk_tmpauth_close(fd);
	cmk_readahead_forget(fd);
	cmk_fdtable_clear(fd);
	return real_close(fd);
}

/* A temporary file's side file goes with it (io_tmpauth.c). */
static int
cmk_unlink(const char *path)
{
	return cmk_tmpauth_unlink(path, real_unlink);
}

static ssize_t
cmk_pread(int fd, void *buf, size_t n, off_t off)
{
	const CmkFileId *id = cmk_fdtable_get(fd);

	if (id == NULL || n == 0)
		return real_pread(fd, buf, n, off);
	return layer_pread(fd, id, buf, n, off);
}

static ssize_t
cmk_pwrite(int fd, const void *buf, size_t n, off_t off)
{
	const CmkFileId *id = cmk_fdtable_get(fd);

	if (id == NULL || n == 0)
		return real_pwrite(fd, buf, n, off);
	return layer_pwrite(fd, id, buf, n, off);
}

static ssize_t
cmk_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	const CmkFileId *id = cmk_fdtable_get(fd);
	size_t		done = 0;

	if (id == NULL)
		return real_pwritev(fd, iov, iovcnt, off);
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		w;

		if (iov[i].iov_len == 0)
			continue;
		w = layer_pwrite(fd, id, iov[i].iov_base, iov[i].iov_len, off + (off_t) done);
		if (w < 0)
			return done > 0 ? (ssize_t) done : w;
		done += (size_t) w;
		if ((size_t) w < iov[i].iov_len)
			break;
	}
	return (ssize_t) done;
}

/*
 * Relation and WAL files are cut at page boundaries: only temp files change
 * format.  A relation file's cut-off pages leave read-ahead windows too.
 */
static int
cmk_ftruncate(int fd, off_t len)
{
	const CmkFileId *id = cmk_fdtable_get(fd);
	struct stat st;
	off_t		old_size;
	int			r;

	if (id == NULL || (id->kind != CMK_FILE_TEMP && id->kind != CMK_FILE_RELATION))
		return real_ftruncate(fd, len);
	if (id->kind == CMK_FILE_TEMP)
		return cmk_tmpfile_ftruncate(fd, id, len);
	old_size = fstat(fd, &st) == 0 ? st.st_size : -1;
	r = real_ftruncate(fd, len);
	cmk_readahead_note_truncate(id, len, old_size);
	return r;
}

/* read() at the descriptor's position, which it then advances. */
static ssize_t
read_at_position(int fd, const CmkFileId *id, void *buf, size_t n)
{
	off_t		pos = lseek(fd, 0, SEEK_CUR);
	ssize_t		r;

	if (pos < 0)
		return -1;
	r = layer_pread(fd, id, buf, n, pos);
	if (r > 0 && lseek(fd, pos + r, SEEK_SET) < 0)
		return -1;
	return r;
}

static ssize_t
cmk_read(int fd, void *buf, size_t n)
{
	const CmkFileId *id = cmk_fdtable_get(fd);

	if (id == NULL || n == 0)
		return real_read(fd, buf, n);
	return read_at_position(fd, id, buf, n);
}

static ssize_t
cmk_read_chk(int fd, void *buf, size_t n, size_t buflen)
{
	const CmkFileId *id = cmk_fdtable_get(fd);

	if (id == NULL || n == 0)
		return real_read_chk(fd, buf, n, buflen);
	if (n > buflen)
		__chk_fail();
	return read_at_position(fd, id, buf, n);
}

static ssize_t
cmk_write(int fd, const void *buf, size_t n)
{
	const CmkFileId *id = cmk_fdtable_get(fd);
	off_t		pos;
	ssize_t		w;

	if (id == NULL || n == 0)
		return real_write(fd, buf, n);
	pos = lseek(fd, 0, id->append ? SEEK_END : SEEK_CUR);
	if (pos < 0)
		return -1;
	w = layer_pwrite(fd, id, buf, n, pos);
	if (w > 0 && lseek(fd, pos + w, SEEK_SET) < 0)
		return -1;
	return w;
}

/* ---------------------------------------------------------------------- */
/* Start-up                                                               */

void
cmk_wrappers_create(void)
{
	void	   *p = mmap(NULL, (BOUNCE_PAGES + 1) * P, PROT_READ | PROT_WRITE,
						 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map the cluster encryption buffers: %m")));
	bounce = (uint8 *) p;
	rmw = bounce + BOUNCE_PAGES * P;
}

/* The rail: the executable imports what we wrap, and nothing else. */
void
cmk_wrappers_check(void)
{
	cmk_rail_check_binary(wrapped_names, W_COUNT);
}

/* The swap: all wrapped, or the server does not start. */
void
cmk_wrappers_install(void)
{
	static void *const replacements[W_COUNT] = {
		(void *) cmk_open, (void *) cmk_close, (void *) cmk_read,
		(void *) cmk_read_chk, (void *) cmk_write, (void *) cmk_pread,
		(void *) cmk_pwrite, (void *) cmk_pwritev, (void *) cmk_ftruncate,
		(void *) cmk_unlink
	};
	CmkGotSlot	slots[W_COUNT];
	char		why[256];

	for (int i = 0; i < W_COUNT; i++)
		slots[i].name = wrapped_names[i];
	if (!cmk_got_scan(slots, W_COUNT, why, sizeof(why)) ||
		!cmk_got_swap(slots, replacements, originals, W_COUNT, why, sizeof(why)))
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: could not redirect the server's file I/O: %s", why),
				 errhint("Set cmk_storage.cluster_encryption = off, or use the PostgreSQL 15 server package cmk_storage supports.")));
	{
		CmkTmpRealIo io = {real_pread, real_pwrite, real_ftruncate};

		cmk_tmpfile_set_real(&io);
	}
}
