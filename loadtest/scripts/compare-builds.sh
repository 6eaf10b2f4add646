#!/usr/bin/env bash
# Before/after: two builds of the broker, measured in alternation in one run.
#
#   loadtest/scripts/compare-builds.sh --base REV [--head REV] [--pairs N] [--devices N]
#
# Builds `broker` at both revisions (git worktrees under target/compare-builds, one shared
# target directory) and the load generator at the working tree. Then, --pairs times,
# alternating base and head, each on a fresh data directory:
#   reconnect  --devices (default 2,000) devices register, then reconnect 32 at a time;
#              prints connects/s and the broker's CPU per reconnect
#   qos1       1,000 registered devices publish 100 QoS 1 messages each, flat out, to
#              one subscriber; prints delivered msg/s, lost, and the broker's CPU
# The generator runs at nice 10 (the product's handshake_nice), on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# free_port, wait_port, stop_pid.
# shellcheck source=loadtest/scripts/lib.sh
. "$ROOT/loadtest/scripts/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BASE=""
HEAD="HEAD"
PAIRS=3
DEVICES=2000
die() { echo "compare-builds: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --head) HEAD="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --devices) DEVICES="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$BASE" ] || die "--base REV is required"
case "$PAIRS" in ''|*[!0-9]*) die "--pairs must be a number" ;; esac
case "$DEVICES" in ''|*[!0-9]*) die "--devices must be a number" ;; esac
[ "$PAIRS" -ge 1 ] && [ "$PAIRS" -le 10 ] || die "--pairs must be 1..10"
[ "$DEVICES" -ge 10 ] && [ "$DEVICES" -le 5000 ] || die "--devices must be 10..5000"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compare-builds.XXXXXX")"
PID=""
cleanup() {
  stop_pid "$PID"
  for w in "$WORK"/tree-*; do [ -d "$w" ] && git -C "$ROOT" worktree remove --force "$w" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build() { # rev name
  local tree="$WORK/tree-$2"
  git -C "$ROOT" worktree add --detach "$tree" "$1" >/dev/null 2>&1 || die "cannot check out $1"
  (cd "$tree" && CARGO_TARGET_DIR="$TARGET/compare-builds" cargo build --release -q -p broker) \
    || die "build of $1 failed"
  cp "$TARGET/compare-builds/release/broker" "$WORK/broker-$2"
  echo "$2 = $(git -C "$ROOT" rev-parse --short "$1")" >&2
}
build "$BASE" base
build "$HEAD" head
(cd "$ROOT" && cargo build --release -q -p loadtest -p certs)
LOADTEST="$TARGET/release/loadtest"
# A device CA shared by every run, so that later runs reconnect registered devices.
"$TARGET/release/certs" ca create --cn "compare-builds CA" --out "$WORK/ca" >/dev/null

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
export BROKER_ADMIN_PASSWORD="compare-$RANDOM-$RANDOM-$RANDOM"

start() { # name
  local d="$WORK/run"
  rm -rf "$d"; mkdir -p "$d"
  MQTT=$(free_port); ADMIN=$(free_port); METRICS=$(free_port)
  # Builds with an EST listener get it on a port of their own (older ones lack the flag).
  local est=()
  if "$WORK/broker-$1" --help 2>/dev/null | grep -q -- --est-listen; then
    est=(--est-listen 127.0.0.1:0)
  fi
  "$WORK/broker-$1" --data-dir "$d/data" --mqtt-listen "127.0.0.1:$MQTT" \
    --admin-listen "127.0.0.1:$ADMIN" --metrics-listen "127.0.0.1:$METRICS" "${est[@]}" \
    >"$d/log" 2>&1 &
  PID=$!
  wait_ready "$d/log" "$PID" 60 || die "$1 did not start"
  COMMON=(--broker "127.0.0.1:$MQTT" --server-ca "$d/data/server.crt" --quiet
          --source-ips 127.0.0.1-127.0.0.20 --ca-cert "$WORK/ca/ca.crt" --ca-key "$WORK/ca/ca.key"
          --scenario storm --concurrency 32)
}
stop() { stop_pid "$PID"; PID=""; }
lt() { nice -n 10 "$LOADTEST" run "${COMMON[@]}" "$@"; }
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"r": r}))' "$@"; }

reconnect() { # name -> "rate cpu_us"
  start "$1"
  # --keep: the reconnects below need the tenant and its CA this run creates.
  lt --devices "$DEVICES" --messages 0 --subscribers 0 --admin "https://127.0.0.1:$ADMIN" \
    --tenant compare --keep >/dev/null
  sleep 2
  local t0 t1
  t0=$(cpu_ticks "$PID")
  lt --devices "$DEVICES" --messages 0 --subscribers 0 --no-upload --report "$WORK/r.json" >/dev/null
  t1=$(cpu_ticks "$PID")
  stop
  echo "$(field "$WORK/r.json" 'round(r["connect"]["rate_per_s"])') $(( (t1 - t0) * 10000 / DEVICES ))"
}

qos1() { # name -> "delivered lost cpu_ms"
  start "$1"
  lt --devices 1000 --messages 0 --subscribers 0 --admin "https://127.0.0.1:$ADMIN" \
    --tenant compare --keep >/dev/null
  sleep 2
  local t0 t1
  t0=$(cpu_ticks "$PID")
  lt --devices 1000 --messages 100 --publish-interval 0 --qos 1 --subscribers 1 --sync-start \
    --drain-timeout 30 --no-upload --report "$WORK/q.json" >/dev/null
  t1=$(cpu_ticks "$PID")
  stop
  echo "$(field "$WORK/q.json" 'round(r["messages"]["rate_per_s"])') $(field "$WORK/q.json" 'r["messages"]["lost"]') $(( (t1 - t0) * 10 ))"
}

echo "pair build reconnects/s cpu_us/reconnect qos1_delivered/s qos1_lost qos1_cpu_ms"
for i in $(seq "$PAIRS"); do
  for b in base head; do
    echo "$i $b $(reconnect "$b") $(qos1 "$b")"
  done
done
