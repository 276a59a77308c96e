#!/bin/sh
# b3_overhead (see b3_overhead.py --help). Extra flags pass through, e.g. --reps 5.
exec python3 "$(dirname "$0")/b3_overhead.py" "$@"
