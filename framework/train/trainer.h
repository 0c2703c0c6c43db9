#pragma once
// The training loop of `routemoe train`: data, model, AdamW with warmup + cosine schedule,
// gradient clipping and accumulation, periodic validation, metrics as JSON lines, a console
// line per log interval and a progress bar on terminals.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "framework/config.h"

namespace routemoe {

class ParamStore;

struct TrainSummary {
  std::int64_t steps = 0;
  double first_loss = 0.0;      // training loss of step 0
  double final_loss = 0.0;      // mean training loss over the last log interval
  double final_val_loss = 0.0;  // last validation cross-entropy (nats/token)
  double best_val_loss = 0.0;
  double unigram_entropy = 0.0;  // entropy of the training split's token distribution (nats)
  double tokens_per_s = 0.0;     // training throughput over the whole run
  double seconds = 0.0;
  std::vector<std::vector<std::int64_t>>
      expert_load;             // per MoE layer, tokens per expert (last step)
  std::vector<double> losses;  // training loss of every step (mean over ranks and micro-batches)
  std::string memory;          // rank 0's memory report: parameters, gradients, activation arena
  std::string out_dir;
};

// Runs training as configured on the ranks of `groups` (collective). Validates the config
// first; rank 0 creates train.out_dir (refusing one that already holds a run), writes the
// metrics and prints the console lines. Each rank trains on its rows of every global batch;
// dense gradients are summed over the world, expert gradients over the expert-data-parallel
// group. The returned summary is the same on every rank.
class Model;
// Optional callback with the trained model before run_training returns (collective code such
// as gathering expert shards may run in it: every rank calls it).
using AfterTraining = std::function<void(Model&)>;
TrainSummary run_training(const RunConfig& cfg, comm::ProcessGroups& groups,
                          const AfterTraining& after = nullptr);

// Sums gradients over the data-parallel replicas (dense: world, experts: expert-data-parallel
// group) and returns the global gradient norm with every parameter counted exactly once.
double reduce_gradients(ParamStore& params, comm::ProcessGroups& groups);

// Shannon entropy (nats) of the unigram distribution of `tokens`.
double unigram_entropy(const std::vector<std::uint16_t>& tokens, std::int64_t vocab_size);

}  // namespace routemoe
