/*-------------------------------------------------------------------------
 *
 * nonce_epochs.c
 *		Tuple nonces: the cluster's table of nonce epochs, its file
 *		$PGDATA/cmk_storage/nonce_epochs, and the counters handed out under
 *		the current epoch.
 *
 * A tuple nonce is a random 64-bit prefix and a 32-bit counter.  Storing the
 * prefix in every tuple would cost 8 bytes per row, so the prefixes live in
 * a table of up to 65,536 "epochs" (in shared memory while the server runs)
 * and a tuple names its epoch by a 16-bit id (docs/tuple-format.md).
 *
 * Every postmaster life registers a new epoch the first time it needs a
 * nonce (and again when 2^32 counters are used up), with a random unused id
 * and a random prefix; counters are never continued across a restart, so a
 * restored, cloned or promoted data directory never continues a counter its
 * twin also continues.  Registration writes the file (fsync, rename) and
 * then WAL-logs the entry and flushes it, before any tuple can name the
 * epoch: a crash, a checkpoint, a base backup, a standby or a point-in-time
 * restore therefore always has every epoch its tuples name.  Ids are random
 * so that a tuple copied from another cluster most likely names an epoch
 * this one never registered, which is reported, never decrypted.
 *
 * Authentication (docs/nonce-epochs.md).  A wrong prefix decrypts to
 * garbage, so the file is bound to the cluster (system identifier) and to
 * the DEK (its identifier), and its entries are covered by an HMAC-SHA256
 * under a subkey of the DEK.  The postmaster reads the file before any key
 * exists, so entries start out unusable; they become usable when the key
 * arrives and the MAC checks out (the key worker asks right after it
 * publishes the key, and any reader or writer that finds the table not yet
 * checked does it first).  Besides the MAC, two sources are trusted: an
 * epoch this server life registered, and an epoch WAL replay met in this
 * server life (WAL is what the tuples themselves come from).
 *
 * Redo needs no key (a standby or a restore may replay while the vault is
 * unreachable).  Without the key it keeps the authenticated part of the
 * file as it is on disk and lists what it learned from WAL in the file's
 * "pending" part, which is never trusted by a later server life: those
 * ids stay reserved, and their epochs become usable only when WAL replay
 * meets them again; with the key, everything trusted is sealed into the
 * authenticated part.
 *
 * What the MAC cannot show is that the file is the newest one: an older
 * copy (fewer entries, sealed when they were all there is) still verifies.
 * Tuples that name an epoch missing from it are reported as naming an epoch
 * this cluster never registered.
 *
 * This file must never hand out a nonce twice, publish an epoch before it
 * is durable in the file and in WAL, reuse an id of this cluster, or let an
 * entry that is not authenticated be used for encryption or decryption.  It
 * never holds key bytes: key_store.c computes the MAC.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xloginsert.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "cmk_bigendian.h"
#include "crypto/cmk_crypto.h"
#include "keys/control_file.h"
#include "keys/key_store.h"
#include "keys/key_wal.h"
#include "keys/nonce_epochs.h"

#define EPOCH_FILE			CMK_CONTROL_DIR "/nonce_epochs"
#define EPOCH_TMP			CMK_CONTROL_DIR "/nonce_epochs.tmp"
#define EPOCH_MAGIC			"CMKEPOCH"
#define EPOCH_TRANCHE		"cmk_storage nonce epochs"

/* File layout: docs/nonce-epochs.md */
#define ENTRY				16	/* id, 2 zero bytes, DEK tag, prefix */
#define V1_HEADER			16	/* magic, version, count */
#define V2_HEADER			48	/* magic, version, n, flags, 0, sysid, DEK id */
#define V2_FLAG_SEALED		0x1 /* the MAC field holds the HMAC */
#define MAC_LEN				CMK_HMAC_LEN
#define AUTH_LEN(n)			(V2_HEADER + (Size) (n) * ENTRY + MAC_LEN)
#define FILE_LEN(n, p)		(AUTH_LEN(n) + 4 + (Size) (p) * ENTRY + 4)
#define MAX_FILE			FILE_LEN(CMK_NONCE_EPOCHS, CMK_NONCE_EPOCHS)

/* Entry states (st[]): the low bits, and whether the content is in auth[]. */
#define ST_FREE				0	/* never registered here */
#define ST_SEALED			1	/* in the authenticated part, not checked */
#define ST_PENDING			2	/* replayed without the key, earlier life */
#define ST_LEGACY			3	/* from a format-1 file */
#define ST_TRUSTED			4	/* usable */
#define ST_MASK				0x0f
#define ST_IN_AUTH			0x10	/* this very content is in auth[] */

/* What the table knows about the file. */
typedef enum EpochFile
{
	FILE_NONE,					/* no cmk_storage directory when last looked */
	FILE_UNSEALED,				/* written without a key: no entries there */
	FILE_SEALED,				/* authenticated part with a MAC, not checked */
	FILE_LEGACY,				/* format 1 */
	FILE_VERIFIED,				/* checked (or first sealed) under dek_id */
	FILE_DAMAGED,				/* see why, detail, hint */
} EpochFile;

/* How write_file wrote the file. */
typedef enum EpochWrite
{
	WROTE_NOTHING,				/* failed (reported at elevel) or no key */
	WROTE_SEALED,				/* everything trusted is authenticated */
	WROTE_PENDING,				/* authenticated part kept, the rest pending */
	WROTE_LEGACY,				/* format 1 */
} EpochWrite;

typedef struct CmkEpochTable
{
	LWLock	   *lock;			/* everything below but current and next */
	slock_t		mutex;			/* current and next */
	int32		current;		/* epoch of this postmaster life, or -1 */
	uint64		next;			/* its first counter not yet handed out */
	EpochFile	file;
	bool		sealed_on_disk; /* the authenticated part carries a MAC */
	uint64		sysid;			/* the file's binding */
	uint8		dek_id[CMK_DEK_ID_LEN];
	char		why[256];		/* FILE_DAMAGED */
	char		detail[512];
	char		hint[512];
	Size		auth_len;		/* the authenticated part as on disk */
	uint8		auth[AUTH_LEN(CMK_NONCE_EPOCHS)];
	uint8		st[CMK_NONCE_EPOCHS];
	CmkEpoch	entries[CMK_NONCE_EPOCHS];
} CmkEpochTable;

static CmkEpochTable *cmk_epoch_table = NULL;
CmkEpoch   *cmk_epochs = NULL;

#define HINT_RESTORE \
	"Restore $PGDATA/cmk_storage/nonce_epochs from the newest backup of this cluster (or copy it from a standby that is caught up) and restart the server."
#define DETAIL_BLOCKED \
	"Encrypted tables cannot be read or written until the file is restored."

Size
cmk_epochs_shmem_size(void)
{
	return sizeof(CmkEpochTable);
}

void
cmk_epochs_shmem_request(void)
{
	RequestAddinShmemSpace(cmk_epochs_shmem_size());
	RequestNamedLWLockTranche(EPOCH_TRANCHE, 1);
}

static inline int
entry_state(const CmkEpochTable *tab, int id)
{
	return tab->st[id] & ST_MASK;
}

static int
count_entries(const CmkEpochTable *tab, int state)
{
	int			n = 0;

	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (state < 0 ? entry_state(tab, i) != ST_FREE : entry_state(tab, i) == state)
			n++;
	return n;
}

static bool
same_content(const CmkEpoch *e, uint32 tag, const uint8 *prefix)
{
	return e->dek_tag == tag && memcmp(e->prefix, prefix, CMK_NONCE_PREFIX_LEN) == 0;
}

/* Make an entry usable: its content is in place before valid is set. */
static void
make_usable(CmkEpochTable *tab, int id, bool in_auth)
{
	tab->st[id] = ST_TRUSTED | (in_auth ? ST_IN_AUTH : 0);
	if (tab->file != FILE_DAMAGED)
	{
		pg_write_barrier();
		tab->entries[id].valid = 1;
	}
}

/*
 * The file is damaged: refuse every epoch alike, not just the doubtful
 * ones, until the file is restored and the server restarted.  Logged once.
 */
static void
set_damaged(CmkEpochTable *tab, const char *detail, const char *hint,
			const char *fmt,...) pg_attribute_printf(4, 5);

static void
set_damaged(CmkEpochTable *tab, const char *detail, const char *hint,
			const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(tab->why, sizeof(tab->why), fmt, ap);
	va_end(ap);
	strlcpy(tab->detail, detail ? detail : DETAIL_BLOCKED, sizeof(tab->detail));
	strlcpy(tab->hint, hint ? hint : HINT_RESTORE, sizeof(tab->hint));
	tab->file = FILE_DAMAGED;
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		tab->entries[i].valid = 0;
	ereport(WARNING,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("cmk_storage: %s", tab->why),
			 errdetail("%s", tab->detail),
			 errhint("%s", tab->hint)));
}

/* ---------------------------------------------------------------------- */
/* Reading the file                                                         */

/*
 * An entry read from the file.  What this server life learned from WAL or
 * registered wins over the file; a pending entry overrides the
 * authenticated one of its id (it came from WAL later).
 */
static void
place(CmkEpochTable *tab, int id, const uint8 *p, int state, bool in_auth)
{
	CmkEpoch   *e = &tab->entries[id];
	uint32		tag;
	int			cur = entry_state(tab, id);
	bool		same;

	memcpy(&tag, p + 4, 4);
	same = cur != ST_FREE && same_content(e, tag, p + 8);
	if (cur == ST_TRUSTED)
	{
		if (same && in_auth)
			tab->st[id] |= ST_IN_AUTH;
		return;
	}
	if (cur == ST_SEALED && same)
		return;					/* a pending copy of an authenticated entry */
	e->valid = 0;
	e->dek_tag = tag;
	memcpy(e->prefix, p + 8, CMK_NONCE_PREFIX_LEN);
	tab->st[id] = state | (in_auth ? ST_IN_AUTH : 0);
}

/*
 * Entries at p: ids strictly ascending, reserved bytes zero.  False (the
 * table damaged) if not.
 */
static bool
read_entries(CmkEpochTable *tab, const uint8 *p, uint32 n, int state,
			 bool in_auth, const char *part)
{
	int			last = -1;

	for (uint32 i = 0; i < n; i++, p += ENTRY)
	{
		int			id = cmk_get16(p);

		if (id <= last)
		{
			set_damaged(tab, NULL, NULL,
						"\"%s\" is damaged: epoch %d of the %s part is out of order or listed twice",
						EPOCH_FILE, id, part);
			return false;
		}
		if (p[2] != 0 || p[3] != 0)
		{
			set_damaged(tab, NULL, NULL,
						"\"%s\" is damaged: the reserved bytes of epoch %d are not zero",
						EPOCH_FILE, id);
			return false;
		}
		last = id;
	}
	p -= (Size) n * ENTRY;
	for (uint32 i = 0; i < n; i++, p += ENTRY)
		place(tab, cmk_get16(p), p, state, in_auth);
	return true;
}

/* The trailing CRC-32C of a file image of len bytes; damage if wrong. */
static bool
checksum_ok(CmkEpochTable *tab, const uint8 *buf, Size len)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, buf, len - 4);
	FIN_CRC32C(crc);
	if (crc == cmk_get32(buf + len - 4))
		return true;
	set_damaged(tab, NULL, NULL, "\"%s\" has a wrong checksum", EPOCH_FILE);
	return false;
}

static void
not_an_epoch_file(CmkEpochTable *tab)
{
	set_damaged(tab, NULL, NULL,
				"\"%s\" is not a nonce epoch file of a known format or is truncated", EPOCH_FILE);
}

static void
read_v1(CmkEpochTable *tab, const uint8 *buf, Size len)
{
	uint32		n = cmk_get32(buf + 12);

	if (n > CMK_NONCE_EPOCHS || len != V1_HEADER + (Size) n * ENTRY + 4)
	{
		not_an_epoch_file(tab);
		return;
	}
	if (!checksum_ok(tab, buf, len))
		return;
	if (read_entries(tab, buf + V1_HEADER, n, ST_LEGACY, false, "format-1"))
		tab->file = FILE_LEGACY;
}

static void
read_v2(CmkEpochTable *tab, const uint8 *buf, Size len)
{
	uint32		n = cmk_get32(buf + 12);
	uint32		flags = cmk_get32(buf + 16);
	uint64		sysid = cmk_get64(buf + 24);
	uint32		p;
	static const uint8 zero[MAC_LEN] = {0};

	/* lengths and the checksum first: a torn or truncated file is that */
	if (n > CMK_NONCE_EPOCHS || len < FILE_LEN(n, 0) ||
		(p = cmk_get32(buf + AUTH_LEN(n))) > CMK_NONCE_EPOCHS ||
		len != FILE_LEN(n, p))
	{
		not_an_epoch_file(tab);
		return;
	}
	if (!checksum_ok(tab, buf, len))
		return;

	/*
	 * The checksum matched: what follows was written deliberately, by a
	 * faulty or foreign writer or by hand.
	 */
	if ((flags & ~V2_FLAG_SEALED) != 0 || cmk_get32(buf + 20) != 0)
	{
		set_damaged(tab, NULL, NULL, "\"%s\" is damaged: unknown flags 0x%x or reserved bytes not zero",
					EPOCH_FILE, flags);
		return;
	}
	if (!(flags & V2_FLAG_SEALED) && (n != 0 || memcmp(buf + AUTH_LEN(n) - MAC_LEN, zero, MAC_LEN) != 0))
	{
		set_damaged(tab, NULL, NULL, "\"%s\" is damaged: it is not sealed but lists %u authenticated epochs or a MAC",
					EPOCH_FILE, n);
		return;
	}
	if (sysid != GetSystemIdentifier())
	{
		char		detail[256];

		snprintf(detail, sizeof(detail),
				 "The file names database system identifier %llu; this cluster's is %llu.",
				 (unsigned long long) sysid, (unsigned long long) GetSystemIdentifier());
		set_damaged(tab, detail,
					"Restore this cluster's own $PGDATA/cmk_storage/nonce_epochs from a backup of this cluster and restart the server.",
					"\"%s\" belongs to another cluster", EPOCH_FILE);
		return;
	}
	if (!read_entries(tab, buf + V2_HEADER, n, ST_SEALED, true, "authenticated") ||
		!read_entries(tab, buf + AUTH_LEN(n) + 4, p, ST_PENDING, false, "pending"))
		return;
	tab->sysid = sysid;
	memcpy(tab->dek_id, buf + 32, CMK_DEK_ID_LEN);
	tab->auth_len = AUTH_LEN(n);
	memcpy(tab->auth, buf, tab->auth_len);
	tab->sealed_on_disk = (flags & V2_FLAG_SEALED) != 0;
	tab->file = tab->sealed_on_disk ? FILE_SEALED : FILE_UNSEALED;
}

/*
 * Read the file into the table (empty, or holding only what this server
 * life learned: when the key directory appeared while it ran).  Problems
 * make the table damaged.
 */
static void
load_file(CmkEpochTable *tab)
{
	struct stat st;
	uint8	   *buf;
	int			fd;
	ssize_t		len;

	/*
	 * No cmk_storage directory: no DEK yet (its creation writes an empty
	 * file next to the control file), or a standby that was built without
	 * it.  A directory without the file is damage: epochs would be lost.
	 */
	if (stat(CMK_CONTROL_DIR, &st) != 0 && errno == ENOENT)
	{
		tab->file = FILE_NONE;
		return;
	}
	fd = open(EPOCH_FILE, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		if (errno == ENOENT)
			set_damaged(tab, NULL, NULL, "\"%s\" is missing", EPOCH_FILE);
		else
			set_damaged(tab, NULL, NULL, "could not open \"%s\": %m", EPOCH_FILE);
		return;
	}
	buf = palloc(MAX_FILE + 1);
	len = read(fd, buf, MAX_FILE + 1);
	close(fd);
	if (len < V1_HEADER + 4 || len > (ssize_t) MAX_FILE ||
		memcmp(buf, EPOCH_MAGIC, 8) != 0)
		not_an_epoch_file(tab);
	else if (cmk_get32(buf + 8) == 1)
		read_v1(tab, buf, len);
	else if (cmk_get32(buf + 8) == 2 && len >= (ssize_t) FILE_LEN(0, 0))
		read_v2(tab, buf, len);
	else
		not_an_epoch_file(tab);
	pfree(buf);
}

/* A key directory that appeared in this server life (creation, redo). */
static void
load_if_dir_appeared(CmkEpochTable *tab)
{
	struct stat st;

	if (tab->file == FILE_NONE && stat(CMK_CONTROL_DIR, &st) == 0)
		load_file(tab);
}

/* Called under AddinShmemInitLock by the postmaster's shmem start-up. */
void
cmk_epochs_shmem_init(void)
{
	bool		found;
	CmkEpochTable *tab;

	tab = ShmemInitStruct("cmk_storage nonce epochs", sizeof(CmkEpochTable), &found);
	if (!found)
	{
		memset(tab, 0, sizeof(CmkEpochTable));
		tab->lock = &(GetNamedLWLockTranche(EPOCH_TRANCHE))->lock;
		SpinLockInit(&tab->mutex);
		tab->current = -1;
		load_file(tab);
		if (tab->file == FILE_LEGACY)
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("cmk_storage: \"%s\" is in format 1, which is not authenticated", EPOCH_FILE),
					 errdetail("Encrypted tables cannot be read or written until the file is upgraded."),
					 errhint("If this cluster ran a cmk_storage build older than this one until now, run SELECT cmk_storage.upgrade_nonce_epochs() once; see docs/nonce-epochs.md.")));
	}
	cmk_epoch_table = tab;
	cmk_epochs = tab->entries;
}

/* ---------------------------------------------------------------------- */
/* Writing the file                                                         */

static void
put_entry(uint8 *p, int id, const CmkEpoch *e)
{
	memset(p, 0, ENTRY);
	cmk_put16(p, (uint16) id);
	memcpy(p + 4, &e->dek_tag, 4);
	memcpy(p + 8, e->prefix, CMK_NONCE_PREFIX_LEN);
}

static void
put_v2_header(uint8 *buf, uint32 n, bool sealed, uint64 sysid, const uint8 *dek_id)
{
	memset(buf, 0, V2_HEADER);
	memcpy(buf, EPOCH_MAGIC, 8);
	cmk_put32(buf + 8, 2);
	cmk_put32(buf + 12, n);
	cmk_put32(buf + 16, sealed ? V2_FLAG_SEALED : 0);
	cmk_put64(buf + 24, sysid);
	memcpy(buf + 32, dek_id, CMK_DEK_ID_LEN);
}

/* The trailing CRC-32C of a file image of len bytes. */
static void
put_crc(uint8 *buf, Size len)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, buf, len - 4);
	FIN_CRC32C(crc);
	cmk_put32(buf + len - 4, crc);
}

/* Install a file image: nonce_epochs.tmp, fsync, rename, fsync. */
static bool
install(const uint8 *buf, Size len, int elevel)
{
	const char *failed;

	if (!cmk_write_file_synced(EPOCH_TMP, buf, len, &failed))
	{
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not %s \"%s\": %m", failed, EPOCH_TMP)));
		return false;
	}
	return durable_rename(EPOCH_TMP, EPOCH_FILE, elevel) == 0;
}

/*
 * The empty epoch file of a new cmk_storage directory (the DEK's creation
 * installs it with the control file; no key is live yet, so it is not
 * sealed): from then on a missing file is damage.  It is sealed when the
 * key is first published.
 */
bool
cmk_epochs_write_empty(const char *path, uint64 system_identifier,
					   const uint8 *dek_id)
{
	uint8		buf[FILE_LEN(0, 0)];
	const char *failed;

	memset(buf, 0, sizeof(buf));
	put_v2_header(buf, 0, false, system_identifier, dek_id);
	put_crc(buf, sizeof(buf));
	return cmk_write_file_synced(path, buf, sizeof(buf), &failed);
}

/* The content the file gets for id: extra (not yet in the table) wins. */
static inline const CmkEpoch *
content(const CmkEpochTable *tab, int id, int extra_id, const CmkEpoch *extra)
{
	return id == extra_id ? extra : &tab->entries[id];
}

/*
 * Write the table, plus the entry (extra_id, extra) if extra is given, to
 * the file.  Caller holds the lock exclusively, and the table is neither
 * damaged nor without a directory.
 *
 * With the live key of the table's DEK (table verified): the authenticated
 * part lists everything trusted and is sealed, the pending part what is
 * still pending.  Without it (unless require_sealed): the authenticated
 * part stays as it is on disk, and everything trusted that it does not hold
 * is listed as pending.  A format-1 table is written in format 1.
 */
static EpochWrite
write_file(CmkEpochTable *tab, int extra_id, const CmkEpoch *extra,
		   bool require_sealed, int elevel)
{
	uint8	   *buf;
	uint8	   *p;
	Size		len;
	uint32		n = 0,
				np = 0;
	EpochWrite	how;
	bool		ok;

	Assert(tab->file != FILE_DAMAGED && tab->file != FILE_NONE);
	buf = palloc(MAX_FILE);

	if (tab->file == FILE_LEGACY)
	{
		how = WROTE_LEGACY;
		p = buf + V1_HEADER;
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
			if (i == extra_id || entry_state(tab, i) != ST_FREE)
			{
				put_entry(p, i, content(tab, i, extra_id, extra));
				p += ENTRY;
				n++;
			}
		memcpy(buf, EPOCH_MAGIC, 8);
		cmk_put32(buf + 8, 1);
		cmk_put32(buf + 12, n);
		len = V1_HEADER + (Size) n * ENTRY + 4;
		put_crc(buf, len);
	}
	else
	{
		uint8		mac[MAC_LEN];
		uint8		dek_id[CMK_DEK_ID_LEN];

		how = WROTE_PENDING;
		if (tab->file == FILE_VERIFIED)
		{
			/* everything trusted, sealed under the live key */
			p = buf + V2_HEADER;
			for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
				if (i == extra_id || entry_state(tab, i) == ST_TRUSTED)
				{
					put_entry(p, i, content(tab, i, extra_id, extra));
					p += ENTRY;
					n++;
				}
			put_v2_header(buf, n, true, tab->sysid, tab->dek_id);
			if (cmk_key_store_hmac(CMK_PURPOSE_EPOCHS, buf, AUTH_LEN(n) - MAC_LEN,
								   mac, dek_id) &&
				memcmp(dek_id, tab->dek_id, CMK_DEK_ID_LEN) == 0)
			{
				memcpy(buf + AUTH_LEN(n) - MAC_LEN, mac, MAC_LEN);
				how = WROTE_SEALED;
			}
		}
		if (how != WROTE_SEALED)
		{
			if (require_sealed)
			{
				pfree(buf);
				return WROTE_NOTHING;
			}
			/* the authenticated part as on disk, the rest pending */
			memcpy(buf, tab->auth, tab->auth_len);
			n = cmk_get32(buf + 12);
		}
		p = buf + AUTH_LEN(n) + 4;
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		{
			int			s = entry_state(tab, i);

			if (how == WROTE_SEALED ?
				(i != extra_id && s == ST_PENDING) :
				(i == extra_id || s == ST_PENDING ||
				 (s == ST_TRUSTED && !(tab->st[i] & ST_IN_AUTH))))
			{
				put_entry(p, i, content(tab, i, extra_id, extra));
				p += ENTRY;
				np++;
			}
		}
		cmk_put32(buf + AUTH_LEN(n), np);
		len = FILE_LEN(n, np);
		put_crc(buf, len);
	}

	ok = install(buf, len, elevel);
	if (ok && how == WROTE_SEALED)
	{
		memcpy(tab->auth, buf, AUTH_LEN(n));
		tab->auth_len = AUTH_LEN(n);
		tab->sealed_on_disk = true;
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
			if (entry_state(tab, i) == ST_TRUSTED)
				tab->st[i] |= ST_IN_AUTH;
	}
	pfree(buf);
	return ok ? how : WROTE_NOTHING;
}

/* Does the file on disk lack the MAC over something this life trusts? */
static bool
needs_seal(const CmkEpochTable *tab)
{
	if (tab->file != FILE_VERIFIED)
		return false;
	if (!tab->sealed_on_disk)
		return true;
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (tab->st[i] == ST_TRUSTED)	/* trusted, not in auth[] */
			return true;
	return false;
}

/* ---------------------------------------------------------------------- */
/* Authentication                                                           */

/* The identifier of the live DEK, or false if no key is available. */
static bool
live_dek(uint8 *dek_id)
{
	CmkKeyStatus st;

	cmk_key_store_status(&st);
	if (st.state != CMK_KEY_AVAILABLE || !st.have_control)
		return false;
	memcpy(dek_id, st.dek_id, CMK_DEK_ID_LEN);
	return true;
}

/*
 * Authenticate the table under the live key if it is not yet, and seal what
 * this life trusts into the file.  True if the table is usable under the
 * live key.  Caller holds the lock exclusively.  Raises nothing but a
 * failure to write the file (at elevel): damage is latched in the table
 * (and logged), anything else is for describe_problem to explain.
 */
static bool
authenticate(CmkEpochTable *tab, int elevel)
{
	uint8		dek_id[CMK_DEK_ID_LEN];
	uint8		mac[MAC_LEN];

	load_if_dir_appeared(tab);
	if (tab->file == FILE_NONE || tab->file == FILE_DAMAGED || tab->file == FILE_LEGACY)
		return false;

	if (tab->file == FILE_SEALED)
	{
		if (!cmk_key_store_hmac(CMK_PURPOSE_EPOCHS, tab->auth, tab->auth_len - MAC_LEN,
								mac, dek_id))
			return false;		/* no key yet */
		if (memcmp(dek_id, tab->dek_id, CMK_DEK_ID_LEN) != 0)
			return false;		/* another DEK's file: describe_problem */
		if (!cmk_ct_equal(mac, tab->auth + tab->auth_len - MAC_LEN, MAC_LEN))
		{
			set_damaged(tab,
						"Its HMAC does not match its contents: the file was changed after cmk_storage wrote it (an entry edited, added or dropped), or it was not written under this cluster's key.",
						NULL, "\"%s\" failed authentication", EPOCH_FILE);
			return false;
		}
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
			if (entry_state(tab, i) == ST_SEALED)
				make_usable(tab, i, true);
		tab->file = FILE_VERIFIED;
	}
	else
	{
		if (!live_dek(dek_id) || memcmp(dek_id, tab->dek_id, CMK_DEK_ID_LEN) != 0)
			return false;
		/* unsealed (a new key directory): nothing to check, sealed below */
		tab->file = FILE_VERIFIED;
	}

	if (needs_seal(tab))
		(void) write_file(tab, -1, NULL, true, elevel);
	return true;
}

typedef struct EpochProblem
{
	char		why[256];
	char		detail[512];
	char		hint[512];
} EpochProblem;

/*
 * Why the table as a whole cannot be used under the live key, if it
 * cannot.  A key that is simply not available is not the table's problem
 * (the key state says why).  Caller holds the lock.
 */
static bool
describe_problem(const CmkEpochTable *tab, EpochProblem *pr)
{
	uint8		dek_id[CMK_DEK_ID_LEN];

	switch (tab->file)
	{
		case FILE_DAMAGED:
			strlcpy(pr->why, tab->why, sizeof(pr->why));
			strlcpy(pr->detail, tab->detail, sizeof(pr->detail));
			strlcpy(pr->hint, tab->hint, sizeof(pr->hint));
			return true;
		case FILE_LEGACY:
			snprintf(pr->why, sizeof(pr->why), "\"%s\" is in format 1, which is not authenticated",
					 EPOCH_FILE);
			strlcpy(pr->detail, "cmk_storage builds before nonce epochs were authenticated wrote format 1; its epochs are not used until the file is upgraded.",
					sizeof(pr->detail));
			strlcpy(pr->hint, "If this cluster ran such a build until now, run SELECT cmk_storage.upgrade_nonce_epochs() once. Otherwise the file was replaced: restore it from the newest backup of this cluster and restart the server.",
					sizeof(pr->hint));
			return true;
		case FILE_NONE:
			return false;
		default:
			break;
	}
	if (live_dek(dek_id) && memcmp(dek_id, tab->dek_id, CMK_DEK_ID_LEN) != 0)
	{
		char		have[2 * CMK_DEK_ID_LEN + 1];
		char		want[2 * CMK_DEK_ID_LEN + 1];

		cmk_hex(tab->dek_id, CMK_DEK_ID_LEN, have);
		cmk_hex(dek_id, CMK_DEK_ID_LEN, want);
		snprintf(pr->why, sizeof(pr->why), "\"%s\" belongs to another data encryption key",
				 EPOCH_FILE);
		snprintf(pr->detail, sizeof(pr->detail), "The file names DEK %s; the current DEK is %s.",
				 have, want);
		strlcpy(pr->hint, "Restore the nonce_epochs file written under this cluster's current key from a backup of this cluster and restart the server.",
				sizeof(pr->hint));
		return true;
	}
	return false;
}

static void pg_attribute_noreturn()
report_problem(const EpochProblem *pr)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("cmk_storage nonce epochs are not available: %s", pr->why),
			 errdetail("%s", pr->detail),
			 errhint("%s", pr->hint)));
}

/*
 * The key worker published a key: authenticate the file now, so that damage
 * is reported at once and what WAL replay learned without the key is sealed
 * before the server might stop.
 */
void
cmk_epochs_key_available(void)
{
	CmkEpochTable *tab = cmk_epoch_table;

	if (tab == NULL)
		return;
	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	(void) authenticate(tab, WARNING);
	LWLockRelease(tab->lock);
}

/* ---------------------------------------------------------------------- */
/* Registration and counters                                                */

/*
 * Can count more counters come from the current epoch for the DEK tagged
 * dek_tag?  Caller holds tab->mutex.
 */
static inline bool
current_has_room(const CmkEpochTable *tab, uint32 dek_tag, uint32 count)
{
	return tab->current >= 0 &&
		tab->next + count <= (uint64) PG_UINT32_MAX + 1 &&
		tab->entries[tab->current].dek_tag == dek_tag;
}

/*
 * Register a new epoch under the DEK tagged dek_tag and make it current,
 * unless another backend did so meanwhile (the caller retries).
 */
static void
register_epoch(CmkEpochTable *tab, uint32 dek_tag, uint32 count)
{
	CmkEpoch	fresh = {0};
	EpochProblem pr;
	uint8		rnd[4];
	int			free_ids;
	int			pick;
	int			id = -1;
	XLogRecPtr	lsn;
	uint8		rec[CMK_EPOCH_RECORD_LEN];

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	SpinLockAcquire(&tab->mutex);
	if (current_has_room(tab, dek_tag, count))
	{
		SpinLockRelease(&tab->mutex);
		LWLockRelease(tab->lock);
		return;					/* someone else registered one */
	}
	SpinLockRelease(&tab->mutex);

	/* only under an authenticated table: every id it reserves is known */
	if (!authenticate(tab, ERROR))
	{
		if (describe_problem(tab, &pr))
			report_problem(&pr);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage nonce epochs are not authenticated: the data encryption key is not available"),
				 errhint("Retry shortly; see cmk_storage.status.")));
	}
	if (memcmp(&dek_tag, tab->dek_id, sizeof(dek_tag)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the data encryption key changed while a nonce epoch was being registered"),
				 errhint("Retry the statement.")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot encrypt tuples during recovery")));
	free_ids = count_entries(tab, ST_FREE);
	if (free_ids <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("all %d nonce epochs of this cluster are used", CMK_NONCE_EPOCHS),
				 errdetail("Every server start that writes encrypted tuples, and every 2^32 tuples written, uses one."),
				 errhint("Dump the encrypted tables and restore them into a new cluster.")));
	if (!cmk_random_bytes(rnd, sizeof(rnd)) ||
		!cmk_random_bytes(fresh.prefix, sizeof(fresh.prefix)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce epoch")));
	/* the pick-th free id: (nearly) uniform over the ids never used here */
	pick = (int) (cmk_get32(rnd) % (uint32) free_ids);
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (entry_state(tab, i) == ST_FREE && pick-- == 0)
		{
			id = i;
			break;
		}
	Assert(id >= 0);
	fresh.dek_tag = dek_tag;

	/* durable in the file, sealed, first: a checkpoint after the record has it */
	if (write_file(tab, id, &fresh, true, ERROR) != WROTE_SEALED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not authenticate a new nonce epoch: the data encryption key became unavailable"),
				 errhint("Retry when cmk_storage.status shows the key available.")));

	put_entry(rec, id, &fresh);	/* the WAL record is the entry, as in the file */
	XLogBeginInsert();
	XLogRegisterData((char *) rec, sizeof(rec));
	lsn = XLogInsert(CMK_RMGR_ID, XLOG_CMK_NONCE_EPOCH);
	XLogFlush(lsn);

	/* publish: nothing between the flush and here can fail */
	tab->entries[id].dek_tag = fresh.dek_tag;
	memcpy(tab->entries[id].prefix, fresh.prefix, sizeof(fresh.prefix));
	make_usable(tab, id, true);
	SpinLockAcquire(&tab->mutex);
	tab->current = id;
	tab->next = 0;
	SpinLockRelease(&tab->mutex);
	LWLockRelease(tab->lock);

	ereport(DEBUG1,
			(errmsg_internal("cmk_storage: registered nonce epoch %d (%d of %d used)",
							 id, CMK_NONCE_EPOCHS - free_ids + 1, CMK_NONCE_EPOCHS)));
}

/* The epoch table in shared memory; an error when the library is not preloaded. */
static CmkEpochTable *
loaded_table(void)
{
	if (cmk_epoch_table == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage is not loaded"),
				 errhint("Add cmk_storage to shared_preload_libraries and restart the server.")));
	return cmk_epoch_table;
}

/*
 * Reserve count nonce counters for tuples encrypted under the DEK tagged
 * dek_tag: *epoch receives the current epoch's id, *first the range [first,
 * first + count).  Registers a new epoch when this postmaster life has none
 * yet or its counters run out.  No counter is handed out twice.
 */
void
cmk_nonce_reserve(uint32 dek_tag, uint16 *epoch, uint32 *first, uint32 count)
{
	CmkEpochTable *tab = loaded_table();

	Assert(count > 0);
	for (;;)
	{
		SpinLockAcquire(&tab->mutex);
		if (current_has_room(tab, dek_tag, count))
		{
			*epoch = (uint16) tab->current;
			*first = (uint32) tab->next;
			tab->next += count;
			SpinLockRelease(&tab->mutex);
			return;
		}
		SpinLockRelease(&tab->mutex);
		register_epoch(tab, dek_tag, count);
	}
}

/* ---------------------------------------------------------------------- */
/* Reads                                                                    */

/*
 * A tuple names epoch id and cmk_epoch_usable() said no.  If the table has
 * not been authenticated yet (the key arrived a moment ago, or after a
 * crash restart of shared memory), do it now; then say whether the epoch
 * is usable.
 */
bool
cmk_epoch_recheck(uint16 id, uint32 want_tag)
{
	CmkEpochTable *tab = cmk_epoch_table;

	if (tab == NULL)
		return false;
	/* FILE_VERIFIED is final for the life of the table (or it is damaged) */
	if (tab->file != FILE_VERIFIED)
	{
		LWLockAcquire(tab->lock, LW_EXCLUSIVE);
		(void) authenticate(tab, WARNING);
		LWLockRelease(tab->lock);
	}
	return cmk_epoch_usable(&tab->entries[id], want_tag);
}

/*
 * Report what is wrong with epoch id, which a tuple names under want_tag
 * (cmk_epoch_recheck() said no).
 */
void
cmk_epoch_report_unusable(const char *relname, ItemPointer tid, uint16 id,
						  uint32 want_tag)
{
	CmkEpochTable *tab = loaded_table();
	EpochProblem pr;
	bool		problem;
	int			state;
	int			registered;
	uint32		have;

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	(void) authenticate(tab, WARNING);
	problem = describe_problem(tab, &pr);
	state = entry_state(tab, id);
	registered = count_entries(tab, -1);
	have = tab->entries[id].dek_tag;
	LWLockRelease(tab->lock);

	if (problem)
		report_problem(&pr);
	if (state == ST_FREE)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tuple (%u,%u) in relation \"%s\" names nonce epoch %u, which this cluster never registered",
						ItemPointerGetBlockNumberNoCheck(tid),
						ItemPointerGetOffsetNumberNoCheck(tid), relname, id),
				 errdetail("This cluster has registered %d nonce epochs in $PGDATA/cmk_storage/nonce_epochs.",
						   registered),
				 errhint("The tuple was written by another cluster, or nonce_epochs is older than the data (an older copy of it was restored): start the server with the newest nonce_epochs of the cluster that wrote the data.")));
	if (state == ST_PENDING)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("tuple (%u,%u) in relation \"%s\" names nonce epoch %u, which WAL replay recorded while the data encryption key was unavailable",
						ItemPointerGetBlockNumberNoCheck(tid),
						ItemPointerGetOffsetNumberNoCheck(tid), relname, id),
				 errdetail("An earlier server life wrote the epoch to nonce_epochs without authenticating it; it is used only when WAL replay meets it again."),
				 errhint("Copy $PGDATA/cmk_storage/nonce_epochs from the primary or from a newer backup of this cluster and restart the server.")));
	if (state != ST_TRUSTED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage nonce epochs are not authenticated: the data encryption key is not available"),
				 errhint("Retry shortly; see cmk_storage.status.")));
	if (have == want_tag)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("nonce epoch %u became usable while it was being checked", id),
				 errhint("Retry the statement.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("tuple (%u,%u) in relation \"%s\" was encrypted with another data encryption key",
					ItemPointerGetBlockNumberNoCheck(tid),
					ItemPointerGetOffsetNumberNoCheck(tid), relname),
			 errdetail("Its nonce epoch %u belongs to DEK %02x%02x%02x%02x; the current DEK is %02x%02x%02x%02x.",
					   id,
					   ((uint8 *) &have)[0], ((uint8 *) &have)[1],
					   ((uint8 *) &have)[2], ((uint8 *) &have)[3],
					   ((uint8 *) &want_tag)[0], ((uint8 *) &want_tag)[1],
					   ((uint8 *) &want_tag)[2], ((uint8 *) &want_tag)[3]),
			 errhint("Start the server with the control file (and key) of the cluster that wrote this data.")));
}

/*
 * Raise an error unless the epoch table can be used under the live key
 * (verification asks before it looks at any tuple): when it cannot, every
 * tuple would look as if it named an unusable epoch.
 */
void
cmk_epochs_check_readable(void)
{
	CmkEpochTable *tab = loaded_table();
	EpochProblem pr;
	bool		problem;

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	(void) authenticate(tab, WARNING);
	problem = describe_problem(tab, &pr);
	LWLockRelease(tab->lock);
	if (problem)
		report_problem(&pr);
}

/*
 * Why epoch id, which a tuple names under want_tag, is not usable (the
 * table is: cmk_epochs_check_readable), as a palloc'd message without the
 * tuple's location, for verification to return as a row.
 */
char *
cmk_epoch_unusable_reason(uint16 id, uint32 want_tag)
{
	CmkEpochTable *tab = cmk_epoch_table;
	int			state;
	uint32		have;

	LWLockAcquire(tab->lock, LW_SHARED);
	state = entry_state(tab, id);
	have = tab->entries[id].dek_tag;
	LWLockRelease(tab->lock);
	if (state == ST_FREE)
		return psprintf("tuple names nonce epoch %u, which this cluster never registered", id);
	if (state == ST_PENDING)
		return psprintf("tuple names nonce epoch %u, which WAL replay recorded while the data encryption key was unavailable", id);
	if (state != ST_TRUSTED)
		return psprintf("tuple names nonce epoch %u, which is not authenticated", id);
	return psprintf("tuple names nonce epoch %u of DEK %02x%02x%02x%02x, not of the current DEK %02x%02x%02x%02x",
					id,
					((uint8 *) &have)[0], ((uint8 *) &have)[1],
					((uint8 *) &have)[2], ((uint8 *) &have)[3],
					((uint8 *) &want_tag)[0], ((uint8 *) &want_tag)[1],
					((uint8 *) &want_tag)[2], ((uint8 *) &want_tag)[3]);
}

/* ---------------------------------------------------------------------- */
/* WAL                                                                      */

/*
 * Redo: the epoch becomes known (and durable in the file) before any later
 * record names it, and usable: WAL vouches for it.  WAL is authoritative:
 * an entry the file has with other contents (registered but never logged
 * before a crash, so never used) is replaced.
 */
void
cmk_epoch_redo(const uint8 *rec, Size len)
{
	CmkEpochTable *tab = cmk_epoch_table;
	CmkEpoch	e = {0};
	int			id;
	CmkEpoch   *cur;
	EpochWrite	how = WROTE_NOTHING;
	struct stat st;

	if (len != CMK_EPOCH_RECORD_LEN || tab == NULL)
		elog(PANIC, "cmk_storage redo: invalid nonce epoch record");
	id = cmk_get16(rec);
	memcpy(&e.dek_tag, rec + 4, 4);
	memcpy(e.prefix, rec + 8, CMK_NONCE_PREFIX_LEN);

	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	load_if_dir_appeared(tab);
	cur = &tab->entries[id];
	if (entry_state(tab, id) != ST_FREE && same_content(cur, e.dek_tag, e.prefix))
	{
		/* the file has it already (perhaps pending): usable from now on */
		if (entry_state(tab, id) != ST_TRUSTED)
			make_usable(tab, id, (tab->st[id] & ST_IN_AUTH) != 0);
		(void) authenticate(tab, PANIC);	/* sealed, if the key is here */
		LWLockRelease(tab->lock);
		return;
	}

	/*
	 * A standby without a cmk_storage directory (its control file was not
	 * copied) cannot read encrypted data anyway; creating the directory
	 * would make it look like a cluster with a lost control file.  Keep the
	 * epoch in memory; restoring the directory from the primary brings the
	 * file.
	 */
	if (tab->file == FILE_NONE || stat(CMK_CONTROL_DIR, &st) != 0)
		ereport(WARNING,
				(errmsg("cmk_storage: nonce epoch %d not written to disk: there is no cmk_storage directory", id),
				 errhint("Copy $PGDATA/cmk_storage from the primary.")));
	else if (tab->file != FILE_DAMAGED)
	{
		/* sealed if the key is here and the file checks out, else pending */
		(void) authenticate(tab, PANIC);
		if (tab->file != FILE_DAMAGED)
			how = write_file(tab, id, &e, false, PANIC);
	}
	cur->valid = 0;
	pg_write_barrier();
	cur->dek_tag = e.dek_tag;
	memcpy(cur->prefix, e.prefix, CMK_NONCE_PREFIX_LEN);
	make_usable(tab, id, how == WROTE_SEALED);
	LWLockRelease(tab->lock);
}

void
cmk_epoch_desc(StringInfo buf, const uint8 *rec, Size len)
{
	if (len != CMK_EPOCH_RECORD_LEN)
		appendStringInfoString(buf, "invalid record");
	else
		appendStringInfo(buf, "epoch %u; DEK %02x%02x%02x%02x",
						 (rec[0] << 8) | rec[1], rec[4], rec[5], rec[6], rec[7]);
}

/*
 * Redo installed a control file.  A new DEK's (generation 1) over a key
 * directory whose epochs belong to another DEK, or are damaged: the
 * primary created that DEK with an empty table (a lost key directory
 * replaced by cmk_storage.create_key()), so this server starts one too.
 * Every epoch of the new DEK follows its creation in WAL.
 */
void
cmk_epochs_redo_control(const CmkControl *ctl)
{
	CmkEpochTable *tab = cmk_epoch_table;

	if (tab == NULL)
		return;
	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	if (tab->file == FILE_NONE)
		load_if_dir_appeared(tab);
	else if (ctl->generation == 1 && tab->file != FILE_LEGACY &&
			 (tab->file == FILE_DAMAGED ||
			  memcmp(tab->dek_id, ctl->dek_id, CMK_DEK_ID_LEN) != 0))
	{
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
			tab->entries[i].valid = 0;
		pg_write_barrier();
		memset(tab->st, 0, sizeof(tab->st));
		SpinLockAcquire(&tab->mutex);
		tab->current = -1;
		SpinLockRelease(&tab->mutex);
		if (!cmk_epochs_write_empty(EPOCH_TMP, ctl->system_identifier, ctl->dek_id) ||
			durable_rename(EPOCH_TMP, EPOCH_FILE, PANIC) != 0)
			ereport(PANIC,
					(errcode_for_file_access(),
					 errmsg("could not write \"%s\": %m", EPOCH_FILE)));
		tab->file = FILE_NONE;
		load_file(tab);
		ereport(LOG,
				(errmsg("cmk_storage redo: a new data encryption key; its nonce epoch table starts empty")));
	}
	LWLockRelease(tab->lock);
}

/* ---------------------------------------------------------------------- */
/* SQL                                                                      */

/*
 * Registered epochs, for cmk_storage.status; -1 if the table cannot be used
 * (damaged, format 1, another DEK's).
 */
int
cmk_epochs_used(void)
{
	CmkEpochTable *tab = cmk_epoch_table;
	EpochProblem pr;
	int			n;

	if (tab == NULL)
		return -1;
	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	(void) authenticate(tab, WARNING);
	n = describe_problem(tab, &pr) ? -1 : count_entries(tab, -1);
	LWLockRelease(tab->lock);
	return n;
}

/* What is wrong with the table, for cmk_storage.status; false if nothing. */
bool
cmk_epochs_problem(char *buf, size_t size)
{
	CmkEpochTable *tab = cmk_epoch_table;
	EpochProblem pr;
	bool		problem;

	if (tab == NULL)
		return false;
	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	(void) authenticate(tab, WARNING);
	problem = describe_problem(tab, &pr);
	LWLockRelease(tab->lock);
	if (problem)
		snprintf(buf, size, "%s", pr.why);
	return problem;
}

/*
 * cmk_storage.upgrade_nonce_epochs(): authenticate a format-1 file as it is,
 * under the live key.  Its contents cannot be checked; this is the one
 * place where they are trusted, on the word of whoever calls it, so it is
 * never done automatically (docs/nonce-epochs.md, "Upgrade").
 */
bool
cmk_epochs_upgrade(char *msg, size_t msgsize)
{
	CmkEpochTable *tab = cmk_epoch_table;
	uint8		dek_id[CMK_DEK_ID_LEN];
	char		hex[2 * CMK_DEK_ID_LEN + 1];
	int			n;

	if (tab == NULL)
	{
		snprintf(msg, msgsize, "cmk_storage is not loaded through shared_preload_libraries");
		return false;
	}
	LWLockAcquire(tab->lock, LW_EXCLUSIVE);
	load_if_dir_appeared(tab);
	if (tab->file != FILE_LEGACY)
	{
		if (tab->file == FILE_DAMAGED)
			snprintf(msg, msgsize, "the nonce epoch file is damaged (%s); only a readable file of format 1 is upgraded", tab->why);
		else if (tab->file == FILE_NONE)
			snprintf(msg, msgsize, "there is no cmk_storage directory");
		else
			snprintf(msg, msgsize, "the nonce epoch file is already in format 2");
		LWLockRelease(tab->lock);
		return false;
	}
	if (!live_dek(dek_id))
	{
		snprintf(msg, msgsize, "the data encryption key is not available");
		LWLockRelease(tab->lock);
		return false;
	}

	/* bind, trust, seal; back to format 1 in memory if the write fails */
	tab->sysid = GetSystemIdentifier();
	memcpy(tab->dek_id, dek_id, CMK_DEK_ID_LEN);
	tab->file = FILE_VERIFIED;
	tab->sealed_on_disk = false;
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (entry_state(tab, i) == ST_LEGACY)
			tab->st[i] = ST_TRUSTED;
	if (write_file(tab, -1, NULL, true, WARNING) != WROTE_SEALED)
	{
		for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
			if (tab->st[i] == ST_TRUSTED && !tab->entries[i].valid)
				tab->st[i] = ST_LEGACY;
		tab->file = FILE_LEGACY;
		snprintf(msg, msgsize, "could not write the authenticated nonce epoch file (see the server log)");
		LWLockRelease(tab->lock);
		return false;
	}
	for (int i = 0; i < CMK_NONCE_EPOCHS; i++)
		if (entry_state(tab, i) == ST_TRUSTED)
			make_usable(tab, i, true);
	n = count_entries(tab, -1);
	LWLockRelease(tab->lock);
	cmk_hex(dek_id, CMK_DEK_ID_LEN, hex);
	snprintf(msg, msgsize, "authenticated %d nonce epochs of format 1 under data encryption key %s", n, hex);
	return true;
}
