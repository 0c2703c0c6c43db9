#!/usr/bin/env bash
# Failure behaviour of multi-rank training (docs/parallelism.md, "Failures").
#
#   failures.sh <case> <mpirun> <routemoe> <data dir> <work dir>
#
# Cases:
#   bad_data_rank1   MPMD launch where only rank 1 gets a nonexistent --data.path: rank 1 raises a
#                    data error while rank 0 goes on into the first collective; main() catches
#                    and calls MPI_Abort, so mpirun must exit non-zero within the deadline with a
#                    one-line "routemoe: data error on rank 1 at ..." naming the path.
#   bad_shard_rank1  the same with a corrupt token shard (bad header) given to rank 1 only.
#   sigkill_rank     a 2-rank training run; once it is training (metrics.jsonl has a step), rank 1
#                    is SIGKILLed; mpirun must exit non-zero within 60 s and leave no rank behind.
#   stop_rank_np2    SIGSTOP of the last rank of a 2-rank (np4: 4-rank) run with
#   stop_rank_np4    parallel.timeout_s = 5: the watchdog of a waiting rank must end the job
#                    (exit status 3) within 60 s with one line naming the stopped rank and its pid
#                    ("stopped answering: rank N (pid P"), and no rank may be left behind.
#   preempt_np2      SIGTERM to every rank of a 2-rank run (as Slurm sends it), checkpointing off:
#                    every rank finishes the step, a checkpoint of that step is written, mpirun
#                    exits 75 (requeue); --resume auto then continues from it and metrics.jsonl
#                    holds every step exactly once.
#   preempt_np4      the same with SIGUSR1 to one rank (rank 2) of 4: the others agree to stop.
#   second_signal    SIGUSR1 and then SIGTERM to a single-process run: the second stop signal ends it
#                    at once with 128 + its number (no checkpoint).
#   disk_full_np2    the checkpoint directory on a small tmpfs that is filled up once the first
#   disk_full_np4    checkpoint exists: the next checkpoint fails on rank 0; every rank agrees
#                    and the job ends within 60 s with one error line naming the checkpoint path,
#                    "No space left on device" and "errno 28"; the previous checkpoint still
#                    loads, no .tmp is left, no rank is left behind. Skipped (77) where tmpfs
#                    cannot be mounted (needs root and CAP_SYS_ADMIN).
#   disk_full_metrics  train.out_dir on a tmpfs that is filled up during training: the next
#                    metrics.jsonl line fails, the run ends with exit 1 and an error naming
#                    metrics.jsonl and the cause, and every line left in the file is whole JSON.
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

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out="$work/$case_name"
rm -rf "$out"
mkdir -p "$out"
log="$out/mpirun.log"

# A tiny model: fast steps, both ranks in one expert-parallel group of 2.
tiny=(--model.d_model=32 --model.n_heads=2 --model.seq_len=32 --model.n_layers=2
      --model.d_ff=64 --model.n_experts=4 --model.top_k=2 --train.batch_size=4
      --train.log_every=1 --train.threads=1 --parallel.ep_size=2 --train.progress=false
      --checkpoint.probe_tokens=256 --train.eval_every=0)
tiny1=("${tiny[@]/--parallel.ep_size=2/--parallel.ep_size=1}")

fail() {
  echo "FAIL ($case_name): $*" >&2
  if [[ -f $log ]]; then
    echo "---- mpirun output ----" >&2
    tail -n 40 "$log" >&2
  fi
  exit 1
}

# ---- helpers for jobs that run in the background ----

job_pid=""
mounted=""
cleanup() {
  if [[ -n $job_pid ]] && kill -0 "$job_pid" 2>/dev/null; then
    kill -KILL "$job_pid" 2>/dev/null || true
    for pid in "${RANK_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  if [[ -n $mounted ]]; then
    umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true
  fi
}
trap cleanup EXIT
RANK_PIDS=()

# start_job <np> <args...>: starts `routemoe train` (np 0: without mpirun) in the background.
start_job() {
  local np=$1
  shift
  if [[ $np -eq 0 ]]; then
    "$bin" train "${tiny1[@]}" --data.path="$data" "$@" >"$log" 2>&1 &
  else
    "$mpirun" --oversubscribe -np "$np" "$bin" train "${tiny[@]}" --data.path="$data" "$@" \
      >"$log" 2>&1 &
  fi
  job_pid=$!
}

# wait_for <seconds> <description> <command...>: polls the command until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [[ -z $job_pid ]] || kill -0 "$job_pid" 2>/dev/null || fail "the job ended before $what"
    ((SECONDS < deadline)) || fail "no $what within $limit s"
    sleep 0.1
  done
}

# metrics_lines <run dir>: number of step lines in metrics.jsonl.
metrics_lines() { grep -c '"loss"' "$1/metrics.jsonl" 2>/dev/null || true; }
has_steps() { [[ $(metrics_lines "$1") -ge $2 ]]; }

# find_ranks <np>: RANK_PIDS[r] = pid of rank r (mpirun's children, by OMPI_COMM_WORLD_RANK).
find_ranks() {
  local np=$1 pid r
  RANK_PIDS=()
  for pid in $(pgrep -P "$job_pid"); do
    r=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
    [[ -n $r ]] && RANK_PIDS[r]=$pid
  done
  [[ ${#RANK_PIDS[@]} -eq $np ]] ||
    fail "expected $np rank processes under mpirun $job_pid, found ${#RANK_PIDS[@]}"
}

# wait_job <seconds>: waits for the background job to end; sets JOB_RC and JOB_TOOK.
wait_job() {
  local limit=$1 start=$SECONDS
  local deadline=$((SECONDS + limit))
  while kill -0 "$job_pid" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "the job was still running $limit s later"
    sleep 0.1
  done
  JOB_RC=0
  wait "$job_pid" || JOB_RC=$?
  JOB_TOOK=$((SECONDS - start))
  job_pid=""
}

# no_rank_left: every rank process has ended (a zombie waiting for its reaper counts as ended).
no_rank_left() {
  local deadline=$((SECONDS + 10)) pid
  for pid in "${RANK_PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]]; do
      ((SECONDS < deadline)) || fail "rank process $pid outlived the job"
      sleep 0.1
    done
  done
}

# mount_tmpfs <dir> <size>: a small file system to fill up; exit 77 (skip) where that is not
# possible.
mount_tmpfs() {
  mkdir -p "$1"
  if ! mount -t tmpfs -o "size=$2" tmpfs "$1" 2>"$out/mount.err"; then
    echo "SKIP ($case_name): cannot mount a tmpfs: $(cat "$out/mount.err")"
    exit 77
  fi
  mounted=$1
}

# fill <dir>: writes zeros into <dir>/filler until the file system is full.
fill() { dd if=/dev/zero of="$1/filler" bs=64k 2>/dev/null || true; }

# Runs an MPMD job whose rank 1 gets the extra arguments "$@" and checks that it ends quickly,
# non-zero, with a one-line error naming rank 1 and `$expect` (a fixed string).
expect_rank1_abort() {
  local expect=$1
  shift
  local start rc=0
  start=$(date +%s.%N)
  timeout -k 10 60 "$mpirun" --oversubscribe \
    -np 1 "$bin" train "${tiny[@]}" --train.steps=1000 --data.path="$data" \
    --train.out_dir="$out/run" \
    : -np 1 "$bin" train "${tiny[@]}" --train.steps=1000 --train.out_dir="$out/run" "$@" \
    >"$log" 2>&1 || rc=$?
  local took
  took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  [[ $rc -ne 124 && $rc -ne 137 ]] || fail "mpirun did not end within the 60 s deadline (rc $rc)"
  [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank 1 had bad input"
  local line
  line=$(grep -E "^routemoe: [a-z]+ error on rank 1 at " "$log" | head -n 1) ||
    fail "no one-line error naming rank 1"
  [[ $line == *"$expect"* ]] || fail "the rank-1 error does not name '$expect': $line"
  # Rank 0 may see an MPI error from the collective the abort interrupted, nothing else.
  if grep -E "^routemoe: [a-z]+ error on rank 0 " "$log" | grep -qv "^routemoe: mpi error"; then
    fail "rank 0 reported an error of its own; only rank 1 had bad input"
  fi
  echo "ok ($case_name): mpirun exit $rc after ${took} s; $line"
}

case $case_name in
  bad_data_rank1)
    expect_rank1_abort "/nonexistent" --data.path=/nonexistent
    ;;

  bad_shard_rank1)
    # A copy of the prepared data whose first training shard has a corrupt header.
    bad="$out/bad_data"
    mkdir -p "$bad"
    cp "$data"/* "$bad"/
    shard=$(find "$bad" -maxdepth 1 -name 'train_*.bin' | sort | head -n 1)
    [[ -n $shard ]] || fail "no train_*.bin shard in $data"
    printf '\xde\xad\xbe\xef' | dd of="$shard" bs=1 seek=0 count=4 conv=notrunc status=none
    expect_rank1_abort "$(basename "$shard")" --data.path="$bad"
    ;;

  sigkill_rank)
    # Far more steps than the test lasts: the run only ends because a rank is killed.
    start_job 2 --train.steps=1000000 --train.out_dir="$out/run"
    wait_for 60 "training step" has_steps "$out/run" 1
    find_ranks 2
    steps=$(metrics_lines "$out/run")
    kill -KILL "${RANK_PIDS[1]}"
    wait_job 60
    [[ $JOB_RC -ne 0 ]] || fail "mpirun exited 0 although rank 1 was killed"
    no_rank_left
    echo "ok ($case_name): rank 1 (pid ${RANK_PIDS[1]}) SIGKILLed after $steps step(s);" \
      "mpirun exit $JOB_RC within $JOB_TOOK s; no rank left"
    ;;

  stop_rank_np2 | stop_rank_np4)
    np=${case_name##*_np}
    victim=$((np - 1))
    start_job "$np" --train.steps=1000000 --train.out_dir="$out/run" --parallel.timeout_s=5
    wait_for 60 "training step" has_steps "$out/run" 2
    find_ranks "$np"
    kill -STOP "${RANK_PIDS[victim]}"
    wait_job 60
    [[ $JOB_RC -eq 3 ]] || fail "mpirun exited $JOB_RC, expected 3 (ended by the watchdog)"
    line=$(grep -E "^routemoe: timeout error on rank [0-9]+ .*no progress for" "$log" | head -n 1) ||
      fail "no timeout error line"
    [[ $line == *"stopped answering: rank $victim (pid ${RANK_PIDS[victim]} "* ]] ||
      fail "the timeout error does not name rank $victim (pid ${RANK_PIDS[victim]}): $line"
    no_rank_left
    echo "ok ($case_name): rank $victim SIGSTOPped; job ended with $JOB_RC after $JOB_TOOK s: $line"
    ;;

  preempt_np2 | preempt_np4)
    np=${case_name##*_np}
    start_job "$np" --train.steps=1000000 --train.out_dir="$out/run" --checkpoint.every=0
    wait_for 60 "training step" has_steps "$out/run" 2
    find_ranks "$np"
    if [[ $np -eq 2 ]]; then
      sig=TERM
      kill -TERM "${RANK_PIDS[@]}"  # as Slurm does at scancel or the time limit
    else
      sig=USR1
      kill -USR1 "${RANK_PIDS[2]}"  # one rank only: the others must agree to stop
    fi
    wait_job 60
    [[ $JOB_RC -eq 75 ]] || fail "mpirun exited $JOB_RC after SIG$sig, expected 75 (requeue)"
    no_rank_left
    n=$(metrics_lines "$out/run")
    ckpt=$(printf '%s/run/checkpoints/ckpt_%08d.h5' "$out" "$n")
    [[ -f $ckpt ]] || fail "no checkpoint of the last step $n: $(ls "$out/run/checkpoints" 2>&1)"
    grep -q "stopped by SIG$sig after" "$log" || fail "no 'stopped by SIG$sig' line"
    # Requeued: resume and train 2 more steps; every step must be in the metrics exactly once.
    rc=0
    timeout -k 10 120 "$mpirun" --oversubscribe -np "$np" "$bin" train "${tiny[@]}" \
      --data.path="$data" --train.steps=$((n + 2)) --train.out_dir="$out/run" --checkpoint.every=0 --resume auto \
      >"$out/resume.log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || { log=$out/resume.log; fail "the resumed run exited $rc"; }
    grep -q "resumed from $ckpt at step $n" "$out/resume.log" || fail "did not resume from $ckpt"
    steps=$(grep -o '"step": [0-9]*, "epoch"' "$out/run/metrics.jsonl" | grep -o '[0-9]*' | tr '\n' ' ')
    [[ $steps == "$(seq -s ' ' 0 $((n + 1))) " ]] || fail "metrics steps are not 0..$((n + 1)) once each: $steps"
    echo "ok ($case_name): SIG$sig -> checkpoint at step $n, exit 75; resumed to step $((n + 2))"
    ;;

  second_signal)
    start_job 0 --train.steps=1000000 --train.out_dir="$out/run"
    wait_for 60 "training step" has_steps "$out/run" 1
    # Two different signals (the same one twice could merge into one pending signal), both pending
    # together. In a single-threaded process the lower-numbered SIGUSR1 comes first and SIGTERM
    # ends it with 128 + 15; with MPI and OpenMP threads the kernel may hand the two to two threads
    # at once, and then whichever handler comes second ends the process (128 + 10 or 128 + 15).
    kill -STOP "$job_pid"
    kill -USR1 "$job_pid"
    kill -TERM "$job_pid"
    kill -CONT "$job_pid"
    wait_job 60
    [[ $JOB_RC -eq 143 || $JOB_RC -eq 138 ]] ||
      fail "exit status $JOB_RC after SIGUSR1 and SIGTERM, expected 143 or 138 (128 + the second signal)"
    ! grep -q "stopped by" "$log" || fail "the run went on to its stop checkpoint"
    echo "ok ($case_name): ended at once with $JOB_RC after $JOB_TOOK s"
    ;;

  disk_full_np2 | disk_full_np4)
    np=${case_name##*_np}
    mount_tmpfs "$out/ckpt" 8m
    start_job "$np" --train.steps=1000000 --train.out_dir="$out/run" --checkpoint.dir="$out/ckpt" \
      --checkpoint.every=2 --checkpoint.keep_last=1000
    # No pruning: a deleted old checkpoint would free the space the filler took, and on a loaded
    # machine the run could go on writing checkpoints into it.
    wait_for 60 "first checkpoint" test -f "$out/ckpt/ckpt_00000002.h5"
    find_ranks "$np"
    fill "$out/ckpt"
    wait_job 60
    [[ $JOB_RC -ne 0 ]] || fail "mpirun exited 0 with a full checkpoint directory"
    line=$(grep -E "^routemoe: io error on rank [0-9]+ " "$log" | head -n 1) || fail "no io error line"
    [[ $line =~ checkpoint\ $out/ckpt/ckpt_[0-9]{8}\.h5 ]] || fail "the error does not name the checkpoint: $line"
    [[ $line == *"No space left on device (errno 28)"* ]] || fail "the error does not give the cause: $line"
    no_rank_left
    ! compgen -G "$out/ckpt/*.tmp" >/dev/null || fail "a .tmp was left: $(ls "$out/ckpt")"
    newest=$(compgen -G "$out/ckpt/ckpt_*.h5" | sort | tail -n 1)
    [[ -n $newest ]] || fail "no checkpoint left"
    "$bin" inspect "$newest" >/dev/null 2>"$out/inspect.err" ||
      fail "the previous checkpoint $newest does not load: $(cat "$out/inspect.err")"
    echo "ok ($case_name): exit $JOB_RC after $JOB_TOOK s; $(basename "$newest") intact; $line"
    ;;

  disk_full_metrics)
    mount_tmpfs "$out/run" 1m
    start_job 0 --train.steps=1000000 --train.out_dir="$out/run" --checkpoint.trace=false
    wait_for 60 "training step" has_steps "$out/run" 2
    fill "$out/run"
    wait_job 60
    [[ $JOB_RC -eq 1 ]] || fail "exit status $JOB_RC with a full train.out_dir, expected 1"
    line=$(grep -E "^routemoe: io error on rank 0 .*metrics\.jsonl" "$log" | head -n 1) ||
      fail "no io error naming metrics.jsonl"
    [[ $line == *"No space left on device"* ]] || fail "the error does not give the cause: $line"
    python3 -c 'import json, sys; [json.loads(l) for l in open(sys.argv[1])]' "$out/run/metrics.jsonl" ||
      fail "metrics.jsonl holds a partial line"
    echo "ok ($case_name): exit 1 after $(metrics_lines "$out/run") whole lines; $line"
    ;;

  *)
    echo "unknown case: $case_name" >&2
    exit 2
    ;;
esac
