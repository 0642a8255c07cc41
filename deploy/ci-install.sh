#!/usr/bin/env bash
# Installs what tests/deploy.rs needs: promtool and the prometheus server,
# from Debian's `prometheus` package. Idempotent: does nothing when both are
# already on PATH. Meant to be sourced or run from .ci/run before the tests:
#
#   bash deploy/ci-install.sh
#
# Under CI=true, tests/deploy.rs fails (instead of skipping) when either
# binary is missing.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  echo "deploy/ci-install.sh: promtool and prometheus already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "deploy/ci-install.sh: installing Debian's prometheus package (promtool, prometheus)"
$SUDO apt-get update -qq
# --no-install-recommends: the node exporter and friends are not needed.
# The package's service is not started in containers (no init system);
# the tests start their own server on a free port.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

promtool --version 2>&1 | head -n 1
prometheus --version 2>&1 | head -n 1
