#!/usr/bin/env bash
# The Slurm job scripts (launch/slurm/*.sbatch) on a real one-node Slurm (design.md section 6:
# resume, requeue and preemption as a cluster job meets them).
#
#   slurm_test.sh <case> <routemoe> <data dir> <source dir>
#
# Each case starts its own cluster (munged, slurmctld, slurmd: tests/cluster/slurm_cluster.sh)
# in a scratch directory, submits launch/slurm/train.sbatch with 2 tasks (srun --mpi=pmix, a
# tiny model), and at the end stops every daemon and job and removes the scratch directory
# (EXIT trap, also on failure). A cluster that cannot start is a failure, never a skip. Every
# wait is a poll for a condition with a deadline.
#
# Cases:
#   complete            a job runs to the end: state COMPLETED, exit 0:0, the final checkpoint,
#                       every step in metrics.jsonl exactly once, the log in the run directory;
#                       submitting the same job name again finds the run finished and exits 0;
#                       train-multinode.sbatch (here on -N 1) runs the same way.
#   scancel_resubmit    scancel mid-run (after the first checkpoint), then a resubmission with the
#                       same job name resumes from the newest checkpoint and completes.
#   requeue             `scontrol requeue` of a running job: the second attempt (same job id)
#                       resumes from the newest checkpoint; both attempts' logs are kept.
#   signal_requeue      the warning signal (SIGUSR1 to the batch shell, as --signal=B:USR1@N
#                       sends it; here by scancel --batch) on a run without periodic checkpoints:
#                       the ranks write a checkpoint, the script requeues the job, the next
#                       attempt resumes from that checkpoint and completes.
#                       NEEDS the preemption feature of routemoe (SIGUSR1 -> checkpoint -> exit).
#   timelimit_chain     --time=1 --signal=B:USR1@20 --no-requeue, no periodic checkpoints: the
#                       warning makes the ranks write a checkpoint before the time limit, and a
#                       job submitted with --dependency=afterany on the first resumes from it.
#                       NEEDS the preemption feature of routemoe (SIGUSR1 -> checkpoint -> exit).
# Every case checks metrics.jsonl: each training step exactly once, from 1 without a gap.
set -euo pipefail

# A budget of its own, below ctest's TIMEOUT: ctest kills a test that runs over with SIGKILL,
# which no trap survives; `timeout` sends SIGTERM first, and the EXIT trap below still cleans up.
# (ROUTEMOE_CLUSTER_TEST_BUDGET overrides the 270 s.)
if [[ -z ${ROUTEMOE_CLUSTER_TEST_INNER:-} ]]; then
  export ROUTEMOE_CLUSTER_TEST_INNER=1 ROUTEMOE_CLUSTER_TEST_BUDGET=${ROUTEMOE_CLUSTER_TEST_BUDGET:-270}
  exec timeout -k 50 "$ROUTEMOE_CLUSTER_TEST_BUDGET" "$0" "$@"
fi
trap 'echo "slurm_test: stopped by a signal (over the ${ROUTEMOE_CLUSTER_TEST_BUDGET} s budget?)" >&2; exit 124' TERM INT

if [[ $# -ne 4 ]]; then
  echo "usage: $0 <complete|scancel_resubmit|requeue|signal_requeue|timelimit_chain> <routemoe> <data dir> <source dir>" >&2
  exit 2
fi
case_name=$1
bin=$(realpath "$2")
data=$(realpath "$3")
src=$(realpath "$4")

here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
# shellcheck source=tests/cluster/slurm_cluster.sh
source "$here/slurm_cluster.sh"

# A short path: munged's socket path must stay under the 108-byte limit of a socket name.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/routemoe-slurm.XXXXXX")
chmod 0755 "$scratch"  # munged runs as the munge user and must reach its socket directory
submit_dir=$scratch/submit
mkdir -p "$submit_dir"
cleanup() {
  local rc=$?
  slurm_down
  rm -rf "$scratch"
  exit "$rc"
}
trap cleanup EXIT

export ROUTEMOE_BIN=$bin
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The jobs inherit this environment (sbatch --export=ALL). A rank waiting for a message yields
# its core: the node's 2 CPUs hold 2 ranks, and on a loaded machine busy-polling ranks starve
# each other (measured under srun: 60 steps in 16.2 s busy-polling, 2.0 s yielding).
export OMPI_MCA_mpi_yield_when_idle=1
sbatch_script=$src/launch/slurm/train.sbatch
config=$src/examples/configs/tiny.toml
# A tiny model (about 40 ms a step on 2 oversubscribed ranks): both ranks in one
# expert-parallel group.
tiny=(--model.d_model=32 --model.n_heads=2 --model.seq_len=32 --model.n_layers=2
  --model.d_ff=64 --model.n_experts=4 --model.top_k=2 --train.batch_size=4
  --parallel.ep_size=2 --train.eval_every=0 --train.log_every=50 --train.progress=false
  --data.path="$data")

# Runs cut mid-way: the test acts right after the first checkpoint (step mid_every), which
# leaves mid_steps - mid_every steps (about 5 s of a release build, far more under a
# sanitizer) for the cancel or requeue to land. run_budget bounds one job's whole run (measured:
# 120 steps take 5 s in a release build on 2 idle cores, 90 s in the asan build on a loaded
# machine).
mid_steps=240
mid_every=20
mid=(--train.steps="$mid_steps" --checkpoint.every="$mid_every")
run_budget=200

fail() {
  echo "FAIL ($case_name): $*" >&2
  local f
  for f in "$submit_dir"/slurm-*.out "$submit_dir"/runs/*/logs/*.log; do
    [[ -f $f ]] || continue
    echo "---- $f (last 25 lines) ----" >&2
    tail -n 25 "$f" >&2
  done
  squeue -a -o '%i %j %T %r' >&2 2>/dev/null || true
  [[ -f $scratch/log/slurmctld.log ]] && { echo "---- slurmctld.log (last 15 lines) ----" >&2; tail -n 15 "$scratch/log/slurmctld.log" >&2; }
  exit 1
}

# submit <job name> [sbatch options...] -- [train overrides...]: prints the job id.
submit() {
  local name=$1
  shift
  local opts=()
  while [[ $# -gt 0 && $1 != -- ]]; do opts+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  (cd "$submit_dir" && slurm_sbatch --parsable -J "$name" -n 2 "${opts[@]}" "$sbatch_script" \
    "$config" "${tiny[@]}" "$@") || fail "sbatch failed for $name"
}

# One field of `scontrol show job` (e.g. JobState, ExitCode, Restarts).
job_field() {
  scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"
}
job_in_state() {
  local jid=$1 state
  shift
  state=$(job_field "$jid" JobState)
  local s
  for s in "$@"; do [[ $state == "$s" ]] && return 0; done
  return 1
}
# wait_state <job> <seconds> <state>...: until the job is in one of the states.
wait_state() {
  local jid=$1 secs=$2
  shift 2
  slurm_poll "$secs" job_in_state "$jid" "$@" ||
    fail "job $jid not in ${*} within $secs s (now $(job_field "$jid" JobState), reason $(job_field "$jid" Reason))"
}
expect_done_ok() {
  local jid=$1
  [[ $(job_field "$jid" JobState) == COMPLETED && $(job_field "$jid" ExitCode) == 0:0 ]] ||
    fail "job $jid ended $(job_field "$jid" JobState) with exit $(job_field "$jid" ExitCode), expected COMPLETED 0:0"
}

run_of() { echo "$submit_dir/runs/$1"; }
newest_ckpt() {
  local dir=$1/checkpoints
  [[ -d $dir ]] || return 0
  find "$dir" -maxdepth 1 -name 'ckpt_*.h5' -printf '%f\n' | sort -t_ -k2,2n | tail -n 1
}
ckpt_step() { local n=${1#ckpt_}; n=${n%.h5}; echo $((10#$n)); }
has_ckpt() { [[ -n $(newest_ckpt "$1") ]]; }
# Training steps logged in metrics.jsonl (validation lines have no "loss" key).
train_steps() { sed -n 's/^{"step": \([0-9]*\), .*"loss": .*/\1/p' "$1/metrics.jsonl" 2>/dev/null; }
steps_at_least() { local n; n=$(train_steps "$1" | wc -l); ((n >= $2)); }
# check_metrics <run dir> [expected count]: steps 1..n (steps completed) each exactly once, in
# order.
check_metrics() {
  local run=$1 want=${2:-} got n
  got=$(train_steps "$run")
  n=$(printf '%s\n' "$got" | grep -c . || true)
  [[ -z $want || $n -eq $want ]] || fail "$run/metrics.jsonl has $n training steps, expected $want"
  [[ $got == "$(seq 1 "$n")" ]] ||
    fail "$run/metrics.jsonl: steps not each exactly once from 1: $(printf '%s\n' "$got" | uniq -c | awk '$1 != 1' | head -n 3 | tr '\n' ' ')$(printf '%s\n' "$got" | awk 'NR != $1 { print "first out of place at line " NR ": " $1; exit }')"
  echo "ok: $run/metrics.jsonl has steps 1..$n, each once"
}
# The "resumed from <path> at step <n>" line of an attempt's log; prints the step.
resumed_step() {
  local log=$1 line
  line=$(grep -m1 -E '^resumed from .* at step [0-9]+$' "$log" 2>/dev/null) || return 1
  echo "${line##* }"
}
log_has() { grep -q -- "$2" "$1" 2>/dev/null; }

slurm_up "$scratch/cluster" || fail "the one-node Slurm did not start (see above)"

case $case_name in
  complete)
    jid=$(submit complete -- --train.steps=60 --checkpoint.every=20)
    wait_state "$jid" "$run_budget" COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid"
    run=$(run_of complete)
    [[ -f $run/logs/slurm-$jid.0.log ]] || fail "no log $run/logs/slurm-$jid.0.log"
    log_has "$run/logs/slurm-$jid.0.log" "ranks ended with status 0" || fail "the log does not say the ranks ended with status 0"
    [[ $(newest_ckpt "$run") == ckpt_00000060.h5 ]] || fail "final checkpoint ckpt_00000060.h5 missing (newest: $(newest_ckpt "$run"))"
    check_metrics "$run" 60
    # Slurm's own output file (submit directory) only points to the run's log.
    [[ $(wc -l <"$submit_dir/slurm-complete-$jid.out") -eq 1 ]] ||
      fail "slurm-complete-$jid.out should hold one line: $(cat "$submit_dir/slurm-complete-$jid.out")"

    # The same job name again: the run is finished, the job says so and succeeds.
    jid2=$(submit complete -- --train.steps=60 --checkpoint.every=20)
    wait_state "$jid2" 60 COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid2"
    log_has "$run/logs/slurm-$jid2.0.log" "is finished" || fail "a resubmission of a finished run did not say it is finished"
    check_metrics "$run" 60

    # The multi-node variant, here on the one node.
    jid3=$( (cd "$submit_dir" && slurm_sbatch --parsable -J multi -N 1 --ntasks-per-node=2 \
      --export=ALL,ROUTEMOE_ROOT="$src" "$src/launch/slurm/train-multinode.sbatch" "$config" \
      "${tiny[@]}" --train.steps=20 --checkpoint.every=10) ) || fail "sbatch train-multinode.sbatch failed"
    wait_state "$jid3" "$run_budget" COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid3"
    check_metrics "$(run_of multi)" 20
    ;;

  scancel_resubmit)
    jid=$(submit cancel -- "${mid[@]}")
    run=$(run_of cancel)
    slurm_poll 120 has_ckpt "$run" || fail "no checkpoint within 120 s"
    scancel "$jid"
    wait_state "$jid" 60 CANCELLED COMPLETED FAILED
    [[ $(job_field "$jid" JobState) == CANCELLED ]] ||
      fail "job ended $(job_field "$jid" JobState) before the cancel reached it (the run is too short)"
    last=$(newest_ckpt "$run")
    s=$(ckpt_step "$last")
    ((s < mid_steps)) || fail "the cancelled job reached the end ($last)"
    echo "ok: cancelled job $jid; newest checkpoint $last"

    jid2=$(submit cancel -- "${mid[@]}")
    wait_state "$jid2" "$run_budget" COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid2"
    got=$(resumed_step "$run/logs/slurm-$jid2.0.log") || fail "the resubmitted job did not resume"
    [[ $got == "$s" ]] || fail "the resubmitted job resumed at step $got, the newest checkpoint is $last"
    echo "ok: resubmitted job $jid2 resumed at step $got"
    check_metrics "$run" "$mid_steps"
    ;;

  requeue)
    jid=$(submit requeue -- "${mid[@]}")
    run=$(run_of requeue)
    slurm_poll 120 has_ckpt "$run" || fail "no checkpoint within 120 s"
    scontrol requeue "$jid" || fail "scontrol requeue $jid failed"
    # Slurm holds a requeued job for cred_expire (10 s in this cluster) before it starts again.
    slurm_poll 120 test -f "$run/logs/slurm-$jid.1.log" || fail "the requeued job did not start again within 120 s"
    wait_state "$jid" "$run_budget" COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid"
    [[ $(job_field "$jid" Restarts) == 1 ]] || fail "Restarts=$(job_field "$jid" Restarts), expected 1"
    log_has "$run/logs/slurm-$jid.0.log" "job $jid attempt 0" || fail "the first attempt's log is gone"
    got=$(resumed_step "$run/logs/slurm-$jid.1.log") || fail "the requeued attempt did not resume"
    # Slurm's SIGTERM makes attempt 0 write a checkpoint after the step it is in (train.stop_signals);
    # without that line in its log, the resume must be from a periodic checkpoint.
    stopped=$(sed -n 's/^stopped by SIGTERM after \([0-9]*\) step.*/\1/p' "$run/logs/slurm-$jid.0.log" | tail -n 1)
    if [[ -n $stopped ]]; then
      ((got == stopped)) || fail "resumed at step $got, not at attempt 0's stop checkpoint (step $stopped)"
    else
      ((got > 0 && got < mid_steps && got % mid_every == 0)) || fail "resumed at step $got, not at a checkpoint of the first attempt"
    fi
    echo "ok: the requeued attempt resumed at step $got"
    [[ $(grep -c "attempt" "$submit_dir/slurm-requeue-$jid.out") -eq 2 ]] ||
      fail "Slurm's output file should name both attempts (appended): $(cat "$submit_dir/slurm-requeue-$jid.out")"
    check_metrics "$run" "$mid_steps"
    ;;

  signal_requeue)
    # No periodic checkpoint (every > steps): only the signal can make one. The run must still
    # be going when the signal has passed scancel, slurmd, the batch shell and srun: 120 steps
    # once ended first on a fast machine (the signal then found a finished run), so this run is
    # 600 steps (about 12 s in a release build on 2 idle cores), and a run that ends before the
    # signal lands is reported as too short rather than as a missing requeue.
    sig_steps=600
    jid=$(submit sigreq -- --train.steps="$sig_steps" --checkpoint.every=100000)
    run=$(run_of sigreq)
    slurm_poll 120 steps_at_least "$run" 10 || fail "no 10 training steps within 120 s"
    scancel --batch --signal=USR1 "$jid" || fail "scancel --batch --signal=USR1 failed"
    requeued_or_ended() {
      [[ -f $run/logs/slurm-$jid.1.log ]] || job_in_state "$jid" COMPLETED FAILED CANCELLED TIMEOUT
    }
    slurm_poll 120 requeued_or_ended || fail "job $jid neither requeued nor ended within 120 s of SIGUSR1"
    if [[ ! -f $run/logs/slurm-$jid.1.log ]]; then
      [[ $(newest_ckpt "$run") != "ckpt_$(printf '%08d' "$sig_steps").h5" ]] ||
        fail "the run ended before SIGUSR1 reached it (the run is too short for this machine)"
      fail "the job was not requeued after SIGUSR1 (needs routemoe's checkpoint-on-signal)"
    fi
    log_has "$run/logs/slurm-$jid.0.log" "requeueing job $jid" || fail "attempt 0 did not requeue itself"
    wait_state "$jid" "$run_budget" COMPLETED FAILED CANCELLED TIMEOUT
    expect_done_ok "$jid"
    got=$(resumed_step "$run/logs/slurm-$jid.1.log") || fail "the requeued attempt did not resume"
    ((got >= 10 && got < sig_steps)) || fail "resumed at step $got; the signal came after step 10"
    echo "ok: SIGUSR1 -> checkpoint at step $got -> requeue -> resumed"
    check_metrics "$run" "$sig_steps"
    ;;

  timelimit_chain)
    # A run far longer than the 1-minute limit, no periodic checkpoint: only the warning
    # signal (20 s before the limit; Slurm sends it up to ~30 s early) can make one.
    long=(--train.steps=1000000 --checkpoint.every=1000000)
    a=$(submit chain --time=1 --signal=B:USR1@20 --no-requeue -- "${long[@]}")
    b=$(submit chain --time=5 --dependency=afterany:"$a" -- "${long[@]}")
    run=$(run_of chain)
    wait_state "$a" 150 COMPLETED FAILED CANCELLED TIMEOUT
    [[ $(job_field "$a" JobState) != TIMEOUT ]] ||
      fail "job $a ran into its time limit: the warning signal did not end it with a checkpoint (needs routemoe's checkpoint-on-signal)"
    last=$(newest_ckpt "$run")
    [[ -n $last ]] || fail "job $a left no checkpoint: the warning signal did not make the ranks write one (needs routemoe's checkpoint-on-signal)"
    s=$(ckpt_step "$last")
    log_has "$run/logs/slurm-$a.0.log" "not requeueable" || fail "job $a's log does not say it leaves the checkpoint to a chained job"
    echo "ok: job $a ended $(job_field "$a" JobState) ($(job_field "$a" ExitCode)) before its time limit with $last"
    slurm_poll 120 test -f "$run/logs/slurm-$b.0.log" || fail "the dependent job $b did not start within 120 s"
    slurm_poll 60 resumed_step "$run/logs/slurm-$b.0.log" >/dev/null || fail "the dependent job did not resume"
    got=$(resumed_step "$run/logs/slurm-$b.0.log")
    [[ $got == "$s" ]] || fail "the dependent job resumed at step $got, the checkpoint is $last"
    slurm_poll 120 steps_at_least "$run" $((s + 5)) || fail "the dependent job made no progress"
    scancel "$b"
    wait_state "$b" 60 CANCELLED COMPLETED FAILED
    echo "ok: dependent job $b resumed at step $got"
    check_metrics "$run"
    ;;

  *)
    echo "unknown case $case_name" >&2
    exit 2
    ;;
esac
echo "PASS ($case_name)"
