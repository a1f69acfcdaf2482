# Logical decoding of cmk_heap tables is decrypted inside the server: the
# same workload run in a database whose tables are heap and in one whose
# tables are cmk_heap gives byte-identical test_decoding output: inserts,
# updates and deletes under every REPLICA IDENTITY, TOAST values new and
# old, COPY's multi-insert, ON CONFLICT, TRUNCATE, table rewrites (VACUUM
# FULL, ALTER COLUMN TYPE, one followed by an update in its transaction), a
# column added inside a transaction, a transaction large enough to be
# spilled to disk, two-phase PREPARE / COMMIT PREPARED / ROLLBACK PREPARED,
# streaming.  With the key revoked, decoding fails with the key's error and
# emits nothing; with the key back, the same changes come out: none is
# skipped.
use strict;
use warnings;
use File::Copy qw(move);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('decoding', $kek, conf => qq{wal_level = logical
max_prepared_transactions = 10
logical_decoding_work_mem = 64kB
cmk_storage.key_check_interval = 1
cmk_storage.key_grace_period = 2
});
$node->start;
heap_and_cmk_heap_dbs($node);

my $schema = q{
CREATE TABLE r_def (id int PRIMARY KEY, v text, n numeric, big text);
CREATE TABLE r_full (id int, v text, big text, j jsonb);
ALTER TABLE r_full REPLICA IDENTITY FULL;
CREATE TABLE r_idx (id int NOT NULL, k text NOT NULL, v text);
CREATE UNIQUE INDEX r_idx_k ON r_idx (k);
ALTER TABLE r_idx REPLICA IDENTITY USING INDEX r_idx_k;
CREATE TABLE r_none (id int PRIMARY KEY, v text);
ALTER TABLE r_none REPLICA IDENTITY NOTHING;
CREATE TABLE r_ext (id int PRIMARY KEY, big text);
ALTER TABLE r_ext ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE r_tk (k text PRIMARY KEY, v int);
};

my $workload = with_big_values(q{
INSERT INTO r_def SELECT g, 'v' || g, g * 1.5, NULL FROM generate_series(1, 5) g;
INSERT INTO r_def VALUES (6, 'six', 6, BIG('a'));
UPDATE r_def SET v = 'vv' WHERE id = 6;
UPDATE r_def SET big = BIG('b') WHERE id = 6;
UPDATE r_def SET id = 60 WHERE id = 6;
UPDATE r_def SET n = n + 1 WHERE id <= 3;
DELETE FROM r_def WHERE id IN (2, 60);
INSERT INTO r_full VALUES (1, 'one', BIG('c'), '{"secret": 1}'), (2, 'two', NULL, '[1, 2]');
UPDATE r_full SET v = 'uno' WHERE id = 1;
UPDATE r_full SET big = BIG('d'), j = '{"secret": 2}' WHERE id = 1;
DELETE FROM r_full WHERE id = 1;
UPDATE r_full SET id = 20 WHERE id = 2;
INSERT INTO r_idx VALUES (1, 'k1', 'a'), (2, 'k2', 'b');
UPDATE r_idx SET v = 'c' WHERE k = 'k1';
UPDATE r_idx SET k = 'k1x' WHERE k = 'k1';
DELETE FROM r_idx WHERE k = 'k2';
INSERT INTO r_none VALUES (1, 'x'), (2, 'y');
UPDATE r_none SET v = 'z';
DELETE FROM r_none WHERE id = 1;
INSERT INTO r_ext VALUES (1, repeat('e', 5000));
UPDATE r_ext SET big = repeat('f', 6000);
INSERT INTO r_tk VALUES (repeat('k', 3000), 1);
UPDATE r_tk SET v = 2;
UPDATE r_tk SET k = repeat('l', 3000);
DELETE FROM r_tk;
BEGIN;
INSERT INTO r_def VALUES (7, 'sub', 7, NULL);
SAVEPOINT s1;
INSERT INTO r_def VALUES (8, 'gone', 8, BIG('g'));
ROLLBACK TO s1;
INSERT INTO r_def VALUES (9, 'kept', 9, BIG('h'));
COMMIT;
INSERT INTO r_def VALUES (9, 'conflict', 0, NULL) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
INSERT INTO r_def VALUES (10, 'spec', 10, BIG('i')) ON CONFLICT (id) DO NOTHING;
COPY r_none FROM PROGRAM 'seq 100 140 | sed "s/$/\tcopied/"';
BEGIN;
ALTER TABLE r_none ADD COLUMN extra int DEFAULT 42;
INSERT INTO r_none VALUES (500, 'after add', 7);
COMMIT;
UPDATE r_none SET v = 'old row, missing column' WHERE id = 2;
BEGIN;
INSERT INTO r_def SELECT g, repeat('spill', 20), g, NULL FROM generate_series(1000, 3000) g;
UPDATE r_def SET n = 0 WHERE id BETWEEN 1000 AND 1100;
COMMIT;
TRUNCATE r_idx;
INSERT INTO r_idx VALUES (3, 'k3', 'after truncate');
VACUUM FULL r_def;
ALTER TABLE r_ext ALTER COLUMN id TYPE bigint;
INSERT INTO r_ext VALUES (7, BIG('r'));
BEGIN;
ALTER TABLE r_full ALTER COLUMN v TYPE varchar(100);
UPDATE r_full SET v = 'after rewrite' WHERE id = 20;
COMMIT;
BEGIN;
INSERT INTO r_def VALUES (20, 'prepared', 20, BIG('p'));
DELETE FROM r_def WHERE id = 1;
PREPARE TRANSACTION 'GID_p1';
COMMIT PREPARED 'GID_p1';
BEGIN;
INSERT INTO r_def VALUES (21, 'rolled back', 21, NULL);
PREPARE TRANSACTION 'GID_p2';
ROLLBACK PREPARED 'GID_p2';
});

my %out;
for my $db (qw(dh de))
{
	$node->safe_psql($db, $schema);
	$node->safe_psql($db, q{SELECT 'init' FROM pg_create_logical_replication_slot('s_} . $db . q{', 'test_decoding', false, true)});
	(my $w = $workload) =~ s/GID_/$db/g;
	$node->safe_psql($db, $w);
	$out{$db} = $node->safe_psql($db, qq{SELECT string_agg(data, E'\\n') FROM pg_logical_slot_peek_changes('s_$db', NULL, NULL,
		'include-xids', '0', 'skip-empty-xacts', '1')});
	$out{$db} =~ s/'$db(p\d)'/'$1'/g;
}
is($node->safe_psql('de', q{SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
	WHERE a.amname = 'cmk_heap' AND c.relname IN ('r_def', 'r_full', 'r_idx', 'r_none', 'r_ext', 'r_tk')}), '6',
	'the workload runs on cmk_heap tables in de');
my @lines = split /\n/, $out{dh};
cmp_ok(scalar(@lines), '>', 2000, 'heap output is substantial');
like($out{dh}, qr/PREPARE TRANSACTION 'p1'/, 'heap output has the two-phase transaction');
like($out{dh}, qr/table public\.r_tk: DELETE: k\[text\]:'l{3000}'/, 'heap output has a TOASTed old key');
like($out{dh}, qr/table public\.r_full: DELETE: id\[integer\]:1 v\[text\]:'uno' big\[text\]:'[0-9a-f]{4800}'/,
	'heap output has a TOASTed old tuple (REPLICA IDENTITY FULL)');
like($out{dh}, qr/unchanged-toast-datum/, 'heap output has an unchanged TOAST value');
if ($out{de} eq $out{dh})
{
	pass('cmk_heap test_decoding output equals heap output');
}
else
{
	fail('cmk_heap test_decoding output equals heap output');
	my @e = split /\n/, $out{de};
	for my $i (0 .. $#lines)
	{
		next if defined $e[$i] && $e[$i] eq $lines[$i];
		diag("first difference at line $i:\n heap: " . substr($lines[$i], 0, 300) .
			"\n  cmk: " . substr($e[$i] // '(none)', 0, 300));
		last;
	}
}

# Streaming: every change of a large transaction reaches stream_change.
for my $db (qw(dh de))
{
	$node->safe_psql($db, qq{SELECT pg_replication_slot_advance('s_$db', pg_current_wal_lsn())});
	$node->safe_psql($db, q{BEGIN; INSERT INTO r_none SELECT g, repeat('stream', 30) FROM generate_series(10000, 12000) g;
		UPDATE r_none SET v = 'streamed' WHERE id BETWEEN 10000 AND 10500; DELETE FROM r_none WHERE id > 11900; COMMIT;});
	$out{"s$db"} = $node->safe_psql($db, qq{SELECT count(*) FILTER (WHERE data LIKE 'streaming change%') || ' ' ||
		count(*) FILTER (WHERE data LIKE 'opening a streamed block%')
		FROM pg_logical_slot_get_changes('s_$db', NULL, NULL, 'include-xids', '0', 'stream-changes', '1')});
}
my ($nchanges, $nblocks) = split / /, $out{sde};
is($nchanges, '2602', 'cmk_heap: every change of the large transaction was streamed');
cmp_ok($nblocks, '>', 1, 'cmk_heap: in several streamed blocks');
is((split / /, $out{sdh})[0], $nchanges, 'heap streams as many changes');

# The key revoked while changes wait: decoding fails with the key's error,
# emits nothing, and skips nothing once the key is back.
$node->safe_psql('de', q{INSERT INTO r_def VALUES (777, 'marker-while-revoked', 1, NULL)});
move($kek, "$kek.away") or die;
$node->poll_query_until('de', q{SELECT state = 'unavailable' FROM cmk_storage.key_status()})
  or die 'key did not become unavailable';
my ($ret, $stdout, $stderr) = $node->psql('de',
	q{SELECT data FROM pg_logical_slot_get_changes('s_de', NULL, NULL, 'include-xids', '0')});
isnt($ret, 0, 'key revoked: decoding fails');
like($stderr, qr/cannot access encrypted relation "r_def": the data encryption key is unavailable/,
	'key revoked: the error names the relation and the key state');
is($stdout, '', 'key revoked: no output at all');
move("$kek.away", $kek) or die;
$node->poll_query_until('de', q{SELECT state = 'available' FROM cmk_storage.key_status()})
  or die 'key did not come back';
my $after = $node->safe_psql('de',
	q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('s_de', NULL, NULL, 'include-xids', '0')});
like($after, qr/table public\.r_def: INSERT: id\[integer\]:777 v\[text\]:'marker-while-revoked'/,
	'key back: the change is decoded, not skipped');

# Our messages never reach a plugin that asks for messages.
$node->safe_psql('de', qq{INSERT INTO r_ext VALUES (5, repeat('m', 5000)); UPDATE r_full SET v = 'msg' WHERE id = 20;});
my $msgs = $node->safe_psql('de',
	q{SELECT string_agg(data, E'\n') FROM pg_logical_slot_get_changes('s_de', NULL, NULL, 'include-xids', '0')});
unlike($msgs, qr/cmk_storage|message:/, 'no cmk_storage message reaches the output plugin');
like($msgs, qr/r_ext: INSERT: id\[bigint\]:5 big\[text\]:'m{5000}'/, 'TOASTed insert decoded');

is($node->safe_psql('de', 'SELECT cmk_storage.mark_for_decoding()'), '0', 'mark_for_decoding(): no legacy mark');
$node->safe_psql($_, qq{SELECT pg_drop_replication_slot('s_$_')}) for qw(dh de);
$node->stop;
unlike(slurp_bytes($node->logfile), qr/terminated by signal|server process .* was terminated/, 'no backend crashed');

done_testing();
