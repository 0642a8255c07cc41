#!/usr/bin/env bash
# Installs what tests/nginx_upstream.rs needs: `nginx` with TLS and HTTP/2,
# from Debian's `nginx-light` package (the load harness uses it too).
# Idempotent: does nothing when nginx is already installed. Run from
# .ci/run before the tests:
#
#   bash deploy/ci-install-nginx.sh
#
# The tests start their own nginx on a free loopback port with a config of
# their own and never use the package's service. Under CI=true,
# tests/nginx_upstream.rs fails (instead of skipping) when nginx is missing.
set -euo pipefail

for bin in /usr/sbin/nginx /usr/bin/nginx; do
  if [ -x "$bin" ]; then
    echo "deploy/ci-install-nginx.sh: $("$bin" -v 2>&1 | head -n 1)"
    exit 0
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "deploy/ci-install-nginx.sh: installing Debian's nginx-light package"
$SUDO apt-get update -qq
# --no-install-recommends: nginx-light alone. Its service is not started in
# containers (no init system, or policy-rc.d says no).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
/usr/sbin/nginx -v 2>&1 | head -n 1
