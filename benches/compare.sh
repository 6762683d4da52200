#!/usr/bin/env bash
# sketchd side by side with its peers (Redis HLL, PostgreSQL + hll) on the
# same synthetic world, in the same run, with one table of ratios.
#
#   benches/compare.sh [SCALE]          default SCALE=0.01 (~2 min; 0.1: ~4 min, 1: ~25 min)
#
# It copies the peers harness (../shared/peers, read-only) to $WORK/peers,
# where run_all.sh keeps its venv, worlds (data/scale_<s>, reused when up to
# date) and results; builds sketchd in release mode; and runs run_all.sh with
# PROJECT_BENCH set to this script's --project mode, which starts
# `sketchd serve` on 127.0.0.1:$SKETCHD_PORT with a temporary data directory,
# runs `sketchd loadgen` (ingest + the query set), writes
# $RESULTS_DIR/sketchd.json and stops the server. Every server it starts
# listens on 127.0.0.1 only and is stopped by pid, also on errors and ^C.
# Not part of `cargo test` or CI.
#
# Knobs (environment):
#   PEERS="redis pg"       peers run_all.sh measures (PEERS=none: sketchd only)
#   PG_VARIANTS="11:5"     postgresql-hll variants (add 14:5 for 2^14 registers like Redis)
#   PEERS_SRC=<repo>/../shared/peers   the harness to copy
#   WORK=<repo>/target/compare         harness copy, venv, worlds, results
#   SKETCHD_PORT=50551     loopback port of the sketchd server
#   SKETCHD_METRICS_PORT=59551  loopback port of its Prometheus metrics (the
#                          load generator reports checkpoint, rollup and query time from them)
#   COLLECTORS=4 BATCH_ROWS=100000 REPEATS=5   loadgen settings
#   BENCH_TIMEOUT=1800     seconds each bench (and sketchd's) may run
#   INSTALL_DEPS=1         let run_all.sh apt-get install redis-server postgresql-15 postgresql-15-hll
#   SKIP_BUILD=1           use the existing target/release/sketchd (SKETCHD_BIN: another binary)
#   SKETCHD_MAX_RSS_MB=16384   the sketchd server is killed if its RSS passes this
#   PERF=1                 also record `perf record -g` of the server during the sketchd run
#   SKETCHD_CONFIG=<file>  a TOML configuration for the sketchd server (e.g. memory settings)
#   KEEP_DATA=<dir>        keep the sketchd data directory there (to study its bytes)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/benches/compare.sh"
log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------- --project: sketchd alone
# Run by run_all.sh with DATA_DIR OBS_FILE TRUTH_JSON RESULTS_DIR SCALE set.
project() {
  : "${OBS_FILE:?}" "${TRUTH_JSON:?}" "${RESULTS_DIR:?}"
  local bin=${SKETCHD_BIN:-$REPO/target/release/sketchd}
  local port=${SKETCHD_PORT:-50551}
  [ -x "$bin" ] || die "$bin not built (cargo build --release)"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use by something else; set SKETCHD_PORT"
  fi
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/sketchd-bench.XXXXXX")
  SERVER_PID=""
  PERF_PID=""
  GUARD_PID=""
  trap project_cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  mkdir -p "$RESULTS_DIR"
  local config_args=()
  [ -n "${SKETCHD_CONFIG:-}" ] && config_args=(--config "$SKETCHD_CONFIG")
  local mport=${SKETCHD_METRICS_PORT:-59551}
  SKETCHD_LOG=${SKETCHD_LOG:-info} "$bin" serve --listen "127.0.0.1:$port" --data "$TMP/data" \
    --metrics-listen "127.0.0.1:$mport" "${config_args[@]}" >"$TMP/server.out" 2>"$RESULTS_DIR/sketchd-server.log" &
  SERVER_PID=$!
  local ready=0
  for _ in $(seq 1 300); do
    grep -q "sketchd listening on" "$TMP/server.out" 2>/dev/null && { ready=1; break; }
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = 1 ] || die "sketchd did not start (see $RESULTS_DIR/sketchd-server.log)"
  log "sketchd pid $SERVER_PID on 127.0.0.1:$port, data $TMP/data"
  # Guard the shared machine: stop the server if its RSS passes the limit.
  local max_kib=$(( ${SKETCHD_MAX_RSS_MB:-16384} * 1024 ))
  (
    while kill -0 "$SERVER_PID" 2>/dev/null; do
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)
      if [ "${rss:-0}" -gt "$max_kib" ]; then
        echo "[compare] sketchd RSS ${rss} KiB > SKETCHD_MAX_RSS_MB; killing it" >&2
        kill -KILL "$SERVER_PID" 2>/dev/null
        break
      fi
      sleep 1
    done
  ) &
  GUARD_PID=$!
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    perf record -F 499 -g -p "$SERVER_PID" -o "$RESULTS_DIR/sketchd-perf.data" >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  "$bin" loadgen --server "http://127.0.0.1:$port" --world "$OBS_FILE" --truth "$TRUTH_JSON" \
    --namespace peers --collectors "${COLLECTORS:-4}" --batch-rows "${BATCH_ROWS:-100000}" \
    --repeats "${REPEATS:-5}" --server-pid "$SERVER_PID" --data-dir "$TMP/data" \
    --metrics "http://127.0.0.1:$mport/metrics" \
    --results "$RESULTS_DIR/sketchd.json" --json >"$RESULTS_DIR/sketchd-loadgen.txt"
  stop_perf
  stop_server
  # Bytes on disk once the final checkpoint has run and the log is empty.
  local du_after
  du_after=$(du -sB1 "$TMP/data" | cut -f1)
  python3 - "$RESULTS_DIR/sketchd.json" "$du_after" <<'EOF'
import json, sys
path, du = sys.argv[1], int(sys.argv[2])
with open(path) as f:
    r = json.load(f)
r["footprint"]["disk_bytes_after_shutdown"] = du
with open(path, "w") as f:
    json.dump(r, f, indent=1)
i, fp = r["ingest"], r["footprint"]
print("sketchd: {:,.0f} obs/s, peak RSS {:,.0f} MiB, disk {:,.0f} MiB".format(
    i["obs_per_s"], fp["bytes"] / 2**20, du / 2**20), file=sys.stderr)
EOF
}

stop_perf() {
  if [ -n "$PERF_PID" ] && kill -0 "$PERF_PID" 2>/dev/null; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$PERF_PID" 2>/dev/null || break; sleep 0.2; done
  fi
  PERF_PID=""
}

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    log "stopping sketchd pid $SERVER_PID (final checkpoint)"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 1200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "sketchd did not stop in 120 s; killing it"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}

project_cleanup() {
  stop_perf
  stop_server
  if [ -n "${GUARD_PID:-}" ]; then
    kill "$GUARD_PID" 2>/dev/null || true
    wait "$GUARD_PID" 2>/dev/null || true
  fi
  if [ -n "${KEEP_DATA:-}" ] && [ -d "${TMP:-}/data" ]; then
    rm -rf "$KEEP_DATA" && mv "$TMP/data" "$KEEP_DATA"
  fi
  if [ -n "${TMP:-}" ]; then rm -rf "$TMP"; fi
}

if [ "${1:-}" = "--project" ]; then
  project
  exit 0
fi

# ------------------------------------------------------------ the whole run
SCALE=${1:-0.01}
PEERS_SRC=${PEERS_SRC:-$REPO/../shared/peers}
WORK=${WORK:-$REPO/target/compare}
[ -f "$PEERS_SRC/run_all.sh" ] || die "no peers harness at $PEERS_SRC (set PEERS_SRC)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building sketchd (release)"
  (cd "$REPO" && cargo build --release --bin sketchd) >&2
fi

# run_all.sh writes its venv, worlds and results beside itself: use a copy.
mkdir -p "$WORK/peers"
for f in "$PEERS_SRC"/*.py "$PEERS_SRC"/*.sh "$PEERS_SRC"/requirements.txt "$PEERS_SRC"/README.md; do
  cmp -s "$f" "$WORK/peers/$(basename "$f")" 2>/dev/null || install -m 0755 "$f" "$WORK/peers/"
done

export SKETCHD_BIN=${SKETCHD_BIN:-$REPO/target/release/sketchd}
export SKETCHD_PORT=${SKETCHD_PORT:-50551} COLLECTORS=${COLLECTORS:-4} BATCH_ROWS=${BATCH_ROWS:-100000}
export REPEATS=${REPEATS:-5} BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
export PROJECT_BENCH="bash '$SELF' --project"
peers=${PEERS-"redis pg"}
# run_all.sh treats an empty PEERS as its default; a blank runs no peer.
if [ "$peers" = none ] || [ -z "$peers" ]; then peers=" "; fi
rc=0
PEERS="$peers" "$WORK/peers/run_all.sh" "$SCALE" || rc=$?

PY="$WORK/peers/.venv/bin/python"
SCALE_N=$("$PY" -c "import sys; print(f'{float(sys.argv[1]):g}')" "$SCALE")
RESULTS="$WORK/peers/results/scale_$SCALE_N"
echo
"$PY" - "$RESULTS" "$WORK/peers/data/scale_$SCALE_N/truth.json" <<'EOF' | tee "$RESULTS/compare.md"
"""One table: sketchd beside Redis and PostgreSQL+hll, with ratios and the targets."""
import json, os, platform, sys

res_dir, truth_path = sys.argv[1], sys.argv[2]
sha = None
if os.path.exists(truth_path):
    with open(truth_path) as f:
        sha = json.load(f)["meta"].get("obs_sha256_records")

def load(name):
    p = os.path.join(res_dir, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        r = json.load(f)
    if sha and r.get("dataset", {}).get("sha256_records") != sha:
        print(f"(ignoring {name}.json: measured on other data)")
        return None
    return r

s, redis, pg = load("sketchd"), load("redis"), load("pg_hll")
if s is None:
    print(f"no sketchd results in {res_dir}")
    sys.exit(1)
peers = [("Redis", redis), ("PG hll", pg)]

def g(r, *path):
    for k in path:
        if r is None or not isinstance(r, dict):
            return None
        r = r.get(k)
    return r

def num(x, nd=3):
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}g}"

def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.3g}"

MiB = 2**20
rows = []  # (metric, sketchd, redis, pg, s/redis, s/pg, target, met)

def row(name, sv, rv, pv, fmt=num, target=None, met=None):
    rows.append((name, fmt(sv), fmt(rv), fmt(pv), ratio(sv, rv), ratio(sv, pv), target or "", met))

def verdict(ok):
    return "-" if ok is None else ("yes" if ok else "no")

sv, rv, pv = g(s, "ingest", "obs_per_s"), g(redis, "ingest", "obs_per_s"), g(pg, "ingest", "obs_per_s")
row("**ingest obs/s** (wall)", sv, rv, pv, target=">= 10x Redis",
    met=verdict(sv / rv >= 10 if sv and rv else None))
sset = g(s, "ingest", "obs_per_s_settled")
row("  sketchd obs/s counting its checkpoints until idle", sset, rv, pv, target=">= 10x Redis",
    met=verdict(sset / rv >= 10 if sset and rv else None))
row("ingest wall s (sketchd: until the last durable ack)", g(s, "ingest", "wall_s"),
    g(redis, "ingest", "wall_s"), g(pg, "ingest", "wall_s"))
rows.append(("  sketchd busy after the last ack s (checkpoints)", num(g(s, "ingest", "settle_s")),
             "-", "-", "", "", "", None))
row("server CPU s (ingest; sketchd until idle)", g(s, "ingest", "server_cpu_s"), g(redis, "ingest", "server_cpu_s"),
    g(pg, "ingest", "server_cpu_s"))
row("client CPU s (ingest)", g(s, "ingest", "client_cpu_s"), g(redis, "ingest", "client_cpu_s"),
    g(pg, "ingest", "client_cpu_s"))
rows.append(("sketchd batch ack p50 / p99 ms",
             f"{num(g(s, 'ingest', 'ack_p50_ms'))} / {num(g(s, 'ingest', 'ack_p99_ms'))}", "-", "-", "", "", "", None))
srss = g(s, "footprint", "bytes")
rmem = g(redis, "footprint", "bytes")
rrss = g(redis, "footprint", "used_memory_rss")
row("**server memory MiB** (sketchd peak RSS; Redis used_memory)",
    srss and srss / MiB, rmem and rmem / MiB, None, target="<= 0.45x Redis",
    met=verdict(srss <= 0.45 * rmem if srss and rmem else None))
row("  peak RSS MiB before the queries (sketchd: ingest and its checkpoints)",
    (g(s, "footprint", "peak_rss_before_queries") or 0) / MiB or None, None, None)
row("  RSS MiB (sketchd once idle after ingest; Redis used_memory_rss)",
    (g(s, "footprint", "rss_after_ingest") or 0) / MiB or None, rrss and rrss / MiB, None)
sdisk = g(s, "footprint", "disk_bytes_after_shutdown") or g(s, "footprint", "disk_bytes")
pdisk = g(pg, "footprint", "bytes")
row("**disk MiB** (sketchd data dir after shutdown; PG rollup tables)",
    sdisk and sdisk / MiB, None, pdisk and pdisk / MiB, target="<= PG",
    met=verdict(sdisk <= pdisk if sdisk and pdisk else None))

LAT = [("ip_country_window", "single country, 1 month"),
       ("ip_all_countries", "all countries, 1 month"),
       ("ip_global_window", "global IPs, 1 month"),
       ("ip_global_whole", "global IPs, whole period"),
       ("drop_pct_by_country", "drop % Apr->Nov, all countries"),
       ("org_country_window", "orgs per country, 1 month"),
       ("org_global_window", "orgs global, 1 month"),
       ("ip_org_window", "one org, 1 month"),
       ("ip_all_orgs_window", "every org, 1 month"),
       ("ip_orgs_compare", "every org, Apr against Nov"),
       ("org_retention", "org retention (1 country)")]
# A query kind meets its target when it is 10x faster than Redis, or, where
# the gRPC round trip alone forbids that, within 1.25x of the round trip
# (a health check) measured in the same run; the every-org kinds must also
# answer within their ceiling.
FLOOR = g(s, "rpc_floor_ms")
CEILING_MS = {"ip_all_orgs_window": 150.0, "ip_orgs_compare": 300.0}
rows.append(("**query latency, median ms**", "", "", "", "", "", "", None))
for k, name in LAT:
    sv, rv, pv = (g(x, "latency", k, "median_ms") for x in (s, redis, pg))
    bound = max(0.1 * rv, 1.25 * FLOOR) if rv and FLOOR else (0.1 * rv if rv else None)
    target = "<= max(0.1x Redis, 1.25x RPC)"
    if k in CEILING_MS:
        bound = min(bound, CEILING_MS[k]) if bound is not None else CEILING_MS[k]
        target = f"<= 0.1x Redis, < {CEILING_MS[k]:.0f} ms"
    row(f"{name} (`{k}`)", sv, rv, pv, target=target,
        met=verdict(sv <= bound if sv is not None and bound is not None else None))

ERR = [("ip_country_window", "IPs per country-month"),
       ("ip_global_window", "global IPs per month + whole"),
       ("org_country_window", "orgs per country-month"),
       ("org_global_window", "orgs global per month"),
       ("ip_org_window", "IPs per org-month"),
       ("ip_all_orgs_window", "IPs of every org, 1 month"),
       ("ip_orgs_compare", "drop % of every org"),
       ("drop_pct_by_country", "drop % per country"),
       ("org_retention", "org retention %")]
rows.append(("**error, median / max** (rel %, or abs pp)", "", "", "", "", "", "", None))
for k, name in ERR:
    es, er, ep = (g(x, "errors", k) for x in (s, redis, pg))
    abs_ = (es or er or ep or {}).get("metric") == "abs"
    sc = 1 if abs_ else 100
    def fmt(e):
        if not e or not e.get("n"):
            return "-"
        return f"{e['median'] * sc:.2f} / {e['max'] * sc:.2f}{' pp' if abs_ else ' %'}"
    med = lambda e: e.get("median") if e and e.get("n") else None
    mx = lambda e: e.get("max") if e and e.get("n") else None
    # "No worse": median and p95 within 0.1 / 0.25 (points of %, or pp) of
    # Redis's; both use 2^14 six-bit registers, so the rest is sampling noise.
    ok = None
    if es and er and es.get("n") and er.get("n"):
        ok = (es["median"] * sc <= er["median"] * sc + 0.1
              and es["p95"] * sc <= er["p95"] * sc + 0.25)
    rows.append((f"{name} (`{k}`)", fmt(es), fmt(er), fmt(ep), ratio(med(es), med(er)),
                 ratio(med(es), med(ep)), "<= Redis", verdict(ok)))

if g(s, "ingest", "error"):
    print(f"sketchd ingest STOPPED EARLY after {g(s, 'ingest', 'n_obs'):,} observations: "
          f"{g(s, 'ingest', 'error')}")
host = g(s, "host") or {}
print(f"scale {s.get('scale')}: {g(s, 'dataset', 'n_obs'):,} observations; "
      f"{host.get('cpu_model', platform.processor())}, {host.get('cpus')} CPUs, {host.get('mem_gib')} GiB; "
      f"sketchd: {g(s, 'config', 'collectors')} collectors x {g(s, 'config', 'batch_rows')} rows, "
      f"2^{g(s, 'config', 'precision')} registers")
print()
print("| metric | sketchd | Redis | PG hll | sketchd / Redis | sketchd / PG | target | met |")
print("|---|---|---|---|---|---|---|---|")
for name, a, b, c, d, e, t, m in rows:
    print(f"| {name} | {a} | {b} | {c} | {d} | {e} | {t} | {m or ''} |")
print()
floor = g(s, "rpc_floor_ms")
if floor:
    print(f"sketchd gRPC round trip floor (health check, median): {floor:.3f} ms")
btw = g(s, "rpc_between_counts")
if btw:
    print(f"sketchd health check between Count calls (median): {btw['health_ms']:.3f} ms, "
          f"the Count {btw['count_ms']:.3f} ms (the targets use the floor above)")
w = g(s, "server_work")
if w:
    print(f"sketchd server work until idle (its metrics): {w['checkpoints']:.0f} checkpoints "
          f"{w['checkpoint_s']:.1f} s, {w['rollup_passes']:.0f} rollup passes {w['rollup_s']:.1f} s "
          f"({w['rollup_blocks']:,.0f} blocks), {w['wal_syncs']:.0f} log syncs {w['wal_sync_s']:.1f} s")
    per_rpc = ", ".join(f"{rpc} {v['mean_ms']:.3f}" for rpc, v in sorted(w.get("query_rpcs", {}).items()))
    if per_rpc:
        print(f"sketchd server-side query time, mean ms per call: {per_rpc}")
print("Ratios are sketchd / peer: above 1 is better for obs/s, below 1 is better for memory, "
      "latency and error. Latency is client-observed wall time per call (median of all executions). "
      "An error is 'no worse' when its median and p95 are within 0.1 and 0.25 (points of %, or pp) of Redis's.")
EOF
if [ "$rc" != 0 ]; then
  log "run_all.sh reported a failure (exit $rc); see the logs in $RESULTS"
fi
exit "$rc"
