#!/usr/bin/env bash
# Where a pgbench transaction's time goes, heap vs cmk_heap: sample every
# CPU with perf's cpu-clock event while pgbench runs against each database
# of one server, and print the server processes' CPU time per transaction by
# shared object and, for cmk_storage.so and libcrypto, by function.  This
# is time, cache misses included, where bench/instructions.sh counts
# instructions; it needs no hardware counters (VMs often have none).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bench/pgbench_profile.sh [options]

Creates one cluster (settings as in bench/run.sh) with two databases whose
default access method is heap and cmk_heap, loads each with pgbench -i, then
runs the pgbench script against heap, then cmk_heap, under
'perf record -a -e cpu-clock' (CHECKPOINT before each).  Samples of the
server's processes (comm "postgres") are turned into CPU microseconds per
transaction: samples / frequency / transactions.  Prints, heap vs cmk_heap:
the total, each shared object, and the top functions of cmk_storage.so and
libcrypto.  perf.data files are kept under --outdir.

Options:
  --script tpcb|select  pgbench's built-in TPC-B or select-only (default tpcb)
  --scale S            pgbench scale (default 10)
  --seconds N          seconds of pgbench per database (default 15)
  --clients N          pgbench clients and threads (default 2)
  --freq HZ            samples per second per CPU (default 2999)
  --top N              functions of cmk_storage.so and libcrypto to print (default 20)
  --outdir DIR         where perf data and the report go (default bench/results/profile)
  --workdir DIR        parent of the scratch cluster directory (default /tmp)
  --keep               keep the cluster (stopped)
  --no-build           do not run make / make install
  --no-install-deps    do not apt-get install missing packages (incl. linux-perf)
  -h, --help           this text
EOF
}

SCRIPT=tpcb; SCALE=10; SECS=15; CLIENTS=2; FREQ=2999; TOP=20; OUTDIR="$BENCH_DIR/results/profile"
WORKBASE="${TMPDIR:-/tmp}"; KEEP=0; BUILD=1; DEPS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --script) need_arg "$@"; SCRIPT=$2; shift 2 ;;
        --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
        --seconds) need_arg "$@"; SECS=$2; shift 2 ;;
        --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
        --freq) need_arg "$@"; FREQ=$2; shift 2 ;;
        --top) need_arg "$@"; TOP=$2; shift 2 ;;
        --outdir) need_arg "$@"; OUTDIR=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) common_option "$@" || { usage >&2; die "unknown option: $1"; }
           shift "$SHIFT_N" ;;
    esac
done
case "$SCRIPT" in tpcb) PGB_ARGS=() ;; select) PGB_ARGS=(-S) ;; *) die "--script must be tpcb or select" ;; esac
for v in SCALE SECS CLIENTS FREQ TOP; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--$(echo "$v" | tr 'A-Z' 'a-z') must be a positive integer"
done

if [ "$DEPS" = 1 ]; then ensure_packages; fi
# system-wide sampling needs root or a low perf_event_paranoid
require_perf -a -e cpu-clock

if [ "$BUILD" = 1 ]; then build_and_install; fi

single_cluster_workdir prof

cl_create prof "$(free_port 56532)" "$(shared_buffers_mb "$SCALE")MB" off
cl_start prof
for db in heap cmk; do
    am=heap; [ "$db" = cmk ] && am=cmk_heap
    cl_setup_db prof "$db" "$am"
    cl_pgbench_init prof "$db" "$SCALE" "$am"
done

mkdir -p "$OUTDIR"
SO="$(pg_config_dir pkglibdir)/cmk_storage.so"
SO_SHA=$(sha256sum "$SO" | cut -c1-12)
declare -A TXNS
for db in heap cmk; do
    cl_psql prof "$db" -c CHECKPOINT
    data="$OUTDIR/pgbench-$SCRIPT-$db.perf.data"
    say "pgbench $SCRIPT on $db for ${SECS}s under perf"
    perf record -q -a -e cpu-clock -F "$FREQ" -o "$data" >/dev/null 2>"$WORK/perf-$db.err" &
    perf_pid=$!
    sleep 1     # let perf start sampling
    as_pg pgbench "${PGB_ARGS[@]}" -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" \
        -h "$WORK/sock" -p "$(cl_port prof)" "$db" >"$WORK/pgbench-$db.log" 2>&1
    rc=$?
    kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null
    [ "$rc" = 0 ] || { tail -20 "$WORK/pgbench-$db.log" >&2; die "pgbench on $db failed"; }
    [ -s "$data" ] || die "perf wrote no data: $(cat "$WORK/perf-$db.err")"
    TXNS[$db]=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]}' "$WORK/pgbench-$db.log")
    [[ ${TXNS[$db]} =~ ^[0-9]+$ ]] && [ "${TXNS[$db]}" -gt 0 ] || die "no transaction count from pgbench on $db"
    perf report -i "$data" --comm postgres --stdio --no-children -n --sort dso,symbol 2>/dev/null \
        | awk '!/^#/ && NF >= 5 { n = $2; dso = $3; $1 = ""; $2 = ""; $3 = ""; $4 = ""; sub(/^ +/, ""); sub(/( +-)+ *$/, ""); print n "\t" dso "\t" $0 }' \
        > "$WORK/samples-$db.tsv"
done

report="$OUTDIR/pgbench-$SCRIPT.txt"
python3 - "$WORK/samples-heap.tsv" "$WORK/samples-cmk.tsv" "${TXNS[heap]}" "${TXNS[cmk]}" "$FREQ" "$TOP" \
    "$SCRIPT" "$SECS" "$CLIENTS" "$SCALE" "$SO_SHA" > "$report" <<'PY' || die "report failed"
import collections, sys
fh, fc, th, tc, freq, top, script, secs, clients, scale, sha = sys.argv[1:]
th, tc, freq, top = int(th), int(tc), int(freq), int(top)
def load(path):
    by_dso, by_sym = collections.Counter(), collections.Counter()
    for line in open(path):
        n, dso, sym = line.rstrip("\n").split("\t", 2)
        if dso == "[kernel.kallsyms]":
            dso = "kernel"
        by_dso[dso] += int(n)
        by_sym[(dso, sym)] += int(n)
    return by_dso, by_sym
us = lambda samples, txns: samples * 1e6 / freq / txns
hd, _ = load(fh)       # by function: cmk_heap only
cd, cs = load(fc)
print(f"# pgbench {script}: server CPU time per transaction, heap vs cmk_heap (perf cpu-clock)")
print()
print(f"scale {scale}, {clients} clients, {secs} s per database; transactions: heap {th}, cmk_heap {tc};")
print(f"{freq} samples/s per CPU, processes named postgres only; cmk_storage.so sha256 {sha}")
print()
tot_h, tot_c = us(sum(hd.values()), th), us(sum(cd.values()), tc)
print("| shared object | heap µs | cmk_heap µs | difference |")
print("|---|---:|---:|---:|")
for dso in sorted(set(hd) | set(cd), key=lambda d: -(hd[d] + cd[d])):
    h, c = us(hd[dso], th), us(cd[dso], tc)
    if max(h, c) >= 0.05:
        print(f"| {dso} | {h:.2f} | {c:.2f} | {c - h:+.2f} |")
print(f"| **all** | **{tot_h:.1f}** | **{tot_c:.1f}** | **{tot_c - tot_h:+.1f}** ({tot_c / tot_h:.3f}) |")
print()
own = us(sum(n for d, n in cd.items() if d.startswith(("cmk_storage", "libcrypto"))), tc)
print(f"cmk_storage.so and libcrypto: {own:.1f} µs a transaction, {100 * own / tot_c:.1f} % of cmk_heap's")
print("server CPU time.  That share is the steady number; the totals (and the kernel's")
print("part of them) move with whatever else the machine does during each run.")
print()
print(f"cmk_heap's top functions in cmk_storage.so and libcrypto (µs per transaction):")
print()
print("| µs | shared object | function |")
print("|---:|---|---|")
ours = [(us(n, tc), d, s) for (d, s), n in cs.items() if d.startswith(("cmk_storage", "libcrypto"))]
for u, d, s in sorted(ours, reverse=True)[:top]:
    print(f"| {u:.2f} | {d} | {s} |")
print()
print("A sample is 1/freq s of one CPU, so the µs are CPU time, not latency; with")
print("two clients on two CPUs the transaction rate ratio follows the totals.")
PY
cat "$report"
say "report and perf.data in $OUTDIR (perf report -i FILE --comm postgres to browse)"
