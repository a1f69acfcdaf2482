# cmk_storage.verify_relation(): amcheck's verify_heapam refuses cmk_heap, so
# this is its counterpart.  A clean table (TOAST, HOT chains, deletes, NULLs,
# compressed values) gives no row; each kind of damage made to the files with
# the server stopped gives a row at the damaged tuple (and attribute) naming
# the problem, never an error.  Damage to what heap and cmk_heap share gives
# exactly verify_heapam's rows on a heap table with the same layout.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

plan skip_all => 'the page edits below assume a little-endian machine'
  unless pack('L', 1) eq "\x01\0\0\0";

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('v', $kek);
$node->start;
$node->safe_psql('postgres',
	'CREATE EXTENSION cmk_storage; CREATE EXTENSION amcheck; CREATE EXTENSION pageinspect;');
wait_key_settled($node);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The rows of verify_relation (or any query) as "blkno|offnum|attnum|msg" lines.
sub rows { my $out = sql($_[0]); return $out eq '' ? () : split /\n/, $out; }

sub relfile { return $node->data_dir . '/' . sql("SELECT pg_relation_filepath('$_[0]')"); }

# Where a tuple is: block, line pointer offset, length and t_hoff.
sub tuple_at
{
	my ($rel, $ctid) = @_;
	my ($blk, $off) = $ctid =~ /\((\d+),(\d+)\)/ or die "bad ctid $ctid";
	my ($lp_off, $lp_len, $hoff) = split /\|/, sql(
		"SELECT lp_off, lp_len, t_hoff FROM heap_page_items(get_raw_page('$rel', $blk)) WHERE lp = $off");
	return { blk => $blk, off => $off, pos => $blk * 8192 + $lp_off, len => $lp_len, hoff => $hoff };
}

# File edits, applied while the server is stopped.
my %edits;
sub edit { my ($rel, $pos, $bytes) = @_; push @{ $edits{ relfile($rel) } }, [ $pos, $bytes ]; }
sub byte_at { my ($file, $pos) = @_; return ord(substr(slurp_bytes($file), $pos, 1)); }

sub apply_edits
{
	$node->stop;
	for my $file (keys %edits)
	{
		my $bytes = slurp_bytes($file);
		substr($bytes, $_->[0], length $_->[1]) = $_->[1] for @{ $edits{$file} };
		spew_bytes($file, $bytes);
	}
	%edits = ();
	$node->start;
	wait_key_settled($node);
}

# A line pointer: page header is 24 bytes; lp_off 15 bits, flags 2, lp_len 15.
sub lp_pos { my ($t) = @_; return $t->{blk} * 8192 + 24 + 4 * ($t->{off} - 1); }
sub lp_word { my ($off, $flags, $len) = @_; return pack('V', $off | ($flags << 15) | ($len << 17)); }

# --- a clean table gives no row ----------------------------------------------------
# 400 rows over several pages (fillfactor leaves room for HOT); c is moved
# out of line uncompressed (rows 10, 20, 30, 50, 70: 3, 5, 2, 4 and 6
# chunks), d of row 40
# is compressed inline; NULLs in b and c; HOT updates, a VACUUM that turns
# HOT roots into redirects, deletes, and more HOT updates after it.
my $chunk = 1989;    # TOAST_MAX_CHUNK_SIZE - 7: docs/tuple-format.md
sql(qq{
CREATE TABLE v (id int PRIMARY KEY, a text, b int, c text, d text) USING cmk_heap WITH (fillfactor = 70);
ALTER TABLE v ALTER COLUMN c SET STORAGE EXTERNAL;
INSERT INTO v SELECT g, 'row ' || g, CASE WHEN g % 4 <> 0 THEN g END,
       CASE g WHEN 10 THEN repeat('x', 3 * $chunk - 100)
              WHEN 20 THEN repeat('y', 5 * $chunk - 100)
              WHEN 30 THEN repeat('z', 2 * $chunk - 100)
              WHEN 50 THEN repeat('u', 4 * $chunk - 100)
              WHEN 70 THEN repeat('w', 6 * $chunk - 100) END,
       CASE WHEN g = 40 THEN repeat('abc', 2000) ELSE 'd' || g END
  FROM generate_series(1, 400) g;
UPDATE v SET b = -b WHERE id % 10 = 1;
VACUUM v;
DELETE FROM v WHERE id % 13 = 0;
UPDATE v SET b = b - 1 WHERE id % 10 = 1;
UPDATE v SET b = b + 1000 WHERE id = 111;
});
my $toast = sql(q{SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'v'});
is(sql(q{SELECT count(*) FROM heap_page_items(get_raw_page('v', 0)) WHERE lp_flags = 2}) > 0 ? 'yes' : 'no',
	'yes', 'clean table: has HOT redirects');
is(sql(q{SELECT count(*) FROM heap_page_items(get_raw_page('v', 0)) WHERE t_infomask2 & 32768 <> 0}) > 0 ? 'yes' : 'no',
	'yes', 'clean table: has heap-only tuples');
is(sql(q{SELECT pg_column_compression(d) FROM v WHERE id = 40}), 'pglz', 'clean table: row 40 compressed inline');
is(join(',', rows("SELECT count(*) FROM $toast GROUP BY chunk_id ORDER BY 1")), '2,3,4,5,6',
	'clean table: five TOAST values');
is(join("\n", rows(q{SELECT * FROM cmk_storage.verify_relation('v')})), '', 'clean table: no rows');
is(join("\n", rows(qq{SELECT * FROM cmk_storage.verify_relation('$toast')})), '', 'clean TOAST table: no rows');
# HOT chains VACUUM cannot prune yet: an aborted update, and updates by the
# checking transaction itself
sql(q{BEGIN; UPDATE v SET b = b + 1 WHERE id = 7; ROLLBACK;});
is(sql(q{BEGIN; UPDATE v SET b = b + 1 WHERE id IN (5, 6, 9); UPDATE v SET a = a WHERE id = 5;
	SELECT count(*) FROM cmk_storage.verify_relation('v'); COMMIT;}), '0', 'live HOT chains: no rows');

# Let every read prune what it can now (a later one would move tuples on
# their pages), and write the pages out: from here on, positions in the
# files are read from them and stay valid until the edits.
sql(q{SELECT count(*) FROM v; CHECKPOINT;});

my ($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM verify_heapam('v')});
like($err, qr/only heap AM is supported/, 'verify_heapam refuses cmk_heap (why this exists)');
($ret, $out, $err) = $node->psql('postgres', q{CREATE TABLE plain_heap (i int); SELECT * FROM cmk_storage.verify_relation('plain_heap')});
like($err, qr/relation "plain_heap" does not use the cmk_heap access method/, 'heap table refused with a hint');

# --- the same damage to heap and cmk_heap gives the same rows -----------------------
# (id int, s text) with a 4-character s: 33 bytes on heap, 40 with the
# trailer: both MAXALIGN to 40, so the two pages have the same layout and
# the same edits hit the same bytes.
sql(q{
CREATE TABLE cmp_h (id int, s text) USING heap;
CREATE TABLE cmp_c (id int, s text) USING cmk_heap;
INSERT INTO cmp_h SELECT g, lpad(g::text, 4, '0') FROM generate_series(1, 100) g;
INSERT INTO cmp_c SELECT g, lpad(g::text, 4, '0') FROM generate_series(1, 100) g;
CHECKPOINT;
});
is(sql(q{SELECT string_agg(lp || ':' || lp_off, ',') FROM heap_page_items(get_raw_page('cmp_h', 0))}),
	sql(q{SELECT string_agg(lp || ':' || lp_off, ',') FROM heap_page_items(get_raw_page('cmp_c', 0))}),
	'heap and cmk_heap comparison tables have the same page layout');
for my $rel ('cmp_h', 'cmp_c')
{
	my $t3 = tuple_at($rel, '(0,3)');
	my $t5 = tuple_at($rel, '(0,5)');
	my $t7 = tuple_at($rel, '(0,7)');
	my $t9 = tuple_at($rel, '(0,9)');
	my $t11 = tuple_at($rel, '(0,11)');
	my $t13 = tuple_at($rel, '(0,13)');
	my $t15 = tuple_at($rel, '(0,15)');
	my $file = relfile($rel);
	edit($rel, lp_pos($t3), lp_word($t3->{pos} % 8192 + 4, 1, $t3->{len}));    # misaligned
	edit($rel, $t5->{pos}, pack('V', 123456));    # xmin in the future
	edit($rel, $t7->{pos} + 22, chr(32));    # t_hoff
	edit($rel, lp_pos($t9), lp_word($t9->{pos} % 8192, 1, 10));    # too short
	edit($rel, lp_pos($t11), lp_word(500, 2, 0));    # redirect past the end
	my $im13 = unpack('v', substr(slurp_bytes($file), $t13->{pos} + 20, 2));
	edit($rel, $t13->{pos} + 4, pack('V', 123456));    # xmax in the future
	edit($rel, $t13->{pos} + 20, pack('v', $im13 & ~0x0C00));    # not XMAX_INVALID/COMMITTED
	my $im15 = unpack('v', substr(slurp_bytes($file), $t15->{pos} + 20, 2));
	edit($rel, $t15->{pos} + 4, pack('V', 0));
	# XMAX_COMMITTED | XMAX_IS_MULTI, and XMAX_INVALID (as inserted) too
	edit($rel, $t15->{pos} + 20, pack('v', $im15 | 0x1C00));
}

# --- cmk_heap damage -------------------------------------------------------------------
sub ctid { return sql("SELECT ctid FROM v WHERE id = $_[0]"); }
sub nonce_epoch_ids
{
	my $e = read_epochs(epochs_path($node));
	return map { $_->[0] } @{ $e->{entries} }, @{ $e->{pending} };
}
my %registered = map { $_ => 1 } nonce_epoch_ids();
my $unregistered = 1;
$unregistered++ while $registered{$unregistered};

my @expect;    # [ blkno, offnum, attnum or '', regex of msg ]
my $vfile = relfile('v');

# the trailer's flags byte (the tuple's last)
my $t = tuple_at('v', ctid(102));
edit('v', $t->{pos} + $t->{len} - 1, "\x00");
push @expect, [ $t->{blk}, $t->{off}, '', qr/^no cmk_heap trailer$/ ];

# nonce 0's epoch id (the 6 bytes before the flags byte start with it)
$t = tuple_at('v', ctid(105));
edit('v', $t->{pos} + $t->{len} - 7, pack('n', $unregistered));
push @expect, [ $t->{blk}, $t->{off}, '',
	qr/^tuple names nonce epoch $unregistered, which this cluster never registered$/ ];

# the clear one-byte length header of a (attribute 2, at data offset 4)
$t = tuple_at('v', ctid(103));
edit('v', $t->{pos} + $t->{hoff} + 4, "\xFF");
push @expect, [ $t->{blk}, $t->{off}, 2, qr/^attribute beyond end of data$/ ];

# the nonce map of a tuple with two nonces (row 111 after its update of b
# only: a, d and the key keep their old nonce, b has the fresh one): b's
# bit cleared leaves nonce 1 to no attribute
$t = tuple_at('v', ctid(111));
is(byte_at($vfile, $t->{pos} + $t->{len} - 1), 0xB1, 'row 111: two short nonces, a 1-bit map');
edit('v', $t->{pos} + $t->{len} - 12, chr(byte_at($vfile, $t->{pos} + $t->{len} - 12) & ~0x04));
push @expect, [ $t->{blk}, $t->{off}, '', qr/^trailer nonce 1 is used by no attribute$/ ];

# the encrypted compression header of row 40's d (b and c are null): a,
# 'row 40', ends at data offset 11, d's 4-byte header is aligned to 12, then
# comes its encrypted va_tcinfo; flipping its lowest bit (CTR: the same bit
# of the plaintext) changes the raw size it claims
$t = tuple_at('v', ctid(40));
is(byte_at($vfile, $t->{pos} + $t->{hoff} + 12) & 0x03, 0x02, 'row 40: d has a compressed 4-byte header');
edit('v', $t->{pos} + $t->{hoff} + 16, chr(byte_at($vfile, $t->{pos} + $t->{hoff} + 16) ^ 0x01));
push @expect, [ $t->{blk}, $t->{off}, 5,
	qr/^compressed value does not decompress to the (5999|6001) bytes it claims$/ ];

# TOAST: the chunks of each value, by their number
my %chunks;    # nchunks => [ chunk_id, [ ctid by seq ] ]
for (rows("SELECT chunk_id, count(*), string_agg(ctid::text, ' ' ORDER BY chunk_seq) FROM $toast GROUP BY chunk_id"))
{
	my ($id, $n, $ctids) = split /\|/;
	$chunks{$n} = [ $id, [ split / /, $ctids ] ];
}
my $tfile = relfile($toast);

# row 10 (3 chunks): chunk 1's clear data length cut by 40 bytes; the
# chunk tuple then has 40 bytes no attribute covers before its trailer
my ($vid, $cts) = @{ $chunks{3} };
my $c = tuple_at($toast, $cts->[1]);
is(unpack('V', substr(slurp_bytes($tfile), $c->{pos} + $c->{hoff} + 8, 4)), ($chunk + 4) << 2,
	'row 10: chunk 1 has a full 4-byte data header');
edit($toast, $c->{pos} + $c->{hoff} + 8, pack('V', ($chunk + 4 - 40) << 2));
$t = tuple_at('v', ctid(10));
my $dend = $c->{hoff} + 8 + $chunk + 4 - 40;
my $tstart = $c->{len} - 7;
push @expect, [ $t->{blk}, $t->{off}, 4,
	qr/^toast value $vid: chunk tuple \($c->{blk},$c->{off}\): data ends at byte $dend, but the trailer starts at byte $tstart$/ ];

# row 20 (5 chunks): chunk 2's line pointer made unused, as if the chunk
# were deleted
($vid, $cts) = @{ $chunks{5} };
$c = tuple_at($toast, $cts->[2]);
edit($toast, lp_pos($c), lp_word(0, 0, 0));
$t = tuple_at('v', ctid(20));
push @expect, [ $t->{blk}, $t->{off}, 4, qr/^toast value $vid index scan returned chunk 3 when expecting chunk 2$/ ];

# row 30 (2 chunks): chunk 0's trailer flags byte
($vid, $cts) = @{ $chunks{2} };
$c = tuple_at($toast, $cts->[0]);
edit($toast, $c->{pos} + $c->{len} - 1, "\x00");
$t = tuple_at('v', ctid(30));
push @expect, [ $t->{blk}, $t->{off}, 4,
	qr/^toast value $vid: chunk tuple \($c->{blk},$c->{off}\): no cmk_heap trailer$/ ];

# the encrypted external references of rows 50 and 70 (b is not null: a,
# 'row 50', ends at data offset 11, b takes 12-15, c's one-byte header is at
# 16, then VARTAG_ONDISK and the varatt_external, encrypted): row 50's tag
# flipped, row 70's va_valueid moved by 2^30
for my $id (50, 70)
{
	$t = tuple_at('v', ctid($id));
	is(byte_at($vfile, $t->{pos} + $t->{hoff} + 16), 0x25, "row $id: c is an 18-byte external reference");
}
$t = tuple_at('v', ctid(50));
edit('v', $t->{pos} + $t->{hoff} + 17, chr(byte_at($vfile, $t->{pos} + $t->{hoff} + 17) ^ 0x01));
push @expect, [ $t->{blk}, $t->{off}, 4, qr/^invalid external reference$/ ];
$t = tuple_at('v', ctid(70));
my $vid70 = $chunks{6}[0] ^ 0x40000000;
edit('v', $t->{pos} + $t->{hoff} + 29, chr(byte_at($vfile, $t->{pos} + $t->{hoff} + 29) ^ 0x40));
push @expect, [ $t->{blk}, $t->{off}, 4, qr/^toast value $vid70 not found in toast table$/ ];

# a HOT chain: the heap-only tuple a redirect on page 0 leads to loses its
# HEAP_ONLY_TUPLE flag
my ($rd, $target) = split /\|/, sql(
	q{SELECT lp, lp_off FROM heap_page_items(get_raw_page('v', 0)) WHERE lp_flags = 2 ORDER BY lp LIMIT 1});
$t = tuple_at('v', "(0,$target)");
my $im2 = unpack('v', substr(slurp_bytes($vfile), $t->{pos} + 18, 2));
edit('v', $t->{pos} + 18, pack('v', $im2 & ~0x8000));
push @expect, [ 0, $rd, '', qr/^redirected line pointer points to a non-heap-only tuple at offset $target$/ ];

# an impossible xmin on a later page
$t = tuple_at('v', ctid(350));
ok($t->{blk} > 0, 'row 350 is on a later page');
edit('v', $t->{pos}, pack('V', 123456));
push @expect, [ $t->{blk}, $t->{off}, '', qr/^xmin 123456 equals or exceeds next valid transaction ID 0:\d+$/ ];
my $late_blk = $t->{blk};

apply_edits();

# --- what is reported ------------------------------------------------------------------
my @got = rows(q{SELECT blkno, offnum, coalesce(attnum::text, ''), msg FROM cmk_storage.verify_relation('v')});
sub check_rows
{
	my ($name, $got, $expect) = @_;
	my @left = @$got;
	for my $e (@$expect)
	{
		my ($blk, $off, $att, $re) = @$e;
		my ($i) = grep {
			my ($b, $o, $a, $m) = split /\|/, $left[$_], 4;
			$b == $blk && $o == $off && $a eq $att && $m =~ $re
		} 0 .. $#left;
		ok(defined $i, "$name: ($blk,$off) attnum '$att' $re") or diag(join("\n", @$got));
		splice(@left, $i, 1) if defined $i;
	}
	is(join("\n", @left), '', "$name: no other rows");
}
note("verify_relation('v'):\n" . join("\n", @got));
check_rows('damaged table', \@got, \@expect);

my @first = grep { $_->[0] == 0 } @expect;
@got = rows(q{SELECT blkno, offnum, coalesce(attnum::text, ''), msg FROM cmk_storage.verify_relation('v', on_error_stop := true)});
check_rows('on_error_stop: the first damaged page only', \@got, \@first);

@got = rows(qq{SELECT blkno, offnum, coalesce(attnum::text, ''), msg
	FROM cmk_storage.verify_relation('v', startblock := $late_blk, endblock := $late_blk)});
check_rows('startblock and endblock', \@got, [ grep { $_->[0] == $late_blk } @expect ]);

@got = rows(q{SELECT blkno, offnum, coalesce(attnum::text, ''), msg FROM cmk_storage.verify_relation('v', check_toast := false)});
check_rows('check_toast off', \@got, [ grep { $_->[3] !~ /toast value/ } @expect ]);

# the TOAST table itself: its damaged chunk tuples are found without the main table
@got = rows(qq{SELECT blkno, offnum, coalesce(attnum::text, ''), msg FROM cmk_storage.verify_relation('$toast')});
my $c10 = tuple_at($toast, $chunks{3}[1][1]);
my $c30 = tuple_at($toast, $chunks{2}[1][0]);
check_rows('TOAST table', \@got, [
	[ $c10->{blk}, $c10->{off}, '', qr/^data ends at byte $dend, but the trailer starts at byte $tstart$/ ],
	[ $c30->{blk}, $c30->{off}, '', qr/^no cmk_heap trailer$/ ] ]);

my $heap_rows = sql(q{SELECT blkno, offnum, attnum, msg FROM verify_heapam('cmp_h')});
is(scalar(() = $heap_rows =~ /\n/g) + 1, 9, 'verify_heapam reports the heap damage (9 rows)');
is(sql(q{SELECT blkno, offnum, attnum, msg FROM cmk_storage.verify_relation('cmp_c')}),
	$heap_rows, 'the same damage on cmk_heap: exactly the rows of verify_heapam');
like($heap_rows, qr/^0\|3\|\|line pointer to page offset \d+ is not maximally aligned$/m, 'heap rows include the line pointer');

# --- privileges: like amcheck, not for PUBLIC -------------------------------------------
sql(q{CREATE ROLE checker LOGIN; GRANT USAGE ON SCHEMA cmk_storage TO checker});
($ret, $out, $err) = $node->psql('postgres', q{SET ROLE checker; SELECT * FROM cmk_storage.verify_relation('cmp_c')});
like($err, qr/permission denied for function verify_relation/, 'not executable by default');
sql(q{GRANT EXECUTE ON FUNCTION cmk_storage.verify_relation(regclass, boolean, boolean, text, bigint, bigint) TO checker});
is(sql(q{SET ROLE checker; SELECT count(*) FROM cmk_storage.verify_relation('cmp_c')}), '9', 'executable once granted');

# --- no key: one error with the reason, no rows ---------------------------------------
$node->stop;
rename $kek, "$kek.away" or die;
$node->start;
is(wait_key_settled($node)->{state}, 'unavailable', 'key file moved away: key unavailable');
($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM cmk_storage.verify_relation('v')});
isnt($ret, 0, 'no key: verify_relation fails');
like($err, qr/cannot access encrypted relation "v": the data encryption key is unavailable: could not open key file/,
	'no key: the error gives the key state reason');
is($out, '', 'no key: no rows');
$node->stop;
rename "$kek.away", $kek or die;
$node->start;
is(wait_key_settled($node)->{state}, 'available', 'key back: available');
my @again = rows(q{SELECT * FROM cmk_storage.verify_relation('v')});
is(scalar(@again), scalar(@expect), 'key back: the same rows again');

$node->stop;
done_testing();
