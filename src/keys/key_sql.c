/*-------------------------------------------------------------------------
 *
 * key_sql.c
 *		SQL functions that show the key's state and run the self-tests.
 *
 * They return identifiers, states and reasons, never key bytes: the key
 * store does not even hand key bytes to this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/key_audit.h"
#include "keys/key_store.h"
#include "keys/nonce_epochs.h"

PG_FUNCTION_INFO_V1(cmk_key_status);
PG_FUNCTION_INFO_V1(cmk_self_test);
PG_FUNCTION_INFO_V1(cmk_rotate_key);
PG_FUNCTION_INFO_V1(cmk_check_key);
PG_FUNCTION_INFO_V1(cmk_create_key);
PG_FUNCTION_INFO_V1(cmk_upgrade_nonce_epochs);

#define REQUEST_TIMEOUT_MS	120000

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL || s[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

Datum
cmk_key_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	CmkKeyStatus st;
	Datum		values[18];
	bool		nulls[18];
	char		hex[2 * CMK_DEK_ID_LEN + 1];
	char		problem[256];
	int			nepochs;
	int			i = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	cmk_key_store_status(&st);
	memset(nulls, 0, sizeof(nulls));

	values[i] = CStringGetTextDatum(cmk_key_state_name(st.state));
	i++;
	values[i] = text_or_null(st.reason, &nulls[i]);
	i++;
	values[i] = text_or_null(st.hint, &nulls[i]);
	i++;
	values[i] = text_or_null(st.provider, &nulls[i]);
	i++;
	values[i] = text_or_null(st.key_uri, &nulls[i]);
	i++;
	values[i] = text_or_null(st.have_control ? st.kid : NULL, &nulls[i]);
	i++;
	values[i] = text_or_null(st.have_control ? cmk_wrap_alg_name(st.wrap_alg) : NULL, &nulls[i]);
	i++;
	cmk_hex(st.dek_id, CMK_DEK_ID_LEN, hex);
	values[i] = text_or_null(st.have_control ? hex : NULL, &nulls[i]);
	i++;
	nulls[i] = !st.have_control;
	values[i] = TimestampTzGetDatum(time_t_to_timestamptz((pg_time_t) st.created_at));
	i++;
	values[i] = TimestampTzGetDatum(st.state_since);
	i++;
	values[i] = BoolGetDatum(st.memory_locked);
	i++;
	nulls[i] = !st.have_control;
	values[i] = Int32GetDatum((int32) st.control_generation);
	i++;
	nulls[i] = st.last_check_at == 0;
	values[i] = TimestampTzGetDatum(st.last_check_at);
	i++;
	nulls[i] = st.last_ok_at == 0;
	values[i] = TimestampTzGetDatum(st.last_ok_at);
	i++;
	values[i] = Int64GetDatum((int64) st.checks_ok);
	i++;
	values[i] = Int64GetDatum((int64) st.checks_failed);
	i++;
	/* tuple nonce epochs registered so far, of 65,536; NULL if unusable */
	nepochs = cmk_epochs_used();
	nulls[i] = nepochs < 0;
	values[i] = Int32GetDatum(nepochs);
	i++;
	/* and why they are unusable (damaged, another cluster's, format 1) */
	nulls[i] = !cmk_epochs_problem(problem, sizeof(problem));
	values[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(problem);
	i++;
	Assert(i == lengthof(values));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

typedef struct SelfTestRows
{
	ReturnSetInfo *rsinfo;
} SelfTestRows;

static void
add_selftest_row(void *arg, const char *name, bool ok)
{
	SelfTestRows *rows = (SelfTestRows *) arg;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	values[0] = CStringGetTextDatum(name);
	values[1] = BoolGetDatum(ok);
	tuplestore_putvalues(rows->rsinfo->setResult, rows->rsinfo->setDesc, values, nulls);
}

Datum
cmk_self_test(PG_FUNCTION_ARGS)
{
	SelfTestRows rows;

	InitMaterializedSRF(fcinfo, 0);
	rows.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	(void) cmk_crypto_selftest(add_selftest_row, &rows);
	return (Datum) 0;
}

static char *
current_actor(void)
{
	return GetUserNameFromId(GetUserId(), false);
}

/*
 * Re-wrap the DEK with the KEK named by new_key_uri (default: the current
 * cmk_storage.key_uri), without a restart and without touching data.  The
 * key worker does the work; we wait for its answer.
 */
Datum
cmk_rotate_key(PG_FUNCTION_ARGS)
{
	char	   *uri = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		msg[CMK_ERR_MSG];

	if (uri && strlen(uri) > CMK_CONTROL_TEXT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key URI is longer than %d bytes", CMK_CONTROL_TEXT_MAX)));
	if (!cmk_key_request(CMK_REQ_ROTATE, uri, current_actor(), REQUEST_TIMEOUT_MS,
						 msg, sizeof(msg)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not re-wrap the data encryption key: %s", msg),
				 errhint("See cmk_storage.key_events for the key worker's account.")));
	PG_RETURN_TEXT_P(cstring_to_text(msg));
}

/* Re-validate the KEK now; returns whether the key is available and why. */
Datum
cmk_check_key(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	char		msg[CMK_ERR_MSG];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	bool		ok;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	ok = cmk_key_request(CMK_REQ_CHECK, NULL, current_actor(), REQUEST_TIMEOUT_MS,
						 msg, sizeof(msg));
	values[0] = BoolGetDatum(ok);
	values[1] = CStringGetTextDatum(msg);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * Create a DEK for a data directory that has lost (or never had) its
 * cmk_storage directory, which start-up refuses to do when it finds evidence
 * of encrypted data.  Without force, the key worker still refuses while any
 * database holds a cmk_heap relation; with force it creates the key anyway
 * and data encrypted under the lost key stays unreadable
 * (docs/operations.md, "Lost key directory").
 */
Datum
cmk_create_key(PG_FUNCTION_ARGS)
{
	bool		force = PG_GETARG_BOOL(0);
	char		msg[CMK_ERR_MSG];

	/* the key worker waits for a key URI before it serves requests */
	if (cmk_key_uri == NULL || cmk_key_uri[0] == '\0')
		cmk_report_key_unavailable(NULL);
	if (!cmk_key_request(force ? CMK_REQ_CREATE_FORCE : CMK_REQ_CREATE, NULL,
						 current_actor(), REQUEST_TIMEOUT_MS, msg, sizeof(msg)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not create a data encryption key: %s", msg),
				 errhint("See cmk_storage.status and cmk_storage.key_events, and \"Lost key directory\" in docs/operations.md.")));
	PG_RETURN_TEXT_P(cstring_to_text(msg));
}

/*
 * Authenticate a nonce-epoch file of format 1 (written by a build before
 * the file was authenticated) under the live key, on the caller's word that
 * it is this cluster's own: its contents cannot be checked, so start-up
 * never does this by itself (docs/nonce-epochs.md, "Upgrade").
 */
Datum
cmk_upgrade_nonce_epochs(PG_FUNCTION_ARGS)
{
	char		msg[CMK_ERR_MSG];
	char	   *actor = current_actor();

	if (!cmk_epochs_upgrade(msg, sizeof(msg)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not upgrade the nonce epoch file: %s", msg),
				 errhint("See \"Upgrade\" in docs/nonce-epochs.md.")));
	cmk_audit("upgrade", "success", actor, NULL, "%s", msg);
	PG_RETURN_TEXT_P(cstring_to_text(msg));
}
