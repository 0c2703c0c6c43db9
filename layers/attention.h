#pragma once
// Causal multi-head self-attention with a fused QKV projection, able to hand its
// head-averaged attention probabilities to the MoE layer (attention router) and to take their
// gradient back. Templated on the element type (float runs, double checks gradients); all work
// goes through the device seam (framework/ops.h).

#include <cstdint>

#include "framework/arena.h"
#include "framework/exec.h"
#include "framework/timer.h"

namespace routemoe::layers {

struct AttentionDims {
  std::int64_t batch = 1;  // B
  std::int64_t seq = 1;    // T
  std::int64_t d = 1;      // d_model
  std::int64_t heads = 1;  // H, d % H == 0
  std::int64_t tokens() const { return batch * seq; }
};

template <typename T>
struct AttentionWeights {
  const T* qkv_w = nullptr;   // [3d, d]
  const T* qkv_b = nullptr;   // [3d]
  const T* proj_w = nullptr;  // [d, d]
  const T* proj_b = nullptr;  // [d]
};

template <typename T>
struct AttentionGrads {  // +=
  T* qkv_w = nullptr;
  T* qkv_b = nullptr;
  T* proj_w = nullptr;
  T* proj_b = nullptr;
};

template <typename T>
struct AttentionCache {
  T* qkv = nullptr;    // [N, 3d]
  T* probs = nullptr;  // [B, H, T, T]
  T* ctx = nullptr;    // [N, d] heads merged, before the output projection
};

// out[N, d] = proj(merge_heads(softmax(q k^T / sqrt(dh) + causal mask) v)), from h[N, d].
// avg_probs [B, T, T] (optional, may be null) = mean over heads of the probabilities.
template <typename T>
void attention_forward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                       const T* h, T* out, T* avg_probs, AttentionCache<T>& cache, Arena& arena,
                       TimerSet* timers = nullptr);

// dh[N, d] overwritten; parameter gradients +=. d_avg_probs [B, T, T] (optional) is the
// gradient arriving at the head-averaged probabilities.
// `timers` (may be null): the phases (framework/timer.h) of the work, for a step profile.
template <typename T>
void attention_backward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                        const AttentionGrads<T>& g, const T* h, const AttentionCache<T>& cache,
                        const T* dout, const T* d_avg_probs, T* dh, Arena& arena,
                        TimerSet* timers = nullptr);

}  // namespace routemoe::layers
