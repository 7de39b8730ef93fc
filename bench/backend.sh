#!/usr/bin/env bash
# One process each of h3gate-worker (h2c), uvicorn 0.17 with httptools and
# uvloop (HTTP/1.1) and hypercorn 0.13 (h2c), all from Debian, serving the
# same hello-world ASGI app on this machine, in one run. Prints req/s, p99,
# peak RSS and the ratios; then 1 MiB responses and a 10 ms sleep app at
# 512 concurrent streams.
#   bench/backend.sh            (N=300000 requests per hello-world run, ROUNDS=3
#                               interleaved rounds, median reported)
source "$(dirname "$0")/lib.sh"
prepare
N=${N:-300000}
APPS=$ROOT/bench/apps

p_ours=$(free_port); p_uv=$(free_port); p_hc=$(free_port)
start ours "$BIN/h3gate-worker" --workers 1 --bind 127.0.0.1:$p_ours --app-dir "$APPS" \
  --lifespan off hello:app
ours=$LAST_PID
start uvicorn env -C "$APPS" $PY -m uvicorn --host 127.0.0.1 --port $p_uv --workers 1 \
  --loop uvloop --http httptools --no-access-log --lifespan off hello:app
uv=$LAST_PID
start hypercorn env -C "$APPS" $PY -m hypercorn --bind 127.0.0.1:$p_hc --workers 1 hello:app
hc=$LAST_PID
wait_port_of ours $p_ours; wait_port_of uvicorn $p_uv; wait_port_of hypercorn $p_hc
sleep 1
ours_worker=$(pgrep -P "$ours" | head -1)

h2load -n 20000 -c 32 -m 16 http://127.0.0.1:$p_ours/ >/dev/null   # warm-up
h2load --h1 -n 20000 -c 32 -m 16 http://127.0.0.1:$p_uv/ >/dev/null
h2load -n 2000 -c 32 -m 16 http://127.0.0.1:$p_hc/ >/dev/null

# ROUNDS interleaved rounds, each server's median round reported: on a
# shared or virtual machine one round can land on a slow patch of CPU.
ROUNDS=${ROUNDS:-3}
: >"$WORK/rounds"
for r in $(seq 1 "$ROUNDS"); do
  echo "ours $(load -n "$N" -c 32 -m 16 http://127.0.0.1:$p_ours/)" >>"$WORK/rounds"
  echo "uv $(load --h1 -n "$N" -c 32 -m 16 http://127.0.0.1:$p_uv/)" >>"$WORK/rounds"
  echo "hc $(load -n $((N / 20)) -c 32 -m 16 http://127.0.0.1:$p_hc/)" >>"$WORK/rounds"
done
read -r ours_rps ours_p99 ours_ok < <(median_round "$WORK/rounds" ours)
read -r uv_rps uv_p99 uv_ok < <(median_round "$WORK/rounds" uv)
read -r hc_rps hc_p99 hc_ok < <(median_round "$WORK/rounds" hc)

printf '\nhello world, one process each (h2load -c 32 -m 16), median of %d rounds\n' "$ROUNDS"
printf 'rounds req/s: h3gate-worker %s| uvicorn %s| hypercorn %s\n' "$(round_values "$WORK/rounds" ours)" "$(round_values "$WORK/rounds" uv)" "$(round_values "$WORK/rounds" hc)"
printf '%-34s %12s %10s %12s %10s\n' server req/s p99_ms peak_RSS_MB ok
printf '%-34s %12.0f %10s %12.1f %10s\n' "h3gate-worker (h2c)" "$ours_rps" "$ours_p99" \
  "$(awk -v k="$(peak_rss_kb "$ours_worker")" 'BEGIN{print k/1024}')" "$ours_ok"
printf '%-34s %12.0f %10s %12.1f %10s\n' "uvicorn httptools+uvloop (h1)" "$uv_rps" "$uv_p99" \
  "$(awk -v k="$(peak_rss_kb "$uv")" 'BEGIN{print k/1024}')" "$uv_ok"
printf '%-34s %12.0f %10s %12.1f %10s\n' "hypercorn (h2c)" "$hc_rps" "$hc_p99" \
  "$(awk -v k="$(peak_rss_kb "$hc")" 'BEGIN{print k/1024}')" "$hc_ok"
printf 'ratio h3gate-worker / uvicorn:   %s x   (target >= 3)\n' "$(ratio "$ours_rps" "$uv_rps")"
printf 'ratio h3gate-worker / hypercorn: %s x   (target >= 20)\n' "$(ratio "$ours_rps" "$hc_rps")"

printf '\n1 MiB responses (h2load -n 3000 -c 8 -m 4)\n'
mb() { h2load "$@" 2>&1 | awk '/^finished in/ {v=$6; u=$6; sub(/[A-Za-z\/]+$/,"",v); if (u ~ /GB/) v*=1024; if (u ~ /KB/) v/=1024; print v}'; }
ours_mb=$(mb -n 3000 -c 8 -m 4 http://127.0.0.1:$p_ours/1m)
uv_mb=$(mb --h1 -n 3000 -c 8 -m 4 http://127.0.0.1:$p_uv/1m)
printf '%-34s %10s MB/s\n' "h3gate-worker (h2c)" "$ours_mb" "uvicorn (h1)" "$uv_mb"
printf 'ratio: %s x\n' "$(ratio "$ours_mb" "$uv_mb")"

printf '\n10 ms asyncio.sleep app, 512 concurrent requests\n'
read -r ours_s ours_sp99 _ < <(load -n 51200 -c 32 -m 16 http://127.0.0.1:$p_ours/sleep)
read -r uv_s uv_sp99 _ < <(load --h1 -n 51200 -c 512 -m 1 http://127.0.0.1:$p_uv/sleep)
printf '%-34s %12.0f req/s  p99 %s ms\n' "h3gate-worker (h2c, 32x16)" "$ours_s" "$ours_sp99" \
  "uvicorn (h1, 512 connections)" "$uv_s" "$uv_sp99"
printf 'ratio: %s x\n' "$(ratio "$ours_s" "$uv_s")"
