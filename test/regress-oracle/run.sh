#!/usr/bin/env bash
# test/regress-oracle/run.sh -- differential oracle for a table access method.
#
# Runs PostgreSQL's own main regression suite (src/test/regress,
# parallel_schedule) -- or, with --suite isolation, its isolation suite
# (src/test/isolation, isolation_schedule) -- twice against the installed server:
#   baseline : default_table_access_method = heap          (or --baseline-am)
#   candidate: default_table_access_method = <--am>        (+ --setup-sql/--conf)
# and compares the two results/*.out sets test by test, after a small explicit
# list of normalisations (normalize.pl).  See README.md and --help.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=$(basename "$0")

usage() {
	cat <<EOF
Usage: $PROG [OPTIONS]

Run PostgreSQL's main regression suite twice -- once with the baseline table
access method (heap), once with a candidate table AM as the default -- and
compare the two outputs test by test.  Ends with "N passed, M failed";
exit status 0 if M = 0, 1 if some tests differ, 2 on harness errors.

Candidate configuration:
  --am NAME                 candidate table AM made the default (default: $DEFAULT_AM)
  --setup-sql SQL           SQL run (ON_ERROR_STOP) in template1, postgres and the
                            regression database of the candidate cluster before
                            the suite starts; may be repeated.
                            Default when the option is never given:
                              "CREATE ACCESS METHOD <am> TYPE TABLE HANDLER heap_tableam_handler"
                            (a heap stand-in); pass --setup-sql '' for none.
  --conf 'name=value'       postgresql.conf line for the candidate cluster only
                            (repeatable), e.g. --conf shared_preload_libraries=cmk_storage
  --extra-conf-file FILE    file appended to the candidate's postgresql.conf (repeatable)
  --ready-sql SQL           query polled (in the candidate's regression database, after
                            the set-up SQL) until it returns true, max 60 s, before the
                            suite starts -- e.g. "key loaded" for an encrypting AM
  --cmk                     shorthand for cmk_storage: --am cmk_heap (unless --am is
                            given), --setup-sql 'CREATE EXTENSION cmk_storage',
                            --conf shared_preload_libraries=cmk_storage,
                            --conf cmk_storage.key_uri=file://<KEK>, and
                            --ready-sql "key_status() is 'available'".  The KEK is a fresh
                            RSA-3072 key made with openssl in the workdir, or --cmk-key.
  --cmk-key PEM             KEK file to use with --cmk (copied into the workdir)
  --restart-conf 'name=value'  postgresql.conf line for the candidate only, added
                            after the set-up SQL and --ready-sql, then the candidate
                            restarts (and --ready-sql is polled again) before the
                            suite; repeatable.  For settings that need a key first.
  --cluster-encryption      cmk_storage's cluster encryption: --cmk with --am heap
                            (unless --am is given) and --restart-conf
                            cmk_storage.cluster_encryption=on, so the candidate runs
                            the suite on heap with every page and WAL page encrypted;
                            the baseline loads cmk_storage too (same key settings,
                            CREATE EXTENSION), with cluster encryption off

Baseline configuration:
  --baseline-am NAME        baseline table AM (default: heap)
  --baseline-setup-sql SQL  like --setup-sql, for the baseline (default: none)
  --common-conf 'name=value'  postgresql.conf line for both clusters (repeatable)

Suite:
  --suite regress|isolation PostgreSQL's main regression suite (default; pg_regress,
                            parallel_schedule, database "regression") or its isolation
                            suite (pg_isolation_regress with the isolationtester of
                            the server's pgxs, isolation_schedule, database
                            "isolation_regression"); everything else is the same

Source / paths:
  --pgsrc DIR               PostgreSQL source tree (containing src/test/regress).
                            Default: \$PGSRC, else a tree cached under --pgsrc-cache,
                            else fetched with "apt-get source postgresql-<major>"
                            (root only; adds a deb-src entry if missing).
  --pgsrc-cache DIR         cache for fetched sources
                            (default: \$CMK_PGSRC_CACHE or /var/cache/cmk_storage/pgsrc)
  --pg-config PATH          pg_config of the server under test (default: pg_config in PATH)
  --workdir DIR             scratch dir for clusters/build (default: mktemp -d /tmp/cmkro.XXXXXX);
                            must be short (unix socket path limit)
  --output DIR              where status, diffs and raw results go
                            (default: $SCRIPT_DIR/out, or out-isolation for
                            --suite isolation)
  --run-as USER             OS user for initdb/postgres/pg_regress when started as
                            root (default: postgres)
  --keep-workdir            do not delete the workdir (clusters, logs) at the end

Run control:
  --exclude TEST            drop TEST from the schedule (repeatable)
  --schedule FILE           use FILE instead of the source's parallel_schedule
  --encoding ENC            database encoding (default: UTF8; locale is always C)
  --concurrent              run the baseline and candidate suites at the same time
                            (default: one after the other; on 2 cores this saves
                            only ~10% and doubles the load on timing-sensitive tests)
  --max-concurrent-tests N  pg_regress --max-concurrent-tests (default: 20)
  --port N                  port number for both clusters (unix sockets only,
                            each cluster has a private socket dir; default 54329)
  -h, --help                this text

Examples:
  # heap vs a built-in heap stand-in (validates the harness itself)
  $PROG --am heap_standin
  # heap vs cmk_heap (extension built and installed)
  $PROG --cmk
  # ... which is the same as
  $PROG --am cmk_heap --setup-sql 'CREATE EXTENSION cmk_storage' \\
        --conf shared_preload_libraries=cmk_storage \\
        --extra-conf-file /path/to/cmk-key.conf \\
        --ready-sql "SELECT state = 'available' FROM cmk_storage.key_status()"
     # with cmk-key.conf containing: cmk_storage.key_uri = 'file:///path/to/kek.pem'
     # (the KEK must be readable by the --run-as user)
EOF
}

DEFAULT_AM=heap_standin
AM=$DEFAULT_AM
AM_GIVEN=0
CMK=0
CLUSTER_ENC=0
RESTART_CONF=()
CMK_KEY=
READY_SQL=
BASE_AM=heap
SETUP_SQL=()
SETUP_SQL_GIVEN=0
BASE_SETUP_SQL=()
CAND_CONF=()
CAND_CONF_FILES=()
COMMON_CONF=()
PGSRC=${PGSRC:-}
PGSRC_CACHE=${CMK_PGSRC_CACHE:-/var/cache/cmk_storage/pgsrc}
PG_CONFIG=pg_config
WORKDIR=
OUTPUT=
SUITE=regress
RUN_AS=postgres
KEEP_WORKDIR=0
EXCLUDES=()
SCHEDULE=
ENCODING=UTF8
PARALLEL_RUNS=0
MAX_CONC=20
PORT=54329

die() { echo "$PROG: error: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
need_arg() { [[ $# -ge 2 ]] || die "option $1 needs an argument"; }

while [[ $# -gt 0 ]]; do
	case $1 in
		--am) need_arg "$@"; AM=$2; AM_GIVEN=1; shift 2 ;;
		--ready-sql) need_arg "$@"; READY_SQL=$2; shift 2 ;;
		--cmk) CMK=1; shift ;;
		--cluster-encryption) CMK=1; CLUSTER_ENC=1; shift ;;
		--restart-conf) need_arg "$@"; RESTART_CONF+=("$2"); shift 2 ;;
		--cmk-key) need_arg "$@"; CMK_KEY=$2; shift 2 ;;
		--setup-sql) need_arg "$@"; SETUP_SQL_GIVEN=1; [[ -n $2 ]] && SETUP_SQL+=("$2"); shift 2 ;;
		--conf) need_arg "$@"; CAND_CONF+=("$2"); shift 2 ;;
		--extra-conf-file) need_arg "$@"; CAND_CONF_FILES+=("$2"); shift 2 ;;
		--baseline-am) need_arg "$@"; BASE_AM=$2; shift 2 ;;
		--baseline-setup-sql) need_arg "$@"; [[ -n $2 ]] && BASE_SETUP_SQL+=("$2"); shift 2 ;;
		--common-conf) need_arg "$@"; COMMON_CONF+=("$2"); shift 2 ;;
		--suite) need_arg "$@"; SUITE=$2; shift 2 ;;
		--pgsrc) need_arg "$@"; PGSRC=$2; shift 2 ;;
		--pgsrc-cache) need_arg "$@"; PGSRC_CACHE=$2; shift 2 ;;
		--pg-config) need_arg "$@"; PG_CONFIG=$2; shift 2 ;;
		--workdir) need_arg "$@"; WORKDIR=$2; shift 2 ;;
		--output) need_arg "$@"; OUTPUT=$2; shift 2 ;;
		--run-as) need_arg "$@"; RUN_AS=$2; shift 2 ;;
		--keep-workdir) KEEP_WORKDIR=1; shift ;;
		--exclude) need_arg "$@"; EXCLUDES+=("$2"); shift 2 ;;
		--schedule) need_arg "$@"; SCHEDULE=$2; shift 2 ;;
		--encoding) need_arg "$@"; ENCODING=$2; shift 2 ;;
		--concurrent) PARALLEL_RUNS=1; shift ;;
		--max-concurrent-tests) need_arg "$@"; MAX_CONC=$2; shift 2 ;;
		--port) need_arg "$@"; PORT=$2; shift 2 ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; die "unknown option: $1" ;;
	esac
done

abspath() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }
# What differs between the two suites: where the tests are, which driver runs
# them, the database they use, and the test that proves the harness works
# (the baseline must pass it against expected/).
case $SUITE in
	regress)
		SUITE_SUBDIR=src/test/regress; RUNNER_REL=test/regress/pg_regress
		DBNAME=regression; DEFAULT_SCHEDULE=parallel_schedule; SANITY_TEST=test_setup ;;
	isolation)
		SUITE_SUBDIR=src/test/isolation; RUNNER_REL=test/isolation/pg_isolation_regress
		DBNAME=isolation_regression; DEFAULT_SCHEDULE=isolation_schedule
		SANITY_TEST= ;;	# the first test of the schedule, set below
	*) die "--suite must be regress or isolation, got: $SUITE" ;;
esac
[[ -n $OUTPUT ]] || { OUTPUT=$SCRIPT_DIR/out; [[ $SUITE == regress ]] || OUTPUT=$SCRIPT_DIR/out-$SUITE; }
OUTPUT=$(abspath "$OUTPUT")
[[ -n $PGSRC ]] && PGSRC=$(abspath "$PGSRC")
[[ -n $SCHEDULE ]] && SCHEDULE=$(abspath "$SCHEDULE")
[[ -n $CMK_KEY ]] && CMK_KEY=$(abspath "$CMK_KEY")
for i in "${!CAND_CONF_FILES[@]}"; do CAND_CONF_FILES[i]=$(abspath "${CAND_CONF_FILES[i]}"); done
if [[ $CLUSTER_ENC -eq 1 ]]; then
	[[ $AM_GIVEN -eq 1 ]] || { AM=heap; AM_GIVEN=1; }
	RESTART_CONF+=("cmk_storage.cluster_encryption=on")
fi
if [[ $CMK -eq 1 ]]; then
	[[ $AM_GIVEN -eq 1 ]] || AM=cmk_heap
	[[ $SETUP_SQL_GIVEN -eq 1 ]] || { SETUP_SQL=("CREATE EXTENSION cmk_storage"); SETUP_SQL_GIVEN=1; }
	[[ -n $READY_SQL ]] || READY_SQL="SELECT state = 'available' FROM cmk_storage.key_status()"
	# conf lines are added once the workdir (and the KEK in it) exists
fi
[[ -n $CMK_KEY && $CMK -eq 0 ]] && die "--cmk-key needs --cmk"
if [[ $SETUP_SQL_GIVEN -eq 0 && $AM != heap ]]; then
	SETUP_SQL=("CREATE ACCESS METHOD \"$AM\" TYPE TABLE HANDLER heap_tableam_handler")
fi
[[ $AM =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--am must be a plain identifier: $AM"
[[ $BASE_AM =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--baseline-am must be a plain identifier: $BASE_AM"
[[ $AM != "$BASE_AM" ]] || log "warning: candidate AM equals baseline AM ($AM)"

# Tests excluded by default -- keep this list empty unless a test genuinely
# cannot run against installed binaries (see README.md).
#   create_am: it creates, uses and finally drops an AM called "heap2" itself;
#              it runs fine with any other candidate AM name, so it is NOT
#              excluded -- just do not call the candidate AM "heap2".
[[ $AM == heap2 ]] && log "warning: the suite's create_am test creates/drops its own AM named heap2; expect create_am (and event_trigger) to differ. Use another name (default: $DEFAULT_AM)."

T_START=$(date +%s)

# ---------------------------------------------------------------- server ----
command -v "$PG_CONFIG" >/dev/null || die "pg_config not found ($PG_CONFIG)"
BINDIR=$("$PG_CONFIG" --bindir)
PGXS=$("$PG_CONFIG" --pgxs)
PG_REGRESS=$(dirname "$PGXS")/../$RUNNER_REL
PG_REGRESS=$(readlink -f "$PG_REGRESS")
[[ -x $PG_REGRESS ]] || die "$(basename "$RUNNER_REL") not found at $PG_REGRESS (install postgresql-server-dev-<major>)"
SERVER_VERSION=$("$PG_CONFIG" --version | awk '{print $2}')
MAJOR=${SERVER_VERSION%%.*}
log "server: PostgreSQL $SERVER_VERSION ($BINDIR)"

# ---------------------------------------------------------------- source ----
src_version() { sed -n "s/^PACKAGE_VERSION='\(.*\)'$/\1/p" "$1/configure" 2>/dev/null | head -1; }
is_src() { [[ -f $1/src/test/regress/parallel_schedule && -f $1/src/test/regress/regress.c ]]; }

find_cached_src() {
	local d best=
	[[ -d $PGSRC_CACHE ]] || return 1
	for d in "$PGSRC_CACHE"/postgresql-"$MAJOR"-*/; do
		d=${d%/}
		is_src "$d" || continue
		[[ $(src_version "$d") == "$MAJOR".* ]] || continue
		best=$d # glob order: last = highest minor for same-width versions
		[[ $(src_version "$d") == "$SERVER_VERSION" ]] && { echo "$d"; return 0; }
	done
	[[ -n $best ]] && { echo "$best"; return 0; }
	return 1
}

fetch_src() {
	[[ $(id -u) -eq 0 ]] || die "no PostgreSQL source found and not root: pass --pgsrc DIR (or run as root to fetch it)"
	local pkg=postgresql-$MAJOR
	log "fetching source of $pkg into $PGSRC_CACHE"
	if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
		if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
			log "adding deb-src entry /etc/apt/sources.list.d/debian-src.sources"
			sed 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
				>/etc/apt/sources.list.d/debian-src.sources
		elif [[ -f /etc/apt/sources.list ]]; then
			log "adding deb-src lines to /etc/apt/sources.list.d/debian-src.list"
			sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/debian-src.list
		else
			die "no apt sources found to derive a deb-src entry from"
		fi
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || log "warning: apt-get update failed"
	command -v dpkg-source >/dev/null || apt-get install -y -qq dpkg-dev >&2 || die "cannot install dpkg-dev (needed by apt-get source)"
	mkdir -p "$PGSRC_CACHE"
	local cand versions v
	cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
	versions=$( { echo "$cand"; apt-cache showsrc "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}' | sort -rV; } | awk 'NF && $0 != "(none)" && !seen[$0]++')
	[[ -n $versions ]] || die "apt knows no source versions of $pkg"
	for v in $versions; do
		log "trying apt-get source $pkg=$v"
		if (cd "$PGSRC_CACHE" && apt-get source -qq "$pkg=$v" >&2); then
			local upstream=${v%%-*}
			local d=$PGSRC_CACHE/$pkg-$upstream
			is_src "$d" && { echo "$d"; return 0; }
		fi
		log "apt-get source $pkg=$v failed"
	done
	die "could not download any source version of $pkg"
}

if [[ -z $PGSRC ]]; then
	PGSRC=$(find_cached_src) || PGSRC=$(fetch_src)
fi
is_src "$PGSRC" || die "not a PostgreSQL source tree: $PGSRC"
PGSRC=$(readlink -f "$PGSRC")
SRC_VERSION=$(src_version "$PGSRC")
[[ $SRC_VERSION == "$MAJOR".* ]] || die "source $PGSRC is version $SRC_VERSION, server is $SERVER_VERSION"
[[ $SRC_VERSION == "$SERVER_VERSION" ]] || log "note: test source $SRC_VERSION vs server $SERVER_VERSION (minor skew is harmless: the two runs are compared with each other, not with expected/)"
log "source: $PGSRC"
REGRESS_SRC=$PGSRC/$SUITE_SUBDIR

# -------------------------------------------------------------- workdir -----
IS_ROOT=0; [[ $(id -u) -eq 0 ]] && IS_ROOT=1
if [[ $IS_ROOT -eq 1 ]]; then
	id "$RUN_AS" >/dev/null 2>&1 || die "user $RUN_AS does not exist (PostgreSQL refuses to run as root)"
fi
# Run a command as the PostgreSQL OS user, from the workdir (the caller's
# cwd, e.g. /root, may not be accessible to that user).
as_pg() {
	if [[ $IS_ROOT -eq 1 ]]; then
		(cd "$WORKDIR" && runuser -u "$RUN_AS" -- env PATH="$BINDIR:$PATH" "$@")
	else
		(cd "$WORKDIR" && env PATH="$BINDIR:$PATH" "$@")
	fi
}

if [[ -z $WORKDIR ]]; then
	WORKDIR=$(mktemp -d /tmp/cmkro.XXXXXX)
else
	mkdir -p "$WORKDIR"
fi
WORKDIR=$(readlink -f "$WORKDIR")
chmod 755 "$WORKDIR"
[[ ${#WORKDIR} -le 60 ]] || die "--workdir path too long for unix sockets: $WORKDIR"

cleanup() {
	local rc=$? d
	for d in "$WORKDIR"/baseline/data "$WORKDIR"/candidate/data; do
		[[ -f $d/postmaster.pid ]] && { as_pg pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true; }
	done
	if [[ $KEEP_WORKDIR -eq 0 && -n $WORKDIR && -d $WORKDIR ]]; then
		rm -rf "$WORKDIR"
	else
		log "workdir kept: $WORKDIR"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------ test files + libraries ----
INPUT=$WORKDIR/input
LIBDIR=$WORKDIR/lib
BUILD=$WORKDIR/build
mkdir -p "$INPUT" "$LIBDIR" "$BUILD"
if [[ $SUITE == isolation ]]; then
	# the isolation suite is specs/*.spec + expected/, and needs no C helpers
	log "preparing test files"
	cp -r "$REGRESS_SRC/specs" "$REGRESS_SRC/expected" "$INPUT/"
else
log "preparing test files and building regress/autoinc/refint modules"
cp -r "$REGRESS_SRC/sql" "$REGRESS_SRC/expected" "$REGRESS_SRC/data" "$INPUT/"
[[ -f $REGRESS_SRC/resultmap ]] && cp "$REGRESS_SRC/resultmap" "$INPUT/"
cp "$REGRESS_SRC/regress.c" "$PGSRC/contrib/spi/autoinc.c" "$PGSRC/contrib/spi/refint.c" "$BUILD/"
cat >"$BUILD/Makefile" <<'EOF'
# generated by test/regress-oracle/run.sh: the regression suite's C helpers
MODULES = regress autoinc refint
PG_CPPFLAGS = -DREFINT_VERBOSE
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
EOF
# with_llvm=no: skip clang bitcode, only the .so files are needed
make -s -C "$BUILD" PG_CONFIG="$PG_CONFIG" with_llvm=no >"$BUILD/build.log" 2>&1 \
	|| { cat "$BUILD/build.log" >&2; die "building regress.so failed"; }
DLSUFFIX=.so
cp "$BUILD"/regress$DLSUFFIX "$BUILD"/autoinc$DLSUFFIX "$BUILD"/refint$DLSUFFIX "$LIBDIR/"
fi

# schedule, minus exclusions
SCHED=$WORKDIR/schedule
{
	if [[ -n $SCHEDULE ]]; then cat "$SCHEDULE"; else cat "$REGRESS_SRC/$DEFAULT_SCHEDULE"; fi
} | awk -v excl="${EXCLUDES[*]:-}" '
	BEGIN { n = split(excl, e, " "); for (i = 1; i <= n; i++) skip[e[i]] = 1 }
	/^(test|ignore):/ {
		out = $1; cnt = 0
		for (i = 2; i <= NF; i++) if (!($i in skip)) { out = out " " $i; cnt++ }
		if ($1 == "ignore:" || cnt > 0) print out
		next
	}
	{ print }' >"$SCHED"
TESTS=$(awk '/^test:/ { for (i = 2; i <= NF; i++) print $i }' "$SCHED")
[[ -n $TESTS ]] || die "empty schedule"
[[ -n $SANITY_TEST ]] || SANITY_TEST=$(echo "$TESTS" | head -1)

if [[ $IS_ROOT -eq 1 ]]; then
	chown -R "$RUN_AS" "$WORKDIR"
fi

# ------------------------------------------------------------- one run ------
# run_suite NAME AM CONF_LINES_FILE SETUP_SQL_FILE
wait_ready() { # DIR: poll --ready-sql in the candidate until it is true
	local dir=$1 tries=0 r=
	[[ -n $READY_SQL ]] || return 0
	while :; do
		r=$(as_pg "${psql[@]}" -d "$DBNAME" -At -c "$READY_SQL" 2>&1 || true)
		[[ $r == t ]] && break
		tries=$((tries + 1))
		if [[ $tries -ge 120 ]]; then
			echo "--ready-sql never returned true within 60 s (last answer: $r)" | tee "$dir/FATAL" >&2
			return 1
		fi
		sleep 0.5
	done
	echo "ready after $tries polls: $READY_SQL" >>"$dir/setup.log"
}

run_suite() {
	local name=$1 am=$2 conf=$3 setup=$4
	local dir=$WORKDIR/$name
	local data=$dir/data sock=$dir/sock out=$dir/out
	local t0; t0=$(date +%s)
	as_pg mkdir -p "$dir" "$sock" "$out"
	as_pg initdb -D "$data" --no-clean --no-sync --no-locale -E "$ENCODING" -A trust \
		>"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; echo "initdb failed" >"$dir/FATAL"; return 2; }
	{
		echo
		echo "# ---- test/regress-oracle: same settings pg_regress --temp-instance adds"
		echo "log_autovacuum_min_duration = 0"
		echo "log_checkpoints = on"
		echo "log_line_prefix = '%m %b[%p] %q%a '"
		echo "log_lock_waits = on"
		echo "log_temp_files = 128kB"
		echo "max_prepared_transactions = 2"
		echo "fsync = off"
		echo "# ---- private unix socket only"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$sock'"
		echo "port = $PORT"
		echo "# ---- the table AM under test is the default for every database"
		echo "default_table_access_method = '$am'"
		echo "# ---- run-specific settings"
		cat "$conf"
	} | as_pg tee -a "$data/postgresql.conf" >/dev/null
	if ! as_pg pg_ctl -D "$data" -w -t 120 -l "$dir/postmaster.log" start >"$dir/pg_ctl.log" 2>&1; then
		cat "$dir/pg_ctl.log" "$dir/postmaster.log" >&2
		echo "server start failed" >"$dir/FATAL"; return 2
	fi
	local psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PORT")
	# Set-up SQL in template1 (future CREATE DATABASE ... TEMPLATE template1)
	# and postgres; then create "regression" exactly like pg_regress does
	# (from template0) and run the set-up SQL in it too.
	local db
	for db in template1 postgres; do
		as_pg "${psql[@]}" -d "$db" -f "$setup" >>"$dir/setup.log" 2>&1 \
			|| { cat "$dir/setup.log" >&2; echo "setup SQL failed in $db" >"$dir/FATAL"; return 2; }
	done
	as_pg "${psql[@]}" -d postgres >>"$dir/setup.log" 2>&1 <<EOF || { cat "$dir/setup.log" >&2; echo "create database failed" >"$dir/FATAL"; return 2; }
CREATE DATABASE "$DBNAME" TEMPLATE=template0 ENCODING='$ENCODING';
ALTER DATABASE "$DBNAME" SET lc_messages TO 'C';
ALTER DATABASE "$DBNAME" SET lc_monetary TO 'C';
ALTER DATABASE "$DBNAME" SET lc_numeric TO 'C';
ALTER DATABASE "$DBNAME" SET lc_time TO 'C';
ALTER DATABASE "$DBNAME" SET bytea_output TO 'hex';
ALTER DATABASE "$DBNAME" SET timezone_abbreviations TO 'Default';
EOF
	as_pg "${psql[@]}" -d "$DBNAME" -f "$setup" >>"$dir/setup.log" 2>&1 \
		|| { cat "$dir/setup.log" >&2; echo "setup SQL failed in $DBNAME" >"$dir/FATAL"; return 2; }
	# Prove the AM really is the default in every database the suite uses.
	for db in "$DBNAME" template1 postgres; do
		local got
		got=$(as_pg "${psql[@]}" -d "$db" -At -c "SHOW default_table_access_method" \
			-c "SELECT amname FROM pg_am WHERE amname = current_setting('default_table_access_method') AND amtype = 't'" 2>&1 | tr '\n' ' ')
		if [[ $got != "$am $am " ]]; then
			echo "AM check failed in $db: got '$got', want '$am $am '" | tee "$dir/FATAL" >&2
			return 2
		fi
	done
	# Per-run copy of the test files.  If this psql skips to the next "\."
	# after a COPY FROM STDIN that fails up front (newer psql) but the test
	# scripts do not expect that (older source), adapt the scripts; see
	# compat-copy-stdin.pl.
	local input=$dir/input probe
	as_pg cp -r "$INPUT" "$input"
	probe=$(printf '%s\n' 'COPY regress_oracle_nosuch FROM STDIN;' "SELECT 'psql-continues';" '\.' |
		as_pg psql -X -q -At -h "$sock" -p "$PORT" -d "$DBNAME" 2>/dev/null || true)
	# (isolation specs are not psql scripts)
	if [[ $SUITE == regress && $probe != *psql-continues* ]]; then
		echo "psql skips to \\. after a failed COPY FROM STDIN: adapting test scripts" >>"$dir/setup.log"
		as_pg perl "$SCRIPT_DIR/compat-copy-stdin.pl" "$input"/sql/*.sql >>"$dir/setup.log"
	fi
	if [[ $name == candidate ]]; then
		wait_ready "$dir" || return 2
		if [[ ${#RESTART_CONF[@]} -gt 0 ]]; then
			as_pg tee -a "$data/postgresql.conf" <"$WORKDIR/candidate-restart.conf" >/dev/null
			echo "restart with: $(tr '\n' ' ' <"$WORKDIR/candidate-restart.conf")" >>"$dir/setup.log"
			if ! as_pg pg_ctl -D "$data" -w -t 120 -m fast -l "$dir/postmaster.log" restart >>"$dir/pg_ctl.log" 2>&1; then
				cat "$dir/pg_ctl.log" "$dir/postmaster.log" >&2
				echo "server restart failed" >"$dir/FATAL"; return 2
			fi
			wait_ready "$dir" || return 2
			# Prove the restart settings took effect (e.g. cluster encryption
			# really is on for the candidate's suite).
			local rline rname rwant rgot
			while IFS= read -r rline; do
				[[ $rline =~ ^([A-Za-z_][A-Za-z0-9_.]*)\ =\ \'(.*)\'$ ]] || continue
				rname=${BASH_REMATCH[1]}; rwant=${BASH_REMATCH[2]}
				rgot=$(as_pg "${psql[@]}" -d "$DBNAME" -At -c "SHOW $rname" 2>&1 || true)
				if [[ $rgot != "$rwant" ]]; then
					echo "after the restart $rname is '$rgot', want '$rwant'" | tee "$dir/FATAL" >&2
					return 2
				fi
				echo "after the restart: $rname = $rgot" >>"$dir/setup.log"
			done <"$WORKDIR/candidate-restart.conf"
		fi
	fi
	local rc=0
	(cd "$dir" && as_pg "$PG_REGRESS" --use-existing --host="$sock" --port="$PORT" \
		--bindir="$BINDIR" --inputdir="$input" --outputdir="$out" --dlpath="$LIBDIR" --dbname="$DBNAME" \
		--schedule="$SCHED" --max-concurrent-tests="$MAX_CONC" \
		>"$dir/pg_regress.log" 2>&1) || rc=$?
	# Census: which table AM do the relations the suite left behind use?
	# (evidence that the default really took effect in the candidate run)
	as_pg "${psql[@]}" -d "$DBNAME" -At -F ' ' -c "
		SELECT a.amname, count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
		WHERE c.relkind IN ('r', 'm', 't') AND c.oid >= 16384
		GROUP BY 1 ORDER BY 2 DESC" >"$dir/am_census" 2>&1 || true
	as_pg pg_ctl -D "$data" -w -m fast stop >>"$dir/pg_ctl.log" 2>&1 || true
	echo "$rc" >"$dir/pg_regress.rc"
	if [[ $rc -ge 2 ]]; then
		cat "$dir/pg_regress.log" >&2
		echo "pg_regress exited $rc" >"$dir/FATAL"; return 2
	fi
	echo "$(( $(date +%s) - t0 ))" >"$dir/seconds"
	return 0
}

mk_conf() { # OUTFILE conf-lines... -- files...
	local f=$1; shift
	: >"$f"
	local line name value
	while [[ $# -gt 0 && $1 != -- ]]; do
		line=$1; shift
		# name=value -> name = 'value' (values like file:///x need quoting);
		# an already quoted value is kept as is
		if [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_.]*)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
			name=${BASH_REMATCH[1]}; value=${BASH_REMATCH[2]}
			if [[ $value != \'* ]]; then
				value="'${value//\'/\'\'}'"
			fi
			line="$name = $value"
		else
			die "--conf/--common-conf expects name=value, got: $line"
		fi
		printf '%s\n' "$line" >>"$f"
	done
	[[ ${1:-} == -- ]] && shift
	while [[ $# -gt 0 ]]; do
		[[ -r $1 ]] || die "cannot read conf file $1"
		cat "$1" >>"$f"; echo >>"$f"; shift
	done
}
mk_sql() { # OUTFILE statements...
	local f=$1; shift
	: >"$f"
	local s
	for s in "$@"; do printf '%s;\n' "${s%;}" >>"$f"; done
}

if [[ $CMK -eq 1 ]]; then
	KEK=$WORKDIR/cmk-kek.pem
	if [[ -n $CMK_KEY ]]; then
		cp "$CMK_KEY" "$KEK" || die "cannot read --cmk-key $CMK_KEY"
	else
		command -v openssl >/dev/null || die "--cmk needs openssl to make a KEK (or pass --cmk-key)"
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$KEK" 2>/dev/null \
			|| die "openssl genpkey failed"
	fi
	chmod 600 "$KEK"
	[[ $IS_ROOT -eq 1 ]] && chown "$RUN_AS" "$KEK"
	CAND_CONF=("shared_preload_libraries = 'cmk_storage'" "cmk_storage.key_uri = 'file://$KEK'" ${CAND_CONF[@]+"${CAND_CONF[@]}"})
	# On versus off: the baseline runs with cmk_storage too, cluster
	# encryption off, so that the setting is the only difference.
	if [[ $CLUSTER_ENC -eq 1 ]]; then
		COMMON_CONF+=("shared_preload_libraries = 'cmk_storage'" "cmk_storage.key_uri = 'file://$KEK'")
		BASE_SETUP_SQL+=("CREATE EXTENSION cmk_storage")
	fi
fi
mk_conf "$WORKDIR/baseline.conf" ${COMMON_CONF[@]+"${COMMON_CONF[@]}"} --
mk_conf "$WORKDIR/candidate.conf" ${COMMON_CONF[@]+"${COMMON_CONF[@]}"} ${CAND_CONF[@]+"${CAND_CONF[@]}"} \
	-- ${CAND_CONF_FILES[@]+"${CAND_CONF_FILES[@]}"}
mk_conf "$WORKDIR/candidate-restart.conf" ${RESTART_CONF[@]+"${RESTART_CONF[@]}"} --
mk_sql "$WORKDIR/baseline.sql" ${BASE_SETUP_SQL[@]+"${BASE_SETUP_SQL[@]}"}
mk_sql "$WORKDIR/candidate.sql" ${SETUP_SQL[@]+"${SETUP_SQL[@]}"}
[[ $IS_ROOT -eq 1 ]] && chown "$RUN_AS" "$WORKDIR"/{baseline,candidate}.{conf,sql} "$WORKDIR/candidate-restart.conf"

log "baseline : am=$BASE_AM setup=[$(tr '\n' ' ' <"$WORKDIR/baseline.sql")] conf=[$(tr '\n' ' ' <"$WORKDIR/baseline.conf")]"
log "candidate: am=$AM setup=[$(tr '\n' ' ' <"$WORKDIR/candidate.sql")] conf=[$(grep -c . "$WORKDIR/candidate.conf" || true) lines]"
T_SUITE=$(date +%s)
if [[ $PARALLEL_RUNS -eq 1 ]]; then
	log "running the suite for baseline and candidate concurrently"
	run_suite baseline "$BASE_AM" "$WORKDIR/baseline.conf" "$WORKDIR/baseline.sql" & P1=$!
	run_suite candidate "$AM" "$WORKDIR/candidate.conf" "$WORKDIR/candidate.sql" & P2=$!
	RC1=0; wait $P1 || RC1=$?
	RC2=0; wait $P2 || RC2=$?
else
	log "running the suite: baseline"
	RC1=0; run_suite baseline "$BASE_AM" "$WORKDIR/baseline.conf" "$WORKDIR/baseline.sql" || RC1=$?
	log "running the suite: candidate"
	RC2=0; run_suite candidate "$AM" "$WORKDIR/candidate.conf" "$WORKDIR/candidate.sql" || RC2=$?
fi
T_SUITE_END=$(date +%s)

# ---------------------------------------------------------------- output ----
# Replace a previous output directory -- but never a directory this script
# did not create (it would be deleted).
if [[ -e $OUTPUT ]]; then
	if [[ -f $OUTPUT/.regress-oracle-output ]]; then
		rm -rf "$OUTPUT"
	elif [[ -d $OUTPUT && -z $(ls -A "$OUTPUT") ]]; then
		rmdir "$OUTPUT"
	else
		die "--output $OUTPUT exists and was not made by $PROG; refusing to replace it"
	fi
fi
mkdir -p "$OUTPUT/diffs"
touch "$OUTPUT/.regress-oracle-output"
for r in baseline candidate; do
	mkdir -p "$OUTPUT/$r"
	d=$WORKDIR/$r
	[[ -d $d/out/results ]] && cp -r "$d/out/results" "$OUTPUT/$r/"
	for f in out/regression.out out/regression.diffs pg_regress.log setup.log postmaster.log initdb.log FATAL seconds am_census; do
		[[ -f $d/$f ]] && cp "$d/$f" "$OUTPUT/$r/"
	done
done
for r in baseline candidate; do
	if [[ -f $WORKDIR/$r/FATAL ]]; then
		die "$r run failed: $(cat "$WORKDIR/$r/FATAL") (logs in $OUTPUT/$r)"
	fi
done
[[ $RC1 -eq 0 && $RC2 -eq 0 ]] || die "a run failed (rc $RC1/$RC2), logs in $OUTPUT"

# Sanity: the baseline must behave like stock PostgreSQL, or the comparison
# proves nothing (e.g. both runs failing identically in test_setup, or in the
# isolation suite's first spec).
BASE_VS_EXPECTED=$(grep -E '^(not ok|test| ) *.*FAILED' "$OUTPUT/baseline/regression.out" 2>/dev/null | awk '{for(i=1;i<=NF;i++) if ($(i+1)=="...") {print $i; break}}' | tr '\n' ' ' || true)
if [[ -z $(ls "$OUTPUT/baseline/results" 2>/dev/null) ]]; then
	die "baseline produced no results"
fi
if [[ " $BASE_VS_EXPECTED " == *" $SANITY_TEST "* ]]; then
	die "baseline failed $SANITY_TEST against expected/ -- harness is broken (see $OUTPUT/baseline/regression.diffs)"
fi

# (the isolation specs drop what they create, so no census there: the AM
# check before the suite is the evidence)
if [[ $SUITE == regress && $AM != "$BASE_AM" ]] && ! grep -q "^$AM [0-9]" "$OUTPUT/candidate/am_census" 2>/dev/null; then
	die "no relation left by the candidate run uses $AM -- default_table_access_method did not take effect (see $OUTPUT/candidate/am_census)"
fi

# ----------------------------------------------------------------- compare ---
# Differences that are understood and accepted are recorded per candidate AM
# in known-diffs/<am>/<test>.diff (with a one-line <test>.reason); a test
# passes only if its diff is exactly the recorded one.
if [[ $SUITE == regress ]]; then
	KNOWN_DIR=${KNOWN_DIR:-$SCRIPT_DIR/known-diffs/$AM}
else
	KNOWN_DIR=${KNOWN_DIR:-$SCRIPT_DIR/known-diffs/$SUITE-$AM}
fi
log "comparing results (normalisations: $SCRIPT_DIR/normalize.pl; known differences: $KNOWN_DIR)"
PASS=0; FAIL=0
STATUS=$OUTPUT/status.txt
: >"$STATUS"
NORM=$WORKDIR/norm
mkdir -p "$NORM"
for t in $TESTS; do
	b=$OUTPUT/baseline/results/$t.out
	c=$OUTPUT/candidate/results/$t.out
	if [[ ! -f $b || ! -f $c ]]; then
		line="FAIL $t (missing output: $( [[ -f $b ]] || echo baseline) $( [[ -f $c ]] || echo candidate))"
		FAIL=$((FAIL + 1))
	else
		perl "$SCRIPT_DIR/normalize.pl" --test "$t" --am "$AM" --baseline-am "$BASE_AM" \
			<"$b" >"$NORM/$t.baseline"
		perl "$SCRIPT_DIR/normalize.pl" --test "$t" --am "$AM" --baseline-am "$BASE_AM" \
			--hits "$NORM/$t.hits" <"$c" >"$NORM/$t.candidate"
		hits=
		[[ -s $NORM/$t.hits ]] && hits=" (normalised: $(tr '\n' ' ' <"$NORM/$t.hits" | sed 's/ *$//'))"
		if diff -u --label "baseline/$t.out" --label "candidate/$t.out" \
			"$NORM/$t.baseline" "$NORM/$t.candidate" >"$OUTPUT/diffs/$t.diff"; then
			rm -f "$OUTPUT/diffs/$t.diff"
			line="ok   $t$hits"
			PASS=$((PASS + 1))
		elif [[ -f $KNOWN_DIR/$t.diff ]] &&
			diff -q <(grep -v '^@@' "$OUTPUT/diffs/$t.diff") <(grep -v '^@@' "$KNOWN_DIR/$t.diff") >/dev/null; then
			# exactly the recorded, explained difference (hunk positions aside)
			line="ok   $t (known difference: $(head -1 "$KNOWN_DIR/$t.reason" 2>/dev/null || echo 'see known-diffs'))$hits"
			PASS=$((PASS + 1))
		else
			line="FAIL $t (diff: $OUTPUT/diffs/$t.diff, $(grep -c '^[-+][^-+]' "$OUTPUT/diffs/$t.diff" || true) lines)$hits"
			FAIL=$((FAIL + 1))
		fi
	fi
	echo "$line" | tee -a "$STATUS"
done

T_END=$(date +%s)
{
	echo "suite: PostgreSQL $SRC_VERSION $SUITE tests on server $SERVER_VERSION, $(echo $TESTS | wc -w) tests"
	echo "baseline am=$BASE_AM, candidate am=$AM"
	[[ ${#EXCLUDES[@]} -gt 0 ]] && echo "excluded: ${EXCLUDES[*]}"
	echo "baseline vs expected/ (informational, version skew): ${BASE_VS_EXPECTED:-no differences}"
	for r in baseline candidate; do
		echo "$r: user tables/matviews/toast left in $DBNAME db by AM: $(tr '\n' ',' <"$OUTPUT/$r/am_census" 2>/dev/null | sed 's/,$//; s/,/, /g')"
	done
	echo "time: suite runs $((T_SUITE_END - T_SUITE))s (baseline $(cat "$OUTPUT/baseline/seconds")s, candidate $(cat "$OUTPUT/candidate/seconds")s), total $((T_END - T_START))s"
} | tee -a "$STATUS"
echo "$PASS passed, $FAIL failed" | tee -a "$STATUS"
[[ $FAIL -eq 0 ]] && exit 0 || exit 1
