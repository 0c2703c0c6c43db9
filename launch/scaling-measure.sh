#!/usr/bin/env bash
# The measurements behind docs/scaling.md's cost model, in one command; then
# python/scaling_model.py fits the model to them and prints the tables of docs/scaling.md.
#
#   launch/scaling-measure.sh <routemoe> <out dir> [--no-two-hosts] [--steps N]
#   python3 python/scaling_model.py <out dir>
#
# Writes into <out dir>:
#   gemm.json          routemoe bench gemm, 1 thread (the square-GEMM ceiling of one core)
#   a2a_1host.json     routemoe bench alltoall, 2 ranks on this host (shared memory): the
#                      exchange at 256..8192 tokens per rank, with --d-ff 512 (exchange, experts,
#                      blocking, overlapped) and fp32 all-reduces of 1 and 16 MiB
#   a2a_2hosts.json    the same across two network namespaces over TCP (launch/netns-bench.sh;
#                      needs root; skipped with --no-two-hosts)
#   train_np{1,2,4}/   routemoe train of examples/configs/tiny.toml for N steps (default 40),
#                      1 thread per rank, ep_size = ranks: metrics.jsonl holds tokens_per_s
# Run it on a quiet machine: every figure is a time. Each command's output goes to
# <out dir>/<name>.log; the last line of every bench log says how loaded the machine was.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <routemoe> <out dir> [--no-two-hosts] [--steps N]" >&2
  exit 2
fi
bin=$(realpath "$1")
out=$2
shift 2
two_hosts=1
steps=40
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-two-hosts) two_hosts=0; shift ;;
    --steps) steps=${2:?--steps needs a number}; shift 2 ;;
    *) echo "scaling-measure.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun_np() { mpirun -np "$1" --oversubscribe "${@:2}"; }
step() { echo "== $(date '+%H:%M:%S') $*"; }

step "bench gemm (1 thread)"
"$bin" bench gemm --threads 1 --json "$out/gemm.json" >"$out/gemm.log" 2>&1
tail -n 1 "$out/gemm.log"

a2a=(bench alltoall --tokens 256,1024,4096,8192 --d-ff 512 --allreduce-mib 1,16 --threads 1)
step "bench alltoall, 2 ranks, one host"
mpirun_np 2 "$bin" "${a2a[@]}" --json "$out/a2a_1host.json" >"$out/a2a_1host.log" 2>&1
grep 'ratio=' "$out/a2a_1host.log" | head -n 4
if ((two_hosts)); then
  step "bench alltoall, 2 ranks, two hosts (network namespaces, TCP)"
  "$here/launch/netns-bench.sh" "$bin" 1 -- "${a2a[@]}" --json "$out/a2a_2hosts.json" \
    >"$out/a2a_2hosts.log" 2>&1 || echo "two-host run failed (see $out/a2a_2hosts.log)"
  grep 'ratio=' "$out/a2a_2hosts.log" | head -n 4 || true
fi

data=$out/data
if [[ ! -f $data/meta.json ]]; then
  "$bin" prepare "$here/examples/data/opticks.txt" --out "$data" --val-fraction 0.1 >/dev/null
fi
for np in 1 2 4; do
  step "train tiny.toml, $np rank(s), ep_size $np, $steps steps"
  rm -rf "$out/train_np$np"
  mpirun_np "$np" "$bin" train --config "$here/examples/configs/tiny.toml" --data.path="$data" \
    --train.steps="$steps" --parallel.ep_size="$np" --train.threads=1 --train.eval_every=0 \
    --checkpoint.every=0 --train.progress=false --train.out_dir="$out/train_np$np" \
    >"$out/train_np$np.log" 2>&1
  grep '^summary' "$out/train_np$np.log" || tail -n 3 "$out/train_np$np.log"
done
step "done: python3 $here/python/scaling_model.py $out"
