#!/usr/bin/env bash
# The whole stack on localhost: installs what is missing, builds, makes a
# self-signed certificate on first run, then runs h3gate-worker (the example
# app, one process per CPU) behind h3gate until Ctrl-C.
#   https://127.0.0.1:8443/  (HTTP/2, HTTP/1.1, HTTP/3 where supported)
#   http://127.0.0.1:8080/   (HTTP/1.1, h2c)
# Environment: APP (default examples/app.py's app), WORKERS, CONFIG, and
# RELOAD=1 to restart the workers whenever a .py file in examples/ changes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh run
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

if [ ! -f certs/cert.pem ]; then
  mkdir -p certs
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout certs/key.pem -out certs/cert.pem -days 365 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
  echo "made a self-signed certificate in certs/ (for development only)"
fi

app=${APP:-app:app}
workers=${WORKERS:-$(nproc)}
config=${CONFIG:-configs/gateway.yaml}

reload=()
[ "${RELOAD:-0}" = 1 ] && reload=(--reload)
build/bin/h3gate-worker --bind 127.0.0.1:8000 --workers "$workers" \
  --app-dir "$root/examples" "${reload[@]}" "$app" &
worker_pid=$!
build/bin/h3gate -c "$config" &
gateway_pid=$!
trap 'kill -TERM $gateway_pid $worker_pid 2>/dev/null; wait' INT TERM EXIT
echo "h3gate: https://127.0.0.1:8443/ and http://127.0.0.1:8080/ (Ctrl-C stops)"
wait -n $worker_pid $gateway_pid
