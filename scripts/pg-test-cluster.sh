#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the test suite.
#
#   eval "$(scripts/pg-test-cluster.sh)"        # start; prints the export lines below on stdout
#   scripts/pg-test-cluster.sh stop "$LAKESCORE_TEST_PG_DIR"
#
# start: initdb in a fresh temp dir (as the `postgres` user when run as root: initdb refuses
# root), listen on a free TCP port on 127.0.0.1 only (socket in the temp dir), trust auth,
# durability off (it is thrown away), create database `lakescore_test`, then print
#
#   export LAKESCORE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/lakescore_test
#   export LAKESCORE_TEST_PG_DIR=DIR
#
# Everything else goes to stderr.  Installs Debian's `postgresql` package when no server
# binaries are found and we are root (set LAKESCORE_PG_NO_INSTALL=1 to forbid that).
# stop DIR: stops the server (immediate) and removes DIR (only a dir this script made).
set -euo pipefail

MARKER=.lakescore-pg-test-cluster
DB=lakescore_test

log() { echo "pg-test-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# Run a command as the `postgres` user when we are root (initdb/postgres refuse root),
# else as ourselves.
as_pg() {
    if ! is_root; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

find_bindir() {
    local d
    if [ -n "${LAKESCORE_PG_BINDIR:-}" ]; then
        echo "$LAKESCORE_PG_BINDIR"
        return 0
    fi
    # newest Debian-packaged server first
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir)
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

ensure_bindir() {
    local d
    if d=$(find_bindir); then
        echo "$d"
        return 0
    fi
    if is_root && [ -z "${LAKESCORE_PG_NO_INSTALL:-}" ] && command -v apt-get >/dev/null 2>&1; then
        log "no PostgreSQL server binaries found; installing Debian's postgresql package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update >&2
        apt-get install -y --no-install-recommends postgresql >&2
        d=$(find_bindir) || die "postgresql installed but no initdb found under /usr/lib/postgresql/*/bin"
        echo "$d"
        return 0
    fi
    die "no PostgreSQL server binaries (initdb, pg_ctl) found; install Debian's 'postgresql' package"
}

free_port() {
    local py
    py=$(command -v python3 || command -v python || true)
    [ -n "$py" ] || die "python3 is needed to pick a free port"
    "$py" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

start() {
    local bindir dir port url tries
    bindir=$(ensure_bindir)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/lakescore-pg.XXXXXX")
    touch "$dir/$MARKER"
    if is_root; then
        if ! id postgres >/dev/null 2>&1; then
            rm -rf "$dir"
            die "running as root but there is no 'postgres' user to run initdb as"
        fi
        chown -R postgres: "$dir"
    fi

    log "initdb in $dir/data ($bindir)"
    if ! (cd "$dir" && as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust \
        -E UTF8 --locale=C >"$dir/initdb.log" 2>&1); then
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        die "initdb failed"
    fi

    tries=0
    while :; do
        tries=$((tries + 1))
        port=$(free_port)
        if (cd "$dir" && as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start </dev/null >&2); then
            break
        fi
        if [ "$tries" -ge 5 ]; then
            tail -n 50 "$dir/server.log" >&2 || true
            rm -rf "$dir"
            die "could not start PostgreSQL (5 attempts)"
        fi
        log "start on port $port failed, retrying with another port"
    done

    if ! "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c "CREATE DATABASE $DB" >&2; then
        stop "$dir" || true
        die "could not create database $DB"
    fi
    echo "$port" >"$dir/port"
    url="postgres://postgres@127.0.0.1:$port/$DB"
    log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') up at $url (dir $dir)"
    echo "export LAKESCORE_TEST_POSTGRES_URL=$url"
    echo "export LAKESCORE_TEST_PG_DIR=$dir"
}

stop() {
    local dir=${1:-} bindir
    [ -n "$dir" ] || die "usage: $0 stop DIR"
    [ -d "$dir" ] || { log "$dir does not exist; nothing to stop"; return 0; }
    [ -f "$dir/$MARKER" ] || die "$dir was not made by this script (no $MARKER); not touching it"
    if [ -f "$dir/data/postmaster.pid" ]; then
        bindir=$(find_bindir) || die "no pg_ctl found to stop $dir"
        (cd "$dir" && as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >&2) ||
            log "pg_ctl stop failed (server already gone?)"
    fi
    rm -rf "$dir"
    log "stopped and removed $dir"
}

# Fault tests: take the server down (a fast shutdown: clients are disconnected, committed
# data is kept, as in a restart or fail-over) and bring it back on the same port.
down() {
    local dir=${1:-} bindir
    [ -f "$dir/$MARKER" ] || die "usage: $0 down DIR (a directory made by this script)"
    bindir=$(find_bindir) || die "no pg_ctl found"
    (cd "$dir" && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2)
}

up() {
    local dir=${1:-} bindir port
    [ -f "$dir/$MARKER" ] || die "usage: $0 up DIR (a directory made by this script)"
    bindir=$(find_bindir) || die "no pg_ctl found"
    port=$(cat "$dir/port")
    (cd "$dir" && as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >&2)
}

case "${1:-start}" in
start) start ;;
stop) stop "${2:-}" ;;
down) down "${2:-}" ;;
up) up "${2:-}" ;;
-h | --help | help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1' (start | stop DIR | down DIR | up DIR)" ;;
esac
