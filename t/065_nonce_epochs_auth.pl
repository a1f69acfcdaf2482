# $PGDATA/cmk_storage/nonce_epochs is bound to the cluster and the DEK and
# authenticated with a key derived from the DEK (docs/nonce-epochs.md): a
# changed prefix, a dropped entry, an altered older copy, another cluster's
# file or a format-1 file are reported (cmk_storage.status and every read),
# never decrypted to garbage; an older copy's missing epochs are unknown
# epochs.  A clean cluster, restarts, crash recovery, a streaming standby
# (with and without its key during replay) and a rotation keep working.
use strict;
use warnings;
use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
# The primary checks its KEK rarely: the standby's key is taken away below by
# moving the KEK file while the primary, which unwrapped at start, keeps its.
my $node = cmk_node('primary', $kek, init => { allows_streaming => 1 },
	conf => 'cmk_storage.key_check_interval = 3600');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node);
my $file = epochs_path($node);

# status: "<registered epochs or NULL>|<problem or empty>"
my $status_q = q{SELECT coalesce(nonce_epochs::text, 'NULL') || '|' || coalesce(nonce_epochs_problem, '') FROM cmk_storage.status};
my $sysid_q = q{SELECT system_identifier FROM pg_control_system()};

# The MAC of a file image as docs/nonce-epochs.md defines it, computed by
# openssl from the DEK: HMAC-SHA256 over the authenticated part, under
# HKDF-SHA256(DEK, info "cmk_storage/v1/nonce-epochs").
sub expected_mac
{
	my ($image, $dek) = @_;
	my $n = unpack('N', substr($image, 12, 4));
	spew_bytes("$tmp/auth.bin", substr($image, 0, 48 + 16 * $n));
	my $key = `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:@{[ unpack('H*', $dek) ]} -kdfopt info:cmk_storage/v1/nonce-epochs HKDF`;
	$key =~ s/[:\s]//g;
	my $mac = `openssl dgst -sha256 -mac HMAC -macopt hexkey:$key -binary $tmp/auth.bin`;
	unlink "$tmp/auth.bin";
	return $mac;
}

# --- a clean cluster ---------------------------------------------------------------------
$node->safe_psql('postgres', q{CREATE TABLE t1 (id int PRIMARY KEY, v text) USING cmk_heap;
	INSERT INTO t1 SELECT g, 'first life ' || g FROM generate_series(1, 200) g;});
my $t1 = $node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t1');
is($node->safe_psql('postgres', $status_q), '1|', 'clean cluster: one epoch registered, no problem');
my $e = read_epochs($file);
is($e->{version}, 2, 'the file is in format 2');
is($e->{flags}, 1, 'the file is sealed');
is($e->{sysid}, $node->safe_psql('postgres', $sysid_q), 'the file names the cluster\'s system identifier');
is($e->{dek_id}, key_status($node)->{dek_id}, 'the file names the DEK identifier');
is(scalar @{ $e->{entries} } . '/' . scalar @{ $e->{pending} }, '1/0', 'one authenticated epoch, none pending');
my $dek = unwrap_dek(control_path($node), $kek, $tmp);
is(unpack('H*', $e->{mac}), unpack('H*', expected_mac(slurp_bytes($file), $dek)),
	'the MAC is HMAC-SHA256 under HKDF(DEK, "cmk_storage/v1/nonce-epochs"), as documented');
my $one_epoch = slurp_bytes($file);    # an older copy, for later

# --- restart and crash recovery -----------------------------------------------------------------
$node->restart;
wait_key_settled($node);
is($node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t1'), $t1,
	'restart: rows of the first epoch read back');
$node->safe_psql('postgres', q{CREATE TABLE t2 (id int PRIMARY KEY, v text) USING cmk_heap;
	INSERT INTO t2 SELECT g, 'second life ' || g FROM generate_series(1, 200) g;});
my $t2 = $node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t2');
is($node->safe_psql('postgres', $status_q), '2|', 'restart: the first write registered a second epoch');
my $e2 = (grep { my $id = $_->[0]; !grep { $_->[0] == $id } @{ $e->{entries} } } @{ read_epochs($file)->{entries} })[0]->[0];
$node->safe_psql('postgres', q{INSERT INTO t2 SELECT g, 'crashed ' || g FROM generate_series(201, 300) g;});
$node->stop('immediate');
$node->start;
wait_key_settled($node);
is($node->safe_psql('postgres', 'SELECT count(*) FROM t2'), '300', 'crash recovery: every committed row reads back');
is($node->safe_psql('postgres', $status_q), '2|', 'crash recovery: the epochs authenticate');
$t2 = $node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t2');
$node->stop;
my $good = slurp_bytes($file);
$e = read_epochs($file);
is(unpack('H*', $e->{mac}), unpack('H*', expected_mac($good, $dek)), 'crash recovery: the file stays sealed');

# --- damage: each reported by status and by every read, never garbage ---------------------------
my $other_kek_cluster = cmk_node('other', $kek);    # the same KEK file
$other_kek_cluster->start;
$other_kek_cluster->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($other_kek_cluster);
$other_kek_cluster->safe_psql('postgres', q{CREATE TABLE x (id int) USING cmk_heap; INSERT INTO x VALUES (1);});
$other_kek_cluster->stop;
my $foreign = slurp_bytes(epochs_path($other_kek_cluster));

my %edited;
{
	my $c = read_epochs($file);
	substr($c->{entries}[0][2], 3, 1) ^= "\x01";    # one prefix bit, CRC recomputed
	$edited{prefix} = epochs_image($c);
	$c = read_epochs($file);
	shift @{ $c->{entries} };    # a dropped entry, count and CRC recomputed
	$edited{dropped} = epochs_image($c);
	$c = read_epochs($file);
	$c->{entries}[1][1] ^= "\x80\x00\x00\x00";    # the other entry's DEK tag
	$edited{tag} = epochs_image($c);
	$c = read_epochs($file);
	my %used = map { $_->[0] => 1 } @{ $c->{entries} };
	my $unused = 0;
	$unused++ while $used{$unused};
	$c->{pending} = [ [ $unused, $c->{entries}[0][1], 'garbage!' ] ];    # invented
	$edited{pending_added} = epochs_image($c);
	spew_bytes("$tmp/one.bin", $one_epoch);
	$c = read_epochs("$tmp/one.bin");
	substr($c->{entries}[0][2], 0, 1) ^= "\xff";    # an older copy with its entry changed
	$edited{older_changed} = epochs_image($c);
	$c = read_epochs(epochs_path($other_kek_cluster));
	$c->{sysid} = $e->{sysid};    # the other cluster's file, made to name this cluster
	$edited{foreign_renamed} = epochs_image($c);
	$edited{format1} = epochs_image({ version => 1, entries => $e->{entries} });    # a downgrade
}
my @cases = (
	[ 'changed prefix (CRC recomputed)', $edited{prefix}, qr/"cmk_storage\/nonce_epochs" failed authentication/,
		qr/HINT:  Restore \$PGDATA\/cmk_storage\/nonce_epochs from the newest backup of this cluster/ ],
	[ 'dropped entry (CRC recomputed)', $edited{dropped}, qr/"cmk_storage\/nonce_epochs" failed authentication/,
		qr/DETAIL:  Its HMAC does not match its contents/ ],
	[ 'changed DEK tag (CRC recomputed)', $edited{tag}, qr/"cmk_storage\/nonce_epochs" failed authentication/, qr/HINT:  Restore/ ],
	[ 'older copy with a changed entry', $edited{older_changed}, qr/"cmk_storage\/nonce_epochs" failed authentication/, qr/HINT:  Restore/ ],
	[ 'another cluster\'s file', $foreign, qr/"cmk_storage\/nonce_epochs" belongs to another cluster/,
		qr/DETAIL:  The file names database system identifier \d+; this cluster's is $e->{sysid}\./ ],
	[ 'another cluster\'s file naming this cluster', $edited{foreign_renamed},
		qr/"cmk_storage\/nonce_epochs" belongs to another data encryption key/,
		qr/DETAIL:  The file names DEK [0-9a-f]{32}; the current DEK is $e->{dek_id}\./ ],
	[ 'format 1 (a downgrade)', $edited{format1}, qr/"cmk_storage\/nonce_epochs" is in format 1, which is not authenticated/,
		qr/HINT:  If this cluster ran such a build until now, run SELECT cmk_storage.upgrade_nonce_epochs\(\) once/ ],
	[ 'damaged bytes (CRC not recomputed)', substr($good, 0, 60) . ("\x5a" x 4) . substr($good, 64),
		qr/"cmk_storage\/nonce_epochs" has a wrong checksum/, qr/HINT:  Restore/ ]);
for my $case (@cases)
{
	my ($what, $bytes, $why, $more) = @$case;
	spew_bytes($file, $bytes);
	$node->start;
	wait_key_settled($node);
	my ($count, $problem) = split /\|/, $node->safe_psql('postgres', $status_q), 2;
	is($count, 'NULL', "$what: status shows no epoch count");
	like($problem, qr/^$why$/, "$what: status names the problem");
	my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM t1 ORDER BY id LIMIT 3');
	like($err, qr/ERROR:  cmk_storage nonce epochs are not available: $why/, "$what: a read fails with the cause");
	like($err, $more, "$what: ... and the documented detail or hint");
	is($out, '', "$what: no rows, no garbage");
	($ret, $out, $err) = $node->psql('postgres', q{SET enable_seqscan = off; SELECT v FROM t2 WHERE id = 7});
	like($err, qr/nonce epochs are not available/, "$what: an index fetch fails too");
	($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO t1 VALUES (-1, 'x')});
	like($err, qr/nonce epochs are not available/, "$what: writes are refused");
	$node->stop;
	is(slurp_bytes($file), $bytes, "$what: the file was left as it was");
}
like(slurp_file($node->logfile), qr/WARNING:  cmk_storage: "cmk_storage\/nonce_epochs" failed authentication/,
	'damage is logged when the key arrives');

# an invented pending entry: the rest is fine, it is not usable
spew_bytes($file, $edited{pending_added});
$node->start;
is($node->safe_psql('postgres', $status_q), '3|', 'an added pending entry: status counts it, no problem');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t1'), '200', 'an added pending entry: the rest reads');
$node->stop;

# --- an older copy (a prefix of the current file): its MAC is valid ------------------------------
# What it lacks is an epoch the data names: reported, not decrypted.
spew_bytes($file, $one_epoch);
$node->start;
wait_key_settled($node);
is($node->safe_psql('postgres', $status_q), '1|', 'older copy: authenticated, one epoch');
is($node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t1'), $t1,
	'older copy: rows of the epoch it has read back');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM t2');
like($err, qr/ERROR:  tuple \(\d+,\d+\) in relation "t2" names nonce epoch $e2, which this cluster never registered/,
	'older copy: a row of the missing epoch is an unknown epoch');
like($err, qr/HINT:  .*nonce_epochs is older than the data/, 'older copy: the hint names the likely cause');
is($out, '', 'older copy: no garbage');
$node->stop;
is(slurp_bytes($file), $one_epoch, 'older copy: left as it was (nothing was written)');

spew_bytes($file, $good);
$node->start;
wait_key_settled($node);
is($node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t2'), $t2,
	'the newest file restored: every row reads back');

# --- a streaming standby ------------------------------------------------------------------------
# It learns new epochs through WAL; with its key, redo seals them into its
# file; without it, they are listed as pending, sealed when the key comes
# back, and not trusted by a later server life that does not replay them.
$node->backup('bb');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'bb', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cmk_storage.key_check_interval = 1\n");
$standby->start;
wait_key_settled($standby);
$node->restart;
wait_key_settled($node);
$node->safe_psql('postgres', q{CREATE TABLE t3 (id int PRIMARY KEY, v text) USING cmk_heap;
	INSERT INTO t3 SELECT g, 'third life ' || g FROM generate_series(1, 100) g;});
$node->wait_for_catchup($standby);
my $t3 = $node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t3');
is($standby->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t3'), $t3,
	'standby: reads rows of an epoch it learned from WAL');
ok(slurp_bytes(epochs_path($standby)) eq slurp_bytes($file), 'standby: redo sealed the same file as the primary\'s');

# the standby's key goes away (the KEK file is moved) while a new epoch arrives
sub standby_key_state
{
	my ($want) = @_;
	$standby->poll_query_until('postgres', qq{SELECT state = '$want' FROM cmk_storage.status})
	  or die "standby key never became $want";
}
sub new_epoch_without_standby_key
{
	my ($table) = @_;
	$node->restart;    # unwraps its key: the KEK file is there
	wait_key_settled($node);
	rename($kek, "$kek.away") or die;
	standby_key_state('unavailable');
	$node->safe_psql('postgres', qq{CREATE TABLE $table (id int PRIMARY KEY, v text) USING cmk_heap;
		INSERT INTO $table SELECT g, '$table ' || g FROM generate_series(1, 100) g; CHECKPOINT;});
	$node->wait_for_catchup($standby, 'replay');
	return $node->safe_psql('postgres', "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM $table");
}
my $standby_mac = unpack('H*', read_epochs(epochs_path($standby))->{mac});
my $t4 = new_epoch_without_standby_key('t4');
my $se = read_epochs(epochs_path($standby));
is(scalar @{ $se->{pending} }, 1, 'standby without its key: redo lists the new epoch as pending');
is(unpack('H*', $se->{mac}), $standby_mac, 'standby without its key: the authenticated part is kept as it was');
rename("$kek.away", $kek) or die;
standby_key_state('available');
is($standby->safe_psql('postgres', "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t4"), $t4,
	'standby, key back: rows of the epoch replayed without the key read back');
$se = read_epochs(epochs_path($standby));
is(scalar @{ $se->{pending} }, 0, 'standby, key back: the pending epoch was sealed into the authenticated part');
ok(slurp_bytes(epochs_path($standby)) eq slurp_bytes($file), 'standby, key back: the same file as the primary\'s');

# again, but the standby stops before its key is back, after a restartpoint
# that WAL replay will not go behind again
my $t5 = new_epoch_without_standby_key('t5');
$standby->safe_psql('postgres', 'CHECKPOINT');    # a restartpoint past the epoch's record
$standby->stop;
rename("$kek.away", $kek) or die;
$standby->start;
wait_key_settled($standby);
($ret, $out, $err) = $standby->psql('postgres', 'SELECT * FROM t5');
like($err, qr/ERROR:  tuple \(\d+,\d+\) in relation "t5" names nonce epoch \d+, which WAL replay recorded while the data encryption key was unavailable/,
	'standby restarted without replaying it: the pending epoch is not trusted');
like($err, qr/HINT:  Copy \$PGDATA\/cmk_storage\/nonce_epochs from the primary/, '... and the hint says what to copy');
is($out, '', '... no garbage');
is($standby->safe_psql('postgres', "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t4"), $t4,
	'standby restarted: the authenticated epochs still read');
$standby->stop;
copy($file, epochs_path($standby)) or die;
$standby->start;
wait_key_settled($standby);
is($standby->safe_psql('postgres', "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t5"), $t5,
	'standby with the primary\'s file: the rows read back');

# --- rotation: a re-wrap keeps the DEK, so the file stays valid -----------------------------------
my $kek2 = new_kek("$tmp/kek2.pem");
like($node->safe_psql('postgres', "SELECT cmk_storage.rotate_key('file://$kek2')"), qr/re-wrapped/, 'rotation: re-wrapped');
is(key_status($node)->{dek_id}, $e->{dek_id}, 'rotation: the DEK is the same');
$node->append_conf('postgresql.conf', "cmk_storage.key_uri = 'file://$kek2'");
$node->restart;
wait_key_settled($node);
is($node->safe_psql('postgres', $status_q), scalar(@{ read_epochs($file)->{entries} }) . '|',
	'rotation and restart: the file authenticates');
is($node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t2'), $t2,
	'rotation and restart: rows read back');
$node->safe_psql('postgres', q{INSERT INTO t3 VALUES (1000, 'after rotation')});
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT v FROM t3 WHERE id = 1000}), 'after rotation',
	'rotation: the standby follows');
$standby->stop;

# --- a format-1 file (an earlier build): upgraded on request, never by itself ---------------------
$node->stop;
$good = slurp_bytes($file);
my $v1 = epochs_image({ version => 1, entries => read_epochs($file)->{entries} });
spew_bytes($file, $v1);
$node->start;
wait_key_settled($node);
like($node->safe_psql('postgres', $status_q), qr/^NULL\|"cmk_storage\/nonce_epochs" is in format 1/,
	'format 1: status says so');
($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*) FROM t1');
like($err, qr/is in format 1, which is not authenticated/, 'format 1: reads refused until upgraded');
is(slurp_bytes($file), $v1, 'format 1: not upgraded by itself');
like($node->safe_psql('postgres', 'SELECT cmk_storage.upgrade_nonce_epochs()'),
	qr/^authenticated \d+ nonce epochs of format 1 under data encryption key $e->{dek_id}$/, 'upgrade_nonce_epochs()');
is($node->safe_psql('postgres', 'SELECT count(*), md5(string_agg(v, \',\' ORDER BY id)) FROM t2'), $t2,
	'format 1 upgraded: rows read back');
ok(slurp_bytes($file) eq $good, 'format 1 upgraded: the same sealed file as before the downgrade');
is($node->safe_psql('postgres', q{SELECT count(*) FROM cmk_storage.key_events WHERE event = 'upgrade' AND outcome = 'success'}),
	'1', 'the upgrade is audited');
($ret, $out, $err) = $node->psql('postgres', 'SELECT cmk_storage.upgrade_nonce_epochs()');
like($err, qr/could not upgrade the nonce epoch file: the nonce epoch file is already in format 2/,
	'upgrade_nonce_epochs() on a format-2 file: refused');
$node->stop;

done_testing();
