#!/usr/bin/env bash
# Installs everything the test suite needs beyond cargo, once:
#   - Debian's chromium, for the browser tests (apt; as root, or with sudo)
#   - playwright-core, which drives it (npm, into tests/browser/node_modules)
#   - Autobahn|Testsuite's wstest, for WebSocket conformance (.cache/autobahn)
# Idempotent and quick when all is there. `cargo test` runs it from the tests
# that need it, so it is safe to run at the same time from several processes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$ROOT/.cache"
exec 9>"$ROOT/.cache/setup.lock"
flock 9

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "setup-tests.sh: installing Debian's chromium (apt)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
  echo "setup-tests.sh: installing playwright-core (npm)" >&2
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent)
fi

bash "$ROOT/scripts/autobahn-setup.sh"
