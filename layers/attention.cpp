#include "layers/attention.h"

#include <cmath>

#include "framework/error.h"
#include "framework/ops.h"

namespace routemoe::layers {

// Layout: qkv[N, 3d] with q, k, v at column offsets 0, d, 2d; head h uses columns
// [h*dh, (h+1)*dh) of each. For sequence b, head h, Q is a [T, dh] matrix with row stride 3d
// starting at qkv + b*T*3d + h*dh: consecutive heads are dh apart, which is what the strided
// batched GEMM walks over.

template <typename T>
void attention_forward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                       const T* h, T* out, T* avg_probs, AttentionCache<T>& cache, Arena& arena) {
  const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d, H = dims.heads, N = dims.tokens();
  RM_CHECK(H > 0 && d % H == 0, "attention: d_model must be divisible by the number of heads");
  const std::int64_t dh = d / H, ld = 3 * d;
  cache.qkv = ops::alloc<T>(ex, arena, N * 3 * d);
  cache.probs = ops::alloc<T>(ex, arena, B * H * Tn * Tn);
  cache.ctx = ops::alloc<T>(ex, arena, N * d);
  ops::linear_forward<T>(ex, h, w.qkv_w, w.qkv_b, cache.qkv, N, d, 3 * d);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dh)));
  for (std::int64_t b = 0; b < B; ++b) {
    const T* q = cache.qkv + b * Tn * ld;
    T* p = cache.probs + b * H * Tn * Tn;
    // scores[h] = scale * Q_h K_h^T  ([T, T] per head), causal softmax in place.
    ops::gemm_strided_batched<T>(ex, false, true, Tn, Tn, dh, scale, q, ld, dh, q + d, ld, dh, T(0),
                                 p, Tn, Tn * Tn, H);
    ops::mask_future<T>(ex, p, H * Tn, Tn);
    ops::softmax_forward<T>(ex, p, p, H * Tn, Tn);
    // ctx_h = P_h V_h written into columns [h*dh, (h+1)*dh) of ctx (row stride d).
    ops::gemm_strided_batched<T>(ex, false, false, Tn, dh, Tn, T(1), p, Tn, Tn * Tn, q + 2 * d, ld,
                                 dh, T(0), cache.ctx + b * Tn * d, d, dh, H);
  }
  if (avg_probs != nullptr) ops::head_mean<T>(ex, cache.probs, avg_probs, B, H, Tn * Tn);
  ops::linear_forward<T>(ex, cache.ctx, w.proj_w, w.proj_b, out, N, d, d);
}

template <typename T>
void attention_backward(const Exec& ex, const AttentionDims& dims, const AttentionWeights<T>& w,
                        const AttentionGrads<T>& g, const T* h, const AttentionCache<T>& cache,
                        const T* dout, const T* d_avg_probs, T* dh, Arena& arena) {
  const std::int64_t B = dims.batch, Tn = dims.seq, d = dims.d, H = dims.heads, N = dims.tokens();
  const std::int64_t hd = d / H, ld = 3 * d;
  T* dctx = ops::alloc<T>(ex, arena, N * d);
  ops::linear_backward<T>(ex, dout, cache.ctx, w.proj_w, dctx, g.proj_w, g.proj_b, N, d, d);
  T* dqkv = ops::alloc<T>(ex, arena, N * 3 * d);
  T* dp = ops::alloc<T>(ex, arena, H * Tn * Tn);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  for (std::int64_t b = 0; b < B; ++b) {
    const T* q = cache.qkv + b * Tn * ld;
    T* dq = dqkv + b * Tn * ld;
    const T* p = cache.probs + b * H * Tn * Tn;
    const T* dc = dctx + b * Tn * d;
    // dP_h = dctx_h V_h^T (+ the gradient arriving at the head average).
    ops::gemm_strided_batched<T>(ex, false, true, Tn, Tn, hd, T(1), dc, d, hd, q + 2 * d, ld, hd,
                                 T(0), dp, Tn, Tn * Tn, H);
    if (d_avg_probs != nullptr) {
      ops::head_mean_backward<T>(ex, d_avg_probs + b * Tn * Tn, dp, 1, H, Tn * Tn);
    }
    // dV_h = P_h^T dctx_h
    ops::gemm_strided_batched<T>(ex, true, false, Tn, hd, Tn, T(1), p, Tn, Tn * Tn, dc, d, hd, T(0),
                                 dq + 2 * d, ld, hd, H);
    // dS = softmax_backward (masked entries have P = 0, hence dS = 0), then the 1/sqrt(dh) scale.
    ops::softmax_backward<T>(ex, p, dp, dp, H * Tn, Tn);
    // dQ_h = scale dS_h K_h ; dK_h = scale dS_h^T Q_h
    ops::gemm_strided_batched<T>(ex, false, false, Tn, hd, Tn, scale, dp, Tn, Tn * Tn, q + d, ld,
                                 hd, T(0), dq, ld, hd, H);
    ops::gemm_strided_batched<T>(ex, true, false, Tn, hd, Tn, scale, dp, Tn, Tn * Tn, q, ld, hd,
                                 T(0), dq + d, ld, hd, H);
  }
  ops::linear_backward<T>(ex, dqkv, h, w.qkv_w, dh, g.qkv_w, g.qkv_b, N, d, 3 * d);
}

#define RM_INSTANTIATE(T)                                                                      \
  template void attention_forward<T>(const Exec&, const AttentionDims&,                        \
                                     const AttentionWeights<T>&, const T*, T*, T*,             \
                                     AttentionCache<T>&, Arena&);                              \
  template void attention_backward<T>(                                                         \
      const Exec&, const AttentionDims&, const AttentionWeights<T>&, const AttentionGrads<T>&, \
      const T*, const AttentionCache<T>&, const T*, const T*, T*, Arena&);
RM_INSTANTIATE(float)
RM_INSTANTIATE(double)
#undef RM_INSTANTIATE

}  // namespace routemoe::layers
