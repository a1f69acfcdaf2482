/*-------------------------------------------------------------------------
 *
 * cmk_offline.h
 *		What the cmk_offline launcher hands to its preload library: the
 *		layout of the sealed memory file that carries the two cluster
 *		encryption keys into the stock tool's process (docs/io-layer.md,
 *		"Offline tools").
 *
 * The launcher unwraps the DEK, derives the relation-page and WAL-page XTS
 * keys, writes them here and seals the file against writes, growth and
 * shrinking.  The tool inherits the descriptor (its number, never a key, is
 * in CMK_OFFLINE_FD_ENV); the library checks the seals and the magic, builds
 * its ciphers and closes the descriptor.  The DEK itself never leaves the
 * launcher.  Nothing in this file may ever be written to a file, an
 * environment variable or a command line.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_OFFLINE_H
#define CMK_OFFLINE_H

#include "crypto/cmk_crypto.h"

#define CMK_OFFLINE_MAGIC		"cmkoffl1"
#define CMK_OFFLINE_FD_ENV		"CMK_OFFLINE_FD"
#define CMK_OFFLINE_LIBRARY		"cmk_offline_preload.so"

/* The seals the launcher sets and the library insists on. */
#define CMK_OFFLINE_SEALS	(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE)

typedef struct CmkOfflineKeys
{
	char		magic[8];		/* CMK_OFFLINE_MAGIC, no terminator */
	uint32		checksums;		/* data checksums on in pg_control */
	uint32		pad;
	uint64		system_identifier;
	uint8		rel_key[CMK_XTS_KEY_LEN];	/* HKDF(DEK, CMK_IO_REL_LABEL) */
	uint8		wal_key[CMK_XTS_KEY_LEN];	/* HKDF(DEK, CMK_IO_WAL_LABEL) */
	/* the data directory: absolute as given, and with symlinks resolved */
	char		datadir[MAXPGPATH];
	char		datadir_real[MAXPGPATH];
} CmkOfflineKeys;

#endif							/* CMK_OFFLINE_H */
