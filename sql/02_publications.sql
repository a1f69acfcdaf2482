-- cmk_heap tables enter publications by every route a table can enter one,
-- like heap tables (their changes are decrypted when decoded:
-- src/am/cmkam_decode.c); a legacy decoding mark of an older release
-- (relrewrite = the relation's own OID) is cleared by publication DDL.
SET client_min_messages = error;   -- no "wal_level is insufficient" warnings
CREATE TABLE pub_heap (id int PRIMARY KEY) USING heap;
CREATE TABLE pub_enc (id int PRIMARY KEY) USING cmk_heap;
CREATE PUBLICATION pub_ok FOR TABLE pub_heap;
CREATE PUBLICATION pub_enc_only FOR TABLE pub_enc;
ALTER PUBLICATION pub_ok ADD TABLE pub_enc;
CREATE PUBLICATION pub_all FOR ALL TABLES;
CREATE SCHEMA pub_s;
CREATE PUBLICATION pub_schema FOR TABLES IN SCHEMA pub_s;
CREATE TABLE pub_s.enc (id int) USING cmk_heap;
CREATE TABLE pub_s.plain (id int) USING heap;
ALTER TABLE pub_s.plain SET ACCESS METHOD cmk_heap;
CREATE TABLE pub_parted (id int) PARTITION BY RANGE (id);
ALTER PUBLICATION pub_ok ADD TABLE pub_parted;
CREATE TABLE pub_parted_1 PARTITION OF pub_parted FOR VALUES FROM (1) TO (10) USING cmk_heap;
CREATE TABLE pub_detached (id int) USING cmk_heap;
ALTER TABLE pub_parted ATTACH PARTITION pub_detached FOR VALUES FROM (20) TO (30);
SELECT pubname, puballtables FROM pg_publication ORDER BY 1;
SELECT p.pubname, pr.prrelid::regclass FROM pg_publication p JOIN pg_publication_rel pr ON pr.prpubid = p.oid ORDER BY 1, 2;
SELECT pubname, schemaname, tablename FROM pg_publication_tables WHERE pubname <> 'pub_all' ORDER BY 1, 2, 3;
-- no cmk_heap relation carries a decoding mark
SELECT count(*) FROM pg_class WHERE relrewrite <> 0;
-- a legacy mark is cleared by the next publication statement
SET allow_system_table_mods = on;
UPDATE pg_class SET relrewrite = oid WHERE relname = 'pub_enc';
RESET allow_system_table_mods;
ALTER PUBLICATION pub_ok DROP TABLE pub_enc;
SELECT relname, relrewrite FROM pg_class WHERE relname = 'pub_enc';
-- and by mark_for_decoding()
SET allow_system_table_mods = on;
UPDATE pg_class SET relrewrite = oid WHERE relname IN ('pub_enc', 'pub_detached');
RESET allow_system_table_mods;
SELECT cmk_storage.mark_for_decoding();
SELECT cmk_storage.mark_for_decoding();
DROP PUBLICATION pub_ok, pub_enc_only, pub_all, pub_schema;
DROP TABLE pub_enc, pub_parted, pub_heap;
DROP SCHEMA pub_s CASCADE;
RESET client_min_messages;
