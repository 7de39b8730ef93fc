#!/usr/bin/env bash
# Fuzzes the parsers of outside input (HTTP/1.1 requests, WebSocket frames,
# forwarding headers, config text) with libFuzzer, longer than ctest's short
# repeatable runs do. Builds build-fuzz with clang first.
#   scripts/fuzz.sh               each target for 300 s, one after another
#   scripts/fuzz.sh 60 h1_parser  one target for 60 s
# New inputs gather in build-fuzz/corpus/NAME; a finding is written to
# build-fuzz/findings/ and stops the run with its path. Replay one with
# build-fuzz/bin/fuzz_NAME FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ws_reader h1_parser text_fields config)

scripts/install-deps.sh fuzz
CC=clang cmake -S . -B build-fuzz -DH3GATE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$(nproc)"

mkdir -p build-fuzz/findings
for t in "${targets[@]}"; do
  seeds=tests/fuzz/corpus/$t
  [ "$t" = config ] && seeds=configs
  mkdir -p "build-fuzz/corpus/$t"
  echo "fuzz_$t: ${seconds}s"
  build-fuzz/bin/"fuzz_$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$t-" "build-fuzz/corpus/$t" "$seeds"
done
echo "no findings"
