#!/usr/bin/perl
# Run TAP test files with TAP::Harness and print "TAP: N passed, M failed"
# (N and M count assertions; a file that dies or breaks its plan counts as
# one failure).  Usage: run-tap.pl PERL_LIB_DIR FILE...
use strict;
use warnings;
use TAP::Harness;

my ($lib, @files) = @ARGV;
my $harness = TAP::Harness->new({ lib => [$lib, 't'], verbosity => 0, color => 0 });
my $agg = $harness->runtests(@files);
my $failed = scalar($agg->failed);
my $passed = scalar($agg->passed);
foreach my $f ($agg->descriptions)
{
	my ($parser) = $agg->parsers($f);
	$failed++ if $parser->has_problems && !$parser->failed;
}
print "TAP: $passed passed, $failed failed\n";
exit($failed ? 1 : 0);
