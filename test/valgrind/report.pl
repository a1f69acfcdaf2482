#!/usr/bin/perl
# report.pl -- read the valgrind memcheck logs of a server run (one per
# process: --log-file=DIR/%p.log with --error-markers=VALGRINDERROR-BEGIN,
# VALGRINDERROR-END and --fullpath-after=) and report their errors.
#
# An error "involves cmk_storage" when any frame of any of its stacks (where
# it happened, the block it touched, where an uninitialised value came from)
# is in the module: a frame "(in .../cmk_storage.so)", or one whose source
# file lies in the directory the module was compiled in (its DWARF
# DW_AT_comp_dir: valgrind names a frame by its source once it has debug
# information).  Those errors are printed in full and make the exit status
# 1.  Every other error (PostgreSQL itself, libc, OpenSSL: the stock server
# is not built for valgrind, so it has some noise) is listed in short and
# does not change the exit status.  A process that died of a signal is an
# error like any other.
#
# (Valgrind's XML output would name each frame's object, but with
# --xml-file=%p the forked backends all write into the postmaster's file,
# interleaved; the text logs are per process.)
#
# Usage: report.pl MODULE.so DIR
# Exit status: 0 no error involves the module, 1 some do, 2 no usable input.
use strict;
use warnings;
use File::Basename;

my ($module, $dir) = @ARGV;
die "usage: $0 MODULE.so DIR\n" unless defined $dir && -f $module;
my $object = basename($module);

# The directories the module was compiled in.
my %srcdirs;
open(my $re, '-|', 'readelf', '--debug-dump=info', '--dwarf-depth=1', $module)
  or die "cannot run readelf: $!\n";
while (<$re>)
{
	$srcdirs{$1} = 1 if /DW_AT_comp_dir\s*:.*?(\/\S*)\s*$/ && length($1) > 1;
}
close $re;
delete $srcdirs{$_} for grep { m{^/usr(/include)?/?$} } keys %srcdirs;

opendir(my $dh, $dir) or die "cannot open $dir: $!\n";
my @files = sort grep { /^\d+\.log$/ } readdir $dh;
closedir $dh;
unless (@files)
{
	print "memcheck: no valgrind logs in $dir\n";
	exit 2;
}

# A frame line: "at 0x4A1B2C: fn (/path/file.c:12)" or "by 0x...: fn (in /obj)".
sub parse_frame
{
	my ($l) = @_;
	return undef unless $l =~ /^\s+(?:at|by) 0x[0-9A-Fa-f]+: (.*?)(?: \(([^()]*)\))?$/;
	my ($fn, $loc) = ($1, $2 // '');
	my $f = { fn => $fn, loc => $loc };
	if ($loc =~ /^in (.*)$/) { $f->{obj} = $1; }
	elsif ($loc =~ /^(.*):(\d+)$/) { $f->{file} = $1; $f->{line} = $2; }
	return $f;
}

sub is_module_frame
{
	my ($f) = @_;
	return 1 if defined $f->{obj} && $f->{obj} =~ m{(^|/)\Q$object\E$};
	if (defined $f->{file})
	{
		for my $d (keys %srcdirs)
		{
			return 1 if index($f->{file}, "$d/") == 0;
		}
	}
	return 0;
}

sub short_frame
{
	my ($f) = @_;
	my $loc = $f->{loc};
	$loc =~ s{^in .*/}{in };
	for my $d (sort { length($b) <=> length($a) } keys %srcdirs)
	{
		last if $loc =~ s{^\Q$d\E/}{};
	}
	return $loc eq '' ? $f->{fn} : "$f->{fn} ($loc)";
}

# An error: its message, then parts [label, frames]: the first part's
# label is undef (where it happened), the others' are valgrind's lines
# such as "Uninitialised value was created by a stack allocation".
sub parse_block
{
	my (@lines) = @_;
	my $what = shift @lines;
	my @parts = ([ undef, [] ]);
	for my $l (@lines)
	{
		next if $l =~ /^\s*$/;
		if (my $f = parse_frame($l))
		{
			push @{ $parts[-1][1] }, $f;
		}
		else
		{
			(my $t = $l) =~ s/^\s+//;
			push @parts, [ $t, [] ];
		}
	}
	return { what => $what, parts => \@parts };
}

sub involves_module
{
	my ($err) = @_;
	for my $p (@{ $err->{parts} })
	{
		return 1 if grep { is_module_frame($_) } @{ $p->[1] };
	}
	return 0;
}

# Errors that are the same bug: the same message and labels without
# addresses or sizes, the same functions and lines on every stack.
sub signature
{
	my ($err) = @_;
	my @sig;
	for my $t ($err->{what}, map { $_->[0] // '' } @{ $err->{parts} })
	{
		(my $s = $t) =~ s/0x[0-9A-Fa-f]+/0x/g;
		$s =~ s/[\d,]+ bytes/N bytes/g;
		push @sig, $s;
	}
	for my $p (@{ $err->{parts} })
	{
		push @sig, map { "$_->{fn} $_->{loc}" } @{ $p->[1] };
	}
	return join("\n", @sig);
}

my (%groups, @order, %warnings);
for my $file (@files)
{
	my ($pid) = $file =~ /^(\d+)/;
	open my $fh, '<', "$dir/$file" or die "cannot read $dir/$file: $!\n";
	my (@block, $in_error, $in_signal);
	my @errs;
	while (my $l = <$fh>)
	{
		chomp $l;
		next unless $l =~ s/^==\d+== ?//;
		if ($l eq 'VALGRINDERROR-BEGIN') { @block = (); $in_error = 1; next; }
		if ($l eq 'VALGRINDERROR-END')
		{
			push @errs, parse_block(@block) if $in_error && @block;
			$in_error = 0;
			next;
		}
		if ($in_error) { push @block, $l; next; }
		if ($l =~ /^Process terminating with default action of signal/)
		{
			@block = ($l);
			$in_signal = 1;
			next;
		}
		if ($in_signal)
		{
			if ($l =~ /^\s*$/ || $l =~ /^\s+If you believe this happened/)
			{
				push @errs, parse_block(@block);
				$in_signal = 0;
			}
			else { push @block, $l; }
			next;
		}
		$warnings{$1}{$pid} = 1 if $l =~ /^(Warning: .*?)(?: 0x[0-9a-f]+.*)?$/;
	}
	push @errs, parse_block(@block) if $in_signal;
	close $fh;
	for my $e (@errs)
	{
		my $sig = signature($e);
		if (!$groups{$sig})
		{
			$groups{$sig} = { err => $e, pids => {}, module => involves_module($e) };
			push @order, $sig;
		}
		$groups{$sig}{pids}{$pid} = 1;
	}
}

sub pid_list
{
	my ($g) = @_;
	my @p = sort { $a <=> $b } keys %{ $g->{pids} };
	return scalar(@p) . ' process' . (@p == 1 ? '' : 'es') . ': '
	  . join(', ', @p[0 .. ($#p > 4 ? 4 : $#p)]) . (@p > 5 ? ', ...' : '');
}

my @mine = grep { $groups{$_}{module} } @order;
my @other = grep { !$groups{$_}{module} } @order;

printf "memcheck: %d processes ran under valgrind; %d distinct errors involving %s, %d elsewhere\n",
  scalar(@files), scalar(@mine), $object, scalar(@other);

my $i = 0;
for my $sig (@mine)
{
	my $g = $groups{$sig};
	my $e = $g->{err};
	$i++;
	printf "\n[%s error %d] %s\n  (%s)\n", $object, $i, $e->{what}, pid_list($g);
	for my $p (@{ $e->{parts} })
	{
		print "  $p->[0]\n" if defined $p->[0];
		my $first = 1;
		for my $f (@{ $p->[1] })
		{
			printf "    %s %s\n", $first ? 'at' : 'by', short_frame($f);
			$first = 0;
		}
	}
}

if (@other)
{
	print "\nErrors not involving $object (the stock server has no valgrind instrumentation; listed, not failed):\n";
	for my $sig (@other)
	{
		my $g = $groups{$sig};
		my $e = $g->{err};
		my @top = @{ $e->{parts}[0][1] };
		@top = @top[0 .. ($#top > 3 ? 3 : $#top)];
		printf "  - %s (%s)\n      %s\n", $e->{what}, pid_list($g),
		  join("\n      ", map { short_frame($_) } @top);
		for my $p (@{ $e->{parts} }[1 .. $#{ $e->{parts} }])
		{
			next unless $p->[0] =~ /created by|alloc'd|free'd/;
			my @f = @{ $p->[1] };
			@f = @f[0 .. ($#f > 2 ? 2 : $#f)];
			printf "      %s%s\n", $p->[0], @f ? ': ' . join(' < ', map { short_frame($_) } @f) : '';
		}
	}
}

if (%warnings)
{
	print "\nValgrind warnings:\n";
	printf "  - %s (%d process(es))\n", $_, scalar(keys %{ $warnings{$_} }) for sort keys %warnings;
}

exit(@mine ? 1 : 0);
