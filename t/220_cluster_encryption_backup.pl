# Cluster encryption and backups (docs/io-layer.md, "Backups, standbys and
# archives"): pg_basebackup copies relation files, and the WAL segments of
# -X fetch, as stored (encrypted), with its checksum verification on; every
# backup (-D, -Ft, --target=cmk:) restores to the primary's rows; a standby
# made with -R streams, follows, holds no value in clear and is promoted;
# an archive made with plain cp holds ciphertext and a point-in-time
# recovery from it reaches its target with the right rows.  -X stream of
# a primary stores the streamed WAL as stored (encrypted; t/225 tests it
# under load); -X stream of a standby (a cascading WAL sender) writes it
# decrypted: the test checks that the documented limit is exactly that
# (values in the backup's pg_wal, none in its relation files).
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

# pg_basebackup -X stream must connect under its own application_name (the
# WAL sender streams stored pages to it): the test framework sets
# PGAPPNAME, which would override it.
delete $ENV{PGAPPNAME};

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $arch = "$tmp/archive";
mkdir $arch or die;

my $primary = cmk_node('primary', $kek,
	init => { allows_streaming => 1, extra => ['--data-checksums'] },
	conf => qq{
cmk_storage.cluster_encryption = on
archive_mode = on
archive_command = 'cp %p $arch/%f'
});
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $key_st = wait_key_settled($primary);
is($key_st->{state}, 'available', 'primary has its key');
my $dek_id = $key_st->{dek_id};
my $bindir = $primary->config_data('--bindir');

# --- a workload with known values ------------------------------------------
my @m = map { random_marker("BK$_") } 1 .. 4;
my $big = join('', map { random_marker('') } 1 .. 200);    # ~5 kB, incompressible: TOAST
$primary->safe_psql('postgres', qq{
CREATE TABLE t (id int PRIMARY KEY, v text, big text);
CREATE INDEX t_v ON t (v);
INSERT INTO t SELECT g, '$m[0]' || g, CASE WHEN g % 100 = 0 THEN '$m[1]' || g || '$big' END
  FROM generate_series(1, 3000) g;
CREATE MATERIALIZED VIEW mv AS SELECT id, v || '$m[2]' AS w FROM t WHERE id <= 200;
CREATE SEQUENCE s;
SELECT setval('s', 4242);
UPDATE t SET v = '$m[3]' || id WHERE id % 10 = 0;
CHECKPOINT;
});

my %digest = (
	t => q{SELECT count(*), md5(string_agg(id || ':' || v || ':' || md5(coalesce(big, '')), ',' ORDER BY id)) FROM t},
	mv => q{SELECT count(*), md5(string_agg(id || ':' || w, ',' ORDER BY id)) FROM mv},
	s => q{SELECT last_value FROM s});

sub digest_of
{
	my ($node, @tables) = @_;
	@tables = sort keys %digest unless @tables;
	return join(' ', map { "$_=" . $node->safe_psql('postgres', $digest{$_}) } @tables);
}

# Every page of a relation file that is not all zeros carries the marker.
sub all_pages_marked
{
	my ($file) = @_;
	my $data = slurp_bytes($file);
	my $pages = 0;
	for (my $off = 0; $off < length($data); $off += 8192)
	{
		my $page = substr($data, $off, 8192);
		next if $page =~ /^\0*$/;
		return 0 unless unpack('v', substr($page, 10, 2)) & 0x8000;
		$pages++;
	}
	return $pages;
}

# --- base backups ----------------------------------------------------------
# A value written right before the backups: it is in the WAL segment the
# backups' start switches away from, so no backup carries its WAL record.
my $ws = random_marker('BEFORE');
$primary->safe_psql('postgres', "INSERT INTO t VALUES (5000, '$ws', NULL)");
my $bdir = $primary->backup_dir;
my %bk = map { $_ => "$bdir/$_" } qw(stream fetch tar standby);
$bk{cmk} = "$tmp/backup_cmk";
$primary->command_ok([ 'pg_basebackup', '-D', $bk{stream}, '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -D -X stream, checksums verified');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{fetch}, '-X', 'fetch', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -D -X fetch, checksums verified');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{tar}, '-Ft', '-X', 'fetch', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -Ft -X fetch, checksums verified');
$primary->command_ok([ 'pg_basebackup', '--target', "cmk:$bk{cmk}", '-X', 'fetch', '-c', 'fast' ],
	'pg_basebackup --target=cmk:');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{standby}, '-R', '-X', 'fetch', '-c', 'fast', '--no-sync',
		'-d', 'application_name=standby' ],
	'pg_basebackup -D -R -X fetch (for a standby)');
my $expect = digest_of($primary);
my @all = (@m, $ws);

# What is in clear in each backup.  With -X fetch nothing: relation files
# and WAL segments are copies of the stored (encrypted) ones.
no_value_in($bk{$_}, \@all, "-D -X fetch backup ($_): no value anywhere in it") for qw(fetch standby);
no_value_in($bk{tar}, \@all, '-Ft -X fetch backup: no value in base.tar');
ok(-f "$bk{tar}/base.tar" && !-e "$bk{tar}/pg_wal.tar", '-Ft -X fetch: the WAL is inside base.tar');
no_value_in($bk{cmk}, \@all, '--target=cmk: backup: no value in it');

# -X stream: relation files as stored, and the streamed WAL as stored too
# (the WAL sender streams stored pages to pg_basebackup).
no_value_in($bk{stream}, \@all, '-X stream backup: no value in it');
my ($enc, $clear) = wal_pages("$bk{stream}/pg_wal");
ok($enc > 0 && $clear == 0, "-X stream backup: its WAL pages are encrypted ($enc pages)");
($enc, $clear) = wal_pages("$bk{fetch}/pg_wal");
ok($enc > 0 && $clear == 0, "-X fetch backup: its WAL pages are encrypted ($enc pages)");

# The copies are the encrypted pages, not absent ones.
my $tpath = $primary->safe_psql('postgres', q{SELECT pg_relation_filepath('t')});
my $ipath = $primary->safe_psql('postgres', q{SELECT pg_relation_filepath('t_v')});
for my $name (qw(fetch stream))
{
	ok(all_pages_marked("$bk{$name}/$tpath") > 10, "$name backup: every page of the table carries the marker");
	ok(all_pages_marked("$bk{$name}/$ipath") > 3, "$name backup: every page of the index carries the marker");
}

# The manifest records the checksums of the files as sent (encrypted).
# pg_verifybackup -n (no WAL parsing: the stock pg_waldump cannot read
# encrypted WAL) checks every file of the backup against it.
$primary->command_ok([ 'pg_verifybackup', '-n', $bk{fetch} ], 'pg_verifybackup -n: -X fetch backup matches its manifest');
$primary->command_ok([ 'pg_verifybackup', '-n', $bk{stream} ], 'pg_verifybackup -n: -X stream backup matches its manifest');

# --- every backup restores to the primary's rows ----------------------------
my %restored = (
	fetch => node_from_dir('r_fetch', copy_backup($bk{fetch})),
	stream => node_from_dir('r_stream', copy_backup($bk{stream})),
	tar => node_from_dir('r_tar', sub {
		mkdir $_[0] or die;
		system_or_bail('tar', 'xf', "$bk{tar}/base.tar", '-C', $_[0]);
	}),
	cmk => node_from_dir('r_cmk', sub {
		my ($out, $err) = ('', '');
		IPC::Run::run([ "$bindir/cmk_restore", 'backup', '--key-uri', "file://$kek", '--dek-id', $dek_id,
			'--backup-directory', $bk{cmk}, '--target-directory', $_[0] ], '>', \$out, '2>', \$err)
		  or die "cmk_restore failed: $err";
	}));
no_value_in($restored{cmk}->data_dir, \@all,
	'the data directory cmk_restore made from the cmk: backup: no value in it');
ok(all_pages_marked($restored{cmk}->data_dir . "/$tpath") > 10, 'and its table pages carry the marker');

for my $name (sort keys %restored)
{
	my $node = $restored{$name};
	$node->start;
	is(digest_of($node), $expect, "backup $name restores to the primary's rows");
	is($node->safe_psql('postgres', "SET enable_seqscan = off; SELECT count(*) FROM t WHERE v IN ('$m[0]1', '$m[0]2', '$m[3]10')"),
		'3', "backup $name: the index reads");
	$node->stop;
}

# --- a standby from the -R backup ----------------------------------------------
my $standby = node_from_dir('standby', copy_backup($bk{standby}));
ok(-f $standby->data_dir . '/standby.signal', 'the -R backup is a standby');
$standby->start;
my @u = map { random_marker("UPTO$_") } 1 .. 2;
$primary->safe_psql('postgres', qq{
INSERT INTO t SELECT g, '$u[0]' || g, CASE WHEN g % 10 = 0 THEN '$u[1]' || '$big' END FROM generate_series(10001, 10500) g;
UPDATE t SET v = '$u[0]' WHERE id BETWEEN 1 AND 50;
REFRESH MATERIALIZED VIEW mv;
SELECT nextval('s');
});
$primary->safe_psql('postgres', "SELECT pg_create_restore_point('cmk_target')");
my $at_target = digest_of($primary, 't', 'mv');
my $seq_at_target = $primary->safe_psql('postgres', 'SELECT last_value FROM s');
my @a = map { random_marker("AFTER$_") } 1 .. 2;
$primary->safe_psql('postgres', qq{
INSERT INTO t SELECT g, '$a[0]' || g, NULL FROM generate_series(20001, 20300) g;
DELETE FROM t WHERE id BETWEEN 100 AND 400;
SELECT setval('s', 9999);
CHECKPOINT;
});
$primary->wait_for_catchup($standby, 'replay');
is(digest_of($standby), digest_of($primary), 'the standby follows the primary');
$standby->safe_psql('postgres', 'CHECKPOINT');    # a restartpoint writes the replayed pages
no_value_in($standby->data_dir, [ @all, @u, @a ], 'no value anywhere in the standby\'s data directory');
ok(all_pages_marked($standby->data_dir . "/$tpath") > 10, 'the standby\'s table pages carry the marker');

# A backup of the standby with -X stream.  It starts at the standby's last
# restartpoint (no segment switch in recovery), before the value below was
# written, so the WAL it streams holds that value: in clear, because a
# cascading WAL sender streams decrypted (the documented limit), while its
# relation files are copies of the standby's, encrypted.
my $v = random_marker('DURING');
$primary->safe_psql('postgres', "INSERT INTO t VALUES (40000, '$v', NULL)");
$primary->wait_for_catchup($standby, 'replay');
my $sbk = "$bdir/from_standby";
$standby->command_ok([ 'pg_basebackup', '-D', $sbk, '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -X stream from the standby');
no_value_in([ map { "$sbk/$_" } qw(base global) ], [ @all, @u, @a, $v ],
	'backup of the standby: no value in its relation files');
ok(scalar(files_containing("$sbk/pg_wal", $v)) > 0,
	'backup of the standby, -X stream: a value written after its start is in clear in its pg_wal (cascading: documented limit)');
($enc, $clear) = wal_pages("$sbk/pg_wal");
ok($enc == 0 && $clear > 0, "and none of its WAL pages is encrypted ($clear pages)");

$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
my $p = random_marker('PROMOTED');
$standby->safe_psql('postgres', "INSERT INTO t VALUES (30000, '$p', NULL); CHECKPOINT");
is($standby->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '$a[0]%' OR v IN ('$p', '$v')"), '302',
	'the promoted standby reads and writes');
no_value_in($standby->data_dir, [ @all, @u, @a, $v, $p ],
	'no value anywhere in the promoted standby\'s data directory');
$standby->stop;

# --- point-in-time recovery from a cp archive ----------------------------------
my $last = archive_current_segment($primary);
no_value_in($arch, [ @all, @u, @a, $v ], 'the cp archive holds no value in clear');
my $seg = slurp_bytes("$arch/$last");
ok(unpack('v', substr($seg, 2, 2)) & 0x4000, "the archived segment $last is encrypted (WAL page marker)");

my $pitr = pitr_node('pitr', $bk{fetch}, $arch, 'cmk_target');
ok($pitr->log_contains(qr/recovery stopping at restore point "cmk_target"/), 'recovery stopped at the restore point');
is(digest_of($pitr, 't', 'mv'), $at_target, 'point-in-time recovery from the cp archive: the rows as of the target');
# a sequence's WAL record runs ahead of it (SEQ_LOG_VALS): recovery may skip values, never repeat one
ok($pitr->safe_psql('postgres', 'SELECT last_value FROM s') >= $seq_at_target, 'the sequence does not go back');
is($pitr->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '$a[0]%'"), '0',
	'changes after the target are absent');
$pitr->safe_psql('postgres', 'CHECKPOINT');
no_value_in([ map { $pitr->data_dir . "/$_" } qw(base global) ], [ @all, @u, @a ],
	'no value in the recovered cluster\'s relation files');
$pitr->stop;

# --- checksum verification reads the stored page ---------------------------
# A bit flipped in the ciphertext of a block on disk: pg_basebackup's
# verification of the page as sent reports it, as on any cluster.
$primary->stop;
my $tfile = $primary->data_dir . "/$tpath";
my $bytes = slurp_bytes($tfile);
substr($bytes, 8192 + 4000, 1) = chr(ord(substr($bytes, 8192 + 4000, 1)) ^ 0x01);
spew_bytes($tfile, $bytes);
$primary->start;
my ($out, $err) = ('', '');
IPC::Run::run([ 'pg_basebackup', '-D', "$bdir/damaged", '-X', 'fetch', '-c', 'fast', '--no-sync',
	'-h', $primary->host, '-p', $primary->port ], '>', \$out, '2>', \$err);
isnt($?, 0, 'pg_basebackup fails on a flipped bit in an encrypted page');
like($err, qr/checksum verification failed in file "\.\/\Q$tpath\E", block 1/,
	'and names the file and the block') or diag $err;

$primary->stop;
done_testing();
