#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzingclient against a WebSocket URL and prints
# one summary line, then one line per failed case.
#
#   usage: scripts/autobahn-run.sh URL OUTDIR [CASES]
#   CASES defaults to 1.* to 7.*, 9.* and 10.* (comma separated)
#   exit:  0 no case failed, 1 some case failed, 2 wstest produced no report
# wstest comes from scripts/autobahn-setup.sh (AUTOBAHN_DIR overrides where).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
URL=${1:?usage: autobahn-run.sh URL OUTDIR [CASES]}
OUTDIR=${2:?usage: autobahn-run.sh URL OUTDIR [CASES]}
CASES=${3:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*}
WSTEST=${AUTOBAHN_DIR:-$ROOT/.cache/autobahn}/py27/bin/wstest
[ -x "$WSTEST" ] || { echo "autobahn-run.sh: $WSTEST missing; run scripts/setup-tests.sh" >&2; exit 2; }
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

python3 - "$URL" "$CASES" "$OUTDIR" > "$OUTDIR/fuzzingclient.json" <<'PY'
import json, sys
url, cases, outdir = sys.argv[1:]
print(json.dumps({"outdir": outdir, "servers": [{"agent": "syncd", "url": url}],
                  "cases": [c for c in cases.split(",") if c],
                  "exclude-cases": [], "exclude-agent-cases": {}}))
PY

(cd "$OUTDIR" && timeout 1200 "$WSTEST" -m fuzzingclient -s fuzzingclient.json) \
  > "$OUTDIR/wstest.log" 2>&1 || echo "autobahn-run.sh: wstest exited $? (see $OUTDIR/wstest.log)" >&2

python3 - "$OUTDIR/index.json" <<'PY'
import json, sys
try:
    results = json.load(open(sys.argv[1]))["syncd"]
except (OSError, KeyError, ValueError) as e:
    print("autobahn-run.sh: no report at %s (%s)" % (sys.argv[1], e), file=sys.stderr)
    sys.exit(2)
passing = {"OK": "ok", "NON-STRICT": "non-strict", "INFORMATIONAL": "informational",
           "UNIMPLEMENTED": "unimplemented"}
counts = dict.fromkeys(list(passing.values()) + ["failed"], 0)
failed = []
for case, r in results.items():
    kind = passing.get(r["behavior"], "failed")
    counts[kind] += 1
    if kind == "failed":
        failed.append((case, r))
print("autobahn: " + ", ".join("%d %s" % (n, k) for k, n in counts.items()))
for case, r in sorted(failed, key=lambda cr: [int(x) for x in cr[0].split(".")]):
    print("  FAILED %s: behavior=%s close=%s" % (case, r["behavior"], r["behaviorClose"]))
sys.exit(1 if failed else 0)
PY
