# Read-ahead of relation pages with cluster encryption on (src/io/io_readahead.c,
# docs/io-layer.md "Read-ahead"): a sequential scan reads many pages per system
# call, and a page held in a backend's read-ahead window is never returned after
# another process wrote a newer version of it: not for a block read later on its
# own, not under concurrent writers with buffers evicted all the time, not after
# the file was truncated and grew again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");

# Few buffers, so that pages leave shared_buffers (and are read again) all the time.
my $node = cmk_node('ra', $kek, init => { extra => ['--data-checksums'] },
	conf => "cmk_storage.cluster_encryption = on\nshared_buffers = 1MB\nmax_connections = 20\n"
	  . "max_parallel_workers_per_gather = 0\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION pg_prewarm;
CREATE TABLE r (id int PRIMARY KEY, v int) WITH (fillfactor = 50);
INSERT INTO r SELECT g, 10 FROM generate_series(1, 30000) g;
CREATE TABLE filler AS SELECT g, md5(g::text) AS x FROM generate_series(1, 150000) g;
VACUUM (FREEZE, ANALYZE) r;
CHECKPOINT;
});
my $pages = $node->safe_psql('postgres', q{SELECT pg_relation_size('r') / 8192});
cmp_ok($pages, '>', 200, "test table has $pages pages");

# Everything out of shared_buffers (a clock sweep needs several rounds to
# push out a page used five times): the next reads come from the file.
sub evict
{
	$node->safe_psql('postgres', q{CHECKPOINT; SELECT pg_prewarm('filler', 'buffer')});
}

# --- a sequential scan reads many pages per system call -------------------------
# /proc/<pid>/io counts the backend's read system calls (read, pread).
my $reader = $node->background_psql('postgres');
my $pid = $reader->query_safe('SELECT pg_backend_pid()');
# every scan starts at block 0, so that a window ends up where the tests expect
$reader->query_safe('SET synchronize_seqscans = off');
sub read_calls
{
	open my $fh, '<', "/proc/$pid/io" or die "cannot read /proc/$pid/io: $!";
	my ($n) = map { /^syscr: (\d+)/ ? $1 : () } <$fh>;
	return $n;
}
my %calls;
for my $ra (qw(off on))
{
	evict();
	$reader->query_safe("SET cmk_storage.cluster_encryption_read_ahead = $ra");
	my $before = read_calls();
	is($reader->query_safe('SELECT sum(v) FROM r'), 300000, "scan with read-ahead $ra: right sum");
	$calls{$ra} = read_calls() - $before;
}
cmp_ok($calls{off}, '>=', $pages, "without read-ahead a scan makes a read call per page ($calls{off} for $pages pages)");
cmp_ok($calls{on}, '<', $pages / 4, "with read-ahead far fewer ($calls{on} for $pages pages)");

# --- a page in a window, rewritten by another process, is read anew -------------
# The reader's window ends a scan from disk holding the table's last pages; another
# session changes a row there and the page goes to disk and out of the buffers;
# the reader then reads that block alone (a TID range scan): it must see the change.
# (The reader runs each checking query once beforehand: planning it later would
# read catalog pages, whose descriptors could take the window's place.)
my $last = $pages - 1;
my $tail_sql = "SELECT sum(v) FROM r WHERE ctid >= '($last,0)'";
$reader->query_safe($tail_sql);
evict();
$reader->query_safe('SELECT sum(v) FROM r');
my $tail = $node->safe_psql('postgres', "SET enable_tidscan = on; $tail_sql");
$node->safe_psql('postgres', "UPDATE r SET v = v + 1 WHERE ctid = '($last,1)'");
evict();
is($reader->query_safe($tail_sql), $tail + 1, 'a block rewritten after the window was filled is read anew');
evict();
$reader->query_safe('SELECT sum(v) FROM r');
$node->safe_psql('postgres', "UPDATE r SET v = v + 1 WHERE id IN (SELECT id FROM r WHERE ctid >= '($last,0)')");
evict();
is($reader->query_safe('SELECT sum(v) FROM r'), 300000 + 1 + $node->safe_psql('postgres', "SELECT count(*) FROM r WHERE ctid >= '($last,0)'"),
	'and so is every page a scan meets');

# --- truncated and grown again -------------------------------------------------
# The reader's window holds the last region of the table; the table is cut
# below it and grows back over it; the reader reads that region alone and
# must see what a fresh session sees.  (PostgreSQL's own invalidation closes
# the reader's descriptor after a truncation, which drops the window too; the
# layer also moves the counters of the cut-off pages on.)
my $region = int($last / 16) * 16;
my $region_sql = "SELECT sum(v), count(*) FROM r WHERE ctid >= '($region,0)'";
$reader->query_safe($region_sql);
evict();
$reader->query_safe('SELECT sum(v) FROM r');
$node->safe_psql('postgres', 'DELETE FROM r WHERE id > 20000');
$node->safe_psql('postgres', 'VACUUM r');
my $short = $node->safe_psql('postgres', q{SELECT pg_relation_size('r') / 8192});
cmp_ok($short, '<', $region, "VACUUM truncated the table below the window ($pages -> $short pages)");
$node->safe_psql('postgres', 'INSERT INTO r SELECT g, 20 FROM generate_series(20001, 30000) g');
cmp_ok($node->safe_psql('postgres', q{SELECT pg_relation_size('r') / 8192}), '>', $last,
	'and grew back over it');
evict();
my $fresh = $node->safe_psql('postgres', $region_sql);
like($fresh, qr/^\d+\|[1-9]\d*$/, 'the region holds rows again');
is($reader->query_safe($region_sql), $fresh, 'pages cut off and written again are read anew');
$reader->quit;

# --- concurrent writers, buffers evicted all the time ---------------------------
# Transfers keep sum(v) constant; every scan in every client must see it.  A
# stale page from a window shows as a wrong sum and fails the client.
my $total = $node->safe_psql('postgres', 'SELECT sum(v) FROM r');
$node->pgbench('--no-vacuum --client=4 --jobs=2 --time=8', 0,
	[qr{number of failed transactions: 0 }], [qr{^$}], 'read-ahead under concurrent writers',
	{ 'ra_mix' => qq{
\\set x random(1, 30000)
\\set y random(1, 30000)
\\set a least(:x, :y)
\\set b greatest(:x, :y)
\\set s random(0, 3)
\\if :s = 0
SELECT sum(v) AS total FROM r \\gset
\\if :total != $total
\\set fail 1 / 0
\\endif
\\else
BEGIN;
UPDATE r SET v = v - 1 WHERE id = :a;
UPDATE r SET v = v + 1 WHERE id = :b;
END;
\\endif
} });
is($node->safe_psql('postgres', 'SELECT sum(v) FROM r'), $total, 'the sum is kept');
is($node->safe_psql('postgres', q{SET enable_seqscan = off; SELECT count(*) FROM r WHERE id BETWEEN 1 AND 30000}),
	'30000', 'index and table agree');

$node->stop;
done_testing();
