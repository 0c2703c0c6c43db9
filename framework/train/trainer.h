#pragma once
// The training loop of `routemoe train`: data, model, AdamW with warmup + cosine schedule,
// gradient clipping and accumulation, periodic validation, metrics as JSON lines, a console
// line per log interval and a progress bar on terminals.

#include <cstdint>
#include <string>
#include <vector>

#include "framework/config.h"

namespace routemoe {

struct TrainSummary {
  std::int64_t steps = 0;
  double first_loss = 0.0;       // training loss of step 0
  double final_loss = 0.0;       // mean training loss over the last log interval
  double final_val_loss = 0.0;   // last validation cross-entropy (nats/token)
  double best_val_loss = 0.0;
  double unigram_entropy = 0.0;  // entropy of the training split's token distribution (nats)
  double tokens_per_s = 0.0;     // training throughput over the whole run
  double seconds = 0.0;
  std::vector<std::vector<std::int64_t>> expert_load;  // per MoE layer, tokens per expert (last step)
  std::string out_dir;
};

// Runs training as configured. Validates the config first; creates train.out_dir and refuses
// one that already holds a run (metrics.jsonl). Console output goes to stdout.
TrainSummary run_training(const RunConfig& cfg);

// Shannon entropy (nats) of the unigram distribution of `tokens`.
double unigram_entropy(const std::vector<std::uint16_t>& tokens, std::int64_t vocab_size);

}  // namespace routemoe
