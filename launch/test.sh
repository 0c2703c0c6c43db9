#!/usr/bin/env bash
# Builds routemoe and runs its test suite; installs the dependencies first if any is missing.
#
#   launch/test.sh                       release preset (CUDA sources built when nvcc is found)
#   launch/test.sh --preset asan         AddressSanitizer + UBSan build, same suite
#   launch/test.sh -L unit               only tests with this ctest label (unit, reference, mpi, gpu, e2e)
#   launch/test.sh -- <ctest args>       anything after -- goes to ctest
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

preset=release
ctest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset=${2:?--preset needs a name}; shift 2 ;;
    -L) ctest_args+=(-L "${2:?-L needs a label}"); shift 2 ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

launch/install-deps.sh --check >/dev/null 2>&1 || launch/install-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
echo "== configure ($preset)"
cmake --preset "$preset"
echo "== build ($preset, $jobs jobs)"
cmake --build --preset "$preset" -j "$jobs"
echo "== test ($preset)"
# mpirun refuses root unless told; tests that run it oversubscribe the 2 cores on purpose.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --preset "$preset" -j "$jobs" "${ctest_args[@]}"
