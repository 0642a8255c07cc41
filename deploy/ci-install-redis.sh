#!/usr/bin/env bash
# Installs what tests/redis.rs and tests/redis_ha.rs need: `redis-server`
# (which also runs the sentinels, `redis-server --sentinel`), from Debian's
# `redis-server` package, and `redis-cli` (`redis-cli --cluster create`
# forms the test cluster), from `redis-tools`, which `redis-server` depends
# on. Idempotent: does nothing when both are already on PATH.
# Run from .ci/run before the tests:
#
#   bash deploy/ci-install-redis.sh
#
# The tests start their own servers on free ports (no persistence) and never
# use the package's service. Under CI=true, the tests fail (instead of
# skipping) when `redis-server` or `redis-cli` is missing.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  echo "deploy/ci-install-redis.sh: $(redis-server --version | head -n 1); $(redis-cli --version)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

# Only what is missing: redis-server depends on redis-tools (redis-cli), so
# it brings both; a redis-server of another source without redis-cli gets
# redis-tools alone.
PACKAGES=()
command -v redis-server >/dev/null 2>&1 || PACKAGES+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || PACKAGES+=(redis-tools)
echo "deploy/ci-install-redis.sh: installing Debian's ${PACKAGES[*]}"
$SUDO apt-get update -qq
# --no-install-recommends: nothing else is needed. The package's service is
# not started in containers (no init system).
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null

redis-server --version | head -n 1
redis-cli --version
