# Key lifecycle with the file provider: revocation takes effect within one
# check interval and heals, rotation works online (also under pgbench) and
# survives kill -9 at every step, a changed key_uri is adopted by itself,
# standbys follow and can be promoted, every event is audited, and only
# cmk_key_admin may manage the key.
use strict;
use warnings;
use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek1 = new_kek("$tmp/kek1.pem");
my $kek2 = new_kek("$tmp/kek2.pem");
my $kek3 = new_kek("$tmp/kek3.pem");
my $primary = cmk_node('life', $kek1, init => { allows_streaming => 1 },
	conf => "cmk_storage.key_check_interval = 1\ncmk_storage.key_grace_period = 2\nrestart_after_crash = on\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($primary);
$primary->safe_psql('postgres', q{
CREATE TABLE acct (id int PRIMARY KEY, balance int, note text) USING cmk_heap;
INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 1000) g;
});

sub ctl_generation
{
	my ($node) = @_;
	my $c = slurp_bytes(control_path($node));
	return unpack('N', substr($c, 12, 4));
}

sub ctl_kid
{
	my ($node) = @_;
	my $c = slurp_bytes(control_path($node));
	my $len = unpack('n', substr($c, 60, 2));
	return substr($c, 576, $len);
}

sub fingerprint
{
	my ($pem) = @_;
	my $der = `openssl pkey -in $pem -pubout -outform DER 2>/dev/null`;
	require Digest::SHA;
	return 'file:sha256:' . Digest::SHA::sha256_hex($der);
}

sub wait_state
{
	my ($node, $state, $max) = @_;
	my $t0 = time;
	$node->poll_query_until('postgres',
		"SELECT state = '$state' FROM cmk_storage.key_status()") or return undef;
	return time - $t0;
}

# --- revocation takes effect within one interval and heals -----------------------------
is(key_status($primary)->{kek_id}, fingerprint($kek1), 'wrapped by kek1');
move($kek1, "$kek1.away") or die;
my $elapsed = wait_state($primary, 'unavailable');
ok(defined $elapsed, 'key file removed: key unavailable without a restart');
diag(sprintf('revocation took effect after %.1f s (interval 1 s)', $elapsed // -1));
cmp_ok($elapsed // 99, '<', 5, 'within a few check intervals');
my ($ret, $out, $err) = $primary->psql('postgres', 'SELECT count(*) FROM acct');
like($err, qr/cannot access encrypted relation "acct": the data encryption key is unavailable: could not open key file/,
	'revoked: reads fail with the reason');
unlike($err, qr/\Q$kek1\E/, 'revoked: the client is not told where the key file is');
($ret, $out, $err) = $primary->psql('postgres', 'INSERT INTO acct VALUES (5000, 1, NULL)');
like($err, qr/data encryption key is unavailable/, 'revoked: writes fail too');
is($primary->safe_psql('postgres', 'SELECT 1'), '1', 'revoked: server still up');
move("$kek1.away", $kek1) or die;
ok(defined wait_state($primary, 'available'), 'key file back: available again without a restart');
is($primary->safe_psql('postgres', 'SELECT count(*) FROM acct'), '1000', 'healed: data readable');
my $check = $primary->safe_psql('postgres', 'SELECT available, message FROM cmk_storage.check_key()');
is($check, 't|key available', 'check_key() re-validates at once');

# --- rotation online, under pgbench ------------------------------------------------------
my $gen = ctl_generation($primary);
my $script = "$tmp/bench.sql";
open my $fh, '>', $script or die;
print $fh "\\set id random(1, 1000)\nUPDATE acct SET balance = balance + 1 WHERE id = :id;\nSELECT note FROM acct WHERE id = :id;\n";
close $fh;
my ($bout, $berr) = ('', '');
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-T', '6', '-f', $script,
	  '-h', $primary->host, '-p', $primary->port, 'postgres' ],
	'>', \$bout, '2>', \$berr);
sleep(1);
is($primary->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek2')"),
	're-wrapped with ' . fingerprint($kek2) . ' (generation ' . ($gen + 1) . ')', 'rotate_key to kek2');
sleep(1);
like($primary->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek1')"),
	qr/generation @{[$gen + 2]}/, 'rotate_key back to kek1');
sleep(1);
like($primary->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek2')"),
	qr/generation @{[$gen + 3]}/, 'and to kek2 again');
$bench->finish;
like($bout, qr/number of failed transactions: 0 /, 'pgbench during rotations: zero failed transactions');
my ($tx) = $bout =~ /number of transactions actually processed: (\d+)/;
cmp_ok($tx // 0, '>', 100, "pgbench made progress ($tx transactions)");
is(ctl_kid($primary), fingerprint($kek2), 'control file names kek2');
is(ctl_generation($primary), $gen + 3, 'generation moved by three');

# --- audit trail (the SQL view holds the events since the last start) ------------------
my $events = $primary->safe_psql('postgres',
	q{SELECT string_agg(DISTINCT event || ':' || outcome, ',' ORDER BY event || ':' || outcome) FROM cmk_storage.key_events});
for my $want ('create:success', 'rotate:success', 'revoke:failure', 'recover:success', 'check:success', 'request:success')
{
	like($events, qr/\Q$want\E/, "audit: $want recorded");
}

# kek1 is no longer needed
move($kek1, "$kek1.retired") or die;
my $before_restart = $primary->safe_psql('postgres',
	q{SELECT max(seq) || '|' || string_agg(seq || ':' || event || ':' || outcome, ',' ORDER BY seq) FROM cmk_storage.key_events});
$primary->safe_psql('postgres', "ALTER SYSTEM SET cmk_storage.key_uri = 'file://$kek2'; SELECT pg_reload_conf();");
$primary->restart;
is(wait_key_settled($primary)->{state}, 'available', 'restart after rotation: available without the old key');
is($primary->safe_psql('postgres', 'SELECT count(*) FROM acct'), '1000', 'data intact');

# --- the audit trail outlives restarts (cmk_storage/audit_trail) --------------------------
my ($max_before, $list_before) = split /\|/, $before_restart;
my $after = $primary->safe_psql('postgres',
	qq{SELECT string_agg(seq || ':' || event || ':' || outcome, ',' ORDER BY seq) FROM cmk_storage.key_events WHERE seq <= $max_before});
is($after, $list_before, "audit: the $max_before events before the restart are still in the view, numbered as before");
like($primary->safe_psql('postgres', qq{SELECT string_agg(event, ',') FROM cmk_storage.key_events WHERE seq > $max_before}),
	qr/unwrap/, 'audit: numbering continues after the restart (the start-up unwrap follows them)');
like($list_before, qr/^1:create:success,/, 'audit: the trail starts with the key\'s creation');

# a torn or altered record: skipped with a warning, the rest kept
$primary->stop;
{
	my $trail = $primary->data_dir . '/cmk_storage/audit_trail';
	open(my $fh, '+<:raw', $trail) or die "open $trail: $!";
	seek($fh, 100, 0) or die;
	my $b;
	read($fh, $b, 1) == 1 or die;
	seek($fh, 100, 0) or die;
	print $fh chr(ord($b) ^ 0x01);
	close($fh) or die;
}
my $log_offset = -s $primary->logfile;
$primary->start;
is(wait_key_settled($primary)->{state}, 'available', 'altered audit record: the key is still available');
like(slurp_file($primary->logfile, $log_offset),
	qr/WARNING:  cmk_storage audit trail "cmk_storage\/audit_trail": 1 damaged record\(s\) skipped/,
	'altered audit record: the start-up warns that one record was skipped');
is($primary->safe_psql('postgres', q{SELECT min(seq) FROM cmk_storage.key_events}), '2',
	'altered audit record: that event (the first) is left out, the others stay');

# --- a changed key_uri is adopted by itself ------------------------------------------------
$gen = ctl_generation($primary);
$primary->safe_psql('postgres', "ALTER SYSTEM SET cmk_storage.key_uri = 'file://$kek3'; SELECT pg_reload_conf();");
$primary->poll_query_until('postgres', "SELECT kek_id = '@{[fingerprint($kek3)]}' FROM cmk_storage.status")
  or die 'no automatic re-wrap';
pass('new key_uri adopted by an automatic re-wrap');
is(ctl_generation($primary), $gen + 1, 'automatic re-wrap wrote one new generation');

# --- kill -9 at every step of a re-wrap -------------------------------------------------------
# (no automatic re-wrap meanwhile: each restart would adopt key_uri again)
$primary->safe_psql('postgres', "ALTER SYSTEM SET cmk_storage.auto_rewrap = off; SELECT pg_reload_conf();");
for my $step (1 .. 3)
{
	$gen = ctl_generation($primary);
	my $target = $step % 2 ? $kek2 : $kek3;
	$primary->safe_psql('postgres', "ALTER SYSTEM SET cmk_storage.debug_rotation_crash = $step; SELECT pg_reload_conf();");
	sleep(0.3);
	($ret, $out, $err) = $primary->psql('postgres', "SELECT cmk_storage.rotate_key('file://$target')");
	isnt($ret, 0, "crash at step $step: the request did not complete");
	# the postmaster is reinitializing: connections may fail for a moment
	for my $try (1 .. 100)
	{
		last if eval { local $SIG{PIPE} = 'IGNORE'; $primary->poll_query_until('postgres', 'SELECT true') };
		sleep(0.2);
	}
	$primary->safe_psql('postgres', "ALTER SYSTEM RESET cmk_storage.debug_rotation_crash; SELECT pg_reload_conf();");
	is(wait_key_settled($primary)->{state}, 'available', "crash at step $step: key available after recovery");
	is(ctl_generation($primary), $gen + 1, "crash at step $step: the WAL-logged re-wrap is in place");
	is(ctl_kid($primary), fingerprint($target), "crash at step $step: control file names the new key");
	ok(!-e control_path($primary) . '.tmp' || $step == 2, "crash at step $step: no stray temporary file");
	is($primary->safe_psql('postgres', 'SELECT count(*) FROM acct'), '1000', "crash at step $step: data readable");
}
$primary->safe_psql('postgres', "ALTER SYSTEM RESET cmk_storage.auto_rewrap; SELECT pg_reload_conf();");
# the key_uri setting still names kek3: converge on it
$primary->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek3')");

# --- standbys follow and can be promoted ------------------------------------------------------------
$primary->backup('bb');
my $standby = PostgreSQL::Test::Cluster->new('life_standby');
$standby->init_from_backup($primary, 'bb', has_streaming => 1);
$standby->start;
is(wait_key_settled($standby)->{state}, 'available', 'standby: key available');
$gen = ctl_generation($primary);
$primary->safe_psql('postgres', "ALTER SYSTEM SET cmk_storage.key_uri = 'file://$kek2'; SELECT pg_reload_conf();");
$primary->poll_query_until('postgres', "SELECT kek_id = '@{[fingerprint($kek2)]}' FROM cmk_storage.status") or die;
$primary->safe_psql('postgres', 'UPDATE acct SET note = note || \'!\' WHERE id <= 10');
$primary->wait_for_catchup($standby);
is(ctl_generation($standby), $gen + 1, 'standby replayed the re-wrap');
is(ctl_kid($standby), fingerprint($kek2), 'standby control file names the new key');
$standby->poll_query_until('postgres', "SELECT kek_id = '@{[fingerprint($kek2)]}' FROM cmk_storage.status")
  or die;
pass('standby key worker follows the new control file');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
is($standby->safe_psql('postgres', q{SELECT count(*) FROM acct WHERE note LIKE '%!'}), '10', 'promoted standby reads the data');
like($standby->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek3')"), qr/re-wrapped/,
	'promoted standby can rotate');
$standby->stop;

# --- audit trail, continued ---------------------------------------------------------------------------
like($primary->safe_psql('postgres', q{SELECT string_agg(DISTINCT event, ',') FROM cmk_storage.key_events}),
	qr/unwrap/, 'audit: unwrap at start-up recorded');
like($primary->safe_psql('postgres', q{SELECT actor FROM cmk_storage.key_events WHERE event = 'request' LIMIT 1}),
	qr/^\w+$/, 'audit: the requesting role is recorded');
my $log = slurp_bytes($primary->logfile);
like($log, qr/cmk_storage audit: event=rotate outcome=success actor=\S+ kid=file:sha256:[0-9a-f]{64} detail="[^"]*"/,
	'audit: one parseable line per event in the log');

# --- separation of duties ------------------------------------------------------------------------------
$primary->safe_psql('postgres', q{
CREATE ROLE dba LOGIN CREATEDB;
GRANT CREATE ON SCHEMA public TO dba;
CREATE ROLE keyadmin LOGIN IN ROLE cmk_key_admin;
});
is($primary->safe_psql('postgres', q{CREATE TABLE dba_t (a int) USING cmk_heap; INSERT INTO dba_t VALUES (1); SELECT count(*) FROM dba_t;},
	extra_params => [ '-U', 'dba' ]), '1', 'a DBA without the role uses encrypted tables');
for my $q ('SELECT cmk_storage.rotate_key()', 'SELECT * FROM cmk_storage.check_key()',
	'SELECT * FROM cmk_storage.status', 'SELECT * FROM cmk_storage.key_events')
{
	($ret, $out, $err) = $primary->psql('postgres', $q, extra_params => [ '-U', 'dba' ]);
	like($err, qr/permission denied/, "DBA: $q refused");
}
is($primary->safe_psql('postgres', 'SELECT state FROM cmk_storage.status', extra_params => [ '-U', 'keyadmin' ]),
	'available', 'cmk_key_admin reads the status');
like($primary->safe_psql('postgres', 'SELECT message FROM cmk_storage.check_key()', extra_params => [ '-U', 'keyadmin' ]),
	qr/key available/, 'cmk_key_admin re-validates');
is($primary->safe_psql('postgres', q{SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
	WHERE n.nspname = 'cmk_storage' AND p.proname ~ 'dek|secret|raw_key'}), '0', 'no function returns key material');

done_testing();
