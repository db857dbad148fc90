#!/usr/bin/env bash
# A PostgreSQL formation under pg_auto_failover: `deploy/failover.sh start|stop|status|destroy`.
#
# Three clusters on this machine, each run by its own `pg_autoctl` keeper: a monitor on
# $FAILOVER_PORT and two nodes on $FAILOVER_PORT+1 and +2, with synchronous replication
# (pg_auto_failover's default for two nodes: `synchronous_standby_names = 'ANY 1 (...)'`, so
# a commit the primary acknowledged is on the secondary too). When the primary dies, the
# monitor promotes the secondary; blogapi finds whichever node is writable with a
# multi-host URL (docs/scaling.md, "Failover"):
#   DATABASE_URL=postgresql+asyncpg://USER@/DB?host=127.0.0.1:5441&host=127.0.0.1:5442&target_session_attrs=read-write
#
# start makes the formation on first use (monitor, then node1 as primary, then node2 as its
# secondary), or starts the keepers of an existing one; either way it waits (bounded) until
# the formation has a primary and a secondary again, and prints which node is which. A node
# that was the primary before a failover rejoins as the secondary (pg_autoctl rewinds it).
# It is idempotent: running keepers are left alone. stop stops the keepers (fast) and keeps the
# data; destroy stops them and removes $FAILOVER_DIR. status prints the formation's state
# (exit 3 if it is not running). stop-primary stops the current primary immediately (its
# keeper and postgres, no checkpoint), a failover drill (tests/faults/test_failover.py).
#
# The monitor's timings are shortened for a test machine (a node is failed over ~2 s after
# it stops answering, and the promoted node waits 3 s for the old primary to demote itself
# instead of 30 s; a primary cut off from the monitor and its standby demotes itself after
# 2 s instead of 20 s); production keeps pg_auto_failover's defaults (docs/scaling.md).
# Authentication is trust from 127.0.0.1 and no TLS, as the other local clusters of a test
# machine; production formations use --auth scram-sha-256 and --ssl-mode verify-full.
#
# Environment (defaults):
#   FAILOVER_PORT=5440 (the monitor; nodes on +1, +2)  FAILOVER_DIR=/tmp/blogapi-failover-$FAILOVER_PORT
#   FAILOVER_OS_USER=postgres (when run as root)  PG_BIN=/usr/lib/postgresql/15/bin
#   FAILOVER_WAIT=90 (seconds start waits for a primary and a secondary)
set -euo pipefail

port=${FAILOVER_PORT:-5440}
dir=${FAILOVER_DIR:-/tmp/blogapi-failover-$port}
os_user=${FAILOVER_OS_USER:-postgres}
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
wait_seconds=${FAILOVER_WAIT:-90}
monitor_uri="postgres://autoctl_node@127.0.0.1:$port/pg_auto_failover?sslmode=disable"
members="monitor node1 node2"

as_owner() {
    # pg_autoctl keeps its configuration and state under XDG_CONFIG_HOME / XDG_DATA_HOME:
    # inside $dir, so that destroy leaves nothing behind in the OS user's home.
    local command=(env "PG_CONFIG=$bin/pg_config" "PATH=$bin:$PATH"
        "XDG_CONFIG_HOME=$dir/config" "XDG_DATA_HOME=$dir/share" "$@")
    if [ "$(id -u)" = 0 ]; then runuser -u "$os_user" -- "${command[@]}"; else "${command[@]}"; fi
}

node_port() {  # node_port node1 -> 5441
    echo $((port + ${1#node}))
}

running() {  # running MEMBER: its keeper runs
    [ -f "$dir/$1/PG_VERSION" ] && as_owner pg_autoctl status --pgdata "$dir/$1" >/dev/null 2>&1
}

on_monitor() {  # on_monitor SQL: one value
    as_owner "$bin/psql" -X -Atq -h 127.0.0.1 -p "$port" -U autoctl_node -d pg_auto_failover -c "$1" 2>/dev/null
}

launch() {  # launch MEMBER pg_autoctl-arguments...: run a keeper in the background, logging to $dir/MEMBER.log
    local member=$1
    shift
    # setsid: the keeper outlives this script and does not get the caller's signals.
    as_owner setsid pg_autoctl "$@" >>"$dir/$member.log" 2>&1 </dev/null &
}

wait_for() {  # wait_for WHAT SECONDS COMMAND...: 0 once COMMAND succeeds
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq $((seconds * 4))); do
        if "$@"; then return 0; fi
        sleep 0.25
    done
    echo "$what did not happen within ${seconds}s; the logs in $dir follow" >&2
    local member
    for member in $members; do
        if [ -f "$dir/$member.log" ]; then
            echo "--- $dir/$member.log" >&2
            tail -n 15 "$dir/$member.log" >&2
        fi
    done
    return 1
}

monitor_ready() {
    [ "$(on_monitor 'SELECT 1 FROM pgautofailover.formation LIMIT 1')" = 1 ]
}

settled() {  # both nodes serve; one is the primary, the other its secondary, as reported and assigned
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$(node_port node1)" \
        && "$bin/pg_isready" -q -h 127.0.0.1 -p "$(node_port node2)" \
        && [ "$(on_monitor "SELECT count(*) FILTER (WHERE reportedstate = 'primary' AND goalstate = 'primary')
        || ' ' || count(*) FILTER (WHERE reportedstate = 'secondary' AND goalstate = 'secondary')
        FROM pgautofailover.node")" = "1 1" ]
}

node_state() {  # node_state node1: its reported state on the monitor
    on_monitor "SELECT reportedstate FROM pgautofailover.node WHERE nodename = '$1'"
}

create_monitor() {
    echo "creating the pg_auto_failover monitor on 127.0.0.1:$port ($dir/monitor)"
    launch monitor create monitor --pgdata "$dir/monitor" --pgport "$port" --hostname 127.0.0.1 \
        --auth trust --no-ssl --run
    wait_for "the monitor's start" "$wait_seconds" monitor_ready
    # Failover in seconds on a test machine (pg_auto_failover's defaults in parentheses):
    # health checks every second (5 s), one retry (2) after 0.5 s (2 s), a node unhealthy 2 s
    # after its last report (20 s), and the promoted node's wait for the old primary to
    # demote itself 3 s (30 s): most of the time writes are refused after a primary dies.
    # The nodes' network_partition_timeout (create_node) must stay below the last one.
    as_owner "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -d pg_auto_failover \
        -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
        -c "ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000" \
        -c "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" \
        -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" \
        -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 2000" \
        -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 3000" \
        -c "SELECT pg_reload_conf()" >/dev/null
}

create_node() {  # create_node node1 STATE: make it and wait until it reports STATE
    local node=$1 state=$2
    echo "creating $node on 127.0.0.1:$(node_port "$node") ($dir/$node)"
    launch "$node" create postgres --pgdata "$dir/$node" --pgport "$(node_port "$node")" \
        --hostname 127.0.0.1 --name "$node" --monitor "$monitor_uri" --auth trust --no-ssl \
        --pg-hba-lan --run
    wait_for "$node becoming $state" "$wait_seconds" test_state "$node" "$state"
    # A primary that reaches neither the monitor nor its standby demotes itself after this
    # (20 s): under the monitor's primary_demote_timeout (3 s, below), so that two primaries
    # never take writes at once.
    as_owner pg_autoctl config set --pgdata "$dir/$node" timeout.network_partition_timeout 2 >/dev/null
}

test_state() {
    [ "$(node_state "$1")" = "$2" ]
}

start() {
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown "$os_user" "$dir"; fi
    chmod 700 "$dir"
    if [ ! -f "$dir/monitor/PG_VERSION" ]; then
        create_monitor
    elif ! running monitor; then
        launch monitor run --pgdata "$dir/monitor"
        wait_for "the monitor's start" "$wait_seconds" monitor_ready
    fi
    local node
    for node in node1 node2; do
        if [ ! -f "$dir/$node/PG_VERSION" ]; then
            # The first node becomes the primary, the second its secondary.
            if [ "$node" = node1 ]; then create_node node1 single; else create_node node2 secondary; fi
        elif ! running "$node"; then
            launch "$node" run --pgdata "$dir/$node"
        fi
    done
    wait_for "a primary and a secondary" "$wait_seconds" settled
    for node in node1 node2; do
        echo "$node on 127.0.0.1:$(node_port "$node"): $(node_state "$node")"
    done
}

stop() {
    local member stopped=yes
    # The nodes first: a node stopped after its monitor keeps retrying it.
    for member in node1 node2 monitor; do
        if running "$member"; then
            as_owner pg_autoctl stop --pgdata "$dir/$member" >/dev/null 2>&1 || true
            stopped=no
        fi
    done
    for member in node1 node2 monitor; do
        wait_for "$member stopping" 60 not_running "$member"
    done
    if [ "$stopped" = yes ]; then echo "the formation is not running"; else echo "the formation stopped"; fi
}

not_running() {
    ! running "$1" && ! as_owner "$bin/pg_ctl" -D "$dir/$1" status >/dev/null 2>&1
}

stop_primary() {  # a failover drill: the primary's keeper and postgres stop at once, as in a crash
    local node
    node=$(on_monitor "SELECT nodename FROM pgautofailover.node WHERE reportedstate = 'primary'")
    if [ -z "$node" ]; then
        echo "the formation has no primary" >&2
        return 1
    fi
    # --immediate: postgres quits without a checkpoint (SIGQUIT), the keeper with it, so it
    # does not restart postgres; the monitor fails the node over.
    as_owner pg_autoctl stop --immediate --pgdata "$dir/$node"
    echo "stopped the primary $node (127.0.0.1:$(node_port "$node")) immediately"
}

case "${1:-}" in
start) start ;;
stop-primary) stop_primary ;;
stop) stop ;;
destroy)
    stop
    rm -rf "$dir"
    echo "formation data removed ($dir)"
    ;;
status)
    if running monitor; then
        as_owner pg_autoctl show state --pgdata "$dir/monitor"
    else
        echo "stopped"
        exit 3
    fi
    ;;
*)
    echo "usage: $0 start|stop|status|destroy|stop-primary" >&2
    exit 2
    ;;
esac
