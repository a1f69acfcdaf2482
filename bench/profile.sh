#!/usr/bin/env bash
# Profile the scan queries of the benchmark (count(*), sum(abalance), COPY TO
# /dev/null) on a cmk_heap cluster with perf, and print the top symbols.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/profile.sh [options]

Creates one cluster (settings as in bench/run.sh), loads pgbench tables with
cmk_heap (or heap), then for each of  SELECT count(*),  SELECT sum(abalance)
and  COPY pgbench_accounts TO '/dev/null'  attaches 'perf record' to the
backend that runs the query in a loop and prints the top symbols and shared
objects.  perf attaches to that one backend only, so other work on the
machine does not show up.  perf.data files are kept under --outdir.

Options:
  --am cmk_heap|heap   table access method of the pgbench tables (default cmk_heap)
  --scale S            pgbench scale (default 10)
  --seconds N          seconds of looping per query (default 8)
  --top N              symbols to print per query (default 25)
  --callgraph          record call graphs (--call-graph dwarf; much bigger)
  --outdir DIR         where perf data and reports go (default bench/results/profile)
  --workdir DIR        parent of the scratch cluster directory (default /tmp)
  --keep               keep the cluster (stopped)
  --no-build           do not run make / make install
  --no-install-deps    do not apt-get install missing packages (incl. linux-perf)
  -h, --help           this text
EOF
}

TAM=cmk_heap; SCALE=10; SECS=8; TOP=25; CALLGRAPH=0; OUTDIR="$BENCH_DIR/results/profile"
WORKBASE="${TMPDIR:-/tmp}"; KEEP=0; BUILD=1; DEPS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --am) need_arg "$@"; TAM=$2; shift 2 ;;
        --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
        --seconds) need_arg "$@"; SECS=$2; shift 2 ;;
        --top) need_arg "$@"; TOP=$2; shift 2 ;;
        --callgraph) CALLGRAPH=1; shift ;;
        --outdir) need_arg "$@"; OUTDIR=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
case "$TAM" in cmk_heap|heap) ;; *) die "--am must be cmk_heap or heap" ;; esac
for v in SCALE SECS TOP; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done

if [ "$DEPS" = 1 ]; then ensure_packages; fi
require_perf

if [ "$BUILD" = 1 ]; then build_and_install; fi

single_cluster_workdir prof

cl_create prof "$(free_port 56432)" "$(shared_buffers_mb "$SCALE")MB" off
cl_start prof
cl_setup_db prof bench "$TAM"
cl_pgbench_init prof bench "$SCALE" "$TAM"

mkdir -p "$OUTDIR"
SO="$(pg_config_dir pkglibdir)/cmk_storage.so"
SO_SHA=$(sha256sum "$SO" | cut -c1-12)
declare -A QUERY=(
    [count]="SELECT count(*) FROM pgbench_accounts;"
    [sum]="SELECT sum(abalance) FROM pgbench_accounts;"
    [copyto]="COPY pgbench_accounts TO '/dev/null';"
)
SUMMARY=""
for q in count sum copyto; do
    sql="$WORK/$q.sql"
    pidfile="$WORK/$q.pid"
    # Time one execution to size the loop to about --seconds.
    ms=$(cl_psql prof bench -c '\timing on' -c "${QUERY[$q]}" -c "${QUERY[$q]}" -o /dev/null \
         | awk '/^Time:/ {t=$2} END {print t+0}')
    n=$(awk -v s="$SECS" -v ms="$ms" 'BEGIN{ n = int(s * 1000 / (ms > 1 ? ms : 1)); print (n < 3 ? 3 : n) }')
    {
        echo 'SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;'
        echo "\\o $pidfile.tmp"
        echo 'SELECT pg_backend_pid();'
        echo '\o /dev/null'
        echo "\\! mv $pidfile.tmp $pidfile"
        echo '\! sleep 1'      # let perf attach
        for _ in $(seq 1 "$n"); do echo "${QUERY[$q]}"; done
    } | as_pg bash -c "cat > '$sql'"
    say "profiling $q: ${ms} ms per run, $n runs"
    cl_psql prof bench -At -f "$sql" >/dev/null 2>"$WORK/$q.err" &
    psql_pid=$!
    for _ in $(seq 1 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
    backend=$(tr -dc '0-9' < "$pidfile" 2>/dev/null)
    [ -n "$backend" ] || { kill "$psql_pid" 2>/dev/null; die "no backend pid for $q: $(cat "$WORK/$q.err")"; }
    data="$OUTDIR/$TAM-$q.perf.data"
    cg=(); [ "$CALLGRAPH" = 1 ] && cg=(--call-graph dwarf)
    # perf stops by itself when the backend exits (psql disconnects at the end).
    perf record -q -F 999 "${cg[@]}" -p "$backend" -o "$data" >/dev/null 2>"$WORK/$q.perf.err" &
    perf_pid=$!
    wait "$psql_pid" || warn "$q: psql failed: $(head -c 300 "$WORK/$q.err")"
    wait "$perf_pid" || true
    [ -s "$data" ] || { warn "$q: perf wrote no data: $(cat "$WORK/$q.perf.err")"; continue; }
    report="$OUTDIR/$TAM-$q.txt"
    {
        echo "### $TAM: ${QUERY[$q]}  (${ms} ms per run, $n runs; cmk_storage.so sha256 $SO_SHA)"
        echo
        echo "by shared object:"
        perf report -i "$data" --stdio --no-children --sort dso 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' | head -8
        echo
        echo "top $TOP symbols:"
        perf report -i "$data" --stdio --no-children --sort dso,symbol 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' | head -"$TOP"
        echo
    } > "$report"
    cat "$report"
    SUMMARY+="$report "
done
say "reports and perf.data in $OUTDIR (perf report -i FILE to browse)"
if [ -f "$SO" ] && readelf -S "$SO" 2>/dev/null | grep -q "\.symtab"; then say "cmk_storage.so has its symbol table: its functions are named"; fi
