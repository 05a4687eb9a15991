#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium and playwright-core.
# Idempotent; run by tests/browser.rs and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
if [ ! -d node_modules/playwright-core ]; then
  npm install --no-audit --no-fund --silent
fi
