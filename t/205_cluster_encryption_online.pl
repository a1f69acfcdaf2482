# Cluster encryption of what was written before it was on (docs/io-layer.md,
# "Plaintext from before: the sweep"): a cluster used with the setting off
# (tables, indexes, TOAST, a sequence, a materialized view, an unlogged
# table with its init fork, a tablespace, a second database, pgbench) is
# turned on; the sweep rewrites it online under pgbench, survives a restart
# in the middle without starting over, and reaches 'complete'; then no value
# is found in any relation file or WAL segment, every non-zero relation page
# and every WAL page carries the marker, and all data is as before.  A new
# cluster started with the setting on loses initdb's plaintext the same way.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");

# Every plaintext page under the data directory and the tablespaces, as
# "file page": relation pages (not all zero) without 0x8000 in pd_flags, WAL
# pages with the magic 0xD110 and without 0x4000 in xlp_info, or anything
# else non-zero in a WAL segment.  Written from docs/io-layer.md, not from
# the C code.  Also returns the number of pages that were checked.
sub plaintext_pages
{
	my ($pgdata, @tsdirs) = @_;
	my (@plain, @files);
	my $checked = 0;
	my @stack = ("$pgdata/global", "$pgdata/base", "$pgdata/pg_wal", @tsdirs);
	while (my $d = pop @stack)
	{
		opendir(my $dh, $d) or next;
		for my $e (readdir $dh)
		{
			next if $e eq '.' || $e eq '..';
			my $p = "$d/$e";
			if (-d $p) { push @stack, $p; next; }
			push @files, $p;
		}
		closedir $dh;
	}
	for my $f (@files)
	{
		my $wal = $f =~ m{/pg_wal/[0-9A-F]{24}(\.partial)?$};
		my $rel = $f =~ m{/(global|\d+)/t?\d+(_\d+)?(_(fsm|vm|init))?(\.\d+)?$};
		next unless $wal || $rel;
		my $data = slurp_bytes($f);
		for (my $off = 0; $off + 8192 <= length($data); $off += 8192)
		{
			my $page = substr($data, $off, 8192);
			next if $page =~ /^\0*$/;
			$checked++;
			my $bad;
			if ($wal)
			{
				my ($magic, $info) = unpack('vv', $page);
				$bad = $magic != 0xD110 || !($info & 0x4000);
			}
			else
			{
				$bad = !(unpack('v', substr($page, 10, 2)) & 0x8000);
			}
			push @plain, "$f " . ($off / 8192) if $bad;
		}
	}
	return (\@plain, $checked);
}

sub progress
{
	my ($node) = @_;
	my $row = $node->safe_psql('postgres',
		q{SELECT phase, pass, blocks_rewritten, wal_segments_rewritten, databases_total
		    FROM cmk_storage.cluster_encryption_progress});
	my ($phase, $pass, $rewritten, $wal, $dbs) = split /\|/, $row;
	return { phase => $phase, pass => $pass, rewritten => $rewritten, wal => $wal, dbs => $dbs };
}

sub wait_complete
{
	my ($node) = @_;
	return $node->poll_query_until('postgres',
		q{SELECT cluster_encryption = 'complete' FROM cmk_storage.status});
}

# --- a cluster used with cluster encryption off ------------------------------
my $node = cmk_node('online', $kek, init => { allows_streaming => 1, extra => ['--data-checksums'] });
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is(wait_key_settled($node)->{state}, 'available', 'key created with cluster encryption off');
is($node->safe_psql('postgres', 'SELECT cluster_encryption FROM cmk_storage.status'), 'off',
	'status says off');

my $tsdir = "$tmp/ts";
mkdir $tsdir or die;
my @m = map { random_marker("OL$_") } 1 .. 10;
my $big = join('', map { random_marker('') } 1 .. 400);    # ~10 kB, incompressible: TOAST
$node->safe_psql('postgres', qq{
CREATE TABLESPACE ts LOCATION '$tsdir';
CREATE TABLE t (id int PRIMARY KEY, v text UNIQUE, big text);
INSERT INTO t VALUES (1, '$m[0]', '$m[1]$big'), (2, '$m[2]', NULL);
INSERT INTO t SELECT g, '$m[3]' || g, NULL FROM generate_series(3, 3000) g;
DELETE FROM t WHERE id % 7 = 0;
VACUUM t;
CREATE SEQUENCE s START 4242;
SELECT nextval('s');
CREATE MATERIALIZED VIEW mv AS SELECT v || '$m[4]' AS w FROM t WHERE id < 100;
CREATE UNLOGGED TABLE u (v text PRIMARY KEY);
INSERT INTO u VALUES ('$m[5]');
CREATE TABLE tt (v text) TABLESPACE ts;
INSERT INTO tt VALUES ('$m[6]');
CREATE DATABASE second;
});
$node->safe_psql('second', "CREATE TABLE x (v text); INSERT INTO x VALUES ('$m[7]'); CREATE INDEX ON x (v)");
command_ok([ 'pgbench', '-i', '-s', '1', '-q', '-h', $node->host, '-p', $node->port, 'postgres' ],
	'pgbench tables with cluster encryption off');
$node->safe_psql('postgres', 'CHECKPOINT');

my %queries = (
	postgres => q{SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t;
SELECT last_value FROM s; SELECT md5(string_agg(w, ',' ORDER BY w)) FROM mv;
SELECT v FROM u; SELECT v FROM tt;},
	second => q{SELECT v FROM x WHERE v = (SELECT min(v) FROM x)},);
my %before = map { $_ => $node->safe_psql($_, $queries{$_}) } keys %queries;

my $pgdata = $node->data_dir;
my @tsdirs = ($tsdir);
my @hits = map { files_containing($_, @m[0 .. 7]) } ("$pgdata/base", "$pgdata/pg_wal", $tsdir);
ok(scalar(@hits) >= 8, 'with the setting off the values are on disk in clear (' . scalar(@hits) . ' files)');
my ($plain0) = plaintext_pages($pgdata, @tsdirs);
my $initial = scalar(grep { !m{/pg_wal/} } @$plain0);
ok($initial > 1000, "$initial plaintext relation pages to sweep");

# --- turned on: the sweep runs, slowed down so that it can be caught --------
$node->stop;
$node->append_conf('postgresql.conf', qq{
cmk_storage.cluster_encryption = on
cmk_storage.cluster_encryption_cost_delay = 10
cmk_storage.cluster_encryption_cost_limit = 16
});
$node->start;
is($node->safe_psql('postgres', 'SELECT cluster_encryption FROM cmk_storage.status'), 'in progress',
	'status says in progress');
ok($node->safe_psql('postgres', 'SELECT count(*) FROM cmk_storage.verify_cluster_encryption()') > 0,
	'the check on demand finds plaintext files');

ok($node->poll_query_until('postgres',
	q{SELECT phase = 'rewriting relations' AND blocks_rewritten > 50 FROM cmk_storage.cluster_encryption_progress}),
	'the sweep rewrites relation pages');
my $p = progress($node);
is($p->{dbs}, 4, 'four databases to sweep (template0 included)');
my $row = $node->safe_psql('postgres',
	q{SELECT current_database IS NOT NULL, current_relation IS NOT NULL, blocks_total > 0,
	         relations_total > 0, started IS NOT NULL FROM cmk_storage.cluster_encryption_progress});
is($row, 't|t|t|t|t', 'the progress view shows where it is');

# a restart in the middle: the pages rewritten so far are not rewritten again
my $rewritten_before = progress($node)->{rewritten};
$node->restart;
is($node->safe_psql('postgres', 'SELECT cluster_encryption FROM cmk_storage.status'), 'in progress',
	'after a restart in the middle: in progress');

# concurrent pgbench while it rewrites
ok($node->poll_query_until('postgres',
	q{SELECT phase = 'rewriting relations' FROM cmk_storage.cluster_encryption_progress}),
	'the sweep is back at the relations after the restart');
my $pgb = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '2', '-t', '300', '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \my $pgb_out, '2>', \my $pgb_err);
$pgb->finish;
is($node->safe_psql('postgres', 'SELECT phase FROM cmk_storage.cluster_encryption_progress'),
	'rewriting relations', 'still rewriting when pgbench is done');
like($pgb_out, qr/number of transactions actually processed: 600\/600/, 'pgbench ran during the sweep')
  or diag($pgb_err);

# full speed to the end
$node->append_conf('postgresql.conf', "cmk_storage.cluster_encryption_cost_delay = 0\n");
$node->reload;
ok(wait_complete($node), 'cluster encryption reaches complete');
my $after = progress($node);
ok($after->{rewritten} > 0 && $after->{rewritten} + $rewritten_before <= $initial,
	"resumed: $rewritten_before pages rewritten before the restart, $after->{rewritten} after, of $initial");
ok($after->{wal} > 0, "$after->{wal} WAL segments re-encrypted");
is($node->safe_psql('postgres', 'SELECT count(*) FROM cmk_storage.verify_cluster_encryption()'), '0',
	'the check on demand finds nothing');
like(slurp_file($node->logfile), qr/LOG:  cmk_storage: cluster encryption is complete/, 'the log says so');

# separation of duties: cmk_key_admin reads it, PUBLIC does not
$node->safe_psql('postgres', 'CREATE ROLE dba LOGIN; CREATE ROLE keyadmin LOGIN IN ROLE cmk_key_admin');
is($node->safe_psql('postgres',
	'SELECT s.cluster_encryption, p.phase FROM cmk_storage.status s, cmk_storage.cluster_encryption_progress p',
	extra_params => [ '-U', 'keyadmin' ]), 'complete|complete', 'cmk_key_admin reads the status and the progress');
for my $q ('SELECT * FROM cmk_storage.cluster_encryption_progress',
	'SELECT * FROM cmk_storage.verify_cluster_encryption()')
{
	my ($ret, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-U', 'dba' ]);
	like($err, qr/permission denied/, "PUBLIC: $q refused");
}

is($node->safe_psql('postgres',
	q{SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)
	     AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)
	     AND (SELECT count(*) FROM pgbench_history) = 600}),
	't', 'pgbench lost nothing');

# --- nothing left in clear ---------------------------------------------------
$node->stop;
@hits = map { files_containing($_, @m[0 .. 7]) } ("$pgdata/base", "$pgdata/global", "$pgdata/pg_wal", $tsdir);
is(scalar(@hits), 0, 'no value in any relation file or WAL segment, tablespace included')
  or diag(join("\n", @hits));
my ($plain, $checked) = plaintext_pages($pgdata, @tsdirs);
is(scalar(@$plain), 0, "every one of $checked non-zero relation and WAL pages is encrypted")
  or diag(join("\n", @$plain[0 .. ($#$plain < 20 ? $#$plain : 20)]));
ok(-e (glob("$pgdata/base/*/*_init"))[0], 'an init fork was among them');
command_ok([ 'pg_checksums', '--check', '-D', $pgdata ], 'pg_checksums --check is clean');

$node->start;
my %now = map { $_ => $node->safe_psql($_, $queries{$_}) } keys %queries;
is_deeply(\%now, \%before, 'all data is as before');
ok(wait_complete($node), 'complete again after a restart (verified anew)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM cmk_storage.verify_cluster_encryption()'), '0',
	'and still nothing in clear');

# --- a standby verifies, and rewrites nothing ---------------------------------
$node->safe_psql('postgres', 'DROP TABLE tt; DROP TABLESPACE ts');    # a plain backup copy
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
ok($standby->poll_query_until('postgres',
	q{SELECT phase IN ('standby: verifying only', 'complete') FROM cmk_storage.cluster_encryption_progress}),
	'the standby only verifies');
is($standby->safe_psql('postgres',
	q{SELECT p.blocks_rewritten, p.wal_segments_rewritten, s.cluster_encryption = p.state
	    FROM cmk_storage.cluster_encryption_progress p, cmk_storage.status s}),
	'0|0|t', 'and rewrites nothing');
$standby->stop;
$node->stop;

# --- a new cluster started with the setting on: initdb's plaintext goes -----
my $fresh = cmk_node('fresh', $kek, conf => "cmk_storage.cluster_encryption = on\n");
($plain) = plaintext_pages($fresh->data_dir);
ok(scalar(@$plain) > 100, 'initdb leaves plaintext catalogs and WAL');
$fresh->start;
$fresh->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
ok(wait_complete($fresh), 'a new cluster reaches complete');
$fresh->stop;
($plain, $checked) = plaintext_pages($fresh->data_dir);
is(scalar(@$plain), 0, "no plaintext page left of initdb's ($checked pages checked)")
  or diag(join("\n", @$plain[0 .. ($#$plain < 20 ? $#$plain : 20)]));

done_testing();
