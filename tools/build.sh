#!/usr/bin/env bash
# Configures and builds hiapi-proxy. Usage: tools/build.sh [build-dir] [extra cmake args...]
# HIAPI_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
shift || true
args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [[ "${HIAPI_SANITIZE:-0}" == 1 ]]; then
  args+=(-DHIAPI_SANITIZE=ON)
fi
cmake -S "$root" -B "$build" "${args[@]}" "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
