/*-------------------------------------------------------------------------
 *
 * io_tmpauth.c
 *		Authenticated temporary files: each 8 kB unit of a temporary or spill
 *		file is sealed with AES-256-GCM, its nonce and tag kept in a side file
 *		"<name>.cmkauth" next to it (docs/io-layer.md, "Temporary and spill
 *		files").
 *
 * The data file stays length preserving (GCM's ciphertext is as long as the
 * plaintext): BufFileSize, short reads at the end and ftruncate see the
 * sizes PostgreSQL wrote.  The side file holds a header with a random
 * per-file salt, one record (nonce, tag) per unit, and after the last unit's
 * record a "size record" that authenticates the file's length, so a unit
 * cut off, moved, swapped with another file's or changed in any bit makes
 * the read that touches it fail with EIO, and a read that reaches the end
 * of the file proves that the end is where the writer left it.  Every
 * write of a unit draws a fresh random nonce: rewrites never reuse a
 * keystream, and files of any length are handled alike.  The nonces come
 * from a per-process pool of getrandom() output, emptied in forked
 * children; per descriptor the file's size and windows of side-file
 * records are cached ("Caches" below), so that a block costs about the
 * plain file's system calls plus one pwrite of records.
 *
 * Keys: a random per-start key (never written) gives, through AES as a
 * pseudo-random function (RFC 8452, section 4), one AES-256-GCM key per
 * file from the file's salt, so the 2^32 bound on random 96-bit nonces
 * applies per file.  HKDF is not used here because OpenSSL's HKDF allocates,
 * which is forbidden below fd.c.
 *
 * Side-file descriptors are opened and closed with the data file's
 * descriptor, by libc directly (this library's calls are not redirected),
 * and counted against fd.c's budget with ReserveExternalFD: each open
 * temporary file now costs two descriptors.
 *
 * THE BOUNDARY BELOW fd.c (io_int.h): no palloc, no elog, no locks, no
 * shared memory; buffers and cipher contexts are made at start-up.  The one
 * written-down exception: opening a side file calls fd.c's
 * ReserveExternalFD(), which may close least-recently-used virtual file
 * descriptors, as fd.c does itself before each of its own opens (it
 * allocates nothing and takes no lock).  This module must never write a
 * key, and never write a byte of a file in clear.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "storage/fd.h"

#include "io/io_int.h"

#define U				CMK_IO_PAGE /* the unit */
#define HDR_LEN			32		/* side file header */
#define SALT_LEN		12
#define NONCE_LEN		12
#define TAG_LEN			16
#define REC_LEN			(NONCE_LEN + TAG_LEN)	/* one unit's record */
#define AAD_LEN			28
#define ID_LEN			12		/* the file identity (io_tmpfile.c) */
#define CHUNK_UNITS		16		/* units per data system call */
#define SIDE_SUFFIX_LEN (sizeof(CMK_TMPAUTH_SUFFIX) - 1)
#define TABLE_MAX		(1 << 20)
#define POOL_LEN		4096	/* random bytes drawn at once for nonces */
#define WIN_RECS		64		/* records per cached side-file window */
#define WIN_SLOTS		32		/* cached windows, all descriptors together */

static const char side_magic[8] = {'C', 'M', 'K', 'T', 'A', 'U', 'T', 'H'};

/*
 * Per data descriptor: its side file and salt.  side is fd + 1; 0 is none.
 * size is the data file's size as this descriptor left it (-1: unknown, ask
 * fstat), see "Caches" below.
 */
typedef struct SideEntry
{
	int32		side;
	uint8		salt[SALT_LEN];
	off_t		size;
} SideEntry;

/*
 * A window of side-file records cached for reads: records base ..
 * base + nvalid - 1 of the data descriptor fd - 1 (0: slot free).
 */
typedef struct RecWindow
{
	int32		fd;
	uint32		nvalid;
	uint64		base;
	uint64		used;			/* LRU clock */
} RecWindow;

/* Set at start-up in the postmaster, inherited by every child. */
static bool auth_on = false;
static EVP_CIPHER_CTX *kdf_ctx = NULL;	/* AES-256-ECB, per-start key */
static EVP_CIPHER_CTX *gcm_ctx = NULL;	/* AES-256-GCM, keyed per file */
static SideEntry *sides = NULL;
static int	nsides = 0;

/* Mapped at start-up. */
static uint8 *chunkbuf = NULL;	/* CHUNK_UNITS units of ciphertext */
static uint8 *unitbuf = NULL;	/* one unit of plaintext being rebuilt */
static uint8 *recbuf = NULL;	/* CHUNK_UNITS + 1 records */

/* Nonce pool: POOL_LEN bytes of getrandom() output, pool_left still unused. */
static uint8 *pool = NULL;
static size_t pool_left = 0;

/* Record windows (their records in winrecs, WIN_RECS * REC_LEN each). */
static RecWindow wins[WIN_SLOTS];
static uint8 *winrecs = NULL;
static uint64 win_clock = 0;

static void pool_forget(void);

/* The file key the GCM context holds now (consecutive calls reuse it). */
static bool keyed = false;
static uint8 keyed_salt[SALT_LEN];

/* ---------------------------------------------------------------------- */
/* Start-up                                                               */

/*
 * Postmaster, before any fork: the per-start key-derivation key from the
 * kernel's generator (wiped once OpenSSL has expanded it), the contexts, the
 * descriptor table and the buffers.
 */
void
cmk_tmpauth_init(void)
{
	uint8		key[32];
	EVP_CIPHER *ecb = NULL;
	EVP_CIPHER *gcm = NULL;
	struct rlimit rl;
	size_t		n = 65536;
	size_t		buflen = CHUNK_UNITS * U + U + (CHUNK_UNITS + 1) * REC_LEN +
		POOL_LEN + WIN_SLOTS * WIN_RECS * REC_LEN;
	bool		ok;
	void	   *p;

	ok = cmk_random_bytes(key, sizeof(key));
	ecb = ok ? EVP_CIPHER_fetch(NULL, "AES-256-ECB", NULL) : NULL;
	gcm = ok ? EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL) : NULL;
	kdf_ctx = EVP_CIPHER_CTX_new();
	gcm_ctx = EVP_CIPHER_CTX_new();
	ok = ok && ecb != NULL && gcm != NULL && kdf_ctx != NULL && gcm_ctx != NULL &&
		EVP_CipherInit_ex2(kdf_ctx, ecb, key, NULL, 1, NULL) == 1 &&
		EVP_CIPHER_CTX_set_padding(kdf_ctx, 0) == 1 &&
		EVP_CipherInit_ex2(gcm_ctx, gcm, NULL, NULL, 1, NULL) == 1 &&
		EVP_CIPHER_CTX_get_iv_length(gcm_ctx) == NONCE_LEN;
	EVP_CIPHER_free(ecb);
	EVP_CIPHER_free(gcm);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not set up the temporary file authentication cipher")));

	/* a forked child never continues its parent's nonces (fresh_nonces) */
	if (pthread_atfork(NULL, NULL, pool_forget) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not register the temporary file nonce pool's fork handler")));

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		n = (size_t) rl.rlim_cur;
	if (n > TABLE_MAX)
		n = TABLE_MAX;
	p = mmap(NULL, n * sizeof(SideEntry) + buflen, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map the temporary file authentication buffers: %m")));
	chunkbuf = (uint8 *) p;
	unitbuf = chunkbuf + CHUNK_UNITS * U;
	recbuf = unitbuf + U;
	pool = recbuf + (CHUNK_UNITS + 1) * REC_LEN;
	winrecs = pool + POOL_LEN;
	sides = (SideEntry *) (winrecs + WIN_SLOTS * WIN_RECS * REC_LEN);
	nsides = (int) n;
	auth_on = true;
}

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */

static inline void
put_le32(uint8 *p, uint32 v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8) (v >> (8 * i));
}

static inline void
put_le64(uint8 *p, uint64 v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8) (v >> (8 * i));
}

static inline uint64
nunits(off_t size)
{
	return (uint64) (size + U - 1) / U;
}

/* Offset in the side file of unit k's record (k = nunits: the size record). */
static inline off_t
rec_off(uint64 k)
{
	return HDR_LEN + (off_t) (k * REC_LEN);
}

/*
 * The child's side of fork(): drop what is left of the parent's pool, so
 * that parent and child never hand out the same bytes as nonces.  (Only a
 * counter is reset: the bytes are not secret, and wiping them would copy a
 * page in every forked child.)
 */
static void
pool_forget(void)
{
	pool_left = 0;
}

/*
 * Fresh random nonces into the first NONCE_LEN bytes of count records.
 * They are drawn from the kernel's generator POOL_LEN bytes at a time (one
 * getrandom() for about 170 writes instead of one per write); every byte of
 * the pool is used once, in this process only, so the nonces are exactly
 * as random and as unique as before.
 */
static bool
fresh_nonces(uint8 *recs, size_t count)
{
	Assert(count <= CHUNK_UNITS + 1);
	for (size_t i = 0; i < count; i++)
	{
		if (pool_left < NONCE_LEN)
		{
			size_t		got = 0;

			while (got < POOL_LEN)
			{
				ssize_t		r = getrandom(pool + got, POOL_LEN - got, 0);

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0)
					return false;
				got += (size_t) r;
			}
			pool_left = POOL_LEN;
		}
		memcpy(recs + i * REC_LEN, pool + POOL_LEN - pool_left, NONCE_LEN);
		pool_left -= NONCE_LEN;
	}
	return true;
}

/* ---------------------------------------------------------------------- */
/* Keys and the cipher                                                    */

/*
 * The file key: K = the first 8 bytes of AES(Kstart, LE32(i) | salt) for
 * i = 0..3, concatenated (RFC 8452, section 4, with the salt for the
 * nonce).  AES is a pseudo-random permutation; taking half of each block
 * makes the result indistinguishable from random bytes, so distinct salts
 * give independent keys.  The key exists on this stack frame only until
 * OpenSSL has expanded it into the GCM context.
 */
static bool
use_file_key(const uint8 *salt)
{
	uint8		in[64];
	uint8		out[64];
	uint8		key[32];
	int			outl = 0;
	bool		ok;

	if (keyed && memcmp(keyed_salt, salt, SALT_LEN) == 0)
		return true;
	keyed = false;
	for (int i = 0; i < 4; i++)
	{
		put_le32(in + 16 * i, (uint32) i);
		memcpy(in + 16 * i + 4, salt, SALT_LEN);
	}
	ok = EVP_CipherUpdate(kdf_ctx, out, &outl, in, sizeof(in)) == 1 &&
		outl == (int) sizeof(in);
	for (int i = 0; i < 4; i++)
		memcpy(key + 8 * i, out + 16 * i, 8);
	ok = ok && EVP_CipherInit_ex2(gcm_ctx, NULL, key, NULL, 1, NULL) == 1;
	OPENSSL_cleanse(out, sizeof(out));
	OPENSSL_cleanse(key, sizeof(key));
	if (ok)
	{
		memcpy(keyed_salt, salt, SALT_LEN);
		keyed = true;
	}
	return ok;
}

/*
 * The additional data of a unit ("UNIT", unit number, its length) or of the
 * size record ("SIZE", the file's length, 0), both with the file's
 * identity, a keyed function of its path (io_tmpfile.c).
 */
static void
make_aad(uint8 *aad, const CmkFileId *id, bool size_rec, uint64 n, uint32 len)
{
	memcpy(aad, size_rec ? "SIZE" : "UNIT", 4);
	memcpy(aad + 4, &id->db, ID_LEN);
	put_le64(aad + 16, n);
	put_le32(aad + 24, len);
}

/* Seal len bytes (0 for the size record) under the nonce already in rec. */
static bool
seal(const uint8 *aad, const uint8 *in, uint8 *out, size_t len, uint8 *rec)
{
	uint8		fin[16];
	int			outl = 0;

	return EVP_CipherInit_ex2(gcm_ctx, NULL, NULL, rec, 1, NULL) == 1 &&
		EVP_CipherUpdate(gcm_ctx, NULL, &outl, aad, AAD_LEN) == 1 &&
		(len == 0 ||
		 (EVP_CipherUpdate(gcm_ctx, out, &outl, in, (int) len) == 1 &&
		  outl == (int) len)) &&
		EVP_CipherFinal_ex(gcm_ctx, fin, &outl) == 1 &&
		EVP_CIPHER_CTX_ctrl(gcm_ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN,
							rec + NONCE_LEN) == 1;
}

/*
 * Decrypt len bytes in place and check the tag; on a mismatch the bytes are
 * wiped (never handed out) and the result is false.
 */
static bool
unseal(const uint8 *aad, uint8 *buf, size_t len, const uint8 *rec)
{
	uint8		fin[16];
	int			outl = 0;
	bool		ok;

	ok = EVP_CipherInit_ex2(gcm_ctx, NULL, NULL, rec, 0, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(gcm_ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN,
							(void *) (rec + NONCE_LEN)) == 1 &&
		EVP_CipherUpdate(gcm_ctx, NULL, &outl, aad, AAD_LEN) == 1 &&
		(len == 0 ||
		 (EVP_CipherUpdate(gcm_ctx, buf, &outl, buf, (int) len) == 1 &&
		  outl == (int) len)) &&
		EVP_CipherFinal_ex(gcm_ctx, fin, &outl) > 0;
	if (!ok)
	{
		if (len > 0)
			explicit_bzero(buf, len);
		/* leave no error behind for the server's other OpenSSL users (TLS) */
		ERR_clear_error();
	}
	return ok;
}

/* ---------------------------------------------------------------------- */
/* The side file                                                          */

static SideEntry *
entry_of(int fd)
{
	if (fd < 0 || fd >= nsides || sides[fd].side == 0)
		return NULL;
	return &sides[fd];
}

/* ---------------------------------------------------------------------- */
/* Caches                                                                 */

/*
 * Two things are cached per descriptor so that the steady state of a sort
 * or a hash join costs the system calls of the plain file plus one pwrite of
 * records per write: the data file's size (SideEntry.size) and windows of
 * side-file records (RecWindow).  Both are filled from the files and
 * updated by this descriptor's own writes and truncations, and dropped when
 * the descriptor is opened or closed (fd.c closes and reopens virtual file
 * descriptors freely: a reopen always starts from the files).
 *
 * Why they stay coherent: PostgreSQL's users of temporary files (buffile.c
 * over fd.c: tuplestore, tuplesort's logtape.c, nodeHash's batch files,
 * sharedtuplestore.c, reorderbuffer.c's spill files, worker.c's stream and
 * subxact files) have one writer per file at a time, writing through the
 * one descriptor it has open; a file of a shared file set is written by one
 * participant, closed, and only then opened read-only by others
 * (BufFileExportFileSet, sts_end_write, the barriers around them), and
 * worker.c reopens its own files one at a time in the one apply worker.
 *
 * Why they are safe even where that fails (another descriptor changed the
 * file behind this one's back): a cached record or size is only ever used
 * as an input to GCM's check, so a stale one makes the read fail with EIO,
 * never hand out bytes nobody wrote here: a stale record does not match the
 * unit now on disk, a stale size gives a unit length or size-record
 * position that the file's records do not vouch for, a file cut short
 * gives a short read.  A read that reaches the end of the file still asks
 * fstat, so a file extended behind this descriptor's back fails there as
 * before.  Tampering with a record this process has cached is not noticed
 * (the cached, authentic record is used): the bytes handed out are still
 * exactly the ones written.
 */

/* The data file's size: the cached one, or fstat's (then cached). */
static off_t
cur_size(SideEntry *e, int fd)
{
	if (e->size < 0)
		e->size = cmk_tmp_file_size(fd);
	return e->size;
}

/* Drop every cached window of a descriptor. */
static void
recs_forget(int fd)
{
	for (int i = 0; i < WIN_SLOTS; i++)
		if (wins[i].fd == fd + 1)
			wins[i].fd = 0;
}

/* (Re)load the window of records base .. base + WIN_RECS - 1 into slot w. */
static bool
recs_load(RecWindow *w, int fd, int side, uint64 base)
{
	uint8	   *dst = winrecs + (size_t) (w - wins) * WIN_RECS * REC_LEN;
	size_t		want = WIN_RECS * REC_LEN;
	size_t		got = 0;

	w->fd = 0;
	while (got < want)
	{
		ssize_t		r = pread(side, dst + got, want - got,
							  rec_off(base) + (off_t) got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return false;
		if (r == 0)
			break;
		got += (size_t) r;
	}
	w->fd = fd + 1;
	w->base = base;
	w->nvalid = (uint32) (got / REC_LEN);
	return true;
}

/*
 * Records k .. k + nrec - 1 of a descriptor's side file into dst, from the
 * cached windows, loading a window that is missing or too short (the side
 * file may have grown since) in place of the least recently used one.
 * Records the side file does not have: false with EIO.
 */
static bool
recs_get(int fd, int side, uint64 k, size_t nrec, uint8 *dst)
{
	while (nrec > 0)
	{
		uint64		base = k - k % WIN_RECS;
		RecWindow  *w = NULL;
		size_t		n;

		for (int i = 0; i < WIN_SLOTS; i++)
		{
			if (wins[i].fd == fd + 1 && wins[i].base == base)
			{
				w = &wins[i];
				break;
			}
			if (w == NULL || wins[i].fd == 0 ||
				(w->fd != 0 && wins[i].used < w->used))
				w = &wins[i];
		}
		if (w->fd != fd + 1 || w->base != base || k - base >= w->nvalid)
		{
			if (!recs_load(w, fd, side, base))
				return false;
			if (k - base >= w->nvalid)
			{
				errno = EIO;
				return false;
			}
		}
		w->used = ++win_clock;
		n = Min(nrec, (size_t) (w->nvalid - (k - base)));
		memcpy(dst, winrecs + (size_t) (w - wins) * WIN_RECS * REC_LEN +
			   (size_t) (k - base) * REC_LEN, n * REC_LEN);
		dst += n * REC_LEN;
		k += n;
		nrec -= n;
	}
	return true;
}

/*
 * Records k .. k + nrec - 1 were just written to the side file: update the
 * windows that hold or directly follow them; one they would leave with a
 * hole is dropped.
 */
static void
recs_put(int fd, uint64 k, size_t nrec, const uint8 *src)
{
	for (int i = 0; i < WIN_SLOTS; i++)
	{
		RecWindow  *w = &wins[i];
		uint64		lo,
					hi;

		if (w->fd != fd + 1)
			continue;
		lo = Max(k, w->base);
		hi = Min(k + nrec, w->base + WIN_RECS);
		if (lo >= hi)
			continue;
		if (lo - w->base > w->nvalid)
		{
			w->fd = 0;
			continue;
		}
		memcpy(winrecs + (size_t) i * WIN_RECS * REC_LEN +
			   (size_t) (lo - w->base) * REC_LEN,
			   src + (size_t) (lo - k) * REC_LEN, (size_t) (hi - lo) * REC_LEN);
		w->nvalid = (uint32) Max((uint64) w->nvalid, hi - w->base);
	}
}

/* The size record of a file of size bytes, as the side file holds it. */
static bool
check_size(int fd, int side, const CmkFileId *id, off_t size)
{
	uint8		aad[AAD_LEN];
	uint8		rec[REC_LEN];

	if (!recs_get(fd, side, nunits(size), 1, rec))
		return false;
	make_aad(aad, id, true, (uint64) size, 0);
	return unseal(aad, NULL, 0, rec);
}

/*
 * After the data file's open(): open its side file, or create it for a data
 * file that is new or truncated (empty, opened with O_CREAT or O_TRUNC): a
 * fresh salt, and the size record of an empty file.  A data file whose side
 * file is missing or is not one is refused with EIO (not ENOENT: some
 * callers take a missing file for an empty one).
 */
bool
cmk_tmpauth_open(int fd, const CmkFileId *id, const char *path, int flags,
				 mode_t mode)
{
	char		sidepath[MAXPGPATH];
	size_t		len = strlen(path);
	off_t		size;
	bool		fresh;
	int			sfd;
	uint8		hdr[HDR_LEN + REC_LEN];
	uint8		aad[AAD_LEN];

	if (!auth_on || fd < 0 || fd >= nsides || id->fork == 0xFF)
	{
		errno = EIO;
		return false;
	}
	if (len + SIDE_SUFFIX_LEN >= MAXPGPATH)
	{
		errno = ENAMETOOLONG;
		return false;
	}
	memcpy(sidepath, path, len);
	memcpy(sidepath + len, CMK_TMPAUTH_SUFFIX, SIDE_SUFFIX_LEN + 1);
	size = cmk_tmp_file_size(fd);
	if (size < 0)
		return false;
	fresh = size == 0 && (flags & (O_CREAT | O_TRUNC)) != 0;

	/* Counted against fd.c's budget before it exists. */
	ReserveExternalFD();
	sfd = open(sidepath,
			   (fresh || (flags & O_ACCMODE) != O_RDONLY ? O_RDWR : O_RDONLY) |
			   O_CLOEXEC | (fresh ? O_CREAT | O_TRUNC : 0),
			   mode != 0 ? mode : S_IRUSR | S_IWUSR);
	if (sfd < 0)
	{
		int			save_errno = errno;

		ReleaseExternalFD();
		errno = save_errno == ENOENT ? EIO : save_errno;
		return false;
	}

	memset(hdr, 0, sizeof(hdr));
	if (fresh)
	{
		memcpy(hdr, side_magic, sizeof(side_magic));
		put_le32(hdr + 8, 1);	/* version */
		put_le32(hdr + 12, U);
		make_aad(aad, id, true, 0, 0);
		if (getrandom(hdr + 16, SALT_LEN, 0) != SALT_LEN ||
			!use_file_key(hdr + 16) ||
			!fresh_nonces(hdr + HDR_LEN, 1) ||
			!seal(aad, NULL, NULL, 0, hdr + HDR_LEN) ||
			!cmk_tmp_pwrite_exact(sfd, hdr, sizeof(hdr), 0))
			goto fail;
	}
	else
	{
		uint8		want[16];

		memcpy(want, side_magic, sizeof(side_magic));
		put_le32(want + 8, 1);
		put_le32(want + 12, U);
		if (!cmk_tmp_pread_exact(sfd, hdr, HDR_LEN, 0) || memcmp(hdr, want, 16) != 0 ||
			(hdr[28] | hdr[29] | hdr[30] | hdr[31]) != 0)
			goto fail;
	}
	sides[fd].side = sfd + 1;
	memcpy(sides[fd].salt, hdr + 16, SALT_LEN);
	sides[fd].size = size;
	recs_forget(fd);
	return true;

fail:
	close(sfd);
	ReleaseExternalFD();
	errno = EIO;
	return false;
}

/* Inside close(), for every descriptor: forget and close its side file. */
void
cmk_tmpauth_close(int fd)
{
	SideEntry  *e = entry_of(fd);

	if (e == NULL)
		return;
	close(e->side - 1);
	e->side = 0;
	e->size = -1;
	recs_forget(fd);
	ReleaseExternalFD();
}

/*
 * unlink(): a data file takes its side file with it.  A side file that is
 * already gone counts as removed: directory scans (rmtree, walkdir, the
 * spill and temp-file cleanups) may list it before its data file's unlink
 * removed it, and some of them report a failed unlink as an error.
 */
int
cmk_tmpauth_unlink(const char *path, int (*unlink_fn) (const char *))
{
	char		buf[MAXPGPATH];
	size_t		len = strlen(path);
	CmkFileId	id;
	int			r;
	int			save_errno;

	if (!auth_on)
		return unlink_fn(path);
	if (len > SIDE_SUFFIX_LEN && len < MAXPGPATH &&
		strcmp(path + len - SIDE_SUFFIX_LEN, CMK_TMPAUTH_SUFFIX) == 0)
	{
		memcpy(buf, path, len - SIDE_SUFFIX_LEN);
		buf[len - SIDE_SUFFIX_LEN] = '\0';
		cmk_classify(buf, 0, &id);
		r = unlink_fn(path);
		if (r < 0 && errno == ENOENT && id.kind == CMK_FILE_TEMP && id.temp)
			r = 0;
		return r;
	}
	cmk_classify(path, 0, &id);
	r = unlink_fn(path);
	if (id.kind == CMK_FILE_TEMP && id.temp && len + SIDE_SUFFIX_LEN < MAXPGPATH)
	{
		save_errno = errno;
		memcpy(buf, path, len);
		memcpy(buf + len, CMK_TMPAUTH_SUFFIX, SIDE_SUFFIX_LEN + 1);
		(void) unlink_fn(buf);
		errno = save_errno;
	}
	return r;
}

/* ---------------------------------------------------------------------- */
/* Reading                                                                */

/* Unit k's plaintext, under a file of size bytes, into unitbuf. */
static bool
read_unit(int fd, int side, const CmkFileId *id, off_t size, uint64 k)
{
	off_t		us = (off_t) k * U;
	size_t		ulen = (size_t) Min((off_t) U, size - us);
	uint8		aad[AAD_LEN];
	uint8		rec[REC_LEN];

	if (!recs_get(fd, side, k, 1, rec) ||
		!cmk_tmp_pread_exact(fd, unitbuf, ulen, us))
		return false;
	make_aad(aad, id, false, k, (uint32) ulen);
	if (!unseal(aad, unitbuf, ulen, rec))
	{
		errno = EIO;
		return false;
	}
	return true;
}

/*
 * Read up to n bytes at off.  Every unit the range touches is checked; a
 * read that reaches the end of the file also checks the size record, so a
 * file cut short (even at a unit boundary) is an error, never an early end.
 */
ssize_t
cmk_tmpauth_pread(int fd, const CmkFileId *id, uint8 *buf, size_t n, off_t off)
{
	SideEntry  *e = entry_of(fd);
	off_t		size;
	size_t		total = 0;

	if (e == NULL || id->fork == 0xFF)
	{
		errno = EIO;
		return -1;
	}
	size = cur_size(e, fd);
	if (size < 0)
		return -1;
	if (!use_file_key(e->salt))
	{
		errno = EIO;
		return -1;
	}
	/* at the end, the file's real size must be the one we know */
	if (off + (off_t) n >= size && cmk_tmp_file_size(fd) != size)
	{
		errno = EIO;
		return -1;
	}
	if (off >= size)
	{
		if (!check_size(fd, e->side - 1, id, size))
		{
			errno = EIO;
			return -1;
		}
		return 0;
	}
	if ((off_t) n > size - off)
		n = (size_t) (size - off);

	while (total < n)
	{
		off_t		pos = off + (off_t) total;
		off_t		want_end = off + (off_t) n;
		uint64		k0 = (uint64) pos / U;
		uint64		k1 = Min((uint64) (want_end - 1) / U, k0 + CHUNK_UNITS - 1);
		off_t		cs = (off_t) k0 * U;
		off_t		ce = Min((off_t) (k1 + 1) * U, size);
		bool		at_end = ce == size;
		size_t		nrec = (size_t) (k1 - k0 + 1) + (at_end ? 1 : 0);
		bool		direct = cs >= off && ce <= want_end;
		uint8	   *data = direct ? buf + (cs - off) : chunkbuf;
		uint8		aad[AAD_LEN];

		if (!recs_get(fd, e->side - 1, k0, nrec, recbuf) ||
			!cmk_tmp_pread_exact(fd, data, (size_t) (ce - cs), cs))
			goto fail;
		if (at_end)
		{
			make_aad(aad, id, true, (uint64) size, 0);
			if (!unseal(aad, NULL, 0, recbuf + (k1 - k0 + 1) * REC_LEN))
			{
				errno = EIO;
				goto fail;
			}
		}
		for (uint64 k = k0; k <= k1; k++)
		{
			off_t		us = (off_t) k * U;
			size_t		ulen = (size_t) (Min(us + U, size) - us);

			make_aad(aad, id, false, k, (uint32) ulen);
			if (!unseal(aad, data + (us - cs), ulen, recbuf + (k - k0) * REC_LEN))
			{
				errno = EIO;
				goto fail;
			}
		}
		if (!direct)
		{
			off_t		to = Min(ce, want_end);

			memcpy(buf + total, chunkbuf + (pos - cs), (size_t) (to - pos));
			explicit_bzero(chunkbuf, (size_t) (ce - cs));
		}
		total = (size_t) (Min(ce, want_end) - off);
	}
	return (ssize_t) total;

fail:
	/* nothing of a read that failed is handed out */
	explicit_bzero(buf, n);
	explicit_bzero(chunkbuf, CHUNK_UNITS * U);
	return -1;
}

/* ---------------------------------------------------------------------- */
/* Writing                                                                */

/*
 * Write n bytes at off.  Each unit the write touches, the old last unit if
 * the file grows past it, and every unit of a gap between the old end and
 * off (zeros, as the kernel would fill it) is rebuilt in plaintext, sealed
 * with a fresh nonce, and written with its record; a write that changes the
 * size also writes the new size record after the last unit's record.  Old
 * units that are only partly overwritten are read and checked first.  All
 * of n, or -1.
 */
ssize_t
cmk_tmpauth_pwrite(int fd, const CmkFileId *id, const uint8 *buf, size_t n,
				   off_t off)
{
	SideEntry  *e = entry_of(fd);
	off_t		oldsize;
	off_t		end = off + (off_t) n;
	off_t		newsize;
	uint64		k,
				klast;

	if (e == NULL || id->fork == 0xFF)
	{
		errno = EIO;
		return -1;
	}
	oldsize = cur_size(e, fd);
	if (oldsize < 0)
		return -1;
	if (n == 0)
		return 0;
	if (!use_file_key(e->salt))
	{
		errno = EIO;
		return -1;
	}
	newsize = Max(oldsize, end);
	/* from the old end if the write leaves a gap, to the write's last unit */
	k = (uint64) Min(off, oldsize) / U;
	klast = (uint64) (end - 1) / U;

	while (k <= klast)
	{
		uint64		kc = Min(klast, k + CHUNK_UNITS - 1);
		off_t		cs = (off_t) k * U;
		off_t		ce = Min((off_t) (kc + 1) * U, newsize);
		bool		size_rec = kc == klast && newsize != oldsize;
		size_t		nrec = (size_t) (kc - k + 1) + (size_rec ? 1 : 0);
		uint8		aad[AAD_LEN];

		/* one getrandom() for the chunk's nonces */
		if (!fresh_nonces(recbuf, nrec))
		{
			errno = EIO;
			goto fail;
		}
		for (uint64 u = k; u <= kc; u++)
		{
			off_t		us = (off_t) u * U;
			off_t		ue = Min(us + U, newsize);
			const uint8 *plain;

			if (us >= off && ue <= end)
				plain = buf + (us - off);	/* all from the caller */
			else
			{
				off_t		oldto = Min(ue, oldsize);

				if (oldto > us)
				{
					if (!read_unit(fd, e->side - 1, id, oldsize, u))
						goto fail;
				}
				else
					oldto = us;
				if (oldto < ue)
					memset(unitbuf + (oldto - us), 0, (size_t) (ue - oldto));
				if (end > us && off < ue)
					memcpy(unitbuf + (Max(off, us) - us), buf + (Max(off, us) - off),
						   (size_t) (Min(end, ue) - Max(off, us)));
				plain = unitbuf;
			}
			make_aad(aad, id, false, u, (uint32) (ue - us));
			if (!seal(aad, plain, chunkbuf + (us - cs), (size_t) (ue - us),
					  recbuf + (u - k) * REC_LEN))
			{
				errno = EIO;
				goto fail;
			}
		}
		explicit_bzero(unitbuf, U);
		if (size_rec)
		{
			uint8	   *rec = recbuf + (kc - k + 1) * REC_LEN;

			make_aad(aad, id, true, (uint64) newsize, 0);
			if (!seal(aad, NULL, NULL, 0, rec))
			{
				errno = EIO;
				goto fail;
			}
		}
		/* data first: a record never vouches for bytes not yet written */
		if (!cmk_tmp_pwrite_exact(fd, chunkbuf, (size_t) (ce - cs), cs) ||
			!cmk_tmp_pwrite_exact(e->side - 1, recbuf, nrec * REC_LEN, rec_off(k)))
		{
			/* what reached the files is unknown: start again from them */
			e->size = -1;
			recs_forget(fd);
			return -1;
		}
		recs_put(fd, k, nrec, recbuf);
		e->size = Max(e->size, ce);
		k = kc + 1;
	}
	return (ssize_t) n;

fail:
	explicit_bzero(unitbuf, U);
	return -1;
}

/*
 * Truncate to len.  Shrinking inside a unit re-seals the unit that now ends
 * the file under its new length (its old plaintext is read and checked
 * first); either way the size record for len is written after the last
 * unit's record and the side file is cut after it.  Growing writes sealed
 * zeros, as the kernel would fill with zeros.
 */
int
cmk_tmpauth_ftruncate(int fd, const CmkFileId *id, off_t len)
{
	static const uint8 zeros[U] = {0};
	SideEntry  *e = entry_of(fd);
	off_t		oldsize;
	uint64		k;
	size_t		cut;
	uint8		aad[AAD_LEN];

	if (e == NULL || id->fork == 0xFF)
	{
		errno = EIO;
		return -1;
	}
	if (len < 0)
	{
		errno = EINVAL;
		return -1;
	}
	oldsize = cur_size(e, fd);
	if (oldsize < 0)
		return -1;
	if (len == oldsize)
		return 0;
	if (len > oldsize)
	{
		while (oldsize < len)
		{
			size_t		step = (size_t) Min((off_t) U, len - oldsize);

			if (cmk_tmpauth_pwrite(fd, id, zeros, step, oldsize) < 0)
				return -1;
			oldsize += (off_t) step;
		}
		return 0;
	}
	if (!use_file_key(e->salt))
	{
		errno = EIO;
		return -1;
	}

	k = (uint64) len / U;
	cut = (size_t) (len % U);
	if (cut > 0 && !read_unit(fd, e->side - 1, id, oldsize, k))
		goto fail;
	/* from here on the files change: the caches start again from them */
	e->size = -1;
	recs_forget(fd);
	if (ftruncate(fd, len) != 0)
		goto fail;
	if (cut > 0)
	{
		make_aad(aad, id, false, k, (uint32) cut);
		if (!fresh_nonces(recbuf, 2) ||
			!seal(aad, unitbuf, chunkbuf, cut, recbuf))
		{
			errno = EIO;
			goto fail;
		}
		explicit_bzero(unitbuf, U);
		if (!cmk_tmp_pwrite_exact(fd, chunkbuf, cut, (off_t) k * U))
			goto fail;
	}
	else if (!fresh_nonces(recbuf + REC_LEN, 1))
	{
		errno = EIO;
		goto fail;
	}
	make_aad(aad, id, true, (uint64) len, 0);
	if (!seal(aad, NULL, NULL, 0, recbuf + REC_LEN))
	{
		errno = EIO;
		goto fail;
	}
	if (!cmk_tmp_pwrite_exact(e->side - 1, cut > 0 ? recbuf : recbuf + REC_LEN,
					 cut > 0 ? 2 * REC_LEN : REC_LEN,
					 rec_off(cut > 0 ? k : nunits(len))) ||
		ftruncate(e->side - 1, rec_off(nunits(len) + 1)) != 0)
		goto fail;
	e->size = len;
	return 0;

fail:
	explicit_bzero(unitbuf, U);
	return -1;
}
