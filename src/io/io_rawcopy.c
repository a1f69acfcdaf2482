/*-------------------------------------------------------------------------
 *
 * io_rawcopy.c
 *		Which descriptors read a relation or WAL file exactly as stored
 *		(encrypted): the base backup's copies.
 *
 * A base backup is a copy of the data directory made by a physical WAL
 * sender serving the replication command BASE_BACKUP: basebackup.c opens
 * every file with OpenTransientFile(path, O_RDONLY) and reads it with
 * pg_pread, and, with -X fetch, does the same for the WAL segments of the
 * backup.  Those bytes leave the server, so they must leave it as stored:
 * a backup, and a standby made from it, then hold ciphertext, and the
 * checksums basebackup.c verifies and the manifest records are those of
 * the stored (encrypted) pages, which is what pg_checksums and
 * pg_verifybackup see on disk too (docs/io-layer.md, "Backups, standbys
 * and archives").
 *
 * The rule, decided once when a relation or WAL file is opened:
 *
 *	 the process is a physical WAL sender (am_walsender, not am_db_walsender),
 *	 it is executing BASE_BACKUP, and the file is opened read-only.
 *
 * Each condition is needed:
 *
 * - A physical WAL sender has no database.  Whatever it reads through the
 *	 buffer manager (pg_authid and pg_auth_members at connection and for a
 *	 backup target's privilege check) is opened by md.c, always O_RDWR, and
 *	 is decrypted as in any process: a shared buffer never holds ciphertext.
 *	 A logical (database) WAL sender decodes through the buffer manager and
 *	 never copies files; it is never raw.
 * - The same WAL sender streams WAL for START_REPLICATION (a standby's
 *	 walreceiver, pg_basebackup -X stream, pg_receivewal), opening segments
 *	 read-only too.  That stream is decided by io_rawstream.c: decrypted
 *	 for a standby (its own layer encrypts it again), as stored, with a
 *	 hold-back at the flush pointer, for pg_basebackup -X stream and
 *	 pg_receivewal.  So here WAL is raw only while BASE_BACKUP runs.
 *	 exec_replication_command() points debug_query_string
 *	 at the command for exactly that long; the replication scanner accepts
 *	 the keyword only in upper case, after blanks, and a physical WAL sender
 *	 runs no SQL, so the test below matches what the server executes.
 *
 * Runs inside open() (THE BOUNDARY BELOW fd.c, io_int.h): reads three
 * process-local globals and parses a string, nothing else; no allocation,
 * no elog, no lock, no shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>

#include "replication/walsender.h"
#include "tcop/tcopprot.h"

#include "io/io_int.h"

/*
 * Whether cmd is the replication command keyword (repl_scanner.l), e.g.
 * BASE_BACKUP; io_rawstream.c asks for START_REPLICATION.
 */
bool
cmk_replication_command_is(const char *cmd, const char *keyword)
{
	size_t		len = strlen(keyword);
	char		next;

	if (cmd == NULL)
		return false;
	while (*cmd == ' ' || *cmd == '\t' || *cmd == '\n' || *cmd == '\r' ||
		   *cmd == '\f')
		cmd++;
	if (strncmp(cmd, keyword, len) != 0)
		return false;
	next = cmd[len];
	/* BASE_BACKUPX would be an identifier, and a syntax error */
	return !((next >= 'A' && next <= 'Z') || (next >= 'a' && next <= 'z') ||
			 (next >= '0' && next <= '9') || next == '_' ||
			 (unsigned char) next >= 0x80);
}

bool
cmk_rawcopy_wanted(const CmkFileId *id, int flags)
{
	if (id->kind == CMK_FILE_OTHER)
		return false;
	if (!am_walsender || am_db_walsender)
		return false;
	if ((flags & O_ACCMODE) != O_RDONLY)
		return false;
	return cmk_replication_command_is(debug_query_string, "BASE_BACKUP");
}
