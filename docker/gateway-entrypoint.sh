#!/bin/sh
# Makes a self-signed certificate for development when none is mounted
# (H3GATE_DEV_CERT=1), then runs the gateway as the unprivileged user.
set -eu
certs=${H3GATE_CERT_DIR:-/certs}
if [ "${H3GATE_DEV_CERT:-0}" = 1 ] && [ ! -f "$certs/cert.pem" ]; then
  mkdir -p "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$certs/key.pem" -out "$certs/cert.pem" -days 365 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
  echo "gateway-entrypoint: made a self-signed development certificate in $certs" >&2
fi
if [ "$(id -u)" = 0 ]; then
  [ -d "$certs" ] && chown -R h3gate:h3gate "$certs" 2>/dev/null || true
  exec setpriv --reuid=h3gate --regid=h3gate --init-groups "$@"
fi
exec "$@"
