#!/usr/bin/env bash
# The project's test command: builds the workspace, runs the Rust tests, then the end-to-end
# suite (tests/e2e, pytest) against the freshly built dev binary. Works on a fresh Debian
# machine as root; CI runs it from .ci/run.
#
# Environment:
#   CARGO_TARGET_DIR   build dir (default ~/.cache/meshtrace/target, kept between runs)
#   MESHTRACE_VENV     Python venv for the e2e suite (default ~/.cache/meshtrace/venv)
#   E2E_JOBS           parallel pytest workers (default 2)
#   PYTEST_ARGS        extra pytest arguments, e.g. "-k storage_suite"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meshtrace/target}
VENV=${MESHTRACE_VENV:-$HOME/.cache/meshtrace/venv}
E2E_JOBS=${E2E_JOBS:-2}

step() { printf '\n==> %s\n' "$*"; }

# --- Python venv for the end-to-end suite --------------------------------------------------
step "python venv at $VENV"
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
REQ_HASH=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)" != "$REQ_HASH" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  echo "$REQ_HASH" > "$VENV/.requirements.sha256"
else
  echo "requirements unchanged, skipping pip install"
fi

# Debian packages the tests run: the TLS tests make their certificates with openssl, and the
# cluster tests start a NATS server of their own (besides the one at 127.0.0.1:4222) to stop
# it mid-test.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
MISSING=()
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
[ -x /usr/sbin/nats-server ] || MISSING+=(nats-server)
if [ ${#MISSING[@]} -gt 0 ]; then
  step "installing ${MISSING[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi

# The cluster tests and those of the PostgreSQL catalog need the servers this machine runs.
for service in "PostgreSQL 127.0.0.1 5432" "NATS 127.0.0.1 4222"; do
  set -- $service
  if ! (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then
    echo "$1 is not answering at $2:$3: the tests need it running (see README)" >&2
    exit 1
  fi
done

# --- Dashboard (ui/) -----------------------------------------------------------------------
# The dashboard is built by server/build.rs (npm ci + vite) during the cargo build below, and
# embedded in the binary; the browser tests at the end install Debian's Chromium if needed.

# --- Rust build and tests ------------------------------------------------------------------
# Dev profile only: the e2e suite runs the same binary the Rust tests were built with.
step "cargo build --workspace --locked"
cargo build --workspace --locked

step "cargo test --workspace --locked"
cargo test --workspace --locked

# --- End-to-end suite ----------------------------------------------------------------------
step "pytest tests/e2e (-n $E2E_JOBS)"
export MESHTRACE_BIN="$CARGO_TARGET_DIR/debug/meshtrace"
XDIST=()
if [ "$E2E_JOBS" != "0" ] && [ "$E2E_JOBS" != "1" ]; then
  XDIST=(-n "$E2E_JOBS" --dist loadfile)
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest tests/e2e -q "${XDIST[@]}" ${PYTEST_ARGS:-}

# --- Dashboard in a real browser -------------------------------------------------------------
step "dashboard tests (headless chromium, tests/ui)"
bash tests/ui/run.sh
