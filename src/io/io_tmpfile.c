/*-------------------------------------------------------------------------
 *
 * io_tmpfile.c
 *		The encrypted byte file: temporary files, logical-decoding spill files
 *		and pg_notify segments (docs/io-layer.md, "Temporary and spill
 *		files").
 *
 * These files hold decrypted row data (sorts, hashes, tuple stores, spilled
 * transactions, NOTIFY payloads) and are written at any offset, rewritten in
 * place, read back in pieces and truncated, by PostgreSQL code that relies
 * on their exact size (BufFileSize, short reads at the end).  So the format
 * is length preserving: the file is cut into 8 kB units from its start and
 * each unit is one AES-256-XTS data unit with the tweak
 *
 *	 unit number (LE32) | file identity (12 bytes)
 *
 * A last unit shorter than 8 kB is one data unit of its own length (XTS
 * with ciphertext stealing), and is re-encrypted whole when the file grows
 * or shrinks; a remainder shorter than 16 bytes (the smallest XTS unit)
 * joins the unit before it.  A file shorter than 16 bytes is refused.
 *
 * That XTS format now serves pg_notify segments only.  Temporary and spill
 * files are classified here but read and written by io_tmpauth.c, which
 * authenticates every unit (AES-256-GCM, tags in a side file).
 *
 * The key is random, made by the postmaster at each start and never
 * written anywhere: PostgreSQL removes these files at every start (and the
 * NOTIFY queue with them), so nothing encrypted under an older key is ever
 * read.  The identity is a keyed pseudo-random function (CBC-MAC with the
 * length in the first block, on a second per-start key) of the path
 * relative to the data directory, which every process opening the file
 * (parallel workers open a shared file by its name) computes alike.
 *
 * THE BOUNDARY BELOW fd.c (io_int.h): no allocation, no elog, no locks, no
 * shared memory; buffers and cipher contexts are made at start-up.  A
 * failure is -1 with errno (EIO for a file that does not decrypt to the
 * expected layout), which fd.c reports with the file's name.  This module
 * must never write a key, and never write a byte of a file in clear.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/relpath.h"
#include "storage/fd.h"
#include "utils/guc.h"

#include "io/io_int.h"

#define U				CMK_IO_PAGE /* the unit */
#define MINUNIT			16		/* XTS needs a whole AES block */
#define BOUNCE_UNITS	16		/* encrypted output per pwrite call */
#define ID_LEN			12		/* the identity part of the tweak */
#define TINY_UNIT		0xFFFFFFF0u /* | length: tweak of a file < 16 bytes */

/* Set at start-up in the postmaster, inherited by every child. */
static bool tmp_on = false;
static CmkXts tmp_xts;			/* per-start data key */
static EVP_CIPHER_CTX *id_ctx = NULL;	/* per-start identity key (CBC) */
static CmkTmpRealIo real;

/* Mapped at start-up: one old unit, one new unit, the output. */
static uint8 *oldbuf = NULL;	/* decrypted old unit (U + MINUNIT) */
static uint8 *newbuf = NULL;	/* plaintext of the unit being built */
static uint8 *outbuf = NULL;	/* BOUNCE_UNITS * U + U + MINUNIT */
static uint8 *idbuf = NULL;		/* CBC-MAC input and output */

#define IDBUF_LEN		(MINUNIT + MAXPGPATH + MINUNIT)

/* ---------------------------------------------------------------------- */
/* Start-up                                                               */

/*
 * Postmaster, before any fork: the per-start keys from the kernel's random
 * generator, the cipher contexts, the buffers.  The raw key bytes exist only
 * on this stack frame and are wiped before return; afterwards only the
 * expanded key schedules inside OpenSSL's contexts remain.
 */
void
cmk_tmpfile_init(void)
{
	uint8		key[CMK_XTS_KEY_LEN + 32];
	EVP_CIPHER *cbc;
	bool		ok;
	void	   *p;

	ok = cmk_random_bytes(key, sizeof(key)) && cmk_xts_init(&tmp_xts, key);
	cbc = ok ? EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL) : NULL;
	id_ctx = ok ? EVP_CIPHER_CTX_new() : NULL;
	ok = ok && cbc != NULL && id_ctx != NULL &&
		EVP_CipherInit_ex2(id_ctx, cbc, key + CMK_XTS_KEY_LEN, NULL, 1, NULL) == 1 &&
		EVP_CIPHER_CTX_set_padding(id_ctx, 0) == 1;
	EVP_CIPHER_free(cbc);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not set up the temporary file cipher")));

	p = mmap(NULL, 2 * (U + MINUNIT) + (BOUNCE_UNITS + 1) * U + MINUNIT + IDBUF_LEN,
			 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map the temporary file buffers: %m")));
	outbuf = (uint8 *) p;
	oldbuf = outbuf + (BOUNCE_UNITS + 1) * U + MINUNIT;
	newbuf = oldbuf + U + MINUNIT;
	idbuf = newbuf + U + MINUNIT;
	cmk_tmpauth_init();
	tmp_on = true;
	cmk_classify_set_tmpfiles(cmk_tmpfile_classify);
}

/*
 * Start-up: refuse a setting that would put query data in files the layer
 * cannot see.  With dynamic_shared_memory_type = mmap, parallel query keeps
 * its shared hash tables, tuple queues and sort state in files under
 * pg_dynshmem/ in the data directory, written by the kernel through memory
 * mappings: no write() to redirect.
 */
void
cmk_tmpfile_check_settings(void)
{
	const char *dsm = GetConfigOption("dynamic_shared_memory_type", true, false);

	if (dsm != NULL && strcmp(dsm, "mmap") == 0)
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cmk_storage: temporary file encryption cannot cover dynamic_shared_memory_type = mmap"),
				 errdetail("Parallel queries would keep shared query data in files under pg_dynshmem, written through memory mappings."),
				 errhint("Set dynamic_shared_memory_type = posix (the default) or sysv.")));
}

/* After the GOT swap: the real calls this module does its I/O with. */
void
cmk_tmpfile_set_real(const CmkTmpRealIo *io)
{
	real = *io;
}

/* ---------------------------------------------------------------------- */
/* Classification (inside open)                                           */

static bool
skip_u32(const char **p)
{
	int			n = 0;

	while (**p >= '0' && **p <= '9')
	{
		(*p)++;
		n++;
	}
	return n > 0 && n <= 10;
}

static bool
lit(const char **p, const char *s)
{
	size_t		n = strlen(s);

	if (strncmp(*p, s, n) != 0)
		return false;
	*p += n;
	return true;
}

static bool
has_suffix(const char *s, const char *suffix)
{
	size_t		n = strlen(s),
				m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/*
 * Files of this kind, relative to the data directory:
 *
 *	 base/pgsql_tmp/<anything>						temp files, FileSets
 *	 pg_tblspc/<ts>/PG_15_<cat>/pgsql_tmp/<anything>	the same in a tablespace
 *	 pg_replslot/<slot>/xid-<...>.spill				logical decoding spills
 *	 pg_notify/<4 to 6 hex digits>					the NOTIFY queue
 *	 base/pgsql_job_cache/<anything>					Citus's intermediate results
 */
static bool
is_tmpfile_path(const char *p)
{
	if (lit(&p, "base/" PG_TEMP_FILES_DIR "/"))
		return *p != '\0';
	/* read back through stdio (COPY FROM a file name): io_stdio.c */
	if (lit(&p, "base/pgsql_job_cache/"))
		return *p != '\0';
	if (lit(&p, "pg_tblspc/"))
		return skip_u32(&p) && lit(&p, "/") &&
			lit(&p, TABLESPACE_VERSION_DIRECTORY "/" PG_TEMP_FILES_DIR "/") &&
			*p != '\0';
	if (lit(&p, "pg_replslot/"))
	{
		const char *slash = strchr(p, '/');

		return slash != NULL && slash > p && strchr(slash + 1, '/') == NULL &&
			strncmp(slash + 1, "xid-", 4) == 0 && has_suffix(slash + 1, ".spill");
	}
	if (lit(&p, "pg_notify/"))
	{
		int			n = 0;

		while ((p[n] >= '0' && p[n] <= '9') || (p[n] >= 'A' && p[n] <= 'F'))
			n++;
		return n >= 4 && n <= 6 && p[n] == '\0';
	}
	return false;
}

/*
 * The identity: the first 12 bytes of AES-256-CBC-MAC over
 * [length (LE64) | "cmktmpid"] | path | zero padding, under the per-start
 * identity key.  The length block makes the encoding prefix-free, so this is
 * a pseudo-random function of the path: distinct paths get independent
 * tweaks.  OpenSSL's CBC with a zero IV computes it; the contexts allocate
 * nothing when only the IV is reset.
 */
static bool
file_identity(const char *rel, uint8 *out)
{
	size_t		len = strlen(rel);
	size_t		total = MINUNIT + TYPEALIGN(MINUNIT, len);
	static const uint8 zero_iv[MINUNIT] = {0};
	int			outl = 0;

	if (len > MAXPGPATH || id_ctx == NULL)
		return false;
	memset(idbuf, 0, MINUNIT + MAXPGPATH + MINUNIT);
	for (int i = 0; i < 8; i++)
		idbuf[i] = (uint8) ((uint64) len >> (8 * i));
	memcpy(idbuf + 8, "cmktmpid", 8);
	memcpy(idbuf + MINUNIT, rel, len);
	if (EVP_CipherInit_ex2(id_ctx, NULL, NULL, zero_iv, 1, NULL) != 1 ||
		EVP_CipherUpdate(id_ctx, idbuf, &outl, idbuf, (int) total) != 1 ||
		outl != (int) total)
		return false;
	memcpy(out, idbuf + total - MINUNIT, ID_LEN);
	return true;
}

/*
 * rel is the path relative to the data directory.  True if the file is of
 * this kind (then id is filled); a path of this kind whose identity cannot
 * be computed is still claimed, with a zero identity marked unusable, so
 * that every access fails instead of passing plaintext.
 */
bool
cmk_tmpfile_classify(const char *rel, CmkFileId *id)
{
	uint8		ident[ID_LEN];

	if (!tmp_on || !is_tmpfile_path(rel))
		return false;
	id->kind = CMK_FILE_TEMP;

	/*
	 * Temporary and spill files are authenticated (io_tmpauth.c); pg_notify
	 * segments, written page by page by several processes, stay in the XTS
	 * format below (docs/io-layer.md).  A side file opened by name as a
	 * data file is refused.
	 */
	id->temp = strncmp(rel, "pg_notify/", 10) != 0;
	if (has_suffix(rel, CMK_TMPAUTH_SUFFIX))
	{
		id->temp = 0;
		id->fork = 0xFF;
		return true;
	}
	if (file_identity(rel, ident))
		memcpy(&id->db, ident, ID_LEN);
	else
		id->fork = 0xFF;		/* unusable: every access fails with EIO */
	return true;
}

/*
 * The open flags actually used: the layer must read the last unit to
 * re-encrypt it when the file grows (a write-only descriptor cannot), and
 * does its own appending (pwrite on an O_APPEND descriptor ignores the
 * offset on Linux).  The classifier kept O_APPEND in id->append.
 */
int
cmk_tmpfile_open_flags(int flags)
{
	if ((flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags & ~O_APPEND;
}

/* ---------------------------------------------------------------------- */
/* The layout                                                             */

/* The unit holding byte pos (< size) of a file of size bytes. */
static void
unit_of(off_t pos, off_t size, off_t *start, off_t *end)
{
	off_t		full = size / U;
	off_t		rem = size - full * U;
	off_t		k = pos / U;

	if (size < MINUNIT)
	{
		*start = 0;
		*end = size;
	}
	else if (rem > 0 && rem < MINUNIT && k >= full - 1)
	{
		/* a remainder too short for XTS joins the unit before it */
		*start = (full - 1) * U;
		*end = size;
	}
	else
	{
		*start = k * U;
		*end = Min((k + 1) * U, size);
	}
}

static bool
all_zero(const uint8 *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0)
			return false;
	return true;
}

static inline void
put_le32(uint8 *p, uint32 v)
{
	p[0] = (uint8) v;
	p[1] = (uint8) (v >> 8);
	p[2] = (uint8) (v >> 16);
	p[3] = (uint8) (v >> 24);
}

/* One unit [start, start + len), in may equal out. */
static bool
crypt_unit(const CmkFileId *id, bool encrypt, off_t start, size_t len,
		   const uint8 *in, uint8 *out)
{
	uint8		tweak[CMK_XTS_TWEAK_LEN];

	if (id->fork == 0xFF || start / U > (off_t) (TINY_UNIT - 1))
		return false;
	memcpy(tweak + 4, &id->db, ID_LEN);

	/*
	 * A unit of 16 bytes or more stored as zeros is a hole the layer left
	 * (a write beyond the end does not fill whole units in between, see
	 * cmk_tmpfile_pwrite): it reads as zeros, as a hole does.  Ciphertext is
	 * all zeros with probability 2^-128 at most.
	 */
	if (!encrypt && len >= MINUNIT && all_zero(in, len))
	{
		memset(out, 0, len);
		return true;
	}
	if (len >= MINUNIT)
	{
		put_le32(tweak, (uint32) (start / U));
		return cmk_xts_crypt(&tmp_xts, encrypt, tweak, in, out, len);
	}

	/*
	 * A whole file shorter than an AES block is refused: XTS cannot encrypt
	 * it, and a fixed keystream would reveal the XOR of two versions.  Only
	 * pg_notify segments (whole 8 kB pages) use this format.
	 */
	return false;
}

off_t
cmk_tmp_file_size(int fd)
{
	struct stat st;

	if (fstat(fd, &st) != 0)
		return -1;
	return st.st_size;
}

/*
 * Exactly len bytes at pos with the real calls, or false (errno EIO for a
 * short read); io_tmpauth.c uses these too.
 */
bool
cmk_tmp_pread_exact(int fd, uint8 *buf, size_t len, off_t pos)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		r = real.pread(fd, buf + done, len - done, pos + (off_t) done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
		{
			if (r == 0)
				errno = EIO;	/* the file is shorter than its layout */
			return false;
		}
		done += (size_t) r;
	}
	return true;
}

bool
cmk_tmp_pwrite_exact(int fd, const uint8 *buf, size_t len, off_t pos)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		w = real.pwrite(fd, buf + done, len - done, pos + (off_t) done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
		{
			if (w == 0)
				errno = ENOSPC;
			return false;
		}
		done += (size_t) w;
	}
	return true;
}

/* ---------------------------------------------------------------------- */
/* Reading                                                                */

ssize_t
cmk_tmpfile_pread(int fd, const CmkFileId *id, uint8 *buf, size_t n, off_t off)
{
	off_t		size;
	size_t		total = 0;

	if (id->temp)
		return cmk_tmpauth_pread(fd, id, buf, n, off);
	size = cmk_tmp_file_size(fd);
	if (size < 0)
		return -1;
	if (off >= size)
		return 0;
	if ((off_t) n > size - off)
		n = (size_t) (size - off);

	while (total < n)
	{
		off_t		pos = off + (off_t) total;
		off_t		us,
					ue;
		size_t		ulen;

		unit_of(pos, size, &us, &ue);
		ulen = (size_t) (ue - us);
		if (pos == us && n - total >= ulen)
		{
			/* Whole units straight into the caller's buffer. */
			size_t		m = ulen;

			while (ulen == U && n - total >= m + U)
			{
				off_t		s2,
							e2;

				unit_of(us + (off_t) m, size, &s2, &e2);
				if (e2 - s2 != U)
					break;
				m += U;
			}
			if (!cmk_tmp_pread_exact(fd, buf + total, m, us))
				return -1;
			for (size_t k = 0; k < m; k += ulen)
				if (!crypt_unit(id, false, us + (off_t) k, ulen,
								buf + total + k, buf + total + k))
				{
					errno = EIO;
					return -1;
				}
			total += m;
		}
		else
		{
			size_t		part = Min((size_t) (ue - pos), n - total);

			if (!cmk_tmp_pread_exact(fd, oldbuf, ulen, us))
				return -1;
			if (!crypt_unit(id, false, us, ulen, oldbuf, oldbuf))
			{
				errno = EIO;
				return -1;
			}
			memcpy(buf + total, oldbuf + (pos - us), part);
			total += part;
		}
	}
	return (ssize_t) total;
}

/* ---------------------------------------------------------------------- */
/* Writing                                                                */

/* The decrypted old unit held in oldbuf: [cache_start, cache_end). */
typedef struct OldCache
{
	off_t		start;
	off_t		end;
} OldCache;

/* Old plaintext of [from, to) (within the old size) into dst. */
static bool
old_plain(int fd, const CmkFileId *id, off_t oldsize, OldCache *c,
		  off_t from, off_t to, uint8 *dst)
{
	while (from < to)
	{
		size_t		part;

		if (!(from >= c->start && from < c->end))
		{
			off_t		os,
						oe;

			unit_of(from, oldsize, &os, &oe);
			if (!cmk_tmp_pread_exact(fd, oldbuf, (size_t) (oe - os), os))
				return false;
			if (!crypt_unit(id, false, os, (size_t) (oe - os), oldbuf, oldbuf))
			{
				errno = EIO;
				return false;
			}
			c->start = os;
			c->end = oe;
		}
		part = (size_t) (Min(to, c->end) - from);
		memcpy(dst, oldbuf + (from - c->start), part);
		dst += part;
		from += part;
	}
	return true;
}

/* The first byte a write must re-encrypt from: a unit start in both layouts. */
static off_t
first_unit(off_t off, off_t oldsize, off_t newsize)
{
	off_t		a;

	a = off;
	if (newsize > oldsize && oldsize == 0)
		a = 0;					/* a hole from the start */
	else if (newsize > oldsize)
	{
		off_t		os,
					oe,
					ns,
					ne;

		/*
		 * Growing: the old last unit is rebuilt if its extent changes (a
		 * partial unit grows, or a short remainder merges), and a hole after
		 * it is filled with encrypted zeros.  An old last unit that was
		 * whole and stays whole is left alone: appending 8 kB at a time, as
		 * BufFile does, then writes only the new units.
		 */
		unit_of(oldsize - 1, oldsize, &os, &oe);
		unit_of(oldsize - 1, newsize, &ns, &ne);
		a = Min(off, (os == ns && oe == ne) ? oldsize : oldsize - 1);
	}
	for (;;)
	{
		off_t		s,
					e,
					next;

		unit_of(a, newsize, &s, &e);
		next = s;
		if (a < oldsize)
		{
			unit_of(a, oldsize, &s, &e);
			next = Min(next, s);
		}
		if (next == a)
			return a;
		a = next;
	}
}

/*
 * Write n bytes at off: every unit the write touches, and every unit whose
 * extent changes because the file grows, is rebuilt in plaintext (old
 * plaintext, zeros for a hole, the caller's bytes), encrypted whole and
 * written.  Old units are read before anything overlapping them is written
 * (outbuf is flushed only when full, and a unit's old bytes are loaded when
 * the first unit needing them is built).  All of n, or -1.
 */
ssize_t
cmk_tmpfile_pwrite(int fd, const CmkFileId *id, const uint8 *buf, size_t n,
				   off_t off)
{
	off_t		oldsize;
	off_t		end = off + (off_t) n;
	off_t		newsize;
	off_t		us,
				ue,
				last_end;
	off_t		out_start = -1;
	size_t		out_len = 0;
	OldCache	cache = {0, 0};

	if (id->temp)
		return cmk_tmpauth_pwrite(fd, id, buf, n, off);
	oldsize = cmk_tmp_file_size(fd);
	if (oldsize < 0)
		return -1;
	newsize = Max(oldsize, end);
	us = first_unit(off, oldsize, newsize);
	unit_of(end - 1, newsize, &ue, &last_end);

	while (us < last_end)
	{
		size_t		ulen;
		const uint8 *plain;

		unit_of(us, newsize, &us, &ue);
		ulen = (size_t) (ue - us);
		if (us >= oldsize && ue <= off)
		{
			/*
			 * A whole unit of the hole between the old end and the write is
			 * left a hole, as the kernel would: an SLRU segment (pg_notify)
			 * gets pages written out of order by several processes, and
			 * filling the gap here could overwrite a page another process
			 * has just written there.
			 */
			if (out_len > 0 && !cmk_tmp_pwrite_exact(fd, outbuf, out_len, out_start))
				return -1;
			out_len = 0;
			us = ue;
			continue;
		}
		if (us >= off && ue <= end)
			plain = buf + (us - off);	/* all from the caller */
		else
		{
			off_t		oldto = Min(ue, oldsize);

			if (oldto > us &&
				!old_plain(fd, id, oldsize, &cache, us, oldto, newbuf))
				return -1;
			if (oldto < ue)
				memset(newbuf + Max(oldto - us, 0), 0,
					   (size_t) (ue - Max(oldto, us)));
			if (end > us && off < ue)
				memcpy(newbuf + (Max(off, us) - us), buf + (Max(off, us) - off),
					   (size_t) (Min(end, ue) - Max(off, us)));
			plain = newbuf;
		}

		if (out_len > 0 && out_len + ulen > BOUNCE_UNITS * U)
		{
			if (!cmk_tmp_pwrite_exact(fd, outbuf, out_len, out_start))
				return -1;
			out_len = 0;
		}
		if (out_len == 0)
			out_start = us;
		if (!crypt_unit(id, true, us, ulen, plain, outbuf + out_len))
		{
			errno = EIO;
			return -1;
		}
		out_len += ulen;
		us = ue;
	}
	if (out_len > 0 && !cmk_tmp_pwrite_exact(fd, outbuf, out_len, out_start))
		return -1;

	/*
	 * oldbuf and newbuf keep plaintext in this process's private memory, as
	 * the caller's own buffers do; they are never written anywhere.
	 */
	return (ssize_t) n;
}

/*
 * Truncate to len.  Shrinking cuts the unit that now ends the file: its
 * plaintext is read under the old layout first, the file cut, and the unit
 * written again whole under the new one.  Growing fills with encrypted
 * zeros, as the kernel would fill with zeros.
 */
int
cmk_tmpfile_ftruncate(int fd, const CmkFileId *id, off_t len)
{
	off_t		oldsize;
	off_t		ts,
				te,
				os,
				oe;
	OldCache	cache = {0, 0};

	if (id->temp)
		return cmk_tmpauth_ftruncate(fd, id, len);
	oldsize = cmk_tmp_file_size(fd);
	if (oldsize < 0 || len < 0)
	{
		if (len < 0)
			errno = EINVAL;
		return -1;
	}
	if (len > oldsize)
	{
		static const uint8 zeros[U] = {0};

		while (oldsize < len)
		{
			size_t		step = (size_t) Min((off_t) U, len - oldsize);

			if (cmk_tmpfile_pwrite(fd, id, zeros, step, oldsize) < 0)
				return -1;
			oldsize += (off_t) step;
		}
		return 0;
	}
	if (len == oldsize)
		return 0;
	if (len == 0)
		return real.ftruncate(fd, 0);

	unit_of(len - 1, len, &ts, &te);
	unit_of(len - 1, oldsize, &os, &oe);
	if (os == ts && oe == te)
		return real.ftruncate(fd, len); /* cut on a unit boundary */

	if (!old_plain(fd, id, oldsize, &cache, ts, te, newbuf))
		return -1;
	if (real.ftruncate(fd, len) != 0)
		return -1;
	if (!crypt_unit(id, true, ts, (size_t) (te - ts), newbuf, outbuf))
	{
		errno = EIO;
		return -1;
	}
	return cmk_tmp_pwrite_exact(fd, outbuf, (size_t) (te - ts), ts) ? 0 : -1;
}
