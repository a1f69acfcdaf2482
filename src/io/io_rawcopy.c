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
 *	 read-only too.  That stream stays decrypted: the receiver writes it
 *	 through its own layer (a standby encrypts it again), and a raw stream
 *	 of the flushed prefix of the tail page would end inside a 16-byte XTS
 *	 block that the next send could not complete.  So WAL is raw only while
 *	 BASE_BACKUP runs.  exec_replication_command() points debug_query_string
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

/* Whether cmd is the replication command BASE_BACKUP (repl_scanner.l). */
static bool
is_base_backup_command(const char *cmd)
{
	static const char keyword[] = "BASE_BACKUP";
	char		next;

	if (cmd == NULL)
		return false;
	while (*cmd == ' ' || *cmd == '\t' || *cmd == '\n' || *cmd == '\r' ||
		   *cmd == '\f')
		cmd++;
	if (strncmp(cmd, keyword, sizeof(keyword) - 1) != 0)
		return false;
	next = cmd[sizeof(keyword) - 1];
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
	return is_base_backup_command(debug_query_string);
}
