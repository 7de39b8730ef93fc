#!/usr/bin/env bash
# HTTP/3 through h3gate and through Caddy 2.6 (Debian's, HTTP/3 to an h2c
# origin), the same static HTTP/2 origin (nghttpd --no-tls) behind both, in
# one run, driven by h3load (-c 10 -m 10). Prints req/s, p99, CPU per 100k
# requests and RSS per 1,000 idle QUIC connections; then HTTP/3 against
# HTTP/2 (h2load) through h3gate for 100 MB uploads and downloads, and
# whether 5,000 concurrent QUIC connections are held. ROUNDS=3 interleaved
# rounds for the req/s part; medians.
source "$(dirname "$0")/lib.sh"
prepare
N=${N:-100000}
# h3load sends no SNI for an address (RFC 6066 3), and Caddy's QUIC then
# finds no certificate (TLS alert internal_error): both proxies are asked
# for localhost, a name the certificate carries.
H3LOAD=("$BIN/h3load" --sni localhost)

mkdir -p "$WORK/www"
printf 'Hello from the origin: a small static file for proxy benchmarks.\n' >"$WORK/www/index.html"
head -c $((100 * 1024 * 1024)) /dev/zero >"$WORK/www/big.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/key.pem" \
  -out "$WORK/cert.pem" -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

p_origin=$(free_port); p_h3g=$(free_port); p_caddy=$(free_port); p_app=$(free_port)
start origin nghttpd --no-tls -d "$WORK/www" $p_origin
origin=$LAST_PID
# The upload target is an h3gate-worker app that hashes what it receives.
start app "$BIN/h3gate-worker" --workers 1 --bind 127.0.0.1:$p_app --app-dir "$ROOT/tests/apps" probe:app
app=$LAST_PID

cat >"$WORK/h3gate.yaml" <<YAML
log: {access_log: "off", level: warning}
quic: {retry: never, secret: "$(openssl rand -hex 32)"}
listen:
  - address: 127.0.0.1:$p_h3g
    tls: {certificate: cert.pem, key: key.pem}
upstreams:
  - name: origin
    servers: [127.0.0.1:$p_origin]
  - name: app
    servers: [127.0.0.1:$p_app]
routes:
  - path_prefix: /upload
    upstream: app
  - path_prefix: /
    upstream: origin
YAML
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
start caddy env HOME="$WORK" XDG_DATA_HOME="$WORK" XDG_CONFIG_HOME="$WORK" caddy run --config "$WORK/Caddyfile" --adapter caddyfile
caddy=$LAST_PID
wait_port_of origin $p_origin; wait_port_of h3gate $p_h3g; wait_port_of caddy $p_caddy; wait_port_of app $p_app
sleep 1

# h3load wrapper: "req/s p99_ms done"
h3run() {
  local out
  out=$("${H3LOAD[@]}" -q "$@" 2>&1 || true)
  echo "$out" | awk '/^finished in/ {rps=$4} /^requests:/ {done=$4} /^latency ms:/ {p99=$10} END {print rps, p99, done}'
}

rss_kb() { awk '/VmRSS/ {print $2}' /proc/"$1"/status; }

# One run: "req/s p99_ms done cpu_s_per_100k us_per_req".
run_once() { # pid port
  local pid=$1 port=$2 before after rps p99 done
  before=$(cpu_seconds "$pid")
  read -r rps p99 done < <(h3run -n "$N" -c 10 -m 10 "https://127.0.0.1:$port/index.html")
  after=$(cpu_seconds "$pid")
  awk -v a="$after" -v b="$before" -v n="$done" -v r="$rps" -v p="$p99" \
    'BEGIN { if (n > 0) printf "%s %s %s %.2f %.1f\n", r, p, n, (a - b) / n * 100000, (a - b) / n * 1e6; else print r, p, n, "n/a n/a" }'
}

# Idle connections: RSS growth for 1,000 connections held open.
idle_kb() { # pid port
  local pid=$1 port=$2 r0 r1 hold
  r0=$(rss_kb "$pid")
  ("${H3LOAD[@]}" -q -n 1000 -c 1000 --hold 6 "https://127.0.0.1:$port/index.html" >/dev/null 2>&1 || true) &
  hold=$!
  sleep 4
  r1=$(rss_kb "$pid")
  wait $hold || true
  echo $((r1 - r0))
}

# ROUNDS interleaved rounds (default 3), each proxy's median round reported.
ROUNDS=${ROUNDS:-3}
rounds=$WORK/rounds
for r in $(seq 1 "$ROUNDS"); do
  for name in h3gate caddy; do
    if [ $name = h3gate ]; then pid=$h3g port=$p_h3g; else pid=$caddy port=$p_caddy; fi
    [ "$r" = 1 ] && { "${H3LOAD[@]}" -q -n 5000 -c 10 -m 10 "https://127.0.0.1:$port/index.html" >/dev/null 2>&1 || true; }
    echo "$name $(run_once "$pid" "$port")" >>"$rounds"
  done
done

printf '\nHTTP/3, %s requests (h3load -c 10 -m 10), median of %s rounds\n' "$N" "$ROUNDS"
printf '%-10s %12s %10s %14s %10s %10s %18s\n' proxy req/s p99_ms cpu_s/100k us/req done "KiB/1000 idle conn"
for name in h3gate caddy; do
  if [ $name = h3gate ]; then pid=$h3g port=$p_h3g; else pid=$caddy port=$p_caddy; fi
  read -r rps p99 done per100k us <<<"$(median_round "$rounds" "$name")"
  idle=$(idle_kb "$pid" "$port")
  printf '%-10s %12.0f %10s %14s %10s %10s %18s   rounds: %s\n' "$name" "$rps" "$p99" "$per100k" "$us" "$done" "$idle" \
    "$(round_values "$rounds" "$name")"
  eval "R_${name}=$rps; C_${name}=$us; I_${name}=$idle"
done
printf 'h3gate/caddy: req/s %s x (target >= 5), CPU per request %s x (target <= 0.125)\n' \
  "$(ratio "$R_h3gate" "$R_caddy")" "$(ratio "$C_h3gate" "$C_caddy")"
printf 'per idle QUIC connection: h3gate %s KiB (target < 64), caddy %s KiB\n' \
  "$(awk -v k="$I_h3gate" 'BEGIN {printf "%.0f", k / 1000}')" "$(awk -v k="$I_caddy" 'BEGIN {printf "%.0f", k / 1000}')"

printf '\n100 MB through h3gate: HTTP/3 (h3load) and HTTP/2 (h2load), MB/s\n'
h3_down=$("${H3LOAD[@]}" -q -n 1 "https://127.0.0.1:$p_h3g/big.bin" | awk '/^finished in/ {print $6}')
h2_down=$(h2load -n 1 "https://127.0.0.1:$p_h3g/big.bin" 2>&1 | awk '/^finished in/ {print $6}')
t0=$(date +%s.%N); "${H3LOAD[@]}" -q -n 1 --upload-size $((100 * 1024 * 1024)) "https://127.0.0.1:$p_h3g/upload" >/dev/null; t1=$(date +%s.%N)
h3_up=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1fMB/s", 100 / (b - a)}')
t0=$(date +%s.%N); h2load -n 1 -d "$WORK/www/big.bin" "https://127.0.0.1:$p_h3g/upload" >/dev/null 2>&1; t1=$(date +%s.%N)
h2_up=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1fMB/s", 100 / (b - a)}')
printf 'download: HTTP/3 %s  HTTP/2 %s\nupload:   HTTP/3 %s  HTTP/2 %s\n' "$h3_down" "$h2_down" "$h3_up" "$h2_up"

printf '\n5,000 concurrent QUIC connections through h3gate: '
"${H3LOAD[@]}" -q -n 5000 -c 5000 --hold 3 --timeout 120 "https://127.0.0.1:$p_h3g/index.html" | awk '/^requests:/ {print $4 " of 5000 answered"}'
