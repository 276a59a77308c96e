#!/bin/sh
# B1 goodput (see b1_goodput.py --help). Extra flags pass through, e.g. --reps 5.
exec python3 "$(dirname "$0")/b1_goodput.py" "$@"
