# shellcheck shell=bash
# A one-node Slurm cluster in a scratch directory, for tests (sourced, not run).
#
#   source tests/cluster/slurm_cluster.sh
#   slurm_up "$scratch"      # munged, slurmctld, slurmd; returns once the node is idle
#   ...                      # sbatch, squeue, scontrol use $SLURM_CONF
#   slurm_down               # stops the three daemons (also safe to call twice or after a
#                            # failed start); call it from an EXIT trap
#
# Needs root and Debian's `slurmctld slurmd slurm-client munge` (launch/install-deps.sh).
# Nothing outside the scratch directory is touched: munged gets its own key, socket, pid and
# log files there (it runs as the munge user, which munged insists on); slurmctld and slurmd
# run as root with their state, spool, pid and log files there, on two free TCP ports of this
# machine. Facts behind the configuration: /work/shared/notes/cluster-facts.md.
#
# Every wait is a poll with a deadline. A daemon that cannot start is a failure (slurm_fail),
# never a skip: the test must not pass without a real Slurm.

# Set by slurm_up; slurm_down uses them.
SLURM_SCRATCH=""
SLURM_PIDS=()
SLURM_NODE=""
# Every process of this cluster can be found again: the daemons and, through slurm_sbatch, every
# job process carry ROUTEMOE_SLURM_TEST=$SLURM_TOKEN in their environment; slurmstepd (which
# slurmd starts with an empty environment) has the scratch directory as its working directory,
# inherited from slurmd. slurm_down's last sweep kills whatever still matches, so nothing
# outlives the test. The daemons run in sessions of their own (setsid), so that a signal to the
# test's process group (ctest, timeout) does not stop them before slurm_down has cancelled the
# jobs.
SLURM_TOKEN="routemoe-slurm-test-$$-$RANDOM"

# sbatch with the cluster's token in the job's environment (use it for every submission).
slurm_sbatch() {
  ROUTEMOE_SLURM_TEST=$SLURM_TOKEN sbatch "$@"
}

# Process ids of this cluster: the token in the environment, or (slurmstepd) the working
# directory inside the scratch directory.
slurm_token_pids() {
  local d cwd
  for d in /proc/[0-9]*; do
    [[ ${d#/proc/} != "$$" ]] || continue
    if { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qx "ROUTEMOE_SLURM_TEST=$SLURM_TOKEN"; then
      echo "${d#/proc/}"
    elif [[ -n $SLURM_SCRATCH ]] && cwd=$(readlink "$d/cwd" 2>/dev/null) &&
      [[ $cwd == "$SLURM_SCRATCH" || $cwd == "$SLURM_SCRATCH"/* ]] &&
      [[ $(cat "$d/comm" 2>/dev/null) == slurmstepd ]]; then
      echo "${d#/proc/}"
    fi
  done
  return 0
}

# Polls `cmd...` every 0.2 s until it succeeds or `secs` pass. Returns 1 on timeout.
slurm_poll() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

slurm_fail() {
  echo "FAIL (slurm cluster): $*" >&2
  local f
  for f in "$SLURM_SCRATCH"/log/*.log; do
    [[ -f $f ]] || continue
    echo "---- $f (last 15 lines) ----" >&2
    tail -n 15 "$f" >&2
  done
  return 1
}

# A TCP port that nothing listens on (from a range rarely used by services).
slurm_free_port() {
  local p tries=0
  while ((tries++ < 200)); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

slurm_write_conf() {
  local dir=$1 ctld_port=$2 slurmd_port=$3
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 / 2 }' /proc/meminfo)
  cat >"$dir/slurm.conf" <<EOF
# One-node test cluster (tests/cluster/slurm_cluster.sh). Written for this run only.
ClusterName=routemoe-test
SlurmctldHost=$SLURM_NODE
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
# Finished jobs stay visible to scontrol for an hour (there is no accounting database).
MinJobAge=3600
# The grace between SIGTERM and SIGKILL at scancel, a time limit or a requeue.
KillWait=30
InactiveLimit=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$SLURM_NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=$SLURM_NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

slurm_node_idle() {
  sinfo -h -n "$SLURM_NODE" -o '%t' 2>/dev/null | grep -qx 'idle'
}

slurm_up() {
  SLURM_SCRATCH=$1
  SLURM_PIDS=()
  [[ $(id -u) -eq 0 ]] || { slurm_fail "needs root (slurmd runs as root; munged as munge)"; return 1; }
  local exe
  for exe in munged munge unmunge slurmctld slurmd sbatch scontrol squeue sinfo scancel; do
    command -v "$exe" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$exe" >/dev/null 2>&1 ||
      { slurm_fail "$exe not found: install slurmctld slurmd slurm-client munge (launch/install-deps.sh)"; return 1; }
  done
  id munge >/dev/null 2>&1 || { slurm_fail "no munge user (install the munge package)"; return 1; }
  export PATH=$PATH:/usr/sbin
  SLURM_NODE=$(hostname -s)
  local dir=$SLURM_SCRATCH
  mkdir -p "$dir"/{state,spool,run,log,munge}
  chmod 0755 "$dir"
  chown munge:munge "$dir/munge"
  chmod 0755 "$dir/munge"  # munged wants the socket directory searchable by all

  # munged, as the munge user, with a key of its own.
  local as_munge=(setpriv --reuid=munge --regid=munge --init-groups)
  "${as_munge[@]}" test -w "$dir/munge" ||
    { slurm_fail "the munge user cannot reach $dir/munge (a parent directory is not searchable)"; return 1; }
  "${as_munge[@]}" mungekey --create --keyfile="$dir/munge/munge.key" ||
    { slurm_fail "mungekey could not create a key"; return 1; }
  ROUTEMOE_SLURM_TEST=$SLURM_TOKEN setsid "${as_munge[@]}" munged --foreground --socket="$dir/munge/munge.socket" \
    --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
    --seed-file="$dir/munge/munged.seed" --log-file="$dir/munge/munged.log" \
    >"$dir/log/munged.log" 2>&1 &
  SLURM_PIDS+=($!)
  _munge_ok() { munge -n -S "$dir/munge/munge.socket" 2>/dev/null | unmunge -S "$dir/munge/munge.socket" >/dev/null 2>&1; }
  slurm_poll 20 _munge_ok || { slurm_fail "munged did not answer within 20 s"; return 1; }

  local ctld_port slurmd_port
  if ! ctld_port=$(slurm_free_port) || ! slurmd_port=$(slurm_free_port); then
    slurm_fail "no free TCP port"
    return 1
  fi
  [[ $ctld_port != "$slurmd_port" ]] || slurmd_port=$((ctld_port + 1))
  slurm_write_conf "$dir" "$ctld_port" "$slurmd_port"
  export SLURM_CONF=$dir/slurm.conf

  (cd "$dir" && ROUTEMOE_SLURM_TEST=$SLURM_TOKEN exec setsid slurmctld -D -i -f "$SLURM_CONF") \
    >"$dir/log/slurmctld.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurm_poll 30 scontrol ping >/dev/null 2>&1 ||
    { slurm_fail "slurmctld did not answer within 30 s"; return 1; }
  (cd "$dir" && ROUTEMOE_SLURM_TEST=$SLURM_TOKEN exec setsid slurmd -D -N "$SLURM_NODE" -f "$SLURM_CONF") \
    >"$dir/log/slurmd.out" 2>&1 &
  SLURM_PIDS+=($!)
  slurm_poll 60 slurm_node_idle ||
    { slurm_fail "node $SLURM_NODE not idle within 60 s: $(sinfo -h -N -o '%N %t %E' 2>&1)"; return 1; }
  echo "slurm: one-node cluster up ($SLURM_NODE, $(nproc) CPUs, ports $ctld_port/$slurmd_port, $dir)"
}

slurm_no_jobs() {
  [[ -z $(timeout 10 squeue -h -t RUNNING,COMPLETING,PENDING,CONFIGURING -o '%i' 2>/dev/null) ]]
}

# Stops what slurm_up started: first every job (killed, so no rank is left behind), then
# slurmd, slurmctld and munged (SIGTERM, then SIGKILL after 10 s), then any process of the
# cluster that is still there (a slurmstepd or a rank that outlived its daemon). At most about
# a minute, also when a daemon is already gone.
slurm_down() {
  # The clients wait for a controller that is gone: only while slurmctld runs, and bounded.
  if [[ -n ${SLURM_CONF:-} && -f $SLURM_CONF ]] && ((${#SLURM_PIDS[@]} >= 2)) &&
    kill -0 "${SLURM_PIDS[1]}" 2>/dev/null; then
    timeout 10 scancel --quiet --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
    timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
    slurm_poll 15 slurm_no_jobs || echo "slurm_down: jobs still listed after 15 s" >&2
  fi
  local i pid
  for ((i = ${#SLURM_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${SLURM_PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    _gone() { ! kill -0 "$1" 2>/dev/null; }
    slurm_poll 10 _gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SLURM_PIDS=()
  local left
  left=$(slurm_token_pids)
  if [[ -n $left ]]; then
    echo "slurm_down: killing processes left behind: ${left//$'\n'/ }" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
}
