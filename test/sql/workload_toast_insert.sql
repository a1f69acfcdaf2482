-- Shared workload, run once with heap and once with cmk_heap (psql variable
-- :am); scripts/test.sh requires both outputs to be identical.
--
-- Issue 21: rows whose leading columns are fixed-width without padding (one
-- keystream range, not walked attribute by attribute) and whose later
-- columns hold TOAST pointers, through COPY (multi-insert) and INSERT
-- (single-row), with and without NULLs.  Encryption once read the spans of
-- the unwalked prefix uninitialised and wrote a varlena header at a garbage
-- offset: a crash, or silently damaged leading columns.  Every row must come
-- back exactly as loaded.
SET default_table_access_method = :'am';
\set schema wl_toast_ :am
CREATE SCHEMA :schema;
SET search_path = :schema, public;
\getenv abs_builddir PG_ABS_BUILDDIR
\set copyfile :abs_builddir '/results/toast_insert_' :am '.data'

-- The source rows: ~3.2 kB of md5 text per row (hex: pglz cannot shrink it
-- below the TOAST threshold, so it is stored out of line); NULLs in some rows.
CREATE TABLE src AS
  SELECT g::bigint AS id, g % 7 AS a, g AS b,
         (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 100) i) AS payload
    FROM generate_series(1, 2000) g;
CREATE TABLE src_nulls AS
  SELECT id, CASE WHEN id % 5 = 0 THEN NULL ELSE a END AS a, b,
         CASE WHEN id % 11 = 0 THEN NULL ELSE payload END AS payload
    FROM src;

-- The reported shape, loaded with COPY, as pg_restore does.
COPY src TO :'copyfile';
CREATE TABLE repro (id bigint, a int, b int, payload text);
COPY repro FROM :'copyfile';
SELECT count(*) AS rows, count(*) FILTER (WHERE r IS DISTINCT FROM s) AS differing
  FROM repro r FULL JOIN src s USING (id);
SELECT count(*) AS external_values
  FROM repro WHERE pg_column_compression(payload) IS NULL
               AND octet_length(payload) = 3200;

-- The same with NULLs (no single keystream range then), COPY and INSERT.
COPY src_nulls TO :'copyfile';
CREATE TABLE repro_nulls (id bigint, a int, b int, payload text);
COPY repro_nulls FROM :'copyfile';
INSERT INTO repro_nulls SELECT id + 10000, a, b, payload FROM src_nulls;
SELECT count(*) AS rows,
       count(*) FILTER (WHERE (r.a, r.b, r.payload) IS DISTINCT FROM (s.a, s.b, s.payload)) AS differing
  FROM repro_nulls r JOIN src_nulls s ON s.id = r.id OR s.id + 10000 = r.id;

-- Several leading fixed-width layouts, out-of-line values forced
-- (STORAGE EXTERNAL), single-row INSERT and COPY, two TOASTed columns.
CREATE TABLE l1 (x int, y int, t text);
CREATE TABLE l2 (x smallint, y smallint, z int, w bigint, t text, u text);
CREATE TABLE l3 (x bigint, y bigint, z bigint, t text);
CREATE TABLE l4 (x int, t text, y int, u text);
CREATE TABLE l5 (x smallint, y bigint, t text);		-- padding after x
CREATE TABLE l6 (x "char", y "char", z smallint, w int, t text);
ALTER TABLE l1 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l2 ALTER t SET STORAGE EXTERNAL, ALTER u SET STORAGE EXTERNAL;
ALTER TABLE l3 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l4 ALTER t SET STORAGE EXTERNAL, ALTER u SET STORAGE EXTERNAL;
ALTER TABLE l5 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l6 ALTER t SET STORAGE EXTERNAL;
INSERT INTO l1 SELECT id, b, payload FROM src WHERE id <= 300;
INSERT INTO l2 SELECT a, a + 1, b, id, payload, left(payload, 2500) FROM src WHERE id <= 300;
INSERT INTO l3 SELECT id, -id, b, payload FROM src WHERE id <= 300;
INSERT INTO l4 SELECT b, payload, -b, right(payload, 2100) FROM src WHERE id <= 300;
INSERT INTO l5 SELECT a, id, payload FROM src WHERE id <= 300;
INSERT INTO l6 SELECT chr(65 + a), chr(97 + a), a, b, payload FROM src WHERE id <= 300;
CREATE TABLE l1c (LIKE l1 INCLUDING STORAGE);
CREATE TABLE l2c (LIKE l2 INCLUDING STORAGE);
CREATE TABLE l3c (LIKE l3 INCLUDING STORAGE);
CREATE TABLE l4c (LIKE l4 INCLUDING STORAGE);
CREATE TABLE l5c (LIKE l5 INCLUDING STORAGE);
CREATE TABLE l6c (LIKE l6 INCLUDING STORAGE);
COPY l1 TO :'copyfile';
COPY l1c FROM :'copyfile';
COPY l2 TO :'copyfile';
COPY l2c FROM :'copyfile';
COPY l3 TO :'copyfile';
COPY l3c FROM :'copyfile';
COPY l4 TO :'copyfile';
COPY l4c FROM :'copyfile';
COPY l5 TO :'copyfile';
COPY l5c FROM :'copyfile';
COPY l6 TO :'copyfile';
COPY l6c FROM :'copyfile';
SELECT 'l1' AS t, count(*), sum(x), sum(y), md5(string_agg(t, ',' ORDER BY x)) FROM l1
UNION ALL SELECT 'l1c', count(*), sum(x), sum(y), md5(string_agg(t, ',' ORDER BY x)) FROM l1c
UNION ALL SELECT 'l2', count(*), sum(x + y + z), sum(w), md5(string_agg(t || u, ',' ORDER BY w)) FROM l2
UNION ALL SELECT 'l2c', count(*), sum(x + y + z), sum(w), md5(string_agg(t || u, ',' ORDER BY w)) FROM l2c
UNION ALL SELECT 'l3', count(*), sum(x + z), sum(y), md5(string_agg(t, ',' ORDER BY x)) FROM l3
UNION ALL SELECT 'l3c', count(*), sum(x + z), sum(y), md5(string_agg(t, ',' ORDER BY x)) FROM l3c
UNION ALL SELECT 'l4', count(*), sum(x), sum(y), md5(string_agg(t || u, ',' ORDER BY x)) FROM l4
UNION ALL SELECT 'l4c', count(*), sum(x), sum(y), md5(string_agg(t || u, ',' ORDER BY x)) FROM l4c
UNION ALL SELECT 'l5', count(*), sum(x), sum(y), md5(string_agg(t, ',' ORDER BY y)) FROM l5
UNION ALL SELECT 'l5c', count(*), sum(x), sum(y), md5(string_agg(t, ',' ORDER BY y)) FROM l5c
UNION ALL SELECT 'l6', count(*), sum(ascii(x) + ascii(y) + z), sum(w), md5(string_agg(t, ',' ORDER BY w)) FROM l6
UNION ALL SELECT 'l6c', count(*), sum(ascii(x) + ascii(y) + z), sum(w), md5(string_agg(t, ',' ORDER BY w)) FROM l6c;
-- every copy equals its original row for row
SELECT (SELECT count(*) FROM (TABLE l1 EXCEPT ALL TABLE l1c) d) +
       (SELECT count(*) FROM (TABLE l2 EXCEPT ALL TABLE l2c) d) +
       (SELECT count(*) FROM (TABLE l3 EXCEPT ALL TABLE l3c) d) +
       (SELECT count(*) FROM (TABLE l4 EXCEPT ALL TABLE l4c) d) +
       (SELECT count(*) FROM (TABLE l5 EXCEPT ALL TABLE l5c) d) +
       (SELECT count(*) FROM (TABLE l6 EXCEPT ALL TABLE l6c) d) AS differing;

-- every table above uses the access method under test
SELECT count(*) AS tables_of_am FROM pg_class c JOIN pg_am m ON m.oid = c.relam
  WHERE c.relnamespace = :'schema'::regnamespace AND c.relkind = 'r' AND m.amname = :'am';

-- Updates of such rows keep them intact (the update path walks every span).
UPDATE repro SET b = b + 1 WHERE id % 3 = 0;
UPDATE repro SET payload = upper(payload) WHERE id % 4 = 0;
SELECT count(*) FILTER (WHERE r.b <> s.b + (s.id % 3 = 0)::int) AS bad_b,
       count(*) FILTER (WHERE r.payload <> CASE WHEN s.id % 4 = 0 THEN upper(s.payload) ELSE s.payload END) AS bad_payload,
       count(*) FILTER (WHERE r.a <> s.a) AS bad_a
  FROM repro r JOIN src s USING (id);

-- empty the scratch file (6 MB)
COPY (SELECT WHERE false) TO :'copyfile';
SET client_min_messages = warning;
RESET search_path;
DROP SCHEMA :schema CASCADE;
