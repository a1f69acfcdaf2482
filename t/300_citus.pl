# Citus on clusters with cluster encryption (docs/citus.md): a coordinator
# and two workers, each with its own DEK under one KEK and
# cmk_storage.cluster_encryption = on.  Under concurrent writes: a shard move
# and a shard split in their default (logical) mode,
# create_distributed_table_concurrently, citus_rebalance_start, a third
# worker and a rebalance onto it.  Then every committed row is present exactly
# once with its value, the new shards' pages are encrypted, and no node's
# relation files or WAL hold a written value.  cmk_heap tables: distributed
# and reference tables, block_writes and logical (default) moves work: the
# server decrypts cmk_heap changes for Citus's publication
# (docs/logical-decoding.md).  Intermediate results (a materialized CTE, a
# repartition join) hold no value in any node's base/pgsql_job_cache and give
# the results of the same queries on local tables.  Item 3:
# cmk_storage.cluster_key_status() reports every node's key; a revoked key on
# one worker reaches the coordinator's client naming the worker, not the key
# file.  Skipped when Citus is not installed (scripts/citus.sh installs it;
# the full scripts/test.sh run does).
use strict;
use warnings;
use File::Copy;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CmkTest;

my $probe = PostgreSQL::Test::Cluster->new('probe');
my $libdir = $probe->config_data('--pkglibdir');
plan skip_all => "Citus is not installed in $libdir (run scripts/citus.sh, or the full scripts/test.sh)"
  unless -f "$libdir/citus.so";

my $t_start = time;
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
# worker2 reads the same KEK from its own copy of the file, as a worker on
# another host would; the test revokes it there alone.
my $kek_w2 = "$tmp/kek-worker2.pem";
copy($kek, $kek_w2) or die;
chmod 0600, $kek_w2;

# Citus must be the first preloaded library (it refuses to start otherwise);
# cmk_storage only needs to be preloaded, at any position, for cluster
# encryption to interpose before the postmaster forks.
my $conf = q{
shared_preload_libraries = 'citus,cmk_storage'
cmk_storage.cluster_encryption = on
max_prepared_transactions = 100
max_wal_senders = 20
max_replication_slots = 20
max_worker_processes = 20
# a repartition join fetches partitions over new worker-to-worker
# connections, besides Citus's own (the test default is 10)
max_connections = 40
citus.shard_count = 4
citus.node_conninfo = 'sslmode=disable'
citus.background_task_queue_interval = '500ms'
# PostgreSQL 15.20 admits only the listed output plugins; Citus's shard
# splits and create_distributed_table_concurrently decode with its own.
output_plugin_libraries = 'pgoutput, test_decoding, citus'
};

sub citus_node
{
	my ($name, $key) = @_;
	my $n = cmk_node($name, $key, init => { allows_streaming => 'logical' }, conf => $conf);
	# The nodes listen on a Unix socket directory: Citus names a node by it,
	# and connects to itself through it during shard moves.
	$n->append_conf('postgresql.conf', "citus.local_hostname = '" . $n->host . "'\n");
	return $n;
}

# --- the load order ---------------------------------------------------------------
my $coord = citus_node('coordinator', $kek);
$coord->append_conf('postgresql.conf', "shared_preload_libraries = 'cmk_storage,citus'\n");
my $ret = $coord->start(fail_ok => 1);
ok(!$ret, 'cmk_storage before citus in shared_preload_libraries: the server does not start');
like(slurp_file($coord->logfile), qr/Citus has to be loaded first/,
	'... and Citus says why');
$coord->append_conf('postgresql.conf', "shared_preload_libraries = 'citus,cmk_storage'\n");
$coord->start;

my $w1 = citus_node('worker1', $kek);
my $w2 = citus_node('worker2', $kek_w2);
my $w3 = citus_node('worker3', $kek);
my @workers = ($w1, $w2, $w3);
$_->start for ($w1, $w2);

# Per node, before citus_add_node: the library preloaded with the key
# configured (each node created its own DEK at its first start), then both
# extensions.
for my $n ($coord, $w1, $w2)
{
	like(slurp_file($n->logfile), qr/cmk_storage: cluster encryption is on/, $n->name . ': cluster encryption on');
	$n->safe_psql('postgres', 'CREATE EXTENSION citus; CREATE EXTENSION cmk_storage');
}
my $host = $coord->host;
$coord->safe_psql('postgres', "SELECT citus_set_coordinator_host('$host', " . $coord->port . ')');
$coord->safe_psql('postgres', "SELECT citus_add_node('$host', " . $_->port . ')') for ($w1, $w2);
is($coord->safe_psql('postgres', 'SELECT count(*) FROM pg_dist_node WHERE isactive'), '3',
	'coordinator and two workers');

# --- the workload --------------------------------------------------------------------
# Every value carries a random marker that nothing else contains: the greps
# at the end look for them.
my %m = map { $_ => random_marker("CIT$_") } qw(ev det ref late wev wdet wlate sec sref);
$coord->safe_psql('postgres', qq{
CREATE TABLE events (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE details (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE ref (id int PRIMARY KEY, v text NOT NULL);
CREATE TABLE late (id bigint PRIMARY KEY, v text NOT NULL);
SELECT create_distributed_table('events', 'id');
SELECT create_distributed_table('details', 'id', colocate_with => 'events');
SELECT create_reference_table('ref');
INSERT INTO events SELECT g, '$m{ev}' || g FROM generate_series(1, 2000) g;
INSERT INTO details SELECT g, '$m{det}' || g FROM generate_series(1, 2000) g;
INSERT INTO ref SELECT g, '$m{ref}' || g FROM generate_series(1, 100) g;
INSERT INTO late SELECT g, '$m{late}' || g FROM generate_series(1, 2000) g;
});

# The concurrent writer: batches of single-row INSERTs (each its own
# transaction) with known ids; a row counts as committed when its RETURNING
# line came back (a constant and the id: Citus allows only immutable
# expressions there).  It runs until the stop file exists.
my $stop = "$tmp/writer.stop";
my $wout = "$tmp/writer.out";
my $werr = "$tmp/writer.err";
my $psql = join(' ', 'psql', '-X', '-A', '-t', '-q', '-h', $host, '-p', $coord->port, 'postgres');
my $writer_sh = <<"SH";
k=100000
while [ ! -e '$stop' ]; do
  for i in \$(seq \$k \$((k + 49))); do
    echo "INSERT INTO events VALUES (\$i, '$m{wev}' || \$i) RETURNING 'e', id;"
    echo "INSERT INTO details VALUES (\$i, '$m{wdet}' || \$i) RETURNING 'd', id;"
    echo "INSERT INTO late VALUES (\$i, '$m{wlate}' || \$i) RETURNING 'l', id;"
  done | $psql >> '$wout' 2>> '$werr'
  [ \$? -eq 2 ] && break    # the connection failed: the server is gone
  k=\$((k + 50))
done
SH
my $writer = IPC::Run::start([ 'bash', '-c', $writer_sh ]);
END { spew_bytes($stop, '') if $stop && -d $tmp; $writer->kill_kill if $writer; }
my $committed = sub {
	return 0 unless -e $wout;
	my $n = () = slurp_file($wout) =~ /^e\|/mg;
	return $n;
};
# Let the writer commit some rows before each operation, so that every
# operation overlaps writes (a row count, not a time).
my $wait_writes = sub {
	my $target = $committed->() + 100;
	my $deadline = time + 120;
	sleep 0.2 while $committed->() < $target && !-s $werr && time < $deadline;
};
$wait_writes->();

my $q = sub { $coord->safe_psql('postgres', $_[0]) };
my $nodeid = sub { $q->("SELECT nodeid FROM pg_dist_node WHERE nodeport = " . $_[0]->port) };

# A shard move in the default mode (logical replication).
my ($shard, $port) = split /\|/, $q->(q{
SELECT s.shardid, p.nodeport FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
 WHERE s.logicalrelid = 'events'::regclass ORDER BY s.shardid LIMIT 1});
my ($from, $to) = $port == $w1->port ? ($w1, $w2) : ($w2, $w1);
my ($rc, $out, $err) = $coord->psql('postgres',
	"SELECT citus_move_shard_placement($shard, '$host', " . $from->port . ", '$host', " . $to->port . ')');
is($rc, 0, 'citus_move_shard_placement (default mode) under writes') or diag($err);
is($q->("SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = $shard"), $to->port, '... the shard moved');
$wait_writes->();

# A split in the default mode, both halves on the same worker: with the
# move, that leaves the workers unbalanced for the rebalancer below.
my ($minv, $maxv) = split /\|/, $q->("SELECT shardminvalue, shardmaxvalue FROM pg_dist_shard WHERE shardid = $shard");
my $mid = int(($minv + $maxv) / 2);
($rc, $out, $err) = $coord->psql('postgres', "SELECT citus_split_shard_by_split_points($shard, ARRAY['$mid'], ARRAY["
	  . $nodeid->($to) . ', ' . $nodeid->($to) . '])');
is($rc, 0, 'citus_split_shard_by_split_points (default mode) under writes') or diag($err);
is($q->("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'events'::regclass"), '5', '... events has 5 shards');
$wait_writes->();

# A table that takes writes becomes distributed without blocking them.
($rc, $out, $err) = $coord->psql('postgres',
	"SELECT create_distributed_table_concurrently('late', 'id', colocate_with => 'none')");
is($rc, 0, 'create_distributed_table_concurrently under writes') or diag($err);
$wait_writes->();

# The background rebalancer, then a third worker and a rebalance onto it.
my $rebalance = sub {
	my ($name) = @_;
	my ($rc, $job, $err) = $coord->psql('postgres', 'SELECT citus_rebalance_start()');
	is($rc, 0, "$name: citus_rebalance_start") or diag($err);
	like($job, qr/^\d+$/, "$name: a rebalance job was scheduled");
	($rc, my $out, $err) = $coord->psql('postgres', 'SELECT citus_rebalance_wait()');
	is($rc, 0, "$name: citus_rebalance_wait") or diag($err);
	is($q->("SELECT state FROM pg_dist_background_job WHERE job_id = 0$job"), 'finished', "$name: the job finished");
	cmp_ok($q->("SELECT count(*) FROM pg_dist_background_task WHERE job_id = 0$job AND status = 'done'"), '>', 0,
		"$name: it moved shards");
};
$rebalance->('two workers');
$wait_writes->();

$w3->start;
like(slurp_file($w3->logfile), qr/cmk_storage: cluster encryption is on/, 'worker3: cluster encryption on');
$w3->safe_psql('postgres', 'CREATE EXTENSION citus; CREATE EXTENSION cmk_storage');
$q->("SELECT citus_add_node('$host', " . $w3->port . ')');
$rebalance->('third worker');
cmp_ok($q->("SELECT count(*) FROM pg_dist_shard_placement WHERE nodeport = " . $w3->port), '>', 0,
	'the rebalance moved shards to worker3');
$wait_writes->();

# --- stop the writer; compare every row with what committed --------------------------
spew_bytes($stop, '');
$writer->finish;
undef $writer;
my %got;
for (split /\n/, slurp_file($wout))
{
	$got{$1}{$2} = 1 if /^([edl])\|(\d+)$/;
}
my @errors = -s $werr ? split(/\n/, slurp_file($werr)) : ();
is(scalar(@errors), 0, 'the concurrent writer saw no error') or diag(join("\n", @errors[ 0 .. ($#errors < 4 ? $#errors : 4) ]));
diag(sprintf('concurrent writer: %d events, %d details, %d late rows committed',
	map { scalar keys %{ $got{$_} // {} } } qw(e d l)));

for my $t ([ 'events', 'e', 'ev', 'wev' ], [ 'details', 'd', 'det', 'wdet' ], [ 'late', 'l', 'late', 'wlate' ])
{
	my ($table, $tag, $pre, $wpre) = @$t;
	my %expect = map { $_ => "$m{$pre}$_" } 1 .. 2000;
	$expect{$_} = "$m{$wpre}$_" for keys %{ $got{$tag} // {} };
	my %seen;
	my ($dups, $wrong) = (0, 0);
	for (split /\n/, $q->("SELECT id, v FROM $table"))
	{
		my ($id, $v) = split /\|/, $_, 2;
		$dups++ if $seen{$id}++;
		$wrong++ unless defined $expect{$id} && $expect{$id} eq $v;
	}
	my $missing = grep { !$seen{$_} } keys %expect;
	is("$missing missing, $dups duplicated, $wrong unexpected or different",
		'0 missing, 0 duplicated, 0 unexpected or different',
		"$table: every committed row exactly once with its value (" . scalar(keys %expect) . ' rows)');
}
is($q->('SELECT count(*), min(v), max(v) FROM ref'), "100|$m{ref}1|$m{ref}99", 'ref: intact');
for my $w (@workers)
{
	is($w->safe_psql('postgres', 'SELECT count(*) FROM ref'), '100', $w->name . ': has the reference table');
}

# --- cmk_heap tables ------------------------------------------------------------------
$q->(qq{
CREATE TABLE secrets (id bigint PRIMARY KEY, v text NOT NULL) USING cmk_heap;
SELECT create_distributed_table('secrets', 'id', colocate_with => 'none');
INSERT INTO secrets SELECT g, '$m{sec}' || g FROM generate_series(1, 1000) g;
CREATE TABLE sref (id int PRIMARY KEY, v text NOT NULL) USING cmk_heap;
SELECT create_reference_table('sref');
INSERT INTO sref SELECT g, '$m{sref}' || g FROM generate_series(1, 100) g;
});
is($q->("SELECT count(*), count(DISTINCT s.v) FROM secrets s JOIN sref r ON r.id = s.id % 100 + 1"),
	'1000|1000', 'cmk_heap: distributed and reference tables, a join through the coordinator');
is($q->(q{SELECT count(*) FROM run_command_on_shards('secrets',
	$$SELECT cmk_storage.is_encrypted('%s')$$) WHERE result = 't'}), '4', 'cmk_heap: every shard is cmk_heap');
($shard, $port) = split /\|/, $q->(q{
SELECT s.shardid, p.nodeport FROM pg_dist_shard s JOIN pg_dist_shard_placement p USING (shardid)
 WHERE s.logicalrelid = 'secrets'::regclass ORDER BY s.shardid LIMIT 1});
($from) = grep { $_->port == $port } @workers;
($to) = grep { $_->port != $port } @workers;
($rc, $out, $err) = $coord->psql('postgres', "SELECT citus_move_shard_placement($shard, '$host', $port, '$host', "
	  . $to->port . ", shard_transfer_mode => 'block_writes')");
is($rc, 0, 'cmk_heap: block_writes shard move') or diag($err);
($rc, $out, $err) = $coord->psql('postgres', "SELECT citus_move_shard_placement($shard, '$host', " . $to->port
	  . ", '$host', $port)");
is($rc, 0, 'cmk_heap: shard move in the default (logical) mode') or diag($err);
is($q->("SELECT count(*), min(id), max(id), count(DISTINCT v) FROM secrets"), '1000|1|1000|1000',
	'cmk_heap: rows intact after the moves');

# --- item 3: every node's key state, and a key fault on one worker ---------------------
$q->('CREATE ROLE keyadmin LOGIN; GRANT cmk_key_admin TO keyadmin; CREATE ROLE app LOGIN');
$q->('GRANT SELECT ON secrets TO app');
my $cks = q{SELECT nodeport, state, kek_id, dek_id, cluster_encryption FROM cmk_storage.cluster_key_status() ORDER BY nodeport};
my @rows = map { [ split /\|/ ] } split /\n/, $coord->safe_psql('postgres', "SET ROLE keyadmin; $cks");
is(scalar @rows, 4, 'cluster_key_status: one row per node');
my %dek;
for my $n ($coord, @workers)
{
	my ($r) = grep { $_->[0] == $n->port } @rows;
	my $local = key_status($n);
	is_deeply($r, [ $n->port, 'available', $local->{kek_id}, $local->{dek_id}, 't' ],
		$n->name . ': cluster_key_status matches the node\'s own status');
	$dek{ $local->{dek_id} } = 1;
}
is(scalar(keys %dek), 4, 'each node has its own DEK');
is(scalar(keys %{ { map { $_->[2] => 1 } @rows } }), 1, 'one KEK for all nodes');
my $rows_kek = $rows[0][2];
($rc, $out, $err) = $coord->psql('postgres', "SET ROLE app; $cks");
like($err, qr/permission denied for function cluster_key_status/, 'cluster_key_status: only for cmk_key_admin');

# Revoke the key on worker2 only.  With cluster encryption on, the revoked
# node closes to clients (docs/operations.md, "Revocation with cluster
# encryption"): the coordinator's queries that need it fail naming the node,
# never its key file, and it heals by itself.
move($kek_w2, "$kek_w2.away") or die;
$w2->psql('postgres', 'SELECT cmk_storage.check_key()');
my $refused = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	my ($r) = $w2->psql('postgres', 'SELECT 1');
	if ($r != 0) { $refused = 1; last; }
	select(undef, undef, undef, 0.1);
}
ok($refused, 'revoked on worker2: it refuses connections');
($rc, $out, $err) = $coord->psql('postgres', 'SET ROLE app; SELECT count(*) FROM secrets');
isnt($rc, 0, 'revoked on worker2: a query over its shards fails');
like($err, qr/the data encryption key is unavailable/, '... with the reason');
like($err, qr/\Q$host\E:@{[$w2->port]}/, '... naming the worker');
unlike($err, qr/\Q$tmp\E|kek-worker2/, '... and not its key file');
diag("the client sees: $err");
my @krows = map { [ split /\|/, $_, 3 ] } split /\n/,
  $coord->safe_psql('postgres', 'SET ROLE keyadmin; SELECT nodeport, state, reason FROM cmk_storage.cluster_key_status()');
my ($kr) = grep { $_->[0] == $w2->port } @krows;
# (run_command_on_all_nodes reports a refused connection as Citus's
# "failed to connect to host:port"; the reason is in the query error above)
is($kr->[1], 'error', 'cluster_key_status shows worker2 refusing');
like($kr->[2], qr/\Q$host\E:@{[$w2->port]}/, '... naming the node');
unlike($kr->[2], qr/kek-worker2/, '... not its key file');
is(scalar(grep { $_->[1] eq 'available' } @krows), 3, '... and the other nodes available');
move("$kek_w2.away", $kek_w2) or die;
$w2->poll_query_until('postgres', q{SELECT state = 'available' FROM cmk_storage.key_status()})
  or die 'worker2 never healed';
is($q->('SELECT count(*) FROM secrets'), '1000', 'key back on worker2: healed without a restart');

# Rotation across the cluster (docs/citus.md): every node re-wraps its DEK
# with the new KEK, from the coordinator.
my $kek2 = new_kek("$tmp/kek2.pem");
is($coord->safe_psql('postgres', qq{SET ROLE keyadmin;
SELECT count(*) FROM run_command_on_all_nodes(\$\$SELECT cmk_storage.rotate_key('file://$kek2')\$\$)
 WHERE success AND result LIKE 're-wrapped with %'}), '4', 'rotate_key on every node through run_command_on_all_nodes');
@rows = map { [ split /\|/ ] } split /\n/,
  $coord->safe_psql('postgres', 'SET ROLE keyadmin; SELECT nodeport, kek_id, dek_id FROM cmk_storage.cluster_key_status()');
is(scalar(keys %{ { map { $_->[1] => 1 } @rows } }), 1, 'rotated: one KEK for all nodes');
isnt($rows[0][1], $rows_kek, 'rotated: a new KEK');
is(scalar(grep { $dek{ $_->[2] } } @rows), 4, 'rotated: each node keeps its DEK');
is($q->('SELECT count(*) FROM secrets'), '1000', 'rotated: cmk_heap data readable');

# A node that cannot answer is reported, not skipped.
$w3->stop;
@rows = map { [ split /\|/, $_, 3 ] } split /\n/, $coord->safe_psql('postgres',
	'SET ROLE keyadmin; SELECT nodeport, state, reason FROM cmk_storage.cluster_key_status()');
my ($down) = grep { $_->[0] == $w3->port } @rows;
is($down->[1], 'error', 'cluster_key_status: a stopped worker has the state error');
like($down->[2], qr/\S/, '... and its error as reason') or diag($down->[2]);
$w3->start;

# --- intermediate results: base/pgsql_job_cache -------------------------------------
# Citus writes intermediate results with PostgreSQL's file API, sends them to
# other nodes with COPY ... TO STDOUT (FileRead) and reads them back with COPY
# FROM a file name (stdio): all through the I/O layer (docs/citus.md).  A
# materialized CTE (computed once, shipped to the workers) and a repartition
# join (each worker partitions its shards into files, fetches the other
# workers' partitions and reads them) run in one transaction held open while
# every node's job cache is searched: the files are there, none holds a
# workload value; the results are those of the same queries on local copies.
$m{$_} = random_marker("CIT$_") for qw(rja rjb);
$q->(qq{
CREATE TABLE rj_a (id bigint PRIMARY KEY, k int NOT NULL, v text NOT NULL);
CREATE TABLE rj_b (id bigint PRIMARY KEY, k int NOT NULL, v text NOT NULL);
SELECT create_distributed_table('rj_a', 'id');
SELECT create_distributed_table('rj_b', 'id', colocate_with => 'none');
INSERT INTO rj_a SELECT g, g % 97, '$m{rja}' || g FROM generate_series(1, 2000) g;
INSERT INTO rj_b SELECT g, g % 89, '$m{rjb}' || g FROM generate_series(1, 2000) g;
CREATE TABLE rj_a_l AS SELECT * FROM rj_a;
CREATE TABLE rj_b_l AS SELECT * FROM rj_b;
CREATE TABLE events_l AS SELECT * FROM events;
CREATE TABLE details_l AS SELECT * FROM details;
});
my $cte_sql = qq{WITH c AS MATERIALIZED (SELECT id, v FROM %1\$s ORDER BY id LIMIT 500)
SELECT count(*), min(c.v), max(c.v) FROM %2\$s d JOIN c ON c.v = '$m{ev}' || d.id};
my $rj_sql = q{SELECT count(*), md5(string_agg(a.v || '/' || b.v, ',' ORDER BY a.id, b.id))
FROM %1$s a JOIN %2$s b ON a.k = b.k};
my ($jc_files, $job_cache);
my @held = held_transaction($coord, "SET LOCAL citus.enable_repartition_joins TO on;\n"
	  . sprintf($cte_sql, 'events', 'details') . ";\n"
	  . sprintf($rj_sql, 'rj_a', 'rj_b') . ';',
	sub { ($jc_files, $job_cache) = job_cache_search([ $coord, @workers ], values %m) });
is(scalar(@held), 2, 'intermediate results: the held transaction ran both queries') or diag(join("\n", @held));
is($held[0], $q->(sprintf($cte_sql, 'events_l', 'details_l')),
	'materialized CTE: the result equals the query on local tables');
like($held[0], qr/^500\|/, '... 500 rows joined');
is($held[1], $q->(sprintf($rj_sql, 'rj_a_l', 'rj_b_l')),
	'repartition join: the result equals the join of local tables');
cmp_ok(scalar(grep { m{/repartition_[^/]*\.data$} } @$jc_files), '>', 0,
	'repartition join: partition files in the workers\' job caches while held');
cmp_ok(scalar(@$jc_files), '>', 1, 'intermediate result files in the job caches while held (' . scalar(@$jc_files) . ')');
is(scalar(@$job_cache), 0, 'no workload value in base/pgsql_job_cache of any node during the transaction')
  or diag("plaintext intermediate results: @$job_cache");

# --- no plaintext in any node's relation files or WAL ----------------------------------
$_->safe_psql('postgres', 'CHECKPOINT') for ($coord, @workers);
my @needles = values %m;
for my $n ($coord, @workers)
{
	my @hits = map { files_containing($n->data_dir . "/$_", @needles) } qw(global pg_wal);
	opendir(my $dh, $n->data_dir . '/base') or die;
	for my $e (readdir $dh)
	{
		next if $e =~ /^\.$|^\.\.$/;
		push @hits, files_containing($n->data_dir . "/base/$e", @needles);
	}
	closedir $dh;
	is(scalar(@hits), 0, $n->name . ': no workload value in base/, global/ or pg_wal/') or diag(join("\n", @hits));
}
my @slot_hits;
for my $n ($coord, @workers)
{
	push @slot_hits, files_containing($n->data_dir . "/$_", @needles) for qw(pg_replslot pg_logical pg_twophase);
}
# These directories are pass-through (docs/io-layer.md, "Not yet"); they hold
# no value here because every transaction of this workload is small (no
# decoding spill, no prepared transaction across a checkpoint).
is(scalar(@slot_hits), 0, 'no workload value in pg_replslot/, pg_logical/ or pg_twophase/')
  or diag(join("\n", @slot_hits));

# The shards worker3 received were written through the layer: every page
# that is not all zeros carries the marker (docs/io-layer.md).
my $bad_pages = 0;
my $pages = 0;
for my $rel (split /\n/, $w3->safe_psql('postgres', q{
SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i', 't') AND pg_relation_size(c.oid) > 0}))
{
	my $data = slurp_bytes($w3->data_dir . "/$rel");
	for (my $off = 0; $off + 8192 <= length $data; $off += 8192)
	{
		my $page = substr($data, $off, 8192);
		next if $page =~ /^\0*$/;
		$pages++;
		$bad_pages++ unless unpack('v', substr($page, 10, 2)) & 0x8000;
	}
}
cmp_ok($pages, '>', 0, "worker3's shards have pages");
is($bad_pages, 0, "every page of worker3's shards is encrypted ($pages pages)");

$_->stop for ($coord, @workers);
diag(sprintf('t/300_citus.pl ran %.0f s', time - $t_start));
done_testing();
