#!/usr/bin/env bash
# Quick start, command 2: install what is missing, build, and run the whole test suite with
# ctest. HIAPI_SANITIZE=1 does it in a separate AddressSanitizer + UBSan build (build-asan).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/tools/setup.sh"
build="$root/build"
if [[ "${HIAPI_SANITIZE:-0}" == 1 ]]; then
  build="$root/build-asan"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
fi
"$root/tools/build.sh" "$build" -DHIAPI_BUILD_TESTS=ON
cd "$build"
ctest --output-on-failure -j"${HIAPI_TEST_JOBS:-2}" --timeout 600 "$@"
