#!/usr/bin/env bash
# The one test command: installs what is missing (Debian 12 packages), builds
# twice (release, and with AddressSanitizer + UndefinedBehaviorSanitizer) and
# runs every test through ctest in both builds; then builds the libFuzzer
# targets with clang and runs their short, repeatable ctest runs.
#   scripts/test.sh            everything
#   scripts/test.sh -R worker  only tests whose name matches (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

scripts/install-deps.sh test

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DH3GATE_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ctest --output-on-failure -j"$jobs" "$@")

CC=clang cmake -S . -B build-fuzz -DH3GATE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j"$jobs"
(cd build-fuzz && ctest --output-on-failure -j"$jobs" "$@")
echo "all tests passed (release, sanitizer and fuzz builds)"
