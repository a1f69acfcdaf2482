#!/usr/bin/env bash
# cmk_storage benchmark: heap vs cmk_heap on two identical clusters, measured
# alternately in the same run.  See bench/README.md.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/run.sh [options]

Builds and installs cmk_storage, creates two PostgreSQL 15 clusters with
identical settings (pgbench tables heap in one, cmk_heap in the other),
measures them alternately (heap, cmk, heap, cmk, ...) and prints a markdown
table of cmk_heap/heap ratios against the targets.  The heap cluster also
scans a heap table whose rows are padded to cmk_heap's stored length, to
tell the cost of longer rows from that of decryption.  The table is also
saved to bench/results/latest.md (raw samples in bench/results/latest-raw.txt).

Options:
  --runs N             rounds per metric; each round measures heap then cmk
                       (default 7; --quick: 3)
  --scale S            pgbench scale factor (default 10 = 1 M accounts rows)
  --fillfactor F       pgbench -i -F F in both clusters (default: pgbench's
                       100; cmk_heap rows grow by up to 8 bytes on their first
                       update, so update-heavy tables want some room)
  --duration SECS      seconds per pgbench run, TPC-B and select-only
                       (default TPC-B 15, select-only 8; --quick: 5 and 5)
  --tpcb-duration SECS   seconds per TPC-B run only
  --select-duration SECS seconds per select-only run only
  --clients N          pgbench clients and threads (default 2)
  --reps N             timed repetitions of each scan query per round
                       (default 3; --quick: 2)
  --quick              short run (~2 minutes): fewer rounds, shorter runs
  --nice N             when root, run servers and clients at this nice value
                       (default -10: a larger CPU share than other work on a
                       shared machine; 0 to disable)
  --sync-commit on|off synchronous_commit in both clusters (default off, so
                       TPC-B measures CPU, not this machine's fsync latency)
  --stream-args "ARGS" extra arguments for 'cmk_restore bench'
  --workdir DIR        parent directory for the clusters (default $TMPDIR or
                       /tmp); must be reachable by the postgres user
  --keep               keep the clusters (stopped) and print where they are
  --no-build           do not run make / make install
  --no-install-deps    do not apt-get install missing packages
  --output FILE        also write the markdown table to FILE
  --check              exit 1 when a target is not met (default: exit 0
                       whenever every measurement ran)
  -h, --help           this text

Exit status: 0 when every measurement ran, 1 when one failed (or, with
--check, a target was not met), 2 on a setup error.
EOF
}

RUNS=""; SCALE=10; FILLFACTOR=100; TPCB_DUR=""; SEL_DUR=""; CLIENTS=2; REPS=""; QUICK=0
SYNC=off; STREAM_ARGS=""; WORKBASE="${TMPDIR:-/tmp}"; KEEP=0; BUILD=1; DEPS=1
OUTPUT=""; CHECK=0; NICE=-10

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) need_arg "$@"; RUNS=$2; shift 2 ;;
        --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
        --fillfactor) need_arg "$@"; FILLFACTOR=$2; shift 2 ;;
        --duration) need_arg "$@"; TPCB_DUR=$2; SEL_DUR=$2; shift 2 ;;
        --tpcb-duration) need_arg "$@"; TPCB_DUR=$2; shift 2 ;;
        --select-duration) need_arg "$@"; SEL_DUR=$2; shift 2 ;;
        --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
        --reps) need_arg "$@"; REPS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
        --nice) need_arg "$@"; NICE=$2; shift 2 ;;
        --stream-args) need_arg "$@"; STREAM_ARGS=$2; shift 2 ;;
        --output) need_arg "$@"; OUTPUT=$2; shift 2 ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    : "${RUNS:=3}" "${TPCB_DUR:=5}" "${SEL_DUR:=5}" "${REPS:=2}"
else
    : "${RUNS:=7}" "${TPCB_DUR:=15}" "${SEL_DUR:=8}" "${REPS:=3}"
fi
for v in RUNS SCALE TPCB_DUR SEL_DUR CLIENTS REPS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
case "$SYNC" in on|off) ;; *) die "--sync-commit must be on or off" ;; esac
[[ $NICE =~ ^-?[0-9]+$ ]] && [ "$NICE" -ge -20 ] && [ "$NICE" -le 19 ] || die "--nice must be -20..19"
if is_root; then export BENCH_NICE=$NICE; else NICE=0; fi

START_TS=$(date +%s)
LOADS=""                     # 1-min load average when each phase starts
note_load start
RESULTS_DIR="$BENCH_DIR/results"
DB=bench
CLUSTERS="heap cmk"          # measurement order inside every round
declare -A AM=([heap]=heap [cmk]=cmk_heap)
declare -A S=()              # samples: S[metric:cluster]="v1 v2 ..."
declare -A ERR=()             # ERR[metric]="message" when a measurement failed

# --- setup -------------------------------------------------------------------
bench_check_server
if is_root; then getent passwd postgres >/dev/null || die "no 'postgres' user to run the servers as"; fi
bench_install_module
KEEP_START=cmk    # with --keep: how to start the cmk_heap cluster
clusters_workdir

# shared_buffers: several times the data (pgbench tables + COPY target), so a
# sequential scan of pgbench_accounts stays below the NBuffers/4 ring-buffer
# threshold and everything is served from shared buffers.  Two clusters run
# at once on a 24 GiB machine: cap each at 8 GB.
SB_MB=$((SCALE * 400)); [ "$SB_MB" -lt 1024 ] && SB_MB=1024
if [ "$SB_MB" -gt 8192 ]; then SB_MB=8192; warn "scale $SCALE: data may not fit in shared_buffers (8GB)"; fi

cl_create_all "${SB_MB}MB" "$SYNC"
for c in $CLUSTERS; do
    cl_setup_db "$c" "$DB" "${AM[$c]}"
done

# pgbench -i in each (timed, for information)
for c in $CLUSTERS; do
    say "pgbench -i -s $SCALE in '$c'"
    t0=$(date +%s.%N)
    as_pg pgbench -i -s "$SCALE" -F "$FILLFACTOR" -h "$WORK/sock" -p "$(cl_port "$c")" "$DB" >"$WORK/$c/init.log" 2>&1 \
        || { tail -20 "$WORK/$c/init.log" >&2; die "pgbench -i failed in '$c'"; }
    t1=$(date +%s.%N)
    add_sample init "$c" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
        am=$(cl_table_am "$c" "$DB" "$t")
        [ "$am" = "${AM[$c]}" ] || die "$t in '$c' uses access method '$am', expected '${AM[$c]}'"
    done
    cl_psql "$c" "$DB" -c "CHECKPOINT" >/dev/null
done
NROWS=$(cl_query heap "$DB" "SELECT count(*) FROM pgbench_accounts")

# A heap table whose rows are as long as cmk_heap's stored ones (filler
# widened by the 7-byte trailer of a freshly inserted cmk_heap tuple): the
# same number of pages and the same tuple stride.  Scanning it shows what the
# longer rows alone cost, so cmk_heap / padded heap is the decryption's share.
# (With format 3 the trailer fits the MAXALIGN slack of these rows, so the
# padded table is as large as heap's: a control that should read ~1.00.)
PAD=7
# pgbench -i loads with COPY FREEZE (all pages all-visible and frozen); a
# synchronous commit and VACUUM (FREEZE) give the padded table the same state.
cl_psql heap "$DB" -c "CREATE TABLE accounts_padded (aid int NOT NULL, bid int, abalance int, filler char($((84 + PAD)))) WITH (fillfactor = $FILLFACTOR)" \
    -c "SET synchronous_commit = on" \
    -c "INSERT INTO accounts_padded SELECT aid, bid, abalance, filler FROM pgbench_accounts" >/dev/null \
    || die "could not create accounts_padded"
cl_psql heap "$DB" -c "VACUUM (FREEZE) accounts_padded" -c "CHECKPOINT" >/dev/null
add_sample size_padded heap "$(cl_query heap "$DB" "SELECT pg_table_size('accounts_padded')")"
for c in $CLUSTERS; do
    add_sample size_accounts "$c" "$(cl_query "$c" "$DB" "SELECT pg_table_size('pgbench_accounts')")"
    raw "plan[$c] count(*): $(cl_psql "$c" "$DB" -At -c "SET enable_indexscan=off; SET enable_indexonlyscan=off; SET enable_bitmapscan=off; EXPLAIN SELECT count(*) FROM pgbench_accounts" | tr '\n' ' ')"
done

# Parse psql output where "@metric" lines (from \echo) precede "Time: X ms".
collect_timings() {
    local c=$1 file=$2 m v
    while read -r m v; do add_sample "$m" "$c" "$v"; raw "$m $c $v"; done < <(
        awk '/^@/ {m=substr($1,2); next} /^Time: / {if (m != "") print m, $2; m=""}' "$file")
}

# --- phase 1: scans from cache ---------------------------------------------------
# This VM flips between a fast and a slow state within seconds, so a heap sample
# and the cmk_heap sample it is paired with are taken one right after the other:
# each timed query is its own psql run (heap, cmk_heap, padded heap; then the
# next), after an untimed EXPLAIN that loads the catalogs into the new backend.
SCAN_QUERIES="count:SELECT count(*) FROM %s;
sum:SELECT sum(abalance) FROM %s;
copyto:COPY %s TO '/dev/null';"
scan_sql() {   # metric table -> path of a script timing that query once
    local m=$1 t=$2 q f="$WORK/scan-$1-$2.sql"
    q=$(printf '%s\n' "$SCAN_QUERIES" | sed -n "s/^$m://p")
    # shellcheck disable=SC2059
    printf -v q "$q" "$t"
    {
        echo '\o /dev/null'
        echo 'SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;'
        echo "EXPLAIN SELECT * FROM $t;"
        echo '\timing on'
        echo "\\echo @$m"
        echo "$q"
    } | as_pg bash -c "cat > '$f'"
    echo "$f"
}
declare -A SCAN_FILE
for m in count sum copyto; do
    for t in pgbench_accounts accounts_padded; do SCAN_FILE[$m:$t]=$(scan_sql "$m" "$t"); done
done
# warm-up, untimed: the tables into shared buffers, hint bits set
for c in $CLUSTERS; do
    tabs=pgbench_accounts; [ "$c" = heap ] && tabs="pgbench_accounts accounts_padded"
    for t in $tabs; do
        cl_psql "$c" "$DB" -c "SET enable_indexscan = off" -c "SET enable_bitmapscan = off" \
            -c "SELECT count(*), sum(abalance) FROM $t" -c "COPY $t TO '/dev/null'" >/dev/null 2>&1 \
            || die "warm-up scan of $t failed in '$c'"
    done
done

note_load scans
say "phase 1/4: count(*), sum(abalance), COPY TO /dev/null ($RUNS rounds x $REPS reps)"
for r in $(seq 1 "$RUNS"); do
    for _ in $(seq 1 "$REPS"); do
        for m in count sum copyto; do
            for c in $CLUSTERS pad; do
                cl=$c; t=pgbench_accounts; key=$m
                [ "$c" = pad ] && { cl=heap; t=accounts_padded; key=${m}_pad; }
                out="$WORK/$cl/scan.$key.out"
                if cl_psql "$cl" "$DB" -f "${SCAN_FILE[$m:$t]}" >"$out" 2>"$out.err"; then
                    sed -i "s/^@$m\$/@$key/" "$out"
                    collect_timings "$cl" "$out"
                else
                    fail_metric "$m" "$m failed in '$cl' on $t: $(head -c 300 "$out.err")"
                fi
            done
        done
    done
done

# --- phase 2: bulk COPY FROM into a fresh table --------------------------------
COPY_FILE="$WORK/accounts.copy"
cl_psql heap "$DB" -c "COPY pgbench_accounts TO '$COPY_FILE'" || die "could not write $COPY_FILE"
COPY_SQL="$WORK/copyfrom.sql"
as_pg bash -c "cat > '$COPY_SQL'" <<SQL
DROP TABLE IF EXISTS bench_copy;
CREATE TABLE bench_copy (LIKE pgbench_accounts);
CHECKPOINT;
\timing on
\echo @copyfrom
COPY bench_copy FROM '$COPY_FILE';
SQL
note_load copy
say "phase 2/4: COPY FROM $NROWS rows into a fresh table ($RUNS rounds)"
for r in $(seq 1 "$RUNS"); do
    for c in $CLUSTERS; do
        out="$WORK/$c/copy.$r.out"
        if cl_psql "$c" "$DB" -f "$COPY_SQL" >"$out" 2>"$out.err"; then
            collect_timings "$c" "$out"
            if [ "$r" = 1 ]; then
                am=$(cl_table_am "$c" "$DB" bench_copy)
                [ "$am" = "${AM[$c]}" ] || die "bench_copy in '$c' uses '$am', expected '${AM[$c]}'"
            fi
            add_sample size_copy "$c" "$(cl_query "$c" "$DB" "SELECT pg_table_size('bench_copy')")"
        else
            fail_metric copyfrom "COPY FROM failed in '$c': $(head -c 300 "$out.err")"
        fi
    done
done
for c in $CLUSTERS; do cl_psql "$c" "$DB" -c "DROP TABLE IF EXISTS bench_copy" -c "CHECKPOINT"; done

# --- phases 3 and 4: pgbench -------------------------------------------------------
run_pgbench() {   # metric cluster round duration [pgbench args]
    local m=$1 c=$2 r=$3 dur=$4; shift 4
    cl_psql "$c" "$DB" -c "CHECKPOINT" >/dev/null
    pgbench_sample "$m" "$c" "$WORK/$c/$m.$r.log" "$dur" "$@"
}

note_load select
say "phase 3/4: pgbench select-only (-S), $RUNS rounds x ${SEL_DUR}s per cluster"
for r in $(seq 1 "$RUNS"); do
    for c in $CLUSTERS; do run_pgbench select "$c" "$r" "$SEL_DUR" -S; done
done

note_load tpcb
say "phase 4/4: pgbench TPC-B, $RUNS rounds x ${TPCB_DUR}s per cluster"
for c in $CLUSTERS; do cl_query "$c" "$DB" "SELECT pg_stat_reset()" >/dev/null; done
for r in $(seq 1 "$RUNS"); do
    for c in $CLUSTERS; do run_pgbench tpcb "$c" "$r" "$TPCB_DUR"; done
done
sleep 1   # backends flush their table statistics when they exit
declare -A HOT=() UPD=() HOTN=()
for c in $CLUSTERS; do
    read -r UPD[$c] HOTN[$c] < <(cl_query "$c" "$DB" \
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'pgbench_accounts'" | tr '|' ' ')
    HOT[$c]=$(awk -v u="${UPD[$c]:-0}" -v h="${HOTN[$c]:-0}" 'BEGIN{ if (u > 0) printf "%.1f", 100*h/u }')
    raw "hot $c n_tup_upd=${UPD[$c]} n_tup_hot_upd=${HOTN[$c]}"
    [ -n "${HOT[$c]}" ] || fail_metric hot "no updates of pgbench_accounts counted in '$c'"
done

# --- stream tool ------------------------------------------------------------------
STREAM_LINES=""
find_stream_tool() {
    command -v cmk_restore 2>/dev/null && return
    find "$REPO" -path "$REPO/.git" -prune -o -type f -name cmk_restore -perm -u+x -print 2>/dev/null | head -1
}
STREAM_TOOL=$(find_stream_tool)
if [ -n "$STREAM_TOOL" ]; then
    say "stream throughput: $STREAM_TOOL bench $STREAM_ARGS"
    # shellcheck disable=SC2086
    if as_pg timeout 300 "$STREAM_TOOL" bench $STREAM_ARGS >"$WORK/stream.out" 2>&1; then
        rel=${STREAM_TOOL#"$REPO"/}
        if grep -qi 'MB/s' "$WORK/stream.out"; then
            STREAM_LINES="stream throughput (\`$rel bench${STREAM_ARGS:+ $STREAM_ARGS}\`):"
            while IFS= read -r l; do
                [ -n "$l" ] && STREAM_LINES+=$'\n'"- $l"
            done < <(head -12 "$WORK/stream.out")
        else
            STREAM_LINES="stream throughput: '$rel bench' printed no MB/s figure"
            ERR[stream]="no MB/s in the output of $rel bench"
        fi
    else
        STREAM_LINES="stream throughput: '$STREAM_TOOL bench' failed (exit $?): $(head -3 "$WORK/stream.out" | tr '\n' ' ')"
        ERR[stream]=failed
    fi
    raw "stream: $(cat "$WORK/stream.out")"
else
    STREAM_LINES="stream throughput: not available"
fi

# --- report ------------------------------------------------------------------------
note_load end
END_TS=$(date +%s)
ELAPSED=$((END_TS - START_TS))
fmt() {   # value kind
    [ -n "$1" ] || { echo "—"; return; }
    case "$2" in
        tps) awk -v v="$1" 'BEGIN{printf "%.0f", v}' ;;
        ms)  awk -v v="$1" 'BEGIN{printf "%.1f", v}' ;;
        mb)  awk -v v="$1" 'BEGIN{printf "%.1f MB", v/1048576}' ;;
        s)   awk -v v="$1" 'BEGIN{printf "%.1f", v}' ;;
        *)   echo "$1" ;;
    esac
}
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN{ if (a > 0) printf "%.3f", b/a }'; }

# paired ratios: cmk sample / heap sample of the same round and repetition
paired() {   # key [reference key, default the same] -> cmk / heap per sample
    paired_ratios "${S[${2:-$1}:heap]:-}" "${S[$1:cmk]:-}"
}
ROWS=""; VERDICTS=""; NOT_MET=0
row() {   # key label kind op target
    local key=$1 label=$2 kind=$3 op=$4 target=$5
    local h c rt verdict tgt
    h=$(med "$key" heap); c=$(med "$key" cmk)
    # The ratio is the median of the per-round paired ratios: heap and cmk_heap
    # run back to back, so slow changes in machine load cancel out.  Sizes
    # (one value per AM, or identical per round) come out the same either way.
    # shellcheck disable=SC2046
    rt=$(median $(paired "$key")); [ -n "$rt" ] && rt=$(awk -v r="$rt" 'BEGIN{printf "%.3f", r}')
    [ -n "$rt" ] || rt=$(ratio "$h" "$c")
    case "$op" in
        ge) tgt="≥ $target" ;;
        le) tgt="≤ $target" ;;
        *)  tgt="(info)" ;;
    esac
    ROWS+="| $label | $(fmt "$h" "$kind") | $(fmt "$c" "$kind") | ${rt:-—} | $tgt |"$'\n'
    [ "$op" = info ] && return
    if [ -z "$rt" ]; then
        verdict="NOT MET (not measured${ERR[$key]:+: ${ERR[$key]}})"; NOT_MET=$((NOT_MET + 1))
    elif awk -v r="$rt" -v t="$target" -v op="$op" 'BEGIN{ exit !((op == "ge") ? r >= t : r <= t) }'; then
        verdict="met"
    else
        verdict="NOT MET"; NOT_MET=$((NOT_MET + 1))
    fi
    local sp
    # shellcheck disable=SC2086
    sp=$(max_of "$(spread_pct ${S[$key:heap]:-})" "$(spread_pct ${S[$key:cmk]:-})")
    [ "${sp:-0}" -gt 20 ] && verdict+=" (noisy: samples of one AM span ${sp}% of their median)"
    # The best sample of each AM: other work on the machine only ever slows a
    # cached scan down, so when the medians are noisy this ratio is the
    # steadier estimate of the AM's own cost (information; the verdict stays
    # on the paired median).
    local best=""
    # shellcheck disable=SC2086
    case "$kind" in
        ms)  best=$(ratio "$(min_of ${S[$key:heap]:-})" "$(min_of ${S[$key:cmk]:-})") ;;
        tps) best=$(ratio "$(max_of ${S[$key:heap]:-})" "$(max_of ${S[$key:cmk]:-})") ;;
    esac
    VERDICTS+="- $label: ratio ${rt:-—}${best:+ (best samples: $best)}, target $tgt — **$verdict**"$'\n'
}

DUR_NOTE="median of $RUNS"
row tpcb   "pgbench TPC-B, tps ($DUR_NOTE × ${TPCB_DUR}s)" tps ge 0.95
row select "pgbench select-only -S, tps ($DUR_NOTE × ${SEL_DUR}s)" tps ge 0.97
# HOT share: values in %, "ratio" column is the difference in points
if [ -n "${HOT[heap]:-}" ] && [ -n "${HOT[cmk]:-}" ]; then
    HOT_DIFF=$(awk -v a="${HOT[heap]}" -v b="${HOT[cmk]}" 'BEGIN{printf "%+.1f", b-a}')
    kfmt() { awk -v n="$1" 'BEGIN{ printf (n >= 10000 ? "%.0fk" : "%d"), (n >= 10000 ? n/1000 : n) }'; }
    ROWS+="| HOT share of pgbench_accounts updates (after TPC-B) | ${HOT[heap]} % of $(kfmt "${UPD[heap]}") | ${HOT[cmk]} % of $(kfmt "${UPD[cmk]}") | ${HOT_DIFF} pts | within 5 pts |"$'\n'
    if awk -v d="$HOT_DIFF" 'BEGIN{ exit !(d <= 5 && d >= -5) }'; then v=met; else v="NOT MET"; NOT_MET=$((NOT_MET + 1)); fi
    # Fewer updates in the same time lower the share by themselves: the first
    # update on each full (fillfactor 100) page cannot be HOT.  Say so.
    if awk -v a="${UPD[heap]}" -v b="${UPD[cmk]}" 'BEGIN{ exit !(b < 0.9 * a || a < 0.9 * b) }'; then
        v+=" (updates: heap $(kfmt "${UPD[heap]}"), cmk_heap $(kfmt "${UPD[cmk]}"); the AM with fewer updates gets a lower share from that alone, see bench/README.md)"
    fi
    VERDICTS+="- HOT share: heap ${HOT[heap]} %, cmk_heap ${HOT[cmk]} %, difference ${HOT_DIFF} points, target within 5 points — **$v**"$'\n'
else
    ROWS+="| HOT share of pgbench_accounts updates (after TPC-B) | ${HOT[heap]:-—} | ${HOT[cmk]:-—} | — | within 5 pts |"$'\n'
    VERDICTS+="- HOT share: not measured — **NOT MET**"$'\n'; NOT_MET=$((NOT_MET + 1))
fi
row count    "SELECT count(*), ms ($NROWS rows, cached)" ms le 1.05
row sum      "SELECT sum(abalance), ms" ms le 1.15
row copyto   "COPY pgbench_accounts TO '/dev/null', ms" ms le 1.25
row copyfrom "COPY FROM file into a fresh table, ms ($NROWS rows)" ms le 1.15
row size_accounts "pg_table_size(pgbench_accounts)" mb le 1.12
row size_copy     "pg_table_size(COPY target)" mb le 1.12
row init     "pgbench -i -s $SCALE, s" s info ""

# cmk_heap against heap with rows of cmk_heap's stored length (info only)
PADDED=""
if [ -n "${S[count_pad:heap]:-}" ]; then
    PADDED="Heap with rows as long as cmk_heap's (\`accounts_padded\`: filler widened by the ${PAD}-byte trailer,"
    PADDED+=" $(fmt "$(med size_padded heap)" mb) vs cmk_heap's $(fmt "$(med size_accounts cmk)" mb)), scanned in the same rounds:"
    PADDED+=$'\n\n'"| query | heap | padded heap | cmk_heap | padded / heap | cmk_heap / padded |"$'\n'"|---|---:|---:|---:|---:|---:|"$'\n'
    for k in count sum copyto; do
        # shellcheck disable=SC2046
        PADDED+="| $k | $(fmt "$(med $k heap)" ms) | $(fmt "$(med ${k}_pad heap)" ms) | $(fmt "$(med $k cmk)" ms) |"
        PADDED+=" $(ratio "$(med $k heap)" "$(med ${k}_pad heap)") | $(median $(paired "$k" "${k}_pad") | awk '{printf "%.3f", $1}') |"$'\n'
    done
    PADDED+=$'\n'"The first ratio is the cost of the longer rows alone (more pages, a tuple stride that is no"
    PADDED+=$'\n'"multiple of the 64-byte cache line); the second, paired per round, what decryption adds on top."
fi

SPREAD=""
for k in tpcb:tps select:tps count:ms sum:ms copyto:ms copyfrom:ms; do
    kind=${k#*:}; k=${k%%:*}
    for c in $CLUSTERS; do
        [ -n "${S[$k:$c]:-}" ] || continue
        # shellcheck disable=SC2086
        SPREAD+="| $k ($kind) | ${AM[$c]} | $(echo ${S[$k:$c]} | wc -w) | $(fmt "$(min_of ${S[$k:$c]})" $kind) | $(fmt "$(med $k $c)" $kind) | $(fmt "$(max_of ${S[$k:$c]})" $kind) | $(for v in ${S[$k:$c]}; do printf '%s ' "$(fmt "$v" $kind)"; done) |"$'\n'
    done
    pr=$(paired "$k")
    # shellcheck disable=SC2086
    [ -n "$pr" ] && SPREAD+="| $k | paired ratio | $(echo $pr | wc -w) | $(min_of $pr) | $(median $pr) | $(max_of $pr) | $pr |"$'\n'
done

GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    GIT_REV="$GIT_REV + uncommitted changes"
fi
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REPORT=$(cat <<EOF
# cmk_storage benchmark: heap vs cmk_heap

- date: $(date -u '+%Y-%m-%d %H:%M UTC'); runtime $((ELAPSED / 60)) min $((ELAPSED % 60)) s; mode: $([ "$QUICK" = 1 ] && echo quick || echo full)
- machine: $(nproc) cores ($CPU), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)
- $("$PG_BINDIR/postgres" --version); cmk_storage at $GIT_REV, installed cmk_storage.so sha256 $SO_SHA
- two clusters, identical settings (servers and clients at nice $NICE): shared_buffers ${SB_MB}MB, synchronous_commit $SYNC, autovacuum off, jit off,
  max_parallel_workers_per_gather 0, max_wal_size 8GB, shared_preload_libraries cmk_storage (key: RSA 3072 file)
- 1-min load average at: $LOADS (the benchmark itself accounts for up to ~2; more means other work shared the 2 cores)
- pgbench scale $SCALE, fillfactor $FILLFACTOR, $CLIENTS clients/threads; $RUNS rounds, each round measures heap then cmk_heap;
  scan queries $REPS× per round (seq scan forced), each sample its own psql run, heap then cmk_heap then padded heap back to back;
  medians over all samples; CHECKPOINT before each pgbench run and each COPY FROM

| metric | heap | cmk_heap | ratio | target |
|---|---:|---:|---:|---|
$ROWS
heap and cmk_heap columns: medians.  Ratio: cmk_heap / heap, the median of the per-round paired ratios
(each cmk_heap sample over the heap sample taken just before it), so slow drifts in machine load cancel;
for tps higher is better, for times and sizes lower is better.

$VERDICTS
$PADDED

$STREAM_LINES

<details><summary>spread of samples</summary>

| metric | AM | n | min | median | max | samples in order |
|---|---|---:|---:|---:|---:|---|
$SPREAD
</details>
EOF
)
if [ ${#ERR[@]} -gt 0 ]; then
    REPORT+=$'\n\n'"Errors:"$'\n'
    for k in "${!ERR[@]}"; do REPORT+="- $k: ${ERR[$k]}"$'\n'; done
fi

echo
echo "$REPORT"
mkdir -p "$RESULTS_DIR"
echo "$REPORT" > "$RESULTS_DIR/latest.md"
cp "$RAW" "$RESULTS_DIR/latest-raw.txt"
[ -n "$OUTPUT" ] && echo "$REPORT" > "$OUTPUT"
say "saved to $RESULTS_DIR/latest.md (raw samples: latest-raw.txt); took ${ELAPSED}s"

if [ ${#ERR[@]} -gt 0 ]; then exit 1; fi  # a measurement failed
if [ "$CHECK" = 1 ] && [ "$NOT_MET" -gt 0 ]; then exit 1; fi
exit 0
