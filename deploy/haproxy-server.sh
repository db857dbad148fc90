#!/usr/bin/env bash
# One instance behind deploy/haproxy.cfg, through haproxy's runtime API (socat):
#
#   deploy/haproxy-server.sh SOCKET SERVER drain   # no new requests; running ones finish
#   deploy/haproxy-server.sh SOCKET SERVER idle    # wait (60 s at most) until it serves none
#   deploy/haproxy-server.sh SOCKET SERVER ready   # take requests again (after its checks pass)
#   deploy/haproxy-server.sh SOCKET SERVER up      # wait (60 s at most) until its checks pass
#
# SOCKET is $HAPROXY_DIR/haproxy.sock, SERVER e.g. app1 (backend `instances`).
# A rolling restart, one instance at a time: drain, idle, stop it (SIGTERM), start it,
# ready, up.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 SOCKET SERVER drain|idle|ready|up" >&2
    exit 2
fi
socket=$1
server=instances/$2

api() {
    echo "$*" | socat -t 5 stdio "unix-connect:$socket"
}

# A field of this server's row in `show stat` (CSV: pxname,svname,qcur,qmax,scur,...).
field() {
    api "show stat" | awk -F, -v be="${server%/*}" -v sv="${server#*/}" -v col="$1" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col || $i == "# " col) n = i; next }
        $1 == be && $2 == sv { print $n }'
}

wait_for() {  # wait_for WHAT TEST...
    local what=$1; shift
    for _ in $(seq 600); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    echo "$server: not $what after 60 s" >&2
    return 1
}

serving_none() { [ "$(field scur)" = 0 ] && [ "$(field qcur)" = 0 ]; }
checks_pass() { case "$(field status)" in UP* | DRAIN*) return 0 ;; *) return 1 ;; esac; }

case "$3" in
drain) api "set server $server state drain" ;;
idle) wait_for idle serving_none ;;
ready) api "set server $server state ready" ;;
up) wait_for up checks_pass ;;
*)
    echo "usage: $0 SOCKET SERVER drain|idle|ready|up" >&2
    exit 2
    ;;
esac
