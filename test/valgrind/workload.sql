-- The cmk_heap workload that scripts/memcheck.sh runs on a server whose
-- processes all run under valgrind memcheck.  It exercises every table-AM
-- path that encrypts or decrypts a tuple (single and multi insert, update,
-- HOT update, delete, lock, speculative insert, every scan kind, rewrites,
-- index builds, logical decoding), with out-of-line (TOASTed) values, with
-- and without NULLs, and in several leading fixed-width layouts: those whose
-- prefix is one keystream range without padding are the shape of issue 21.
--
-- It checks its own results (mc_check raises an error), so a wrong answer
-- fails the run even where memcheck sees nothing.  It must stay small: under
-- valgrind every statement costs 20 to 50 times its normal time.  psql
-- variable :datafile names a scratch file the server may write.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS cmk_storage;
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT state = 'available' AS key_available FROM cmk_storage.status \gset
\if :key_available
\else
\echo the key is not available
\quit 3
\endif

CREATE FUNCTION mc_check(ok bool, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF ok IS NOT TRUE THEN
		RAISE EXCEPTION 'memcheck workload: % is wrong', what;
	END IF;
END $$;

-- The reference rows, in heap: ~3.2 kB of md5 hex text per row, which pglz
-- cannot shrink below the TOAST threshold, so it is stored out of line.
CREATE TABLE src USING heap AS
  SELECT g::bigint AS id, g % 7 AS a, g AS b,
         (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 100) i) AS payload
    FROM generate_series(1, 300) g;
CREATE TABLE src_nulls USING heap AS
  SELECT id, CASE WHEN id % 5 = 0 THEN NULL ELSE a END AS a, b,
         CASE WHEN id % 11 = 0 THEN NULL ELSE payload END AS payload
    FROM src;

SET default_table_access_method = cmk_heap;

-- The reported shape: COPY (multi-insert, as pg_restore loads) and INSERT
-- (single-row), without and with NULLs.
COPY src TO :'datafile';
CREATE TABLE repro (id bigint, a int, b int, payload text);
COPY repro FROM :'datafile';
INSERT INTO repro SELECT id + 1000, a, b, payload FROM src;
COPY src_nulls TO :'datafile';
CREATE TABLE repro_nulls (id bigint, a int, b int, payload text);
COPY repro_nulls FROM :'datafile';
INSERT INTO repro_nulls SELECT id + 1000, a, b, payload FROM src_nulls;
SELECT mc_check((SELECT count(*) FROM repro WHERE pg_column_compression(payload) IS NULL
                   AND octet_length(payload) = 3200) = 600, 'out-of-line payloads in repro');
SELECT mc_check(NOT EXISTS (SELECT id % 1000, a, b, payload FROM repro
                            EXCEPT ALL SELECT id, a, b, payload FROM src
                            EXCEPT ALL SELECT id, a, b, payload FROM src)
                AND (SELECT count(*) FROM repro) = 600, 'repro');
SELECT mc_check(NOT EXISTS (SELECT id % 1000, a, b, payload FROM repro_nulls
                            EXCEPT ALL SELECT id, a, b, payload FROM src_nulls
                            EXCEPT ALL SELECT id, a, b, payload FROM src_nulls)
                AND (SELECT count(*) FROM repro_nulls) = 600, 'repro_nulls');

-- Leading fixed-width layouts: one keystream range (l1, l4, l5), padding
-- after the first column (l2), a varlena in second place (l3), one-byte
-- columns (l6).  STORAGE EXTERNAL forces every text value out of line.
CREATE TABLE l1 (x int, y int, t text);
CREATE TABLE l2 (x smallint, y bigint, t text);
CREATE TABLE l3 (x int, t text, y int, u text);
CREATE TABLE l4 (x bigint, y int, z int, t text);
CREATE TABLE l5 (x bigint, y bigint, z bigint, t text, u text);
CREATE TABLE l6 (x "char", y "char", z smallint, w int, t text);
ALTER TABLE l1 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l2 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l3 ALTER t SET STORAGE EXTERNAL, ALTER u SET STORAGE EXTERNAL;
ALTER TABLE l4 ALTER t SET STORAGE EXTERNAL;
ALTER TABLE l5 ALTER t SET STORAGE EXTERNAL, ALTER u SET STORAGE EXTERNAL;
ALTER TABLE l6 ALTER t SET STORAGE EXTERNAL;
-- the same rows as a heap reference, the NULLs of src_nulls included
CREATE TABLE ref USING heap AS
  SELECT id, a, b, left(payload, 2100) AS p1, right(payload, 2050) AS p2 FROM src_nulls;
INSERT INTO l1 SELECT id, b, p1 FROM ref WHERE id <= 100;
INSERT INTO l2 SELECT a, id, p1 FROM ref WHERE id <= 100;
INSERT INTO l3 SELECT id, p1, b, p2 FROM ref WHERE id <= 100;
INSERT INTO l4 SELECT id, a, b, p1 FROM ref WHERE id <= 100;
INSERT INTO l5 SELECT id, a, b, p1, p2 FROM ref WHERE id <= 100;
INSERT INTO l6 SELECT chr(65 + coalesce(a, 9)), chr(97 + id::int % 26), a, id, p1 FROM ref WHERE id <= 100;
-- and the same rows again by COPY
COPY (SELECT id + 1000, b, p1 FROM ref WHERE id <= 100) TO :'datafile';
COPY l1 FROM :'datafile';
COPY (SELECT a, id + 1000, p1 FROM ref WHERE id <= 100) TO :'datafile';
COPY l2 FROM :'datafile';
COPY (SELECT id + 1000, p1, b, p2 FROM ref WHERE id <= 100) TO :'datafile';
COPY l3 FROM :'datafile';
COPY (SELECT id + 1000, a, b, p1 FROM ref WHERE id <= 100) TO :'datafile';
COPY l4 FROM :'datafile';
COPY (SELECT id + 1000, a, b, p1, p2 FROM ref WHERE id <= 100) TO :'datafile';
COPY l5 FROM :'datafile';
COPY (SELECT chr(65 + coalesce(a, 9)), chr(97 + id::int % 26), a, id + 1000, p1 FROM ref WHERE id <= 100) TO :'datafile';
COPY l6 FROM :'datafile';
SELECT mc_check(NOT EXISTS (SELECT x % 1000, y, t FROM l1 EXCEPT ALL
                            (SELECT id, b, p1 FROM ref WHERE id <= 100 UNION ALL
                             SELECT id, b, p1 FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l1) = 200, 'l1');
SELECT mc_check(NOT EXISTS (SELECT x, y % 1000, t FROM l2 EXCEPT ALL
                            (SELECT a, id, p1 FROM ref WHERE id <= 100 UNION ALL
                             SELECT a, id, p1 FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l2) = 200, 'l2');
SELECT mc_check(NOT EXISTS (SELECT x % 1000, t, y, u FROM l3 EXCEPT ALL
                            (SELECT id, p1, b, p2 FROM ref WHERE id <= 100 UNION ALL
                             SELECT id, p1, b, p2 FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l3) = 200, 'l3');
SELECT mc_check(NOT EXISTS (SELECT x % 1000, y, z, t FROM l4 EXCEPT ALL
                            (SELECT id, a, b, p1 FROM ref WHERE id <= 100 UNION ALL
                             SELECT id, a, b, p1 FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l4) = 200, 'l4');
SELECT mc_check(NOT EXISTS (SELECT x % 1000, y, z, t, u FROM l5 EXCEPT ALL
                            (SELECT id, a, b, p1, p2 FROM ref WHERE id <= 100 UNION ALL
                             SELECT id, a, b, p1, p2 FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l5) = 200, 'l5');
SELECT mc_check(NOT EXISTS (SELECT x, y, z, w % 1000, t FROM l6 EXCEPT ALL
                            (SELECT chr(65 + coalesce(a, 9))::"char", chr(97 + id::int % 26)::"char", a, id, p1
                               FROM ref WHERE id <= 100 UNION ALL
                             SELECT chr(65 + coalesce(a, 9))::"char", chr(97 + id::int % 26)::"char", a, id, p1
                               FROM ref WHERE id <= 100))
                AND (SELECT count(*) FROM l6) = 200, 'l6');

-- Indexes and constraints; every scan kind.
ALTER TABLE repro ADD PRIMARY KEY (id);
CREATE INDEX repro_ab ON repro (a, b);
CREATE INDEX CONCURRENTLY repro_payload ON repro (md5(payload));
ANALYZE repro;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT mc_check((SELECT payload FROM repro WHERE id = 1042) = (SELECT payload FROM src WHERE id = 42), 'index scan');
SELECT mc_check((SELECT count(*) FROM repro WHERE a = 3) = 2 * (SELECT count(*) FROM src WHERE a = 3), 'index-only scan');
SELECT mc_check((SELECT id FROM repro WHERE md5(payload) = md5((SELECT payload FROM src WHERE id = 7))
                 ORDER BY id LIMIT 1) = 7, 'expression index scan');
SET enable_indexscan = off;
SET enable_bitmapscan = on;
SELECT mc_check((SELECT sum(b) FROM repro WHERE id BETWEEN 1010 AND 1050) = (SELECT sum(b) FROM src WHERE id BETWEEN 10 AND 50), 'bitmap scan');
RESET enable_indexscan;
RESET enable_bitmapscan;
RESET enable_seqscan;
SELECT mc_check((SELECT count(*) FROM repro WHERE ctid >= '(0,1)' AND ctid < '(2,0)') > 0, 'TID range scan');
SELECT mc_check((SELECT id FROM repro WHERE ctid = (SELECT min(ctid) FROM repro)) IS NOT NULL, 'TID scan');
SELECT mc_check((SELECT count(*) FROM repro TABLESAMPLE BERNOULLI (100)) = 600, 'BERNOULLI sample');
SELECT mc_check((SELECT count(*) FROM repro TABLESAMPLE SYSTEM (100) REPEATABLE (1)) = 600, 'SYSTEM sample');
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SELECT mc_check((SELECT md5(string_agg(payload, '' ORDER BY id)) FROM repro WHERE id < 1000) =
                (SELECT md5(string_agg(payload, '' ORDER BY id)) FROM src), 'parallel seq scan');
RESET max_parallel_workers_per_gather;
RESET min_parallel_table_scan_size;
RESET parallel_tuple_cost;
RESET parallel_setup_cost;
BEGIN;
DECLARE c SCROLL CURSOR FOR SELECT id, md5(payload) FROM repro ORDER BY id;
FETCH LAST FROM c;
FETCH BACKWARD 5 FROM c;
CLOSE c;
COMMIT;
SELECT mc_check(bt_index_check('repro_pkey', true) IS NOT NULL
                AND bt_index_check('repro_ab', true) IS NOT NULL, 'amcheck of repro''s indexes');

-- Row changes: HOT (fillfactor leaves room, no indexed column changes),
-- non-HOT, TOAST values replaced, set to and from NULL, deleted, locked,
-- speculative insertion, MERGE, aborted and subtransaction changes.
CREATE TABLE hot (id int PRIMARY KEY, n int, t text) WITH (fillfactor = 50);
ALTER TABLE hot ALTER t SET STORAGE EXTERNAL;
INSERT INTO hot SELECT id, b, left(payload, 2500) FROM src WHERE id <= 60;
BEGIN;
UPDATE hot SET n = n + 1;
UPDATE hot SET n = n + 1 WHERE id % 2 = 0;
SELECT mc_check((SELECT n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'hot') > 0, 'HOT updates happen');
COMMIT;
UPDATE hot SET id = id + 100 WHERE id % 3 = 0;
UPDATE hot SET t = upper(t) WHERE id % 4 = 0;
UPDATE hot SET t = NULL WHERE id % 5 = 0;
UPDATE hot SET t = 'short' WHERE id % 7 = 0;
UPDATE repro SET b = b + 1 WHERE id % 3 = 0;
UPDATE repro SET payload = upper(payload) WHERE id % 4 = 0;
UPDATE repro_nulls SET a = 1 WHERE a IS NULL;
UPDATE repro_nulls SET payload = 'x' WHERE payload IS NULL;
UPDATE l1 SET y = -y WHERE x % 2 = 0;
UPDATE l3 SET u = lower(u) WHERE x % 2 = 1;
DELETE FROM repro WHERE id % 10 = 0;
DELETE FROM l5 WHERE x % 3 = 0;
SELECT mc_check(NOT EXISTS (
  SELECT r.id FROM repro r JOIN src s ON s.id = r.id % 1000
   WHERE r.a <> s.a OR r.b <> s.b + (r.id % 3 = 0)::int
      OR r.payload <> CASE WHEN r.id % 4 = 0 THEN upper(s.payload) ELSE s.payload END)
  AND (SELECT count(*) FROM repro) = 540, 'repro after updates');
SELECT mc_check(NOT EXISTS (
  SELECT h.id FROM hot h JOIN src s ON s.id = CASE WHEN h.id > 100 THEN h.id - 100 ELSE h.id END
   WHERE h.n <> s.b + 1 + (s.id % 2 = 0)::int
      OR h.t IS DISTINCT FROM CASE WHEN h.id % 7 = 0 THEN 'short'
                                    WHEN h.id % 5 = 0 THEN NULL
                                    WHEN h.id % 4 = 0 THEN upper(left(s.payload, 2500))
                                    ELSE left(s.payload, 2500) END)
  AND (SELECT count(*) FROM hot) = 60, 'hot after updates');
BEGIN;
SELECT count(*) FROM (SELECT id FROM repro WHERE id < 50 FOR UPDATE) l;
SELECT count(*) FROM (SELECT id FROM hot FOR SHARE) l;
COMMIT;
INSERT INTO repro SELECT id, a, b, payload FROM src WHERE id <= 20
  ON CONFLICT (id) DO UPDATE SET b = excluded.b + 1000;
INSERT INTO repro SELECT id + 2000, a, b, payload FROM src WHERE id <= 20
  ON CONFLICT (id) DO NOTHING;
INSERT INTO repro SELECT id + 2000, a, b, payload FROM src WHERE id <= 20
  ON CONFLICT (id) DO NOTHING;
MERGE INTO hot h USING (SELECT id, b, payload FROM src WHERE id BETWEEN 50 AND 70) s ON h.id = s.id
  WHEN MATCHED THEN UPDATE SET t = left(s.payload, 2200)
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.b, left(s.payload, 2200));
BEGIN;
INSERT INTO repro SELECT id + 3000, a, b, payload FROM src;
SAVEPOINT s1;
UPDATE repro SET payload = 'gone' WHERE id < 100;
ROLLBACK TO s1;
DELETE FROM repro WHERE id BETWEEN 3001 AND 3100;
ROLLBACK;
-- ids 10 and 20 were deleted: inserted again, the 18 others updated
SELECT mc_check((SELECT count(*) FROM repro) = 562
                AND (SELECT count(*) FROM repro WHERE id <= 20 AND b > 1000) = 18
                AND (SELECT count(*) FROM repro WHERE payload = 'gone') = 0, 'repro after upserts and rollbacks');
SELECT mc_check((SELECT count(*) FROM hot WHERE id BETWEEN 50 AND 70 AND t = left((SELECT payload FROM src s WHERE s.id = hot.id), 2200)) =
                (SELECT count(*) FROM hot WHERE id BETWEEN 50 AND 70), 'MERGE');

-- Rewrites: VACUUM, VACUUM FULL, CLUSTER, a change of access method both
-- ways, a column type change, REINDEX, TRUNCATE and reload.
CREATE TABLE before_rewrite USING heap AS SELECT * FROM repro;
VACUUM repro;
VACUUM hot;
VACUUM FULL repro;
SELECT mc_check(NOT EXISTS (TABLE repro EXCEPT ALL TABLE before_rewrite)
                AND NOT EXISTS (TABLE before_rewrite EXCEPT ALL TABLE repro), 'VACUUM FULL');
CLUSTER repro USING repro_ab;
CLUSTER hot USING hot_pkey;
SELECT mc_check(NOT EXISTS (TABLE repro EXCEPT ALL TABLE before_rewrite)
                AND NOT EXISTS (TABLE before_rewrite EXCEPT ALL TABLE repro), 'CLUSTER');
ALTER TABLE l4 SET ACCESS METHOD heap;
ALTER TABLE l4 SET ACCESS METHOD cmk_heap;
ALTER TABLE before_rewrite SET ACCESS METHOD cmk_heap;
SELECT mc_check(NOT EXISTS (TABLE repro EXCEPT ALL TABLE before_rewrite)
                AND NOT EXISTS (TABLE before_rewrite EXCEPT ALL TABLE repro), 'SET ACCESS METHOD');
SELECT mc_check(NOT EXISTS (SELECT x % 1000, y, z, t FROM l4 EXCEPT ALL
                            (SELECT id, a, b, p1 FROM ref WHERE id <= 100 UNION ALL
                             SELECT id, a, b, p1 FROM ref WHERE id <= 100)), 'l4 after SET ACCESS METHOD');
ALTER TABLE l2 ALTER x TYPE int;
SELECT mc_check(NOT EXISTS (SELECT x, y % 1000, t FROM l2 EXCEPT ALL
                            (SELECT a, id, p1 FROM ref WHERE id <= 100 UNION ALL
                             SELECT a, id, p1 FROM ref WHERE id <= 100)), 'l2 after ALTER TYPE');
REINDEX TABLE repro;
SELECT mc_check(bt_index_check('repro_pkey', true) IS NOT NULL
                AND bt_index_check('hot_pkey', true) IS NOT NULL, 'amcheck after rewrites');
COPY (SELECT id, b, p1 FROM ref WHERE id <= 100) TO :'datafile';
TRUNCATE l1;
COPY l1 FROM :'datafile';
SELECT mc_check(NOT EXISTS (SELECT x, y, t FROM l1 EXCEPT ALL SELECT id, b, p1 FROM ref WHERE id <= 100)
                AND (SELECT count(*) FROM l1) = 100, 'l1 after TRUNCATE');

-- A materialized view and a partitioned table of cmk_heap.
CREATE MATERIALIZED VIEW mv USING cmk_heap AS SELECT id, a, payload FROM repro WHERE id < 100;
REFRESH MATERIALIZED VIEW mv;
SELECT mc_check((SELECT count(*) FROM mv) = (SELECT count(*) FROM repro WHERE id < 100), 'materialized view');
CREATE TABLE parted (id bigint, a int, payload text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (150);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (150) TO (1000);
INSERT INTO parted SELECT id, a, payload FROM src;
UPDATE parted SET id = id + 100 WHERE id BETWEEN 100 AND 120;	-- moves rows across partitions
SELECT mc_check((SELECT count(*) FROM parted_2) = 172, 'partition routing');

-- Logical decoding decrypts cmk_heap changes inside the server
-- (cmkam_decode.c): the same changes to a cmk_heap and a heap table decode
-- to the same text, table name aside.
SELECT current_setting('wal_level') = 'logical' AS logical \gset
\if :logical
CREATE TABLE lh USING heap AS SELECT * FROM l4 WHERE false;
SELECT 'init' FROM pg_create_logical_replication_slot('memcheck_slot', 'test_decoding');
INSERT INTO l4 SELECT id + 5000, a, b, p1 FROM ref WHERE id <= 10;
INSERT INTO lh SELECT id + 5000, a, b, p1 FROM ref WHERE id <= 10;
UPDATE l4 SET y = 0 WHERE x > 5000;
UPDATE lh SET y = 0 WHERE x > 5000;
DELETE FROM l4 WHERE x > 5005;
DELETE FROM lh WHERE x > 5005;
CREATE TABLE changes USING heap AS
  SELECT data FROM pg_logical_slot_get_changes('memcheck_slot', NULL, NULL);
SELECT mc_check((SELECT count(*) FROM changes WHERE data LIKE 'table public.lh: %') = 25
                AND NOT EXISTS (SELECT substr(data, 16) FROM changes WHERE data LIKE 'table public.lh: %'
                                EXCEPT ALL
                                SELECT substr(data, 16) FROM changes WHERE data LIKE 'table public.l4: %')
                AND NOT EXISTS (SELECT substr(data, 16) FROM changes WHERE data LIKE 'table public.l4: %'
                                EXCEPT ALL
                                SELECT substr(data, 16) FROM changes WHERE data LIKE 'table public.lh: %'),
                'logical decoding');
SELECT pg_drop_replication_slot('memcheck_slot');
\endif

-- Everything still reads back once more after a checkpoint.
CHECKPOINT;
SELECT mc_check(NOT EXISTS (TABLE repro EXCEPT ALL TABLE before_rewrite), 'repro at the end');
COPY (SELECT WHERE false) TO :'datafile';
\echo memcheck workload complete
