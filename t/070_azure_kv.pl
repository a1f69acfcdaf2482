# Azure Key Vault provider against the emulator (emulator/README.md).
#
# The DEK is wrapped by the vault and the versioned kid recorded; a restart
# unwraps with exactly that version; a rotation behind a versionless URI is
# adopted by the worker itself; disabling, revoking or deleting the key makes
# data unavailable within a check or two and it heals without a restart;
# throttling, server errors, dropped connections, IMDS hiccups and expired
# tokens are absorbed by retries; an expired key still unwraps but no longer
# wraps; an unknown identity and an untrusted CA are configuration errors
# with hints; a vault that is down at start-up leaves the server up with a
# transient reason and nothing written, and it heals when the vault returns;
# no token, DEK or IDENTITY_HEADER reaches a log.
use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use CmkTest;

plan skip_all => 'Node.js is needed for the Key Vault emulator'
  if system('node --version >/dev/null 2>&1') != 0;

my $t_start = time;
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $state_dir = "$tmp/kv";
my $emu = start_emulator(state_dir => $state_dir);
diag(sprintf('emulator up after %.1f s', time - $t_start));

my $id = emulator_admin($emu, 'POST', '/identities',
	{ name => 'pg-server', permissions => [qw(get wrapKey unwrapKey)] });
# With two identities IMDS needs the selector, as on a real VM.
my $other = emulator_admin($emu, 'POST', '/identities',
	{ name => 'other-app', permissions => ['all'] });
emulator_admin($emu, 'POST', '/keys/kek', { key_size => 2048 });

my $key_uri = "$emu->{vault_url}/keys/kek";
my $azure_conf = <<"CONF";
cmk_storage.key_uri = '$key_uri'
cmk_storage.azure_client_id = '$id->{client_id}'
cmk_storage.azure_token_endpoint = '$emu->{token_url}'
cmk_storage.ca_file = '$emu->{ca_file}'
cmk_storage.key_check_interval = 1
cmk_storage.azure_retry_timeout = '5s'
CONF
# cmk_node writes a file:// key_uri; the lines above come later and win.
my $node = cmk_node('azure', '/nonexistent.pem', conf => $azure_conf);

# --- helpers ----------------------------------------------------------------------

# Hashes of every token the emulator issued (state.json keeps the SHA-256 of
# unexpired tokens only, so collect before expiring them).
my %token_hashes;
my $request_log_text = '';

sub collect_token_hashes
{
	my $state = decode_json(slurp_bytes("$state_dir/state.json"));
	$token_hashes{$_} = 1 for keys %{ $state->{tokens} };
}

sub mark
{
	return emulator_admin($emu, 'GET', '/requests?since=999999999')->{last_seq};
}

sub requests_since
{
	my ($m) = @_;
	return @{ emulator_admin($emu, 'GET', "/requests?since=$m")->{requests} };
}

sub version_of
{
	my ($kid) = @_;
	return ($kid =~ m{/([0-9a-f]{32})$})[0];
}

# The private key of a vault key version, as a PEM file (to check the wrap).
sub version_pem
{
	my ($kid) = @_;
	my $ver = version_of($kid);
	my $state = decode_json(slurp_bytes("$state_dir/state.json"));
	for my $v (@{ $state->{keys}{kek}{versions} })
	{
		next unless $v->{version} eq $ver;
		my $f = "$tmp/$ver.pem";
		spew_bytes($f, $v->{private_key});
		chmod 0600, $f;
		return $f;
	}
	die "no key version $ver in the emulator state";
}

sub data
{
	return $node->safe_psql('postgres', 'SELECT count(*), sum(id) FROM t');
}

sub check
{
	return $node->safe_psql('postgres', 'SELECT available, message FROM cmk_storage.check_key()');
}

sub status_field
{
	my ($n, $field) = @_;
	return $n->safe_psql('postgres', "SELECT coalesce(${field}::text, '') FROM cmk_storage.key_status()");
}

sub wait_state
{
	my ($n, $state) = @_;
	my $t0 = time;
	$n->poll_query_until('postgres',
		"SELECT state = '$state' FROM cmk_storage.key_status()") or return undef;
	return time - $t0;
}

sub last_event
{
	my ($n) = @_;
	return $n->safe_psql('postgres',
		'SELECT event, outcome, detail FROM cmk_storage.key_events ORDER BY seq DESC LIMIT 1');
}

sub set_conf
{
	my ($conf) = @_;
	$node->append_conf('postgresql.conf', $conf);
	$node->reload;
	# The worker reads the file at its next wake-up; give it a moment.
	sleep(0.5);
}

# --- first start: the vault wraps, the control file records the versioned kid ---
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $st = wait_key_settled($node);
is($st->{state}, 'available', 'first start: key available');
like($st->{kek_id}, qr{^\Q$key_uri\E/[0-9a-f]{32}$}, 'first start: KEK id is the versioned kid');
my $kid1 = $st->{kek_id};
is(control_kid($node), $kid1, 'first start: control file records the versioned kid');
is(status_field($node, 'provider'), 'azure', 'provider is azure');
my @reqs = requests_since(0);
my $v1 = version_of($kid1);
ok((grep { $_->{server} eq 'vault' && $_->{path} =~ m{^/keys/kek/$v1/wrapkey$} && $_->{status} == 200 } @reqs),
	'first start: wrapped by the vault with that exact version');
ok((grep { $_->{server} eq 'token' && $_->{status} == 200 && ($_->{query}{client_id} // '') eq $id->{client_id} } @reqs),
	'token from IMDS for cmk_storage.azure_client_id');
my $dek = unwrap_dek(control_path($node), version_pem($kid1), $tmp);
is(length($dek), 32, 'the wrapped DEK opens with the private key of that version');
is(unpack('H*', substr(Digest::SHA::hmac_sha256('cmk_storage/v1/dek-identifier', $dek), 0, 16)),
	$st->{dek_id}, 'and it is the DEK the server uses');

$node->safe_psql('postgres', q{
CREATE TABLE t (id int, secret text) USING cmk_heap;
INSERT INTO t SELECT g, 'secret ' || g FROM generate_series(1, 100) g;
});
collect_token_hashes();

# --- restart unwraps with exactly the recorded kid -----------------------------------
my $control = slurp_bytes(control_path($node));
my $m = mark();
$st = restart_expect($node);
is($st->{state}, 'available', 'restart: key available');
is(slurp_bytes(control_path($node)), $control, 'restart: control file unchanged');
is(data(), '100|5050', 'restart: data readable');
@reqs = requests_since($m);
ok((grep { $_->{path} eq "/keys/kek/$v1/unwrapkey" && $_->{status} == 200 } @reqs),
	'restart: unwrapkey on the recorded version');
ok(!(grep { $_->{path} =~ m{/wrapkey$} } @reqs), 'restart: nothing wrapped');

# --- retries are transparent ------------------------------------------------------------
my $failed0 = status_field($node, 'checks_failed');

$m = mark();
emulator_admin($emu, 'POST', '/faults',
	{ target => 'vault', method => 'POST', path => '/unwrapkey$', action => 'status',
	  status => 429, retry_after => 1, times => 2 });
is(check(), 't|key available', '429 with Retry-After: absorbed');
@reqs = grep { $_->{path} =~ /unwrapkey$/ } requests_since($m);
is(join(',', map { $_->{status} } @reqs[0 .. 2]), '429,429,200', '429, 429, then unwrapped');
sub secs { my ($t) = @_; $t =~ /T(\d+):(\d+):([\d.]+)Z/; return $1 * 3600 + $2 * 60 + $3; }
cmp_ok(secs($reqs[2]{time}) - secs($reqs[0]{time}), '>=', 1.9, 'Retry-After honoured');

$m = mark();
emulator_admin($emu, 'POST', '/faults', { target => 'vault', action => 'status', status => 503, times => 1 });
emulator_admin($emu, 'POST', '/faults', { target => 'vault', action => 'drop', times => 1 });
is(check(), 't|key available', '503 and a dropped connection: absorbed');
@reqs = grep { $_->{server} eq 'vault' } requests_since($m);
is(join(',', map { $_->{status} // 'drop' } @reqs[0 .. 2]), '503,drop,200',
	'503, dropped, then answered');

# A vault that hangs: the attempt times out and is retried, not waited for.
set_conf("cmk_storage.azure_request_timeout = '1s'\n");
emulator_admin($emu, 'POST', '/faults',
	{ target => 'vault', method => 'POST', path => '/unwrapkey$', action => 'latency', latency_ms => 4000, times => 1 });
my $t0 = time;
is(check(), 't|key available', 'a hanging request: timed out and retried');
cmp_ok(time - $t0, '<', 3.5, 'the hanging request was not waited for');
set_conf("cmk_storage.azure_request_timeout = '10s'\n");

# Tokens: every token expires at once; IMDS then answers 404 and 500 first.
collect_token_hashes();
$m = mark();
emulator_admin($emu, 'POST', '/faults', { target => 'token', path => '^/metadata/', action => 'status', status => 404, times => 1 });
emulator_admin($emu, 'POST', '/faults', { target => 'token', path => '^/metadata/', action => 'status', status => 500, times => 1 });
emulator_admin($emu, 'POST', '/tokens/expire');
is(check(), 't|key available', 'token expired mid-run: refreshed');
@reqs = requests_since($m);
is(join(',', map { "$_->{server}:" . ($_->{status} // 'drop') } @reqs[0 .. 4]),
	'vault:401,token:404,token:500,token:200,vault:200',
	'401 -> fresh token (IMDS 404 and 500 retried) -> request retried once');
is(status_field($node, 'checks_failed'), $failed0, 'no check failed during faults');
is(status_field($node, 'state'), 'available', 'key stayed available');
collect_token_hashes();

# --- rotation behind the versionless URI is adopted by the worker -----------------------
my $kid2 = emulator_admin($emu, 'POST', '/keys/kek/rotate')->{key}{kid};
isnt($kid2, $kid1, 'key rotated in the vault');
$t0 = time;
sleep(0.2) while control_kid($node) ne $kid2 && time - $t0 < 15;
is(control_kid($node), $kid2, 'rotation: control file re-wrapped with the new version, no restart');
diag(sprintf('re-wrap after %.1f s (interval 1 s)', time - $t0));
is(status_field($node, 'kek_id'), $kid2, 'rotation: status shows the new kid');
is(unwrap_dek(control_path($node), version_pem($kid2), $tmp), $dek, 'rotation: same DEK, new KEK version');
is(data(), '100|5050', 'rotation: data readable');
like(last_event($node), qr/^rotate\|success\|/m, 'rotation: audited');

# --- an expired version still unwraps but no longer wraps -----------------------------
emulator_admin($emu, 'PATCH', '/keys/kek', { attributes => { exp => int(time) - 60 } });
is(check(), 't|key available', 'expired key: unwrap still allowed');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT cmk_storage.rotate_key()');
like($err, qr/could not re-wrap.*expired at .*can no longer wrap/, 'expired key: wrap refused, with the reason');
emulator_admin($emu, 'PATCH', '/keys/kek', { attributes => { exp => undef } });

# --- RSA-OAEP and a versioned URI ----------------------------------------------------------
set_conf("cmk_storage.wrap_algorithm = 'RSA-OAEP'\n");
like($node->safe_psql('postgres', "SELECT cmk_storage.rotate_key('$kid1')"),
	qr/re-wrapped with \Q$kid1\E/, 'versioned URI: re-wrapped with that version');
is(status_field($node, 'wrap_algorithm'), 'RSA-OAEP', 'RSA-OAEP recorded');
is(check(), 't|key available', 'RSA-OAEP: unwraps');
set_conf("cmk_storage.wrap_algorithm = 'RSA-OAEP-256'\n");
like($node->safe_psql('postgres', 'SELECT cmk_storage.rotate_key()'),
	qr/re-wrapped with \Q$kid2\E/, 'back to the versionless URI: latest version');

# --- denials take effect within a check or two, and heal ---------------------------------
sub expect_unavailable
{
	my ($name, $break, $reason_re, $hint_re, $outcome, $heal) = @_;
	my $before = slurp_bytes(control_path($node));
	my $t0 = time;
	$break->();
	my $el = wait_state($node, 'unavailable');
	ok(defined $el, "$name: key unavailable without a restart");
	cmp_ok(time - $t0, '<', 5, "$name: within a few check intervals");
	diag(sprintf('%s: unavailable after %.1f s', $name, time - $t0));
	like(status_field($node, 'reason'), $reason_re, "$name: reason");
	like(status_field($node, 'hint'), $hint_re, "$name: hint");
	like(last_event($node), qr/\|$outcome\|/, "$name: audited as $outcome");
	my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM t LIMIT 1');
	like($err, qr/data encryption key is unavailable: .*$reason_re/, "$name: encrypted table refuses access");
	is(slurp_bytes(control_path($node)), $before, "$name: control file untouched");
	$heal->();
	ok(defined wait_state($node, 'available'), "$name: heals without a restart");
	is(data(), '100|5050', "$name: data readable again");
}

expect_unavailable('key disabled',
	sub { emulator_admin($emu, 'POST', '/keys/kek/disable') },
	qr/KeyDisabled/, qr/Enable it/, 'denied',
	sub { emulator_admin($emu, 'POST', '/keys/kek/enable') });

# Under load: pgbench on the encrypted table sees the revocation within an
# interval, and works again once the key is enabled.
{
	my $script = "$tmp/bench.sql";
	open my $fh, '>', $script or die;
	print $fh "\\set id random(1, 100)\nUPDATE t SET id = id WHERE id = :id;\nSELECT count(*) FROM t WHERE id = :id;\n";
	close $fh;
	my @bench = ('pgbench', '-n', '-c', '2', '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres');
	my ($out1, $err1) = ('', '');
	my $t0 = time;
	my $run = IPC::Run::start([ @bench, '-T', '8' ], '>', \$out1, '2>', \$err1);
	sleep(1.5);
	emulator_admin($emu, 'POST', '/keys/kek/disable');
	my $disabled_at = time;
	$run->finish;
	like($err1, qr/data encryption key is unavailable: .*KeyDisabled/,
		'pgbench under load: statements fail once the key is disabled');
	cmp_ok(time - $disabled_at, '<', 8, 'pgbench under load: its clients stopped before the run ended');
	my ($tx1) = $out1 =~ /actually processed: (\d+)/;
	cmp_ok($tx1 // 0, '>', 10, "pgbench under load: transactions ran before ($tx1)");
	emulator_admin($emu, 'POST', '/keys/kek/enable');
	ok(defined wait_state($node, 'available'), 'pgbench under load: key back after enable');
	my ($out2, $err2) = ('', '');
	IPC::Run::run([ @bench, '-T', '3' ], '>', \$out2, '2>', \$err2);
	like($out2, qr/number of failed transactions: 0 /, 'pgbench after enable: zero failed transactions');
	is(data(), '100|5050', 'pgbench under load: data intact');
}

expect_unavailable('unwrapKey permission revoked',
	sub { emulator_admin($emu, 'POST', '/identities/pg-server/revoke', { permissions => ['unwrapKey'] }) },
	qr{Forbidden/AccessDenied}, qr/Unwrap Key.*Key Vault Crypto Service Encryption User/, 'denied',
	sub { emulator_admin($emu, 'POST', '/identities/pg-server/grant', { permissions => ['unwrapKey'] }) });

expect_unavailable('key deleted',
	sub { emulator_admin($emu, 'POST', '/keys/kek/delete') },
	qr/KeyNotFound/, qr/az keyvault key recover/, 'denied',
	sub { emulator_admin($emu, 'POST', '/keys/kek/recover') });

expect_unavailable('malformed vault response',
	sub { emulator_admin($emu, 'POST', '/faults', { target => 'vault', method => 'POST', path => '/unwrapkey$', action => 'malformed' }) },
	qr/malformed unwrapkey response/, qr/TLS-inspecting proxy/, 'failure',
	sub { emulator_admin($emu, 'DELETE', '/faults') });

expect_unavailable('identity not found',
	sub { set_conf("cmk_storage.azure_client_id = '00000000-0000-0000-0000-00000000beef'\n") },
	qr/refused to issue a token .*invalid_request.*Identity not found/, qr/azure_client_id/, 'failure',
	sub { set_conf("cmk_storage.azure_client_id = '$id->{client_id}'\n") });

expect_unavailable('CA not trusted (cmk_storage.ca_file unset)',
	sub { set_conf("cmk_storage.ca_file = ''\n") },
	qr/TLS verification of Azure Key Vault .* failed/, qr/set cmk_storage\.ca_file .*cannot be turned off/, 'failure',
	sub { set_conf("cmk_storage.ca_file = '$emu->{ca_file}'\n") });
collect_token_hashes();

# --- App Service / Container Apps identity endpoint ------------------------------------
my $identity_header = emulator_admin($emu, 'GET', '/config')->{identity_header};
$m = mark();
{
	local $ENV{IDENTITY_ENDPOINT} = $emu->{app_service_url};
	local $ENV{IDENTITY_HEADER} = $identity_header;
	$st = restart_expect($node, "cmk_storage.azure_token_endpoint = ''\n");
}
is($st->{state}, 'available', 'App Service endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER): available');
ok((grep { $_->{server} eq 'token' && $_->{path} eq '/msi/token' && $_->{status} == 200 } requests_since($m)),
	'token from the App Service endpoint');
collect_token_hashes();
$request_log_text .= encode_json(emulator_admin($emu, 'GET', '/requests'));

# --- vault down at start-up -----------------------------------------------------------------
$node->stop;
$control = slurp_bytes(control_path($node));
$node->append_conf('postgresql.conf', "cmk_storage.azure_token_endpoint = '$emu->{token_url}'\n");
stop_emulator($emu);
my $node2 = cmk_node('azure_fresh', '/nonexistent.pem', conf => $azure_conf);
$node->start;
$node2->start;
$node2->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
$st = wait_key_settled($node);
is($st->{state}, 'unavailable', 'vault down at start-up: server up, key unavailable');
like($st->{reason}, qr/could not reach/, 'vault down: reason says the endpoint is unreachable');
like(last_event($node), qr/\|transient\|.*\(will retry\)/, 'vault down: a transient failure');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'vault down: unencrypted work goes on');
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM t LIMIT 1');
like($err, qr/data encryption key is unavailable/, 'vault down: encrypted table refuses access');
is(slurp_bytes(control_path($node)), $control, 'vault down: control file untouched');
is(wait_key_settled($node2)->{state}, 'unavailable', 'vault down, fresh cluster: key unavailable');
ok(!-e control_path($node2), 'vault down, fresh cluster: no key created, nothing written');

$emu = start_emulator(state_dir => $state_dir, port => $emu->{port}, identity_port => $emu->{identity_port});
ok(defined wait_state($node, 'available'), 'vault back: key available without a restart');
is(data(), '100|5050', 'vault back: data readable');
ok(defined wait_state($node2, 'available'), 'vault back, fresh cluster: key created');
like(control_kid($node2), qr{^\Q$key_uri\E/[0-9a-f]{32}$}, 'fresh cluster: versioned kid recorded');

# --- no secret in any log ----------------------------------------------------------------------
# A token of another identity, planted in the haystack, proves the scan works.
my $r = HTTP::Tiny->new->get("$emu->{token_url}?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=$other->{client_id}",
	{ headers => { Metadata => 'true' } });
my $probe = decode_json($r->{content})->{access_token};
collect_token_hashes();
$request_log_text .= encode_json(emulator_admin($emu, 'GET', '/requests'));
my $token_len = length($probe);
$node->stop;
$node2->stop;
my $logs = slurp_bytes($node->logfile) . slurp_bytes($node2->logfile);
my $hay = $logs . $request_log_text . "x$probe";
my %hit;
# Every window of a token's length, hashed: finds a token wherever it is.
while ($hay =~ /(?=([A-Za-z0-9_\-]{$token_len}))/g)
{
	$hit{$1} = 1 if $token_hashes{ sha256_hex($1) };
}
ok(exists $hit{$probe}, 'token scan finds a planted token (not vacuous)');
delete $hit{$probe};
ok(scalar(keys %token_hashes) >= 4, 'several tokens were issued');
is(scalar(keys %hit), 0, 'no access token in the server logs or the request log');
unlike($request_log_text, qr/Bearer|access_token|authorization/i, 'request log holds no credentials');
ok(index($logs, $identity_header) < 0, 'IDENTITY_HEADER not in the server log');
my $b64 = encode_base64($dek, '');
(my $b64url = $b64) =~ tr{+/}{-_};
$b64url =~ s/=+$//;
ok(index($logs, $dek) < 0 && index(lc $logs, unpack('H*', $dek)) < 0
	  && index($logs, $b64) < 0 && index($logs, $b64url) < 0,
	'DEK (raw, hex, base64, base64url) not in the server logs');

diag(sprintf('070_azure_kv took %.1f s', time - $t_start));
done_testing();
