#include "layers/attention.h"

#include <cmath>

#include "framework/error.h"
#include "framework/ops.h"

namespace routemoe::layers {

// Layout: qkv[N, 3d] with q, k, v at column offsets 0, d, 2d; head h uses columns
// [h*dh, (h+1)*dh) of each. The core (scores, causal softmax, values and their backward) is one
// fused op over all (sequence, head) pairs, which computes the causal half only
// (ops::causal_attention_forward / _backward).

template <typename T>
void attention_forward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                       const T* h, T* out, T* avg_probs, AttentionCache<T>& cache, Arena& arena,
                       TimerSet* timers) {
  const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d, H = dims.heads, N = dims.tokens();
  RM_CHECK(H > 0 && d % H == 0, "attention: d_model must be divisible by the number of heads");
  const std::int64_t dh = d / H;
  const double fN = static_cast<double>(N), fd = static_cast<double>(d);
  cache.qkv = ops::alloc<T>(ex, arena, N * 3 * d);
  cache.probs = ops::alloc<T>(ex, arena, B * H * Tn * Tn);
  cache.ctx = ops::alloc<T>(ex, arena, N * d);
  {
    Phase ph(timers, phase::kQkvProj, 2.0 * fN * fd * 3.0 * fd);
    ops::linear_forward<T>(ex, h, w.qkv_w, w.qkv_b, cache.qkv, N, d, 3 * d);
  }
  {
    Phase ph(timers, phase::kAttnCore, 4.0 * static_cast<double>(B * Tn * Tn) * fd);
    ops::causal_attention_forward<T>(ex, cache.qkv, cache.probs, cache.ctx, B, Tn, H, dh);
  }
  if (avg_probs != nullptr) {
    Phase ph(timers, phase::kAttnElementwise, 0.0,
             static_cast<double>(sizeof(T) * (B * H * Tn * Tn + B * Tn * Tn)));
    ops::head_mean<T>(ex, cache.probs, avg_probs, B, H, Tn * Tn);
  }
  Phase ph(timers, phase::kQkvProj, 2.0 * fN * fd * fd);
  ops::linear_forward<T>(ex, cache.ctx, w.proj_w, w.proj_b, out, N, d, d);
}

template <typename T>
void attention_backward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                        const AttentionGrads<T>& g, const T* h, const AttentionCache<T>& cache,
                        const T* dout, const T* d_avg_probs, T* dh, Arena& arena,
                        TimerSet* timers) {
  const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d, H = dims.heads, N = dims.tokens();
  const std::int64_t hd = d / H;
  const double fN = static_cast<double>(N), fd = static_cast<double>(d);
  const Arena::Mark scratch = arena.mark();  // dctx, dqkv: released at the end
  T* dctx = ops::alloc<T>(ex, arena, N * d);
  {
    Phase ph(timers, phase::kQkvProj, 4.0 * fN * fd * fd);
    ops::linear_backward<T>(ex, dout, cache.ctx, w.proj_w, dctx, g.proj_w, g.proj_b, N, d, d);
  }
  T* dqkv = ops::alloc<T>(ex, arena, N * 3 * d);
  {
    Phase ph(timers, phase::kAttnCore, 8.0 * static_cast<double>(B * Tn * Tn) * fd);
    ops::causal_attention_backward<T>(ex, cache.qkv, cache.probs, dctx, d_avg_probs, dqkv, B, Tn, H,
                                      hd);
  }
  {
    Phase ph(timers, phase::kQkvProj, 4.0 * fN * fd * 3.0 * fd);
    ops::linear_backward<T>(ex, dqkv, h, w.qkv_w, dh, g.qkv_w, g.qkv_b, N, d, 3 * d);
  }
  arena.rewind(scratch);
}

#define RM_INSTANTIATE(T)                                                                      \
  template void attention_forward<T>(const Exec&, const AttentionDims&,                        \
                                     const AttentionWeights<T>&, const T*, T*, T*,             \
                                     AttentionCache<T>&, Arena&, TimerSet*);                   \
  template void attention_backward<T>(                                                         \
      const Exec&, const AttentionDims&, const AttentionWeights<T>&, const AttentionGrads<T>&, \
      const T*, const AttentionCache<T>&, const T*, const T*, T*, Arena&, TimerSet*);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
