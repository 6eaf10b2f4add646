#!/usr/bin/env bash
# Reconnect storm: how long a fleet needs to be back, and what happens meanwhile to the
# devices that stayed connected.
#
#   loadtest/scripts/storm.sh [--config broker.toml] [--storm-devices N] [--storm-nice N]
#                             [--out DIR] [--repeat N]
#
# Starts the release broker on loopback with one CA of --storm-devices (default 5,000)
# devices and registers them once (their first connection, not measured). Then:
#   0. solo: B alone: every storm device reconnects at once (`--scenario storm`),
#      retrying as device SDKs do (exponential back-off with full jitter) until it is
#      connected; B's time until its last device is back is the machine's own time;
#   and for each repetition:
#   1. calm: loadtest A alone, 100 connected devices publishing QoS 1 every 100 ms for
#      10 s, one subscriber timing every message;
#   2. storm: A again, and 4 s into it B reconnects the whole storm fleet as in 0.
# It prints A's e2e p99 (calm and during the storm) and their ratio, B's time until its
# last device was back (during the storm and solo) and their ratio, and B's attempts.
#
# B's client-side handshakes run on this machine too, which a real storm's devices do
# not. --storm-nice (default 19) runs B at that nice value, so it takes only the CPU the
# broker and A leave; --storm-nice 0 measures the harsher shared-CPU case. B's devices
# come from 20 loopback addresses (127.0.0.1-20), as a fleet comes from many.
#
# Everything listens and connects on 127.0.0.0/8 only; every run is bounded in devices and
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
wait_ready "$OUT/broker.log" "$PID" 60 \
  || die "the broker did not start (see $OUT/broker.log)"
"$BROKER" print-config ${CONFIG:+--config "$CONFIG"} >"$OUT/broker-config.toml"

COMMON=(--broker "127.0.0.1:$MQTT" --admin "https://127.0.0.1:$ADMIN"
        --server-ca "$WORK/data/server.crt" --quiet)
A=(run "${COMMON[@]}" --devices 100 --publish-interval 100 --messages 100 --qos 1
   --subscribers 1 --duration 60)
# The storm fleet: one CA, registered once (first connections, not measured), then
# reconnected at once by every B run, each device retrying until it is back.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=storm fleet CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$WORK/storm-ca.key" -out "$WORK/storm-ca.crt" 2>/dev/null
FLEET=(--ca-cert "$WORK/storm-ca.crt" --ca-key "$WORK/storm-ca.key"
       --source-ips 127.0.0.1-127.0.0.20)
"$LOADTEST" run "${COMMON[@]}" "${FLEET[@]}" --tenant storm --keep --devices "$STORM" \
  --messages 0 --subscribers 0 --scenario storm --concurrency 64 --connect-retries 100 \
  --duration 300 --report "$OUT/register.json" >/dev/null
# B holds its sessions 12 s once all are back, so that A (10 s) measures the storm, not
# the fleet's 5,000 sessions closing at once after it (a separate event: connected
# devices' messages wait 100-200 ms while one sessions thread tears them down).
B=(run "${COMMON[@]}" "${FLEET[@]}" --no-upload --scenario storm --devices "$STORM"
   --concurrency "$STORM" --messages 1 --publish-interval 1000 --subscribers 0
   --connect-timeout 20 --connect-retries 100 --duration 120 --hold 12)

nice -n "$STORM_NICE" "$LOADTEST" "${B[@]}" --report "$OUT/solo.json" >/dev/null || true
{
  echo "machine: $(nproc) cores, $(uname -r); storm devices $STORM at nice $STORM_NICE"
  python3 - "$OUT/solo.json" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))["connect"]
print(f"solo: {b['succeeded']} of {b['attempted']} devices back in {b['window_s']:.2f} s "
      f"({b['retries']} retries, {b['admission_refused']} turned away)")
EOF
  echo "rep calm_p99_ms storm_p99_ms p99_ratio a_lost storm_back_s solo_back_s back_ratio storm_connected storm_attempted retries"
} | tee "$OUT/summary.txt"
for rep in $(seq "$REPEAT"); do
  "$LOADTEST" "${A[@]}" --report "$OUT/calm-$rep.json" >/dev/null
  "$LOADTEST" "${A[@]}" --report "$OUT/storm-a-$rep.json" >/dev/null &
  a=$!
  sleep 4
  nice -n "$STORM_NICE" "$LOADTEST" "${B[@]}" --report "$OUT/storm-b-$rep.json" >/dev/null || true
  wait "$a"
  python3 - "$rep" "$OUT/calm-$rep.json" "$OUT/storm-a-$rep.json" "$OUT/storm-b-$rep.json" "$OUT/solo.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
rep, calm, a, b, solo = sys.argv[1], *(json.load(open(p)) for p in sys.argv[2:])
c, s = calm["e2e_latency_ms"]["p99"], a["e2e_latency_ms"]["p99"]
bc, so = b["connect"], solo["connect"]
print(rep, f"{c:.2f}", f"{s:.2f}", f"{s / c:.1f}", a["messages"]["lost"],
      f"{bc['window_s']:.2f}", f"{so['window_s']:.2f}", f"{bc['window_s'] / so['window_s']:.2f}",
      bc["succeeded"], bc["attempted"], bc["retries"])
EOF
  sleep 2
done
curl -s "http://127.0.0.1:$METRICS/metrics" | grep -E '^(mqtt_tls_handshakes_total|mqtt_connections_refused_total|handshake_admission_share|mqtt_handshake_queue_seconds_count)' >"$OUT/metrics.txt" || true
echo "reports in $OUT" >&2
