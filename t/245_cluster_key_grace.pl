# The grace period for transient vault faults also covers the key that the
# postmaster unwrapped before recovery (cluster encryption on): a Key Vault
# that answers the postmaster and then fails with server errors must not
# revoke the key the server just started with.  The key stays available
# while the faults last (within key_grace_period), data stays readable, and
# the checks succeed again once the vault answers.  Before the fix the key
# worker's first unwrap replaced the postmaster's key and a transient
# failure revoked it at once.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use CmkTest;

plan skip_all => 'Node.js is needed for the Key Vault emulator'
  if system('node --version >/dev/null 2>&1') != 0;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $emu = start_emulator(state_dir => "$tmp/kv");
my $id = emulator_admin($emu, 'POST', '/identities',
	{ name => 'pg-server', permissions => [qw(get wrapKey unwrapKey)] });
emulator_admin($emu, 'POST', '/keys/kek', { key_size => 2048 });

# cmk_node writes a file:// key_uri; the lines below come later and win.
my $node = cmk_node('grace', '/nonexistent.pem', conf => <<"CONF");
cmk_storage.cluster_encryption = on
cmk_storage.key_uri = '$emu->{vault_url}/keys/kek'
cmk_storage.azure_client_id = '$id->{client_id}'
cmk_storage.azure_token_endpoint = '$emu->{token_url}'
cmk_storage.ca_file = '$emu->{ca_file}'
cmk_storage.key_check_interval = 2
cmk_storage.key_grace_period = 600
cmk_storage.azure_retry_timeout = '6s'
CONF
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION cmk_storage;
CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g;
});
is(wait_key_settled($node)->{state}, 'available', 'first start: key available');
$node->stop;

sub field
{
	my ($name) = @_;
	return $node->safe_psql('postgres', "SELECT $name FROM cmk_storage.status");
}

# Start again.  The postmaster's unwrap is answered after a delay; while it
# waits, every later unwrap is made to fail with 503 (a transient fault),
# so the key worker's first re-validation fails.
my $mark = emulator_admin($emu, 'GET', '/requests?since=999999999')->{last_seq};
emulator_admin($emu, 'POST', '/faults',
	{ target => 'vault', method => 'POST', path => '/unwrapkey$', action => 'latency',
	  latency_ms => 2500, times => 1 });
my $pg_ctl = IPC::Run::start(
	[ 'pg_ctl', '-D', $node->data_dir, '-l', $node->logfile, '-w', '-t', '120', 'start' ],
	'>', \my $ctl_out, '2>', \my $ctl_err);
my $seen = 0;
for (1 .. 100)
{
	my $reqs = emulator_admin($emu, 'GET', "/requests?since=$mark")->{requests};
	# the delayed unwrap is logged once answered; the token request before
	# it shows that the postmaster is on its way
	if (grep { ($_->{path} // '') =~ m{/metadata/|/oauth2|token} } @$reqs)
	{
		$seen = 1;
		last;
	}
	sleep(0.05);
}
ok($seen, 'the postmaster asked for a token before its unwrap');
emulator_admin($emu, 'POST', '/faults',
	{ target => 'vault', method => 'POST', path => '/unwrapkey$', action => 'status',
	  status => 503 });
$pg_ctl->finish;
is($pg_ctl->result(0), 0, 'the server started (the postmaster unwrapped the key)')
  or diag($ctl_out . $ctl_err);
$node->_update_pid(1);

# The key worker's first check fails (503 for azure_retry_timeout).
ok( $node->poll_query_until('postgres',
		q{SELECT checks_failed > 0 FROM cmk_storage.status}),
	'the key worker re-validated and failed');
is(field('state'), 'available', 'a transient fault right after start-up leaves the key available');
like(
	$node->safe_psql('postgres',
		q{SELECT event || '|' || outcome || '|' || detail FROM cmk_storage.key_events ORDER BY seq DESC LIMIT 1}),
	qr/^check\|transient\|/, 'the key events record the transient fault');
is($node->safe_psql('postgres', 'SELECT count(*), sum(length(v)) FROM t'), '1000|32000',
	'data readable during the grace period');
my $ok0 = field('checks_ok');

# The vault answers again: the next check succeeds, the key never left.
emulator_admin($emu, 'DELETE', '/faults');
ok( $node->poll_query_until('postgres',
		qq{SELECT checks_ok > $ok0 FROM cmk_storage.status}),
	'checks succeed again when the vault answers');
is(field('state'), 'available', 'key still available');
unlike(slurp_bytes($node->logfile), qr/data encryption key unavailable/,
	'the key was never made unavailable');

$node->stop;
stop_emulator($emu);
done_testing();
