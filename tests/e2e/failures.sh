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
#
# Every wait is a poll for a condition with a deadline; nothing relies on a fixed sleep.
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 <bad_data_rank1|bad_shard_rank1|sigkill_rank> <mpirun> <routemoe> <data dir> <work dir>" >&2
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
      --train.log_every=1 --train.threads=1 --parallel.ep_size=2)

fail() {
  echo "FAIL ($case_name): $*" >&2
  if [[ -f $log ]]; then
    echo "---- mpirun output ----" >&2
    tail -n 40 "$log" >&2
  fi
  exit 1
}

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
    mpi_pid=""
    cleanup() {
      if [[ -n $mpi_pid ]] && kill -0 "$mpi_pid" 2>/dev/null; then
        kill -TERM "$mpi_pid" 2>/dev/null || true
      fi
    }
    trap cleanup EXIT
    # Far more steps than the test lasts: the run only ends because a rank is killed.
    "$mpirun" --oversubscribe -np 2 "$bin" train "${tiny[@]}" --train.steps=1000000 \
      --train.eval_every=0 --data.path="$data" --train.out_dir="$out/run" >"$log" 2>&1 &
    mpi_pid=$!

    # Wait until training runs: a step recorded in metrics.jsonl (flushed every step).
    deadline=$((SECONDS + 60))
    until [[ -s $out/run/metrics.jsonl ]]; do
      kill -0 "$mpi_pid" 2>/dev/null || fail "mpirun ended before training started"
      ((SECONDS < deadline)) || fail "no training step within 60 s"
      sleep 0.1
    done

    # The rank processes are mpirun's children; pick them by OMPI_COMM_WORLD_RANK.
    victim=""
    ranks=()
    for pid in $(pgrep -P "$mpi_pid"); do
      r=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
      [[ -n $r ]] || continue
      ranks+=("$pid")
      [[ $r == 1 ]] && victim=$pid
    done
    [[ ${#ranks[@]} -eq 2 ]] || fail "expected 2 rank processes under mpirun $mpi_pid, found ${#ranks[@]}"
    [[ -n $victim ]] || fail "no process with OMPI_COMM_WORLD_RANK=1 under mpirun $mpi_pid"

    steps=$(wc -l <"$out/run/metrics.jsonl")
    kill -KILL "$victim"
    killed_at=$SECONDS
    deadline=$((SECONDS + 60))
    while kill -0 "$mpi_pid" 2>/dev/null; do
      ((SECONDS < deadline)) || fail "mpirun still running 60 s after SIGKILL of rank 1"
      sleep 0.1
    done
    rc=0
    wait "$mpi_pid" || rc=$?
    mpi_pid=""
    [[ $rc -ne 0 ]] || fail "mpirun exited 0 although rank 1 was killed"

    # No rank may outlive mpirun.
    deadline=$((SECONDS + 10))
    for pid in "${ranks[@]}"; do
      while kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid" 2>/dev/null) != Z* ]]; do
        ((SECONDS < deadline)) || fail "rank process $pid outlived mpirun"
        sleep 0.1
      done
    done
    echo "ok ($case_name): rank 1 (pid $victim) SIGKILLed after $steps step(s);" \
      "mpirun exit $rc within $((SECONDS - killed_at)) s; no rank left"
    ;;

  *)
    echo "unknown case: $case_name" >&2
    exit 2
    ;;
esac
