/*-------------------------------------------------------------------------
 *
 * io_classify.c
 *		Decide from a path what a file holds: a relation segment (and whose),
 *		a WAL segment, or anything else.
 *
 * Recognised, relative to the data directory (or under it, absolute):
 *
 *	 global/<node>[_<fork>][.<seg>]						shared relations, db 0
 *	 base/<db>/[t<backend>_]<node>[_<fork>][.<seg>]
 *	 pg_tblspc/<ts>/PG_15_<catversion>/<db>/[t<backend>_]<node>[_<fork>][.<seg>]
 *	 pg_wal/<24 hex digits>[.partial], pg_wal/xlogtemp.<pid>, pg_wal/RECOVERYXLOG
 *
 * <fork> is fsm, vm or init.  Everything else (pg_filenode.map,
 * PG_VERSION, pg_control, history files, temporary files, SLRUs, ...) is
 * CMK_FILE_OTHER and passes through untouched.  The identity leaves the
 * tablespace out on purpose: a relation keeps its tweak when its database
 * moves to another tablespace by a raw copy (docs/io-layer.md).
 *
 * Runs inside open(): pure string parsing, no allocation, no I/O, no
 * elog.  Never guess: a name that does not match exactly is OTHER.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>

#include "catalog/catalog.h"
#include "common/relpath.h"

#include "io/io_int.h"

static char datadir_prefix[MAXPGPATH];
static size_t datadir_prefix_len = 0;
static bool classify_pages = true;	/* relation and WAL kinds */
static CmkTmpClassifier tmpfile_classifier = NULL;

/* Start-up: off when only temporary files are encrypted (no DEK). */
void
cmk_classify_set_pages(bool on)
{
	classify_pages = on;
}

/*
 * Start-up: the temporary-file kinds (io_tmpfile.c), when they are on.  A
 * pointer rather than a call, so that builds without that file kind (the
 * offline tools' preload library) link this classifier alone.
 */
void
cmk_classify_set_tmpfiles(CmkTmpClassifier classifier)
{
	tmpfile_classifier = classifier;
}

/* Start-up: absolute paths under this directory are classified too. */
void
cmk_classify_set_datadir(const char *datadir)
{
	if (datadir == NULL || datadir[0] != '/' ||
		strlen(datadir) + 2 > sizeof(datadir_prefix))
		return;
	snprintf(datadir_prefix, sizeof(datadir_prefix), "%s/", datadir);
	datadir_prefix_len = strlen(datadir_prefix);
}

/* A decimal number of 1 to 10 digits that fits in 32 bits; advances *p. */
static bool
parse_u32(const char **p, uint32 *out)
{
	uint64		v = 0;
	int			n = 0;

	while (**p >= '0' && **p <= '9')
	{
		if (++n > 10)
			return false;
		v = v * 10 + (uint64) (**p - '0');
		(*p)++;
	}
	if (n == 0 || v > PG_UINT32_MAX)
		return false;
	*out = (uint32) v;
	return true;
}

static bool
match(const char **p, const char *lit)
{
	size_t		n = strlen(lit);

	if (strncmp(*p, lit, n) != 0)
		return false;
	*p += n;
	return true;
}

/* [t<backend>_]<node>[_<fork>][.<seg>] and nothing after it */
static bool
parse_relfile(const char *p, CmkFileId *id)
{
	uint32		backend;

	id->temp = 0;
	if (*p == 't')
	{
		p++;
		if (!parse_u32(&p, &backend) || !match(&p, "_"))
			return false;
		id->temp = 1;
	}
	if (!parse_u32(&p, &id->relnode))
		return false;
	id->fork = MAIN_FORKNUM;
	if (*p == '_')
	{
		p++;
		if (match(&p, "fsm"))
			id->fork = FSM_FORKNUM;
		else if (match(&p, "vm"))
			id->fork = VISIBILITYMAP_FORKNUM;
		else if (match(&p, "init"))
			id->fork = INIT_FORKNUM;
		else
			return false;
	}
	id->segno = 0;
	if (*p == '.')
	{
		p++;
		if (!parse_u32(&p, &id->segno) || id->segno == 0)
			return false;
	}
	return *p == '\0';
}

static bool
is_wal_name(const char *p)
{
	for (int i = 0; i < 24; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'F')))
			return false;
	return p[24] == '\0' || strcmp(p + 24, ".partial") == 0;
}

void
cmk_classify(const char *path, int flags, CmkFileId *id)
{
	const char *p = path;

	memset(id, 0, sizeof(*id));
	if (path == NULL)
		return;
	if (p[0] == '/')
	{
		if (datadir_prefix_len == 0 ||
			strncmp(p, datadir_prefix, datadir_prefix_len) != 0)
			return;
		p += datadir_prefix_len;
	}
	/* Tolerate "./" prefixes; nothing else relative. */
	while (p[0] == '.' && p[1] == '/')
		p += 2;

	if (tmpfile_classifier != NULL && tmpfile_classifier(p, id))
		p = "";					/* temp, spill, pg_notify: io_tmpfile.c */
	else if (!classify_pages)
		p = "";
	else if (match(&p, "global/"))
	{
		if (parse_relfile(p, id) && id->temp == 0)
			id->kind = CMK_FILE_RELATION;
	}
	else if (match(&p, "base/"))
	{
		if (parse_u32(&p, &id->db) && match(&p, "/") && parse_relfile(p, id))
			id->kind = CMK_FILE_RELATION;
	}
	else if (match(&p, "pg_tblspc/"))
	{
		uint32		ts;

		if (parse_u32(&p, &ts) && match(&p, "/") &&
			match(&p, TABLESPACE_VERSION_DIRECTORY) && match(&p, "/") &&
			parse_u32(&p, &id->db) && match(&p, "/") && parse_relfile(p, id))
			id->kind = CMK_FILE_RELATION;
	}
	else if (match(&p, "pg_wal/"))
	{
		if (is_wal_name(p) || strcmp(p, "RECOVERYXLOG") == 0)
			id->kind = CMK_FILE_WAL;
		else if (match(&p, "xlogtemp."))
		{
			uint32		pid;

			if (parse_u32(&p, &pid) && *p == '\0')
				id->kind = CMK_FILE_WAL;
		}
	}

	if (id->kind == CMK_FILE_OTHER)
		memset(id, 0, sizeof(*id));
	else
		id->append = (flags & O_APPEND) != 0;
}
