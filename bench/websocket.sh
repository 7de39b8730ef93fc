#!/usr/bin/env bash
# WebSocket echo through h3gate and through Caddy 2.6, to the same
# h3gate-worker backend (tests/apps/ws_app.py, /echo), in one run: 100
# connections (wsload, HTTP/1.1 Upgrade over cleartext TCP on both fronts),
# each echoing messages one at a time. Prints messages per second, p99 round
# trip and each proxy's CPU per 10k messages, and the ratios.
#
# A third row, "direct", sends the same load straight to the backend with no
# proxy at all.
#
# On a small machine the load client and the backend share the CPUs with the
# proxy, so the msg/s ratio is not the ratio of the proxies' costs. The last
# lines print the ceiling any proxy has here: all CPUs busy, divided among the
# client's CPU per message, the backend's (behind h3gate, its cheapest), and
# the proxy's least possible share. A proxy mirrors the client's socket work
# on its side of each connection (one read and one write per message), so
# that least share is the client's own kernel time.
#   N=messages per connection (default 2000)  SIZE=bytes per message (64)
#   C=connections (100)  WORKERS=backend processes (2)
#   GATEWAY_WORKERS=h3gate processes (default auto: one per CPU, as Caddy
#   uses every CPU; 1 measures a single gateway process)
source "$(dirname "$0")/lib.sh"
prepare
N=${N:-2000}; SIZE=${SIZE:-64}; C=${C:-100}; WORKERS=${WORKERS:-2}; GATEWAY_WORKERS=${GATEWAY_WORKERS:-auto}

p_app=$(free_port); p_h3g=$(free_port); p_caddy=$(free_port)
start backend "$BIN/h3gate-worker" --bind 127.0.0.1:$p_app --workers "$WORKERS" \
  --app-dir "$ROOT/tests/apps" --log-level warning ws_app:app
cat >"$WORK/h3gate.yaml" <<YAML
workers: $GATEWAY_WORKERS
log: {access_log: "off", level: warning}
listen:
  - address: 127.0.0.1:$p_h3g
upstreams:
  - name: app
    servers: [127.0.0.1:$p_app]
routes:
  - path_prefix: /
    upstream: app
YAML
cat >"$WORK/Caddyfile" <<CADDY
{
  admin off
  auto_https off
  log {
    level ERROR
  }
}
http://127.0.0.1:$p_caddy {
  reverse_proxy 127.0.0.1:$p_app
}
CADDY
start h3gate "$BIN/h3gate" -c "$WORK/h3gate.yaml"
h3g=$LAST_PID
start caddy env HOME="$WORK" XDG_DATA_HOME="$WORK" XDG_CONFIG_HOME="$WORK" caddy run --config "$WORK/Caddyfile" --adapter caddyfile
caddy=$LAST_PID
backend=$(pgrep -f "h3gate-worker --bind 127.0.0.1:$p_app" | head -1)
wait_port_of backend $p_app; wait_port_of h3gate $p_h3g; wait_port_of caddy $p_caddy
sleep 1

# One run: prints "msg/s p99_ms proxy_cpu_per_10k backend_cpu_per_10k
# client_cpu_per_10k client_kernel_per_10k".
run_once() { # pid port
  local pid=$1 port=$2 before after bbefore bafter out rate p99 cu cs total=$((C * N))
  before=$(cpu_seconds "$pid"); bbefore=$(cpu_seconds "$backend")
  out=$("$BIN/wsload" -c "$C" -n "$N" -s "$SIZE" -t 300 "ws://127.0.0.1:$port/echo") || {
    echo "wsload failed: $out" >&2; echo "0 0 0 0 0 0"; return; }
  after=$(cpu_seconds "$pid"); bafter=$(cpu_seconds "$backend")
  rate=$(echo "$out" | awk '/msg\/s/ {print $(NF-1)}')
  p99=$(echo "$out" | awk '/^round trip/ {print $7}')
  read -r cu cs <<<"$(echo "$out" | awk '/^client cpu/ {print $5, $7}')"
  awk -v r="$rate" -v p="$p99" -v a="$after" -v b="$before" -v ba="$bafter" -v bb="$bbefore" -v n="$total" \
    -v cu="$cu" -v cs="$cs" 'BEGIN { k = 10000 / n
      printf "%s %s %.3f %.3f %.3f %.3f\n", r, p, (a - b) * k, (ba - bb) * k, (cu + cs) * k, cs * k }'
}

# ROUNDS interleaved rounds (default 7: rounds of either proxy swing by a
# quarter on a small VM, and the ratio sits near its target, where the
# median of 5 still moved by 0.1 from run to run), each proxy's median round
# reported. About 10 s per round.
ROUNDS=${ROUNDS:-7}
f=$WORK/rounds
for r in $(seq 1 "$ROUNDS"); do
  for name in h3gate caddy direct; do
    case $name in
      h3gate) pid=$h3g port=$p_h3g ;;
      caddy) pid=$caddy port=$p_caddy ;;
      direct) pid=$backend port=$p_app ;; # no proxy: its "proxy CPU" is the backend's
    esac
    [ "$r" = 1 ] && "$BIN/wsload" -c 10 -n 200 -s "$SIZE" "ws://127.0.0.1:$port/echo" >/dev/null # warm-up
    echo "$name $(run_once "$pid" "$port")" >>"$f"
  done
done

printf 'WebSocket echo, %d connections x %d messages of %d bytes (HTTP/1.1 Upgrade, cleartext), median of %d rounds\n' "$C" "$N" "$SIZE" "$ROUNDS"
printf '%-8s %12s %10s %16s %16s %16s\n' proxy msg/s p99_ms cpu_s/10k_msgs backend_cpu/10k client_cpu/10k
for name in h3gate caddy direct; do
  read -r rate p99 per10k b10k c10k ck10k <<<"$(median_round "$f" "$name")"
  [ $name = direct ] && per10k=-
  printf '%-8s %12.0f %10s %16s %16s %16s   rounds: %s\n' "$name" "$rate" "$p99" "$per10k" "$b10k" "$c10k" \
    "$(round_values "$f" "$name")"
  eval "R_${name}=$rate; P_${name}=$p99; C_${name}=$per10k; B_${name}=$b10k; L_${name}=$c10k; K_${name}=$ck10k"
done
printf 'h3gate/caddy msg/s: %s x (target >= 2)   p99: %s x   CPU per message: %s x\n' \
  "$(ratio "$R_h3gate" "$R_caddy")" "$(ratio "$P_h3gate" "$P_caddy")" "$(ratio "$C_h3gate" "$C_caddy")"
printf 'no proxy at all (direct)/caddy msg/s: %s x   h3gate/direct: %s x\n' \
  "$(ratio "$R_direct" "$R_caddy")" "$(ratio "$R_h3gate" "$R_direct")"
# The ceiling for any proxy on this machine (see the header), from the h3gate
# round's client and backend figures.
ceiling=$(awk -v cpus="$(nproc)" -v l="$L_h3gate" -v k="$K_h3gate" -v b="$B_h3gate" \
  'BEGIN { d = l + k + b; if (d > 0) printf "%.0f", cpus * 10000 / d; else print 0 }')
printf 'ceiling for any proxy here: %s CPUs / (client %s + its mirror %s + backend %s s/10k) = %s msg/s = %s x caddy; h3gate reaches %s of it\n' \
  "$(nproc)" "$L_h3gate" "$K_h3gate" "$B_h3gate" "$ceiling" "$(ratio "$ceiling" "$R_caddy")" "$(ratio "$R_h3gate" "$ceiling")"
