# cmk_restore with the key encryption key in Azure Key Vault (the emulator):
# archived WAL restores byte for byte when the tool runs as the managed
# identity named in its environment (CMK_AZURE_CLIENT_ID and friends, never a
# command-line secret); an identity the vault does not allow to unwrap, and
# an identity endpoint the tool cannot reach, are key errors with their
# documented exit codes, hints written for the tool, and write nothing.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

plan skip_all => 'Node.js is needed for the Key Vault emulator'
  if system('node --version >/dev/null 2>&1') != 0;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $emu = CmkTest::start_emulator(state_dir => "$tmp/kv");
my $id = CmkTest::emulator_admin($emu, 'POST', '/identities',
	{ name => 'pg-server', permissions => [qw(get wrapKey unwrapKey)] });
my $no_unwrap = CmkTest::emulator_admin($emu, 'POST', '/identities',
	{ name => 'reader', permissions => ['get'] });
CmkTest::emulator_admin($emu, 'POST', '/keys/kek', { key_size => 2048 });
my $key_uri = "$emu->{vault_url}/keys/kek";

my $arch = "$tmp/archive";
mkdir $arch or die;
# cmk_node writes a file:// key_uri; the lines below come later and win.
my $node = cmk_node('azrestore', '/nonexistent.pem', init => { allows_streaming => 1 }, conf => qq{
cmk_storage.key_uri = '$key_uri'
cmk_storage.azure_client_id = '$id->{client_id}'
cmk_storage.azure_token_endpoint = '$emu->{token_url}'
cmk_storage.ca_file = '$emu->{ca_file}'
wal_keep_size = '1GB'
} . archive_conf($arch));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $key_st = wait_key_settled($node);
is($key_st->{state}, 'available', 'key from the vault available');

my $marker = random_marker('azwal');
$node->safe_psql('postgres', qq{
CREATE TABLE c (id int PRIMARY KEY, v text) USING cmk_heap;
INSERT INTO c SELECT g, '$marker' || g FROM generate_series(1, 300) g;});
my $seg = archive_current_segment($node);
is_deeply([ files_containing($arch, $marker) ], [], 'no value in clear in the archive directory');

my $restore = $node->config_data('--bindir') . '/cmk_restore';
my $pgdata = $node->data_dir;

# cmk_restore as the identity client_id; returns exit code, stderr.
sub restore_as
{
	my ($client_id, $token_url, @args) = @_;
	local $ENV{CMK_AZURE_CLIENT_ID} = $client_id;
	local $ENV{CMK_AZURE_TOKEN_ENDPOINT} = $token_url;
	local $ENV{CMK_CA_FILE} = $emu->{ca_file};
	local $ENV{CMK_AZURE_RETRY_TIMEOUT_MS} = 2000;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $restore, 'wal', '--dek-id', $key_st->{dek_id}, '--key-uri', $key_uri,
		'--archive-directory', $arch, @args ],
		'>', \$out, '2>', \$err);
	return ($? >> 8, $err);
}

my ($rc, $err) = restore_as($id->{client_id}, $emu->{token_url},
	'--pgdata', $pgdata, $seg, "$tmp/RECOVERYXLOG");
is($rc, 0, 'cmk_restore wal with the key in the vault: exit 0') or diag $err;
ok(-f "$tmp/RECOVERYXLOG" && slurp_bytes("$tmp/RECOVERYXLOG") eq slurp_bytes("$pgdata/pg_wal/$seg"),
	'the restored segment is byte for byte the original');

($rc, $err) = restore_as($no_unwrap->{client_id}, $emu->{token_url}, $seg, "$tmp/denied");
is($rc, 201, 'an identity without unwrapKey: exit 201 (key unavailable)') or diag $err;
note("identity without unwrapKey: $err");
like($err, qr/unwrap/i, 'identity without unwrapKey: the message names the refused operation');
like($err, qr/hint:.*Grant the managed identity this command runs as \(CMK_AZURE_CLIENT_ID\).*Unwrap Key.*Then run the command again\./s,
	'identity without unwrapKey: the hint says which identity needs what, then to run the tool again');
unlike($err, qr/server's managed identity/,
	'identity without unwrapKey: the hint does not send the user to the server\'s identity');
ok(!-e "$tmp/denied", 'identity without unwrapKey: nothing written');
my $err_denied = $err;

# A token endpoint where nothing listens: a port that was free a moment ago.
my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
($rc, $err) = restore_as($id->{client_id}, "http://127.0.0.1:$dead_port/metadata/identity/oauth2/token",
	$seg, "$tmp/unreachable");
is($rc, 201, 'identity endpoint unreachable: exit 201 (key unavailable)') or diag $err;
note("identity endpoint unreachable: $err");
like($err, qr/hint:.*azure_token_endpoint.*Run the command again.*CMK_AZURE_TOKEN_ENDPOINT/s,
	'identity endpoint unreachable: the hint says to run the tool again and names the variable it reads');
ok(!-e "$tmp/unreachable", 'identity endpoint unreachable: nothing written');
unlike("$err_denied$err", qr/keeps retrying|at the next check/,
	'no hint promises a retry or a check the tool does not make');

$node->stop;
CmkTest::stop_emulator($emu);
done_testing();
