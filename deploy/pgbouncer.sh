#!/usr/bin/env bash
# PgBouncer from deploy/pgbouncer.ini: `deploy/pgbouncer.sh start|stop|status`.
#
# start is idempotent (a running PgBouncer on the port is left alone) and waits until it
# accepts connections; stop shuts it down safely (SIGINT: running transactions finish)
# and waits for it to exit. PgBouncer refuses to run as root: as root it runs as
# $PGBOUNCER_OS_USER (postgres).
#
# Environment (defaults):
#   PGBOUNCER_PORT=6432  PGBOUNCER_LISTEN_ADDR=127.0.0.1
#   PGBOUNCER_UPSTREAM_HOST=127.0.0.1  PGBOUNCER_UPSTREAM_PORT=5432
#   PGBOUNCER_POOL_SIZE=20  PGBOUNCER_MAX_CLIENT_CONN=1000
#   PGBOUNCER_USERS="root postgres $USER"   (the auth_file's users; trust: no passwords)
#   PGBOUNCER_AUTH_TYPE=trust  PGBOUNCER_DIR=/tmp/blogapi-pgbouncer-$PGBOUNCER_PORT
#   PGBOUNCER_OS_USER=postgres (when run as root)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
port=${PGBOUNCER_PORT:-6432}
listen=${PGBOUNCER_LISTEN_ADDR:-127.0.0.1}
dir=${PGBOUNCER_DIR:-/tmp/blogapi-pgbouncer-$port}
os_user=${PGBOUNCER_OS_USER:-postgres}
pidfile=$dir/pgbouncer.pid
pgbouncer=${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}

running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

accepts() {
    (exec 3<>"/dev/tcp/$listen/$port") 2>/dev/null
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$os_user" -- "$@"; else "$@"; fi
}

start() {
    if running; then
        echo "pgbouncer already running on $listen:$port (pid $(cat "$pidfile"))"
        return 0
    fi
    if [ ! -x "$pgbouncer" ]; then
        echo "pgbouncer not found: run 'make deploy-tools' (Debian package pgbouncer)" >&2
        return 1
    fi
    mkdir -p "$dir"
    local users=${PGBOUNCER_USERS:-root postgres ${USER:-$(id -un)}}
    local admin=${users%% *}
    : >"$dir/userlist.txt"
    for user in $users; do printf '"%s" ""\n' "$user" >>"$dir/userlist.txt"; done
    sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@LISTEN_ADDR@|$listen|g" \
        -e "s|@UPSTREAM_HOST@|${PGBOUNCER_UPSTREAM_HOST:-127.0.0.1}|g" \
        -e "s|@UPSTREAM_PORT@|${PGBOUNCER_UPSTREAM_PORT:-5432}|g" \
        -e "s|@POOL_SIZE@|${PGBOUNCER_POOL_SIZE:-20}|g" \
        -e "s|@MAX_CLIENT_CONN@|${PGBOUNCER_MAX_CLIENT_CONN:-1000}|g" \
        -e "s|@AUTH_TYPE@|${PGBOUNCER_AUTH_TYPE:-trust}|g" \
        -e "s|@ADMIN_USER@|$admin|g" \
        "$here/pgbouncer.ini" >"$dir/pgbouncer.ini"
    if [ "$(id -u)" = 0 ]; then chown -R "$os_user" "$dir"; fi
    rm -f "$pidfile"
    as_owner "$pgbouncer" -q -d "$dir/pgbouncer.ini"
    for _ in $(seq 100); do
        if accepts; then
            echo "pgbouncer on $listen:$port (transaction pooling) in front of" \
                "${PGBOUNCER_UPSTREAM_HOST:-127.0.0.1}:${PGBOUNCER_UPSTREAM_PORT:-5432}"
            return 0
        fi
        sleep 0.1
    done
    echo "pgbouncer did not start; its log ($dir/pgbouncer.log):" >&2
    tail -n 20 "$dir/pgbouncer.log" >&2 || true
    return 1
}

stop() {
    if ! running; then
        echo "pgbouncer is not running on port $port"
        return 0
    fi
    local pid
    pid=$(cat "$pidfile")
    kill -INT "$pid"
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { echo "pgbouncer stopped"; return 0; }
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    echo "pgbouncer did not finish its transactions within 30 s: terminated"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status)
    if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 3; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
