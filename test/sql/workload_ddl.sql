-- Shared workload (see workload_dml.sql): scans, indexes, maintenance,
-- ALTER TABLE, partitions, special tables and TOAST.
SET default_table_access_method = :'am';
\set schema wl_ddl_ :am
CREATE SCHEMA :schema;
SET search_path = :schema, public;
SET extra_float_digits = 0;

CREATE TABLE big (id int, grp int, val text, tags text[], doc jsonb, pos point, span int4range);
INSERT INTO big SELECT g, g % 17, md5(g::text), ARRAY['t' || (g % 5), 'u' || (g % 3)],
    jsonb_build_object('g', g, 'even', g % 2 = 0), point(g % 100, g / 100), int4range(g, g + 10)
  FROM generate_series(1, 20000) g;
ANALYZE big;

-- Every scan type, forced.
SET max_parallel_workers_per_gather = 0;
SELECT count(*), sum(id), count(DISTINCT val) FROM big;
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SELECT count(*), sum(id), md5(string_agg(val, ',' ORDER BY id)) FROM big;
SELECT grp, count(*) FROM big GROUP BY grp ORDER BY grp;
RESET parallel_setup_cost; RESET parallel_tuple_cost; RESET min_parallel_table_scan_size;
SET max_parallel_workers_per_gather = 0;
CREATE INDEX big_id ON big USING btree (id);
CREATE INDEX big_val_hash ON big USING hash (val);
CREATE INDEX big_tags ON big USING gin (tags);
CREATE INDEX big_doc ON big USING gin (doc jsonb_path_ops);
CREATE INDEX big_pos ON big USING gist (pos);
CREATE INDEX big_span ON big USING spgist (span);
CREATE INDEX big_brin ON big USING brin (id);
CREATE INDEX big_expr ON big ((lower(val)));
CREATE INDEX big_partial ON big (grp) WHERE id % 100 = 0;
CREATE UNIQUE INDEX CONCURRENTLY big_id_uniq ON big (id);
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT id, val FROM big WHERE id = 4242;
SELECT id FROM big WHERE id BETWEEN 100 AND 105 ORDER BY id;
SELECT count(*) FROM big WHERE id < 1000;
SELECT id FROM big WHERE val = md5('777');
SELECT id FROM big WHERE lower(val) = md5('778');
SELECT count(*) FROM big WHERE grp = 3 AND id % 100 = 0;
SET enable_indexscan = off; SET enable_bitmapscan = on;
SELECT count(*) FROM big WHERE tags @> ARRAY['t1'];
SELECT count(*) FROM big WHERE doc @> '{"even": true}';
SELECT count(*) FROM big WHERE pos <@ box '((0,0),(10,10))';
SELECT count(*) FROM big WHERE span && int4range(100, 120);
SELECT count(*) FROM big WHERE id BETWEEN 5000 AND 6000;
RESET enable_indexscan; RESET enable_bitmapscan;
SET enable_indexscan = off; SET enable_bitmapscan = off;
VACUUM big;
SELECT count(*), sum(id) FROM big WHERE id BETWEEN 10 AND 20;
RESET enable_indexscan; RESET enable_bitmapscan; RESET enable_seqscan;
-- TID and TID-range scans: the row at the first TID, found both ways.
SELECT id, val FROM big WHERE ctid = (SELECT min(ctid) FROM big);
SELECT count(*) = (SELECT count(*) FROM big WHERE ctid < '(1,0)') FROM big WHERE ctid >= '(0,0)' AND ctid < '(1,0)';
SELECT count(*) FROM big TABLESAMPLE BERNOULLI (100);
SELECT count(*) FROM big TABLESAMPLE SYSTEM (0);
-- constraints are checked with the data
ALTER TABLE big ADD CONSTRAINT big_pk PRIMARY KEY USING INDEX big_id_uniq;
INSERT INTO big (id) VALUES (1);

-- Maintenance keeps every row readable.
REINDEX TABLE big;
REINDEX INDEX CONCURRENTLY big_expr;
DELETE FROM big WHERE id % 4 = 0;
UPDATE big SET val = upper(val) WHERE id % 4 = 1;
VACUUM (ANALYZE) big;
SELECT count(*), sum(id), md5(string_agg(val, ',' ORDER BY id)) FROM big;
VACUUM FULL big;
SELECT count(*), sum(id), md5(string_agg(val, ',' ORDER BY id)) FROM big;
CLUSTER big USING big_id;
SELECT count(*), sum(id), md5(string_agg(val, ',' ORDER BY id)) FROM big;
SET enable_seqscan = off;
SELECT id FROM big WHERE lower(val) = lower(md5('777'));
RESET enable_seqscan;
SET allow_in_place_tablespaces = on;
CREATE TABLESPACE regress_cmk_ts LOCATION '';
ALTER TABLE big SET TABLESPACE regress_cmk_ts;
SELECT count(*), sum(id) FROM big WHERE grp = 5;
ALTER TABLE big SET TABLESPACE pg_default;
DROP TABLESPACE regress_cmk_ts;

-- ALTER TABLE: columns come and go; old rows keep working.
CREATE TABLE evolve (id int PRIMARY KEY, a text, b int);
INSERT INTO evolve SELECT g, 'a' || g, g FROM generate_series(1, 100) g;
ALTER TABLE evolve ADD COLUMN c int;
ALTER TABLE evolve ADD COLUMN d text DEFAULT 'fast default';
ALTER TABLE evolve ADD COLUMN e timestamptz DEFAULT '2020-01-01';
INSERT INTO evolve (id, a, b) VALUES (101, 'new', 101);
UPDATE evolve SET c = id WHERE id % 10 = 0;
UPDATE evolve SET d = 'changed' WHERE id % 25 = 0;
ALTER TABLE evolve DROP COLUMN a;
UPDATE evolve SET b = -b WHERE id % 3 = 0;
ALTER TABLE evolve ADD COLUMN f float8 DEFAULT random();
ALTER TABLE evolve ALTER COLUMN b TYPE bigint;
ALTER TABLE evolve ALTER COLUMN c TYPE text USING 'c=' || c;
SELECT id, b, c, d, e FROM evolve WHERE id IN (1, 3, 10, 25, 30, 50, 101) ORDER BY id;
SELECT count(*), count(c), count(f) FROM evolve;
VACUUM FULL evolve;
SELECT id, b, c, d FROM evolve WHERE id IN (3, 25, 101) ORDER BY id;
-- access method round trip
ALTER TABLE evolve SET ACCESS METHOD heap;
ALTER TABLE evolve SET ACCESS METHOD :am;
SELECT count(*), sum(b), count(DISTINCT d) FROM evolve;

-- Wide rows: many columns, some dropped.
SELECT format('CREATE TABLE wide (%s)', string_agg(format('c%s int', g), ', ')) FROM generate_series(1, 300) g \gexec
INSERT INTO wide (c1, c150, c300) VALUES (1, 150, 300), (2, NULL, NULL);
ALTER TABLE wide DROP COLUMN c2, DROP COLUMN c299;
UPDATE wide SET c300 = c300 + 1, c3 = 3;
SELECT c1, c3, c150, c300 FROM wide ORDER BY c1;
SELECT format('INSERT INTO wide SELECT %s', string_agg('g', ', ')) || ' FROM generate_series(10, 20) g'
  FROM generate_series(1, 298) g \gexec
SELECT count(*), sum(c1), sum(c300) FROM wide;

-- Partitions, temporary and unlogged tables, materialized views.
CREATE TABLE part (id int, region text, amount numeric) PARTITION BY RANGE (id);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (1000);
CREATE TABLE part_2 PARTITION OF part FOR VALUES FROM (1000) TO (2000) PARTITION BY LIST (region);
CREATE TABLE part_2a PARTITION OF part_2 FOR VALUES IN ('eu');
CREATE TABLE part_2b PARTITION OF part_2 DEFAULT;
INSERT INTO part SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g * 1.5 FROM generate_series(0, 1999) g;
UPDATE part SET id = id + 1000 WHERE id = 5;
SELECT tableoid::regclass, count(*), sum(amount) FROM part GROUP BY 1 ORDER BY 1;
CREATE TEMP TABLE tmp AS SELECT id, val FROM big WHERE id < 100;
SELECT count(*), min(val) FROM tmp;
CREATE UNLOGGED TABLE unl (id int, v text);
INSERT INTO unl SELECT g, 'u' || g FROM generate_series(1, 100) g;
SELECT count(*), max(v) FROM unl;
CREATE MATERIALIZED VIEW mv AS SELECT grp, count(*) AS n, max(val) AS mx FROM big GROUP BY grp;
CREATE UNIQUE INDEX mv_grp ON mv (grp);
SELECT * FROM mv ORDER BY grp LIMIT 3;
DELETE FROM big WHERE grp = 0;
REFRESH MATERIALIZED VIEW mv;
REFRESH MATERIALIZED VIEW CONCURRENTLY mv;
SELECT count(*), sum(n) FROM mv;
SELECT relname, cmk_storage.is_encrypted(oid) = (:'am' = 'cmk_heap') AS as_expected
  FROM pg_class WHERE relname IN ('big', 'evolve', 'part_1', 'part_2a', 'tmp', 'unl', 'mv')
   AND relnamespace IN (current_schema()::regnamespace, pg_my_temp_schema()) ORDER BY relname;

-- TOAST: every storage kind, both compression methods, values around the
-- threshold, updates that keep or replace toasted values.
CREATE TABLE toasty (id int PRIMARY KEY, plain_c text, main_c text, ext_c text, extd_c text,
                     lz text COMPRESSION lz4, pg text COMPRESSION pglz, b bytea);
ALTER TABLE toasty ALTER plain_c SET STORAGE PLAIN, ALTER main_c SET STORAGE MAIN,
                   ALTER ext_c SET STORAGE EXTERNAL, ALTER extd_c SET STORAGE EXTENDED;
CREATE FUNCTION count_rows(rel regclass) RETURNS bigint LANGUAGE plpgsql AS
  $$ DECLARE n bigint; BEGIN EXECUTE format('SELECT count(*) FROM %s', rel) INTO n; RETURN n; END $$;
CREATE FUNCTION noise(n int, seed int) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT string_agg(md5((seed * 100000 + g)::text), '') FROM generate_series(1, (n + 31) / 32) g $$;
INSERT INTO toasty VALUES
  (1, 'small', 'small', 'small', 'small', 'small', 'small', '\x00'),
  (2, noise(1000, 2), repeat('m', 5000), noise(3000, 2), repeat('e', 100000), repeat('lz4 ', 20000), repeat('pglz ', 20000), decode(noise(6000, 2), 'hex')),
  (3, NULL, noise(9000, 3), repeat('x', 3000), noise(50000, 3), noise(4000, 3), noise(4000, 3), NULL);
INSERT INTO toasty (id, extd_c) SELECT 100 + g, repeat('t', 1900 + g * 10) FROM generate_series(0, 30) g;
INSERT INTO toasty (id, extd_c) SELECT 200 + g, noise(1900 + g * 10, g) FROM generate_series(0, 30) g;
SELECT id, length(plain_c), length(main_c), length(ext_c), length(extd_c), length(lz), length(pg), length(b),
       md5(coalesce(main_c, '') || coalesce(ext_c, '') || coalesce(extd_c, '') || coalesce(lz, '') || coalesce(pg, ''))
  FROM toasty WHERE id < 100 ORDER BY id;
SELECT id, pg_column_compression(lz) AS lzc, pg_column_compression(pg) AS pgc,
       pg_column_size(ext_c) AS ext_size, pg_column_size(extd_c) AS extd_size
  FROM toasty WHERE id < 100 ORDER BY id;
SELECT count(*), sum(length(extd_c)), md5(string_agg(extd_c, '' ORDER BY id)) FROM toasty WHERE id >= 100;
SELECT substr(ext_c, 2990, 20), substr(extd_c, 49990, 20) FROM toasty WHERE id = 3;
UPDATE toasty SET id = id + 1000 WHERE id = 2;
UPDATE toasty SET ext_c = ext_c || 'tail' WHERE id = 1002;
UPDATE toasty SET main_c = upper(main_c) WHERE id = 3;
SELECT id, length(ext_c), right(ext_c, 8), md5(extd_c), md5(main_c) FROM toasty WHERE id IN (1002, 3) ORDER BY id;
INSERT INTO toasty (id, extd_c) SELECT id + 5000, extd_c FROM toasty WHERE id IN (1002, 3);
SELECT id, md5(extd_c) FROM toasty WHERE id > 5000 ORDER BY id;
DELETE FROM toasty WHERE id >= 100 AND id < 1000;
VACUUM toasty;
SELECT count_rows(reltoastrelid) > 0 AS toast_in_use FROM pg_class WHERE oid = 'toasty'::regclass;
SELECT count(*), sum(length(extd_c)) FROM toasty;
TRUNCATE toasty;
SELECT count(*) FROM toasty;
SELECT count_rows(reltoastrelid) AS toast_rows_after_truncate FROM pg_class WHERE oid = 'toasty'::regclass;
