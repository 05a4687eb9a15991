#!/usr/bin/env bash
# Runs the fuzz tests (issue 12, item 6) far longer than `cargo test` does.
#
# The suite runs them with few cases so it stays fast:
#   tests/fuzz_parsers/    property tests (proptest) of every parser that reads
#                          outside bytes: JSON requests, TCP lines, WebSocket
#                          frames, HTTP (pipelined), worker-link frames, JWT,
#                          the config file. SYNCD_FUZZ_CASES cases per property.
#   tests/fuzz_ports.rs    a real server gets SYNCD_FUZZ_PORT_STRINGS random
#                          byte strings on each port; no worker may restart.
# This script raises both counts, builds in release, and repeats with fresh
# random seeds until the time is up.
#
# Usage: scripts/fuzz.sh [minutes]          (default 10; 0 = one round)
# Environment:
#   SYNCD_FUZZ_CASES         cases per property per round (default 100000)
#   SYNCD_FUZZ_PORT_STRINGS  strings per port per round (default 200000)
#   SYNCD_FUZZ_SEED          replay a fuzz_ports failure with its printed seed
#   PROPTEST_RNG_SEED        replay a fuzz_parsers round (proptest's own seed)
# A failing property prints its (shrunk) input; fuzz_ports prints its seed.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
export SYNCD_FUZZ_CASES=${SYNCD_FUZZ_CASES:-100000}
export SYNCD_FUZZ_PORT_STRINGS=${SYNCD_FUZZ_PORT_STRINGS:-200000}

cargo test --release --test fuzz_parsers --test fuzz_ports --no-run

end=$(($(date +%s) + minutes * 60))
round=0
while :; do
    round=$((round + 1))
    start=$(date +%s)
    echo "== round $round: $SYNCD_FUZZ_CASES cases per property, $SYNCD_FUZZ_PORT_STRINGS strings per port"
    cargo test --release --test fuzz_parsers -q
    cargo test --release --test fuzz_ports -q -- --nocapture
    echo "== round $round passed in $(($(date +%s) - start))s"
    [ "$(date +%s)" -lt "$end" ] || break
done
echo "fuzzing: $round round(s), no failure"
