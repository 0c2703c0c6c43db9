#!/usr/bin/env bash
# Structural and formatting rules of the code base (docs/architecture.md, "Rules the code keeps").
#
#   launch/check-tidy.sh            all checks
#   launch/check-tidy.sh structure  function length, router branches, the device seam
#   launch/check-tidy.sh format     clang-format --dry-run -Werror on every C++/CUDA file
#
# Exit 0 when every rule holds, 1 with one line per violation otherwise, 77 when a tool it needs
# is missing (ctest reports that as skipped; CI installs both through launch/install-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-all}
max_lines=60
fail=0

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "check-tidy: $1 is not installed (Debian: $2); skipped" >&2
  exit 77
}

sources() { git ls-files -- "$@" 2>/dev/null || find "$@" -type f; }

check_structure() {
  need ctags universal-ctags
  # 1. No function in layers/ or framework/train/ longer than $max_lines lines.
  local long
  long=$(sources 'layers/*.cpp' 'layers/*.h' 'framework/train/*.cpp' 'framework/train/*.h' |
    xargs ctags --c++-kinds=f --fields=+ne --language-force=C++ -o - |
    awk -F'\t' -v max="$max_lines" '{
      line = 0; end = 0
      for (i = 4; i <= NF; ++i) {
        if ($i ~ /^line:/) line = substr($i, 6)
        if ($i ~ /^end:/) end = substr($i, 5)
      }
      if (end > 0 && end - line + 1 > max) printf "%s:%d: %s is %d lines (at most %d)\n", $2, line, $1, end - line + 1, max
    }')
  if [[ -n $long ]]; then echo "$long"; fail=1; fi
  # 2. The MoE layer does not branch on the router kind: routers are modules (layers/routers/).
  if grep -n 'RouterKind\|\.kind()' layers/moe.cpp layers/moe.h; then
    echo "layers/moe.*: the MoE layer branches on the router kind (put it in the router module)"
    fail=1
  fi
  # 3. CPU kernels are called only through the device seam (framework/ops.h). The kernels
  #    themselves, their CUDA twins (which share the CPU contract's types) and tests may.
  local direct
  direct=$(sources '*.cpp' '*.h' '*.cu' '*.cuh' |
    grep -v -E '^(framework/cpu/|framework/ops\.|framework/cuda/|tests/)' |
    xargs grep -n -E '(^|[^a-z_:])cpu::' | grep -v -E '^[^:]+:[0-9]+:\s*//' || true)
  if [[ -n $direct ]]; then
    echo "$direct" | sed 's/$/   <- call the seam (framework\/ops.h) instead/'
    fail=1
  fi
}

check_format() {
  need clang-format clang-format
  local off
  off=$(sources '*.cpp' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror 2>&1 |
    grep -E '^[^ ]+:[0-9]+:[0-9]+: error' | cut -d: -f1 | sort -u || true)
  if [[ -n $off ]]; then
    echo "$off" | sed 's/$/: differs from .clang-format (run clang-format -i on it)/'
    fail=1
  fi
}

case $what in
  structure) check_structure ;;
  format) check_format ;;
  all) check_structure; check_format ;;
  *) echo "usage: $0 [structure|format|all]" >&2; exit 2 ;;
esac
if [[ $fail -eq 0 ]]; then echo "check-tidy: $what: ok"; fi
exit $fail
