#!/usr/bin/env bash
# Installs the official Feishu SDKs that tests/sdk_clients.rs drives, into
# project-local places only:
#   - Python lark-oapi (tests/sdk/requirements.txt) into the venv target/sdk-venv
#   - Node @larksuiteoapi/node-sdk (tests/sdk/package-lock.json) into tests/sdk/node_modules
# Idempotent: each part is skipped when it is already installed from the
# current pin file (a stamp holds the pin file's checksum).
# Needs python3 (with venv) and node + npm on PATH; PyPI and npm reachable.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
sdk="$root/tests/sdk"
venv="${SDK_VENV:-$root/target/sdk-venv}"
python="${PYTHON:-python3}"

sum() { sha256sum "$1" | cut -d' ' -f1; }

# --- Python -----------------------------------------------------------------
want="$(sum "$sdk/requirements.txt")"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.sdk-stamp" 2>/dev/null)" = "$want" ]; then
  echo "sdk/install.sh: Python lark-oapi already in $venv"
else
  echo "sdk/install.sh: installing Python lark-oapi into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$sdk/requirements.txt"
  echo "$want" > "$venv/.sdk-stamp"
fi
"$venv/bin/python" -c 'import importlib.metadata as m; print("sdk/install.sh: lark-oapi", m.version("lark-oapi"))'

# --- Node -------------------------------------------------------------------
want="$(sum "$sdk/package-lock.json")"
if [ -d "$sdk/node_modules/@larksuiteoapi/node-sdk" ] \
  && [ "$(cat "$sdk/node_modules/.sdk-stamp" 2>/dev/null)" = "$want" ]; then
  echo "sdk/install.sh: Node @larksuiteoapi/node-sdk already in $sdk/node_modules"
else
  echo "sdk/install.sh: installing Node @larksuiteoapi/node-sdk into $sdk/node_modules"
  # npm ci: exactly the lock file; no install scripts are needed.
  (cd "$sdk" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want" > "$sdk/node_modules/.sdk-stamp"
fi
node -e 'console.log("sdk/install.sh: @larksuiteoapi/node-sdk", require(process.argv[1] + "/node_modules/@larksuiteoapi/node-sdk/package.json").version)' "$sdk"
