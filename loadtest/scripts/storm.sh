#!/usr/bin/env bash
# Reconnect storm: what happens to connected devices while a fleet reconnects at once.
#
#   loadtest/scripts/storm.sh [--config broker.toml] [--storm-devices N] [--storm-nice N]
#                             [--out DIR] [--repeat N]
#
# Starts the release broker on loopback, then, for each repetition:
#   1. calm: loadtest A alone, 100 connected devices publishing QoS 1 every 100 ms for
#      10 s, one subscriber timing every message;
#   2. storm: A again, and 4 s into it loadtest B connects --storm-devices (default 5,000)
#      at once (`--scenario storm`).
# It prints A's e2e p99 (calm and during the storm), their ratio, and B's outcome.
#
# B's client-side handshakes run on this machine too, which a real storm's devices do
# not. --storm-nice (default 19) runs B at that nice value, so it takes only the CPU the
# broker and A leave; --storm-nice 0 measures the harsher shared-CPU case.
#
# Everything listens and connects on 127.0.0.1 only; every run is bounded in devices and
# time.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# free_port, wait_port, stop_pid.
# shellcheck source=loadtest/scripts/lib.sh
. "$ROOT/loadtest/scripts/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CONFIG=""
STORM=5000
STORM_NICE=19
REPEAT=1
OUT=""
die() { echo "storm: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --storm-devices) STORM="$2"; shift 2 ;;
    --storm-nice) STORM_NICE="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$STORM" in ''|*[!0-9]*) die "--storm-devices must be a number" ;; esac
case "$STORM_NICE" in ''|*[!0-9]*) die "--storm-nice must be 0..19" ;; esac
case "$REPEAT" in ''|*[!0-9]*) die "--repeat must be a number" ;; esac
[ "$STORM" -ge 1 ] && [ "$STORM" -le 20000 ] || die "--storm-devices must be 1..20000"
[ "$STORM_NICE" -le 19 ] || die "--storm-nice must be 0..19"
[ "$REPEAT" -ge 1 ] && [ "$REPEAT" -le 10 ] || die "--repeat must be 1..10"

(cd "$ROOT" && cargo build --release -q -p broker -p loadtest)
BROKER="$TARGET/release/broker"
LOADTEST="$TARGET/release/loadtest"
[ -n "$OUT" ] || OUT="$TARGET/storm/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d "${TMPDIR:-/tmp}/storm.XXXXXX")"
PID=""
cleanup() {
  stop_pid "$PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MQTT=$(free_port); ADMIN=$(free_port); METRICS=$(free_port)
export BROKER_ADMIN_PASSWORD="storm-$RANDOM-$RANDOM-$RANDOM"
args=(--data-dir "$WORK/data" --mqtt-listen "127.0.0.1:$MQTT" --admin-listen "127.0.0.1:$ADMIN"
      --metrics-listen "127.0.0.1:$METRICS" --est-listen 127.0.0.1:0)
[ -z "$CONFIG" ] || args=(--config "$CONFIG" "${args[@]}")
"$BROKER" "${args[@]}" >"$OUT/broker.log" 2>&1 &
PID=$!
wait_port "$MQTT" "$PID" 30 && wait_port "$ADMIN" "$PID" 30 \
  || die "the broker did not start (see $OUT/broker.log)"
"$BROKER" print-config ${CONFIG:+--config "$CONFIG"} >"$OUT/broker-config.toml"

COMMON=(--broker "127.0.0.1:$MQTT" --admin "https://127.0.0.1:$ADMIN"
        --server-ca "$WORK/data/server.crt" --quiet)
A=(run "${COMMON[@]}" --devices 100 --publish-interval 100 --messages 100 --qos 1
   --subscribers 1 --duration 60)
B=(run "${COMMON[@]}" --scenario storm --devices "$STORM" --concurrency "$STORM" --messages 1
   --publish-interval 1000 --subscribers 0 --connect-timeout 20 --duration 60)

p99() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["e2e_latency_ms"]["p99"])' "$1"; }
{
  echo "machine: $(nproc) cores, $(uname -r); storm devices $STORM at nice $STORM_NICE"
  echo "rep calm_p99_ms storm_p99_ms ratio a_lost storm_connected storm_attempted"
} | tee "$OUT/summary.txt"
for rep in $(seq "$REPEAT"); do
  "$LOADTEST" "${A[@]}" --report "$OUT/calm-$rep.json" >/dev/null
  "$LOADTEST" "${A[@]}" --report "$OUT/storm-a-$rep.json" >/dev/null &
  a=$!
  sleep 4
  nice -n "$STORM_NICE" "$LOADTEST" "${B[@]}" --report "$OUT/storm-b-$rep.json" >/dev/null || true
  wait "$a"
  python3 - "$rep" "$OUT/calm-$rep.json" "$OUT/storm-a-$rep.json" "$OUT/storm-b-$rep.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
rep, calm, a, b = sys.argv[1], *(json.load(open(p)) for p in sys.argv[2:])
c, s = calm["e2e_latency_ms"]["p99"], a["e2e_latency_ms"]["p99"]
print(rep, f"{c:.2f}", f"{s:.2f}", f"{s / c:.1f}", a["messages"]["lost"],
      b["connect"]["succeeded"], b["connect"]["attempted"])
EOF
  sleep 2
done
curl -s "http://127.0.0.1:$METRICS/metrics" | grep -E '^(mqtt_tls_handshakes_total|mqtt_connections_refused_total|handshake_admission_share)' >"$OUT/metrics.txt" || true
echo "reports in $OUT" >&2
