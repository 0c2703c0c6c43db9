#!/usr/bin/env bash
# The router-comparison experiment in one command (issue 11; docs/results.md):
#   examples/router_comparison/run.sh [--quick | --size quick|small|full] [--out DIR]
#                                     [--data DIR] [--routemoe BIN] [--seeds N] [--threads N]
# Running it again resumes an interrupted experiment. Needs a python3 with numpy and h5py
# ($PYTHON, else the first of python3 and /usr/bin/python3 that has both).
set -euo pipefail
for py in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$py" -c 'import numpy, h5py' 2>/dev/null; then
    exec "$py" "$(dirname "$0")/experiment.py" "$@"
  fi
done
echo "router_comparison: needs python3 with numpy and h5py (Debian: python3-numpy python3-h5py)" >&2
exit 1
