#pragma once
// The memory a training run needs per rank, estimated from its configuration alone, and the
// up-front check that refuses (with the numbers) a run that cannot fit, before anything large is
// allocated. docs/configuration.md ("Sizes and memory") describes what is counted.

#include <cstdint>
#include <string>

#include "framework/config.h"

namespace routemoe {

// Per-rank sizes of a run (all arithmetic checked: a configuration whose sizes overflow 64 bits
// throws Error(Config) naming the size).
struct MemoryEstimate {
  std::int64_t params_total = 0;      // parameters of the model, every expert once
  std::int64_t params_per_rank = 0;   // dense parameters + this rank's share of the experts
  std::int64_t param_bytes = 0;       // fp32 values of params_per_rank
  std::int64_t grad_bytes = 0;        // fp32 gradients
  std::int64_t optimizer_bytes = 0;   // AdamW first and second moments
  std::int64_t activation_bytes = 0;  // the largest pass: training micro-batch (forward and
                                      // backward), validation batch or probe set (forward)
  std::string activation_pass;        // which pass that is
  std::int64_t total_bytes = 0;       // sum of the four
};

// The estimate for `world` ranks with expert-parallel size `ep` (cfg.parallel.ep_size when
// launched). Counts the model's arenas (parameters, gradients, AdamW moments, activations with
// every expert receiving its average share of tokens); not the token data, MPI or HDF5 buffers.
MemoryEstimate estimate_memory(const RunConfig& cfg, int world, int ep);

// Memory this process may still allocate: the smallest of MemAvailable (/proc/meminfo, else
// sysconf), the cgroup limit (memory.max - memory.current) and the address-space limit
// (RLIMIT_AS - current size). node_bytes is shared by the ranks of a node; process_bytes is
// this process's own (-1: unlimited).
struct AvailableMemory {
  std::int64_t node_bytes = -1;  // -1: unknown
  std::string node_source;       // where node_bytes comes from
  std::int64_t process_bytes = -1;
};
AvailableMemory available_memory();

// Throws Error(Config) with the estimate, the ranks on the node and the memory available when
// `ranks_on_node` ranks of `estimate` do not fit in `available`.
void check_memory_fits(const MemoryEstimate& estimate, int ranks_on_node,
                       const AvailableMemory& available);

// "1.50 GiB"-style byte count for messages (B up to EiB).
std::string format_size(std::int64_t bytes);
// One line: parameters and the per-rank bytes of every part.
std::string describe(const MemoryEstimate& estimate);

}  // namespace routemoe
