-- Shared workload, run once with heap and once with cmk_heap (psql variable
-- :am); scripts/test.sh requires both outputs to be identical.  Output must
-- not depend on physical layout (TIDs, page counts, sizes near thresholds).
SET default_table_access_method = :'am';
\set schema wl_dml_ :am
CREATE SCHEMA :schema;
SET search_path = :schema, public;
SET extra_float_digits = 0;

-- Every common type, NULLs everywhere, single and multi-row inserts.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE types (
    id int PRIMARY KEY,
    i2 smallint, i8 bigint, n numeric(20,5), f4 real, f8 float8,
    b bool, c "char", ch char(5), vc varchar(20), t text, nm name,
    by bytea, d date, ts timestamptz, iv interval, u uuid,
    j jsonb, js json, arr int[], tarr text[], r int4range, inetv inet,
    pt point, bx box, m mood, p pair, mon money, bits bit varying(16)
);
INSERT INTO types VALUES
  (1, 1, 10000000000, 3.14159, 1.5, 2.25, true, 'x', 'ab', 'varchar', 'text one', 'name1',
   '\xdeadbeef', '2024-02-29', '2024-02-29 12:34:56+00', '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '{"k": [1, 2, {"z": null}]}', '{"a":1}', '{1,2,3}', '{"a","b",NULL}', '[1,10)', '10.0.0.1/8',
   '(1,2)', '((0,0),(1,1))', 'happy', ROW(1, 'one'), 12.34, B'1010');
INSERT INTO types (id) VALUES (2);
INSERT INTO types VALUES
  (3, -1, -1, -0.00001, 'NaN', '-Infinity', false, '\', '', '', '', '',
   '\x', 'infinity', '-infinity', '0', '00000000-0000-0000-0000-000000000000',
   'null', '[]', '{}', '{}', 'empty', '::1', '(0,0)', '((1,1),(1,1))', 'sad', ROW(NULL, NULL), 0, B''),
  (4, 32767, 9223372036854775807, 99999999999999.99999, 3.4e38, 1e308, NULL, NULL, 'zzzzz', repeat('v', 20),
   repeat('long text ', 50), repeat('n', 63), decode(repeat('ff', 300), 'hex'), '4713-01-01 BC', NULL, '-178000000 years', NULL,
   (SELECT jsonb_agg(g) FROM generate_series(1, 100) g), NULL, ARRAY(SELECT generate_series(1, 200)), NULL, '(,)', '255.255.255.255', NULL, NULL, 'ok', NULL, NULL, NULL);
SELECT * FROM types ORDER BY id;

-- COPY FROM and TO
CREATE TABLE copied (a int, b text, c float8);
COPY copied FROM stdin;
1	one	1.5
2	\N	2.5
3	three	\N
\.
COPY copied TO stdout;
INSERT INTO copied SELECT g, 'row ' || g, g / 7.0 FROM generate_series(4, 3000) g;
SELECT count(*), sum(a), count(b), round(sum(c)::numeric, 3) FROM copied;

-- UPDATE (indexed and not), DELETE, RETURNING with system columns.
CREATE TABLE acct (id int PRIMARY KEY, owner text, balance int, note text) WITH (fillfactor = 50);
CREATE INDEX acct_owner ON acct (owner);
INSERT INTO acct SELECT g, 'owner' || (g % 10), g * 10, NULL FROM generate_series(1, 200) g;
UPDATE acct SET balance = balance + 1 WHERE id <= 50 RETURNING id, balance,
    tableoid::regclass, xmin = pg_current_xact_id()::xid AS xmin_is_mine, ctid::text ~ '^\(\d+,\d+\)$' AS has_ctid;
UPDATE acct SET owner = 'moved' WHERE id % 20 = 0;
UPDATE acct SET note = repeat('n', id) WHERE id > 190;
DELETE FROM acct WHERE id BETWEEN 100 AND 110 RETURNING id, owner;
SELECT owner, count(*), sum(balance) FROM acct GROUP BY owner ORDER BY owner;
SELECT id FROM acct WHERE owner = 'moved' ORDER BY id;
-- same value assigned: not a change
UPDATE acct SET owner = owner WHERE id = 1;
SELECT pg_stat_force_next_flush();
-- HOT happens exactly when it does on heap (plenty of room: fillfactor 50)
SELECT pg_stat_get_tuples_updated('acct'::regclass) AS upd,
       pg_stat_get_tuples_hot_updated('acct'::regclass) AS hot_upd,
       pg_stat_get_tuples_deleted('acct'::regclass) AS del;

-- By-value columns only: an UPDATE's fetched old version is decrypted by XOR
-- whole and handed to the update from a copy made then; its unchanged
-- indexed column keeps its bytes, so HOT happens as on heap.
CREATE TABLE counters (id int PRIMARY KEY, hits int8, seen bool) WITH (fillfactor = 50);
INSERT INTO counters SELECT g, g * 10, false FROM generate_series(1, 200) g;
UPDATE counters SET hits = hits + 1, seen = true WHERE id % 4 = 0;
SET enable_seqscan = off;
UPDATE counters SET hits = hits + 2 WHERE id IN (3, 7, 8, 100);
RESET enable_seqscan;
SELECT pg_stat_force_next_flush();
SELECT pg_stat_get_tuples_updated('counters'::regclass) AS upd,
       pg_stat_get_tuples_hot_updated('counters'::regclass) AS hot_upd;
SELECT sum(hits), count(*) FILTER (WHERE seen) FROM counters;
SELECT * FROM counters WHERE id IN (3, 4, 7, 8, 100) ORDER BY id;

-- A one-byte indexed column updated many times: the index must always agree.
CREATE TABLE flags (id int, flag bool, payload text) WITH (fillfactor = 30);
CREATE INDEX flags_flag ON flags (flag);
INSERT INTO flags SELECT g, g % 2 = 0, 'p' || g FROM generate_series(1, 100) g;
DO $$ BEGIN FOR i IN 1..30 LOOP UPDATE flags SET flag = NOT flag WHERE id % 3 = i % 3; END LOOP; END $$;
SET enable_seqscan = off; SET enable_bitmapscan = off;
SELECT count(*) FILTER (WHERE flag), count(*) FILTER (WHERE NOT flag) FROM flags WHERE flag OR NOT flag;
SELECT count(*) FROM flags WHERE flag;
RESET enable_seqscan; RESET enable_bitmapscan;
SELECT count(*) FROM flags WHERE flag;

-- INSERT ... ON CONFLICT, both forms.
CREATE TABLE kv (k text PRIMARY KEY, v int, hits int DEFAULT 0);
INSERT INTO kv VALUES ('a', 1), ('b', 2);
INSERT INTO kv VALUES ('a', 10) ON CONFLICT DO NOTHING;
INSERT INTO kv VALUES ('a', 10), ('c', 3) ON CONFLICT (k) DO UPDATE SET v = excluded.v, hits = kv.hits + 1 RETURNING *;
INSERT INTO kv VALUES ('b', 20) ON CONFLICT (k) DO UPDATE SET v = excluded.v WHERE kv.v > 100 RETURNING *;
INSERT INTO kv VALUES ('big', 1) ON CONFLICT (k) DO UPDATE SET v = 0;
INSERT INTO kv SELECT 'k' || g, g FROM generate_series(1, 50) g ON CONFLICT (k) DO UPDATE SET hits = kv.hits + 1;
INSERT INTO kv SELECT 'k' || g, g FROM generate_series(1, 60) g ON CONFLICT (k) DO UPDATE SET hits = kv.hits + 1;
SELECT hits, count(*) FROM kv GROUP BY hits ORDER BY hits;
INSERT INTO kv VALUES ('a', 1);

-- Row locks of every strength.
BEGIN;
SELECT k FROM kv WHERE k IN ('a', 'b') ORDER BY k FOR UPDATE;
SELECT k FROM kv WHERE k = 'c' FOR NO KEY UPDATE;
SELECT k FROM kv WHERE k = 'k1' FOR SHARE;
SELECT k, v FROM kv WHERE k = 'k2' FOR KEY SHARE;
SELECT k FROM kv WHERE k = 'k3' FOR UPDATE SKIP LOCKED;
SELECT k FROM kv WHERE k = 'k4' FOR UPDATE NOWAIT;
COMMIT;

-- Triggers, including ones that change the row and transition tables.
CREATE TABLE audited (id int, val text);
CREATE TABLE audit_log (op text, id int, val text);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN INSERT INTO audit_log VALUES (TG_OP, OLD.id, OLD.val); RETURN OLD; END IF;
  NEW.val := upper(NEW.val);
  INSERT INTO audit_log VALUES (TG_OP, NEW.id, NEW.val);
  RETURN NEW;
END $$;
CREATE FUNCTION audit_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit_log SELECT 'stmt-new', count(*), string_agg(val, ',' ORDER BY id) FROM newtab;
  RETURN NULL;
END $$;
CREATE TRIGGER audited_row BEFORE INSERT OR UPDATE OR DELETE ON audited FOR EACH ROW EXECUTE FUNCTION audit_row();
CREATE TRIGGER audited_stmt AFTER INSERT ON audited REFERENCING NEW TABLE AS newtab FOR EACH STATEMENT EXECUTE FUNCTION audit_stmt();
INSERT INTO audited VALUES (1, 'one'), (2, 'two');
UPDATE audited SET val = val || '!' WHERE id = 1;
DELETE FROM audited WHERE id = 2;
SELECT * FROM audited ORDER BY id;
SELECT * FROM audit_log ORDER BY op, id;

-- Foreign keys in both directions, also against a plain heap table.
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE, x text);
CREATE TABLE heap_child (id int, parent_id int REFERENCES parent ON UPDATE CASCADE) USING heap;
CREATE TABLE heap_parent (id int PRIMARY KEY) USING heap;
CREATE TABLE child_of_heap (id int REFERENCES heap_parent);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g;
INSERT INTO child SELECT g, g % 10 + 1, 'c' || g FROM generate_series(1, 30) g;
INSERT INTO heap_child VALUES (1, 1), (2, 2);
INSERT INTO heap_parent VALUES (1);
INSERT INTO child_of_heap VALUES (1);
INSERT INTO child_of_heap VALUES (2);
INSERT INTO child VALUES (100, 99, 'orphan');
DELETE FROM parent WHERE id = 3;
UPDATE parent SET id = 20 WHERE id = 2;
UPDATE parent SET name = 'renamed' WHERE id = 1;
SELECT parent_id, count(*) FROM child GROUP BY parent_id ORDER BY parent_id;
SELECT * FROM heap_child ORDER BY id;

-- Exclusion constraint.
CREATE TABLE booking (room int, during int4range, EXCLUDE USING gist (during WITH &&));
INSERT INTO booking VALUES (1, '[1,5)'), (1, '[5,10)');
INSERT INTO booking VALUES (2, '[3,6)');

-- Generated, identity, defaults, checks, domains.
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY, a posint, b int GENERATED ALWAYS AS (a * 2) STORED,
                  c text DEFAULT 'dflt', CHECK (a < 1000));
INSERT INTO gen (a) VALUES (1), (2), (999);
INSERT INTO gen (a) VALUES (1000);
INSERT INTO gen (a) VALUES (-1);
UPDATE gen SET a = 5 WHERE id = 1;
SELECT * FROM gen ORDER BY id;

-- MERGE, UPDATE ... FROM, INSERT ... SELECT from the same table.
MERGE INTO kv USING (VALUES ('a', 100), ('zz', 26)) s(k, v) ON kv.k = s.k
  WHEN MATCHED THEN UPDATE SET v = s.v
  WHEN NOT MATCHED THEN INSERT (k, v) VALUES (s.k, s.v);
UPDATE kv SET v = kv.v + p.id FROM parent p WHERE kv.k = 'k' || p.id;
INSERT INTO kv SELECT k || '_copy', v FROM kv WHERE k LIKE 'k1%';
SELECT k, v, hits FROM kv WHERE k IN ('a', 'zz', 'k1', 'k10_copy', 'k4') ORDER BY k;

-- Transactions: rollback, savepoints, serializable.
BEGIN;
INSERT INTO kv VALUES ('rolled', 1);
SAVEPOINT s1;
UPDATE kv SET v = -1 WHERE k = 'a';
ROLLBACK TO s1;
DELETE FROM kv WHERE k = 'b';
COMMIT;
BEGIN;
INSERT INTO kv VALUES ('never', 1);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT count(*) FROM kv;
UPDATE kv SET v = v + 1 WHERE k = 'a';
COMMIT;
SELECT k, v FROM kv WHERE k IN ('a', 'b', 'rolled', 'never') ORDER BY k;

-- Cursors: backward fetch, WITH HOLD.
BEGIN;
DECLARE cur SCROLL CURSOR WITH HOLD FOR SELECT id, owner FROM acct ORDER BY id;
FETCH 3 FROM cur;
FETCH BACKWARD 2 FROM cur;
COMMIT;
FETCH LAST FROM cur;
CLOSE cur;
BEGIN;
DECLARE scur SCROLL CURSOR FOR SELECT a FROM copied WHERE a <= 5;
FETCH ALL FROM scur;
FETCH BACKWARD ALL FROM scur;
COMMIT;

-- Page-at-a-time decryption (one cache per visit of a page): a scroll cursor
-- over a plain sequential scan crosses page boundaries both ways, and an
-- inner sequential scan is rescanned by a nested loop and by LATERAL ...
-- LIMIT.  Rows of one size fill pages strictly in insertion order, so the
-- results do not depend on where pages end.
CREATE TABLE pages (id int, n int, pad text, tail int);
INSERT INTO pages SELECT g, g * 7, repeat(chr(97 + g % 26), 60), -g
  FROM generate_series(1, 2000) g;
BEGIN;
DECLARE pc SCROLL CURSOR FOR SELECT id, n, tail FROM pages;
FETCH 3 FROM pc;
FETCH ABSOLUTE 700 FROM pc;
FETCH BACKWARD 3 FROM pc;
FETCH ABSOLUTE 1500 FROM pc;
FETCH RELATIVE -600 FROM pc;
FETCH LAST FROM pc;
FETCH BACKWARD 2 FROM pc;
MOVE ABSOLUTE 0 IN pc;
FETCH 2 FROM pc;
MOVE FORWARD 997 IN pc;
FETCH BACKWARD 4 FROM pc;
COMMIT;
-- the same walks reading only leading by-value columns (keystream per page,
-- values XORed from the page when asked for)
BEGIN;
DECLARE pk SCROLL CURSOR FOR SELECT id, n FROM pages;
FETCH 2 FROM pk;
FETCH ABSOLUTE 700 FROM pk;
FETCH BACKWARD 3 FROM pk;
FETCH RELATIVE -600 FROM pk;
FETCH LAST FROM pk;
FETCH BACKWARD 2 FROM pk;
MOVE ABSOLUTE 0 IN pk;
MOVE FORWARD 1499 IN pk;
FETCH 3 FROM pk;
COMMIT;
SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_material = off;
SELECT count(*), sum(p.n) FROM generate_series(1, 5) s(g) JOIN pages p ON p.id % 400 = s.g;
SELECT s.g, x.id, x.n
  FROM generate_series(1, 3) s(g),
       LATERAL (SELECT id, n FROM pages WHERE id > s.g * 600 LIMIT 2) x
  ORDER BY 1, 2;
SELECT s.g, x.id, x.n, x.tail
  FROM generate_series(1, 3) s(g),
       LATERAL (SELECT id, n, tail FROM pages WHERE id > s.g * 600 LIMIT 2) x
  ORDER BY 1, 2;
RESET enable_hashjoin; RESET enable_mergejoin; RESET enable_material;

-- The page path's fast prefix with NULLs: a null after the fixed-width
-- prefix moves nothing (the fast path applies), a null inside it does (the
-- general path).  Small tables updated through sequential scans, as TPC-B
-- does with its branches and tellers (whose filler is NULL).
CREATE TABLE tellers (tid int NOT NULL, bid int, tbalance int, filler char(84));
INSERT INTO tellers SELECT g, 1 + g / 10,
    CASE WHEN g % 17 = 0 THEN NULL ELSE g * 3 END,
    CASE WHEN g % 5 = 0 THEN 'f' || g END
  FROM generate_series(1, 600) g;
SET enable_indexscan = off; SET enable_bitmapscan = off;
SELECT count(*), count(tbalance), sum(tbalance), sum(bid), count(filler) FROM tellers;
UPDATE tellers SET tbalance = tbalance + 5 WHERE tid % 7 = 3;
UPDATE tellers SET tbalance = 1 WHERE tbalance IS NULL AND tid % 2 = 0;
UPDATE tellers SET filler = NULL WHERE tid % 10 = 0;
SELECT count(*), count(tbalance), sum(tbalance), sum(bid), count(filler), sum(tid) FILTER (WHERE filler IS NULL) FROM tellers;
SELECT tid, bid, tbalance, rtrim(filler) FROM tellers WHERE tid IN (5, 10, 17, 34, 35, 595, 600) ORDER BY tid;
-- A qualification on the first column, then later by-value columns of the
-- rows that pass: the page's keystream covers them where a tuple has them
-- all (not where tbalance is NULL, tid % 17 = 0).  Then TPC-B's one-row
-- updates one after another, each reusing the old version the executor
-- has just fetched and decrypted.
SELECT tid, bid, tbalance FROM tellers WHERE tid % 50 = 17 ORDER BY tid;
SELECT tid, tbalance, bid FROM tellers WHERE tid IN (17, 34, 51, 52, 68, 69) ORDER BY tid;
DO $$ BEGIN
  FOR i IN 1..300 LOOP
    UPDATE tellers SET tbalance = tbalance + i WHERE tid = (i * 37) % 600 + 1;
  END LOOP;
END $$;
UPDATE tellers SET bid = bid + 1 WHERE tid = 34 RETURNING tid, bid, tbalance;
UPDATE tellers SET tbalance = coalesce(tbalance, 0) - 1 WHERE tid IN (38, 51) RETURNING tid, bid, tbalance;
SELECT sum(tbalance), count(tbalance), sum(bid), sum(tid * tbalance % 1000) FROM tellers;
SELECT tid, bid, tbalance FROM tellers WHERE tid BETWEEN 30 AND 40 OR tid IN (51, 75, 112) ORDER BY tid;
RESET enable_indexscan; RESET enable_bitmapscan;

-- The page path's by-value prefix (queries that read only leading
-- fixed-width by-value columns get them XORed from the page): every width
-- (1, 2, 4, 8 bytes) and alignment padding, a prefix over several AES
-- blocks, tuples whose prefix is under two nonces after an update, under
-- three, nulls inside it, tuples older than an added column, and columns
-- past the 32 the layout covers.
CREATE TABLE byval (c "char", s int2, b int8, i int4, f float8, ok bool,
    d date, t timestamptz, note text);
INSERT INTO byval SELECT chr(65 + g % 26)::"char", (g % 300)::int2, g * 1000003::int8,
    CASE WHEN g % 41 = 0 THEN NULL ELSE g END, g / 7.0, g % 3 = 0,
    date '2020-01-01' + g, timestamptz '2020-01-01 00:00+00' + g * interval '1 hour',
    'n' || g
  FROM generate_series(1, 3000) g;
SET enable_indexscan = off; SET enable_bitmapscan = off;
SELECT count(*), sum(ascii(c::text)), sum(s), sum(b), sum(i), sum(f), count(*) FILTER (WHERE ok),
    max(d), max(t) FROM byval;
UPDATE byval SET b = -b WHERE s % 5 = 1;
UPDATE byval SET i = i + 1, ok = NOT ok WHERE s % 7 = 2;
UPDATE byval SET f = 0.5, d = d + 1, t = t + interval '1 day' WHERE s % 11 = 3;
UPDATE byval SET note = note || 'x' WHERE s % 13 = 4;
SELECT count(*), sum(s), sum(b), sum(i), sum(f), count(*) FILTER (WHERE ok),
    max(d), max(t) FROM byval;
SELECT sum(b) FILTER (WHERE i % 3 = 0), count(*) FILTER (WHERE i IS NULL) FROM byval;
SELECT sum(s) FROM byval WHERE c = 'Q';
ALTER TABLE byval ADD COLUMN later int4 DEFAULT 7;
UPDATE byval SET later = 8 WHERE s % 17 = 5;
SELECT sum(later), sum(i), sum(b) FROM byval;
SELECT c, s, b, i, f, ok, d, t, later FROM byval WHERE s IN (1, 2, 3, 4, 5, 41) ORDER BY b LIMIT 12;
CREATE TABLE wide AS SELECT g AS k1, g + 1 AS k2, g::int8 AS k3, g::int8 AS k4,
    g::int8 AS k5, g::int8 AS k6, g::int8 AS k7, g::int8 AS k8, g::int8 AS k9,
    g::int8 AS k10, g::int8 AS k11, g::int8 AS k12, g::int8 AS k13, g::int8 AS k14,
    g::int8 AS k15, g::int8 AS k16, g::int8 AS k17, g::int8 AS k18, g * 2 AS k19
  FROM generate_series(1, 1500) g;
UPDATE wide SET k2 = -k2, k18 = 0 WHERE k1 % 9 = 0;
SELECT sum(k1), sum(k2), sum(k16), sum(k17), sum(k18), sum(k19) FROM wide;
SELECT sum(k2) FROM wide WHERE k1 % 2 = 0;
SELECT sum(k17), sum(k16) FROM wide;
CREATE TABLE grown (x int4, y int8);
INSERT INTO grown SELECT g, g * 3 FROM generate_series(1, 1000) g;
ALTER TABLE grown ADD COLUMN z int2 DEFAULT 7;
INSERT INTO grown SELECT g, g * 3, g % 100 FROM generate_series(1001, 1500) g;
UPDATE grown SET z = 9 WHERE x % 10 = 0;
SELECT sum(x), sum(y), sum(z), count(*) FILTER (WHERE z = 7) FROM grown;
RESET enable_indexscan; RESET enable_bitmapscan;

-- Sequential scans count every tuple they return, whoever steps through the
-- page (cmk_heap takes the within-page steps itself).
SELECT pg_stat_force_next_flush();
SELECT relname, seq_scan, seq_tup_read FROM pg_stat_user_tables
  WHERE schemaname = :'schema' AND relname IN ('pages', 'tellers', 'byval', 'wide', 'grown') ORDER BY relname;
