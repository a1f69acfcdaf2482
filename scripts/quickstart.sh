#!/usr/bin/env bash
# Quick start, end to end: install what is missing, build and install
# cmk_storage, create a cluster whose key is wrapped by a local RSA key file,
# create an encrypted table next to a plain one, and show that the encrypted
# table's file holds no plaintext while the plain one's does.
#
#   scripts/quickstart.sh           run, then stop and remove the cluster
#   scripts/quickstart.sh --keep    leave the cluster running and say how to connect
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

ensure_packages
build_and_install

DIR=$(make_workdir)
PORT=5433
say "cluster in $DIR/data (port $PORT), key file $DIR/kek.pem"
as_pg openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$DIR/kek.pem" 2>/dev/null
as_pg chmod 600 "$DIR/kek.pem"
as_pg initdb -D "$DIR/data" -A trust -U postgres >/dev/null
as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null <<CONF
shared_preload_libraries = 'cmk_storage'
cmk_storage.key_uri = 'file://$DIR/kek.pem'
port = $PORT
unix_socket_directories = '$DIR'
listen_addresses = ''
CONF
as_pg pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null

psql_q() { as_pg psql -X -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

psql_q -q <<'SQL'
CREATE EXTENSION cmk_storage;
CREATE TABLE patients (id int PRIMARY KEY, name text, diagnosis text) USING cmk_heap;
CREATE TABLE public_notes (id int, note text) USING heap;
INSERT INTO patients SELECT g, 'Patient ' || g, 'confidential diagnosis #' || g FROM generate_series(1, 10000) g;
INSERT INTO public_notes SELECT g, 'public note #' || g FROM generate_series(1, 10000) g;
CHECKPOINT;
SQL
psql_q -c "SELECT state, provider, kek_id, dek_id, encrypted_relations FROM cmk_storage.status" -x
psql_q -c "SELECT * FROM patients WHERE id <= 3"

enc_file="$DIR/data/$(psql_q -Atc "SELECT pg_relation_filepath('patients')")"
plain_file="$DIR/data/$(psql_q -Atc "SELECT pg_relation_filepath('public_notes')")"
enc_hits=$(grep -c -a 'confidential diagnosis' "$enc_file" || true)
plain_hits=$(grep -c -a 'public note' "$plain_file" || true)
echo "file of the encrypted table ($enc_file): lines with 'confidential diagnosis': $enc_hits"
echo "file of the plain table     ($plain_file): lines with 'public note': $plain_hits"
echo "first bytes of a row in the encrypted file:"
od -A d -c "$enc_file" | sed -n '500,503p'

status=0
if [ "$enc_hits" -ne 0 ] || [ "$plain_hits" -eq 0 ]; then
    echo "UNEXPECTED: plaintext found in the encrypted table's file" >&2
    status=1
else
    echo "OK: the encrypted table's file holds no plaintext"
fi

if [ "$KEEP" -eq 1 ]; then
    echo "cluster running: psql -h $DIR -p $PORT -U postgres postgres   (stop: pg_ctl -D $DIR/data stop, as postgres)"
else
    as_pg pg_ctl -D "$DIR/data" -m fast stop >/dev/null
    rm -rf "$DIR"
fi
exit $status
