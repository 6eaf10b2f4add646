#!/usr/bin/env bash
# Benchmark the product against Debian's mosquitto with the same device fleet, on loopback.
#
# For each key type (P-256 and RSA-2048) it generates a device CA and a server certificate,
# starts mosquitto with mutual TLS (require_certificate, use_identity_as_username,
# set_tcp_nodelay), runs loadtest against it, then starts the product
# (target/release/broker) and runs the same loadtest parameters against it (the CA is uploaded
# through the product's admin API), writes one JSON report per run and prints ratios.
#
# Usage: loadtest/scripts/benchmark.sh [options]
#   --devices N         devices per run (default 2000, at most 100000)
#   --messages M        messages per device (default 5)
#   --connect-rate R    connections per second for the steady scenario (default 1000)
#   --concurrency C     connection attempts in flight (default 256)
#   --qos Q             0, 1 or 2 (default 1)
#   --subscribers S     subscribers (default 1)
#   --interval MS       publish interval per device in ms (default 200)
#   --scenario S        steady or storm (default steady)
#   --mqtt V            3.1.1 or 5 (default 3.1.1)
#   --duration SECS     time limit of each loadtest run (default 120, at most 600 here)
#   --key-types "..."   key types to run (default "p256 rsa2048")
#   --out DIR           where reports go (default target/benchmark/<date>)
#   --skip-product      only run mosquitto
#   --skip-mosquitto    only run the product
#
# Everything listens and connects on 127.0.0.1 only; each run is bounded in devices and time,
# and every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEVICES=2000
MESSAGES=5
RATE=1000
CONCURRENCY=256
QOS=1
SUBSCRIBERS=1
INTERVAL=200
SCENARIO=steady
MQTT=3.1.1
DURATION=120
KEY_TYPES="p256 rsa2048"
OUT=""
RUN_PRODUCT=1
RUN_MOSQUITTO=1

die() { echo "benchmark: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --devices) DEVICES="$2"; shift 2 ;;
    --messages) MESSAGES="$2"; shift 2 ;;
    --connect-rate) RATE="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --qos) QOS="$2"; shift 2 ;;
    --subscribers) SUBSCRIBERS="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --scenario) SCENARIO="$2"; shift 2 ;;
    --mqtt) MQTT="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --key-types) KEY_TYPES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --skip-product) RUN_PRODUCT=0; shift ;;
    --skip-mosquitto) RUN_MOSQUITTO=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$DEVICES" in ''|*[!0-9]*) die "--devices must be a number" ;; esac
case "$DURATION" in ''|*[!0-9]*) die "--duration must be a number of seconds" ;; esac
[ "$DEVICES" -ge 1 ] && [ "$DEVICES" -le 100000 ] || die "--devices must be between 1 and 100000"
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || die "--duration must be between 1 and 600"
case "$SCENARIO" in steady|storm) ;; *) die "--scenario must be steady or storm (revoke has no mosquitto counterpart)" ;; esac
for kt in $KEY_TYPES; do
  case "$kt" in p256|rsa2048) ;; *) die "unknown key type $kt" ;; esac
done

[ -n "$OUT" ] || OUT="$ROOT/target/benchmark/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/loadtest-bench.XXXXXX")"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

# --- tools --------------------------------------------------------------------------------
MOSQUITTO=""
for p in /usr/sbin/mosquitto /usr/bin/mosquitto; do [ -x "$p" ] && MOSQUITTO="$p" && break; done
if [ "$RUN_MOSQUITTO" = 1 ] && [ -z "$MOSQUITTO" ]; then
  echo "benchmark: installing Debian's mosquitto" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  MOSQUITTO=/usr/sbin/mosquitto
  [ -x "$MOSQUITTO" ] || die "mosquitto did not install"
fi
if ! command -v openssl >/dev/null; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

echo "benchmark: building release binaries" >&2
(cd "$ROOT" && cargo build --release -p loadtest)
LOADTEST="$ROOT/target/release/loadtest"
BROKER="$ROOT/target/release/broker"
if [ "$RUN_PRODUCT" = 1 ]; then
  if (cd "$ROOT" && cargo build --release -p broker --bin broker) && [ -x "$BROKER" ]; then
    :
  else
    echo "benchmark: the product binary (target/release/broker) cannot be built yet; running mosquitto only" >&2
    RUN_PRODUCT=0
  fi
fi

# Many sockets: raise the descriptor limit for everything started from here.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- helpers ------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( (RANDOM % 30000) + 20000 ))
    if ! port_open "$p"; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

wait_port() { # port pid seconds
  local end=$(( $(date +%s) + $3 ))
  until port_open "$1"; do
    kill -0 "$2" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

keygen() { # key_type out.key
  case "$1" in
    p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$2" 2>/dev/null ;;
    rsa2048) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$2" 2>/dev/null ;;
  esac
}

make_pki() { # key_type dir
  local kt="$1" d="$2"
  mkdir -p "$d"
  keygen "$kt" "$d/device-ca.key"
  openssl req -x509 -new -key "$d/device-ca.key" -out "$d/device-ca.pem" -days 30 \
    -subj "/O=loadtest/CN=benchmark device CA $kt" \
    -addext "basicConstraints=critical,CA:true" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  keygen "$kt" "$d/server-ca.key"
  openssl req -x509 -new -key "$d/server-ca.key" -out "$d/server-ca.pem" -days 30 \
    -subj "/O=loadtest/CN=benchmark server CA $kt" \
    -addext "basicConstraints=critical,CA:true" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  keygen "$kt" "$d/server.key"
  openssl req -new -key "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:false" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > "$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/server-ca.pem" -CAkey "$d/server-ca.key" \
    -CAcreateserial -out "$d/server.crt" -days 30 -extfile "$d/server.ext" 2>/dev/null
}

common_args() {
  echo --devices "$DEVICES" --messages "$MESSAGES" --connect-rate "$RATE" \
    --concurrency "$CONCURRENCY" --qos "$QOS" --subscribers "$SUBSCRIBERS" \
    --publish-interval "$INTERVAL" --scenario "$SCENARIO" --mqtt "$MQTT" \
    --duration "$DURATION" --source-ips 127.0.0.1-127.0.0.20 --quiet
}

RUN_LIMIT=$(( DURATION + 300 )) # certificate generation (RSA) comes on top of --duration

run_mosquitto() { # key_type
  local kt="$1" d="$WORK/$1" port pid
  port=$(free_port)
  cat > "$d/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
persistence false
max_queued_messages 1000000
max_inflight_messages 20
log_dest file $d/mosquitto.log
log_type error
log_type warning
listener $port 127.0.0.1
cafile $d/device-ca.pem
certfile $d/server.crt
keyfile $d/server.key
require_certificate true
use_identity_as_username true
set_tcp_nodelay true
EOF
  # mosquitto drops root privileges to the "mosquitto" user, who cannot read $WORK.
  if [ "$(id -u)" -eq 0 ]; then echo "user root" >> "$d/mosquitto.conf"; fi
  "$MOSQUITTO" -c "$d/mosquitto.conf" &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port" "$pid" 15 || { cat "$d/mosquitto.log" >&2 || true; die "mosquitto did not start"; }
  echo "benchmark: mosquitto ($kt) on 127.0.0.1:$port" >&2
  # shellcheck disable=SC2046
  timeout "$RUN_LIMIT" "$LOADTEST" run --broker "127.0.0.1:$port" $(common_args) \
    --key-type "$kt" --ca-cert "$d/device-ca.pem" --ca-key "$d/device-ca.key" --no-upload \
    --server-ca "$d/server-ca.pem" --broker-pid "$pid" --report "$OUT/mosquitto-$kt.json" \
    || echo "benchmark: loadtest against mosquitto ($kt) failed" >&2
  stop_pid "$pid"
}

run_product() { # key_type
  local kt="$1" d="$WORK/$1/product" mqtt admin metrics pid i
  mkdir -p "$d/data"
  mkdir -p "$d"
  mqtt=$(free_port); admin=$(free_port); metrics=$(free_port)
  export BROKER_ADMIN_PASSWORD="${BROKER_ADMIN_PASSWORD:-bench-$RANDOM-$RANDOM-$RANDOM}"
  # Serve the same ($kt) server certificate as mosquitto when the product accepts it;
  # otherwise it uses the one it generates itself (<data-dir>/server.crt).
  local server_ca="$d/data/server.crt"
  if "$BROKER" --data-dir "$d/data" import-certificate --crt "$WORK/$kt/server.crt" \
      --key "$WORK/$kt/server.key" --chain "$WORK/$kt/server-ca.pem" > "$d/import.log" 2>&1; then
    server_ca="$WORK/$kt/server-ca.pem"
  else
    echo "benchmark: the product did not import the $kt server certificate (see $OUT/product-$kt-import.log); using its own" >&2
    cp "$d/import.log" "$OUT/product-$kt-import.log" 2>/dev/null || true
  fi
  "$BROKER" --data-dir "$d/data" --mqtt-listen "127.0.0.1:$mqtt" \
    --admin-listen "127.0.0.1:$admin" --metrics-listen "127.0.0.1:$metrics" \
    > "$d/broker.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if ! wait_port "$mqtt" "$pid" 30 || ! wait_port "$admin" "$pid" 30; then
    tail -20 "$d/broker.log" >&2 || true
    echo "benchmark: the product did not start; skipping it" >&2
    stop_pid "$pid"
    return 0
  fi
  for i in $(seq 1 100); do [ -s "$server_ca" ] && break; sleep 0.1; done
  [ -s "$server_ca" ] || { echo "benchmark: no $server_ca" >&2; stop_pid "$pid"; return 0; }
  echo "benchmark: product ($kt) on 127.0.0.1:$mqtt (admin $admin)" >&2
  # shellcheck disable=SC2046
  timeout "$RUN_LIMIT" "$LOADTEST" run --broker "127.0.0.1:$mqtt" $(common_args) \
    --key-type "$kt" --admin "https://127.0.0.1:$admin" --server-ca "$server_ca" \
    --broker-pid "$pid" --report "$OUT/product-$kt.json" \
    || echo "benchmark: loadtest against the product ($kt) failed; see $d/broker.log" >&2
  cp "$d/broker.log" "$OUT/product-$kt.log" 2>/dev/null || true
  stop_pid "$pid"
}

# --- runs ---------------------------------------------------------------------------------
for kt in $KEY_TYPES; do
  make_pki "$kt" "$WORK/$kt"
  if [ "$RUN_MOSQUITTO" = 1 ]; then run_mosquitto "$kt"; fi
  if [ "$RUN_PRODUCT" = 1 ]; then run_product "$kt"; fi
done

echo
echo "reports in $OUT"
for kt in $KEY_TYPES; do
  m="$OUT/mosquitto-$kt.json" p="$OUT/product-$kt.json"
  if [ -s "$m" ] && [ -s "$p" ]; then
    echo
    echo "== $kt: ratio = product / mosquitto =="
    "$LOADTEST" compare "$m" "$p" --names mosquitto,product
  fi
done
