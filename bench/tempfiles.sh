#!/usr/bin/env bash
# Temporary-file encryption (issue 19, item 6): a sort and a hash join that
# spill several times work_mem, on two clusters that differ only in
# cmk_storage.temp_file_encryption (off / on), measured in pairs in one run.
# The figure judged against the target (<= 1.15) is, per query, the median of
# the per-pair wall-clock ratios enc / plain.  See bench/README.md,
# "Temporary files".
#
# It reports; it never fails because of a ratio unless --check is given.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/tempfiles.sh [options]

Builds and installs cmk_storage, creates two PostgreSQL 15 clusters with
identical settings except cmk_storage.temp_file_encryption (off in "plain",
on in "enc"), loads the same two tables into both and times a spilling sort
and a spilling hash join in rounds: in each round each query runs in both
clusters back to back, plain first in odd rounds and enc first in even
ones.  Reports per query the median of the per-pair ratios enc / plain of
the wall-clock time (the figure the target applies to) with its
interquartile range, the same for the backend's CPU time, both clusters'
median times and what the query spilled.  Printed and saved to
bench/results/tempfiles-latest.md (samples: tempfiles-latest-raw.txt).

Options:
  --rounds N         rounds (default 16; --quick: 6); an even number gives
                     both orders as often
  --rows N           rows of each table (default 1000000; --quick: 200000)
  --work-mem SIZE    work_mem of both clusters (default 4MB; --quick: 1MB);
                     each query must spill at least 3 x this
  --quick            small and short (under a minute): to check that it works
  --workdir DIR      parent directory for the clusters (default $TMPDIR or /tmp)
  --keep             keep the clusters (stopped)
  --no-build         do not run make / make install
  --no-install-deps  do not apt-get install missing packages
  --output FILE      also write the report to FILE
  --check            exit 1 when a ratio misses the target
  -h, --help         this text

PG_BINDIR=/path/to/bin selects the server (default /usr/lib/postgresql/15/bin);
the build installs into that server's pg_config directories.
Exit status: 0 when it ran (or, with --check, both ratios are within the
target), 1 when --check found a ratio above it, 2 on an error.
EOF
}

ROUNDS=""; ROWS=""; WORK_MEM=""; QUICK=0; CHECK=0; OUTPUT=""
KEEP=0; BUILD=1; DEPS=1; WORKBASE=${TMPDIR:-/tmp}
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
        --rows) need_arg "$@"; ROWS=$2; shift 2 ;;
        --work-mem) need_arg "$@"; WORK_MEM=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --output) need_arg "$@"; OUTPUT=$2; shift 2 ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    : "${ROUNDS:=6}" "${ROWS:=200000}" "${WORK_MEM:=1MB}"
else
    : "${ROUNDS:=16}" "${ROWS:=1000000}" "${WORK_MEM:=4MB}"
fi
for v in ROUNDS ROWS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $WORK_MEM =~ ^[1-9][0-9]*(kB|MB|GB)$ ]] || die "--work-mem must look like 4MB (got '$WORK_MEM')"

TARGET=1.15
SPILL_MIN=3          # each query spills at least this many times work_mem
QUERIES="sort hash"
CLUSTERS="plain enc"
START_TS=$(date +%s)
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

[ "$DEPS" = 1 ] && ensure_packages
[ -x "$PG_BINDIR/postgres" ] || die "no PostgreSQL $PG_MAJOR at $PG_BINDIR"
[ "$BUILD" = 1 ] && build_and_install
SO="$(pg_config_dir pkglibdir)/cmk_storage.so"
[ -f "$SO" ] || die "$SO is not installed (drop --no-build)"
SO_SHA=$(sha256sum "$SO" | cut -c1-12)

WORK=$(make_workdir "$WORKBASE") || die "cannot create a work directory"
export WORK
cleanup() {
    local c
    for c in $CLUSTERS; do cl_stop "$c"; done
    if [ "$KEEP" = 1 ]; then say "kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# lib.sh's benchmark settings (no parallel query, no autovacuum, no JIT, no
# checkpoint inside a measurement); hash_mem_multiplier = 1 makes the hash
# join spill at work_mem like the sort; log_temp_files = 0 logs every temp
# file, for the spill check.
common="work_mem = '$WORK_MEM'
hash_mem_multiplier = 1
log_temp_files = 0"
cl_create plain "$(free_port 55432)" 256MB off "$common"
cl_create enc "$(free_port $(($(cl_port plain) + 1)))" 256MB off "$common
cmk_storage.temp_file_encryption = on"
cl_start plain
cl_start enc
grep -q "temporary file encryption is on" "$(cl_dir enc)/server.log" || die "the layer did not start in enc"
grep -q "temporary file encryption is on" "$(cl_dir plain)/server.log" && die "the layer started in plain"

say "loading 2 x $ROWS rows into each cluster"
for c in $CLUSTERS; do
    cl_psql "$c" postgres -c "CREATE TABLE a AS SELECT g AS k, md5(g::text) || md5((g * 7)::text) AS v
        FROM generate_series(1, $ROWS) g; CREATE TABLE b AS SELECT * FROM a ORDER BY random()" \
        -c "VACUUM ANALYZE a" -c "VACUUM ANALYZE b" -c "CHECKPOINT" || die "load failed in $c"
done
WORK_MEM_BYTES=$(cl_query plain postgres "SELECT pg_size_bytes(current_setting('work_mem'))")

# The backend's CPU time, read by the backend itself in the session that runs
# the query, before and after it: /proc/self/schedstat's first field is the
# time on a CPU in ns; without it (a kernel without CONFIG_SCHED_INFO)
# utime + stime from /proc/self/stat, in clock ticks.
CPU_SQL=""
if cl_query plain postgres "SELECT pg_read_file('/proc/self/schedstat')" >/dev/null 2>&1; then
    CPU_SQL="split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::numeric"
    CPU_SRC="/proc/self/schedstat"
elif cl_query plain postgres "SELECT pg_read_file('/proc/self/stat')" >/dev/null 2>&1; then
    tick_ns=$((1000000000 / $(getconf CLK_TCK)))
    CPU_SQL="(SELECT (f[12]::numeric + f[13]::numeric) * $tick_ns FROM string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ') f)"
    CPU_SRC="/proc/self/stat (utime + stime, $tick_ns ns ticks)"
else
    CPU_SRC="not available"
fi

# One psql script per query: the session's settings and an untimed EXPLAIN
# (loads the catalogs into the new backend), then the timed statement
# between two readings of the backend's CPU time.  Output: "@time" then
# psql's "Time: X ms", and "@cpu NS".
declare -A SCRIPT=()
query_script() {   # name settings statement
    local f="$WORK/$1.sql"
    {
        echo '\o /dev/null'
        [ -n "$2" ] && echo "$2"
        echo "EXPLAIN $3;"
        [ -n "$CPU_SQL" ] && echo "SELECT $CPU_SQL AS cpu0 \\gset"
        echo '\timing on'
        echo '\echo @time'
        echo "$3;"
        echo '\timing off'
        [ -n "$CPU_SQL" ] && echo "SELECT $CPU_SQL - :cpu0 AS cpu_ns \\gset" && echo '\echo @cpu :cpu_ns'
    } | as_pg bash -c "cat > '$f'"
    SCRIPT[$1]=$f
}
query_script sort "" "SELECT count(*) FROM (SELECT v FROM a ORDER BY v OFFSET 0) s"
query_script hash "SET enable_mergejoin = off; SET enable_nestloop = off;" \
    "SELECT count(*) FROM a JOIN b USING (k)"

declare -A S=()   # S[query:cluster:time|cpu]="v1 v2 ..." in measurement order
run_query() {     # query cluster [record] -> samples appended when "record"
    local q=$1 c=$2 out="$WORK/$2/$1.out" t cpu
    cl_psql "$c" postgres -f "${SCRIPT[$q]}" >"$out" 2>&1 || die "$q failed in $c: $(head -c 300 "$out")"
    t=$(awk '/^@time/ {m = 1; next} m && /^Time: / {print $2; exit}' "$out")
    [ -n "$t" ] || die "no time for $q in $c: $(head -c 300 "$out")"
    cpu=$(awk '/^@cpu / {printf "%.3f", $2 / 1e6}' "$out")
    [ "${3:-}" = record ] || return 0
    S[$q:$c:time]+=" $t"
    [ -n "$cpu" ] && S[$q:$c:cpu]+=" $cpu"
    return 0
}

# What a query spills, from the "temporary file: path ..., size N" lines the
# server logged while it ran: "files bytes largest".
declare -A SPILL=()
spill_of() {   # log offset-before
    tail -c +"$(($2 + 1))" "$1" | grep -o 'temporary file: path .*, size [0-9]*' \
        | awk '{n++; s += $NF; if ($NF > m) m = $NF} END {printf "%d %d %d", n, s, m}'
}

# Warm-up, untimed: each query once in each cluster, which also shows what it
# spills; it must be at least SPILL_MIN x work_mem, in both clusters.
say "warm-up and spill check"
for q in $QUERIES; do
    for c in $CLUSTERS; do
        log="$(cl_dir "$c")/server.log"
        before=$(stat -c %s "$log")
        run_query "$q" "$c"
        SPILL[$q:$c]=$(spill_of "$log" "$before")
        read -r n s _ <<< "${SPILL[$q:$c]}"
        [ "$n" -gt 0 ] || die "$q did not spill in $c (work_mem $WORK_MEM): use more --rows"
        [ "$s" -ge $((SPILL_MIN * WORK_MEM_BYTES)) ] \
            || die "$q spilled only $s bytes in $c, less than $SPILL_MIN x work_mem: use more --rows"
    done
done

say "$ROUNDS rounds of: sort, hash join, in both clusters back to back"
for r in $(seq 1 "$ROUNDS"); do
    # plain, enc in odd rounds; enc, plain in even ones: a drift of the
    # machine's speed then favours neither.
    order="plain enc"; [ $((r % 2)) -eq 0 ] && order="enc plain"
    for q in $QUERIES; do
        for c in $order; do run_query "$q" "$c" record; done
    done
    say "round $r/$ROUNDS done"
done

# --- report ------------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - START_TS ))
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
pairs() { paired_ratios "${S[$1:plain:$2]:-}" "${S[$1:enc:$2]:-}"; }   # query time|cpu
# "median (q1–q3)" of a list, or "n/a"
summary() {
    [ $# -gt 0 ] || { echo "n/a"; return; }
    awk -v m="$(median "$@")" -v a="$(percentile 25 "$@")" -v b="$(percentile 75 "$@")" \
        'BEGIN{printf "%.3f (%.3f–%.3f)", m, a, b}'
}
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b / 1048576}'; }
spilled() {   # query cluster -> "N files, X MB (K × work_mem)"
    local n s
    read -r n s _ <<< "${SPILL[$1:$2]}"
    echo "$n file$([ "$n" = 1 ] || echo s), $(mb "$s") MB ($((s / WORK_MEM_BYTES)) × work_mem)"
}
label() {
    case $1 in
        sort) echo "sort (\`SELECT count(*) FROM (SELECT v FROM a ORDER BY v OFFSET 0) s\`)" ;;
        hash) echo "hash join (\`SELECT count(*) FROM a JOIN b USING (k)\`, merge and nested-loop joins off)" ;;
    esac
}
ROWS_MD=""; VERDICTS=""; MISSED=0
for q in $QUERIES; do
    # shellcheck disable=SC2046
    set -- $(pairs "$q" time)
    wall=$(median "$@"); read -r lo hi <<< "$(median_ci "$@")"
    # shellcheck disable=SC2046,SC2086
    ROWS_MD+="| $q | $(awk -v v="$(median ${S[$q:plain:time]})" 'BEGIN{printf "%.1f", v}') | $(awk -v v="$(median ${S[$q:enc:time]})" 'BEGIN{printf "%.1f", v}') | **$(summary "$@")** | $(summary $(pairs "$q" cpu)) | $(spilled "$q" enc), largest $(mb "$(cut -d' ' -f3 <<< "${SPILL[$q:enc]}")") MB |"$'\n'
    if awk -v r="$wall" -v t="$TARGET" 'BEGIN{exit !(r <= t)}'; then
        v="within target"
    else
        v="outside target"; MISSED=$((MISSED + 1))
    fi
    # The IQR is the pairs' spread; whether the median is decided is what
    # its confidence interval says: when that holds the target, another run
    # may well land on the other side.
    awk -v a="$lo" -v b="$hi" -v t="$TARGET" 'BEGIN{exit !(a <= t && t <= b)}' \
        && v+=", but not decisively: the interval holds $TARGET (more --rounds, a quieter machine)"
    VERDICTS+="- $(label "$q"): $(awk -v m="$wall" -v a="$lo" -v b="$hi" 'BEGIN{printf "%.3f (95 %% confidence interval of the median %.3f–%.3f)", m, a, b}'), $v"$'\n'
done

REPORT="$WORK/report.md"
{
    echo "## cmk_storage benchmark: temporary-file encryption, enc vs plain"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, PostgreSQL $("$PG_BINDIR/pg_config" --version | awk '{print $2}'), cmk_storage.so ${SO_SHA}, $ROWS rows a table, work_mem $WORK_MEM, $ROUNDS rounds (each query in both clusters back to back, alternating order), took ${ELAPSED}s; 1-minute load average $LOAD_START at the start, $LOAD_END at the end."
    echo
    echo "| query | plain ms (median) | enc ms (median) | enc / plain, wall clock: median of paired ratios (IQR) | enc / plain, backend CPU time: median of paired ratios (IQR) | spilled in enc, one run |"
    echo "|---|---:|---:|---:|---:|---|"
    printf '%s' "$ROWS_MD"
    echo
    echo "Target (issue 19, item 6): the wall-clock median of paired ratios ≤ $TARGET."
    printf '%s' "$VERDICTS"
    echo
    echo "CPU time: the backend's own, from $CPU_SRC before and after the query; information only."
    echo "Plain spilled: sort $(spilled sort plain), hash join $(spilled hash plain)."
} > "$REPORT"
RAW="$WORK/raw.txt"
{
    echo "samples in measurement order (ms; round r is the r-th of each list)"
    for q in $QUERIES; do
        for k in time cpu; do
            echo "$q $k plain:${S[$q:plain:$k]:-}"
            echo "$q $k enc:  ${S[$q:enc:$k]:-}"
            echo "$q $k enc/plain:$(pairs "$q" "$k")"
        done
    done
} > "$RAW"

cat "$REPORT"
mkdir -p "$BENCH_DIR/results"
cp "$REPORT" "$BENCH_DIR/results/tempfiles-latest.md" 2>/dev/null || warn "could not write $BENCH_DIR/results/tempfiles-latest.md"
cp "$RAW" "$BENCH_DIR/results/tempfiles-latest-raw.txt" 2>/dev/null || true
[ -n "$OUTPUT" ] && cp "$REPORT" "$OUTPUT"

[ "$CHECK" = 1 ] && [ "$MISSED" -gt 0 ] && exit 1
exit 0
