#!/usr/bin/env bash
# Run the cmk_heap workload on a server whose every process runs under
# valgrind memcheck, and fail if any error involves cmk_storage.so.
#
#   scripts/memcheck.sh [--no-build] [--regress] [--keep]
#
#   --no-build  test the module already installed (scripts/test.sh builds it)
#   --regress   also run the pg_regress files of sql/ (their cmk_heap
#               variants) on that server: several minutes more
#   --keep      keep the work directory (cluster, valgrind XML, logs)
#
# The postmaster is started as "valgrind ... postgres -D ..."; backends,
# parallel workers and background workers are forked from it and so run
# under valgrind too (--trace-children=yes covers what they exec).  The
# workload is test/valgrind/workload.sql.  test/valgrind/report.pl then reads
# one XML file per process: every error with a frame of cmk_storage.so on any
# of its stacks (where it happened, the block it touched, the origin of an
# uninitialised value) fails the run and is printed with its stacks; errors
# elsewhere are listed and do not fail it.  The stock Debian server is not
# built with USE_VALGRIND: palloc'd chunks are not marked, so memcheck sees
# uninitialised stack and malloc'd memory and invalid accesses, not misuse of
# palloc'd memory.  Ends with "memcheck ... ok" or "memcheck ... FAILED";
# exit status 0 or 1.  CMK_PG_BINDIR selects the server as for test.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=1
REGRESS=0
KEEP=0
for arg in "$@"; do
    case $arg in
        --no-build) BUILD=0 ;;
        --regress) REGRESS=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done

START=$(date +%s)
ensure_packages
[ "$BUILD" -eq 1 ] && build_and_install
command -v valgrind >/dev/null || die "valgrind is not installed"
PGSRC_DIR=$(pg_source_dir) || die "no PostgreSQL source tree for src/tools/valgrind.supp"
PG_SUPP=$PGSRC_DIR/src/tools/valgrind.supp
[ -f "$PG_SUPP" ] || die "$PG_SUPP not found"
MODULE=$("$PG_BINDIR/pg_config" --pkglibdir)/cmk_storage.so
[ -f "$MODULE" ] || die "$MODULE is not installed"

MC=$(make_workdir)
PORT=54397
DATA=$MC/data
VG=$MC/valgrind
tar -C "$REPO" --exclude=test/regress-oracle -cf - sql expected test | tar -C "$MC" -xf -
mkdir -p "$VG"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$MC"

pg_pid() { head -1 "$DATA/postmaster.pid" 2>/dev/null; }
psql_mc() { as_pg psql -X -q -h "$MC" -p "$PORT" "$@"; }

# Never leave the server running, whatever happens.
cleanup() {
    if [ -f "$DATA/postmaster.pid" ]; then
        as_pg pg_ctl stop -D "$DATA" -m immediate -w -t 120 >/dev/null 2>&1
    fi
    if [ "$KEEP" -eq 1 ] || [ "${RESULT:-1}" -ne 0 ]; then
        echo "memcheck work directory kept: $MC" >&2
    else
        rm -rf "$MC"
    fi
}
trap cleanup EXIT

say "memcheck: cluster in $MC"
as_pg initdb -D "$DATA" -A trust -N --no-instructions >/dev/null || die "initdb failed"
as_pg openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$MC/kek.pem" 2>/dev/null
chmod 600 "$MC/kek.pem"
# jit = off: the JIT's code has no symbols, and loading LLVM trips a known
# false positive in ld.so (strncmp over an rpath); cmk_heap slots are never
# JIT-deformed anyway.  autovacuum = off: the workload vacuums where it means
# to, and a run reports the same processes every time.  Cluster encryption
# on: every relation and WAL page, temporary file and read-ahead window of
# the workload goes through the I/O layer below fd.c under memcheck too
# (initdb's catalogs are swept by its background worker meanwhile), and
# shared_buffers is small so that pages are read back from the files (and
# sequential scans through read-ahead windows) all the time.
cat >> "$DATA/postgresql.conf" <<CONF
shared_preload_libraries = 'cmk_storage'
cmk_storage.key_uri = 'file://$MC/kek.pem'
cmk_storage.cluster_encryption = on
shared_buffers = 2MB
listen_addresses = ''
unix_socket_directories = '$MC'
port = $PORT
jit = off
autovacuum = off
wal_level = logical
fsync = off
log_line_prefix = '%m [%p] '
CONF

# One log per process (%p; forked backends reopen theirs).  --error-exitcode=1:
# a process with an error exits with status 1; for a backend that is an
# ordinary FATAL exit, so the postmaster does not restart the cluster, and
# the server log names the process next to its valgrind log.  Errors are
# counted from the logs, not from exit codes.  --fullpath-after= prints
# full source paths, by which report.pl knows cmk_storage's frames.
# --leak-check=no: PostgreSQL frees by memory context and at exit.
say "memcheck: starting the server under valgrind"
as_pg valgrind --quiet --tool=memcheck --track-origins=yes --trace-children=yes \
    --leak-check=no --num-callers=40 --error-exitcode=1 \
    --suppressions="$PG_SUPP" --suppressions="$REPO/test/valgrind/cmk_storage.supp" \
    --error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END --fullpath-after= \
    --log-file="$VG/%p.log" \
    postgres -D "$DATA" > "$MC/server.log" 2>&1 &
SERVER_JOB=$!

ready=0
for _ in $(seq 300); do
    if as_pg pg_isready -q -h "$MC" -p "$PORT" -U postgres; then ready=1; break; fi
    kill -0 "$SERVER_JOB" 2>/dev/null || break
    sleep 1
done
if [ "$ready" -ne 1 ]; then
    tail -20 "$MC/server.log" >&2
    perl "$REPO/test/valgrind/report.pl" "$MODULE" "$VG"
    die "the server did not start under valgrind"
fi
PM_PID=$(pg_pid)

FAILURES=()
psql_mc -d postgres -c 'CREATE DATABASE memcheck' || FAILURES+=("CREATE DATABASE failed")
psql_mc -d memcheck -c 'CREATE EXTENSION cmk_storage' || FAILURES+=("CREATE EXTENSION failed")
state=loading
while [ ${#FAILURES[@]} -eq 0 ] && [ "$state" = loading ] && [ "$(( $(date +%s) - START ))" -lt 600 ]; do
    sleep 1
    state=$(psql_mc -d memcheck -At -c 'SELECT state FROM cmk_storage.status' 2>/dev/null)
    [ -n "$state" ] || state=loading
done
[ ${#FAILURES[@]} -gt 0 ] || [ "$state" = available ] || FAILURES+=("the key is not available (state: $state)")

if [ ${#FAILURES[@]} -eq 0 ]; then
    say "memcheck: running test/valgrind/workload.sql"
    t0=$(date +%s)
    # bounded: a hang fails the run instead of stalling it
    if (cd "$MC" && as_pg timeout 1800 psql -X -h "$MC" -p "$PORT" -d memcheck \
            -v datafile="$MC/workload.data" -f test/valgrind/workload.sql) > "$MC/workload.out" 2>&1 \
        && grep -q '^memcheck workload complete$' "$MC/workload.out"; then
        echo "memcheck workload ... ok ($(( $(date +%s) - t0 )) s)"
    else
        echo "memcheck workload ... FAILED ($(( $(date +%s) - t0 )) s)"
        grep -E 'ERROR|FATAL|PANIC|server closed|connection to server' "$MC/workload.out" | head -20
        FAILURES+=("the workload failed")
    fi
fi

if [ "$REGRESS" -eq 1 ] && [ ${#FAILURES[@]} -eq 0 ]; then
    say "memcheck: pg_regress files (cmk_heap variants)"
    tests=$(cd "$MC/sql" && ls *.sql | sed 's/\.sql$//' | grep -v '_heap$' | sort | tr '\n' ' ')
    # shellcheck disable=SC2086
    (cd "$MC" && as_pg "$PGXS_DIR/src/test/regress/pg_regress" --bindir="$PG_BINDIR" \
        --host="$MC" --port="$PORT" --inputdir=. --outputdir=. \
        --dbname=contrib_regression $tests) > "$MC/pg_regress.log" 2>&1
    grep -E '\.\.\. +(ok|FAILED|failed)' "$MC/pg_regress.log"
    if grep -qE '\.\.\. +(FAILED|failed)' "$MC/pg_regress.log" || ! grep -q 'tests passed' "$MC/pg_regress.log"; then
        FAILURES+=("pg_regress under valgrind failed")
    fi
fi

[ "$(pg_pid)" = "$PM_PID" ] || FAILURES+=("the postmaster is gone or changed (PID $PM_PID, now $(pg_pid))")
say "memcheck: stopping the server"
as_pg pg_ctl stop -D "$DATA" -m fast -w -t 600 >/dev/null || FAILURES+=("the server did not stop")

# A crash shows in the server log even where valgrind saw nothing.
if grep -E 'terminated by signal|terminated by exception|reinitializing' "$MC/server.log" > "$MC/crashes.txt"; then
    FAILURES+=("a server process crashed")
    sed 's/^/  /' "$MC/crashes.txt" | head -20
fi

perl "$REPO/test/valgrind/report.pl" "$MODULE" "$VG" > "$MC/report.txt" 2>&1
rc=$?
cat "$MC/report.txt"
case $rc in
    0) ;;
    1) FAILURES+=("memcheck found errors involving cmk_storage.so") ;;
    *) FAILURES+=("no valgrind logs to read") ;;
esac

echo "memcheck: $(( $(date +%s) - START )) s in all"
if [ ${#FAILURES[@]} -eq 0 ]; then
    RESULT=0
    echo "memcheck ... ok"
    exit 0
fi
RESULT=1
printf '  %s\n' "${FAILURES[@]}"
echo "memcheck ... FAILED"
exit 1
