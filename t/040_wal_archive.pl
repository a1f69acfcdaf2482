# archive_library = 'cmk_storage' encrypts archived WAL, cmk_restore wal
# decrypts it exactly, and every kind of damage to an archived file is
# refused with the documented exit code (docs/streams-runbook.md).
use strict;
use warnings;
use Digest::SHA qw(sha256);
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $other_kek = new_kek("$tmp/other.pem");
my $arch = "$tmp/archive";
mkdir $arch or die;

my $node = cmk_node('arch', $kek, init => { allows_streaming => 1 },
	conf => archive_conf($arch) . "wal_keep_size = '1GB'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $key_st = wait_key_settled($node);
is($key_st->{state}, 'available', 'key available');
# the trust anchor every restore needs (t/055)
my @anchor = ('--dek-id', $key_st->{dek_id});
my $pgdata = $node->data_dir;
my $restore = $node->config_data('--bindir') . '/cmk_restore';

# --- archive two segments holding heap and cmk_heap values ------------------------
my $m_heap = random_marker('heapval');
my $m_cmk = random_marker('cmkval');
$node->safe_psql('postgres', qq{
CREATE TABLE h (id int PRIMARY KEY, v text);
CREATE TABLE c (id int PRIMARY KEY, v text) USING cmk_heap;
INSERT INTO h SELECT g, '$m_heap' || g FROM generate_series(1, 300) g;
INSERT INTO c SELECT g, '$m_cmk' || g FROM generate_series(1, 300) g;
});
my $seg1 = archive_current_segment($node);
$node->safe_psql('postgres', "INSERT INTO h SELECT g, 'second' || g FROM generate_series(301, 400) g");
my $seg2 = archive_current_segment($node);
is($node->safe_psql('postgres', 'SELECT failed_count FROM pg_stat_archiver'), '0',
	'archiver reported no failure');

ok(-f "$arch/$seg1" && -f "$arch/$seg2", 'segments archived under their WAL file names');
is(substr(slurp_bytes("$arch/$seg1"), 0, 8), "CMKSTRM\0", 'archived segment is a cmk_storage stream');
ok(scalar(files_containing("$pgdata/pg_wal", $m_heap)) > 0,
	'(control) the heap value is in clear in pg_wal');
is_deeply([ files_containing($arch, $m_heap, $m_cmk, 'second301') ], [],
	'no heap or cmk_heap value in clear in the archive directory');
is_deeply([ grep { /archtemp/ } glob("$arch/*") ], [], 'no temporary file left behind');

# --- round trip ------------------------------------------------------------------------
sub run_restore
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $restore, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $err, $out);
}

my @key = ('--key-uri', "file://$kek", @anchor);
my $out = "$tmp/out";
mkdir $out or die;
my ($rc, $err) = run_restore('wal', @key, '--archive-directory', $arch, '--pgdata', $pgdata,
	$seg1, "$out/RECOVERYXLOG");
is($rc, 0, 'cmk_restore wal: exit 0') or diag $err;
ok(slurp_bytes("$out/RECOVERYXLOG") eq slurp_bytes("$pgdata/pg_wal/$seg1"),
	'restored segment is byte for byte the original');
ok(!-e "$out/RECOVERYXLOG.cmk_partial", 'no partial file left');

# The key URI recorded in the cluster's control file is the default.
($rc, $err) = run_restore('wal', @anchor, '--archive-directory', $arch, '--pgdata', $pgdata,
	$seg2, "$out/seg2");
is($rc, 0, 'key URI taken from the control file') or diag $err;
ok(slurp_bytes("$out/seg2") eq slurp_bytes("$pgdata/pg_wal/$seg2"), 'second segment identical');

($rc, $err) = run_restore('verify', @key, "$arch/$seg1", "$arch/$seg2");
is($rc, 0, 'cmk_restore verify: both segments authentic') or diag $err;
($rc, $err, my $info) = run_restore('info', "$arch/$seg1");
like($info, qr/wal-archive "$seg1", chunk 65536/, 'cmk_restore info shows the header');

# An independent implementation of docs/stream-format.md decodes the same bytes.
SKIP:
{
	my $ref = -f 'scripts/cmk_stream_ref.py' ? 'scripts/cmk_stream_ref.py'
	  : -f "$ENV{REPO}/scripts/cmk_stream_ref.py" ? "$ENV{REPO}/scripts/cmk_stream_ref.py" : undef;
	skip 'reference decoder or python3-cryptography not available', 1
	  unless $ref && system('python3 -c "import cryptography" 2>/dev/null') == 0;
	spew_bytes("$tmp/dek.bin", unwrap_dek(control_path($node), $kek, $tmp));
	my $plain = '';
	IPC::Run::run([ 'python3', $ref, 'decrypt', "$tmp/dek.bin", "$arch/$seg1" ], '>', \$plain);
	unlink "$tmp/dek.bin";
	ok($plain eq slurp_bytes("$pgdata/pg_wal/$seg1"),
		'the reference decoder written from the format document agrees');
}

# --- the end of the archive and configuration errors -------------------------------------
($rc, $err) = run_restore('wal', @key, '--archive-directory', $arch, '--pgdata', $pgdata,
	'0000000100000000000000FE', "$out/missing");
is($rc, 1, 'file not in the archive: exit 1 (normal end of archive)');
like($err, qr/is not in the archive/, 'missing file: message');
ok(!-e "$out/missing" && !-e "$out/missing.cmk_partial", 'missing file: nothing written');
($rc, $err) = run_restore('wal', @key, '--archive-directory', "$tmp/nonexistent", $seg1, "$out/x");
is($rc, 200, 'archive directory missing: exit 200, never mistaken for the end of the archive');
($rc, $err) = run_restore('wal', @anchor, '--key-uri', "file://$other_kek", '--archive-directory', $arch,
	$seg1, "$out/x");
is($rc, 202, 'another KEK: exit 202 (wrong key)');
like($err, qr/different key/, 'wrong key: message');
($rc, $err) = run_restore('wal', @anchor, '--key-uri', "file://$other_kek", '--key-uri', "file://$kek",
	'--archive-directory', $arch, $seg1, "$out/two_keys");
is($rc, 0, 'several key URIs: the one that wrapped the file is used') or diag $err;
($rc, $err) = run_restore('wal', @anchor, '--key-uri', "file://$tmp/absent.pem", '--archive-directory', $arch,
	$seg1, "$out/x");
is($rc, 201, 'KEK unreachable: exit 201 (key unavailable)');
($rc, $err) = run_restore('wal', '--key-uri', "file://$kek", '--archive-directory', $arch,
	'--dek-id', '00' x 16, $seg1, "$out/x");
is($rc, 202, 'file of another DEK (cluster): exit 202');
like($err, qr/not a trusted one/, 'file of another DEK: message');
ok(!-e "$out/x", 'no output after key errors');

# --- tampering ---------------------------------------------------------------------------
my $orig = slurp_bytes("$arch/$seg1");
my $other = slurp_bytes("$arch/$seg2");
my $hlen = unpack('n', substr($orig, 10, 2));
my $rec = 65536 + 16;
my $n = 0;

sub flip
{
	my ($data, $off) = @_;
	substr($data, $off, 1) = chr(ord(substr($data, $off, 1)) ^ 0x01);
	return $data;
}

sub tampered
{
	my ($name, $data, $like) = @_;
	my $dir = "$tmp/tamper" . $n++;
	make_path($dir);
	spew_bytes("$dir/$seg1", $data);
	my ($rc, $err) = run_restore('wal', @key, '--archive-directory', $dir, '--pgdata', $pgdata,
		$seg1, "$dir/RECOVERYXLOG");
	is($rc, 203, "$name: exit 203 (tampered)") or diag $err;
	like($err, $like, "$name: message") if $like;
	ok(!-e "$dir/RECOVERYXLOG" && !-e "$dir/RECOVERYXLOG.cmk_partial", "$name: nothing written");
}

tampered('magic', flip($orig, 0), qr/signature/);
tampered('version', flip($orig, 9), qr/version/);
tampered('salt', flip($orig, 50), qr/checksum/);
tampered('wrapped DEK', flip($orig, 120), qr/checksum/);
tampered('file name', flip($orig, $hlen - 60), qr/checksum/);
tampered('header tag', flip($orig, $hlen - 1), qr/header failed authentication/);
{
	# A field changed and the plain checksum recomputed: the header tag catches it.
	my $d = flip($orig, 80);
	substr($d, $hlen - 48, 32) = sha256(substr($d, 0, $hlen - 48));
	tampered('header re-checksummed', $d, qr/header failed authentication/);
}
tampered('chunk data', flip($orig, $hlen + 5 * $rec + 1000), qr/chunk 5 .*failed authentication/);
tampered('chunk tag', flip($orig, $hlen + 2 * $rec - 1), qr/chunk 1 /);
tampered('final chunk dropped', substr($orig, 0, length($orig) - 16), qr/without its final chunk/);
tampered('truncated inside a chunk', substr($orig, 0, $hlen + 3 * $rec + 777), qr/final chunk/);
tampered('truncated inside the header', substr($orig, 0, $hlen - 10), qr/header/);
tampered('empty file', '', qr/empty/);
tampered('appended bytes', $orig . "x" x 40, qr/final chunk/);
tampered('chunks 1 and 2 swapped',
	substr($orig, 0, $hlen + $rec) . substr($orig, $hlen + 2 * $rec, $rec)
	  . substr($orig, $hlen + $rec, $rec) . substr($orig, $hlen + 3 * $rec),
	qr/chunk 1 /);
tampered('chunk 3 spliced from another segment',
	substr($orig, 0, $hlen + 3 * $rec) . substr($other, $hlen + 3 * $rec, $rec)
	  . substr($orig, $hlen + 4 * $rec),
	qr/chunk 3 /);
tampered('another segment under this name', $other, qr/holds "$seg2", not "$seg1"/);

# verify and decrypt of single files check the name just as wal does
# (issue 22, item 6): a segment renamed to another segment's name is refused.
{
	my $dir = "$tmp/renamed";
	make_path($dir);
	spew_bytes("$dir/$seg1", $other);
	($rc, $err) = run_restore('verify', @key, "$dir/$seg1");
	is($rc, 203, 'verify FILE: a segment renamed to another\'s name, exit 203');
	like($err, qr/"\Q$dir\/$seg1\E": the file holds "$seg2" and is named "$seg1" instead of "$seg2" \(renamed or misplaced\)\n.*detail: .*authenticated header.*\n.*hint: /,
		'verify FILE renamed: names both names, why, and what to do');
	unlike($err, qr/: ok/, 'verify FILE renamed: not reported ok');
	my $stdout;
	($rc, $err, $stdout) = run_restore('decrypt', @key, "$dir/$seg1");
	is($rc, 203, 'decrypt FILE: renamed segment, exit 203');
	is($stdout, '', 'decrypt FILE renamed: not one byte written');
	($rc, $err) = run_restore('decrypt', @key, '--output', "$dir/plain", "$dir/$seg1");
	is($rc, 203, 'decrypt --output: renamed segment, exit 203');
	ok(!-e "$dir/plain" && !-e "$dir/plain.cmk_partial", 'decrypt --output renamed: nothing written');
	($rc, $err) = run_restore('verify', @key, "$arch/$seg1", "$dir/$seg1");
	is($rc, 203, 'verify of several files: one renamed, exit 203');
	($rc, $err, $stdout) = run_restore('decrypt', @key, "$arch/$seg2");
	is($rc, 0, 'decrypt FILE under its own name: exit 0') or diag $err;
	ok($stdout eq slurp_bytes("$pgdata/pg_wal/$seg2"), 'decrypt FILE under its own name: the original');
}

# --- archiving the same file again --------------------------------------------------------
# A fake timeline history file for a timeline this cluster never uses.
my $hist = '0000000A.history';
my $content = "1\t0/3000000\tno recovery target specified\n";
my $status = "$pgdata/pg_wal/archive_status";

sub queue_history
{
	my ($data) = @_;
	spew_bytes("$pgdata/pg_wal/$hist", $data);
	unlink "$status/$hist.done";
	spew_bytes("$status/$hist.ready", '');
	$node->reload;
}

queue_history($content);
$node->poll_query_until('postgres', qq{SELECT last_archived_wal = '$hist' FROM pg_stat_archiver})
  or die;
my $archived_once = slurp_bytes("$arch/$hist");

my $count = $node->safe_psql('postgres', 'SELECT archived_count FROM pg_stat_archiver');
queue_history($content);
$node->poll_query_until('postgres', qq{SELECT archived_count > $count FROM pg_stat_archiver})
  or die;
ok(-f "$status/$hist.done", 'same file archived again: success');
is($node->safe_psql('postgres', 'SELECT failed_count FROM pg_stat_archiver'), '0',
	'same file archived again: no failure');
ok(slurp_bytes("$arch/$hist") eq $archived_once, 'same file archived again: archive untouched');

my $logpos = -s $node->logfile;
queue_history("2\t0/4000000\tforged\n");
$node->poll_query_until('postgres', q{SELECT failed_count > 0 FROM pg_stat_archiver}) or die;
ok(-f "$status/$hist.ready" && !-f "$status/$hist.done", 'different contents: not marked archived');
ok($node->log_contains(qr/already exists with different contents/, $logpos),
	'different contents: fails loudly');
ok(slurp_bytes("$arch/$hist") eq $archived_once, 'different contents: archive not overwritten');
($rc, $err) = run_restore('wal', @key, '--archive-directory', $arch, $hist, "$out/$hist");
is($rc, 0, 'history file restores');
is(slurp_bytes("$out/$hist"), $content, 'history file: the first contents');
unlink "$status/$hist.ready", "$pgdata/pg_wal/$hist";

$node->stop;
done_testing();
