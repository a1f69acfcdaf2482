# Shared helpers for scripts/*.sh: dependencies, build, running as the
# unprivileged postgres user.  Sourced, not executed.

PG_MAJOR=15
# CMK_PG_BINDIR selects another (relocated) copy of the server, so that
# several checkouts can build, install and test side by side.
PG_BINDIR=${CMK_PG_BINDIR:-/usr/lib/postgresql/$PG_MAJOR/bin}
PGXS_DIR=$(dirname "$PG_BINDIR")/lib/pgxs
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

APT_PACKAGES="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib
  libssl-dev libcurl4-openssl-dev libjansson-dev pkg-config make gcc
  libipc-run-perl openssl nodejs clang libclang-rt-14-dev lz4 zstd gdb valgrind"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# Install the Debian packages that are missing (root only).
ensure_packages() {
    local missing=()
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root or install them"
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

build_and_install() {
    say "building cmk_storage"
    make -C "$REPO" -s PG_CONFIG="$PG_BINDIR/pg_config" clean >/dev/null 2>&1 || true
    local out
    out=$(make -C "$REPO" -s PG_CONFIG="$PG_BINDIR/pg_config" 2>&1) || { echo "$out" >&2; die "build failed"; }
    if echo "$out" | grep -q "warning:"; then
        echo "$out" >&2
        die "the build produced compiler warnings"
    fi
    make -C "$REPO" -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null || die "make install failed (run as root)"
}

# Citus 13.2.2 for t/300_citus.pl, in the server copy under test
# (scripts/citus.sh: a no-op when installed, the build tree cached under
# /var/cache/cmk_storage/citus; a first build takes ~2.5 minutes on 2 cores).
ensure_citus() {
    say "Citus for t/300_citus.pl (scripts/citus.sh)"
    bash "$REPO/scripts/citus.sh" "$PG_BINDIR/pg_config"
}

# A scratch directory the postgres user owns; PostgreSQL refuses to run as root.
make_workdir() {
    local d
    d=$(mktemp -d /tmp/cmk_storage.XXXXXX)
    chmod 755 "$d"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$d"; fi
    echo "$d"
}

# Run a command as the postgres user when we are root, else as ourselves.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" "$@"
    else
        env PATH="$PG_BINDIR:$PATH" "$@"
    fi
}

# The PostgreSQL source tree of the server's major version (scripts/memcheck.sh
# needs its src/tools/valgrind.supp): $PGSRC, else a tree cached under
# $CMK_PGSRC_CACHE (where test/regress-oracle/run.sh keeps it too), else
# fetched there with "apt-get source" (root only).  Prints its path.
pg_source_dir() {
    local cache=${CMK_PGSRC_CACHE:-/var/cache/cmk_storage/pgsrc} d
    if [ -n "${PGSRC:-}" ]; then echo "$PGSRC"; return 0; fi
    for d in "$cache"/postgresql-"$PG_MAJOR"-*/; do
        [ -f "$d/src/tools/valgrind.supp" ] && { echo "${d%/}"; return 0; }
    done
    [ "$(id -u)" -eq 0 ] || { say "no PostgreSQL source: set PGSRC or run as root to fetch it"; return 1; }
    say "fetching the source of postgresql-$PG_MAJOR into $cache"
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
                > /etc/apt/sources.list.d/debian-src.sources
        elif [ -f /etc/apt/sources.list ]; then
            sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/debian-src.list
        fi
    fi
    apt-get update -qq >&2 || true
    command -v dpkg-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >&2
    mkdir -p "$cache"
    (cd "$cache" && apt-get source -qq "postgresql-$PG_MAJOR" >&2) || return 1
    for d in "$cache"/postgresql-"$PG_MAJOR"-*/; do
        [ -f "$d/src/tools/valgrind.supp" ] && { echo "${d%/}"; return 0; }
    done
    return 1
}
