#!/usr/bin/env bash
# Benchmark the product against Debian's mosquitto, side by side, on this machine, in one run.
#
# It installs mosquitto if needed, generates the PKI with openssl (one device CA and one server
# certificate per key type, the same files for both brokers), starts mosquitto with mutual TLS
# (require_certificate, use_identity_as_username, set_tcp_nodelay) and the product
# (target/release/broker, serving the same server certificate), and runs the same loadtest
# parameters against both. The product's embedded rumqttd is also measured directly
# ("direct": loadtest --plain on its loopback v4 listeners, without TLS) to show what the
# front-end itself costs. rumqttd only listens with embedded.transport = "loopback", and
# then only accepts the broker's per-process credential: the direct runs go to a second
# product process started with that transport (the --broker-config plus
# transport = "loopback"), whose credential file (DATA_DIR/backend-credential, mode 0600,
# named in its log) is handed to loadtest as --credentials-file, a path, never the password.
#
# Sections (--sections, default all):
#   connect     mTLS connect rate (TCP connect + handshake + CONNECT/CONNACK), storm of
#               --connect-devices at --concurrency attempts in flight, per key type; the product
#               twice: "product-first" (first connect of each device: auto-registration, on
#               a fresh product every repetition) and "product" (the same devices again,
#               already registered); plus "direct" (P-256 run)
#   throughput  QoS 0 and QoS 1, --devices connected devices publishing --messages each as fast
#               as their in-flight window allows (10 for QoS 1) once the whole fleet is
#               connected, one subscriber receiving everything; delivered msg/s and e2e latency
#   latency     the same fleet paced at one message per --interval ms per device (QoS 0 and 1)
#   memory      fresh brokers, --memory-devices idle mTLS devices held --hold s: RSS growth per
#               device (the product with as many devices as its fd limit allows: each device
#               costs it one descriptor, 3 with embedded.transport = "loopback")
#   terminator  the product as TLS terminator in front of an external broker (`--backend` to
#               a mosquitto without TLS on loopback) against mosquitto terminating mTLS
#               itself: connect rate, QoS 0 and 1 throughput, and memory per idle device
#               (the product's RSS growth plus its backend mosquitto's)
#   verify      the certs verify_device criterion benchmark (1 vs 10,000 anchors)
# Every loadtest run is repeated --repeat times, brokers interleaved; the summary shows medians.
#
# Usage: loadtest/scripts/benchmark.sh [options]
#   --out DIR               reports (default target/benchmark/<date>)
#   --sections "..."        subset of "connect throughput latency memory terminator verify"
#   --key-types "..."       connect key types (default "p256 rsa2048")
#   --repeat R              repetitions of each loadtest run (default 3)
#   --connect-devices N     devices of a connect run (default 3000)
#   --concurrency C         connection attempts in flight (default 32)
#   --devices N             devices of throughput and latency runs (default 1000)
#   --messages M            messages per device in throughput runs (default 100)
#   --interval MS           publish interval of latency runs (default 200)
#   --memory-devices N      idle devices of memory runs (default 10000)
#   --hold S                seconds idle sessions are held before RSS is read (default 5)
#   --broker-config FILE    TOML config for the product (e.g. embedded.v4_listeners)
#   --broker-bin FILE       a product binary built elsewhere (default: build target/release/broker)
#   --loadtest-bin FILE     a loadtest binary built elsewhere (default: build
#                           target/release/loadtest); with --broker-bin nothing is built
#   --quiet-max PCT         before each run, wait (up to --quiet-wait s) until the machine's
#                           CPU use by others is below PCT % (default 15); logged in noise.txt
#   --quiet-wait S          (default 300)
#   --nice N                run everything started here at this nice value (e.g. -10 on a
#                           shared machine, so that others' background work yields to the
#                           brokers and the load generator; needs root for N < 0)
#   --generator-nice N      run the load generator at this nice value (default 10, the
#                           product's default handshake_nice): the generator's client
#                           handshakes, which a real fleet runs elsewhere, then do not
#                           take the CPU ahead of the broker's own handshakes
#   --quick                 small numbers for a smoke test
#
# Everything listens and connects on 127.0.0.0/8 only; every run is bounded in devices and
# time, and every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT=""
SECTIONS="connect throughput latency memory terminator verify"
KEY_TYPES="p256 rsa2048"
REPEAT=3
CONNECT_DEVICES=3000
CONCURRENCY=32
DEVICES=1000
MESSAGES=100
INTERVAL=200
MEMORY_DEVICES=10000
HOLD=5
BROKER_CONFIG=""
BROKER_BIN=""
LOADTEST_BIN=""
QUIET_MAX=15
QUIET_WAIT=300
NICE=0
GEN_NICE=10

die() { echo "benchmark: $*" >&2; exit 1; }
say() { echo "benchmark: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --sections) SECTIONS="$2"; shift 2 ;;
    --key-types) KEY_TYPES="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --connect-devices) CONNECT_DEVICES="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --devices) DEVICES="$2"; shift 2 ;;
    --messages) MESSAGES="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --memory-devices) MEMORY_DEVICES="$2"; shift 2 ;;
    --hold) HOLD="$2"; shift 2 ;;
    --broker-config) BROKER_CONFIG="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --broker-bin) BROKER_BIN="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --loadtest-bin) LOADTEST_BIN="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --quiet-max) QUIET_MAX="$2"; shift 2 ;;
    --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --generator-nice) GEN_NICE="$2"; shift 2 ;;
    --quick) REPEAT=1; CONNECT_DEVICES=300; DEVICES=100; MESSAGES=20; MEMORY_DEVICES=500; HOLD=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

num() { case "$2" in ''|*[!0-9]*) die "$1 must be a number" ;; esac; }
num --repeat "$REPEAT"; num --connect-devices "$CONNECT_DEVICES"; num --concurrency "$CONCURRENCY"
num --devices "$DEVICES"; num --messages "$MESSAGES"; num --interval "$INTERVAL"
num --memory-devices "$MEMORY_DEVICES"; num --hold "$HOLD"
num --quiet-max "$QUIET_MAX"; num --quiet-wait "$QUIET_WAIT"
case "$NICE" in -[0-9]*|[0-9]*) ;; *) die "--nice must be a number" ;; esac
case "$GEN_NICE" in [0-9]|1[0-9]) ;; *) die "--generator-nice must be 0..19" ;; esac
[ "$REPEAT" -ge 1 ] && [ "$REPEAT" -le 20 ] || die "--repeat must be 1..20"
for n in "$CONNECT_DEVICES" "$DEVICES" "$MEMORY_DEVICES"; do
  [ "$n" -ge 1 ] && [ "$n" -le 100000 ] || die "device counts must be 1..100000"
done
[ "$HOLD" -le 600 ] || die "--hold must be at most 600"
for s in $SECTIONS; do
  case "$s" in connect|throughput|latency|memory|terminator|verify) ;; *) die "unknown section $s" ;; esac
done
for kt in $KEY_TYPES; do
  case "$kt" in p256|rsa2048) ;; *) die "unknown key type $kt" ;; esac
done
[ -z "$BROKER_CONFIG" ] || [ -r "$BROKER_CONFIG" ] || die "cannot read $BROKER_CONFIG"
[ -z "$BROKER_BIN" ] || [ -x "$BROKER_BIN" ] || die "cannot run $BROKER_BIN"
[ -z "$LOADTEST_BIN" ] || [ -x "$LOADTEST_BIN" ] || die "cannot run $LOADTEST_BIN"
section() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

[ -n "$OUT" ] || OUT="$ROOT/target/benchmark/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
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
if [ -z "$MOSQUITTO" ]; then
  say "installing Debian's mosquitto"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
  MOSQUITTO=/usr/sbin/mosquitto
  [ -x "$MOSQUITTO" ] || die "mosquitto did not install"
fi
if ! command -v openssl >/dev/null; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

LOADTEST="${LOADTEST_BIN:-$TARGET/release/loadtest}"
BROKER="${BROKER_BIN:-$TARGET/release/broker}"
if [ -n "$BROKER_BIN" ] && [ -n "$LOADTEST_BIN" ]; then
  say "binaries given: $BROKER_BIN, $LOADTEST_BIN"
elif [ -n "$BROKER_BIN" ]; then
  say "building the load generator (product binary given: $BROKER_BIN)"
  (cd "$ROOT" && cargo build --release -p loadtest --bin loadtest)
elif [ -n "$LOADTEST_BIN" ]; then
  say "building the product (load generator given: $LOADTEST_BIN)"
  (cd "$ROOT" && cargo build --release -p broker --bin broker)
else
  say "building release binaries"
  (cd "$ROOT" && cargo build --release -p loadtest --bin loadtest -p broker --bin broker)
fi
[ -x "$LOADTEST" ] && [ -x "$BROKER" ] || die "no $LOADTEST or $BROKER"

if [ "$NICE" != 0 ]; then
  renice -n "$NICE" -p $$ >/dev/null || die "cannot renice to $NICE"
fi

# Many sockets: as many descriptors as this machine allows.
HARD_NOFILE="$(ulimit -Hn)"
[ "$HARD_NOFILE" = unlimited ] && HARD_NOFILE=1048576
ulimit -n "$HARD_NOFILE" 2>/dev/null || true
NOFILE="$(ulimit -n)"
# The product holds one descriptor per device (the device's socket) when sessions reach
# the embedded rumqttd in-process (the default), and 3 with embedded.transport = "loopback"
# (plus the loopback connection to rumqttd and rumqttd's end of it).
FDS_PER_DEVICE=1
if [ -n "$BROKER_CONFIG" ] && grep -Eq '^[[:space:]]*transport[[:space:]]*=[[:space:]]*"loopback"' "$BROKER_CONFIG"; then
  FDS_PER_DEVICE=3
fi
PRODUCT_MAX_DEVICES=$(( (NOFILE - 300) / FDS_PER_DEVICE ))
# As a TLS terminator the product holds two descriptors per device: its socket and its
# connection to the backend.
TERMINATOR_MEMORY_DEVICES=$(( (NOFILE - 300) / 2 ))
[ "$TERMINATOR_MEMORY_DEVICES" -le "$MEMORY_DEVICES" ] || TERMINATOR_MEMORY_DEVICES=$MEMORY_DEVICES
mem_args() { # devices
  echo --devices "$1" --messages 0 --subscribers 0 --scenario storm --concurrency "$CONCURRENCY" \
    --hold "$HOLD" --duration 300
}

# --- machine ------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- broker certs admin-api 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) vCPU ($(lscpu | sed -n 's/^Hypervisor vendor: *//p') guest)"
  echo "kernel: $(uname -sr)"
  echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "mosquitto: $(dpkg-query -W -f '${Version}' mosquitto 2>/dev/null || "$MOSQUITTO" -h | head -1)"
  echo "rustc: $(rustc --version)"
  echo "open files limit: $NOFILE (hard $HARD_NOFILE)"
  echo "nice: $(ps -o ni= -p $$ | tr -d ' '), load generator: +$GEN_NICE"
  echo "broker config: ${BROKER_CONFIG:-defaults}"
  echo "broker binary: $BROKER ($(sha256sum "$BROKER" | cut -c1-16))"
  echo "loadtest binary: $LOADTEST ($(sha256sum "$LOADTEST" | cut -c1-16))"
  echo "direct runs: a second product process, embedded.transport = \"loopback\", loadtest --plain --credentials-file"
  echo "parameters: repeat=$REPEAT connect_devices=$CONNECT_DEVICES concurrency=$CONCURRENCY devices=$DEVICES messages=$MESSAGES interval_ms=$INTERVAL memory_devices=$MEMORY_DEVICES hold_s=$HOLD"
} > "$OUT/machine.txt"
lscpu > "$OUT/lscpu.txt"
cat "$OUT/machine.txt" >&2

# --- helpers ------------------------------------------------------------------------------
# port_open, free_port, wait_port and stop_pid.
# shellcheck source=loadtest/scripts/lib.sh
. "$ROOT/loadtest/scripts/lib.sh"

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
    -subj "/O=loadtest/CN=benchmark device CA $kt $RANDOM$RANDOM" \
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

pki_for() { # key_type -> directory with the PKI of that key type (made once)
  local d="$WORK/pki-$1"
  [ -s "$d/server.crt" ] || make_pki "$1" "$d"
  echo "$d"
}

MOSQ_PID="" MOSQ_PORT="" MOSQ_KT=""
start_mosquitto() { # key_type tag
  local kt="$1" tag="$2" d pki
  pki="$(pki_for "$kt")"
  d="$WORK/mosquitto-$tag"
  mkdir -p "$d"
  MOSQ_PORT=$(free_port)
  MOSQ_KT="$kt"
  cat > "$d/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
persistence false
max_queued_messages 1000000
max_inflight_messages 20
log_dest file $d/mosquitto.log
log_type error
log_type warning
listener $MOSQ_PORT 127.0.0.1
cafile $pki/device-ca.pem
certfile $pki/server.crt
keyfile $pki/server.key
require_certificate true
use_identity_as_username true
set_tcp_nodelay true
EOF
  # mosquitto drops root privileges to the "mosquitto" user, who cannot read $WORK.
  if [ "$(id -u)" -eq 0 ]; then echo "user root" >> "$d/mosquitto.conf"; fi
  "$MOSQUITTO" -c "$d/mosquitto.conf" &
  MOSQ_PID=$!
  PIDS+=("$MOSQ_PID")
  wait_port "$MOSQ_PORT" "$MOSQ_PID" 15 || { cat "$d/mosquitto.log" >&2 || true; die "mosquitto did not start"; }
  say "mosquitto ($kt, $tag) pid $MOSQ_PID on 127.0.0.1:$MOSQ_PORT"
}

stop_mosquitto() { stop_pid "$MOSQ_PID"; MOSQ_PID=""; }

# A mosquitto without TLS on loopback, the external broker behind the product in the
# terminator section (the product is its only client).
BACK_PID="" BACK_PORT=""
start_backend() { # tag
  local d="$WORK/backend-$1"
  mkdir -p "$d"
  BACK_PORT=$(free_port)
  cat > "$d/mosquitto.conf" <<EOF
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 20
log_dest file $d/mosquitto.log
log_type error
log_type warning
listener $BACK_PORT 127.0.0.1
set_tcp_nodelay true
EOF
  "$MOSQUITTO" -c "$d/mosquitto.conf" > /dev/null 2>&1 &
  BACK_PID=$!
  PIDS+=("$BACK_PID")
  wait_port "$BACK_PORT" "$BACK_PID" 30 || die "the backend mosquitto did not start"
  say "backend mosquitto (plain) pid $BACK_PID on 127.0.0.1:$BACK_PORT"
}
stop_backend() { stop_pid "$BACK_PID"; BACK_PID=""; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

PROD_PID="" PROD_PORT="" PROD_ADMIN="" PROD_KT=""
start_product() { # key_type tag [broker args...]
  local kt="$1" tag="$2" d pki metrics i
  shift 2
  pki="$(pki_for "$kt")"
  d="$WORK/product-$tag"
  mkdir -p "$d/data"
  PROD_PORT=$(free_port); PROD_ADMIN=$(free_port); metrics=$(free_port)
  PROD_KT="$kt"
  export BROKER_ADMIN_PASSWORD="${BROKER_ADMIN_PASSWORD:-bench-$RANDOM-$RANDOM-$RANDOM}"
  local config=()
  [ -z "$BROKER_CONFIG" ] || config=(--config "$BROKER_CONFIG")
  # The same server certificate as mosquitto (the requirements table wants RSA; the
  # benchmark serves P-256 too, so the check is skipped).
  "$BROKER" import-certificate "${config[@]}" --data-dir "$d/data" --crt "$pki/server.crt" \
    --key "$pki/server.key" --chain "$pki/server-ca.pem" --no-validation > "$d/import.log" 2>&1 \
    || { cat "$d/import.log" >&2; die "the product did not import the $kt server certificate"; }
  "$BROKER" "${config[@]}" --data-dir "$d/data" --mqtt-listen "127.0.0.1:$PROD_PORT" \
    --admin-listen "127.0.0.1:$PROD_ADMIN" --metrics-listen "127.0.0.1:$metrics" \
    --est-listen 127.0.0.1:0 "$@" \
    > "$d/broker.log" 2>&1 &
  PROD_PID=$!
  PIDS+=("$PROD_PID")
  if ! wait_port "$PROD_PORT" "$PROD_PID" 60 || ! wait_port "$PROD_ADMIN" "$PROD_PID" 60; then
    tail -20 "$d/broker.log" >&2 || true
    die "the product did not start"
  fi
  say "product ($kt, $tag) pid $PROD_PID on 127.0.0.1:$PROD_PORT"
  PROD_LOG="$d/broker.log"
}

stop_product() {
  stop_pid "$PROD_PID"
  [ -z "${PROD_LOG:-}" ] || cp "$PROD_LOG" "$OUT/broker-$PROD_KT-$(basename "$(dirname "$PROD_LOG")").log" 2>/dev/null || true
  PROD_PID=""
}

# The direct runs' broker: the product with embedded.transport = "loopback", the only
# transport with which its rumqttd listens (in-process sessions need no listener). The
# configuration is --broker-config's with the transport replaced (the rest, e.g.
# embedded.v4_listeners, kept).
direct_config() { # out.toml
  if [ -z "$BROKER_CONFIG" ]; then
    printf '[embedded]\ntransport = "loopback"\n' > "$1"
    return
  fi
  awk '
    /^[[:space:]]*\[/ { section = $0; sub(/#.*/, "", section); gsub(/[[:space:]]/, "", section) }
    /^[[:space:]]*embedded\.transport[[:space:]]*=/ { next }
    section == "[embedded]" && /^[[:space:]]*transport[[:space:]]*=/ { next }
    { print }
    /^[[:space:]]*\[embedded\][[:space:]]*(#.*)?$/ { print "transport = \"loopback\""; seen = 1 }
    END { if (!seen) { print ""; print "[embedded]"; print "transport = \"loopback\"" } }
  ' "$BROKER_CONFIG" > "$1"
}

DIRECT_PID="" DIRECT="" DIRECT_CRED="" DIRECT_LOG=""
start_direct() { # tag
  local d="$WORK/direct-$1" line i
  mkdir -p "$d/data"
  direct_config "$d/broker.toml"
  export BROKER_ADMIN_PASSWORD="${BROKER_ADMIN_PASSWORD:-bench-$RANDOM-$RANDOM-$RANDOM}"
  # Its own server certificate (self-signed): nothing connects over TLS.
  "$BROKER" --config "$d/broker.toml" --data-dir "$d/data" --mqtt-listen "127.0.0.1:0" \
    --admin-listen "127.0.0.1:0" --metrics-listen "127.0.0.1:0" --est-listen 127.0.0.1:0 > "$d/broker.log" 2>&1 &
  DIRECT_PID=$!
  PIDS+=("$DIRECT_PID")
  DIRECT_LOG="$d/broker.log"
  # Its rumqttd's MQTT 3.1.1 listeners and credential file, from its log.
  line=""
  for i in $(seq 1 600); do
    line="$(sed 's/\x1b\[[0-9;]*m//g' "$d/broker.log" | grep -m1 'embedded rumqttd listening on loopback' || true)"
    [ -n "$line" ] && break
    kill -0 "$DIRECT_PID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$line" ] || { tail -20 "$d/broker.log" >&2 || true; die "the direct product did not start its rumqttd listeners"; }
  DIRECT="$(printf '%s\n' "$line" | sed -n 's/.* v4=\[\([^]]*\)\].*/\1/p' | tr -d '" ')"
  DIRECT_CRED="$(printf '%s\n' "$line" | sed -n 's/.* credential_file=\([^ ]*\).*/\1/p')"
  [ -n "$DIRECT" ] || die "no rumqttd v4 listener addresses in the direct product's log"
  [ -n "$DIRECT_CRED" ] && [ -r "$DIRECT_CRED" ] || die "no readable rumqttd credential file in the direct product's log"
  say "direct ($1): product pid $DIRECT_PID with transport loopback, rumqttd v4 on $DIRECT, credential in $DIRECT_CRED"
}

stop_direct() {
  stop_pid "$DIRECT_PID"
  [ -z "$DIRECT_LOG" ] || cp "$DIRECT_LOG" "$OUT/broker-$(basename "$(dirname "$DIRECT_LOG")").log" 2>/dev/null || true
  DIRECT_PID="" DIRECT="" DIRECT_CRED="" DIRECT_LOG=""
}

# CPU use of the whole machine over one second, percent of all CPUs (nothing of ours runs
# then: the brokers are idle between runs).
cpu_busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  local total=0 idle i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  idle=$(( b[4] - a[4] + b[5] - a[5] ))
  [ "$total" -gt 0 ] || { echo 0; return; }
  echo $(( 100 * (total - idle) / total ))
}

# The machine is shared: wait for it to be quiet and log what was seen.
wait_quiet() { # run-name
  local start busy
  start=$(date +%s)
  busy=$(cpu_busy_pct)
  while [ "$busy" -gt "$QUIET_MAX" ] && [ $(( $(date +%s) - start )) -lt "$QUIET_WAIT" ]; do
    sleep 4
    busy=$(cpu_busy_pct)
  done
  echo "$1 busy_before=${busy}% waited=$(( $(date +%s) - start ))s" >> "$OUT/noise.txt"
}

RUN_LIMIT=900
lt() { # report-name broker(mosquitto|product|product-first|direct) loadtest-args...
  local name="$1" who="$2" kt pki
  shift 2
  local target=()
  case "$who" in
    mosquitto)
      kt="$MOSQ_KT"; pki="$(pki_for "$kt")"
      target=(--broker "127.0.0.1:$MOSQ_PORT" --no-upload --server-ca "$pki/server-ca.pem"
        --ca-cert "$pki/device-ca.pem" --ca-key "$pki/device-ca.key" --key-type "$kt"
        --broker-pid "$MOSQ_PID") ;;
    product)
      kt="$PROD_KT"; pki="$(pki_for "$kt")"
      target=(--broker "127.0.0.1:$PROD_PORT" --no-upload --server-ca "$pki/server-ca.pem"
        --ca-cert "$pki/device-ca.pem" --ca-key "$pki/device-ca.key" --key-type "$kt"
        --broker-pid "$PROD_PID") ;;
    product-first)
      kt="$PROD_KT"; pki="$(pki_for "$kt")"
      # --keep: the "product" runs that follow reconnect the devices this run registered.
      target=(--broker "127.0.0.1:$PROD_PORT" --admin "https://127.0.0.1:$PROD_ADMIN" --keep
        --server-ca "$pki/server-ca.pem" --ca-cert "$pki/device-ca.pem"
        --ca-key "$pki/device-ca.key" --key-type "$kt" --broker-pid "$PROD_PID") ;;
    terminator)
      kt="$PROD_KT"; pki="$(pki_for "$kt")"
      target=(--broker "127.0.0.1:$PROD_PORT" --no-upload --server-ca "$pki/server-ca.pem"
        --ca-cert "$pki/device-ca.pem" --ca-key "$pki/device-ca.key" --key-type "$kt"
        --broker-pid "$PROD_PID") ;;
    terminator-first)
      kt="$PROD_KT"; pki="$(pki_for "$kt")"
      target=(--broker "127.0.0.1:$PROD_PORT" --admin "https://127.0.0.1:$PROD_ADMIN" --keep
        --server-ca "$pki/server-ca.pem" --ca-cert "$pki/device-ca.pem"
        --ca-key "$pki/device-ca.key" --key-type "$kt" --broker-pid "$PROD_PID") ;;
    direct)
      [ -n "$DIRECT" ] || die "no direct product running"
      target=(--broker "$DIRECT" --plain --credentials-file "$DIRECT_CRED" --broker-pid "$DIRECT_PID") ;;
    *) die "unknown broker $who" ;;
  esac
  local report="$OUT/$name.json"
  wait_quiet "$name"
  if timeout "$RUN_LIMIT" nice -n "$GEN_NICE" "$LOADTEST" run "${target[@]}" --source-ips 127.0.0.1-127.0.0.20 \
      --quiet --report "$report" "$@" > "$WORK/lt.out" 2> "$WORK/lt.err"; then
    say "$name: $(sed -n 's/^connect  *//p' "$WORK/lt.out" | head -1) | $(sed -n 's/^messages  *//p' "$WORK/lt.out" | head -1)"
  else
    cat "$WORK/lt.err" >&2
    say "$name: loadtest failed"
    rm -f "$report"
  fi
}

connect_args() { # devices
  echo --devices "$1" --messages 0 --subscribers 0 --scenario storm --concurrency "$CONCURRENCY" \
    --duration 300
}

# --- connect ------------------------------------------------------------------------------
if section connect; then
  for kt in $KEY_TYPES; do
    start_mosquitto "$kt" "connect-$kt"
    start_product "$kt" "connect-$kt"
    [ "$kt" != p256 ] || start_direct "connect-$kt"
    for r in $(seq 1 "$REPEAT"); do
      # Every repetition's first connects on a fresh product (a new data directory), so
      # that first connects get a median like the rest; the runs after it reconnect the
      # devices it registered.
      if [ "$r" -gt 1 ]; then
        stop_product
        start_product "$kt" "connect-$kt-$r"
      fi
      # shellcheck disable=SC2046
      lt "connect-$kt.product-first.$r" product-first $(connect_args "$CONNECT_DEVICES")
      # shellcheck disable=SC2046
      lt "connect-$kt.mosquitto.$r" mosquitto $(connect_args "$CONNECT_DEVICES")
      # shellcheck disable=SC2046
      lt "connect-$kt.product.$r" product $(connect_args "$CONNECT_DEVICES")
      if [ "$kt" = p256 ]; then
        # shellcheck disable=SC2046
        lt "connect-$kt.direct.$r" direct $(connect_args "$CONNECT_DEVICES")
      fi
    done
    [ "$kt" != p256 ] || stop_direct
    stop_product
    stop_mosquitto
  done
fi

# --- throughput and latency ---------------------------------------------------------------
if section throughput || section latency; then
  start_mosquitto p256 traffic
  start_product p256 traffic
  start_direct traffic
  # Registers the fleet (first connects), so that every later run is a reconnect.
  # shellcheck disable=SC2046
  lt "register.product-first.1" product-first $(connect_args "$DEVICES")
  for qos in 0 1; do
    if section throughput; then
      for r in $(seq 1 "$REPEAT"); do
        for who in mosquitto product direct; do
          lt "throughput-qos$qos.$who.$r" "$who" --devices "$DEVICES" --messages "$MESSAGES" \
            --publish-interval 0 --qos "$qos" --subscribers 1 --scenario storm \
            --concurrency "$CONCURRENCY" --sync-start --drain-timeout 30 --duration 300
        done
      done
    fi
    if section latency; then
      for r in $(seq 1 "$REPEAT"); do
        for who in mosquitto product direct; do
          lt "latency-qos$qos.$who.$r" "$who" --devices "$DEVICES" --messages 25 \
            --publish-interval "$INTERVAL" --qos "$qos" --subscribers 1 --scenario storm \
            --concurrency "$CONCURRENCY" --sync-start --drain-timeout 30 --duration 300
        done
      done
    fi
  done
  stop_direct
  stop_product
  stop_mosquitto
fi

# --- memory -------------------------------------------------------------------------------
if section memory; then
  PRODUCT_MEMORY_DEVICES=$MEMORY_DEVICES
  if [ "$PRODUCT_MEMORY_DEVICES" -gt "$PRODUCT_MAX_DEVICES" ]; then
    PRODUCT_MEMORY_DEVICES=$PRODUCT_MAX_DEVICES
    say "memory: the product gets $PRODUCT_MEMORY_DEVICES devices (open files limit $NOFILE, $FDS_PER_DEVICE per device)"
  fi
  echo "product memory devices: $PRODUCT_MEMORY_DEVICES (open files limit $NOFILE; the product holds $FDS_PER_DEVICE descriptor(s) per device)" >> "$OUT/machine.txt"
  # Fresh processes for every run: RSS only grows back slowly after sessions close.
  start_mosquitto p256 memory
  # shellcheck disable=SC2046
  lt "memory.mosquitto.1" mosquitto $(mem_args "$MEMORY_DEVICES")
  stop_mosquitto
  start_product p256 memory-mtls
  # shellcheck disable=SC2046
  lt "memory.product.1" product-first $(mem_args "$PRODUCT_MEMORY_DEVICES")
  stop_product
  start_direct memory
  # shellcheck disable=SC2046
  lt "memory.direct.1" direct $(mem_args "$MEMORY_DEVICES")
  stop_direct
  if [ "$PRODUCT_MEMORY_DEVICES" -lt "$MEMORY_DEVICES" ]; then
    # The same count as the product, for a like-for-like comparison.
    start_mosquitto p256 memory-same-n
    # shellcheck disable=SC2046
    lt "memory-same-n.mosquitto.1" mosquitto $(mem_args "$PRODUCT_MEMORY_DEVICES")
    stop_mosquitto
    start_direct memory-same-n
    # shellcheck disable=SC2046
    lt "memory-same-n.direct.1" direct $(mem_args "$PRODUCT_MEMORY_DEVICES")
    stop_direct
    cp "$OUT/memory.product.1.json" "$OUT/memory-same-n.product.1.json"
  fi
fi

# --- the product as TLS terminator in front of mosquitto -----------------------------------
if section terminator; then
  start_mosquitto p256 terminator
  start_backend terminator
  start_product p256 terminator --backend "mqtt://127.0.0.1:$BACK_PORT"
  # Registers the fleet (first connects), so that every later run is a reconnect.
  # shellcheck disable=SC2046
  lt "register-terminator.terminator-first.1" terminator-first $(connect_args "$DEVICES")
  for r in $(seq 1 "$REPEAT"); do
    for who in mosquitto terminator; do
      # shellcheck disable=SC2046
      lt "connect-terminator.$who.$r" "$who" $(connect_args "$DEVICES")
    done
  done
  for qos in 0 1; do
    for r in $(seq 1 "$REPEAT"); do
      for who in mosquitto terminator; do
        lt "throughput-terminator-qos$qos.$who.$r" "$who" --devices "$DEVICES" \
          --messages "$MESSAGES" --publish-interval 0 --qos "$qos" --subscribers 1 \
          --scenario storm --concurrency "$CONCURRENCY" --sync-start --drain-timeout 30 \
          --duration 300
      done
    done
  done
  stop_product
  stop_backend
  stop_mosquitto
  # Memory: fresh processes; the terminator's figure is the product's RSS growth (in
  # its report) plus its backend's, read here around the same run.
  start_mosquitto p256 terminator-memory
  # shellcheck disable=SC2046
  lt "memory-terminator.mosquitto.1" mosquitto $(mem_args "$TERMINATOR_MEMORY_DEVICES")
  stop_mosquitto
  start_backend terminator-memory
  start_product p256 terminator-memory --backend "mqtt://127.0.0.1:$BACK_PORT"
  back_before=$(rss_kib "$BACK_PID")
  # The backend's peak RSS while the fleet is connected (sampled every 0.5 s).
  ( peak=0; while kill -0 "$BACK_PID" 2>/dev/null; do
      r=$(rss_kib "$BACK_PID"); [ "$r" -le "$peak" ] || { peak=$r; echo "$peak" > "$WORK/back-peak"; }
      sleep 0.5; done ) &
  sampler=$!
  # shellcheck disable=SC2046
  lt "memory-terminator.terminator.1" terminator-first $(mem_args "$TERMINATOR_MEMORY_DEVICES")
  kill "$sampler" 2>/dev/null || true
  back_after=$(cat "$WORK/back-peak" 2>/dev/null || echo 0)
  echo "terminator backend mosquitto RSS KiB: before $back_before peak $back_after devices $TERMINATOR_MEMORY_DEVICES" \
    | tee "$OUT/terminator-backend-rss.txt"
  stop_product
  stop_backend
fi

# --- verify_device ------------------------------------------------------------------------
if section verify; then
  say "verify_device benchmark (criterion)"
  (cd "$ROOT" && cargo bench -p certs --bench verify_device -- --warm-up-time 1 \
    --measurement-time 5) > "$OUT/verify_device.txt" 2>&1 \
    || say "verify_device benchmark failed (see $OUT/verify_device.txt)"
fi

# --- summary ------------------------------------------------------------------------------
{
  echo "## Machine"
  echo
  sed 's/^/    /' "$OUT/machine.txt"
  echo
  if [ -s "$OUT/noise.txt" ]; then
    echo "Machine CPU use by others just before each run (noise.txt): $(awk '{sub(/busy_before=/, "", $2); sub(/%/, "", $2); if ($2+0 > m) m = $2+0; s += $2; n++} END {printf "mean %.0f %%, max %d %%, over %d runs", s/n, m, n}' "$OUT/noise.txt")."
    echo
  fi
  echo "## Results"
  echo
  "$LOADTEST" summary "$OUT" || true
  if [ -s "$OUT/verify_device.txt" ]; then
    echo "### verify_device"
    echo
    grep -E "time:|ratio|anchor" "$OUT/verify_device.txt" | sed 's/^/    /' || true
  fi
} > "$OUT/summary.md"
echo
cat "$OUT/summary.md"
echo
echo "reports in $OUT"
