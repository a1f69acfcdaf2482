/*-------------------------------------------------------------------------
 *
 * key_wal.c
 *		Custom WAL resource manager "cmk_storage": every control-file write
 *		(DEK creation, re-wrap) is logged as a full 2048-byte image and
 *		flushed before the file is written, and redo writes the same file.
 *		It also carries the tuple nonce epochs (nonce_epochs.c), which
 *		contain no secret either.
 *
 * So a standby or a point-in-time restore ends with the control file the
 * primary had at that point of WAL, and a crash between the WAL flush and
 * the file write is repaired by crash recovery.  The image holds only the
 * wrapped DEK, never key material.  Redo never needs the KEK.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "lib/stringinfo.h"

#include "keys/key_guard.h"
#include "keys/key_store.h"
#include "keys/key_wal.h"
#include "keys/nonce_epochs.h"

static void
cmk_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	CmkControl	ctl;
	CmkError	err;
	bool		ok;
	struct stat st;

	if (info == XLOG_CMK_NONCE_EPOCH)
	{
		/* tuples were encrypted: never a new DEK for this data (key_guard.c) */
		if (stat(CMK_CONTROL_DIR, &st) != 0)
			cmk_guard_note_wal_evidence(record->ReadRecPtr);
		cmk_epoch_redo((const uint8 *) XLogRecGetData(record),
					   XLogRecGetDataLen(record));
		return;
	}
	if (info != XLOG_CMK_CONTROL)
		elog(PANIC, "cmk_storage redo: unknown op code %u", info);

	if (!cmk_control_parse((const uint8 *) XLogRecGetData(record),
						   XLogRecGetDataLen(record), &ctl, &err))
		elog(PANIC, "cmk_storage redo: invalid control-file image: %s", err.message);

	if (stat(CMK_CONTROL_DIR, &st) == 0)
		ok = cmk_control_replace(&ctl, &err);
	else if ((ok = cmk_control_create(&ctl, &err)))
		cmk_guard_note_dir_created();
	if (!ok)
		ereport(PANIC,
				(errmsg("cmk_storage redo: could not write the control file: %s", err.message)));

	/*
	 * Generation 1 is a DEK's creation: the marker follows it, as on the
	 * primary (key_guard.c).  Only a warning if that fails: the key worker
	 * writes a missing marker when it loads the control file.
	 */
	if (ctl.generation == 1 && !cmk_guard_write_marker(&ctl, &err))
		ereport(WARNING,
				(errmsg("cmk_storage redo: %s", err.message)));
	/* a new DEK over another's key directory: its own, empty epoch table */
	cmk_epochs_redo_control(&ctl);
	cmk_key_store_control_changed();
}

static void
cmk_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	CmkControl	ctl;
	CmkError	err;

	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) == XLOG_CMK_NONCE_EPOCH)
		cmk_epoch_desc(buf, (const uint8 *) XLogRecGetData(record),
					   XLogRecGetDataLen(record));
	else if (cmk_control_parse((const uint8 *) XLogRecGetData(record),
							   XLogRecGetDataLen(record), &ctl, &err))
		appendStringInfo(buf, "generation %u; kid %s; %s",
						 ctl.generation, ctl.kid, cmk_wrap_alg_name(ctl.wrap_alg));
	else
		appendStringInfo(buf, "invalid image: %s", err.message);
}

static const char *
cmk_rmgr_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case XLOG_CMK_CONTROL:
			return "CONTROL";
		case XLOG_CMK_NONCE_EPOCH:
			return "NONCE_EPOCH";
	}
	return NULL;
}

static RmgrData cmk_rmgr = {
	.rm_name = "cmk_storage",
	.rm_redo = cmk_rmgr_redo,
	.rm_desc = cmk_rmgr_desc,
	.rm_identify = cmk_rmgr_identify,
};

void
cmk_wal_register(void)
{
	RegisterCustomRmgr(CMK_RMGR_ID, &cmk_rmgr);
}

/* Log a control-file image and wait until it is durable. */
XLogRecPtr
cmk_wal_log_control(const CmkControl *ctl)
{
	uint8		image[CMK_CONTROL_SIZE];
	XLogRecPtr	lsn;

	cmk_control_serialize(ctl, image);
	XLogBeginInsert();
	XLogRegisterData((char *) image, CMK_CONTROL_SIZE);
	lsn = XLogInsert(CMK_RMGR_ID, XLOG_CMK_CONTROL);
	XLogFlush(lsn);
	return lsn;
}
