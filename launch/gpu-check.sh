#!/usr/bin/env bash
# Verify routemoe's GPU code on a machine with an NVIDIA GPU, and write one report file.
#
#   launch/gpu-check.sh [--build DIR] [--report FILE] [--quick]
#
# DIR is a build with CUDA on (default build/cuda, else build/release: `cmake --preset cuda` on
# the GPU machine targets the visible GPU). The report (default
# gpu-check-report.txt) starts with the machine (host architecture, GPU, driver and runtime
# versions) and then has one section per check, each ending in PASS, FAIL or NOT BUILT:
#
#   1. kernel parity    every CUDA kernel against its CPU twin (test_kernel_gpu_parity, the `gpu`
#                       ctest label's kernel table). A skip on a machine with a GPU is a FAIL.
#   2. NCCL, one rank   the communicator suite on the NCCL backend (test_comm --require-gpu),
#                       one process, no mpirun needed.
#   3. compute-sanitizer memcheck, racecheck, synccheck and initcheck on the kernel parity test
#                       (--quick: memcheck only).
#   4. training on the GPU, the loss trajectories against the CPU, `bench train --device cuda`:
#                       NOT BUILT yet (docs/performance.md, "GPU"): the MoE and router kernels
#                       have no CUDA twins, so `routemoe train` runs on the CPU only.
#
# It exits 0 when every check that exists passed, 1 otherwise. Sized for one GPU in well under
# 10 minutes (the sanitizer passes are most of it); each section is stopped after
# GPU_CHECK_SECTION_TIMEOUT seconds (default 240), which counts as a FAIL.
set -uo pipefail

build=build/cuda
[[ -d $build ]] || build=build/release
report=gpu-check-report.txt
quick=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --report) report=${2:?--report needs a file}; shift 2 ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

find_bin() {  # the first of the build's usual places that holds the binary
  local name=$1 d
  for d in "$build/tests" "$build/tests/mpi" "$build" "$build/bin"; do
    [[ -x $d/$name ]] && { echo "$d/$name"; return 0; }
  done
  return 1
}
parity=$(find_bin test_kernel_gpu_parity) || { echo "gpu-check.sh: no test_kernel_gpu_parity in $build (build with CUDA on first)" >&2; exit 2; }
comm_test=$(find_bin test_comm) || comm_test=
routemoe=$(find_bin routemoe) || routemoe=

: >"$report" || { echo "gpu-check.sh: cannot write $report" >&2; exit 2; }
say() { printf '%s\n' "$*" | tee -a "$report"; }
failed=0
# section <title> <command...>: runs the command, keeps the last lines of its output in the
# report, and records PASS/FAIL (exit 77, "skipped", is a FAIL on a GPU machine).
section() {
  local title=$1
  shift
  local log start rc
  log=$(mktemp)
  start=$(date +%s)
  timeout -k 10 "${GPU_CHECK_SECTION_TIMEOUT:-240}" "$@" >"$log" 2>&1
  rc=$?
  say ""
  say "== $title ($(($(date +%s) - start)) s): $*"
  tail -n 25 "$log" | sed 's/^/   /' | tee -a "$report"
  if ((rc == 0)); then
    say "PASS: $title"
  elif ((rc == 124 || rc == 137)); then
    say "FAIL: $title did not finish within ${GPU_CHECK_SECTION_TIMEOUT:-240} s"
    failed=1
  elif ((rc == 86)); then
    say "FAIL: $title: compute-sanitizer reported errors (above)"
    failed=1
  elif ((rc == 77)); then
    say "FAIL: $title was skipped on a machine that should have a GPU (exit 77)"
    failed=1
  else
    say "FAIL: $title (exit $rc)"
    failed=1
  fi
  rm -f "$log"
}

say "routemoe GPU check, $(date -u '+%F %T') UTC"
say "host: $(uname -m), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //')"
if command -v nvidia-smi >/dev/null; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 4 | tr '\n' ';')"
else
  say "gpu: nvidia-smi not found"
fi
command -v nvcc >/dev/null && say "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
[[ -n $routemoe ]] && say "build: $("$routemoe" --version 2>&1 | tr '\n' ' ')"

section "kernel parity (CUDA against CPU)" "$parity" --gtest_brief=1
if [[ -n $comm_test ]]; then
  section "NCCL communicator, one rank" "$comm_test" --expect-ranks 1 --require-gpu --gtest_filter='*nccl*' --gtest_brief=1
else
  say ""
  say "FAIL: no test_comm in $build"
  failed=1
fi
if command -v compute-sanitizer >/dev/null; then
  tools=(memcheck racecheck synccheck initcheck)
  ((quick)) && tools=(memcheck)
  for tool in "${tools[@]}"; do
    section "compute-sanitizer $tool on the kernel parity test" compute-sanitizer --tool "$tool" \
      --error-exitcode 86 "$parity" --gtest_brief=1
  done
else
  say ""
  say "FAIL: compute-sanitizer not found (it comes with the CUDA toolkit)"
  failed=1
fi
say ""
say "NOT BUILT: training on the GPU (train.device), GPU-vs-CPU loss trajectories, bench train --device cuda"
say "           (the MoE and router kernels have no CUDA twins yet; docs/performance.md, \"GPU\")"
say ""
if ((failed)); then say "RESULT: FAIL (see the sections above)"; else say "RESULT: every check that exists passed"; fi
exit "$failed"
