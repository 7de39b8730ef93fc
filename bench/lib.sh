# Shared helpers for the benchmark scripts (sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${H3GATE_BIN_DIR:-$ROOT/build/bin}
PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/h3bench.XXXXXX)
PIDS=()

alive() { local p; for p in "${PIDS[@]}"; do kill -0 -- "-$p" 2>/dev/null && return 0; done; return 1; }

# Servers get SIGTERM and up to 5 s to stop (they drain gracefully), then SIGKILL.
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do alive || break; sleep 0.1; done
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

prepare() {
  "$ROOT/scripts/install-deps.sh" bench
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null
}

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CMD...: runs CMD in its own process group, logs to $WORK/NAME.log,
# and sets LAST_PID (not run in $(...), so the cleanup trap knows the PID).
start() {
  local name=$1; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  disown "$LAST_PID" # the cleanup reaps it: no job-control notice when it ends
  PIDS+=("$LAST_PID")
}

# Shows a server's log when it fails to come up.
wait_port_of() { # name port
  wait_port "$2" || { echo "--- $1 log:"; cat "$WORK/$1.log"; return 1; }
}

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

# CPU seconds (user+system) a process and its children have used so far.
cpu_seconds() {
  local total=0 pid
  # every process of the group (the server and any children), each once
  for pid in $( (echo "$@"; pgrep -g "$(ps -o pgid= "$1" | tr -d ' ')") | tr ' ' '\n' | sort -u); do
    [ -r /proc/$pid/stat ] || continue
    total=$(awk -v t="$total" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' /proc/$pid/stat)
  done
  echo "$total"
}

# Peak RSS (KiB) of a process.
peak_rss_kb() { awk '/VmHWM/ {print $2}' /proc/"$1"/status; }

# h2load wrapper: prints "req/s p99_ms done_requests"; extra args go to h2load.
# "done" rather than "succeeded": h2load's HTTP/1 parser leaves the status at
# 0 when a response has no reason phrase (HAProxy's h2-to-h1 responses), and
# counts those as failed although they are complete 200s.
load() {
  local log=$WORK/h2load.$RANDOM.tsv out
  out=$(h2load --log-file="$log" "$@" 2>&1)
  local rps ok p99
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  ok=$(echo "$out" | awk '/^requests:/ {print $6}')
  # log columns: start time, status, duration (microseconds)
  p99=$(awk '{print $3}' "$log" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
  echo "$rps $p99 $ok"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# Rounds files hold lines "NAME VALUE FIELDS...": one per measured round.
# median_round FILE NAME: the fields (VALUE onward) of NAME's median round by VALUE.
median_round() {
  awk -v s="$2" '$1 == s' "$1" | sort -k2 -g | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}' | cut -d' ' -f2-
}
# round_values FILE NAME: NAME's VALUEs in the order measured, rounded.
round_values() { awk -v s="$2" '$1 == s {printf "%.0f ", $2}' "$1"; }
