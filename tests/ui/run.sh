#!/usr/bin/env bash
# Browser tests of the meshtrace dashboard. Installs what they need on a fresh Debian machine
# (Debian's Chromium, Node.js if absent, playwright-core via npm ci), builds the server if no
# binary is given, and runs the tests with node's test runner.
#   MESHTRACE_BIN      the meshtrace binary (default: $CARGO_TARGET_DIR/debug/meshtrace)
#   CHROMIUM_BIN       the browser (default: /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "$0")"
REPO="$(cd ../.. && pwd)"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]; then
  echo "ui tests: installing chromium"
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "ui tests: installing nodejs and npm"
  apt_install nodejs npm
fi

if [ -z "${MESHTRACE_BIN:-}" ]; then
  target="${CARGO_TARGET_DIR:-$REPO/target}"
  export MESHTRACE_BIN="$target/debug/meshtrace"
  if [ ! -x "$MESHTRACE_BIN" ]; then
    echo "ui tests: building meshtrace (this also builds the dashboard)"
    (cd "$REPO" && cargo build -p meshtrace)
  fi
fi

npm ci --no-audit --no-fund --loglevel=error
mkdir -p artifacts
exec node --test --test-concurrency=1 ui.test.mjs services.test.mjs auth.test.mjs tenants.test.mjs
