#!/usr/bin/env bash
# Checkpoints, resume and the routing trace (docs/checkpoint-format.md), end to end through
# `routemoe train` / `routemoe inspect` and the helper tests/ckpt/ckpt_harness.cpp.
#
#   test_checkpoint.sh <case> <mpirun> <routemoe> <ckpt_harness> <data dir> <work dir>
#
# Cases:
#   resume_<router>    2 ranks (ep 2), router topk | similarity | attention | ac (["topk","ac"]
#                      over 2 MoE layers, so ac really routes): run A trains 8 steps with a
#                      checkpoint every 4; run B resumes A's step-4 checkpoint in a new process
#                      and directory and trains to 8. B's final checkpoint (parameters, AdamW
#                      moments, step, routing record) and its metrics lines of steps 5..8 must
#                      equal A's BIT FOR BIT (metrics: the printed text). Validation passes and a
#                      routing record every step run in both, so state leaking through them shows.
#   resume_np1         the same on 1 rank (rank 0 writes the file alone), routers ["topk","ac"].
#   reshard            a checkpoint written by 2 ranks (ep 2) resumes on 1 rank, on 4 ranks
#                      (ep 4) and on 4 ranks (ep 2 x dp 2); each continues the loss trajectory of
#                      the uninterrupted 2-rank run within a tolerance (see below).
#   damaged            truncated files, a missing dataset, another model's checkpoint, a newer
#                      format version, a trace, an empty file, a directory, ...: `routemoe train
#                      --resume` and `routemoe inspect` refuse each with exit code 2 and ONE line
#                      naming the file and the cause.
#   fuzz               up to 200 single-bit flips and 50 truncations of a checkpoint (fixed seed,
#                      interleaved), each loaded in subprocesses (ckpt_harness load, routemoe
#                      inspect --json): refused cleanly, or loaded with values identical to the
#                      original; never a crash. A 60 s budget stops it after at least 40 cases
#                      (busy or sanitizer builds); a quiet release build runs all 250.
#   kill_during_write  SIGKILL while a checkpoint's .tmp is being written; `--resume auto` loads
#                      the newest complete checkpoint, ignores the .tmp files and finishes with
#                      the parameters of an uninterrupted run, bit for bit.
#   trace              2 ranks, routers topk, similarity, attention, ac over 4 MoE layers: trace.h5
#                      (version 2) has one record per expected step, each [P, k] (ac: per-expert
#                      weights [2 token groups, E, d]), equal to the checkpoints' /routing records
#                      (whose per-token ac_scale [P, d] equals the trace's weights expanded).
#   trace_analysis     `routemoe trace` on that real trace: every CSV number equals the metric
#                      recomputed by ckpt_harness check-analysis from the trace's raw datasets (a
#                      control with one rate off by 1/P must fail), the JSON holds the same
#                      numbers, and the run directory gives the same table as its trace.h5.
#   gathered_writer    2 ranks (ep 2): one trained state written by the parallel-HDF5 writer and by
#                      the gathered writer (rank 0 alone, the fallback without parallel HDF5):
#                      identical datasets and attributes (ckpt_harness same-content; a control
#                      with two experts swapped must fail). Skipped (77) without parallel HDF5.
#   doc_snippet        the h5py example of docs/checkpoint-format.md runs on that checkpoint and trace.
#
# Resharding tolerance: every run uses micro-batches of ONE sequence (global batch 4,
# grad_accum = 4 / ranks), so each router sees the same token groups on any layout; what
# changes is only the order of floating-point sums (gradient all-reduces over 1, 2 or 4 ranks,
# expert rows arriving from several ranks). As in tests/mpi/train_equiv.cpp the losses of a step
# then agree to ~1e-7 relative and parameters drift apart at rounding level through Adam's
# division by sqrt(v) (measured there: <= 3e-6 after 10 steps); the bounds are loss 2e-5
# relative and parameters 2e-5 absolute + 2e-4 relative, far below what a wrongly loaded slice
# does: the "control" line of the case resumes a checkpoint with two experts of one layer
# swapped, and its losses move by ~3e-4 relative (15x the bound). expert_load is compared
# exactly on every layout (the loads of steps 5..8 are identical on 1, 2 and 4 ranks); a second
# control moves one token of one step between two experts and must fail, with and without rtol.
#
# Every wait is a poll with a deadline; nothing relies on a fixed sleep.
set -euo pipefail

if [[ $# -ne 6 ]]; then
  echo "usage: $0 <case> <mpirun> <routemoe> <ckpt_harness> <data dir> <work dir>" >&2
  exit 2
fi
case_name=$1
mpirun=$2
bin=$3
harness=$4
data=$5
work=$6

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out="$work/$case_name"
rm -rf "$out"
mkdir -p "$out"

fail() {
  echo "FAIL ($case_name): $*" >&2
  exit 1
}

# cfg [section.key=value ...]: sets the array CFG to the flags of a tiny run (d 32, T 32: fast
# steps on 2 busy cores) with the given keys overridden or added.
cfg() {
  declare -A kv=([model.vocab_size]=256 [model.seq_len]=32 [model.d_model]=32 [model.n_heads]=2
                 [model.n_layers]=2 [model.d_ff]=48 [model.n_experts]=4 [model.top_k]=2
                 [model.routers]=topk,ac [model.z_loss_coef]=0.001 [optim.lr]=3e-3
                 [optim.lr_min]=3e-4 [optim.warmup]=2 [train.batch_size]=4 [train.log_every]=100
                 [train.threads]=1 [train.progress]=false [train.eval_every]=0
                 [train.eval_batches]=2 [checkpoint.probe_tokens]=256 [data.path]="$data")
  local o
  for o in "$@"; do kv[${o%%=*}]=${o#*=}; done
  CFG=()
  for o in "${!kv[@]}"; do CFG+=("--$o=${kv[$o]}"); done
}

# train <np> <log> <args...>: one training run (np 0: without mpirun); its output goes to <log>.
train() {
  local np=$1 log=$2
  shift 2
  local rc=0
  if [[ $np -eq 0 ]]; then
    timeout -k 10 120 "$bin" train "$@" >"$log" 2>&1 || rc=$?
  else
    timeout -k 10 120 "$mpirun" -np "$np" --oversubscribe "$bin" train "$@" >"$log" 2>&1 || rc=$?
  fi
  if [[ $rc -ne 0 ]]; then
    tail -n 20 "$log" >&2
    fail "training run ($np ranks, log $log) exited $rc"
  fi
}

ckpt() { printf '%s/checkpoints/ckpt_%08d.h5' "$1" "$2"; }

# expect_refusal <label> <pattern> <command...>: the command must exit 2 (bad input) with exactly one line on
# stderr that names $file (set by the caller) and matches the extended regex <pattern>.
expect_refusal() {
  local label=$1 pattern=$2
  shift 2
  local rc=0
  timeout -k 5 60 "$@" >"$out/stdout.txt" 2>"$out/stderr.txt" || rc=$?
  local lines
  lines=$(wc -l <"$out/stderr.txt")
  local msg
  msg=$(head -n 1 "$out/stderr.txt")
  [[ $rc -eq 2 ]] || fail "$label: exit code $rc (expected 2); stderr: $(cat "$out/stderr.txt")"
  [[ $lines -eq 1 ]] || fail "$label: $lines stderr lines (expected 1): $(cat "$out/stderr.txt")"
  [[ $msg == *"$file"* ]] || fail "$label: the message does not name $file: $msg"
  grep -Eq -- "$pattern" <<<"$msg" || fail "$label: the message does not match /$pattern/: $msg"
  echo "ok $label: $msg"
}

# move_token <in.jsonl> <out.jsonl> <step>: a copy of a metrics file in which one token of MoE
# layer 0 at <step> moved from expert 0 to expert 1 (or back when expert 0 has none).
move_token() {
  awk -v step="$3" '
    index($0, "{\"step\": " step ",") == 1 && match($0, /"expert_load": \[\[[0-9]+, [0-9]+/) {
      head = substr($0, 1, RSTART - 1)
      tail = substr($0, RSTART + RLENGTH)
      split(substr($0, RSTART + 17, RLENGTH - 17), n, ", ")
      if (n[1] > 0) { n[1]--; n[2]++ } else { n[1]++; n[2]-- }
      $0 = head "\"expert_load\": [[" n[1] ", " n[2] tail
    }
    { print }' "$1" >"$2"
}

# resume_case <np> <section.key=value...>
resume_case() {
  local np=$1
  shift
  cfg train.grad_accum=$((4 / (np > 0 ? np : 1))) train.steps=8 checkpoint.every=4 \
    checkpoint.keep_last=5 checkpoint.record_every=1 train.eval_every=3 "$@"
  local args=("${CFG[@]}")
  train "$np" "$out/A.log" "${args[@]}" --train.out_dir="$out/A"
  train "$np" "$out/B.log" "${args[@]}" --train.out_dir="$out/B" --train.resume="$(ckpt "$out/A" 4)"
  grep -q "resumed from $(ckpt "$out/A" 4) at step 4" "$out/B.log" || fail "B did not report the resume"
  "$harness" compare "$(ckpt "$out/A" 8)" "$(ckpt "$out/B" 8)" --routing || fail "final checkpoints differ"
  "$harness" compare-metrics "$out/A/metrics.jsonl" "$out/B/metrics.jsonl" --from 5 --to 9 ||
    fail "losses of steps 5..8 differ"
  # Validation losses after the resume (after steps 6 and 8: eval_every 3, and the end) as
  # printed.
  diff <(grep val_loss "$out/A/metrics.jsonl" | tail -n 2) <(grep val_loss "$out/B/metrics.jsonl") ||
    fail "validation losses differ"
  [[ $(grep -c '"loss"' "$out/B/metrics.jsonl") -eq 4 ]] || fail "B did not train exactly steps 5..8"
  echo "ok ($case_name): resumed run is bit-identical to the uninterrupted one"
}

case $case_name in
  resume_topk | resume_similarity | resume_attention | resume_ac)
    router=${case_name#resume_}
    [[ $router == ac ]] && router=topk,ac
    resume_case 2 model.routers="$router" parallel.ep_size=2
    ;;

  resume_np1)
    resume_case 0 model.routers=topk,ac
    ;;

  reshard)
    reshard() {  # reshard <ep> <grad_accum>: sets CFG
      cfg train.steps=8 checkpoint.every=4 checkpoint.keep_last=5 parallel.ep_size="$1" train.grad_accum="$2"
    }
    reshard 2 2
    train 2 "$out/R2.log" "${CFG[@]}" --train.out_dir="$out/R2"
    from=$(ckpt "$out/R2" 4)
    "$bin" inspect "$from" >"$out/inspect.txt" || fail "inspect of the 2-rank checkpoint failed"
    grep -q "written by 2 rank(s), expert-parallel size 2" "$out/inspect.txt" || fail "inspect: layout"
    for layout in "0 1 4" "4 4 1" "4 2 1"; do
      read -r np ep ga <<<"$layout"
      name="np$((np > 0 ? np : 1))_ep${ep}"
      reshard "$ep" "$ga"
      train "$np" "$out/$name.log" "${CFG[@]}" --train.out_dir="$out/$name" --train.resume="$from"
      "$harness" compare-metrics "$out/R2/metrics.jsonl" "$out/$name/metrics.jsonl" --from 5 --to 9 --rtol 2e-5 ||
        fail "$name: loss trajectory differs from the 2-rank run"
      "$harness" compare "$(ckpt "$out/R2" 8)" "$(ckpt "$out/$name" 8)" --atol 2e-5 --rtol 2e-4 ||
        fail "$name: final parameters differ from the 2-rank run"
    done
    # Control: the same checkpoint with two experts of one layer swapped (what a wrong slice
    # offset would load) must NOT pass these tolerances.
    "$harness" mutate "$from" "$out/swapped.h5" --swap-experts blocks.1.moe.experts.fc.weight
    reshard 4 1
    train 4 "$out/control.log" "${CFG[@]}" --train.out_dir="$out/control" --train.resume="$out/swapped.h5"
    if "$harness" compare-metrics "$out/R2/metrics.jsonl" "$out/control/metrics.jsonl" --from 5 --to 9 \
      --rtol 2e-5 >"$out/control.txt"; then
      fail "control: a checkpoint with two experts swapped passed the tolerance"
    fi
    echo "control (experts 0 and 3 of one layer swapped): $(tail -n 1 "$out/control.txt")"
    # Control: expert_load is compared exactly, with and without --rtol. One token of step 5
    # moved between two experts of MoE layer 0 (the total unchanged) must fail both ways.
    move_token "$out/np4_ep4/metrics.jsonl" "$out/moved_rtol.jsonl" 5
    move_token "$out/R2/metrics.jsonl" "$out/moved_exact.jsonl" 5
    ! cmp -s "$out/R2/metrics.jsonl" "$out/moved_exact.jsonl" || fail "move_token changed nothing"
    for mode in rtol exact; do
      flags=()
      [[ $mode == rtol ]] && flags=(--rtol 2e-5)
      if "$harness" compare-metrics "$out/R2/metrics.jsonl" "$out/moved_$mode.jsonl" --from 5 --to 9 \
        "${flags[@]}" >"$out/moved_$mode.txt"; then
        fail "control: a changed expert_load passed compare-metrics ($mode)"
      fi
      grep -q "step 5 expert_load (layer 0 expert" "$out/moved_$mode.txt" ||
        fail "control ($mode): compare-metrics failed without naming the changed load: $(cat "$out/moved_$mode.txt")"
      echo "control (one token of step 5 moved, $mode): $(head -n 1 "$out/moved_$mode.txt")"
    done
    echo "ok ($case_name): 2-rank checkpoint continued on 1 rank, 4 ranks ep 4 and 4 ranks ep 2 x dp 2"
    ;;

  damaged)
    cfg train.steps=2 checkpoint.every=2
    train 0 "$out/G.log" "${CFG[@]}" --train.out_dir="$out/G"
    cfg train.steps=2 checkpoint.every=2 model.d_model=48
    train 0 "$out/S.log" "${CFG[@]}" --train.out_dir="$out/S"
    cfg train.steps=4
    resume_cfg=("${CFG[@]}")
    good=$(ckpt "$out/G" 2)
    size=$(stat -c %s "$good")
    "$bin" inspect "$good" >"$out/inspect_good.txt" || fail "inspect of the good checkpoint failed"
    n=0
    # check <label> <resume pattern> <inspect pattern or "ok"> : for $file.
    check() {
      local label=$1 tpat=$2 ipat=$3
      n=$((n + 1))
      expect_refusal "$label (train --resume)" "$tpat" \
        "$bin" train "${resume_cfg[@]}" --train.out_dir="$out/try$n" --train.resume="$file"
      if [[ $ipat == ok ]]; then
        "$bin" inspect "$file" >/dev/null || fail "$label: inspect refused a valid file"
        echo "ok $label (inspect): a valid file of its own kind"
      else
        expect_refusal "$label (inspect)" "$ipat" "$bin" inspect "$file"
      fi
    }
    d="$out/files"
    mkdir -p "$d"
    for cut in $((size / 2)) $((size - 1)) 4096 512 8; do
      file="$d/truncated_$cut.h5"
      head -c "$cut" "$good" >"$file"
      why="truncated file: eof = $cut"
      [[ $cut -ge 512 ]] || why=".+"  # a cut inside the superblock: another reason
      check "truncated to $cut bytes" "not a readable HDF5 file" "not a readable HDF5 file \($why"
    done
    file="$d/missing_wte.h5"
    "$harness" mutate "$good" "$file" --delete /params/wte
    check "missing dataset params/wte" "missing dataset params/wte" "missing dataset params/wte"
    file="$d/missing_expert_moment.h5"
    "$harness" mutate "$good" "$file" --delete /optim/v/blocks.1.moe.experts.fc.weight
    check "missing dataset optim/v/...experts.fc.weight" "missing dataset optim/v/blocks.1.moe.experts.fc.weight" \
      "missing dataset optim/v/blocks.1.moe.experts.fc.weight"
    file="$d/missing_optim.h5"
    "$harness" mutate "$good" "$file" --delete /optim
    check "missing group optim" "missing dataset optim/m/" "missing dataset optim/m/"
    file=$(ckpt "$out/S" 2)
    check "checkpoint of a model with d_model 48" "different model shape" ok
    file="$d/other_routers.h5"
    "$harness" mutate "$good" "$file" --set-string / routers similarity,ac
    check "written for other routers" "written for routers similarity,ac" "written for routers similarity,ac"
    file="$d/newer_version.h5"
    "$harness" mutate "$good" "$file" --set-int / format_version 2
    check "format version 2" "version 2 is not supported" "version 2 is not supported"
    file="$d/negative_step.h5"
    "$harness" mutate "$good" "$file" --set-int / step -5
    check "negative step" "negative step" "negative step"
    file="$d/other_format.h5"
    "$harness" mutate "$good" "$file" --set-string / format something-else
    check "format attribute 'something-else'" "not a routemoe checkpoint" "not a routemoe checkpoint or trace"
    file="$out/G/trace.h5"
    check "a trace file passed as checkpoint" "not a routemoe checkpoint" ok
    "$bin" inspect "$file" | grep -q "routemoe trace" || fail "inspect did not recognise the trace"
    file="$d/empty.h5"
    : >"$file"
    check "empty file" "not a readable HDF5 file|empty" "empty file"
    file="$d/text.h5"
    echo "this is not HDF5" >"$file"
    check "a text file" "not a readable HDF5 file" "not a readable HDF5 file \(file signature not found\)"
    file="$d/a_directory.h5"
    mkdir -p "$file"
    check "a directory" "no such checkpoint file|directory|not a regular file" "is a directory"
    file="$d/does_not_exist.h5"
    check "a nonexistent path" "no such checkpoint file" "no such file"
    # A checkpoint with another data seed: the data order would change.
    file=$good
    expect_refusal "train.seed 2 against a seed-1 checkpoint" "train.seed" \
      "$bin" train "${resume_cfg[@]}" --train.seed=2 --train.out_dir="$out/try_seed" --train.resume="$file"
    # --resume auto in a run without checkpoints.
    mkdir -p "$out/nockpt/checkpoints"
    file="$out/nockpt/checkpoints"
    expect_refusal "--resume auto without a checkpoint" "no checkpoint in" \
      "$bin" train "${resume_cfg[@]}" --train.out_dir="$out/nockpt" --resume auto
    # Nothing of the good run was touched by all this.
    "$bin" inspect "$good" | cmp -s - "$out/inspect_good.txt" || fail "the good checkpoint changed"
    echo "ok ($case_name): every damaged input refused with one line naming the file"
    ;;

  fuzz)
    cfg train.steps=2 checkpoint.every=2
    train 0 "$out/G.log" "${CFG[@]}" --train.out_dir="$out/G"
    "$harness" fuzz --ckpt "$(ckpt "$out/G" 2)" --config "$out/G/config.toml" --routemoe "$bin" \
      --work "$out/fuzz" --flips 200 --truncations 50 --seed 20261123 --seconds 60 --min-cases 40 ||
      fail "see the FAIL lines above"
    ;;

  kill_during_write)
    # Larger experts (25 MB checkpoints) so that a write takes long enough to be caught.
    cfg model.d_model=128 model.d_ff=512 model.n_experts=8 train.steps=16 checkpoint.every=2 \
      checkpoint.keep_last=2
    big=("${CFG[@]}")
    attempt=0
    while :; do
      attempt=$((attempt + 1))
      [[ $attempt -le 5 ]] || fail "could not SIGKILL the run during a checkpoint write in 5 attempts"
      K="$out/K"
      rm -rf "$K"
      "$bin" train "${big[@]}" --train.out_dir="$K" >"$out/K.log" 2>&1 &
      pid=$!
      deadline=$((SECONDS + 90))
      killed=0
      while kill -0 "$pid" 2>/dev/null && [[ $SECONDS -lt $deadline ]]; do
        # A complete checkpoint exists and the next one is being written.
        if compgen -G "$K/checkpoints/ckpt_*.h5" >/dev/null && compgen -G "$K/checkpoints/ckpt_*.h5.tmp" >/dev/null; then
          kill -KILL "$pid"
          killed=1
          break
        fi
        sleep 0.002
      done
      wait "$pid" 2>/dev/null || true
      [[ $SECONDS -lt $deadline ]] || fail "no checkpoint write seen within 90 s"
      tmp=$(compgen -G "$K/checkpoints/ckpt_*.h5.tmp" | head -n 1 || true)
      if [[ $killed -eq 1 && -n $tmp ]]; then
        break
      fi
      echo "attempt $attempt: the write finished before the kill; again"
    done
    newest=$(compgen -G "$K/checkpoints/ckpt_*.h5" | sort | tail -n 1)
    echo "killed during the write of $(basename "$tmp") ($(stat -c %s "$tmp") bytes so far); newest complete: $(basename "$newest")"
    "$bin" inspect "$newest" >/dev/null || fail "the newest complete checkpoint $newest does not load"
    # The partial file: refused cleanly or (killed between close and rename) complete; never a crash.
    rc=0
    "$bin" inspect "$tmp" >/dev/null 2>"$out/tmp_inspect.txt" || rc=$?
    [[ $rc -eq 0 || $rc -eq 2 ]] || fail "inspect of the partial file $tmp ended with $rc"
    echo "inspect of the partial file: exit $rc $(cat "$out/tmp_inspect.txt")"
    # A leftover .tmp of a later step must be ignored by --resume auto as well.
    cp "$tmp" "$K/checkpoints/ckpt_00000099.h5.tmp"
    step=$(basename "$newest" .h5)
    step=$((10#${step#ckpt_}))
    train 0 "$out/K2.log" "${big[@]}" --train.out_dir="$K" --resume auto
    grep -q "resumed from $newest at step $step" "$out/K2.log" || fail "did not resume from $newest: $(head -n 3 "$out/K2.log")"
    # The uninterrupted run, for comparison: bit-identical final state and losses.
    train 0 "$out/U.log" "${big[@]}" --train.out_dir="$out/U"
    "$harness" compare "$(ckpt "$out/U" 16)" "$(ckpt "$K" 16)" --routing || fail "resumed run differs"
    "$harness" compare-metrics "$out/U/metrics.jsonl" "$K/metrics.jsonl" --from 1 --to 17 || fail "losses differ"
    [[ -e $K/checkpoints/ckpt_00000099.h5.tmp ]] || fail "the leftover .tmp was touched"
    # On resume the records and metrics lines the killed run wrote after its last complete
    # checkpoint are dropped: the trace and the losses equal the uninterrupted run's.
    steps_of() { "$bin" inspect "$1" | awk '$1 ~ /^[0-9]+$/ && NF >= 4 {print $2, $4}'; }
    [[ "$(steps_of "$K/trace.h5")" == "$(steps_of "$out/U/trace.h5")" ]] ||
      fail "trace records differ from the uninterrupted run: $(steps_of "$K/trace.h5" | tr '\n' ' ')"
    [[ "$(grep -o '^{"step": [0-9]*' "$K/metrics.jsonl")" == "$(grep -o '^{"step": [0-9]*' "$out/U/metrics.jsonl")" ]] ||
      fail "metrics.jsonl steps differ from the uninterrupted run (duplicated steps after the resume?)"
    echo "ok ($case_name): killed at step ~$step, resumed from $(basename "$newest"), bit-identical to the uninterrupted run"
    ;;

  trace)
    T="$work/trace_run"  # kept for trace_analysis
    rm -rf "$T"
    cfg model.n_layers=4 model.routers=topk,similarity,attention,ac parallel.ep_size=2 \
      train.steps=7 checkpoint.every=3 checkpoint.keep_last=5 checkpoint.record_every=2
    train 2 "$out/T.log" "${CFG[@]}" --train.out_dir="$T"
    # Records at step 0 (initial, before the first update) and after steps s = 1..7 where
    # s % 3 == 0 (checkpoint), s % 2 == 0 (record_every) or s == 7 (final); the run is far shorter
    # than an epoch (checked below).
    grep -q '"epoch": 0' "$T/metrics.jsonl" && ! grep -q '"epoch": [1-9]' "$T/metrics.jsonl" ||
      fail "the run crossed an epoch end; the expected record count would be off"
    expect=1
    for s in 1 2 3 4 5 6 7; do
      if ((s % 3 == 0 || s % 2 == 0 || s == 7)); then expect=$((expect + 1)); fi
    done
    # One token group although 2 ranks ran: probe routing takes the AC statistics over the whole
    # probe set (docs/architecture.md).
    "$harness" check-trace "$T/trace.h5" --records "$expect" --routers topk,similarity,attention,ac \
      --P 256 --k 2 --d 32 --groups 1 --ckpt-dir "$T/checkpoints" || fail "trace check"
    "$bin" inspect "$T/trace.h5" >"$out/inspect_trace.txt" || fail "inspect trace"
    grep -q "$expect routing records" "$out/inspect_trace.txt" || fail "inspect trace: record count"
    "$bin" inspect --json "$(ckpt "$T" 6)" >"$out/inspect_ckpt.json" || fail "inspect checkpoint"
    grep -q '"ac_scale": \[256, 32\]' "$out/inspect_ckpt.json" || fail "inspect: ac_scale [P, d]"
    "$bin" inspect --json "$T/trace.h5" >"$out/inspect_trace.json" || fail "inspect trace --json"
    grep -q '"ac_weights": \[1, 4, 32\]' "$out/inspect_trace.json" || fail "inspect: ac_weights [G, E, d]"
    cat "$out/inspect_trace.txt"
    echo "ok ($case_name): $expect records of shape [256, 2]; checkpoints ac_scale [256, 32], the trace ac_weights [1 group, 4, 32] (equal once expanded)"
    ;;

  trace_analysis)
    T="$work/trace_run"
    [[ -f $T/trace.h5 ]] || fail "no trace from the ckpt_trace test in $T"
    "$bin" trace --help >/dev/null || fail "routemoe trace --help failed"
    "$bin" trace "$T/trace.h5" --csv "$out/csv" --json "$out/metrics.json" >"$out/table.txt" ||
      fail "routemoe trace exited non-zero"
    for f in flips load last_change agreement; do
      [[ -s $out/csv/$f.csv ]] || fail "no $f.csv written"
    done
    [[ -s $out/metrics.json ]] || fail "no JSON written"
    # The numbers: every CSV row against the metrics recomputed by the harness from the trace's
    # raw datasets (its own code, not the analysis library).
    label=$(basename "$T")
    "$harness" check-analysis "$T/trace.h5" --csv "$out/csv" --label "$label" ||
      fail "the CSV numbers differ from the ones recomputed from the trace"
    # Control: one flip rate changed by one token in 256 must be caught.
    cp -r "$out/csv" "$out/csv_control"
    awk -F, -v OFS=, 'NR == 2 { $7 = $7 + 1 / 256 } { print }' "$out/csv/flips.csv" >"$out/csv_control/flips.csv"
    if "$harness" check-analysis "$T/trace.h5" --csv "$out/csv_control" --label "$label" >"$out/control.txt"; then
      fail "control: a flip rate off by one token passed check-analysis"
    fi
    echo "control (a flip rate off by 1/256): $(tail -n 1 "$out/control.txt")"
    # The JSON carries the same numbers as the CSV files (and the run's facts).
    /usr/bin/python3 - "$out/metrics.json" "$out/csv" "$label" <<'PY' || fail "the JSON disagrees with the CSV files"
import csv, json, sys
doc = json.load(open(sys.argv[1]))
assert doc["format"] == "routemoe-trace-analysis", doc["format"]
(run,) = doc["runs"]
assert run["label"] == sys.argv[3] and run["n_moe_layers"] == 4 and run["top_k"] == 2, run["label"]
assert run["routers"] == ["topk", "similarity", "attention", "ac"], run["routers"]
rows = lambda name: list(csv.DictReader(open(f"{sys.argv[2]}/{name}.csv")))
flips = rows("flips")
assert len(flips) == len(run["flips"]) > 0
for c, j in zip(flips, run["flips"]):
    assert (int(c["layer"]), int(c["from_step"]), int(c["to_step"])) == (j["layer"], j["from_step"], j["to_step"]), (c, j)
    assert float(c["top1_flip_rate"]) == j["top1_flip_rate"] and float(c["topk_change_rate"]) == j["topk_change_rate"], (c, j)
load = rows("load")
assert len(load) == sum(len(l["counts"]) for l in run["load"])
for c in load:
    l = run["load"][int(c["layer"])]
    assert int(c["tokens"]) == l["counts"][int(c["expert"])] and float(c["entropy_nats"]) == l["entropy"], (c, l)
    assert sum(l["counts"]) == run["n_probe"], l
agreement = rows("agreement")
assert len(agreement) == len(run["agreement"]) == 3
for c, j in zip(agreement, run["agreement"]):
    assert float(c["agreement_last"]) == j["last"] and float(c["agreement_mean"]) == j["mean"], (c, j)
bins = rows("last_change")
assert len(bins) == sum(len(l["bins"]) for l in run["last_change"])
for c in bins:
    (b,) = [b for b in run["last_change"][int(c["layer"])]["bins"] if b["epoch"] == int(c["epoch"])]
    assert int(c["tokens"]) == b["tokens"], (c, b)
print(f"json: {len(flips)} flips, {len(load)} load, {len(bins)} last-change, {len(agreement)} agreement rows agree with the CSV files")
PY
    # The run directory reads as the same run (the table names the same file and run).
    "$bin" trace "$T" >"$out/table_dir.txt" || fail "routemoe trace on the run directory failed"
    diff "$out/table.txt" "$out/table_dir.txt" || fail "the run directory's table differs from its trace.h5's"
    cat "$out/table.txt"
    echo "ok ($case_name): routemoe trace on a real trace: every CSV number recomputed from the trace, JSON equal to the CSV"
    ;;

  gathered_writer)
    # The gathered writer (builds without parallel HDF5) against the parallel one on 2 ranks with
    # ep 2: the same state written both ways must give the same file content, so every expert
    # slice the gather collects lands in the right rows.
    cfg train.steps=2 checkpoint.every=2 parallel.ep_size=2 train.grad_accum=2
    train 2 "$out/W.log" "${CFG[@]}" --train.out_dir="$out/W"
    from=$(ckpt "$out/W" 2)
    rc=0
    timeout -k 10 120 "$mpirun" -np 2 --oversubscribe "$harness" write-both --config "$out/W/config.toml" \
      --from "$from" --parallel "$out/parallel.h5" --gathered "$out/gathered.h5" >"$out/both.log" 2>&1 || rc=$?
    cat "$out/both.log"
    [[ $rc -ne 77 ]] || { echo "SKIP: no parallel HDF5 in this build"; exit 77; }
    [[ $rc -eq 0 ]] || fail "write-both exited $rc"
    "$harness" same-content "$out/parallel.h5" "$out/gathered.h5" ||
      fail "the gathered writer's file differs from the parallel writer's"
    # Both equal the trainer's own checkpoint of that state (the load/save round trip is exact).
    "$harness" same-content "$from" "$out/gathered.h5" || fail "the gathered file differs from $from"
    # Control: the same file with two expert slices swapped (what a wrong gather offset writes)
    # must not pass.
    "$harness" mutate "$out/gathered.h5" "$out/swapped.h5" --swap-experts blocks.1.moe.experts.fc.weight
    if "$harness" same-content "$out/parallel.h5" "$out/swapped.h5" >"$out/control.txt"; then
      fail "control: a file with two experts swapped passed same-content"
    fi
    echo "control (experts 0 and 3 of one tensor swapped): $(tail -n 1 "$out/control.txt")"
    echo "ok ($case_name): gathered and parallel HDF5 writers give identical checkpoints on 2 ranks, ep 2"
    ;;

  doc_snippet)
    # The h5py example of docs/checkpoint-format.md ("Reading records with h5py"), run as written
    # on the checkpoint and trace of the ckpt_trace test. Skipped (77) without python3-h5py.
    T="$work/trace_run"
    [[ -f $T/trace.h5 ]] || fail "no trace from the ckpt_trace test in $T"
    doc="$(dirname "$0")/../../docs/checkpoint-format.md"
    /usr/bin/python3 -c "import h5py, numpy" 2>/dev/null || { echo "SKIP: no h5py for /usr/bin/python3"; exit 77; }
    awk '/^## Reading records with h5py/ { on = 1 } on && /^```$/ { exit } on && code { print }
         on && /^```python/ { code = 1 }' "$doc" >"$out/snippet.py"
    [[ -s $out/snippet.py ]] || fail "no python block under 'Reading records with h5py' in $doc"
    /usr/bin/python3 "$out/snippet.py" "$(ckpt "$T" 6)" "$T/trace.h5" >"$out/snippet.txt" ||
      fail "the documented snippet failed"
    cat "$out/snippet.txt"
    grep -q "layer3 ac: experts (256, 2)" "$out/snippet.txt" || fail "snippet output: layer3"
    # 6 records (step 0, then 2, 3, 4, 6, 7): 5 intervals.
    [[ $(grep -c "top-1 flip rate" "$out/snippet.txt") -eq 5 ]] || fail "snippet output: 5 intervals expected"
    echo "ok ($case_name): the documented h5py snippet reads the real files"
    ;;

  *)
    echo "unknown case $case_name" >&2
    exit 2
    ;;
esac
