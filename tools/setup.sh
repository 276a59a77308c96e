#!/usr/bin/env bash
# Installs the Debian packages hiapi-proxy needs. Debian 12 (bookworm).
#
#   tools/setup.sh run    what building and running the daemon needs (tools/run.sh)
#   tools/setup.sh        everything the test suite, benchmarks and packaging use (tools/test.sh)
#
# Idempotent: quiet when everything is present; runs `apt-get update` only when something is
# missing.
set -euo pipefail

RUN_PACKAGES=(
  # build
  build-essential cmake pkg-config
  # libraries (design card)
  libevent-dev libssl-dev rapidjson-dev libyaml-cpp-dev prometheus-cpp-dev libsystemd-dev
  # HTTP/1.1 message parsing on the proxy's hot path: llhttp, nodejs's parser (C sources,
  # compiled into the proxy; http-parser's maintained successor, about twice as fast)
  node-llhttp
  # several hosts sharing one key's budget and slots through Redis (store.kind: redis): hiredis
  # and its libevent adapter, on the proxy's own loop
  libhiredis-dev
  # the upstream's certificate is verified against the system store
  ca-certificates
)
TEST_PACKAGES=(
  libgtest-dev libgmock-dev
  # tests and tools
  openssl curl python3 procps
  nginx-light prometheus wrk
  # the shared-store tests start their own redis-server on a loopback port
  redis-server
  # tools/dev/size_check.py (ctest source_size_limits) reads function extents from ctags' end: field
  universal-ctags
  # systemd unit verification; packaging (CPack's shlibdeps runs dpkg-shlibdeps and `file`),
  # and lintian on the package
  systemd dpkg-dev file lintian
)

case "${1:-all}" in
  run) PACKAGES=("${RUN_PACKAGES[@]}") ;;
  all) PACKAGES=("${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) echo "usage: $0 [run|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Tests start their own nginx and Prometheus: the packaged services, installed just now by this
# script, must not keep running on their own. A service that was already installed is the
# machine owner's and is left alone.
installed_now() { [[ " ${missing[*]} " == *" $1 "* ]]; }
to_stop=()
installed_now nginx-light && to_stop+=(nginx)
installed_now prometheus && to_stop+=(prometheus)
installed_now redis-server && to_stop+=(redis-server)
if ((${#to_stop[@]} > 0)) && command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  for svc in "${to_stop[@]}"; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi
echo "setup: done" >&2
