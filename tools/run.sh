#!/usr/bin/env bash
# Quick start, command 1: install what building and running need (not the test tools), build the
# daemon, and run it in the foreground with conf/hiapi-proxy.yaml (or the file given as the first
# argument). The build prints its progress on stderr; the first build takes a few minutes.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/tools/setup.sh" run
echo "run: building in $root/build" >&2
"$root/tools/build.sh" "$root/build" -DHIAPI_BUILD_TESTS=OFF >&2
exec "$root/build/hiapi-proxy" --config "${1:-$root/conf/hiapi-proxy.yaml}"
