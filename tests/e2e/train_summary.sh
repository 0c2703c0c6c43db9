#!/usr/bin/env bash
# What `routemoe train` prints at the end (docs/analysis.md, "After a run"), on a tiny 1-rank run
# with routers topk, similarity, ac, a record every 2 steps and a checkpoint at the end:
#   - one expert-load line per MoE layer naming its router; every expert printed below 10% of the
#     uniform share (2.5% with 4 experts) is named in a "collapsing" remark on its line, and no
#     other line has the remark; a second run made to collapse (8 experts, top-1, no balancing
#     loss) has such remarks;
#   - the `routemoe trace` table of the run (the same text as `routemoe trace RUN` prints);
#   - the plots, listed and written: plots/{fluctuation,entropy,load,loss}.svg, plots/report.html;
#   - the next commands, and they work as printed: the resume (with `routemoe` on PATH) continues
#     from the last checkpoint, `routemoe inspect` reads the checkpoint.
#
# usage: train_summary.sh <routemoe> <data dir> <work dir>
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: $0 <routemoe> <data dir> <work dir>" >&2
  exit 2
fi
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
data=$2
out=$3/train_summary
rm -rf "$out"
mkdir -p "$out"
cd "$out"
fail() {
  echo "FAIL (train_summary): $*" >&2
  exit 1
}

args=(--model.vocab_size=256 --model.seq_len=32 --model.d_model=32 --model.n_heads=2
  --model.n_layers=3 --model.d_ff=48 --model.n_experts=4 --model.top_k=2
  --model.routers=topk,similarity,ac --optim.warmup=2 --train.batch_size=4 --train.steps=6
  --train.eval_every=0 --train.eval_batches=1 --train.threads=1 --train.progress=false
  --checkpoint.every=6 --checkpoint.record_every=2 --checkpoint.probe_tokens=256
  --data.path="$data")
timeout -k 10 120 "$bin" train "${args[@]}" --train.out_dir=run >console.txt 2>&1 ||
  fail "training exited non-zero: $(tail -n 5 console.txt)"

# check_remarks <file of expert-load lines>: every expert printed below 10% of the uniform share
# (100/E/10 %) is named in its line's "collapsing" remark, and no other expert is.
check_remarks() {
  awk '{
    idle = ""
    s = $0; sub(/^.*\):/, "", s); sub(/<-.*/, "", s)
    k = split(s, f, " ")
    for (i = 1; i <= k; ++i) { v = f[i]; sub(/%/, "", v); if (v + 0 < 10.0 / k) idle = idle (idle == "" ? "" : ", ") (i - 1) }
    want = idle == "" ? "" : (index(idle, ",") ? "experts " : "expert ") idle " (nearly) idle"
    has = match($0, /<- collapsing: .*/) ? substr($0, RSTART + 15) : ""
    if (has != want) { print "line: " $0 "\n  expected remark: [" want "] got: [" has "]"; bad = 1 }
  } END { exit bad }' "$1"
}

# Expert-load lines: router names in order, and the remarks.
grep '^  expert load, MoE layer' console.txt >load.txt || fail "no expert-load lines"
got=$(sed -E 's/^  expert load, MoE layer ([0-9]+) \(([a-z]+)\):.*/\1:\2/' load.txt | tr '\n' ' ')
[[ $got == "0:topk 1:similarity 2:ac " ]] || fail "expert-load lines name '$got'"
check_remarks load.txt || fail "collapsing remarks do not match the shares"
# A run that collapses (no load-balancing loss, 8 experts, top-1, a high learning rate: measured,
# one expert takes 100% of every layer's tokens within 6 steps) must have remarks.
timeout -k 10 120 "$bin" train "${args[@]}" --model.n_experts=8 --model.top_k=1 \
  --model.aux_loss_coef=0 --optim.lr=0.03 --checkpoint.trace=false --checkpoint.every=0 \
  --train.out_dir=collapsed >collapsed.txt 2>&1 || fail "the collapsing run failed: $(tail -n 3 collapsed.txt)"
grep '^  expert load, MoE layer' collapsed.txt >collapsed_load.txt || fail "no expert-load lines (collapsed run)"
check_remarks collapsed_load.txt || fail "collapsing remarks do not match the shares (collapsed run)"
grep -q "<- collapsing: experts" collapsed_load.txt || fail "a collapsed run without remarks: $(cat collapsed_load.txt)"

# The trace table, as `routemoe trace run` prints it.
"$bin" trace run >table.txt 2>/dev/null || fail "routemoe trace run failed"
grep -Fq -f <(head -n 3 table.txt) console.txt || fail "the console lacks the trace table's head"
grep -q "routing fluctuation between consecutive records" console.txt || fail "no flip table"
for f in fluctuation.svg entropy.svg load.svg loss.svg report.html; do
  [[ -s run/plots/$f ]] || fail "run/plots/$f not written"
  grep -qx "  run/plots/$f" console.txt || fail "run/plots/$f not listed"
done

# The next commands, run as printed (routemoe on PATH).
resume=$(grep -E '^  routemoe train --config run/config.toml --resume auto --train.steps=12$' console.txt) ||
  fail "no resume command: $(sed -n '/^next:/,$p' console.txt)"
inspect=$(grep -E '^  routemoe inspect run/checkpoints/ckpt_00000006.h5$' console.txt) ||
  fail "no inspect command for the last checkpoint"
export PATH="$(dirname "$bin"):$PATH"
eval "$inspect" >/dev/null || fail "'$inspect' failed"
eval "timeout -k 10 120 $resume" >resume.txt 2>&1 || fail "'$resume' failed: $(tail -n 3 resume.txt)"
grep -q "resumed from run/checkpoints/ckpt_00000006.h5 at step 6" resume.txt || fail "the resume did not continue at step 6"
echo "ok: expert-load lines name topk, similarity, ac; remarks match; table, plots and next commands work"
