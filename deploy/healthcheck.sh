#!/bin/bash
# Container health check for feishu-gateway (the Dockerfile's HEALTHCHECK).
#
#   feishu-gateway-healthcheck [PORT] [PATH]     default: 9090 /healthz
#
# Exits 0 when GET http://127.0.0.1:PORT/PATH answers 200, 1 otherwise.
# It speaks HTTP through bash's /dev/tcp, so the runtime image needs neither
# curl nor wget (fewer packages, fewer CVEs to patch): bash is part of every
# Debian image. tests/deploy.rs runs it against a live gateway.
set -u
port="${1:-${HEALTHCHECK_PORT:-9090}}"
path="${2:-/healthz}"

# Connecting on loopback never hangs (refused or accepted at once); the read
# is bounded so a listener that accepts and never answers fails the check.
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
IFS= read -r -t 3 status <&3 || { echo "unhealthy: no answer on port ${port}" >&2; exit 1; }
status="${status%$'\r'}"
case "$status" in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "unhealthy: ${path} answered ${status}" >&2; exit 1 ;;
esac
