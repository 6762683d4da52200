#!/usr/bin/env bash
# One sketchd node against a 3-node cluster on NATS JetStream, on the same
# world, in the same run: ingest obs/s, ack p50/p99, and the CPU seconds of
# the sketchd and the nats-server processes (ingest and the query set).
#
#   benches/cluster.sh [SCALE]        default SCALE=0.01 (0.1: a few minutes)
#
# The world comes from the peers harness (../shared/peers, copied to
# $WORK/peers with its own venv, as benches/compare.sh does). The cluster is
# scripts/nats-cluster.sh (pinned nats-server, sync_interval always) with
# three `sketchd serve --cluster` nodes; `sketchd loadgen` spreads its
# collectors over the nodes (collector i -> node i mod 3) and queries the
# first. Every process listens on 127.0.0.1 and is stopped by pid, also on
# errors. Not part of `cargo test` or CI.
#
# Knobs: COLLECTORS=4 BATCH_ROWS=100000 REPEATS=3, SKIP_BUILD=1,
# WORK=<repo>/target/cluster-bench, PEERS_SRC=<repo>/../shared/peers,
# BASE_PORT=51700 (sketchd ports BASE..BASE+3, NATS BASE+10..BASE+15).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=${1:-0.01}
WORK=${WORK:-$REPO/target/cluster-bench}
PEERS_SRC=${PEERS_SRC:-$REPO/../shared/peers}
BASE=${BASE_PORT:-51700}
BIN=$REPO/target/release/sketchd
log() { printf '[cluster-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

[ -d "$PEERS_SRC" ] || { log "no peers harness at $PEERS_SRC"; exit 1; }
mkdir -p "$WORK"
mkdir -p "$WORK/peers" && cp "$PEERS_SRC"/*.py "$PEERS_SRC"/*.txt "$PEERS_SRC"/*.sh "$WORK/peers/"
PY=$WORK/peers/.venv/bin/python
if [ ! -x "$PY" ]; then
  python3 -m venv "$WORK/peers/.venv"
  "$WORK/peers/.venv/bin/pip" install --quiet -r "$WORK/peers/requirements.txt"
fi
DATA=$WORK/peers/data/scale_$SCALE
"$PY" "$WORK/peers/gen_world.py" --scale "$SCALE" --out "$DATA" >&2
[ -n "${SKIP_BUILD:-}" ] || (cd "$REPO" && cargo build --release >&2)

RUN=$(mktemp -d "${TMPDIR:-/tmp}/sketchd-cluster-bench.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$REPO/scripts/nats-cluster.sh" stop "$RUN/nats" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# CPU seconds (user + system) of the given pids, from /proc.
cpu() {
  local total=0 pid
  for pid in "$@"; do
    read -r -a f < "/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "scale=1; $total / $(getconf CLK_TCK)" | bc
}

serve() { # NAME PORT [cluster args...]
  local name=$1 port=$2; shift 2
  SKETCHD_LOG=warn "$BIN" serve --listen "127.0.0.1:$port" --data "$RUN/$name" "$@" \
    >"$RUN/$name.out" 2>"$RUN/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    grep -q "listening" "$RUN/$name.out" 2>/dev/null && return
    sleep 0.1
  done
  log "$name did not start; see $RUN/$name.log"; exit 1
}

loadgen() { # LABEL URLS SKETCHD_PIDS [NATS_PIDS]
  local label=$1 urls=$2 sk=$3 nats=${4:-}
  local sk0 sk1 n0=0 n1=0
  sk0=$(cpu $sk); [ -n "$nats" ] && n0=$(cpu $nats)
  "$BIN" loadgen --server "$urls" --world "$DATA/observations.bin" --truth "$DATA/truth.json" \
    --namespace peers --collectors "${COLLECTORS:-4}" --batch-rows "${BATCH_ROWS:-100000}" \
    --repeats "${REPEATS:-3}" --settle-timeout 0 --json >"$RUN/$label.json"
  sk1=$(cpu $sk); [ -n "$nats" ] && n1=$(cpu $nats)
  python3 - "$RUN/$label.json" "$label" "$sk0" "$sk1" "$n0" "$n1" <<'PY'
import json, sys
path, label = sys.argv[1], sys.argv[2]
sk0, sk1, n0, n1 = map(float, sys.argv[3:7])
i = json.load(open(path))
print(f"| {label} | {i['ingest_obs_per_s']:,.0f} | {i['ack_p50_ms']:.0f} | {i['ack_p99_ms']:.0f} "
      f"| {sk1 - sk0:.1f} | {n1 - n0:.1f} |")
PY
}

echo "| setup | ingest obs/s | ack p50 ms | ack p99 ms | sketchd CPU s | nats-server CPU s |"
echo "|---|---|---|---|---|---|"
serve single $BASE
loadgen "1 node (sled only)" "http://127.0.0.1:$BASE" "${PIDS[0]}"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()

NATS=$("$REPO/scripts/nats-cluster.sh" start "$RUN/nats" $((BASE+10)) $((BASE+11)) $((BASE+12)) $((BASE+13)) $((BASE+14)) $((BASE+15)))
NATS_PIDS=($(cat "$RUN/nats"/n*.pid))
URLS=""
for n in 1 2 3; do
  serve "node$n" $((BASE+n)) --cluster "$NATS" --node "node$n"
  URLS="$URLS${URLS:+,}http://127.0.0.1:$((BASE+n))"
done
loadgen "3 nodes + 3 nats-servers (R3)" "$URLS" "${PIDS[*]}" "${NATS_PIDS[*]}"
