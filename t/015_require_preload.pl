# CREATE EXTENSION cmk_storage refuses, with the fix in the hint, when the
# library is not in shared_preload_libraries (issue 20, item 3): without the
# postmaster's key memory no key can ever be loaded, and Citus propagates
# CREATE EXTENSION to workers, so a misconfigured node must fail right there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $kek = new_kek(PostgreSQL::Test::Utils::tempdir() . '/kek.pem');

# A stock server: cmk_storage installed but not preloaded.
my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->append_conf('postgresql.conf', "cmk_storage.key_uri = 'file://$kek'\n");
$node->start;

my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nCREATE EXTENSION cmk_storage;");
isnt($rc, 0, 'CREATE EXTENSION fails without shared_preload_libraries');
like($err, qr/ERROR:  55000: cmk_storage must be loaded via shared_preload_libraries/,
	'error is object_not_in_prerequisite_state and names the cause');
like($err, qr/HINT:  Add cmk_storage to shared_preload_libraries in postgresql\.conf.*restart the server/,
	'hint gives the fix');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_extension WHERE extname = 'cmk_storage'}),
	'0', 'no extension is left behind');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_namespace WHERE nspname = 'cmk_storage'}),
	'0', 'nor its schema');

# Loading the library by hand in the session is not preloading.
($rc, $out, $err) = $node->psql('postgres',
	"LOAD 'cmk_storage';\nCREATE EXTENSION cmk_storage;");
isnt($rc, 0, 'CREATE EXTENSION fails after LOAD as well');
like($err, qr/must be loaded via shared_preload_libraries/, 'same error after LOAD');
$node->stop;

# Preloaded: the extension installs, and the check leaves nothing behind.
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'cmk_storage'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_extension WHERE extname = 'cmk_storage'}),
	'1', 'CREATE EXTENSION works with shared_preload_libraries');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_proc WHERE proname = 'require_preload'}),
	'0', 'the preload check function is dropped by the script');
my $state = wait_key_settled($node);
is($state->{state}, 'available', 'and the key is available');
$node->stop;

done_testing();
