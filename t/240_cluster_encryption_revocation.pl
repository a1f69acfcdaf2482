# Revocation with cluster encryption (docs/operations.md, "Revocation with
# cluster encryption"): under pgbench, a revoked key encryption key (the key
# file moved away) makes the server refuse new connections, client and
# replication, with the documented error and end every session, without a
# PANIC or a restart; restoring the file lets clients in again by itself;
# every committed transaction is there, and still there after a kill -9 of
# the postmaster and crash recovery.  A streaming standby with the same key
# closes too, keeps replaying, and catches up after healing.  Revoked again,
# the server stops cleanly (its shutdown checkpoint written through the
# layer), refuses to start without the key, and starts with it.
use strict;
use warnings;
use File::Copy;
use IPC::Run;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

# Orphans (the postmaster after pg_ctl exits, its children after a kill -9)
# become our children, so that we can reap them: some container inits do
# not, and a zombie postmaster keeps its lock file "in use".
syscall(157, 36, 1);    # prctl(PR_SET_CHILD_SUBREAPER, 1), x86-64

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('revoke', $kek, init => { allows_streaming => 1 },
	conf => qq{
cmk_storage.cluster_encryption = on
cmk_storage.key_check_interval = 2s
log_error_verbosity = verbose
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($node)->{state}, 'available', 'key available, cluster encryption on');

# A streaming standby with the same key (its own key worker checks it).
$node->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b1', has_streaming => 1);
$standby->start;

# Each committed pgbench transaction adds the next row of its client, so a
# lost commit shows as a gap and pgbench's count bounds the rows from below.
my $clients = 3;
$node->safe_psql('postgres',
	'CREATE TABLE acked (client int, n int, pad text, PRIMARY KEY (client, n))');
spew_bytes("$tmp/load.sql", q{BEGIN;
SELECT coalesce(max(n), 0) + 1 AS n FROM acked WHERE client = :client_id \gset
INSERT INTO acked VALUES (:client_id, :n, repeat('x', 300));
COMMIT;
});
my ($pb_out, $pb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', $clients, '-T', '600', '-f', "$tmp/load.sql",
		'-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$pb_out, '2>', \$pb_err);

# An idle session that stays connected.
my ($in, $out, $err) = ('', '', '');
my $idle = IPC::Run::start([ 'psql', '-XAtq', '-h', $node->host, '-p', $node->port, 'postgres' ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "SELECT pg_backend_pid();\n";
IPC::Run::pump($idle) until $out =~ /^(\d+)$/m;
my $idle_pid = $1;

$node->poll_query_until('postgres', 'SELECT count(*) >= 300 FROM acked')
  or die 'pgbench did not commit anything';
my $pm_pid = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my $loglen = -s $node->logfile;

# --- revoke ---------------------------------------------------------------------
move($kek, "$kek.away") or die;

# Poll (bounded, no timing assertion) until a new connection is refused.
my ($ret, $so, $se);
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	($ret, $so, $se) = $node->psql('postgres', 'SELECT 1');
	last if $ret != 0;
	usleep(100_000);
}
isnt($ret, 0, 'a new connection is refused after the revocation');
like($se,
	qr/FATAL:  the database system is not accepting connections: the data encryption key is unavailable: could not open key file: No such file or directory\nDETAIL:  Cluster encryption is on: .*\nHINT:  Check cmk_storage.key_uri .* Connections are accepted again by themselves/,
	'with the key problem, what it means and the hint');
unlike($se, qr/\Q$kek\E/, 'the client is not told where the key file is');
my $log = substr(slurp_file($node->logfile), $loglen);
like($log, qr/FATAL:  57P03: the database system is not accepting connections: the data encryption key is unavailable/,
	'SQLSTATE 57P03 (cannot_connect_now)');
my ($rret, $rso, $rse) = $node->psql('postgres', 'IDENTIFY_SYSTEM', replication => 'database');
isnt($rret, 0, 'a replication connection is refused too');
like($rse, qr/not accepting connections: the data encryption key is unavailable/, 'with the same error');

# pgbench's sessions are ended: it stops (-T 600 would keep it running).
my $stopped = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	$pgbench->pump_nb;
	$stopped = !$pgbench->pumpable;
	last if $stopped;
	usleep(100_000);
}
ok($stopped, 'pgbench stopped: its sessions were ended');
$pgbench->kill_kill unless $stopped;
$pgbench->finish;
like($pb_err, qr/FATAL:  terminating connection because the data encryption key is unavailable: could not open key file/,
	'pgbench sessions were ended, naming the key as the cause');
my ($processed) = $pb_out =~ /number of transactions actually processed: (\d+)/;
ok(defined $processed && $processed > 0, "pgbench committed transactions before ($processed)")
  or diag($pb_out . $pb_err);

# The idle session is ended too.
my $gone = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	$gone = !kill(0, $idle_pid);
	last if $gone;
	usleep(100_000);
}
ok($gone, 'the idle session was ended');
$in .= "SELECT 1;\n";
$idle->finish;
like($err, qr/FATAL:  terminating connection because the data encryption key is unavailable/,
	'and its client was told why');

$log = substr(slurp_file($node->logfile), $loglen);
like($log, qr/WARNING:  55000: cmk_storage: data encryption key unavailable: could not open key file/,
	'the key worker confirmed the revocation');
like($log, qr/WARNING:  55000: cmk_storage: the data encryption key is unavailable: refusing connections and ending sessions/,
	'and closed the gate');
unlike($log, qr/PANIC/, 'no PANIC');
unlike($log, qr/server process .* was terminated by signal|all server processes terminated; reinitializing/,
	'no crash and no restart of the cluster');
ok(kill(0, $pm_pid), 'the postmaster is still up');
my $aux = `ps -o args= --ppid $pm_pid`;
like($aux, qr/checkpointer/, 'the checkpointer keeps running');
like($aux, qr/walwriter/, 'the WAL writer keeps running');

# The standby: its own gate closes, its walsender on the primary was ended,
# replay goes on.
my $sb_refused = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	($ret, $so, $se) = $standby->psql('postgres', 'SELECT 1');
	$sb_refused = $ret != 0 && $se =~ /not accepting connections: the data encryption key is unavailable/;
	last if $sb_refused;
	usleep(100_000);
}
ok($sb_refused, 'the standby refuses connections too');
like(substr(slurp_file($node->logfile), $loglen),
	qr/standby FATAL:  57P01: terminating connection because the data encryption key is unavailable/,
	'the walsender serving the standby was ended');
my $sblog = slurp_file($standby->logfile);
unlike($sblog, qr/PANIC|startup process .* exited|all server processes terminated/,
	'the standby\'s startup process keeps running');

# Still refused a while later (the gate stays closed while the key is gone).
($ret, $so, $se) = $node->psql('postgres', 'SELECT count(*) FROM acked');
like($se, qr/not accepting connections/, 'still refused while the key is gone');

# --- restore ----------------------------------------------------------------------
$loglen = -s $node->logfile;
move("$kek.away", $kek) or die;
my $back = 0;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	($ret, $so, $se) = $node->psql('postgres', 'SELECT 1');
	$back = $ret == 0;
	last if $back;
	usleep(100_000);
}
ok($back, 'connections are accepted again by themselves once the key file is back');
is(key_status($node)->{state}, 'available', 'the key is available');
like(substr(slurp_file($node->logfile), $loglen),
	qr/LOG:  00000: cmk_storage: the data encryption key is available again: accepting connections/,
	'the log says so');

# Every committed transaction is there, without gaps.
my $rows = $node->safe_psql('postgres',
	'SELECT count(*), sum(CASE WHEN n = max_n THEN 1 ELSE 0 END) FROM (SELECT client, n, max(n) OVER (PARTITION BY client) AS max_n, count(*) OVER (PARTITION BY client) AS c FROM acked) s WHERE c = max_n');
my ($total, $clients_ok) = split /\|/, $rows;
is($clients_ok, $clients, 'each pgbench client\'s rows are 1..k without a gap');
ok($total >= $processed && $total <= $processed + $clients,
	"every committed transaction is there ($total rows, pgbench acknowledged $processed)");
$node->safe_psql('postgres', "INSERT INTO acked VALUES (-1, 1, 'after')");
is($node->safe_psql('postgres', 'SELECT count(*) FROM acked'), $total + 1, 'writes work again');
$node->wait_for_catchup($standby, 'replay');
$standby->poll_query_until('postgres', 'SELECT true') or die 'the standby does not accept connections';
is($standby->safe_psql('postgres', 'SELECT count(*) FROM acked'), $total + 1,
	'the standby reconnected by itself and caught up');
$standby->stop;

# --- a crash after the cycle ---------------------------------------------------------
my $before = $node->safe_psql('postgres', 'SELECT client, count(*), max(n) FROM acked GROUP BY client ORDER BY client');
$node->kill9;
1 while waitpid(-1, 0) > 0;    # the postmaster and its orphaned children
$loglen = -s $node->logfile;
$node->start;
like(substr(slurp_file($node->logfile), $loglen), qr/database system was interrupted(.|\n)*redo (starts|done)/,
	'crash recovery ran after kill -9 of the postmaster');
is($node->safe_psql('postgres', 'SELECT client, count(*), max(n) FROM acked GROUP BY client ORDER BY client'),
	$before, 'every committed row is there after the crash');

# --- revoked on purpose: stop the server, which then needs the key to start --
# Rows still dirty in shared buffers when the key goes: the shutdown
# checkpoint must write them through the layer during the revocation.
$node->safe_psql('postgres', "INSERT INTO acked SELECT -2, g, 'dirty' FROM generate_series(1, 2000) g");
my $final = $node->safe_psql('postgres', 'SELECT count(*) FROM acked');
move($kek, "$kek.away") or die;
for (1 .. 10 * $PostgreSQL::Test::Utils::timeout_default)
{
	($ret, $so, $se) = $node->psql('postgres', 'SELECT 1');
	last if $ret != 0;
	usleep(100_000);
}
like($se, qr/not accepting connections: the data encryption key is unavailable/, 'revoked again');
$loglen = -s $node->logfile;
$node->stop('fast');
like(substr(slurp_file($node->logfile), $loglen), qr/checkpoint complete(.|\n)*database system is shut down/,
	'a fast shutdown during the revocation writes its checkpoint');
$loglen = -s $node->logfile;
ok(!$node->start(fail_ok => 1), 'the server does not start while the key is revoked');
like(substr(slurp_file($node->logfile), $loglen),
	qr/FATAL:  \w+: cmk_storage: cluster encryption needs the data encryption key before recovery: could not open key file/,
	'and says why');
move("$kek.away", $kek) or die;
$loglen = -s $node->logfile;
$node->start;
like(substr(slurp_file($node->logfile), $loglen), qr/database system was shut down at/,
	'with the key back it starts from the clean shutdown, without redo');
is($node->safe_psql('postgres', 'SELECT count(*) FROM acked'), $final,
	'every row committed before the revocation is there');
unlike(slurp_file($node->logfile), qr/PANIC/, 'no PANIC at any point');
$node->stop;

done_testing();
