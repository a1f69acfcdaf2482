# Key custody: the DEK is created once, reused byte for byte, and every
# fault (wrong KEK, damaged or foreign control file, bad key file) gives its
# documented error and leaves the control file untouched.
use strict;
use warnings;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem", bits => 3072);
my $node = cmk_node('keys', $kek);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');

# --- first start --------------------------------------------------------------
my $st = wait_key_settled($node);
is($st->{state}, 'available', 'first start: key available');
like($st->{kek_id}, qr/^file:sha256:[0-9a-f]{64}$/, 'KEK id is the key fingerprint');
opendir(my $dh, $node->data_dir . '/cmk_storage') or die;
my @entries = sort grep { !/^\.\.?$/ } readdir $dh;
closedir $dh;
is_deeply(\@entries, ['audit_trail', 'control', 'nonce_epochs'],
	'first start created the control file, an empty nonce epoch file and the audit trail');
is(length(slurp_bytes($node->data_dir . '/cmk_storage/nonce_epochs')), 88, 'nonce epoch file: header, MAC, pending count and checksum, no epoch yet');
ok(!-e $node->data_dir . '/cmk_storage.new', 'no staging directory left behind');
my $control = slurp_bytes(control_path($node));
is(length($control), 2048, 'control file is 2048 bytes');
is((stat(control_path($node)))[2] & 07777, 0600, 'control file mode 0600');
is((stat($node->data_dir . '/cmk_storage/nonce_epochs'))[2] & 07777, 0600, 'nonce epoch file mode 0600');
is((stat($node->data_dir . '/cmk_storage/audit_trail'))[2] & 07777, 0600, 'audit trail file mode 0600');

# The DEK unwrapped with the private key matches the DEK identifier shown.
my $dek = unwrap_dek(control_path($node), $kek, $tmp);
is(length($dek), 32, 'wrapped DEK is 256 bits');
is(unpack('H*', substr(hmac_sha256('cmk_storage/v1/dek-identifier', $dek), 0, 16)),
	$st->{dek_id}, 'DEK identifier is HMAC-SHA256(DEK) and matches the status');

$node->safe_psql('postgres', q{
CREATE TABLE t (id int, secret text) USING cmk_heap;
INSERT INTO t SELECT g, 'secret ' || g FROM generate_series(1, 100) g;
});

# --- restart reuses the control file byte for byte ------------------------------
$st = restart_expect($node);
is($st->{state}, 'available', 'restart: key available');
is(slurp_bytes(control_path($node)), $control, 'restart: control file unchanged');
is($node->safe_psql('postgres', 'SELECT count(*), sum(id) FROM t'), '100|5050', 'restart: data readable');

# --- faults ----------------------------------------------------------------------
my $table_error = qr/cannot access encrypted relation "t": the data encryption key is unavailable/;

sub check_fault
{
	my ($name, $reason_re, %opt) = @_;
	my $st = key_status($node);
	is($st->{state}, 'unavailable', "$name: key unavailable");
	like($st->{reason}, $reason_re, "$name: reason");
	my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM t LIMIT 1');
	like($err, $table_error, "$name: encrypted table refuses access");
	unlike($err, qr/secret/, "$name: no data in the error");
	is(slurp_bytes(control_path($node)), $opt{expect_control} // $control,
		"$name: control file left untouched")
	  unless $opt{no_control_check};
	my ($r2, $o2) = $node->psql('postgres', 'SELECT 1');
	is($o2, '1', "$name: server still serves unencrypted work");
}

# The key file now holds another key (the recorded key is gone).
my $other = new_kek("$tmp/other.pem", bits => 2048);
my $kek_pem = slurp_bytes($kek);
$node->stop;
spew_bytes($kek, slurp_bytes($other));
$node->start;
wait_key_settled($node);
check_fault('wrong KEK', qr/different key than the one that wrapped/);
$node->stop;
spew_bytes($kek, $kek_pem);
$node->start;
is(wait_key_settled($node)->{state}, 'available', 'right KEK again: available');

# One flipped byte in the middle.
$node->stop;
my $flipped = $control;
substr($flipped, 700, 1) = chr(ord(substr($flipped, 700, 1)) ^ 0x01);
spew_bytes(control_path($node), $flipped);
$node->start;
wait_key_settled($node);
check_fault('flipped byte', qr/checksum mismatch/, expect_control => $flipped);

$node->stop;
spew_bytes(control_path($node), substr($control, 0, 1000));
$node->start;
wait_key_settled($node);
check_fault('truncated', qr/has 1000 bytes, expected 2048/, expect_control => substr($control, 0, 1000));

# A control file from another cluster, wrapped by the same KEK.
my $node2 = cmk_node('keys2', $kek);
$node2->start;
$node2->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node2);
$node2->stop;
my $foreign = slurp_bytes(control_path($node2));
$node->stop;
spew_bytes(control_path($node), $foreign);
$node->start;
wait_key_settled($node);
check_fault('foreign control file', qr/belongs to another cluster/, expect_control => $foreign);

# The directory without its file: never a new key.
$node->stop;
unlink control_path($node);
$node->start;
wait_key_settled($node);
check_fault('missing control file', qr/missing although its directory exists/, no_control_check => 1);
ok(!-e control_path($node), 'missing control file: no new key created');

$node->stop;
spew_bytes(control_path($node), $control);
chmod 0600, control_path($node);
$node->start;
is(wait_key_settled($node)->{state}, 'available', 'restored control file: available');

# Key file problems, at the recorded location.
sub with_key_file
{
	my ($name, $setup, $reason) = @_;
	$node->stop;
	$setup->();
	$node->start;
	wait_key_settled($node);
	check_fault($name, $reason);
	$node->stop;
	unlink $kek;
	spew_bytes($kek, $kek_pem);
	chmod 0600, $kek;
	$node->start;
	is(wait_key_settled($node)->{state}, 'available', "$name: fixed, available again");
}
with_key_file('missing key file', sub { unlink $kek }, qr/could not open key file ".*kek.pem": No such file/);
with_key_file('unreadable key file', sub { chmod 0000, $kek }, qr/could not open key file .*Permission denied/);
with_key_file('group-readable key file', sub { chmod 0640, $kek }, qr/has group or world access/);
my $small = new_kek("$tmp/small.pem", bits => 1024);
with_key_file('RSA-1024 key', sub { spew_bytes($kek, slurp_bytes($small)) }, qr/1024 bits, which is not supported/);
my $ec = new_kek("$tmp/ec.pem", ec => 1);
with_key_file('EC key', sub { spew_bytes($kek, slurp_bytes($ec)) }, qr/non-RSA key/);

# Wrapping with an unusable key is refused and changes nothing.
for my $bad ([ "file://$tmp/small.pem", qr/1024 bits, which is not supported/ ],
	[ 'file://relative/kek.pem', qr/does not name an absolute path/ ],
	[ 'vault://nowhere', qr/names no supported key provider/ ])
{
	my ($uri, $re) = @$bad;
	my ($r, $o, $e) = $node->psql('postgres', "SELECT cmk_storage.rotate_key('$uri')");
	like($e, $re, "rotate_key($uri) refused");
}
is(slurp_bytes(control_path($node)), $control, 'refused re-wraps left the control file untouched');

# --- all well again ----------------------------------------------------------------
$st = restart_expect($node);
is($st->{state}, 'available', 'final: available');
is($node->safe_psql('postgres', 'SELECT count(*), sum(id) FROM t'), '100|5050', 'final: data intact');
is(slurp_bytes(control_path($node)), $control, 'final: control file is the original');

# --- the DEK never reaches the log -------------------------------------------------
$node->stop;
my $log = slurp_bytes($node->logfile) . slurp_bytes($node2->logfile);
my $hex = unpack('H*', $dek);
ok(index($log, $dek) < 0, 'DEK bytes not in the server log');
ok(index(lc($log), $hex) < 0, 'DEK hex not in the server log');
my $b64 = encode_base64($dek, '');
(my $b64url = $b64) =~ tr{+/}{-_};
$b64url =~ s/=+$//;
ok(index($log, $b64) < 0 && index($log, $b64url) < 0, 'DEK base64 not in the server log');
like($log, qr/created a new data encryption key/, 'key creation is logged');

done_testing();
