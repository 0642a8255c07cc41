#!/usr/bin/env bash
# Installs what tests/status.rs needs: headless Chromium, from Debian's
# `chromium` package (plus a font, so the screenshot has text). Idempotent:
# does nothing when chromium is already installed. Run from .ci/run before
# the tests:
#
#   bash deploy/ci-install-chromium.sh
#
# The test runs `chromium --headless` against the admin listener of a
# gateway it starts on loopback, dumps the DOM and takes a screenshot.
# Under CI=true, tests/status.rs fails (instead of skipping) when chromium
# is missing.
set -euo pipefail

for bin in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$bin" ]; then
    echo "deploy/ci-install-chromium.sh: $("$bin" --version 2>/dev/null | head -n 1)"
    exit 0
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

echo "deploy/ci-install-chromium.sh: installing Debian's chromium package"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version 2>/dev/null | head -n 1
