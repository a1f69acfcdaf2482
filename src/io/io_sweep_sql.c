/*-------------------------------------------------------------------------
 *
 * io_sweep_sql.c
 *		SQL functions of the cluster encryption sweep: the state shown in
 *		cmk_storage.status, the progress view, and the on-demand check.
 *
 * Counters, phases, database and relation names and file paths only;
 * never data or key material.  Privileges are granted in the extension
 * script (cmk_key_admin).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "io/io_layer.h"
#include "io/io_sweep.h"

PG_FUNCTION_INFO_V1(cmk_cluster_encryption_state);
PG_FUNCTION_INFO_V1(cmk_cluster_encryption_progress);
PG_FUNCTION_INFO_V1(cmk_verify_cluster_encryption);

static const char *const phase_names[] = {
	[CMK_SWEEP_IDLE] = "starting",
	[CMK_SWEEP_VERIFYING] = "verifying",
	[CMK_SWEEP_RELATIONS] = "rewriting relations",
	[CMK_SWEEP_CHECKPOINT] = "waiting for checkpoint",
	[CMK_SWEEP_WAL] = "re-encrypting WAL",
	[CMK_SWEEP_WAITING] = "waiting to retry",
	[CMK_SWEEP_STANDBY] = "standby: verifying only",
	[CMK_SWEEP_COMPLETE] = "complete",
};

/* 'off', 'in progress' or 'complete' */
static const char *
state_name(void)
{
	bool		complete;

	if (!cmk_io_active() || cmk_sweep == NULL)
		return "off";
	SpinLockAcquire(&cmk_sweep->mutex);
	complete = cmk_sweep->complete;
	SpinLockRelease(&cmk_sweep->mutex);
	return complete ? "complete" : "in progress";
}

Datum
cmk_cluster_encryption_state(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(state_name()));
}

#define PROGRESS_COLS 19

Datum
cmk_cluster_encryption_progress(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[PROGRESS_COLS];
	bool		nulls[PROGRESS_COLS];
	CmkSweepState s;
	char	   *dbname = NULL;
	int			i = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));
	memset(&s, 0, sizeof(s));
	if (cmk_io_active() && cmk_sweep != NULL)
	{
		SpinLockAcquire(&cmk_sweep->mutex);
		memcpy(&s, cmk_sweep, sizeof(s));
		SpinLockRelease(&cmk_sweep->mutex);
		if (OidIsValid(s.db))
			dbname = get_database_name(s.db);
	}

	values[i++] = CStringGetTextDatum(state_name());
	if (!cmk_io_active())
		nulls[i] = true;
	values[i++] = CStringGetTextDatum(phase_names[s.phase]);
	values[i++] = Int32GetDatum(s.pass);
	values[i++] = Int32GetDatum(s.dbs_done);
	values[i++] = Int32GetDatum(s.dbs_total);
	if (dbname == NULL)
		nulls[i] = true;
	values[i++] = CStringGetTextDatum(dbname ? dbname : "");
	if (s.relname[0] == '\0')
		nulls[i] = true;
	values[i++] = CStringGetTextDatum(s.relname);
	values[i++] = Int64GetDatum(s.rels_done);
	values[i++] = Int64GetDatum(s.rels_total);
	values[i++] = Int64GetDatum(s.blocks_scanned);
	values[i++] = Int64GetDatum(s.blocks_total);
	values[i++] = Int64GetDatum(s.blocks_rewritten);
	values[i++] = Int32GetDatum(s.wal_done);
	values[i++] = Int32GetDatum(s.wal_total);
	values[i++] = Int32GetDatum(s.wal_rewritten);
	values[i++] = Int64GetDatum(s.plaintext_pages);
	nulls[i] = s.started == 0;
	values[i++] = TimestampTzGetDatum(s.started);
	nulls[i] = s.updated == 0;
	values[i++] = TimestampTzGetDatum(s.updated);
	nulls[i] = s.completed == 0;
	values[i++] = TimestampTzGetDatum(s.completed);
	Assert(i == PROGRESS_COLS);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

static void
add_row(const char *path, int64 pages, int64 first, void *arg)
{
	ReturnSetInfo *rsinfo = arg;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	values[0] = CStringGetTextDatum(path);
	values[1] = Int64GetDatum(pages);
	values[2] = Int64GetDatum(first);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * One row per relation file or WAL segment under the data directory that
 * holds plaintext pages: none when cluster encryption is complete.  Reads
 * the whole cluster, unthrottled.
 */
Datum
cmk_verify_cluster_encryption(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	if (!cmk_io_active())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cmk_storage: cluster encryption is off"),
				 errhint("Set cmk_storage.cluster_encryption = on and restart the server.")));
	InitMaterializedSRF(fcinfo, 0);
	(void) cmk_verify_cluster(false, add_row, rsinfo);
	return (Datum) 0;
}
