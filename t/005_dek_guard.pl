# Never a second DEK over encrypted data: a lost $PGDATA/cmk_storage is
# noticed (marker, catalogs of every database, WAL), no key is created, the
# reason and what to restore are shown, and restoring the directory brings
# everything back; cmk_storage.create_key() is the explicit way past the
# evidence.  And the control file reader refuses every field its format does
# not allow, even under a recomputed SHA-256.
use strict;
use warnings;
use Digest::SHA qw(sha256);
use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('guard', $kek, init => { allows_streaming => 1 });
my $pgdata = $node->data_dir;
my $marker = "$pgdata/cmk_dek_in_use";

# --- a fresh cluster creates its key on first start, and the marker ------------
ok(!-e $marker, 'initdb makes no marker');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
my $st = wait_key_settled($node);
is($st->{state}, 'available', 'first start: key created and available');
my $dek_id = $st->{dek_id};
my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
my $m = slurp_bytes($marker);
like($m, qr/^format 1\nsystem_identifier $sysid\ndek_id $dek_id\ncreated_at \d+\n\z/m,
	'first start: the marker names the cluster and the DEK');
like($m, qr/^# .*restore it from the backup this data came from/m, 'the marker explains itself');

# Everything that copies a data directory carries the marker.
$node->backup('plain');
ok(-f $node->backup_dir . '/plain/cmk_dek_in_use', 'pg_basebackup (plain) carries the marker');
$node->backup('tar', backup_options => [ '-Ft' ]);
my ($tar_list) = run_command([ 'tar', '-tf', $node->backup_dir . '/tar/base.tar' ]);
like($tar_list, qr/^(\.\/)?cmk_dek_in_use$/m, 'pg_basebackup (tar) carries the marker');

# Encrypted data in a database other than the one the tests connect to.
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', q{
CREATE EXTENSION cmk_storage;
CREATE TABLE secrets (id int, v text) USING cmk_heap;
INSERT INTO secrets SELECT g, 'secret ' || g FROM generate_series(1, 500) g;
});
$node->safe_psql('postgres', 'CREATE TABLE plain (id int); INSERT INTO plain VALUES (1)');
my $digest_q = q{SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM secrets};
my $digest = $node->safe_psql('app', $digest_q);

# The backup the operator will restore the key directory from.
$node->stop;
my $control = slurp_bytes(control_path($node));
system('cp', '-a', "$pgdata/cmk_storage", "$tmp/cmk_storage.bak") == 0 or die "cp failed";

my $missing = qr/\$PGDATA\/cmk_storage is missing, but/;
my $restore_hint = qr/Restore \$PGDATA\/cmk_storage from the backup this data came from, keep the key encryption key that wrapped it, and restart the server/;

sub expect_refused
{
	my ($name, $evidence, $log_from) = @_;
	my $st = wait_key_settled($node);
	is($st->{state}, 'unavailable', "$name: key unavailable");
	like($st->{reason}, qr/$missing $evidence; no new data encryption key is created/, "$name: status says why");
	like($node->safe_psql('postgres', 'SELECT hint FROM cmk_storage.status'), $restore_hint,
		"$name: status says what to restore");
	ok(!-e "$pgdata/cmk_storage", "$name: no key directory created");
	my ($ret, $out, $err) = $node->psql('app', 'SELECT count(*) FROM secrets');
	like($err, qr/cannot access encrypted relation "secrets": the data encryption key is unavailable: $missing $evidence/,
		"$name: reading the table fails with the reason");
	like($err, qr/HINT:  $restore_hint/, "$name: ... and says what to restore");
	($ret, $out, $err) = $node->psql('app', q{INSERT INTO secrets VALUES (0, 'new')});
	like($err, qr/the data encryption key is unavailable: $missing/, "$name: writing fails too");
	is($node->safe_psql('postgres', 'SELECT count(*) FROM plain'), '1', "$name: unencrypted tables still work");
	like(slurp_file($node->logfile, $log_from),
		qr/WARNING:  cmk_storage: data encryption key unavailable: $missing $evidence.*?HINT:  $restore_hint/s,
		"$name: the server log says why and what to restore");
}

# --- the key directory is deleted: the marker refuses ---------------------------
rmtree("$pgdata/cmk_storage");
my $log_from = -s $node->logfile;
$node->start;
expect_refused('directory deleted', 'this data directory already has a data encryption key', $log_from);
like(slurp_file($node->logfile, $log_from), qr/DETAIL:  "cmk_dek_in_use" names DEK $dek_id, created .*, of the cluster with system identifier $sysid\./,
	'directory deleted: the log names the DEK to restore');

# --- directory and marker lost: the catalogs of every database refuse ------------
$node->stop;
unlink $marker or die;
$log_from = -s $node->logfile;
$node->start;
expect_refused('directory and marker deleted', 'database "app" holds the encrypted relation "public.secrets"', $log_from);
ok(!-e $marker, 'directory and marker deleted: no marker written without a key');

# --- the directory restored while running: used only after a restart -------------
system('cp', '-a', "$tmp/cmk_storage.bak", "$pgdata/cmk_storage") == 0 or die "cp failed";
my ($avail, $msg) = split /\|/, $node->safe_psql('postgres', 'SELECT * FROM cmk_storage.check_key()');
is($avail, 'f', 'restored while running: key not used yet');
like($msg, qr/cmk_storage appeared while the server was running; it is read only at server start/,
	'restored while running: says a restart is needed');
like($node->safe_psql('postgres', 'SELECT hint FROM cmk_storage.status'), qr/^Restart the server to use it\.$/,
	'restored while running: hint');
is(slurp_bytes(control_path($node)), $control, 'restored while running: control file untouched');

# --- restart: the same key, every row, and new rows survive further restarts -----
$st = restart_expect($node);
is($st->{state}, 'available', 'restored and restarted: key available');
is($st->{dek_id}, $dek_id, 'restored and restarted: the original DEK');
is($node->safe_psql('app', $digest_q), $digest, 'restored and restarted: every row readable, unchanged');
like(slurp_bytes($marker), qr/^dek_id $dek_id$/m, 'restored and restarted: the marker is written again');
$node->safe_psql('app', q{INSERT INTO secrets SELECT g, 'later ' || g FROM generate_series(501, 600) g});
$digest = $node->safe_psql('app', $digest_q);
$st = restart_expect($node);
is($node->safe_psql('app', $digest_q), $digest, 'rows written after the restore survive a restart');
is(slurp_bytes(control_path($node)), $control, 'the control file is the original');

my ($ret, $out, $err) = $node->psql('postgres', 'SELECT cmk_storage.create_key(force => true)');
like($err, qr/could not create a data encryption key: this cluster already has a key directory/,
	'create_key never replaces an existing key directory');
is(key_status($node)->{dek_id}, $dek_id, 'create_key on a keyed cluster changed nothing');

# --- create_key: refused over encrypted relations, forced on request ------------
$node->stop;
# (a newer backup: the restored directory has registered a nonce epoch since)
system('cp', '-a', "$pgdata/cmk_storage", "$tmp/cmk_storage.bak2") == 0 or die "cp failed";
rmtree("$pgdata/cmk_storage");
$log_from = -s $node->logfile;
$node->start;
expect_refused('deleted again', 'this data directory already has a data encryption key', $log_from);
($ret, $out, $err) = $node->psql('postgres', 'SELECT cmk_storage.create_key()');
like($err, qr/could not create a data encryption key: $missing database "app" holds the encrypted relation "public.secrets"/,
	'create_key() refuses while a database holds encrypted relations');
ok(!-e "$pgdata/cmk_storage", 'create_key() refused: no key directory');
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
($ret, $out, $err) = $node->psql('postgres', 'SELECT cmk_storage.create_key(force => true)',
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/permission denied for function create_key/, 'create_key belongs to cmk_key_admin');

my $res = $node->safe_psql('postgres', 'SELECT cmk_storage.create_key(force => true)');
like($res, qr/^created data encryption key [0-9a-f]{32}$/, 'create_key(force => true) creates a key');
$st = key_status($node);
is($st->{state}, 'available', 'forced: key available');
isnt($st->{dek_id}, $dek_id, 'forced: a new DEK');
like(slurp_bytes($marker), qr/^dek_id $st->{dek_id}$/m, 'forced: the marker names the new DEK');
like($node->safe_psql('postgres', q{SELECT string_agg(event || ' ' || outcome || ' ' || actor || ' ' || detail, E'\n' ORDER BY seq) FROM cmk_storage.key_events}),
	qr/create success \S+ created a new data encryption key, wrapped with RSA-OAEP-256, although data may be encrypted under an earlier one \(forced\)/,
	'forced: audited with the actor');
($ret, $out, $err) = $node->psql('app', 'SELECT * FROM secrets LIMIT 1');
like($err, qr/names nonce epoch \d+, which this cluster never registered/, 'forced: data under the lost key is refused, never garbage');
$node->safe_psql('app', q{CREATE TABLE fresh (id int, v text) USING cmk_heap; INSERT INTO fresh SELECT g, 'fresh' FROM generate_series(1, 10) g});
$st = restart_expect($node);
is($st->{state}, 'available', 'forced key survives a restart');
is($node->safe_psql('app', 'SELECT count(*) FROM fresh'), '10', 'forced: new data readable after a restart');

# The old directory comes back after all: its data is readable again, the
# new key's is not, and the log says so.
my $new_dek = $st->{dek_id};
$node->stop;
rmtree("$pgdata/cmk_storage");
system('cp', '-a', "$tmp/cmk_storage.bak2", "$pgdata/cmk_storage") == 0 or die "cp failed";
$log_from = -s $node->logfile;
$node->start;
is(wait_key_settled($node)->{dek_id}, $dek_id, 'old directory back: the old DEK');
like(slurp_file($node->logfile, $log_from),
	qr/WARNING:  cmk_storage: the control file's data encryption key $dek_id is not the key $new_dek that "cmk_dek_in_use" names/,
	'old directory back: the log warns that the marker names the other key');
like(slurp_bytes($marker), qr/^dek_id $new_dek$/m, 'old directory back: the marker is kept');
is($node->safe_psql('app', $digest_q), $digest, 'old directory back: old rows readable');
($ret, $out, $err) = $node->psql('app', 'SELECT count(*) FROM fresh');
like($err, qr/names nonce epoch \d+, which this cluster never registered/, 'old directory back: the new key\'s rows are refused');
$node->stop;

# --- WAL evidence, and create_key() where no relation is encrypted ---------------
my $node2 = cmk_node('guard2', $kek);
$node2->start;
$node2->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($node2)->{state}, 'available', 'second fresh cluster: key created on first start');
my $dek2 = key_status($node2)->{dek_id};
# After the checkpoint, redo will not re-create the control file from WAL,
# but it will meet the nonce epoch of the insert.
$node2->safe_psql('postgres', q{
CHECKPOINT;
CREATE TABLE w (id int) USING cmk_heap;
INSERT INTO w VALUES (1);
DROP TABLE w;
});
$node2->stop('immediate');
rmtree($node2->data_dir . '/cmk_storage');
unlink $node2->data_dir . '/cmk_dek_in_use' or die;
$node2->start;
$st = wait_key_settled($node2);
is($st->{state}, 'unavailable', 'WAL evidence: key unavailable');
like($st->{reason}, qr/$missing the WAL replayed at start-up shows that tuples were encrypted/, 'WAL evidence: status says why');
ok(!-e $node2->data_dir . '/cmk_storage', 'WAL evidence: no key directory created');
$res = $node2->safe_psql('postgres', 'SELECT cmk_storage.create_key()');
like($res, qr/^created data encryption key [0-9a-f]{32}$/, 'create_key() without force: no encrypted relation, key created');
$st = key_status($node2);
is($st->{state}, 'available', 'create_key(): available');
isnt($st->{dek_id}, $dek2, 'create_key(): a new DEK');
ok(-f $node2->data_dir . '/cmk_dek_in_use', 'create_key(): marker written');
$node2->safe_psql('postgres', q{CREATE TABLE w2 (id int) USING cmk_heap; INSERT INTO w2 VALUES (42)});
is($node2->safe_psql('postgres', 'SELECT id FROM w2'), '42', 'create_key(): encrypted tables work');

# --- control file: every field the format does not allow -------------------------
$node2->stop;
my $ctl = slurp_bytes(control_path($node2));
my $wlen = unpack('n', substr($ctl, 58, 2));
my $klen = unpack('n', substr($ctl, 60, 2));
my $ulen = unpack('n', substr($ctl, 62, 2));
is($wlen, 256, 'RSA-2048 KEK: 256-byte wrapped DEK');

# Each: where to write what, and the documented reason.
my @tampered = (
	[ 'generation 0', 12, pack('N', 0), qr/damaged: generation is 0 \(it starts at 1\)/ ],
	[ 'system identifier 0', 16, "\0" x 8, qr/damaged: system identifier is 0$/ ],
	[ 'creation time 0', 24, "\0" x 8, qr/damaged: DEK creation time 0 is not a positive unix time/ ],
	[ 'wrap time negative', 32, pack('q>', -5), qr/damaged: wrap time -5 is not a positive unix time/ ],
	[ 'DEK identifier zero', 40, "\0" x 16, qr/damaged: DEK identifier is all zero/ ],
	[ 'wrap algorithm 3', 56, pack('n', 3), qr/damaged: wrap algorithm 3 is unknown/ ],
	[ 'wrapped length 255', 58, pack('n', 255), qr/damaged: wrapped DEK length 255 is not 256, 384 or 512/ ],
	[ 'key id length 0', 60, pack('n', 0), qr/damaged: key id length 0 is not between 1 and 512/ ],
	[ 'key URI length 0', 62, pack('n', 0), qr/damaged: key URI length 0 is not between 1 and 512/ ],
	[ 'key URI length 513', 62, pack('n', 513), qr/damaged: key URI length 513 is not between 1 and 512/ ],
	[ 'byte after the wrapped DEK', 64 + $wlen + 10, "\x01",
		qr/damaged: byte ${\(74 + $wlen)} after the wrapped DEK \(${\(64 + $wlen)}\.\.575\) is not zero/ ],
	[ 'NUL in the key id', 576 + 2, "\0", qr/damaged: key id contains a NUL or control character/ ],
	[ 'byte after the key id', 1087, "\x80",
		qr/damaged: byte 1087 after the key id \(${\(576 + $klen)}\.\.1087\) is not zero/ ],
	[ 'control character in the key URI', 1088 + 1, "\n", qr/damaged: key URI contains a NUL or control character/ ],
	[ 'byte after the key URI', 1088 + $ulen, "a",
		qr/damaged: byte ${\(1088 + $ulen)} after the key URI \(${\(1088 + $ulen)}\.\.1599\) is not zero/ ],
	[ 'reserved area, first byte', 1600, "\x01", qr/damaged: reserved byte 1600 \(1600\.\.2015\) is not zero/ ],
	[ 'reserved area, last byte', 2015, "\xff", qr/damaged: reserved byte 2015 \(1600\.\.2015\) is not zero/ ],
	[ 'format version 2', 8, pack('N', 2), qr/has format version 2, this build reads version 1/ ],);

for my $t (@tampered)
{
	my ($name, $off, $bytes, $reason) = @$t;
	my $bad = $ctl;
	substr($bad, $off, length($bytes)) = $bytes;
	isnt($bad, $ctl, "$name: the file differs") or next;
	substr($bad, 2016, 32) = sha256(substr($bad, 0, 2016));
	spew_bytes(control_path($node2), $bad);
	$node2->start;
	$st = wait_key_settled($node2);
	is($st->{state}, 'unavailable', "$name (checksum recomputed): refused");
	like($st->{reason}, $reason, "$name: the documented reason");
	is(slurp_bytes(control_path($node2)), $bad, "$name: file left untouched");
	$node2->stop;
}

# The frontend reader (cmk_restore, built with postgres_fe.h) is as strict.
my $fe = "$tmp/fe_pgdata";
mkdir $fe;
mkdir "$fe/cmk_storage";
mkdir "$tmp/archive";
my $bad = $ctl;
substr($bad, 1700, 1) = "\x07";
substr($bad, 2016, 32) = sha256(substr($bad, 0, 2016));
spew_bytes("$fe/cmk_storage/control", $bad);
my $restore = $node2->config_data('--bindir') . '/cmk_restore';
my ($stdout, $stderr);
IPC::Run::run([ $restore, 'wal', '--dek-id', '00' x 16, '--archive-directory', "$tmp/archive", '--pgdata', $fe,
	'000000010000000000000001', "$tmp/seg" ], '>', \$stdout, '2>', \$stderr);
isnt($?, 0, 'cmk_restore refuses a damaged control file');
like($stderr, qr/cmk_storage control file is damaged: reserved byte 1700 \(1600\.\.2015\) is not zero/,
	'cmk_restore names the damaged field');

spew_bytes(control_path($node2), $ctl);
$node2->start;
is(wait_key_settled($node2)->{state}, 'available', 'the original control file is accepted again');
is($node2->safe_psql('postgres', 'SELECT id FROM w2'), '42', 'and the data is readable');
$node2->stop;

done_testing();
