#pragma once
// Evaluation of a model on a split: the one implementation behind the trainer's validation
// passes and `routemoe eval` (docs/evaluation.md).
//
// Batches are the loader's sequential, non-overlapping windows (BatchLoader::eval_batches):
// batch i holds windows [i*B, (i+1)*B) of seq_len tokens. Every forward pass takes one
// micro-batch of `micro_batch` consecutive rows of a batch; micro-batch g (in batch-major order)
// runs on rank g mod W. The loss of each micro-batch (sum of token cross-entropies, in double)
// is gathered to every rank and summed in micro-batch order. Routers that use statistics of the
// tokens of one forward (ac) and the capacity limit see the same token groups whatever the
// rank count, so with a fixed micro_batch the result does not depend on the number of ranks
// (the order of every sum is fixed) — only on the rounding of expert GEMMs over tokens that
// arrive from several ranks under expert parallelism.

#include <cstdint>
#include <string>

#include "comm/communicator.h"
#include "framework/config.h"
#include "framework/data.h"
#include "framework/runfile.h"

namespace routemoe {

class Model;

struct EvalOptions {
  std::int64_t max_batches = 0;  // eval batches from the start of the split; 0: all full batches
  std::int64_t micro_batch = 0;  // rows per forward pass, divides the batch size; 0: B / ranks
  bool dropless = true;          // ignore the capacity factor (every routed slot kept)
};

struct EvalResult {
  double loss = 0.0;             // mean cross-entropy, nats per predicted token
  std::int64_t tokens = 0;       // predicted tokens
  std::int64_t batches = 0;      // eval batches used
  std::int64_t micro_batch = 0;  // rows per forward pass
};

// Mean cross-entropy of `model` over the eval batches of `loader` (collective over `world`;
// the model's expert-parallel group must be a subgroup of it, every rank of it calls this).
// Throws Error(Data) when the split holds no full batch, Error(Config) when micro_batch does not
// divide the batch size. The result is the same on every rank.
EvalResult evaluate_split(Model& model, const BatchLoader& loader, const EvalOptions& options,
                          comm::Communicator& world);

// Bits per byte of a loss in nats per token when each token is `bytes_per_token` bytes.
double bits_per_byte(double nats_per_token, double bytes_per_token);

// ---- `routemoe eval`: the checkpoint side ----

// A checkpoint path, or a run directory (its checkpoints/ folder, or the directory itself, holds
// ckpt_*.h5): the newest checkpoint. Error(Data), one line, when there is none.
std::string resolve_checkpoint(const std::string& path);

// The root attributes of a checkpoint and its stored configuration, parsed as `routemoe train`
// parses a config file (every rank may call it; it only reads). Error(Data), one line naming the
// file, for a missing, damaged or foreign file or an invalid stored configuration.
struct StoredCheckpoint {
  std::string path;
  runfile::CheckpointInfo info;
  RunConfig config;
};
StoredCheckpoint read_stored_checkpoint(const std::string& path);

}  // namespace routemoe
