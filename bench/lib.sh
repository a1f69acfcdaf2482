# Helpers shared by the bench scripts (run.sh, cluster.sh, instructions.sh,
# profile.sh, pgbench_profile.sh).  Sourced, not executed.
#
# Deliberately self-contained (it does not source scripts/lib.sh) so that the
# benchmark keeps working while the test scripts change.

PG_MAJOR=15
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

BENCH_APT_PACKAGES="postgresql-$PG_MAJOR postgresql-contrib postgresql-server-dev-$PG_MAJOR
  libssl-dev libcurl4-openssl-dev libjansson-dev pkg-config make gcc openssl"

say()  { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 2; }
# An option that takes a value must have one: need_arg "$@" in the parser.
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }

# The options every bench script takes: --workdir, --keep, --no-build and
# --no-install-deps.  common_option "$@" sets WORKBASE, KEEP, BUILD or DEPS
# and SHIFT_N (the arguments it used); it returns 1 for any other option.
common_option() {
    case "$1" in
        --workdir) need_arg "$@"; WORKBASE=$2; SHIFT_N=2 ;;
        --keep) KEEP=1; SHIFT_N=1 ;;
        --no-build) BUILD=0; SHIFT_N=1 ;;
        --no-install-deps) DEPS=0; SHIFT_N=1 ;;
        *) return 1 ;;
    esac
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Install the Debian packages that are missing (root only).
ensure_packages() {
    local missing=() p
    for p in $BENCH_APT_PACKAGES "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    is_root || die "missing packages (${missing[*]}); run as root or install them"
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# Build and install the extension (incremental: no 'make clean', other people
# may be building in the same tree).
build_and_install() {
    # PG_CONFIG of the server under test: a relocated copy (PG_BINDIR) gets
    # the module, never the system installation.
    local pgc="$PG_BINDIR/pg_config"
    say "building and installing cmk_storage (make -C $REPO PG_CONFIG=$pgc install)"
    local log
    log=$(mktemp)
    if ! make -C "$REPO" -s PG_CONFIG="$pgc" >"$log" 2>&1 || ! make -C "$REPO" -s PG_CONFIG="$pgc" install >>"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        die "build/install failed"
    fi
    rm -f "$log"
    [ -f "$(pg_config_dir pkglibdir)/cmk_storage.so" ] || die "cmk_storage.so not installed"
}

pg_config_dir() { "$PG_BINDIR/pg_config" --"$1"; }

# A scratch directory the server user owns; PostgreSQL refuses to run as root.
make_workdir() {
    local base=${1:-${TMPDIR:-/tmp}} d
    d=$(mktemp -d "$base/cmk_bench.XXXXXX")
    chmod 755 "$d"
    if is_root; then chown postgres:postgres "$d"; fi
    echo "$d"
}

# Run a command as the postgres user when we are root, else as ourselves.
# Runs from $WORK when set, a directory that user owns.
as_pg() {
    (
        if [ -n "${WORK:-}" ]; then cd "$WORK" || exit 2; fi
        if is_root && [ "${BENCH_NICE:-0}" != 0 ]; then
            # BENCH_NICE (root only): a negative value gives the servers and
            # clients a larger CPU share than other work on a shared machine.
            # The kernel's scheduler autogroups rank sessions by the session's
            # own nice value, so run in a session of our own and set that.
            exec setsid -w bash -c 'echo "$0" > /proc/self/autogroup 2>/dev/null
                exec nice -n "$0" runuser -u postgres -- "$@"' \
                "$BENCH_NICE" env PATH="$PG_BINDIR:$PATH" LC_ALL=C.UTF-8 "$@"
        elif is_root; then
            exec runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" LC_ALL=C.UTF-8 "$@"
        else
            exec env PATH="$PG_BINDIR:$PATH" LC_ALL=C.UTF-8 "$@"
        fi
    )
}

# A free TCP port on 127.0.0.1 (the servers listen there and on a socket).
free_port() {
    local p=${1:-55432}
    while (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null || [ -e "/tmp/.s.PGSQL.$p" ]; do
        p=$((p + 1))
    done
    echo "$p"
}

# --- clusters ---------------------------------------------------------------
# A cluster is described by NAME: its data directory is $WORK/NAME/data, its
# socket directory $WORK/sock, its port is in $WORK/NAME/port.

cl_dir()  { echo "$WORK/$1"; }
cl_port() { cat "$WORK/$1/port"; }

# psql against database DB of cluster NAME, extra args follow.
cl_psql() {
    local name=$1 db=$2; shift 2
    as_pg psql -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$(cl_port "$name")" -d "$db" "$@"
}

# One value from a query.
cl_query() {
    cl_psql "$1" "$2" -At -c "$3"
}

# initdb + postgresql.conf with the settings both clusters share.
#   cl_create NAME PORT SHARED_BUFFERS SYNC_COMMIT [extra conf lines]
cl_create() {
    local name=$1 port=$2 sb=$3 sync=$4 extra=${5:-}
    local d
    d=$(cl_dir "$name")
    as_pg mkdir -p "$d" "$WORK/sock"
    as_pg bash -c "echo $port > '$d/port'"
    as_pg openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$d/kek.pem" 2>/dev/null \
        || die "openssl genpkey failed"
    as_pg chmod 600 "$d/kek.pem"
    as_pg initdb -D "$d/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$d/initdb.log" 2>&1 \
        || { cat "$d/initdb.log" >&2; die "initdb $name failed"; }
    as_pg bash -c "cat >> '$d/data/postgresql.conf'" <<CONF

# ---- cmk_storage benchmark: identical in every benchmark cluster ----
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$WORK/sock'
shared_preload_libraries = 'cmk_storage'
cmk_storage.key_uri = 'file://$d/kek.pem'
shared_buffers = $sb
huge_pages = try
max_connections = 20
synchronous_commit = $sync
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
autovacuum = off
jit = off
max_parallel_workers_per_gather = 0
track_counts = on
logging_collector = off
log_checkpoints = off
$extra
CONF
}

cl_start() {
    local d
    d=$(cl_dir "$1")
    as_pg pg_ctl -D "$d/data" -l "$d/server.log" -w -t 120 start >/dev/null \
        || { tail -30 "$d/server.log" >&2; die "could not start cluster $1"; }
    cl_renice "$1"
}

# With the kernel's scheduler autogroups (sched_autogroup_enabled=1), nice
# only ranks processes within one session; between sessions the autogroup's
# own nice value counts.  pg_ctl puts the postmaster in a session of its own,
# so give that session (and so every backend) BENCH_NICE too.  Root only.
cl_renice() {
    local d pid
    is_root && [ "${BENCH_NICE:-0}" != 0 ] || return 0
    d=$(cl_dir "$1")
    pid=$(head -1 "$d/data/postmaster.pid" 2>/dev/null)
    [ -n "$pid" ] && [ -w "/proc/$pid/autogroup" ] && echo "$BENCH_NICE" > "/proc/$pid/autogroup" 2>/dev/null
    return 0
}

cl_stop() {
    local d
    d=$(cl_dir "$1")
    [ -f "$d/data/postmaster.pid" ] || return 0
    as_pg pg_ctl -D "$d/data" -m fast -w -t 120 stop >/dev/null 2>&1 || true
}

# Create database DB with the extension, wait for the key to be available and,
# when AM is not heap, make AM the database's default table access method.
cl_setup_db() {
    local name=$1 db=$2 am=$3
    as_pg createdb -h "$WORK/sock" -p "$(cl_port "$name")" "$db" || die "createdb failed"
    cl_psql "$name" "$db" -c "CREATE EXTENSION cmk_storage" || die "CREATE EXTENSION failed in $name"
    local state
    for _ in $(seq 1 120); do
        state=$(cl_query "$name" "$db" "SELECT state FROM cmk_storage.key_status()")
        [ "$state" = "available" ] && break
        [ "$state" = "loading" ] || die "key state in $name is '$state': $(cl_query "$name" "$db" "SELECT reason || ' ' || coalesce(hint,'') FROM cmk_storage.key_status()")"
        sleep 0.5
    done
    [ "$state" = "available" ] || die "key never became available in $name"
    if [ "$am" != heap ]; then
        cl_psql "$name" "$db" -c "ALTER DATABASE $db SET default_table_access_method = $am" \
            || die "could not set default_table_access_method"
    fi
}

# The table access method of a table.
cl_table_am() {
    cl_query "$1" "$2" "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = '$3'::regclass"
}

# --- statistics -------------------------------------------------------------
# median of the numbers given as arguments
median() {
    [ $# -gt 0 ] || { echo ""; return; }
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR%2) printf "%.12g\n", a[(NR+1)/2]; else printf "%.12g\n", (a[NR/2]+a[NR/2+1])/2}'
}
# relative spread (max - min) / median of the arguments, in percent
spread_pct() {
    [ $# -gt 1 ] || { echo 0; return; }
    local m
    m=$(median "$@")
    printf '%s\n' "$@" | sort -g | awk -v m="$m" 'NR==1 {lo=$1} {hi=$1} END {printf "%.0f\n", (m > 0) ? 100*(hi-lo)/m : 0}'
}
# the P-th percentile (0..100) of the numbers after P, interpolated between
# ranks (R's type 7): percentile 25 ... and percentile 75 ... give the
# interquartile range
percentile() {
    local p=$1; shift
    [ $# -gt 0 ] || { echo ""; return; }
    printf '%s\n' "$@" | sort -g | awk -v p="$p" '{a[NR]=$1} END {
        h = (NR - 1) * p / 100 + 1; l = int(h); v = a[l]
        if (l < NR) v += (h - l) * (a[l + 1] - a[l])
        printf "%.12g\n", v }'
}
# "LO HI": a distribution-free 95 % confidence interval of the median of the
# numbers given (the k-th smallest and k-th largest, k from the normal
# approximation of the sign test; the whole range below 6 numbers)
median_ci() {
    [ $# -gt 0 ] || { echo ""; return; }
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        k = int((NR - 1.96 * sqrt(NR)) / 2); if (k < 1) k = 1
        printf "%.12g %.12g\n", a[k], a[NR + 1 - k] }'
}
# Ratios NEW / BASE of two sample lists taken in pairs, the k-th of each list
# measured right after one another: paired_ratios "BASE..." "NEW...".  The
# median of these, not the ratio of two medians, is what the bench scripts
# report: a drift of a shared VM's speed hits both samples of a pair alike.
paired_ratios() {
    printf '%s\n%s\n' "$1" "$2" | awk 'NR == 1 {n = split($0, a)} NR == 2 {
        m = split($0, b); for (i = 1; i <= n && i <= m; i++) if (a[i] > 0) printf " %.4f", b[i] / a[i]
        print "" }'
}
min_of() { printf '%s\n' "$@" | sort -g | head -1; }
max_of() { printf '%s\n' "$@" | sort -g | tail -1; }

# For the profiling scripts: perf installed (linux-perf, when DEPS=1 and
# root) and able to record with the given options here, or say why not and
# exit 0 without a profile: containers and some VMs forbid sampling.
require_perf() {
    if [ "${DEPS:-1}" = 1 ] && ! command -v perf >/dev/null && is_root && command -v apt-get >/dev/null; then
        say "installing linux-perf"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null || true
    fi
    if ! command -v perf >/dev/null; then
        echo "perf is not installed (apt-get install linux-perf) — no profile taken."
        exit 0
    fi
    local out
    out=$(mktemp)
    if ! perf record -q "$@" -o "$out" -- true >/dev/null 2>"$out.err"; then
        echo "perf cannot sample here — no profile taken:"
        sed 's/^/    /' "$out.err" | head -8
        echo "(perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null); run as root or lower it)"
        rm -f "$out" "$out.err"
        exit 0
    fi
    rm -f "$out" "$out.err"
}

# shared_buffers in MB for pgbench tables of scale $1 to stay cached:
# 400 MB a scale unit, between 1 and 8 GB.
shared_buffers_mb() {
    local mb=$(($1 * 400))
    [ "$mb" -lt 1024 ] && mb=1024
    [ "$mb" -gt 8192 ] && mb=8192
    echo "$mb"
}

# pgbench -i -s SCALE into database DB of cluster NAME, then check that
# pgbench_accounts uses access method AM.
cl_pgbench_init() {
    local name=$1 db=$2 scale=$3 am=$4
    say "pgbench -i -s $scale ($db, $am)"
    as_pg pgbench -i -s "$scale" -h "$WORK/sock" -p "$(cl_port "$name")" "$db" >"$WORK/init-$db.log" 2>&1 \
        || { tail -20 "$WORK/init-$db.log" >&2; die "pgbench -i failed"; }
    local got
    got=$(cl_table_am "$name" "$db" pgbench_accounts)
    [ "$got" = "$am" ] || die "pgbench_accounts in $db uses '$got', expected '$am'"
}

# A scratch directory (WORK) for a script's one cluster NAME: stopped, and
# the directory removed unless KEEP=1, when the script exits.
single_cluster_workdir() {
    WORK=$(make_workdir "$WORKBASE") || die "cannot create a work directory"
    export WORK
    SINGLE_CLUSTER=$1
    trap single_cluster_cleanup EXIT
    trap 'exit 130' INT TERM
}
single_cluster_cleanup() {
    cl_stop "$SINGLE_CLUSTER"
    if [ "$KEEP" = 1 ]; then say "cluster kept (stopped) in $WORK/$SINGLE_CLUSTER"; else rm -rf "$WORK"; fi
}

# --- two clusters measured alternately (run.sh, cluster.sh) -------------------
# The script sets CLUSTERS (the clusters' names, in measurement order), DB,
# CLIENTS and the common options, and declares the associative arrays S and
# ERR.

# Samples: S[metric:cluster]="v1 v2 ..." in measurement order; ERR[metric]
# keeps the first failure of a metric for the report.
add_sample() { S[$1:$2]="${S[$1:$2]:-} $3"; }
fail_metric() { ERR[$1]="${ERR[$1]:-$2}"; warn "$1 ($2)"; }
# the median of the samples of metric $1 in cluster $2
# shellcheck disable=SC2086
med() { median ${S[$1:$2]:-}; }
# LOADS: the 1-minute load average when each phase starts, for the report.
note_load() { LOADS+="${LOADS:+, }$1 $(cut -d' ' -f1 /proc/loadavg)"; }

# The server and pgbench at PG_BINDIR, after installing the missing packages
# (DEPS=1).
bench_check_server() {
    if [ "$DEPS" = 1 ]; then ensure_packages; fi
    [ -x "$PG_BINDIR/postgres" ] || die "no PostgreSQL $PG_MAJOR at $PG_BINDIR"
    [ -x "$PG_BINDIR/pgbench" ] || die "no pgbench at $PG_BINDIR (install postgresql-contrib)"
}

# Build and install the module (BUILD=1); SO_SHA: the first 12 hex digits of
# the installed cmk_storage.so's SHA-256, for the report.
bench_install_module() {
    if [ "$BUILD" = 1 ]; then build_and_install; fi
    local so
    so="$(pg_config_dir pkglibdir)/cmk_storage.so"
    [ -f "$so" ] || die "$so is not installed (drop --no-build)"
    SO_SHA=$(sha256sum "$so" | cut -c1-12)
}

# A scratch directory (WORK) for the clusters and RAW, the file of raw
# samples that raw appends to.  When the script exits the clusters stop and
# WORK is removed, unless KEEP=1 (then KEEP_START, when set, names the
# cluster whose start command is printed).
clusters_workdir() {
    WORK=$(make_workdir "$WORKBASE") || die "cannot create a work directory under $WORKBASE"
    export WORK
    RAW="$WORK/raw.txt"
    : > "$RAW"
    trap clusters_cleanup EXIT
    trap 'exit 130' INT TERM
}
raw() { printf '%s\n' "$*" >> "$RAW"; }
clusters_cleanup() {
    local c
    for c in $CLUSTERS; do cl_stop "$c"; done
    if [ "$KEEP" = 1 ]; then
        say "clusters kept (stopped) in $WORK${KEEP_START:+; start one with:}"
        if [ -n "${KEEP_START:-}" ]; then
            say "  runuser -u postgres -- $PG_BINDIR/pg_ctl -D $WORK/$KEEP_START/data -l $WORK/$KEEP_START/server.log start"
        fi
    else
        rm -rf "$WORK"
    fi
}

# Create and start the clusters, on free ports from 55432, each with
# shared_buffers SB and synchronous_commit SYNC (lib.sh's settings,
# cl_create); an argument NAME=LINE adds LINE to cluster NAME's settings.
#   cl_create_all SB SYNC [NAME=LINE]...
cl_create_all() {
    local sb=$1 sync=$2 port c a extra
    shift 2
    port=$(free_port 55432)
    for c in $CLUSTERS; do
        extra=""
        for a in "$@"; do [ "${a%%=*}" = "$c" ] && extra=${a#*=}; done
        say "creating cluster '$c' (port $port, shared_buffers $sb${extra:+, $extra})"
        cl_create "$c" "$port" "$sb" "$sync" "$extra"
        cl_start "$c"
        port=$(free_port $((port + 1)))
    done
}

# One pgbench run of DUR seconds on database DB of cluster C, CLIENTS
# clients and threads, its output in LOG: its tps is a sample of metric M,
# or M fails.  PGB_PGOPTIONS, when set, is the sessions' PGOPTIONS.
#   pgbench_sample M C LOG DUR [pgbench args]
pgbench_sample() {
    local m=$1 c=$2 log=$3 dur=$4 tps
    shift 4
    local pgoptions=()
    [ -n "${PGB_PGOPTIONS+set}" ] && pgoptions=(PGOPTIONS="$PGB_PGOPTIONS")
    if as_pg env "${pgoptions[@]}" pgbench -h "$WORK/sock" -p "$(cl_port "$c")" -c "$CLIENTS" -j "$CLIENTS" \
            -T "$dur" "$@" "$DB" >"$log" 2>&1; then
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$log" | head -1)
        if [ -n "$tps" ]; then add_sample "$m" "$c" "$tps"; raw "$m $c $tps"; return; fi
    fi
    fail_metric "$m" "pgbench failed in '$c': $(grep -m3 -iE 'error|fatal|abort' "$log" | tr '\n' ' ' | head -c 300)"
}
