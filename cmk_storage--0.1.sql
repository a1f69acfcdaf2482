/* cmk_storage--0.1.sql */

\echo Use "CREATE EXTENSION cmk_storage" to load this file. \quit

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
    OUT memory_locked boolean)
RETURNS record
AS 'MODULE_PATHNAME', 'cmk_key_status'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE FUNCTION self_test(OUT test text, OUT passed boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cmk_self_test'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW status AS
    SELECT s.*
      FROM key_status() s;

REVOKE ALL ON FUNCTION key_status() FROM PUBLIC;
REVOKE ALL ON status FROM PUBLIC;

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

CREATE OR REPLACE VIEW status AS
    SELECT s.*,
           (SELECT count(*)
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_am a ON a.oid = c.relam
             WHERE a.amname = 'cmk_heap' AND c.relkind <> 't') AS encrypted_relations
      FROM key_status() s;
