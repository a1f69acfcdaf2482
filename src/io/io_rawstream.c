/*-------------------------------------------------------------------------
 *
 * io_rawstream.c
 *		WAL streamed as stored (encrypted) to the clients that store the
 *		stream: pg_basebackup -X stream and pg_receivewal.  And the
 *		walreceiver's refusal of such a stream.
 *
 * A physical WAL sender streams WAL (START_REPLICATION) by reading the
 * segment files with pg_pread in WALRead, from XLogSendPhysical, up to the
 * WAL flush pointer.  A standby writes what it receives through its own
 * layer, which encrypts it, so it gets the stream decrypted.  pg_basebackup
 * and pg_receivewal store the stream as it arrives: they get the stored
 * pages (docs/io-layer.md, "Streaming replication to standbys,
 * pg_basebackup and pg_receivewal").  The rule, decided once when a WAL
 * segment is opened:
 *
 *	 a physical WAL sender (am_walsender, not am_db_walsender) that is not
 *	 cascading (its server is not in recovery), executing START_REPLICATION,
 *	 whose client's application_name is "pg_basebackup" or "pg_receivewal"
 *	 (the fallback_application_name both set to their program name), opens
 *	 a WAL segment read-only.
 *
 * Hold-back.  XTS encrypts each 16-byte block of a page's data unit (which
 * starts at byte 24, or 40 on a segment's first page) under its own
 * position, and the ciphertext stealing ties the last 24 bytes of the page
 * [8168, 8192) together: call each of these a group.  A send ends at the
 * flush pointer, which may lie strictly inside a group whose stored
 * ciphertext changes when the rest of the group is written; the client
 * would then hold the first part of one version and the rest of another.
 * So before a read ending at E inside a group returns the stored bytes, the
 * group must be final: the flush pointer at or beyond its end.  If it is
 * not, the sender nudges: it flushes what is inserted beyond the group, or
 * inserts an XLOG_NOOP record (redo does nothing for it) sized so that its
 * own end is a group boundary, and flushes it.  The next send then starts
 * at E and completes the group with the same final bytes; on an idle
 * server it ends at the NOOP's end, a boundary, so nudging stops.
 *
 * THE BOUNDARY BELOW fd.c, and its one written-down exception.  The open()
 * decision reads process-local globals only.  The hold-back runs inside
 * pread, but only on a descriptor this file marked, so only in a
 * non-cascading physical WAL sender during START_REPLICATION, called from
 * WALRead in XLogSendPhysical (walsender.c).  That caller holds no lock, is
 * in no critical section, keeps no half-updated state across the call
 * (the segment descriptor stays valid; the walsender's error cleanup closes
 * it), and raises an ERROR itself when a read fails.  So there, and only
 * there, the hold-back may read shared memory (GetFlushRecPtr,
 * GetXLogInsertRecPtr, MyWalSnd->state), take WAL locks and ERROR through
 * XLogInsert and XLogFlush.  It never inserts WAL in recovery or once the
 * WAL sender is stopping (after that the checkpointer writes the shutdown
 * checkpoint, which must be the last record).
 *
 * The walreceiver guard runs inside the walreceiver's pwrite of received
 * WAL (XLogWalRcvWrite), in no critical section, holding no lock.  A failed
 * write there is a PANIC (a crash-restart loop), so a stream of stored
 * pages is refused with a FATAL of its own instead: the walreceiver exits,
 * nothing is written, and the startup process retries later.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>

#include "access/rmgr.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "catalog/pg_control.h"
#include "miscadmin.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "io/io_int.h"
#include "io/io_layer.h"

#define P				CMK_IO_PAGE
#define TAIL_GROUP		(CMK_IO_PAGE - 24)	/* ciphertext stealing: [8168, 8192) */
#define NOOP_TRIES		3

/* The clients that store the stream as it arrives. */
static bool
client_stores_stream(void)
{
	return application_name != NULL &&
		(strcmp(application_name, "pg_basebackup") == 0 ||
		 strcmp(application_name, "pg_receivewal") == 0);
}

bool
cmk_rawstream_wanted(const CmkFileId *id, int flags)
{
	if (id->kind != CMK_FILE_WAL)
		return false;
	if (!am_walsender || am_db_walsender || am_cascading_walsender)
		return false;
	if ((flags & O_ACCMODE) != O_RDONLY)
		return false;
	if (!cmk_replication_command_is(debug_query_string, "START_REPLICATION"))
		return false;
	return client_stores_stream();
}

/*
 * Whether a WAL position at offset o of its page ends no group strictly
 * inside: a page boundary, the header (clear), or a 16-byte block boundary
 * of the data unit at or before the tail group.  Data units start at 24 or
 * 40, so block boundaries are the offsets congruent to 8 modulo 16.
 */
static bool
group_boundary(uint32 o)
{
	return o == 0 || o <= SizeOfXLogShortPHD ||
		(o % 16 == 8 && o <= TAIL_GROUP);
}

/* The end (offset in the page) of the group holding offset o. */
static uint32
group_end(uint32 o)
{
	if (o > TAIL_GROUP)
		return P;
	return o + (16 - (o - 8) % 16) % 16;
}

/*
 * Where a record of len bytes (MAXALIGNed) starting at start ends: page
 * headers are inserted where it crosses pages, as XLogInsert lays it out.
 */
static XLogRecPtr
record_end(XLogRecPtr start, uint32 len)
{
	XLogRecPtr	pos = start;
	uint32		rem = len;

	for (;;)
	{
		uint32		room = P - (uint32) (pos % P);

		if (rem <= room)
			return pos + rem;
		rem -= room;
		pos += room;
		pos += XLogSegmentOffset(pos, wal_segment_size) == 0 ?
			SizeOfXLogLongPHD : SizeOfXLogShortPHD;
	}
}

/*
 * Payload of the NOOP whose record ends at a group boundary if it is
 * inserted at start.  Record sizes: 24 (no data), else 24 + 2 (short data
 * header) + payload, MAXALIGNed: payloads 6, 14, 22, 30 give 32 to 56.
 */
static uint32
noop_payload(XLogRecPtr start)
{
	static const uint32 payloads[] = {0, 6, 14, 22, 30};

	for (int i = 0; i < lengthof(payloads); i++)
	{
		uint32		len = payloads[i] == 0 ? SizeOfXLogRecord :
			MAXALIGN(SizeOfXLogRecord + 2 + payloads[i]);

		if (group_boundary((uint32) (record_end(start, len) % P)))
			return payloads[i];
	}
	return 6;					/* unreachable: one of 24, 32, 40 fits */
}

/* Make the group ending at group_lsn final: flushed. */
static void
nudge(XLogRecPtr group_lsn)
{
	static char zeros[32];		/* the payload: zero bytes */
	XLogRecPtr	end = InvalidXLogRecPtr;

	/* Records already cover the group: flush them. */
	if (GetXLogInsertRecPtr() >= group_lsn)
	{
		XLogFlush(group_lsn);
		return;
	}

	/*
	 * A NOOP ending at a boundary, so that the next send does not end inside
	 * its own group.  A concurrent insert can move it: try again a few
	 * times (any NOOP already makes the group final, being at least 24
	 * bytes long and starting at or after the read's end).
	 */
	for (int i = 0; i < NOOP_TRIES; i++)
	{
		uint32		payload = noop_payload(GetXLogInsertRecPtr());

		XLogBeginInsert();
		XLogSetRecordFlags(XLOG_MARK_UNIMPORTANT);
		if (payload > 0)
			XLogRegisterData(zeros, payload);
		end = XLogInsert(RM_XLOG_ID, XLOG_NOOP);
		if (group_boundary((uint32) (end % P)))
			break;
	}
	XLogFlush(end);
}

/*
 * Hold back a read ending at file offset end_off until the group holding
 * its end is final.  The page's LSN comes from its clear header (the same
 * source as the tweak): a page that is not an encrypted WAL page (zeros,
 * plaintext from before) has nothing to hold back.
 */
static void
hold_back(CmkRealPread real_pread, int fd, off_t end_off)
{
	uint32		o = (uint32) (end_off % P);
	XLogPageHeaderData h;
	XLogRecPtr	group_lsn;

	if (group_boundary(o))
		return;
	if (real_pread(fd, &h, SizeOfXLogShortPHD, end_off - o) !=
		SizeOfXLogShortPHD ||
		h.xlp_magic != XLOG_PAGE_MAGIC ||
		(h.xlp_info & CMK_XLP_ENCRYPTED) == 0)
		return;
	group_lsn = h.xlp_pageaddr + group_end(o);
	if (GetFlushRecPtr(NULL) >= group_lsn)
		return;

	/*
	 * Not final.  Never write WAL in recovery, or once stopping: the
	 * shutdown checkpoint must stay the last record.  The client then holds
	 * part of a group until it streams the segment again.
	 */
	if (RecoveryInProgress() || MyWalSnd == NULL ||
		MyWalSnd->state == WALSNDSTATE_STOPPING)
		return;
	nudge(group_lsn);
}

ssize_t
cmk_rawstream_pread(CmkRealPread real_pread, int fd, uint8 *buf, size_t n,
					off_t off)
{
	if (n > 0)
		hold_back(real_pread, fd, off + (off_t) n);
	return real_pread(fd, buf, n, off);
}

/*
 * The walreceiver's write of received WAL: refuse stored (encrypted) pages,
 * which its layer would encrypt a second time.  The walreceiver streams
 * from the start of a segment, so the first write of a stream holds a page
 * header.
 */
void
cmk_rawstream_check_received(const uint8 *buf, size_t n, off_t off)
{
	off_t		page;

	if (MyBackendType != B_WAL_RECEIVER)
		return;
	for (page = off + (P - off % P) % P; page + 4 <= off + (off_t) n; page += P)
	{
		uint16		magic;
		uint16		info;

		memcpy(&magic, buf + (page - off), sizeof(magic));
		memcpy(&info, buf + (page - off) + 2, sizeof(info));
		if (magic == XLOG_PAGE_MAGIC && (info & CMK_XLP_ENCRYPTED) != 0)
			ereport(FATAL,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("cmk_storage: the primary streams WAL pages as stored (encrypted) to this standby"),
					 errdetail("A cluster-encrypted server streams stored WAL to clients whose application_name is \"pg_basebackup\" or \"pg_receivewal\"; this standby's walreceiver would encrypt it a second time."),
					 errhint("Set another application_name in primary_conninfo (by default the walreceiver uses cluster_name, or \"walreceiver\").")));
	}
}
