#!/usr/bin/env bash
# Installs every Debian package that hiapi-proxy's build, tests and tools need.
# Idempotent: quiet when everything is present; runs `apt-get update` only when
# something is missing. Debian 12 (bookworm).
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  # libraries (design card)
  libevent-dev libssl-dev rapidjson-dev libyaml-cpp-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev libsystemd-dev
  # HTTP/1.1 message parsing on the proxy's hot path: llhttp, nodejs's parser (C sources,
  # compiled into the proxy; http-parser's maintained successor, about twice as fast)
  node-llhttp
  # tests and tools
  openssl curl python3 procps
  nginx-light prometheus wrk
  # systemd unit verification and packaging
  systemd dpkg-dev
)

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
# The packaged services must not run on their own: tests start their own instances.
for svc in nginx prometheus; do
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
echo "setup: done" >&2
