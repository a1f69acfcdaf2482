#!/usr/bin/env bash
# Build the Azure JSON parser fuzz target and run it for a while.
#
#   fuzz/run.sh [SECONDS]     (default 25)
#
# Exits non-zero if the build fails or libFuzzer finds a crash, a leak, an
# undefined-behaviour report or a broken parser promise; the crashing input
# is kept in the printed work directory.  The seed corpus in fuzz/corpus is
# never modified: new inputs go to a temporary corpus.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${1:-25}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cmk_fuzz.XXXXXX")
mkdir -p "$WORK/corpus"

if ! make -s -C "$HERE" O="$WORK" >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    echo "fuzz: build failed (clang with libFuzzer needed: apt-get install clang-14 libclang-rt-14-dev)" >&2
    exit 2
fi

set +e
"$WORK/fuzz_azure_json" -max_total_time="$SECS" -max_len=8192 -timeout=10 \
    -dict="$HERE/azure_json.dict" -artifact_prefix="$WORK/" -print_final_stats=1 \
    "$WORK/corpus" "$HERE/corpus" >"$WORK/fuzz.log" 2>&1
rc=$?
set -e
tail -n 12 "$WORK/fuzz.log"
if [ "$rc" -ne 0 ]; then
    echo "fuzz: fuzz_azure_json failed (exit $rc); log and crashing input in $WORK" >&2
    exit 1
fi
rm -rf "$WORK"
exit 0
