#!/usr/bin/env bash
# Temporary-file encryption: a sort and a hash join that spill several times
# work_mem, on two clusters that differ only in
# cmk_storage.temp_file_encryption (on / off), measured alternately in one
# run; prints the median time of each and the ratio encrypted / plain
# (target <= 1.15).  See bench/README.md, "Temporary files".
#
#   bench/tempfiles.sh [--rounds N] [--rows N] [--work-mem SIZE] [--keep]
#                      [--no-build] [--no-install-deps] [--workdir DIR]
set -uo pipefail
. "$(dirname "$0")/lib.sh"

ROUNDS=5
ROWS=1000000
WORK_MEM=4MB
KEEP=0
BUILD=1
DEPS=1
WORKBASE=${TMPDIR:-/tmp}
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
        --rows) need_arg "$@"; ROWS=$2; shift 2 ;;
        --work-mem) need_arg "$@"; WORK_MEM=$2; shift 2 ;;
        --help|-h) sed -n '2,10p' "$0"; exit 0 ;;
        *) common_option "$@" || die "unknown option $1"; shift "$SHIFT_N" ;;
    esac
done

[ "$DEPS" = 1 ] && ensure_packages
[ "$BUILD" = 1 ] && build_and_install

WORK=$(make_workdir "$WORKBASE") || die "cannot create a work directory"
export WORK
cleanup() {
    cl_stop plain; cl_stop enc
    if [ "$KEEP" = 1 ]; then say "kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

common="work_mem = '$WORK_MEM'
hash_mem_multiplier = 1
log_temp_files = 0"
cl_create plain "$(free_port 55432)" 256MB off "$common"
cl_create enc "$(free_port 55532)" 256MB off "$common
cmk_storage.temp_file_encryption = on"
cl_start plain
cl_start enc
grep -q "temporary file encryption is on" "$(cl_dir enc)/server.log" || die "the layer did not start in enc"

for c in plain enc; do
    cl_psql "$c" postgres -c "CREATE TABLE a AS SELECT g AS k, md5(g::text) || md5((g * 7)::text) AS v
        FROM generate_series(1, $ROWS) g; CREATE TABLE b AS SELECT * FROM a ORDER BY random()" \
        -c "VACUUM ANALYZE a" -c "VACUUM ANALYZE b" || die "load failed"
done

# The queries; each must spill: checked on the first run from the log.
SORT="SELECT count(*) FROM (SELECT v FROM a ORDER BY v OFFSET 0) s"
HASH="SET enable_mergejoin = off; SET enable_nestloop = off;
SELECT count(*) FROM a JOIN b USING (k)"

time_query() {   # cluster, sql -> milliseconds
    local out
    out=$(cl_psql "$1" postgres -At -c '\timing on' -c "$2" 2>&1) || die "query failed in $1: $out"
    echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1
}

declare -A T
for q in sort hash; do
    sql=$SORT; [ $q = hash ] && sql=$HASH
    # warm-up, once per cluster
    time_query plain "$sql" >/dev/null; time_query enc "$sql" >/dev/null
    for r in $(seq 1 "$ROUNDS"); do
        for c in plain enc; do
            T[$q.$c]="${T[$q.$c]:-} $(time_query $c "$sql")"
        done
    done
done

spill=$(grep -c "temporary file: path" "$(cl_dir enc)/server.log")
[ "$spill" -gt 0 ] || die "nothing spilled"
biggest=$(grep -o 'size [0-9]*' "$(cl_dir enc)/server.log" | awk '{print $2}' | sort -n | tail -1)

echo
echo "temporary-file encryption: $ROWS rows, work_mem $WORK_MEM, largest temp file $((biggest / 1048576)) MB, $ROUNDS rounds"
printf '%-6s %12s %12s %8s\n' query "plain ms" "enc ms" ratio
for q in sort hash; do
    p=$(median ${T[$q.plain]})
    e=$(median ${T[$q.enc]})
    printf '%-6s %12.1f %12.1f %8.3f\n' "$q" "$p" "$e" "$(echo "$e / $p" | bc -l)"
done
echo "target: ratio <= 1.15 (medians; the machine may be shared: indicative)"
