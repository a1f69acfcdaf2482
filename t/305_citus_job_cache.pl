# Citus intermediate results (base/pgsql_job_cache) with only
# cmk_storage.temp_file_encryption on (docs/citus.md, docs/io-layer.md,
# "stdio streams"): a coordinator that holds shards and one worker.
#
# Citus writes these files with PostgreSQL's file API, sends them to other
# nodes with COPY ... TO STDOUT (FileRead) and reads them back with COPY FROM
# a file name, which opens them with stdio (fopen, fread).  A result made and
# read on one node (create_intermediate_result, read_intermediate_result), a
# materialized CTE shipped to the nodes and a repartition join (partition
# files fetched between the nodes) run in one transaction held open while
# every node's job cache is searched: the files are there and hold no
# workload value; the results equal those of the same queries on local
# tables.  Then the same run with the setting off: the search finds the
# values in clear (it can fail), and the results are the same.  Skipped when
# Citus is not installed (scripts/citus.sh).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $probe = PostgreSQL::Test::Cluster->new('probe');
my $libdir = $probe->config_data('--pkglibdir');
plan skip_all => "Citus is not installed in $libdir (run scripts/citus.sh, or the full scripts/test.sh)"
  unless -f "$libdir/citus.so";

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my %m = map { $_ => random_marker("JC$_") } qw(ir a b);

my $conf = q{
shared_preload_libraries = 'citus,cmk_storage'
cmk_storage.temp_file_encryption = on
max_prepared_transactions = 20
citus.shard_count = 4
citus.node_conninfo = 'sslmode=disable'
};
my @nodes = map
{
	my $n = cmk_node($_, $kek, conf => $conf);
	$n->append_conf('postgresql.conf', "citus.local_hostname = '" . $n->host . "'\n");
	$n->start;
	$n;
} qw(coordinator worker);
my ($coord, $worker) = @nodes;
my $host = $coord->host;
for my $n (@nodes)
{
	like(slurp_file($n->logfile), qr/cmk_storage: temporary file encryption is on/,
		$n->name . ': temporary file encryption on');
	unlike(slurp_file($n->logfile), qr/cluster encryption is on/, $n->name . ': cluster encryption off');
	$n->safe_psql('postgres', 'CREATE EXTENSION citus');
}
my $q = sub { $coord->safe_psql('postgres', $_[0]) };
$q->("SELECT citus_set_coordinator_host('$host', " . $coord->port . ')');
$q->("SELECT citus_add_node('$host', " . $worker->port . ')');
$q->("SELECT citus_set_node_property('$host', " . $coord->port . ", 'shouldhaveshards', true)");

# Two tables joined on a column that is not their distribution column
# (a repartition join), each with a local copy on the coordinator.
$q->(qq{
CREATE TABLE rj_a (id bigint PRIMARY KEY, k int NOT NULL, v text NOT NULL);
CREATE TABLE rj_b (id bigint PRIMARY KEY, k int NOT NULL, v text NOT NULL);
SELECT create_distributed_table('rj_a', 'id');
SELECT create_distributed_table('rj_b', 'id', colocate_with => 'none');
INSERT INTO rj_a SELECT g, g % 97, '$m{a}' || g FROM generate_series(1, 2000) g;
INSERT INTO rj_b SELECT g, g % 89, '$m{b}' || g FROM generate_series(1, 2000) g;
CREATE TABLE rj_a_l AS SELECT * FROM rj_a;
CREATE TABLE rj_b_l AS SELECT * FROM rj_b;
});
is($q->(q{SELECT count(DISTINCT nodeport) FROM pg_dist_shard_placement}), '2', 'shards on both nodes');

# The queries, %1$s and %2$s the tables.
my $cte = qq{WITH c AS MATERIALIZED (SELECT id, v FROM %1\$s ORDER BY id LIMIT 700)
SELECT count(*), min(c.v), max(c.v), sum(length(b.v)) FROM %2\$s b JOIN c ON c.v = '$m{a}' || b.id};
my $rj = q{SELECT count(*), md5(string_agg(a.v || '/' || b.v, ',' ORDER BY a.id, b.id))
FROM %1$s a JOIN %2$s b ON a.k = b.k};
my $ir = qq{SELECT count(*), md5(string_agg(v, ',' ORDER BY i))
FROM read_intermediate_result('jc_ir', 'binary') AS r(i int, v text)};
my $ir_local = qq{SELECT count(*), md5(string_agg('$m{ir}' || i, ',' ORDER BY i))
FROM generate_series(1, 20000) i};

# Run the three in one transaction and hold it; return the results, the
# files of every node's job cache and the workload values found in them.
# (A repartition join fetches partitions over new node-to-node connections;
# the test nodes allow 10 connections each: at most 2 tasks per node.)
sub held_run
{
	my ($files, $hits);
	my @res = held_transaction($coord, qq{SET LOCAL citus.enable_repartition_joins TO on;
SET LOCAL citus.max_adaptive_executor_pool_size TO 2;
SELECT create_intermediate_result('jc_ir', \$\$SELECT i, '$m{ir}' || i FROM generate_series(1, 20000) i\$\$);
$ir;
} . sprintf($cte, 'rj_a', 'rj_b') . ";\n" . sprintf($rj, 'rj_a', 'rj_b') . ';',
		sub { ($files, $hits) = job_cache_search(\@nodes, values %m) });
	return (\@res, $files, $hits);
}

my ($res, $files, $hits) = held_run();
is(scalar(@$res), 4, 'encrypted: the held transaction ran the four queries') or diag(join("\n", @$res));
is($res->[0], '20000', 'encrypted: create_intermediate_result wrote 20000 rows');
is($res->[1], $q->($ir_local), 'encrypted: read_intermediate_result reads them back (COPY FROM the file, through stdio)');
is($res->[2], $q->(sprintf($cte, 'rj_a_l', 'rj_b_l')), 'encrypted: the materialized CTE equals the query on local tables');
is($res->[3], $q->(sprintf($rj, 'rj_a_l', 'rj_b_l')), 'encrypted: the repartition join equals the join of local tables');
cmp_ok(scalar(grep { m{/jc_ir\.data$} } @$files), '==', 1, 'encrypted: the intermediate result file is there while held');
cmp_ok(scalar(grep { m{/repartition_[^/]*\.data$} } @$files), '>', 0, 'encrypted: partition files are there while held');
is(scalar(@$hits), 0, 'encrypted: no workload value in any job cache file, held') or diag(join("\n", @$hits));
diag(scalar(@$files) . ' job cache files while held');
my @enc_res = @$res;

# stdio without Citus: COPY TO a file in the job cache writes it through a
# stream (fwrite), COPY FROM and pg_read_binary_file (fseeko, fread) read it
# back decrypted; on disk it holds no value and has the plaintext's size.
my $f = $coord->data_dir . '/base/pgsql_job_cache/jc_copy.data';
$q->(qq{COPY (SELECT i, '$m{ir}' || i FROM generate_series(1, 5000) i) TO '$f'});
my $disk = slurp_bytes($f);
is(length($disk), $q->(qq{SELECT sum(length(i || E'\\t' || '$m{ir}' || i) + 1) FROM generate_series(1, 5000) i}),
	'COPY TO a job cache file: the size of the plaintext');
is(index($disk, $m{ir}), -1, '... and no value in it');
is($q->(qq{CREATE TABLE jc_copy (i int, v text); COPY jc_copy FROM '$f';
SELECT count(*), md5(string_agg(v, ',' ORDER BY i)) FROM jc_copy}),
	$q->(qq{SELECT count(*), md5(string_agg('$m{ir}' || i, ',' ORDER BY i)) FROM generate_series(1, 5000) i}),
	'COPY FROM the file reads every row back');
is($q->(q{SELECT convert_from(pg_read_binary_file('base/pgsql_job_cache/jc_copy.data', 9000, 40), 'UTF8')}),
	substr($q->(qq{SELECT string_agg(i || E'\\t' || '$m{ir}' || i, E'\\n' ORDER BY i) FROM generate_series(1, 5000) i}), 9000, 40),
	'pg_read_binary_file at an offset reads the plaintext');
unlink $f;

# The same with the setting off: the values are in clear there, so the
# search above can fail; the results do not depend on the setting.
for my $n (@nodes)
{
	$n->append_conf('postgresql.conf', "cmk_storage.temp_file_encryption = off\n");
	$n->restart;
	unlike(slurp_file($n->logfile) =~ s/.*database system is shut down//sr,
		qr/temporary file encryption is on/, $n->name . ': temporary file encryption off after the restart');
}
($res, $files, $hits) = held_run();
is_deeply($res, \@enc_res, 'plain: the same results');
cmp_ok(scalar(@$hits), '>', 0, 'plain: the same search finds the values in clear (' . scalar(@$hits) . ' files)');

$_->stop for @nodes;
done_testing();
