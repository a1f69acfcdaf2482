# Temporary files, logical decoding spill files and the NOTIFY queue
# (docs/io-layer.md, "Temporary and spill files"):
#
# * the byte-file format against a plain model (test/io_tmpfile/model_test.c);
# * with cmk_storage.cluster_encryption on: a workload that spills (sorts and
#   hash joins with a small work_mem, a parallel hash join, a WITH HOLD
#   cursor, parallel CREATE INDEX, REFRESH MATERIALIZED VIEW, a large
#   transaction decoded by a walsender with a small logical_decoding_work_mem,
#   PREPARE TRANSACTION, NOTIFY payloads) is held half-way, and every file
#   under the data directory and the temporary tablespace is searched for
#   its values, then searched again after it ends: no hit anywhere;
# * with only cmk_storage.temp_file_encryption on and cmk_heap tables: no
#   value in any temporary, spill or NOTIFY file, held and after, and nowhere
#   else but the places the README lists (indexes, WAL of indexes);
# * results equal those of a cluster without either setting;
# * authenticated temporary files (io_tmpauth.c): a sort's data file or a
#   hash join's side-file tags damaged under a held query fail that query
#   with the I/O error, no crash; a spill file whose side file was deleted
#   fails decoding; dropping the slot removes spill and side files quietly.
use strict;
use warnings;
use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $repo = $ENV{REPO} // '.';

# --- the format, against a model ------------------------------------------
{
	my $inc = `pg_config --includedir-server`;
	my $lib = `pg_config --pkglibdir`;
	chomp($inc, $lib);
	my $bin = "$tmp/model_test";
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'cc', '-O1', "-I$inc", "-I$repo/src", '-o', $bin,
		"$repo/test/io_tmpfile/model_test.c", "$repo/src/io/io_tmpfile.c", "$repo/src/io/io_tmpauth.c",
		"$repo/src/io/io_classify.c",
		"$repo/src/crypto/cmk_crypto.c", "-L$lib", '-lpgcommon', '-lpgport',
		'-lcrypto' ], '>', \$out, '2>', \$err);
	ok(-x $bin, 'model test builds') or diag $err;
	IPC::Run::run([ $bin, "$tmp/model_file", '20000', '7' ], '>', \$out, '2>', \$err);
	like($out, qr/^\d+ passed, 0 failed$/m,
		'writes, rewrites, holes, reads and truncations match a plain model') or diag "$out$err";
}

my $kek = new_kek("$tmp/kek.pem");
my $M = random_marker('TMPF');    # in every row of the workload
my $N = random_marker('NTFY');    # in NOTIFY payloads
my $L = random_marker('LDEC');    # in the decoded transaction

my $common = qq{
work_mem = '64kB'
hash_mem_multiplier = 1
maintenance_work_mem = '1MB'
logical_decoding_work_mem = '64kB'
wal_level = logical
max_replication_slots = 4
max_wal_senders = 4
max_prepared_transactions = 4
max_parallel_workers_per_gather = 2
max_parallel_maintenance_workers = 2
parallel_setup_cost = 0
parallel_tuple_cost = 0
min_parallel_table_scan_size = 0
log_temp_files = 0
};

# Every regular file under these directories (tablespaces through their
# own directory, the pg_tblspc links are not followed).
sub all_files
{
	my @dirs = @_;
	my @f;
	find({ wanted => sub { push @f, $File::Find::name if -f $_ && !-l $_ }, no_chdir => 1 },
		grep { -d } @dirs);
	return @f;
}

sub hits
{
	my ($files, @needles) = @_;
	my @h;
	for my $p (@$files)
	{
		my $data = eval { slurp_bytes($p) } // next;
		for my $n (@needles)
		{
			if (index($data, $n) >= 0) { push @h, "$p ($n)"; last; }
		}
	}
	return @h;
}

# Files of the kinds this test is about, under a data directory and tablespace.
sub tempish
{
	my ($pgdata, $ts) = @_;
	return grep { m{/pgsql_tmp/} || m{/pg_replslot/[^/]+/xid-[^/]*\.spill$} || m{/pg_notify/} }
	  all_files($pgdata, $ts);
}

my $setup = sub {
	my ($node, $am, $tsdir) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLESPACE tmpts LOCATION '$tsdir';
CREATE TABLE w (k int, v text) USING $am;
CREATE TABLE w2 (k int, v text) USING $am;
INSERT INTO w SELECT g, '$M' || g || md5(g::text) FROM generate_series(1, 60000) g;
INSERT INTO w2 SELECT g, md5(g::text) || '$M' FROM generate_series(1, 60000, 2) g;
ANALYZE w; ANALYZE w2;
CREATE FUNCTION hold(t text) RETURNS text LANGUAGE plpgsql PARALLEL RESTRICTED AS \$\$
BEGIN
	PERFORM pg_advisory_lock_shared(4242);
	PERFORM pg_advisory_unlock_shared(4242);
	RETURN t;
END \$\$;
});
};

my %q = (
	sort => qq{SELECT count(*), md5(string_agg(hold(v), ',')) FROM (SELECT v FROM w ORDER BY v DESC OFFSET 0) s},
	hashjoin => qq{SET enable_mergejoin = off; SET enable_nestloop = off; SET max_parallel_workers_per_gather = 0;
SELECT count(*), md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT hold(a.v || b.v) AS x FROM w a JOIN w2 b ON a.k = b.k OFFSET 0) s},
	parallel => qq{SET enable_mergejoin = off; SET enable_nestloop = off; SET temp_tablespaces = tmpts;
SELECT count(*), md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT hold(a.v || b.v) AS x FROM w a JOIN w2 b ON a.k = b.k) s},
);

# The same workload on each kind of cluster; returns its results.
sub workload
{
	my ($node, %o) = @_;
	my $pgdata = $node->data_dir;
	my $ts = $o{ts};
	my %res;
	my @needles = ($M, $N, $L);

	# held: a lock every hold() waits for once
	my $ctl = $node->background_psql('postgres');
	$ctl->query_safe('SELECT pg_advisory_lock(4242)');
	my %bg;
	for my $k (sort keys %q)
	{
		$bg{$k} = $node->background_psql('postgres');
		$bg{$k}->{stdin} .= "$q{$k};\n\\echo DONE-$k\n";
		$bg{$k}->{run}->pump_nb;
	}
	# a WITH HOLD cursor, materialized into a tuple store at commit
	my $cur = $node->background_psql('postgres');
	$cur->query_safe(qq{BEGIN; DECLARE hc SCROLL CURSOR WITH HOLD FOR SELECT v FROM w ORDER BY k; COMMIT});
	# NOTIFY payloads held in the queue by a listener inside a transaction
	my $lis = $node->background_psql('postgres');
	$lis->query_safe('LISTEN ch; BEGIN; SELECT 1');
	$node->safe_psql('postgres', join('', map { "NOTIFY ch, '$N$_" . ('x' x 7000) . "';" } 1 .. 40));
	# a large transaction, open, decoded by a walsender: spilled
	my $rx;
	if ($o{decode})
	{
		$node->safe_psql('postgres', qq{SELECT pg_create_logical_replication_slot('s', 'test_decoding');
CREATE TABLE ld (v text)});
		my $txn = $node->background_psql('postgres');
		$txn->query_safe(qq{BEGIN; INSERT INTO ld SELECT '$L' || g FROM generate_series(1, 20000) g});
		my ($out, $err) = ('', '');
		$rx = IPC::Run::start([ 'pg_recvlogical', '-d', $node->connstr('postgres'), '-S', 's',
			'--start', '-f', "$tmp/decoded_$o{name}.txt", '-F', '1', '-s', '1' ], '>', \$out, '2>', \$err);
		$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_ls_dir('pg_replslot/s') f WHERE f LIKE 'xid-%.spill'})
		  or die 'no spill file';
		$o{txn} = $txn;
	}
	$node->poll_query_until('postgres',
		q{SELECT count(*) = 3 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted})
	  or die 'held queries did not arrive';

	# Everything is half-way now: temp files of the three queries, the
	# cursor's tuple store, the NOTIFY pages, the spill files.
	my @t = tempish($pgdata, $ts);
	ok(scalar(grep { m{pgsql_tmp/pgsql_tmp\d+\.\d+$} } @t) >= 3, "$o{name}: held queries have private temporary files");
	ok(scalar(grep { m{\.fileset/} } @t) >= 1, "$o{name}: the parallel hash join has shared (FileSet) files in the temp tablespace");
	$node->safe_psql('postgres', 'CHECKPOINT');
	ok(scalar(grep { m{/pg_notify/} } tempish($pgdata, $ts)) >= 1, "$o{name}: the NOTIFY queue reached disk");
	ok(scalar(grep { m{/xid-.*\.spill$} } @t) >= 1, "$o{name}: the decoded transaction spilled")
	  if $o{decode};
	my @held = hits([ $o{strict} ? all_files($pgdata, $ts) : tempish($pgdata, $ts) ], @needles);
	my $where = $o{strict} ? 'any file' : 'any temporary, spill or NOTIFY file';
	if ($o{plain})
	{
		# the check can fail: without encryption each kind is found in clear
		for my $kind (qr{pgsql_tmp\d+\.\d+ \(\Q$M\E\)}, qr{\.fileset/.* \(\Q$M\E\)},
			qr{pg_notify/.* \(\Q$N\E\)}, qr{\.spill \(\Q$L\E\)})
		{
			ok(scalar(grep { /$kind/ } @held), "$o{name}: values found in clear: $kind");
		}
	}
	else
	{
		is(join("\n", @held), '', "$o{name}: no value in $where while the workload is held");
	}

	# Release and collect.
	$ctl->query_safe('SELECT pg_advisory_unlock(4242)');
	for my $k (sort keys %q)
	{
		my $out = $bg{$k}->query_until(qr/DONE-$k\n/, '');
		$out =~ s/DONE-$k\n//;
		$res{$k} = $out;
		$bg{$k}->quit;
	}
	$res{cursor} = $cur->query_safe(q{MOVE FORWARD ALL IN hc; FETCH BACKWARD 3 FROM hc; FETCH ABSOLUTE 12345 FROM hc; CLOSE hc});
	$cur->quit;
	my $notes = $lis->query_safe('COMMIT; SELECT 1') . $lis->{stderr};
	my %seen = map { $_ => 1 } ($notes =~ /\Q$N\E(\d+)x/g);
	$res{notify} = join(',', sort { $a <=> $b } keys %seen);
	$lis->quit;
	$ctl->quit;
	if ($o{decode})
	{
		$o{txn}->query_safe('COMMIT');
		$o{txn}->quit;
		my $want = "$L" . "20000'";
		for (my $i = 0; $i < 10 * $PostgreSQL::Test::Utils::timeout_default; $i++)
		{
			last if -f "$tmp/decoded_$o{name}.txt"
			  && index(slurp_file("$tmp/decoded_$o{name}.txt"), $want) >= 0;
			usleep(100_000);
		}
		$rx->signal('TERM');
		$rx->finish;
		my $dec = slurp_file("$tmp/decoded_$o{name}.txt");
		my $n = () = $dec =~ /\Q$L\E\d+'/g;
		$res{decoded} = $n;
		$node->safe_psql('postgres', q{SELECT pg_drop_replication_slot('s')});
	}

	# Unheld: parallel CREATE INDEX, CREATE INDEX, REFRESH, PREPARE.
	$res{index} = $node->safe_psql('postgres', qq{
CREATE INDEX w_v ON w (v);
CREATE MATERIALIZED VIEW mv AS SELECT k, v FROM w ORDER BY v;
REFRESH MATERIALIZED VIEW mv;
SET enable_seqscan = off;
SELECT count(*), md5(string_agg(v, ',' ORDER BY v)) FROM w WHERE v > '$M' || '5';
SELECT md5(string_agg(v, ',' ORDER BY k)) FROM mv;
BEGIN; INSERT INTO w2 VALUES (-1, '$M-prepared'); PREPARE TRANSACTION 'p1';
CHECKPOINT;
COMMIT PREPARED 'p1';
SELECT v FROM w2 WHERE k = -1;
});
	$node->safe_psql('postgres', 'CHECKPOINT');
	my @after = hits([ $o{strict} ? all_files($pgdata, $ts) : tempish($pgdata, $ts) ],
		@needles, "$M-prepared");
	is(join("\n", @after), '', "$o{name}: no value in $where after the workload")
	  unless $o{plain};
	return %res;
}

# --- reference: a cluster without either setting --------------------------
my $plain = cmk_node('plain', $kek, conf => $common);
$plain->start;
mkdir "$tmp/ts_plain" or die;
$setup->($plain, 'heap', "$tmp/ts_plain");
my %want = workload($plain, name => 'plain', ts => "$tmp/ts_plain", decode => 1, strict => 0, plain => 1);
is($want{decoded}, 20000, 'the reference decodes the whole transaction');
like($want{notify}, qr/^1,2,.*,40$/, 'the reference receives every notification');
$plain->stop;

# --- cluster encryption on: nothing anywhere -------------------------------
my $ce = cmk_node('ce', $kek, conf => $common . "cmk_storage.cluster_encryption = on\n");
$ce->start;
like(slurp_file($ce->logfile), qr/cluster encryption is on(.|\n)*Temporary files, logical decoding spill files and the NOTIFY queue are encrypted too/,
	'cluster encryption covers temporary files');
mkdir "$tmp/ts_ce" or die;
$setup->($ce, 'heap', "$tmp/ts_ce");
my %got = workload($ce, name => 'cluster_encryption', ts => "$tmp/ts_ce", decode => 1, strict => 1);
for my $k (sort keys %want)
{
	is($got{$k}, $want{$k}, "cluster_encryption: $k gives the same result as without encryption");
}
$ce->stop;

# --- temp_file_encryption alone, cmk_heap tables ---------------------------
my $tf = cmk_node('tf', $kek, conf => $common . "cmk_storage.temp_file_encryption = on\n");
$tf->start;
like(slurp_file($tf->logfile), qr/temporary file encryption is on/, 'temp_file_encryption starts the layer without a key');
$tf->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($tf)->{state}, 'available', 'key for cmk_heap');
mkdir "$tmp/ts_tf" or die;
$setup->($tf, 'cmk_heap', "$tmp/ts_tf");
%got = workload($tf, name => 'temp_file_encryption', ts => "$tmp/ts_tf", decode => 0, strict => 0);
for my $k (grep { $_ ne 'decoded' } sort keys %want)
{
	is($got{$k}, $want{$k}, "temp_file_encryption: $k gives the same result as without encryption");
}

# --- a damaged temporary file fails the query ------------------------------
# Every unit is authenticated (io_tmpauth.c): a query reading a damaged unit
# fails with the I/O error naming the file, and the backend does not crash
# (the control session, connected throughout, still answers).
my $held_damage = sub {
	my ($query, $name, $damage) = @_;
	my $log_offset = -s $tf->logfile;
	my $ctl = $tf->background_psql('postgres');
	$ctl->query_safe('SELECT pg_advisory_lock(4242)');
	my $s = $tf->background_psql('postgres', on_error_stop => 0);
	$s->{stdin} .= "$query;\n\\echo DONE-damaged\n";
	$s->{run}->pump_nb;
	$tf->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted})
	  or die 'held query did not arrive';
	my @files = grep { m{pgsql_tmp/pgsql_tmp\d+\.\d+$} } tempish($tf->data_dir, "$tmp/ts_tf");
	ok(@files >= 1, "$name: the held query has temporary files");
	ok(!(grep { !-f "$_.cmkauth" } @files), "$name: each has its side file");
	$damage->($_) for @files;
	$ctl->query_safe('SELECT pg_advisory_unlock(4242)');
	my $out = eval { $s->query_until(qr/DONE-damaged\n/, '') } // '';
	like($s->{stderr}, qr/ERROR:  could not read [^\n]*pgsql_tmp[^\n]*: Input\/output error/,
		"$name: the query fails with the I/O error naming the file");
	unlike($out, qr/^\d+\|/m, "$name: and returns no rows");
	is($ctl->query_safe('SELECT 1'), '1', "$name: no crash, other sessions carry on");
	unlike(substr(slurp_file($tf->logfile), $log_offset), qr/terminated by signal|server process .* was terminated/,
		"$name: the backend did not crash");
	eval { $s->quit };
	eval { $ctl->quit };
};

# one byte in every 16-byte block of every unit of the data files
$held_damage->($q{sort}, 'sort, data damaged', sub {
	my ($f) = @_;
	my $data = slurp_bytes($f);
	for (my $i = 5; $i < length($data); $i += 16)
	{
		substr($data, $i, 1) = chr(ord(substr($data, $i, 1)) ^ 0x20);
	}
	spew_bytes($f, $data);
});

# a bit of every tag in the side files of a hash join's batch files
$held_damage->($q{hashjoin}, 'hash join, tags damaged', sub {
	my ($f) = @_;
	my $side = slurp_bytes("$f.cmkauth");
	for (my $i = 32 + 20; $i < length($side); $i += 28)
	{
		substr($side, $i, 1) = chr(ord(substr($side, $i, 1)) ^ 0x01);
	}
	spew_bytes("$f.cmkauth", $side);
});

# --- a spill file without its side file fails decoding ---------------------
{
	my $log_offset = -s $tf->logfile;
	$tf->safe_psql('postgres', qq{SELECT pg_create_logical_replication_slot('s2', 'test_decoding');
CREATE TABLE ld2 (v text)});
	my $txn = $tf->background_psql('postgres');
	$txn->query_safe(qq{BEGIN; INSERT INTO ld2 SELECT '$L' || g FROM generate_series(1, 20000) g});
	my ($out, $err) = ('', '');
	my $rx = IPC::Run::start([ 'pg_recvlogical', '-d', $tf->connstr('postgres'), '-S', 's2', '--no-loop',
		'--start', '-f', "$tmp/decoded_side.txt", '-F', '1', '-s', '1' ], '>', \$out, '2>', \$err);
	$tf->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_ls_dir('pg_replslot/s2') f WHERE f LIKE 'xid-%.spill'})
	  or die 'no spill file';
	my @spills = grep { m{/pg_replslot/s2/xid-[^/]*\.spill$} } all_files($tf->data_dir . '/pg_replslot');
	ok(@spills >= 1 && !(grep { !-f "$_.cmkauth" } @spills), 'spill files have side files');
	unlink "$_.cmkauth" for @spills;
	$txn->query_safe('COMMIT');
	$txn->quit;
	ok($tf->wait_for_log(qr{ERROR:  could not open file "pg_replslot/s2/xid-[^"]*\.spill": Input/output error}, $log_offset),
		'a spill file whose side file is gone fails decoding with the I/O error');
	eval { $rx->signal('TERM') };
	$rx->finish;
	my $dec = -f "$tmp/decoded_side.txt" ? slurp_file("$tmp/decoded_side.txt") : '';
	unlike($dec, qr/\Q$L\E/, 'and nothing of the transaction is decoded');
	$tf->poll_query_until('postgres', q{SELECT NOT active FROM pg_replication_slots WHERE slot_name = 's2'})
	  or die 'the slot stays active';
	$tf->safe_psql('postgres', q{SELECT pg_drop_replication_slot('s2')});
	unlike(substr(slurp_file($tf->logfile), $log_offset), qr/could not remove|terminated by signal/,
		'dropping the slot removes spill and side files without complaint');
	ok(!-d $tf->data_dir . '/pg_replslot/s2', 'the slot directory is gone');
}
$tf->stop;

# --- streamed transactions: the apply worker's FileSet files ---------------
# A large transaction streamed in progress is written by the subscriber's
# apply worker to BufFile/FileSet files; a rolled-back savepoint truncates
# them at the subtransaction's first byte (BufFileTruncateFileSet): the
# layer's ftruncate re-encrypts the unit that then ends the file.
{
	my $pub = cmk_node('pub', $kek,
		conf => "wal_level = logical\nmax_wal_senders = 4\nmax_replication_slots = 4\nlogical_decoding_work_mem = '64kB'\n");
	my $sub = cmk_node('sub', $kek, conf => "cmk_storage.temp_file_encryption = on\nlog_temp_files = 0\n");
	$pub->start;
	$sub->start;
	for my $n ($pub, $sub)
	{
		$n->safe_psql('postgres', 'CREATE TABLE st (a int PRIMARY KEY, v text)');
	}
	$pub->safe_psql('postgres', 'CREATE PUBLICATION p FOR TABLE st');
	my $pubconn = $pub->connstr() . ' dbname=postgres';
	$sub->safe_psql('postgres', "CREATE SUBSCRIPTION s CONNECTION '$pubconn' PUBLICATION p WITH (streaming = on)");
	$pub->wait_for_catchup('s');
	$pub->safe_psql('postgres', qq{
BEGIN;
INSERT INTO st SELECT g, '$M' || g FROM generate_series(1, 3000) g;
SAVEPOINT s1;
INSERT INTO st SELECT g, '$M' || g FROM generate_series(3001, 6000) g;
SAVEPOINT s2;
UPDATE st SET v = v || 'u' WHERE a % 3 = 0;
ROLLBACK TO s2;
DELETE FROM st WHERE a % 5 = 0;
ROLLBACK TO s1;
INSERT INTO st SELECT g, '$M' || g || 'x' FROM generate_series(6001, 7003) g;
COMMIT;
});
	$pub->wait_for_catchup('s');
	my $q = q{SELECT count(*), md5(string_agg(a || v, ',' ORDER BY a)) FROM st};
	is($sub->safe_psql('postgres', $q), $pub->safe_psql('postgres', $q),
		'a streamed transaction with rolled-back savepoints applies through encrypted, truncated FileSet files');
	like(slurp_file($sub->logfile), qr/temporary file: path "base\/pgsql_tmp\/pgsql_tmp\d+\.\d+\.fileset\/\d+-\d+\.changes/,
		'the apply worker spilled the streamed changes');
	$sub->stop;
	$pub->stop;
}

done_testing();
