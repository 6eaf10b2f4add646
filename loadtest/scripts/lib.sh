# Helpers shared by the scripts in this folder (sourced; the caller defines `die`).
# Everything is on 127.0.0.1.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Listening ports below the ephemeral range, so that no outgoing connection holds them.
EPHEMERAL_LOW="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
free_port() {
  local p i
  for i in $(seq 1 500); do
    p=$(( (RANDOM % (EPHEMERAL_LOW - 11000)) + 10000 ))
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

# The product binds its ports first and only then opens its store and writes
# data/server.crt: an open port is not readiness. Its "broker listening" log line is.
wait_ready() { # log pid seconds
  local end=$(( $(date +%s) + $3 ))
  until grep -q "broker listening" "$1" 2>/dev/null; do
    kill -0 "$2" 2>/dev/null || return 1
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

stop_pid() {
  [ -n "${1:-}" ] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
