#!/bin/bash
# The container's HEALTHCHECK: asks the admin listener's /healthz (no curl in the image: bash's
# /dev/tcp). The port is $HIAPI_ADMIN_PORT when set, else admin.port of the configuration
# ($HIAPI_CONFIG, default /etc/hiapi-proxy/hiapi-proxy.yaml), else the built-in 9787, so a
# mounted configuration that moves the admin listener keeps the check right.
set -u
config="${HIAPI_CONFIG:-/etc/hiapi-proxy/hiapi-proxy.yaml}"
port="${HIAPI_ADMIN_PORT:-}"
if [[ -z "$port" && -r "$config" ]]; then
  # The first `port:` one level under the top-level `admin:` block.
  port="$(awk '
    /^[^[:space:]#]/ { in_admin = ($0 ~ /^admin:/) }
    in_admin && /^[[:space:]]+port:[[:space:]]*[0-9]+/ {
      sub(/^[[:space:]]+port:[[:space:]]*/, ""); sub(/[^0-9].*$/, ""); print; exit
    }' "$config")"
fi
port="${port:-9787}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
head -n 1 <&3 | grep -q ' 200 '
