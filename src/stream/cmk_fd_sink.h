/*-------------------------------------------------------------------------
 *
 * cmk_fd_sink.h
 *		A stream write callback (CmkStreamWriteFn) that writes everything it
 *		is given to a file descriptor: the archive module's encrypted
 *		segments and cmk_restore's decrypted files and pipes.
 *
 * Inline in a header rather than in cmk_stream.c, which does no file
 * access.  It must never return true with bytes unwritten: a short write
 * is continued, and a write that makes no progress fails with errno set
 * (ENOSPC when the kernel gave none).
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_FD_SINK_H
#define CMK_FD_SINK_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

typedef struct CmkFdSink
{
	int			fd;
	int			save_errno;		/* errno of the failed write, for reports
								 * made after other calls */
} CmkFdSink;

static inline bool
cmk_fd_sink_write(void *arg, const uint8_t *data, size_t len)
{
	CmkFdSink  *sink = (CmkFdSink *) arg;

	while (len > 0)
	{
		ssize_t		n;

		errno = 0;
		n = write(sink->fd, data, len);
		if (n <= 0)
		{
			if (errno == 0)
				errno = ENOSPC;
			sink->save_errno = errno;
			return false;
		}
		data += n;
		len -= (size_t) n;
	}
	return true;
}

#endif							/* CMK_FD_SINK_H */
