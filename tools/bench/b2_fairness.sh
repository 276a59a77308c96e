#!/bin/sh
# b2_fairness (see b2_fairness.py --help). Extra flags pass through, e.g. --reps 5.
exec python3 "$(dirname "$0")/b2_fairness.py" "$@"
