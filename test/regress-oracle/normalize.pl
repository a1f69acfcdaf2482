#!/usr/bin/perl
# normalize.pl --am AM [--baseline-am AM] [--test NAME] [--hits FILE] < results/NAME.out
#
# The KNOWN DIFFERENCES between "suite run with heap" and "suite run with
# <am> as default_table_access_method" that are legitimate, as an explicit
# list of rules.  run.sh pipes BOTH runs' output of every test through this
# filter (same rules, same arguments) and then diffs the two; anything not
# covered here is reported as a failure.
#
# Keep this list SHORT and every rule NARROW: a rule only touches psql result
# tables selected by their title/header, and only drops rows that name the
# candidate AM.  Never add a rule that hides data rows of user tables.
#
# Rule kinds:
#   block     => qr/.../   selects an aligned psql result table by its title
#                          line or header line (AM names substituted: @AM@)
#   drop_row  => qr/.../   rows of a selected table that are removed
# In a selected table (in both runs' output) the cell padding, separator
# line and title are canonicalised and the "(N rows)" footer recomputed,
# because dropping a row can change the column widths.
use strict;
use warnings;

my %opt = (am => undef, 'baseline-am' => 'heap', test => '', hits => undef);
while (@ARGV) {
	my $k = shift @ARGV;
	$k =~ s/^--// or die "bad argument $k\n";
	exists $opt{$k} or die "unknown option --$k\n";
	$opt{$k} = shift @ARGV;
}
defined $opt{am} or die "--am is required\n";
my $AM = quotemeta $opt{am};

my @RULES = (
	{
		id => 'am-dependency-row',
		reason => 'A table or matview whose AM is not the (pinned) built-in heap '
		  . 'gets a pg_depend entry of type n on its access method '
		  . '(create_am.sql: "Switching to heap2 adds new dependency entry to '
		  . 'the AM"). Queries listing the pg_depend rows of freshly created '
		  . 'relations (create_index: REINDEX CONCURRENTLY dependency checks) '
		  . 'show one extra "access method <am> | n" row per relation.',
		block => qr/^\s*\S.*\|\s*deptype\s*$/,    # header whose last column is deptype
		drop_row => qr/\|\s*access method $AM\s*\|\s*n\s*$/,
	},
	{
		id => 'am-listing-row',
		reason => 'The candidate AM exists only in the candidate cluster, so '
		  . 'listings of all access methods (psql \\dA / \\dA+ in psql, '
		  . 'SELECT ... FROM pg_am in create_am) have one extra row for it.',
		block => qr/^\s*(?:List of access methods|amname\s*\|\s*amhandler\s*\|\s*amtype)\s*$/,
		drop_row => qr/^\s*$AM\s*\|/,
	},
);

my @lines = <STDIN>;
chomp @lines;
my %hits;
# (rule hits are appended to --hits FILE as "rule-id:rows-dropped")

my $is_sep = qr/^-+(?:\+-+)*$/;
my @out;
my $i = 0;
while ($i < @lines) {
	# an aligned table starts with a header line followed by the separator
	if ($i + 1 < @lines && $lines[$i + 1] =~ $is_sep && $lines[$i] =~ /\S/) {
		my $h = $i;
		my $title_idx = (@out && $out[-1] =~ /^\s*List of /) ? $#out : undef;
		my $title = defined $title_idx ? $out[$title_idx] : '';
		my @sel = grep { $lines[$h] =~ $_->{block} || $title =~ $_->{block} } @RULES;
		if (!@sel) {
			push @out, $lines[$h], $lines[$h + 1];
			$i += 2;
			next;
		}
		# collect rows up to the footer
		my $j = $h + 2;
		my @rows;
		while ($j < @lines && $lines[$j] !~ /^\(\d+ rows?\)$/ && $lines[$j] ne '') {
			push @rows, $lines[$j++];
		}
		my $footer = ($j < @lines && $lines[$j] =~ /^\((\d+) rows?\)$/) ? $1 : undef;
		my $dropped = 0;
		my @keep;
		ROW: for my $r (@rows) {
			for my $rule (@sel) {
				if ($r =~ $rule->{drop_row}) {
					$hits{$rule->{id}}++;
					$dropped++;
					next ROW;
				}
			}
			push @keep, $r;
		}
		my $canon = sub { my $s = shift; $s =~ s/^\s+|\s+$//g; $s =~ s/\s*\|\s*/ | /g; $s };
		$out[$title_idx] =~ s/^\s+|\s+$//g if defined $title_idx;
		push @out, $canon->($lines[$h]);
		(my $sep = $lines[$h + 1]) =~ s/-+/---/g;
		push @out, $sep;
		push @out, map { $canon->($_) } @keep;
		if (defined $footer) {
			my $n = $footer - $dropped;
			push @out, $n == 1 ? '(1 row)' : "($n rows)";
			$j++;
		}
		$i = $j;
		next;
	}
	push @out, $lines[$i++];
}

print "$_\n" for @out;

if (defined $opt{hits} && %hits) {
	open my $hf, '>>', $opt{hits} or die "$opt{hits}: $!\n";
	print $hf join(' ', map { "$_:$hits{$_}" } sort keys %hits), "\n";
	close $hf;
}
