#!/usr/bin/env bash
# Several front-end nodes: connect rate through one node and through two, and the time a
# revocation made on node 1 takes to close sessions on node 2.
#
#   loadtest/scripts/cluster.sh [--devices N] [--concurrency C] [--repeat N] [--out DIR]
#                               [--debug]
#
# Starts, on 127.0.0.1 only: a PostgreSQL server from Debian's binaries (initdb in a
# temporary directory; as `nobody` when run as root), Debian's mosquitto as the external
# broker, and two release `broker` nodes on that database and broker (`--store`,
# `--backend`). Then, per repetition, interleaved:
#   one   connect test through node 1 only (--devices, default 2,000, first connects),
#   two   the same through both nodes (devices spread round-robin),
#   again the `two` fleet connecting a second time (registered devices: one registry
#         lookup per connect, no registration),
#   revoke  --devices sessions on node 2, the CA disabled through node 1's admin API:
#         time until the last session on node 2 is closed (`loadtest --scenario revoke`).
# For each connect test it reads the CPU time the nodes and PostgreSQL used (/proc) and
# prints it per connect.
#
# Every run is bounded in devices and time; the generator runs at nice 10, as in
# benchmark.sh. --debug uses the debug build (to check the script, not for figures).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# free_port, wait_port, stop_pid.
# shellcheck source=loadtest/scripts/lib.sh
. "$ROOT/loadtest/scripts/lib.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
DEVICES=2000
CONCURRENCY=32
REPEAT=3
OUT=""
PROFILE=release
die() { echo "cluster: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) DEVICES="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for v in "$DEVICES" "$CONCURRENCY" "$REPEAT"; do
  case "$v" in ''|*[!0-9]*) die "--devices, --concurrency and --repeat take numbers" ;; esac
done
[ "$DEVICES" -ge 1 ] && [ "$DEVICES" -le 20000 ] || die "--devices must be 1..20000"
[ "$REPEAT" -ge 1 ] && [ "$REPEAT" -le 10 ] || die "--repeat must be 1..10"

PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL server binaries not found: apt-get install postgresql"
MOSQUITTO="$(command -v mosquitto || ls /usr/sbin/mosquitto 2>/dev/null || true)"
[ -n "$MOSQUITTO" ] || die "mosquitto not found: apt-get install mosquitto"

if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build --release -q -p broker -p loadtest -p certs)
else
  (cd "$ROOT" && cargo build -q -p broker -p loadtest -p certs)
fi
BROKER="$TARGET/$PROFILE/broker"
LOADTEST="$TARGET/$PROFILE/loadtest"
CERTS="$TARGET/$PROFILE/certs"
[ -n "$OUT" ] || OUT="$TARGET/cluster/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cluster.XXXXXX")"
chmod 755 "$WORK"
PG_PID="" PG_POSTMASTER="" MOSQ_PID="" N1="" N2=""
cleanup() {
  stop_pid "$N1"; stop_pid "$N2"; stop_pid "$MOSQ_PID"
  # The postmaster itself (PG_PID may be runuser's): fast shutdown, then wait for it.
  if [ -z "$PG_POSTMASTER" ] && [ -f "$WORK/pg/data/postmaster.pid" ]; then
    PG_POSTMASTER="$(head -1 "$WORK/pg/data/postmaster.pid")"
  fi
  if [ -n "$PG_POSTMASTER" ]; then
    kill -INT "$PG_POSTMASTER" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PG_POSTMASTER" 2>/dev/null || break; sleep 0.1; done
  fi
  stop_pid "$PG_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL refuses to run as root.
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u nobody --); fi
mkdir -p "$WORK/pg"
PGPASS="cluster-$RANDOM-$RANDOM"
echo "$PGPASS" > "$WORK/pg/pw"
[ "${#AS[@]}" = 0 ] || chown -R nobody "$WORK/pg"
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -U frontend --pwfile="$WORK/pg/pw" \
  --auth-local=trust --auth-host=scram-sha-256 >"$OUT/initdb.log" 2>&1
PG_PORT=$(free_port)
"${AS[@]}" "$PGBIN/postgres" -D "$WORK/pg/data" -k "$WORK/pg" -p "$PG_PORT" \
  -c listen_addresses=127.0.0.1 -c max_connections=100 >"$OUT/postgres.log" 2>&1 &
PG_PID=$!
wait_port "$PG_PORT" "$PG_PID" 30 || die "PostgreSQL did not start (see $OUT/postgres.log)"
sleep 1
"$PGBIN/createdb" -h "$WORK/pg" -p "$PG_PORT" -U frontend frontend
PG_POSTMASTER="$(head -1 "$WORK/pg/data/postmaster.pid")"

MQ_PORT=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n' \
  "$MQ_PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >/dev/null 2>&1 &
MOSQ_PID=$!
wait_port "$MQ_PORT" "$MOSQ_PID" 10 || die "mosquitto did not start"

export BROKER_ADMIN_PASSWORD="cluster-$RANDOM-$RANDOM-$RANDOM"
export BROKER_STORE_URL="postgres://frontend:$PGPASS@127.0.0.1:$PG_PORT/frontend"
start_node() { # name: sets NODE_PID, NODE_MQTT, NODE_ADMIN
  local metrics
  NODE_MQTT=$(free_port); NODE_ADMIN=$(free_port); metrics=$(free_port)
  "$BROKER" --data-dir "$WORK/$1" --backend "mqtt://127.0.0.1:$MQ_PORT" \
    --mqtt-listen "127.0.0.1:$NODE_MQTT" --admin-listen "127.0.0.1:$NODE_ADMIN" \
    --metrics-listen "127.0.0.1:$metrics" --est-listen 127.0.0.1:0 >"$OUT/$1.log" 2>&1 &
  NODE_PID=$!
  wait_ready "$OUT/$1.log" "$NODE_PID" 60 \
    || die "$1 did not start (see $OUT/$1.log)"
}
start_node node1; N1=$NODE_PID N1_MQTT=$NODE_MQTT N1_ADMIN=$NODE_ADMIN
start_node node2; N2=$NODE_PID N2_MQTT=$NODE_MQTT
# Both serve the certificate node 1 generated and stored (node 2 found it at start).
cmp -s "$WORK/node1/server.crt" "$WORK/node2/server.crt" || die "the nodes serve different certificates"

# CPU seconds (user + system) of a process, or of the postmaster and all its children.
cpu() { python3 - "$@" <<'EOF'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
def ticks(pid, children=False):
    # utime + stime, and with children=True the reaped children's too (backends that
    # ended during the test).
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
    except OSError:
        return 0
total = 0
for arg in sys.argv[1:]:
    if arg.startswith("tree:"):
        root = arg[5:]
        total += ticks(root, children=True)
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == root:
                        total += ticks(p)
                except OSError:
                    pass
    else:
        total += ticks(arg)
print(total / hz)
EOF
}

CA="$WORK/node1/server.crt"
connect_test() { # name brokers... (comma-separated)
  local name="$1" brokers="$2" n0 p0 n1 p1
  n0=$(cpu "$N1" "$N2"); p0=$(cpu "tree:$PG_POSTMASTER")
  nice -n 10 "$LOADTEST" run --broker "$brokers" --admin "https://127.0.0.1:$N1_ADMIN" \
    --server-ca "$CA" --devices "$DEVICES" --messages 0 --subscribers 0 --scenario storm \
    --concurrency "$CONCURRENCY" --duration 300 --quiet --source-ips 127.0.0.1-127.0.0.20 \
    "${@:3}" --report "$OUT/$name.json" >/dev/null
  n1=$(cpu "$N1" "$N2"); p1=$(cpu "tree:$PG_POSTMASTER")
  python3 - "$name" "$OUT/$name.json" "$n0" "$n1" "$p0" "$p1" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
name, path, n0, n1, p0, p1 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
r = json.load(open(path))
ok = r["connect"]["succeeded"]
print(f"{name:<12} {r['connect']['rate_per_s']:>8.0f}/s  {ok}/{r['connect']['attempted']} connected"
      f"  nodes {1000 * (n1 - n0) / max(ok, 1):.3f} ms CPU/connect"
      f"  postgres {1000 * (p1 - p0) / max(ok, 1):.3f} ms CPU/connect")
EOF
}

{
  echo "machine: $(nproc) cores, $(uname -r); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'); devices $DEVICES, concurrency $CONCURRENCY"
  echo "test         rate        connected            CPU per connect"
} | tee "$OUT/summary.txt"
KEYS="$WORK/keys"; mkdir -p "$KEYS"
for rep in $(seq "$REPEAT"); do
  connect_test "one.$rep" "127.0.0.1:$N1_MQTT"
  # A fleet of its own CA, kept for the second connect of the same devices.
  "$CERTS" ca create --cn "Cluster $rep" --o Cluster --out "$KEYS/ca$rep" >/dev/null 2>&1 \
    || die "certs ca create failed"
  connect_test "two.$rep" "127.0.0.1:$N1_MQTT,127.0.0.1:$N2_MQTT" \
    --ca-cert "$KEYS/ca$rep/ca.crt" --ca-key "$KEYS/ca$rep/ca.key" --tenant "cl$rep" --keep
  sleep 6 # the registrations and last-seen times are written
  connect_test "again.$rep" "127.0.0.1:$N1_MQTT,127.0.0.1:$N2_MQTT" \
    --ca-cert "$KEYS/ca$rep/ca.crt" --ca-key "$KEYS/ca$rep/ca.key" --tenant "cl$rep" --no-upload
  # Revocation: sessions on node 2, the disable sent to node 1.
  nice -n 10 "$LOADTEST" run --broker "127.0.0.1:$N2_MQTT" --admin "https://127.0.0.1:$N1_ADMIN" \
    --server-ca "$CA" --devices "$DEVICES" --scenario revoke --connect-rate 2000 \
    --concurrency "$CONCURRENCY" --messages $((50000000 / DEVICES)) --publish-interval 1000 --subscribers 0 \
    --duration 120 --quiet --report "$OUT/revoke.$rep.json" >/dev/null || true
  python3 - "$rep" "$OUT/revoke.$rep.json" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
r = json.load(open(sys.argv[2]))["revoke"]
print(f"revoke.{sys.argv[1]:<5} {r['sessions_at_disable']} sessions on node 2, disable sent to node 1:"
      f" last closed after {r['all_closed_after_ms']} ms (request {r['disable_request_ms']} ms),"
      f" {r['still_connected']} still open, {r['reconnect_succeeded']} reconnects admitted")
EOF
done
echo "reports in $OUT" >&2
