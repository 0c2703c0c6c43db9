#!/usr/bin/env bash
# One step convention in every file of a run: "step" is the number of optimiser steps completed
# (docs/configuration.md, "Run directory"). A tiny run (1 rank, 6 steps, validation every 3,
# routing records every 2, checkpoints every 3) must give
#   metrics.jsonl  training lines with steps 1..6 (one each), validation lines at steps 3 and 6;
#   console        "step N/6" lines whose "val" entries are the metrics' validation steps;
#   trace.h5       records at steps 0 (initial), 2, 3, 4, 6, read with `routemoe inspect`;
#   checkpoints    ckpt_00000003.h5 and ckpt_00000006.h5, each a trace record of reason checkpoint;
#   flips.csv      from_step/to_step pairs of consecutive records (`routemoe trace --csv`).
# Then the join a user makes: every trace record after step 0 matches the metrics line of the
# same step, with the same epoch (the old 0-based metrics had no line of step 6 and logged the
# validation after 3 steps as step 2: this fails on them).
# Resume: with the step-6 checkpoint removed, `--resume auto` continues from step 3; the run
# directory must then hold the same step numbers as the uninterrupted run (the metrics lines of
# step 3, validation included, kept; nothing logged twice).
#
# usage: step_numbers.sh <routemoe> <data dir> <work dir>
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: $0 <routemoe> <data dir> <work dir>" >&2
  exit 2
fi
bin=$1
data=$2
out=$3/step_numbers
rm -rf "$out"
mkdir -p "$out"
fail() {
  echo "FAIL (step_numbers): $*" >&2
  exit 1
}

args=(--model.vocab_size=256 --model.seq_len=32 --model.d_model=32 --model.n_heads=2
  --model.n_layers=2 --model.d_ff=48 --model.n_experts=4 --model.top_k=2
  --model.routers=topk,ac --optim.warmup=2 --train.batch_size=4 --train.steps=6
  --train.eval_every=3 --train.eval_batches=2 --train.log_every=1 --train.threads=1
  --train.progress=false --checkpoint.every=3 --checkpoint.keep_last=5
  --checkpoint.record_every=2 --checkpoint.probe_tokens=256 --data.path="$data")
R=$out/run
timeout -k 10 120 "$bin" train "${args[@]}" --train.out_dir="$R" >"$out/console.txt" 2>&1 ||
  fail "training exited non-zero: $(tail -n 5 "$out/console.txt")"

# "step epoch" of the training lines, "step" of the validation lines.
train_steps() { sed -nE 's/^\{"step": ([0-9]+), "epoch": ([0-9]+), "loss".*/\1 \2/p' "$1"; }
val_steps() { sed -nE 's/^\{"step": ([0-9]+), "val_loss".*/\1/p' "$1"; }
# "step epoch reason" of the trace records, as `routemoe inspect` lists them.
record_steps() { "$bin" inspect "$1" | awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 4 {print $2, $3, $4}'; }

got=$(train_steps "$R/metrics.jsonl" | awk '{print $1}' | tr '\n' ' ')
[[ $got == "1 2 3 4 5 6 " ]] || fail "metrics.jsonl training steps are '$got', expected '1 2 3 4 5 6 '"
got=$(val_steps "$R/metrics.jsonl" | tr '\n' ' ')
[[ $got == "3 6 " ]] || fail "metrics.jsonl validation steps are '$got', expected '3 6 '"
# Console lines start with a UTC time stamp: "14:02:13 step      3/6 | ... | val ...".
got=$(sed -nE 's/^(.* )?step +([0-9]+)\/6 .*\| val .*/\2/p' "$out/console.txt" | tr '\n' ' ')
[[ $got == "3 6 " ]] || fail "the console shows validation at steps '$got', expected '3 6 '"

record_steps "$R/trace.h5" >"$out/records.txt" || fail "inspect of the trace failed"
got=$(awk '{print $1 ":" $3}' "$out/records.txt" | tr '\n' ' ')
[[ $got == "0:initial 2:interval 3:checkpoint 4:interval 6:checkpoint " ]] ||
  fail "trace records are '$got'"
for s in 3 6; do
  ck=$(printf '%s/checkpoints/ckpt_%08d.h5' "$R" "$s")
  [[ -f $ck ]] || fail "no checkpoint $ck: $(ls "$R/checkpoints")"
  "$bin" inspect "$ck" >"$out/inspect.txt" || fail "inspect $ck failed"
  grep -Eq "^  step $s," "$out/inspect.txt" || fail "inspect $ck does not say step $s"
done

# The join on "step": every record after step 0 has the metrics line of its step, same epoch.
join -j 1 <(awk '$1 > 0 {print $1, $2}' "$out/records.txt" | sort -k1,1) \
  <(train_steps "$R/metrics.jsonl" | sort -k1,1) >"$out/joined.txt"
[[ $(wc -l <"$out/joined.txt") -eq $(awk '$1 > 0' "$out/records.txt" | wc -l) ]] ||
  fail "trace records without a metrics line of the same step: $(cat "$out/records.txt" | tr '\n' ';') joined $(tr '\n' ';' <"$out/joined.txt")"
awk '$2 != $3 {exit 1}' "$out/joined.txt" || fail "epochs differ between records and metrics: $(cat "$out/joined.txt")"

"$bin" trace "$R" --csv "$out/csv" >/dev/null 2>&1 || fail "routemoe trace --csv failed"
got=$(awk -F, 'NR > 1 && $2 == 0 {print $3 "-" $4}' "$out/csv/flips.csv" | tr '\n' ' ')
[[ $got == "0-2 2-3 3-4 4-6 " ]] || fail "flips.csv layer 0 step pairs are '$got'"

# Resume from step 3 in the same directory, as after a crash between the two checkpoints.
cp -r "$R" "$out/resumed"
rm "$out/resumed/checkpoints/ckpt_00000006.h5"
timeout -k 10 120 "$bin" train "${args[@]}" --train.out_dir="$out/resumed" --train.resume=auto \
  >"$out/resume.txt" 2>&1 || fail "resume exited non-zero: $(tail -n 5 "$out/resume.txt")"
grep -q "at step 3" "$out/resume.txt" || fail "did not resume at step 3: $(head -n 2 "$out/resume.txt")"
diff <(grep -o '^{"step": [0-9]*, "[a-z_]*' "$R/metrics.jsonl") \
  <(grep -o '^{"step": [0-9]*, "[a-z_]*' "$out/resumed/metrics.jsonl") >"$out/diff.txt" ||
  fail "metrics.jsonl steps after the resume differ from the uninterrupted run: $(tr '\n' ' ' <"$out/diff.txt")"
diff "$out/records.txt" <(record_steps "$out/resumed/trace.h5") >"$out/diff.txt" ||
  fail "trace records after the resume differ: $(tr '\n' ' ' <"$out/diff.txt")"
echo "ok: metrics 1..6 (val 3, 6), records $(awk '{print $1}' "$out/records.txt" | tr '\n' ' ')joined on step with equal epochs; resume from 3 logs the same steps"
