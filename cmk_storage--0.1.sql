/* cmk_storage--0.1.sql */

\echo Use "CREATE EXTENSION cmk_storage" to load this file. \quit

-- Refuse, with the fix in the hint, unless the library is in
-- shared_preload_libraries: without it no key can ever be loaded.
CREATE FUNCTION require_preload() RETURNS void
AS 'MODULE_PATHNAME', 'cmk_require_preload'
LANGUAGE C STRICT;
SELECT require_preload();
DROP FUNCTION require_preload();

-- Key state: identifiers and reasons only, never key material.
CREATE FUNCTION key_status(
    OUT state text,
    OUT reason text,
    OUT hint text,
    OUT provider text,
    OUT key_uri text,
    OUT kek_id text,
    OUT wrap_algorithm text,
    OUT dek_id text,
    OUT dek_created timestamptz,
    OUT state_since timestamptz,
    OUT memory_locked boolean,
    OUT control_generation integer,
    OUT last_check timestamptz,
    OUT last_ok timestamptz,
    OUT checks_ok bigint,
    OUT checks_failed bigint,
    OUT nonce_epochs integer,
    OUT nonce_epochs_problem text)
RETURNS record
AS 'MODULE_PATHNAME', 'cmk_key_status'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE FUNCTION self_test(OUT test text, OUT passed boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cmk_self_test'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;


-- The encrypting table access method.
CREATE FUNCTION cmk_heap_handler(internal)
RETURNS table_am_handler
AS 'MODULE_PATHNAME', 'cmk_heap_handler'
LANGUAGE C STRICT;

CREATE ACCESS METHOD cmk_heap TYPE TABLE HANDLER cmk_heap_handler;
COMMENT ON ACCESS METHOD cmk_heap IS 'heap storage with tuple contents encrypted under the customer-managed key';

-- Is a relation stored encrypted (cmk_heap, or the TOAST table of one)?
CREATE FUNCTION is_encrypted(rel regclass)
RETURNS boolean
LANGUAGE sql STABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT EXISTS (SELECT 1
                     FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_am a ON a.oid = c.relam
                    WHERE c.oid = rel AND a.amname = 'cmk_heap');
END;

-- Cluster encryption: 'off', 'in progress' (plaintext from before may be
-- left; the sweep is at work) or 'complete' (verified: no relation page and
-- no WAL page under the data directory is plaintext).  docs/io-layer.md.
CREATE FUNCTION cluster_encryption_state()
RETURNS text
AS 'MODULE_PATHNAME', 'cmk_cluster_encryption_state'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE FUNCTION cluster_encryption_progress_raw(
    OUT state text, OUT phase text, OUT pass integer,
    OUT databases_done integer, OUT databases_total integer,
    OUT current_database text, OUT current_relation text,
    OUT relations_done bigint, OUT relations_total bigint,
    OUT blocks_scanned bigint, OUT blocks_total bigint, OUT blocks_rewritten bigint,
    OUT wal_segments_done integer, OUT wal_segments_total integer,
    OUT wal_segments_rewritten integer, OUT plaintext_pages_found bigint,
    OUT started timestamptz, OUT updated timestamptz, OUT completed timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'cmk_cluster_encryption_progress'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW cluster_encryption_progress AS SELECT * FROM cluster_encryption_progress_raw();

-- The check behind 'complete', on demand: every relation file and WAL
-- segment holding plaintext pages (none when complete).  Reads the whole
-- cluster.
CREATE FUNCTION verify_cluster_encryption(
    OUT file text, OUT plaintext_pages bigint, OUT first_page bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cmk_verify_cluster_encryption'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE OR REPLACE VIEW status AS
    SELECT s.*,
           (SELECT count(*)
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_am a ON a.oid = c.relam
             WHERE a.amname = 'cmk_heap' AND c.relkind <> 't') AS encrypted_relations,
           cluster_encryption_state() AS cluster_encryption
      FROM key_status() s;

-- Key administration: re-wrap (rotation), re-validation, the audit trail.
CREATE FUNCTION rotate_key(new_key_uri text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'cmk_rotate_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- A data encryption key for a data directory whose cmk_storage directory is
-- lost, past the evidence that made start-up refuse (docs/operations.md,
-- "Lost key directory").  force => true also ignores encrypted relations,
-- which then stay unreadable.
CREATE FUNCTION create_key(force boolean DEFAULT false)
RETURNS text
AS 'MODULE_PATHNAME', 'cmk_create_key'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

-- Authenticate a nonce-epoch file of format 1, written by a build before the
-- file was authenticated, under the current key (docs/nonce-epochs.md,
-- "Upgrade").  Its contents are taken on the caller's word: never automatic.
CREATE FUNCTION upgrade_nonce_epochs()
RETURNS text
AS 'MODULE_PATHNAME', 'cmk_upgrade_nonce_epochs'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION check_key(OUT available boolean, OUT message text)
RETURNS record
AS 'MODULE_PATHNAME', 'cmk_check_key'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION key_events_raw(
    OUT seq bigint, OUT at timestamptz, OUT event text, OUT outcome text,
    OUT actor text, OUT kid text, OUT detail text, OUT pid integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cmk_key_events'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW key_events AS SELECT * FROM key_events_raw();

-- Keep every cmk_heap relation of the database out of logical decoding
-- (done automatically for relations created with the library loaded).
CREATE FUNCTION mark_for_decoding()
RETURNS integer
AS 'MODULE_PATHNAME', 'cmk_mark_for_decoding'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION mark_for_decoding() FROM PUBLIC;

-- Corruption check of a cmk_heap relation: what amcheck's verify_heapam()
-- checks for heap (which refuses cmk_heap), plus trailers, nonce epochs,
-- decryption and encrypted TOAST chunks.  One row per problem.  Like
-- verify_heapam, for superusers and whoever they GRANT EXECUTE to.
CREATE FUNCTION verify_relation(relation regclass,
                                on_error_stop boolean DEFAULT false,
                                check_toast boolean DEFAULT true,
                                skip text DEFAULT 'none',
                                startblock bigint DEFAULT NULL,
                                endblock bigint DEFAULT NULL,
                                blkno OUT bigint,
                                offnum OUT integer,
                                attnum OUT integer,
                                msg OUT text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cmk_verify_relation'
LANGUAGE C;
REVOKE ALL ON FUNCTION verify_relation(regclass, boolean, boolean, text, bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION verify_relation(regclass, boolean, boolean, text, bigint, bigint) IS
    'check a cmk_heap table for corruption, as amcheck''s verify_heapam does for heap: one row per problem (attnum is pg_attribute.attnum)';

-- Separation of duties: key management belongs to cmk_key_admin, not to
-- every DBA.  Anyone may create and use cmk_heap tables.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'cmk_key_admin') THEN
        CREATE ROLE cmk_key_admin NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA cmk_storage TO PUBLIC;
REVOKE ALL ON FUNCTION key_status(), rotate_key(text), check_key(), key_events_raw(), self_test(), create_key(boolean), upgrade_nonce_epochs() FROM PUBLIC;
REVOKE ALL ON status, key_events FROM PUBLIC;
GRANT EXECUTE ON FUNCTION key_status(), rotate_key(text), check_key(), key_events_raw(), self_test(), create_key(boolean), upgrade_nonce_epochs() TO cmk_key_admin;
GRANT SELECT ON status, key_events TO cmk_key_admin;

-- Cluster encryption: the sweep's state, progress and check (docs/io-layer.md).
REVOKE ALL ON FUNCTION cluster_encryption_state(), cluster_encryption_progress_raw(), verify_cluster_encryption() FROM PUBLIC;
REVOKE ALL ON cluster_encryption_progress FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cluster_encryption_state(), cluster_encryption_progress_raw(), verify_cluster_encryption() TO cmk_key_admin;
GRANT SELECT ON cluster_encryption_progress TO cmk_key_admin;

-- Every node's key state in a Citus cluster (docs/citus.md): the
-- cmk_storage.status of each active node, read as the calling role through
-- Citus's run_command_on_all_nodes, with the node's name and port.  Without
-- Citus, one row for this server.  A node whose status cannot be read (the
-- library not preloaded there, no cmk_key_admin membership, unreachable)
-- appears with the state 'error' and the node's error message as reason.
-- The calling role needs cmk_key_admin on every node (Citus propagates the
-- role and its membership when both are granted on the coordinator).
CREATE FUNCTION cluster_key_status(
    OUT nodeid integer,
    OUT nodename text,
    OUT nodeport integer,
    OUT state text,
    OUT reason text,
    OUT kek_id text,
    OUT dek_id text,
    OUT cluster_encryption boolean)
RETURNS SETOF record
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    local_status constant text :=
        $q$SELECT json_build_object('state', state, 'reason', reason, 'kek_id', kek_id,
                                    'dek_id', dek_id, 'cluster_encryption',
                                    current_setting('cmk_storage.cluster_encryption', true)::boolean)
             FROM cmk_storage.status$q$;
    r record;
    j json;
BEGIN
    IF to_regprocedure('pg_catalog.run_command_on_all_nodes(text,boolean,boolean)') IS NULL THEN
        EXECUTE local_status INTO j;
        RETURN QUERY SELECT NULL::integer, NULL::text, NULL::integer, j->>'state', j->>'reason',
                            j->>'kek_id', j->>'dek_id', (j->>'cluster_encryption')::boolean;
        RETURN;
    END IF;
    -- Late bound: Citus may be installed after cmk_storage.
    FOR r IN EXECUTE
        'SELECT c.nodeid, n.nodename, n.nodeport, c.success, c.result
           FROM pg_catalog.run_command_on_all_nodes($1) c
           LEFT JOIN pg_catalog.pg_dist_node n ON n.nodeid = c.nodeid
          ORDER BY c.nodeid' USING local_status
    LOOP
        nodeid := r.nodeid;
        nodename := r.nodename;
        nodeport := r.nodeport;
        IF r.success THEN
            j := r.result::json;
            state := j->>'state';
            reason := j->>'reason';
            kek_id := j->>'kek_id';
            dek_id := j->>'dek_id';
            cluster_encryption := (j->>'cluster_encryption')::boolean;
        ELSE
            state := 'error';
            reason := r.result;
            kek_id := NULL;
            dek_id := NULL;
            cluster_encryption := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION cluster_key_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cluster_key_status() TO cmk_key_admin;
