#!/usr/bin/env bash
# Runs a `routemoe bench` command across two "hosts" on this machine: two network namespaces
# joined by a veth pair, one rank per namespace, MPI over TCP between them (docs/performance.md,
# "Across two hosts"; the namespace facts are those of the cluster tests).
#
#   launch/netns-bench.sh <routemoe> <ranks per host> -- <bench arguments...>
#   e.g. launch/netns-bench.sh build/release/routemoe 1 -- bench alltoall --tokens 256,8192
#
# NETNS_BENCH_RATE=<rate> (tc syntax, e.g. 2gbit) limits the pair to that rate in each
# direction (a token-bucket qdisc on both ends, queueing up to 200 ms instead of dropping): then the wire, not the CPU copying into and out of
# sockets, bounds the exchange, as on a real network link, and there is wall time for the
# exchange to hide behind computation. Without it the pair is as fast as the CPU makes it.
#
# Needs root (ip netns). mpirun runs inside the first namespace (the root namespace has no route
# to the pair); Open MPI's rsh agent enters the namespace named as the host; the launch channel
# and the MPI traffic are restricted to the pair's private subnet. Everything the script creates
# (namespaces, veth pair, temporary files) is removed on exit, also on failure or a signal.
set -euo pipefail

if [[ $# -lt 3 || $3 != "--" ]]; then
  echo "usage: $0 <routemoe> <ranks per host> -- <bench arguments...>" >&2
  exit 2
fi
bin=$(realpath "$1")
per_host=$2
shift 3
[[ $(id -u) -eq 0 ]] || { echo "netns-bench: needs root (ip netns)" >&2; exit 77; }

tag=$$
ns_a="rmb${tag}a"
ns_b="rmb${tag}b"
veth_a="rmbv${tag}a"
veth_b="rmbv${tag}b"
net="10.214.$((tag % 250))"
work=$(mktemp -d "${TMPDIR:-/tmp}/routemoe-netns-bench.XXXXXX")
made=()

cleanup() {
  local rc=$? ns p
  for ns in "${made[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
  done
  for ns in "${made[@]}"; do ip netns delete "$ns" 2>/dev/null || true; done
  ip link delete "$veth_a" 2>/dev/null || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$ns_a" && made+=("$ns_a")
ip netns add "$ns_b" && made+=("$ns_b")
ip link add "$veth_a" type veth peer name "$veth_b"
ip link set "$veth_a" netns "$ns_a"
ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add "$net.1/24" dev "$veth_a"
ip -n "$ns_b" addr add "$net.2/24" dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" link set "$veth_b" up
if [[ -n ${NETNS_BENCH_RATE:-} ]]; then
  # A queue long enough that the limit delays packets instead of dropping them.
  for end in "$ns_a $veth_a" "$ns_b $veth_b"; do
    read -r ns dev <<<"$end"
    ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$NETNS_BENCH_RATE" burst 256kb \
      latency 200ms
    # TCP buffers that may grow to 64 MiB (as tuned on cluster nodes): a sender's MPI call
    # hands the kernel whole blocks, which then move while the rank computes.
    ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_wmem="4096 65536 67108864" \
      net.ipv4.tcp_rmem="4096 131072 67108864"
  done
  echo "netns-bench: the pair is limited to $NETNS_BENCH_RATE in each direction (tc tbf)" >&2
fi

# Open MPI starts its daemon with `<agent> <host> <command...>`, as with ssh.
cat >"$work/agent" <<'EOF'
#!/bin/sh
host=$1
shift
exec ip netns exec "$host" /bin/sh -c "$*"
EOF
chmod +x "$work/agent"
printf '%s slots=%s\n%s slots=%s\n' "$ns_a" "$per_host" "$ns_b" "$per_host" >"$work/hosts"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ip netns exec "$ns_a" mpirun --hostfile "$work/hosts" -np $((2 * per_host)) --map-by node \
  --mca plm_rsh_agent "$work/agent" --mca btl self,tcp --mca mpi_yield_when_idle 1 \
  --mca btl_tcp_if_include "$net.0/24" --mca oob_tcp_if_include "$net.0/24" \
  -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
  "$bin" "$@"
