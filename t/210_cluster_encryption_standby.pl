# Cluster encryption with streaming replication (docs/io-layer.md): the
# walsender reads encrypted WAL in arbitrary byte ranges, the walreceiver
# writes it in arbitrary ranges (read-modify-write of the covering pages),
# redo on the standby writes encrypted pages; a promoted standby goes on
# encrypting.  Values written on the primary are found in no relation file
# or WAL segment of the standby.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");

# A new cluster with cluster encryption on from its first start.
my $primary = cmk_node('primary', $kek, init => { allows_streaming => 1, extra => ['--data-checksums'] },
	conf => "cmk_storage.cluster_encryption = on\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($primary)->{state}, 'available', 'primary has its key');

$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
like(slurp_file($standby->logfile), qr/cmk_storage: cluster encryption is on/, 'standby runs the layer');

# Rows of many sizes make the walreceiver write ranges that start and end
# anywhere in a page.
my @m = map { random_marker("SB$_") } 1 .. 6;
$primary->safe_psql('postgres', qq{
CREATE TABLE t (id int PRIMARY KEY, v text);
CREATE INDEX ON t (v);
INSERT INTO t SELECT g, '$m[0]' || repeat('z', g % 300) FROM generate_series(1, 2000) g;
});
for my $i (1 .. 40)
{
	$primary->safe_psql('postgres', "INSERT INTO t VALUES (10000 + $i, '$m[1]' || repeat('w', $i * 37))");
}
$primary->safe_psql('postgres', "UPDATE t SET v = '$m[2]' WHERE id % 7 = 0");
$primary->wait_for_catchup($standby, 'replay');
is($standby->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '$m[0]%'"), '1715',
	'the standby replays encrypted WAL');
is($standby->safe_psql('postgres', "SELECT count(*) FROM t WHERE v = '$m[2]'"), '291',
	'and reads the updated rows');

$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->wait_for_catchup($standby, 'replay');
$standby->safe_psql('postgres', 'CHECKPOINT');    # a restartpoint writes the replayed pages
my @hits;
for my $node ($primary, $standby)
{
	push @hits, map { files_containing($node->data_dir . "/$_", @m) } qw(base global pg_wal);
}
is(scalar(@hits), 0, 'no value in the relation files or WAL of primary and standby')
  or diag(join("\n", @hits));

# Promotion: the standby switches timeline (XLogFileCopy of the last
# segment through the layer) and writes on its own.
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
$standby->safe_psql('postgres', "INSERT INTO t VALUES (99999, '$m[3]'); CHECKPOINT");
is($standby->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '$m[1]%' OR v = '$m[3]'"), '35',
	'the promoted standby reads and writes');
@hits = map { files_containing($standby->data_dir . "/$_", @m) } qw(base global pg_wal);
is(scalar(@hits), 0, 'no value in the promoted standby\'s files') or diag(join("\n", @hits));
$standby->restart;
is($standby->safe_psql('postgres', "SELECT v FROM t WHERE id = 99999"), $m[3],
	'after a restart on the new timeline');

$standby->stop;
$primary->stop;
done_testing();
