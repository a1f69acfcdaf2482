/*-------------------------------------------------------------------------
 *
 * cmkam_logical.c
 *		Publication DDL for cmk_heap tables: remove the decoding marks that
 *		releases before logical decoding support set.
 *
 * cmk_heap tables are decoded like heap tables (cmkam_decode.c decrypts
 * their changes inside the server) and may be published.  Older releases
 * kept them out of logical decoding by setting pg_class.relrewrite to the
 * relation's own OID, which makes the reorder buffer skip every change of
 * the relation silently.  A database restored or upgraded from such a
 * release may still carry those marks, so every CREATE/ALTER PUBLICATION
 * clears them (transient rewrite heaps, whose relrewrite names another
 * relation, are left alone), and mark_for_decoding() clears them on demand
 * for slots that decode without a publication (test_decoding).
 *
 * This file must never set relrewrite, and never touch a pg_class row that
 * is not such a mark.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/rel.h"

#include "am/cmkam.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Publication statements: the moment a legacy mark would start to matter. */
static bool
is_publication_stmt(Node *stmt)
{
	return IsA(stmt, CreatePublicationStmt) || IsA(stmt, AlterPublicationStmt);
}

/*
 * Clear relrewrite where it holds the relation's own OID: the mark older
 * releases set on cmk_heap relations (their own rewrites never set it so).
 * Returns the number of relations changed.
 */
static int
clear_legacy_marks(void)
{
	Relation	pg_class;
	SysScanDesc scan;
	HeapTuple	tup;
	int			changed = 0;

	CommandCounterIncrement();
	pg_class = table_open(RelationRelationId, RowExclusiveLock);
	scan = systable_beginscan(pg_class, InvalidOid, false, NULL, 0, NULL);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		Form_pg_class c = (Form_pg_class) GETSTRUCT(tup);
		HeapTuple	copy;

		if (!OidIsValid(c->relrewrite) || c->relrewrite != c->oid)
			continue;
		copy = heap_copytuple(tup);
		((Form_pg_class) GETSTRUCT(copy))->relrewrite = InvalidOid;
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
 * SQL mark_for_decoding(): make every relation of the database decodable,
 * i.e. clear the legacy marks.  Returns the number of relations changed.
 */
PG_FUNCTION_INFO_V1(cmk_mark_for_decoding);

Datum
cmk_mark_for_decoding(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(clear_legacy_marks());
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

	if (is_publication_stmt(pstmt->utilityStmt))
		(void) clear_legacy_marks();
}

void
cmk_publication_guard_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = cmk_ProcessUtility;
}
