#!/usr/bin/env bash
# QoS 1 throughput of one product process with and without topic rules, in one run.
#
# Starts target/release/broker on 127.0.0.1 (fresh data directory, self-signed server
# certificate), creates two tenants with a CA each (the `certs` CLI), gives tenant
# "rules20" a `default` rule set of 20 rules whose last one is the first to match the
# load generator's topics (every PUBLISH walks all 20, the subscriber's filter is judged
# against all 20), leaves tenant "none" without rules, and runs the same loadtest
# parameters against both tenants, interleaved, --repeat times. Prints delivered msg/s
# per run and the medians. Everything listens and connects on 127.0.0.1; every run is
# bounded (--duration); every process started here is stopped on exit.
#
# Usage: loadtest/scripts/acl-bench.sh [--devices N] [--messages M] [--repeat R]
#          [--broker-bin FILE] [--loadtest-bin FILE] [--certs-bin FILE]
set -euo pipefail

die() { echo "acl-bench: $*" >&2; exit 1; }
say() { echo "acl-bench: $*" >&2; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEVICES=200
MESSAGES=200
REPEAT=3
BROKER="$ROOT/target/release/broker"
LOADTEST="$ROOT/target/release/loadtest"
CERTS="$ROOT/target/release/certs"
[ -x "$CERTS" ] || CERTS="$ROOT/target/debug/certs"
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) DEVICES="$2"; shift 2 ;;
    --messages) MESSAGES="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --broker-bin) BROKER="$2"; shift 2 ;;
    --loadtest-bin) LOADTEST="$2"; shift 2 ;;
    --certs-bin) CERTS="$2"; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
for b in "$BROKER" "$LOADTEST" "$CERTS"; do
  [ -x "$b" ] || die "no $b (cargo build --release -p broker -p loadtest; cargo build -p certs)"
done
command -v curl >/dev/null || die "curl is needed"
command -v python3 >/dev/null || die "python3 is needed"

# shellcheck source=loadtest/scripts/lib.sh
. "$ROOT/loadtest/scripts/lib.sh"

WORK="$(mktemp -d)"
PID=""
cleanup() { stop_pid "$PID"; rm -rf "$WORK"; }
trap cleanup EXIT

MQTT=$(free_port); ADMIN=$(free_port); METRICS=$(free_port)
export BROKER_ADMIN_PASSWORD="acl-bench-$RANDOM-$RANDOM-$RANDOM"
"$BROKER" --data-dir "$WORK/data" --mqtt-listen "127.0.0.1:$MQTT" \
  --admin-listen "127.0.0.1:$ADMIN" --metrics-listen "127.0.0.1:$METRICS" --est-listen 127.0.0.1:0 \
  > "$WORK/broker.log" 2>&1 &
PID=$!
if ! wait_ready "$WORK/broker.log" "$PID" 60; then
  tail -20 "$WORK/broker.log" >&2 || true
  die "the product did not start"
fi
SERVER_CA="$WORK/data/server.crt"
for _ in $(seq 1 100); do [ -s "$SERVER_CA" ] && break; sleep 0.1; done
[ -s "$SERVER_CA" ] || die "no $SERVER_CA"

api() { # method path user:password [json]
  curl -sS --fail-with-body --cacert "$SERVER_CA" -u "$3" -X "$1" \
    -H 'Content-Type: application/json' "https://localhost:$ADMIN$2" ${4:+-d "$4"} >/dev/null
}

RULES20='{"defaultAccess":"deny","rules":['
for i in $(seq 1 19); do
  if [ $((i % 2)) -eq 0 ]; then
    RULES20+="{\"access\":\"deny\",\"action\":\"both\",\"topic\":\"fleet/$i/+/\${cn}/#\"},"
  else
    RULES20+="{\"access\":\"allow\",\"action\":\"publish\",\"topic\":\"devices/\${cn}/area$i/+\",\"maxQos\":1},"
  fi
done
RULES20+='{"access":"allow","action":"both","topic":"loadtest/#"}]}'

for t in none rules20; do
  "$CERTS" ca create --cn "Bench $t" --out "$WORK/ca-$t" >/dev/null
  api POST /tenant/tenants "management/admin:$BROKER_ADMIN_PASSWORD" \
    "{\"id\":\"$t\",\"company\":\"$t\",\"adminName\":\"admin\",\"adminPass\":\"$t-bench-pw-1\"}"
  pem="$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$WORK/ca-$t/ca.crt")"
  api POST "/tenant/tenants/$t/trusted-certificates" "$t/admin:$t-bench-pw-1" \
    "{\"name\":\"ca\",\"status\":\"ENABLED\",\"autoRegistrationEnabled\":\"true\",\"certInPemFormat\":$pem}"
done
api PUT /tenant/tenants/rules20/acl/rule-sets/default "rules20/admin:rules20-bench-pw-1" "$RULES20"
# The rules are in force: the dry run decides by the 20th rule.
curl -sS --cacert "$SERVER_CA" -u "rules20/admin:rules20-bench-pw-1" -H 'Content-Type: application/json' \
  "https://localhost:$ADMIN/tenant/tenants/rules20/acl/check" \
  -d '{"commonName":"d1","action":"publish","topic":"loadtest/x/d1","qos":1}' \
  | grep -q '"ruleIndex":19' || die "the rule set is not in force"

say "broker pid $PID on 127.0.0.1:$MQTT; $DEVICES devices x $MESSAGES QoS 1 messages, 1 subscriber, $REPEAT repetitions"
for r in $(seq 1 "$REPEAT"); do
  for t in none rules20; do
    nice -n 10 timeout 300 "$LOADTEST" run --broker "127.0.0.1:$MQTT" --server-ca "$SERVER_CA" \
      --ca-cert "$WORK/ca-$t/ca.crt" --ca-key "$WORK/ca-$t/ca.key" --no-upload \
      --devices "$DEVICES" --messages "$MESSAGES" --qos 1 --subscribers 1 --sync-start \
      --publish-interval 0 --connect-rate 1000 --duration 120 --quiet \
      --report "$WORK/$t-$r.json" > "$WORK/$t-$r.log" 2>&1 \
      || { tail -20 "$WORK/$t-$r.log" >&2; die "loadtest run $t #$r failed"; }
  done
done

python3 - "$WORK" "$REPEAT" <<'EOF'
import json, statistics, sys
work, repeat = sys.argv[1], int(sys.argv[2])
med = {}
for t in ("none", "rules20"):
    rates = []
    for r in range(1, repeat + 1):
        rep = json.load(open(f"{work}/{t}-{r}.json"))
        m = rep["messages"]
        if m["lost"] or m["received"] != m["expected"]:
            sys.exit(f"{t} #{r}: {m['received']} of {m['expected']} delivered, {m['lost']} lost")
        rates.append(m["rate_per_s"])
    med[t] = statistics.median(rates)
    print(f"{t:8} delivered msg/s: " + ", ".join(f"{x:,.0f}" for x in rates) + f"; median {med[t]:,.0f}")
print(f"rules20 / none: {med['rules20'] / med['none']:.3f}")
EOF
refused=$(curl -s "http://127.0.0.1:$METRICS/metrics" | grep -c '^mqtt_acl_refused_total{' || true)
[ "$refused" = 0 ] || die "some messages were refused by the rules: the benchmark measured refusals"
