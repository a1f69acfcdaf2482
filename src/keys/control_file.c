/*-------------------------------------------------------------------------
 *
 * control_file.c
 *		Serialise, check and durably write $PGDATA/cmk_storage/control.
 *
 * The file is fixed-size, big-endian, and ends with a SHA-256 of the rest,
 * so truncation and bit flips are caught before any field is trusted.  It is
 * bound to its cluster by the system identifier.  This code never creates a
 * DEK and never overwrites a control file it could not parse: a damaged file
 * stays as it is for the operator to restore.
 *
 * First creation builds cmk_storage.new/ and renames it to cmk_storage/, so a
 * crash leaves either no key directory (the DEK was never used) or a complete
 * one.  Replacement (rotation) writes control.tmp and renames it over control.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/file_perm.h"
#include "common/string.h"
#ifndef FRONTEND
#include "storage/fd.h"
#endif

#include "cmk_bigendian.h"
#include "keys/control_file.h"
#ifndef FRONTEND
#include "keys/nonce_epochs.h"
#endif

static const char magic[8] = {'C', 'M', 'K', 'C', 'T', 'R', 'L', '\0'};

/* Field offsets; see docs/control-file.md. */
#define OFF_MAGIC		0
#define OFF_VERSION		8
#define OFF_GENERATION	12
#define OFF_SYSID		16
#define OFF_CREATED		24
#define OFF_WRAPPED_AT	32
#define OFF_DEK_ID		40
#define OFF_ALG			56
#define OFF_WRAPPED_LEN 58
#define OFF_KID_LEN		60
#define OFF_URI_LEN		62
#define OFF_WRAPPED		64
#define OFF_KID			(OFF_WRAPPED + CMK_MAX_WRAPPED)		/* 576 */
#define OFF_URI			(OFF_KID + CMK_CONTROL_TEXT_MAX)	/* 1088 */
#define OFF_RESERVED	(OFF_URI + CMK_CONTROL_TEXT_MAX)	/* 1600 */
#define OFF_CHECKSUM	(CMK_CONTROL_SIZE - 32)				/* 2016 */

StaticAssertDecl(OFF_RESERVED <= OFF_CHECKSUM,
				 "control file fields overlap the checksum");

void
cmk_control_serialize(const CmkControl *ctl, uint8 *buf)
{
	size_t		kid_len = strlen(ctl->kid);
	size_t		uri_len = strlen(ctl->key_uri);

	Assert(kid_len <= CMK_CONTROL_TEXT_MAX && uri_len <= CMK_CONTROL_TEXT_MAX);
	Assert(ctl->wrapped_len <= CMK_MAX_WRAPPED);

	memset(buf, 0, CMK_CONTROL_SIZE);
	memcpy(buf + OFF_MAGIC, magic, sizeof(magic));
	cmk_put32(buf + OFF_VERSION, CMK_CONTROL_VERSION);
	cmk_put32(buf + OFF_GENERATION, ctl->generation);
	cmk_put64(buf + OFF_SYSID, ctl->system_identifier);
	cmk_put64(buf + OFF_CREATED, (uint64) ctl->created_at);
	cmk_put64(buf + OFF_WRAPPED_AT, (uint64) ctl->wrapped_at);
	memcpy(buf + OFF_DEK_ID, ctl->dek_id, CMK_DEK_ID_LEN);
	cmk_put16(buf + OFF_ALG, (uint16) ctl->wrap_alg);
	cmk_put16(buf + OFF_WRAPPED_LEN, ctl->wrapped_len);
	cmk_put16(buf + OFF_KID_LEN, (uint16) kid_len);
	cmk_put16(buf + OFF_URI_LEN, (uint16) uri_len);
	memcpy(buf + OFF_WRAPPED, ctl->wrapped, ctl->wrapped_len);
	memcpy(buf + OFF_KID, ctl->kid, kid_len);
	memcpy(buf + OFF_URI, ctl->key_uri, uri_len);
	cmk_sha256(buf, OFF_CHECKSUM, buf + OFF_CHECKSUM);
}

/*
 * The first non-zero byte of buf[from, to), or -1.  Unused space must be
 * zero: the writer zeroes the whole image, so anything else is damage or a
 * file this version does not understand.
 */
static int
first_nonzero(const uint8 *buf, int from, int to)
{
	for (int i = from; i < to; i++)
		if (buf[i] != 0)
			return i;
	return -1;
}

/* Text fields hold no NUL and no control characters. */
static bool
valid_text(const uint8 *p, int len)
{
	for (int i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}

static bool
damaged(CmkError *err, const char *fmt,...) pg_attribute_printf(2, 3);

/* A field the format does not allow: name it. */
static bool
damaged(CmkError *err, const char *fmt,...)
{
	char		what[256];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileField", NULL,
				  "cmk_storage control file is damaged: %s", what);
	return false;
}

bool
cmk_control_parse(const uint8 *buf, size_t len, CmkControl *ctl, CmkError *err)
{
	uint8		digest[32];
	uint16		kid_len,
				uri_len,
				alg;
	int			nz;
	static const uint8 zero_id[CMK_DEK_ID_LEN] = {0};

	memset(ctl, 0, sizeof(*ctl));
	if (len != CMK_CONTROL_SIZE)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileSize", NULL,
					  "cmk_storage control file has %zu bytes, expected %d (truncated or not a control file)",
					  len, CMK_CONTROL_SIZE);
		return false;
	}
	if (memcmp(buf + OFF_MAGIC, magic, sizeof(magic)) != 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileMagic", NULL,
					  "cmk_storage control file does not start with the cmk_storage signature");
		return false;
	}
	if (!cmk_sha256(buf, OFF_CHECKSUM, digest) ||
		memcmp(digest, buf + OFF_CHECKSUM, sizeof(digest)) != 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileChecksum", NULL,
					  "cmk_storage control file checksum mismatch (the file is corrupt)");
		return false;
	}
	ctl->version = cmk_get32(buf + OFF_VERSION);
	if (ctl->version != CMK_CONTROL_VERSION)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileVersion",
					  "Install the cmk_storage version that wrote this file.",
					  "cmk_storage control file has format version %u, this build reads version %d",
					  ctl->version, CMK_CONTROL_VERSION);
		return false;
	}

	/*
	 * The checksum matched, so what follows was written deliberately: by a
	 * buggy or foreign writer, or by someone who recomputed the checksum.
	 * Every field is checked against what the format allows
	 * (docs/control-file.md), and the first one that is wrong is named.
	 */
	ctl->generation = cmk_get32(buf + OFF_GENERATION);
	ctl->system_identifier = cmk_get64(buf + OFF_SYSID);
	ctl->created_at = (int64) cmk_get64(buf + OFF_CREATED);
	ctl->wrapped_at = (int64) cmk_get64(buf + OFF_WRAPPED_AT);
	memcpy(ctl->dek_id, buf + OFF_DEK_ID, CMK_DEK_ID_LEN);
	alg = cmk_get16(buf + OFF_ALG);
	ctl->wrapped_len = cmk_get16(buf + OFF_WRAPPED_LEN);
	kid_len = cmk_get16(buf + OFF_KID_LEN);
	uri_len = cmk_get16(buf + OFF_URI_LEN);

	if (ctl->generation == 0)
		return damaged(err, "generation is 0 (it starts at 1)");
	if (ctl->system_identifier == 0)
		return damaged(err, "system identifier is 0");

	/*
	 * Times are only checked for sign: a clock set back between creation and
	 * a re-wrap legitimately gives wrapped_at < created_at.
	 */
	if (ctl->created_at <= 0)
		return damaged(err, "DEK creation time %lld is not a positive unix time",
					   (long long) ctl->created_at);
	if (ctl->wrapped_at <= 0)
		return damaged(err, "wrap time %lld is not a positive unix time",
					   (long long) ctl->wrapped_at);
	if (memcmp(ctl->dek_id, zero_id, CMK_DEK_ID_LEN) == 0)
		return damaged(err, "DEK identifier is all zero");
	if (alg != CMK_WRAP_RSA_OAEP_256 && alg != CMK_WRAP_RSA_OAEP)
		return damaged(err, "wrap algorithm %u is unknown (1 = RSA-OAEP-256, 2 = RSA-OAEP)", alg);
	/* RSA 2048, 3072 or 4096: the only key sizes a provider accepts */
	if (ctl->wrapped_len != 256 && ctl->wrapped_len != 384 && ctl->wrapped_len != 512)
		return damaged(err, "wrapped DEK length %u is not 256, 384 or 512", ctl->wrapped_len);
	if (kid_len == 0 || kid_len > CMK_CONTROL_TEXT_MAX)
		return damaged(err, "key id length %u is not between 1 and %d",
					   kid_len, CMK_CONTROL_TEXT_MAX);
	if (uri_len == 0 || uri_len > CMK_CONTROL_TEXT_MAX)
		return damaged(err, "key URI length %u is not between 1 and %d",
					   uri_len, CMK_CONTROL_TEXT_MAX);
	if ((nz = first_nonzero(buf, OFF_WRAPPED + ctl->wrapped_len, OFF_KID)) >= 0)
		return damaged(err, "byte %d after the wrapped DEK (%d..%d) is not zero",
					   nz, OFF_WRAPPED + ctl->wrapped_len, OFF_KID - 1);
	if (!valid_text(buf + OFF_KID, kid_len))
		return damaged(err, "key id contains a NUL or control character");
	if ((nz = first_nonzero(buf, OFF_KID + kid_len, OFF_URI)) >= 0)
		return damaged(err, "byte %d after the key id (%d..%d) is not zero",
					   nz, OFF_KID + kid_len, OFF_URI - 1);
	if (!valid_text(buf + OFF_URI, uri_len))
		return damaged(err, "key URI contains a NUL or control character");
	if ((nz = first_nonzero(buf, OFF_URI + uri_len, OFF_RESERVED)) >= 0)
		return damaged(err, "byte %d after the key URI (%d..%d) is not zero",
					   nz, OFF_URI + uri_len, OFF_RESERVED - 1);
	if ((nz = first_nonzero(buf, OFF_RESERVED, OFF_CHECKSUM)) >= 0)
		return damaged(err, "reserved byte %d (%d..%d) is not zero",
					   nz, OFF_RESERVED, OFF_CHECKSUM - 1);

	ctl->wrap_alg = (CmkWrapAlg) alg;
	memcpy(ctl->wrapped, buf + OFF_WRAPPED, ctl->wrapped_len);
	memcpy(ctl->kid, buf + OFF_KID, kid_len);
	memcpy(ctl->key_uri, buf + OFF_URI, uri_len);
	return true;
}

#ifdef FRONTEND
/*
 * Frontend tools (cmk_restore, cmk_offline): read and check the control file
 * of the data directory dir.  CMK_CONTROL_ABSENT when the file does not
 * exist (the caller decides what that means for it), CMK_CONTROL_INVALID
 * with err set when it cannot be read or does not parse.
 */
CmkControlStatus
cmk_control_read_dir(const char *dir, CmkControl *ctl, CmkError *err)
{
	char		path[MAXPGPATH];
	uint8		buf[CMK_CONTROL_SIZE + 1];
	ssize_t		len;
	int			fd;

	snprintf(path, sizeof(path), "%s/%s", dir, CMK_CONTROL_FILE);
	fd = open(path, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return CMK_CONTROL_ABSENT;
		cmk_error_set(err, CMK_ERR_CONFIG, NULL, NULL,
					  "could not open \"%s\": %m", path);
		return CMK_CONTROL_INVALID;
	}
	len = read(fd, buf, sizeof(buf));
	if (len < 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL, NULL,
					  "could not read \"%s\": %m", path);
		close(fd);
		return CMK_CONTROL_INVALID;
	}
	close(fd);
	if (!cmk_control_parse(buf, (size_t) len, ctl, err))
	{
		char		msg[sizeof(err->message)];

		/* name the file: the codec's message does not */
		snprintf(msg, sizeof(msg), "\"%s\": %s", path, err->message);
		strlcpy(err->message, msg, sizeof(err->message));
		return CMK_CONTROL_INVALID;
	}
	return CMK_CONTROL_PRESENT;
}
#endif							/* FRONTEND */

/*
 * Everything below reads or writes the live file through the server's file
 * layer; frontend tools use only the codec and the reader above.
 */
#ifndef FRONTEND

static void
set_io_error(CmkError *err, const char *what, const char *path)
{
	cmk_error_set(err, CMK_ERR_INTERNAL, NULL,
				  "Check the permissions and free space of the data directory.",
				  "could not %s \"%s\": %m", what, path);
}

CmkControlStatus
cmk_control_read(CmkControl *ctl, CmkError *err)
{
	struct stat st;
	uint8		buf[CMK_CONTROL_SIZE + 1];
	ssize_t		len;
	int			fd;

	if (stat(CMK_CONTROL_DIR, &st) != 0)
	{
		if (errno == ENOENT)
			return CMK_CONTROL_ABSENT;
		set_io_error(err, "stat", CMK_CONTROL_DIR);
		return CMK_CONTROL_INVALID;
	}
	fd = OpenTransientFile(CMK_CONTROL_FILE, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileMissing",
						  "Restore $PGDATA/cmk_storage/control from a backup of this cluster; without it the encrypted data cannot be read. Deleting the directory does not help: only this cluster's key reads its data.",
						  "cmk_storage control file \"%s\" is missing although its directory exists",
						  CMK_CONTROL_FILE);
		else
			set_io_error(err, "open", CMK_CONTROL_FILE);
		return CMK_CONTROL_INVALID;
	}
	len = read(fd, buf, sizeof(buf));
	if (len < 0)
	{
		set_io_error(err, "read", CMK_CONTROL_FILE);
		CloseTransientFile(fd);
		return CMK_CONTROL_INVALID;
	}
	CloseTransientFile(fd);
	if (!cmk_control_parse(buf, (size_t) len, ctl, err))
	{
		strlcpy(err->hint,
				"Restore $PGDATA/cmk_storage/control from a backup of this cluster. The file was left untouched.",
				sizeof(err->hint));
		return CMK_CONTROL_INVALID;
	}
	return CMK_CONTROL_PRESENT;
}

/*
 * Write len bytes to path (created or truncated) and fsync it.  On failure
 * *failed names the step ("create", "write", "fsync", "close") and errno is
 * the cause.  For every file under $PGDATA/cmk_storage.
 */
bool
cmk_write_file_synced(const char *path, const void *buf, size_t len,
					  const char **failed)
{
	int			fd;
	int			save;

	*failed = "create";
	fd = OpenTransientFile(path, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		return false;
	errno = 0;
	*failed = "write";
	if (write(fd, buf, len) == (ssize_t) len)
	{
		*failed = "fsync";
		if (pg_fsync(fd) == 0)
		{
			*failed = "close";
			return CloseTransientFile(fd) == 0;
		}
	}
	save = errno ? errno : ENOSPC;
	CloseTransientFile(fd);
	errno = save;
	return false;
}

static bool
write_file(const char *path, const CmkControl *ctl, CmkError *err)
{
	uint8		buf[CMK_CONTROL_SIZE];
	const char *failed;

	cmk_control_serialize(ctl, buf);
	if (!cmk_write_file_synced(path, buf, sizeof(buf), &failed))
	{
		set_io_error(err, failed, path);
		return false;
	}
	return true;
}

bool
cmk_control_create(const CmkControl *ctl, CmkError *err)
{
	char		path[MAXPGPATH];
	struct stat st;

	/* A leftover from a crash during an earlier first start: never used. */
	if (stat(CMK_CONTROL_NEW_DIR, &st) == 0 && !rmtree(CMK_CONTROL_NEW_DIR, true))
	{
		set_io_error(err, "remove", CMK_CONTROL_NEW_DIR);
		return false;
	}
	if (MakePGDirectory(CMK_CONTROL_NEW_DIR) != 0)
	{
		set_io_error(err, "create directory", CMK_CONTROL_NEW_DIR);
		return false;
	}
	snprintf(path, sizeof(path), "%s/control", CMK_CONTROL_NEW_DIR);
	if (!write_file(path, ctl, err))
		return false;
	/* no tuple nonce epoch yet: a missing file later means a lost one */
	snprintf(path, sizeof(path), "%s/nonce_epochs", CMK_CONTROL_NEW_DIR);
	if (!cmk_epochs_write_empty(path, ctl->system_identifier, ctl->dek_id))
	{
		set_io_error(err, "write", path);
		return false;
	}
	/* durable_rename() handles files only: rename, then sync both levels. */
	if (fsync_fname_ext(CMK_CONTROL_NEW_DIR, true, false, LOG) != 0 ||
		rename(CMK_CONTROL_NEW_DIR, CMK_CONTROL_DIR) != 0 ||
		fsync_fname_ext(CMK_CONTROL_DIR, true, false, LOG) != 0 ||
		fsync_fname_ext(".", true, false, LOG) != 0)
	{
		set_io_error(err, "install", CMK_CONTROL_DIR);
		return false;
	}
	return true;
}

/* Re-wrap, step 1: write and fsync control.tmp next to the live file. */
bool
cmk_control_write_tmp(const CmkControl *ctl, CmkError *err)
{
	return write_file(CMK_CONTROL_TMP, ctl, err);
}

/* Re-wrap, step 2: atomically replace control with control.tmp. */
bool
cmk_control_install_tmp(CmkError *err)
{
	if (durable_rename(CMK_CONTROL_TMP, CMK_CONTROL_FILE, LOG) != 0)
	{
		set_io_error(err, "rename into place", CMK_CONTROL_FILE);
		return false;
	}
	return true;
}

bool
cmk_control_replace(const CmkControl *ctl, CmkError *err)
{
	return cmk_control_write_tmp(ctl, err) && cmk_control_install_tmp(err);
}

#endif							/* !FRONTEND */
