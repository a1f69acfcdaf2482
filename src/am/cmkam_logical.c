/*-------------------------------------------------------------------------
 *
 * cmkam_logical.c
 *		Keep cmk_heap tables out of logical replication and logical
 *		decoding.
 *
 * Logical decoding reads tuples from WAL, where cmk_heap tuples are
 * ciphertext, and output plugins run type output functions (and pgoutput
 * row filters) on them: a subscriber would get garbage, and some output
 * functions fed garbage can fail badly.  Until a decrypting path exists:
 *
 * 1. Every statement that can put a cmk_heap table into a publication
 *    (CREATE/ALTER PUBLICATION, CREATE TABLE into a published schema or
 *    partition tree or while a FOR ALL TABLES publication exists, ALTER
 *    TABLE SET ACCESS METHOD / ATTACH PARTITION / SET SCHEMA) is checked
 *    after it ran and rolled back with an error if it did.
 *
 * 2. Decoding itself skips cmk_heap relations, for every output plugin.
 *    The reorder buffer skips changes of relations whose pg_class.relrewrite
 *    is set (it marks the transient heaps of table rewrites); that field is
 *    read nowhere else, so after every statement that can create a cmk_heap
 *    relation we set it to the relation's own OID (and clear it again when a
 *    table leaves cmk_heap).  Rows a statement inserts into a relation it
 *    created before the mark exists (CREATE TABLE AS) are written without
 *    logical tuple data (cmkam_write.c).  Only test_decoding's
 *    include-rewrites option would show them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "catalog/pg_publication.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "am/cmkam.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Statements after which a cmk_heap table may have become published. */
static bool
may_publish(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_CreatePublicationStmt:
		case T_AlterPublicationStmt:
		case T_CreateStmt:
		case T_CreateTableAsStmt:
		case T_AlterTableStmt:
		case T_AlterObjectSchemaStmt:
			return true;
		default:
			return false;
	}
}

static bool
any_publication_exists(void)
{
	Relation	rel = table_open(PublicationRelationId, AccessShareLock);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	bool		found = HeapTupleIsValid(systable_getnext(scan));

	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/* Every permanent cmk_heap leaf relation some publication includes. */
static const char *const published_cmk_query =
"WITH direct AS ("
"  SELECT p.pubname, pr.prrelid AS relid"
"    FROM pg_catalog.pg_publication p"
"    JOIN pg_catalog.pg_publication_rel pr ON pr.prpubid = p.oid"
"  UNION ALL"
"  SELECT p.pubname, c.oid"
"    FROM pg_catalog.pg_publication p"
"    JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid"
"    JOIN pg_catalog.pg_class c ON c.relnamespace = pn.pnnspid AND c.relkind IN ('r', 'p')"
"  UNION ALL"
"  SELECT p.pubname, c.oid"
"    FROM pg_catalog.pg_publication p"
"    JOIN pg_catalog.pg_class c ON p.puballtables AND c.relkind IN ('r', 'p')"
") "
"SELECT d.pubname::text, c.oid::pg_catalog.regclass::text"
"  FROM direct d,"
"       LATERAL (SELECT d.relid UNION"
"                SELECT relid FROM pg_catalog.pg_partition_tree(d.relid)) t"
"  JOIN pg_catalog.pg_class c ON c.oid = t.relid"
"  JOIN pg_catalog.pg_am a ON a.oid = c.relam"
" WHERE a.amname = 'cmk_heap' AND c.relpersistence = 'p'"
" ORDER BY d.pubname, c.oid"	/* deterministic: the oldest such table */
" LIMIT 1";

static void
check_no_published_cmk_tables(void)
{
	int			rc;

	/* See the catalog rows the statement just wrote. */
	CommandCounterIncrement();
	if (!OidIsValid(get_table_am_oid("cmk_heap", true)) || !any_publication_exists())
		return;

	SPI_connect();
	rc = SPI_execute(published_cmk_query, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		char	   *pub = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char	   *rel = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("encrypted table \"%s\" cannot be part of publication \"%s\"",
						rel, pub),
				 errdetail("Logical replication would decode the cmk_heap table's encrypted tuples without decrypting them."),
				 errhint("Publish only tables stored with the heap access method, or leave the cmk_heap table out of the publication.")));
	}
	SPI_finish();
}

/* Statements after which a cmk_heap relation may exist that is unmarked. */
static bool
may_create(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_CreateStmt:
		case T_CreateTableAsStmt:
		case T_AlterTableStmt:
			return true;
		default:
			return false;
	}
}

/*
 * Mark every permanent cmk_heap relation (and its TOAST table) with
 * relrewrite = its own OID so the reorder buffer skips it, and unmark
 * relations that left cmk_heap.  Transient rewrite heaps (relrewrite = some
 * other OID) are left alone.  Only rows of this transaction that need a
 * change are updated.
 */
static int
mark_for_decoding(bool all_transactions)
{
	Oid			cmk_am = get_table_am_oid("cmk_heap", true);
	Relation	pg_class;
	SysScanDesc scan;
	HeapTuple	tup;
	int			changed = 0;

	if (!OidIsValid(cmk_am))
		return 0;
	CommandCounterIncrement();
	pg_class = table_open(RelationRelationId, RowExclusiveLock);
	scan = systable_beginscan(pg_class, InvalidOid, false, NULL, 0, NULL);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		Form_pg_class c = (Form_pg_class) GETSTRUCT(tup);
		bool		is_cmk = c->relam == cmk_am &&
			c->relpersistence == RELPERSISTENCE_PERMANENT &&
			(c->relkind == RELKIND_RELATION || c->relkind == RELKIND_MATVIEW ||
			 c->relkind == RELKIND_TOASTVALUE);
		Oid			want;
		HeapTuple	copy;

		/*
		 * Only rows this transaction wrote (the relations the statement
		 * created or changed): touching other sessions' rows would make
		 * concurrent DDL fail with "tuple concurrently updated".
		 */
		if (!all_transactions &&
			!TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data)))
			continue;
		if (is_cmk && !OidIsValid(c->relrewrite))
			want = c->oid;
		else if (!is_cmk && OidIsValid(c->relrewrite) && c->relrewrite == c->oid)
			want = InvalidOid;
		else
			continue;
		copy = heap_copytuple(tup);
		((Form_pg_class) GETSTRUCT(copy))->relrewrite = want;
		CatalogTupleUpdate(pg_class, &copy->t_self, copy);
		heap_freetuple(copy);
		changed++;
	}
	systable_endscan(scan);
	table_close(pg_class, RowExclusiveLock);
	CommandCounterIncrement();
	return changed;
}

/*
 * SQL: mark every relation of the database, whoever created it (relations
 * created while cmk_storage was not loaded, e.g. by a restore into a server
 * without it in shared_preload_libraries, were never marked).  Returns the
 * number of relations changed.
 */
PG_FUNCTION_INFO_V1(cmk_mark_for_decoding);

Datum
cmk_mark_for_decoding(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(mark_for_decoding(true));
}

static void
cmk_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (may_create(pstmt->utilityStmt))
		(void) mark_for_decoding(false);
	if (may_publish(pstmt->utilityStmt))
		check_no_published_cmk_tables();
}

void
cmk_publication_guard_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = cmk_ProcessUtility;
}
