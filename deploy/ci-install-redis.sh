#!/usr/bin/env bash
# Installs what tests/redis.rs needs: `redis-server`, from Debian's
# `redis-server` package. Idempotent: does nothing when it is already on PATH.
# Run from .ci/run before the tests:
#
#   bash deploy/ci-install-redis.sh
#
# The tests start their own server on a free port (no persistence) and never
# use the package's service. Under CI=true, tests/redis.rs fails (instead of
# skipping) when `redis-server` is missing.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "deploy/ci-install-redis.sh: $(redis-server --version | head -n 1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "deploy/ci-install-redis.sh: installing Debian's redis-server package"
$SUDO apt-get update -qq
# --no-install-recommends: redis-tools and friends are not needed. The
# package's service is not started in containers (no init system).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null

redis-server --version | head -n 1
