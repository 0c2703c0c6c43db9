#!/usr/bin/env bash
# Training across two hosts: two network namespaces on this machine, joined by a veth pair with
# addresses of their own, stand in for two nodes (design.md section 6; docs/parallelism.md).
#
#   hosts_test.sh <case> <routemoe> <data dir> <source dir>
#
# The run goes through launch/mpirun-train.sh with a host file naming the two namespaces, one
# rank per host (rank 0 on host A, rank 1 on host B), Open MPI's rsh agent set to a script that
# runs the command inside the named namespace (and gives it that host name), and both the
# launch channel (oob) and the MPI traffic (btl self,tcp) restricted to the veth subnet. mpirun
# itself runs inside namespace A: the root namespace has no route to the pair. Only addresses
# inside the two namespaces this test creates are used; the EXIT trap kills whatever still
# runs in them and deletes them (the veth pair goes with them), also on failure.
#
# Cases:
#   equal         the run across the two hosts gives the same losses as the same run (same
#                 config, 2 ranks, ep_size 2) on one host, step for step; running the launcher
#                 again on that run (it has no checkpoint) refuses instead of starting over.
#   kill_resume   SIGKILL of the rank on host B ends the whole job (non-zero, within 60 s, no
#                 process left in either namespace); running the launcher again resumes from
#                 the newest checkpoint and completes, every step in metrics.jsonl once.
#   stop          SIGSTOP of the rank on host B (it stops answering but does not die) ends the
#                 job within parallel.timeout_s + 60 s with a message naming rank 1.
#                 NEEDS routemoe's collective watchdog (parallel.timeout_s).
#
# Tolerance for `equal`: both runs have the same 2 ranks, the same micro-batches and one CPU
# thread per rank; only the transport differs (TCP between namespaces against shared memory
# on one host). Every reduction is over the same 2 ranks, i.e. one fp32 addition per element,
# which is commutative, so any reduction algorithm gives the same bits; the all-to-alls move
# bytes. So no rounding difference can arise, and the losses, gradient norms and expert loads
# are required to be identical as printed (6 decimals). (tests/mpi/train_equiv.cpp needs a
# tolerance because a different rank count changes the order of sums; that is not the case
# here.)
#
# Skips (exit 77) only when network namespaces cannot be created: not root, or the kernel or
# container forbids it.
set -euo pipefail

# A budget of its own, below ctest's TIMEOUT: ctest kills a test that runs over with SIGKILL,
# which no trap survives; `timeout` sends SIGTERM first, and the EXIT trap below still cleans up.
# (ROUTEMOE_CLUSTER_TEST_BUDGET overrides the 200 s.)
if [[ -z ${ROUTEMOE_CLUSTER_TEST_INNER:-} ]]; then
  export ROUTEMOE_CLUSTER_TEST_INNER=1 ROUTEMOE_CLUSTER_TEST_BUDGET=${ROUTEMOE_CLUSTER_TEST_BUDGET:-200}
  exec timeout -k 50 "$ROUTEMOE_CLUSTER_TEST_BUDGET" "$0" "$@"
fi
trap 'echo "hosts_test: stopped by a signal (over the ${ROUTEMOE_CLUSTER_TEST_BUDGET} s budget?)" >&2; exit 124' TERM INT

if [[ $# -ne 4 ]]; then
  echo "usage: $0 <equal|kill_resume|stop> <routemoe> <data dir> <source dir>" >&2
  exit 2
fi
case_name=$1
bin=$(realpath "$2")
data=$(realpath "$3")
src=$(realpath "$4")
launcher=$src/launch/mpirun-train.sh
config=$src/examples/configs/tiny.toml
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ROUTEMOE_BIN=$bin

if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP ($case_name): creating network namespaces needs root"
  exit 77
fi
command -v ip >/dev/null 2>&1 || { echo "FAIL ($case_name): no ip command (install iproute2: launch/install-deps.sh)" >&2; exit 1; }
command -v unshare >/dev/null 2>&1 || { echo "FAIL ($case_name): no unshare (util-linux)" >&2; exit 1; }

# Names unique to this process: two namespaces (the hosts) and the two ends of the veth pair
# (interface names have at most 15 characters). The subnet is private to the two namespaces.
tag="$$"
host_a="rmhost${tag}a"
host_b="rmhost${tag}b"
veth_a="rmv${tag}a"
veth_b="rmv${tag}b"
subnet_prefix="10.213.$((tag % 250))"
subnet="$subnet_prefix.0/24"
work=$(mktemp -d "${TMPDIR:-/tmp}/routemoe-hosts.XXXXXX")
created=()

ns_pids() { ip netns pids "$1" 2>/dev/null || true; }
no_pids_left() { [[ -z $(ns_pids "$host_a")$(ns_pids "$host_b") ]]; }
poll() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
cleanup() {
  local rc=$? ns p
  for ns in "${created[@]}"; do
    for p in $(ns_pids "$ns"); do kill -KILL "$p" 2>/dev/null || true; done
  done
  poll 20 no_pids_left || echo "cleanup: processes still in the namespaces after 20 s" >&2
  for ns in "${created[@]}"; do ip netns delete "$ns" 2>/dev/null || echo "cleanup: could not delete namespace $ns" >&2; done
  ip link delete "$veth_a" 2>/dev/null || true  # only if it never moved into its namespace
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "FAIL ($case_name): $*" >&2
  local f
  for f in "$work"/*/logs/*.log "$work"/*.out; do
    [[ -f $f ]] || continue
    echo "---- $f (last 25 lines) ----" >&2
    tail -n 25 "$f" >&2
  done
  exit 1
}

# --- the two hosts
err=$(ip netns add "$host_a" 2>&1) || {
  if [[ $err == *"Operation not permitted"* || $err == *"Permission denied"* ]]; then
    echo "SKIP ($case_name): network namespaces cannot be created here: $err"
    exit 77
  fi
  fail "ip netns add: $err"
}
created+=("$host_a")
ip netns add "$host_b" || fail "ip netns add $host_b"
created+=("$host_b")
ip link add "$veth_a" type veth peer name "$veth_b" || fail "cannot create a veth pair"
ip link set "$veth_a" netns "$host_a" || fail "cannot move $veth_a into $host_a"
ip link set "$veth_b" netns "$host_b" || fail "cannot move $veth_b into $host_b"
ip -n "$host_a" addr add "$subnet_prefix.1/24" dev "$veth_a"
ip -n "$host_b" addr add "$subnet_prefix.2/24" dev "$veth_b"
for ns in "$host_a" "$host_b"; do ip -n "$ns" link set lo up; done
ip -n "$host_a" link set "$veth_a" up
ip -n "$host_b" link set "$veth_b" up
echo "hosts: $host_a ($subnet_prefix.1) and $host_b ($subnet_prefix.2), veth $veth_a-$veth_b"

# Open MPI starts its daemon on each host with `<agent> <host> <command...>`, as with ssh:
# run the command line with sh inside the host's namespace, with the host's name.
cat >"$work/agent" <<'EOF'
#!/bin/sh
host=$1
shift
exec ip netns exec "$host" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$host" "$*"
EOF
chmod +x "$work/agent"
printf '%s slots=1\n%s slots=1\n' "$host_a" "$host_b" >"$work/hosts"

tiny=(--model.d_model=32 --model.n_heads=2 --model.seq_len=32 --model.n_layers=2
  --model.d_ff=64 --model.n_experts=4 --model.top_k=2 --train.batch_size=4
  --parallel.ep_size=2 --train.eval_every=0 --train.log_every=10 --train.progress=false
  --data.path="$data")
# mpi_yield_when_idle: a rank waiting for a message yields its core; with one slot per host Open
# MPI would otherwise busy-poll, and on a loaded 2-core machine the ranks starve each other
# (measured: 20 steps in 9.7 s busy-polling, 0.8 s yielding).
# shellcheck disable=SC2054  # "self,tcp" is one value
across=(--hostfile "$work/hosts" --ranks-per-node 1 --threads 1
  --mca plm_rsh_agent "$work/agent" --mca btl self,tcp --mca mpi_yield_when_idle 1
  --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet")

# train_across <run dir> <overrides...>: the launcher inside host A, output to <run dir>.out.
train_across() {
  local run=$1
  shift
  ip netns exec "$host_a" "$launcher" "${across[@]}" --run-dir "$run" "$config" "${tiny[@]}" "$@"
}

# Fields that must agree between the runs: everything of a training line but the throughput.
train_lines() { grep '"loss": ' "$1/metrics.jsonl" | sed 's/"tokens_per_s": [0-9.e+-]*, //'; }
train_steps() { sed -n 's/^{"step": \([0-9]*\), .*"loss": .*/\1/p' "$1/metrics.jsonl" 2>/dev/null; }
check_metrics() {
  local run=$1 want=$2 got
  got=$(train_steps "$run")
  [[ $got == "$(seq 0 $((want - 1)))" ]] ||
    fail "$run/metrics.jsonl: steps are not 0..$((want - 1)) each once: $(printf '%s\n' "$got" | uniq -c | awk '$1 != 1' | head -n 3 | tr '\n' ' ')"
  echo "ok: $run/metrics.jsonl has steps 0..$((want - 1)), each once"
}
newest_ckpt() {
  find "$1/checkpoints" -maxdepth 1 -name 'ckpt_*.h5' -printf '%f\n' 2>/dev/null | sort -t_ -k2,2n | tail -n 1
}
has_ckpt() { [[ -n $(newest_ckpt "$1") ]]; }
# The routemoe rank running in a namespace.
rank_pid_in() {
  local p
  for p in $(ns_pids "$1"); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == routemoe ]] && { echo "$p"; return 0; }
  done
  return 1
}
steps_at_least() { local n; n=$(train_steps "$1" | wc -l); ((n >= $2)); }

# start_across <run dir> <overrides...>: the launcher in the background; sets launcher_pid.
start_across() {
  local run=$1
  train_across "$@" >"$run.out" 2>&1 &
  launcher_pid=$!
}
# wait_end <seconds>: until the background launcher ends; sets launcher_rc and took.
wait_end() {
  local secs=$1 start=$SECONDS
  gone() { ! kill -0 "$launcher_pid" 2>/dev/null; }
  poll "$secs" gone || fail "the job did not end within $secs s"
  launcher_rc=0
  wait "$launcher_pid" || launcher_rc=$?
  took=$((SECONDS - start))
}

case $case_name in
  equal)
    steps=(--train.steps=20)
    train_across "$work/across" "${steps[@]}" >"$work/across.out" 2>&1 || fail "the run across two hosts failed"
    grep -q "2 rank(s)" "$work/across.out" || fail "the run across the hosts did not have 2 ranks"
    # The same run on one host (the root namespace, shared memory between the ranks).
    "$launcher" -n 2 --oversubscribe --threads 1 --run-dir "$work/one" "$config" "${tiny[@]}" \
      "${steps[@]}" >"$work/one.out" 2>&1 || fail "the run on one host failed"
    check_metrics "$work/across" 20
    check_metrics "$work/one" 20
    if ! diff <(train_lines "$work/across") <(train_lines "$work/one") >"$work/diff.out"; then
      fail "losses differ between two hosts and one host: $(head -n 4 "$work/diff.out")"
    fi
    echo "ok: 20 steps across two hosts equal the run on one host (losses, gradient norms, loads)"
    train_across "$work/across" "${steps[@]}" >"$work/again.out" 2>&1 &&
      fail "the launcher started again on a run that has metrics but no checkpoint"
    grep -q "has no checkpoint to resume from" "$work/again.out" ||
      fail "running the launcher again on a run without checkpoints did not refuse: $(tail -n 3 "$work/again.out")"
    ;;

  kill_resume)
    run=$work/kill
    ovr=(--train.steps=100 --checkpoint.every=10)
    start_across "$run" "${ovr[@]}"
    poll 120 has_ckpt "$run" || fail "no checkpoint within 120 s"
    victim=$(rank_pid_in "$host_b") || fail "no routemoe rank in namespace $host_b"
    kill -KILL "$victim"
    echo "killed rank pid $victim on host $host_b"
    wait_end 60
    ((launcher_rc != 0)) || fail "the job exited 0 although its rank on host B was killed"
    poll 30 no_pids_left || fail "processes left in the namespaces 30 s after the job ended: $(ns_pids "$host_a") $(ns_pids "$host_b")"
    echo "ok: the job ended $took s after the kill, status $launcher_rc, nothing left running"
    last=$(newest_ckpt "$run")
    s=${last#ckpt_}
    s=$((10#${s%.h5}))
    ((s < 100)) || fail "the run had finished before the kill"
    train_across "$run" "${ovr[@]}" >"$run.resume.out" 2>&1 || fail "the resumed run failed"
    grep -q "^resumed from .*$last at step $s\$" "$run.resume.out" ||
      fail "the launcher did not resume from $last: $(grep -m1 -E 'resum' "$run.resume.out")"
    echo "ok: resumed from $last across the two hosts"
    check_metrics "$run" 100
    ;;

  stop)
    run=$work/stop
    timeout_s=10
    start_across "$run" --train.steps=1000000 --parallel.timeout_s=$timeout_s
    started() { steps_at_least "$run" 3 || ! kill -0 "$launcher_pid" 2>/dev/null; }
    poll 120 started || fail "no training step within 120 s"
    kill -0 "$launcher_pid" 2>/dev/null ||
      fail "the job ended before the rank was stopped (needs routemoe's parallel.timeout_s): $(grep -m1 -iE 'error|not expected' "$run.out")"
    victim=$(rank_pid_in "$host_b") || fail "no routemoe rank in namespace $host_b"
    kill -STOP "$victim"
    echo "stopped rank pid $victim on host $host_b"
    wait_end $((timeout_s + 60))
    ((launcher_rc != 0)) || fail "the job exited 0 although its rank on host B stopped answering"
    grep -iE "rank 1" "$run.out" | grep -qiE "time ?out|timed out|answer|respond" ||
      fail "no message naming rank 1 as the one that stopped answering"
    poll 30 no_pids_left || fail "processes left in the namespaces 30 s after the job ended"
    echo "ok: the job ended $took s after rank 1 stopped (timeout $timeout_s s), status $launcher_rc"
    ;;

  *)
    echo "unknown case $case_name" >&2
    exit 2
    ;;
esac
echo "PASS ($case_name)"
