/*-------------------------------------------------------------------------
 *
 * io_int.h
 *		Declarations shared by the files of the I/O layer (src/io/).
 *
 * The boundary below fd.c: everything declared here except the start-up
 * functions (marked) runs inside the libc calls of PostgreSQL's fd.c, md.c,
 * xlog.c and copydir.c, sometimes inside a critical section, never in a
 * signal handler on an encrypted file.  It must not palloc, ereport or elog,
 * take locks, allocate memory or touch shared memory (the written-down
 * exceptions: io_rawstream.c, io_tmpauth.c, and io_readahead.c's lock-free
 * counters); a failure is reported to the caller as -1 with errno set, and
 * the caller's own ereport names the file, the block and the error.  See
 * docs/io-layer.md.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_IO_INT_H
#define CMK_IO_INT_H

#include <sys/types.h>
#include <sys/uio.h>

#include "crypto/cmk_crypto.h"

/* What a file holds, decided once from its path when it is opened. */
typedef enum CmkFileKind
{
	CMK_FILE_OTHER = 0,			/* passed through untouched */
	CMK_FILE_RELATION,			/* a segment of a relation fork */
	CMK_FILE_WAL,				/* a WAL segment, whatever its name */
	CMK_FILE_TEMP,				/* temp, spill, pg_notify: io_tmpfile.c */
	CMK_FILE_WAL_STORED,		/* WAL read as stored: io_rawstream.c */
} CmkFileKind;

/*
 * A file's identity: 16 bytes, one fd-table entry.  For CMK_FILE_TEMP the
 * 12 bytes from db on hold the file's tweak identity (io_tmpfile.c), fork
 * 0xFF marks an identity that could not be computed, and temp = 1 marks the
 * authenticated format (io_tmpauth.c; 0: pg_notify's XTS format).
 */
typedef struct CmkFileId
{
	uint8		kind;			/* CmkFileKind */
	uint8		fork;			/* ForkNumber */
	uint8		temp;			/* a temporary relation (t<backend>_<node>) */
	uint8		append;			/* opened with O_APPEND */
	uint32		db;				/* database oid, 0 for global/ */
	uint32		relnode;		/* relfilenode */
	uint32		segno;			/* segment number (.1, .2, ...) */
} CmkFileId;

/* The page both formats work on: BLCKSZ == XLOG_BLCKSZ is checked. */
#define CMK_IO_PAGE			8192

/* libc's own pread, for the files that call it on the wrappers' behalf */
typedef ssize_t (*CmkRealPread) (int, void *, size_t, off_t);

/* io_classify.c: pure, no I/O.  Start-up: cmk_classify_set_datadir. */
extern void cmk_classify_set_datadir(const char *datadir);
extern void cmk_classify_set_pages(bool on);
typedef bool (*CmkTmpClassifier) (const char *rel, CmkFileId *id);
extern void cmk_classify_set_tmpfiles(CmkTmpClassifier classifier);
extern void cmk_classify(const char *path, int flags, CmkFileId *id);

/* io_rawcopy.c: pure, no I/O.  A base backup's copy reads as stored. */
extern bool cmk_rawcopy_wanted(const CmkFileId *id, int flags);
extern bool cmk_replication_command_is(const char *cmd, const char *keyword);

/*
 * io_rawstream.c: WAL streamed as stored to pg_basebackup and pg_receivewal
 * (with the hold-back, the written-down exception to the rules above), and
 * the walreceiver's refusal of such a stream.
 */
extern bool cmk_rawstream_wanted(const CmkFileId *id, int flags);
extern ssize_t cmk_rawstream_pread(CmkRealPread real_pread, int fd, uint8 *buf,
								   size_t n, off_t off);
extern void cmk_rawstream_check_received(const uint8 *buf, size_t n, off_t off);

/* io_fdtable.c.  Start-up: cmk_fdtable_create. */
extern void cmk_fdtable_create(void);
extern bool cmk_fdtable_set(int fd, const CmkFileId *id);
extern void cmk_fdtable_clear(int fd);
extern const CmkFileId *cmk_fdtable_get(int fd);

/* io_relpage.c.  Start-up: cmk_relpage_init. */
extern void cmk_relpage_init(const uint8 *key, bool checksums);
extern bool cmk_relpage_encrypt(const CmkFileId *id, uint32 blkno,
								const uint8 *plain, uint8 *out);
extern bool cmk_relpage_decrypt(const CmkFileId *id, uint32 blkno, uint8 *page);
extern bool cmk_relpage_decrypt_copy(const CmkFileId *id, uint32 blkno,
									 uint8 *stored, uint8 *out);

/* A relation page's block number in its relation, from the file offset. */
static inline uint32
cmk_rel_blkno(const CmkFileId *id, off_t pos)
{
	return (uint32) ((uint64) id->segno * RELSEG_SIZE + (uint64) pos / CMK_IO_PAGE);
}

/*
 * io_readahead.c: consecutive page reads of a relation file served from a
 * per-process window, kept coherent by per-region write counters shared by
 * all processes (the written-down exception in that file).  Start-up:
 * cmk_readahead_create.
 */
extern void cmk_readahead_create(void);
extern void cmk_readahead_note_write(const CmkFileId *id, off_t off, size_t n);
extern void cmk_readahead_note_truncate(const CmkFileId *id, off_t len,
										off_t old_size);
extern void cmk_readahead_forget(int fd);
extern bool cmk_readahead_pread(CmkRealPread real_pread, int fd,
								const CmkFileId *id, uint8 *buf, off_t off,
								ssize_t *result);

/* io_walpage.c.  Start-up: cmk_walpage_init. */
extern void cmk_walpage_init(const uint8 *key);
extern bool cmk_walpage_encrypt(const uint8 *plain, uint8 *out);
extern bool cmk_walpage_decrypt(uint8 *page);

/* io_tmpfile.c.  Start-up: cmk_tmpfile_init, cmk_tmpfile_set_real. */
typedef struct CmkTmpRealIo
{
	ssize_t		(*pread) (int, void *, size_t, off_t);
	ssize_t		(*pwrite) (int, const void *, size_t, off_t);
	int			(*ftruncate) (int, off_t);
} CmkTmpRealIo;

extern void cmk_tmpfile_init(void);
extern void cmk_tmpfile_check_settings(void);
extern void cmk_tmpfile_set_real(const CmkTmpRealIo *io);
/* Whole-range I/O with the real calls (EIO for a short read, ENOSPC for a
 * write of nothing), and the size by fstat: io_tmpfile.c and io_tmpauth.c. */
extern off_t cmk_tmp_file_size(int fd);
extern bool cmk_tmp_pread_exact(int fd, uint8 *buf, size_t len, off_t pos);
extern bool cmk_tmp_pwrite_exact(int fd, const uint8 *buf, size_t len, off_t pos);
extern bool cmk_tmpfile_classify(const char *rel, CmkFileId *id);
extern int	cmk_tmpfile_open_flags(int flags);
extern ssize_t cmk_tmpfile_pread(int fd, const CmkFileId *id, uint8 *buf,
								 size_t n, off_t off);
extern ssize_t cmk_tmpfile_pwrite(int fd, const CmkFileId *id,
								  const uint8 *buf, size_t n, off_t off);
extern int	cmk_tmpfile_ftruncate(int fd, const CmkFileId *id, off_t len);

/*
 * io_tmpauth.c: the authenticated format of temporary and spill files
 * (CMK_FILE_TEMP with temp = 1), nonces and tags in "<name>.cmkauth".
 * Start-up: cmk_tmpauth_init.  cmk_tmpauth_open must follow every open()
 * of such a file (the wrapper does it); the I/O functions refuse a
 * descriptor without its side file.
 */
#define CMK_TMPAUTH_SUFFIX	".cmkauth"

extern void cmk_tmpauth_init(void);
extern bool cmk_tmpauth_open(int fd, const CmkFileId *id, const char *path,
							 int flags, mode_t mode);
extern void cmk_tmpauth_close(int fd);
extern int	cmk_tmpauth_unlink(const char *path, int (*unlink_fn) (const char *));
extern ssize_t cmk_tmpauth_pread(int fd, const CmkFileId *id, uint8 *buf,
								 size_t n, off_t off);
extern ssize_t cmk_tmpauth_pwrite(int fd, const CmkFileId *id,
								  const uint8 *buf, size_t n, off_t off);
extern int	cmk_tmpauth_ftruncate(int fd, const CmkFileId *id, off_t len);

/* io_got.c.  Start-up only. */
typedef struct CmkGotSlot
{
	const char *name;			/* imported function */
	void	  **slot;			/* its JUMP_SLOT entry in the main program */
	bool		other_reloc;	/* also referenced otherwise (address taken) */
} CmkGotSlot;

extern bool cmk_got_scan(CmkGotSlot *slots, int nslots, char *why, size_t whysize);
extern bool cmk_got_swap(CmkGotSlot *slots, void *const *replacements,
						 void **originals, int nslots, char *why, size_t whysize);

/* io_rail.c.  Start-up only; ereport(FATAL) on refusal. */
extern bool cmk_rail_check_process(void);
extern void cmk_rail_check_build(void);
extern void cmk_rail_check_binary(const char *const *wrapped, int nwrapped);
extern void cmk_rail_check_stdio(const char *const *wrapped, int nwrapped);

/* io_wrappers.c */
extern void cmk_wrappers_check(void);	/* start-up: the rail */
extern void cmk_wrappers_create(void);	/* start-up: bounce buffers */
extern void cmk_wrappers_install(void); /* start-up: GOT swap */

/* io_stdio.c: fopen and fileno on temporary-kind files */
extern void cmk_stdio_check(void);	/* start-up: the rail */
extern void cmk_stdio_install(void);	/* start-up, after cmk_wrappers_install */

#endif							/* CMK_IO_INT_H */
