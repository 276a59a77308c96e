#!/bin/sh
# Runs B1-B4 one after the other (about 50 minutes) and keeps each one's output (markdown
# tables on stdout, progress on stderr) and raw JSON in DIR (default ./bench-results).
# Usage: tools/bench/run_all.sh [DIR]
set -eu
here=$(dirname "$0")
out=${1:-bench-results}
mkdir -p "$out"
python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import benchlib; benchlib.build()' "$here"
export HIAPI_BENCH_NO_BUILD=1
for b in b1_goodput b2_fairness b3_overhead b4_scale; do
  echo "== $b" >&2
  "$here/$b.sh" --json "$out/$b.json" > "$out/$b.md" 2> "$out/$b.log" || echo "$b failed: see $out/$b.log" >&2
done
cat "$out"/b1_goodput.md "$out"/b2_fairness.md "$out"/b3_overhead.md "$out"/b4_scale.md
