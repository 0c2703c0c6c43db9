#!/usr/bin/env bash
# run_case.sh DUMP_MODEL PYTHON DUMP.h5 [dump_model args...]: C++ dump, then the PyTorch check.
set -euo pipefail
dump_model=$1 python=$2 out=$3
shift 3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$dump_model" --out "$out" "$@"
"$python" "$here/check_parity.py" "$out"
