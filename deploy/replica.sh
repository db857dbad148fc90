#!/usr/bin/env bash
# A PostgreSQL streaming replica of the local primary: `deploy/replica.sh start|stop|status|destroy`.
#
# start makes the replica on first use (`pg_basebackup -R` from the primary into
# $REPLICA_DIR: a physical copy that streams the primary's WAL), then starts it as a second
# cluster on $REPLICA_PORT and waits until it streams. It is idempotent: a running replica
# is left alone, an existing data directory is reused (and made anew if it can no longer
# catch up: there is no replication slot, so the primary keeps no WAL for a stopped copy).
# stop shuts it down (fast: running queries are cancelled) and keeps its data; destroy
# stops it and removes its data directory. blogapi reads from it with
# READ_DATABASE_URL=postgresql://USER@127.0.0.1:$REPLICA_PORT/DB (docs/scaling.md).
#
# The primary must accept replication connections from 127.0.0.1: if its pg_hba.conf has
# no `host replication` line for 127.0.0.1/32, start appends one (trust, as the other local
# lines of a test machine) and reloads the primary, and says so. Production primaries use
# a replication role with a password or certificate instead; see docs/scaling.md.
#
# Environment (defaults):
#   REPLICA_PORT=5433  REPLICA_DIR=/tmp/blogapi-replica-$REPLICA_PORT
#   REPLICA_PRIMARY_HOST=127.0.0.1  REPLICA_PRIMARY_PORT=5432
#   REPLICA_USER=postgres  (a role with REPLICATION, for pg_basebackup and streaming)
#   REPLICA_OS_USER=postgres (when run as root)  PG_BIN=/usr/lib/postgresql/15/bin
set -euo pipefail

port=${REPLICA_PORT:-5433}
dir=${REPLICA_DIR:-/tmp/blogapi-replica-$port}
primary_host=${REPLICA_PRIMARY_HOST:-127.0.0.1}
primary_port=${REPLICA_PRIMARY_PORT:-5432}
replication_user=${REPLICA_USER:-postgres}
os_user=${REPLICA_OS_USER:-postgres}
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
marker="# added by blogapi deploy/replica.sh"

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$os_user" -- "$@"; else "$@"; fi
}

on_primary() {  # on_primary SQL: one value, as the replication user
    as_owner "$bin/psql" -X -Atq -h "$primary_host" -p "$primary_port" -U "$replication_user" -d postgres -c "$1"
}

running() {
    [ -f "$dir/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1
}

allow_replication() {
    # pg_hba_file_rules is what the primary has loaded; `all` in the database column does not
    # match replication connections, only the keyword `replication` does.
    local rules
    rules=$(on_primary "SELECT count(*) FROM pg_hba_file_rules WHERE type = 'host'
        AND 'replication' = ANY(database) AND address = '127.0.0.1' AND netmask = '255.255.255.255'
        AND (user_name = '{all}' OR '$replication_user' = ANY(user_name))")
    if [ "$rules" != 0 ]; then return 0; fi
    local hba
    hba=$(on_primary "SHOW hba_file")
    if ! grep -qF "$marker" "$hba"; then
        printf 'host    replication     all             127.0.0.1/32            trust  %s\n' "$marker" >>"$hba"
    fi
    on_primary "SELECT pg_reload_conf()" >/dev/null
    echo "primary: added 'host replication all 127.0.0.1/32 trust' to $hba and reloaded it"
}

create() {
    allow_replication
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown "$os_user" "$dir"; fi
    chmod 700 "$dir"
    echo "copying the primary $primary_host:$primary_port into $dir (pg_basebackup -R)"
    as_owner "$bin/pg_basebackup" -h "$primary_host" -p "$primary_port" -U "$replication_user" \
        -D "$dir" -R -X stream -c fast
    # A hot standby needs at least the primary's values of these.
    local setting settings=""
    for setting in max_connections max_worker_processes max_wal_senders max_prepared_transactions \
        max_locks_per_transaction; do
        settings+="$setting = $(on_primary "SHOW $setting")"$'\n'
    done
    # Debian keeps the configuration outside the data directory, so the copy has none.
    as_owner tee "$dir/postgresql.conf" >/dev/null <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
hot_standby = on
hot_standby_feedback = on
shared_buffers = 64MB
timezone = 'UTC'
logging_collector = off
$settings
EOF
    as_owner tee "$dir/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
}

on_replica() {  # on_replica SQL: one value
    as_owner "$bin/psql" -X -Atq -h 127.0.0.1 -p "$port" -U "$replication_user" -d postgres -c "$1" 2>/dev/null
}

launch() {  # start the cluster in $dir; 0 once it streams from the primary
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/postgresql.log" -w -t 60 start >/dev/null
    for _ in $(seq 150); do
        if [ "$(on_replica 'SELECT status FROM pg_stat_wal_receiver')" = streaming ]; then
            echo "replica on 127.0.0.1:$port streaming from $primary_host:$primary_port ($dir)"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start() {
    if running; then
        echo "replica already running on 127.0.0.1:$port ($dir)"
        return 0
    fi
    local fresh=no
    if [ ! -f "$dir/PG_VERSION" ]; then
        create
        fresh=yes
    fi
    if launch; then return 0; fi
    if [ "$fresh" = no ]; then
        # A copy stopped long ago may need WAL the primary no longer keeps (no replication
        # slot, so that a forgotten replica never fills the primary's disk): make it anew.
        echo "the existing replica in $dir does not stream (its log follows); copying the primary anew" >&2
        tail -n 5 "$dir/postgresql.log" >&2 || true
        stop
        rm -rf "$dir"
        create
        if launch; then return 0; fi
    fi
    echo "the replica does not stream from the primary; its log ($dir/postgresql.log):" >&2
    tail -n 20 "$dir/postgresql.log" >&2 || true
    return 1
}

stop() {
    if ! running; then
        echo "replica is not running on port $port"
        return 0
    fi
    as_owner "$bin/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null
    echo "replica stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
destroy)
    stop
    rm -rf "$dir"
    echo "replica data removed ($dir)"
    ;;
status)
    if running; then echo "running on 127.0.0.1:$port ($dir)"; else echo "stopped"; exit 3; fi
    ;;
*)
    echo "usage: $0 start|stop|status|destroy" >&2
    exit 2
    ;;
esac
