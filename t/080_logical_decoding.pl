# Logical decoding never sees cmk_heap tuples, whatever the output plugin:
# with wal_level = logical and test_decoding, changes of heap tables are
# decoded, changes of cmk_heap tables (including rows written by the
# statement that created the table) are skipped, values that would trip
# type output functions (numeric, jsonb, arrays) included.  A table that
# goes back to heap is decoded again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $node = cmk_node('decoding', new_kek("$tmp/kek.pem"), conf => "wal_level = logical\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node);
$node->safe_psql('postgres', q{SELECT 'init' FROM pg_create_logical_replication_slot('s1', 'test_decoding')});

$node->safe_psql('postgres', q{
CREATE TABLE plain_t (id int PRIMARY KEY, n numeric, j jsonb) USING heap;
CREATE TABLE enc_t (id int PRIMARY KEY, n numeric, j jsonb, a int[], big text) USING cmk_heap;
ALTER TABLE enc_t REPLICA IDENTITY FULL;
INSERT INTO plain_t VALUES (1, 1.5, '{"a": 1}');
INSERT INTO enc_t VALUES (1, 1.5, '{"secret": 1}', '{1,2}', NULL), (2, 2.5, '[1,2,3]', '{3}', repeat(md5('x'), 200));
UPDATE enc_t SET n = n + 1, j = '{"secret": 2}';
DELETE FROM enc_t WHERE id = 1;
COPY enc_t (id) FROM PROGRAM 'seq 10 20';
CREATE TABLE enc_ctas USING cmk_heap AS SELECT g AS id, g::numeric AS n FROM generate_series(1, 3) g;
UPDATE plain_t SET n = 9;
});
my $changes = $node->safe_psql('postgres', q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('s1', NULL, NULL)});
like($changes, qr/table public\.plain_t: INSERT: id\[integer\]:1/, 'heap insert decoded');
like($changes, qr/table public\.plain_t: UPDATE: .*n\[numeric\]:9/, 'heap update decoded');
unlike($changes, qr/enc_t|enc_ctas/, 'no cmk_heap change reaches the output plugin (insert, update, delete, COPY, CREATE TABLE AS)');
unlike($changes, qr/secret/, 'no cmk_heap value in the decoded stream');
is($node->safe_psql('postgres', q{SELECT relrewrite = oid FROM pg_class WHERE relname = 'enc_t'}), 't',
	'cmk_heap table is marked for the reorder buffer');
is($node->safe_psql('postgres', 'SELECT count(*) FROM enc_t'), '12', 'cmk_heap table still works');

$node->safe_psql('postgres', q{ALTER TABLE enc_t SET ACCESS METHOD heap; INSERT INTO enc_t (id) VALUES (100);});
is($node->safe_psql('postgres', q{SELECT relrewrite FROM pg_class WHERE relname = 'enc_t'}), '0', 'back on heap: unmarked');
$changes = $node->safe_psql('postgres', q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('s1', NULL, NULL)});
like($changes, qr/table public\.enc_t: INSERT: id\[integer\]:100/, 'back on heap: decoded again');

$node->safe_psql('postgres', q{ALTER TABLE enc_t SET ACCESS METHOD cmk_heap; INSERT INTO enc_t (id) VALUES (101);});
$changes = $node->safe_psql('postgres', q{SELECT coalesce(string_agg(data, E'\n'), '') FROM pg_logical_slot_get_changes('s1', NULL, NULL)});
unlike($changes, qr/enc_t/, 'cmk_heap again: skipped again');
# A relation that escaped the mark (created without the library, say) is
# repaired by mark_for_decoding().
$node->safe_psql('postgres', q{SET allow_system_table_mods = on;
	UPDATE pg_class SET relrewrite = 0 WHERE relname = 'enc_t';});
is($node->safe_psql('postgres', 'SELECT cmk_storage.mark_for_decoding()'), '1', 'mark_for_decoding() repairs one relation');
$node->safe_psql('postgres', q{INSERT INTO enc_t (id) VALUES (102);});
$changes = $node->safe_psql('postgres', q{SELECT coalesce(string_agg(data, E'\n'), '') FROM pg_logical_slot_get_changes('s1', NULL, NULL)});
unlike($changes, qr/enc_t/, 'after the repair: skipped');
is($node->safe_psql('postgres', 'SELECT cmk_storage.mark_for_decoding()'), '0', 'mark_for_decoding() is idempotent');

is($node->safe_psql('postgres', 'SELECT 1'), '1', 'server alive');
$node->stop;
unlike(slurp_bytes($node->logfile), qr/terminated by signal|server process .* was terminated/, 'no backend crashed');

done_testing();
