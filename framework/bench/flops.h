#pragma once
// FLOP count of a training step, for the achieved GFLOP/s of `routemoe bench train`.

#include <cstdint>

#include "framework/model_config.h"

namespace routemoe::bench {

// Matrix-product FLOPs (2 per multiply-add) of one training step (forward + backward) of the
// model `c` on `batch` sequences of c.seq_len tokens; element-wise work is not counted. The
// formula is written out in flops.cpp and in docs/performance.md. The per-router terms belong
// to the routers: once each router module reports its own FLOPs, this function becomes a sum
// over the model's modules.
double model_step_flops(const ModelConfig& c, std::int64_t batch);

}  // namespace routemoe::bench
