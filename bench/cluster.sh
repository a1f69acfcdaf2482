#!/usr/bin/env bash
# cmk_storage benchmark: cluster encryption on vs the same settings off, two
# identical clusters measured alternately in one run.  See bench/README.md,
# "Cluster encryption: bench/cluster.sh".
#
# It reports ratios (on / off) next to the targets of issue 18; it never
# fails because of a ratio unless --check is given.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/cluster.sh [options]

Builds and installs cmk_storage, creates two PostgreSQL 15 clusters with
identical settings except cmk_storage.cluster_encryption (off in one, on in
the other), and measures in rounds, each metric off then on (on then off in
every other round): pgbench TPC-B and select-only, count(*) of a table larger
than shared_buffers (served from the OS page cache) and of one that stays in
shared_buffers, COPY FROM of 1 M rows into a fresh table, and a WAL-heavy
pgbench (inserts) with synchronous_commit = off.  Then the raw AES-256-XTS
speed of this machine per 8 kB page (bench/xts_page_speed.c, and
"openssl speed").  Prints a markdown report of on/off ratios, also saved to
bench/results/cluster-latest.md (raw samples: cluster-latest-raw.txt).

Options:
  --rounds N           rounds; each measures every metric in both clusters
                       (default 5; --quick: 3)
  --scale S            pgbench scale factor (default 10; --quick: 2)
  --duration SECS      seconds per pgbench run (default 10; --quick: 4)
  --clients N          pgbench clients and threads (default 2)
  --reps N             timed count(*) runs per table, cluster and round
                       (default 3; --quick: 2)
  --shared-buffers MB  shared_buffers of both clusters (default 256; --quick:
                       128).  The page-cache table is made 2 x this size, the
                       shared-buffers table 1/8 of it.
  --copy-rows N        rows loaded by the COPY FROM metric (default 1000000)
  --sync-commit on|off synchronous_commit of both clusters, so of TPC-B,
                       select-only and COPY (default on, PostgreSQL's
                       default); the WAL-heavy run always uses off
  --quick              small and short (~4 minutes): to check that it works
  --nice N             when root, servers and clients at this nice value
                       (default -10; 0 to disable)
  --workdir DIR        parent directory for the clusters (default $TMPDIR or /tmp)
  --keep               keep the clusters (stopped)
  --no-build           do not run make / make install
  --no-install-deps    do not apt-get install missing packages
  --output FILE        also write the report to FILE
  --check              exit 1 when a ratio misses its target
  -h, --help           this text

PG_BINDIR=/path/to/bin selects the server (default /usr/lib/postgresql/15/bin);
the build installs into that server's pg_config directories.
Exit status: 0 when every measurement ran, 1 when one failed (or, with
--check, a target was missed), 2 on a setup error.
EOF
}

ROUNDS=""; SCALE=""; DUR=""; CLIENTS=2; REPS=""; SB_MB=""; COPY_ROWS=1000000; SYNC=on
QUICK=0; NICE=-10; WORKBASE="${TMPDIR:-/tmp}"; KEEP=0; BUILD=1; DEPS=1; OUTPUT=""; CHECK=0

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
        --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
        --duration) need_arg "$@"; DUR=$2; shift 2 ;;
        --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
        --reps) need_arg "$@"; REPS=$2; shift 2 ;;
        --shared-buffers) need_arg "$@"; SB_MB=$2; shift 2 ;;
        --copy-rows) need_arg "$@"; COPY_ROWS=$2; shift 2 ;;
        --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --nice) need_arg "$@"; NICE=$2; shift 2 ;;
        --output) need_arg "$@"; OUTPUT=$2; shift 2 ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    : "${ROUNDS:=3}" "${SCALE:=2}" "${DUR:=4}" "${REPS:=2}" "${SB_MB:=128}"
else
    : "${ROUNDS:=5}" "${SCALE:=10}" "${DUR:=10}" "${REPS:=3}" "${SB_MB:=256}"
fi
for v in ROUNDS SCALE DUR CLIENTS REPS SB_MB COPY_ROWS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$SB_MB" -ge 32 ] || die "--shared-buffers must be at least 32 (MB)"
case "$SYNC" in on|off) ;; *) die "--sync-commit must be on or off" ;; esac
[[ $NICE =~ ^-?[0-9]+$ ]] && [ "$NICE" -ge -20 ] && [ "$NICE" -le 19 ] || die "--nice must be -20..19"
if is_root; then export BENCH_NICE=$NICE; else NICE=0; fi

START_TS=$(date +%s)
LOADS=""
note_load start
RESULTS_DIR="$BENCH_DIR/results"
DB=bench
CLUSTERS="off on"
declare -A S=()      # samples: S[metric:cluster]="v1 v2 ..." in measurement order
declare -A ERR=()

# --- setup -------------------------------------------------------------------
bench_check_server
command -v cc >/dev/null || die "no C compiler (cc) for bench/xts_page_speed.c"
bench_install_module
clusters_workdir

# Both clusters: lib.sh's benchmark settings (synchronous_commit, no
# autovacuum, no JIT, no parallel workers, no checkpoint inside a
# measurement) with the same shared_buffers; only "on" encrypts, from its
# first start (the postmaster creates the DEK before anything is written).
cl_create_all "${SB_MB}MB" "$SYNC" "on=cmk_storage.cluster_encryption = on"
for c in $CLUSTERS; do
    cl_setup_db "$c" "$DB" heap
    got=$(cl_query "$c" "$DB" "SHOW cmk_storage.cluster_encryption")
    [ "$got" = "$c" ] || die "cluster '$c' has cmk_storage.cluster_encryption = '$got'"
done

# Tables: pgbench's, plus
#   bench_big    2 x shared_buffers: a sequential scan of a table above
#                shared_buffers/4 reads through a 256 kB ring, so every scan
#                reads its pages from the OS page cache (and decrypts them);
#   bench_small  shared_buffers/8: stays in shared buffers once read;
#   bench_wal    the WAL-heavy run's insert target.
# Rows of 236 bytes with the line pointer: 34 to a page.
BIG_ROWS=$((SB_MB * 2 * 128 * 34))
SMALL_ROWS=$((SB_MB * 128 * 34 / 8))
for c in $CLUSTERS; do
    say "pgbench -i -s $SCALE and the scan tables in '$c'"
    as_pg pgbench -i -s "$SCALE" -h "$WORK/sock" -p "$(cl_port "$c")" "$DB" >"$WORK/$c/init.log" 2>&1 \
        || { tail -20 "$WORK/$c/init.log" >&2; die "pgbench -i failed in '$c'"; }
    cl_psql "$c" "$DB" >/dev/null <<SQL || die "could not create the scan tables in '$c'"
CREATE TABLE bench_big (id int NOT NULL, filler text NOT NULL);
INSERT INTO bench_big SELECT g, repeat('b', 200) FROM generate_series(1, $BIG_ROWS) g;
CREATE TABLE bench_small (id int NOT NULL, filler text NOT NULL);
INSERT INTO bench_small SELECT g, repeat('s', 200) FROM generate_series(1, $SMALL_ROWS) g;
CREATE TABLE bench_wal (id bigserial PRIMARY KEY, v text NOT NULL);
CREATE TABLE bench_copy (aid int NOT NULL, bid int, abalance int, filler char(84));
VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
SQL
done
BIG_BYTES=$(cl_query off "$DB" "SELECT pg_table_size('bench_big')")
SMALL_BYTES=$(cl_query off "$DB" "SELECT pg_table_size('bench_small')")
SB_BYTES=$((SB_MB * 1048576))
[ "$BIG_BYTES" -gt "$SB_BYTES" ] || die "bench_big ($BIG_BYTES bytes) is not larger than shared_buffers"
[ "$SMALL_BYTES" -lt $((SB_BYTES / 4)) ] || die "bench_small ($SMALL_BYTES bytes) is not below shared_buffers/4"

# Evidence that "on" encrypts and "off" does not: the marker (0x8000 in
# pd_flags, docs/io-layer.md) on the first page of bench_big's file.
for c in $CLUSTERS; do
    f="$WORK/$c/data/$(cl_query "$c" "$DB" "SELECT pg_relation_filepath('bench_big')")"
    flags=$(od -An -tu2 -j10 -N2 "$f" | tr -d ' ')
    marked=off; [ $((flags & 0x8000)) -ne 0 ] && marked=on
    raw "page marker of bench_big block 0 in '$c': pd_flags=$flags"
    [ "$marked" = "$c" ] || die "bench_big's first page in '$c' is $([ "$marked" = on ] && echo encrypted || echo plaintext)"
done

# Restart both: the INSERTs left much of bench_big in shared buffers, and a
# scan counts those pages as hits.  After the restart its scans read every
# page from the OS page cache (through the ring), while bench_small, read
# twice in the warm-up, stays in shared buffers.
for c in $CLUSTERS; do cl_stop "$c"; cl_start "$c"; done

# The COPY source: pgbench_accounts' row shape, COPY_ROWS rows.
COPY_FILE="$WORK/copy.data"
cl_psql off "$DB" -c "COPY (SELECT g, 1 + (g - 1) / 100000, 0, '' FROM generate_series(1, $COPY_ROWS) g) TO '$COPY_FILE'" >/dev/null \
    || die "could not write $COPY_FILE"

# The WAL-heavy script: 20 rows of 256 bytes and their index entries per
# transaction, about 7 kB of WAL.
WAL_SCRIPT="$WORK/wal.sql"
as_pg bash -c "cat > '$WAL_SCRIPT'" <<'SQL'
INSERT INTO bench_wal (v) SELECT repeat(md5(random()::text), 8) FROM generate_series(1, 20);
SQL

# --- one measurement of each metric --------------------------------------------------
# A psql script timing one statement ("@metric" then "Time: X ms"), after an
# untimed EXPLAIN that loads the catalogs into the new backend.
timed_sql() {   # metric table statement -> path of the script
    local f="$WORK/$1.sql"
    {
        echo '\o /dev/null'
        echo "EXPLAIN SELECT * FROM $2;"
        echo '\timing on'
        echo "\\echo @$1"
        echo "$3"
    } | as_pg bash -c "cat > '$f'"
    echo "$f"
}
SQL_COUNT_OS=$(timed_sql count_os bench_big "SELECT count(*) FROM bench_big;")
SQL_COUNT_SB=$(timed_sql count_sb bench_small "SELECT count(*) FROM bench_small;")
SQL_COPY=$(timed_sql copy bench_copy "COPY bench_copy FROM '$COPY_FILE';")

time_script() {   # metric cluster script
    local m=$1 c=$2 out="$WORK/$2/$1.out" v
    if cl_psql "$c" "$DB" -f "$3" >"$out" 2>"$out.err"; then
        v=$(awk '/^@/ {m=1; next} m && /^Time: / {print $2; exit}' "$out")
        if [ -n "$v" ]; then add_sample "$m" "$c" "$v"; raw "$m $c $v"; return; fi
    fi
    fail_metric "$m" "$m failed in '$c': $(head -c 300 "$out.err")"
}

run_pgbench() {   # metric cluster [pgbench args]; PGB_PGOPTIONS: the sessions' settings
    local m=$1 c=$2; shift 2
    PGB_PGOPTIONS=${PGB_PGOPTIONS:-} pgbench_sample "$m" "$c" "$WORK/$c/$m.log" "$DUR" "$@"
}

measure() {   # metric cluster
    local m=$1 c=$2 i
    case "$m" in
        tpcb)
            cl_psql "$c" "$DB" -c "CHECKPOINT" >/dev/null
            run_pgbench tpcb "$c" ;;
        select)
            run_pgbench select "$c" -S ;;
        count_os)
            for i in $(seq 1 "$REPS"); do time_script count_os "$c" "$SQL_COUNT_OS"; done ;;
        count_sb)
            for i in $(seq 1 "$REPS"); do time_script count_sb "$c" "$SQL_COUNT_SB"; done ;;
        copy)
            cl_psql "$c" "$DB" -c "TRUNCATE bench_copy" -c "CHECKPOINT" >/dev/null
            time_script copy "$c" "$SQL_COPY" ;;
        wal)
            cl_psql "$c" "$DB" -c "TRUNCATE bench_wal" -c "CHECKPOINT" >/dev/null
            PGB_PGOPTIONS="-c synchronous_commit=off" run_pgbench wal "$c" -n -f "$WAL_SCRIPT" ;;
    esac
}

# Warm-up, untimed: both scan tables read twice (the OS page cache holds
# bench_big, shared buffers bench_small), pgbench's tables once.
for c in $CLUSTERS; do
    cl_psql "$c" "$DB" -c "SELECT count(*) FROM bench_big" -c "SELECT count(*) FROM bench_big" \
        -c "SELECT count(*) FROM bench_small" -c "SELECT count(*) FROM bench_small" \
        -c "SELECT count(*), sum(abalance) FROM pgbench_accounts" >/dev/null || die "warm-up failed in '$c'"
    # Where each scan table's pages come from, for the raw file: bench_big
    # must read (from the OS), bench_small must hit shared buffers only.
    for t in bench_big bench_small; do
        b=$(cl_psql "$c" "$DB" -At -c "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, COSTS OFF) SELECT count(*) FROM $t" | grep -m1 'Buffers:' | sed 's/^ *//')
        raw "buffers $c $t: $b"
        case "$t:$b" in
            bench_big:*read=*) ;;
            bench_small:*read=*) warn "bench_small in '$c' was not entirely in shared buffers: $b" ;;
            bench_big:*) warn "bench_big in '$c' was served from shared buffers: $b" ;;
        esac
    done
done

METRICS="tpcb select count_os count_sb copy wal"
note_load rounds
say "$ROUNDS rounds of: TPC-B, select-only, WAL-heavy (${DUR}s each), count(*) x $REPS (page cache, shared buffers), COPY FROM $COPY_ROWS rows"
for r in $(seq 1 "$ROUNDS"); do
    # off, on in odd rounds; on, off in even ones: a drift in machine load
    # then favours neither.
    order="off on"; [ $((r % 2)) -eq 0 ] && order="on off"
    for m in $METRICS; do
        case "$m" in
            count_*)
                # One scan in each cluster in turn, REPS times: the pairs
                # are seconds apart, so a drift of the machine's speed
                # (a shared VM's) hits both sides of a pair alike.
                local_sql=$SQL_COUNT_OS; [ "$m" = count_sb ] && local_sql=$SQL_COUNT_SB
                for i in $(seq 1 "$REPS"); do
                    for c in $order; do time_script "$m" "$c" "$local_sql"; done
                done ;;
            *)
                for c in $order; do measure "$m" "$c"; done ;;
        esac
    done
    say "round $r/$ROUNDS done"
done
note_load cipher

# --- the cipher alone -----------------------------------------------------------------
XTS_BIN="$WORK/xts_page_speed"
XTS_LINES=""
declare -A XTS_US=()
if cc -O2 -o "$XTS_BIN" "$BENCH_DIR/xts_page_speed.c" $(pkg-config --cflags --libs libcrypto 2>/dev/null || echo -lcrypto) 2>"$WORK/xts_build.log" \
        && "$XTS_BIN" 2 >"$WORK/xts.out" 2>&1; then
    raw "xts_page_speed: $(tr '\n' ';' <"$WORK/xts.out")"
    while read -r dir pps mbs us; do
        XTS_US[$dir]=$us
        XTS_LINES+="| $dir | $(printf '%.0f' "$pps") | $mbs | $us |"$'\n'
    done <"$WORK/xts.out"
else
    fail_metric cipher "bench/xts_page_speed.c: $(head -c 300 "$WORK/xts_build.log" "$WORK/xts.out" 2>/dev/null)"
fi
# (its figure is in 1000s of bytes per CPU second)
OPENSSL_SPEED=$(timeout 60 openssl speed -evp aes-256-xts -bytes 8192 -seconds 2 2>/dev/null \
    | awk '/^AES-256-XTS/ {v = $2; sub(/k$/, "", v); printf "%.0f", v / 1000}')
raw "openssl speed -evp aes-256-xts -bytes 8192: ${OPENSSL_SPEED:-n/a}"

# --- report ------------------------------------------------------------------------------
note_load end
ELAPSED=$(( $(date +%s) - START_TS ))
# Paired ratios: in round r the k-th "on" sample with the k-th "off" one
# (the two were taken back to back).
paired() { paired_ratios "${S[$1:off]:-}" "${S[$1:on]:-}"; }
fmt() { [ -n "$1" ] || { echo "—"; return; }; awk -v v="$1" -v k="$2" 'BEGIN{ printf (k == "tps" ? "%.0f" : "%.1f"), v }'; }
ROWS=""; VERDICTS=""; MISSED=0
row() {   # metric label kind op target
    local m=$1 label=$2 kind=$3 op=$4 target=$5 rt sp v tgt
    # shellcheck disable=SC2046
    rt=$(median $(paired "$m")); [ -n "$rt" ] && rt=$(awk -v r="$rt" 'BEGIN{printf "%.3f", r}')
    if [ "$op" = ge ]; then tgt="≥ $target"; else tgt="≤ $target"; fi
    # shellcheck disable=SC2086
    sp=$(max_of "$(spread_pct ${S[$m:off]:-})" "$(spread_pct ${S[$m:on]:-})")
    # The ratio of the two best samples (fastest time, highest tps): other
    # work on the machine only ever slows a run down, so on a loaded machine
    # it is the steadier estimate.  Information only.
    local best=""
    # shellcheck disable=SC2086
    case "$kind" in
        ms)  best=$(awk -v a="$(min_of ${S[$m:off]:-})" -v b="$(min_of ${S[$m:on]:-})" 'BEGIN{ if (a > 0) printf "%.3f", b/a }') ;;
        tps) best=$(awk -v a="$(max_of ${S[$m:off]:-})" -v b="$(max_of ${S[$m:on]:-})" 'BEGIN{ if (a > 0) printf "%.3f", b/a }') ;;
    esac
    ROWS+="| $label | $(fmt "$(med "$m" off)" "$kind") | $(fmt "$(med "$m" on)" "$kind") | ${rt:-—} | ${best:-—} | $tgt | ${sp:-0} % |"$'\n'
    if [ -z "$rt" ]; then
        v="not measured${ERR[$m]:+: ${ERR[$m]}}"; MISSED=$((MISSED + 1))
    elif awk -v r="$rt" -v t="$target" -v op="$op" 'BEGIN{ exit !((op == "ge") ? r >= t : r <= t) }'; then
        v="within target"
    else
        v="outside target"; MISSED=$((MISSED + 1))
    fi
    VERDICTS+="- $label: $v"$'\n'
}
row tpcb     "pgbench TPC-B (synchronous_commit = $SYNC), tps" tps ge 0.97
row select   "pgbench select-only, tps" tps ge 0.99
row count_os "count(*) from the OS page cache ($(awk -v b="$BIG_BYTES" 'BEGIN{printf "%.0f", b/1048576}') MB table), ms" ms le 1.20
row count_sb "count(*) from shared_buffers ($(awk -v b="$SMALL_BYTES" 'BEGIN{printf "%.0f", b/1048576}') MB table), ms" ms le 1.02
row copy     "COPY FROM $COPY_ROWS rows into an empty table, ms" ms le 1.10
row wal      "WAL-heavy pgbench (20 × 256-byte inserts a transaction, synchronous_commit = off), tps" tps ge 0.95

# Where the page-cache scan's time goes: its extra time per page read against
# what the cipher alone takes to decrypt one page.
PER_PAGE=""
if [ -n "${XTS_US[decrypt]:-}" ] && [ -n "$(med count_os on)" ]; then
    PAGES=$((BIG_BYTES / 8192))
    PER_PAGE=$(awk -v on="$(med count_os on)" -v off="$(med count_os off)" -v p="$PAGES" -v c="${XTS_US[decrypt]}" 'BEGIN{
        d = (on - off) * 1000 / p;
        if (d > 0)
            printf "count(*) from the page cache: %.2f µs more per page read with encryption on (%d pages, %.1f vs %.1f ms); the cipher alone decrypts a page in %.2f µs (%.0f%% of the extra time).", d, p, on, off, c, 100 * c / d;
        else
            printf "count(*) from the page cache: %.2f µs less per page read with encryption on (%d pages, %.1f vs %.1f ms), although the cipher alone takes %.2f µs per page: the read-ahead saves more system-call time than decryption costs (docs/io-layer.md, \"Read-ahead\").", -d, p, on, off, c }')
fi

REPORT="$WORK/report.md"
{
    echo "## cmk_storage benchmark: cluster encryption on vs off"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, PostgreSQL $("$PG_BINDIR/pg_config" --version | awk '{print $2}'), cmk_storage.so ${SO_SHA}, $ROUNDS rounds (off/on alternating order), pgbench scale $SCALE, $CLIENTS clients, ${DUR}s per pgbench run, shared_buffers ${SB_MB} MB, synchronous_commit $SYNC, took ${ELAPSED}s."
    echo "1-minute load average: $LOADS (the benchmark itself accounts for up to ~$CLIENTS)."
    echo
    echo "| metric | off | on | on / off (median of paired ratios) | best on / best off | target | spread of samples |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    printf '%s' "$ROWS"
    echo
    printf '%s' "$VERDICTS"
    echo
    echo "AES-256-XTS on this machine, one core, per 8 kB relation page (8168 bytes after the clear header; CPU time, \`bench/xts_page_speed.c\`):"
    echo
    echo "| direction | pages/s | MB/s | µs/page |"
    echo "|---|---:|---:|---:|"
    printf '%s' "$XTS_LINES"
    echo
    echo "\`openssl speed -evp aes-256-xts -bytes 8192\` (one tweak for every block of a run): ${OPENSSL_SPEED:-n/a} MB/s."
    [ -n "$PER_PAGE" ] && { echo; echo "$PER_PAGE"; }
    if [ ${#ERR[@]} -gt 0 ]; then
        echo; echo "Failed measurements:"
        for k in "${!ERR[@]}"; do echo "- $k: ${ERR[$k]}"; done
    fi
} > "$REPORT"
{
    echo "samples in measurement order (off and on):"
    for m in $METRICS; do
        echo "$m off:${S[$m:off]:-}"
        echo "$m on: ${S[$m:on]:-}"
        echo "$m paired on/off:$(paired "$m")"
    done
} >> "$RAW"

cat "$REPORT"
mkdir -p "$RESULTS_DIR"
cp "$REPORT" "$RESULTS_DIR/cluster-latest.md" 2>/dev/null || warn "could not write $RESULTS_DIR/cluster-latest.md"
cp "$RAW" "$RESULTS_DIR/cluster-latest-raw.txt" 2>/dev/null || true
[ -n "$OUTPUT" ] && cp "$REPORT" "$OUTPUT"

[ ${#ERR[@]} -eq 0 ] || exit 1
[ "$CHECK" = 1 ] && [ "$MISSED" -gt 0 ] && exit 1
exit 0
