# Logical replication between two clusters that both run with cluster
# encryption (docs/io-layer.md), each with its own DEK under its own KEK:
# a publication of heap tables (with an index, TOAST, a sequence-fed key)
# and of a cmk_heap table, initial sync, then inserts, updates and deletes,
# a transaction large enough to be streamed and spilled, and a prepared
# transaction.  The subscriber ends with exactly the publisher's rows, and
# after a checkpoint no written value is found in either cluster's
# relation files, WAL, replication-slot directories or temporary files.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CmkTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $common = qq{cmk_storage.cluster_encryption = on
max_prepared_transactions = 10
max_worker_processes = 16
};
my $pub = cmk_node('lpub', new_kek("$tmp/kek_pub.pem"), conf => $common . qq{wal_level = logical
logical_decoding_work_mem = 64kB
max_wal_senders = 10
max_replication_slots = 10
});
my $sub = cmk_node('lsub', new_kek("$tmp/kek_sub.pem"), conf => $common . qq{max_logical_replication_workers = 8
});
$_->start for ($pub, $sub);
for my $n ($pub, $sub)
{
	$n->safe_psql('postgres', 'CREATE EXTENSION cmk_storage');
	is(wait_key_settled($n)->{state}, 'available', $n->name . ': key available');
}
isnt(key_status($pub)->{dek_id}, key_status($sub)->{dek_id}, 'the two clusters have their own DEKs');

my $m = random_marker('LOGREP');
my $schema = q{
CREATE TABLE people (id bigserial PRIMARY KEY, email text NOT NULL, note text);
CREATE INDEX people_email ON people (email);
CREATE TABLE docs (id int PRIMARY KEY, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE secrets (id int PRIMARY KEY, v text) USING cmk_heap;
};
$_->safe_psql('postgres', $schema) for ($pub, $sub);

$pub->safe_psql('postgres', qq{
INSERT INTO people (email, note) SELECT 'user' || g || '\@$m.example', 'initial $m ' || g FROM generate_series(1, 500) g;
INSERT INTO docs SELECT g, repeat('$m doc ' || g || ' ', 400) FROM generate_series(1, 20) g;
INSERT INTO secrets SELECT g, 'secret $m ' || g FROM generate_series(1, 200) g;
CREATE PUBLICATION p FOR TABLE people, docs, secrets;
});
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION s CONNECTION '$connstr' PUBLICATION p WITH (streaming = on, two_phase = true)");
$sub->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')})
  or die 'initial sync did not finish';

$pub->safe_psql('postgres', qq{
UPDATE people SET note = 'updated $m ' || id WHERE id % 3 = 0;
DELETE FROM people WHERE id % 7 = 0;
UPDATE docs SET body = repeat('$m changed ', 500) WHERE id = 5;
DELETE FROM docs WHERE id = 6;
UPDATE secrets SET v = 'changed $m ' || id WHERE id <= 50;
DELETE FROM secrets WHERE id > 190;
});
# large enough to be streamed (64kB of decoding memory) and to spill
$pub->safe_psql('postgres', qq{
INSERT INTO people (email, note) SELECT 'bulk' || g || '\@$m.example', repeat('bulk $m ', 20) FROM generate_series(1, 5000) g;
});
$pub->safe_psql('postgres', qq{
BEGIN;
INSERT INTO secrets VALUES (1000, 'prepared $m');
INSERT INTO people (email, note) VALUES ('prepared\@$m.example', 'prepared');
PREPARE TRANSACTION 'pt';
});
$pub->safe_psql('postgres', "COMMIT PREPARED 'pt'");
$pub->wait_for_catchup('s');

my %q = (
	people => 'SELECT id, email, note FROM people ORDER BY id',
	docs => 'SELECT id, md5(body) FROM docs ORDER BY id',
	secrets => 'SELECT id, v FROM secrets ORDER BY id');
for my $t (sort keys %q)
{
	my $want = $pub->safe_psql('postgres', $q{$t});
	ok(length($want) > 0, "$t: the publisher has rows");
	is($sub->safe_psql('postgres', $q{$t}), $want, "$t: the subscriber has exactly the publisher's rows");
}
ok($pub->safe_psql('postgres', q{SELECT stream_count > 0 FROM pg_stat_replication_slots WHERE slot_name = 's'}) eq 't',
	'the large transaction was streamed');
is($sub->safe_psql('postgres', q{SELECT count(*) FROM people WHERE note = 'prepared'}), '1',
	'the prepared transaction arrived after COMMIT PREPARED');

# Both clusters: after the sweep and a checkpoint, no value anywhere on disk.
for my $n ($pub, $sub)
{
	$n->poll_query_until('postgres', q{SELECT cluster_encryption = 'complete' FROM cmk_storage.status})
	  or die $n->name . ': the sweep did not complete';
	$n->safe_psql('postgres', 'CHECKPOINT');
	my @hits = map { files_containing($n->data_dir . "/$_", $m) } qw(base global pg_wal pg_replslot pg_logical);
	is(scalar(@hits), 0, $n->name . ': no written value in relation files, WAL or slot directories')
	  or diag("@hits");
}

$sub->safe_psql('postgres', 'DROP SUBSCRIPTION s');
$_->stop for ($pub, $sub);
done_testing();
