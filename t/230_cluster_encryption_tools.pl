# The offline tools on a cluster with cluster encryption on, through
# cmk_offline (docs/io-layer.md, "Offline tools"): pg_waldump shows the
# records of a known transaction (and fails without cmk_offline);
# pg_checksums --check, --disable and --enable keep the cluster readable and
# a flipped bit detected; pg_resetwal writes an encrypted WAL segment the
# server starts from; pg_verifybackup parses encrypted WAL; pg_rewind brings
# an old primary back with --source-server and with --source-pgdata, and
# the rewound data directory holds no value in clear.  Wrong key, missing
# key directory and a preloaded library without cmk_offline are refused by
# name.
use strict;
use warnings;
use Cwd;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");

my $node = cmk_node('tools', $kek,
	init => { allows_streaming => 1, extra => ['--data-checksums'] },
	conf => "cmk_storage.cluster_encryption = on\nwal_keep_size = '256MB'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($node)->{state}, 'available', 'encrypted cluster has its key');
my $bindir = $node->config_data('--bindir');
my $offline = "$bindir/cmk_offline";
my $pgdata = $node->data_dir;

my @m = map { random_marker("OFF$_") } 1 .. 4;
$node->safe_psql('postgres', qq{
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, '$m[0]' || g FROM generate_series(1, 2000) g;
});
my $start = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
my $xid = $node->safe_psql('postgres', qq{
BEGIN;
INSERT INTO t VALUES (100001, '$m[1]'), (100002, '$m[1]'), (100003, '$m[1]');
SELECT txid_current();
COMMIT;
});
my $end = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
my $relpath = $node->safe_psql('postgres', "SELECT pg_relation_filepath('t')");
$node->safe_psql('postgres', 'CHECKPOINT');
is(scalar(map { files_containing("$pgdata/$_", @m) } qw(base global pg_wal)), 0,
	'the values are nowhere in clear');
$node->stop;

# --- pg_waldump -------------------------------------------------------------
my @waldump = ('pg_waldump', '-p', "$pgdata/pg_wal", '-s', $start, '-e', $end, '-x', $xid);
my ($stdout, $stderr);
my $ok = IPC::Run::run([ "$bindir/pg_waldump", @waldump[1 .. $#waldump] ], '>', \$stdout, '2>', \$stderr);
ok(!$ok, 'pg_waldump without cmk_offline fails on encrypted WAL');
like($stderr, qr/invalid info bits|could not find a valid record/, 'it finds no valid record');
command_ok([ $offline, '-D', $pgdata, @waldump ], 'cmk_offline pg_waldump');
($stdout, $stderr) = run_command([ $offline, '-D', $pgdata, @waldump ]);
is(scalar(() = $stdout =~ /rmgr: Heap .*tx: +$xid,.*desc: INSERT /g), 3,
	'pg_waldump shows the three inserts of the transaction');
like($stdout, qr/rmgr: Transaction .*tx: +$xid,.*desc: COMMIT /, 'and its commit');
# PGDATA instead of -D, a relative WAL path, a segment file given by name
{
	local $ENV{PGDATA} = $pgdata;
	my $seg = (sort grep { /^[0-9A-F]{24}$/ } do { opendir my $d, "$pgdata/pg_wal"; readdir $d })[0];
	my $cwd = Cwd::getcwd();
	chdir "$pgdata/pg_wal" or die;
	command_like([ $offline, 'pg_waldump', '-n', '5', $seg ], qr/rmgr: XLOG/,
		'cmk_offline pg_waldump with PGDATA and a relative segment name');
	chdir $cwd;
}

# --- refusals ---------------------------------------------------------------
new_kek("$tmp/other.pem");
command_fails_like([ $offline, '-D', $pgdata, '--key-uri', "file://$tmp/other.pem", @waldump ],
	qr/could not unwrap the cluster's data encryption key.*different key/,
	'a wrong key is refused by name');
rename("$pgdata/cmk_storage", "$tmp/cmk_storage.moved") or die;
command_fails_like([ $offline, 'pg_checksums', '--check', '-D', $pgdata ],
	qr/has no cmk_storage key directory.*\n.*\n.*hint: Restore/,
	'a missing key directory is refused with the way out');
rename("$tmp/cmk_storage.moved", "$pgdata/cmk_storage") or die;
{
	local $ENV{LD_PRELOAD} = $node->config_data('--pkglibdir') . '/cmk_offline_preload.so';
	command_fails_like([ "$bindir/pg_waldump", @waldump[1 .. $#waldump] ],
		qr/no key descriptor: run pg_waldump through cmk_offline/,
		'the preload library alone refuses to run a tool');
}
command_fails_like([ $offline, 'pg_dump' ], qr/not a tool cmk_offline runs/, 'only the offline tools');

# --- pg_checksums -----------------------------------------------------------
command_like([ $offline, 'pg_checksums', '--check', '-D', $pgdata ], qr/Bad checksums:\s+0/,
	'cmk_offline pg_checksums --check');
command_ok([ $offline, 'pg_checksums', '--disable', '-D', $pgdata ], 'pg_checksums --disable');
command_ok([ $offline, 'pg_checksums', '--enable', $pgdata ], 'pg_checksums --enable (positional DATADIR)');
command_like([ 'pg_checksums', '--check', '-D', $pgdata ], qr/Bad checksums:\s+0/,
	'the checksums on disk are those of the ciphertext (stock pg_checksums --check)');
$node->start;
is($node->safe_psql('postgres', "SELECT count(*), count(*) FILTER (WHERE v = '$m[1]') FROM t"), '2003|3',
	'the server starts after --disable/--enable and reads every row');
is($node->safe_psql('postgres', 'SHOW data_checksums'), 'on', 'with checksums on');
$node->stop;
my $orig = slurp_bytes("$pgdata/$relpath");
ok(unpack('v', substr($orig, 10, 2)) & 0x8000, 'the table\'s first page is still encrypted');
my $bad = $orig;
substr($bad, 4000, 1) = chr(ord(substr($bad, 4000, 1)) ^ 0x10);
spew_bytes("$pgdata/$relpath", $bad);
command_fails_like([ $offline, 'pg_checksums', '--check', '-D', $pgdata ],
	qr/checksum verification failed in file "[^"]*$relpath", block 0/,
	'a flipped bit is still detected through cmk_offline');
command_fails_like([ 'pg_checksums', '--check', '-D', $pgdata ],
	qr/checksum verification failed in file "[^"]*$relpath", block 0/,
	'and without it');
spew_bytes("$pgdata/$relpath", $orig);

# --- pg_resetwal ------------------------------------------------------------
command_like([ $offline, 'pg_resetwal', '-D', $pgdata ], qr/Write-ahead log reset/, 'cmk_offline pg_resetwal');
my @segs = sort grep { /^[0-9A-F]{24}$/ } do { opendir my $d, "$pgdata/pg_wal"; readdir $d };
is(scalar(@segs), 1, 'one new WAL segment');
my $first = substr(slurp_bytes("$pgdata/pg_wal/$segs[0]"), 0, 8192);
is(unpack('v', $first), 0xD110, 'it starts with a WAL page');
ok(unpack('v', substr($first, 2, 2)) & 0x4000, 'which is encrypted');
$node->start;
is($node->safe_psql('postgres', "SELECT count(*) FROM t"), '2003', 'the server starts after pg_resetwal with its data');
$node->safe_psql('postgres', "INSERT INTO t VALUES (100004, '$m[2]'); CHECKPOINT");
$node->restart;
is($node->safe_psql('postgres', "SELECT v FROM t WHERE id = 100004"), $m[2], 'and writes and recovers');

# --- pg_verifybackup --------------------------------------------------------
$node->backup('vb');
my $backup = $node->backup_dir . '/vb';
command_ok([ $offline, 'pg_verifybackup', $backup ], 'cmk_offline pg_verifybackup of a plain base backup');
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;
# the cluster's own (encrypted) WAL covers the backup's range
command_fails_like([ 'pg_verifybackup', '-w', "$pgdata/pg_wal", $backup ], qr/WAL parsing failed/,
	'pg_verifybackup without cmk_offline cannot parse encrypted WAL');
command_like([ $offline, 'pg_verifybackup', '-w', "$pgdata/pg_wal", $backup ], qr/backup successfully verified/,
	'cmk_offline pg_verifybackup parses the encrypted WAL');

# --- pg_rewind --------------------------------------------------------------
sub rewind_and_follow
{
	my ($target, $source, @source_opt) = @_;
	my $conf = slurp_file($target->data_dir . '/postgresql.conf');
	command_ok([ $offline, 'pg_rewind', '-D', $target->data_dir, @source_opt ],
		'cmk_offline pg_rewind ' . $source_opt[0]);
	# pg_rewind copied the source's configuration: keep the target's own
	spew_bytes($target->data_dir . '/postgresql.conf', $conf);
	$source->start if $source_opt[0] eq '--source-pgdata';
	$target->enable_streaming($source);
	$target->start;
	$source->wait_for_catchup($target, 'replay');
}

sub no_clear_values
{
	my ($n, $what, @v) = @_;
	my @hits = map { files_containing($n->data_dir . "/$_", @v) } qw(base global pg_wal);
	is(scalar(@hits), 0, "$what: no written value in its relation files or WAL")
	  or diag(join("\n", @hits));
}

my $primary = $node;
$primary->start;
my $standby = PostgreSQL::Test::Cluster->new('tools_standby');
$standby->init_from_backup($primary, 'vb', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby, 'replay');

$standby->promote;
$standby->safe_psql('postgres', 'CHECKPOINT');
my ($onold, $onnew) = (random_marker('OLDSIDE'), random_marker('NEWSIDE'));
$primary->safe_psql('postgres', "INSERT INTO t SELECT g, '$onold' FROM generate_series(200001, 200500) g; CHECKPOINT");
$standby->safe_psql('postgres', "INSERT INTO t SELECT g, '$onnew' FROM generate_series(300001, 300500) g; CHECKPOINT");
$primary->stop;

rewind_and_follow($primary, $standby, '--source-server', $standby->connstr('postgres'));
is($primary->safe_psql('postgres', "SELECT count(*) FILTER (WHERE v = '$onnew'), count(*) FILTER (WHERE v = '$onold'), count(*) FROM t"),
	'500|0|2504', 'rewound old primary follows the new one: its rows, not the diverged ones');
$primary->safe_psql('postgres', 'CHECKPOINT');
no_clear_values($primary, 'rewound from a server', @m, $onold, $onnew);

# The other way round, from a stopped data directory.
$primary->promote;
$primary->safe_psql('postgres', 'CHECKPOINT');
my ($a2, $b2) = (random_marker('ASIDE'), random_marker('BSIDE'));
$primary->safe_psql('postgres', "INSERT INTO t SELECT g, '$a2' FROM generate_series(400001, 400300) g; CHECKPOINT");
$standby->safe_psql('postgres', "INSERT INTO t SELECT g, '$b2' FROM generate_series(500001, 500300) g; CHECKPOINT");
$standby->stop;
$primary->stop;
rewind_and_follow($standby, $primary, '--source-pgdata', $primary->data_dir);
is($standby->safe_psql('postgres', "SELECT count(*) FILTER (WHERE v = '$a2'), count(*) FILTER (WHERE v = '$b2'), count(*) FROM t"),
	'300|0|2804', 'rewound from a data directory: the source\'s rows, not the diverged ones');
$standby->safe_psql('postgres', 'CHECKPOINT');
# (Only the values written after the standby was made: its other pages came
# from a base backup, which carries what the server sent; see item 8.)
no_clear_values($standby, 'rewound from a data directory', $onold, $onnew, $a2, $b2);
is($standby->safe_psql('postgres', 'SELECT count(*) FROM t WHERE id < 100000'), '2000', 'the oldest rows are intact');
$standby->stop;
$primary->stop;

done_testing();
