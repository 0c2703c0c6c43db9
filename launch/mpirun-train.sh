#!/usr/bin/env bash
# `routemoe train` under Open MPI's mpirun, for machines and clusters without Slurm
# (docs/parallelism.md, "mpirun").
#
#   launch/mpirun-train.sh -n 4 examples/configs/quickstart.toml --parallel.ep_size=4
#   launch/mpirun-train.sh --hostfile hosts --ranks-per-node 4 --run-dir runs/big run.toml \
#       --parallel.ep_size=4 -x LD_LIBRARY_PATH --mca btl_tcp_if_include 10.0.0.0/24
#
# Options (before the config file; everything after it goes to `routemoe train` as overrides):
#   -n, --np N             ranks in all (default: hosts in --hostfile x --ranks-per-node)
#   --hostfile FILE        Open MPI host file: one host per line, `slots=N` optional
#   --ranks-per-node N     ranks on each host (mpirun --map-by ppr:N:node); ranks are numbered
#                          host by host, so N a multiple of parallel.ep_size keeps every
#                          expert-parallel group inside one host
#   --run-dir DIR          the run directory (default runs/<config file name>)
#   -x NAME[=VALUE]        pass an environment variable to every rank (repeatable)
#   --mca KEY VALUE        an Open MPI parameter (repeatable)
#   --oversubscribe        allow more ranks than cores
#   --threads N            CPU threads per rank (train.threads; default 0: cores / ranks on host)
#   --dry-run              print the command and exit
# Environment: ROUTEMOE_BIN (default: build/release/routemoe of this repository), MPIRUN
# (default mpirun), ROUTEMOE_PREEMPT_EXIT (see below).
#
# The same run rules as launch/slurm/train.sbatch: the run directory is stable; when its
# checkpoint directory holds a checkpoint the run resumes from the newest one
# (--train.resume=auto), otherwise it starts fresh; a run whose newest checkpoint is at
# train.steps is finished (exit 0). Running the same command again after an interruption
# therefore continues the run.
#
# Signals: the first SIGTERM, SIGINT or SIGUSR1 is passed to the ranks as SIGUSR1 (mpirun
# forwards SIGUSR1 to every rank): they finish the step, write a checkpoint and exit; run the
# command again to continue. A second SIGTERM or SIGINT ends the job at once.
#
# Log: everything (this script's lines and all rank output) is shown and appended to
# <run dir>/logs/mpirun-<date>-<time>-<pid>.log, one file per attempt.
set -euo pipefail

mpi_pid=""
signals=0
on_signal() {
  signals=$((signals + 1))
  if [[ -z $mpi_pid ]]; then
    echo "mpirun-train: signal before the ranks started: not starting them" >&2
    exit 130
  fi
  if ((signals == 1)) || [[ $1 == USR1 ]]; then
    echo "mpirun-train: $(date '+%F %T') SIG$1: asking the ranks for a checkpoint (SIGUSR1); a second SIGTERM ends the job at once"
    kill -USR1 "$mpi_pid" 2>/dev/null || true
  else
    echo "mpirun-train: $(date '+%F %T') SIG$1 again: ending the job"
    kill -TERM "$mpi_pid" 2>/dev/null || true
  fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal USR1' USR1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() {
  awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}
die() {
  echo "mpirun-train: $*" >&2
  exit 2
}

np="" hostfile="" per_node="" run_dir="" threads=0 dry_run=0
mpi_args=()
while [[ $# -gt 0 && $1 == -* ]]; do
  case "$1" in
    -n|--np) [[ $# -ge 2 ]] || usage; np=$2; shift 2 ;;
    --hostfile) [[ $# -ge 2 ]] || usage; hostfile=$2; shift 2 ;;
    --ranks-per-node) [[ $# -ge 2 ]] || usage; per_node=$2; shift 2 ;;
    --run-dir) [[ $# -ge 2 ]] || usage; run_dir=$2; shift 2 ;;
    -x) [[ $# -ge 2 ]] || usage; mpi_args+=(-x "$2"); shift 2 ;;
    --mca) [[ $# -ge 3 ]] || usage; mpi_args+=(--mca "$2" "$3"); shift 3 ;;
    --oversubscribe) mpi_args+=(--oversubscribe); shift ;;
    --threads) [[ $# -ge 2 ]] || usage; threads=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (options go before the config file; see --help)" ;;
  esac
done
[[ $# -ge 1 ]] || usage
config=$1
shift
overrides=("$@")
[[ -f $config ]] || die "no config file $config"
bin=${ROUTEMOE_BIN:-$root/build/release/routemoe}
[[ -x $bin ]] || die "$bin is not an executable (build it, or set ROUTEMOE_BIN)"
[[ -z $np || $np =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive number, got '$np'"
[[ -z $per_node || $per_node =~ ^[1-9][0-9]*$ ]] || die "--ranks-per-node must be a positive number, got '$per_node'"
[[ $threads =~ ^[0-9]+$ ]] || die "--threads must be a number >= 0, got '$threads'"

if [[ -n $hostfile ]]; then
  [[ -f $hostfile ]] || die "no host file $hostfile"
  hosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile" || true)
  ((hosts > 0)) || die "$hostfile names no host"
  mpi_args+=(--hostfile "$hostfile")
  if [[ -z $np && -n $per_node ]]; then np=$((hosts * per_node)); fi
fi
[[ -n $np ]] || die "give -n N (or --hostfile with --ranks-per-node)"
[[ -z $per_node ]] || mpi_args+=(--map-by "ppr:$per_node:node")
[[ $(id -u) -ne 0 ]] || mpi_args+=(--allow-run-as-root)

# The value of --<key>=V or --<key> V among the overrides ("" when absent).
override_value() {
  local key=$1 i
  for ((i = 0; i < ${#overrides[@]}; i++)); do
    case "${overrides[i]}" in
      "--$key="*) echo "${overrides[i]#--"$key"=}"; return ;;
      "--$key") echo "${overrides[i + 1]:-}"; return ;;
    esac
  done
}
has_override() {
  local key=$1 a
  for a in "${overrides[@]}"; do
    [[ $a == "--$key" || $a == "--$key="* ]] && return 0
  done
  return 1
}
# `key = value` of [section] in a TOML file written by routemoe (strings unquoted).
toml_value() {
  local file=$1 section=$2 key=$3
  [[ -f $file ]] || return 0
  awk -v sec="[$section]" -v key="$key" '
    /^[[:space:]]*\[/ { gsub(/[[:space:]]/, ""); in_sec = ($0 == sec); next }
    in_sec {
      line = $0; sub(/#.*$/, "", line)
      n = index(line, "="); if (n == 0) next
      k = substr(line, 1, n - 1); v = substr(line, n + 1)
      gsub(/^[[:space:]]+|[[:space:]]+$/, "", k); gsub(/^[[:space:]]+|[[:space:]]+$/, "", v)
      if (k != key) next
      if (v ~ /^".*"$/ || v ~ /^'\''.*'\''$/) v = substr(v, 2, length(v) - 2)
      print v; exit
    }' "$file"
}
# Newest checkpoint (highest step in its name, ckpt_<step>.h5) of a directory; "" when none.
newest_checkpoint() {
  local dir=$1 name
  [[ -d $dir ]] || return 0
  name=$(find "$dir" -maxdepth 1 -type f -regextype posix-extended -regex '.*/ckpt_[0-9]+\.h5' \
    -printf '%f\n' 2>/dev/null | sort -t_ -k2,2n | tail -n 1)
  [[ -z $name ]] || echo "$dir/$name"
}

if [[ -z $run_dir ]]; then
  run_dir=$(override_value train.out_dir)
  [[ -n $run_dir ]] || run_dir="runs/$(basename "$config" .toml)"
fi
has_override train.out_dir && [[ $(override_value train.out_dir) != "$run_dir" ]] &&
  die "--run-dir $run_dir and --train.out_dir=$(override_value train.out_dir) disagree"

ckpt_dir=$(override_value checkpoint.dir)
[[ -n $ckpt_dir ]] || ckpt_dir=$(toml_value "$run_dir/config.toml" checkpoint dir)
[[ -n $ckpt_dir ]] || ckpt_dir=$(toml_value "$config" checkpoint dir)
[[ -n $ckpt_dir ]] || ckpt_dir="$run_dir/checkpoints"

extra=(--train.out_dir="$run_dir")
has_override train.threads || extra+=(--train.threads="$threads")
resume_note="nothing to resume in $ckpt_dir, starting the run"
resume_from=$(newest_checkpoint "$ckpt_dir")
if has_override train.resume || has_override resume; then
  resume_note="as the overrides say"
elif [[ -n $resume_from ]]; then
  steps=$(override_value train.steps)
  [[ -n $steps ]] || steps=$(toml_value "$run_dir/config.toml" train steps)
  last=$(basename "$resume_from" .h5)
  last=$((10#${last#ckpt_}))
  if [[ -n $steps && $last -ge $steps ]]; then
    echo "mpirun-train: the run in $run_dir is finished ($resume_from is at train.steps = $steps)"
    exit 0
  fi
  resume_note="from the newest checkpoint, $resume_from"
  extra+=(--train.resume=auto)
elif [[ -f $run_dir/metrics.jsonl ]]; then
  die "$run_dir holds a run (metrics.jsonl) but $ckpt_dir has no checkpoint to resume from: it" \
    "ended before its first checkpoint. Move it away or choose another --run-dir (and set" \
    "checkpoint.every so that the run can be resumed)"
fi

cmd=("${MPIRUN:-mpirun}" -np "$np" "${mpi_args[@]}"
  "$bin" train --config "$config" "${extra[@]}" "${overrides[@]}")
if ((dry_run)); then
  echo "resume: $resume_note"
  echo "${cmd[*]}"
  exit 0
fi

mkdir -p "$run_dir/logs"
log="$run_dir/logs/mpirun-$(date +%Y%m%d-%H%M%S)-$$.log"
# tee -i: an interrupt from the terminal must not end the log's writer before mpirun.
exec > >(tee -ai "$log") 2>&1
echo "== mpirun-train $(date '+%F %T'): $np ranks, run directory $run_dir, log $log"
echo "resume: $resume_note"
echo "+ ${cmd[*]}"
"${cmd[@]}" &
mpi_pid=$!
# `wait` returns early when a trapped signal arrives; wait again until mpirun has ended.
while kill -0 "$mpi_pid" 2>/dev/null; do
  wait "$mpi_pid" || true
done
rc=0
wait "$mpi_pid" || rc=$?
if ((rc == ${ROUTEMOE_PREEMPT_EXIT:-75})) || { ((signals > 0)) && ((rc != 0)); }; then
  echo "== mpirun-train $(date '+%F %T'): stopped on a signal (status $rc); newest checkpoint:" \
    "$(newest_checkpoint "$ckpt_dir")"; echo "   run the same command again to continue"
else
  echo "== mpirun-train $(date '+%F %T'): ranks ended with status $rc"
fi
exit "$rc"
