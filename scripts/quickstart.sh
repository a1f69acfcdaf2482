#!/usr/bin/env bash
# Quick start, end to end: install what is missing, build and install
# cmk_storage, create a cluster whose key is wrapped by a local RSA key file,
# create an encrypted table next to a plain one, and show that the encrypted
# table's file holds no plaintext while the plain one's and its index's do.
# Then turn cluster encryption on, let the sweep encrypt what was written
# before, and show that no relation file (the index included) and no WAL
# segment holds plaintext any more.
#
#   scripts/quickstart.sh                 key from a local RSA key file
#   scripts/quickstart.sh --azure         key in the local Azure Key Vault emulator,
#                                         fetched as a user-assigned managed identity
#   scripts/quickstart.sh [...] --keep    leave the cluster (and emulator) running
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KEEP=0
AZURE=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --azure) AZURE=1 ;;
        *) die "unknown option $arg (use --azure and/or --keep)" ;;
    esac
done

ensure_packages
build_and_install

DIR=$(make_workdir)
PORT=5433
EMU_PID=
cleanup_emulator() { [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null; true; }

if [ "$AZURE" -eq 1 ]; then
    # The emulator's one documented command: loopback port, state directory;
    # it prints the vault URL, the token endpoint and the CA file to trust.
    command -v node >/dev/null || die "Node.js is needed for the Key Vault emulator"
    as_pg bash -c "node '$REPO/emulator/kv-emulator.js' --port 0 --state-dir '$DIR/kv' > '$DIR/kv.out' 2> '$DIR/kv.err' & echo \$! > '$DIR/kv.pid'"
    EMU_PID=$(cat "$DIR/kv.pid")
    [ "$KEEP" -eq 1 ] || trap cleanup_emulator EXIT
    for _ in $(seq 100); do grep -qx ready "$DIR/kv.out" 2>/dev/null && break; sleep 0.1; done
    grep -qx ready "$DIR/kv.out" || die "the emulator did not start: $(cat "$DIR/kv.err")"
    VAULT_URL=$(sed -n 's/^vault_url=//p' "$DIR/kv.out")
    TOKEN_URL=$(sed -n 's/^token_url=//p' "$DIR/kv.out")
    ADMIN_URL=$(sed -n 's/^admin_url=//p' "$DIR/kv.out")
    CA_FILE=$(sed -n 's/^ca_file=//p' "$DIR/kv.out")
    # a user-assigned identity allowed Get, Wrap Key, Unwrap Key, and an RSA-3072 key
    CLIENT_ID=$(curl -sf -X POST "$ADMIN_URL/identities" \
        -d '{"name":"pg-server","permissions":["get","wrapKey","unwrapKey"]}' |
        sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')
    curl -sf -X POST "$ADMIN_URL/keys/cmk-kek" -d '{"key_size":3072}' >/dev/null
    say "Key Vault emulator at $VAULT_URL, key cmk-kek, identity $CLIENT_ID"
    KEY_CONF="cmk_storage.key_uri = '$VAULT_URL/keys/cmk-kek'
cmk_storage.azure_client_id = '$CLIENT_ID'
cmk_storage.azure_token_endpoint = '$TOKEN_URL'
cmk_storage.ca_file = '$CA_FILE'"
else
    as_pg openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$DIR/kek.pem" 2>/dev/null
    as_pg chmod 600 "$DIR/kek.pem"
    say "key file $DIR/kek.pem"
    KEY_CONF="cmk_storage.key_uri = 'file://$DIR/kek.pem'"
fi

say "cluster in $DIR/data (port $PORT)"
as_pg initdb -D "$DIR/data" -A trust -U postgres >/dev/null
as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null <<CONF
shared_preload_libraries = 'cmk_storage'
$KEY_CONF
port = $PORT
unix_socket_directories = '$DIR'
listen_addresses = ''
CONF
as_pg pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
for _ in $(seq 100); do
    st=$(as_pg psql -X -h "$DIR" -p "$PORT" -U postgres -d postgres -Atc \
        "SELECT 1" >/dev/null 2>&1 && echo up || true)
    [ "$st" = up ] && break; sleep 0.1
done

psql_q() { as_pg psql -X -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

psql_q -q <<'SQL'
CREATE EXTENSION cmk_storage;
-- the key worker unwraps (or creates) the key in the background
DO $$ BEGIN
  FOR i IN 1..300 LOOP
    EXIT WHEN (SELECT state <> 'loading' FROM cmk_storage.key_status());
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
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

# --- cluster encryption: every relation page and every WAL page -------------
psql_q -q -c "CREATE INDEX public_notes_note ON public_notes (note)" -c "CHECKPOINT"
idx_file="$DIR/data/$(psql_q -Atc "SELECT pg_relation_filepath('public_notes_note')")"
echo "before: lines with 'public note' in the index file: $(grep -c -a 'public note' "$idx_file" || true)"

say "cluster encryption on: restart; the sweep encrypts what was written before"
psql_q -q -c "ALTER SYSTEM SET cmk_storage.cluster_encryption = on"
as_pg pg_ctl -D "$DIR/data" -l "$DIR/server.log" -w restart >/dev/null
state=
for _ in $(seq 1200); do
    state=$(psql_q -Atc "SELECT cluster_encryption FROM cmk_storage.status" 2>/dev/null || true)
    [ "$state" = complete ] && break
    sleep 0.25
done
psql_q -x -c "SELECT s.cluster_encryption, p.blocks_scanned, p.blocks_rewritten,
                     p.wal_segments_rewritten, p.plaintext_pages_found
                FROM cmk_storage.status s, cmk_storage.cluster_encryption_progress p"
psql_q -q -c "INSERT INTO public_notes SELECT g, 'public note #' || g FROM generate_series(10001, 20000) g" \
          -c "CHECKPOINT"

idx_file="$DIR/data/$(psql_q -Atc "SELECT pg_relation_filepath('public_notes_note')")"
plain_file="$DIR/data/$(psql_q -Atc "SELECT pg_relation_filepath('public_notes')")"
idx_hits=$(grep -c -a 'public note' "$idx_file" || true)
tab_hits=$(grep -c -a 'public note' "$plain_file" || true)
wal_hits=$(cat "$DIR"/data/pg_wal/0* | grep -c -a -e 'public note' -e 'confidential diagnosis' || true)
echo "after:  lines with 'public note' in the index file ($idx_file): $idx_hits"
echo "        lines with 'public note' in the table file ($plain_file): $tab_hits"
echo "        lines with either value in the WAL segments ($(ls "$DIR"/data/pg_wal/0* | wc -l) files): $wal_hits"
echo "first bytes of an index page:"
od -A d -c "$idx_file" | sed -n '520,523p'
if [ "$state" != complete ] || [ "$idx_hits" -ne 0 ] || [ "$tab_hits" -ne 0 ] || [ "$wal_hits" -ne 0 ]; then
    echo "UNEXPECTED: cluster encryption is '$state', or plaintext is left (see the counts above)" >&2
    status=1
else
    echo "OK: cluster encryption is complete: no index, table or WAL file holds plaintext"
fi

if [ "$KEEP" -eq 1 ]; then
    echo "cluster running: psql -h $DIR -p $PORT -U postgres postgres   (stop: pg_ctl -D $DIR/data stop, as postgres)"
    [ -n "$EMU_PID" ] && echo "emulator running: pid $EMU_PID, admin API $ADMIN_URL"
else
    as_pg pg_ctl -D "$DIR/data" -m fast stop >/dev/null
    rm -rf "$DIR"
fi
exit $status
