#pragma once
// One optimiser step of the training loop (docs/architecture.md, "One training step"):
// zero the gradients, forward/backward over this rank's micro-batches, sum the losses and loads
// over the world, reduce the gradients over the data-parallel replicas, check that the loss and
// the global gradient norm are finite, clip by the global norm, and apply AdamW. Collective over
// the process groups.
//
// A non-finite step never reaches the weights: when the loss or the gradient norm is NaN or
// infinite, neither the parameters nor the AdamW state change (its step counter included) and
// the result says `skipped`. Both values come out of all-reduces, so every rank decides alike
// (a NaN anywhere reaches every rank's sum). What to do next (skip or stop, train.nonfinite) is
// the trainer's decision.

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "framework/config.h"
#include "layers/model.h"

namespace routemoe {

class AdamW;
class BatchLoader;

// What one step produced (identical on every rank).
struct StepResult {
  std::int64_t step = 0;  // 0-based index of the step taken
  double loss = 0.0;      // mean over ranks and micro-batches of ce_loss + aux_loss
  double ce_loss = 0.0;
  double aux_loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;          // global norm before clipping, every parameter counted once
  bool skipped = false;            // loss or grad_norm not finite: the update was not applied
  std::vector<MoeLayerStats> moe;  // per MoE layer; loads summed over ranks and micro-batches
};

// Everything a step reads or updates.
struct StepContext {
  const RunConfig& cfg;
  comm::ProcessGroups& groups;
  Model& model;
  AdamW& optimizer;
  const BatchLoader& loader;
};

// Takes step `step` (0-based); a non-finite loss or gradient norm gives a skipped result (no
// update).
StepResult train_step(StepContext& ctx, std::int64_t step);

// Sums gradients over the data-parallel replicas (dense: world, experts: expert-data-parallel
// group) and returns the global gradient norm with every parameter counted exactly once.
double reduce_gradients(ParamStore& params, comm::ProcessGroups& groups);

}  // namespace routemoe
