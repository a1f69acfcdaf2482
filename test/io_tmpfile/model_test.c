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
 * plaintext (which is made of distinct counters) is found on disk.  A
 * second part checks that whole units skipped by a write beyond the end
 * stay holes and read as zeros, that the identity is in the tweak, and
 * fail-closed behaviour: an unusable identity refuses every access.  Ends with "N passed, M failed".
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
#include <unistd.h>

#include "io/io_int.h"

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

int
main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/tmp/cmk_tmpfile_model";
	int			iters = argc > 2 ? atoi(argv[2]) : 20000;
	CmkTmpRealIo io = {pread, pwrite, ftruncate};
	CmkFileId	id;
	CmkFileId	bad;
	int			fd;

	srandom(argc > 3 ? atoi(argv[3]) : 1);
	cmk_tmpfile_init();
	cmk_tmpfile_set_real(&io);
	memset(&id, 0, sizeof(id));
	if (!cmk_tmpfile_classify("base/pgsql_tmp/pgsql_tmp42.0", &id) ||
		id.kind != CMK_FILE_TEMP)
		fail("classify", 0, 0);
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

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
	{
		perror(path);
		return 1;
	}
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
			if (off + (off_t) n > MAXSIZE)
				continue;
			fill(model + off, n);
			if (off > msize)
				memset(model + msize, 0, off - msize);
			if (cmk_tmpfile_pwrite(fd, &id, model + off, n, off) != (ssize_t) n)
				fail("write", (long) off, (long) n);
			msize = Max(msize, off + (off_t) n);
		}
		else if (op < 8)
		{
			off_t		len = pick_size();

			if (len > msize)
				memset(model + msize, 0, len - msize);
			if (cmk_tmpfile_ftruncate(fd, &id, len) != 0)
				fail("truncate", (long) len, 0);
			msize = len;
		}
		else if (op == 8 && msize > 0)
		{
			/* rewrite a whole existing range with new bytes */
			off_t		off = random() % msize;
			size_t		n = 1 + random() % (msize - off);

			fill(model + off, n);
			if (cmk_tmpfile_pwrite(fd, &id, model + off, n, off) != (ssize_t) n)
				fail("rewrite", (long) off, (long) n);
		}
		check(fd, &id);
	}

	/* The same bytes under another identity are different on disk. */
	{
		CmkFileId	other;
		uint8		a[8192],
					b[8192];

		memset(&other, 0, sizeof(other));
		cmk_tmpfile_classify("base/pgsql_tmp/pgsql_tmp42.1", &other);
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

	close(fd);
	unlink(path);
	printf("%d passed, %d failed\n", checks - failures, failures);
	return failures > 0;
}
