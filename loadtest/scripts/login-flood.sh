#!/usr/bin/env bash
# Login flood against the real broker binary on loopback, bounded in count and time:
# N valid logins (C at a time, each from its own loopback address), then N failed logins from distinct source addresses
# (127.0.1.2 ...), sampling the broker's RSS throughout and for SETTLE seconds after.
#
#   loadtest/scripts/login-flood.sh [--broker target/release/broker] [-n 400] [-c 64] [--settle 30]
set -euo pipefail
BROKER=target/release/broker
N=400
C=64
SETTLE=30
while [ $# -gt 0 ]; do
  case "$1" in
    --broker) BROKER=$2; shift 2 ;;
    -n) N=$2; shift 2 ;;
    -c) C=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$N" -le 2000 ] && [ "$C" -le 256 ] || { echo "bounded: -n <= 2000, -c <= 256" >&2; exit 2; }
DIR=$(mktemp -d)
PW=flood-admin-secret-1
BROKER_ADMIN_PASSWORD=$PW "$BROKER" --data-dir "$DIR" --mqtt-listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --est-listen 127.0.0.1:0 >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do grep -q "broker listening" "$DIR/log" && break; sleep 0.1; done
ADMIN=$(grep -o 'admin_addr=[0-9.:]*' "$DIR/log" | head -1 | cut -d= -f2)
PORT=${ADMIN##*:}
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
PEAK=0
sample() { while kill -0 $PID 2>/dev/null; do r=$(rss); echo "$r" >>"$DIR/rss"; sleep 0.2; done; }
echo "idle RSS: $(rss) kB"
sample & SAMPLER=$!
URL="https://127.0.0.1:$PORT/tenant/tenants"
t0=$(date +%s.%N)
# Each request from its own source address (127.0.x.y), as a flood from many hosts would
# come: one address alone is held to the admin listener's per-source connection cap.
seq "$N" | xargs -P "$C" -I{} sh -c 'curl -sk -o /dev/null -w "%{http_code}\n" --interface 127.0.$(( {} / 250 + 1 )).$(( {} % 250 + 2 )) -u "management/admin:'"$PW"'" '"$URL" >"$DIR/valid" || true
t1=$(date +%s.%N)
echo "valid logins: $N, $C at a time, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s: $(sort "$DIR/valid" | uniq -c | tr '\n' ' ')"
PEAK=$(sort -n "$DIR/rss" | tail -1)
echo "peak RSS during valid logins: $PEAK kB"
: >"$DIR/rss"
seq "$N" | xargs -P "$C" -I{} sh -c 'curl -sk -o /dev/null -w "%{http_code}\n" --interface 127.0.$(( {} / 250 + 1 )).$(( {} % 250 + 2 )) -u "management/admin:wrong-$RANDOM" '"$URL" >"$DIR/failed" || true
echo "failed logins: $N from $N source addresses: $(sort "$DIR/failed" | uniq -c | tr '\n' ' ')"
echo "peak RSS during failed logins: $(sort -n "$DIR/rss" | tail -1) kB"
sleep "$SETTLE"
echo "RSS ${SETTLE} s after the flood: $(rss) kB"
kill $SAMPLER 2>/dev/null || true
