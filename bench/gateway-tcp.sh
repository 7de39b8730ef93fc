#!/usr/bin/env bash
# The same fast static HTTP/2 origin (nghttpd --no-tls) behind h3gate, HAProxy
# 2.6 (THREADS threads, default one; server "proto h2") and Caddy 2.6 (reverse_proxy h2c://), in
# one run; h2load over TLS for HTTP/2 (-c 20 -m 10) and HTTP/1.1 (-c 20).
# Prints req/s, p99 latency and each proxy's CPU per 100k requests (from
# /proc), and the ratios to HAProxy. ROUNDS=3 interleaved rounds; medians.
#
# HAProxy runs twice: as the issue set it up ("haproxy", which adds no
# header), and as "haproxy_fwd", configured to send the backend what h3gate
# sends by default (X-Forwarded-For/-Proto/-Host, RFC 7239 Forwarded with
# the client's port, Via, a generated X-Request-ID): the same work per
# request, which is the like-for-like comparison.
#
# The origin is one nghttpd process, so h3gate keeps one connection to it
# (CONNS=1; nghttpd does not announce its processes as h3gate-worker does,
# so the default, auto, would open 4 for any that might share its port). Spread over 4 connections, the responses of a
# client's streams come back in 4 bursts and leave in about twice as many
# TLS records, which costs the client (h2load) twice the reads.
#
# THREADS=n (default 1) gives HAProxy n threads (nbthread) and h3gate n
# worker processes (workers), and h2load n threads: for machines with CPUs
# to spare beyond the client's.
source "$(dirname "$0")/lib.sh"
prepare
N=${N:-200000}
THREADS=${THREADS:-1}

mkdir -p "$WORK/www"
printf 'Hello from the origin: a small static file for proxy benchmarks.\n' >"$WORK/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/key.pem" \
  -out "$WORK/cert.pem" -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/combined.pem"

p_origin=$(free_port); p_h3g=$(free_port); p_ha=$(free_port); p_hafwd=$(free_port); p_caddy=$(free_port)
start origin nghttpd --no-tls -d "$WORK/www" $p_origin
origin=$LAST_PID

cat >"$WORK/h3gate.yaml" <<YAML
workers: $THREADS
log: {access_log: "off", level: warning}
listen:
  - address: 127.0.0.1:$p_h3g
    tls: {certificate: cert.pem, key: key.pem}
upstreams:
  - name: origin
    servers: [127.0.0.1:$p_origin]
    connections_per_server: ${CONNS:-1}
routes:
  - path_prefix: /
    upstream: origin
YAML
haproxy_cfg() { # port [frontend lines...]
  local port=$1; shift
  printf '%s\n' global "  nbthread $THREADS" '  tune.ssl.default-dh-param 2048' defaults '  mode http' \
    '  timeout connect 5s' '  timeout client 60s' '  timeout server 60s' frontend\ fe \
    "  bind 127.0.0.1:$port ssl crt $WORK/combined.pem alpn h2,http/1.1" "$@" \
    '  default_backend be' backend\ be "  server origin 127.0.0.1:$p_origin proto h2"
}
haproxy_cfg "$p_ha" >"$WORK/haproxy.cfg"
# The same, plus the headers h3gate adds by default.
haproxy_cfg "$p_hafwd" '  option forwardfor' '  http-request set-header X-Forwarded-Proto https' \
  '  http-request set-header X-Forwarded-Host %[req.hdr(host)]' \
  '  http-request set-header Forwarded "for=\"%[src]:%[src_port]\";proto=https;host=\"%[req.hdr(host)]\""' \
  '  http-request add-header Via "%[req.ver] haproxy"' '  unique-id-format %[uuid]' \
  '  unique-id-header X-Request-ID' >"$WORK/haproxy-fwd.cfg"
cat >"$WORK/Caddyfile" <<CADDY
{
  admin off
  auto_https off
  log {
    level ERROR
  }
}
https://127.0.0.1:$p_caddy {
  tls $WORK/cert.pem $WORK/key.pem
  reverse_proxy h2c://127.0.0.1:$p_origin
}
CADDY

start h3gate "$BIN/h3gate" -c "$WORK/h3gate.yaml"
h3g=$LAST_PID
start haproxy haproxy -db -f "$WORK/haproxy.cfg"
ha=$LAST_PID
start haproxy_fwd haproxy -db -f "$WORK/haproxy-fwd.cfg"
hafwd=$LAST_PID
start caddy env HOME="$WORK" XDG_DATA_HOME="$WORK" XDG_CONFIG_HOME="$WORK" caddy run --config "$WORK/Caddyfile" --adapter caddyfile
caddy=$LAST_PID
wait_port_of origin $p_origin; wait_port_of h3gate $p_h3g; wait_port_of haproxy $p_ha; wait_port_of haproxy_fwd $p_hafwd
wait_port_of caddy $p_caddy
sleep 1

# One run: prints "req/s p99_ms cpu_s_per_100k us_per_req ok".
run_once() { # pid port h2load-args...
  local pid=$1 port=$2; shift 2
  local before after rps p99 ok
  before=$(cpu_seconds "$pid")
  read -r rps p99 ok < <(load -n "$N" "$@" "https://127.0.0.1:$port/index.html")
  after=$(cpu_seconds "$pid")
  awk -v a="$after" -v b="$before" -v n="$ok" -v r="$rps" -v p="$p99" \
    'BEGIN { if (n > 0) printf "%s %s %.2f %.1f %s\n", r, p, (a - b) / n * 100000, (a - b) / n * 1e6, n; else print r, p, "n/a n/a", n }'
}

# ROUNDS interleaved rounds (default 3); each proxy's median round (by
# req/s) is reported: on a shared or virtual machine a single round can
# land on a slow patch of CPU for one proxy and not the others.
ROUNDS=${ROUNDS:-3}
compare() { # h2load-args...
  local f=$WORK/rounds.$RANDOM name pid port
  for r in $(seq 1 "$ROUNDS"); do
    for name in h3gate haproxy haproxy_fwd caddy; do
      case $name in
        h3gate) pid=$h3g port=$p_h3g ;; haproxy) pid=$ha port=$p_ha ;;
        haproxy_fwd) pid=$hafwd port=$p_hafwd ;; caddy) pid=$caddy port=$p_caddy ;;
      esac
      [ "$r" = 1 ] && h2load -n 5000 "$@" "https://127.0.0.1:$port/index.html" >/dev/null 2>&1 # warm-up
      echo "$name $(run_once "$pid" "$port" "$@")" >>"$f"
    done
  done
  for name in h3gate haproxy haproxy_fwd caddy; do
    local rounds
    rounds=$(round_values "$f" "$name")
    read -r rps p99 per100k us ok <<<"$(median_round "$f" "$name")"
    printf '%-12s %12.0f %10s %14s %12s %10s   rounds: %s\n' "$name" "$rps" "$p99" "$per100k" "$us" "$ok" "$rounds"
    eval "R_${name}=$rps; C_${name}=$us"
  done
}

for mode in h2 h1; do
  if [ $mode = h2 ]; then args=(-t "$THREADS" -c 20 -m 10); title="HTTP/2 over TLS (h2load -c 20 -m 10)";
  else args=(-t "$THREADS" --h1 -c 20); title="HTTP/1.1 over TLS (h2load --h1 -c 20)"; fi
  printf '\n%s, %s requests, median of %s rounds\n' "$title" "$N" "$ROUNDS"
  printf '%-12s %12s %10s %14s %12s %10s\n' proxy req/s p99_ms cpu_s/100k us/req ok
  compare "${args[@]}"
  printf 'h3gate/haproxy     req/s: %s x   CPU per request: %s x (target: >= 1 and <= 1)\n' \
    "$(ratio "$R_h3gate" "$R_haproxy")" "$(ratio "$C_h3gate" "$C_haproxy")"
  printf 'h3gate/haproxy_fwd req/s: %s x   CPU per request: %s x (same headers added)\n' \
    "$(ratio "$R_h3gate" "$R_haproxy_fwd")" "$(ratio "$C_h3gate" "$C_haproxy_fwd")"
  printf 'h3gate/caddy       req/s: %s x   CPU per request: %s x\n' \
    "$(ratio "$R_h3gate" "$R_caddy")" "$(ratio "$C_h3gate" "$C_caddy")"
done
