# Every committed row survives an immediate shutdown, and a streaming
# standby built with pg_basebackup reads the same data with the same key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $primary = cmk_node('primary', $kek, init => { allows_streaming => 1 });
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($primary);

my $digest = q{SELECT count(*), sum(id), md5(string_agg(id || ':' || coalesce(v, '') || ':' || md5(coalesce(big, '')), ',' ORDER BY id)) FROM t};

$primary->safe_psql('postgres', q{
CREATE TABLE t (id int PRIMARY KEY, v text, big text) USING cmk_heap;
CREATE INDEX t_v ON t (v);
});

# Many small committed transactions, some with TOAST, updates and deletes,
# then a crash in the middle of an uncommitted one.
for my $batch (1 .. 20)
{
	my $lo = ($batch - 1) * 50 + 1;
	my $hi = $batch * 50;
	$primary->safe_psql('postgres', qq{
INSERT INTO t SELECT g, 'v' || g, CASE WHEN g % 10 = 0 THEN repeat(md5(g::text), 100) END
  FROM generate_series($lo, $hi) g;
UPDATE t SET v = v || '+' WHERE id BETWEEN $lo AND $hi AND id % 3 = 0;
DELETE FROM t WHERE id = $lo;
});
}
my $before = $primary->safe_psql('postgres', $digest);
my $bg = $primary->background_psql('postgres');
$bg->query_safe('BEGIN');
$bg->query_safe("INSERT INTO t SELECT g, 'uncommitted', NULL FROM generate_series(100000, 100100) g");
$primary->stop('immediate');
$bg->quit;
$primary->start;
wait_key_settled($primary);
is($primary->safe_psql('postgres', $digest), $before, 'after crash: every committed row, nothing uncommitted');
is($primary->safe_psql('postgres', q{SET enable_seqscan = off; SELECT count(*) FROM t WHERE v LIKE 'v%'}),
	$primary->safe_psql('postgres', q{SET enable_indexscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM t WHERE v LIKE 'v%'}),
	'after crash: index and table agree');

# --- streaming standby from pg_basebackup ------------------------------------------
$primary->backup('bb');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bb', has_streaming => 1);
$standby->start;
ok(-f $standby->data_dir . '/cmk_storage/control', 'pg_basebackup carried the control file');
$standby->safe_psql('postgres', 'SELECT 1');
is(wait_key_settled($standby)->{state}, 'available', 'standby unwrapped the same key');
is(key_status($standby)->{dek_id}, key_status($primary)->{dek_id}, 'standby has the primary\'s DEK');

$primary->safe_psql('postgres', q{
INSERT INTO t SELECT g, 'after backup', repeat(md5(g::text), 200) FROM generate_series(5000, 5100) g;
UPDATE t SET v = 'changed' WHERE id % 7 = 0;
});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $digest), $primary->safe_psql('postgres', $digest),
	'standby reads the same data as the primary');
is($standby->safe_psql('postgres', q{SET enable_seqscan = off; SELECT count(*) FROM t WHERE v = 'changed'}),
	$primary->safe_psql('postgres', q{SELECT count(*) FROM t WHERE v = 'changed'}),
	'standby index scans agree');

# A nonce epoch reaches the standby through WAL: every start registers its own
# epoch on its first write, so rows the restarted primary writes name an epoch
# the standby's copy of nonce_epochs does not have until redo writes it.
my $epochs = q{SELECT nonce_epochs FROM cmk_storage.status};
my $n_before = $primary->safe_psql('postgres', $epochs);
$primary->restart;
wait_key_settled($primary);
$primary->safe_psql('postgres', q{
INSERT INTO t SELECT g, 'new epoch', repeat(md5(g::text), 200) FROM generate_series(6000, 6100) g;
UPDATE t SET v = 'epoch ' || id WHERE id % 11 = 0;
});
is($primary->safe_psql('postgres', $epochs), $n_before + 1, 'a restart registers one new nonce epoch on its first write');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $digest), $primary->safe_psql('postgres', $digest),
	'standby reads rows of an epoch it learned from WAL');
ok(slurp_bytes($standby->data_dir . '/cmk_storage/nonce_epochs') eq
	  slurp_bytes($primary->data_dir . '/cmk_storage/nonce_epochs'), 'standby: redo wrote the primary\'s epoch file');
$standby->restart;
wait_key_settled($standby);
is($standby->safe_psql('postgres', $digest), $primary->safe_psql('postgres', $digest),
	'standby after a restart: epochs read back from its file');

# A standby without the control file never makes a key of its own.
my $orphan = PostgreSQL::Test::Cluster->new('orphan');
$orphan->init_from_backup($primary, 'bb', has_streaming => 1);
File::Path::rmtree($orphan->data_dir . '/cmk_storage');
$orphan->start;
$orphan->poll_query_until('postgres', q{SELECT state = 'unavailable' FROM cmk_storage.key_status()})
  or die;
like($orphan->safe_psql('postgres', 'SELECT reason FROM cmk_storage.status'),
	qr/standby or in archive recovery and has no cmk_storage control file/,
	'standby without control file: refuses to create a key');
ok(!-e $orphan->data_dir . '/cmk_storage', 'standby without control file: none created');
$orphan->stop;

done_testing();
