#!/usr/bin/env bash
# Count the CPU instructions the benchmark's scan and load queries execute
# per row, heap vs cmk_heap, with valgrind's callgrind.  Instruction counts
# are deterministic: where bench/run.sh's timings move by 10-15 % between
# runs on a shared VM, these move by well under 1 %, so they show whether a
# change to the code paths made them cheaper.  They say nothing about cache
# misses; confirm with bench/run.sh.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/instructions.sh [options]

Creates one cluster (settings as in bench/run.sh) with two databases, heap and
cmk_heap as their default access method, loads each with pgbench -i, then
restarts the server under valgrind --tool=callgrind and, for each query,
runs it once in one backend and three times in another (scans after one
run in a backend of its own, which sets the pages' hint bits): the
difference of the two backends' instruction counts, divided by two
executions and by the rows, is the query's cost per row without
connection, catalog-cache and warm-up costs.  Prints a table (also written to bench/results/instructions.md).

Queries: SELECT count(*), SELECT sum(abalance), COPY pgbench_accounts TO
'/dev/null' (sequential scans forced) and COPY FROM a file into a fresh table.
Then pgbench's TPC-B and select-only scripts, one client, fixed random seed:
a run of N transactions and one of 3N, each in its own backend, give the
instructions per transaction the same way.

Options:
  --scale S            pgbench scale (default 2: 200,000 rows)
  --workdir DIR        parent of the scratch directory (default /tmp)
  --only LIST          comma-separated subset of count,sum,copyto,copyfrom,tpcb,select
  --transactions N     pgbench transactions of the short run (default 500)
  --keep               keep the cluster (stopped) and the callgrind files
                       (callgrind/backends names the file of each query)
  --no-build           do not run make / make install
  --no-install-deps    do not apt-get install missing packages (incl. valgrind)
  -h, --help           this text
EOF
}

SCALE=2; TXNS=500; ONLY="count,sum,copyto,copyfrom,tpcb,select"; WORKBASE="${TMPDIR:-/tmp}"; KEEP=0; BUILD=1; DEPS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
        --only) need_arg "$@"; ONLY=$2; shift 2 ;;
        --transactions) need_arg "$@"; TXNS=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "--scale must be a positive integer"
[[ ,$ONLY, =~ ^(,(count|sum|copyto|copyfrom|tpcb|select))+,$ ]] || die "--only: unknown query in '$ONLY'"
wanted() { [[ ,$ONLY, == *,$1,* ]]; }
[[ $TXNS =~ ^[1-9][0-9]*$ ]] || die "--transactions must be a positive integer"

if [ "$DEPS" = 1 ]; then
    ensure_packages
    if ! command -v valgrind >/dev/null && is_root && command -v apt-get >/dev/null; then
        say "installing valgrind"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null || true
    fi
fi
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null \
    || die "valgrind is not installed (apt-get install valgrind)"
if [ "$BUILD" = 1 ]; then build_and_install; fi

WORK=$(make_workdir "$WORKBASE") || die "cannot create a work directory"
export WORK
CG="$WORK/callgrind"
PM_PID=""
cleanup() {
    if [ -n "$PM_PID" ]; then
        as_pg pg_ctl -D "$(cl_dir cg)/data" -m fast -w -t 300 stop >/dev/null 2>&1 || true
    fi
    cl_stop cg
    # Processes under valgrind write their profile as they exit, some after
    # the postmaster has: let them finish before the directory goes.
    for _ in $(seq 1 60); do
        pgrep -f -- "--callgrind-out-file=$CG/" >/dev/null || break
        sleep 0.5
    done
    if [ "$KEEP" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ROWS=$((SCALE * 100000))
cl_create cg "$(free_port 57432)" 1GB off
cl_start cg
for db in heap cmk; do
    am=heap; [ "$db" = cmk ] && am=cmk_heap
    cl_setup_db cg "$db" "$am"
    cl_pgbench_init cg "$db" "$SCALE" "$am"
done
COPY_FILE="$WORK/accounts.copy"
cl_psql cg heap -c "COPY pgbench_accounts TO '$COPY_FILE'" || die "could not write $COPY_FILE"
cl_stop cg

# The same server under callgrind: every process it forks is traced and
# writes its own file (cg.<pid>) when it exits.
say "starting the server under callgrind (slow: about a minute)"
as_pg mkdir -p "$CG"
d=$(cl_dir cg)
as_pg bash -c "cd '$CG' && exec valgrind --tool=callgrind --trace-children=yes \
    --callgrind-out-file='$CG/cg.%p' postgres -D '$d/data' -c huge_pages=off" \
    > "$WORK/valgrind.log" 2>&1 &
PM_PID=$!
for _ in $(seq 1 600); do
    state=$(cl_query cg cmk "SELECT state FROM cmk_storage.key_status()" 2>/dev/null)
    [ "$state" = available ] && break
    sleep 1
done
[ "${state:-}" = available ] || { tail -20 "$WORK/valgrind.log" >&2; die "server under callgrind not ready"; }

declare -A QUERY=(
    [count]="SELECT count(*) FROM pgbench_accounts"
    [sum]="SELECT sum(abalance) FROM pgbench_accounts"
    [copyto]="COPY pgbench_accounts TO '/dev/null'"
    [copyfrom]="COPY bench_copy FROM '$COPY_FILE'"
)
PREP="SET client_min_messages = warning; SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;"
# One backend running query q n times; prints its pid.
run_backend() {
    local db=$1 q=$2 n=$3 sql="$WORK/run.sql"
    {
        echo "$PREP"
        echo "SELECT pg_backend_pid();"
        for _ in $(seq 1 "$n"); do
            if [ "$q" = copyfrom ]; then
                echo "DROP TABLE IF EXISTS bench_copy; CREATE TABLE bench_copy (LIKE pgbench_accounts);"
            fi
            echo "${QUERY[$q]};"
        done
    } | as_pg bash -c "cat > '$sql'"
    cl_psql cg "$db" -At -f "$sql" | grep -E '^[0-9]+$' | head -1
}
# Instructions of the process with that pid, once its file is written.
total_of() {
    local f="$CG/cg.$1" v=""
    for _ in $(seq 1 120); do
        [ -s "$f" ] && v=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
        [ -n "$v" ] && break
        sleep 1
    done
    echo "$v"
}

declare -A PER_ROW
# The cost of one execution of q on db per unit (row or transaction): the
# backend that ran it three times (pid p3) minus the one that ran it once
# (p1), halved, over units.
record() {
    local q=$1 db=$2 p1=$3 p3=$4 units=$5 t1 t3
    # with --keep: which file is which, for callgrind_annotate
    printf '%s %s 1 cg.%s\n%s %s 3 cg.%s\n' "$q" "$db" "$p1" "$q" "$db" "$p3" >> "$CG/backends"
    t1=$(total_of "$p1"); t3=$(total_of "$p3")
    [ -n "$t1" ] && [ -n "$t3" ] || die "$q on $db: no callgrind totals"
    PER_ROW[$q:$db]=$(awk -v a="$t1" -v b="$t3" -v r="$units" 'BEGIN{ printf "%.0f", (b - a) / 2 / r }')
}
for q in count sum copyto copyfrom; do
    wanted "$q" || continue
    for db in heap cmk; do
        say "$q on $db"
        # a scan's first run sets hint bits: keep that out of both counts
        [ "$q" = copyfrom ] || run_backend "$db" "$q" 1 >/dev/null
        p1=$(run_backend "$db" "$q" 1)
        p3=$(run_backend "$db" "$q" 3)
        [ -n "$p1" ] && [ -n "$p3" ] || die "$q on $db: no backend pid"
        record "$q" "$db" "$p1" "$p3" "$ROWS"
    done
done

# pgbench: the client's backend is the one new file with the most
# instructions (pgbench also opens a short connection of its own first).
run_pgbench() {
    local db=$1 mode=$2 n=$3 before new f t best="" max=-1
    before=$(ls "$CG")
    as_pg pgbench -n -c 1 -t "$n" --random-seed=1 $mode -h "$WORK/sock" -p "$(cl_port cg)" \
        "$db" >"$WORK/pgbench-$db.log" 2>&1 || { tail -5 "$WORK/pgbench-$db.log" >&2; return 1; }
    sleep 2
    new=$(comm -13 <(echo "$before") <(ls "$CG") | grep '^cg\.[0-9]*$')
    for f in $new; do
        t=$(total_of "${f#cg.}")
        [ -n "$t" ] && [ "$t" -gt "$max" ] && { max=$t; best=${f#cg.}; }
    done
    [ -n "$best" ] || return 1
    echo "$best"
}
declare -A MODE=([tpcb]="" [select]="-S")
for q in tpcb select; do
    wanted "$q" || continue
    for db in heap cmk; do
        say "pgbench $q on $db ($TXNS and $((3 * TXNS)) transactions)"
        p1=$(run_pgbench "$db" "${MODE[$q]}" "$TXNS") || die "pgbench $q on $db failed"
        p3=$(run_pgbench "$db" "${MODE[$q]}" $((3 * TXNS))) || die "pgbench $q on $db failed"
        record "$q" "$db" "$p1" "$p3" "$TXNS"
    done
done

# A markdown table of the wanted ones among the given queries; false if none.
ratio_table() {
    local title=$1 q h c any=1
    shift
    for q in "$@"; do
        wanted "$q" || continue
        if [ "$any" = 1 ]; then
            echo "| $title | heap | cmk_heap | cmk_heap − heap | ratio |"
            echo "|---|---:|---:|---:|---:|"
            any=0
        fi
        h=${PER_ROW[$q:heap]}; c=${PER_ROW[$q:cmk]}
        awk -v n="$q" -v h="$h" -v c="$c" 'BEGIN{
            printf "| %s | %d | %d | %+d | %.3f |\n", n, h, c, c - h, (h > 0 ? c / h : 0) }'
    done
    return $any
}

SO="$(pg_config_dir pkglibdir)/cmk_storage.so"
OUT="$BENCH_DIR/results/instructions.md"
mkdir -p "$BENCH_DIR/results"
{
    echo "# Instructions, heap vs cmk_heap (callgrind)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); $ROWS rows (pgbench scale $SCALE)"
    echo "- cmk_storage at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), installed cmk_storage.so sha256 $(sha256sum "$SO" | cut -c1-12)"
    echo "- $("$PG_BINDIR/postgres" --version)"
    echo
    # (a table none of whose queries ran prints nothing: not an error)
    if ratio_table "query" count sum copyto copyfrom; then
        printf '%s\n' "" "Instructions per row of one execution (backend running it three times minus one" \
            "running it once, halved).  Counts, not time: cache misses do not show here." ""
    fi
    if ratio_table "pgbench script" tpcb select; then
        printf '%s\n' "" "Instructions per transaction in the server backend (pgbench -c 1 --random-seed=1:" \
            "$((3 * TXNS)) transactions minus $TXNS, halved, over $TXNS).  The client's work is not counted."
    fi
} | tee "$OUT"
