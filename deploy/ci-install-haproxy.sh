#!/usr/bin/env bash
# Installs what tests/haproxy_upstream.rs needs: `haproxy` with TLS (OpenSSL)
# and HTTP/2, from Debian's `haproxy` package (the load harness uses it too).
# Idempotent: does nothing when haproxy is already installed. Run from
# .ci/run before the tests:
#
#   bash deploy/ci-install-haproxy.sh
#
# The tests start their own haproxy on a free loopback port with a config of
# their own and never use the package's service. Under CI=true,
# tests/haproxy_upstream.rs fails (instead of skipping) when haproxy is missing.
set -euo pipefail

for bin in /usr/sbin/haproxy /usr/bin/haproxy /usr/local/sbin/haproxy; do
  if [ -x "$bin" ]; then
    echo "deploy/ci-install-haproxy.sh: $("$bin" -v 2>&1 | head -n 1)"
    exit 0
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "deploy/ci-install-haproxy.sh: installing Debian's haproxy package"
$SUDO apt-get update -qq
# --no-install-recommends: haproxy alone (no vim syntax files, no
# liblua). Its service is not started in containers (no init system, or
# policy-rc.d says no).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends haproxy >/dev/null
/usr/sbin/haproxy -v 2>&1 | head -n 1
