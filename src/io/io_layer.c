/*-------------------------------------------------------------------------
 *
 * io_layer.c
 *		Start cluster encryption in the postmaster: checks, key, ciphers,
 *		tables, and the redirection of the executable's file calls.
 *
 * Order matters.  Everything that can refuse (the process, the build, the
 * binary's imports, the key) is checked before anything is changed, so a
 * refusal leaves a server that has written nothing.  The key is published
 * and the XTS contexts are built here, before any child exists: every
 * process inherits them, and no wrapper ever needs to set up a cipher.
 *
 * With cmk_storage.cluster_encryption off no call is redirected; the
 * postmaster only reads the WAL page of the latest checkpoint, to refuse
 * with a clear message a cluster whose WAL is encrypted (PostgreSQL would
 * stop at "invalid info bits" anyway: fail closed either way).  With it on,
 * the same page tells key_early.c that a missing key directory is a lost
 * key, never a reason to create one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "common/controldata_utils.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "cmk_storage.h"
#include "io/io_int.h"
#include "io/io_layer.h"
#include "keys/key_store.h"

static bool active = false;

static void cmk_io_start_tmpfiles_only(void);

bool
cmk_io_active(void)
{
	return active;
}

static void
build_ciphers(void)
{
	uint8		key[CMK_XTS_KEY_LEN];
	bool		ok;

	ok = cmk_key_store_derive(CMK_IO_REL_LABEL, key, sizeof(key));
	if (ok)
		cmk_relpage_init(key, DataChecksumsEnabled());
	ok = ok && cmk_key_store_derive(CMK_IO_WAL_LABEL, key, sizeof(key));
	if (ok)
		cmk_walpage_init(key);
	OPENSSL_cleanse(key, sizeof(key));
	if (!ok)
		ereport(FATAL,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("cmk_storage: could not derive the cluster encryption keys")));
}

/*
 * Whether the latest checkpoint record lies on an encrypted WAL page: the
 * cluster was running with cluster encryption.  Anything unexpected (no
 * control file, a missing segment) says no and is left to PostgreSQL's own
 * start-up checks.  fname receives the segment's name.
 */
static bool
checkpoint_wal_encrypted(char *fname)
{
	ControlFileData *cf;
	bool		crc_ok = false;
	char		path[MAXPGPATH];
	XLogSegNo	segno;
	PGAlignedXLogBlock page;
	XLogPageHeader hdr = (XLogPageHeader) page.data;
	bool		encrypted = false;
	int			fd;

	fname[0] = '\0';
	cf = get_controlfile(DataDir, &crc_ok);
	if (!crc_ok || !IsValidWalSegSize(cf->xlog_seg_size))
	{
		pfree(cf);
		return false;
	}
	XLByteToSeg(cf->checkPoint, segno, cf->xlog_seg_size);
	XLogFileName(fname, cf->checkPointCopy.ThisTimeLineID, segno, cf->xlog_seg_size);
	snprintf(path, sizeof(path), XLOGDIR "/%s", fname);
	fd = open(path, O_RDONLY | PG_BINARY, 0);
	if (fd >= 0)
	{
		off_t		off = XLogSegmentOffset(cf->checkPoint, cf->xlog_seg_size);

		off -= off % XLOG_BLCKSZ;
		if (pread(fd, page.data, XLOG_BLCKSZ, off) == XLOG_BLCKSZ &&
			hdr->xlp_magic == XLOG_PAGE_MAGIC &&
			(hdr->xlp_info & CMK_XLP_ENCRYPTED) != 0)
			encrypted = true;
		close(fd);
	}
	pfree(cf);
	return encrypted;
}

/*
 * Torn pages.  PostgreSQL survives a page torn at a 4 kB boundary (a power
 * loss, a base backup copying a page as it is written) because WAL replay
 * restores it from the full-page image of its first change after the
 * checkpoint, and a tear inside a page that only gained hint bits leaves two
 * valid halves.  An encrypted page torn anywhere decrypts to noise in the
 * 16-byte XTS block that straddles the tear, so hint-bit-only writes need a
 * full-page image too: that is what data checksums or wal_log_hints give
 * (and on a standby, where no WAL can be written, they keep hint bits from
 * dirtying pages at all).  Without checksums, turn wal_log_hints on rather
 * than refuse: it is the only safe value, and its cost is the FPIs.
 */
static void
require_hint_fpis(void)
{
	if (DataChecksumsEnabled() || wal_log_hints)
		return;
	SetConfigOption("wal_log_hints", "on", PGC_POSTMASTER, PGC_S_OVERRIDE);
	ereport(LOG,
			(errmsg("cmk_storage: wal_log_hints is turned on for cluster encryption"),
			 errdetail("A torn encrypted page can be repaired only from a full-page image in WAL, and hint-bit changes get one only with data checksums or wal_log_hints."),
			 errhint("Set wal_log_hints = on in postgresql.conf to make this explicit.")));
}

void
cmk_io_start(void)
{
	CmkError	err;

	char		fname[MAXFNAMELEN];
	bool		wal_encrypted;

	if (!cmk_cluster_encryption)
	{
		if (process_shared_preload_libraries_in_progress && !IsUnderPostmaster &&
			checkpoint_wal_encrypted(fname))
			ereport(FATAL,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cmk_storage: this cluster's WAL is encrypted, but cmk_storage.cluster_encryption is off"),
					 errdetail("The latest checkpoint record, in WAL segment \"%s\", was written with cluster encryption on.", fname),
					 errhint("Set cmk_storage.cluster_encryption = on and start the server again.")));
		if (cmk_temp_file_encryption)
			cmk_io_start_tmpfiles_only();
		return;
	}
	if (!cmk_rail_check_process())
		return;
	cmk_rail_check_build();
	cmk_wrappers_check();
	cmk_stdio_check();
	cmk_tmpfile_check_settings();

	/* Encrypted WAL proves a key existed: never make a new one then. */
	wal_encrypted = checkpoint_wal_encrypted(fname);
	if (!cmk_key_early_publish(!wal_encrypted, &err))
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: cluster encryption needs the data encryption key before recovery: %s",
						err.message),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 err.hint[0] ? errhint("%s", err.hint) : 0));
	build_ciphers();
	require_hint_fpis();
	cmk_tmpfile_init();

	cmk_classify_set_datadir(DataDir);
	cmk_fdtable_create();
	cmk_wrappers_create();
	cmk_readahead_create();
	cmk_wrappers_install();
	cmk_stdio_install();
	active = true;
	ereport(LOG,
			(errmsg("cmk_storage: cluster encryption is on: relation and WAL pages are encrypted"),
			 errdetail("Temporary files, logical decoding spill files and the NOTIFY queue are encrypted too.")));
}

/*
 * cmk_storage.temp_file_encryption without cluster encryption: the same
 * rails and redirection, with only the temporary-file kinds classified.
 * Their key is made here at random and needs no DEK (docs/io-layer.md).
 */
static void
cmk_io_start_tmpfiles_only(void)
{
	if (!cmk_rail_check_process())
		return;
	cmk_rail_check_build();
	cmk_wrappers_check();
	cmk_stdio_check();
	cmk_tmpfile_check_settings();
	cmk_tmpfile_init();
	cmk_classify_set_datadir(DataDir);
	cmk_classify_set_pages(false);
	cmk_fdtable_create();
	cmk_wrappers_create();
	cmk_wrappers_install();
	cmk_stdio_install();
	/* not "active": no relation or WAL page is encrypted (no sweep, no gate) */
	ereport(LOG,
			(errmsg("cmk_storage: temporary file encryption is on: temporary files, logical decoding spill files and the NOTIFY queue are encrypted")));
}
