#!/usr/bin/env bash
# Quick start, command 1: install what is missing, build, and run the daemon in the foreground
# with conf/hiapi-proxy.yaml (or the file given as the first argument).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/tools/setup.sh"
"$root/tools/build.sh" "$root/build" >/dev/null
exec "$root/build/hiapi-proxy" --config "${1:-$root/conf/hiapi-proxy.yaml}"
