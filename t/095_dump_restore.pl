# pg_dump and pg_restore keep cmk_heap tables cmk_heap and their contents
# exact: custom, directory and plain formats, serial and parallel (-j 2)
# restores, a restore into another cluster (another KEK and DEK) with the
# database's default_table_access_method = cmk_heap, and a restore with
# --no-table-access-method into a database whose default is cmk_heap.  The
# data is the shape of issue 21 (leading fixed-width columns, out-of-line
# values, loaded by COPY as pg_restore does), with NULLs, indexes,
# constraints, sequences, a partitioned table and a materialized view.
# No restored file holds a value in clear, and no server process crashes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $node = cmk_node('dump', new_kek("$tmp/kek.pem"));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node);
my $pm_pid = postmaster_pid($node);

sub postmaster_pid
{
	my ($n) = @_;
	my ($pid) = split /\n/, slurp_bytes($n->data_dir . '/postmaster.pid');
	return $pid;
}

# Relations of schema public: name => "relkind:access method:TOAST's access
# method" (a partitioned parent has none in PostgreSQL 15).
sub access_methods
{
	my ($n, $db) = @_;
	my $out = $n->safe_psql($db, q{
		SELECT c.relname, c.relkind, coalesce(a.amname, '-'), coalesce(ta.amname, '-')
		  FROM pg_class c
		  LEFT JOIN pg_am a ON a.oid = c.relam
		  LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
		  LEFT JOIN pg_am ta ON ta.oid = t.relam
		 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm', 'p')
		 ORDER BY 1});
	return { map { my ($name, @rest) = split /\|/; ($name => join(':', @rest)) } split /\n/, $out };
}

# The tables and materialized views among them that are not cmk_heap.
sub not_cmk_heap
{
	my ($ams, @except) = @_;
	my %skip = map { $_ => 1 } @except;
	return sort grep { !$skip{$_} && $ams->{$_} !~ /^[rm]:cmk_heap:cmk_heap$/ && $ams->{$_} !~ /^p:/ }
	  keys %$ams;
}

# What every relation of schema public holds: row count and a digest of
# its rows in a fixed order (of the rows' own digests, so nothing large is
# sorted and no temporary file is written); for a sequence its state.
sub contents
{
	my ($n, $db) = @_;
	my %c;
	for my $rel (split /\n/, $n->safe_psql($db, q{SELECT relname FROM pg_class
			WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'm', 'p') ORDER BY 1}))
	{
		$c{$rel} = $n->safe_psql($db, qq{SELECT count(*) || ' rows, ' ||
			coalesce(md5(string_agg(d, '' ORDER BY d)), '-') FROM (SELECT md5(t::text) AS d FROM public."$rel" t) s});
	}
	for my $seq (split /\n/, $n->safe_psql($db, q{SELECT relname FROM pg_class
			WHERE relnamespace = 'public'::regnamespace AND relkind = 'S' ORDER BY 1}))
	{
		$c{"sequence $seq"} = $n->safe_psql($db, qq{SELECT last_value || ' ' || is_called FROM public."$seq"});
	}
	return \%c;
}

# Markers: short values, long incompressible ones (TOAST), one in a
# partition; a heap table's marker shows the file scan would find them.
my @short = map { random_marker("DS$_") } 1 .. 8;
my @long = map { random_marker("DL$_") . join('', map { random_marker('') } 1 .. 200) } 1 .. 3;
my $part_marker = random_marker('DPART');
my $heap_marker = random_marker('DHEAPCONTROL');

# --- the source database -----------------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
CREATE EXTENSION cmk_storage;
-- the reported shape: ~3.2 kB of md5 hex per row, stored out of line
CREATE TABLE repro (id bigint, a int, b int, payload text) USING cmk_heap;
INSERT INTO repro
  SELECT g, g % 7, g, (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 100) i)
    FROM generate_series(1, 2000) g;
INSERT INTO repro
  SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE g % 7 END, g,
         CASE WHEN g % 11 = 0 THEN NULL
              ELSE (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 100) i) END
    FROM generate_series(2001, 2300) g;
ALTER TABLE repro ADD PRIMARY KEY (id);
ALTER TABLE repro ADD CONSTRAINT repro_b_positive CHECK (b > 0);
CREATE INDEX repro_ab ON repro (a, b);
CREATE SEQUENCE repro_seq START 100;
SELECT setval('repro_seq', 4242);
-- other fixed-width prefixes, a foreign key, an identity column, NULLs
CREATE TABLE secrets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                      repro_id bigint UNIQUE REFERENCES repro (id),
                      short text, long text, n numeric, created date DEFAULT '2024-02-29') USING cmk_heap;
CREATE TABLE layout (x smallint, y bigint, t text NOT NULL, z int, u text) USING cmk_heap;
ALTER TABLE layout ALTER t SET STORAGE EXTERNAL, ALTER u SET STORAGE EXTERNAL;
INSERT INTO layout
  SELECT g % 100, g, repeat(md5(g::text), 70), CASE WHEN g % 3 = 0 THEN NULL ELSE g END,
         CASE WHEN g % 4 = 0 THEN NULL ELSE repeat(md5((-g)::text), 65) END
    FROM generate_series(1, 500) g;
CREATE TABLE events (id bigint, at date, note text) PARTITION BY RANGE (id);
CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (1000) USING cmk_heap;
CREATE TABLE events_high PARTITION OF events FOR VALUES FROM (1000) TO (MAXVALUE) USING cmk_heap;
INSERT INTO events SELECT g, date '2024-01-01' + g % 365, 'note ' || g FROM generate_series(1, 1500) g;
CREATE TABLE ctl (v text) USING heap;
});
for my $i (0 .. $#short)
{
	my $long = $i < @long ? "'$long[$i]'" : 'NULL';
	$node->safe_psql('src', "INSERT INTO secrets (repro_id, short, long, n) VALUES (${\ ($i + 1)}, '$short[$i]', $long, $i * 1.5)");
}
$node->safe_psql('src', qq{
INSERT INTO secrets (repro_id, short) VALUES (NULL, NULL);
INSERT INTO events VALUES (1200, NULL, '$part_marker');
INSERT INTO ctl VALUES ('$heap_marker');
CREATE MATERIALIZED VIEW secrets_mv USING cmk_heap AS SELECT id, short, long FROM secrets;
});

my $src_ams = access_methods($node, 'src');
is_deeply([ not_cmk_heap($src_ams) ], ['ctl'], 'source: every table but the heap control is cmk_heap, TOAST included');
my $src_contents = contents($node, 'src');
is($src_contents->{repro}, $node->safe_psql('src', q{SELECT '2300 rows, ' || md5(string_agg(d, '' ORDER BY d)) FROM
	(SELECT md5(t::text) AS d FROM repro t) s}), 'source: repro holds 2300 rows');
is($node->safe_psql('src', q{SELECT count(*) FILTER (WHERE pg_column_compression(payload) IS NULL AND octet_length(payload) = 3200)
		= count(payload) FROM repro}), 't', 'source: every payload is stored out of line, uncompressed');

# --- the dumps -------------------------------------------------------------------------
my $connstr = $node->connstr('src');
$node->command_ok([ 'pg_dump', '-Fc', '-f', "$tmp/src.dump", '-d', $connstr ], 'pg_dump -Fc');
$node->command_ok([ 'pg_dump', '-Fd', '-j', '2', '-f', "$tmp/src.dir", '-d', $connstr ], 'pg_dump -Fd -j 2');
$node->command_ok([ 'pg_dump', '-Fp', '-f', "$tmp/src.sql", '-d', $connstr ], 'pg_dump -Fp');
ok(index(slurp_bytes("$tmp/src.sql"), $short[0]) >= 0 && index(slurp_bytes("$tmp/src.sql"), $long[0]) >= 0,
	'the plain dump holds the values in clear (pg_dump decrypts)');
# pg_dump sets default_table_access_method before a table whose access
# method differs from the previous one's.
my (%dumped_ams, $current_am);
for my $line (split /\n/, slurp_bytes("$tmp/src.sql"))
{
	$current_am = $1 if $line =~ /^SET default_table_access_method = (\w+);$/;
	$dumped_ams{$1} = $current_am // 'heap' if $line =~ /^CREATE (?:TABLE|MATERIALIZED VIEW) public\.(\w+) /;
}
delete $dumped_ams{$_} for grep { $src_ams->{$_} =~ /^p:/ } keys %$src_ams;	# partitioned: no access method
is_deeply(\%dumped_ams, { map { my ($k, $am) = split /:/, $src_ams->{$_}; $k eq 'p' ? () : ($_ => $am) } keys %$src_ams },
	'the plain dump creates every table and view with its access method');

# Restore into a new database and compare with the source.
sub check_restored
{
	my ($n, $db, $what, $want_ams) = @_;
	my $ams = access_methods($n, $db);
	is_deeply($ams, $want_ams // $src_ams, "$what: every relation has the source's access method, TOAST included");
	is_deeply([ not_cmk_heap($ams, 'ctl') ], [], "$what: every table and materialized view is cmk_heap");
	is_deeply(contents($n, $db), $src_contents, "$what: contents identical (every table, view and sequence)");
	is($n->safe_psql($db, q{SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
			WHERE a.amname = 'cmk_heap' AND c.relkind IN ('r', 'm') AND c.relrewrite = c.oid}), '0',
		"$what: no cmk_heap relation carries the old mark that kept it out of logical decoding");
	is($n->safe_psql($db, q{SELECT payload FROM repro WHERE id = 1999}),
		$node->safe_psql('src', q{SELECT payload FROM repro WHERE id = 1999}), "$what: an index scan finds a row");
}

my @restores = (
	[ 'r_custom', 'pg_restore -Fc', [ 'pg_restore', "$tmp/src.dump" ] ],
	[ 'r_custom_j2', 'pg_restore -Fc -j 2', [ 'pg_restore', '-j', '2', "$tmp/src.dump" ] ],
	[ 'r_dir', 'pg_restore -Fd', [ 'pg_restore', "$tmp/src.dir" ] ],
	[ 'r_dir_j2', 'pg_restore -Fd -j 2', [ 'pg_restore', '-j', '2', "$tmp/src.dir" ] ],
);
for my $r (@restores)
{
	my ($db, $what, $cmd) = @$r;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->command_ok([ @$cmd, '--exit-on-error', '-d', $node->connstr($db) ], "$what: restored");
	check_restored($node, $db, $what);
}

$node->safe_psql('postgres', 'CREATE DATABASE r_plain');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', "$tmp/src.sql", '-d', $node->connstr('r_plain') ],
	'plain dump: restored with psql');
check_restored($node, 'r_plain', 'pg_dump -Fp | psql');

# Without the dump's SET default_table_access_method, a database whose
# default is cmk_heap makes every table cmk_heap, the heap control too.
# The extension must exist before pg_restore connects (the database's
# setting names an access method the session must find); -n public then
# leaves out the extension and its schema, which the dump creates too.
$node->safe_psql('postgres', 'CREATE DATABASE r_noam');
$node->safe_psql('r_noam', 'CREATE EXTENSION cmk_storage');
$node->safe_psql('postgres', 'ALTER DATABASE r_noam SET default_table_access_method = cmk_heap');
$node->command_ok([ 'pg_restore', '--no-table-access-method', '-n', 'public', '--exit-on-error', '-d', $node->connstr('r_noam'), "$tmp/src.dump" ],
	'--no-table-access-method into a cmk_heap database: restored');
my %all_cmk = map { my $v = $src_ams->{$_}; $v =~ s/^r:heap:heap$/r:cmk_heap:cmk_heap/; ($_ => $v) } keys %$src_ams;
check_restored($node, 'r_noam', '--no-table-access-method, database default cmk_heap', \%all_cmk);

# The check above can fail: the same restore into a database whose default
# is heap gives heap tables (only repro: no marker may reach a heap file).
$node->safe_psql('postgres', 'CREATE DATABASE r_heap');
$node->command_ok([ 'pg_restore', '--no-table-access-method', '--exit-on-error', '-t', 'repro', '-d', $node->connstr('r_heap'), "$tmp/src.dump" ],
	'--no-table-access-method into a heap database: restored');
is_deeply([ not_cmk_heap(access_methods($node, 'r_heap')) ], ['repro'], 'the access method check sees a table restored as heap');

# --- a database whose default is cmk_heap, dumped with -C, restored into
# --- another cluster (its own KEK and DEK) ------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE srcdef');
$node->safe_psql('srcdef', 'CREATE EXTENSION cmk_storage');
$node->safe_psql('postgres', 'ALTER DATABASE srcdef SET default_table_access_method = cmk_heap');
my $def_marker = random_marker('DDEF');
my $def_heap_marker = random_marker('DDEFHEAPCONTROL');
$node->safe_psql('srcdef', qq{
CREATE TABLE repro (id bigint PRIMARY KEY, a int, b int, payload text);
INSERT INTO repro
  SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE g % 7 END, g,
         (SELECT string_agg(md5(g || ':' || i), '') FROM generate_series(1, 100) i)
    FROM generate_series(1, 300) g;
INSERT INTO repro VALUES (301, 1, 1, '$def_marker');
CREATE TABLE parted (id int, v text) PARTITION BY LIST (id);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN (1, 2, 3);
CREATE TABLE parted_rest PARTITION OF parted DEFAULT;
INSERT INTO parted SELECT g, 'v' || g FROM generate_series(1, 50) g;
CREATE MATERIALIZED VIEW repro_mv AS SELECT id, payload FROM repro WHERE id > 290;
CREATE TABLE ctl (v text) USING heap;
INSERT INTO ctl VALUES ('$def_heap_marker');
});
my $def_ams = access_methods($node, 'srcdef');
is_deeply([ not_cmk_heap($def_ams) ], ['ctl'], 'srcdef: the database default makes tables, partitions and views cmk_heap');
my $def_contents = contents($node, 'srcdef');
$node->command_ok([ 'pg_dump', '-Fc', '-C', '-f', "$tmp/srcdef.dump", '-d', $node->connstr('srcdef') ], 'pg_dump -Fc -C of srcdef');

my $other = cmk_node('other', new_kek("$tmp/other.pem"));
$other->start;
$other->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($other);
my $other_pid = postmaster_pid($other);
$other->command_ok([ 'pg_restore', '-C', '-j', '2', '--exit-on-error', '-d', $other->connstr('postgres'), "$tmp/srcdef.dump" ],
	'srcdef: restored with -C -j 2 into another cluster');
is($other->safe_psql('postgres', q{SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s
		JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'srcdef'}),
	'default_table_access_method=cmk_heap', 'srcdef: the database default came along');
is_deeply(access_methods($other, 'srcdef'), $def_ams, 'srcdef in the other cluster: the same access methods');
is_deeply(contents($other, 'srcdef'), $def_contents, 'srcdef in the other cluster: contents identical');
$other->safe_psql('srcdef', 'CREATE TABLE later (id int)');
is($other->safe_psql('srcdef', q{SELECT amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE relname = 'later'}),
	'cmk_heap', 'srcdef in the other cluster: a new table is cmk_heap');

# --- nothing in clear on disk, no crash ---------------------------------------------------
is(postmaster_pid($node), $pm_pid, 'the postmaster never changed');
is(postmaster_pid($other), $other_pid, 'the other postmaster never changed');
$node->safe_psql('postgres', 'CHECKPOINT');
$other->safe_psql('postgres', 'CHECKPOINT');
$node->stop;
$other->stop;
my @needles = (@short, (map { substr($_, 0, 40) } @long), $part_marker, $def_marker);
my @hits = (files_containing($node->data_dir, @needles), files_containing($other->data_dir, @needles));
is(scalar(@hits), 0, 'no cmk_heap value of the source or the restores in any file of either cluster')
  or diag(join("\n", @hits[0 .. ($#hits > 10 ? 10 : $#hits)]));
ok(scalar(files_containing($node->data_dir, $heap_marker)) >= 1
	  && scalar(files_containing($other->data_dir, $def_heap_marker)) >= 1,
	'the scan finds the heap control values in both clusters (it would find plaintext)');
for my $n ($node, $other)
{
	unlike(slurp_bytes($n->logfile), qr/terminated by signal|terminated by exception|server process .* was terminated|reinitializing/,
		$n->name . ': no server process crashed');
}

done_testing();
