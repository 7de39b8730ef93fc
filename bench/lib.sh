# Shared helpers for the benchmark scripts (sourced).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${H3GATE_BIN_DIR:-$ROOT/build/bin}
PY=/usr/bin/python3
WORK=$(mktemp -d /tmp/h3bench.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

prepare() {
  "$ROOT/scripts/install-deps.sh" bench
  cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$ROOT/build" -j"$(nproc)" >/dev/null
}

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CMD...: runs CMD in its own process group, logs to $WORK/NAME.log
start() {
  local name=$1; shift
  setsid "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  echo $!
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
  for pid in "$@" $(pgrep -g "$(ps -o pgid= "$1" | tr -d ' ')" 2>/dev/null); do
    [ -r /proc/$pid/stat ] || continue
    total=$(awk -v t="$total" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' /proc/$pid/stat)
  done
  echo "$total"
}

# Peak RSS (KiB) of a process.
peak_rss_kb() { awk '/VmHWM/ {print $2}' /proc/"$1"/status; }

# h2load wrapper: prints "req/s p99_ms ok_requests"; extra args go to h2load.
load() {
  local log=$WORK/h2load.$RANDOM.tsv out
  out=$(h2load --log-file="$log" "$@" 2>&1)
  local rps ok p99
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  ok=$(echo "$out" | awk '/^requests:/ {print $8}')
  # log columns: start time, status, duration (microseconds)
  p99=$(awk '{print $3}' "$log" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", a[i]/1000}')
  echo "$rps $p99 $ok"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
