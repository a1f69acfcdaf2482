/*-------------------------------------------------------------------------
 *
 * model_test.c
 *		The encrypted byte file (src/io/io_tmpfile.c) against a plain model.
 *
 * Random writes (at any offset, over the end, with holes, of 1 byte to
 * several units), reads of random ranges and truncations, with file sizes
 * kept around the layout's edges (16 bytes, unit boundaries, a remainder
 * shorter than 16 bytes); after every operation the file's size equals the
 * model's, every byte reads back as in the model, and no 16-byte run of the
 * plaintext (which is made of distinct counters) is found on disk.  This
 * runs for both formats: the authenticated one of temporary and spill files
 * (io_tmpauth.c, with its side file) and the XTS one of pg_notify (files of
 * 16 bytes or more; shorter ones are refused).
 *
 * Then the authenticated format is attacked: every byte of the data file
 * and of the side file's header and records is flipped in turn (one at a
 * time, then flipped back), a unit is moved onto another with its record,
 * the file is cut at a unit boundary or extended behind the layer's back,
 * the side file is deleted: each time the read (or the reopen) must fail
 * with EIO, and succeed again once the damage is undone.  The same bytes
 * under another identity are different on disk; two writes of the same
 * bytes are different on disk (fresh nonces), also in a forked child and
 * its parent after the fork; the caches of the size and of the side file's
 * records (io_tmpauth.c, "Caches") follow writes and truncations through
 * many files at once, large ones crossing their windows, and a second
 * descriptor on a file changed through the first never reads stale or
 * wrong bytes (EIO, or the new ones); the XTS format leaves holes
 * and refuses tiny files; an unusable identity refuses every access; and no
 * operation on an open file allocates memory in OpenSSL (counted through
 * CRYPTO_set_mem_functions).  Ends with "N passed, M failed".
 *
 * Built and run by t/250_temp_file_encryption.pl: this file is compiled
 * against the server headers with stubs for the few elog entry points that
 * io_tmpfile.c's start-up uses; it never runs inside a server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "io/io_int.h"

/* fd.c's descriptor accounting, called by io_tmpauth.c */
static int	external_fds = 0;

void
ReserveExternalFD(void)
{
	external_fds++;
}

void
ReleaseExternalFD(void)
{
	external_fds--;
}

/* OpenSSL's allocations, counted */
static long allocations = 0;

static void *
count_malloc(size_t n, const char *file, int line)
{
	allocations++;
	return malloc(n);
}

static void *
count_realloc(void *p, size_t n, const char *file, int line)
{
	allocations++;
	return realloc(p, n);
}

static void
count_free(void *p, const char *file, int line)
{
	free(p);
}

/* elog stubs: start-up failures abort the test. */
bool
errstart(int elevel, const char *domain)
{
	return elevel >= ERROR;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	fprintf(stderr, "ereport at %s:%d\n", filename, lineno);
	abort();
}

int
errcode(int sqlerrcode)
{
	return 0;
}

int
errmsg(const char *fmt,...)
{
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	return 0;
}

int
errdetail(const char *fmt,...)
{
	return 0;
}

int
errhint(const char *fmt,...)
{
	return 0;
}

const char *
GetConfigOption(const char *name, bool missing_ok, bool restrict_privileged)
{
	return NULL;
}

#define MAXSIZE (5 * 8192 + 100)

static uint8 model[MAXSIZE + 65536];
static uint8 disk[MAXSIZE + 65536];
static uint8 got[MAXSIZE + 65536];
static off_t msize = 0;
static int	failures = 0;
static int	checks = 0;
static uint32 counter = 1;

static void
fail(const char *what, long a, long b)
{
	failures++;
	fprintf(stderr, "FAIL: %s (%ld, %ld)\n", what, a, b);
}

/* Plaintext with no repeated 16-byte run: 4-byte counters, distinct. */
static void
fill(uint8 *p, size_t n)
{
	for (size_t i = 0; i < n; i += 4)
	{
		uint32		v = counter++ | 0x80000000u;

		memcpy(p + i, &v, Min(4, n - i));
	}
}

static off_t
pick_size(void)
{
	static const off_t edges[] = {0, 1, 15, 16, 17, 31, 8176, 8191, 8192, 8193,
	8207, 8208, 8209, 16383, 16384, 16385, 16399, 16400, 24576, 24590};
	off_t		base = edges[random() % lengthof(edges)];

	return Min(MAXSIZE, base + (random() % 3 == 0 ? random() % 40 : 0));
}

static void
check(int fd, const CmkFileId *id)
{
	off_t		size = lseek(fd, 0, SEEK_END);
	ssize_t		r;

	checks++;
	if (size != msize)
	{
		fail("size", (long) size, (long) msize);
		return;
	}
	r = cmk_tmpfile_pread(fd, id, got, (size_t) msize + 100, 0);
	if (r != msize || memcmp(got, model, msize) != 0)
		fail("full read", (long) r, (long) msize);
	/* random ranges */
	for (int k = 0; k < 4 && msize > 0; k++)
	{
		off_t		off = random() % msize;
		size_t		n = 1 + random() % (msize - off + 50);

		r = cmk_tmpfile_pread(fd, id, got, n, off);
		if (r != Min((off_t) n, msize - off) || memcmp(got, model + off, r) != 0)
			fail("range read", (long) off, (long) n);
	}
	/* nothing of the plaintext on disk: no 16-byte window of the model */
	if (pread(fd, disk, msize, 0) != msize)
		fail("raw read", 0, 0);
	for (off_t i = 0; i + 16 <= msize; i += 16)
	{
		bool		all_zero = true;

		for (int j = 0; j < 16; j++)
			all_zero &= model[i + j] == 0;
		if (!all_zero && memcmp(disk + i, model + i, 16) == 0)
		{
			fail("plaintext on disk", (long) i, 0);
			break;
		}
	}
	/* (from 4 bytes on: a 1-byte ciphertext equals its plaintext 1 time in 256) */
	if (msize >= 4 && msize < 16 && memcmp(disk, model, msize) == 0)
		fail("tiny file in clear", (long) msize, 0);
}

/*
 * Random writes, rewrites and truncations against the model.  The XTS
 * format (xts) refuses files of 1 to 15 bytes: such operations are skipped.
 */
static void
run_model(int fd, const CmkFileId *id, int iters, bool xts)
{
	for (int it = 0; it < iters; it++)
	{
		int			op = random() % 10;

		if (op < 6)
		{
			/* write: near the end, at a unit edge, or anywhere */
			off_t		off;
			size_t		n;

			if (random() % 2)
				off = pick_size();
			else
				off = msize > 0 ? random() % (msize + 20) : random() % 20;
			n = random() % 4 == 0 ? 1 + random() % 20 : 1 + random() % (3 * 8192);
			if (off + (off_t) n > MAXSIZE ||
				(xts && Max(msize, off + (off_t) n) < 16))
				continue;
			fill(model + off, n);
			if (off > msize)
				memset(model + msize, 0, off - msize);
			if (cmk_tmpfile_pwrite(fd, id, model + off, n, off) != (ssize_t) n)
				fail("write", (long) off, (long) n);
			msize = Max(msize, off + (off_t) n);
		}
		else if (op < 8)
		{
			off_t		len = pick_size();

			if (xts && len > 0 && len < 16)
				continue;
			if (len > msize)
				memset(model + msize, 0, len - msize);
			if (cmk_tmpfile_ftruncate(fd, id, len) != 0)
				fail("truncate", (long) len, 0);
			msize = len;
		}
		else if (op == 8 && msize > 0)
		{
			/* rewrite a whole existing range with new bytes */
			off_t		off = random() % msize;
			size_t		n = 1 + random() % (msize - off);

			fill(model + off, n);
			if (cmk_tmpfile_pwrite(fd, id, model + off, n, off) != (ssize_t) n)
				fail("rewrite", (long) off, (long) n);
		}
		check(fd, id);
	}
}

static void
flip(const char *file, off_t pos)
{
	int			f = open(file, O_RDWR);
	uint8		b;

	if (f < 0 || pread(f, &b, 1, pos) != 1)
		fail("flip: read", (long) pos, 0);
	b ^= 0x01;
	if (pwrite(f, &b, 1, pos) != 1)
		fail("flip: write", (long) pos, 0);
	close(f);
}

/* Open the authenticated file as a reader would (no O_CREAT). */
static int
reopen(const char *path, const CmkFileId *id)
{
	int			fd = open(path, O_RDWR);

	if (fd < 0)
		return -1;
	if (!cmk_tmpauth_open(fd, id, path, O_RDWR, 0))
	{
		int			e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static void
close_auth(int fd)
{
	cmk_tmpauth_close(fd);
	close(fd);
}

/* A full read of the file must fail with EIO (or the reopen must). */
static void
expect_damage(const char *path, const CmkFileId *id, const char *what, long a)
{
	int			fd;

	errno = 0;
	fd = reopen(path, id);
	checks++;
	if (fd < 0)
	{
		if (errno != EIO)
			fail(what, a, errno);
		return;
	}
	if (cmk_tmpfile_pread(fd, id, got, (size_t) msize + 100, 0) != -1 ||
		errno != EIO)
		fail(what, a, 0);
	close_auth(fd);
}

static void
expect_intact(const char *path, const CmkFileId *id, const char *what, long a)
{
	int			fd = reopen(path, id);

	checks++;
	if (fd < 0 ||
		cmk_tmpfile_pread(fd, id, got, (size_t) msize + 100, 0) != msize ||
		memcmp(got, model, msize) != 0)
		fail(what, a, 0);
	if (fd >= 0)
		close_auth(fd);
}

/*
 * The caches: NF files open at once (more record windows than the layer
 * caches), one of them large (its records span several windows), random
 * writes, rewrites, truncations and reads across them, each against its own
 * model, through the same descriptors all along.
 */
#define NF 40
#define BIGSIZE (300 * 8192 + 77)

static void
run_caches(const char *path, const CmkFileId *id, int iters)
{
	int			fds[NF];
	uint8	   *models[NF];
	off_t		sizes[NF];
	off_t		caps[NF];
	uint8	   *buf = malloc(BIGSIZE + 100);
	char		name[1100];

	for (int i = 0; i < NF; i++)
	{
		snprintf(name, sizeof(name), "%s.c%d", path, i);
		caps[i] = i == 0 ? BIGSIZE : 3 * 8192 + 50;
		models[i] = calloc(1, caps[i]);
		sizes[i] = 0;
		fds[i] = open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fds[i] < 0 || models[i] == NULL ||
			!cmk_tmpauth_open(fds[i], id, name, O_RDWR | O_CREAT | O_TRUNC, 0600))
			fail("caches: open", i, errno);
	}
	/* the large file written sequentially in 8 kB blocks, as BufFile does */
	for (off_t off = 0; off < BIGSIZE; off += 8192)
	{
		size_t		n = (size_t) Min((off_t) 8192, BIGSIZE - off);

		fill(models[0] + off, n);
		if (cmk_tmpfile_pwrite(fds[0], id, models[0] + off, n, off) != (ssize_t) n)
			fail("caches: sequential write", (long) off, 0);
	}
	sizes[0] = BIGSIZE;
	for (int it = 0; it < iters; it++)
	{
		int			i = random() % 4 == 0 ? 0 : random() % NF;
		int			op = random() % 10;
		off_t		cap = caps[i];
		off_t		off;
		size_t		n;
		ssize_t		r;

		if (op < 4)
		{
			off = random() % (Min(sizes[i] + 9000, cap - 1) + 1);
			n = 1 + random() % (3 * 8192);
			if (off + (off_t) n > cap)
				n = (size_t) (cap - off);
			if (n == 0)
				continue;
			fill(models[i] + off, n);
			if (off > sizes[i])
				memset(models[i] + sizes[i], 0, off - sizes[i]);
			if (cmk_tmpfile_pwrite(fds[i], id, models[i] + off, n, off) != (ssize_t) n)
				fail("caches: write", i, (long) off);
			sizes[i] = Max(sizes[i], off + (off_t) n);
		}
		else if (op == 4)
		{
			off_t		len = random() % (sizes[i] + 20000);

			if (len > cap)
				len = cap;
			if (len > sizes[i])
				memset(models[i] + sizes[i], 0, len - sizes[i]);
			if (cmk_tmpfile_ftruncate(fds[i], id, len) != 0)
				fail("caches: truncate", i, (long) len);
			sizes[i] = len;
		}
		else
		{
			off = sizes[i] > 0 ? random() % (sizes[i] + 10) : 0;
			n = 1 + random() % (i == 0 && random() % 8 == 0 ? BIGSIZE : 40000);
			r = cmk_tmpfile_pread(fds[i], id, buf, n, off);
			checks++;
			if (r != Max(0, Min((off_t) n, sizes[i] - off)) ||
				(r > 0 && memcmp(buf, models[i] + off, r) != 0))
				fail("caches: read", i, (long) off);
		}
	}
	for (int i = 0; i < NF; i++)
	{
		/* the real size, and all of the file through a fresh descriptor */
		snprintf(name, sizeof(name), "%s.c%d", path, i);
		checks++;
		if (lseek(fds[i], 0, SEEK_END) != sizes[i])
			fail("caches: size on disk", i, (long) sizes[i]);
		close_auth(fds[i]);
		fds[i] = reopen(name, id);
		checks++;
		if (fds[i] < 0 ||
			cmk_tmpfile_pread(fds[i], id, buf, BIGSIZE + 100, 0) != sizes[i] ||
			memcmp(buf, models[i], sizes[i]) != 0)
			fail("caches: reread", i, 0);
		if (fds[i] >= 0)
			close_auth(fds[i]);
		unlink(name);
		strcat(name, CMK_TMPAUTH_SUFFIX);
		unlink(name);
		free(models[i]);
	}
	free(buf);
}

/*
 * Two descriptors on one file (PostgreSQL does not do this, io_tmpauth.c's
 * "Caches"; a stale cache must still fail closed): b has read the file, a
 * rewrites a unit and then grows the file; b's reads give EIO or the new
 * bytes, never the old ones nor anything else, and b reopened reads all.
 */
static void
two_descriptors(const char *path, const CmkFileId *id)
{
	char		side[1100];
	int			a,
				b;
	ssize_t		r;
	static uint8 old[4 * 8192];

	snprintf(side, sizeof(side), "%s%s", path, CMK_TMPAUTH_SUFFIX);
	a = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (a < 0 || !cmk_tmpauth_open(a, id, path, O_RDWR | O_CREAT | O_TRUNC, 0600))
		fail("two: open a", 0, errno);
	fill(model, 3 * 8192);
	msize = 3 * 8192;
	cmk_tmpfile_pwrite(a, id, model, msize, 0);
	b = reopen(path, id);
	checks++;
	if (b < 0 || cmk_tmpfile_pread(b, id, got, msize + 100, 0) != msize ||
		memcmp(got, model, msize) != 0)
		fail("two: b reads", 0, 0);
	memcpy(old, model, msize);

	/*
	 * a grows the file: b's read to the end must not stop at the old end
	 * (b's cached records, the old size record among them, are all still
	 * authentic: only fstat at the end tells)
	 */
	fill(model + msize, 5000);
	cmk_tmpfile_pwrite(a, id, model + msize, 5000, msize);
	msize += 5000;
	errno = 0;
	r = cmk_tmpfile_pread(b, id, got, msize + 100, 0);
	checks++;
	if (!(r == -1 && errno == EIO) &&
		!(r == msize && memcmp(got, model, msize) == 0))
		fail("two: b after a grew the file", (long) r, errno);

	/* a rewrites unit 1: b, with unit 1's old record cached, must not pass */
	fill(model + 8192, 8192);
	cmk_tmpfile_pwrite(a, id, model + 8192, 8192, 8192);
	errno = 0;
	r = cmk_tmpfile_pread(b, id, got, 8192, 8192);
	checks++;
	if (!(r == -1 && errno == EIO) &&
		!(r == 8192 && memcmp(got, model + 8192, 8192) == 0))
		fail("two: b after a rewrote a unit", (long) r, errno);

	/* a shrinks it: b fails or reads the new bytes */
	cmk_tmpfile_ftruncate(a, id, 8192 + 10);
	msize = 8192 + 10;
	errno = 0;
	r = cmk_tmpfile_pread(b, id, got, 3 * 8192, 0);
	checks++;
	if (!(r == -1 && errno == EIO) &&
		!(r == msize && memcmp(got, model, msize) == 0))
		fail("two: b after a shrank the file", (long) r, errno);

	close_auth(b);
	b = reopen(path, id);
	checks++;
	if (b < 0 || cmk_tmpfile_pread(b, id, got, 3 * 8192, 0) != msize ||
		memcmp(got, model, msize) != 0)
		fail("two: b reopened", 0, 0);
	if (b >= 0)
		close_auth(b);
	close_auth(a);
	unlink(path);
	unlink(side);
}

/*
 * Nonces after fork(): the parent has drawn nonces (the pool is filled),
 * then forks; the child and the parent then make the same write, each to
 * its own file: the two units must have different nonces.
 */
static void
fork_nonces(const char *path, const CmkFileId *id)
{
	char		pp[1100],
				cp[1100],
				side[1100];
	uint8		np[12],
				nc[12];
	int			fd,
				c;
	pid_t		pid;
	int			status = 0;

	snprintf(pp, sizeof(pp), "%s.parent", path);
	snprintf(cp, sizeof(cp), "%s.child", path);
	fd = open(pp, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || !cmk_tmpauth_open(fd, id, pp, O_RDWR | O_CREAT | O_TRUNC, 0600))
		fail("fork: open", 0, errno);
	c = open(cp, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (c < 0 || !cmk_tmpauth_open(c, id, cp, O_RDWR | O_CREAT | O_TRUNC, 0600))
		fail("fork: open", 1, errno);
	/* both files opened (the pool in use); the same write in both processes */
	fill(model, 8192);
	fflush(NULL);
	pid = fork();
	if (pid == 0)
		_exit(cmk_tmpfile_pwrite(c, id, model, 8192, 0) == 8192 ? 0 : 1);
	waitpid(pid, &status, 0);
	if (cmk_tmpfile_pwrite(fd, id, model, 8192, 0) != 8192)
		fail("fork: parent write", 0, 0);
	close_auth(fd);
	close_auth(c);
	snprintf(side, sizeof(side), "%s%s", pp, CMK_TMPAUTH_SUFFIX);
	fd = open(side, O_RDONLY);
	/* the parent's unit 0 (its first record after the fork) */
	if (fd < 0 || pread(fd, np, 12, 32) != 12)
		fail("fork: parent side", 0, 0);
	close(fd);
	unlink(pp);
	unlink(side);
	snprintf(side, sizeof(side), "%s%s", cp, CMK_TMPAUTH_SUFFIX);
	fd = open(side, O_RDONLY);
	/* the child's unit 0 */
	checks++;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || fd < 0 ||
		pread(fd, nc, 12, 32) != 12)
		fail("fork: child write", status, 0);
	else if (memcmp(np, nc, 12) == 0)
		fail("a forked child reused its parent's nonces", 0, 0);
	if (fd >= 0)
		close(fd);
	unlink(cp);
	unlink(side);
}


int
main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/tmp/cmk_tmpfile_model";
	int			iters = argc > 2 ? atoi(argv[2]) : 20000;
	CmkTmpRealIo io = {pread, pwrite, ftruncate};
	CmkFileId	id;
	CmkFileId	nid;
	CmkFileId	bad;
	char		side[1100];
	int			fd;
	long		allocs_before;

	if (!CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free))
		fail("counting allocator", 0, 0);
	srandom(argc > 3 ? atoi(argv[3]) : 1);
	cmk_tmpfile_init();
	cmk_tmpfile_set_real(&io);
	memset(&id, 0, sizeof(id));
	if (!cmk_tmpfile_classify("base/pgsql_tmp/pgsql_tmp42.0", &id) ||
		id.kind != CMK_FILE_TEMP || id.temp != 1)
		fail("classify", 0, 0);
	memset(&nid, 0, sizeof(nid));
	if (!cmk_tmpfile_classify("pg_notify/0000", &nid) || nid.temp != 0)
		fail("classify pg_notify", 0, 0);
	memset(&bad, 0, sizeof(bad));
	if (cmk_tmpfile_classify("base/5/16384", &bad) ||
		cmk_tmpfile_classify("pg_replslot/s/state", &bad) ||
		!cmk_tmpfile_classify("pg_replslot/s/xid-767-lsn-0-1000000.spill", &bad) ||
		!cmk_tmpfile_classify("pg_notify/0000", &bad) ||
		!cmk_tmpfile_classify("pg_tblspc/16385/PG_15_202209061/pgsql_tmp/pgsql_tmp9.0.fileset/o1of2.p0.0", &bad) ||
		cmk_tmpfile_classify("pg_tblspc/16385/PG_15_202209061/5/16384", &bad))
		fail("classify kinds", 0, 0);
	/* Citus's intermediate results: any file under base/pgsql_job_cache */
	if (!cmk_tmpfile_classify("base/pgsql_job_cache/10_1_5/repartition_7_3_0.data", &bad) ||
		!cmk_tmpfile_classify("base/pgsql_job_cache/10_4242/jc.data", &bad) ||
		cmk_tmpfile_classify("base/pgsql_job_cache/", &bad) ||
		cmk_tmpfile_classify("base/pgsql_job_cachex/1", &bad))
		fail("classify job cache", 0, 0);
	memset(&bad, 0, sizeof(bad));
	if (!cmk_tmpfile_classify("base/pgsql_tmp/pgsql_tmp42.0.cmkauth", &bad) ||
		bad.fork != 0xFF || bad.temp != 0)
		fail("a side file is no data file", 0, 0);
	snprintf(side, sizeof(side), "%s%s", path, CMK_TMPAUTH_SUFFIX);

	/* The authenticated format: no operation allocates in OpenSSL. */
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || !cmk_tmpauth_open(fd, &id, path, O_RDWR | O_CREAT | O_TRUNC, 0600))
	{
		perror(path);
		return 1;
	}
	allocs_before = allocations;
	run_model(fd, &id, iters, false);
	checks++;
	if (allocations != allocs_before)
		fail("OpenSSL allocated below fd.c", allocations - allocs_before, 0);

	/*
	 * Every damaged byte is noticed; undone, the file reads again.  (Opening
	 * and failing may allocate in OpenSSL — the first error of a thread —
	 * which is reported, not failed: the rule is about the I/O path.)
	 */
	allocs_before = allocations;
	cmk_tmpfile_ftruncate(fd, &id, 0);
	msize = 3 * 8192 + 100;
	fill(model, msize);
	if (cmk_tmpfile_pwrite(fd, &id, model, msize, 0) != msize)
		fail("write for damage", 0, 0);
	close_auth(fd);
	expect_intact(path, &id, "intact before damage", 0);
	for (off_t pos = 0; pos < msize; pos += (pos % 8192 < 40 || pos % 8192 > 8150) ? 1 : 61)
	{
		flip(path, pos);
		expect_damage(path, &id, "data byte flipped", (long) pos);
		flip(path, pos);
	}
	{
		off_t		sidelen = 32 + (4 + 1) * 28;	/* header, 4 units, size */

		for (off_t pos = 0; pos < sidelen; pos++)
		{
			flip(side, pos);
			expect_damage(path, &id, "side byte flipped", (long) pos);
			flip(side, pos);
		}
	}
	expect_intact(path, &id, "intact after flips", 0);
	{
		/* unit 0 moved onto unit 1, with its record */
		uint8		u0[8192],
					u1[8192],
					r0[28],
					r1[28];
		int			d = open(path, O_RDWR),
					sd = open(side, O_RDWR);

		pread(d, u0, 8192, 0);
		pread(d, u1, 8192, 8192);
		pread(sd, r0, 28, 32);
		pread(sd, r1, 28, 32 + 28);
		pwrite(d, u0, 8192, 8192);
		pwrite(sd, r0, 28, 32 + 28);
		expect_damage(path, &id, "unit moved", 0);
		pwrite(d, u1, 8192, 8192);
		pwrite(sd, r1, 28, 32 + 28);
		expect_intact(path, &id, "unit moved back", 0);

		/* cut at a unit boundary, and extended, behind the layer's back */
		if (ftruncate(d, 3 * 8192) != 0)
			fail("raw truncate", 0, 0);
		{
			off_t		save = msize;

			msize = 3 * 8192;
			expect_damage(path, &id, "cut at a unit boundary", 0);
			msize = save;
		}
		pwrite(d, model + 3 * 8192, 100, 3 * 8192);	/* wrong bytes, right size */
		expect_damage(path, &id, "tail replaced", 0);
		close(d);
		close(sd);
	}
	{
		/* the side file deleted */
		checks++;
		unlink(side);
		errno = 0;
		fd = reopen(path, &id);
		if (fd >= 0 || errno != EIO)
			fail("side file deleted", fd, errno);
		if (fd >= 0)
			close_auth(fd);
	}

	fprintf(stderr, "OpenSSL allocations in the damage paths: %ld\n",
			allocations - allocs_before);

	/* Fresh nonces: the same bytes written twice differ on disk. */
	{
		uint8		a[8192],
					b[8192];

		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || !cmk_tmpauth_open(fd, &id, path, O_RDWR | O_CREAT | O_TRUNC, 0600))
			fail("recreate", 0, 0);
		fill(model, 8192);
		cmk_tmpfile_pwrite(fd, &id, model, 8192, 0);
		pread(fd, a, 8192, 0);
		cmk_tmpfile_pwrite(fd, &id, model, 8192, 0);
		pread(fd, b, 8192, 0);
		checks++;
		if (memcmp(a, b, 8192) == 0)
			fail("a rewrite reused its keystream", 0, 0);
		/*
		 * A write rewrites only the units it touches: units after it keep
		 * their ciphertext and records (BufFile and logtape rewrite blocks in
		 * the middle of large files).
		 */
		{
			static uint8 before[4 * 8192 + 200],
						after[4 * 8192 + 200];
			int			sd;

			fill(model, 4 * 8192);
			cmk_tmpfile_pwrite(fd, &id, model, 4 * 8192, 0);
			sd = open(side, O_RDONLY);
			pread(fd, before, 3 * 8192, 8192);
			pread(sd, before + 3 * 8192, 3 * 28, 32 + 28);
			cmk_tmpfile_pwrite(fd, &id, model, 100, 50);
			pread(fd, after, 3 * 8192, 8192);
			pread(sd, after + 3 * 8192, 3 * 28, 32 + 28);
			close(sd);
			checks++;
			if (memcmp(before, after, 3 * 8192 + 3 * 28) != 0)
				fail("a write rewrote units it does not touch", 0, 0);
		}
		/* tiny files are ordinary: two versions of 5 bytes share no keystream */
		cmk_tmpfile_ftruncate(fd, &id, 0);
		cmk_tmpfile_pwrite(fd, &id, (const uint8 *) "AAAAA", 5, 0);
		pread(fd, a, 5, 0);
		cmk_tmpfile_pwrite(fd, &id, (const uint8 *) "BBBBB", 5, 0);
		pread(fd, b, 5, 0);
		checks++;
		for (int i = 0; i < 5; i++)
			a[i] ^= b[i] ^ 'A' ^ 'B';
		if (memcmp(a, "\0\0\0\0\0", 5) == 0)
			fail("two tiny versions leak their XOR", 0, 0);
		close_auth(fd);
	}
	unlink(path);
	unlink(side);

	run_caches(path, &id, iters / 4);
	two_descriptors(path, &id);
	fork_nonces(path, &id);
	checks++;
	if (external_fds != 0)
		fail("side descriptors not released", external_fds, 0);

	/* The XTS format of pg_notify, against the model too. */
	msize = 0;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
	{
		perror(path);
		return 1;
	}
	run_model(fd, &nid, iters / 2, true);
	id = nid;

	/* The same bytes under another identity are different on disk. */
	{
		CmkFileId	other;
		uint8		a[8192],
					b[8192];

		memset(&other, 0, sizeof(other));
		cmk_tmpfile_classify("pg_notify/0001", &other);
		fill(model, 8192);
		cmk_tmpfile_ftruncate(fd, &id, 0);
		cmk_tmpfile_pwrite(fd, &id, model, 8192, 0);
		pread(fd, a, 8192, 0);
		cmk_tmpfile_ftruncate(fd, &other, 0);
		cmk_tmpfile_pwrite(fd, &other, model, 8192, 0);
		pread(fd, b, 8192, 0);
		checks++;
		if (memcmp(a, b, 8192) == 0)
			fail("identity in the tweak", 0, 0);
	}

	/*
	 * A write beyond the end leaves whole units in between as holes (never
	 * written: another process may be writing them, as SLRU writers do) and
	 * they read as zeros.
	 */
	{
		uint8		raw[3 * 8192];

		cmk_tmpfile_ftruncate(fd, &id, 0);
		fill(model, 100);
		checks++;
		if (cmk_tmpfile_pwrite(fd, &id, model, 100, 3 * 8192 + 5) != 100 ||
			pread(fd, raw, sizeof(raw), 0) != sizeof(raw))
			fail("write beyond the end", 0, 0);
		for (int i = 0; i < (int) sizeof(raw); i++)
			if (raw[i] != 0)
			{
				fail("a hole was written", i, 0);
				break;
			}
		checks++;
		if (cmk_tmpfile_pread(fd, &id, got, 3 * 8192 + 105, 0) != 3 * 8192 + 105 ||
			!(got[0] == 0 && got[3 * 8192 + 4] == 0 &&
			  memcmp(got + 3 * 8192 + 5, model, 100) == 0))
			fail("a hole reads as zeros", 0, 0);
	}

	/* Fail closed: an identity that could not be computed refuses all. */
	bad = id;
	bad.fork = 0xFF;
	checks++;
	errno = 0;
	if (cmk_tmpfile_pwrite(fd, &bad, model, 100, 0) != -1 || errno != EIO ||
		cmk_tmpfile_pread(fd, &bad, got, 100, 0) != -1 || errno != EIO)
		fail("unusable identity", 0, 0);

	/* XTS refuses a file shorter than 16 bytes (no fixed keystream). */
	cmk_tmpfile_ftruncate(fd, &id, 0);
	checks++;
	errno = 0;
	if (cmk_tmpfile_pwrite(fd, &id, model, 5, 0) != -1 || errno != EIO)
		fail("tiny XTS file refused", 0, 0);

	close(fd);
	unlink(path);
	printf("%d passed, %d failed\n", checks - failures, failures);
	return failures > 0;
}
