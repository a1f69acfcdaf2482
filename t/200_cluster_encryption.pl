# Cluster encryption (docs/io-layer.md): with cmk_storage.cluster_encryption
# on, no value written after it took effect is found in any relation file
# (any fork, any database, a tablespace) or WAL segment; an independent
# decoder reads both formats from the document; pg_checksums works on the
# ciphertext and reports a flipped bit; crash recovery under load loses no
# committed row; a server without the module, with a wrong key or without a
# key refuses to start and writes nothing.
use strict;
use warnings;
use File::Find;
use Digest::SHA;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $ref = -f 'scripts/cmk_page_ref.py' ? 'scripts/cmk_page_ref.py'
  : "$ENV{REPO}/scripts/cmk_page_ref.py";

# --- a new cluster started with cluster encryption on gets its key first ----
my $fresh = cmk_node('fresh', $kek, conf => "cmk_storage.cluster_encryption = on\n");
$fresh->start;
like(slurp_file($fresh->logfile),
	qr/LOG:  cmk_storage: created a new data encryption key at the cluster's first start(.|\n)*LOG:  cmk_storage: cluster encryption is on/,
	'the first start creates the key before the layer starts');
$fresh->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($fresh)->{state}, 'available', 'the key worker unwraps the key the postmaster created');
my $fm = random_marker('FRESH');
$fresh->safe_psql('postgres', "CREATE TABLE f AS SELECT '$fm'::text AS v; CHECKPOINT");
is(scalar(map { files_containing($fresh->data_dir . "/$_", $fm) } qw(base global pg_wal)), 0,
	'a new cluster encrypts from its first start');
is($fresh->safe_psql('postgres', 'SHOW wal_log_hints'), 'on',
	'without data checksums the layer turns wal_log_hints on (torn pages)');
like(slurp_file($fresh->logfile), qr/LOG:  cmk_storage: wal_log_hints is turned on for cluster encryption/,
	'and says so in the log');
$fresh->restart;
is($fresh->safe_psql('postgres', 'SELECT v FROM f'), $fm, 'and reads back after a restart');
$fresh->stop;

# --- a cluster whose key exists, then cluster encryption on ----------------
my $node = cmk_node('enc', $kek, init => { extra => ['--data-checksums'] },
	conf => "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($node)->{state}, 'available', 'key created with cluster encryption off');
$node->stop;
$node->append_conf('postgresql.conf', "cmk_storage.cluster_encryption = on\n");
$node->start;
like(slurp_file($node->logfile), qr/LOG:  cmk_storage: cluster encryption is on/, 'layer started');

my $tsdir = "$tmp/ts1";
mkdir $tsdir or die;
my @m = map { random_marker("CE$_") } 1 .. 12;
my $big = join('', map { random_marker('') } 1 .. 400);    # ~10 kB, incompressible: TOAST
$node->safe_psql('postgres', qq{
CREATE TABLESPACE ts1 LOCATION '$tsdir';
CREATE TABLE t (id int PRIMARY KEY, v text UNIQUE, big text);
INSERT INTO t VALUES (1, '$m[0]', '$m[1]$big'), (2, '$m[2]', NULL);
INSERT INTO t SELECT g, '$m[3]' || g, NULL FROM generate_series(3, 3000) g;
CREATE INDEX t_big ON t (substr(big, 1, 200));
CREATE SEQUENCE s START 1000;
SELECT nextval('s');
CREATE MATERIALIZED VIEW mv AS SELECT v || '$m[4]' AS w FROM t WHERE id < 100;
CREATE UNLOGGED TABLE u (v text);
INSERT INTO u VALUES ('$m[7]');
});
$node->safe_psql('postgres', qq{
CREATE DATABASE d_copy STRATEGY FILE_COPY TEMPLATE postgres;
CREATE DATABASE d_wal STRATEGY WAL_LOG TEMPLATE postgres;
CREATE DATABASE d_ts TABLESPACE ts1;
});
$node->safe_psql('postgres', qq{
CREATE TABLE tt (v text) TABLESPACE ts1;
INSERT INTO tt VALUES ('$m[5]');
CREATE TABLE moved (v text);
INSERT INTO moved VALUES ('$m[6]');
ALTER TABLE moved SET TABLESPACE ts1;
});
$node->safe_psql('d_ts', "CREATE TABLE x AS SELECT '$m[8]'::text AS v");
$node->safe_psql('postgres', "ALTER DATABASE d_wal SET TABLESPACE ts1");
$node->safe_psql('d_copy', "UPDATE t SET v = '$m[9]' WHERE id = 2");
$node->safe_psql('postgres', 'CHECKPOINT');

is($node->safe_psql('d_copy', "SELECT v FROM t WHERE id = 2"), $m[9], 'FILE_COPY database reads and writes');
is($node->safe_psql('d_wal', "SELECT count(*) FROM t WHERE v LIKE '$m[3]%'"), '2998', 'WAL_LOG database moved to a tablespace reads');
is($node->safe_psql('postgres', "SELECT md5(big) = md5('$m[1]$big') FROM t WHERE id = 1"), 't', 'TOAST reads back');
is($node->safe_psql('postgres', "SELECT v FROM moved"), $m[6], 'table moved to a tablespace reads');
is($node->safe_psql('d_ts', "SELECT v FROM x"), $m[8], 'database in a tablespace reads');

my $pgdata = $node->data_dir;
my @where = map { "$pgdata/$_" } qw(base global pg_wal);
my @hits = map { files_containing($_, @m) } (@where, $tsdir);
is(scalar(@hits), 0, 'no value in any relation file or WAL segment, tablespace included')
  or diag(join("\n", @hits));

# Every page of the relations made after the switch is encrypted or zero.
my $seen = 0;
for my $rel (qw(t t_pkey t_v_key t_big s mv tt moved u))
{
	my $path = $node->safe_psql('postgres', "SELECT pg_relation_filepath('$rel')");
	for my $f (grep { -f } map { "$pgdata/$path$_" } ('', '_fsm', '_vm', '_init'))
	{
		my $data = slurp_bytes($f);
		for (my $off = 0; $off < length($data); $off += 8192)
		{
			my $page = substr($data, $off, 8192);
			next if $page =~ /^\0*$/;
			my $flags = unpack('v', substr($page, 10, 2));
			$seen++;
			ok($flags & 0x8000, "$f block " . ($off / 8192) . " carries the marker")
			  or last;
		}
	}
}
ok($seen > 20, "checked $seen pages");

# What was written before the switch (initdb's catalogs and WAL included)
# is swept too (t/205 checks it page by page).
ok($node->poll_query_until('postgres',
	q{SELECT cluster_encryption = 'complete' FROM cmk_storage.status}),
	'cluster encryption reaches complete');
is($node->safe_psql('postgres', 'SELECT count(*) FROM cmk_storage.verify_cluster_encryption()'),
	'0', 'no relation page or WAL page is left in clear');

# --- the independent decoder (scripts/cmk_page_ref.py) ----------------------
SKIP:
{
	skip 'python3-cryptography not available', 2
	  unless system('python3 -c "import cryptography" 2>/dev/null') == 0;
	spew_bytes("$tmp/dek.bin", unwrap_dek(control_path($node), $kek, $tmp));
	my ($db, $node_no) = $node->safe_psql('postgres',
		"SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), pg_relation_filenode('t')") =~ /(\d+)\|(\d+)/;
	my $out;
	IPC::Run::run([ 'python3', $ref, 'rel', "$tmp/dek.bin", "$pgdata/base/$db/$node_no",
		$db, $node_no, 0, 0, 0, "$tmp/rel.dec" ], '>', \$out);
	ok(index(slurp_bytes("$tmp/rel.dec"), $m[0]) >= 0, "decoder decrypts a relation page ($out)");

	my $seg = $node->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
	$node->safe_psql('postgres', "INSERT INTO t VALUES (9999, '$m[10]', NULL)");
	IPC::Run::run([ 'python3', $ref, 'wal', "$tmp/dek.bin", "$pgdata/pg_wal/$seg", "$tmp/wal.dec" ], '>', \$out);
	ok(index(slurp_bytes("$tmp/wal.dec"), $m[10]) >= 0, "decoder decrypts a WAL page ($out)");
	unlink "$tmp/dek.bin";
}

# --- crash under load loses no committed row --------------------------------
# SIGKILL of a backend makes the postmaster kill every process and run crash
# recovery, through the layer, like a power loss.  (A SIGKILLed postmaster
# can stay a zombie in a container whose init does not reap, which blocks
# the next start's lock file; the postmaster's own crash cycle avoids that.)
$node->safe_psql('postgres', 'CREATE TABLE acked (id int PRIMARY KEY, pad text)');
spew_bytes("$tmp/load.sql",
	"INSERT INTO t SELECT 100000 + (random() * 1e8)::int, md5(random()::text), repeat('x', 500) ON CONFLICT DO NOTHING;\n");
my $acked = 0;
for my $cycle (1 .. 3)
{
	# pgbench runs until the crash ends its sessions (-T only bounds a hang)
	my $load = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', '900', '-f', "$tmp/load.sql", '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \my $lo, '2>', \my $le);
	for my $i (1 .. 50)
	{
		$node->safe_psql('postgres', "INSERT INTO acked VALUES ($acked + 1, repeat('y', 300))");
		$acked++;
	}
	my $victim;
	$node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'INSERT INTO t SELECT 100000%' AND pid <> pg_backend_pid()");
	$victim = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE query LIKE 'INSERT INTO t SELECT 100000%' AND pid <> pg_backend_pid() LIMIT 1");
	ok($victim =~ /^\d+$/, "crash $cycle: pgbench is running") or diag($le);
	kill 'KILL', $victim;
	$load->finish;
	ok($node->poll_query_until('postgres', 'SELECT true'), "crash $cycle: the server recovered");
	is($node->safe_psql('postgres', 'SELECT count(*), max(id) FROM acked'), "$acked|$acked",
		"crash $cycle: every committed row is there after kill -9 and recovery");
}
like(slurp_file($node->logfile), qr/terminated by signal 9: Killed(.|\n)*redo done at/,
	'crash recovery replayed WAL through the layer');
is($node->safe_psql('postgres', "SELECT v FROM t WHERE id = 1"), $m[0], 'data from before the crash reads');
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;

# --- checksums on ciphertext --------------------------------------------------
my $rel = "$pgdata/" . do { $node->start; my $p = $node->safe_psql('postgres', "SELECT pg_relation_filepath('mv')"); $node->stop; $p };
command_ok([ 'pg_checksums', '--check', '-D', $pgdata ], 'pg_checksums --check is clean on the encrypted cluster');
my $orig = slurp_bytes($rel);
my $bad = $orig;
substr($bad, 4000, 1) = chr(ord(substr($bad, 4000, 1)) ^ 0x10);
spew_bytes($rel, $bad);
command_fails_like([ 'pg_checksums', '--check', '-D', $pgdata ], qr/checksum verification failed in file/,
	'pg_checksums reports a flipped bit in ciphertext');
$node->start;
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT count(*) FROM mv');
like($stderr, qr/invalid page in block 0 of relation/, 'the server refuses the damaged page as it does today');
like(slurp_file($node->logfile), qr/page verification failed, calculated checksum \d+ but expected \d+/,
	'with the checksum failure reported');
$node->stop;
spew_bytes($rel, $orig);

# --- refusals write nothing ---------------------------------------------------
sub fingerprint
{
	my %h;
	find({ no_chdir => 1, wanted => sub {
		return unless -f $_ && m{/(base|global|pg_wal)/};
		$h{$_} = Digest::SHA->new(256)->addfile($_)->hexdigest;
	} }, $pgdata);
	return join("\n", map { "$_ $h{$_}" } sort keys %h);
}
my $before = fingerprint();
my $conf = slurp_file("$pgdata/postgresql.conf");

# without the module
(my $stock = $conf) =~ s/^(shared_preload_libraries|cmk_storage\.)/#$1/mg;
spew_bytes("$pgdata/postgresql.conf", $stock);
my $loglen = -s $node->logfile;
ok(!$node->start(fail_ok => 1), 'a server without the module does not start on the encrypted cluster');
like(substr(slurp_file($node->logfile), $loglen), qr/invalid info bits 4\d\d\d in log segment.*\n.*\n.*PANIC:  could not locate a valid checkpoint record/,
	'it stops at the WAL marker');
is(fingerprint(), $before, 'and wrote nothing into relation files or WAL');

# with the module but the setting off
spew_bytes("$pgdata/postgresql.conf", $conf . "cmk_storage.cluster_encryption = off\n");
$loglen = -s $node->logfile;
ok(!$node->start(fail_ok => 1), 'the module with the setting off does not start on the encrypted cluster');
like(substr(slurp_file($node->logfile), $loglen),
	qr/FATAL:  cmk_storage: this cluster's WAL is encrypted, but cmk_storage.cluster_encryption is off/,
	'and says to turn it on');
is(fingerprint(), $before, 'and wrote nothing');

# without the key directory: a lost key, never a new one
spew_bytes("$pgdata/postgresql.conf", $conf);
rename("$pgdata/cmk_storage", "$tmp/cmk_storage.saved") or die;
$loglen = -s $node->logfile;
ok(!$node->start(fail_ok => 1), 'a lost key directory refuses to start');
like(substr(slurp_file($node->logfile), $loglen),
	qr/FATAL:  cmk_storage: cluster encryption needs the data encryption key before recovery: cluster encryption is on, but \$PGDATA\/cmk_storage is missing and this cluster is not new\n.*HINT:  Restore this cluster's \$PGDATA\/cmk_storage directory/,
	'and says to restore it');
ok(!-e "$pgdata/cmk_storage", 'no new key was created');
is(fingerprint(), $before, 'and nothing was written');
rename("$tmp/cmk_storage.saved", "$pgdata/cmk_storage") or die;

# with a wrong key: another RSA key in the KEK's place
spew_bytes("$pgdata/postgresql.conf", $conf);
my $kek_pem = slurp_bytes($kek);
new_kek("$tmp/other.pem");
spew_bytes($kek, slurp_bytes("$tmp/other.pem"));
$loglen = -s $node->logfile;
ok(!$node->start(fail_ok => 1), 'a wrong key refuses to start');
like(substr(slurp_file($node->logfile), $loglen),
	qr/FATAL:  cmk_storage: cluster encryption needs the data encryption key before recovery/,
	'the log says the key is the problem');
is(fingerprint(), $before, 'and nothing was written');

spew_bytes($kek, $kek_pem);
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM acked'), $acked, 'the right key starts it again');
$node->stop;

done_testing();
