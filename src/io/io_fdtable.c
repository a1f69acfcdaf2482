/*-------------------------------------------------------------------------
 *
 * io_fdtable.c
 *		Per-process table: file descriptor -> what the file holds.
 *
 * open() classifies the path once and records the identity here; every
 * read and write on that descriptor looks it up, close() forgets it.  The
 * table is mapped by the postmaster (anonymous, private) before any child
 * exists, one 16-byte entry per descriptor number below the soft
 * RLIMIT_NOFILE: the kernel never hands out a descriptor at or above it, and
 * PostgreSQL does not raise the limit.  Children inherit a copy through fork,
 * as they inherit the descriptors themselves; pages never touched cost
 * nothing.
 *
 * Runs inside open/close/read/write: no allocation, no elog, no locks (each
 * process has its own copy, and PostgreSQL processes are single-threaded).
 * A descriptor that does not fit is refused by the caller (fail closed).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include "io/io_int.h"

/* More than any sane max_files_per_process; 16 MB of address space. */
#define FDTABLE_MAX		(1 << 20)

static CmkFileId *fdtable = NULL;
static int	fdtable_size = 0;

/* Start-up, postmaster. */
void
cmk_fdtable_create(void)
{
	struct rlimit rl;
	size_t		n = 65536;
	void	   *p;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		n = (size_t) rl.rlim_cur;
	if (n > FDTABLE_MAX)
		n = FDTABLE_MAX;
	p = mmap(NULL, n * sizeof(CmkFileId), PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map the cluster encryption file table: %m")));
	fdtable = (CmkFileId *) p;
	fdtable_size = (int) n;
}

/* False if fd does not fit: the caller closes it and fails the open. */
bool
cmk_fdtable_set(int fd, const CmkFileId *id)
{
	if (fd < 0 || fd >= fdtable_size)
		return false;
	fdtable[fd] = *id;
	return true;
}

void
cmk_fdtable_clear(int fd)
{
	if (fd >= 0 && fd < fdtable_size && fdtable[fd].kind != CMK_FILE_OTHER)
		memset(&fdtable[fd], 0, sizeof(CmkFileId));
}

/* NULL for a descriptor that holds nothing we transform. */
const CmkFileId *
cmk_fdtable_get(int fd)
{
	if (fd < 0 || fd >= fdtable_size || fdtable[fd].kind == CMK_FILE_OTHER)
		return NULL;
	return &fdtable[fd];
}
