# Nothing written to a cmk_heap table can be found in any file of the
# cluster: relation files, TOAST, WAL records and full-page images.  A heap
# table written alongside proves the scan would find plaintext.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('plain', $kek, init => { extra => ['--data-checksums'] },
	conf => "wal_log_hints = on\nfull_page_writes = on\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node);

# Markers: short values, long (TOAST) values, updated and deleted values.
my @short = map { random_marker("S$_") } 1 .. 20;
my @long = map { random_marker("L$_") x 200 } 1 .. 5;    # ~5 kB, incompressible-ish prefix
my @updated = map { random_marker("U$_") } 1 .. 10;
my $heap_marker = random_marker('HEAPCONTROL');

# Long values must defeat compression: append random data.
@long = map { $_ . join('', map { random_marker('') } 1 .. 200) } @long;

$node->safe_psql('postgres', q{
CREATE TABLE enc (id int PRIMARY KEY, short text, long text, n int) USING cmk_heap;
CREATE TABLE ctl (v text) USING heap;
});
my $i = 0;
for my $s (@short)
{
	$i++;
	$node->safe_psql('postgres', "INSERT INTO enc VALUES ($i, '$s', NULL, $i)");
}
for my $l (@long)
{
	$i++;
	$node->safe_psql('postgres', "INSERT INTO enc VALUES ($i, 'long', '$l', $i)");
}
# COPY path (multi-insert)
$node->safe_psql('postgres',
	"COPY enc FROM PROGRAM 'printf \"1000\\tcopied-$updated[0]\\t\\\\\\\\N\\t0\\n\"'");
$node->safe_psql('postgres', "INSERT INTO ctl VALUES ('$heap_marker')");
$node->safe_psql('postgres', 'CHECKPOINT');
# Updates after the checkpoint write full-page images.
for my $k (1 .. 9)
{
	$node->safe_psql('postgres', "UPDATE enc SET short = '$updated[$k]' WHERE id = $k");
}
$node->safe_psql('postgres', "UPDATE enc SET n = n + 1 WHERE id > 20");
$node->safe_psql('postgres', "DELETE FROM enc WHERE id = 15");
$node->safe_psql('postgres', 'VACUUM enc');
$node->safe_psql('postgres', 'CHECKPOINT');

is($node->safe_psql('postgres', "SELECT short FROM enc WHERE id = 3"), $updated[3], 'data reads back');
is($node->safe_psql('postgres', "SELECT md5(long) = md5('$long[0]') FROM enc WHERE id = 21"), 't',
	'TOAST value reads back');

my @needles = (@short, @updated, (map { substr($_, 0, 40) } @long), 'copied-');
$node->stop;
my @hits = files_containing($node->data_dir, @needles);
is(scalar(@hits), 0, 'no cmk_heap value found in any file of the cluster (relations, TOAST, WAL)')
  or diag(join("\n", @hits[0 .. ($#hits > 10 ? 10 : $#hits)]));
my @control = files_containing($node->data_dir, $heap_marker);
ok(scalar(@control) >= 1, 'the scan finds the heap control value (it would find plaintext)');
ok((grep { m{/pg_wal/} } @control), 'the heap control value is found in WAL too');

done_testing();
