# Tuples the cluster cannot read are errors naming the table, never
# garbage; ALTER TABLE SET ACCESS METHOD encrypts and decrypts in place;
# an index on a one-byte column stays consistent through tens of thousands
# of updates, with HOT exactly as on heap.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $node = cmk_node('a', new_kek("$tmp/a.pem"));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage; CREATE EXTENSION amcheck; CREATE EXTENSION pageinspect;');
wait_key_settled($node);

# The ids of the nonce epochs a cluster has registered (docs/nonce-epochs.md).
sub nonce_epoch_ids
{
	my ($n) = @_;
	my $e = read_epochs(epochs_path($n));
	return map { $_->[0] } @{ $e->{entries} }, @{ $e->{pending} };
}

# --- a file written under another DEK ----------------------------------------------
# Its tuples name the other cluster's nonce epoch, which this one never
# registered.
my $other = cmk_node('b', new_kek("$tmp/b.pem"));
$other->start;
$other->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($other);
for my $n ($node, $other)
{
	$n->safe_psql('postgres', q{CREATE TABLE moved (id int, v text) USING cmk_heap;
		INSERT INTO moved SELECT g, 'row ' || g FROM generate_series(1, 10) g; CHECKPOINT;});
}
my $src = $other->data_dir . '/' . $other->safe_psql('postgres', q{SELECT pg_relation_filepath('moved')});
my $dst = $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('moved')});
$other->stop;
$node->stop;
spew_bytes($dst, slurp_bytes($src));
$node->start;
my $theirs = $node->safe_psql('postgres', q{SELECT get_byte(t_data, length(t_data) - 7) * 256 + get_byte(t_data, length(t_data) - 6)
	FROM heap_page_items(get_raw_page('moved', 0)) WHERE lp = 1});
my ($ret, $out, $err);
SKIP:
{
	# epoch ids are random 16-bit numbers: rarely, by chance, both clusters have one
	skip "epoch $theirs of the other cluster is registered here too", 3
	  if grep { $_ == $theirs } nonce_epoch_ids($node);
	($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM moved');
	isnt($ret, 0, 'foreign DEK: query fails');
	like($err, qr/tuple \(0,1\) in relation "moved" names nonce epoch $theirs, which this cluster never registered/,
		'foreign DEK: error names the table and the epoch');
	is($out, '', 'foreign DEK: no rows returned');
}

# --- a damaged trailer ---------------------------------------------------------------
# (0,1): the flags byte (the tuple's last) is no cmk_heap one; (0,2): nonce 0
# (the 6 bytes before it) names an epoch this cluster never registered.
$node->safe_psql('postgres', q{CREATE TABLE dmg (id int, v text) USING cmk_heap;
	INSERT INTO dmg VALUES (1, 'one'), (2, 'two'); CHECKPOINT;});
my ($lp, $lp2) = split /\n/, $node->safe_psql('postgres',
	q{SELECT lp_off + lp_len - 1 FROM heap_page_items(get_raw_page('dmg', 0)) WHERE lp IN (1, 2) ORDER BY lp});
my $file = $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('dmg')});
$node->stop;
my %registered = map { $_ => 1 } nonce_epoch_ids($node);
my $unregistered = 0;
$unregistered++ while $registered{$unregistered};
my $bytes = slurp_bytes($file);
substr($bytes, $lp, 1) = "\x00";    # the flags byte
substr($bytes, $lp2 - 6, 2) = pack('n', $unregistered);    # nonce 0's epoch id
spew_bytes($file, $bytes);
$node->start;
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM dmg');
like($err, qr/encrypted tuple \(0,1\) in relation "dmg" is not readable: no cmk_heap trailer/,
	'damaged trailer: error, not garbage');
($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM dmg WHERE ctid = '(0,2)'});
like($err, qr/tuple \(0,2\) in relation "dmg" names nonce epoch $unregistered, which this cluster never registered/,
	'unregistered nonce epoch: error names the tuple and the epoch');
is($out, '', 'unregistered nonce epoch: no rows returned');

# tuples of the earlier formats, whose last byte was a version byte: the
# pre-release format 1 (0xC1) and format 2 (0xC2): refused by name
$node->safe_psql('postgres', q{CREATE TABLE old1 (id int, v text) USING cmk_heap;
	INSERT INTO old1 VALUES (1, 'one'), (2, 'two'); CHECKPOINT;});
($lp, $lp2) = split /\n/, $node->safe_psql('postgres',
	q{SELECT lp_off + lp_len - 1 FROM heap_page_items(get_raw_page('old1', 0)) WHERE lp IN (1, 2) ORDER BY lp});
$file = $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('old1')});
$node->stop;
$bytes = slurp_bytes($file);
substr($bytes, $lp, 1) = "\xC1";
substr($bytes, $lp2, 1) = "\xC2";
spew_bytes($file, $bytes);
$node->start;
($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM old1');
like($err, qr/tuple \(0,1\) in relation "old1" has cmk_heap tuple format 1, which this build does not read/,
	'format 1 tuple: refused with its own message');
is($out, '', 'format 1 tuple: no rows returned');
($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM old1 WHERE ctid = '(0,2)'});
like($err, qr/tuple \(0,2\) in relation "old1" has cmk_heap tuple format 2, which this build does not read/,
	'format 2 tuple: refused with its own message');
is($out, '', 'format 2 tuple: no rows returned');

# --- the nonce epoch file: damaged or missing ------------------------------------------
# Every tuple names an epoch of $PGDATA/cmk_storage/nonce_epochs.  A damaged or
# missing file leaves the server running and every encrypted table refused
# with the cause (a write must not start a new file and lose the old epochs);
# restoring the file heals.
$node->safe_psql('postgres', q{CREATE TABLE ep (id int, v text) USING cmk_heap;
	INSERT INTO ep SELECT g, 'v' || g FROM generate_series(1, 100) g;});
my $epfile = $node->data_dir . '/cmk_storage/nonce_epochs';
$node->stop;
my $good = slurp_bytes($epfile);
my $bad = $good;
substr($bad, 52, 1) = chr(ord(substr($bad, 52, 1)) ^ 0x01);    # a DEK tag bit of the first entry
for my $case ([ 'damaged', $bad, qr/"cmk_storage\/nonce_epochs" has a wrong checksum/ ],
	[ 'missing', undef, qr/"cmk_storage\/nonce_epochs" is missing/ ])
{
	my ($what, $content, $why) = @$case;
	defined $content ? spew_bytes($epfile, $content) : unlink($epfile);
	$node->start;
	($ret, $out, $err) = $node->psql('postgres', 'SELECT count(*), max(v) FROM ep');
	like($err, qr/cmk_storage nonce epochs are not available: $why/, "$what epoch file: reads refused with the cause");
	is($out, '', "$what epoch file: no rows returned");
	($ret, $out, $err) = $node->psql('postgres', q{INSERT INTO ep VALUES (0, 'x')});
	like($err, qr/nonce epochs are not available/, "$what epoch file: writes refused");
	is($node->safe_psql('postgres', q{SELECT nonce_epochs IS NULL FROM cmk_storage.status}), 't',
		"$what epoch file: status shows no epoch count");
	is(-e $epfile ? slurp_bytes($epfile) : undef, $content, "$what epoch file: left as it was");
	$node->stop;
}
like(slurp_file($node->logfile), qr/WARNING:  cmk_storage: "cmk_storage\/nonce_epochs" has a wrong checksum/,
	'damaged epoch file: reported at start-up');
spew_bytes($epfile, $good);
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*), max(v) FROM ep'), '100|v99', 'restored epoch file: readable again');

# --- an external-reference bit on a column that holds none ---------------------------------
# Turning an external reference into a TOAST pointer writes 18 bytes: every read
# path (page-at-a-time scan, lazy deform after an index fetch, full decrypt in an
# index build) must refuse anything but a well-formed one.
$node->safe_psql('postgres', q{CREATE TABLE xref (id int PRIMARY KEY, v text) USING cmk_heap;
	ALTER TABLE xref ALTER COLUMN v SET STORAGE EXTERNAL;
	INSERT INTO xref SELECT 4645, string_agg(md5(g::text), '') FROM generate_series(1, 100) g;
	INSERT INTO xref SELECT 2, string_agg(md5(g::text), '') FROM generate_series(2, 101) g;
	INSERT INTO xref SELECT 3, string_agg(md5(g::text), '') FROM generate_series(3, 102) g;
	CHECKPOINT;});
my ($xoff, $xlen) = split /\|/, $node->safe_psql('postgres',
	q{SELECT lp_off, lp_len FROM heap_page_items(get_raw_page('xref', 0)) WHERE lp = 1});
$file = $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('xref')});
$node->stop;
$bytes = slurp_bytes($file);
# trailer of a one-nonce tuple with external references:
# [external bitmap: 1 byte for 2 columns][nonce 0: epoch 2, counter 4][flags]
is(ord(substr($bytes, $xoff + $xlen - 1, 1)), 0xA8, 'xref: flags say "one nonce, external bitmap present"');
is(ord(substr($bytes, $xoff + $xlen - 8, 1)), 0x02, 'xref: only column v is an external reference');
# id claims to be one too; 4645 = 0x1225 decrypts to 25 12 00 00, which reads
# as a one-byte varlena header of length 18 and VARTAG_ONDISK: only the
# column's type tells it from a TOAST pointer (rewriting it would overwrite
# 14 bytes past the int)
substr($bytes, $xoff + $xlen - 8, 1) = "\x03";
spew_bytes($file, $bytes);
$node->start;
for my $case (
	[ 'sequential scan', 'SELECT id FROM xref' ],
	[ 'index fetch', 'SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT length(v) FROM xref WHERE id = 4645' ],
	[ 'index build', 'CREATE INDEX ON xref (id)' ])
{
	my ($what, $sql) = @$case;
	($ret, $out, $err) = $node->psql('postgres', $sql);
	like($err, qr/encrypted tuple.* in relation "xref" is not readable: invalid external reference/,
		"bad external-reference bit, $what: data-corrupted error");
	is($out, '', "bad external-reference bit, $what: no rows returned");
}
is($node->safe_psql('postgres', 'SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(v) FROM xref WHERE id < 4645'),
	'2', 'bad external-reference bit: the other rows still read by index');

# --- ALTER TABLE SET ACCESS METHOD both ways ---------------------------------------------
my $marker = random_marker('AMTRIP');
$node->safe_psql('postgres', qq{CREATE TABLE trip (id int, v text) USING heap;
	INSERT INTO trip SELECT g, '$marker' || g FROM generate_series(1, 500) g;});
my $sum = $node->safe_psql('postgres', q{SELECT md5(string_agg(v, ',' ORDER BY id)) FROM trip});
my $relfile = sub { $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('trip')}) };
$node->safe_psql('postgres', 'CHECKPOINT');
ok(index(slurp_bytes($relfile->()), $marker) >= 0, 'heap table file holds plaintext');
$node->safe_psql('postgres', 'ALTER TABLE trip SET ACCESS METHOD cmk_heap; CHECKPOINT;');
is($node->safe_psql('postgres', q{SELECT cmk_storage.is_encrypted('trip')}), 't', 'heap -> cmk_heap: encrypted');
ok(index(slurp_bytes($relfile->()), $marker) < 0, 'heap -> cmk_heap: no plaintext in the new file');
is($node->safe_psql('postgres', q{SELECT md5(string_agg(v, ',' ORDER BY id)) FROM trip}), $sum, 'heap -> cmk_heap: same data');
$node->safe_psql('postgres', 'ALTER TABLE trip SET ACCESS METHOD heap; CHECKPOINT;');
is($node->safe_psql('postgres', q{SELECT md5(string_agg(v, ',' ORDER BY id)) FROM trip}), $sum, 'cmk_heap -> heap: same data');
ok(index(slurp_bytes($relfile->()), $marker) >= 0, 'cmk_heap -> heap: plaintext again');

# --- one-byte index, many updates: HOT as on heap, index always right --------------------
for my $am ('heap', 'cmk_heap')
{
	$node->safe_psql('postgres', qq{
CREATE TABLE flip_$am (id int, flag bool, pad text) USING $am WITH (fillfactor = 50);
CREATE INDEX flip_${am}_flag ON flip_$am (flag);
INSERT INTO flip_$am SELECT g, g % 2 = 0, repeat('p', 20) FROM generate_series(1, 200) g;
});
}
# The same pseudo-random sequence of updates on both tables: 30,000 updates.
my $script = '';
srand(42);
for my $k (1 .. 300)
{
	my $id = 1 + int(rand(200));
	my $mod = 2 + int(rand(5));
	$script .= "UPDATE flip_AM SET flag = NOT flag WHERE id % $mod = " . ($id % $mod) . ";\n";
	$script .= "UPDATE flip_AM SET pad = pad WHERE id = $id;\n";
}
for my $am ('heap', 'cmk_heap')
{
	(my $s = $script) =~ s/flip_AM/flip_$am/g;
	$node->safe_psql('postgres', $s);
	$node->safe_psql('postgres', "VACUUM flip_$am");
	$node->safe_psql('postgres', $s);
}
$node->safe_psql('postgres', 'SELECT pg_stat_force_next_flush()');
my %stats;
for my $am ('heap', 'cmk_heap')
{
	$stats{$am} = $node->safe_psql('postgres',
		"SELECT pg_stat_get_tuples_updated('flip_$am'::regclass), pg_stat_get_tuples_hot_updated('flip_$am'::regclass)");
	is($node->safe_psql('postgres', "SELECT bt_index_check('flip_${am}_flag', heapallindexed => true)"), '',
		"$am: amcheck bt_index_check(heapallindexed) passes");
	is($node->safe_psql('postgres', "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM flip_$am WHERE flag"),
		$node->safe_psql('postgres', "SET enable_indexscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM flip_$am WHERE flag"),
		"$am: index scan agrees with the table");
}
is($node->safe_psql('postgres', q{SELECT count(*) FROM flip_heap h JOIN flip_cmk_heap c USING (id) WHERE h.flag <> c.flag}),
	'0', 'same final contents');
my ($upd, $hot) = split /\|/, $stats{cmk_heap};
my (undef, $heap_hot) = split /\|/, $stats{heap};
diag("30k updates: heap $stats{heap}, cmk_heap $stats{cmk_heap} (updated|hot)");
cmp_ok($upd, '>=', 20000, 'tens of thousands of updates');
# Page fullness differs (cmk_heap tuples are longer), so the totals may too.
cmp_ok(abs($hot - $heap_hot), '<=', 0.01 * $upd, 'HOT share within one point of heap\'s');

# HOT exactly when heap does it: with room on every page, per statement.
for my $am ('heap', 'cmk_heap')
{
	$node->safe_psql('postgres', qq{
CREATE TABLE roomy_$am (id int PRIMARY KEY, flag bool, tag "char", pad text) USING $am WITH (fillfactor = 10);
CREATE INDEX roomy_${am}_flag ON roomy_$am (flag);
CREATE INDEX roomy_${am}_tag ON roomy_$am (tag);
INSERT INTO roomy_$am SELECT g, g % 2 = 0, 'a', 'p' FROM generate_series(1, 100) g;
});
}
my @cases = (
	[ 'indexed bool changed', 'SET flag = NOT flag', 0 ],
	[ 'indexed "char" changed', q{SET tag = CASE tag WHEN 'a' THEN 'b' ELSE 'a' END}, 0 ],
	[ 'non-indexed column changed', q{SET pad = pad || 'x'}, 100 ],
	[ 'indexed column set to itself', 'SET flag = flag, tag = tag', 100 ],
	[ 'primary key set to itself', 'SET id = id', 100 ],
);
for my $c (@cases)
{
	my ($name, $set, $want) = @$c;
	my %got;
	for my $am ('heap', 'cmk_heap')
	{
		$got{$am} = $node->safe_psql('postgres', qq{BEGIN;
UPDATE roomy_$am $set;
SELECT pg_stat_get_xact_tuples_hot_updated('roomy_$am'::regclass);
COMMIT;});
		$node->safe_psql('postgres', "VACUUM roomy_$am");
	}
	is($got{cmk_heap}, $want, "$name: $want HOT updates of 100");
	is($got{cmk_heap}, $got{heap}, "$name: same as heap");
}
for my $am ('heap', 'cmk_heap')
{
	is($node->safe_psql('postgres', "SELECT bt_index_check('roomy_${am}_tag', heapallindexed => true)"), '',
		"$am: amcheck on the \"char\" index");
}

# --- nonce forms: short (same epoch), long (after a restart), 1- and 4-bit maps ----------
# Every update keeps the stored bytes of unchanged attributes under their old
# nonce.  Nonces drawn since the server started share a nonce epoch, so the
# fresh nonce is usually stored as its 4-byte counter; after a restart (new
# epoch) it takes 6 bytes (epoch id and counter).  Lengths below are exact
# trailer sizes.
for my $am ('heap', 'cmk_heap')
{
	$node->safe_psql('postgres', qq{
CREATE TABLE nf_$am (id int PRIMARY KEY, a int, b int, c text, d text) USING $am;
INSERT INTO nf_$am SELECT g, g, -g, 'c' || g, repeat('d', g % 7) FROM generate_series(1, 300) g;
});
}
my $lplen = sub {
	my ($id) = @_;
	$node->safe_psql('postgres', qq{SELECT h.lp_len FROM nf_cmk_heap t,
		heap_page_items(get_raw_page('nf_cmk_heap', (t.ctid::text::point)[0]::int)) h
		WHERE t.id = $id AND h.lp = (t.ctid::text::point)[1]::int});
};
my $same_as_heap = sub {
	my ($what) = @_;
	my $q = q{SELECT md5(string_agg(concat_ws('|', id, a, b, c, d), ',' ORDER BY id)) FROM nf_AM};
	(my $h = $q) =~ s/AM/heap/;
	(my $c = $q) =~ s/AM/cmk_heap/;
	is($node->safe_psql('postgres', $c), $node->safe_psql('postgres', $h), "$what: same contents as heap");
	is($node->safe_psql('postgres', q{SET enable_seqscan = off; SELECT string_agg(concat_ws('|', a, b, c, d), ',' ORDER BY id) FROM nf_cmk_heap WHERE id IN (1, 2, 3)}),
		$node->safe_psql('postgres', q{SELECT string_agg(concat_ws('|', a, b, c, d), ',' ORDER BY id) FROM nf_heap WHERE id IN (1, 2, 3)}),
		"$what: index fetches agree");
	is($node->safe_psql('postgres', q{SELECT sum(a), sum(b) FROM nf_cmk_heap}),
		$node->safe_psql('postgres', q{SELECT sum(a), sum(b) FROM nf_heap}), "$what: prefix-only scan agrees");
};
my %len0 = map { $_ => $lplen->($_) } (1, 2, 3);
my $update_both = sub {
	my ($sql) = @_;
	for my $am ('heap', 'cmk_heap')
	{
		(my $s = $sql) =~ s/nf_AM/nf_$am/g;
		$node->safe_psql('postgres', $s);
	}
};
$update_both->('UPDATE nf_AM SET a = a + 1000 WHERE id IN (1, 3)');
is($lplen->(1), $len0{1} + 4 + 1, 'update, same epoch: 4-byte counter and a 1-bit map (5 bytes)');
$same_as_heap->('short nonces');
$node->restart;
wait_key_settled($node);
$update_both->('UPDATE nf_AM SET b = b - 1000 WHERE id IN (1, 2)');
is($lplen->(2), $len0{2} + 6 + 1, 'after a restart: a second nonce with its epoch and a 1-bit map (7 bytes)');
is($lplen->(1), $len0{1} + 6 + 6 + 3, 'three nonces, two epochs: long form, 4-bit map');
# new rows land on the last page, next to rows of the first epoch: the
# prefix-only scan must look up each tuple's epoch, not the page's first
$update_both->(q{INSERT INTO nf_AM SELECT g, g, -g, 'c' || g, 'd' FROM generate_series(301, 320) g});
is($node->safe_psql('postgres', q{SELECT count(DISTINCT get_byte(t_data, length(t_data) - 7) * 256 + get_byte(t_data, length(t_data) - 6))
	FROM heap_page_items(get_raw_page('nf_cmk_heap', (SELECT max((ctid::text::point)[0]::int) FROM nf_cmk_heap)))
	WHERE lp_len > 0 AND get_byte(t_data, length(t_data) - 1) = 160}), '2',
	'one page holds one-nonce tuples of two epochs');
$same_as_heap->('long nonces');
$update_both->(q{UPDATE nf_AM SET c = c || 'x', d = NULL WHERE id IN (1, 2, 3)});
$same_as_heap->('mixed nonces and a new NULL');
is($node->safe_psql('postgres', "SELECT bt_index_check('nf_cmk_heap_pkey', heapallindexed => true)"), '',
	'nonce forms: amcheck on the primary key');

# --- no nonce is ever used twice: concurrent writers, every stored version -----------
# Four sessions insert and update at once; each stored version's fresh nonce
# (nonce 0 of an inserted tuple, the last nonce of an updated one) is read
# from the page as epoch id || counter and must be unique, whatever form the
# trailer has.
$node->safe_psql('postgres', q{
CREATE TABLE nz (id int PRIMARY KEY, v int, w text) USING cmk_heap WITH (fillfactor = 60);
INSERT INTO nz SELECT g, 0, 'w' || g FROM generate_series(1, 200) g;
CREATE TABLE nz_log (c int, k int) USING cmk_heap;
});
$node->pgbench('--no-vacuum --client=4 --jobs=4 --transactions=300', 0,
	[qr{processed: 1200/1200}], [qr{^$}], 'nonces: four concurrent writers',
	{ 'nonce_writes' => q{
\set id random(1, 200)
UPDATE nz SET v = v + 1 WHERE id = :id;
INSERT INTO nz_log SELECT :client_id, g FROM generate_series(1, 3) g;
} });
my $n_epochs = $node->safe_psql('postgres', q{SELECT nonce_epochs FROM cmk_storage.status});
$node->restart;    # a new nonce epoch: long forms too
wait_key_settled($node);
$node->pgbench('--no-vacuum --client=4 --jobs=4 --transactions=100', 0,
	[qr{processed: 400/400}], [qr{^$}], 'nonces: writers after a restart',
	{ 'nonce_writes2' => q{
\set id random(1, 200)
UPDATE nz SET v = v + 1, w = w || 'x' WHERE id = :id;
INSERT INTO nz_log VALUES (:client_id, 0);
} });
is($node->safe_psql('postgres', q{SELECT nonce_epochs FROM cmk_storage.status}), $n_epochs + 1,
	'nonces: four writers racing for the first nonce after a restart register one epoch');
my $fresh = q{
WITH t AS (
  SELECT i.t_data FROM pg_class c,
    generate_series(0, pg_relation_size(c.oid) / 8192 - 1) b,
    heap_page_items(get_raw_page(c.relname, b::int)) i
  WHERE c.relname IN ('nz', 'nz_log') AND i.lp_flags = 1),
f AS (SELECT t_data, length(t_data) AS n, get_byte(t_data, length(t_data) - 1) AS flags FROM t)
SELECT count(*), count(DISTINCT nonce),
       count(*) FILTER (WHERE flags & 7 > 0 AND flags & 16 <> 0), count(*) FILTER (WHERE flags & 7 > 0 AND flags & 16 = 0)
FROM (SELECT flags, CASE
  WHEN flags & 7 = 0 THEN substring(t_data FROM n - 6 FOR 6)
  WHEN flags & 16 <> 0 THEN substring(t_data FROM n - 6 FOR 2) || substring(t_data FROM n - 10 FOR 4)
  ELSE substring(t_data FROM n - 12 FOR 6) END AS nonce FROM f) x};
my ($versions, $distinct, $short, $long) = split /\|/, $node->safe_psql('postgres', $fresh);
diag("nonces: $versions stored versions, $distinct distinct fresh nonces ($short short-form, $long long-form updates)");
cmp_ok($versions, '>=', 2000, 'nonces: thousands of stored versions');
cmp_ok($short, '>', 0, 'nonces: short-form updates present');
cmp_ok($long, '>', 0, 'nonces: long-form updates present');
is($distinct, $versions, 'nonces: every stored version has its own fresh nonce');

# --- contended updates: no lost update, as on heap --------------------------------
# Four sessions update five rows, through the primary key and through a
# sequential scan, so rows are locked, waited for and re-read (EvalPlanQual)
# all the time; an update reuses the old version the executor fetched only
# when it is still that TID's.  Every increment must arrive, in both AMs.
for my $am ('heap', 'cmk_heap')
{
	$node->safe_psql('postgres', qq{
CREATE TABLE hot5_$am (id int PRIMARY KEY, v int, w int, pad text) USING $am;
INSERT INTO hot5_$am SELECT g, 0, 0, repeat('p', g * 9) FROM generate_series(1, 5) g;});
	$node->pgbench('--no-vacuum --client=4 --jobs=2 --transactions=1000', 0,
		[qr{processed: 4000/4000}], [qr{^$}], "contended updates ($am)",
		{ "hot5_index_$am" => qq{
\\set id random(1, 5)
UPDATE hot5_$am SET v = v + 1, w = w + :id WHERE id = :id;
}, "hot5_seqscan_$am" => qq{
\\set id random(1, 5)
UPDATE hot5_$am SET v = v + 1, w = w + :id WHERE id + 0 = :id;
} });
	is($node->safe_psql('postgres', qq{
SELECT sum(v), sum(w) = sum(v * id), bool_and(pad = repeat('p', id * 9)) FROM hot5_$am}),
		'4000|t|t', "contended updates ($am): every increment arrived, every row intact");
}

# --- the bytes are what docs/tuple-format.md says ------------------------------------
# An independent decoder written from the document (scripts/cmk_tuple_ref.py)
# decrypts the relation file with the DEK unwrapped by openssl, through every
# trailer form (one nonce; short and long second nonces; three nonces) and
# NULLs, and must print exactly what SQL returns for every live tuple.
SKIP:
{
	my $ref = -f 'scripts/cmk_tuple_ref.py' ? 'scripts/cmk_tuple_ref.py'
	  : -f "$ENV{REPO}/scripts/cmk_tuple_ref.py" ? "$ENV{REPO}/scripts/cmk_tuple_ref.py" : undef;
	skip 'reference decoder or python3-cryptography not available', 2
	  unless $ref && system('python3 -c "import cryptography" 2>/dev/null') == 0;
	$node->safe_psql('postgres', q{
CREATE TABLE kat (id int, a int, b int, c text) USING cmk_heap;
INSERT INTO kat SELECT g, g * 10, CASE WHEN g % 5 = 0 THEN NULL ELSE -g END,
  CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g || repeat('.', g % 40) END
  FROM generate_series(1, 120) g;
UPDATE kat SET a = a + 1 WHERE id % 3 = 0;});
	$node->restart;    # new nonce epoch: long forms from here on
	wait_key_settled($node);
	$node->safe_psql('postgres', q{
UPDATE kat SET b = coalesce(b, 0) - 1000 WHERE id % 4 = 0;
UPDATE kat SET c = coalesce(c, '') || ' updated', a = a + 2 WHERE id % 6 = 0;
CHECKPOINT;});
	my $want = $node->safe_psql('postgres', q{
SELECT string_agg(format('%s|%s|%s|%s|%s', regexp_replace(ctid::text, '[()]', '', 'g'),
  id, a, coalesce(b::text, '\N'), coalesce(c, '\N')), E'\n' ORDER BY ctid) FROM kat});
	my $forms = $node->safe_psql('postgres', q{
SELECT string_agg(DISTINCT (get_byte(i.t_data, length(i.t_data) - 1) & 23)::text, ',')
FROM generate_series(0, pg_relation_size('kat') / 8192 - 1) b,
  heap_page_items(get_raw_page('kat', b::int)) i WHERE i.lp_flags = 1});
	my %live = map { (split /\|/)[0] => $_ } split /\n/, $want;
	my $file = $node->data_dir . '/' . $node->safe_psql('postgres', q{SELECT pg_relation_filepath('kat')});
	spew_bytes("$tmp/dek.bin", unwrap_dek(control_path($node), "$tmp/a.pem", $tmp));
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'python3', $ref, "$tmp/dek.bin", $node->data_dir . '/cmk_storage/nonce_epochs', $file, 'int4,int4,int4,text' ],
		'>', \$out, '2>', \$err);
	unlink "$tmp/dek.bin";
	my @got = grep { exists $live{ (split /\|/)[0] } } split /\n/, $out;
	diag("reference decoder: $err") if $err;
	is(join("\n", @got), $want, 'independent decoder: every live tuple decrypts to what SQL returns');
	# flags & 23 (k-1 and the short bit): 0 one nonce, 17 short second nonce,
	# 1 long second nonce, 2 three nonces (long: two epochs)
	like($forms, qr/^(?=.*\b0\b)(?=.*\b17\b)(?=.*\b1\b)(?=.*\b2\b)/, 'independent decoder: one nonce, short, long and three-nonce trailers were present');
}

done_testing();
