#!/usr/bin/env bash
# What a user sees from the command line (issue 13): messages, exit statuses, --help, --version,
# --dry-run, the console lines, metrics.csv and the banner.
#
#   cli.sh <case> <mpirun> <routemoe> <data dir> <work dir>
#
# Cases:
#   usage        `routemoe trian` suggests train; `routemoe` alone names the commands; neither
#                says "A subcommand is required"; an unknown option suggests the closest one;
#                every one ends with exit status 2 (docs/architecture.md, "Exit statuses").
#   user_errors  configuration and data mistakes print one line without a source path or C++
#                condition and exit 2; --verbose adds the location; a misspelt key, seq_len
#                longer than probe_tokens, an unterminated section header and a headerless .bin
#                each say what to change.
#   mpi_once     the same mistakes under `mpirun -np 3` are printed once (not three times), with
#                exit status 2 and no "MPI_ABORT" message.
#   help_version --help lists examples, exit statuses and every default; --version names the
#                commit and the built features.
#   dry_run      `train --dry-run` prints the resolved configuration, the parameter count, the
#                memory per rank and the time per step, and writes nothing (the run directory
#                does not exist afterwards).
#   console      a short run: the banner names the device, the threads and each block's router;
#                console lines carry a time stamp, "avg loss", ms/step and an ETA; metrics.csv
#                holds the same steps as metrics.jsonl; balance and z-loss are separate; a
#                capacity run reports dropped slots per layer; optim.warmup >= train.steps warns;
#                `inspect` reports the mean top-1 gate (above 1/k), not a mean gate of 1/k;
#                `trace --json DIR/x.json` creates DIR.
#   ep_params    the banner of a 2-rank run with parallel.ep_size = 2 counts every parameter of
#                the model once: the same number as a 1-rank run.
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
log="$out/out.log"

tiny=(--model.d_model=32 --model.n_heads=2 --model.seq_len=32 --model.n_layers=2
      --model.d_ff=64 --model.n_experts=4 --model.top_k=2 --train.batch_size=4
      --train.threads=1 --train.progress=false --checkpoint.probe_tokens=256
      --train.eval_every=0 --data.path="$data")

fail() {
  echo "FAIL ($case_name): $*" >&2
  if [[ -f $log ]]; then
    echo "---- output ----" >&2
    tail -n 40 "$log" >&2
  fi
  exit 1
}

# expect <status> <command...>: runs the command (stdout and stderr to $log) and checks its exit
# status.
expect() {
  local want=$1 rc=0
  shift
  timeout -k 10 120 "$@" >"$log" 2>&1 || rc=$?
  [[ $rc -eq $want ]] || fail "exit status $rc, expected $want: $*"
}

# one_error_line <fixed text>: $log has exactly one "routemoe: ... error" line, it holds the
# text, and it names no source file or C++ condition.
one_error_line() {
  local n line
  n=$(grep -c '^routemoe: .*error' "$log" || true)
  [[ $n -eq 1 ]] || fail "expected one error line, got $n"
  line=$(grep '^routemoe: .*error' "$log")
  [[ $line == *"$1"* ]] || fail "the error does not say '$1': $line"
  if grep -Eq '\.(cpp|h):[0-9]+|rank 0 \(no MPI\)|RM_CHECK|==|!=' <<<"$line"; then
    fail "the error shows developer details: $line"
  fi
  [[ $(wc -l <"$log") -eq 1 ]] || fail "more output than the error line"
}

case $case_name in
  usage)
    expect 2 "$bin" trian
    one_error_line "unknown command 'trian' (did you mean 'train'?)"
    expect 2 "$bin"
    one_error_line "no command given; the commands are train, prepare, eval, trace, inspect"
    if grep -q "A subcommand is required" "$log"; then fail "CLI11's message"; fi
    expect 2 "$bin" train "${tiny[@]}" --model.d_modle=64 --train.steps=1
    one_error_line "unknown option '--model.d_modle' (did you mean --model.d_model?)"
    expect 2 "$bin" inspect
    grep -q "^routemoe: usage error: .*(see routemoe inspect --help)" "$log" ||
      fail "a missing argument is not a usage error"
    ;;

  user_errors)
    expect 2 "$bin" train "${tiny[@]}" --model.d_model=abc --train.out_dir="$out/r"
    one_error_line "config error: --model.d_model: 'abc' is not an integer"
    expect 2 "$bin" --verbose train "${tiny[@]}" --model.d_model=abc --train.out_dir="$out/r"
    grep -Eq '^routemoe: config error on rank 0 .* at .*config\.cpp:[0-9]+' "$log" ||
      fail "--verbose does not name the source location"
    expect 2 "$bin" train "${tiny[@]}" --model.seq_len=100000 --checkpoint.probe_tokens=2048 \
      --train.out_dir="$out/r"
    one_error_line "model.seq_len 100000 is longer than checkpoint.probe_tokens 2048"
    printf '[model\nd_model = 32\n' >"$out/bad.toml"
    expect 2 "$bin" train --config "$out/bad.toml" --train.out_dir="$out/r"
    one_error_line "bad.toml:1"
    if grep -q "unknown" "$log"; then fail "an unterminated header reads as an unknown key"; fi
    mkdir -p "$out/nano"
    head -c 4096 /dev/urandom >"$out/nano/train.bin"
    cp "$out/nano/train.bin" "$out/nano/val.bin"
    expect 2 "$bin" train "${tiny[@]}" --data.path="$out/nano/{split}.bin" --train.out_dir="$out/r"
    one_error_line "set data.headerless = true"
    [[ ! -e $out/r ]] || fail "the run directory was created although the data was refused"
    ;;

  mpi_once)
    expect 2 "$mpirun" --oversubscribe -np 3 "$bin" train "${tiny[@]}" --model.d_model=abc \
      --parallel.ep_size=1 --train.batch_size=6 --train.out_dir="$out/r"
    n=$(grep -c '^routemoe: config error' "$log" || true)
    [[ $n -eq 1 ]] || fail "the error was printed $n times by 3 ranks"
    if grep -q MPI_ABORT "$log"; then fail "the ranks aborted"; fi
    expect 2 "$mpirun" --oversubscribe -np 3 "$bin" train "${tiny[@]}" --data.path=/nonexistent \
      --parallel.ep_size=1 --train.batch_size=6 --train.out_dir="$out/r2"
    n=$(grep -c '^routemoe: data error: /nonexistent' "$log" || true)
    [[ $n -eq 1 ]] || fail "the data error was printed $n times by 3 ranks"
    if grep -q MPI_ABORT "$log"; then fail "the ranks aborted"; fi
    ;;

  help_version)
    expect 0 "$bin" --help
    grep -q "^Examples:" "$log" || fail "--help has no examples"
    grep -q "Exit statuses: 0 success; 1 internal error" "$log" || fail "--help has no exit statuses"
    grep -q "75 stopped by a stop signal" "$log" || fail "--help does not list exit status 75"
    expect 0 "$bin" train --help
    for key in --train.steps --model.d_model --optim.lr --parallel.timeout_s --data.path; do
      grep -E -- "$key [A-Z]+=[^ ]+" "$log" >/dev/null || fail "$key shows no default"
    done
    grep -q -- "--dry-run" "$log" || fail "train --help does not list --dry-run"
    expect 0 "$bin" --version
    grep -Eq '^routemoe [0-9]+\.[0-9]+\.[0-9]+ \(commit [0-9a-f]{7,}|unknown\)' "$log" ||
      fail "--version names no commit"
    grep -Eq '^built with: CUDA (yes|no), NCCL (yes|no), parallel HDF5 (yes|no)$' "$log" ||
      fail "--version names no features"
    ;;

  dry_run)
    expect 0 "$bin" train "${tiny[@]}" --train.steps=20 --train.out_dir="$out/run" --dry-run
    [[ ! -e $out/run ]] || fail "--dry-run created the run directory"
    grep -q "^\[model\]" "$log" || fail "no resolved configuration"
    grep -q "^d_model = 32$" "$log" || fail "the resolved configuration lacks d_model = 32"
    grep -Eq "^parameters: [0-9]+ \([0-9]+ dense on every rank, [0-9]+ in experts\)" "$log" ||
      fail "no parameter count"
    grep -q "^memory per rank (estimate): " "$log" || fail "no memory estimate"
    grep -Eq "^time per step: [0-9.]+ ms, measured on one training step" "$log" ||
      fail "no time per step"
    expect 2 "$bin" train "${tiny[@]}" --train.out_dir="$out/run" --dry-run --data.path=/nonexistent
    one_error_line "/nonexistent"
    [[ ! -e $out/run ]] || fail "a failed --dry-run created the run directory"
    ;;

  console)
    expect 0 "$bin" train "${tiny[@]}" --train.steps=6 --train.log_every=2 --optim.warmup=10 \
      --model.capacity_factor=1.0 --checkpoint.every=6 --model.moe_every=2 --train.out_dir="$out/run"
    grep -q "^device: cpu, 1 thread(s) per rank$" "$log" || fail "the banner names no device"
    grep -q "^routers: block 1: topk, " "$log" || fail "the banner does not name block 1's router"
    grep -q "^routemoe: warning: optim.warmup 10 >= train.steps 6" "$log" ||
      fail "no warning for optim.warmup >= train.steps"
    line=$(grep -E '^[0-9]{2}:[0-9]{2}:[0-9]{2} step +6/6 ' "$log") || fail "no time-stamped line"
    for part in "avg loss " " bal " " z " " ms/step " " ETA 0s"; do
      [[ $line == *"$part"* ]] || fail "the console line lacks '$part': $line"
    done
    jsonl=$out/run/metrics.jsonl
    csv=$out/run/metrics.csv
    [[ -f $csv ]] || fail "no metrics.csv"
    [[ $(($(wc -l <"$csv") - 1)) -eq $(wc -l <"$jsonl") ]] || fail "metrics.csv rows != jsonl lines"
    head -n 1 "$csv" | grep -q "^step,epoch,loss,ce_loss,aux_loss,balance_loss,z_loss," ||
      fail "metrics.csv header: $(head -n 1 "$csv")"
    diff <(grep -o '^{"step": [0-9]*' "$jsonl" | grep -o '[0-9]*$') <(tail -n +2 "$csv" | cut -d, -f1) ||
      fail "metrics.csv steps differ from metrics.jsonl"
    grep -Eq '"z_loss": [0-9.e-]+, ' "$jsonl" || fail "no z_loss in metrics.jsonl"
    grep -Eq '"dropped": \[[0-9]+\], "dropped_frac": \[[0-9.]+\]' "$jsonl" ||
      fail "no dropped slots per layer in metrics.jsonl"
    # trace --json into a directory that does not exist yet creates it (as --csv and --svg do).
    expect 0 "$bin" trace "$out/run" --json "$out/new/dir/t.json"
    [[ -s $out/new/dir/t.json ]] || fail "trace --json did not create its directory"
    ckpt=$(ls "$out/run/checkpoints/"ckpt_*.h5 | tail -n 1)
    expect 0 "$bin" inspect "$ckpt"
    gate=$(grep -o 'mean top-1 gate [0-9.]*' "$log" | head -n 1 | awk '{print $4}')
    [[ -n $gate ]] || fail "inspect reports no mean top-1 gate"
    awk -v g="$gate" 'BEGIN { exit !(g > 0.5 && g <= 1.0) }' ||
      fail "mean top-1 gate $gate is not in (1/k, 1] for k = 2"
    ;;

  ep_params)
    expect 0 "$bin" train "${tiny[@]}" --train.steps=1 --train.out_dir="$out/one"
    one=$(grep -o '^routemoe train: [0-9]* parameters' "$log")
    expect 0 "$mpirun" --oversubscribe -np 2 "$bin" train "${tiny[@]}" --train.steps=1 \
      --parallel.ep_size=2 --train.out_dir="$out/two"
    two=$(grep -o '^routemoe train: [0-9]* parameters' "$log")
    [[ -n $one && $one == "$two" ]] || fail "1 rank: '$one', 2 ranks with ep 2: '$two'"
    ;;

  *)
    fail "unknown case"
    ;;
esac
echo "ok ($case_name)"
