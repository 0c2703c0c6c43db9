#!/usr/bin/env bash
# Smoke test of the `routemoe bench` commands (framework/bench): each runs once with tiny sizes,
# and its output must follow the conventions tools rely on (docs/architecture.md, "Conventions"): one summary
# line per case, `bench <name> <key>=<case> ...`, with each figure and its unit and, where there
# is a comparison, `ratio=<r> (<a>/<b>...)`; the engine's load line last; a valid --json file.
# The figures themselves are not checked (this is not a measurement).
#
#   bench_smoke.sh <case> <routemoe> <mpiexec> <work dir>
#   cases: gemm train train_np2 train_reference train_errors alltoall alltoall_overlap checkpoint
#          checkpoint_np2
# Exit 77 (skipped) when the case needs something this machine lacks (torch for
# train_reference).
set -uo pipefail

case_name=$1
routemoe=$2
mpiexec=$3
work=$4/$case_name
rm -rf "$work"
mkdir -p "$work"
python=/usr/bin/python3

fail() {
  echo "bench_smoke $case_name: FAIL: $*" >&2
  exit 1
}

# run <out> <args...>: runs a command with stdout in <out>, stderr in <out>.err; fails on rc != 0.
run() {
  local out=$1
  shift
  "$@" >"$out" 2>"$out.err"
  local rc=$?
  [[ $rc == 0 ]] || { cat "$out" "$out.err" >&2; fail "exit status $rc from: $*"; }
}

# expect_lines <file> <regex> <count>: exactly <count> lines of <file> match the extended regex.
expect_lines() {
  local n
  n=$(grep -cE -- "$2" "$1")
  [[ $n == "$3" ]] || { cat "$1" >&2; fail "expected $3 line(s) matching '$2' in $1, found $n"; }
}

# check_case_lines <file> <bench> <key>: every line `bench <bench> <key>=...` is a case line:
# a case name without spaces, at least one figure with its unit, and any ratio labelled a/b.
check_case_lines() {
  local file=$1 bench=$2 key=$3 line
  while IFS= read -r line; do
    [[ $line =~ ^bench\ $bench\ $key=[^\ ]+\ + ]] || fail "bad case line: $line"
    [[ $line =~ =[0-9.+-]+\ [A-Za-z/%]+ ]] || fail "case line without a figure and unit: $line"
    if [[ $line == *ratio=* ]]; then
      [[ $line =~ ratio=([0-9]+\.[0-9]+|n/a)\ \([a-z_]+/[a-z_]+[^\)]*\) ]] ||
        fail "ratio without a value or an a/b label: $line"
    fi
  done < <(grep -E "^bench $bench $key=" "$file" | grep -v 'overhead vs topk')
}

# check_load_line <file> <bench>: the engine's load report is the last line.
check_load_line() {
  tail -n 1 "$1" | grep -qE "^bench $2 load: other processes used ([0-9]+\.[0-9]+|unknown) cores" ||
    { cat "$1" >&2; fail "the last line is not the load line of bench $2"; }
}

# check_json <file> <bench> <cases>: {"bench": <bench>, ..., "cases": [<cases> objects], ...}.
check_json() {
  [[ -s $1 ]] || fail "--json did not write $1"
  if [[ -x $python ]]; then
    "$python" - "$1" "$2" "$3" <<'EOF' || fail "bad JSON in $1"
import json, sys
path, bench, cases = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = json.load(open(path))
assert d["bench"] == bench, d["bench"]
assert len(d["cases"]) == cases, (len(d["cases"]), cases)
assert "other_cores" in d and "machine_shared" in d
EOF
  else
    grep -q "^{\"bench\": \"$2\"" "$1" || fail "bad JSON in $1"
  fi
}

# check_one_line_error <err file> <pattern>...: a failing command printed exactly one line, which
# contains every pattern.
check_one_line_error() {
  local err=$1
  shift
  [[ $(wc -l <"$err") == 1 ]] || { cat "$err" >&2; fail "expected a one-line error in $err"; }
  for p in "$@"; do
    grep -qF -- "$p" "$err" || { cat "$err" >&2; fail "the error does not say '$p'"; }
  done
}

model=(--seq-len 16 --d 32 --heads 2 --layers 2 --experts 4 --d-ff 64 --vocab 64)
train=("$routemoe" bench train "${model[@]}" --batch 2 --warmup 1 --iters 2 --square 64
       --threads 1)

case $case_name in
  gemm)
    run "$work/out" "$routemoe" bench gemm --square 64 --min-seconds 0 --warmup 1 --iters 1 \
      --threads 1 --json "$work/gemm.json"
    check_case_lines "$work/out" gemm case
    expect_lines "$work/out" '^bench gemm case=[a-z_0-9]+ +m=[0-9]+ n=[0-9]+ k=[0-9]+ batch=[0-9]+ best=[0-9.]+ GFLOP/s median=[0-9.]+ GFLOP/s reps=[0-9]+$' 11
    expect_lines "$work/out" '^bench gemm case=model_shapes +model=[0-9.]+ GFLOP/s ceiling=[0-9.]+ GFLOP/s ratio=[0-9.]+ \(model/ceiling\)$' 1
    check_load_line "$work/out" gemm
    check_json "$work/gemm.json" gemm 11
    ;;
  train)
    run "$work/out" "${train[@]}" --routers topk,similarity --no-reference --json "$work/train.json"
    check_case_lines "$work/out" train router
    expect_lines "$work/out" '^bench train router=(topk|similarity) +ours=[0-9]+ tok/s torch=n/a ratio=n/a \(ours/torch\) gflops=[0-9.]+ .* step ours=[0-9.]+ ms torch=n/a$' 2
    expect_lines "$work/out" '^bench train router=similarity +overhead vs topk = [+-][0-9.]+%' 1
    expect_lines "$work/out" '^bench train ceiling: square 64x64x64 ' 1
    check_load_line "$work/out" train
    check_json "$work/train.json" train 2
    ;;
  train_reference)
    [[ -x $python ]] && "$python" -c 'import torch' 2>/dev/null || {
      echo "bench_smoke train_reference: SKIPPED: no $python with torch"
      exit 77
    }
    run "$work/out" "${train[@]}" --routers topk,ac --python "$python"
    check_case_lines "$work/out" train router
    expect_lines "$work/out" '^bench train torch side: .*bench_step\.py \(torch ' 1
    expect_lines "$work/out" '^bench train router=(topk|ac) +ours=[0-9]+ tok/s torch=[0-9]+ tok/s ratio=[0-9]+\.[0-9]+ \(ours/torch\) .* step ours=[0-9.]+ ms torch=[0-9.]+ ms$' 2
    check_load_line "$work/out" train
    ;;
  train_errors)
    # No python3, a python3 without torch, no bench_step.py: one clear line each, before any
    # timing, naming the way out (--no-reference).
    "${train[@]}" --python "$work/no-such-python3" >"$work/out1" 2>"$work/err1" &&
      fail "a missing python3 did not fail"
    check_one_line_error "$work/err1" "python3 with torch is needed" "--no-reference"
    if [[ -x $python ]]; then
      printf '#!/bin/sh\nexec %s -S "$@"\n' "$python" >"$work/python3-without-torch"
      chmod +x "$work/python3-without-torch"
      "${train[@]}" --python "$work/python3-without-torch" >"$work/out2" 2>"$work/err2" &&
        fail "a python3 without torch did not fail"
      check_one_line_error "$work/err2" "python3 with torch is needed" "torch" "--no-reference"
    fi
    ROUTEMOE_BENCH_STEP="$work/no-such-bench_step.py" "${train[@]}" >"$work/out3" \
      2>"$work/err3" && fail "a missing bench_step.py did not fail"
    check_one_line_error "$work/err3" "ROUTEMOE_BENCH_STEP" "--no-reference"
    grep -q '^bench train router=' "$work/out1" "$work/out3" && fail "timed before failing"
    ;;
  train_np2)
    # Under mpirun: experts sharded over the 2 ranks, gradient reduction and exchange in the
    # profile, no torch side.
    run "$work/out" "$mpiexec" -n 2 --oversubscribe "${train[@]}" --routers topk --ep 2 \
      --profile-steps 1 --json "$work/train.json"
    check_case_lines "$work/out" train router
    expect_lines "$work/out" '^bench train: 2 ranks, ep 2 ' 1
    expect_lines "$work/out" '^bench train router=topk +ours=[0-9]+ tok/s torch=n/a ratio=n/a \(ours/torch\) ' 1
    expect_lines "$work/out" '^  (exchange \(dispatch/combine\)|gradient reduction) +[0-9.]+ ' 2
    expect_lines "$work/out" '^bench train memory router=topk: activation arena peak .* ratio=[0-9.]+ \(peak/bound\)$' 1
    check_load_line "$work/out" train
    check_json "$work/train.json" train 1
    ;;
  alltoall_overlap)
    run "$work/out" "$mpiexec" -n 2 --oversubscribe "$routemoe" bench alltoall --tokens 64 \
      --d 16 --d-ff 32 --allreduce-mib 0.01 --warmup 1 --iters 2 --threads 1 \
      --json "$work/alltoall.json"
    check_case_lines "$work/out" alltoall case
    expect_lines "$work/out" '^bench alltoall case=n64_d16_k2_e8_ff32 ranks=2 overlapped=[0-9.]+ ms blocking=[0-9.]+ ms exchange=[0-9.]+ ms experts=[0-9.]+ ms ratio=[0-9.]+ \(overlapped/serial time\)$' 1
    expect_lines "$work/out" '^bench alltoall case=allreduce_[0-9]+B ranks=2 time=[0-9.]+ ms algbw=[0-9.]+ GB/s$' 1
    check_load_line "$work/out" alltoall
    check_json "$work/alltoall.json" alltoall 2
    ;;
  alltoall)
    "$routemoe" bench alltoall >"$work/out0" 2>"$work/err0" && fail "ran without mpirun"
    check_one_line_error "$work/err0" "needs at least 2 MPI ranks"
    run "$work/out" "$mpiexec" -n 2 --oversubscribe "$routemoe" bench alltoall --tokens 256,64 \
      --d 16 --warmup 1 --iters 3 --threads 1 --json "$work/alltoall.json"
    check_case_lines "$work/out" alltoall case
    # Both ranks share this machine: the exchange goes through shared memory, and the same
    # exchange over messages is timed beside it.
    expect_lines "$work/out" '^bench alltoall case=n(256|64)_d16_k2_e8 ranks=2 transport=shared-memory ours=[0-9.]+ ms bare=[0-9.]+ ms ours=[0-9.]+ GB/s bare=[0-9.]+ GB/s ratio=[0-9.]+ \(ours/bare time\)$' 2
    expect_lines "$work/out" '^  where: plan ' 2
    expect_lines "$work/out" '^  messages: the same exchange as MPI messages \(one per block\) [0-9.]+ ms, messages/bare = [0-9.]+, ours/messages = [0-9.]+$' 2
    check_load_line "$work/out" alltoall
    check_json "$work/alltoall.json" alltoall 2
    ;;
  checkpoint | checkpoint_np2)
    launch=()
    ranks=1
    if [[ $case_name == checkpoint_np2 ]]; then
      launch=("$mpiexec" -n 2 --oversubscribe)
      ranks=2
    fi
    run "$work/out" "${launch[@]}" "$routemoe" bench checkpoint "${model[@]}" --warmup 1 \
      --iters 2 --threads 1 --dir "$work" --json "$work/checkpoint.json"
    check_case_lines "$work/out" checkpoint case
    expect_lines "$work/out" "^bench checkpoint case=d32_l2_e4_ff64 ranks=$ranks ep=$ranks size=[0-9.]+ MiB save=[0-9.]+ ms \([0-9]+ MB/s\) load=[0-9.]+ ms \([0-9]+ MB/s\)$" 1
    expect_lines "$work/out" '^  save: min [0-9.]+ ms, max [0-9.]+ ms; load: min ' 1
    gathered=0  # the gathered-write comparison runs with several ranks and parallel HDF5
    grep -q '^routemoe bench checkpoint: .*parallel HDF5 writes on' "$work/out" && gathered=1
    expect_lines "$work/out" "^bench checkpoint case=d32_l2_e4_ff64_gathered ranks=$ranks ep=$ranks parallel_save=[0-9.]+ ms gathered_save=[0-9.]+ ms \\([0-9]+ MB/s\\) ratio=[0-9.]+ \\(parallel/gathered time\\)$" $gathered
    check_load_line "$work/out" checkpoint
    check_json "$work/checkpoint.json" checkpoint 1
    [[ -e $work/ckpt_00000001.h5 ]] && fail "the checkpoint file was kept without --keep"
    ;;
  *)
    fail "unknown case"
    ;;
esac
echo "bench_smoke $case_name: ok"
