#pragma once
// AdamW with decoupled weight decay over a ParamStore, the warmup + cosine learning-rate
// schedule, and gradient clipping by global norm (docs/model.md, "Optimiser").

#include <cstdint>

#include "framework/tensor.h"

namespace routemoe {

class ParamStore;

struct OptimConfig {
  double lr = 3e-4;
  double lr_min = 3e-5;
  std::int64_t warmup = 0;  // steps of linear warmup
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // <= 0: no clipping
  bool operator==(const OptimConfig&) const = default;
  // Throws Error(Config) naming the key for out-of-range or non-finite values.
  void validate() const;
};

// Learning rate of step s (0-based) of a run of total_steps steps.
double lr_at(const OptimConfig& cfg, std::int64_t step, std::int64_t total_steps);

// sqrt(sum of squared gradients) over the parameters held here (each counted once).
double local_grad_sq_norm(const ParamStore& params);
// Scales every gradient by min(1, clip / (norm + 1e-6)); returns the factor applied.
double clip_grads(ParamStore& params, double clip, double norm);

class AdamW {
 public:
  AdamW(ParamStore& params, const OptimConfig& cfg);
  // One update with learning rate `lr`; increments the step counter first (t starts at 1).
  void step(double lr);
  std::int64_t steps_taken() const { return t_; }
  void set_steps_taken(std::int64_t t) { t_ = t; }
  // First and second moments, flat, in the layout of ParamStore::values_flat().
  Tensor& m() { return m_; }
  Tensor& v() { return v_; }

 private:
  ParamStore& params_;
  OptimConfig cfg_;
  Tensor m_;
  Tensor v_;
  std::int64_t t_ = 0;
};

}  // namespace routemoe
