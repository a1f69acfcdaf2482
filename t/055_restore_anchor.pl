# The DEK identifier is cmk_restore's trust anchor.  Someone who holds only
# the public half of the key encryption key and can write to the archive or
# backup directory can wrap a data encryption key of their own and build WAL
# files and whole backups that decrypt and authenticate perfectly
# (scripts/cmk_stream_ref.py encrypt does exactly that here).  cmk_restore
# therefore refuses to run wal, backup, verify or decrypt without the
# cluster's DEK identifier (or an explicit, loudly warned
# --insecure-skip-dek-check), refuses forged files under the identifier,
# and still restores the real backup and archive with it.  pg_basebackup
# prints the identifier when the backup is taken.
use strict;
use warnings;
use Digest::SHA qw(sha256);
use File::Path qw(make_path);
use Cwd ();
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $pub = "$tmp/kek.pub.pem";
system('openssl', 'pkey', '-in', $kek, '-pubout', '-out', $pub) == 0 or die;
my $arch = "$tmp/archive";
mkdir $arch or die;

my $node = cmk_node('anchor', $kek, init => { allows_streaming => 1 },
	conf => archive_conf($arch) . "wal_keep_size = '1GB'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $st = wait_key_settled($node);
is($st->{state}, 'available', 'key available');
my $dek_id = $st->{dek_id};
like($dek_id, qr/^[0-9a-f]{32}$/, 'cmk_storage.status shows the DEK identifier');
my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
my $pgdata = $node->data_dir;
my $restore = $node->config_data('--bindir') . '/cmk_restore';
my $restore_real = Cwd::realpath($restore);

# restore_command runs with the server's PATH, which on Debian does not hold
# pg_config --bindir (exit 127 ends recovery): the example in --help names
# the installed binary by its full path, also when run by its bare name.
{
	local $ENV{PATH} = $node->config_data('--bindir') . ":$ENV{PATH}";
	my ($hout, $herr);
	IPC::Run::run([ 'cmk_restore', '--help' ], '>', \$hout, '2>', \$herr, init => sub { chdir '/' });
	like($hout, qr/^      restore_command = '\Q$restore_real\E wal --dek-id HEX /m,
		'cmk_restore --help: the restore_command example uses the full path');
}

my $marker = random_marker('anchor');
$node->safe_psql('postgres', qq{
CREATE TABLE c (id int PRIMARY KEY, v text) USING cmk_heap;
INSERT INTO c SELECT g, '$marker' || g FROM generate_series(1, 200) g;});
my $seg = archive_current_segment($node);

# --- the identifier at backup time ----------------------------------------------------
my $bk = "$tmp/backup";
my $logpos = -s $node->logfile;
$node->command_checks_all([ 'pg_basebackup', '--target', "cmk:$bk", '-X', 'fetch' ], 0, [qr/^$/],
	[qr/NOTICE:  encrypted base backup [0-9a-f]{32} written to "\Q$bk\E" under data encryption key $dek_id/,
	 qr/HINT:  Restoring it needs "cmk_restore backup --dek-id $dek_id"/],
	'pg_basebackup prints the DEK identifier the restore will need');
ok($node->log_contains(qr/encrypted base backup [0-9a-f]{32} written to "\Q$bk\E" under data encryption key $dek_id/,
		$logpos), 'the server log records it too');

sub run_restore
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $restore, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $err, $out);
}

my @kek = ('--key-uri', "file://$kek");
my @anchor = ('--dek-id', $dek_id);
my ($rc, $err, $out);

# --- no anchor, no restore ---------------------------------------------------------------
my $t = 0;
for my $cmd ([ 'wal', '--archive-directory', $arch, '--pgdata', $pgdata, $seg, "$tmp/noanchor_wal" ],
	[ 'backup', '--backup-directory', $bk, '--target-directory', "$tmp/noanchor_backup" ],
	[ 'verify', '--backup-directory', $bk ],
	[ 'verify', "$arch/$seg" ],
	[ 'decrypt', '--output', "$tmp/noanchor_decrypt", "$arch/$seg" ])
{
	my $name = "$cmd->[0] $cmd->[1]";
	($rc, $err, $out) = run_restore(@$cmd, @kek);
	is($rc, 200, "$name without --dek-id: exit 200 (configuration)");
	like($err, qr/error: cmk_restore $cmd->[0] needs the identifier of your cluster's data encryption key\n.*detail: .*public key encryption key.*\n.*hint: Pass --dek-id HEX \(or set CMK_DEK_ID\).*cmk_storage\.status/,
		"$name without --dek-id: says what is missing, why, and where to get it");
	is($out, '', "$name without --dek-id: no output");
}
ok(!-e "$tmp/noanchor_wal" && !-e "$tmp/noanchor_backup" && !-e "$tmp/noanchor_decrypt",
	'without --dek-id nothing is written');

($rc, $err) = run_restore('verify', @kek, @anchor, '--insecure-skip-dek-check', "$arch/$seg");
is($rc, 200, '--dek-id with --insecure-skip-dek-check: exit 200');
like($err, qr/contradicts/, '--dek-id with --insecure-skip-dek-check: message');
{
	local $ENV{CMK_DEK_ID} = $dek_id;
	($rc, $err) = run_restore('verify', @kek, '--insecure-skip-dek-check', "$arch/$seg");
	is($rc, 200, 'CMK_DEK_ID with --insecure-skip-dek-check: exit 200');
}
($rc, $err) = run_restore('verify', @kek, '--dek-id', 'not-hex', "$arch/$seg");
is($rc, 200, 'malformed --dek-id: exit 200');
like($err, qr/invalid data encryption key identifier "not-hex" in --dek-id/, 'malformed --dek-id: message');

# --- the real backup and archive with the identifier ------------------------------------------
($rc, $err) = run_restore('verify', @kek, @anchor, '--backup-directory', $bk);
is($rc, 0, 'verify --backup-directory --dek-id: the real backup verifies') or diag $err;
($rc, $err, $out) = run_restore('backup', @kek, @anchor, '--backup-directory', $bk,
	'--target-directory', "$tmp/restored", '--no-sync');
is($rc, 0, 'backup --dek-id: the real backup restores') or diag $err;
like($out, qr/restore_command = '\Q$restore_real\E wal --dek-id $dek_id /,
	'the restore prints the restore_command with the identifier and cmk_restore\'s full path');
($rc, $err) = run_restore('wal', @kek, @anchor, '--archive-directory', $arch,
	'--pgdata', "$tmp/restored", $seg, "$tmp/RECOVERYXLOG");
is($rc, 0, 'wal --dek-id into the restored directory: exit 0') or diag $err;
ok(slurp_bytes("$tmp/RECOVERYXLOG") eq slurp_bytes("$pgdata/pg_wal/$seg"), 'the segment is the original');
{
	# restore_command can take the identifier from the server's environment
	local $ENV{CMK_DEK_ID} = "0123456789abcdef0123456789abcdef,$dek_id";
	($rc, $err) = run_restore('wal', @kek, '--archive-directory', $arch, '--pgdata', $pgdata,
		$seg, "$tmp/env_seg");
	is($rc, 0, 'CMK_DEK_ID (a list) anchors wal') or diag $err;
}
($rc, $err) = run_restore('wal', @kek, '--dek-id', '0123456789abcdef0123456789abcdef',
	'--archive-directory', $arch, '--pgdata', $pgdata, $seg, "$tmp/wrong_anchor");
is($rc, 202, 'wal with another identifier than the data directory\'s: exit 202');
like($err, qr/the data directory ".*" uses data encryption key $dek_id, which is not a trusted one/,
	'wal with another identifier: names the data directory\'s key');
ok(!-e "$tmp/wrong_anchor", 'wal with another identifier: nothing written');

# --- forgeries made with the public key only -----------------------------------------------------
my $ref = -f 'scripts/cmk_stream_ref.py' ? 'scripts/cmk_stream_ref.py'
  : "$ENV{REPO}/scripts/cmk_stream_ref.py";
SKIP:
{
	skip 'python3-cryptography is needed to forge streams', 1
	  unless -f $ref && system('python3 -c "import cryptography" 2>/dev/null') == 0;

	# The forger's own DEK.
	my $fdek = "$tmp/forged_dek.bin";
	spew_bytes($fdek, join('', map { chr(int(rand(256))) } 1 .. 32));
	my $fid = '';
	IPC::Run::run([ 'python3', $ref, 'dek-id', $fdek ], '>', \$fid) or die;
	chomp $fid;
	isnt($fid, $dek_id, '(control) the forger\'s DEK has an identifier of its own');

	# Encrypt $plain as stream $name under the forger's DEK, wrapped with the public KEK.
	my $forge = sub {
		my ($dest, $plain, $name, @opt) = @_;
		my $data = '';
		IPC::Run::run([ 'python3', $ref, 'encrypt', $pub, $fdek, $name, '--sysid', $sysid, @opt ],
			'<', \$plain, '>', \$data) or die "forging $name failed";
		spew_bytes($dest, $data);
		return length($plain);
	};

	# -- a forged WAL segment under the real segment's name
	my $farch = "$tmp/forged_archive";
	mkdir $farch or die;
	my $fplain = 'forged WAL ' x 5000;
	$forge->("$farch/$seg", $fplain, $seg, '--purpose', 'wal');

	($rc, $err) = run_restore('verify', @kek, '--insecure-skip-dek-check', "$farch/$seg");
	is($rc, 0, '(control) without the anchor the forged segment verifies: it is a valid stream')
	  or diag $err;
	like($err, qr/warning: --insecure-skip-dek-check: .*forged/, '--insecure-skip-dek-check warns every time');
	mkdir "$tmp/empty_pgdata";
	($rc, $err) = run_restore('wal', @kek, '--insecure-skip-dek-check', '--archive-directory', $farch,
		'--pgdata', "$tmp/empty_pgdata", $seg, "$tmp/forged_restored");
	is($rc, 0, '(control) and restore_command without the anchor would replay it');
	is(slurp_bytes("$tmp/forged_restored"), $fplain, '(control) with the forger\'s contents');

	for my $pgd ($pgdata, "$tmp/empty_pgdata")
	{
		($rc, $err) = run_restore('wal', @kek, @anchor, '--archive-directory', $farch,
			'--pgdata', $pgd, $seg, "$tmp/forged_wal");
		is($rc, 202, "forged segment, wal --dek-id (pgdata $pgd): exit 202");
		like($err, qr/"\Q$farch\/$seg\E": the file was encrypted with data encryption key $fid, which is not a trusted one \($dek_id\)\n.*detail: .*forged.*\n.*hint: /,
			'forged segment, wal: names the untrusted key, says why and what to do');
		ok(!-e "$tmp/forged_wal" && !-e "$tmp/forged_wal.cmk_partial", 'forged segment, wal: nothing written');
	}
	($rc, $err) = run_restore('verify', @kek, @anchor, "$farch/$seg");
	is($rc, 202, 'forged segment, verify --dek-id: exit 202');
	($rc, $err, $out) = run_restore('decrypt', @kek, @anchor, "$farch/$seg");
	is($rc, 202, 'forged segment, decrypt --dek-id: exit 202');
	is($out, '', 'forged segment, decrypt: no output');

	# -- a forged segment claiming the real identifier: its DEK does not have it
	$forge->("$farch/$seg", $fplain, $seg, '--purpose', 'wal', '--claim-dek-id', $dek_id);
	($rc, $err) = run_restore('wal', @kek, @anchor, '--archive-directory', $farch,
		'--pgdata', $pgdata, $seg, "$tmp/forged_wal");
	is($rc, 203, 'forged segment claiming the real DEK identifier: exit 203');
	like($err, qr/does not match the header's DEK identifier/, 'forged segment claiming the identifier: message');
	ok(!-e "$tmp/forged_wal", 'forged segment claiming the identifier: nothing written');

	# -- a complete forged backup whose configuration runs a command
	my $fbk = "$tmp/forged_backup";
	my $src = "$tmp/forged_src";
	make_path("$fbk", "$src/cmk_storage", "$src/global");
	spew_bytes("$src/PG_VERSION", "15\n");
	spew_bytes("$src/postgresql.auto.conf", "archive_command = 'touch $tmp/pwned'\n");
	# a control file for the forger's DEK: the server could even unwrap it
	my $ctl = slurp_bytes(control_path($node));
	system('openssl', 'pkeyutl', '-encrypt', '-pubin', '-inkey', $pub,
		'-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256',
		'-pkeyopt', 'rsa_mgf1_md:sha256', '-in', $fdek, '-out', "$tmp/fwrapped.bin") == 0 or die;
	my $fwrapped = slurp_bytes("$tmp/fwrapped.bin");
	substr($ctl, 40, 16) = pack('H*', $fid);
	substr($ctl, 64, length($fwrapped)) = $fwrapped;
	substr($ctl, 2016, 32) = sha256(substr($ctl, 0, 2016));
	spew_bytes("$src/cmk_storage/control", $ctl);
	system('tar', '-cf', "$tmp/base.tar", '-C', $src, '.') == 0 or die;

	my $set = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 16);
	my @salt = map { join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32) } 1 .. 3;
	my $tar_len = $forge->("$fbk/base.tar.cmk", slurp_bytes("$tmp/base.tar"), 'base.tar',
		'--purpose', 'backup', '--set-id', $set, '--salt', $salt[0]);
	my $man = qq({"PostgreSQL-Backup-Manifest-Version": 1, "Files": []}\n);
	$forge->("$fbk/backup_manifest.cmk", $man, 'backup_manifest',
		'--purpose', 'backup', '--set-id', $set, '--salt', $salt[1]);
	$forge->("$fbk/backup_end.cmk", join('', "cmk_storage base backup 1\n", "backup_id $set\n",
			"system_identifier $sysid\n", "start_lsn 0/2000028\n", "start_tli 1\n",
			"end_lsn 0/2000100\n", "end_tli 1\n", "file $tar_len $salt[0] base.tar\n",
			'file ' . length($man) . " $salt[1] backup_manifest\n", "end\n"),
		'backup_end', '--purpose', 'backup', '--set-id', $set, '--salt', $salt[2]);

	($rc, $err) = run_restore('verify', @kek, '--insecure-skip-dek-check', '--backup-directory', $fbk);
	is($rc, 0, '(control) without the anchor the forged backup verifies') or diag $err;
	($rc, $err) = run_restore('backup', @kek, '--insecure-skip-dek-check', '--backup-directory', $fbk,
		'--target-directory', "$tmp/forged_restore", '--no-sync');
	is($rc, 0, '(control) and restores') or diag $err;
	like(slurp_bytes("$tmp/forged_restore/postgresql.auto.conf"), qr/pwned/,
		'(control) with the forger\'s archive_command');
	($rc, $err) = run_restore('wal', @kek, @anchor, '--archive-directory', $arch,
		'--pgdata', "$tmp/forged_restore", $seg, "$tmp/after_forged");
	is($rc, 202, 'wal --dek-id refuses to feed a data directory restored from the forged backup');
	like($err, qr/uses data encryption key $fid, which is not a trusted one.*\n.*detail: .*forged/,
		'wal into the forged data directory: message');
	ok(!-e "$tmp/after_forged", 'wal into the forged data directory: nothing written');

	($rc, $err) = run_restore('verify', @kek, @anchor, '--backup-directory', $fbk);
	is($rc, 202, 'forged backup, verify --backup-directory --dek-id: exit 202');
	like($err, qr/backup_end\.cmk": the file was encrypted with data encryption key $fid, which is not a trusted one/,
		'forged backup, verify: message');
	unlike($err, qr/verified/, 'forged backup, verify: nothing reported verified');
	($rc, $err, $out) = run_restore('backup', @kek, @anchor, '--backup-directory', $fbk,
		'--target-directory', "$tmp/forged_restore2", '--no-sync');
	is($rc, 202, 'forged backup, backup --dek-id: exit 202');
	like($err, qr/not a trusted one/, 'forged backup, backup: message');
	ok(!-e "$tmp/forged_restore2", 'forged backup, backup: nothing extracted');
	ok(!-e "$tmp/pwned", 'the forged archive_command never ran');

	# -- one forged archive in the real backup (same end marker): refused too
	make_path("$tmp/mixed");
	symlink("$bk/$_", "$tmp/mixed/$_") for qw(backup_end.cmk backup_manifest.cmk);
	# the set id and salt are in the clear in the real archive's header
	my $real = slurp_bytes("$bk/base.tar.cmk");
	$forge->("$tmp/mixed/base.tar.cmk", slurp_bytes("$tmp/base.tar"), 'base.tar', '--purpose', 'backup',
		'--set-id', unpack('H*', substr($real, 76, 16)), '--salt', unpack('H*', substr($real, 44, 32)));
	($rc, $err) = run_restore('backup', @kek, @anchor, '--backup-directory', "$tmp/mixed",
		'--target-directory', "$tmp/mixed_restore", '--no-sync');
	is($rc, 202, 'real end marker, forged base archive: exit 202');
	like($err, qr/base\.tar\.cmk": the file was encrypted with data encryption key $fid, which is not a trusted one/,
		'real end marker, forged base archive: message');
	ok(!-e "$tmp/mixed_restore", 'real end marker, forged base archive: nothing left');
}

$node->stop;
done_testing();
