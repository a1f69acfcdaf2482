/*-------------------------------------------------------------------------
 *
 * preload_elog.c
 *		ereport() for the server's I/O-layer files compiled into the
 *		frontend preload library (cmk_offline_preload.so).
 *
 * io_relpage.c, io_walpage.c and io_fdtable.c are the server's own page
 * formats and descriptor table, compiled a second time for the offline
 * tools rather than copied.  Their start-up functions report an impossible
 * failure (OpenSSL cannot build a cipher, mmap fails) with ereport(FATAL);
 * in a tool's process that becomes a message on stderr and the exit status
 * 2, before the tool has touched a file.  Nothing else may use this: the
 * functions that run inside the tool's read() and write() never report
 * (docs/io-layer.md, "The boundary below fd.c").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

static char message[512];

bool
errstart(int elevel, const char *domain)
{
	return elevel >= ERROR;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return elevel >= ERROR;
}

int
errcode(int sqlerrcode)
{
	return 0;
}

int
errmsg(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	return 0;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	fprintf(stderr, "cmk_offline: error: %s\n", message);
	fflush(stderr);
	_exit(2);
}
