#!/usr/bin/env bash
# A 3-server NATS JetStream cluster on loopback, for tests and for trying
# sketchd's cluster mode by hand.
#
#   scripts/nats-cluster.sh start DIR [C1 C2 C3 R1 R2 R3]
#       installs the pinned nats-server (scripts/nats-server.sh), writes
#       DIR/nN.conf, starts servers n1..n3 with client ports C1..C3 (default
#       4222-4224) and cluster ports R1..R3 (default 6222-6224), writes
#       their pids to DIR/nN.pid, waits until every client port accepts
#       connections, and prints the client URLs (comma-separated) for
#       `sketchd serve --cluster`.
#   scripts/nats-cluster.sh stop DIR
#       kills every server of DIR by pid (SIGTERM, then SIGKILL).
#
# Every server runs with `jetstream { sync_interval: always }`: JetStream's
# default flushes to disk every two minutes, and acknowledged messages can
# be lost when machines fail together. `max_payload: 8MB` lets a batch of
# 100,000 rows (about 1.4 MB in the log) through; the default is 1 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start DIR [C1 C2 C3 R1 R2 R3] | stop DIR" >&2
    exit 2
fi

case "$cmd" in
start)
    shift 2
    if [ $# -ne 0 ] && [ $# -ne 6 ]; then
        echo "usage: $0 start DIR [C1 C2 C3 R1 R2 R3]" >&2
        exit 2
    fi
    client=("${1:-4222}" "${2:-4223}" "${3:-4224}")
    route=("${4:-6222}" "${5:-6223}" "${6:-6224}")
    bin="$("$here/nats-server.sh")"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    for i in 0 1 2; do
        n="n$((i + 1))"
        routes=""
        for j in 0 1 2; do
            [ "$j" -eq "$i" ] && continue
            routes="$routes${routes:+, }\"nats-route://127.0.0.1:${route[$j]}\""
        done
        mkdir -p "$dir/$n"
        cat > "$dir/$n.conf" <<CONF
server_name: $n
listen: 127.0.0.1:${client[$i]}
max_payload: 8MB
jetstream {
  store_dir: "$dir/$n"
  sync_interval: always
}
cluster {
  name: sketchd
  listen: 127.0.0.1:${route[$i]}
  routes: [$routes]
}
CONF
        "$bin" -c "$dir/$n.conf" > "$dir/$n.log" 2>&1 &
        echo $! > "$dir/$n.pid"
    done
    for i in 0 1 2; do
        for _ in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/${client[$i]}") 2>/dev/null; then
                continue 2
            fi
            sleep 0.1
        done
        echo "error: nats-server n$((i + 1)) did not listen on ${client[$i]}; see $dir/n$((i + 1)).log" >&2
        exit 1
    done
    echo "nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"
    ;;
stop)
    for pidfile in "$dir"/n*.pid; do
        [ -e "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    ;;
*)
    echo "usage: $0 start DIR [C1 C2 C3 R1 R2 R3] | stop DIR" >&2
    exit 2
    ;;
esac
