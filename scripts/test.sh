#!/usr/bin/env bash
# Run every test suite of cmk_storage: install what is missing, build,
# install, then pg_regress, TAP and the other suites.  Works as root (the
# servers then run as the postgres user).  Ends with "N passed, M failed".
#
#   scripts/test.sh             all suites
#   scripts/test.sh --quick     skip the PostgreSQL regression- and
#                               isolation-suite oracles (heap vs cmk_heap,
#                               cluster encryption on vs off), the valgrind
#                               memcheck run and the Citus build
#                               (t/300_citus.pl then runs only if Citus is
#                               installed already, else skips)
#   scripts/test.sh --memcheck  also with --quick: run scripts/memcheck.sh
#                               (the cmk_heap workload on a server under
#                               valgrind memcheck; ~2 minutes), counted as
#                               one test
#
# TAP_TESTS="t/030_tuple_integrity.pl ..." runs only those TAP files;
# CMK_PG_BINDIR=/path/bin tests against a relocated copy of the server.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

QUICK=0
MEMCHECK=1
MEMCHECK_ASKED=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --memcheck) MEMCHECK_ASKED=1 ;;
        *) die "unknown option $arg" ;;
    esac
done
[ "$QUICK" -eq 1 ] && [ "$MEMCHECK_ASKED" -eq 0 ] && MEMCHECK=0

ensure_packages
build_and_install

WORK=$(make_workdir)
export WORK
tar -C "$REPO" --exclude=.git --exclude=node_modules -cf - . | tar -C "$WORK" -xf -
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK"

PASSED=0
FAILED=0
add() { PASSED=$((PASSED + $1)); FAILED=$((FAILED + $2)); }
# Add the counts of the last "<prefix>N passed, M failed" line of a suite's
# output; a suite that printed none counts as one failure.
add_summary() {
    local out=$1 prefix=$2 line
    line=$(echo "$out" | grep -E "^${prefix}[0-9]+ passed, [0-9]+ failed\$" | tail -1)
    if [ -z "$line" ]; then add 0 1; return; fi
    line=${line#"$prefix"}
    add "$(echo "$line" | awk '{print $1}')" "$(echo "$line" | awk '{print $3}')"
}

# --- pg_regress --------------------------------------------------------------
run_pg_regress() {
    say "pg_regress"
    as_pg openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$WORK/regress-kek.pem" 2>/dev/null
    chmod 600 "$WORK/regress-kek.pem"
    cat > "$WORK/regress.conf" <<CONF
shared_preload_libraries = 'cmk_storage'
cmk_storage.key_uri = 'file://$WORK/regress-kek.pem'
CONF
    local tests
    tests=$(cd "$WORK/sql" && ls *.sql | sed 's/\.sql$//' | sort | tr '\n' ' ')
    (cd "$WORK" && as_pg "$PGXS_DIR/src/test/regress/pg_regress" \
        --bindir="$PG_BINDIR" --inputdir=. --outputdir=. \
        --temp-instance=./tmp_check --temp-config="$WORK/regress.conf" \
        --dbname=contrib_regression $tests) > "$WORK/pg_regress.log" 2>&1
    cat "$WORK/pg_regress.log"
    local ok bad
    ok=$(grep -cE '\.\.\. +ok' "$WORK/pg_regress.log")
    bad=$(grep -cE '\.\.\. +FAILED|\.\.\. +failed' "$WORK/pg_regress.log")
    [ -f "$WORK/regression.diffs" ] && [ "$bad" -gt 0 ] && head -200 "$WORK/regression.diffs"
    # heap and cmk_heap must produce identical results for the same workload
    for h in "$WORK"/results/*_heap.out; do
        [ -e "$h" ] || continue
        local c=${h%_heap.out}_cmk.out
        if diff <(grep -v '^\\set am ' "$h") <(grep -v '^\\set am ' "$c") > "$WORK/am-compare.diff"; then
            ok=$((ok + 1)); echo "heap vs cmk_heap $(basename "${h%_heap.out}") ... ok"
        else
            bad=$((bad + 1)); echo "heap vs cmk_heap $(basename "${h%_heap.out}") ... FAILED"; head -100 "$WORK/am-compare.diff"
        fi
    done
    add "$ok" "$bad"
}

# --- TAP ---------------------------------------------------------------------
run_tap() {
    say "TAP tests"
    local out
    out=$(cd "$WORK" && as_pg env TESTDIR="$WORK" PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
        REPO="$WORK" perl "$WORK/scripts/run-tap.pl" "$PGXS_DIR/src/test/perl" ${TAP_TESTS:-t/*.pl} 2>&1)
    echo "$out"
    add_summary "$out" 'TAP: '
}

# --- the PostgreSQL regression suite with heap vs cmk_heap --------------------
run_oracle() {
    [ -x "$WORK/test/regress-oracle/run.sh" ] || return 0
    say "PostgreSQL regression suite: heap vs cmk_heap"
    local out
    out=$("$WORK/test/regress-oracle/run.sh" --am cmk_heap --cmk --pg-config "$PG_BINDIR/pg_config" 2>&1)
    echo "$out" | tail -40
    add_summary "$out" ''
}

# --- the PostgreSQL regression suite with cluster encryption on vs off ----------
run_oracle_cluster() {
    [ -x "$WORK/test/regress-oracle/run.sh" ] || return 0
    say "PostgreSQL regression suite: cluster encryption on vs off"
    local out
    out=$("$WORK/test/regress-oracle/run.sh" --cluster-encryption --pg-config "$PG_BINDIR/pg_config" 2>&1)
    echo "$out" | tail -40
    add_summary "$out" ''
}

# --- the PostgreSQL isolation suite: heap vs cmk_heap, cluster encryption on vs off
# (the same oracle with --suite isolation; each run keeps its own output)
run_oracle_isolation() {
    [ -x "$WORK/test/regress-oracle/run.sh" ] || return 0
    local mode=$1 label=$2 out
    say "PostgreSQL isolation suite: $label"
    out=$("$WORK/test/regress-oracle/run.sh" --suite isolation "$mode" \
        --output "$WORK/oracle-isolation-${mode#--}" --pg-config "$PG_BINDIR/pg_config" 2>&1)
    echo "$out" | tail -40
    add_summary "$out" ''
}

# --- the Key Vault emulator and the Azure SDK conformance test ------------------
run_emulator_tests() {
    [ -d "$WORK/emulator/conformance" ] || return 0
    say "Key Vault emulator conformance (official Azure SDK)"
    (cd "$REPO/emulator/conformance" && npm ci --silent --no-audit --no-fund >/dev/null 2>&1 || npm install --silent --no-audit --no-fund >/dev/null 2>&1)
    rm -rf "$WORK/emulator/conformance/node_modules"
    cp -a "$REPO/emulator/conformance/node_modules" "$WORK/emulator/conformance/" 2>/dev/null
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK/emulator"
    local out
    out=$(cd "$WORK" && as_pg node --test emulator/ 2>&1)
    echo "$out" | tail -15
    local p f
    p=$(echo "$out" | sed -n 's/^# pass \([0-9]*\)$/\1/p' | tail -1)
    f=$(echo "$out" | sed -n 's/^# fail \([0-9]*\)$/\1/p' | tail -1)
    add "${p:-0}" "${f:-1}"
}

# --- a short fuzz run of the Key Vault response parsers --------------------------
run_fuzz() {
    [ -x "$REPO/fuzz/run.sh" ] || return 0
    say "fuzzing the Azure response parsers (${FUZZ_SECONDS:-20} s)"
    if "$REPO/fuzz/run.sh" "${FUZZ_SECONDS:-20}" > "$WORK/fuzz.log" 2>&1; then
        echo "fuzz azure_json ... ok"; add 1 0
    else
        tail -20 "$WORK/fuzz.log"; echo "fuzz azure_json ... FAILED"; add 0 1
    fi
}

# --- the cmk_heap workload under valgrind memcheck ------------------------------
run_memcheck() {
    say "valgrind memcheck (scripts/memcheck.sh)"
    if bash "$REPO/scripts/memcheck.sh" --no-build > "$WORK/memcheck.log" 2>&1; then
        grep -E '^memcheck' "$WORK/memcheck.log"
        add 1 0
    else
        cat "$WORK/memcheck.log"
        add 0 1
    fi
}

# The full run installs Citus for t/300_citus.pl; a failed build counts as a
# failed test rather than letting the test skip.
if [ "$QUICK" -eq 0 ]; then
    if ensure_citus; then
        echo "citus build ... ok"; add 1 0
    else
        echo "citus build ... FAILED"; add 0 1
    fi
fi
run_pg_regress
run_tap
run_emulator_tests
run_fuzz
[ "$MEMCHECK" -eq 1 ] && run_memcheck
[ "$QUICK" -eq 1 ] || run_oracle
[ "$QUICK" -eq 1 ] || run_oracle_cluster
[ "$QUICK" -eq 1 ] || run_oracle_isolation --cmk "heap vs cmk_heap"
[ "$QUICK" -eq 1 ] || run_oracle_isolation --cluster-encryption "cluster encryption on vs off"

echo
echo "$PASSED passed, $FAILED failed"
if [ "$FAILED" -eq 0 ]; then
    rm -rf "$WORK"
    exit 0
fi
echo "work directory kept: $WORK" >&2
exit 1
