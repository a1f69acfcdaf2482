# Helpers shared by the cmk_storage TAP tests.
package CmkTest;

use strict;
use warnings;
use Exporter 'import';
use File::Basename;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(new_kek cmk_node key_status wait_key_settled restart_expect
  slurp_bytes spew_bytes control_path unwrap_dek files_containing random_marker
  archive_conf archive_current_segment epochs_path read_epochs epochs_image
  crc32c);

# Generate an RSA (or other) private key in PEM, mode 0600.
sub new_kek
{
	my ($path, %opt) = @_;
	my $bits = $opt{bits} // 2048;
	my @cmd = $opt{ec}
	  ? ('openssl', 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', $path)
	  : ('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', "rsa_keygen_bits:$bits", '-out', $path);
	system(@cmd) == 0 or die "openssl genpkey failed";
	chmod 0600, $path;
	return $path;
}

# A cluster with cmk_storage preloaded and the given KEK.
sub cmk_node
{
	my ($name, $kek, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'cmk_storage'
cmk_storage.key_uri = 'file://$kek'
autovacuum = off
});
	$node->append_conf('postgresql.conf', $opt{conf}) if $opt{conf};
	return $node;
}

# The key state as a hash (the extension must exist in database postgres).
sub key_status
{
	my ($node) = @_;
	my $row = $node->safe_psql('postgres',
		q{SELECT state, coalesce(reason, ''), coalesce(dek_id, ''), coalesce(kek_id, '') FROM cmk_storage.status});
	my ($state, $reason, $dek_id, $kek_id) = split /\|/, $row, 4;
	return { state => $state, reason => $reason, dek_id => $dek_id, kek_id => $kek_id };
}

# Wait until the key worker has finished its first attempt.
sub wait_key_settled
{
	my ($node) = @_;
	$node->poll_query_until('postgres',
		q{SELECT state <> 'loading' FROM cmk_storage.key_status()})
	  or die "key worker never settled";
	return key_status($node);
}

# Restart with a changed key_uri (or other settings) and return the key state.
sub restart_expect
{
	my ($node, $conf) = @_;
	$node->stop;
	$node->append_conf('postgresql.conf', $conf) if defined $conf;
	$node->start;
	return wait_key_settled($node);
}

sub slurp_bytes
{
	my ($path) = @_;
	open my $fh, '<:raw', $path or die "open $path: $!";
	local $/;
	my $data = <$fh>;
	close $fh;
	return $data;
}

sub spew_bytes
{
	my ($path, $data) = @_;
	open my $fh, '>:raw', $path or die "open $path: $!";
	print $fh $data;
	close $fh;
}

sub control_path
{
	my ($node) = @_;
	return $node->data_dir . '/cmk_storage/control';
}

# Unwrap the DEK from a control file with the private key, as an attacker
# holding the KEK could: the tests use it to look for the DEK in logs.
sub unwrap_dek
{
	my ($control, $kek, $tmpdir) = @_;
	my $ctl = slurp_bytes($control);
	my $len = unpack('n', substr($ctl, 58, 2));
	spew_bytes("$tmpdir/wrapped.bin", substr($ctl, 64, $len));
	system('openssl', 'pkeyutl', '-decrypt', '-inkey', $kek,
		'-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256',
		'-pkeyopt', 'rsa_mgf1_md:sha256',
		'-in', "$tmpdir/wrapped.bin", '-out', "$tmpdir/dek.bin") == 0
	  or die "could not unwrap the DEK with openssl";
	my $dek = slurp_bytes("$tmpdir/dek.bin");
	unlink "$tmpdir/dek.bin", "$tmpdir/wrapped.bin";
	return $dek;
}

# Every regular file under $dir whose bytes contain one of @needles.
sub files_containing
{
	my ($dir, @needles) = @_;
	my @hits;
	my @stack = ($dir);
	while (my $d = pop @stack)
	{
		opendir(my $dh, $d) or next;
		for my $e (readdir $dh)
		{
			next if $e eq '.' || $e eq '..';
			my $p = "$d/$e";
			if (-l $p) { next; }
			if (-d $p) { push @stack, $p; next; }
			next unless -f $p;
			my $data = eval { slurp_bytes($p) } // next;
			for my $n (@needles)
			{
				if (index($data, $n) >= 0) { push @hits, "$p: $n"; last; }
			}
		}
		closedir $dh;
	}
	return @hits;
}

# A marker no compressor can shrink and nothing else contains.
sub random_marker
{
	my ($prefix) = @_;
	my @c = ('a' .. 'z', 'A' .. 'Z', '0' .. '9');
	return $prefix . join('', map { $c[ int(rand(@c)) ] } 1 .. 24);
}

# postgresql.conf lines that archive WAL encrypted into $dir through the
# archive module (the cluster needs wal_level replica: init => { allows_streaming => 1 }).
sub archive_conf
{
	my ($dir) = @_;
	return qq{
archive_mode = on
archive_library = 'cmk_storage'
cmk_storage.archive_directory = '$dir'
};
}

# Switch to a new WAL segment and wait until the one that was current is
# archived; returns its file name.
sub archive_current_segment
{
	my ($node) = @_;
	my $seg = $node->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
	$node->safe_psql('postgres', 'SELECT pg_switch_wal()');
	$node->poll_query_until('postgres', qq{SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver})
	  or die "archiving $seg timed out";
	return $seg;
}

# --- the nonce-epoch file (docs/nonce-epochs.md) ----------------------------------

sub epochs_path
{
	my ($node) = @_;
	return $node->data_dir . '/cmk_storage/nonce_epochs';
}

my @crc32c_table = map {
	my $c = $_;
	$c = ($c & 1) ? (($c >> 1) ^ 0x82F63B78) : ($c >> 1) for 1 .. 8;
	$c;
} 0 .. 255;

# CRC-32C (Castagnoli), as PostgreSQL's pg_crc32c.
sub crc32c
{
	my ($data) = @_;
	my $crc = 0xFFFFFFFF;
	$crc = $crc32c_table[ ($crc ^ $_) & 0xFF ] ^ ($crc >> 8) for unpack('C*', $data);
	return $crc ^ 0xFFFFFFFF;
}

# The file's fields: version, and for format 2 flags, sysid, dek_id (hex),
# mac (bytes), entries and pending (lists of [id, tag, prefix] with tag and
# prefix as raw bytes); format 1 has only entries.  Dies on a bad CRC.
sub read_epochs
{
	my ($path) = @_;
	my $f = slurp_bytes($path);
	die "$path: bad magic" unless substr($f, 0, 8) eq 'CMKEPOCH';
	die "$path: bad CRC" unless unpack('N', substr($f, -4)) == crc32c(substr($f, 0, -4));
	my ($version, $n) = unpack('NN', substr($f, 8, 8));
	my $list = sub {
		my ($at, $count) = @_;
		return [ map { [ unpack('n', substr($f, $at + 16 * $_, 2)), substr($f, $at + 16 * $_ + 4, 4),
			  substr($f, $at + 16 * $_ + 8, 8) ] } 0 .. $count - 1 ];
	};
	return { version => 1, entries => $list->(16, $n) } if $version == 1;
	my $auth_end = 48 + 16 * $n;
	my $np = unpack('N', substr($f, $auth_end + 32, 4));
	return {
		version => $version,
		flags => unpack('N', substr($f, 16, 4)),
		sysid => unpack('Q>', substr($f, 24, 8)),
		dek_id => unpack('H*', substr($f, 32, 16)),
		entries => $list->(48, $n),
		mac => substr($f, $auth_end, 32),
		pending => $list->($auth_end + 36, $np),
	};
}

# The bytes of a file with the fields of read_epochs, its CRC recomputed (and
# the MAC copied as it is: only cmk_storage can compute it).
sub epochs_image
{
	my ($e) = @_;
	my $list = sub { join '', map { pack('nn', $_->[0], 0) . $_->[1] . $_->[2] } @{ $_[0] } };
	my $f;
	if ($e->{version} == 1)
	{
		$f = 'CMKEPOCH' . pack('NN', 1, scalar @{ $e->{entries} }) . $list->($e->{entries});
	}
	else
	{
		$f = 'CMKEPOCH' . pack('NNNN', $e->{version}, scalar @{ $e->{entries} }, $e->{flags}, 0)
		  . pack('Q>', $e->{sysid}) . pack('H*', $e->{dek_id})
		  . $list->($e->{entries}) . $e->{mac}
		  . pack('N', scalar @{ $e->{pending} }) . $list->($e->{pending});
	}
	return $f . pack('N', crc32c($f));
}

# --- heap against cmk_heap in logical decoding (t/080, t/081) ----------------------

push @EXPORT, qw(heap_and_cmk_heap_dbs with_big_values);

# Databases dh (tables heap) and de (tables cmk_heap, its default access
# method) on $node, the extension in both and in postgres; returns once the
# key worker has settled.  The same workload run in each must give the same
# changes.
sub heap_and_cmk_heap_dbs
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{CREATE DATABASE dh; CREATE DATABASE de;});
	$node->safe_psql($_, 'CREATE EXTENSION cmk_storage') for qw(postgres dh de);
	$node->safe_psql('de', 'ALTER DATABASE de SET default_table_access_method = cmk_heap');
	return wait_key_settled($node);
}

# $sql with each BIG('x') (x one letter or digit) replaced by a value of
# TOAST size that pglz cannot shrink below the threshold, one for each x.
sub with_big_values
{
	my ($sql) = @_;
	my $big = q{(SELECT string_agg(md5(g::text || s), '') FROM generate_series(1, 150) g)};
	return $sql =~ s/BIG\('(\w)'\)/my $s = $1; $big =~ s{ s\)}{ '$s')}r/ger;
}

# --- backups and copies of a cluster (t/220, t/225) --------------------------------

use PostgreSQL::Test::RecursiveCopy;

push @EXPORT, qw(no_value_in wal_pages node_from_dir copy_backup pitr_node);

# Test that no regular file under $dirs (a directory or a list of them) holds
# any of the values in @$needles; on failure the hits are listed.
sub no_value_in
{
	my ($dirs, $needles, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @hits = map { files_containing($_, @$needles) } ref $dirs ? @$dirs : ($dirs);
	my $ok = is(scalar(@hits), 0, $name);
	diag(join("\n", @hits)) unless $ok;
	return $ok;
}

# WAL pages (magic 0xD110) of the segment files in $dir, complete or
# .partial (pg_receivewal writes those; pg_basebackup never does): how many
# carry the encryption marker (0x4000 in xlp_info) and how many do not.
sub wal_pages
{
	my ($dir) = @_;
	my ($enc, $clear) = (0, 0);
	for my $f (grep { basename($_) =~ /^[0-9A-F]{24}(\.partial)?$/ } glob("$dir/*"))
	{
		my $data = slurp_bytes($f);
		for (my $off = 0; $off < length($data); $off += 8192)
		{
			my ($magic, $info) = unpack('vv', substr($data, $off, 4));
			next unless $magic == 0xD110;
			if ($info & 0x4000) { $enc++ } else { $clear++ }
		}
	}
	return ($enc, $clear);
}

# A node on a data directory that $fill->($data_dir) makes (a copy of a
# backup, an extracted tar, a restore), with this node's own port, socket
# directory and cluster_name.  archive_mode off: a copy must never archive
# into the archive of the cluster it came from.
sub node_from_dir
{
	my ($name, $fill) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $data = $node->data_dir;
	$fill->($data);
	chmod 0700, $data;
	$node->append_conf('postgresql.conf', qq{
port = @{[ $node->port ]}
unix_socket_directories = '@{[ $node->host ]}'
archive_mode = off
cluster_name = '$name'
});
	return $node;
}

# The $fill of node_from_dir for a plain-format backup directory.
sub copy_backup
{
	my ($from) = @_;
	return sub { PostgreSQL::Test::RecursiveCopy::copypath($from, $_[0]); };
}

# A node made from the plain-format backup $backup that recovers with the
# WAL of $archive (restore_command cp) up to the restore point $target and
# is promoted there; returned running, out of recovery.
sub pitr_node
{
	my ($name, $backup, $archive, $target) = @_;
	my $node = node_from_dir($name, copy_backup($backup));
	$node->append_conf('postgresql.conf', qq{
restore_command = 'cp $archive/%f %p'
recovery_target_name = '$target'
recovery_target_action = 'promote'
});
	spew_bytes($node->data_dir . '/recovery.signal', '');
	$node->start;
	$node->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'recovery did not finish';
	return $node;
}

# --- Citus intermediate results (t/300, t/305) -------------------------------------

use File::Find ();
use IPC::Run;

push @EXPORT, qw(held_transaction job_cache_search);

# Run $sql (statements, each ended by a semicolon) on $node in a transaction
# that psql holds open while $during->() runs, then commit.  Citus keeps the
# intermediate results of a query in files only until its transaction ends:
# $during searches them.  Returns psql's output lines (-A -t), errors too.
sub held_transaction
{
	my ($node, $sql, $during) = @_;
	my ($in, $out) = ('', '');
	my $h = IPC::Run::start([ 'psql', '-X', '-A', '-t', '-q', '-h', $node->host, '-p', $node->port, 'postgres' ],
		'<', \$in, '>', \$out, '2>', \$out, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	$in .= "BEGIN;\n$sql\nSELECT 'ready';\n";
	$h->pump until $out =~ /^ready$/m || $out =~ /ERROR/;
	$during->();
	$in .= "COMMIT;\n\\q\n";
	$h->finish;
	return grep { $_ ne 'ready' } split /\n/, $out;
}

# Search the Citus job cache (base/pgsql_job_cache) of every node in @$nodes:
# returns its non-empty files and, as files_containing does, those that hold
# one of @needles.
sub job_cache_search
{
	my ($nodes, @needles) = @_;
	my (@files, @hits);
	for my $n (@$nodes)
	{
		my $dir = $n->data_dir . '/base/pgsql_job_cache';
		next unless -d $dir;
		File::Find::find({ wanted => sub { push @files, $File::Find::name if -f $_ && -s $_ }, no_chdir => 1 },
			$dir);
		push @hits, files_containing($dir, @needles);
	}
	return (\@files, \@hits);
}

# --- Azure Key Vault emulator (emulator/README.md) ---------------------------------

use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use Time::HiRes ();

push @EXPORT, qw(start_emulator stop_emulator emulator_admin control_kid);

# Emulators still running when the test ends (even by die) are stopped.
my @running_emulators;
END { local $?; stop_emulator($_) for @running_emulators; }

sub emulator_script
{
	my $dir = $ENV{REPO} ? "$ENV{REPO}/emulator"
	  : File::Spec->rel2abs(dirname(__FILE__) . '/../emulator');
	return "$dir/kv-emulator.js";
}

# Start the emulator (node emulator/kv-emulator.js) on free ports, or on the
# given ones (to bring a stopped emulator back where clients expect it).
# Returns a hash with vault_url, token_url, app_service_url, admin_url,
# ca_file, port, identity_port and the process handle.
sub start_emulator
{
	my (%opt) = @_;
	my $state = $opt{state_dir} or die "start_emulator: state_dir required";
	my $out = "$state.stdout";
	my @cmd = ('node', emulator_script(), '--port', $opt{port} // 0,
		'--state-dir', $state);
	push @cmd, '--identity-port', $opt{identity_port} if $opt{identity_port};
	push @cmd, @{ $opt{args} } if $opt{args};
	unlink $out;
	# Files, not pipes: nobody has to keep draining them.
	my $h = IPC::Run::start(\@cmd, '<', \undef, '>', $out, '2>>', "$state.stderr");
	my %emu = (harness => $h, state_dir => $state);
	my $deadline = Time::HiRes::time() + 90;
	while (1)
	{
		my $text = -e $out ? slurp_bytes($out) : '';
		if ($text =~ /^ready$/m)
		{
			for my $line (split /\n/, $text)
			{
				$emu{$1} = $2 if $line =~ /^(\w+)=(.*)$/;
			}
			last;
		}
		if (!$h->pumpable || Time::HiRes::time() > $deadline)
		{
			my $err = -e "$state.stderr" ? slurp_bytes("$state.stderr") : '';
			$h->kill_kill;
			die "emulator did not start: $err";
		}
		Time::HiRes::sleep(0.1);
	}
	($emu{port}) = $emu{vault_url} =~ /:(\d+)$/;
	($emu{identity_port}) = $emu{token_url} =~ m{:(\d+)/};
	push @running_emulators, \%emu;
	return \%emu;
}

sub stop_emulator
{
	my ($emu) = @_;
	return unless $emu && $emu->{harness};
	$emu->{harness}->kill_kill(grace => 5);
	delete $emu->{harness};
}

# Call the admin API; returns the decoded JSON body (and the status in list
# context).  $body is a Perl structure or undef.
sub emulator_admin
{
	my ($emu, $method, $path, $body) = @_;
	my $r = HTTP::Tiny->new(timeout => 60)->request($method, "$emu->{admin_url}$path",
		{
			headers => { 'Content-Type' => 'application/json' },
			content => defined $body ? encode_json($body) : ''
		});
	my $data = (defined $r->{content} && $r->{content} ne '')
	  ? eval { decode_json($r->{content}) } : undef;
	die "emulator admin $method $path: $r->{status} $r->{content}"
	  if $r->{status} >= 400 && !wantarray;
	return wantarray ? ($r->{status}, $data) : $data;
}

# The versioned KEK id recorded in the control file.
sub control_kid
{
	my ($node) = @_;
	my $c = slurp_bytes(control_path($node));
	my $len = unpack('n', substr($c, 60, 2));
	return substr($c, 576, $len);
}

1;
