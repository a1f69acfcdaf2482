# Cluster encryption and the clients that store the replication stream
# (docs/io-layer.md, "Streaming replication to standbys, pg_basebackup
# and pg_receivewal"): a physical WAL sender streams them the WAL pages as
# stored (encrypted), holding back a send that ends inside an XTS group
# until the group is final.  Under a write load: every WAL page of an
# -X stream backup (plain and -Ft) and of a pg_receivewal archive carries
# the marker, no value written while they ran is in any of their files,
# the backups restore (standalone, and as a standby that follows and is
# promoted) with every row committed before they started and rows written
# during them, and point-in-time recovery from the pg_receivewal archive
# reaches a named restore point with the right rows.  On an idle primary
# an -X stream backup finishes and its WAL holds only a few XLOG_NOOP
# records (the nudges).  A standby whose application_name makes the primary
# stream stored pages is refused by its walreceiver (FATAL, no PANIC) and
# follows once the name is changed.
use strict;
use warnings;
use File::Basename;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use CmkTest;

# pg_basebackup and pg_receivewal must connect under their own
# application_name (their fallback_application_name): the test framework
# sets PGAPPNAME, which would override it.
delete $ENV{PGAPPNAME};

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $recv = "$tmp/receivewal";
mkdir $recv or die;

my $primary = cmk_node('primary', $kek,
	init => { allows_streaming => 1 },
	conf => qq{
cmk_storage.cluster_encryption = on
wal_keep_size = '512MB'
});
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($primary)->{state}, 'available', 'primary has its key');
my $bindir = $primary->config_data('--bindir');
my @conn = ('-h', $primary->host, '-p', $primary->port);

# initdb's WAL is plaintext until the sweep rewrites it: stream only
# segments written with encryption on.
$primary->poll_query_until('postgres',
	q{SELECT cluster_encryption = 'complete' FROM cmk_storage.status})
  or die 'the sweep did not complete';
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');

# Wait until a file matching the glob pattern exists.
sub wait_for_file
{
	my ($pattern) = @_;
	for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
	{
		return 1 if grep { -f $_ } glob($pattern);
		usleep(100_000);
	}
	return 0;
}

# --- pg_receivewal runs through the whole test --------------------------------
my ($rout, $rerr) = ('', '');
my $receiver = IPC::Run::start([ 'pg_receivewal', '-D', $recv, '--no-loop', @conn ],
	'>', \$rout, '2>', \$rerr);
ok(wait_for_file("$recv/*.partial"), 'pg_receivewal streams') or diag($rerr);
my ($first) = map { basename($_, '.partial') } glob("$recv/*.partial");

# --- a write load: every row carries the marker ---------------------------------
my $mk = random_marker('STREAMED');
$primary->safe_psql('postgres', 'CREATE TABLE d (id bigserial PRIMARY KEY, v text)');
spew_bytes("$tmp/load.sql", "INSERT INTO d (v) VALUES ('$mk' || :client_id || '-' || random());\n");

sub start_load
{
	my ($out, $err) = ('', '');
	my $before = $primary->safe_psql('postgres', 'SELECT count(*) FROM d');
	# -T only bounds a hang: the load is stopped by stop_load
	my $h = IPC::Run::start([ 'pgbench', '-n', '-c', '2', '-T', '900', '-f', "$tmp/load.sql", @conn, 'postgres' ],
		'>', \$out, '2>', \$err);
	$primary->poll_query_until('postgres', "SELECT count(*) > $before + 200 FROM d")
	  or die "pgbench does not write: $err";
	return $h;
}

sub stop_load
{
	my ($h) = @_;

	# TERM, not INT: pgbench has no SIGINT handler, and a test run started
	# in the background by a shell without job control inherits SIGINT
	# ignored (pgbench then ran its full -T while the primary recycled the
	# WAL a standby needed).
	$h->signal('TERM');
	$h->finish;
}

my $load = start_load();
# Rows committed before the backups start: every restored copy has them.
$primary->safe_psql('postgres', 'CREATE TABLE before_ids AS SELECT id FROM d');
my $nbefore = $primary->safe_psql('postgres', 'SELECT count(*) FROM before_ids');

my $bdir = $primary->backup_dir;
my %bk = map { $_ => "$bdir/$_" } qw(stream tar standby idle);
$primary->command_ok([ 'pg_basebackup', '-D', $bk{stream}, '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -D -X stream under load');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{tar}, '-Ft', '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -Ft -X stream under load');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{standby}, '-R', '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -R -X stream under load (for a standby)');
stop_load($load);

# --- what the backups hold ------------------------------------------------------
my ($enc, $clear) = wal_pages("$bk{stream}/pg_wal");
ok($enc > 0 && $clear == 0, "-X stream backup: every WAL page is stored encrypted ($enc pages, $clear in clear)");
no_value_in($bk{stream}, [$mk], '-X stream backup: no value written during the load in any file');

ok(-f "$bk{tar}/pg_wal.tar", '-Ft -X stream: the streamed WAL is in pg_wal.tar');
no_value_in($bk{tar}, [$mk], '-Ft -X stream backup: no value in base.tar or pg_wal.tar');
mkdir "$tmp/tarwal" or die;
system_or_bail('tar', 'xf', "$bk{tar}/pg_wal.tar", '-C', "$tmp/tarwal");
($enc, $clear) = wal_pages("$tmp/tarwal");
ok($enc > 0 && $clear == 0, "-Ft -X stream backup: every WAL page in pg_wal.tar is encrypted ($enc pages, $clear in clear)");

# --- the backups restore ------------------------------------------------------------
# Every row committed before the backups is there, and rows written during
# them (replayed from the streamed WAL).
sub check_rows
{
	my ($node, $what) = @_;
	is($node->safe_psql('postgres', 'SELECT count(*) FROM before_ids b WHERE NOT EXISTS (SELECT FROM d WHERE d.id = b.id)'),
		'0', "$what: every row committed before the backup is there");
	ok($node->safe_psql('postgres', 'SELECT count(*) FROM d') > $nbefore,
		"$what: and rows written during the backup, from the streamed WAL");
}

my $r_stream = node_from_dir('r_stream', copy_backup($bk{stream}));
$r_stream->start;
check_rows($r_stream, '-X stream backup started standalone');
$r_stream->stop;

my $r_tar = node_from_dir('r_tar', sub {
	mkdir $_[0] or die;
	system_or_bail('tar', 'xf', "$bk{tar}/base.tar", '-C', $_[0]);
	system_or_bail('tar', 'xf', "$bk{tar}/pg_wal.tar", '-C', "$_[0]/pg_wal");
});
$r_tar->start;
check_rows($r_tar, '-Ft -X stream backup started standalone');
$r_tar->stop;

# A standby made from the -R backup follows (its walreceiver, named after
# cluster_name, gets the decrypted stream and encrypts it) and is promoted.
my $standby = node_from_dir('standby', copy_backup($bk{standby}));
$standby->start;
my $late = random_marker('LATE');
$primary->safe_psql('postgres', "INSERT INTO d (v) SELECT '$late' || g FROM generate_series(1, 500) g");
$primary->wait_for_catchup($standby, 'replay');
check_rows($standby, 'standby from the -X stream backup');
is($standby->safe_psql('postgres', "SELECT count(*) FROM d WHERE v LIKE '$late%'"), '500', 'the standby follows');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
$standby->safe_psql('postgres', "INSERT INTO d (v) VALUES ('$late-promoted'); CHECKPOINT");
is($standby->safe_psql('postgres', "SELECT count(*) FROM d WHERE v LIKE '$late%'"), '501',
	'the promoted standby reads and writes');
no_value_in($standby->data_dir, [ $mk, $late ], 'no value anywhere in the promoted standby\'s data directory');
$standby->stop;

# --- the walreceiver refuses a stream of stored pages ------------------------------
my $guarded = node_from_dir('guarded', copy_backup($bk{standby}));
# postgresql.auto.conf: where -R wrote primary_conninfo, read last
$guarded->append_conf('postgresql.auto.conf', qq{
primary_conninfo = 'host=@{[ $primary->host ]} port=@{[ $primary->port ]} application_name=pg_basebackup'
});
$guarded->append_conf('postgresql.conf', "wal_retrieve_retry_interval = '100ms'\n");
$guarded->start;
$guarded->wait_for_log(qr/FATAL:  cmk_storage: the primary streams WAL pages as stored \(encrypted\) to this standby/);
ok($guarded->log_contains(qr/HINT:  Set another application_name in primary_conninfo/), 'the refusal names the fix');
is($guarded->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the refused standby keeps running');
ok(!$guarded->log_contains(qr/PANIC/), 'no PANIC');
$guarded->append_conf('postgresql.auto.conf', qq{
primary_conninfo = 'host=@{[ $primary->host ]} port=@{[ $primary->port ]} application_name=guarded'
});
$guarded->reload;
$primary->wait_for_catchup($guarded, 'replay');
is($guarded->safe_psql('postgres', "SELECT count(*) FROM d WHERE v LIKE '$late%'"), '500',
	'with another application_name it follows');
$guarded->stop;

# --- the nudge, on an idle primary ---------------------------------------------------
# Single commits, each streamed to pg_receivewal before the next.  A commit
# whose end (then the flush pointer) lies strictly inside a group must not
# leave the group unfinished: the WAL sender inserts an XLOG_NOOP ending at
# a group boundary and flushes it.
sub lsn_value
{
	my ($hi, $lo) = split m{/}, $_[0];
	return hex($hi) * 2**32 + hex($lo);
}

sub inside_group
{
	my $o = lsn_value($_[0]) % 8192;
	return $o != 0 && !($o % 16 == 8 && $o <= 8168);
}

sub wait_streamed
{
	$primary->poll_query_until('postgres',
		q{SELECT sent_lsn >= pg_current_wal_flush_lsn() FROM pg_stat_replication WHERE application_name = 'pg_receivewal'})
	  or die 'the WAL sender does not catch up';
}
wait_streamed();
my $idle_start = $primary->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
# rows of 1 to 24 bytes: the commits end at every alignment
for my $i (1 .. 24)
{
	$primary->safe_psql('postgres', "INSERT INTO d (v) VALUES (repeat('i', $i))");
	wait_streamed();
}
my $idle_end = $primary->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()');
my ($nout, $nerr) = ('', '');
IPC::Run::run([ "$bindir/cmk_offline", '-D', $primary->data_dir, 'pg_waldump', '-p', $primary->data_dir . '/pg_wal',
		'-s', $idle_start, '-e', $idle_end ], '>', \$nout, '2>', \$nerr);
my @recs = map { [ /lsn: ([0-9A-F]+\/[0-9A-F]+).*desc: (\S+)/ ] } grep { /lsn: / } split /\n/, $nout;
my ($inside, $followed, $noops, $bad) = (0, 0, 0, 0);
for my $k (0 .. $#recs)
{
	my $end = $k < $#recs ? $recs[$k + 1][0] : $idle_end;
	$noops++ if $recs[$k][1] eq 'NOOP';
	next unless inside_group($end);
	if ($recs[$k][1] eq 'COMMIT')
	{
		$inside++;
		$followed++ if $k < $#recs && $recs[$k + 1][1] eq 'NOOP';
	}
	$bad++ if $recs[$k][1] eq 'NOOP' && !($k < $#recs && $recs[$k + 1][1] eq 'NOOP');
}
ok($inside > 0, "some of the commits end inside a group ($inside of 24)") or diag("$nout\n$nerr");
is($followed, $inside, 'each of them is followed by a NOOP (the nudge)');
is($bad, 0, 'every NOOP chain ends at a group boundary');
ok(!inside_group($idle_end), "the flush pointer is at a group boundary ($idle_end)");
ok($noops <= 3 * $inside, "few NOOPs ($noops)");

# --- pg_receivewal: the archive, and point-in-time recovery from it ------------------
my @t = map { random_marker("TARGET$_") } 1 .. 2;
$primary->safe_psql('postgres', "INSERT INTO d (v) SELECT '$t[0]' || g FROM generate_series(1, 300) g");
$primary->safe_psql('postgres', "SELECT pg_create_restore_point('rs_target')");
my $at_target = $primary->safe_psql('postgres', q{SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM d});
$primary->safe_psql('postgres', "INSERT INTO d (v) SELECT '$t[1]' || g FROM generate_series(1, 300) g");
my $last = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
ok(wait_for_file("$recv/$last"), "pg_receivewal completed segment $last") or diag($rerr);
$receiver->signal('INT');
$receiver->finish;

($enc, $clear) = wal_pages($recv);
ok($enc > 0 && $clear == 0, "pg_receivewal archive: every WAL page is stored encrypted ($enc pages, $clear in clear)");
no_value_in($recv, [ $mk, $late, @t ], 'pg_receivewal archive: no value in it');
my ($aout, $aerr) = ('', '');
IPC::Run::run([ "$bindir/cmk_offline", '-D', $primary->data_dir, 'pg_waldump', '-p', $recv, '-r', 'XLOG', $first, $last ],
	'>', \$aout, '2>', \$aerr);
my $archived_noops = () = $aout =~ /desc: NOOP/g;
like($aout, qr/desc: RESTORE_POINT rs_target/, 'cmk_offline pg_waldump decodes the pg_receivewal archive')
  or diag($aerr);
note("NOOP records in the pg_receivewal archive (load and idle): $archived_noops");

my $pitr = pitr_node('pitr', $bk{stream}, $recv, 'rs_target');
ok($pitr->log_contains(qr/recovery stopping at restore point "rs_target"/), 'recovery stopped at the restore point');
is($pitr->safe_psql('postgres', q{SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM d}), $at_target,
	'point-in-time recovery from the pg_receivewal archive: the rows as of the target');
is($pitr->safe_psql('postgres', "SELECT count(*) FROM d WHERE v LIKE '$t[1]%'"), '0', 'changes after the target are absent');
$pitr->stop;

# --- an idle primary: the nudge lets -X stream finish, with few NOOPs -----------------
$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->command_ok([ 'pg_basebackup', '-D', $bk{idle}, '-X', 'stream', '-c', 'fast', '--no-sync' ],
	'pg_basebackup -X stream of an idle primary finishes');
my ($startseg) = sort grep { /^[0-9A-F]{24}$/ } map { basename($_) } glob("$bk{idle}/pg_wal/*");
my ($dout, $derr) = ('', '');
IPC::Run::run([ "$bindir/cmk_offline", '-D', $bk{idle}, 'pg_waldump', '-p', "$bk{idle}/pg_wal", '-r', 'XLOG', $startseg ],
	'>', \$dout, '2>', \$derr);
like($dout, qr/desc: BACKUP_END/, 'cmk_offline pg_waldump decodes the idle backup\'s WAL up to its end') or diag($derr);
my $idle_noops = () = $dout =~ /desc: NOOP/g;
ok($idle_noops <= 6, "the idle backup's WAL holds few NOOPs ($idle_noops)");
($enc, $clear) = wal_pages("$bk{idle}/pg_wal");
ok($enc > 0 && $clear == 0, "idle -X stream backup: every WAL page is encrypted ($enc pages)");
my $r_idle = node_from_dir('r_idle', copy_backup($bk{idle}));
$r_idle->start;
is($r_idle->safe_psql('postgres', "SELECT count(*) FROM d WHERE v LIKE '$t[1]%'"), '300', 'the idle backup restores');
$r_idle->stop;

$primary->stop;
done_testing();
