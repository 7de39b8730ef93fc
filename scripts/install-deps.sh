#!/usr/bin/env bash
# Installs the Debian 12 packages h3gate needs to build, run and test.
# Usage: scripts/install-deps.sh [build|run|test|fuzz|bench]   (default: test)
# Only installs what is missing, so it is cheap to run again.
set -euo pipefail

profile=${1:-test}

build_pkgs=(
  build-essential cmake pkg-config
  libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev libnghttp3-dev
  libnghttp2-dev libssl-dev libevent-dev libyaml-dev node-llhttp python3-dev
)
run_pkgs=(openssl python3 python3-uvloop python3-starlette)
test_pkgs=(
  curl nghttp2-client ngtcp2-client
  python3-pytest python3-h2 python3-httpx python3-websockets python3-hypercorn python3-httptools
  python3-prometheus-client tcpdump
  python3-fastapi python3-django python3-quart uvicorn
  chromium iproute2 dnsmasq-base docker-compose procps systemd
)
fuzz_pkgs=(clang libclang-rt-14-dev) # libFuzzer (tests/fuzz), also part of the test suite

bench_pkgs=(nghttp2-server haproxy caddy uvicorn python3-hypercorn python3-httptools python3-uvloop)

case "$profile" in
  build) want=("${build_pkgs[@]}") ;;
  bench) want=("${build_pkgs[@]}" "${run_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
  fuzz) want=("${build_pkgs[@]}" "${fuzz_pkgs[@]}") ;;
  run) want=("${build_pkgs[@]}" "${run_pkgs[@]}") ;;
  test) want=("${build_pkgs[@]}" "${run_pkgs[@]}" "${test_pkgs[@]}" "${fuzz_pkgs[@]}") ;;
  *) echo "usage: $0 [build|run|test|fuzz|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
