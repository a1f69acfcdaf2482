-- cmk_heap tables are kept out of logical replication publications, by every
-- route a table can enter one; heap tables publish as usual.
SET client_min_messages = error;   -- no "wal_level is insufficient" warnings
CREATE TABLE pub_heap (id int PRIMARY KEY) USING heap;
CREATE TABLE pub_enc (id int PRIMARY KEY) USING cmk_heap;
CREATE PUBLICATION pub_ok FOR TABLE pub_heap;
CREATE PUBLICATION pub_bad FOR TABLE pub_enc;
ALTER PUBLICATION pub_ok ADD TABLE pub_enc;
CREATE PUBLICATION pub_all FOR ALL TABLES;
CREATE SCHEMA pub_s;
CREATE PUBLICATION pub_schema FOR TABLES IN SCHEMA pub_s;
CREATE TABLE pub_s.enc (id int) USING cmk_heap;
CREATE TABLE pub_s.plain (id int) USING heap;
ALTER TABLE pub_s.plain SET ACCESS METHOD cmk_heap;
ALTER TABLE pub_enc SET SCHEMA pub_s;
CREATE TABLE pub_parted (id int) PARTITION BY RANGE (id);
ALTER PUBLICATION pub_ok ADD TABLE pub_parted;
CREATE TABLE pub_parted_1 PARTITION OF pub_parted FOR VALUES FROM (1) TO (10) USING cmk_heap;
CREATE TABLE pub_parted_2 PARTITION OF pub_parted FOR VALUES FROM (10) TO (20) USING heap;
CREATE TABLE pub_detached (id int) USING cmk_heap;
ALTER TABLE pub_parted ATTACH PARTITION pub_detached FOR VALUES FROM (20) TO (30);
-- temporary and unlogged tables are never published, so they are fine
CREATE TEMP TABLE pub_tmp (id int) USING cmk_heap;
SELECT pubname, puballtables FROM pg_publication ORDER BY 1;
SELECT p.pubname, pr.prrelid::regclass FROM pg_publication p JOIN pg_publication_rel pr ON pr.prpubid = p.oid ORDER BY 1, 2;
-- with no cmk_heap table around, FOR ALL TABLES works
DROP TABLE pub_enc, pub_detached;
DROP PUBLICATION pub_ok, pub_schema;
DROP TABLE pub_parted, pub_heap;
DROP SCHEMA pub_s CASCADE;
CREATE PUBLICATION pub_all FOR ALL TABLES;
-- and then no cmk_heap table can be created
CREATE TABLE pub_late (id int) USING cmk_heap;
DROP PUBLICATION pub_all;
RESET client_min_messages;
