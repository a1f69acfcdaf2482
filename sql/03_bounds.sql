-- Size bounds are checked before anything is encrypted (issue 22, item 5):
-- a value that can never be stored gets heap's "row is too big", not a
-- keystream overlap in memory (a region's block counter has 16 bits: 1 MiB).
CREATE TABLE bounds (id int, v text) USING cmk_heap;
ALTER TABLE bounds ALTER v SET STORAGE PLAIN;
-- over 1 MiB inline: INSERT, COPY-style multi-insert and UPDATE
INSERT INTO bounds VALUES (1, repeat('x', 1100000));
INSERT INTO bounds SELECT g, repeat('y', 1048576 + g) FROM generate_series(1, 2) g;
\getenv abs_builddir PG_ABS_BUILDDIR
\set copyfile :abs_builddir '/results/03_bounds.data'
COPY (SELECT 4, repeat('c', 1100000)) TO :'copyfile';
COPY bounds FROM :'copyfile';
COPY (SELECT WHERE false) TO :'copyfile';
-- just over a page, and the largest row that fits
INSERT INTO bounds VALUES (2, repeat('z', 8200));
INSERT INTO bounds VALUES (3, repeat('z', 8120));
SELECT id, length(v) FROM bounds ORDER BY id;
UPDATE bounds SET v = repeat('w', 1100000) WHERE id = 3;
UPDATE bounds SET v = v || 'more' WHERE id = 3;
SELECT id, length(v) FROM bounds ORDER BY id;
-- the same with heap, for comparison (sizes differ by the trailer)
CREATE TABLE bounds_heap (id int, v text) USING heap;
ALTER TABLE bounds_heap ALTER v SET STORAGE PLAIN;
INSERT INTO bounds_heap VALUES (1, repeat('x', 1100000));
DROP TABLE bounds, bounds_heap;
