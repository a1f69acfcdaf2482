# A backend whose query failed half-way through a page keeps none of the
# plaintext it decrypted for that page and never returned: the slot's memory
# context reset callback wipes the page cache when the ERROR unwinds the
# query (cmkam_slot.c).  Checked in a core image of the live backend (gcore).
#
# Controls, found by the same search in the same image: the rows of a
# temporary table (plaintext in the backend's private local buffers) and of
# a heap table (plaintext in shared buffers).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $kek = new_kek("$tmp/kek.pem");
my $node = cmk_node('memory', $kek);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
wait_key_settled($node);

my $nrows = 100;
my $fail_at = 5;
my @enc = map { random_marker("E$_-") } 1 .. $nrows;
my @ctl = map { random_marker("H$_-") } 1 .. $nrows;
my @tmpm = map { random_marker("T$_-") } 1 .. $nrows;
$node->safe_psql('postgres', q{
CREATE TABLE enc (id int, m text) USING cmk_heap;
CREATE TABLE ctl (id int, m text) USING heap;
});
$node->safe_psql('postgres',
	'INSERT INTO enc VALUES ' . join(',', map { "($_, '$enc[$_ - 1]')" } 1 .. $nrows));
$node->safe_psql('postgres',
	'INSERT INTO ctl VALUES ' . join(',', map { "($_, '$ctl[$_ - 1]')" } 1 .. $nrows));
is($node->safe_psql('postgres',
	'SELECT count(DISTINCT (ctid::text::point)[0]) FROM enc'), '1',
	'the encrypted rows share one page');

# The scan decrypts the whole page's m values at its first row, then fails
# at row $fail_at; the session stays open for the core image.
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_safe('CREATE TEMP TABLE tmpc (id int, m text); INSERT INTO tmpc VALUES '
	  . join(',', map { "($_, '$tmpm[$_ - 1]')" } 1 .. $nrows));
my (undef, $failed) = $bg->query(
	"SELECT id, 1 / (CASE WHEN id = $fail_at THEN 0 ELSE 1 END), m FROM enc");
ok($failed && $bg->{stderr} =~ /division by zero/,
	'the query over the encrypted table failed half-way');
# BackgroundPsql keeps stderr across queries; the failure is accounted for.
$bg->{stderr} = '';
$bg->query_safe('SELECT count(*) FROM ctl');
$bg->query_safe('SELECT 1');    # the backend is idle and well

my ($gout, $gerr) = ('', '');
IPC::Run::run([ 'gcore', '-o', "$tmp/core", $pid ], '>', \$gout, '2>', \$gerr);
SKIP:
{
	skip "gcore may not trace the backend here: $gerr", 4
	  if !-f "$tmp/core.$pid" && $gerr =~ /ptrace|Operation not permitted/;
	ok(-f "$tmp/core.$pid", 'core image of the backend taken')
	  or diag($gout, $gerr);
	my $image = slurp_bytes("$tmp/core.$pid");
	unlink("$tmp/core.$pid");

	my @unsent =
	  grep { index($image, $enc[ $_ - 1 ]) >= 0 } ($fail_at + 1) .. $nrows;
	is(scalar(@unsent), 0,
		'no plaintext of the rows decrypted but never returned is left in the backend'
	) or diag('found rows ' . join(' ', @unsent));
	my @temp = grep { index($image, $_) >= 0 } @tmpm;
	ok(scalar(@temp) >= $nrows / 2,
		"control: a temporary table's rows are found in the image (private memory)");
	my @heap = grep { index($image, $_) >= 0 } @ctl;
	ok(scalar(@heap) >= $nrows / 2,
		"control: the heap table's rows are found in the image (shared buffers)");
}

$bg->quit;
$node->stop;
done_testing();
