#!/usr/bin/env bash
# The README's main command. On a fresh Debian/Ubuntu machine: installs what is missing,
# builds, prepares the shipped public-domain text (Newton's Opticks) and trains a small MoE
# language model with its experts split over 2 MPI ranks. The probe set's routing is recorded
# about 30 times (every steps/30 steps, and at step 0), so even a short run has a fluctuation
# curve; the run ends with the summary, the `routemoe trace` table of those records, the paths
# of the plots (<run>/plots) and the commands to try next.
#
#   launch/quickstart.sh                 about 600 steps (a few minutes on 2 CPU cores)
#   QUICKSTART_STEPS=30 launch/quickstart.sh    a short run (CI)
#
# Each run gets a new directory runs/quickstart-<date>-<time>[-N]; earlier runs are never
# overwritten.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
steps=${QUICKSTART_STEPS:-600}
ranks=${QUICKSTART_RANKS:-2}

launch/install-deps.sh --check >/dev/null 2>&1 || launch/install-deps.sh
echo "== build (release preset)"
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc 2>/dev/null || echo 2)"
bin=build/release/routemoe

if [[ ! -f data/opticks/meta.json ]]; then
  echo "== prepare data/opticks from examples/data/opticks.txt"
  "$bin" prepare examples/data/opticks.txt --out data/opticks --val-fraction 0.1
fi

run="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
n=1
while [[ -e $run || -e $run-$n && $n -gt 1 ]]; do run="runs/quickstart-$(date +%Y%m%d-%H%M%S)-$n"; n=$((n + 1)); done
mkdir -p runs

mpi=(mpirun -np "$ranks" --oversubscribe)
if [[ $(id -u) -eq 0 ]]; then mpi+=(--allow-run-as-root); fi
record_every=$(( steps >= 60 ? steps / 30 : 1 ))
ckpt_every=$(( steps >= 3 ? steps / 3 : 1 ))
echo "== train: $ranks MPI ranks, experts split over them (ep_size $ranks), $steps steps -> $run"
"${mpi[@]}" "$bin" train --config examples/configs/quickstart.toml \
  --parallel.ep_size="$ranks" --train.steps="$steps" --train.out_dir="$run" \
  --train.eval_every="$(( steps < 100 ? steps : 100 ))" \
  --checkpoint.record_every="$record_every" --checkpoint.every="$ckpt_every"
echo "(routemoe is $bin: export PATH=\"$root/build/release:\$PATH\" to run the commands above)"
