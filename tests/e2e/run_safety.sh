#!/usr/bin/env bash
# Data safety of a run directory (docs/parallelism.md, "Preemption, timeouts and failures";
# docs/checkpoint-format.md, "Run identity").
#
#   run_safety.sh <case> <mpirun> <routemoe> <data dir> <work dir>
#
# Cases:
#   final_checkpoint      train.steps = 5 with checkpoint.every = 2: the final weights are saved
#                         (ckpt_00000005.h5 exists, beside 2 and 4) and load.
#   nonfinite_stop        optim.lr = 1e4 makes the gradient norm NaN at some step while the loss is
#                         still finite (measured: step 5). With train.nonfinite = stop the run
#                         ends with exit 1 and one line "non-finite step N: ..."; checkpoint.every
#                         = 1 and keep_last = 1 leave exactly ckpt_<N-1>, which loads (no NaN
#                         reached the weights or a checkpoint) and metrics.jsonl has N-1 steps.
#   nonfinite_keep_last   the same run with the default settings (train.nonfinite = skip): whether
#                         it completes or stops after too many skipped steps, every checkpoint
#                         left loads: a NaN model never replaced the last good checkpoint.
#   nonfinite_skip_np2    the run of nonfinite_stop on 2 ranks with train.nonfinite = skip and nonfinite_limit = 3:
#                         the non-finite steps are logged with "skipped": true and null values;
#                         the run stops with "non-finite steps in a row" after 4 of them, or
#                         completes; every checkpoint left loads.
#   foreign_checkpoints   runs A and C share checkpoint.dir S, with a stray garbage file
#                         ckpt_99999999.h5 in it: run B, which could overwrite A's ckpt_4, is
#                         refused at the start naming that file and A's run id; C (steps 1..2,
#                         keep_last 1) prunes only its own files; A resumes (--resume auto) from
#                         its own ckpt_4, not from the stray file nor from C's; resuming A's
#                         directory from C's checkpoint by path is refused naming C's run.
#   lock                  while a run trains in D, a second `routemoe train --resume auto` in D
#                         fails within 30 s with one line naming the holder's pid; after the first
#                         run stopped (SIGTERM: checkpoint, exit 75) the lock is free again.
#   resume_trace_change   resuming with another model.top_k, or another checkpoint.probe_tokens, is
#                         refused with one line naming trace.h5 and the setting, before anything is
#                         written (metrics.jsonl, trace.h5 and config.toml unchanged).
#
# Every wait is a poll for a condition with a deadline; nothing relies on a fixed sleep.
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 <case> <mpirun> <routemoe> <data dir> <work dir>" >&2
  exit 2
fi
case_name=$1
mpirun=$2
bin=$3
data=$4
work=$5

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out="$work/$case_name"
rm -rf "$out"
mkdir -p "$out"
log="$out/run.log"

tiny=(--model.d_model=32 --model.n_heads=2 --model.seq_len=32 --model.n_layers=2
      --model.d_ff=64 --model.n_experts=4 --model.top_k=2 --train.batch_size=4
      --train.log_every=1 --train.threads=1 --train.progress=false --checkpoint.probe_tokens=256
      --train.eval_every=0 --data.path="$data")

fail() {
  echo "FAIL ($case_name): $*" >&2
  if [[ -f $log ]]; then
    echo "---- output ($log) ----" >&2
    tail -n 30 "$log" >&2
  fi
  exit 1
}

job_pid=""
cleanup() {
  if [[ -n $job_pid ]] && kill -0 "$job_pid" 2>/dev/null; then kill -KILL "$job_pid" || true; fi
}
trap cleanup EXIT

# train <np> <expected exit> <args...>: one run (np 0: without mpirun), output in $log.
train() {
  local np=$1 want=$2
  shift 2
  local rc=0
  if [[ $np -eq 0 ]]; then
    timeout -k 10 120 "$bin" train "${tiny[@]}" "$@" >"$log" 2>&1 || rc=$?
  else
    timeout -k 10 120 "$mpirun" --oversubscribe -np "$np" "$bin" train "${tiny[@]}" "$@" \
      >"$log" 2>&1 || rc=$?
  fi
  [[ $rc -eq $want ]] || fail "routemoe train $* exited $rc, expected $want"
}

# one_error_line <pattern>: the run printed exactly one "routemoe: ..." error line (per rank that
# raised it: rank 0's is checked), matching the extended regex.
one_error_line() {
  local line
  line=$(grep -E "^routemoe: [a-z]+ error on rank 0" "$log" | head -n 1) || fail "no error line"
  [[ $line =~ $1 ]] || fail "the error does not match /$1/: $line"
  ERROR_LINE=$line
}

ckpt() { printf '%s/ckpt_%08d.h5' "$1" "$2"; }
loads() { "$bin" inspect "$1" >/dev/null 2>"$out/inspect.err"; }
steps_logged() { grep -c '"loss"' "$1/metrics.jsonl" || true; }
run_id() { cat "$1/run_id"; }

case $case_name in
  final_checkpoint)
    train 0 0 --train.steps=5 --checkpoint.every=2 --train.out_dir="$out/R"
    for s in 2 4 5; do
      [[ -f $(ckpt "$out/R/checkpoints" $s) ]] || fail "no checkpoint of step $s: $(ls "$out/R/checkpoints")"
    done
    loads "$(ckpt "$out/R/checkpoints" 5)" || fail "the final checkpoint does not load: $(cat "$out/inspect.err")"
    echo "ok ($case_name): $(ls "$out/R/checkpoints" | tr '\n' ' ')"
    ;;

  nonfinite_stop)
    train 0 1 --train.steps=12 --checkpoint.every=1 --checkpoint.keep_last=1 --optim.lr=1e4 \
      --optim.lr_min=0 --optim.warmup=0 --train.nonfinite=stop --train.out_dir="$out/R"
    one_error_line "non-finite step [0-9]+: .*train.nonfinite = stop"
    n=$(sed -E 's/.*non-finite step ([0-9]+):.*/\1/' <<<"$ERROR_LINE")
    left=$(ls "$out/R/checkpoints")
    [[ $left == "$(basename "$(ckpt . $((n - 1)))")" ]] ||
      fail "expected only the checkpoint of step $((n - 1)) (the last finite one), found: $left"
    loads "$(ckpt "$out/R/checkpoints" $((n - 1)))" || fail "it does not load: $(cat "$out/inspect.err")"
    [[ $(steps_logged "$out/R") -eq $((n - 1)) ]] || fail "metrics.jsonl should have $((n - 1)) steps"
    ! grep -q '"skipped": true' "$out/R/metrics.jsonl" || fail "a skipped step was logged"
    echo "ok ($case_name): stopped at step $n; $left intact; $ERROR_LINE"
    ;;

  nonfinite_keep_last)
    rc=0
    timeout -k 10 120 "$bin" train "${tiny[@]}" --train.steps=12 --checkpoint.every=1 \
      --checkpoint.keep_last=1 --optim.lr=1e4 --optim.lr_min=0 --optim.warmup=0 \
      --train.out_dir="$out/R" >"$log" 2>&1 || rc=$?
    [[ $rc -le 1 ]] || fail "exit status $rc"
    left=$(compgen -G "$out/R/checkpoints/ckpt_*.h5") || fail "no checkpoint left"
    for c in $left; do
      loads "$c" || fail "$c does not load: $(cat "$out/inspect.err")"
    done
    echo "ok ($case_name): exit $rc; $(basename "$left") loads"
    ;;

  nonfinite_skip_np2)
    rc=0
    timeout -k 10 120 "$mpirun" --oversubscribe -np 2 "$bin" train "${tiny[@]}" \
      --parallel.ep_size=2 --train.steps=12 --checkpoint.every=1 --checkpoint.keep_last=2 \
      --optim.lr=1e4 --optim.lr_min=0 --optim.warmup=0 --train.nonfinite=skip \
      --train.nonfinite_limit=3 --train.out_dir="$out/R" >"$log" 2>&1 || rc=$?
    skipped=$(grep -c '"skipped": true' "$out/R/metrics.jsonl" || true)
    [[ $skipped -ge 1 ]] || fail "no step was skipped (lr 1e4 should make one non-finite)"
    python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$out/R/metrics.jsonl" ||
      fail "metrics.jsonl is not valid JSON lines"
    if [[ $rc -ne 0 ]]; then
      one_error_line "4 non-finite steps in a row, the last step [0-9]+: .*train.nonfinite_limit = 3"
      [[ $skipped -eq 3 ]] || fail "expected 3 logged skips before the stop, found $skipped"
    fi
    for c in "$out"/R/checkpoints/ckpt_*.h5; do
      loads "$c" || fail "$c does not load: $(cat "$out/inspect.err")"
    done
    echo "ok ($case_name): exit $rc, $skipped step(s) skipped; checkpoints load: $(ls "$out/R/checkpoints" | tr '\n' ' ')"
    ;;

  foreign_checkpoints)
    S=$out/shared
    train 0 0 --train.steps=4 --checkpoint.every=2 --checkpoint.keep_last=1 --checkpoint.dir="$S" \
      --train.out_dir="$out/A"
    a4=$(ckpt "$S" 4)
    [[ -f $a4 ]] || fail "run A did not write $a4"
    sum_a4=$(md5sum <"$a4")
    head -c 4096 /dev/urandom >"$(ckpt "$S" 99999999)"
    sum_stray=$(md5sum <"$(ckpt "$S" 99999999)")
    # B would write ckpt_4 as well: refused before it starts.
    train 0 1 --train.steps=4 --checkpoint.every=2 --checkpoint.dir="$S" --train.out_dir="$out/B"
    one_error_line "ckpt_00000004\.h5 is not this run's \(run $(run_id "$out/A")\)"
    # C only writes steps 1 and 2 and keeps one of its own.
    train 0 0 --train.steps=2 --checkpoint.every=1 --checkpoint.keep_last=1 --checkpoint.dir="$S" \
      --train.out_dir="$out/C"
    [[ -f $(ckpt "$S" 2) && ! -e $(ckpt "$S" 1) ]] || fail "C's pruning: $(ls "$S")"
    [[ $(md5sum <"$a4") == "$sum_a4" ]] || fail "A's checkpoint was changed or deleted"
    [[ $(md5sum <"$(ckpt "$S" 99999999)") == "$sum_stray" ]] || fail "the stray file was changed"
    train 0 0 --train.steps=6 --checkpoint.every=2 --checkpoint.keep_last=1 --checkpoint.dir="$S" \
      --train.out_dir="$out/A" --resume auto
    grep -q "resumed from $a4 at step 4" "$log" || fail "A did not resume from its own $a4"
    [[ -f $(ckpt "$S" 2) && -f $(ckpt "$S" 99999999) ]] || fail "A deleted files of others: $(ls "$S")"
    train 0 1 --train.steps=8 --checkpoint.dir="$S" --train.out_dir="$out/A" \
      --resume "$(ckpt "$S" 2)"
    one_error_line "belongs to run $(run_id "$out/C"), but train.out_dir .* is run $(run_id "$out/A")"
    echo "ok ($case_name): $(ls "$S" | tr '\n' ' ')"
    ;;

  lock)
    D=$out/D
    "$bin" train "${tiny[@]}" --train.steps=1000000 --checkpoint.every=0 --train.out_dir="$D" \
      >"$out/first.log" 2>&1 &
    job_pid=$!
    deadline=$((SECONDS + 60))
    until [[ $(steps_logged "$D" 2>/dev/null) -ge 1 ]]; do
      kill -0 "$job_pid" 2>/dev/null || fail "the first run ended: $(tail -n 3 "$out/first.log")"
      ((SECONDS < deadline)) || fail "the first run did not train within 60 s"
      sleep 0.1
    done
    holder=$job_pid
    start=$SECONDS
    train 0 1 --train.steps=1000000 --train.out_dir="$D" --resume auto
    ((SECONDS - start < 30)) || fail "the second run took $((SECONDS - start)) s to give up"
    one_error_line "in use by another routemoe job \(pid=$holder host="
    kill -TERM "$holder"
    deadline=$((SECONDS + 60))
    while kill -0 "$job_pid" 2>/dev/null; do
      ((SECONDS < deadline)) || fail "the first run did not stop within 60 s of SIGTERM"
      sleep 0.1
    done
    rc=0
    wait "$job_pid" || rc=$?
    job_pid=""
    [[ $rc -eq 75 ]] || fail "the first run exited $rc after SIGTERM, expected 75"
    n=$(steps_logged "$D")
    train 0 0 --train.steps=$((n + 1)) --checkpoint.every=0 --train.out_dir="$D" --resume auto
    echo "ok ($case_name): $ERROR_LINE"
    ;;

  resume_trace_change)
    R=$out/R
    train 0 0 --train.steps=4 --checkpoint.every=2 --train.out_dir="$R"
    before=$(cd "$R" && md5sum metrics.jsonl trace.h5 config.toml)
    base=("${tiny[@]}")
    tiny=("${base[@]/--model.top_k=2/--model.top_k=1}")
    train 0 1 --train.steps=6 --checkpoint.every=2 --train.out_dir="$R" --resume auto
    one_error_line "cannot resume into $R/trace\.h5: its records have model\.top_k 2, this run has 1"
    first=$ERROR_LINE
    tiny=("${base[@]/--checkpoint.probe_tokens=256/--checkpoint.probe_tokens=128}")
    train 0 1 --train.steps=6 --checkpoint.every=2 --train.out_dir="$R" --resume auto
    one_error_line "cannot resume into $R/trace\.h5: its records have probe tokens .* 256, this run has 128"
    tiny=("${base[@]}")
    [[ $(cd "$R" && md5sum metrics.jsonl trace.h5 config.toml) == "$before" ]] ||
      fail "the refused resumes changed the run directory"
    # The same settings resume.
    train 0 0 --train.steps=6 --checkpoint.every=2 --train.out_dir="$R" --resume auto
    echo "ok ($case_name): $first"
    ;;

  *)
    echo "unknown case: $case_name" >&2
    exit 2
    ;;
esac
