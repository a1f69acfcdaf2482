#!/usr/bin/env bash
# Build Citus 13.2.2 and install it into a PostgreSQL 15 installation, for
# t/300_citus.pl.  Usage: scripts/citus.sh [PG_CONFIG]  (default: $PG_CONFIG,
# else Debian's /usr/lib/postgresql/15/bin/pg_config; a relocated copy made
# by pg-sandbox works the same way).
#
# It installs only into the directories that pg_config names and never
# touches another PostgreSQL installation.  It does nothing when this Citus
# is already installed there.  The build tree is kept under
# $CMK_CITUS_CACHE (default /var/cache/cmk_storage/citus), one per
# pg_config, so installing again (a fresh sandbox, a reinstalled server
# package) takes seconds instead of the ~2.5 minutes of a build.
#
# The source is the tarball of tag v13.2.2: $CITUS_TARBALL, else the copy in
# ../shared/vendor beside the repository (or /work/shared/vendor, where the
# project's machines keep it), else the cache, else downloaded
# from GitHub; in every case it must have the SHA-256 below.  Citus 13.2.2 is
# the last Citus for PostgreSQL 15 and needs one patch for 15.20 and later
# (see below).  Build dependencies are installed with apt-get when missing
# (root only).
set -euo pipefail

CITUS_VERSION=13.2.2
CITUS_SHA256=c8fc76dc8294636a52b1a0dd75a20d8b4a36937df6443e30ca84d8d0464a6bb9
CITUS_URL=https://github.com/citusdata/citus/archive/refs/tags/v$CITUS_VERSION.tar.gz
CITUS_DEPS="liblz4-dev libzstd-dev libkrb5-dev libcurl4-openssl-dev make gcc"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
pg_config=${1:-${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}}
cache=${CMK_CITUS_CACHE:-/var/cache/cmk_storage/citus}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

[ -x "$pg_config" ] || die "no pg_config at $pg_config"
libdir=$("$pg_config" --pkglibdir)
sharedir=$("$pg_config" --sharedir)
if [ -f "$libdir/citus.so" ] &&
    grep -qs "default_version = '13.2-1'" "$sharedir/extension/citus.control"; then
    say "citus $CITUS_VERSION is installed in $libdir"
    exit 0
fi

missing=()
for p in $CITUS_DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages to build Citus (${missing[*]}); run as root or install them"
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

mkdir -p "$cache"
tarball=""
for t in "${CITUS_TARBALL:-}" "$repo/../shared/vendor/citus-$CITUS_VERSION.tar.gz" \
    "/work/shared/vendor/citus-$CITUS_VERSION.tar.gz" "$cache/citus-$CITUS_VERSION.tar.gz"; do
    [ -n "$t" ] && [ -f "$t" ] && { tarball=$t; break; }
done
if [ -z "$tarball" ]; then
    say "downloading $CITUS_URL"
    curl -fsSL -o "$cache/citus-$CITUS_VERSION.tar.gz.part" "$CITUS_URL" ||
        die "could not download Citus; set CITUS_TARBALL to the v$CITUS_VERSION source tarball"
    mv "$cache/citus-$CITUS_VERSION.tar.gz.part" "$cache/citus-$CITUS_VERSION.tar.gz"
    tarball=$cache/citus-$CITUS_VERSION.tar.gz
fi
echo "$CITUS_SHA256  $tarball" | sha256sum -c --quiet - >/dev/null 2>&1 ||
    die "$tarball is not the expected Citus $CITUS_VERSION source (SHA-256 differs)"

# One build tree per PostgreSQL installation: configure records its pg_config.
key=$( { echo "$pg_config"; "$pg_config" --version; } | sha256sum | cut -c1-16)
tree=$cache/build-$key/citus-$CITUS_VERSION
if [ ! -f "$tree/.cmk-built" ]; then
    say "building Citus $CITUS_VERSION for $("$pg_config" --version) in $tree (a few minutes)"
    rm -rf "$cache/build-$key"
    mkdir -p "$cache/build-$key"
    tar -xzf "$tarball" -C "$cache/build-$key"
    cd "$tree"
    # PostgreSQL 15.20 exports have_createdb_privilege(); Citus 13.2.2 defines
    # a static inline function of that name for servers before 16, which no
    # longer compiles.  Rename Citus's copy.
    pvc=src/include/pg_version_compat.h
    awk 'prev ~ /^static inline bool[ \t]*$/ && /^have_createdb_privilege\(void\)/ {
           print "#define have_createdb_privilege citus_compat_have_createdb_privilege" }
         NR > 1 { print prev } { prev = $0 } END { print prev }' "$pvc" > "$pvc.tmp"
    mv "$pvc.tmp" "$pvc"
    grep -q citus_compat_have_createdb_privilege "$pvc" || die "the have_createdb_privilege patch did not apply"
    ./configure PG_CONFIG="$pg_config" > configure.log 2>&1 || { tail -20 configure.log >&2; die "Citus configure failed"; }
    nice make -j"$(nproc)" > build.log 2>&1 || { tail -30 build.log >&2; die "Citus build failed"; }
    touch .cmk-built
fi
cd "$tree"
make install > install.log 2>&1 || { tail -20 install.log >&2; die "Citus make install failed"; }
say "citus $CITUS_VERSION installed into $libdir"
