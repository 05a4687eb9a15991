#!/usr/bin/env bash
# Installs everything the test suite needs beyond cargo, once:
#   - Debian's chromium, for the browser tests (apt; as root, or with sudo)
#   - playwright-core, which drives it (npm, into tests/browser/node_modules)
#   - Debian's redis-server and rabbitmq-server, which the cluster and queue
#     tests start themselves on free ports (apt; no service is enabled)
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

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-tests.sh: installing Debian's ${missing[*]} (apt)" >&2
  as_root apt-get update -qq
  # policy-rc.d 101: install without starting the packages' own services;
  # the tests start their own servers on free ports.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    trap 'as_root rm -f "$policy"' EXIT
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
  echo "setup-tests.sh: installing playwright-core (npm)" >&2
  (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent)
fi

bash "$ROOT/scripts/autobahn-setup.sh"
