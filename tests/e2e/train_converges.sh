#!/usr/bin/env bash
# Training on real text lowers the validation loss well below the unigram entropy.
#   train_converges.sh ROUTEMOE DATA_DIR RUN_DIR ROUTER
# A 3-layer MoE (all MoE blocks, 4 experts, top-2) trains 150 steps of 16 x 64 bytes of
# Newton's Opticks. A model that learned nothing beyond byte frequencies would sit at the
# unigram entropy (3.16 nats/byte); the bound asks for at least 0.5 nats/byte below it, which
# needs real context modelling (measured: 0.62-0.67 below for the four routers).
set -euo pipefail
bin=$1 data=$2 run=$3 router=$4
rm -rf "$run"
out=$("$bin" train --data.path="$data" --train.out_dir="$run" --train.progress=false \
  --train.threads=1 --model.routers="$router" --model.seq_len=64 --model.d_model=64 \
  --model.n_heads=4 --model.n_layers=3 --model.d_ff=128 --model.n_experts=4 --model.top_k=2 \
  --train.batch_size=16 --train.steps=150 --optim.lr=3e-3 --optim.lr_min=3e-4 --optim.warmup=20 \
  --train.eval_every=150 --train.eval_batches=16 --train.log_every=50)
echo "$out"
val=$(awk '/^  val loss/ {print $3}' <<<"$out")
uni=$(awk '/unigram entropy/ && /^  val loss/ {print $(NF-1)}' <<<"$out")
[[ -n $val && -n $uni ]] || { echo "FAIL: could not read the summary"; exit 1; }
awk -v v="$val" -v u="$uni" 'BEGIN {
  printf "val loss %.4f, unigram entropy %.4f, bound %.4f\n", v, u, u - 0.5
  exit !(v < u - 0.5) }' || { echo "FAIL: validation loss not below the bound"; exit 1; }
[[ -s $run/metrics.jsonl && -s $run/config.toml ]] || { echo "FAIL: run directory incomplete"; exit 1; }
echo "PASS"
