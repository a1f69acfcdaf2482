/*-------------------------------------------------------------------------
 *
 * offline_preload.c
 *		cmk_offline_preload.so: the cluster encryption layer for the stock
 *		offline tools (pg_waldump, pg_rewind, pg_checksums, pg_resetwal and
 *		pg_verifybackup's pg_waldump), preloaded by cmk_offline.
 *
 * The library interposes the libc file calls the tools make (open and its
 * variants, close, read, pread, write, pwrite, pwritev; dup; and refuses the
 * vectored and zero-copy calls on an encrypted file) and applies the
 * server's page formats to them: the same io_relpage.c, io_walpage.c,
 * io_classify.c and io_fdtable.c, compiled again.  A relation or WAL page is
 * decrypted on read and encrypted on write exactly as the server does, so
 * the tool sees plaintext and the disk keeps ciphertext.
 *
 * What is a relation or WAL file depends on the tool (its executable's
 * name, never anything else):
 *
 *	 pg_rewind, pg_checksums, pg_resetwal: files under the data directory the
 *		launcher named, classified as the server classifies them.  Anything
 *		outside (pg_rewind's --source-pgdata) is read raw: it is the source
 *		cluster's ciphertext, and it is written to the target as it is.
 *	 pg_waldump: any file named like a WAL segment, wherever it is, read
 *		only (a WAL page says in its clear header whether it is encrypted and
 *		carries its own tweak).
 *	 any other process (pg_verifybackup itself, which checksums the backup's
 *		files as they are stored, and the shell it runs pg_waldump through):
 *		nothing; every call passes straight through.
 *
 * Rules on writes, stricter than the server's: only whole 8 kB pages at page
 * offsets (a tool that writes part of a page gets EIO and a message naming
 * the file; read-modify-write could merge half of an already encrypted page
 * with plaintext); a page that arrives already encrypted (marker set:
 * pg_rewind copying the source's ciphertext) is written unchanged; the
 * checksum a page is stored with is valid for the ciphertext exactly when
 * the tool's plaintext checksum was valid (pg_checksums --enable computes
 * them on plaintext, with pg_control still saying "off").
 *
 * Keys: from the sealed memory file the launcher created
 * (cmk_offline.h); the descriptor is closed and LD_PRELOAD removed from the
 * environment once the ciphers are built, so that nothing the tool runs
 * (postgres --single, restore_command) inherits either.  A tool process
 * without a valid descriptor stops before its main() with a message: fail
 * closed, never read ciphertext as data or write plaintext next to it.
 *
 * This file must never report through ereport (there is no server), never
 * print key material, and never change the bytes of a file it does not
 * classify.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "access/xlog_internal.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
/* pg_checksum_page() lives in the server binary; a frontend includes it */
#include "storage/checksum_impl.h"

#include "io/io_int.h"
#include "io/io_layer.h"
#include "tools/cmk_offline/cmk_offline.h"

/* Everything else is hidden (-fvisibility=hidden): only these interpose. */
#define INTERPOSED		__attribute__((visibility("default")))

#define P				CMK_IO_PAGE
#define BOUNCE_PAGES	16

typedef enum ToolMode
{
	MODE_INERT = 0,				/* pass everything through */
	MODE_WAL_READER,			/* pg_waldump: WAL segments anywhere, read only */
	MODE_DATADIR,				/* relation and WAL files under the data directory */
} ToolMode;

static ToolMode mode = MODE_INERT;
static char tool_name[64] = "cmk_offline";
static char datadir[MAXPGPATH];
static char datadir_real[MAXPGPATH];

static uint8 *bounce = NULL;	/* BOUNCE_PAGES encrypted pages */
static uint8 *scratch = NULL;	/* one page: partial reads, checksum test */

/* ---------------------------------------------------------------------- */
/* The real functions                                                     */

typedef int (*open_fn) (const char *, int,...);
typedef int (*openat_fn) (int, const char *, int,...);
typedef int (*close_fn) (int);
typedef ssize_t (*read_fn) (int, void *, size_t);
typedef ssize_t (*write_fn) (int, const void *, size_t);
typedef ssize_t (*pread_fn) (int, void *, size_t, off_t);
typedef ssize_t (*pwrite_fn) (int, const void *, size_t, off_t);
typedef ssize_t (*iov_fn) (int, const struct iovec *, int);
typedef ssize_t (*piov_fn) (int, const struct iovec *, int, off_t);
typedef ssize_t (*piov2_fn) (int, const struct iovec *, int, off_t, int);
typedef ssize_t (*cfr_fn) (int, off_t *, int, off_t *, size_t, unsigned int);
typedef ssize_t (*sendfile_fn) (int, int, off_t *, size_t);
typedef int (*dup_fn) (int);
typedef int (*dup2_fn) (int, int);
typedef int (*dup3_fn) (int, int, int);

/*
 * Resolved on first use: another library's constructor may open a file
 * before ours has run.
 */
#define REAL(type, name) \
	static type real_##name##_ptr = NULL; \
	static type real_##name(void) \
	{ \
		if (real_##name##_ptr == NULL) \
			real_##name##_ptr = (type) dlsym(RTLD_NEXT, #name); \
		return real_##name##_ptr; \
	}

REAL(open_fn, open)
REAL(open_fn, open64)
REAL(openat_fn, openat)
REAL(openat_fn, openat64)
REAL(close_fn, close)
REAL(read_fn, read)
REAL(write_fn, write)
REAL(pread_fn, pread)
REAL(pwrite_fn, pwrite)
REAL(piov_fn, pwritev)
REAL(iov_fn, readv)
REAL(iov_fn, writev)
REAL(piov_fn, preadv)
REAL(piov_fn, preadv64)
REAL(piov2_fn, preadv2)
REAL(piov2_fn, pwritev2)
REAL(cfr_fn, copy_file_range)
REAL(sendfile_fn, sendfile)
REAL(dup_fn, dup)
REAL(dup2_fn, dup2)
REAL(dup3_fn, dup3)

/* ---------------------------------------------------------------------- */
/* Messages (stderr, never a key)                                         */

static void complain(const char *fmt,...) pg_attribute_printf(1, 2);

static void
complain(const char *fmt,...)
{
	char		line[MAXPGPATH * 2 + 512];
	int			n;
	va_list		ap;

	n = snprintf(line, sizeof(line), "%s (cmk_offline): error: ", tool_name);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	n = Min(n, (int) sizeof(line) - 2);
	line[n++] = '\n';
	(void) real_write() (STDERR_FILENO, line, n);
}

/* The path behind a descriptor, for messages. */
static const char *
fd_path(int fd, char *buf, size_t size)
{
	char		link[64];
	ssize_t		n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, buf, size - 1);
	if (n < 0)
		snprintf(buf, size, "descriptor %d", fd);
	else
		buf[n] = '\0';
	return buf;
}

/* ---------------------------------------------------------------------- */
/* Classification                                                         */

/* path made absolute (relative to dirfd or the working directory) */
static bool
absolute_path(int dirfd, const char *path, char *out)
{
	char		base[MAXPGPATH];

	if (path[0] == '/')
	{
		if (strlcpy(out, path, MAXPGPATH) >= MAXPGPATH)
			return false;
	}
	else
	{
		if (dirfd == AT_FDCWD)
		{
			if (getcwd(base, sizeof(base)) == NULL)
				return false;
		}
		else
		{
			char		link[64];
			ssize_t		n;

			snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
			n = readlink(link, base, sizeof(base) - 1);
			if (n < 0)
				return false;
			base[n] = '\0';
		}
		if (snprintf(out, MAXPGPATH, "%s/%s", base, path) >= MAXPGPATH)
			return false;
	}
	canonicalize_path(out);
	return true;
}

static const char *
under(const char *abs, const char *dir)
{
	size_t		n = strlen(dir);

	if (n > 0 && strncmp(abs, dir, n) == 0 && abs[n] == '/')
		return abs + n + 1;
	return NULL;
}

/*
 * What the tool opens.  A path we cannot make absolute (too long, no
 * working directory) is refused rather than passed through unclassified.
 */
static bool
classify(int dirfd, const char *path, int flags, CmkFileId *id)
{
	char		abs[MAXPGPATH];
	const char *rel;

	memset(id, 0, sizeof(*id));
	if (mode == MODE_INERT || path == NULL)
		return true;
	if (!absolute_path(dirfd, path, abs))
		return false;
	if (mode == MODE_WAL_READER)
	{
		char		walpath[MAXPGPATH];
		const char *base = strrchr(abs, '/');

		snprintf(walpath, sizeof(walpath), XLOGDIR "/%s", base ? base + 1 : abs);
		cmk_classify(walpath, flags, id);
		if (id->kind != CMK_FILE_WAL)
			memset(id, 0, sizeof(*id));
		return true;
	}
	rel = under(abs, datadir);
	if (rel == NULL)
		rel = under(abs, datadir_real);
	if (rel != NULL)
		cmk_classify(rel, flags, id);
	return true;
}

/* After the real open: record the descriptor, or refuse it (fail closed). */
static int
track(int fd, int dirfd, const char *path, int flags)
{
	CmkFileId	id;

	if (fd < 0 || mode == MODE_INERT)
		return fd;
	if (!classify(dirfd, path, flags, &id))
	{
		complain("cannot tell whether \"%s\" is an encrypted file (path too long or no working directory)", path);
		real_close() (fd);
		errno = ENAMETOOLONG;
		return -1;
	}
	if (id.kind == CMK_FILE_OTHER)
	{
		cmk_fdtable_clear(fd);
		return fd;
	}
	if (mode == MODE_WAL_READER && (flags & O_ACCMODE) != O_RDONLY)
	{
		complain("%s opened the WAL segment \"%s\" for writing; cmk_offline lets it only read WAL", tool_name, path);
		real_close() (fd);
		errno = EACCES;
		return -1;
	}
	if (!cmk_fdtable_set(fd, &id))
	{
		real_close() (fd);
		errno = EMFILE;
		return -1;
	}
	return fd;
}

/* ---------------------------------------------------------------------- */
/* Pages                                                                  */

static inline uint32
rel_blkno(const CmkFileId *id, off_t pos)
{
	return (uint32) ((uint64) id->segno * RELSEG_SIZE + (uint64) pos / P);
}

static bool
decrypt_page(const CmkFileId *id, off_t pos, uint8 *page)
{
	if (id->kind == CMK_FILE_RELATION)
		return cmk_relpage_decrypt(id, rel_blkno(id, pos), page);
	return cmk_walpage_decrypt(page);
}

/* Whether a plaintext relation page carries a valid checksum. */
static bool
plain_checksum_valid(const uint8 *plain, uint32 blkno)
{
	const PageHeaderData *ph = (const PageHeaderData *) plain;

	if (ph->pd_upper == 0)		/* PageIsNew: no checksum */
		return false;
	/* pg_checksum_page zeroes pd_checksum while it runs: work on a copy */
	memcpy(scratch, plain, P);
	return pg_checksum_page((char *) scratch, blkno) == ph->pd_checksum;
}

static bool
encrypt_page(const CmkFileId *id, off_t pos, const uint8 *plain, uint8 *out)
{
	if (id->kind == CMK_FILE_RELATION)
	{
		const PageHeaderData *ph = (const PageHeaderData *) plain;
		PageHeaderData *oh = (PageHeaderData *) out;
		uint32		blkno = rel_blkno(id, pos);
		bool		valid;

		/* ciphertext copied from another copy of the cluster: as it is */
		if (ph->pd_flags & CMK_PD_ENCRYPTED)
		{
			memcpy(out, plain, P);
			return true;
		}
		valid = plain_checksum_valid(plain, blkno);
		if (!cmk_relpage_encrypt(id, blkno, plain, out))
			return false;
		if (oh->pd_flags & CMK_PD_ENCRYPTED)
			oh->pd_checksum = valid ? pg_checksum_page((char *) out, blkno)
				: ph->pd_checksum;
		return true;
	}
	else
	{
		const XLogPageHeaderData *h = (const XLogPageHeaderData *) plain;

		if (h->xlp_magic == XLOG_PAGE_MAGIC && (h->xlp_info & CMK_XLP_ENCRYPTED))
		{
			memcpy(out, plain, P);
			return true;
		}
		return cmk_walpage_encrypt(plain, out);
	}
}

/* ---------------------------------------------------------------------- */
/* Ranges                                                                 */

/* Read and decrypt; a part of a page is served from the whole page. */
static ssize_t
layer_pread(int fd, const CmkFileId *id, uint8 *buf, size_t n, off_t off)
{
	size_t		total = 0;

	while (total < n)
	{
		off_t		pos = off + (off_t) total;
		size_t		inpage = (size_t) (pos % P);

		if (inpage == 0 && n - total >= P)
		{
			size_t		want = ((n - total) / P) * P;
			ssize_t		r = real_pread() (fd, buf + total, want, pos);

			if (r < 0)
				return total > 0 ? (ssize_t) total : r;
			for (size_t k = 0; k + P <= (size_t) r; k += P)
				if (!decrypt_page(id, pos + (off_t) k, buf + total + k))
				{
					errno = EIO;
					return -1;
				}
			/* a fragment of a page at the end of the file is returned as is */
			total += (size_t) r;
			if ((size_t) r < want)
				break;
		}
		else
		{
			off_t		start = pos - (off_t) inpage;
			size_t		part = Min(P - inpage, n - total);
			ssize_t		r = real_pread() (fd, scratch, P, start);

			if (r < 0)
				return total > 0 ? (ssize_t) total : r;
			if (r == P && !decrypt_page(id, start, scratch))
			{
				errno = EIO;
				return -1;
			}
			if ((size_t) r <= inpage)
				break;
			part = Min(part, (size_t) r - inpage);
			memcpy(buf + total, scratch + inpage, part);
			total += part;
			if (r < P)
				break;
		}
	}
	return (ssize_t) total;
}

/* Encrypt and write whole pages; anything else is refused. */
static ssize_t
layer_pwrite(int fd, const CmkFileId *id, const uint8 *buf, size_t n, off_t off)
{
	size_t		total = 0;

	if (off % P != 0 || n % P != 0)
	{
		char		path[MAXPGPATH];

		complain("%s wrote %zu bytes at offset %lld of \"%s\", which is not a run of whole %d-byte pages; cmk_offline encrypts only whole pages",
				 tool_name, n, (long long) off, fd_path(fd, path, sizeof(path)), P);
		errno = EIO;
		return -1;
	}
	while (total < n)
	{
		size_t		pages = Min((n - total) / P, BOUNCE_PAGES);
		off_t		pos = off + (off_t) total;
		size_t		done = 0;

		for (size_t k = 0; k < pages; k++)
			if (!encrypt_page(id, pos + (off_t) (k * P), buf + total + k * P,
							  bounce + k * P))
			{
				errno = EIO;
				return total > 0 ? (ssize_t) total : -1;
			}
		while (done < pages * P)
		{
			ssize_t		w = real_pwrite() (fd, bounce + done, pages * P - done,
										   pos + (off_t) done);

			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
			{
				total += done;
				return total > 0 ? (ssize_t) total : w;
			}
			done += (size_t) w;
		}
		total += done;
	}
	return (ssize_t) total;
}

static ssize_t
refuse(int fd, const char *call)
{
	char		path[MAXPGPATH];

	complain("%s used %s() on \"%s\", which cmk_offline does not support on an encrypted file",
			 tool_name, call, fd_path(fd, path, sizeof(path)));
	errno = EIO;
	return -1;
}

/* ---------------------------------------------------------------------- */
/* The interposed calls                                                   */

/* glibc's _FORTIFY_SOURCE entry points (no public prototypes) */
extern int	__open_2(const char *path, int flags);
extern int	__open64_2(const char *path, int flags);
extern ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
extern ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen);
extern ssize_t __pread64_chk(int fd, void *buf, size_t n, off_t off, size_t buflen);

/* the third argument exists exactly when glibc's open() reads it */
#define OPEN_MODE(flags, mode) \
	do { \
		if (((flags) & O_CREAT) != 0 || ((flags) & O_TMPFILE) == O_TMPFILE) \
		{ \
			va_list		ap; \
			va_start(ap, flags); \
			mode = (mode_t) va_arg(ap, int); \
			va_end(ap); \
		} \
	} while (0)

INTERPOSED int
open(const char *path, int flags,...)
{
	mode_t		m = 0;

	OPEN_MODE(flags, m);
	return track(real_open() (path, flags, m), AT_FDCWD, path, flags);
}

INTERPOSED int
open64(const char *path, int flags,...)
{
	mode_t		m = 0;

	OPEN_MODE(flags, m);
	return track(real_open64() (path, flags, m), AT_FDCWD, path, flags);
}

INTERPOSED int
openat(int dirfd, const char *path, int flags,...)
{
	mode_t		m = 0;

	OPEN_MODE(flags, m);
	return track(real_openat() (dirfd, path, flags, m), dirfd, path, flags);
}

INTERPOSED int
openat64(int dirfd, const char *path, int flags,...)
{
	mode_t		m = 0;

	OPEN_MODE(flags, m);
	return track(real_openat64() (dirfd, path, flags, m), dirfd, path, flags);
}

/* _FORTIFY_SOURCE's open(): checks done by the compiler already */
INTERPOSED int
__open_2(const char *path, int flags)
{
	return track(real_open() (path, flags, 0), AT_FDCWD, path, flags);
}

INTERPOSED int
__open64_2(const char *path, int flags)
{
	return track(real_open64() (path, flags, 0), AT_FDCWD, path, flags);
}

INTERPOSED int
creat(const char *path, mode_t m)
{
	int			flags = O_WRONLY | O_CREAT | O_TRUNC;

	return track(real_open() (path, flags, m), AT_FDCWD, path, flags);
}

INTERPOSED int
creat64(const char *path, mode_t m)
{
	int			flags = O_WRONLY | O_CREAT | O_TRUNC;

	return track(real_open64() (path, flags, m), AT_FDCWD, path, flags);
}

INTERPOSED int
close(int fd)
{
	if (mode != MODE_INERT)
		cmk_fdtable_clear(fd);
	return real_close() (fd);
}

static const CmkFileId *
lookup(int fd)
{
	return mode == MODE_INERT ? NULL : cmk_fdtable_get(fd);
}

INTERPOSED ssize_t
pread(int fd, void *buf, size_t n, off_t off)
{
	const CmkFileId *id = lookup(fd);

	if (id == NULL || n == 0)
		return real_pread() (fd, buf, n, off);
	return layer_pread(fd, id, buf, n, off);
}

INTERPOSED ssize_t
pread64(int fd, void *buf, size_t n, off_t off)
{
	return pread(fd, buf, n, off);
}

INTERPOSED ssize_t
__pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen)
{
	if (n > buflen)
		abort();
	return pread(fd, buf, n, off);
}

INTERPOSED ssize_t
__pread64_chk(int fd, void *buf, size_t n, off_t off, size_t buflen)
{
	return __pread_chk(fd, buf, n, off, buflen);
}

INTERPOSED ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
	const CmkFileId *id = lookup(fd);

	if (id == NULL || n == 0)
		return real_pwrite() (fd, buf, n, off);
	return layer_pwrite(fd, id, buf, n, off);
}

INTERPOSED ssize_t
pwrite64(int fd, const void *buf, size_t n, off_t off)
{
	return pwrite(fd, buf, n, off);
}

/* read() at the descriptor's position, which it then advances. */
INTERPOSED ssize_t
read(int fd, void *buf, size_t n)
{
	const CmkFileId *id = lookup(fd);
	off_t		pos;
	ssize_t		r;

	if (id == NULL || n == 0)
		return real_read() (fd, buf, n);
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos < 0)
		return -1;
	r = layer_pread(fd, id, buf, n, pos);
	if (r > 0 && lseek(fd, pos + r, SEEK_SET) < 0)
		return -1;
	return r;
}

INTERPOSED ssize_t
__read_chk(int fd, void *buf, size_t n, size_t buflen)
{
	if (n > buflen)
		abort();
	return read(fd, buf, n);
}

INTERPOSED ssize_t
write(int fd, const void *buf, size_t n)
{
	const CmkFileId *id = lookup(fd);
	off_t		pos;
	ssize_t		w;

	if (id == NULL || n == 0)
		return real_write() (fd, buf, n);
	pos = lseek(fd, 0, id->append ? SEEK_END : SEEK_CUR);
	if (pos < 0)
		return -1;
	w = layer_pwrite(fd, id, buf, n, pos);
	if (w > 0 && lseek(fd, pos + w, SEEK_SET) < 0)
		return -1;
	return w;
}

/* Vector by vector, each a run of whole pages. */
INTERPOSED ssize_t
pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	const CmkFileId *id = lookup(fd);
	size_t		done = 0;

	if (id == NULL)
		return real_pwritev() (fd, iov, iovcnt, off);
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		w;

		if (iov[i].iov_len == 0)
			continue;
		w = layer_pwrite(fd, id, iov[i].iov_base, iov[i].iov_len,
						 off + (off_t) done);
		if (w < 0)
			return done > 0 ? (ssize_t) done : w;
		done += (size_t) w;
		if ((size_t) w < iov[i].iov_len)
			break;
	}
	return (ssize_t) done;
}

INTERPOSED ssize_t
pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	return pwritev(fd, iov, iovcnt, off);
}

/* No PostgreSQL 15 tool uses these on relation or WAL files: refuse. */
INTERPOSED ssize_t
readv(int fd, const struct iovec *iov, int iovcnt)
{
	return lookup(fd) ? refuse(fd, "readv") : real_readv() (fd, iov, iovcnt);
}

INTERPOSED ssize_t
writev(int fd, const struct iovec *iov, int iovcnt)
{
	return lookup(fd) ? refuse(fd, "writev") : real_writev() (fd, iov, iovcnt);
}

INTERPOSED ssize_t
preadv(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	return lookup(fd) ? refuse(fd, "preadv") : real_preadv() (fd, iov, iovcnt, off);
}

INTERPOSED ssize_t
preadv64(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	return lookup(fd) ? refuse(fd, "preadv") : real_preadv64() (fd, iov, iovcnt, off);
}

INTERPOSED ssize_t
preadv2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return lookup(fd) ? refuse(fd, "preadv2") : real_preadv2() (fd, iov, iovcnt, off, flags);
}

INTERPOSED ssize_t
pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	return lookup(fd) ? refuse(fd, "pwritev2") : real_pwritev2() (fd, iov, iovcnt, off, flags);
}

INTERPOSED ssize_t
copy_file_range(int in, off_t *inoff, int out, off_t *outoff, size_t n,
				unsigned int flags)
{
	if (lookup(in))
		return refuse(in, "copy_file_range");
	if (lookup(out))
		return refuse(out, "copy_file_range");
	return real_copy_file_range() (in, inoff, out, outoff, n, flags);
}

INTERPOSED ssize_t
sendfile(int out, int in, off_t *off, size_t n)
{
	if (lookup(in))
		return refuse(in, "sendfile");
	if (lookup(out))
		return refuse(out, "sendfile");
	return real_sendfile() (out, in, off, n);
}

INTERPOSED ssize_t
sendfile64(int out, int in, off_t *off, size_t n)
{
	return sendfile(out, in, off, n);
}

/* A duplicate of an encrypted file's descriptor is that file too. */
static int
dup_track(int oldfd, int newfd)
{
	const CmkFileId *id;

	if (newfd < 0 || mode == MODE_INERT)
		return newfd;
	id = cmk_fdtable_get(oldfd);
	if (id == NULL)
		cmk_fdtable_clear(newfd);
	else
	{
		CmkFileId	copy = *id;

		if (!cmk_fdtable_set(newfd, &copy))
		{
			real_close() (newfd);
			errno = EMFILE;
			return -1;
		}
	}
	return newfd;
}

INTERPOSED int
dup(int fd)
{
	return dup_track(fd, real_dup() (fd));
}

INTERPOSED int
dup2(int fd, int fd2)
{
	return fd == fd2 ? real_dup2() (fd, fd2) : dup_track(fd, real_dup2() (fd, fd2));
}

INTERPOSED int
dup3(int fd, int fd2, int flags)
{
	return dup_track(fd, real_dup3() (fd, fd2, flags));
}

/* ---------------------------------------------------------------------- */
/* Start-up, before the tool's main()                                     */

static void die(const char *fmt,...) pg_attribute_printf(1, 2) pg_attribute_noreturn();

static void
die(const char *fmt,...)
{
	char		line[1024];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	complain("%s", line);
	_exit(2);
}

static ToolMode
tool_mode(const char *exe)
{
	if (strcmp(exe, "pg_waldump") == 0)
		return MODE_WAL_READER;
	if (strcmp(exe, "pg_rewind") == 0 || strcmp(exe, "pg_checksums") == 0 ||
		strcmp(exe, "pg_resetwal") == 0)
		return MODE_DATADIR;
	return MODE_INERT;
}

static void
load_keys(void)
{
	const char *env = getenv(CMK_OFFLINE_FD_ENV);
	char	   *end;
	long		fd;
	int			seals;
	struct stat st;
	const CmkOfflineKeys *k;
	void	   *map;

	if (env == NULL || env[0] == '\0')
		die("no key descriptor: run %s through cmk_offline, which unwraps the cluster's key (\"cmk_offline %s ...\")",
			tool_name, tool_name);
	errno = 0;
	fd = strtol(env, &end, 10);
	if (errno != 0 || *end != '\0' || fd < 3 || fd > INT_MAX)
		die("%s is not a descriptor number; run %s through cmk_offline", CMK_OFFLINE_FD_ENV, tool_name);

	/* Exactly the sealed memory file cmk_offline made, nothing else. */
	seals = fcntl((int) fd, F_GET_SEALS);
	if (seals != CMK_OFFLINE_SEALS || fstat((int) fd, &st) != 0 ||
		st.st_size != (off_t) TYPEALIGN(sysconf(_SC_PAGESIZE), sizeof(CmkOfflineKeys)))
		die("descriptor %ld is not cmk_offline's sealed key file; run %s through cmk_offline", fd, tool_name);
	map = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, (int) fd, 0);
	if (map == MAP_FAILED)
		die("could not map the key file: %m");
	k = (const CmkOfflineKeys *) map;
	if (memcmp(k->magic, CMK_OFFLINE_MAGIC, sizeof(k->magic)) != 0)
		die("descriptor %ld is not cmk_offline's key file; run %s through cmk_offline", fd, tool_name);

	cmk_relpage_init(k->rel_key, k->checksums != 0);
	cmk_walpage_init(k->wal_key);
	strlcpy(datadir, k->datadir, sizeof(datadir));
	strlcpy(datadir_real, k->datadir_real, sizeof(datadir_real));
	munmap(map, st.st_size);

	/* Nothing the tool runs (postgres --single, a shell) inherits the key. */
	real_close() ((int) fd);
	unsetenv(CMK_OFFLINE_FD_ENV);
	unsetenv("LD_PRELOAD");
}

static void cmk_offline_start(void) __attribute__((constructor));

static void
cmk_offline_start(void)
{
	char		exe[MAXPGPATH];
	ssize_t		n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	const char *base;
	ToolMode	m;
	void	   *p;

	if (n <= 0)
		return;
	exe[n] = '\0';
	base = strrchr(exe, '/');
	base = base ? base + 1 : exe;
	m = tool_mode(base);
	if (m == MODE_INERT)
		return;
	strlcpy(tool_name, base, sizeof(tool_name));

	/* The tool's memory holds cipher contexts: keep it out of core files. */
	(void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	load_keys();
	cmk_fdtable_create();
	p = mmap(NULL, (BOUNCE_PAGES + 1) * P, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("could not map the encryption buffers: %m");
	bounce = (uint8 *) p;
	scratch = bounce + BOUNCE_PAGES * P;
	mode = m;
}
