# A subscriber of a publication of cmk_heap tables ends identical to a
# subscriber of the same publication of heap tables: initial table sync,
# then inserts, updates and deletes under REPLICA IDENTITY DEFAULT, FULL and
# USING INDEX, TOAST values, COPY, a transaction large enough to be streamed
# (streaming = on) and prepared transactions (two_phase = true), and
# TRUNCATE.  The subscriber's own tables are cmk_heap too (the apply worker
# writes and looks rows up through the access method).  Neither the
# publisher's WAL nor the walsender sees the key leave the server: the
# subscriber has a key of its own.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $pub = cmk_node('pub', new_kek("$tmp/kek_pub.pem"), conf => qq{wal_level = logical
max_prepared_transactions = 10
logical_decoding_work_mem = 64kB
max_wal_senders = 10
max_replication_slots = 10
});
my $sub = cmk_node('sub', new_kek("$tmp/kek_sub.pem"), conf => qq{max_prepared_transactions = 10
max_logical_replication_workers = 8
max_worker_processes = 16
});
$_->start for ($pub, $sub);
heap_and_cmk_heap_dbs($_) for ($pub, $sub);

my $schema = q{
CREATE TABLE r_def (id int PRIMARY KEY, v text, n numeric, big text);
CREATE TABLE r_full (id int, v text, big text, j jsonb);
ALTER TABLE r_full REPLICA IDENTITY FULL;
CREATE TABLE r_idx (id int NOT NULL, k text NOT NULL, v text);
CREATE UNIQUE INDEX r_idx_k ON r_idx (k);
ALTER TABLE r_idx REPLICA IDENTITY USING INDEX r_idx_k;
CREATE TABLE r_ext (id int PRIMARY KEY, big text);
ALTER TABLE r_ext ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE r_tk (k text PRIMARY KEY, v int);
};
my @tables = qw(r_def r_full r_idx r_ext r_tk);

my $initial = with_big_values(q{
INSERT INTO r_def SELECT g, 'initial ' || g, g, CASE WHEN g % 10 = 0 THEN BIG('z') END FROM generate_series(1, 200) g;
INSERT INTO r_full VALUES (100, 'initial', BIG('y'), '{"secret": 0}');
INSERT INTO r_idx VALUES (100, 'k100', 'initial');
INSERT INTO r_ext VALUES (100, repeat('x', 7000));
});

my $workload = with_big_values(q{
INSERT INTO r_def VALUES (1006, 'six', 6, BIG('a'));
UPDATE r_def SET v = 'vv' WHERE id = 1006;
UPDATE r_def SET big = BIG('b') WHERE id = 1006;
UPDATE r_def SET id = 1060 WHERE id = 1006;
UPDATE r_def SET n = n + 1 WHERE id <= 30;
UPDATE r_def SET v = 'toast kept' WHERE id = 10;
DELETE FROM r_def WHERE id IN (2, 20, 1060);
INSERT INTO r_full VALUES (1, 'one', BIG('c'), '{"secret": 1}'), (2, 'two', NULL, '[1, 2]');
UPDATE r_full SET v = 'uno' WHERE id = 1;
UPDATE r_full SET big = BIG('d'), j = '{"secret": 2}' WHERE id = 1;
UPDATE r_full SET v = 'initial changed' WHERE id = 100;
DELETE FROM r_full WHERE id = 1;
UPDATE r_full SET id = 20 WHERE id = 2;
INSERT INTO r_idx VALUES (1, 'k1', 'a'), (2, 'k2', 'b');
UPDATE r_idx SET v = 'c' WHERE k = 'k1';
UPDATE r_idx SET k = 'k1x' WHERE k = 'k1';
DELETE FROM r_idx WHERE k = 'k2';
INSERT INTO r_ext VALUES (1, repeat('e', 5000));
UPDATE r_ext SET big = repeat('f', 6000) WHERE id = 1;
UPDATE r_ext SET id = 101 WHERE id = 100;
INSERT INTO r_tk VALUES (repeat('k', 3000), 1), ('short', 2);
UPDATE r_tk SET v = 3;
UPDATE r_tk SET k = repeat('l', 3000) WHERE v = 3 AND k LIKE 'k%';
DELETE FROM r_tk WHERE k = 'short';
INSERT INTO r_def VALUES (9, 'conflict', 0, NULL) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
COPY r_idx FROM PROGRAM 'seq 200 260 | sed "s/.*/&\tcopy&\tcopied/"';
BEGIN;
INSERT INTO r_def SELECT g, repeat('stream', 20), g, CASE WHEN g % 500 = 0 THEN BIG('s') END FROM generate_series(2000, 5000) g;
UPDATE r_def SET n = 0 WHERE id BETWEEN 2000 AND 2300;
DELETE FROM r_def WHERE id BETWEEN 4900 AND 5000;
UPDATE r_full SET j = '{"streamed": true}' WHERE id = 100;
COMMIT;
BEGIN;
INSERT INTO r_def VALUES (6000, 'prepared', 1, BIG('p'));
UPDATE r_idx SET v = 'prepared' WHERE k = 'k100';
DELETE FROM r_def WHERE id = 1;
PREPARE TRANSACTION 'GID_p1';
COMMIT PREPARED 'GID_p1';
BEGIN;
INSERT INTO r_def VALUES (6001, 'rolled back', 1, NULL);
PREPARE TRANSACTION 'GID_p2';
ROLLBACK PREPARED 'GID_p2';
BEGIN;
INSERT INTO r_def SELECT g, repeat('streamprep', 20), g, NULL FROM generate_series(7000, 9000) g;
DELETE FROM r_full WHERE id = 20;
PREPARE TRANSACTION 'GID_p3';
COMMIT PREPARED 'GID_p3';
});

my $pubconn = $pub->connstr;
for my $db (qw(dh de))
{
	$pub->safe_psql($db, $schema);
	$sub->safe_psql($db, $schema);
	$pub->safe_psql($db, $initial);
	$pub->safe_psql($db, 'CREATE PUBLICATION p FOR TABLE ' . join(', ', @tables));
	$sub->safe_psql($db, "CREATE SUBSCRIPTION s_$db CONNECTION '$pubconn dbname=$db' PUBLICATION p
		WITH (streaming = on, two_phase = true)");
}
for my $db (qw(dh de))
{
	$sub->poll_query_until($db, q{SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')})
	  or die "initial sync of $db did not finish";
	$sub->poll_query_until($db, qq{SELECT subtwophasestate = 'e' FROM pg_subscription WHERE subname = 's_$db'})
	  or die "two-phase not enabled for $db";
}

sub contents
{
	my ($node, $db) = @_;
	return join "\n", map {
		$_ . ': ' . $node->safe_psql($db, qq{SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM $_ t})
	} @tables;
}

is(contents($sub, 'de'), contents($pub, 'de'), 'initial sync: cmk_heap subscriber equals its publisher');
is(contents($sub, 'de'), contents($sub, 'dh'), 'initial sync: equals the heap subscriber');

for my $db (qw(dh de))
{
	(my $w = $workload) =~ s/GID_/$db/g;
	$pub->safe_psql($db, $w);
	$pub->wait_for_catchup("s_$db");
}
ok($pub->poll_query_until('de', q{SELECT stream_txns > 0 FROM pg_stat_replication_slots WHERE slot_name = 's_de'}),
	'cmk_heap publication: a transaction was streamed');
like(contents($pub, 'de'), qr/r_def: 5099 /, 'publisher has the workload');
is(contents($sub, 'de'), contents($pub, 'de'), 'after the workload: cmk_heap subscriber equals its publisher');
is(contents($sub, 'de'), contents($sub, 'dh'), 'after the workload: equals the heap subscriber');
is($sub->safe_psql('de', q{SELECT v FROM r_def WHERE id = 10}), 'toast kept', 'update next to an unchanged TOAST value');
is($sub->safe_psql('de', q{SELECT length(big) FROM r_def WHERE id = 10}), '4800', 'the unchanged TOAST value kept');
is($sub->safe_psql('de', q{SELECT count(*) FROM pg_prepared_xacts}), '0', 'no prepared transaction left on the subscriber');

# Nothing went wrong on the way.
for my $n ($pub, $sub)
{
	unlike(slurp_bytes($n->logfile), qr/ERROR|terminated by signal/, $n->name . ': no error in the log');
}
$sub->safe_psql($_, "DROP SUBSCRIPTION s_$_") for qw(dh de);
$_->stop for ($sub, $pub);

done_testing();
