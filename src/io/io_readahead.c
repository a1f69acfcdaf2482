/*-------------------------------------------------------------------------
 *
 * io_readahead.c
 *		Sequential reads of relation files: many pages per system call.
 *
 * Why.  PostgreSQL 15 reads a relation one 8 kB block per pread().  On the
 * virtual machines we run on, the system call itself costs more than
 * copying the page (1.9 µs per 8 kB call against 0.45 µs per page in
 * 128 kB calls), and decrypting a page costs 1.3 µs on top: a scan served
 * from the OS page cache was a third slower with cluster encryption on.
 * Once a descriptor's block reads have been consecutive for a while, the
 * next read fetches the stored (encrypted) pages up to the end of the
 * block's 16-block region with one pread() into a per-process window, and
 * the following reads decrypt from the window straight into the caller's
 * buffer.  The window holds only what is on disk: ciphertext, or pages that
 * are plaintext on disk anyway.
 *
 * Coherence.  A page in a window must never be returned after another
 * process wrote a newer version of it.  Every write or truncation of a
 * relation file, in any process, increments the generation counter of each
 * 16-block region it touched, after the write returned; a window records its
 * region's counter before its pread() and is used only while the counter
 * is unchanged.  That is enough because PostgreSQL reads a block from disk
 * only when it has no valid copy in its buffers, which for a block being
 * written means after the write finished (the buffer's I/O-in-progress state
 * orders them; local buffers belong to one process).  The writer's
 * increment, inside its pwrite() wrapper, therefore happens before the
 * reader's check.  The counters are hashed: 65536 slots keyed by the file's
 * identity and region, so that a collision only discards a window early.
 * They are 64 bits wide and never wrap.
 *
 * The boundary below fd.c (docs/io-layer.md).  This file's written-down
 * exception is the counter table: memory shared by all server processes,
 * mapped by the postmaster before any fork, touched only with lock-free
 * atomic reads and increments.  No lock, no allocation, no elog.  The
 * windows are the process's own, mapped by the postmaster and inherited.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include "port/atomics.h"

#include "cmk_storage.h"
#include "io/io_int.h"

#define P					CMK_IO_PAGE
#define REGION_PAGES		16	/* a window never crosses a region */
#define REGION_BYTES		((off_t) P * REGION_PAGES)
#define WINDOWS				4	/* descriptors read ahead at once */
#define TRIGGER				3	/* consecutive reads before the first fill */
#define GEN_SLOTS			65536

typedef struct RaWindow
{
	int			fd;				/* -1: unused */
	CmkFileId	id;				/* what fd held when the entry was made */
	off_t		next_off;		/* where a consecutive read would start */
	int			run;			/* consecutive reads so far */
	uint32		lru;
	off_t		start;			/* the window: [start, start + len) */
	size_t		len;			/* 0: empty */
	uint32		slot;			/* its region's counter */
	uint64		gen;			/* the counter's value before the pread */
} RaWindow;

static pg_atomic_uint64 *gens = NULL;
static uint8 *window_pages = NULL;
static RaWindow windows[WINDOWS];
static uint32 lru_clock = 0;

/* Start-up, postmaster: the counters (shared) and the windows (private). */
void
cmk_readahead_create(void)
{
	void	   *g = mmap(NULL, GEN_SLOTS * sizeof(pg_atomic_uint64),
						 PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	void	   *w = mmap(NULL, WINDOWS * REGION_PAGES * P,
						 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (g == MAP_FAILED || w == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map the cluster encryption read-ahead buffers: %m")));
	gens = (pg_atomic_uint64 *) g;
	for (int i = 0; i < GEN_SLOTS; i++)
		pg_atomic_init_u64(&gens[i], 0);
	window_pages = (uint8 *) w;
	for (int i = 0; i < WINDOWS; i++)
		windows[i].fd = -1;
}

/* The counter of the region holding a file's byte offset pos. */
static inline uint32
gen_slot(const CmkFileId *id, off_t pos)
{
	uint64		region = (uint64) (pos / REGION_BYTES);
	uint64		h;

	h = (uint64) id->db * UINT64CONST(0x9E3779B97F4A7C15);
	h ^= (uint64) id->relnode * UINT64CONST(0xC2B2AE3D27D4EB4F);
	h ^= ((uint64) id->segno << 32 | (uint64) id->fork << 8 | id->temp) *
		UINT64CONST(0x165667B19E3779F9);
	h ^= region * UINT64CONST(0x27D4EB2F165667C5);
	h ^= h >> 29;
	h *= UINT64CONST(0xBF58476D1CE4E5B9);
	h ^= h >> 32;
	return (uint32) (h % GEN_SLOTS);
}

/*
 * After a write of [off, off + n) to a relation file returned (whether or
 * not it succeeded): every region it touched moves on.
 */
void
cmk_readahead_note_write(const CmkFileId *id, off_t off, size_t n)
{
	if (gens == NULL || n == 0)
		return;
	for (off_t r = off - off % REGION_BYTES; r < off + (off_t) n; r += REGION_BYTES)
		pg_atomic_fetch_add_u64(&gens[gen_slot(id, r)], 1);
}

/*
 * After ftruncate(fd, len): the regions from len to the old end.  old_size
 * is the size before the call (-1 if unknown: then every region a window
 * could hold, up to the largest segment).
 */
void
cmk_readahead_note_truncate(const CmkFileId *id, off_t len, off_t old_size)
{
	off_t		end = old_size >= 0 ? old_size : (off_t) RELSEG_SIZE * P;

	if (end > len)
		cmk_readahead_note_write(id, len, (size_t) (end - len));
}

void
cmk_readahead_forget(int fd)
{
	for (int i = 0; i < WINDOWS; i++)
		if (windows[i].fd == fd)
			windows[i].fd = -1;
}

static RaWindow *
window_for(int fd, const CmkFileId *id)
{
	RaWindow   *victim = &windows[0];

	for (int i = 0; i < WINDOWS; i++)
	{
		RaWindow   *w = &windows[i];

		if (w->fd == fd && memcmp(&w->id, id, sizeof(CmkFileId)) == 0)
			return w;
		if (w->fd == -1 || (victim->fd != -1 && w->lru < victim->lru))
			victim = w;
	}
	victim->fd = fd;
	victim->id = *id;
	victim->next_off = -1;
	victim->run = 0;
	victim->len = 0;
	return victim;
}

/* The pages of w's window. */
static inline uint8 *
window_mem(const RaWindow *w)
{
	return window_pages + (w - windows) * REGION_PAGES * P;
}

/* Whether the page at off is in w's window and still current. */
static inline bool
window_holds(RaWindow *w, off_t off)
{
	if (w->len == 0 || off < w->start || off + P > w->start + (off_t) w->len)
		return false;
	pg_read_barrier();
	if (pg_atomic_read_u64(&gens[w->slot]) != w->gen)
	{
		w->len = 0;
		return false;
	}
	return true;
}

/* Fill w from off to the end of off's region; false if not worth it. */
static bool
window_fill(CmkRealPread real_pread, int fd, RaWindow *w, off_t off)
{
	size_t		want = (size_t) (REGION_BYTES - off % REGION_BYTES);
	ssize_t		r;

	w->len = 0;
	if (want < 2 * P)
		return false;
	w->slot = gen_slot(&w->id, off);
	w->gen = pg_atomic_read_u64(&gens[w->slot]);
	pg_read_barrier();
	r = real_pread(fd, window_mem(w), want, off);
	if (r < (ssize_t) P)
		return false;			/* the plain path reads it and reports */
	w->start = off;
	w->len = (size_t) r - (size_t) r % P;
	return true;
}

/*
 * A read of one whole page of a relation file.  Returns true if it was
 * served from a window (*result: P, or -1 with errno = EIO when the page
 * does not decrypt); false: the caller reads it the usual way.
 */
bool
cmk_readahead_pread(CmkRealPread real_pread, int fd, const CmkFileId *id,
					uint8 *buf, off_t off, ssize_t *result)
{
	RaWindow   *w;

	if (!cmk_cluster_encryption_read_ahead || gens == NULL)
		return false;
	w = window_for(fd, id);
	w->lru = ++lru_clock;
	w->run = (off == w->next_off) ? w->run + 1 : 0;
	w->next_off = off + P;

	if (!window_holds(w, off))
	{
		if (w->run < TRIGGER || !window_fill(real_pread, fd, w, off))
			return false;
	}
	if (!cmk_relpage_decrypt_copy(id, cmk_rel_blkno(id, off),
								  window_mem(w) + (off - w->start), buf))
	{
		errno = EIO;
		*result = -1;
		return true;
	}
	*result = P;
	return true;
}
