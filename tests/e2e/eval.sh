#!/usr/bin/env bash
# `routemoe eval` and `routemoe prepare` end to end (docs/evaluation.md, docs/data.md).
#
#   eval.sh <case> <mpirun> <routemoe> <data dir> <work dir>
#
# Cases:
#   fixture    trains the two runs the other cases evaluate, on 2 ranks (ep 2), 20 steps, a
#              checkpoint and a validation pass (4 batches) every 10 steps:
#                A: routers topk,ac, dropless (capacity_factor 0);
#                B: router topk, capacity_factor 0.5 (half of the routed slots are dropped).
#   logged     every checkpoint of A and B evaluated on 1 rank with the batches train used
#              (--batches 4; --capacity train) gives the val_loss train logged at that step;
#              for A (trained dropless) so does the default (dropless). The logged value is
#              printed with 6 decimals, so the bound is half a unit there (5e-7) plus 1e-7 for
#              the different thread count per rank (kernels split some sums by thread; measured
#              1.4e-9 relative). Controls that the check can fail: B evaluated dropless, and A
#              with all 8 rows of a batch in one forward pass (--micro-batch 8: the ac router's
#              statistics then come from other token groups than in train's validation), must
#              both differ from the logged value by more than the bound.
#   ranks      the final checkpoints of A (dropless) and B (--capacity train) evaluated on 1, 2
#              and 4 ranks, one thread per rank, over 30 val batches: data parallel (the
#              default), the JSON losses (17 significant digits) must be identical; with expert
#              parallelism (A: 2 ranks ep 2, 4 ranks ep 4; B: 4 ranks ep 2) equal within 1e-6
#              relative.
#   errors     one line on stderr and exit code 1 for: a missing path, a directory without
#              checkpoints, a file that is not HDF5, a truncated checkpoint, a trace file, a
#              missing split, a split too small for one batch, a bad --batches, a --micro-batch
#              that does not divide the batch, an unwritable --json.
#   prepare    the CLI: a directory and a file prepared with a test split; input with invalid
#              UTF-8 gives a warning on stderr naming the count and the first offset (exit 0);
#              fractions too small for the probe set give one line naming the numbers (exit 1);
#              --corrupt word-swap twice with one seed gives identical shards, another seed
#              other shards; eval of A on the corrupted val split runs and differs from clean.
#
# Every wait is a command with a deadline; nothing relies on a fixed sleep.
set -euo pipefail

if [[ $# -ne 5 ]]; then
  echo "usage: $0 <fixture|logged|ranks|errors|prepare> <mpirun> <routemoe> <data dir> <work dir>" >&2
  exit 2
fi
case_name=$1
mpirun=$2
bin=$3
data=$4
work=$5

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
runs="$work/runs"  # written by the fixture, read by the other cases
out="$work/$case_name"
rm -rf "$out"
mkdir -p "$out"

fail() {
  echo "FAIL ($case_name): $*" >&2
  exit 1
}

tiny=(--model.vocab_size=256 --model.seq_len=32 --model.d_model=32 --model.n_heads=2
      --model.n_layers=2 --model.d_ff=48 --model.n_experts=4 --model.top_k=2
      --optim.lr=3e-3 --optim.warmup=2 --train.batch_size=8 --train.steps=20
      --train.eval_every=10 --train.eval_batches=4 --train.log_every=10 --train.threads=1
      --train.progress=false --checkpoint.every=10 --checkpoint.probe_tokens=256
      --parallel.ep_size=2 --data.path="$data")

# run_eval <np> <json> <args...>: routemoe eval (np 0: without mpirun), output to $out/eval.log.
run_eval() {
  local np=$1 json=$2
  shift 2
  local rc=0
  if [[ $np -eq 0 ]]; then
    timeout -k 10 120 "$bin" eval "$@" --json "$json" >"$out/eval.log" 2>&1 || rc=$?
  else
    timeout -k 10 120 "$mpirun" -np "$np" --oversubscribe "$bin" eval "$@" --json "$json" \
      >"$out/eval.log" 2>&1 || rc=$?
  fi
  [[ $rc -eq 0 ]] || { cat "$out/eval.log" >&2; fail "eval $* ($np ranks) exited $rc"; }
}

# json_field <file> <key>: the number after "key": in a one-line JSON document.
json_field() { sed -E -n "s/.*\"$2\": (-?[0-9.eE+-]+|null).*/\1/p" "$1"; }

# logged_val <run> <steps done>: the val_loss metrics.jsonl logged after that many steps.
logged_val() {
  sed -E -n "s/^\{\"step\": $(($2 - 1)), \"val_loss\": ([0-9.]+)\}$/\1/p" "$1/metrics.jsonl"
}

# near <a> <b> <bound>: |a - b| <= bound.
near() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }

# expect_error <label> <pattern> <command...>: exit code 1, exactly one stderr line matching the
# extended regex <pattern>.
expect_error() {
  local label=$1 pattern=$2
  shift 2
  local rc=0
  timeout -k 5 60 "$@" >"$out/stdout.txt" 2>"$out/stderr.txt" || rc=$?
  local lines msg
  lines=$(wc -l <"$out/stderr.txt")
  msg=$(head -n 1 "$out/stderr.txt")
  [[ $rc -eq 1 ]] || fail "$label: exit code $rc (expected 1); stderr: $(cat "$out/stderr.txt")"
  [[ $lines -eq 1 ]] || fail "$label: $lines stderr lines (expected 1): $(cat "$out/stderr.txt")"
  grep -Eq -- "$pattern" <<<"$msg" || fail "$label: the message does not match /$pattern/: $msg"
  echo "ok $label: $msg"
}

case $case_name in
  fixture)
    rm -rf "$runs"
    mkdir -p "$runs"
    for spec in "A --model.routers=topk,ac" "B --model.routers=topk --model.capacity_factor=0.5"; do
      read -r name flags <<<"$spec"
      rc=0
      # shellcheck disable=SC2086
      timeout -k 10 180 "$mpirun" -np 2 --oversubscribe "$bin" train "${tiny[@]}" $flags \
        --train.out_dir="$runs/$name" >"$runs/$name.log" 2>&1 || rc=$?
      [[ $rc -eq 0 ]] || { tail -n 20 "$runs/$name.log" >&2; fail "training run $name exited $rc"; }
      for s in 10 20; do
        [[ -f $runs/$name/checkpoints/ckpt_000000$s.h5 ]] || fail "run $name has no step-$s checkpoint"
        [[ -n $(logged_val "$runs/$name" $s) ]] || fail "run $name logged no val_loss at step $s"
      done
    done
    echo "ok fixture: runs A and B in $runs"
    ;;

  logged)
    bound=6e-7
    for name in A B; do
      for s in 10 20; do
        ckpt=$runs/$name/checkpoints/ckpt_000000$s.h5
        want=$(logged_val "$runs/$name" $s)
        run_eval 0 "$out/e.json" "$ckpt" --batches 4 --capacity train
        got=$(json_field "$out/e.json" loss)
        near "$got" "$want" $bound || fail "$name step $s --capacity train: eval $got, logged $want"
        echo "ok $name step $s --capacity train: eval $got, logged $want"
        if [[ $name == A ]]; then
          run_eval 0 "$out/e.json" "$ckpt" --batches 4
          got=$(json_field "$out/e.json" loss)
          near "$got" "$want" $bound || fail "A step $s dropless: eval $got, logged $want"
          grep -q "dropless: every routed slot kept" "$out/eval.log" || fail "no dropless line"
          echo "ok A step $s dropless: eval $got, logged $want"
        fi
      done
    done
    # Controls: the same comparison must fail where the evaluation differs from train's.
    want=$(logged_val "$runs/B" 20)
    run_eval 0 "$out/e.json" "$runs/B" --batches 4
    got=$(json_field "$out/e.json" loss)
    ! near "$got" "$want" $bound || fail "control: B dropless ($got) equals the logged $want"
    echo "ok control: B dropless $got differs from the logged (capacity 0.5) $want"
    want=$(logged_val "$runs/A" 20)
    run_eval 0 "$out/e.json" "$runs/A" --batches 4 --micro-batch 8
    got=$(json_field "$out/e.json" loss)
    ! near "$got" "$want" $bound || fail "control: A --micro-batch 8 ($got) equals the logged $want"
    echo "ok control: A with 8 rows per forward $got differs from the logged $want"
    ;;

  ranks)
    # Data parallel (the default ep_size 1): every forward pass is the same computation on any
    # rank count, so the losses must be identical. Under expert parallelism the expert GEMMs
    # take tokens of several ranks at once (other matrix shapes, other rounding in BLAS):
    # measured 2.6e-10 relative; the bound 1e-6 relative (8 fp32 ulps of the mean) is far below
    # what a wrongly loaded expert slice or a lost micro-batch does (> 1e-3).
    for spec in "A dropless 0/1,2/1,4/1,2/2,4/4" "B train 0/1,4/1,4/2"; do
      read -r name capacity layouts <<<"$spec"
      ref=""
      for layout in ${layouts//,/ }; do
        layout=${layout/\// }
        read -r np ep <<<"$layout"
        run_eval "$np" "$out/e.json" "$runs/$name" --capacity "$capacity" --threads 1 --ep-size "$ep" \
          --batches 30
        got=$(json_field "$out/e.json" loss)
        ranks=$(json_field "$out/e.json" ranks)
        [[ -n $got && $got != null ]] || fail "$name: no loss in $(cat "$out/e.json")"
        [[ -n $ref ]] || ref=$got
        if [[ $ep -eq 1 ]]; then
          [[ $got == "$ref" ]] || fail "$name on $ranks ranks: loss $got, 1 rank: $ref"
        else
          near "$got" "$ref" "$(awk -v r="$ref" 'BEGIN { print 1e-6 * r }')" ||
            fail "$name on $ranks ranks, ep_size $ep: loss $got, 1 rank: $ref"
        fi
        echo "ok $name --capacity $capacity on $ranks rank(s), ep_size $ep: $got"
      done
    done
    ;;

  errors)
    A=$runs/A
    expect_error "missing path" "$out/nope: no such checkpoint file or run directory" \
      "$bin" eval "$out/nope"
    mkdir -p "$out/empty_run"
    expect_error "no checkpoint" "empty_run: no checkpoint \(ckpt_\*\.h5\)" \
      "$bin" eval "$out/empty_run"
    printf 'not hdf5' >"$out/text.h5"
    expect_error "not HDF5" "text\.h5: " "$bin" eval "$out/text.h5"
    head -c 4000 "$A/checkpoints/ckpt_00000020.h5" >"$out/short.h5"
    expect_error "truncated" "short\.h5: " "$bin" eval "$out/short.h5"
    expect_error "a trace" "trace\.h5: not a routemoe checkpoint \(it is a routemoe trace\)" \
      "$bin" eval "$A/trace.h5"
    expect_error "missing split" "split 'test'" "$bin" eval "$A" --split test
    mkdir -p "$out/small"
    printf 'x%.0s' {1..100} >"$out/small/val.txt"
    "$bin" prepare "$out/small/val.txt" --out "$out/small/data" --val-fraction 0.5 \
      --seq-len 0 --probe-tokens 0 >/dev/null
    expect_error "too small" "fewer than one eval batch" "$bin" eval "$A" --data "$out/small/data"
    expect_error "bad --batches" "--batches 'some' must be 'all' or a positive integer" \
      "$bin" eval "$A" --batches some
    expect_error "bad --micro-batch" "micro-batch of 3 rows must divide the batch of 8 rows" \
      "$bin" eval "$A" --micro-batch 3
    expect_error "unwritable --json" "cannot write $out/no/such/dir/e.json" \
      "$bin" eval "$A" --batches 1 --json "$out/no/such/dir/e.json"
    ;;

  prepare)
    mkdir -p "$out/corpus/part"
    src=$(dirname "$0")/../../examples/data/opticks.txt
    head -c 200000 "$src" >"$out/corpus/1.txt"
    tail -c 200000 "$src" >"$out/corpus/part/2.txt"
    printf 'ok text \xff\xfe and \xc3( more text\n' >"$out/latin1.txt"
    rc=0
    "$bin" prepare "$out/corpus" "$out/latin1.txt" --out "$out/p" --val-fraction 0.1 \
      --test-fraction 0.05 --seq-len 32 --batch-size 8 --probe-tokens 256 \
      >"$out/prep.txt" 2>"$out/prep.err" || rc=$?
    [[ $rc -eq 0 ]] || fail "prepare exited $rc: $(cat "$out/prep.err")"
    grep -q "^prepare: warning: $out/latin1.txt: not valid UTF-8: 3 invalid byte sequence(s), the first at byte offset 8" \
      "$out/prep.err" || fail "no UTF-8 warning on stderr: $(cat "$out/prep.err")"
    grep -q "3 document(s)" "$out/prep.txt" || fail "not 3 documents: $(cat "$out/prep.txt")"
    for s in train val test; do [[ -f $out/p/${s}_000000.bin ]] || fail "no $s shard"; done
    echo "ok prepare: $(tr '\n' ' ' <"$out/prep.txt")"
    expect_error "fractions too small" \
      "--val-fraction 0.001 gives the val split [0-9]+ of [0-9]+ tokens, fewer than the 2049 it needs .*use --val-fraction 0\.00[0-9]+ or more" \
      "$bin" prepare "$out/corpus" --out "$out/q" --val-fraction 0.001
    [[ ! -e $out/q ]] || fail "the refused prepare created $out/q"
    # Corruption: same seed, same shards; another seed, other shards.
    for spec in "ws1 1" "ws1b 1" "ws2 2"; do
      read -r dir seed <<<"$spec"
      "$bin" prepare --corrupt word-swap --from "$out/p" --out "$out/$dir" --seed "$seed" \
        >"$out/$dir.txt" || fail "prepare --corrupt (seed $seed) failed"
    done
    cmp -s "$out/ws1/test_000000.bin" "$out/ws1b/test_000000.bin" || fail "same seed, other shards"
    ! cmp -s "$out/ws1/test_000000.bin" "$out/ws2/test_000000.bin" || fail "seeds 1 and 2 agree"
    grep -q '"recipe":"word-swap","rate":0.025,"seed":2' "$out/ws2/meta.json" ||
      fail "recipe not in meta.json: $(cat "$out/ws2/meta.json")"
    echo "ok corrupt: $(tr '\n' ' ' <"$out/ws1.txt")"
    # eval of run A on the corrupted val split of the shipped text.
    "$bin" prepare --corrupt word-swap --from "$data" --out "$out/opticks_ws" --splits val \
      >/dev/null || fail "prepare --corrupt of $data failed"
    run_eval 0 "$out/clean.json" "$runs/A" --batches 8
    run_eval 0 "$out/ws.json" "$runs/A" --batches 8 --data "$out/opticks_ws"
    clean=$(json_field "$out/clean.json" loss)
    bad=$(json_field "$out/ws.json" loss)
    [[ $clean != "$bad" ]] || fail "corrupted and clean val give the same loss $clean"
    [[ $(json_field "$out/ws.json" bits_per_byte) != null ]] || fail "no bits per byte"
    echo "ok eval on corrupted val: $bad nats/token (clean $clean)"
    ;;

  *)
    fail "unknown case"
    ;;
esac
echo "PASS ($case_name)"
