#!/bin/sh
# b4_scale (see b4_scale.py --help). Extra flags pass through, e.g. --reps 5.
exec python3 "$(dirname "$0")/b4_scale.py" "$@"
