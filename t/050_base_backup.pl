# pg_basebackup --target=cmk:DIR writes an encrypted backup, cmk_restore
# backup turns it into a data directory, and with the encrypted WAL archive
# a brand-new data directory recovers to a point in time with heap and
# cmk_heap tables exactly as they were then.  Damaged, incomplete or mixed
# backups are refused and leave nothing behind.
use strict;
use warnings;
use File::Basename;
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
mkdir "$tmp/ts" or die;

my $node = cmk_node('primary', $kek, init => { allows_streaming => 1 }, conf => archive_conf($arch));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $key_st = wait_key_settled($node);
is($key_st->{state}, 'available', 'key available');
# the trust anchor every restore needs (t/055): recorded while the cluster runs
my $dek_id = $key_st->{dek_id};
my $restore = $node->config_data('--bindir') . '/cmk_restore';

sub run_restore
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $restore, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $err, $out);
}

# Heap and cmk_heap tables, TOASTed values, and a tablespace.
my @m1 = map { random_marker("before$_") } 1 .. 4;
my @m2 = map { random_marker("upto$_") } 1 .. 4;
my @m3 = map { random_marker("after$_") } 1 .. 4;
$node->safe_psql('postgres', qq{
CREATE TABLESPACE ts LOCATION '$tmp/ts';
CREATE TABLE h (id int PRIMARY KEY, v text, big text);
CREATE TABLE c (id int PRIMARY KEY, v text, big text) USING cmk_heap;
CREATE TABLE ht (id int, v text) TABLESPACE ts;
CREATE TABLE ct (id int, v text) USING cmk_heap TABLESPACE ts;
INSERT INTO h SELECT g, '$m1[0]' || g, CASE WHEN g % 50 = 0 THEN repeat('$m1[0]', 400) END FROM generate_series(1, 500) g;
INSERT INTO c SELECT g, '$m1[1]' || g, CASE WHEN g % 50 = 0 THEN repeat('$m1[1]', 400) END FROM generate_series(1, 500) g;
INSERT INTO ht SELECT g, '$m1[2]' || g FROM generate_series(1, 300) g;
INSERT INTO ct SELECT g, '$m1[3]' || g FROM generate_series(1, 300) g;
CHECKPOINT;
});
ok(scalar(files_containing($node->data_dir . '/base', $m1[0])) > 0,
	'(control) heap values are in clear in the data directory');

# --- encrypted base backups: plain, and with server-side compression ------------------
my %bk;
for my $variant ([ 'plain', [] ], [ 'gzip', [ '--compress=server-gzip' ] ],
	[ 'lz4', [ '--compress=server-lz4' ] ], [ 'zstd', [ '--compress=server-zstd' ] ])
{
	my ($name, $opts) = @$variant;
	$bk{$name} = "$tmp/backup_$name";
	$node->command_ok([ 'pg_basebackup', '--target', "cmk:$bk{$name}", '-X', 'fetch', @$opts ],
		"pg_basebackup --target=cmk ($name)");
}
my @plain_files = sort map { basename($_) } glob("$bk{plain}/*");
my $ts_oid = $node->safe_psql('postgres', q{SELECT oid FROM pg_tablespace WHERE spcname = 'ts'});
is_deeply(\@plain_files, [ sort('base.tar.cmk', "$ts_oid.tar.cmk", 'backup_manifest.cmk', 'backup_end.cmk') ],
	'backup holds the encrypted archives, manifest and end marker, nothing else');
ok(-f "$bk{gzip}/base.tar.gz.cmk", 'server-side gzip: the target encrypts the compressed tar');
ok(-f "$bk{lz4}/base.tar.lz4.cmk", 'server-side lz4: the target encrypts the compressed tar');
for my $name (sort keys %bk)
{
	is_deeply([ files_containing($bk{$name}, @m1, 'PG_VERSION', 'backup_label', 'pg_control') ], [],
		"$name backup: no table value, file name or tar header in clear");
}

# --- changes up to the recovery target, then changes after it ----------------------------
# A restart first: its writes name a new nonce epoch that only the archived
# WAL knows (the backups' nonce_epochs predate it).
my $epochs_q = q{SELECT nonce_epochs FROM cmk_storage.status};
my $epochs_in_backup = $node->safe_psql('postgres', $epochs_q);
$node->restart;
wait_key_settled($node);
$node->safe_psql('postgres', qq{
INSERT INTO h SELECT g, '$m2[0]' || g, NULL FROM generate_series(501, 600) g;
UPDATE c SET v = '$m2[1]' || id WHERE id % 3 = 0;
DELETE FROM c WHERE id % 7 = 0;
INSERT INTO c SELECT g, '$m2[1]', repeat('$m2[1]', 300) FROM generate_series(501, 520) g;
INSERT INTO ct SELECT g, '$m2[3]' || g FROM generate_series(301, 400) g;
});
my %digest = (
	h => q{SELECT count(*), md5(string_agg(id || ':' || v || ':' || md5(coalesce(big, '')), ',' ORDER BY id)) FROM h},
	c => q{SELECT count(*), md5(string_agg(id || ':' || v || ':' || md5(coalesce(big, '')), ',' ORDER BY id)) FROM c},
	ht => q{SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM ht},
	ct => q{SELECT count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM ct});
my %expect = map { $_ => $node->safe_psql('postgres', $digest{$_}) } keys %digest;
my $target_time = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
sleep 1;
$node->safe_psql('postgres', qq{
INSERT INTO h SELECT g, '$m3[0]' || g, NULL FROM generate_series(601, 700) g;
UPDATE c SET v = '$m3[1]' WHERE id < 100;
TRUNCATE ht;
INSERT INTO ct SELECT g, '$m3[3]' FROM generate_series(401, 500) g;
});
archive_current_segment($node);
is_deeply([ files_containing($arch, @m1, @m2, @m3) ], [], 'no table value in clear in the WAL archive');

# --- point-in-time recovery on a brand-new data directory --------------------------------
my @key = ('--key-uri', "file://$kek", '--dek-id', $dek_id);
my $restored = PostgreSQL::Test::Cluster->new('restored');
my $rdata = $restored->data_dir;
my ($rc, $err, $out) = run_restore('verify', @key, '--backup-directory', $bk{plain});
is($rc, 0, 'cmk_restore verify: backup authentic') or diag $err;
($rc, $err, $out) = run_restore('backup', @key, '--backup-directory', $bk{plain},
	'--target-directory', $rdata, '-T', "$tmp/ts=$tmp/ts_restored");
is($rc, 0, 'cmk_restore backup: exit 0') or diag $err;
ok(-f "$rdata/backup_label" && -f "$rdata/cmk_storage/control" && -f "$rdata/backup_manifest",
	'restored directory has backup_label, the cmk_storage control file and the manifest');
ok(-d "$tmp/ts_restored" && !-e "$tmp/ts_restored.cmk", 'tablespace extracted to the mapped location');
$restored->command_ok([ 'pg_verifybackup', '-i', 'tablespace_map', $rdata ],
	'pg_verifybackup: the restored files match the backup manifest');

$restored->append_conf('postgresql.conf', qq{
port = @{[ $restored->port ]}
unix_socket_directories = '@{[ $restored->host ]}'
archive_mode = off
restore_command = '$restore wal --dek-id $dek_id --key-uri file://$kek --archive-directory $arch %f %p'
recovery_target_time = '$target_time'
recovery_target_action = 'promote'
});
spew_bytes("$rdata/recovery.signal", '');
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'recovery did not finish';
is(wait_key_settled($restored)->{state}, 'available', 'restored cluster unwrapped its key');
is($restored->safe_psql('postgres', $epochs_q), $epochs_in_backup + 1,
	'restored cluster learned the nonce epoch registered after the backup from archived WAL');
for my $t (sort keys %digest)
{
	is($restored->safe_psql('postgres', $digest{$t}), $expect{$t},
		"table $t exactly as of the recovery target time");
}
is($restored->safe_psql('postgres', qq{SELECT count(*) FROM h WHERE v LIKE '$m3[0]%'}), '0',
	'changes after the target are absent');
ok($restored->log_contains(qr/recovery stopping before commit/), 'recovery stopped at the target');
$restored->stop;

# --- compressed backups restore to the same files ------------------------------------------
for my $name ('gzip', 'lz4', 'zstd')
{
  SKIP:
	{
		skip "no $name program for tar", 2 if system("which $name >/dev/null 2>&1") != 0;
		my $dir = "$tmp/restored_$name";
		($rc, $err) = run_restore('backup', @key, '--backup-directory', $bk{$name},
			'--target-directory', $dir, '--no-sync', '-T', "$tmp/ts=$tmp/ts_$name");
		is($rc, 0, "$name backup restores") or diag $err;
		$node->command_ok([ 'pg_verifybackup', '-i', 'tablespace_map', $dir ],
			"$name backup: pg_verifybackup passes");
	}
}

# --- damaged, incomplete, mixed backups ----------------------------------------------------
my $case = 0;

# A backup directory with one file replaced (or removed): symlinks to the rest.
sub variant
{
	my ($replace, $data) = @_;
	my $dir = "$tmp/variant" . $case++;
	make_path($dir);
	for my $f (glob("$bk{plain}/*"))
	{
		my $b = basename($f);
		symlink($f, "$dir/$b") unless $b eq $replace;
	}
	spew_bytes("$dir/$replace", $data) if defined $data;
	return $dir;
}

sub refused
{
	my ($name, $dir, $code, $like, @extra) = @_;
	my $target = "$tmp/target" . $case++;
	my @k = @extra ? () : @key;
	my ($rc, $err) = run_restore('backup', @k, '--backup-directory', $dir,
		'--target-directory', $target, '--no-sync', '-T', "$tmp/ts=$target.ts", @extra);
	is($rc, $code, "$name: exit $code") or diag $err;
	like($err, $like, "$name: message");
	ok(!-e $target && !-e "$target.ts", "$name: nothing left in the target");
}

my $base = slurp_bytes("$bk{plain}/base.tar.cmk");
my $hlen = unpack('n', substr($base, 10, 2));
my $mid = $hlen + int((length($base) - $hlen) / 2);
substr($base, $mid, 1) = chr(ord(substr($base, $mid, 1)) ^ 0x20);
refused('bit flip in base.tar', variant('base.tar.cmk', $base), 203, qr/failed authentication/);
refused('truncated base.tar', variant('base.tar.cmk', substr(slurp_bytes("$bk{plain}/base.tar.cmk"), 0, $mid)),
	203, qr/final chunk/);
refused('end marker missing', variant('backup_end.cmk'), 203, qr/incomplete/);
refused('tablespace archive missing', variant("$ts_oid.tar.cmk"), 203, qr/missing from the backup/);
refused('manifest from another backup', variant('backup_manifest.cmk', slurp_bytes("$bk{gzip}/backup_manifest.cmk")),
	203, qr/another backup/);
refused('end marker from another backup', variant('backup_end.cmk', slurp_bytes("$bk{gzip}/backup_end.cmk")),
	203, qr/another backup|has no|missing/);
refused('wrong KEK', $bk{plain}, 202, qr/different key/, '--key-uri', "file://$other_kek", '--dek-id', $dek_id);
refused('DEK pinned to another value', $bk{plain}, 202, qr/encrypted with data encryption key $dek_id, which is not a trusted one/,
	'--key-uri', "file://$kek", '--dek-id', 'ab' x 16);

make_path("$tmp/notempty");
spew_bytes("$tmp/notempty/file", 'x');
($rc, $err) = run_restore('backup', @key, '--backup-directory', $bk{plain}, '--target-directory', "$tmp/notempty");
is($rc, 200, 'non-empty target: exit 200');
ok(-f "$tmp/notempty/file", 'non-empty target: left alone');
($rc, $err) = run_restore('verify', @key, '--backup-directory', variant('base.tar.cmk', $base));
is($rc, 203, 'cmk_restore verify: damaged backup, exit 203');

# verify FILE checks the name in the authenticated header against the
# file's own (issue 22, item 6): the base archive renamed to the tablespace
# archive's name, or the manifest to the end marker's, is refused.
make_path("$tmp/renamed");
spew_bytes("$tmp/renamed/$ts_oid.tar.cmk", slurp_bytes("$bk{plain}/base.tar.cmk"));
($rc, $err) = run_restore('verify', @key, "$tmp/renamed/$ts_oid.tar.cmk");
is($rc, 203, 'verify FILE: base archive renamed to the tablespace archive, exit 203');
like($err, qr/holds "base\.tar" and is named "$ts_oid\.tar\.cmk" instead of "base\.tar\.cmk"/,
	'verify FILE renamed archive: message');
spew_bytes("$tmp/renamed/backup_end.cmk", slurp_bytes("$bk{plain}/backup_manifest.cmk"));
($rc, $err, $out) = run_restore('decrypt', @key, "$tmp/renamed/backup_end.cmk");
is($rc, 203, 'decrypt FILE: manifest renamed to the end marker, exit 203');
is($out, '', 'decrypt FILE renamed: nothing written');
($rc, $err) = run_restore('verify', @key, map { "$bk{plain}/$_" } @plain_files);
is($rc, 0, 'verify FILE: every file of the backup under its own name') or diag $err;

$node->stop;
done_testing();
